//! The `provisioner` command line end to end: the real program against a running system, for
//! every command and exit code, CSV and NDJSON input, bad rows by file line, reattaching after
//! a killed submit, progress off a terminal and in a terminal (tmux), token renewal, secrets
//! never printed, the examples' dbVersion, and the README's Quick start.

use std::time::{Duration, Instant};

use provisioner_tests::{
    Options, TestApp, batches,
    cli::{Cli, Scratch, repo},
    eventually, fixtures,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_test-provisioner");
const PASSWORD: &str = "cli-Secret-pa55word-91f2";
/// The create fields besides the password, as `--set` takes them.
const ADMIN_FIELDS: [&str; 5] = [
    "tenantName=Acme",
    "firstName=Ada",
    "lastName=Lovelace",
    "loginId=admin",
    "email=ada@acme.example",
];

fn cli(app: &TestApp) -> Cli {
    let mut cli = Cli::new(BIN, app);
    cli.secrets.push(PASSWORD.to_owned());
    cli
}

/// Packs the small example into `scratch`; the ZIP's path.
async fn small_zip(cli: &Cli, scratch: &Scratch) -> String {
    let zip = scratch.path("small.zip").display().to_string();
    cli.run(&["template", "pack", "examples/templates/small", "-o", &zip])
        .await
        .expect(0);
    zip
}

fn csv_rows(n: usize, extra: &str) -> String {
    let mut text = String::from("tenantUrl,tenantName,firstName,lastName,loginId,email\n");
    for _ in 0..n {
        let url = fixtures::tenant_url();
        text.push_str(&format!(
            "{url},Tenant {url},Ada,Lovelace,admin,ada@{url}\n"
        ));
    }
    text.push_str(extra);
    text
}

/// Checks the header of CSV results `lines` and that the next row starts with `prefix`; the row.
fn first_result<'t>(lines: &mut std::str::Lines<'t>, header: &str, prefix: &str) -> &'t str {
    assert_eq!(lines.next(), Some(header));
    let row = lines.next().expect("a row");
    assert!(row.starts_with(prefix), "{row}");
    row
}

async fn batch_count(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM batches").await
}

