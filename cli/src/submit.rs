//! `batch submit FILE`: every row is read, filled from the options and checked before anything
//! is sent (bad rows are reported by file line, exit 4); then the rows are streamed to
//! `POST /configapi/v2/batches` as NDJSON, a chunk at a time, under an `Idempotency-Key` derived
//! from the body (its SHA-256, keyed with the client secret): the same file with the same options
//! names the same batch, so running the command again after Ctrl-C or a lost connection
//! reattaches to it.

use std::{
    collections::HashMap,
    fs::File,
    hash::{Hash, Hasher},
    io::Read,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::{
    api::{Api, answer_failure, success_json},
    exit::{Exit, Failure, Problem, Result},
    fields::{self, Defaults},
    lacking::RowFaults,
    rows::{self, Format, Rows},
    state,
    template::hex,
};

/// Most rows one file may hold (the most unfinished items any client may have).
pub const MAX_ROWS: u64 = 1_000_000;
/// Most row problems printed.
const MAX_REPORTED: usize = 100;
/// Bytes per chunk of the streamed body.
const CHUNK: usize = 64 << 10;

/// What the first reading learned.
struct Prepared {
    /// The file line of each item, by position (to map the API's item errors back).
    lines: Vec<u64>,
    body_sha256: [u8; 32],
}

/// One row's fields, filled from the options: its tenant URL, lower-case, when that field is
/// valid (whatever else is wrong with the row, so that a repeated URL is named with its other
/// faults), and the line of NDJSON sent for it, or its problems.
fn item_line(
    item: &mut Map<String, Value>,
    defaults: &Defaults,
) -> (Option<String>, std::result::Result<Vec<u8>, Vec<Problem>>) {
    defaults.fill(item);
    let problems = fields::check(item, true);
    let url = problems
        .iter()
        .all(|p| p.field != "tenantUrl")
        .then(|| item["tenantUrl"].as_str().map(str::to_ascii_lowercase))
        .flatten();
    if !problems.is_empty() {
        return (url, Err(problems));
    }
    let mut line = serde_json::to_vec(item).expect("a JSON map serializes");
    line.push(b'\n');
    (url, Ok(line))
}

/// The fields `--set` names that are columns of the file too: an option fills only the rows
/// that lack the field, which a user may not expect of a column (the password, which may come
/// from `PROVISIONER_PASSWORD` as well, is left out).
fn filled_by_the_file<'a>(headers: &'a [String], defaults: &Defaults) -> Vec<&'a str> {
    headers
        .iter()
        .map(String::as_str)
        .filter(|h| *h != "password" && defaults.set.contains_key(*h))
        .collect()
}

fn url_key(url: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    url.hash(&mut hasher);
    hasher.finish()
}

/// Reads the whole file once: checks every row, hashes the body it makes.
fn prepare(path: &Path, format: Format, defaults: &Defaults) -> Result<Prepared> {
    let mut rows = Rows::open(path, format)?;
    for field in filled_by_the_file(rows.headers().unwrap_or_default(), defaults) {
        eprintln!(
            "note: {} has a column {field}: --set {field} fills only the rows whose {field} cell \
             is empty",
            path.display()
        );
    }
    // Tenant URLs by a 64-bit hash (16 bytes a row, whatever the URL's length).
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let mut lines = Vec::new();
    let mut faults = RowFaults::new(MAX_REPORTED);
    let mut digest = Sha256::new();
    while let Some(row) = rows.next_row()? {
        if lines.len() as u64 >= MAX_ROWS {
            return Err(Failure::invalid(format!(
                "{}: more than {MAX_ROWS} rows; split the file",
                path.display()
            )));
        }
        lines.push(row.line);
        let mut item = match row.fields {
            Ok(item) => item,
            Err(problem) => {
                faults.unread(row.line, problem);
                continue;
            }
        };
        let (url, line) = item_line(&mut item, defaults);
        let mut problems = match line {
            Ok(line) => {
                digest.update(&line);
                vec![]
            }
            Err(problems) => problems,
        };
        if let Some(first) = url.and_then(|url| seen.insert(url_key(&url), row.line)) {
            problems.push(Problem::new(
                "tenantUrl",
                format!("is the same as line {first}'s; tenant URLs must be distinct"),
            ));
        }
        faults.read(row.line, &item, problems);
    }
    if lines.is_empty() {
        return Err(Failure::invalid(format!(
            "{}: the file holds no rows",
            path.display()
        )));
    }
    let bad_rows = faults.bad_rows();
    if bad_rows > 0 {
        return Err(Failure::invalid(format!(
            "{}: {bad_rows} of {} rows are invalid; nothing was submitted",
            path.display(),
            lines.len()
        ))
        .with_problems(faults.into_problems()));
    }
    Ok(Prepared {
        lines,
        body_sha256: digest.finalize().into(),
    })
}

