//! The web console at `/`: one HTML page, one stylesheet and one script, embedded in the binary
//! (no build step, nothing fetched from elsewhere at run time). The script reads the JSON API
//! (`/v1/...`) and `/metrics` only; the one thing it needs that the API lacked, a queue's
//! messages with their decoded headers (and, in a dead-letter queue, why each is there), is
//! [`peek_decoded`], served at `GET /v1/queues/{name}/messages/decoded`.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::qm::broker::{ApiError, Broker};
use crate::qm::catalog::QueueKind;
use crate::qm::routing::{route, Route};
use crate::store::QueueStore;
use crate::wire::base::INFINITE;
use crate::wire::headers::MessageClass;
use crate::wire::user::UserMessage;

use super::message_json::message_value;

/// Where the console's files are served (the page links them by these paths).
pub const INDEX_PATH: &str = "/";
pub const CSS_PATH: &str = "/console/console.css";
pub const JS_PATH: &str = "/console/console.js";

const INDEX_HTML: &str = include_str!("index.html");
const CONSOLE_CSS: &str = include_str!("console.css");
const CONSOLE_JS: &str = include_str!("console.js");

/// The page may load only its own files and talk only to this API.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// An entity tag for an embedded file: FNV-1a of its bytes (the files change only with the
/// binary, so a browser revalidates with `If-None-Match` and gets a 304 while they are equal).
fn etag(body: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

/// Serves one embedded file: its content type, `Cache-Control: no-cache` with an `ETag` (always
/// revalidated, so a new lior never runs an old script), and headers that keep the page to
/// itself.
fn asset(req: &HeaderMap, body: &'static str, content_type: &'static str) -> Response {
    let tag = etag(body);
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

pub async fn index(req: HeaderMap) -> Response {
    asset(&req, INDEX_HTML, "text/html; charset=utf-8")
}

pub async fn css(req: HeaderMap) -> Response {
    asset(&req, CONSOLE_CSS, "text/css; charset=utf-8")
}

pub async fn js(req: HeaderMap) -> Response {
    asset(&req, CONSOLE_JS, "text/javascript; charset=utf-8")
}

/// The messages a peek of queue `name` returned (the queue's owning shard peeked them), each
/// as the API's message object plus `headers` (what `lior decode --json` says of the stored
/// packet) and, in a dead-letter queue, `dead_letter_reason`.
pub fn decode_peeked<S: QueueStore>(
    broker: &Broker<S>,
    name: &str,
    msgs: &[crate::qm::broker::Received],
) -> Result<Vec<Value>, ApiError> {
    let q = broker.lookup(name)?;
    let dead = matches!(q.kind, QueueKind::DeadLetter | QueueKind::DeadXact);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().min(u64::from(u32::MAX)) as u32);
    let out = msgs
        .iter()
        .map(|r| {
            let mut v = message_value(r);
            let (packets, err) = crate::decode::decode_stream(&r.bytes);
            v["headers"] = packets.into_iter().next().unwrap_or(Value::Null);
            if let Some(e) = err {
                v["headers_error"] = json!(e.to_string());
            }
            if dead {
                v["dead_letter_reason"] = dead_letter_reason(broker, &r.bytes, now);
            }
            v
        })
        .collect();
    Ok(out)
}

/// Why a message in a dead-letter queue is there, worked out now from the message and the
/// queues as they are (lior keeps the packet as it came, not the NACK class it was given): the
/// checks of delivery in its order (destination, TimeToReachQueue, transaction type), then an
/// expired TimeToBeReceived or a full queue (both only for a sender that asked for negative
/// journaling). `{"class", "why"}`; class `unknown` when nothing explains it any more.
pub fn dead_letter_reason<S: QueueStore>(broker: &Broker<S>, packet: &[u8], now: u32) -> Value {
    let reason = |class: MessageClass, why: String| json!({"class": class.name(), "why": why});
    let Ok(m) = UserMessage::parse(packet) else {
        return json!({"class": "unknown", "why": "the stored packet does not parse"});
    };
    let u = &m.user;
    let (queue, queue_tx) = match route(u, &broker.identity) {
        Route::NotHere(w) | Route::Unknown(w) => {
            return reason(MessageClass::NACK_BAD_DST_Q, w);
        }
        Route::System(s) => {
            return json!({"class": "unknown", "why": format!("sent to the system queue {s:?}")})
        }
        Route::Named(n) => match broker.lookup(&n) {
            Ok(q) => (q.name, q.transactional),
            Err(_) => {
                return reason(MessageClass::NACK_BAD_DST_Q, format!("no queue named {n}"));
            }
        },
        Route::Number(n) => match broker.queue_by_id(n) {
            Some(q) => (q.name, q.transactional),
            None => {
                return reason(
                    MessageClass::NACK_BAD_DST_Q,
                    format!("no private queue number {n:#x}"),
                )
            }
        },
    };
    // The rights at the target come first in delivery.
    if let Some((class, why)) = broker.refusal_now(&queue, &m) {
        return reason(class, why);
    }
    let ttrq = m.base.time_to_reach_queue;
    let ttbr = u.time_to_be_received;
    let age = now.saturating_sub(u.sent_time);
    let ttrq_passed = ttrq != INFINITE && u.sent_time != 0 && age > ttrq;
    let ttbr_passed = ttbr != INFINITE && u.sent_time != 0 && age >= ttbr;
    // Expiry in a queue moves a message here only when its sender asked for negative
    // journaling; expiry on the way always does.
    let jn = u.flags.journal_negative();
    if ttrq_passed && !(ttbr_passed && jn) {
        return reason(
            MessageClass::NACK_REACH_QUEUE_TIMEOUT,
            format!(
                "TimeToReachQueue {ttrq} s has passed (sent {age} s ago) on its way to {}",
                queue
            ),
        );
    }
    let tx = u.flags.transactional();
    if tx && !queue_tx {
        return reason(
            MessageClass::NACK_NOT_TRANSACTIONAL_Q,
            format!(
                "transactional message for non-transactional queue {}",
                queue
            ),
        );
    }
    if !tx && queue_tx {
        return reason(
            MessageClass::NACK_NOT_TRANSACTIONAL_MSG,
            format!(
                "non-transactional message for transactional queue {}",
                queue
            ),
        );
    }
    if ttbr_passed && jn {
        let also = if ttrq_passed {
            format!(", or on its way there (TimeToReachQueue {ttrq} s passed too)")
        } else {
            String::new()
        };
        return reason(
            MessageClass::NACK_RECEIVE_TIMEOUT,
            format!(
                "TimeToBeReceived {ttbr} s passed (sent {age} s ago) in queue {}{also}",
                queue
            ),
        );
    }
    if jn && !tx {
        return reason(
            MessageClass::NACK_Q_EXCEED_QUOTA,
            format!(
                "queue {} was full when it came (nothing else explains it now)",
                queue
            ),
        );
    }
    json!({
        "class": "unknown",
        "why": format!(
            "nothing that dead-letters a message holds now; queue {} may have been deleted \
             and created again since",
            queue
        ),
    })
}
