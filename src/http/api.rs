//! The HTTP/JSON routes. Documented in README.md ("Local API").

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::qm::broker::{check_move, ApiError, Broker, QueueLens};
use crate::qm::catalog::CatalogError;
use crate::qm::requests::{Request, SendOwned, ShardClient};
use crate::store::QueueStore;
use crate::wire::base::MAX_PACKET_SIZE;

use super::console;
use super::message_json::message_value;

/// The most one request waits for messages.
pub const RECEIVE_WAIT_MAX_MS: u64 = 300_000;
/// The most messages one peek or receive request returns; a larger `count` is refused (400),
/// never silently cut (`lior receive` loops for more).
pub const RECEIVE_COUNT_MAX: usize = crate::qm::broker::RECEIVE_BATCH_MAX;
/// About how many message bytes one receive answer carries: past it the answer stops early and
/// says so with the header [`MORE_HEADER`] (`count` messages of 4 MB each would otherwise be
/// built into one answer of gigabytes).
pub const RECEIVE_RESPONSE_BYTES_MAX: usize = 64 << 20;
/// Response header of a receive that stopped at [`RECEIVE_RESPONSE_BYTES_MAX`] with messages
/// possibly left: `x-lior-more: true`.
pub const MORE_HEADER: &str = "x-lior-more";
/// Room the headers of a locally sent message may take inside one packet (base, user, property
/// and transaction headers, the destination format name, a label of up to 250 characters).
pub const SEND_HEADERS_BYTES_MAX: usize = 8 << 10;
/// The largest message body `POST /v1/send`, `lior send` and `lior bench` take: a whole packet,
/// headers included, is at most 4 MiB (MS-MQMQ 2.2.19.1 `PacketSize` <= 0x00400000).
pub const SEND_BODY_BYTES_MAX: usize = MAX_PACKET_SIZE as usize - SEND_HEADERS_BYTES_MAX;
/// The largest `POST /v1/send` request: the body as base64 (4/3 of its size) plus the rest of
/// the JSON object.
pub const SEND_REQUEST_BYTES_MAX: usize = SEND_BODY_BYTES_MAX.div_ceil(3) * 4 + (64 << 10);

/// Where metrics come from: the server adds its counters to the broker's, and the queues'
/// lengths the shards gave.
pub type MetricsFn = Arc<dyn Fn(&QueueLens) -> String + Send + Sync>;

/// Seconds a 503 (a shard's request channel full) tells the client to wait (`Retry-After`).
pub const BUSY_RETRY_AFTER_S: u32 = 1;

/// The API's state: the broker for the catalog (queue administration, names), the shards for
/// everything that reads or writes a queue's messages (by request, never by lock).
struct Ctx<S> {
    broker: Arc<Broker<S>>,
    shards: ShardClient,
    metrics: MetricsFn,
}

impl<S: QueueStore> Ctx<S> {
    /// The shard owning queue `name`.
    fn owner(&self, name: &str) -> Result<usize, ApiError> {
        Ok(self.shards.shard_of(self.broker.owner_of(name)?))
    }
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
        ApiError::NoSuchQueue(_)
        | ApiError::NoSuchMessage(_)
        | ApiError::Catalog(CatalogError::NotFound(_)) => StatusCode::NOT_FOUND,
        ApiError::Send(_) => StatusCode::BAD_REQUEST,
        ApiError::Catalog(CatalogError::Exists(_)) => StatusCode::CONFLICT,
        ApiError::Catalog(CatalogError::BadName(_))
        | ApiError::Catalog(CatalogError::SystemQueue(_)) => StatusCode::BAD_REQUEST,
        ApiError::Catalog(CatalogError::Full(_)) => StatusCode::INSUFFICIENT_STORAGE,
        ApiError::Busy(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", BUSY_RETRY_AFTER_S.to_string())],
                Json(json!({ "error": e.to_string() })),
            )
                .into_response()
        }
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
    /// Positive source journaling (UserHeader JP).
    #[serde(default)]
    journal: bool,
    /// Negative source journaling (UserHeader JN).
    #[serde(default)]
    dead_letter: bool,
}

fn default_priority() -> u8 {
    3
}

#[derive(Deserialize)]
struct MessagesQuery {
    count: Option<usize>,
    wait_ms: Option<u64>,
}

