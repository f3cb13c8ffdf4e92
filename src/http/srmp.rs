//! SRMP (MSMQ over HTTP, MC-MQSRM): the endpoint a Windows sender posts to for a
//! `DIRECT=HTTP://host/msmq/...` format name, and the only way in when hardened mode is on.
//!
//! A POST to `/msmq/<queue path>` carries a `multipart/related` body: a SOAP envelope (the
//! message properties) and the message body as a MIME part (MC-MQSRM 2.1, 2.2; DIGEST §16).
//! Everything is hostile until parsed: the MIME split and the XML reading are bounded, and a
//! request that does not parse gets 400 with the reason. An accepted message is turned into the
//! same UserMessage bytes a binary sender would have sent, and stored through the broker
//! (durable before the 200 when `<durable/>` or a `<stream>` asks for it).
//!
//! Not yet: delivery, commitment and stream receipts (the sender keeps resending a stream
//! message it gets no receipt for; lior's exactly-once check drops the copies).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use quick_xml::events::Event as XmlEvent;
use quick_xml::Reader as XmlReader;
use tokio::sync::Semaphore;

use crate::engine::admission::PeerLimiter;
use crate::http::body_budget::{read_body, BodyBudget};
use crate::qm::broker::{ApiError, Broker};
use crate::qm::requests::{Request, ShardClient};
use crate::store::QueueStore;
use crate::wire::headers::{MessageClass, TransactionHeader, TxFlags};
use crate::wire::user::{QueueRef, UserFlags, UserMessage};
use crate::wire::{utf16z, Guid, Utf16};

/// Largest request body accepted (a 4 MB message body plus its envelope).
pub const SRMP_BODY_BYTES_MAX: usize = (4 << 20) + (64 << 10);
/// Largest SOAP envelope read.
pub const SRMP_ENVELOPE_BYTES_MAX: usize = 64 << 10;
/// MIME parts looked at, at most.
pub const SRMP_PARTS_MAX: usize = 8;
/// Longest MIME boundary taken (RFC 2046 allows 70 characters).
pub const SRMP_BOUNDARY_LEN_MAX: usize = 200;
/// Largest request head (request line and headers).
pub const SRMP_HEAD_BYTES_MAX: usize = 64 << 10;
/// How long shutdown waits for open SRMP requests to finish.
pub const SRMP_SHUTDOWN_GRACE_MS: u64 = 2_000;

/// The message an SRMP post carries, read from its envelope and body part.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SrmpMessage {
    pub to: String,
    pub label: String,
    pub source_qm: Guid,
    pub index: u64,
    pub expires_at: Option<u32>,
    pub sent_at: Option<u32>,
    pub durable: bool,
    pub priority: u8,
    pub class: u16,
    pub body_type: u32,
    pub app: u32,
    pub journal: bool,
    pub dead_letter: bool,
    pub correlation: Option<[u8; 20]>,
    /// (TxSequenceID, current, previous) of an exactly-once stream.
    pub stream: Option<(u64, u32, u32)>,
    /// The queue manager GUID of the stream's `streamId` (`uid:<GUID>\<number>`).
    pub stream_qm: Guid,
    /// Where stream receipts for the stream go (`<start><sendReceiptsTo>`, MC-MQSRM 2.2.5.3).
    pub stream_receipts_to: Option<String>,
    /// Where a delivery receipt goes (`<deliveryReceiptRequest><sendTo>`, 2.2.5.2.2).
    pub delivery_receipt_to: Option<String>,
    /// Where a commitment receipt goes (`<commitmentReceiptRequest><sendTo>`, 2.2.5.2.3), and
    /// whether only positive or only negative ones are asked for.
    pub commitment_receipt_to: Option<String>,
    pub commitment_positive_only: bool,
    pub commitment_negative_only: bool,
    /// A receipt (the whole content of a single-part `text/xml` request, MC-MQSRM 2.2.2).
    pub receipt: Option<ReceivedReceipt>,
    pub body: Vec<u8>,
}

/// A receipt another queue manager sent (MC-MQSRM 2.2.5.4 to 2.2.5.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceivedReceipt {
    /// The message `id` (`uuid:<index>@<GUID>`) reached its queue.
    Delivery { id: String },
    /// The message `id` was received by an application (positive) or removed otherwise.
    Commitment { id: String, positive: bool },
    /// Every message of stream (`qm`, `sequence`) up to `last_ordinal` was accepted.
    Stream {
        qm: Guid,
        sequence: u64,
        last_ordinal: u64,
    },
}

/// `YYYYMMDDThhmmss` (UTC) to unix seconds.
pub fn parse_srmp_time(s: &str) -> Option<u32> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() != 15 || b[8] != b'T' || !s.is_ascii() {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u32::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()
}

