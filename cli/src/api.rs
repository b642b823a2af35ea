//! The HTTP client of the API: client-credentials tokens fetched once and renewed before they
//! expire, one retry with a fresh token on a `401`, and every answer mapped to an exit code.
//! Secrets (the client secret, tokens) never reach an error message.

use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::exit::{Exit, Failure, Problem, Result};

/// How long one exchange may take, long-polls included (they ask for at most 60 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Times a `429` or `503` with `Retry-After` is waited out before giving up.
const BUSY_RETRIES: u32 = 5;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Most items a listing shows.
const MAX_LISTED: usize = 10_000;
/// Largest error body read.
const MAX_ERROR_BODY: usize = 256 << 10;

/// Client credentials. The secret is not `Debug`.
pub struct Credentials {
    pub id: String,
    secret: String,
}

impl Credentials {
    pub fn new(id: String, secret: String) -> Self {
        Self { id, secret }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <secret>)", self.id)
    }
}

struct Token {
    value: String,
    /// When it should be replaced: some way before it expires.
    renew_at: Instant,
}

/// A connection to the API.
pub struct Api {
    base: Url,
    http: reqwest::Client,
    credentials: Option<Credentials>,
    token: Mutex<Option<Token>>,
}

/// The base URL a user gave: absolute http(s), without credentials.
pub fn base_url(raw: &str) -> Result<Url> {
    let url = Url::parse(raw)
        .map_err(|e| Failure::invalid(format!("--api `{raw}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(Failure::invalid("--api must be an http or https URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Failure::invalid(
            "--api must not carry credentials; use --client-id and --client-secret",
        ));
    }
    Ok(url)
}

/// A transport error, naming the API's address (`scheme://host:port`, never a path or query),
/// so a wrong `--api` or `PROVISIONER_API_URL` shows at once.
fn unreachable(base: &Url, e: reqwest::Error) -> Failure {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    Failure::new(
        Exit::Unreachable,
        format!(
            "the API at {} could not be reached: {what} ({})",
            base.origin().ascii_serialization(),
            e.without_url()
        ),
    )
}

impl Api {
    pub fn new(base: Url, credentials: Option<Credentials>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("provisioner-cli/", env!("CARGO_PKG_VERSION")))
            // A redirect is answered, not followed: following one sent the client secret's form
            // (and every bearer token) on to wherever the answer pointed, over plain HTTP too.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Failure::new(Exit::Unreachable, e.without_url().to_string()))?;
        Ok(Self {
            base,
            http,
            credentials,
            token: Mutex::new(None),
        })
    }

    /// `path` (with its query) under the base URL.
    pub fn url(&self, path: &str) -> Url {
        let base = self.base.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path}")).expect("a valid base with an absolute path")
    }

    /// A token that is valid for a while yet: fetched at first use, renewed before it expires.
    async fn token(&self, fresh: bool) -> Result<String> {
        let mut token = self.token.lock().await;
        if let Some(t) = token
            .as_ref()
            .filter(|t| !fresh && Instant::now() < t.renew_at)
        {
            return Ok(t.value.clone());
        }
        let creds = self.credentials.as_ref().ok_or_else(|| {
            Failure::new(
                Exit::Refused,
                "no client credentials: give --client-id and --client-secret, or set \
                 PROVISIONER_CLIENT_ID and PROVISIONER_CLIENT_SECRET",
            )
        })?;
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", creds.id.as_str()),
            ("client_secret", creds.secret.as_str()),
        ];
        let response = self
            .busy_retries(|| {
                self.http
                    .post(self.url("/configapi/v2/oauth/token"))
                    .form(&form)
            })
            .await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST {
            return Err(Failure::new(
                Exit::Refused,
                format!(
                    "the API refused the client credentials of `{}` ({status})",
                    creds.id
                ),
            ));
        }
        if !status.is_success() {
            return Err(answer_failure(response).await);
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| unreachable(&self.base, e))?;
        let value = body["access_token"]
            .as_str()
            .ok_or_else(|| Failure::new(Exit::Unreachable, "the token answer holds no token"))?
            .to_owned();
        let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(60));
        // Renew with a quarter of the lifetime left (at least 1 s, at most 60 s before).
        let margin = (lifetime / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let renew_at = Instant::now() + lifetime.saturating_sub(margin);
        *token = Some(Token {
            value: value.clone(),
            renew_at,
        });
        Ok(value)
    }

    /// Sends a request (again after a `429`/`503` with `Retry-After`).
    async fn busy_retries(&self, build: impl Fn() -> RequestBuilder) -> Result<Response> {
        let mut tries = 0;
        loop {
            let response = build()
                .send()
                .await
                .map_err(|e| unreachable(&self.base, e))?;
            let status = response.status();
            let busy = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE;
            let after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
            match after {
                Some(seconds) if busy && tries < BUSY_RETRIES => {
                    tries += 1;
                    let wait = Duration::from_secs(seconds)
                        .min(MAX_RETRY_AFTER)
                        .max(Duration::from_millis(200));
                    // Said, so that a wait of up to minutes is not taken for a hang.
                    eprintln!(
                        "the API is busy ({status}); asking again in {} s ({tries} of {BUSY_RETRIES})",
                        wait.as_secs().max(1)
                    );
                    tokio::time::sleep(wait).await;
                }
                _ => return Ok(response),
            }
        }
    }

    /// Sends an authorized request built by `build` (called again for a retry); a `401` is
    /// retried once with a new token.
    pub async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response> {
        let mut fresh = false;
        loop {
            let token = self.token(fresh).await?;
            let response = self
                .busy_retries(|| build(&self.http).bearer_auth(&token))
                .await?;
            if response.status() == StatusCode::UNAUTHORIZED && !fresh {
                fresh = true;
                continue;
            }
            return Ok(response);
        }
    }

    /// Sends a request whose body is a stream, built anew by `build` for each try, with a token
    /// valid now: again after a `429`/`503` with `Retry-After`, as `send` does. The API can
    /// refuse such a body while it still arrives (an NDJSON batch past the batches it receives
    /// at once), and closing then can reset the connection before its answer is read: a
    /// request whose connection failed is also sent again (after a second), as many times, so
    /// it must be safe to repeat (an `Idempotency-Key`).
    /// `settled` says, after a failure, that no retry can help (the body itself failed).
    pub async fn send_streamed(
        &self,
        build: impl Fn() -> RequestBuilder,
        settled: impl Fn() -> bool,
    ) -> Result<Response> {
        let mut failed = 0;
        loop {
            let token = self.token(false).await?;
            match self.busy_retries(|| build().bearer_auth(&token)).await {
                Err(e) if e.exit == Exit::Unreachable && failed < BUSY_RETRIES && !settled() => {
                    failed += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                answered => return answered,
            }
        }
    }

    /// An `Idempotency-Key` for a body with SHA-256 `digest`: keyed with the client secret
    /// (HMAC-SHA256), so the key, which the API keeps as it is, says nothing about the body
    /// (its passwords) to anyone without the secret.
    pub fn idempotency_key(&self, digest: &[u8; 32]) -> String {
        use hmac::{Hmac, Mac};
        let secret = self
            .credentials
            .as_ref()
            .map_or(&[][..], |c| c.secret.as_bytes());
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(digest);
        let tag = mac.finalize().into_bytes();
        format!("provisioner-cli-{}", crate::template::hex(&tag))
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `method path` with an optional JSON body; a success's JSON, or the failure it means.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T> {
        let url = self.url(path);
        let response = self
            .send(|http| {
                let request = http.request(method.clone(), url.clone());
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        success_json(response).await
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None).await
    }

    /// The items of a paged listing (`{"items", "nextCursor"}`), following the cursor, at most
    /// `MAX_LISTED` of them.
    pub async fn list_all(&self, path: &str) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = self.url(path);
            url.query_pairs_mut().append_pair("limit", "100");
            if let Some(c) = &cursor {
                url.query_pairs_mut().append_pair("cursor", c);
            }
            let page: Value = self.get(&url[url::Position::BeforePath..]).await?;
            if let Some(list) = page["items"].as_array() {
                items.extend(list.iter().cloned());
            }
            if items.len() >= MAX_LISTED {
                items.truncate(MAX_LISTED);
                eprintln!("showing the newest {MAX_LISTED} only");
                return Ok(items);
            }
            match page["nextCursor"].as_str() {
                Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
                _ => return Ok(items),
            }
        }
    }
}

