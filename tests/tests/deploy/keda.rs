//! KEDA's objects checked against the fields KEDA documents (an embedded list, below) and
//! against the system: the jobs queues, the autoscaler query, the Secret's keys.

use std::collections::BTreeSet;

use provisioner_shared::{db::figures, queue};
use serde_json::Value;

use super::object;

// KEDA's documented fields, from https://keda.sh/docs/2.18/reference/scaledobject-spec/,
// https://keda.sh/docs/2.18/scalers/rabbitmq-queue/, https://keda.sh/docs/2.18/scalers/postgresql/
// and https://keda.sh/docs/2.18/concepts/authentication/ (KEDA 2.18).

const SPEC: &[&str] = &[
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
];
const SCALE_TARGET_REF: &[&str] = &["apiVersion", "kind", "name", "envSourceContainerName"];
const FALLBACK: &[&str] = &["failureThreshold", "replicas", "behavior"];
const ADVANCED: &[&str] = &[
    "restoreToOriginalReplicaCount",
    "horizontalPodAutoscalerConfig",
    "scalingModifiers",
];
const HPA_CONFIG: &[&str] = &["name", "behavior"];
const TRIGGER: &[&str] = &[
    "type",
    "metadata",
    "name",
    "useCachedMetrics",
    "authenticationRef",
    "metricType",
];
const AUTHENTICATION_REF: &[&str] = &["name", "kind"];
const RABBITMQ_METADATA: &[&str] = &[
    "host",
    "protocol",
    "mode",
    "value",
    "activationValue",
    "queueName",
    "vhostName",
    "hostFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "unsafeSsl",
    "timeout",
    "useRegex",
    "pageSize",
    "operation",
    "excludeUnacknowledged",
];
const RABBITMQ_AUTH: &[&str] = &[
    "host",
    "username",
    "password",
    "vhostName",
    "tls",
    "ca",
    "cert",
    "key",
];
const POSTGRESQL_METADATA: &[&str] = &[
    "connectionFromEnv",
    "host",
    "userName",
    "passwordFromEnv",
    "port",
    "dbName",
    "sslmode",
    "query",
    "targetQueryValue",
    "activationTargetQueryValue",
];
const POSTGRESQL_AUTH: &[&str] = &[
    "connection",
    "host",
    "userName",
    "password",
    "port",
    "dbName",
    "sslmode",
];
const TRIGGER_AUTHENTICATION_SPEC: &[&str] = &[
    "secretTargetRef",
    "configMapTargetRef",
    "env",
    "podIdentity",
    "hashiCorpVault",
    "azureKeyVault",
    "awsSecretManager",
    "gcpSecretManager",
    "boundServiceAccountToken",
];
const SECRET_TARGET_REF: &[&str] = &["parameter", "name", "key"];

/// Keys of `value` (an object) that `documented` lacks, named with `at`.
fn undocumented(value: &Value, documented: &[&str], at: &str, problems: &mut Vec<String>) {
    match value.as_object() {
        Some(map) => {
            for key in map.keys().filter(|k| !documented.contains(&k.as_str())) {
                problems.push(format!("{at}.{key} is not a documented field"));
            }
        }
        None => problems.push(format!("{at} is not an object")),
    }
}

fn positive_number(text: &Value, at: &str, problems: &mut Vec<String>) {
    match text.as_str().and_then(|t| t.parse::<f64>().ok()) {
        Some(n) if n > 0.0 => {}
        _ => problems.push(format!("{at} is not a positive number as a string: {text}")),
    }
}