fn boundary_of(content_type: &str) -> Option<String> {
    let lower = content_type.to_ascii_lowercase();
    let i = lower.find("boundary=")?;
    let rest = &content_type[i + "boundary=".len()..];
    Some(match rest.strip_prefix('"') {
        Some(q) => q.split('"').next()?.to_string(),
        None => rest.split(';').next()?.trim().to_string(),
    })
}

/// The first `needle` in `hay` at or after `from`, in time linear in `hay.len() - from` whatever
/// the needle (two-way search with SIMD prefilters, `memchr::memmem`): a hostile boundary of
/// hundreds of KB cannot make the split quadratic.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from >= hay.len() {
        return None;
    }
    memchr::memmem::find(&hay[from..], needle).map(|p| p + from)
}

/// One MIME part: its headers (lower-case names) and its content.
#[derive(Debug)]
struct Part<'a> {
    headers: Vec<(String, String)>,
    content: &'a [u8],
}

impl Part<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a multipart body tolerantly: the published examples lose the line break before a
/// boundary, so a part ends at the boundary wherever it stands, or after its Content-Length.
fn split_parts<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut parts = Vec::new();
    let mut pos = find(body, delim, 0).ok_or("no MIME boundary in the body")? + delim.len();
    while parts.len() < SRMP_PARTS_MAX {
        if body[pos..].starts_with(b"--") {
            break;
        }
        // Part headers end at the first empty line.
        let (hdr_end, sep) = match (find(body, b"\r\n\r\n", pos), find(body, b"\n\n", pos)) {
            (Some(a), Some(b)) if b < a => (b, 2),
            (Some(a), _) => (a, 4),
            (None, Some(b)) => (b, 2),
            (None, None) => return Err("a MIME part has no end of headers".into()),
        };
        let mut headers = Vec::new();
        for line in String::from_utf8_lossy(&body[pos..hdr_end]).lines() {
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let start = hdr_end + sep;
        let declared = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let boundary_at = find(body, delim, start);
        // A Content-Length that runs past the next boundary is wrong (the published examples
        // count line breaks their own text lacks); the boundary wins then.
        let end = match (declared, boundary_at) {
            (Some(n), b) if start.checked_add(n).is_some_and(|e| e <= body.len()) => {
                b.map_or(start + n, |b| b.min(start + n))
            }
            (_, Some(b)) => b,
            (_, None) => return Err("a MIME part is not closed by the boundary".into()),
        };
        let mut content = &body[start..end];
        // When the boundary ended the part, the line break before it belongs to the boundary.
        if boundary_at == Some(end) {
            content = content.strip_suffix(b"\r\n").unwrap_or(content);
            content = content.strip_suffix(b"\n").unwrap_or(content);
        }
        parts.push(Part { headers, content });
        let Some(next) = find(body, delim, end) else {
            break;
        };
        pos = next + delim.len();
    }
    Ok(parts)
}