/// The `count` of a peek or receive: 1 by default, refused (400, with the reason) outside
/// 1..=[`RECEIVE_COUNT_MAX`].
fn message_count(q: &MessagesQuery) -> Result<usize, String> {
    match q.count.unwrap_or(1) {
        0 => Err("count must be at least 1 (count=0 would do nothing)".into()),
        n if n > RECEIVE_COUNT_MAX => Err(format!(
            "count {n} is more than one request returns ({RECEIVE_COUNT_MAX}); ask again for the rest"
        )),
        n => Ok(n),
    }
}

/// "message too large", said the same way by the API and the CLI.
pub fn too_large(bytes: usize) -> String {
    format!("message too large: {bytes} bytes, limit {SEND_BODY_BYTES_MAX} (a packet with its headers is at most {MAX_PACKET_SIZE} bytes)")
}

/// Starts the API on `addr` (port 0 picks one) on its own thread.
pub fn serve_api<S: QueueStore + Send + Sync + 'static>(
    addr: SocketAddr,
    broker: Arc<Broker<S>>,
    shards: ShardClient,
    metrics: MetricsFn,
    security: super::tls::ApiSecurity,
) -> std::io::Result<ApiHandle> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let api_cap = broker.config.limits.api_connections_max;
    let ctx = Arc::new(Ctx {
        broker,
        shards,
        metrics,
    });
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
                        get(show_queue::<S>).delete(delete_queue::<S>),
                    )
                    .route("/v1/queues/{name}/rights", post(change_rights::<S>))
                    .route("/v1/queues/{name}/purge", post(purge::<S>))
                    .route("/v1/queues/{name}/move", post(move_message::<S>))
                    .route("/v1/queues/{name}/messages", get(peek::<S>))
                    .route("/v1/queues/{name}/receive", post(receive::<S>))
                    .route("/v1/send", post(send::<S>))
                    .route("/v1/outgoing", get(outgoing::<S>))
                    .route("/v1/outgoing/pause", post(pause_outgoing::<S>))
                    .route("/v1/outgoing/resume", post(resume_outgoing::<S>))
                    .route("/metrics", get(metrics_route::<S>))
                    .route("/v1/queues/{name}/messages/decoded", get(peek_decoded::<S>))
                    .route(console::INDEX_PATH, get(console::index))
                    .route(console::CSS_PATH, get(console::css))
                    .route(console::JS_PATH, get(console::js))
                    .layer(DefaultBodyLimit::max(SEND_REQUEST_BYTES_MAX))
                    .with_state(ctx);
                let app = security.protect(app);
                let listener =
                    super::CappedListener::new(listener, api_cap, "API").with_tls(security.tls);
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
    let cfg = &c.broker.config;
    let poisoned = c
        .broker
        .counters
        .store_poisoned
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0;
    let hardened = cfg.parameters.Hardened_MSMQ;
    let dir = cfg.data_dir.clone();
    // Walking the data directory reads the disk: off the async thread.
    let disk = tokio::task::spawn_blocking(move || dir_bytes(&dir))
        .await
        .unwrap_or(0);
    Json(json!({
        "qm_guid": c.broker.guid().to_string(),
        "partitions": c.broker.partition_count(),
        "version": env!("CARGO_PKG_VERSION"),
        "hardened": hardened,
        // As configured (port 0 means the port was chosen at start; `lior ready` names it).
        "listen": {
            "msmq": (!hardened).then(|| cfg.listen.to_string()),
            "srmp": cfg.srmp_listen.or_else(|| hardened.then(|| "0.0.0.0:80".parse().expect("literal address"))).map(|a| a.to_string()),
            "amqp": cfg.amqp.enabled.then(|| cfg.amqp.listen.to_string()),
        },
        "cores": cfg.cores,
        "data_dir": cfg.data_dir.display().to_string(),
        "data_dir_bytes": disk,
        "store_poisoned": poisoned,
        "health": if poisoned {
            "store poisoned: nothing more is acknowledged; restart lior once the disk is fixed"
        } else {
            "ok"
        },
    }))
    .into_response()
}

/// Disk space the files under `dir` take (allocated blocks: sparse and preallocated segment
/// files count as what they use); unreadable entries count 0.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