/// Reads the file again, sending the body a chunk at a time; the body fails (so the API makes
/// nothing) if the file no longer gives the body the first reading hashed.
fn produce(
    path: PathBuf,
    format: Format,
    defaults: Defaults,
    expected: [u8; 32],
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
    differs: Arc<AtomicBool>,
) {
    let changed = || {
        differs.store(true, Ordering::Relaxed);
        std::io::Error::other("the file changed while it was being sent")
    };
    // The first reading read it whole: a reading that fails now is of a file that changed
    // (a header renamed, a row broken, the file gone) as much as one that differs.
    let unreadable = |e: crate::exit::Failure| {
        differs.store(true, Ordering::Relaxed);
        std::io::Error::other(e.message)
    };
    let result = (|| -> std::io::Result<()> {
        let mut rows = Rows::open(&path, format).map_err(unreadable)?;
        let mut digest = Sha256::new();
        let mut chunk = Vec::with_capacity(CHUNK + 1024);
        while let Some(row) = rows.next_row().map_err(unreadable)? {
            let mut item = row.fields.map_err(|_| changed())?;
            let line = item_line(&mut item, &defaults).1.map_err(|_| changed())?;
            digest.update(&line);
            chunk.extend_from_slice(&line);
            if chunk.len() >= CHUNK && tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
                return Ok(());
            }
        }
        if <[u8; 32]>::from(digest.finalize()) != expected {
            return Err(changed());
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(Ok(chunk));
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = tx.blocking_send(Err(e));
    }
}

/// The SHA-256 of a file's bytes, as hex.
fn file_sha256(path: &Path) -> Result<String> {
    rows::not_a_folder(path)?;
    let named = |e: std::io::Error| Failure::invalid(format!("{}: {e}", path.display()));
    let mut file = File::open(path).map_err(named)?;
    let mut digest = Sha256::new();
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = file.read(&mut buf).map_err(named)?;
        if n == 0 {
            return Ok(hex(&digest.finalize()));
        }
        digest.update(&buf[..n]);
    }
}

/// Submits the file; the batch as the API answers it.
pub async fn submit(api: &Api, path: &Path, defaults: Defaults) -> Result<Value> {
    rows::not_a_folder(path)?;
    let format = Format::of(path)?;
    let path = std::fs::canonicalize(path)
        .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))?;
    let prepared = {
        let (path, defaults) = (path.clone(), defaults.clone());
        tokio::task::spawn_blocking(move || {
            let sha = file_sha256(&path)?;
            prepare(&path, format, &defaults).map(|p| (p, sha))
        })
        .await
        .map_err(|e| Failure::invalid(e.to_string()))?
    };
    let (prepared, file_sha) = prepared?;
    let key = api.idempotency_key(&prepared.body_sha256);
    // Set when the file no longer gives the body hashed: the request failed, and no retry can
    // send it.
    let differs = Arc::new(AtomicBool::new(false));
    let tries = std::cell::Cell::new(0u32);
    let send = || {
        tries.set(tries.get() + 1);
        let (tx, rx) = mpsc::channel(4);
        {
            let (path, defaults, differs) = (path.clone(), defaults.clone(), differs.clone());
            let expected = prepared.body_sha256;
            tokio::task::spawn_blocking(move || {
                produce(path, format, defaults, expected, tx, differs)
            });
        }
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        api.http()
            .post(api.url("/configapi/v2/batches"))
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", &key)
            .body(reqwest::Body::wrap_stream(body))
    };
    let sent = api
        .send_streamed(send, || differs.load(Ordering::Relaxed))
        .await;
    if sent.is_err() && differs.load(Ordering::Relaxed) {
        // An earlier try, cut off before its answer, may have been taken whole.
        let outcome = if tries.get() > 1 {
            "this try was refused, and an earlier one may have made a batch (`provisioner batch \
             list` shows it)"
        } else {
            "nothing was submitted"
        };
        return Err(Failure::invalid(format!(
            "{}: the file changed (or could no longer be read) while it was being sent, after \
             it was checked; {outcome}: check it and run the command again",
            path.display()
        )));
    }
    let response = sent.map_err(|mut e| {
        if e.exit == Exit::Unreachable {
            e.message
                .push_str("; run the same command again to reattach");
        }
        e
    })?;
    if !response.status().is_success() {
        let mut failure = answer_failure(response).await;
        // The API counts items from 0 (and lines of its body from 1): back to file lines.
        for p in &mut failure.problems {
            if let Some(line) = p.item.and_then(|i| prepared.lines.get(i as usize)) {
                p.line = Some(*line);
            }
        }
        return Err(failure);
    }
    let batch: Value = success_json(response).await?;
    let id = batch["batchId"].as_str().unwrap_or_default().to_owned();
    state::remember(&id, &state::Submission::new(path, file_sha, &defaults));
    Ok(batch)
}