/// Reads the envelope's elements by local name (MC-MQSRM 2.2.3-2.2.7; order and prefixes vary).
fn read_envelope(xml: &[u8], m: &mut SrmpMessage) -> Result<(), String> {
    if xml.len() > SRMP_ENVELOPE_BYTES_MAX {
        return Err(format!(
            "SOAP envelope larger than {SRMP_ENVELOPE_BYTES_MAX} bytes"
        ));
    }
    let mut r = XmlReader::from_reader(xml);
    r.config_mut().trim_text(true);
    let mut stack: Vec<String> = Vec::new();
    let mut buf = Vec::new();
    let mut stream_id: Option<u64> = None;
    let mut receipt_stream: Option<(Guid, u64)> = None;
    let mut last_ordinal: Option<u64> = None;
    let mut receipt_id: Option<String> = None;
    let mut decision: Option<bool> = None;
    let (mut delivery_receipt, mut commitment_receipt) = (false, false);
    let (mut current, mut previous) = (None::<u32>, None::<u32>);
    let mut source_from_id = Guid::NULL;
    loop {
        let ev = r
            .read_event_into(&mut buf)
            .map_err(|e| format!("SOAP envelope is not well-formed XML: {e}"))?;
        match ev {
            XmlEvent::Start(e) => {
                if stack.len() > 32 {
                    return Err("SOAP envelope nested too deeply".into());
                }
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                match name.as_str() {
                    "deliveryReceipt" => delivery_receipt = true,
                    "commitmentReceipt" => commitment_receipt = true,
                    _ => {}
                }
                stack.push(name);
            }
            XmlEvent::Empty(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                match name.as_str() {
                    "durable" => m.durable = true,
                    "Journal" => m.journal = true,
                    "DeadLetter" => m.dead_letter = true,
                    "positiveOnly" => m.commitment_positive_only = true,
                    "negativeOnly" => m.commitment_negative_only = true,
                    _ => {}
                }
            }
            XmlEvent::End(_) => {
                stack.pop();
            }
            XmlEvent::Text(t) => {
                let text = t
                    .unescape()
                    .map_err(|e| format!("bad text in the SOAP envelope: {e}"))?
                    .into_owned();
                let Some(el) = stack.last().map(String::as_str) else {
                    continue;
                };
                // The 4.4 stream sample spells the element `<Stream>` where 2.2.5.3 says
                // `<stream>`: both are read.
                let parent = stack
                    .len()
                    .checked_sub(2)
                    .map(|i| stack[i].as_str())
                    .map(|p| if p == "Stream" { "stream" } else { p });
                match (parent, el) {
                    (Some("path"), "action") => {
                        m.label = text.strip_prefix("MSMQ:").unwrap_or("").to_string();
                    }
                    (Some("path"), "to") => m.to = text,
                    (Some("path"), "id") => {
                        // uuid:<index>@<sender QM GUID>
                        let t = text.strip_prefix("uuid:").unwrap_or(&text);
                        if let Some((i, g)) = t.split_once('@') {
                            m.index = i.parse().unwrap_or(0);
                            source_from_id = Guid::parse_text(g).unwrap_or(Guid::NULL);
                        }
                    }
                    (Some("properties"), "expiresAt") => m.expires_at = parse_srmp_time(&text),
                    (Some("properties"), "sentAt") => m.sent_at = parse_srmp_time(&text),
                    (Some("stream"), "streamId") => {
                        // uid:<sender QM GUID>\<u64>
                        stream_id = text.rsplit('\\').next().and_then(|n| n.parse().ok());
                        m.stream_qm = stream_id_qm(&text);
                    }
                    (Some("start"), "sendReceiptsTo") => m.stream_receipts_to = Some(text),
                    (Some("deliveryReceiptRequest"), "sendTo") => {
                        m.delivery_receipt_to = Some(text)
                    }
                    (Some("commitmentReceiptRequest"), "sendTo") => {
                        m.commitment_receipt_to = Some(text)
                    }
                    (Some("streamReceipt"), "streamId") => {
                        receipt_stream = text
                            .rsplit('\\')
                            .next()
                            .and_then(|n| n.parse().ok())
                            .map(|n| (stream_id_qm(&text), n));
                    }
                    (Some("streamReceipt"), "lastOrdinal") => last_ordinal = text.parse().ok(),
                    (Some("deliveryReceipt" | "commitmentReceipt"), "id") => {
                        receipt_id = Some(text)
                    }
                    (Some("commitmentReceipt"), "decision") => {
                        decision = Some(text.eq_ignore_ascii_case("positive"))
                    }
                    (Some("stream"), "current") => current = text.parse().ok(),
                    (Some("stream"), "previous") => previous = text.parse().ok(),
                    (Some("Msmq"), "Class") => m.class = text.parse().unwrap_or(0),
                    (Some("Msmq"), "Priority") => m.priority = text.parse().unwrap_or(3),
                    (Some("Msmq"), "BodyType") => m.body_type = text.parse().unwrap_or(0),
                    (Some("Msmq"), "App") => m.app = text.parse().unwrap_or(0),
                    (Some("Msmq"), "SourceQmGuid") => {
                        m.source_qm = Guid::parse_text(&text).unwrap_or(Guid::NULL)
                    }
                    (Some("Msmq"), "TTrq") => m.expires_at = parse_srmp_time(&text),
                    (Some("Msmq"), "Correlation") => {
                        use base64::Engine as _;
                        if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(text.trim())
                        {
                            if b.len() == 20 {
                                let mut c = [0u8; 20];
                                c.copy_from_slice(&b);
                                m.correlation = Some(c);
                            }
                        }
                    }
                    _ => {}
                }
            }
            XmlEvent::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    // Windows prefers SourceQmGuid over the GUID in <id> when they differ (MC-MQSRM <7>).
    if m.source_qm.is_null() {
        m.source_qm = source_from_id;
    }
    if m.to.is_empty() {
        return Err("the envelope has no <to>".into());
    }
    m.receipt = match (receipt_stream, last_ordinal, receipt_id) {
        (Some((qm, sequence)), Some(last_ordinal), _) => Some(ReceivedReceipt::Stream {
            qm,
            sequence,
            last_ordinal,
        }),
        (_, _, Some(id)) if delivery_receipt => Some(ReceivedReceipt::Delivery { id }),
        (_, _, Some(id)) if commitment_receipt => Some(ReceivedReceipt::Commitment {
            id,
            positive: decision.unwrap_or(false),
        }),
        _ => None,
    };
    if let (Some(id), Some(cur)) = (stream_id, current) {
        m.stream = Some((id, cur, previous.unwrap_or(cur.saturating_sub(1))));
        m.durable = true;
    }
    m.priority = m.priority.min(7);
    Ok(())
}

/// The GUID of a `streamId` (`uid:<GUID>\<number>`), or GUID_NULL.
fn stream_id_qm(text: &str) -> Guid {
    let t = text.trim();
    let t = t.strip_prefix("uid:").unwrap_or(t);
    t.rsplit_once('\\')
        .and_then(|(g, _)| Guid::parse_text(g))
        .unwrap_or(Guid::NULL)
}

/// Parses a whole SRMP request body: a multipart/related message, or a single-part
/// `text/xml` envelope (a receipt, MC-MQSRM 2.2.2 and the section 4 traces).
pub fn parse_srmp(content_type: &str, body: &[u8]) -> Result<SrmpMessage, String> {
    let lower = content_type.to_ascii_lowercase();
    if lower.trim_start().starts_with("text/xml") {
        let mut m = SrmpMessage {
            priority: 3,
            ..SrmpMessage::default()
        };
        read_envelope(body, &mut m)?;
        if m.receipt.is_none() {
            return Err(
                "a single-part text/xml request carries no receipt (deliveryReceipt, \
                 commitmentReceipt or streamReceipt); a message needs multipart/related"
                    .into(),
            );
        }
        return Ok(m);
    }
    if !lower.contains("multipart/related") {
        return Err(format!(
            "Content-Type {content_type:?} is neither multipart/related nor text/xml"
        ));
    }
    let boundary = boundary_of(content_type).ok_or("Content-Type names no boundary")?;
    if boundary.is_empty() || boundary.len() > SRMP_BOUNDARY_LEN_MAX {
        return Err(format!(
            "MIME boundary of {} bytes; RFC 2046 allows 1 to 70 (lior takes up to \
             {SRMP_BOUNDARY_LEN_MAX})",
            boundary.len()
        ));
    }
    let parts = split_parts(body, &boundary)?;
    let envelope = parts.first().ok_or("no SOAP envelope part")?;
    let mut m = SrmpMessage {
        priority: 3,
        ..SrmpMessage::default()
    };
    read_envelope(envelope.content, &mut m)?;
    if let Some(b) = parts.iter().skip(1).find(|p| {
        p.header("content-id")
            .is_some_and(|id| id.trim_start_matches('<').starts_with("body@"))
    }) {
        m.body = b.content.to_vec();
    }
    Ok(m)
}

/// The queue path of a request URI: `/msmq/private$/q` → `private$\q` (either separator,
/// any case of `msmq`, percent-escapes decoded).
pub fn queue_path(uri_path: &str) -> Option<String> {
    let decoded = percent_decode(uri_path);
    let lower = decoded.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("/msmq/")
        .or_else(|| lower.strip_prefix("/msmq\\"))?;
    let start = decoded.len() - rest.len();
    let path = decoded[start..].replace('/', "\\");
    (!path.is_empty()).then_some(path)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// Stores one SRMP message in `queue_path`'s queue: builds its packet here and asks the shard
/// owning the queue to store it, which answers once it is durable. Returns the HTTP status and
/// a reason.
pub async fn accept<S: QueueStore>(
    broker: &Broker<S>,
    shards: &ShardClient,
    queue_path: &str,
    m: &SrmpMessage,
) -> (StatusCode, String) {
    let (queue, frame, now) = match prepare(broker, queue_path, m) {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let shard = shards.shard_of(
        broker
            .owner_of(&queue.name)
            .unwrap_or(queue.partition as usize),
    );
    // A stream message asking for stream receipts gets one from the owner, stored before
    // the 200 (MC-MQSRM 3.1.5.1.2).
    let stream_receipts = match (m.stream, m.stream_receipts_to.as_deref()) {
        (Some(_), Some(to)) => Some((
            to.to_string(),
            if m.stream_qm.is_null() {
                m.source_qm
            } else {
                m.stream_qm
            },
        )),
        _ => None,
    };
    let r = shards
        .ask(shard, |reply| Request::Deliver {
            queue,
            frame,
            now_unix: now,
            reply,
            stream_receipts,
        })
        .await;
    match r {
        Ok(None) => (StatusCode::OK, String::new()),
        Ok(Some(why)) => (StatusCode::BAD_REQUEST, why),
        Err(ApiError::Busy(why)) => (StatusCode::SERVICE_UNAVAILABLE, why),
        Err(ApiError::Send(why)) => (StatusCode::INTERNAL_SERVER_ERROR, why),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The queue an SRMP message goes to, its packet as a binary sender would have sent it, and
/// the time it arrived; or the refusal.
#[allow(clippy::result_large_err)]
fn prepare<S: QueueStore>(
    broker: &Broker<S>,
    queue_path: &str,
    m: &SrmpMessage,
) -> Result<(crate::qm::catalog::QueueDef, Vec<u8>, u32), (StatusCode, String)> {
    let name = queue_path
        .strip_prefix("private$\\")
        .or_else(|| queue_path.strip_prefix("PRIVATE$\\"))
        .unwrap_or(queue_path);
    let queue = match broker.lookup(name) {
        Ok(q) => q,
        Err(e) => return Err((StatusCode::BAD_REQUEST, e.to_string())),
    };
    if queue.transactional != m.stream.is_some() {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "queue {} is {}transactional and the message is {}a stream message",
                queue.name,
                if queue.transactional { "" } else { "not " },
                if m.stream.is_some() { "" } else { "not " }
            ),
        ));
    }
    let now = unix_now();
    let wire = utf16z(&m.to);
    let label = if m.label.is_empty() {
        Vec::new()
    } else {
        utf16z(&m.label)
    };
    let sent = m.sent_at.unwrap_or(now);
    // Receipts asked for (MC-MQSRM 2.2.5.2.2-3) become the admin queue and acknowledgement
    // flags of the stored message, so the existing admin-ack paths send them: ACK_REACH_QUEUE
    // once stored, ACK_RECEIVE when an application receives it; the sender side writes those
    // as a deliveryReceipt and a commitmentReceipt (`qm::srmp_out`).
    let (admin_wire, acks) = receipt_admin(m);
    let mut u = UserMessage::new(
        m.source_qm,
        m.index as u32,
        QueueRef::Direct(Utf16(&wire)),
        Utf16(&label),
        &m.body,
    )
    .with_recoverable(m.durable)
    .with_priority(m.priority)
    .with_sent_time(sent);
    if let Some(exp) = m.expires_at {
        u = u.with_time_to_reach_queue(exp.saturating_sub(sent).max(1));
    }
    if let Some(w) = &admin_wire {
        u = u.with_admin_queue(QueueRef::Direct(Utf16(w)), acks);
    }
    if let Some((seq_id, cur, prev)) = m.stream {
        u = u.with_transaction(TransactionHeader::new(
            TxFlags::default(),
            seq_id,
            cur,
            prev,
        ));
    }
    u.user.flags = u
        .user
        .flags
        .with(UserFlags::JP, m.journal)
        .with(UserFlags::JN, m.dead_letter);
    u.properties.message_class = MessageClass(m.class);
    u.properties.body_type = m.body_type;
    u.properties.application_tag = m.app;
    if let Some(c) = m.correlation {
        u.properties.correlation_id = c;
    }
    u.sync();
    let mut frame = vec![0u8; u.frame_len()];
    let n = match u.encode(&mut frame) {
        Ok(n) => n,
        Err(e) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("cannot represent the message: {e}"),
            ))
        }
    };
    frame.truncate(n);
    if UserMessage::parse(&frame).is_err() {
        return Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoded message does not parse".into(),
        ));
    }
    // Stored in the queue's owning partition, like every message of the queue; durable (or
    // stream) messages are on disk before the 200 (MC-MQSRM 3.1.5.1.3), duplicates and
    // stream messages already received once the first copy is (3.1.5.1).
    Ok((queue, frame, now))
}