async fn list<S: QueueStore + Send + 'static>(State(c): Ctxt<S>) -> Response {
    match c.shards.lens().await {
        Ok(lens) => Json(c.broker.list_queues_from(&lens)).into_response(),
        Err(e) => api_error(e),
    }
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
    // The owning shard deletes the catalog entry and the messages in one step.
    let r = match c.owner(&name) {
        Ok(shard) => {
            c.shards
                .ask(shard, |reply| Request::Empty {
                    queue: name,
                    delete: true,
                    reply,
                })
                .await
        }
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(e),
    }
}

#[derive(Deserialize)]
struct MoveBody {
    lookup_id: u64,
    to: String,
}

/// Moves one message of a queue (a dead letter, say) into another local queue.
async fn move_message<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Path(name): Path<String>,
    Json(b): Json<MoveBody>,
) -> Response {
    match move_steps(&c, &name, b.lookup_id, &b.to).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(e),
    }
}

/// A move in three requests, each to the shard owning its queue: a copy of the message, the
/// copy stored in `to` (answered once durable), then the original removed (answered once
/// durable). A crash in between leaves a copy too many, never none.
async fn move_steps<S: QueueStore>(
    c: &Ctx<S>,
    from: &str,
    lookup: u64,
    to: &str,
) -> Result<(), ApiError> {
    let (src, dst) = c.broker.move_queues(from, to)?;
    let src_shard = c.shards.shard_of(c.broker.owner_of(from)?);
    let dst_shard = c.shards.shard_of(c.broker.owner_of(to)?);
    let queue = src.clone();
    let (bytes, meta) = c
        .shards
        .ask(src_shard, |reply| Request::PeekMessage {
            queue,
            lookup,
            reply,
        })
        .await?;
    check_move(&meta, &dst, lookup)?;
    c.shards
        .ask(dst_shard, |reply| Request::StoreCopy {
            queue: dst,
            bytes,
            meta,
            reply,
        })
        .await?;
    c.shards
        .ask(src_shard, |reply| Request::RemoveMessage {
            queue: src,
            lookup,
            reply,
        })
        .await
}

async fn purge<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Path(name): Path<String>,
) -> Response {
    let r = match c.owner(&name) {
        Ok(shard) => {
            c.shards
                .ask(shard, |reply| Request::Empty {
                    queue: name,
                    delete: false,
                    reply,
                })
                .await
        }
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(e),
    }
}