/// What is wrong with the KEDA objects among `objects` (empty: nothing).
pub(super) fn problems(objects: &[Value]) -> Vec<String> {
    let mut problems = vec![];
    let so = object(objects, "ScaledObject", "provisioner-worker");
    let spec = &so["spec"];
    undocumented(spec, SPEC, "spec", &mut problems);
    undocumented(
        &spec["scaleTargetRef"],
        SCALE_TARGET_REF,
        "spec.scaleTargetRef",
        &mut problems,
    );
    if spec["scaleTargetRef"]["name"] != "provisioner-worker" {
        problems.push("spec.scaleTargetRef.name is not the worker Deployment".to_owned());
    }
    if !spec["fallback"].is_null() {
        undocumented(&spec["fallback"], FALLBACK, "spec.fallback", &mut problems);
    }
    undocumented(&spec["advanced"], ADVANCED, "spec.advanced", &mut problems);
    let hpa = &spec["advanced"]["horizontalPodAutoscalerConfig"];
    undocumented(
        hpa,
        HPA_CONFIG,
        "spec.advanced.horizontalPodAutoscalerConfig",
        &mut problems,
    );
    let (min, max) = (
        spec["minReplicaCount"].as_i64().unwrap_or(0),
        spec["maxReplicaCount"].as_i64().unwrap_or(100),
    );
    if !(1..=max).contains(&min) {
        problems.push(format!(
            "minReplicaCount {min} must be 1..=maxReplicaCount {max}: workers run the dispatcher and the sweeper"
        ));
    }

    let auths: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "TriggerAuthentication")
        .collect();
    let mut queues = BTreeSet::new();
    let mut held_trigger = false;
    for (i, trigger) in spec["triggers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("spec.triggers[{i}]");
        undocumented(trigger, TRIGGER, &at, &mut problems);
        let metadata = &trigger["metadata"];
        for (key, value) in metadata.as_object().into_iter().flatten() {
            if !value.is_string() {
                problems.push(format!("{at}.metadata.{key} must be a string"));
            }
        }
        let (metadata_fields, auth_fields) = match trigger["type"].as_str() {
            Some("rabbitmq") => {
                if metadata["mode"] != "QueueLength" {
                    problems.push(format!("{at}: mode must be QueueLength"));
                }
                if metadata["protocol"] != "http" {
                    problems.push(format!(
                        "{at}: protocol must be http (the management API counts unacknowledged messages)"
                    ));
                }
                positive_number(
                    &metadata["value"],
                    &format!("{at}.metadata.value"),
                    &mut problems,
                );
                let name = metadata["queueName"].as_str().unwrap_or_default();
                if metadata["useRegex"] == "true" {
                    // The queues summed: exactly the jobs queues, each name escaped.
                    let every = queue::JOB_QUEUES
                        .iter()
                        .map(|q| q.replace('.', "\\."))
                        .collect::<Vec<_>>()
                        .join("|");
                    if name != format!("^({every})$") {
                        problems.push(format!("{at}: {name} is not ^({every})$"));
                    }
                    if metadata["operation"] != "sum" {
                        problems.push(format!("{at}: the queues' lengths must be summed"));
                    }
                    queues.extend(queue::JOB_QUEUES.iter().map(|q| (*q).to_owned()));
                } else {
                    queues.insert(name.to_owned());
                }
                (RABBITMQ_METADATA, RABBITMQ_AUTH)
            }
            Some("postgresql") => {
                if metadata["query"] != figures::HELD_ITEMS_QUERY {
                    problems.push(format!("{at}: the query is not figures::HELD_ITEMS_QUERY"));
                }
                positive_number(
                    &metadata["targetQueryValue"],
                    &format!("{at}.metadata.targetQueryValue"),
                    &mut problems,
                );
                held_trigger = true;
                (POSTGRESQL_METADATA, POSTGRESQL_AUTH)
            }
            other => {
                problems.push(format!("{at}: unexpected trigger type {other:?}"));
                continue;
            }
        };
        undocumented(
            metadata,
            metadata_fields,
            &format!("{at}.metadata"),
            &mut problems,
        );
        let auth_ref = &trigger["authenticationRef"];
        undocumented(
            auth_ref,
            AUTHENTICATION_REF,
            &format!("{at}.authenticationRef"),
            &mut problems,
        );
        let Some(auth) = auths
            .iter()
            .find(|a| a["metadata"]["name"] == auth_ref["name"])
        else {
            problems.push(format!(
                "{at}: no TriggerAuthentication {}",
                auth_ref["name"]
            ));
            continue;
        };
        undocumented(
            &auth["spec"],
            TRIGGER_AUTHENTICATION_SPEC,
            "TriggerAuthentication.spec",
            &mut problems,
        );
        for r in auth["spec"]["secretTargetRef"]
            .as_array()
            .into_iter()
            .flatten()
        {
            undocumented(r, SECRET_TARGET_REF, "secretTargetRef", &mut problems);
            if !auth_fields.contains(&r["parameter"].as_str().unwrap_or_default()) {
                problems.push(format!(
                    "{at}: {} is not a documented authentication parameter",
                    r["parameter"]
                ));
            }
            let holds_key = objects.iter().any(|o| {
                o["kind"] == "Secret"
                    && o["metadata"]["name"] == r["name"]
                    && !o["stringData"][r["key"].as_str().unwrap_or_default()].is_null()
            });
            if !holds_key {
                problems.push(format!(
                    "{at}: secret key {} is not in a Secret {}",
                    r["key"], r["name"]
                ));
            }
        }
    }
    let expected: BTreeSet<String> = queue::JOB_QUEUES.iter().map(|q| (*q).to_owned()).collect();
    if queues != expected {
        problems.push(format!(
            "rabbitmq triggers on {queues:?}, the jobs queues are {expected:?}"
        ));
    }
    if !held_trigger {
        problems.push("no postgresql trigger on the held batch items".to_owned());
    }
    problems
}
