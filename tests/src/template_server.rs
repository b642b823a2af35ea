//! A local HTTP server that serves templates, answers with chosen status codes, and counts hits;
//! hostile routes stream without end (slowly, or as fast as they can) and count what they sent.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};

/// What a path answers: a body, or a status; `fail_first` answers 503 that many times first.
#[derive(Debug, Clone)]
pub struct Route {
    pub status: u16,
    pub body: Bytes,
    pub fail_first: usize,
}

/// A body that never ends: a byte every `every`, or (`None`) 64 KiB chunks as fast as the client
/// takes them.
#[derive(Debug, Clone)]
struct Endless {
    every: Option<Duration>,
    sent: Arc<Flow>,
}

/// What an endless route sent, over all its requests.
#[derive(Debug, Default)]
pub struct Flow {
    /// Body bytes handed to the connection.
    pub bytes: AtomicU64,
    /// Responses whose client went away (their body dropped unfinished).
    pub dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    routes: HashMap<String, Route>,
    endless: HashMap<String, Endless>,
    hits: HashMap<String, usize>,
    /// Paths whose requests wait (counted, unanswered) until the gate is released.
    gates: HashMap<String, Arc<tokio::sync::Semaphore>>,
    /// The `Content-Type` a path answers with, when not `application/zip`.
    types: HashMap<String, &'static str>,
}

#[derive(Debug, Clone)]
pub struct TemplateServer {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl TemplateServer {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/{name}", get(serve))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, inner }
    }

    /// Serves `body` at `/name`; returns its URL.
    pub fn put(&self, name: &str, body: Vec<u8>) -> String {
        self.route(
            name,
            Route {
                status: 200,
                body: body.into(),
                fail_first: 0,
            },
        )
    }

    /// Answers `/name` with `content_type` instead of `application/zip` from now on.
    pub fn set_content_type(&self, name: &str, content_type: &'static str) {
        self.inner
            .lock()
            .unwrap()
            .types
            .insert(name.to_owned(), content_type);
    }

    pub fn route(&self, name: &str, route: Route) -> String {
        self.inner
            .lock()
            .unwrap()
            .routes
            .insert(name.to_owned(), route);
        format!("http://{}/{name}", self.addr)
    }

    /// Serves at `/name` a 200 whose body never ends: one byte every `every` (a slow loris), or
    /// with `None` as fast as the client reads. Returns its URL and what it sends.
    pub fn endless(&self, name: &str, every: Option<Duration>) -> (String, Arc<Flow>) {
        let sent = Arc::new(Flow::default());
        self.inner.lock().unwrap().endless.insert(
            name.to_owned(),
            Endless {
                every,
                sent: sent.clone(),
            },
        );
        (format!("http://{}/{name}", self.addr), sent)
    }

    /// Requests for `/name` from now on wait, unanswered, until `release(name)`.
    pub fn hold(&self, name: &str) {
        self.inner
            .lock()
            .unwrap()
            .gates
            .insert(name.to_owned(), Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Answers the requests waiting for `/name`, and those to come.
    pub fn release(&self, name: &str) {
        if let Some(gate) = self.inner.lock().unwrap().gates.remove(name) {
            gate.close();
        }
    }

    pub fn hits(&self, name: &str) -> usize {
        self.inner
            .lock()
            .unwrap()
            .hits
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

async fn serve(State(inner): State<Arc<Mutex<Inner>>>, Path(name): Path<String>) -> Response {
    let (hits, gate) = {
        let mut inner = inner.lock().unwrap();
        let hits = inner.hits.entry(name.clone()).or_default();
        *hits += 1;
        (*hits, inner.gates.get(&name).cloned())
    };
    if let Some(gate) = gate {
        // Closed on release: the wait ends with an error.
        let _ = gate.acquire().await;
    }
    let (endless, content_type) = {
        let inner = inner.lock().unwrap();
        let content_type = inner.types.get(&name).copied().unwrap_or("application/zip");
        (inner.endless.get(&name).cloned(), content_type)
    };
    if let Some(endless) = endless {
        return endless.answer(content_type);
    }
    answer(&inner.lock().unwrap(), &name, hits, content_type)
}

impl Endless {
    fn answer(self, content_type: &'static str) -> Response {
        /// Counts the response as dropped when its body goes (it never ends by itself).
        struct Watch(Arc<Flow>);
        impl Drop for Watch {
            fn drop(&mut self) {
                self.0.dropped.fetch_add(1, Ordering::SeqCst);
            }
        }
        let chunk = Bytes::from(vec![b'0'; if self.every.is_some() { 1 } else { 64 << 10 }]);
        let state = (Watch(self.sent.clone()), self.every);
        let body = futures_util::stream::unfold(state, move |(watch, every)| {
            let chunk = chunk.clone();
            async move {
                if let Some(every) = every {
                    tokio::time::sleep(every).await;
                }
                watch
                    .0
                    .bytes
                    .fetch_add(chunk.len() as u64, Ordering::SeqCst);
                Some((Ok::<_, std::io::Error>(chunk), (watch, every)))
            }
        });
        (
            StatusCode::OK,
            [("content-type", content_type)],
            Body::from_stream(body),
        )
            .into_response()
    }
}

/// What `/name` answers to its `hits`-th request.
fn answer(inner: &Inner, name: &str, hits: usize, content_type: &'static str) -> Response {
    match inner.routes.get(name) {
        None => StatusCode::NOT_FOUND.into_response(),
        Some(r) if hits <= r.fail_first => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Some(r) => (
            StatusCode::from_u16(r.status).unwrap(),
            [("content-type", content_type)],
            r.body.clone(),
        )
            .into_response(),
    }
}