/// The admin queue (an HTTP format name, UTF-16 for the UserHeader) and acknowledgement
/// flags standing for the receipts an SRMP message asks for; None when it asks for none or
/// names no HTTP address.
fn receipt_admin(m: &SrmpMessage) -> (Option<Vec<u8>>, crate::wire::headers::AckFlags) {
    use crate::wire::headers::AckFlags;
    let Some(to) = m
        .delivery_receipt_to
        .as_deref()
        .or(m.commitment_receipt_to.as_deref())
    else {
        return (None, AckFlags(0));
    };
    let Some(direct) =
        crate::wire::format_name::FormatName::parse(&format!("DIRECT={}", to.trim()))
            .ok()
            .and_then(|f| f.as_direct().cloned())
            .filter(|d| super::srmp_client::PostTarget::of(d).is_some())
    else {
        if crate::ratelog::SRMP.allow() {
            tracing::warn!(send_to = %to, "an SRMP receipt asked for an address that is not HTTP(S); no receipt will be sent");
        }
        return (None, AckFlags(0));
    };
    let mut flags = 0u8;
    if m.delivery_receipt_to.is_some() {
        flags |= AckFlags::PA;
    }
    if m.commitment_receipt_to.is_some() {
        if !m.commitment_negative_only {
            flags |= AckFlags::PR;
        }
        if !m.commitment_positive_only {
            flags |= AckFlags::NR;
        }
    }
    (Some(direct.wire_bytes()), AckFlags(flags))
}

