//! The HTTP/JSON routes. Documented in README.md ("Local API").

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::qm::broker::{ApiError, Broker};
use crate::qm::catalog::CatalogError;
use crate::store::QueueStore;

use super::message_json::message_value;

/// The most one request waits for messages.
pub const RECEIVE_WAIT_MAX_MS: u64 = 300_000;
/// The most messages one request returns.
pub const RECEIVE_COUNT_MAX: usize = 10_000;

/// Where metrics come from: the server adds its counters to the broker's.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

struct Ctx<S> {
    broker: Arc<Broker<S>>,
    metrics: MetricsFn,
}

/// A running API server.
pub struct ApiHandle {
    pub local_addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiHandle {
    pub fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": msg.to_string() }))).into_response()
}

fn api_error(e: ApiError) -> Response {
    let status = match &e {
        ApiError::NoSuchQueue(_) | ApiError::Catalog(CatalogError::NotFound(_)) => {
            StatusCode::NOT_FOUND
        }
        ApiError::Catalog(CatalogError::Exists(_)) => StatusCode::CONFLICT,
        ApiError::Catalog(CatalogError::BadName(_))
        | ApiError::Catalog(CatalogError::SystemQueue(_)) => StatusCode::BAD_REQUEST,
        ApiError::Catalog(CatalogError::Full(_)) => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

#[derive(Deserialize)]
struct CreateQueue {
    name: String,
    #[serde(default)]
    transactional: bool,
}

#[derive(Deserialize)]
struct SendBody {
    to: String,
    #[serde(default)]
    label: String,
    /// The body as text (UTF-8 bytes), or...
    #[serde(default)]
    body: Option<String>,
    /// ...as base64.
    #[serde(default)]
    body_base64: Option<String>,
    #[serde(default = "default_priority")]
    priority: u8,
    #[serde(default)]
    recoverable: bool,
    time_to_reach_queue: Option<u32>,
    time_to_be_received: Option<u32>,
    #[serde(default)]
    app_specific: u32,
    #[serde(default)]
    transactional: bool,
}

fn default_priority() -> u8 {
    3
}

#[derive(Deserialize)]
struct MessagesQuery {
    count: Option<usize>,
    wait_ms: Option<u64>,
}

/// Starts the API on `addr` (port 0 picks one) on its own thread.
pub fn serve_api<S: QueueStore + Send + 'static>(
    addr: SocketAddr,
    broker: Arc<Broker<S>>,
    metrics: MetricsFn,
) -> std::io::Result<ApiHandle> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let ctx = Arc::new(Ctx { broker, metrics });
    let thread = std::thread::Builder::new()
        .name("lior-api".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the API runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot use the API socket");
                        return;
                    }
                };
                let app = Router::new()
                    .route("/v1/status", get(status::<S>))
                    .route("/v1/queues", get(list::<S>).post(create::<S>))
                    .route(
                        "/v1/queues/{name}",
                        axum::routing::delete(delete_queue::<S>),
                    )
                    .route("/v1/queues/{name}/purge", post(purge::<S>))
                    .route("/v1/queues/{name}/messages", get(peek::<S>))
                    .route("/v1/queues/{name}/receive", post(receive::<S>))
                    .route("/v1/send", post(send::<S>))
                    .route("/v1/outgoing", get(outgoing::<S>))
                    .route("/metrics", get(metrics_route::<S>))
                    .with_state(ctx);
                let r = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "API server stopped");
                }
            });
        })?;
    Ok(ApiHandle {
        local_addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

type Ctxt<S> = State<Arc<Ctx<S>>>;

async fn status<S: QueueStore + Send + 'static>(State(c): Ctxt<S>) -> Response {
    Json(json!({
        "qm_guid": c.broker.guid().to_string(),
        "partitions": c.broker.partition_count(),
        "version": env!("CARGO_PKG_VERSION"),
        "hardened": c.broker.config.parameters.Hardened_MSMQ,
        "health": if c.broker.counters.store_poisoned.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            "store poisoned: nothing more is acknowledged; restart lior once the disk is fixed"
        } else {
            "ok"
        },
    }))
    .into_response()
}

