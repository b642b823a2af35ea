//! Memory of an API process under load: a flood of bad token requests (Argon2id verifications
//! are the API's most expensive work) and the export of a large tenant. The API runs as a child
//! process (the `test-api` binary next to this one), so its resident set is its own; the peak
//! is `VmHWM`, reset through `/proc/PID/clear_refs` just before the load.

use std::time::Instant;

use futures_util::future::join_all;
use provisioner_tests::{
    BOOTSTRAP_ID, BOOTSTRAP_SECRET, TestApp, authorized_client, fetch_token, http_client,
    process::Proc,
};

pub(crate) const MIB: f64 = (1 << 20) as f64;

/// `(VmRSS, VmHWM)` of process `pid`, in bytes.
pub(crate) fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the API runs");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .expect("a size in kB")
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Makes the peak the current resident set.
pub(crate) fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("the peak resets");
}

/// The path of the release binary `name` next to this one.
pub(crate) fn sibling(name: &str) -> String {
    let bin = std::env::current_exe()
        .expect("the bench's path")
        .with_file_name(name);
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release -p provisioner-tests --bins`",
        bin.display()
    );
    bin.to_str().expect("a UTF-8 path").to_owned()
}

/// Starts the release API binary next to this one for `app`; returns it and its address.
pub(crate) async fn api_process(app: &TestApp) -> (Proc, std::net::SocketAddr) {
    let mut api = Proc::spawn(&sibling("test-api"), app, &[], "info");
    let addr = api.api_addr().await;
    (api, addr)
}

/// `bench tokens [N]`: N concurrent bad `POST /oauth/token` against an idle API.
pub async fn token_flood(requests: usize) {
    let app = TestApp::without_workers().await;
    let (mut api, addr) = api_process(&app).await;
    let pid = api.child.id().expect("running");
    // One good exchange first: what an API that has served a request holds at rest.
    fetch_token(&http_client(), addr, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    let (idle, _) = memory(pid);
    reset_peak(pid);
    let http = http_client();
    let url = format!("http://{addr}/configapi/v2/oauth/token");
    let started = Instant::now();
    let answers = join_all((0..requests).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let id = format!("nobody-{i}");
            let form = [
                ("grant_type", "client_credentials"),
                ("client_id", id.as_str()),
                ("client_secret", "wrong"),
            ];
            let r = http.post(url).form(&form).send().await.expect("an answer");
            r.status().as_u16()
        }
    }))
    .await;
    let took = started.elapsed();
    let (_, peak) = memory(pid);
    let count = |s: u16| answers.iter().filter(|a| **a == s).count();
    println!(
        "token flood: {requests} concurrent bad requests answered in {:.2} s: 401 x {}, 429 x {}, 503 x {}",
        took.as_secs_f64(),
        count(401),
        count(429),
        count(503)
    );
    println!(
        "API RSS idle {:.1} MiB; peak during the flood {:.1} MiB ({:.2}x idle)",
        idle as f64 / MIB,
        peak as f64 / MIB,
        peak as f64 / idle as f64
    );
    api.child.kill().await.expect("the API stops");
    app.stop().await;
}

/// `bench export [SETTINGS_MIB] [AUDIT_ROWS]`: the export of a tenant with that much settings
/// text and history, read by a client as fast as it can.
pub async fn export(settings_mib: usize, audit_rows: usize) {
    let app = TestApp::without_workers().await;
    sqlx::query(
        "INSERT INTO tenants (id, url, name, sip_domain, settings)
         SELECT gen_random_uuid(), 'big.example.com', 'Big', 'big.example.com',
                jsonb_object_agg('key' || g, repeat(md5(g::text), 32))
         FROM generate_series(1, $1) g",
    )
    .bind((settings_mib * 1024) as i64)
    .execute(&app.db)
    .await
    .expect("the tenant");
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, at, actor, action, object, details)
         SELECT t.id, now(), 'ops', 'update', 'object' || g, jsonb_build_object('n', g, 'note', md5(g::text))
         FROM tenants t, generate_series(1, $1) g",
    )
    .bind(audit_rows as i64)
    .execute(&app.db)
    .await
    .expect("the history");
    let (mut api, addr) = api_process(&app).await;
    let pid = api.child.id().expect("running");
    let token = fetch_token(&http_client(), addr, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    let (idle, _) = memory(pid);
    reset_peak(pid);
    let started = Instant::now();
    let mut r = authorized_client(&token)
        .get(format!(
            "http://{addr}/configapi/v2/tenant/big.example.com/export"
        ))
        .send()
        .await
        .expect("the export starts");
    assert_eq!(r.status(), 200);
    let mut bytes = 0;
    while let Some(chunk) = r.chunk().await.expect("the export goes on") {
        bytes += chunk.len();
    }
    let took = started.elapsed();
    let (_, peak) = memory(pid);
    println!(
        "export of {settings_mib} MiB of settings and {audit_rows} history entries: {:.1} MiB of archive in {:.2} s",
        bytes as f64 / MIB,
        took.as_secs_f64()
    );
    println!(
        "API RSS idle {:.1} MiB; peak during the export {:.1} MiB (+{:.1} MiB)",
        idle as f64 / MIB,
        peak as f64 / MIB,
        peak.saturating_sub(idle) as f64 / MIB
    );
    api.child.kill().await.expect("the API stops");
    app.stop().await;
}