/// The bounds of the SRMP endpoint (from `[limits]` and the descriptor budget).
#[derive(Clone, Debug)]
pub struct SrmpLimits {
    /// Connections open at once; past it new ones are closed at once.
    pub connections_max: usize,
    /// Connections one peer address may hold open.
    pub connections_per_ip_max: usize,
    /// A request's head must arrive within this time.
    pub header_timeout: Duration,
    /// A request's body must arrive within this time of its head.
    pub body_timeout: Duration,
    /// Bytes of request bodies held at once over every connection.
    pub body_bytes_in_flight_max: usize,
}

impl SrmpLimits {
    pub fn from_config(l: &crate::config::Limits, fd_share: usize) -> Self {
        SrmpLimits {
            connections_max: l.srmp_connections_max.min(fd_share).max(1),
            connections_per_ip_max: l.connections_per_ip_max,
            header_timeout: Duration::from_millis(l.srmp_header_timeout_ms),
            body_timeout: Duration::from_millis(l.srmp_body_timeout_ms),
            body_bytes_in_flight_max: l.srmp_body_bytes_in_flight_max.max(SRMP_BODY_BYTES_MAX),
        }
    }
}

impl Default for SrmpLimits {
    fn default() -> Self {
        SrmpLimits::from_config(&crate::config::Limits::default(), usize::MAX)
    }
}