async fn peek<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Path(name): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Response {
    let count = match message_count(&q) {
        Ok(n) => n,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    // Bounded like a receive answer: past about RECEIVE_RESPONSE_BYTES_MAX it stops and says
    // so (10,000 messages of 4 MB would otherwise be copied into one answer of 40 GB).
    match peek_at_owner(&c, name, count).await {
        Ok((msgs, more)) => {
            let more = if more { "true" } else { "false" };
            (
                [(MORE_HEADER, more)],
                Json(msgs.iter().map(message_value).collect::<Vec<_>>()),
            )
                .into_response()
        }
        Err(e) => api_error(e),
    }
}

async fn receive<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Path(name): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Response {
    let count = match message_count(&q) {
        Ok(n) => n,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let wait = q.wait_ms.unwrap_or(0).min(RECEIVE_WAIT_MAX_MS);
    // The owning shard takes the messages, answers once their removals are durable, and
    // with a wait keeps the request until a message arrives or the wait ends.
    let until_ms = crate::engine::net::now_ms() + wait;
    let r = match c.owner(&name) {
        Ok(shard) => {
            c.shards
                .ask(shard, |reply| Request::Receive {
                    queue: name,
                    count,
                    max_bytes: RECEIVE_RESPONSE_BYTES_MAX,
                    until_ms,
                    reply,
                })
                .await
        }
        Err(e) => Err(e),
    };
    match r {
        Ok((msgs, more)) => {
            let more = if more { "true" } else { "false" };
            (
                [(MORE_HEADER, more)],
                Json(msgs.iter().map(message_value).collect::<Vec<_>>()),
            )
                .into_response()
        }
        Err(e) => api_error(e),
    }
}

/// Peeks up to `count` messages (about [`RECEIVE_RESPONSE_BYTES_MAX`] bytes) at the queue's
/// owning shard.
async fn peek_at_owner<S: QueueStore>(
    c: &Ctx<S>,
    name: String,
    count: usize,
) -> Result<(Vec<crate::qm::broker::Received>, bool), ApiError> {
    let shard = c.owner(&name)?;
    c.shards
        .ask(shard, |reply| Request::Peek {
            queue: name,
            count,
            max_bytes: RECEIVE_RESPONSE_BYTES_MAX,
            reply,
        })
        .await
}

/// The web console's peek: each message with its decoded headers (and, in a dead-letter queue,
/// why it is there), bounded as a peek is.
async fn peek_decoded<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Path(name): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Response {
    let count = match message_count(&q) {
        Ok(n) => n,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let decoded = match peek_at_owner(&c, name.clone(), count).await {
        Ok((msgs, more)) => console::decode_peeked(&c.broker, &name, &msgs).map(|v| (v, more)),
        Err(e) => Err(e),
    };
    match decoded {
        Ok((msgs, more)) => (
            [(MORE_HEADER, if more { "true" } else { "false" })],
            Json(msgs),
        )
            .into_response(),
        Err(e) => api_error(e),
    }
}

async fn metrics_route<S: QueueStore + Send + 'static>(State(c): Ctxt<S>) -> Response {
    let lens = match c.shards.lens().await {
        Ok(l) => l,
        Err(e) => return api_error(e),
    };
    (
        [("content-type", "text/plain; version=0.0.4")],
        (c.metrics)(&lens),
    )
        .into_response()
}

async fn send<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    headers: HeaderMap,
    req: Result<Json<SendBody>, JsonRejection>,
) -> Response {
    use base64::Engine as _;
    let req = match req {
        Ok(Json(r)) => r,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let len = headers
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .map_or_else(
                    || "of unknown size".to_string(),
                    |v| format!("of {v} bytes"),
                );
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "message too large: a request {len}, limit {SEND_REQUEST_BYTES_MAX} \
                     (a body of at most {SEND_BODY_BYTES_MAX} bytes; base64 grows it by 4/3)"
                ),
            );
        }
        Err(e) => return error(e.status(), e.body_text()),
    };
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
    if body.len() > SEND_BODY_BYTES_MAX {
        return error(StatusCode::PAYLOAD_TOO_LARGE, too_large(body.len()));
    }
    if req.priority > 7 {
        return error(StatusCode::BAD_REQUEST, "priority must be 0..=7");
    }
    let message = SendOwned {
        label: req.label,
        body,
        priority: req.priority,
        recoverable: req.recoverable,
        time_to_reach_queue: req.time_to_reach_queue,
        time_to_be_received: req.time_to_be_received,
        app_specific: req.app_specific,
        transactional: req.transactional,
        mqf: None,
        journal: req.journal,
        dead_letter: req.dead_letter,
    };
    // A multiple-element or DL= name: one copy per destination (qm/fanout.rs).
    if crate::qm::fanout::is_fanout_text(&req.to) {
        return match crate::qm::fanout::send_all(&c.broker, &c.shards, &req.to, message).await {
            Ok(o) if o.error.is_some() => (StatusCode::BAD_REQUEST, Json(o)).into_response(),
            Ok(o) => (StatusCode::ACCEPTED, Json(o)).into_response(),
            Err(ApiError::Send(e)) => error(StatusCode::BAD_REQUEST, e),
            Err(e) => api_error(e),
        };
    }
    // The shard owning the local queue, or the outgoing queue of the remote machine.
    let shard = c.shards.shard_of(c.broker.owner_for_send(&req.to));
    let to = req.to;
    match c
        .shards
        .ask(shard, |reply| Request::Send { to, message, reply })
        .await
    {
        Ok(o) => (StatusCode::ACCEPTED, Json(o)).into_response(),
        Err(ApiError::Send(e)) => error(StatusCode::BAD_REQUEST, e),
        Err(e) => api_error(e),
    }
}

async fn outgoing<S: QueueStore + Send + 'static>(State(c): Ctxt<S>) -> Response {
    let lens = match c.shards.lens().await {
        Ok(l) => l,
        Err(e) => return api_error(e),
    };
    let now = crate::engine::net::now_ms();
    let list: Vec<serde_json::Value> = c
        .broker
        .list_outgoing_from(&lens)
        .into_iter()
        .map(|o| {
            // Before its shard first looked at it, a queue is shown by what is known here.
            let (state, next_try_in_ms, last_error) = match o.status {
                Some(s) => (
                    s.state,
                    s.next_try_ms.map(|t| t.saturating_sub(now)),
                    s.last_error,
                ),
                None if o.def.paused => ("paused", None, None),
                None => ("inactive", None, None),
            };
            json!({
                "destination": o.def.key,
                "transport": o.def.transport,
                "partition": o.def.shard,
                "state": state,
                "paused": o.def.paused,
                "next_try_in_ms": next_try_in_ms,
                "last_error": last_error,
                "messages": o.messages,
                "bytes": o.bytes,
            })
        })
        .collect();
    Json(list).into_response()
}