/// The items of a remembered submission, in order, for `batch results --format csv`: the same
/// file (unchanged) read with the same options. `None` when the file changed or is gone.
pub fn resubmitted_rows(submission: &state::Submission) -> Option<(Rows, Defaults)> {
    let sha = file_sha256(&submission.file).ok()?;
    if sha != submission.file_sha256 {
        return None;
    }
    let format = Format::of(&submission.file).ok()?;
    Some((
        Rows::open(&submission.file, format).ok()?,
        submission.defaults(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fields::TemplateChoice, scratch};

    const HEADER: &str = "tenantUrl,tenantName,firstName,lastName,loginId,email";

    fn csv(rows: &[&str]) -> String {
        let mut text = format!("{HEADER}\n");
        for row in rows {
            text.push_str(row);
            text.push('\n');
        }
        text
    }

    fn row(url: &str) -> String {
        format!("{url},T,Ada,Lovelace,admin,a@{url}")
    }

    #[test]
    fn a_set_field_that_is_a_column_of_the_file_is_named() {
        let headers: Vec<String> = ["tenantUrl", "tenantName", "password", "email"]
            .map(String::from)
            .to_vec();
        let set = defaults(
            &[
                ("tenantName", "Acme"),
                ("password", "Welcome-1"),
                ("firstName", "Ann"),
            ],
            false,
        );
        assert_eq!(filled_by_the_file(&headers, &set), ["tenantName"]);
        assert!(filled_by_the_file(&[], &set).is_empty());
    }

    fn defaults(set: &[(&str, &str)], template: bool) -> Defaults {
        Defaults {
            set: set
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect(),
            template: template.then(|| TemplateChoice::Url("https://t.example/t.zip".into())),
        }
    }

    /// The refusal of `text` as a CSV file read with `defaults`, its problems as printed.
    fn refused(text: &str, defaults: &Defaults) -> (Failure, Vec<String>) {
        let path = scratch::file("t.csv", text.as_bytes());
        let Err(failure) = prepare(&path, Format::Csv, defaults) else {
            panic!("the file was taken");
        };
        let shown = failure.problems.iter().map(Problem::to_string).collect();
        (failure, shown)
    }

    #[test]
    fn a_password_no_row_has_is_reported_once_with_the_options_that_give_it() {
        let rows = [row("a.example"), row("b.example"), row("c.example")];
        let text = csv(&rows.iter().map(String::as_str).collect::<Vec<_>>());
        let (failure, shown) = refused(&text, &defaults(&[], true));
        assert!(
            failure
                .message
                .ends_with("3 of 3 rows are invalid; nothing was submitted"),
            "{}",
            failure.message
        );
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(
            shown[0].starts_with("password: ")
                && shown[0].contains("--set password=")
                && shown[0].contains("PROVISIONER_PASSWORD"),
            "{shown:?}"
        );
        assert_eq!(failure.problems[0].line, None);
    }

    #[test]
    fn a_template_no_row_names_is_reported_once_with_the_template_options() {
        // Another fault of one row is still reported at its line.
        let text = csv(&[&row("a.example"), "b.example,T,Ada,Lovelace,admin,nope"]);
        let (_, shown) = refused(&text, &defaults(&[("password", "long enough")], false));
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            ["--template-url", "--template-id", "--template FILE.zip"]
                .iter()
                .all(|o| shown[0].contains(o)),
            "{shown:?}"
        );
        assert_eq!(shown[1], "line 3: email: must be a valid e-mail address");
    }

    #[test]
    fn a_repeated_tenant_url_is_named_with_the_rows_other_faults() {
        let text = csv(&[
            "dup.example,T,Ada,Lovelace,admin,not an address",
            "DUP.example,T,Ada,Lovelace,admin,nope",
        ]);
        let set = defaults(&[("password", "long enough")], true);
        let (_, shown) = refused(&text, &set);
        assert_eq!(
            shown,
            [
                "line 2: email: must be a valid e-mail address",
                "line 3: tenantUrl: is the same as line 2's; tenant URLs must be distinct",
                "line 3: email: must be a valid e-mail address",
            ]
        );
    }

    #[test]
    fn a_field_some_rows_have_is_reported_at_each_row_that_lacks_it() {
        let text = format!(
            "{HEADER},password,templateUrl\n{},long enough,https://t.example/t.zip\n{},,\n{},,\n",
            row("a.example"),
            row("b.example"),
            row("c.example"),
        );
        let (failure, shown) = refused(&text, &defaults(&[], false));
        assert!(
            failure
                .message
                .ends_with("2 of 3 rows are invalid; nothing was submitted")
        );
        let required: Vec<&String> = shown.iter().filter(|p| p.contains("password")).collect();
        assert_eq!(
            required,
            [
                "line 3: password: is required",
                "line 4: password: is required"
            ],
            "{shown:?}"
        );
        assert_eq!(
            shown.iter().filter(|p| p.contains("templateUrl: ")).count(),
            2
        );
    }

    #[test]
    fn a_folder_given_for_the_rows_is_named() {
        let dir = scratch::folder("rows.ndjson");
        let shown = dir.display().to_string();
        let sha = file_sha256(&dir).err();
        let prepared = prepare(&dir, Format::Ndjson, &defaults(&[], true)).err();
        for failure in [sha, prepared] {
            let failure = failure.expect("a folder is refused");
            assert!(
                failure.message.starts_with(&format!("{shown} is a folder")),
                "{}",
                failure.message
            );
        }
    }
}