/// A running SRMP endpoint.
pub struct SrmpHandle {
    pub local_addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SrmpHandle {
    pub fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Ctx<S> {
    broker: Arc<Broker<S>>,
    shards: ShardClient,
    budget: Arc<BodyBudget>,
    body_timeout: Duration,
}

async fn post<S: QueueStore + Send + 'static>(
    State(ctx): State<Arc<Ctx<S>>>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let Some(path) = queue_path(uri.path()) else {
        return (StatusCode::NOT_FOUND, "not an MSMQ queue path\n").into_response();
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > SRMP_BODY_BYTES_MAX) {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {SRMP_BODY_BYTES_MAX} bytes\n"),
        )
            .into_response();
    }
    let body = match read_body(body, &ctx.budget, ctx.body_timeout).await {
        Ok(b) => b,
        Err((status, why)) => {
            if crate::ratelog::SRMP.allow() {
                tracing::warn!(%path, %status, %why, "SRMP request body not read");
            }
            return (status, format!("{why}\n")).into_response();
        }
    };
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let parsed = parse_srmp(ct, &body);
    drop(body);
    let m = match parsed {
        Ok(m) => m,
        Err(e) => {
            if crate::ratelog::SRMP.allow() {
                tracing::warn!(%path, error = %e, "malformed SRMP message");
            }
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    if let Some(r) = &m.receipt {
        if let Some(ack) = take_receipt(&ctx.broker, &ctx.shards, r, &m).await {
            // The admin acknowledgement the original message asked for, into the queue the
            // receipt was posted to (its admin queue).
            let (status, why) = accept(&ctx.broker, &ctx.shards, &path, &ack).await;
            if status != StatusCode::OK && crate::ratelog::SRMP.allow() {
                tracing::warn!(%path, %status, %why, "SRMP receipt not stored as an admin acknowledgement (counted in lior_srmp_receipts_received_total)");
            }
        }
        // A receipt is never sent again: it is answered 200 whatever became of it.
        return (StatusCode::OK, String::new()).into_response();
    }
    let (status, why) = accept(&ctx.broker, &ctx.shards, &path, &m).await;
    if status != StatusCode::OK && crate::ratelog::SRMP.allow() {
        tracing::warn!(%path, %status, %why, "SRMP message refused");
    }
    (status, why).into_response()
}

/// A receipt arrived (MC-MQSRM 3.1.5.2): a stream receipt settles the stream messages it
/// covers; a delivery or commitment receipt becomes the admin acknowledgement MSMQ stores for
/// it (ACK_REACH_QUEUE, ACK_RECEIVE or NACK_RECEIVE_REJECTED, correlated with the original
/// message's id), returned as a message to store in the queue it was posted to.
async fn take_receipt<S: QueueStore>(
    broker: &Broker<S>,
    shards: &ShardClient,
    r: &ReceivedReceipt,
    m: &SrmpMessage,
) -> Option<SrmpMessage> {
    use std::sync::atomic::Ordering::Relaxed;
    broker.counters.srmp_receipts_received.fetch_add(1, Relaxed);
    match r {
        ReceivedReceipt::Stream {
            qm,
            sequence,
            last_ordinal,
        } => {
            let ip = std::net::IpAddr::from([0u8, 0, 0, 0]);
            // Taken by a shard as an MS-MQQB OrderAck arriving on it is (shard 0: any would
            // do; the outgoing queue's shard removes what it covers, by mail).
            let asked = shards
                .ask(0, |reply| Request::StreamReceipt {
                    qm: *qm,
                    sequence: *sequence,
                    last_ordinal: *last_ordinal,
                    ip,
                    reply,
                })
                .await;
            if let Err(e) = asked {
                if crate::ratelog::SRMP.allow() {
                    tracing::warn!(sequence, last_ordinal, error = %e, "stream receipt not taken; the sender's next receipt covers it");
                }
            }
            None
        }
        ReceivedReceipt::Delivery { id } | ReceivedReceipt::Commitment { id, .. } => {
            let class = match r {
                ReceivedReceipt::Delivery { .. } => MessageClass::ACK_REACH_QUEUE,
                ReceivedReceipt::Commitment { positive: true, .. } => MessageClass::ACK_RECEIVE,
                _ => MessageClass::NACK_RECEIVE_REJECTED,
            };
            let Some(correlation) = original_id(id) else {
                if crate::ratelog::SRMP.allow() {
                    tracing::warn!(message = %id, "SRMP receipt for a message id that does not parse (uuid:<index>@<GUID>); counted in lior_srmp_receipts_received_total, not stored");
                }
                return None;
            };
            tracing::info!(message = %id, class = class.name(), "SRMP receipt received");
            Some(SrmpMessage {
                class: class.0,
                correlation: Some(correlation),
                durable: false,
                stream: None,
                receipt: None,
                delivery_receipt_to: None,
                commitment_receipt_to: None,
                body: Vec::new(),
                ..m.clone()
            })
        }
    }
}

/// The 20-byte message identifier (GUID, then the index little-endian) of an SRMP message id
/// `uuid:<index>@<GUID>`.
fn original_id(id: &str) -> Option<[u8; 20]> {
    let t = id.trim();
    let t = t.strip_prefix("uuid:").unwrap_or(t);
    let (index, guid) = t.split_once('@')?;
    let guid = Guid::parse_text(guid)?;
    let index: u32 = index.parse().ok()?;
    let mut c = [0u8; 20];
    c[..16].copy_from_slice(&guid.0);
    c[16..].copy_from_slice(&index.to_le_bytes());
    Some(c)
}

/// Starts the SRMP endpoint on `addr` on its own thread.
///
/// Each connection is served by hyper's HTTP/1.1 with a header time-out (an idle or slow
/// connection is closed), a bounded head, and the body read under the shared [`BodyBudget`].
/// Connections past `connections_max`, or past `connections_per_ip_max` from one address, are
/// closed as soon as they are accepted, with a rate-limited log line.
pub fn serve_srmp<S: QueueStore + Send + 'static>(
    addr: SocketAddr,
    broker: Arc<Broker<S>>,
    shards: ShardClient,
    limits: SrmpLimits,
    tls: Option<super::tls::ServerTls>,
) -> std::io::Result<SrmpHandle> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("lior-srmp".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::error!("cannot start the SRMP runtime");
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    tracing::error!("cannot use the SRMP socket");
                    return;
                };
                let ctx = Arc::new(Ctx {
                    broker,
                    shards,
                    budget: BodyBudget::new(limits.body_bytes_in_flight_max),
                    body_timeout: limits.body_timeout,
                });
                let app = Router::new()
                    .fallback(axum::routing::post(post::<S>))
                    .with_state(ctx);
                run_srmp(listener, app, limits, tls, rx).await;
            });
        })?;
    Ok(SrmpHandle {
        local_addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

async fn run_srmp(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: SrmpLimits,
    tls: Option<super::tls::ServerTls>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let peers = PeerLimiter::new(limits.connections_per_ip_max);
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (EMFILE) or a transient error: pause instead of spinning.
                if crate::ratelog::REFUSED.allow() {
                    tracing::warn!(error = %e, "SRMP accept failed; pausing 100 ms");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refused += 1;
            if crate::ratelog::REFUSED.allow() {
                tracing::warn!(%peer, limit = limits.connections_max, refused, "SRMP connections full (limits.srmp_connections_max and the descriptor budget); closing a new one");
            }
            continue;
        };
        let Some(guard) = peers.admit(peer.ip()) else {
            refused += 1;
            if crate::ratelog::REFUSED.allow() {
                tracing::warn!(%peer, limit = limits.connections_per_ip_max, refused, "too many SRMP connections from one address (limits.connections_per_ip_max); closing a new one");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let header_timeout = limits.header_timeout;
        let tls = tls.clone();
        tokio::spawn(async move {
            // HTTPS (srmp_tls_cert): the handshake first, bounded, on this connection's task.
            let stream = match tls {
                Some(t) => match t.wrap(stream, peer).handshake().await {
                    Ok(s) => s,
                    Err(_) => return, // logged and counted by the handshake
                },
                None => super::tls::Door::plain(stream, peer),
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(SRMP_HEAD_BYTES_MAX)
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(error) = conn.await {
                if error.is_timeout() && crate::ratelog::SRMP.allow() {
                    // Also an idle kept-alive connection: information, not a warning.
                    tracing::info!(%peer, %error, "no SRMP request head within limits.srmp_header_timeout_ms; closed an idle or slow connection");
                }
            }
            drop(guard);
            drop(slot);
        });
    }
    // Let open requests finish (their messages may be committing), briefly.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(SRMP_SHUTDOWN_GRACE_MS);
    while slots.available_permits() < limits.connections_max
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MC-MQSRM 4.1, with the line breaks of the published example (none before boundaries).
    pub const EXAMPLE_4_1: &str = "--MSMQ - SOAP boundary, 53287\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-Length: 619\r\n\r\n<se:Envelope xmlns:se=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns=\"http://schemas.xmlsoap.org/srmp/\"><se:Header><path xmlns=\"http://schemas.xmlsoap.org/rp/\" se:mustUnderstand=\"1\"><action>MSMQ:mqsender label</action><to>http://machine2/msmq/private$/simpleq</to><id>uuid:1@00000000-0000-0000-0000-000000000000</id></path><properties se:mustUnderstand=\"1\"><expiresAt>20070609T164419</expiresAt><sentAt>20070608T164419</sentAt></properties></se:Header><se:Body></se:Body></se:Envelope>--MSMQ - SOAP boundary, 53287\r\nContent-Type: application/octet-stream\r\nContent-Length: 13\r\nContent-Id: body@ff3af301-3196-497a-a918-72147c871a13\r\n\r\nFirst Message--MSMQ - SOAP boundary, 53287--";

    #[test]
    fn the_spec_example_parses() {
        let ct = "multipart/related; boundary=\"MSMQ - SOAP boundary, 53287\"; type=text/xml";
        // The envelope's Content-Length in the example counts its own line breaks; ours has
        // none, so the part ends at the boundary instead.
        let m = parse_srmp(ct, EXAMPLE_4_1.as_bytes()).unwrap();
        assert_eq!(m.label, "mqsender label");
        assert_eq!(m.to, "http://machine2/msmq/private$/simpleq");
        assert_eq!(m.index, 1);
        assert_eq!(m.body, b"First Message");
        assert_eq!(m.sent_at, parse_srmp_time("20070608T164419"));
        assert!(!m.durable && m.stream.is_none());
    }

    #[test]
    fn times_paths_and_hostile_bodies() {
        assert_eq!(parse_srmp_time("19700101T000000"), Some(0));
        assert_eq!(parse_srmp_time("20070609T164419"), Some(1_181_407_459));
        assert_eq!(parse_srmp_time("2007-06-09T16:44"), None);
        assert_eq!(
            queue_path("/msmq/private$/q").as_deref(),
            Some("private$\\q")
        );
        assert_eq!(
            queue_path("/MSMQ/private%24/Q").as_deref(),
            Some("private$\\Q")
        );
        assert_eq!(queue_path("/other/q"), None);
        let ct = "multipart/related; boundary=b";
        assert!(parse_srmp(ct, b"").is_err());
        assert!(parse_srmp(ct, b"--b\r\nContent-Length: 99999999999\r\n\r\nx--b--").is_err());
        assert!(parse_srmp(ct, b"--b\r\n\r\n<a><b></a>--b--").is_err());
        assert!(parse_srmp("text/plain", EXAMPLE_4_1.as_bytes()).is_err());
        for cut in 0..EXAMPLE_4_1.len() {
            let _ = parse_srmp(
                "multipart/related; boundary=\"MSMQ - SOAP boundary, 53287\"",
                &EXAMPLE_4_1.as_bytes()[..cut],
            );
        }
    }
}