/// A success's JSON body, or the failure the answer means.
pub async fn success_json<T: DeserializeOwned>(response: Response) -> Result<T> {
    if !response.status().is_success() {
        return Err(answer_failure(response).await);
    }
    response.json().await.map_err(|e| {
        Failure::new(
            Exit::Unreachable,
            format!(
                "the API's answer is not the expected JSON: {}",
                e.without_url()
            ),
        )
    })
}

/// The exit code an HTTP status means for any command.
pub fn exit_for(status: StatusCode) -> Exit {
    match status.as_u16() {
        401 | 403 => Exit::Refused,
        409 => Exit::Failed,
        400..=499 if status != StatusCode::TOO_MANY_REQUESTS => Exit::Invalid,
        _ => Exit::Unreachable,
    }
}

/// A refused answer as a failure: its problem's title, detail and field errors (with the
/// item and line of a batch item). 5xx bodies carry nothing useful and are not read.
pub async fn answer_failure(response: Response) -> Failure {
    let status = response.status();
    let exit = exit_for(status);
    if status.is_server_error() {
        return Failure::new(exit, format!("the API answered {status}"));
    }
    if status.is_redirection() {
        let to = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or("nowhere it said");
        return Failure::new(
            exit,
            format!(
                "the API answered {status}, a redirect to {to}, which this command does not \
                 follow (credentials would go with it): set --api or PROVISIONER_API_URL to \
                 where the API is"
            ),
        );
    }
    let mut body = Vec::new();
    let mut response = response;
    while let Ok(Some(chunk)) = response.chunk().await {
        if body.len() + chunk.len() > MAX_ERROR_BODY {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    let problem: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = |k: &str| problem[k].as_str().map(str::to_owned);
    let message = match (text("title"), text("detail")) {
        (_, Some(detail)) => format!("{status}: {detail}"),
        (Some(title), None) => format!("{status}: {title}"),
        _ => match text("error") {
            Some(e) => format!("{status}: {e}"),
            None => format!("the API answered {status}"),
        },
    };
    let problems = problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| Problem {
                    line: e["line"].as_u64(),
                    item: e["item"].as_u64(),
                    field: e["field"].as_str().unwrap_or_default().to_owned(),
                    message: e["message"].as_str().unwrap_or_default().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    Failure::new(exit, message).with_problems(problems)
}
