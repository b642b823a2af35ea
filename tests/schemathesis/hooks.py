"""schemathesis hooks for tests/tests/schema.rs: what the OpenAPI document cannot say."""

import io
import zipfile

import schemathesis
from hypothesis import strategies as st


def _zip(entries):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


# Template uploads are ZIP archives (`application/zip`), which schemathesis cannot make from a
# schema. Any bytes are accepted as an upload (a bad archive fails the job, not the request):
# arbitrary bytes, and archives with arbitrary entries.
schemathesis.openapi.media_type(
    "application/zip",
    st.one_of(
        st.binary(max_size=2048),
        st.dictionaries(
            st.from_regex(r"[A-Za-z0-9_.-]{1,40}", fullmatch=True), st.binary(max_size=256), max_size=4
        ).map(_zip),
    ),
)


@schemathesis.hook("filter_body").apply_to(operation_id="createTenantFromTemplate")
def distinct_number_map_targets(ctx, body):
    """`numberMap` targets must be distinct, which JSON Schema cannot state: a body whose map sends
    two template numbers to one number is refused (400) by design, so it is not generated."""
    if not isinstance(body, dict) or not isinstance(body.get("numberMap"), dict):
        return True
    targets = [v for v in body["numberMap"].values() if isinstance(v, str)]
    return len(targets) == len(set(targets))


def _pairs(parts):
    """A form's `numberMap` parts as (template, actual) pairs."""
    return [tuple(p.split(":", 1)) for p in parts if isinstance(p, str) and ":" in p]


@schemathesis.hook("filter_body").apply_to(operation_id="createTenantFromTemplate")
def one_template_source_and_distinct_form_targets(ctx, body):
    """The form variant takes exactly one of a `template` file part and `templateUrl`, and its
    repeated `numberMap` parts must name distinct template numbers and distinct targets; neither
    rule is one JSON Schema states for a form, so such bodies are not generated."""
    if not isinstance(body, dict) or "tenantName" not in body or isinstance(body.get("numberMap"), dict):
        return True
    if ("template" in body) == ("templateUrl" in body):
        return False
    pairs = _pairs(body.get("numberMap") or [])
    keys = [k for k, _ in pairs]
    targets = [v for _, v in pairs]
    return len(keys) == len(set(keys)) and len(targets) == len(set(targets))


@schemathesis.hook("filter_body").apply_to(operation_id="createAccessNumbers")
def range_within_its_digit_length(ctx, body):
    """A range may not run past its first number's digit length (`0` x 11 is refused, 400):
    a rule between two fields that JSON Schema cannot state."""
    if not isinstance(body, dict):
        return True
    number, count = body.get("number"), body.get("count")
    whole = isinstance(count, (int, float)) and not isinstance(count, bool) and count == int(count)
    if not (isinstance(number, str) and number.isdigit() and whole):
        return True
    return int(number) + int(count) <= 10 ** len(number)
