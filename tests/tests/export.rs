//! Export Tenant streams its archive: the first bytes leave while the tenant is still being
//! read under its lock, the archive is one snapshot of the tenant, and a client that goes away
//! mid-export frees the lock.

use std::time::{Duration, Instant};

use provisioner_shared::template::{Limits, Template};
use provisioner_tests::{TestApp, authorized_client, eventually};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

const USERS: i64 = 450;
const OBJECTS: i64 = 250;
/// Audit rows of about 600 bytes of random hex each: some 20 MiB of archive, far more than the
/// socket buffers of a client that reads nothing.
const AUDIT: i64 = 40_000;

/// A tenant with several pages of every list, written straight into the database.
async fn big_tenant(app: &TestApp, url: &str) {
    insert_tenant(app, url, "Big", r#"{"timezone": "UTC"}"#).await;
    for sql in [
        // Users and objects as the worker stores them: documents in parts of 200 entries.
        "INSERT INTO tenant_documents (tenant_id, kind, part, entries)
         SELECT t.id, 'users', (g - 1) / 200, jsonb_agg(jsonb_build_object('id', gen_random_uuid(),
                'loginId', 'user' || g, 'firstName', 'First', 'lastName', 'Last',
                'email', 'u' || g || '@big.example', 'roles', '[]'::jsonb, 'passwordHash', null,
                'teams', '[]'::jsonb) ORDER BY g)
         FROM tenants t, generate_series(1, $2) g WHERE t.url = $1 GROUP BY t.id, (g - 1) / 200",
        "INSERT INTO tenant_documents (tenant_id, kind, part, entries)
         SELECT t.id, 'objects', (g - 1) / 200, jsonb_agg(jsonb_build_object('id', gen_random_uuid(),
                'kind', 'skill', 'name', 'skill ' || g, 'data', jsonb_build_object('level', g),
                'refs', '[]'::jsonb) ORDER BY g)
         FROM tenants t, generate_series(1, $2) g WHERE t.url = $1 GROUP BY t.id, (g - 1) / 200",
        "INSERT INTO audit_log (tenant_id, at, actor, action, object, details)
         SELECT t.id, now(), 'ops', 'update', 'object' || g, jsonb_build_object('noise',
                (SELECT string_agg(md5(random()::text || g || k), '') FROM generate_series(1, 18) k))
         FROM tenants t, generate_series(1, $2) g WHERE t.url = $1",
    ] {
        let n = match sql {
            s if s.contains("'users'") => USERS,
            s if s.contains("'objects'") => OBJECTS,
            _ => AUDIT,
        };
        sqlx::query(sql)
            .bind(url)
            .bind(n)
            .execute(&app.db)
            .await
            .unwrap();
    }
}

/// Sends `GET path` on a socket with a small receive buffer (no autotuning), so a client that
/// stops reading soon stops the server; returns the socket once the response head and the
/// first body bytes arrived, and those bytes.
async fn get_slowly(app: &TestApp, path: &str) -> (TcpStream, Vec<u8>) {
    get_slowly_as(&app.bootstrap_token().await, app, path).await
}

/// `get_slowly` with the bearer `token`.
async fn get_slowly_as(token: &str, app: &TestApp, path: &str) -> (TcpStream, Vec<u8>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(256 << 10).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n",
        app.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut head_end = None;
    while head_end.is_none_or(|end| got.len() <= end) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("the response starts")
            .unwrap();
        assert!(n > 0, "the connection closed before the body");
        got.extend_from_slice(&buf[..n]);
        head_end = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| at + 4);
    }
    let head_end = head_end.unwrap();
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    (stream, got[head_end..].to_vec())
}

/// Reads the rest of a chunked body and decodes it.
async fn read_chunked(mut stream: TcpStream, mut raw: Vec<u8>) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut raw))
        .await
        .expect("the export ends")
        .unwrap();
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + raw[at..].windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[at..line_end]).unwrap(), 16)
            .expect("a chunk size");
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        at = line_end + 2 + size + 2;
    }
}