/// The body of `POST /v1/outgoing/pause` and `/resume`.
#[derive(Deserialize)]
struct OutgoingRequest {
    /// As `GET /v1/outgoing` names it: `TCP:10.0.0.7`, `OS:winbox`.
    destination: String,
}

async fn pause_outgoing<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Json(req): Json<OutgoingRequest>,
) -> Response {
    set_paused(&c, &req.destination, true).await
}

async fn resume_outgoing<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Json(req): Json<OutgoingRequest>,
) -> Response {
    set_paused(&c, &req.destination, false).await
}

async fn set_paused<S: QueueStore + Send + 'static>(
    c: &Arc<Ctx<S>>,
    destination: &str,
    paused: bool,
) -> Response {
    let broker = c.broker.clone();
    let key = destination.to_string();
    // Saving the table writes a file: off the async threads.
    match tokio::task::spawn_blocking(move || broker.set_outgoing_paused(&key, paused)).await {
        Ok(Ok(d)) => Json(json!({"destination": d.key, "paused": d.paused})).into_response(),
        Ok(Err(e)) => api_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /v1/queues/{name}`: the queue with its rights (`lior queue show`).
async fn show_queue<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Path(name): Path<String>,
) -> Response {
    let lens = match c.shards.lens().await {
        Ok(l) => l,
        Err(e) => return api_error(e),
    };
    match c.broker.queue_detail_from(&name, &lens) {
        Ok(d) => Json(d).into_response(),
        Err(e) => api_error(e),
    }
}

/// `POST /v1/queues/{name}/rights`: one of `{"principal": P, "grant": [RIGHTS]}`,
/// `{"principal": P, "revoke": [RIGHTS]}`, `{"authenticate": BOOL}`, `{"journal": BOOL}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RightsBody {
    principal: Option<String>,
    grant: Option<Vec<String>>,
    revoke: Option<Vec<String>>,
    authenticate: Option<bool>,
    journal: Option<bool>,
}

async fn change_rights<S: QueueStore + Send + 'static>(
    State(c): Ctxt<S>,
    Path(name): Path<String>,
    body: Result<Json<RightsBody>, JsonRejection>,
) -> Response {
    use crate::qm::broker::RightsChange;
    use crate::qm::rights::{Principal, Rights};
    let b = match body {
        Ok(Json(b)) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let principal = || -> Result<Principal, String> {
        Principal::parse(b.principal.as_deref().ok_or("\"principal\" is missing")?)
    };
    let change = match (&b.grant, &b.revoke, b.authenticate) {
        (None, None, None) if b.principal.is_none() && b.journal.is_some() => {
            Ok(RightsChange::Journal(b.journal.unwrap_or(false)))
        }
        _ if b.journal.is_some() => Err("give {\"journal\": true|false} alone".to_string()),
        (Some(r), None, None) => {
            principal().and_then(|p| Ok(RightsChange::Grant(p, Rights::parse_list(r)?)))
        }
        (None, Some(r), None) => {
            principal().and_then(|p| Ok(RightsChange::Revoke(p, Rights::parse_list(r)?)))
        }
        (None, None, Some(on)) if b.principal.is_none() => Ok(RightsChange::Authenticate(on)),
        _ => Err(
            "give one of {\"principal\", \"grant\": [...]}, {\"principal\", \"revoke\": \
                  [...]} or {\"authenticate\": true|false}"
                .to_string(),
        ),
    };
    let change = match change {
        Ok(c) => c,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match c.broker.change_rights(&name, change) {
        Ok(q) => {
            let lens = match c.shards.lens().await {
                Ok(l) => l,
                Err(e) => return api_error(e),
            };
            match c.broker.queue_detail_from(&q.name, &lens) {
                Ok(d) => Json(d).into_response(),
                Err(e) => api_error(e),
            }
        }
        Err(ApiError::Catalog(CatalogError::Rights(why))) => error(StatusCode::BAD_REQUEST, why),
        Err(e) => api_error(e),
    }
}
