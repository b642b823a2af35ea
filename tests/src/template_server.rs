//! A local HTTP server that serves templates, answers with chosen status codes, and counts hits.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
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

#[derive(Debug, Default)]
struct Inner {
    routes: HashMap<String, Route>,
    hits: HashMap<String, usize>,
    /// Paths whose requests wait (counted, unanswered) until the gate is released.
    gates: HashMap<String, Arc<tokio::sync::Semaphore>>,
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

    pub fn route(&self, name: &str, route: Route) -> String {
        self.inner
            .lock()
            .unwrap()
            .routes
            .insert(name.to_owned(), route);
        format!("http://{}/{name}", self.addr)
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
    answer(&inner.lock().unwrap(), &name, hits)
}

/// What `/name` answers to its `hits`-th request.
fn answer(inner: &Inner, name: &str, hits: usize) -> Response {
    match inner.routes.get(name) {
        None => StatusCode::NOT_FOUND.into_response(),
        Some(r) if hits <= r.fail_first => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Some(r) => (
            StatusCode::from_u16(r.status).unwrap(),
            [("content-type", "application/zip")],
            r.body.clone(),
        )
            .into_response(),
    }
}