#[tokio::test]
async fn the_export_streams_one_snapshot_of_the_tenant_while_holding_its_lock() {
    let app = TestApp::without_workers().await;
    let url = "big.example.com";
    big_tenant(&app, url).await;
    let (stream, first) = get_slowly(&app, &format!("/configapi/v2/tenant/{url}/export")).await;
    // The first bytes are out, and the export is not done: it still holds the tenant's lock.
    assert_eq!(app.advisory_locks().await.0, 1, "the export holds the lock");
    let r = app
        .http
        .post(app.url(&format!(
            "/configapi/v2/tenant/{url}/deactivate?lockTimeout=0"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "a lifecycle change waits for the export");
    // History written now (it needs no lock) is not in the archive: it is one snapshot.
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, at, actor, action, object)
         SELECT id, now(), 'late', 'update', 'late' FROM tenants WHERE url = $1",
    )
    .bind(url)
    .execute(&app.db)
    .await
    .unwrap();

    let archive = read_chunked(stream, first).await;
    let t = Template::read(&archive, &Limits::default(), app.db_version().await).unwrap();
    assert_eq!(
        (
            t.users.len() as i64,
            t.objects.len() as i64,
            t.audit.len() as i64
        ),
        (USERS, OBJECTS, AUDIT)
    );
    assert!(t.audit.iter().all(|a| a.actor == "ops"));
    // In the order they were written: user1, user2, ...
    let logins: Vec<String> = (1..=USERS).map(|g| format!("user{g}")).collect();
    assert_eq!(
        t.users
            .iter()
            .map(|u| u.login_id.clone())
            .collect::<Vec<_>>(),
        logins,
        "every page in order, none twice"
    );
    assert_eq!(t.tenant.settings.get(), r#"{"timezone":"UTC"}"#);
    eventually(Duration::from_secs(10), || async {
        (app.advisory_locks().await == (0, 0)).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_mid_export_frees_the_lock_and_the_sessions() {
    let app = TestApp::without_workers().await;
    let url = "gone.example.com";
    big_tenant(&app, url).await;
    let (stream, _) = get_slowly(&app, &format!("/configapi/v2/tenant/{url}/export")).await;
    assert_eq!(app.advisory_locks().await.0, 1, "the export holds the lock");
    drop(stream);
    eventually(Duration::from_secs(10), || async {
        let in_transaction: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'provisioner-api'
               AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        (app.advisory_locks().await == (0, 0) && in_transaction == 0).then_some(())
    })
    .await;
    let r = app
        .http
        .post(app.url(&format!(
            "/configapi/v2/tenant/{url}/activate?lockTimeout=0"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the lock is free");
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_within_30_s_and_the_lock_freed() {
    let app = TestApp::without_workers().await;
    let url = "stalled.example.com";
    big_tenant(&app, url).await;
    let started = std::time::Instant::now();
    let (mut stream, mut raw) =
        get_slowly(&app, &format!("/configapi/v2/tenant/{url}/export")).await;
    assert_eq!(app.advisory_locks().await.0, 1, "the export holds the lock");
    // Well before the database's idle-in-transaction timeout (60 s) would end it.
    eventually(Duration::from_secs(45), || async {
        (app.advisory_locks().await == (0, 0)).then_some(())
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(29),
        "not before 30 s"
    );
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("the server closed the connection");
    assert!(
        !raw.ends_with(b"\r\n0\r\n\r\n"),
        "the cut response does not end like a whole one"
    );
    app.stop().await;
}

async fn export_status(app: &TestApp, url: &str, lock_timeout: u32) -> reqwest::Response {
    app.http
        .get(app.url(&format!(
            "/configapi/v2/tenant/{url}/export?lockTimeout={lock_timeout}"
        )))
        .send()
        .await
        .unwrap()
}

/// The refusal for want of a slot: `503` with `Retry-After`, its detail naming what is full.
async fn assert_no_slot(r: reqwest::Response, what: &str) {
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"5"[..]),
        "a refusal for want of a slot, not the lock's timeout"
    );
    let problem: serde_json::Value = r.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains(what),
        "{problem}"
    );
}

const EXPORTER: &[&str] = &["tenants:read", "tenants:write", "tenants:export"];

/// A tenant named `T` with no settings, written straight into the database.
async fn tenant_row(app: &TestApp, url: &str) {
    insert_tenant(app, url, "T", "{}").await;
}

async fn insert_tenant(app: &TestApp, url: &str, name: &str, settings: &str) {
    sqlx::query("INSERT INTO tenants (id, url, name, sip_domain, settings) VALUES (gen_random_uuid(), $1, $2, $1, $3::jsonb)")
        .bind(url)
        .bind(name)
        .bind(settings)
        .execute(&app.db)
        .await
        .unwrap();
}

#[tokio::test]
async fn exports_reading_past_the_servers_bound_are_refused_with_retry_after() {
    let app = TestApp::without_workers().await;
    // Six exports (each holds two of the pool's 32 connections) stall on clients that read
    // nothing, holding every slot: three of each of two clients, as many as one client may
    // hold.
    let clients = [
        app.client_token("first", EXPORTER).await,
        app.client_token("second", EXPORTER).await,
    ];
    let mut stalled = Vec::new();
    for i in 0..6 {
        let url = format!("big{i}.example.com");
        big_tenant(&app, &url).await;
        let path = format!("/configapi/v2/tenant/{url}/export");
        stalled.push(get_slowly_as(&clients[i / 3], &app, &path).await);
        if i == 2 {
            // The first client's fourth is refused while the server has room.
            let r = authorized_client(&clients[0])
                .get(app.url("/configapi/v2/tenant/big0.example.com/export?lockTimeout=0"))
                .send()
                .await
                .unwrap();
            assert_no_slot(r, "this client has as many exports reading").await;
        }
    }
    assert_eq!(
        app.advisory_locks().await.0,
        6,
        "each holds its tenant's lock"
    );
    tenant_row(&app, "seventh.example.com").await;
    assert_no_slot(
        export_status(&app, "seventh.example.com", 0).await,
        "the server has as many exports reading",
    )
    .await;
    assert_eq!(
        app.advisory_locks().await.0,
        6,
        "the refused export let its tenant's lock go before it answered"
    );
    // A client that goes away frees its slot.
    drop(stalled.pop());
    let seventh = app.export("seventh.example.com").await;
    assert_eq!(seventh.tenant.name, "T");
    drop(stalled);
    app.stop().await;
}

/// `POST .../deactivate?lockTimeout=SECONDS` as `client`.
async fn deactivate_within(
    app: &TestApp,
    client: &reqwest::Client,
    url: &str,
    seconds: u32,
) -> reqwest::Response {
    client
        .post(app.url(&format!(
            "/configapi/v2/tenant/{url}/deactivate?lockTimeout={seconds}"
        )))
        .send()
        .await
        .unwrap()
}

/// The contract's `503 Lock timeout`, not a refusal for want of a slot.
async fn assert_lock_timeout(r: reqwest::Response) {
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_none());
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["title"], "Lock timeout", "{problem}");
}

#[tokio::test]
async fn requests_waiting_for_a_tenants_lock_are_bounded_and_never_hold_up_other_tenants() {
    let app = TestApp::without_workers().await;
    let busy = "busy.example.com";
    let free = "free.example.com";
    for url in [busy, free] {
        tenant_row(&app, url).await;
    }
    let held = app.hold_lock(&format!("provisioner:tenant:{busy}")).await;
    // Eight requests (exports and lifecycle changes) wait for the busy tenant's lock, each on
    // a connection of its own, holding every slot for waiting: four of each of two clients,
    // as many as one client may hold.
    let clients = [
        app.client_with("first", EXPORTER).await,
        app.client_with("second", EXPORTER).await,
    ];
    let wait = |client: &reqwest::Client, i: usize| {
        let request = if i.is_multiple_of(2) {
            client.get(app.url(&format!(
                "/configapi/v2/tenant/{busy}/export?lockTimeout=60"
            )))
        } else {
            client.post(app.url(&format!(
                "/configapi/v2/tenant/{busy}/activate?lockTimeout=60"
            )))
        };
        tokio::spawn(async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.bytes().await.unwrap())
        })
    };
    let mut waiting: Vec<_> = (0..4).map(|i| wait(&clients[0], i)).collect();
    app.until_lock_waiters(4).await;
    // The first client's fifth is refused at once, while the server has room: waiting for
    // one of its own, it would hold its connection (a burst of them would hold the pool).
    let started = Instant::now();
    assert_no_slot(
        deactivate_within(&app, &clients[0], busy, 30).await,
        "this client has as many requests waiting for a tenant's lock",
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5), "at once");
    waiting.extend((0..4).map(|i| wait(&clients[1], i)));
    app.until_lock_waiters(8).await;

    // One more waits for a slot: past its own bound (1 s), the lock's timeout, as the contract
    // says; with a longer bound, a few seconds, then a refusal for want of a slot.
    assert_lock_timeout(deactivate_within(&app, &app.http, busy, 1).await).await;
    assert_no_slot(
        deactivate_within(&app, &app.http, busy, 30).await,
        "the server has as many requests waiting for a tenant's lock",
    )
    .await;
    // A lock that comes free while its request waits for a slot is taken: no refusal.
    let other = "other.example.com";
    tenant_row(&app, other).await;
    let held_other = app.hold_lock(&format!("provisioner:tenant:{other}")).await;
    let request = app.http.post(app.url(&format!(
        "/configapi/v2/tenant/{other}/activate?lockTimeout=30"
    )));
    let activating = tokio::spawn(async move { request.send().await.unwrap().status() });
    // It tried the lock, found it busy, and waits for a slot (its session idle meanwhile).
    eventually(Duration::from_secs(20), || async {
        let tried: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'provisioner-api'
               AND state = 'idle in transaction' AND query LIKE '%pg_try_advisory_xact_lock%'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        (tried == 1).then_some(())
    })
    .await;
    held_other.rollback().await.unwrap();
    assert_eq!(activating.await.unwrap(), 200);
    // Requests whose lock is free take no slot: another tenant's export and change go ahead.
    let exported = app.export(free).await;
    assert_eq!(exported.tenant.url, free);
    let r = app
        .http
        .post(app.url(&format!(
            "/configapi/v2/tenant/{free}/activate?lockTimeout=0"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    held.rollback().await.unwrap();
    for request in waiting {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    app.stop().await;
}

/// How the previous schema's workers wrote a tenant's objects and users: rows, in position
/// order, into `config_objects` and `users`, now views of the tenant's documents.
const PREVIOUS_VERSION_INSERT: &str = "
    WITH tenant AS (
        INSERT INTO tenants (id, url, name, sip_domain) VALUES (gen_random_uuid(), $1, 'Old', $1)
        RETURNING id
    ), objects AS (
        INSERT INTO config_objects (id, tenant_id, position, kind, name, data, refs)
        SELECT x.id, tenant.id, x.position, x.kind, x.name, x.data, x.refs
        FROM tenant, jsonb_to_recordset($2) AS x(id uuid, position int, kind text, name text,
             data jsonb, refs uuid[])
    ), users AS (
        INSERT INTO users (id, tenant_id, position, login_id, first_name, last_name, email,
                           roles, password_hash, teams)
        SELECT x.id, tenant.id, x.position, x.login_id, x.first_name, x.last_name, x.email,
               x.roles, x.password_hash, x.teams
        FROM tenant, jsonb_to_recordset($3) AS x(id uuid, position int, login_id text,
             first_name text, last_name text, email text, roles jsonb, password_hash text,
             teams uuid[])
    )
    SELECT count(*) FROM tenant";

/// A worker of the previous version, still running during a rolling upgrade, writes a tenant
/// the way it knows (rows into what are now views): its objects and users land in the tenant's
/// documents, in order, across parts, and the tenant exports whole.
#[tokio::test]
async fn a_tenant_written_by_the_previous_versions_worker_exports_whole() {
    let app = TestApp::without_workers().await;
    let url = "previous.example.com";
    let objects: Vec<serde_json::Value> = (0..450)
        .map(|i| {
            serde_json::json!({"id": uuid::Uuid::new_v4(), "position": i, "kind": "skill",
                "name": format!("skill {i}"), "data": {"level": i}, "refs": []})
        })
        .collect();
    let team = objects[7]["id"].clone();
    let users: Vec<serde_json::Value> = (0..3)
        .map(|i| {
            serde_json::json!({"id": uuid::Uuid::new_v4(), "position": i,
                "login_id": format!("agent{i}"), "first_name": "Grace", "last_name": "Hopper",
                "email": "grace@previous.example", "roles": ["agent"], "password_hash": null,
                "teams": [team]})
        })
        .collect();
    let written: i64 = sqlx::query_scalar(PREVIOUS_VERSION_INSERT)
        .bind(url)
        .bind(serde_json::Value::from(objects.clone()))
        .bind(serde_json::Value::from(users.clone()))
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(written, 1);
    let parts: Vec<(String, i32, i32)> = sqlx::query_as(
        "SELECT kind, part, jsonb_array_length(entries) FROM tenant_documents ORDER BY kind, part",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        parts,
        [
            ("objects".into(), 0, 200),
            ("objects".into(), 1, 200),
            ("objects".into(), 2, 50),
            ("users".into(), 0, 3)
        ]
    );
    let t = app.export(url).await;
    let names: Vec<String> = t.objects.iter().map(|o| o.name.clone()).collect();
    let expected: Vec<String> = (0..450).map(|i| format!("skill {i}")).collect();
    assert_eq!(names, expected, "every object, in order, once");
    assert_eq!(
        t.objects[449].data.to_value(),
        serde_json::json!({"level": 449})
    );
    let logins: Vec<&str> = t.users.iter().map(|u| u.login_id.as_str()).collect();
    assert_eq!(logins, ["agent0", "agent1", "agent2"]);
    assert_eq!(t.users[2].teams, [t.objects[7].id]);
    assert_eq!(t.users[0].roles, ["agent"]);
    app.stop().await;
}
