//! End-to-end harness: each test gets a fresh database and RabbitMQ vhost, the API on port 0,
//! workers in-process or as child processes, and a local template server.

pub mod batches;
pub mod broker;
mod cleanup;
pub mod cli;
pub mod events;
pub mod fixtures;
pub mod plans;
pub mod process;
pub mod proxy;
pub mod template_server;
pub mod ui;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use provisioner_shared::config::Settings;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use template_server::TemplateServer;

/// A running system under test.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub db: sqlx::PgPool,
    pub vars: HashMap<String, String>,
    pub database: String,
    pub vhost: String,
    pub templates: TemplateServer,
    api_shutdown: CancellationToken,
    workers: Vec<(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    /// Removed when the test ends, whether by `stop` or by a failure.
    leftovers: Option<cleanup::Leftovers>,
}

/// How to start a test system.
#[derive(Debug, Clone)]
pub struct Options {
    pub workers: usize,
    pub vars: Vec<(&'static str, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 1,
            vars: vec![],
        }
    }
}

fn run_rabbitmqctl(args: &[&str]) {
    rabbitmqctl(args);
}

/// Runs `rabbitmqctl` and returns its standard output; fails the test if it fails.
pub(crate) fn rabbitmqctl(args: &[&str]) -> String {
    let out = process::tool("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates `tenant` from `template_url` through the API process at `addr`, as the bootstrap
/// client (expecting 202); returns the job id.
pub async fn submit_via(addr: SocketAddr, tenant: &str, template_url: &str) -> String {
    let token = fetch_token(&http_client(), addr, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    let r = authorized_client(&token)
        .post(format!(
            "http://{addr}/configapi/v2/selfservice/tenant/{tenant}"
        ))
        .json(&fixtures::create_body(template_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "create {tenant}");
    r.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A broker address nothing answers at.
pub const NO_BROKER: &str = "amqp://guest:guest@127.0.0.1:1/none";

impl TestApp {
    pub async fn spawn() -> Self {
        Self::with(Options::default()).await
    }

    /// A system with no worker: jobs stay queued until a test starts one.
    pub async fn without_workers() -> Self {
        Self::with(Options {
            workers: 0,
            ..Default::default()
        })
        .await
    }

    /// A system with no worker whose own API (in this process) cannot reach a broker: what it
    /// commits, only another process's relay publishes (`broker_url` is the broker's real
    /// address for such a process).
    pub async fn without_broker() -> Self {
        Self::with(Options {
            workers: 0,
            vars: vec![("AMQP_URL", NO_BROKER.to_owned())],
        })
        .await
    }

    /// The broker's address for this test's vhost (whatever `AMQP_URL` this system was given).
    pub fn broker_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.vhost)
    }

    /// Serves the sample template (of this schema version) at `/name`; returns its URL.
    pub async fn serve_sample_template(&self, name: &str) -> String {
        self.templates.put(
            name,
            fixtures::sample_template(self.db_version().await).write(),
        )
    }

    /// Stores a sample template for the bootstrap client (expecting 201); returns its id.
    pub async fn store_sample_template(&self) -> String {
        let r = self
            .http
            .post(self.url("/configapi/v2/templates"))
            .header("content-type", "application/zip")
            .body(fixtures::sample_template(self.db_version().await).write())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["templateId"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn with(options: Options) -> Self {
        provisioner_shared::telemetry::init(provisioner_shared::config::LogFormat::Pretty);
        cleanup::sweep_once().await;
        let name = cleanup::new_name();
        let vhost = name.clone();
        tokio::task::spawn_blocking({
            let vhost = vhost.clone();
            move || {
                run_rabbitmqctl(&["add_vhost", &vhost]);
                run_rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
            }
        })
        .await
        .unwrap();
        let templates = TemplateServer::start().await;
        let mut vars: HashMap<String, String> = [
            (
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:5432/{name}"),
            ),
            (
                "AMQP_URL",
                format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"),
            ),
            ("PROVISIONER_LISTEN", "127.0.0.1:0".to_owned()),
            ("PROVISIONER_TEMPLATE_ALLOW_PRIVATE", "true".to_owned()),
            ("PROVISIONER_RETRY_BASE_DELAY_MS", "50".to_owned()),
            ("PROVISIONER_JOB_LEASE", "3".to_owned()),
            ("PROVISIONER_SHUTDOWN_TIMEOUT", "5".to_owned()),
            ("PROVISIONER_TEMPLATE_TIMEOUT", "5".to_owned()),
            (
                "PROVISIONER_BOOTSTRAP_CLIENT",
                format!("{BOOTSTRAP_ID}:{BOOTSTRAP_SECRET}"),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in &options.vars {
            vars.insert((*k).to_owned(), v.clone());
        }
        let settings = settings(&vars);
        let api_shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(provisioner_api::run(
            settings.clone(),
            api_shutdown.clone(),
            move |addr| {
                let _ = tx.send(addr);
            },
        ));
        let addr = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("API starts")
            .expect("API binds");
        let db = sqlx::PgPool::connect(&vars["DATABASE_URL"]).await.unwrap();
        let token = fetch_token(&http_client(), addr, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
        let leftovers = cleanup::Leftovers {
            database: name.clone(),
            vhost: vhost.clone(),
        };
        let mut app = Self {
            addr,
            http: authorized_client(&token),
            db,
            vars,
            database: name,
            vhost,
            templates,
            api_shutdown,
            workers: vec![],
            leftovers: Some(leftovers),
        };
        for _ in 0..options.workers {
            app.start_worker();
        }
        app
    }

    pub fn settings(&self) -> Settings {
        settings(&self.vars)
    }

    /// Starts one more in-process worker.
    pub fn start_worker(&mut self) {
        let token = CancellationToken::new();
        let handle = tokio::spawn(provisioner_worker::run(self.settings(), token.clone()));
        self.workers.push((token, handle));
    }

    /// Stops every in-process worker gracefully.
    pub async fn stop_workers(&mut self) {
        for (token, handle) in self.workers.drain(..) {
            token.cancel();
            handle.await.unwrap().unwrap();
        }
    }

    /// Makes client `id` with `scopes` (as the operator command does) and returns an HTTP client
    /// that sends a bearer token of it.
    pub async fn client_with(&self, id: &str, scopes: &[&str]) -> reqwest::Client {
        authorized_client(&self.client_token(id, scopes).await)
    }

    /// Makes client `id` with `scopes` and returns a bearer token of it.
    pub async fn client_token(&self, id: &str, scopes: &[&str]) -> String {
        let secret = format!("{id}-secret");
        let hash = provisioner_shared::passwords::hash(secret.as_bytes());
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        provisioner_shared::db::clients::insert(
            &self.db,
            id,
            id,
            &hash,
            &scopes,
            provisioner_shared::db::clients::OnExisting::Refuse,
        )
        .await
        .unwrap();
        fetch_token(&http_client(), self.addr, id, &secret).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `POST /configapi/v2/selfservice/tenant/{tenant}` with a JSON body.
    pub async fn create(&self, tenant: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/configapi/v2/selfservice/tenant/{tenant}")))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Creates from a JSON body, expects 202, and returns the job id.
    pub async fn submit(&self, tenant: &str, body: &Value) -> String {
        let r = self.create(tenant, body).await;
        assert_eq!(r.status(), 202, "create {tenant}");
        r.json::<Value>().await.unwrap()["jobId"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Whether a database named `name` exists on this test's server; one that does is dropped
    /// at once (a test asserting it was never made leaves nothing behind when it fails). Name it
    /// after this test's database (`{database}_...`), so a leftover is swept as its own are.
    pub async fn drop_database_if_made(&self, name: &str) -> bool {
        let made: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(name)
                .fetch_one(&self.db)
                .await
                .unwrap();
        if made {
            sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
                .execute(&self.db)
                .await
                .unwrap();
        }
        made
    }

    /// The single number a `SELECT count(*) ...` query answers in this test's database.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.db).await.unwrap()
    }

    /// Locks on `table` in this test's database, held or awaited by sessions other than the
    /// test's, that meet `condition` (SQL over `l`, the lock, and `a`, its session). A test
    /// binary runs its tests side by side, each in a database made by the same migrations, where
    /// a table has the same oid: without the database named, another test's locks count here.
    pub async fn table_locks(&self, table: &str, condition: &str) -> i64 {
        self.table_lockers(table, condition).await.len() as i64
    }

    /// `table_locks`, each as its session's backend pid and statement.
    pub async fn table_lockers(&self, table: &str, condition: &str) -> Vec<(i32, String)> {
        sqlx::query_as(&format!(
            "SELECT a.pid, a.query FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
             JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE c.relname = $1 AND l.pid <> pg_backend_pid()
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND ({condition})"
        ))
        .bind(table)
        .fetch_all(&self.db)
        .await
        .unwrap()
    }

    /// A token of the bootstrap client (every scope) from this system's API.
    pub async fn bootstrap_token(&self) -> String {
        fetch_token(&http_client(), self.addr, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await
    }

    /// The API's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the unlabelled figure `name` in the API's `/metrics`, if it is there.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the job is terminal (long polls of at most 5 s each; 60 s in all).
    pub async fn wait_job(&self, id: &str) -> Value {
        self.wait_job_within(id, Duration::from_secs(60)).await
    }

    /// Waits until the job is terminal, at most `within`.
    pub async fn wait_job_within(&self, id: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Without `status`, the API answers as soon as the job is terminal, or after 5 s.
            let (status, job) = self
                .get_json(&format!("/configapi/v2/jobs/{id}?wait=5"))
                .await;
            assert_eq!(status, 200, "job {id}: {job}");
            if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not end within {within:?}: {job}"
            );
        }
    }

    /// A tenant created from a template without access numbers; its URL.
    pub async fn tenant_without_ranges(&self) -> String {
        let tenant = fixtures::tenant_url();
        let mut plain = fixtures::sample_template(self.db_version().await);
        plain.access_numbers.clear();
        let plain_url = self.templates.put("plain.zip", plain.write());
        let mut body = fixtures::create_body(&plain_url);
        body["numberMap"] = serde_json::json!({});
        assert_eq!(self.create_and_wait(&tenant, &body).await["code"], 200);
        tenant
    }

    /// Creates a tenant and waits for the job; returns the final job.
    pub async fn create_and_wait(&self, tenant: &str, body: &Value) -> Value {
        let r = self.create(tenant, body).await;
        assert_eq!(r.status(), 202, "create {tenant}");
        let job: Value = r.json().await.unwrap();
        self.wait_job(job["jobId"].as_str().unwrap()).await
    }

    /// An export of a tenant this cluster does not have: the sample template under a new URL,
    /// without access numbers.
    pub async fn new_tenant_export(&self) -> provisioner_shared::template::Template {
        let mut exported = fixtures::sample_template(self.db_version().await);
        exported.tenant.url = fixtures::tenant_url();
        exported.tenant.sip_domain = exported.tenant.url.clone();
        exported.access_numbers.clear();
        exported
    }

    /// Sends `archive` to Import Tenant (`query` after the path: `""` or `"?lockTimeout=N"`).
    pub async fn import(&self, archive: Vec<u8>, query: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/configapi/v2/tenant{query}")))
            .header("content-type", "application/zip")
            .body(archive)
            .send()
            .await
            .unwrap()
    }

    /// Imports `archive` (Import Tenant, lock timeout 5 s); returns the job once it ended.
    pub async fn import_and_wait(&self, archive: Vec<u8>) -> Value {
        let r = self.import(archive, "?lockTimeout=5").await;
        assert_eq!(r.status(), 202, "import");
        let job: Value = r.json().await.unwrap();
        self.wait_job(job["jobId"].as_str().unwrap()).await
    }

    pub async fn export(&self, tenant: &str) -> provisioner_shared::template::Template {
        let r = self
            .http
            .get(self.url(&format!("/configapi/v2/tenant/{tenant}/export")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/zip");
        let bytes = r.bytes().await.unwrap();
        provisioner_shared::template::Template::read(
            &bytes,
            &Default::default(),
            self.db_version().await,
        )
        .unwrap()
    }

    /// Takes the advisory lock `key` (e.g. `provisioner:tenant:<url>`) from a session of the
    /// test, as an operator could by hand; it is held until the transaction ends.
    pub async fn hold_lock(&self, key: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut tx = self.db.begin().await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(key)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx
    }

    /// Advisory locks in this test's database: (granted, waiting).
    pub async fn advisory_locks(&self) -> (i64, i64) {
        sqlx::query_as(
            // The batch dispatcher's round lock (taken for a moment every second by every
            // worker) is not an import's: only import and tenant locks count.
            "SELECT count(*) FILTER (WHERE granted), count(*) FILTER (WHERE NOT granted) FROM pg_locks
             WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND ((classid::int8 << 32) | objid::int8) <> hashtextextended('provisioner:dispatch', 0)",
        )
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    /// Waits until `n` sessions wait for an advisory lock in this test's database.
    pub async fn until_lock_waiters(&self, n: i64) {
        eventually(Duration::from_secs(20), || async {
            (self.advisory_locks().await.1 == n).then_some(())
        })
        .await;
    }

    pub async fn db_version(&self) -> i64 {
        provisioner_shared::db::schema_version(&self.db)
            .await
            .unwrap()
    }

    /// Stops the API this process runs, for a benchmark that drives an API child process
    /// alone (`app.http` then reaches nothing).
    pub fn stop_api(&self) {
        self.api_shutdown.cancel();
    }

    /// Stops everything and removes the database and vhost.
    pub async fn stop(mut self) {
        self.stop_workers().await;
        self.api_shutdown.cancel();
        self.db.close().await;
        if let Some(leftovers) = self.leftovers.take() {
            leftovers.remove().await;
        }
    }
}

impl Drop for TestApp {
    /// A test that failed (or forgot `stop`): the system stops and its leftovers go.
    fn drop(&mut self) {
        let Some(leftovers) = self.leftovers.take() else {
            return;
        };
        self.api_shutdown.cancel();
        for (token, _) in &self.workers {
            token.cancel();
        }
        leftovers.remove_now();
    }
}

/// The client every test system bootstraps, with every scope.
pub const BOOTSTRAP_ID: &str = "test-admin";
pub const BOOTSTRAP_SECRET: &str = "test-admin-secret";

/// Client-credentials token for `id:secret`.
pub async fn fetch_token(
    http: &reqwest::Client,
    addr: SocketAddr,
    id: &str,
    secret: &str,
) -> String {
    let r = http
        .post(format!("http://{addr}/configapi/v2/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "token for {id}");
    r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// How long any HTTP exchange of a test may last: past the longest wait a test asks the API for
/// (`Prefer: wait=60`), so a hung server fails the test instead of hanging it.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(90);

/// An HTTP client with the harness's timeout and no proxy.
pub fn http_client() -> reqwest::Client {
    client_builder().build().unwrap()
}

/// `GET url` with `http_client`.
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http_client().get(url).send().await
}

pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .timeout(HTTP_TIMEOUT)
}

/// An HTTP client that sends `Authorization: Bearer <token>` with every request.
pub fn authorized_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    client_builder().default_headers(headers).build().unwrap()
}

fn settings(vars: &HashMap<String, String>) -> Settings {
    Settings::from_lookup(|k| vars.get(k).cloned()).expect("test settings are valid")
}

/// Waits until the API at `addr` holds exactly `n` long-polls (`provisioner_http_waits` of its
/// `/metrics`). Exact only for an API process of its own: the in-process APIs of a test binary
/// share one metrics registry.
pub async fn until_api_waits(addr: SocketAddr, n: u32) {
    let line = format!("provisioner_http_waits {n}");
    eventually(Duration::from_secs(20), || async {
        let text = get(format!("http://{addr}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().any(|l| l == line).then_some(())
    })
    .await;
}

/// Polls `check` every 50 ms until it returns `expected`; after `within`, gives back the last
/// value it returned instead (for a failure that says what was left).
pub async fn settles<T: PartialEq, F: std::future::Future<Output = T>>(
    within: Duration,
    expected: &T,
    mut check: impl FnMut() -> F,
) -> Result<(), T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let value = check().await;
        if value == *expected {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `within`.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    within: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