async fn list<S: QueueStore + Send + 'static>(State(c): Ctxt<S>) -> Response {
    Json(c.broker.list_queues()).into_response()
}

async fn create<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Json(req): Json<CreateQueue>,
) -> Response {
    match c.broker.create_queue(&req.name, req.transactional) {
        Ok(q) => (StatusCode::CREATED, Json(q)).into_response(),
        Err(e) => api_error(e),
    }
}

async fn delete_queue<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Path(name): Path<String>,
) -> Response {
    match c.broker.delete_queue(&name) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(e),
    }
}

async fn purge<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Path(name): Path<String>,
) -> Response {
    match c.broker.purge_queue(&name) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(e),
    }
}

async fn peek<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Path(name): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Response {
    let count = q.count.unwrap_or(1).min(RECEIVE_COUNT_MAX);
    match c.broker.peek(&name, count) {
        Ok(msgs) => Json(msgs.iter().map(message_value).collect::<Vec<_>>()).into_response(),
        Err(e) => api_error(e),
    }
}

async fn receive<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Path(name): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Response {
    let count = q.count.unwrap_or(1).clamp(1, RECEIVE_COUNT_MAX);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(RECEIVE_WAIT_MAX_MS));
    let deadline = Instant::now() + wait;
    loop {
        // Register for a wake-up before looking, so an arrival in between is not missed.
        let notified = c.broker.arrivals.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match c.broker.receive(&name, count) {
            Ok(msgs) if !msgs.is_empty() => {
                return Json(msgs.iter().map(message_value).collect::<Vec<_>>()).into_response()
            }
            Ok(_) => {}
            Err(e) => return api_error(e),
        }
        let now = Instant::now();
        if now >= deadline {
            return Json(Vec::<serde_json::Value>::new()).into_response();
        }
        // Wake at least every 100 ms: arrivals on other shards notify too, but a bound keeps a
        // missed notification from turning into a full wait.
        let slice = (deadline - now).min(Duration::from_millis(100));
        let _ = tokio::time::timeout(slice, notified).await;
    }
}

async fn metrics_route<S: QueueStore + Send + 'static>(State(c): Ctxt<S>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        (c.metrics)(),
    )
        .into_response()
}

async fn send<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Json(req): Json<SendBody>,
) -> Response {
    use base64::Engine as _;
    let body = match (&req.body, &req.body_base64) {
        (Some(t), None) => t.as_bytes().to_vec(),
        (None, Some(b)) => match base64::engine::general_purpose::STANDARD.decode(b) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("body_base64: {e}")),
        },
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "give body or body_base64, not both",
            )
        }
    };
    if req.priority > 7 {
        return error(StatusCode::BAD_REQUEST, "priority must be 0..=7");
    }
    let r = crate::qm::broker::SendRequest {
        label: &req.label,
        body: &body,
        priority: req.priority,
        recoverable: req.recoverable,
        time_to_reach_queue: req.time_to_reach_queue,
        time_to_be_received: req.time_to_be_received,
        app_specific: req.app_specific,
        transactional: req.transactional,
    };
    match c.broker.send(&req.to, &r) {
        Ok(o) => (StatusCode::ACCEPTED, Json(o)).into_response(),
        Err(ApiError::Send(e)) => error(StatusCode::BAD_REQUEST, e),
        Err(e) => api_error(e),
    }
}

async fn outgoing<S: QueueStore + Send + 'static>(State(c): Ctxt<S>) -> Response {
    let list: Vec<serde_json::Value> = c
        .broker
        .list_outgoing()
        .into_iter()
        .map(|(d, n)| json!({"destination": d.key, "transport": d.transport, "shard": d.shard, "messages": n}))
        .collect();
    Json(list).into_response()
}