#[tokio::test]
async fn examples_pack_check_and_upload_with_the_servers_db_version() {
    let app = TestApp::without_workers().await;
    let cli = cli(&app);
    let scratch = Scratch::new();
    for example in ["small", "contact-center-large"] {
        let zip = scratch
            .path(&format!("{example}.zip"))
            .display()
            .to_string();
        let dir = format!("examples/templates/{example}");
        let packed = cli
            .run(&["--json", "template", "pack", &dir, "-o", &zip])
            .await
            .expect(0)
            .json();
        // The dbVersion the program was built with is the server's: the examples never rot.
        assert_eq!(packed["dbVersion"], app.db_version().await, "{packed}");
        assert!(packed["counts"]["users"].as_u64().unwrap() >= 5, "{packed}");
        let checked = cli
            .run(&["template", "check", &zip, "--json"])
            .await
            .expect(0)
            .json();
        assert_eq!(checked["dbVersion"], app.db_version().await);
        let id = cli
            .run(&["template", "upload", &zip, "--name", example])
            .await
            .expect(0);
        assert_eq!(id.stdout.trim(), packed["templateId"].as_str().unwrap());
        let (status, stored) = app
            .get_json(&format!("/configapi/v2/templates/{}", id.stdout.trim()))
            .await;
        assert_eq!(
            (status, stored["name"].as_str()),
            (200, Some(example)),
            "{stored}"
        );
    }
    let list = cli
        .run(&["template", "list", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    let text = cli.run(&["template", "list"]).await.expect(0);
    assert!(
        text.stdout.contains("contact-center-large"),
        "{}",
        text.stdout
    );

    // Another database version: refused offline with the fault (and 4).
    let small = scratch.path("small.zip").display().to_string();
    let wrong = cli
        .run(&["template", "check", &small, "--db-version", "7"])
        .await
        .expect(4);
    assert!(
        wrong.stderr.contains("dbVersion is") && wrong.stderr.contains("accepts 7"),
        "{}",
        wrong.stderr
    );
    // Larger than the server takes (`--max-bytes`, default 64 MiB): 4, naming the limit,
    // beside every other fault.
    let size = std::fs::metadata(&small).unwrap().len();
    let (exactly, less) = (size.to_string(), (size - 1).to_string());
    cli.run(&["template", "check", &small, "--max-bytes", &exactly])
        .await
        .expect(0);
    let over = cli
        .run(&["template", "check", &small, "--max-bytes", &less])
        .await
        .expect(4);
    let named = format!("the file is {size} bytes, more than the server's {less}");
    assert!(over.stderr.contains(&named), "{}", over.stderr);
    let both = cli
        .run(&[
            "template",
            "check",
            &small,
            "--max-bytes",
            &less,
            "--db-version",
            "7",
        ])
        .await
        .expect(4);
    assert!(
        both.stderr.contains(&named) && both.stderr.contains("accepts 7"),
        "{}",
        both.stderr
    );
    // With `--json`, the outcome is on stdout too, as a valid template's is.
    let json = cli
        .run(&["--json", "template", "check", &small, "--max-bytes", &less])
        .await
        .expect(4);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect(&json.stdout);
    assert_eq!(
        (&doc["valid"], doc["faults"].as_array().map(|f| f.len())),
        (&serde_json::json!(false), Some(1)),
        "{doc}"
    );
    assert!(doc["faults"][0].as_str().unwrap().contains(&named), "{doc}");
    // And when the file cannot be read at all.
    let absent = scratch.path("absent.zip").display().to_string();
    let json = cli
        .run(&["--json", "template", "check", &absent])
        .await
        .expect(4);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect(&json.stdout);
    assert_eq!(doc["valid"], false, "{doc}");
    assert!(
        doc["faults"][0].as_str().unwrap().contains("absent.zip"),
        "{doc}"
    );
    // Not a ZIP, and a folder with a broken entry: 4, naming the fault.
    let junk = scratch.write("junk.zip", "not a zip");
    cli.run(&["template", "check", junk.to_str().unwrap()])
        .await
        .expect(4);
    cli.run(&["template", "upload", junk.to_str().unwrap()])
        .await
        .expect(4);
    // Faults in two parts of one template, and two in one part: every one is printed.
    let mut faulty = fixtures::sample_template(app.db_version().await);
    faulty.users[0].first_name = "Ad\u{202e}a".into();
    faulty.users[1].email = "not-an-address".into();
    faulty.access_numbers[0].number = "99999".into();
    faulty.access_numbers[0].count = 10;
    let faulty_zip = scratch.path("faulty.zip");
    std::fs::write(&faulty_zip, faulty.write()).unwrap();
    let out = cli
        .run(&["template", "check", faulty_zip.to_str().unwrap()])
        .await
        .expect(4);
    for fault in [
        "users[0].firstName must not contain control or Unicode format characters",
        "users[1].email must be a valid e-mail address",
        "range 99999 x 10 runs past its digit length",
    ] {
        assert!(out.stderr.contains(fault), "{fault}: {}", out.stderr);
    }
    // The manifest's faults, each of them, beside the contents'.
    faulty.manifest.format_version = 2;
    faulty.manifest.db_version = 7;
    std::fs::write(&faulty_zip, faulty.write()).unwrap();
    let out = cli
        .run(&["template", "check", faulty_zip.to_str().unwrap()])
        .await
        .expect(4);
    for fault in ["formatVersion is 2", "dbVersion is 7", "users[1].email"] {
        assert!(out.stderr.contains(fault), "{fault}: {}", out.stderr);
    }
    let broken = scratch.path("broken");
    std::fs::create_dir(&broken).unwrap();
    for entry in ["tenant.json", "objects.json", "access_numbers.json"] {
        std::fs::copy(
            repo().join("examples/templates/small").join(entry),
            broken.join(entry),
        )
        .unwrap();
    }
    std::fs::write(broken.join("users.json"), r#"[{"id": "not-a-uuid"}]"#).unwrap();
    let out = scratch.path("broken.zip");
    let bad = cli
        .run(&[
            "template",
            "pack",
            broken.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .await
        .expect(4);
    assert!(bad.stderr.contains("users.json"), "{}", bad.stderr);
    assert!(!out.exists());
    app.stop().await;
}

#[tokio::test]
async fn the_example_csv_provisions_as_a_batch_and_every_read_command_shows_it() {
    let app = TestApp::spawn().await;
    let cli = cli(&app);
    let scratch = Scratch::new();
    let zip = small_zip(&cli, &scratch).await;
    let set = format!("password={PASSWORD}");
    let done = cli
        .run(&[
            "batch",
            "submit",
            "examples/tenants.csv",
            "--template",
            &zip,
            "--set",
            &set,
            "--wait",
            "--json",
        ])
        .await
        .expect(0)
        .json();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["counts"]["total"], 36);
    assert_eq!(done["counts"]["succeeded"], 36, "{done}");
    let id = done["batchId"].as_str().unwrap().to_owned();

    let status = cli.run(&["batch", "status", &id]).await.expect(0);
    assert!(
        status.stdout.contains(&id) && status.stdout.contains("succeeded 36"),
        "{}",
        status.stdout
    );
    let list = cli.run(&["batch", "list", "--json"]).await.expect(0).json();
    assert_eq!(list["items"][0]["batchId"], id.as_str());
    let results = cli.run(&["batch", "results", &id]).await.expect(0);
    let lines: Vec<Value> = results
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 36);
    assert_eq!(lines[0]["tenantUrl"], "acme.example.com");
    // `--json` makes any command print JSON: the results as one array.
    let array = cli
        .run(&["--json", "batch", "results", &id])
        .await
        .expect(0)
        .json();
    assert_eq!(array.as_array().map(Vec::len), Some(36), "{array}");
    assert_eq!(array[0], lines[0]);
    cli.run(&["--json", "batch", "results", &id, "--format", "csv"])
        .await
        .expect(4);
    // NDJSON asked for by name is JSON too: one document a line, as without `--json`.
    let ndjson = cli
        .run(&["--json", "batch", "results", &id, "--format", "ndjson"])
        .await
        .expect(0);
    assert_eq!(ndjson.stdout, results.stdout);
    let job = lines[0]["jobId"].as_str().unwrap();
    let got = cli
        .run(&["job", "get", job, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(
        (got["status"].as_str(), got["batchId"].as_str()),
        (Some("succeeded"), Some(id.as_str()))
    );
    let tenant = cli
        .run(&["tenant", "get", "acme.example.com", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(
        (tenant["name"].as_str(), tenant["status"].as_str()),
        (Some("Acme Support"), Some("Inactive"))
    );
    // The numberMap column moved the template's numbers to the row's own.
    let (_, numbers) = app
        .get_json("/configapi/v2/accessnumbers?tenantUrl=acme.example.com")
        .await;
    let firsts: Vec<&str> = numbers
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["number"].as_str().unwrap())
        .collect();
    assert!(
        firsts.contains(&"4155500000") && firsts.contains(&"4155590000"),
        "{numbers}"
    );
    // The CSV results carry the submitted columns, never the password.
    let csv = cli
        .run(&["batch", "results", &id, "--format", "csv"])
        .await
        .expect(0);
    let header = csv.stdout.lines().next().unwrap();
    assert_eq!(
        header,
        "tenantUrl,tenantName,firstName,lastName,loginId,email,numberMap,templateId,jobId,status,code,error"
    );
    assert_eq!(csv.stdout.lines().count(), 37);
    assert!(
        csv.stdout
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("acme.example.com,Acme Support,Ada,Lovelace,admin,")
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_rows_are_reported_by_file_line_and_nothing_is_submitted() {
    let app = TestApp::without_workers().await;
    let cli = cli(&app);
    let scratch = Scratch::new();
    let template = app.serve_sample_template("t.zip").await;
    let good = |url: &str| json!({"tenantUrl": url, "tenantName": "T", "firstName": "A", "lastName": "B", "loginId": "admin", "email": format!("a@{url}")});
    // NDJSON: blank lines are not items, yet lines count; line 5 has a bad e-mail, line 6 is not JSON.
    let mut bad = good(&fixtures::tenant_url());
    bad["email"] = json!("not-an-address");
    let text = format!(
        "{}\n\n{}\n   \n{}\n{{oops\n",
        good(&fixtures::tenant_url()),
        good(&fixtures::tenant_url()),
        bad
    );
    let file = scratch.write("t.ndjson", &text);
    let set = format!("password={PASSWORD}");
    let out = cli
        .run(&[
            "batch",
            "submit",
            file.to_str().unwrap(),
            "--template-url",
            &template,
            "--set",
            &set,
        ])
        .await
        .expect(4);
    assert!(
        out.stderr
            .contains("line 5: email: must be a valid e-mail address"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("line 6: not valid JSON"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("line 1:") && !out.stderr.contains("line 3:"),
        "{}",
        out.stderr
    );
    // CSV: a duplicate tenant URL and a bad numberMap, by the file's line; --json on stderr.
    let url = fixtures::tenant_url();
    let csv = format!(
        "tenantUrl,tenantName,firstName,lastName,loginId,email,numberMap\n\
         {url},T,A,B,admin,a@{url},0000000000:4155550100\n\
         \"{url}\",\"T, two\",A,B,admin,a@{url},\n\
         {u2},T,A,B,admin,a@{u2},12x:1\n",
        u2 = fixtures::tenant_url()
    );
    let file = scratch.write("t.csv", &csv);
    let out = cli
        .run(&[
            "--json",
            "batch",
            "submit",
            file.to_str().unwrap(),
            "--template-url",
            &template,
            "--set",
            &set,
        ])
        .await
        .expect(4);
    let report: Value = serde_json::from_str(out.stderr.trim()).unwrap();
    assert_eq!(report["exitCode"], 4);
    // `--json` makes every command print its outcome on stdout, a failure included.
    let printed: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(printed, report);
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["line"] == 3 && p["field"] == "tenantUrl"),
        "{report}"
    );
    assert!(
        problems.iter().any(|p| p["line"] == 4
            && p["field"] == "numberMap"
            && p["message"].as_str().unwrap().contains("\"12x\"")),
        "{report}"
    );
    // A row the API refuses (a template id this client never stored): mapped to its line.
    let file = scratch.write("ok.csv", &csv_rows(3, ""));
    let unknown = "a".repeat(64);
    let out = cli
        .run(&[
            "batch",
            "submit",
            file.to_str().unwrap(),
            "--template-id",
            &unknown,
            "--set",
            &set,
        ])
        .await
        .expect(4);
    // The API numbers its body's lines from 1; the file's rows are lines 2 to 4 (a header).
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("templateId:"))
        .collect();
    assert_eq!(lines.len(), 3, "{}", out.stderr);
    for (line, row) in lines.iter().zip(2..) {
        assert!(
            line.trim_start()
                .starts_with(&format!("line {row}: templateId:")),
            "{}",
            out.stderr
        );
    }
    assert_eq!(batch_count(&app).await, 0);
    // A template folder where a ZIP goes is named, with the command that packs it.
    let folder = "examples/templates/small";
    let submit = ["batch", "submit", file.to_str().unwrap()];
    for args in [
        &[&submit[..], &["--template", folder, "--set", &set]].concat()[..],
        &["template", "upload", folder],
        &["template", "check", folder],
    ] {
        let out = cli.run(args).await.expect(4);
        assert!(
            out.stderr.contains(&format!("{folder} is a folder"))
                && out
                    .stderr
                    .contains(&format!("provisioner template pack {folder} -o small.zip")),
            "{args:?}: {}",
            out.stderr
        );
    }
    // A --set field that does not exist is the option's fault, said once, before any row.
    let typo = format!("passwrd={PASSWORD}");
    let out = cli
        .run(&[&submit[..], &["--template-url", &template, "--set", &typo]].concat())
        .await
        .expect(4);
    assert!(
        out.stderr.contains("--set passwrd: unknown field") && !out.stderr.contains("line "),
        "{}",
        out.stderr
    );
    // A field or template no row has is said once, with the options that give it.
    let out = cli
        .run(&[&submit[..], &["--template-url", &template]].concat())
        .await
        .expect(4);
    let said: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("password"))
        .collect();
    assert!(
        said.len() == 1
            && said[0].contains("--set password=")
            && said[0].contains("PROVISIONER_PASSWORD"),
        "{}",
        out.stderr
    );
    let out = cli
        .run(&[&submit[..], &["--set", &set]].concat())
        .await
        .expect(4);
    let said: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("template"))
        .collect();
    assert!(
        said.len() == 1
            && ["--template-url", "--template-id", "--template FILE.zip"]
                .iter()
                .all(|o| said[0].contains(o)),
        "{}",
        out.stderr
    );
    assert_eq!(batch_count(&app).await, 0);
    // Every command explains itself with an example; help is not an error.
    for command in [
        &["batch", "submit"][..],
        &["template", "pack"],
        &["job", "wait"],
        &["create"],
    ] {
        let help = cli.run(&[command, &["--help"]].concat()).await.expect(0);
        assert!(
            help.stdout.contains("Example"),
            "{command:?}: {}",
            help.stdout
        );
    }
    // Options and usage errors are 4 too.
    cli.run(&[
        "batch",
        "submit",
        file.to_str().unwrap(),
        "--set",
        "nonsense",
    ])
    .await
    .expect(4);
    cli.run(&["batch", "submit", "no-such-file.csv"])
        .await
        .expect(4);
    cli.run(&["batch", "frobnicate"]).await.expect(4);
    assert_eq!(batch_count(&app).await, 0);
    app.stop().await;
}

/// A file that changes between the check of its rows and their sending (here while the program
/// asks for its token, which it does between the two) is the file's fault: exit 4, said so,
/// nothing submitted, not sent again. It was reported as an API that could not be reached
/// (exit 6, "run the same command again"), after five more tries.
#[tokio::test]
async fn a_file_changed_while_it_is_sent_is_refused_as_the_files_fault() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = TestApp::without_workers().await;
    let mut cli = cli(&app);
    let scratch = Scratch::new();
    // Other rows; and a header renamed, which the second reading cannot read past.
    for changed in [
        csv_rows(3, ""),
        csv_rows(3, "").replacen("tenantName", "name", 1),
    ] {
        let file = scratch.write("rows.csv", &csv_rows(3, ""));
        // An API whose token endpoint changes the file before it answers, and that counts every
        // other connection (the batch's tries), reading each until the program gives it up.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        cli.api = format!("http://{}", listener.local_addr().unwrap());
        let tries = Arc::new(AtomicUsize::new(0));
        let server = tokio::spawn({
            let (file, tries) = (file.clone(), tries.clone());
            async move {
                loop {
                    let (mut socket, _) = listener.accept().await.unwrap();
                    let request = request_head(&mut socket).await;
                    let head = String::from_utf8_lossy(&request).into_owned();
                    if head.starts_with("POST /configapi/v2/oauth/token") {
                        std::fs::write(&file, &changed).unwrap();
                        let body =
                            r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = socket.write_all(answer.as_bytes()).await;
                    } else {
                        // The batch, or what the program sent of it before its body failed (it
                        // may be nothing: the body fails before its first piece).
                        tries.fetch_add(1, Ordering::SeqCst);
                        let mut chunk = [0u8; 4096];
                        while matches!(socket.read(&mut chunk).await, Ok(n) if n > 0) {}
                    }
                }
            }
        });
        let out = cli
            .run(&[
                "batch",
                "submit",
                file.to_str().unwrap(),
                "--template-url",
                "http://templates.example/t.zip",
                "--set",
                &format!("password={PASSWORD}"),
            ])
            .await
            .expect(4);
        assert!(
            out.stderr
                .contains("the file changed (or could no longer be read) while it was being sent")
                && out.stderr.contains("nothing was submitted")
                && !out.stderr.contains("reattach"),
            "{}",
            out.stderr
        );
        assert_eq!(tries.load(Ordering::SeqCst), 1, "sent once");
        server.abort();
    }
    app.stop().await;
}

#[tokio::test]
async fn a_killed_submit_run_again_reattaches_to_its_one_batch() {
    let mut app = TestApp::without_workers().await;
    let cli = cli(&app);
    let scratch = Scratch::new();
    let template = app.serve_sample_template("t.zip").await;
    let file = scratch.write("t.csv", &csv_rows(4, ""));
    let set = format!("password={PASSWORD}");
    let args = [
        "batch",
        "submit",
        file.to_str().unwrap(),
        "--template-url",
        &template,
        "--set",
        &set,
        "--wait",
    ];
    let mut child = cli.command(&args).spawn().unwrap();
    eventually(Duration::from_secs(30), || async {
        (batch_count(&app).await == 1).then_some(())
    })
    .await;
    child.kill().await.unwrap();
    let again = cli.run(&args[..args.len() - 1]).await.expect(0);
    let id = again.stdout.trim().to_owned();
    assert_eq!(batch_count(&app).await, 1, "a second batch was made");
    let first: String = sqlx::query_scalar("SELECT id::text FROM batches")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(id, first);
    // Other options are another batch.
    let other = cli
        .run(&[
            "batch",
            "submit",
            file.to_str().unwrap(),
            "--template-url",
            &template,
            "--set",
            &set,
            "--set",
            "lockTimeout=5",
        ])
        .await;
    assert_eq!(other.code, 0, "{other:?}");
    assert_eq!(batch_count(&app).await, 2);
    cli.run(&["batch", "cancel", other.stdout.trim()])
        .await
        .expect(0);
    app.start_worker();
    let done = cli.run(&["batch", "wait", &id]).await.expect(0);
    assert!(
        done.stdout.contains("completed") && done.stdout.contains("succeeded 4"),
        "{}",
        done.stdout
    );
    app.stop().await;
}

/// A submit the API refuses while the file arrives (its client already sends as many large
/// NDJSON batches as one client may at once: `503` with `Retry-After`) is sent again, not given
/// up: it is accepted once the others are in.
#[tokio::test]
async fn a_submit_refused_while_the_api_is_busy_is_sent_again() {
    let app = TestApp::without_workers().await;
    let cli = cli(&app);
    let scratch = Scratch::new();
    let template = app.serve_sample_template("t.zip").await;
    let held: Vec<_> = (0..2)
        .map(|_| batches::stalled(&app, &app.http, &template))
        .collect();
    batches::until_receiving(&app, 2).await;
    let file = scratch.write("t.csv", &csv_rows(1_001, ""));
    let set = format!("password={PASSWORD}");
    let child = cli
        .command(&[
            "batch",
            "submit",
            file.to_str().unwrap(),
            "--template-url",
            &template,
            "--set",
            &set,
        ])
        .spawn()
        .unwrap();
    let refused = "provisioner_http_requests_total{method=\"POST\",route=\"/configapi/v2/batches\",status=\"503\"}";
    eventually(Duration::from_secs(30), || async {
        (app.metric(refused).await >= Some(1.0)).then_some(())
    })
    .await;
    for (answer, release) in held {
        drop(release);
        assert_eq!(answer.await.unwrap(), 202);
    }
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // The wait is said, not taken for a hang.
    assert!(
        stderr.contains("the API is busy (503 Service Unavailable); asking again in"),
        "{stderr}"
    );
    assert_eq!(batch_count(&app).await, 3);
    app.stop().await;
}

/// `template delete` removes the client's stored template (exit 0); an id it does not store
/// exits 4, as one that is not an id does, without a request.
#[tokio::test]
async fn a_stored_template_is_deleted_by_its_id() {
    let app = TestApp::without_workers().await;
    let cli = cli(&app);
    let scratch = Scratch::new();
    let zip = small_zip(&cli, &scratch).await;
    let id = cli
        .run(&["template", "upload", &zip])
        .await
        .expect(0)
        .stdout
        .trim()
        .to_owned();
    assert_eq!(app.count("SELECT count(*) FROM client_templates").await, 1);
    cli.run(&["template", "delete", &id]).await.expect(0);
    assert_eq!(app.count("SELECT count(*) FROM client_templates").await, 0);
    let again = cli.run(&["template", "delete", &id]).await.expect(4);
    assert!(again.stderr.contains("404"), "{}", again.stderr);
    let bad = cli.run(&["template", "delete", "nope"]).await.expect(4);
    assert!(
        bad.stderr.contains("is not a template id"),
        "{}",
        bad.stderr
    );
    app.stop().await;
}

#[tokio::test]
async fn csv_results_keep_the_files_columns_in_its_order_without_the_password() {
    let app = TestApp::spawn().await;
    let cli = cli(&app);
    let scratch = Scratch::new();
    let template = app.serve_sample_template("t.zip").await;
    let url = fixtures::tenant_url();
    let file = scratch.write(
        "t.csv",
        &format!(
            "email,loginId,password,tenantUrl,lastName,firstName,tenantName\n\
             ada@{url},admin,{PASSWORD},{url},Lovelace,Ada,Reordered\n"
        ),
    );
    let args = [
        "batch",
        "submit",
        file.to_str().unwrap(),
        "--template-url",
        &template,
        "--wait",
    ];
    let out = cli.run(&args).await.expect(0);
    let id = out.stdout.lines().next().unwrap().to_owned();
    let csv = cli
        .run(&["batch", "results", &id, "--format", "csv"])
        .await
        .expect(0);
    // The file's columns in its order, then the option's.
    let mut lines = csv.stdout.lines();
    let row = first_result(
        &mut lines,
        "email,loginId,tenantUrl,lastName,firstName,tenantName,templateUrl,jobId,status,code,error",
        &format!("ada@{url},admin,{url},Lovelace,Ada,Reordered,{template},"),
    );
    assert!(row.ends_with(",succeeded,200,"), "{row}");
    app.stop().await;
}

#[tokio::test]
async fn csv_results_of_a_batch_made_elsewhere_carry_the_fields_the_server_recorded() {
    let app = TestApp::without_workers().await;
    let cli = cli(&app);
    let template = "https://templates.example/t.zip";
    let url = fixtures::tenant_url();
    // Posted to the API, not by this command line: no file is known here. Its cells may be
    // anyone's input: never a formula.
    let mut item = batches::item(&url, template);
    item["tenantName"] = json!("=1+2");
    let mut quoted = batches::item(&fixtures::tenant_url(), template);
    quoted["tenantName"] = json!("'t Hooft");
    let batch = batches::submit(&app, &[item, quoted]).await;
    let id = batch["batchId"].as_str().unwrap();
    let csv = cli
        .run(&["batch", "results", id, "--format", "csv"])
        .await
        .expect(0);
    let mut lines = csv.stdout.lines();
    let row = first_result(
        &mut lines,
        "tenantUrl,tenantName,firstName,lastName,loginId,email,numberMap,templateUrl,templateId,lockTimeout,jobId,status,code,error",
        &format!(
            "{url},'=1+2,Ada,Lovelace,admin,ada@acme.example,0000000000:4155550100,{template},,10,"
        ),
    );
    assert!(row.ends_with(",queued,,"), "{row}");
    assert!(lines.next().unwrap().contains(",''t Hooft,"));
    assert_eq!(lines.next(), None);
    assert!(!csv.stdout.contains(fixtures::SENTINEL_PASSWORD));
    // Submitted again as it is, each cell is the text it was made from: the guard against
    // formulas is not sent as part of a name (it was: a tenant named `'=1+2`).
    let scratch = Scratch::new();
    let again = scratch.write("again.csv", &csv.stdout);
    let out = cli
        .run(&[
            "batch",
            "submit",
            again.to_str().unwrap(),
            "--set",
            &format!("password={PASSWORD}"),
        ])
        .await
        .expect(0);
    let again_id = out.stdout.lines().next().unwrap().to_owned();
    let submitted = app
        .http
        .get(app.url(&format!(
            "/configapi/v2/batches/{again_id}/results?fields=submitted"
        )))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let names: Vec<String> = submitted
        .lines()
        .map(|l| {
            let line: Value = serde_json::from_str(l).unwrap();
            line["fields"]["tenantName"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(names, ["=1+2", "'t Hooft"]);
    app.stop().await;
}

#[tokio::test]
async fn failed_items_exit_1_and_their_csv_results_can_be_fixed_and_retried() {
    let app = TestApp::spawn().await;
    let cli = cli(&app);
    let scratch = Scratch::new();
    let template = app.serve_sample_template("t.zip").await;
    let taken = fixtures::tenant_url();
    app.create_and_wait(&taken, &fixtures::create_body(&template))
        .await;
    let extra = format!("{taken},Taken,Ada,Lovelace,admin,ada@{taken}\n");
    let file = scratch.write("t.csv", &csv_rows(2, &extra));
    // The password from the environment, off the command line.
    let args = [
        "batch",
        "submit",
        file.to_str().unwrap(),
        "--template-url",
        &template,
        "--wait",
    ];
    let mut command = cli.command(&args);
    command.env("PROVISIONER_PASSWORD", PASSWORD);
    let out = cli.finish(command.spawn().unwrap(), &args).await.expect(1);
    let id = out.stdout.lines().next().unwrap().to_owned();
    // What the program remembers of the submission holds no password.
    let record = cli.state.path(&format!("batches/{id}.json"));
    let record = std::fs::read_to_string(&record).unwrap();
    assert!(
        record.contains("t.csv") && !record.contains(PASSWORD),
        "{record}"
    );
    assert!(
        out.stdout.contains("failed 1") && out.stdout.contains("succeeded 2"),
        "{}",
        out.stdout
    );
    let failed = scratch.path("failed.csv");
    cli.run(&[
        "batch",
        "results",
        &id,
        "--status",
        "failed",
        "--format",
        "csv",
        "-o",
        failed.to_str().unwrap(),
    ])
    .await
    .expect(0);
    let text = std::fs::read_to_string(&failed).unwrap();
    let mut lines = text.lines();
    let row = first_result(
        &mut lines,
        "tenantUrl,tenantName,firstName,lastName,loginId,email,templateUrl,jobId,status,code,error",
        &format!("{taken},Taken,Ada,Lovelace,admin,ada@{taken},{template},"),
    );
    assert!(row.contains(",failed,409,"), "{row}");
    assert_eq!(lines.next(), None);
    // The waits' exit codes hold for a batch already done; a batch with failures read is 0.
    cli.run(&["batch", "wait", &id]).await.expect(1);
    cli.run(&["batch", "status", &id]).await.expect(0);
    // Nothing failed with 503: said on stderr, and not an error.
    let none = cli
        .run(&["batch", "retry", &id, "--code", "503"])
        .await
        .expect(0);
    assert!(
        none.stderr.contains(&format!(
            "nothing to retry: no item of batch {id} has failed with code 503"
        )),
        "{}",
        none.stderr
    );
    let retried = cli
        .run(&["batch", "retry", &id, "--code", "409", "--json"])
        .await
        .expect(0);
    assert!(!retried.stderr.contains("nothing"), "{}", retried.stderr);
    let retried = retried.json();
    assert_eq!(retried["batchId"], id.as_str());
    cli.run(&["batch", "wait", &id]).await.expect(1);
    // The failed rows' file submits again as it is (its result columns read past), and the
    // new batch's results name each column once: submitted again, they would be refused.
    let args = ["batch", "submit", failed.to_str().unwrap(), "--wait"];
    let mut command = cli.command(&args);
    command.env("PROVISIONER_PASSWORD", PASSWORD);
    let out = cli.finish(command.spawn().unwrap(), &args).await.expect(1);
    let again = out.stdout.lines().next().unwrap().to_owned();
    let twice = scratch.path("twice.csv");
    let results = [
        "batch",
        "results",
        &again,
        "--format",
        "csv",
        "-o",
        twice.to_str().unwrap(),
    ];
    cli.run(&results).await.expect(0);
    let text = std::fs::read_to_string(&twice).unwrap();
    assert_eq!(
        text.lines().next(),
        Some(
            "tenantUrl,tenantName,firstName,lastName,loginId,email,templateUrl,jobId,status,code,error"
        ),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn waits_exit_3_when_they_run_out_and_2_once_cancelled() {
    let app = TestApp::without_workers().await;
    let cli = cli(&app);
    let scratch = Scratch::new();
    let template = app.serve_sample_template("t.zip").await;
    let file = scratch.write("t.csv", &csv_rows(2, ""));
    let set = format!("password={PASSWORD}");
    let started = Instant::now();
    let out = cli
        .run(&[
            "batch",
            "submit",
            file.to_str().unwrap(),
            "--template-url",
            &template,
            "--set",
            &set,
            "--wait",
            "--timeout",
            "2",
            "--json",
        ])
        .await
        .expect(3);
    assert!(started.elapsed() >= Duration::from_secs(2));
    let batch = out.json();
    assert_eq!(batch["counts"]["queued"], 2, "{batch}");
    let id = batch["batchId"].as_str().unwrap().to_owned();
    cli.run(&["batch", "wait", &id, "--timeout", "1"])
        .await
        .expect(3);
    cli.run(&["batch", "cancel", &id]).await.expect(0);
    cli.run(&["batch", "wait", &id]).await.expect(2);

    // One create: its id, a wait that runs out, a cancel, a wait that sees it.
    let url = fixtures::tenant_url();
    let fields = [
        "tenantName=Acme",
        "firstName=Ada",
        "lastName=Lovelace",
        "loginId=admin",
        "email=ada@acme.example",
    ];
    let mut args = vec!["create", &url, "--template-url", &template, "--set", &set];
    for f in &fields {
        args.extend(["--set", f]);
    }
    let job = cli.run(&args).await.expect(0).stdout.trim().to_owned();
    cli.run(&["job", "wait", &job, "--timeout", "1"])
        .await
        .expect(3);
    // `--timeout` alone asks for a wait of at most that long.
    let other = fixtures::tenant_url();
    let mut bounded = args.clone();
    bounded[1] = &other;
    bounded.extend(["--timeout", "1"]);
    cli.run(&bounded).await.expect(3);
    let cancelled = cli
        .run(&["job", "cancel", &job, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(cancelled["status"], "cancelled");
    cli.run(&["job", "wait", &job]).await.expect(2);
    // An unknown batch or job is 4; a bad create is 4 with nothing sent.
    let nobody = uuid::Uuid::new_v4().to_string();
    cli.run(&["batch", "status", &nobody]).await.expect(4);
    cli.run(&["job", "get", &nobody]).await.expect(4);
    let bad = cli
        .run(&[
            "create",
            "bad_host",
            "--template-url",
            &template,
            "--set",
            "email=x",
        ])
        .await
        .expect(4);
    assert!(
        bad.stderr.contains("email") && bad.stderr.contains("password: is required"),
        "{}",
        bad.stderr
    );
    app.stop().await;
}

#[tokio::test]
async fn a_create_waits_for_its_job_and_a_taken_url_exits_1() {
    let app = TestApp::spawn().await;
    let cli = cli(&app);
    let template = app.serve_sample_template("t.zip").await;
    let url = fixtures::tenant_url();
    let set = format!("password={PASSWORD}");
    let mut args = vec![
        "create",
        url.as_str(),
        "--template-url",
        &template,
        "--set",
        &set,
    ];
    for f in ADMIN_FIELDS {
        args.extend(["--set", f]);
    }
    let done = cli
        .run(&[&["--json"], &args[..], &["--wait"]].concat())
        .await
        .expect(0)
        .json();
    assert_eq!(
        (done["status"].as_str(), done["code"].as_i64()),
        (Some("succeeded"), Some(200)),
        "{done}"
    );
    // The tenant now exists: refused at once with 409, which is 1.
    let again = cli.run(&[&args[..], &["--wait"]].concat()).await.expect(1);
    assert!(again.stderr.contains("409"), "{}", again.stderr);
    cli.run(&["tenant", "get", "no-such.example.com"])
        .await
        .expect(4);

    // A create from a template file (stored first), then an NDJSON batch naming it by id.
    let scratch = Scratch::new();
    let zip = small_zip(&cli, &scratch).await;
    let url = fixtures::tenant_url();
    let mut from_file = vec![
        "--json",
        "create",
        url.as_str(),
        "--template",
        &zip,
        "--wait",
    ];
    for f in [
        "tenantName=Acme",
        "firstName=Ada",
        "lastName=Lovelace",
        "loginId=admin",
        "email=ada@acme.example",
    ] {
        from_file.extend(["--set", f]);
    }
    let mut command = cli.command(&from_file);
    command.env("PROVISIONER_PASSWORD", PASSWORD);
    let done = cli
        .finish(command.spawn().unwrap(), &from_file)
        .await
        .expect(0)
        .json();
    assert_eq!(done["status"], "succeeded", "{done}");
    let template_id = cli
        .run(&["template", "upload", &zip])
        .await
        .expect(0)
        .stdout
        .trim()
        .to_owned();
    let rows: String = (0..2)
        .map(|_| {
            let url = fixtures::tenant_url();
            format!(
                "{}\n",
                json!({"tenantUrl": url, "tenantName": "N", "firstName": "A", "lastName": "B",
                       "loginId": "admin", "email": format!("a@{url}"), "password": PASSWORD,
                       "numberMap": {"0000000000": "7000000000"}})
            )
        })
        .collect();
    // Both rows map the same range: the second tenant's is skipped, not failed.
    let file = scratch.write("t.jsonl", &rows);
    let out = cli
        .run(&[
            "batch",
            "submit",
            file.to_str().unwrap(),
            "--template-id",
            &template_id,
            "--wait",
        ])
        .await
        .expect(0);
    assert!(out.stdout.contains("succeeded 2"), "{}", out.stdout);
    app.stop().await;
}

#[tokio::test]
async fn refused_credentials_exit_5_an_unreachable_api_6_and_no_secret_is_printed() {
    let app = TestApp::without_workers().await;
    let mut wrong = cli(&app);
    wrong.client_secret = "wrong-secret-1f0c9b".to_owned();
    wrong.secrets.push(wrong.client_secret.clone());
    let out = wrong.run(&["batch", "list"]).await.expect(5);
    assert!(out.stderr.contains("refused"), "{}", out.stderr);
    let mut none = cli(&app);
    none.client_id.clear();
    none.client_secret.clear();
    none.run(&["template", "list"]).await.expect(5);
    // A client without tenants:write may read but not submit (403).
    let _ = batches::client(&app, "reader", &["tenants:read"]).await;
    let mut reader = cli(&app);
    reader.client_id = "reader".into();
    reader.client_secret = "reader-secret".into();
    reader.secrets.push("reader-secret".into());
    reader.run(&["batch", "list"]).await.expect(0);
    let zip = Scratch::new();
    let packed = small_zip(&reader, &zip).await;
    reader.run(&["template", "upload", &packed]).await.expect(5);
    // Nothing listens there: 6.
    let mut away = cli(&app);
    away.api = "http://127.0.0.1:9".into();
    let out = away.run(&["batch", "list"]).await.expect(6);
    assert!(
        out.stderr
            .contains("the API at http://127.0.0.1:9 could not be reached"),
        "names the address it tried: {}",
        out.stderr
    );
    // A wait that cannot reach the API says how to wait again, as one that runs out does.
    let job = uuid::Uuid::new_v4().to_string();
    let out = away.run(&["job", "wait", &job]).await.expect(6);
    assert!(
        out.stderr.contains(&format!(
            "goes on without this command; to wait again: provisioner job wait {job}"
        )),
        "{}",
        out.stderr
    );
    // Credentials in --api are refused rather than echoed.
    let mut inline = cli(&app);
    inline.api = format!("http://user:inline-secret-77@{}", app.addr);
    inline.secrets.push("inline-secret-77".into());
    inline.run(&["batch", "list"]).await.expect(4);
    app.stop().await;
}

#[tokio::test]
async fn off_a_terminal_progress_is_one_line_at_most_every_5_seconds() {
    let app = TestApp::without_workers().await;
    let cli = cli(&app);
    let template = app.serve_sample_template("t.zip").await;
    let batch = batches::submit(&app, &batches::items(3, &template)).await;
    let id = batch["batchId"].as_str().unwrap();
    let args = ["batch", "wait", id, "--timeout", "12"];
    let mut child = cli.command(&args).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = Instant::now();
    let mut progress = Vec::new();
    while let Some(line) = stderr.next_line().await.unwrap() {
        if line.contains("done (") {
            progress.push((started.elapsed(), line));
        }
    }
    let out = cli.finish(child, &args).await.expect(3);
    assert!(out.stdout.contains("queued 3"), "{}", out.stdout);
    assert!(progress.len() >= 2, "{progress:?}");
    assert!(progress[0].1.contains("0/3 done"), "{progress:?}");
    for pair in progress.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(4900),
            "lines {gap:?} apart: {progress:?}"
        );
    }
    assert!(
        !progress
            .iter()
            .any(|(_, l)| l.contains('\r') || l.contains('\u{1b}')),
        "{progress:?}"
    );
    // With `--json` too, on stderr: stdout keeps its one document, the final state.
    let out = cli
        .run(&["--json", "batch", "wait", id, "--timeout", "1"])
        .await
        .expect(3);
    assert!(out.stderr.contains("0/3 done"), "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect(&out.stdout);
    assert_eq!(doc["counts"]["queued"], 3, "{doc}");
    app.stop().await;
}

#[tokio::test]
async fn a_long_wait_renews_its_token_before_it_expires() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_TOKEN_TTL", "3".into())],
    })
    .await;
    let cli = cli(&app);
    let template = app.serve_sample_template("t.zip").await;
    let batch = batches::submit(&app, &batches::items(1, &template)).await;
    let id = batch["batchId"].as_str().unwrap();
    cli.run(&["batch", "wait", id, "--timeout", "8"])
        .await
        .expect(3);
    // Every long-poll carried a valid token: no 401 was answered on the batch route.
    let metrics = app.metrics_text().await;
    let refused: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("provisioner_http_requests_total") && l.contains("status=\"401\"")
        })
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    let polls: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("provisioner_http_requests_total") && l.contains("batches/{batchId}\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(polls >= 4.0, "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn ctrl_c_while_waiting_leaves_the_batch_running_and_says_how_to_reattach() {
    let app = TestApp::without_workers().await;
    let cli = cli(&app);
    let template = app.serve_sample_template("t.zip").await;
    let batch = batches::submit(&app, &batches::items(1, &template)).await;
    let id = batch["batchId"].as_str().unwrap();
    let args = ["batch", "wait", id];
    let mut child = cli.command(&args).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    // The first progress line says the wait has begun (and the signal handler is in place).
    let first = stderr.next_line().await.unwrap().unwrap();
    assert!(first.contains("0/1 done"), "{first}");
    let pid = child.id().unwrap().to_string();
    assert!(
        provisioner_tests::process::tool("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let rest = stderr.next_line().await.unwrap().unwrap_or_default();
    let out = cli.finish(child, &args).await.expect(130);
    assert!(
        rest.contains(&format!("provisioner batch wait {id}")),
        "{rest} {out:?}"
    );
    let (_, now) = app.get_json(&format!("/configapi/v2/batches/{id}")).await;
    assert_eq!(now["status"], "running");
    app.stop().await;
}

/// A tmux server of its own for one test, killed when dropped.
struct Tmux(String);

impl Tmux {
    fn new() -> Self {
        Self(format!("provisioner-test-{}", uuid::Uuid::new_v4()))
    }

    fn run(&self, args: &[&str]) -> String {
        // A terminal type of the test's choosing: nothing of the caller's terminal.
        let out = provisioner_tests::process::tool("tmux")
            .env("TERM", "xterm-256color")
            .arg("-L")
            .arg(&self.0)
            .args(args)
            .output()
            .expect("tmux runs (scripts/test installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = provisioner_tests::process::tool("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

#[tokio::test]
async fn in_a_terminal_the_progress_bar_draws_and_moves_to_the_end() {
    let mut app = TestApp::without_workers().await;
    let cli = cli(&app);
    let template = app.serve_sample_template("t.zip").await;
    let batch = batches::submit(&app, &batches::items(3, &template)).await;
    let id = batch["batchId"].as_str().unwrap();
    let tmux = Tmux::new();
    let command = format!(
        "env PROVISIONER_API_URL={} PROVISIONER_CLIENT_ID={} PROVISIONER_CLIENT_SECRET={} {} batch wait {id}; echo EXIT=$?; sleep 60",
        cli.api, cli.client_id, cli.client_secret, BIN
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "200",
        "-y",
        "20",
        "-s",
        "cli",
        &command,
    ]);
    let pane = || tmux.run(&["capture-pane", "-p", "-t", "cli"]);
    // Queued: the bar is drawn empty, with the counts.
    let drawn = eventually(Duration::from_secs(30), || async {
        let text = pane();
        (text.contains("0/3") && text.contains("queued 3")).then_some(text)
    })
    .await;
    assert!(
        drawn.contains(&format!("batch {id}")) && drawn.contains("ETA"),
        "{drawn}"
    );
    assert!(
        !drawn.contains("done ("),
        "a plain line instead of a bar: {drawn}"
    );
    // A worker runs the items: the bar reaches the end, then the final counts and exit 0.
    app.start_worker();
    let end = eventually(Duration::from_secs(60), || async {
        let text = pane();
        text.contains("EXIT=").then_some(text)
    })
    .await;
    assert!(end.contains("3/3") && end.contains("succeeded 3"), "{end}");
    // The rate: items done since the wait began, one decimal (not indicatif's four).
    let rate = end
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/s"))
        .unwrap_or_else(|| panic!("no rate in {end}"));
    let decimals = rate.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(
        decimals == 1 && rate.parse::<f64>().is_ok(),
        "rate {rate}: {end}"
    );
    assert!(
        end.contains(&format!("batch {id} completed: total 3")),
        "{end}"
    );
    assert!(end.contains("EXIT=0"), "{end}");
    app.stop().await;
}

#[tokio::test]
async fn the_readme_quick_start_runs_as_written() {
    let app = TestApp::spawn().await;
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let marker = "<!-- quick-start: run by tests/tests/cli.rs -->";
    let after = &readme[readme
        .find(marker)
        .expect("the README marks its Quick start block")
        + marker.len()..];
    let start = after.find("```sh\n").unwrap() + "```sh\n".len();
    let block = &after[start..start + after[start..].find("```").unwrap()];
    // The client the block names, made as `PROVISIONER_BOOTSTRAP_CLIENT` would make it.
    let credential = |name: &str| {
        let at = block.find(&format!("{name}=")).unwrap() + name.len() + 1;
        block[at..].split_whitespace().next().unwrap().to_owned()
    };
    let (id, secret) = (
        credential("PROVISIONER_CLIENT_ID"),
        credential("PROVISIONER_CLIENT_SECRET"),
    );
    provisioner_shared::db::clients::insert(
        &app.db,
        &id,
        &id,
        &provisioner_shared::passwords::hash(secret.as_bytes()),
        &["tenants:read".to_owned(), "tenants:write".to_owned()],
        provisioner_shared::db::clients::OnExisting::Refuse,
    )
    .await
    .unwrap();
    // In a scratch folder with the repository's examples, `provisioner` on the PATH.
    let scratch = Scratch::new();
    std::os::unix::fs::symlink(repo().join("examples"), scratch.path("examples")).unwrap();
    let bin = scratch.path("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("provisioner")).unwrap();
    let script = scratch.write("quick-start.sh", block);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = || {
        provisioner_tests::process::tool_async("bash")
            .args(["-euo", "pipefail"])
            .arg(&script)
            .current_dir(&scratch.0)
            .env("PATH", &path)
            .env("PROVISIONER_API_URL", format!("http://{}", app.addr))
            .env("PROVISIONER_STATE_DIR", scratch.path("state"))
            .env_remove("PROVISIONER_CLIENT_ID")
            .env_remove("PROVISIONER_CLIENT_SECRET")
            .output()
    };
    let out = run().await.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the Quick start failed:\n{block}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("completed: total 36, succeeded 36"),
        "{stdout}"
    );
    assert!(stdout.contains("tenantUrl,tenantName,firstName,lastName,loginId,email,numberMap,templateId,jobId,status,code,error"), "{stdout}");
    assert!(
        stdout.contains("acme.example.com Inactive Acme Support"),
        "{stdout}"
    );
    assert!(!stdout.contains(&secret) && !stderr.contains(&secret));
    // Run again, it packs the same bytes and reattaches to its batch: nothing new, still 0.
    let again = run().await.unwrap();
    assert!(again.status.success(), "{again:?}");
    assert_eq!(batch_count(&app).await, 1);
    app.stop().await;
}

/// The peak resident memory (`VmHWM`, KiB) a running child reached, read until it exits.
async fn peak_kib(child: &tokio::process::Child) -> u64 {
    let status = format!("/proc/{}/status", child.id().unwrap());
    let mut peak = 0;
    while let Ok(text) = std::fs::read_to_string(&status) {
        if let Some(kib) = text
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        {
            peak = kib;
        }
        if text.contains("State:\tZ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    peak
}

#[tokio::test]
async fn a_file_of_100000_rows_is_checked_without_being_held_in_memory() {
    let app = TestApp::without_workers().await;
    let cli = cli(&app);
    let scratch = Scratch::new();
    // About 65 MiB of rows, the last one bad: every row is read, nothing is sent.
    let path = scratch.path("big.csv");
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        writeln!(
            file,
            "tenantUrl,tenantName,firstName,lastName,loginId,email"
        )
        .unwrap();
        let pad = "x".repeat(200);
        for i in 0..100_000 {
            writeln!(file, "t{i}.example.com,Tenant {i} {pad},Ada {pad},Lovelace {pad},admin,ada@t{i}.example.com").unwrap();
        }
        writeln!(file, "bad_url,T,A,B,admin,a@b.example").unwrap();
    }
    let set = format!("password={PASSWORD}");
    let args = [
        "batch",
        "submit",
        path.to_str().unwrap(),
        "--template-url",
        "https://templates.example/t.zip",
        "--set",
        &set,
    ];
    let child = cli.command(&args).spawn().unwrap();
    let peak = peak_kib(&child).await;
    let out = cli.finish(child, &args).await.expect(4);
    assert!(
        out.stderr.contains("line 100002: tenantUrl:") && out.stderr.contains("1 of 100001 rows"),
        "{}",
        out.stderr
    );
    assert!(
        peak > 0 && peak < 32 * 1024,
        "peak {peak} KiB for a 65 MiB file"
    );
    assert_eq!(batch_count(&app).await, 0);
    app.stop().await;
}

/// A reader that leaves early (`provisioner batch list | head -1`) closes stdout under the
/// program: it stops printing and ends with its own exit code (0 here), never with a panic
/// (101).
#[tokio::test]
async fn a_closed_stdout_ends_printing_not_in_a_panic() {
    let app = TestApp::without_workers().await;
    let cli = cli(&app);
    for args in [
        &["--json", "batch", "list"][..],
        &["--json", "template", "list"],
    ] {
        let mut child = cli.command(args).spawn().expect("the program starts");
        // The reading end closes before the program has anything to write.
        drop(child.stdout.take());
        let out = cli.finish(child, args).await;
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        assert!(out.stderr.is_empty(), "{args:?}: {}", out.stderr);
    }
    // Results as CSV, from many lines: the copy stops in the middle of the results, and the
    // piece of a line it holds then is not taken for a line (it was: "a results line is not
    // JSON", exit 6).
    let template = app.serve_sample_template("t.zip").await;
    let batch = batches::submit(&app, &batches::items(3000, &template)).await;
    let id = batch["batchId"].as_str().unwrap().to_owned();
    for format in ["csv", "ndjson"] {
        let args = ["batch", "results", id.as_str(), "--format", format];
        let mut child = cli.command(&args).spawn().expect("the program starts");
        drop(child.stdout.take());
        let out = cli.finish(child, &args).await;
        assert_eq!(out.code, 0, "{format}: {}", out.stderr);
        assert!(out.stderr.is_empty(), "{format}: {}", out.stderr);
    }
    app.stop().await;
}

/// An API that answers with a redirect to another address gets its answer shown, not followed:
/// following it sent the client secret's form on to the other address (over plain HTTP too).
#[tokio::test]
async fn a_redirect_is_shown_not_followed_so_the_secret_goes_nowhere_else() {
    let app = TestApp::without_workers().await;
    // Where the redirect points: nothing may connect to it.
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let target = format!(
        "http://{}/configapi/v2/oauth/token",
        elsewhere.local_addr().unwrap()
    );
    // An API that redirects every request there.
    let redirecting = FakeApi::start(vec![(
        "",
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n"
        ),
    )])
    .await;
    let mut cli = cli(&app);
    cli.api = redirecting.base.clone();
    let out = cli.run(&["batch", "list"]).await.expect(6);
    assert!(
        out.stderr.contains(&format!("a redirect to {target}")),
        "{}",
        out.stderr
    );
    match elsewhere.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the redirect was followed: {other:?}"),
    }
    app.stop().await;
}

/// What a fake server reads of a request: up to the end of its head (or the connection's).
async fn request_head(socket: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut request = Vec::new();
    let mut chunk = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    request
}

/// An HTTP server that answers each request with the first answer whose path prefix its path
/// has (404 if none), and keeps every request line it got.
struct FakeApi {
    base: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeApi {
    async fn start(answers: Vec<(&'static str, String)>) -> Self {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        let server = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let request = request_head(&mut socket).await;
                let line = String::from_utf8_lossy(&request)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
                seen.lock().unwrap().push(line);
                let answer = answers
                    .iter()
                    .find(|(prefix, _)| path.starts_with(prefix))
                    .map(|(_, answer)| answer.clone())
                    .unwrap_or_else(|| {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into()
                    });
                // One request a connection: whatever body it has is left unread.
                let answer = answer.replacen("\r\n", "\r\nConnection: close\r\n", 1);
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        Self {
            base,
            requests,
            server,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An id the API answers is put into a path only as an id: a create whose answer names a job
/// id that is a path (`../..`) ends with exit 6 and sends no request to where it points.
#[tokio::test]
async fn a_job_id_the_api_answers_is_put_into_no_path_unless_it_is_an_id() {
    let app = TestApp::without_workers().await;
    let json = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let url = fixtures::tenant_url();
    let set = format!("password={PASSWORD}");
    let template = "a".repeat(64);
    let mut args = vec!["create", url.as_str(), "--template-id", &template];
    for f in std::iter::once(set.as_str()).chain(ADMIN_FIELDS) {
        args.extend(["--set", f]);
    }
    let long = "x".repeat(100_000);
    for id in ["../../templates/x", long.as_str(), "a\nb"] {
        let api = FakeApi::start(vec![
            (
                "/configapi/v2/oauth/token",
                json(
                    "200 OK",
                    r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#,
                ),
            ),
            (
                "/configapi/v2/selfservice/tenant/",
                json(
                    "202 Accepted",
                    &json!({"jobId": id, "status": "queued"}).to_string(),
                ),
            ),
        ])
        .await;
        let mut cli = cli(&app);
        cli.api = api.base.clone();
        // Not waiting, the id is only shown, on one line.
        let out = cli.run(&args).await.expect(0);
        assert_eq!(out.stdout, format!("{}\n", id.replace('\n', "\\n")));
        let out = cli.run(&[&args[..], &["--wait"]].concat()).await.expect(6);
        assert!(
            out.stderr.contains("no `jobId` to wait for"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.len() < 1_000, "{} bytes", out.stderr.len());
        let requests = api.requests();
        assert!(
            requests
                .iter()
                .all(|r| r.contains("/oauth/token") || r.contains("/selfservice/tenant/")),
            "{requests:?}"
        );
    }
    app.stop().await;
}

/// What a template or the server says is shown with the characters a terminal acts on escaped:
/// a template whose entry name carries escape sequences (colour, window title) had them reach
/// the terminal raw through the check's message.
#[tokio::test]
async fn escape_sequences_in_a_templates_names_reach_the_terminal_escaped() {
    use std::io::Write as _;
    let app = TestApp::without_workers().await;
    let cli = cli(&app);
    let scratch = Scratch::new();
    let packed = small_zip(&cli, &scratch).await;
    let mut small = zip::ZipArchive::new(std::fs::File::open(&packed).unwrap()).unwrap();
    let evil = scratch.path("evil.zip");
    let mut writer = zip::ZipWriter::new(std::fs::File::create(&evil).unwrap());
    for i in 0..small.len() {
        writer.raw_copy_file(small.by_index(i).unwrap()).unwrap();
    }
    writer
        .start_file(
            "x\u{1b}[31mRED\u{1b}]0;title\u{7}",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
    writer.write_all(b"{}").unwrap();
    writer.finish().unwrap();
    let out = cli
        .run(&["template", "check", &evil.display().to_string()])
        .await
        .expect(4);
    assert!(
        !out.stderr.contains(['\u{1b}', '\u{7}']),
        "raw escapes: {:?}",
        out.stderr
    );
    assert!(
        out.stderr.contains("x\\u{1b}[31mRED\\u{1b}]0;title\\u{7}"),
        "{}",
        out.stderr
    );
    app.stop().await;
}
