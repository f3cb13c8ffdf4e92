//! Sending over SRMP (MC-MQSRM 3.1): the HTTP side of an outgoing queue for a
//! `DIRECT=HTTP://` or `DIRECT=HTTPS://` name. Sans-IO: the server glue (`server.rs`) opens the
//! connection on the shard that owns the outgoing queue, hands the bytes it receives to
//! [`HttpOut::feed`] and sends what [`build_request`] wrote; this file owns no socket, no clock
//! and no store.
//!
//! One request in flight per connection (HTTP/1.1 keep-alive). A 2xx answer settles an express
//! or recoverable message (the caller removes it); a transactional (stream) message stays until
//! a stream receipt covers it (`Broker::handle_stream_receipt`) and is sent again on the
//! transactional resend schedule. A non-2xx answer, a malformed one or none in time closes the
//! connection: the message stays and is sent again on the next one (`TryConnectInterval`).
//!
//! Stream receipts a receiving lior owes are stored, like any outgoing message, as OrderAck
//! messages (MS-MQQB's form of the same thing) addressed to the sender's `sendReceiptsTo` URI;
//! [`build_request`] writes them as `<streamReceipt>` (MC-MQSRM 2.2.5.6).

use crate::http::srmp_client::{PostTarget, ReadError, ResponseReader};
use crate::http::srmp_write::guid_text;
use crate::http::srmp_write::{
    request_head, write_message, write_receipt, Receipt, ReceiptRequests, SrmpOut, StreamOut,
};
use crate::wire::format_name::DirectName;
use crate::wire::headers::MessageClass;
use crate::wire::user::{QueueRef, UserFlags, UserMessage};
use crate::wire::Guid;

/// How long the peer has to answer one SRMP post before the connection is closed and the
/// message sent again later.
pub const SRMP_ANSWER_TIMEOUT_MS: u64 = 30_000;

/// Bytes rustls may hold for one outgoing HTTPS connection (a whole request written before the
/// handshake ends, or records not yet sent).
pub const SRMP_OUT_TLS_BUFFER_BYTES_MAX: usize =
    crate::http::srmp::SRMP_BODY_BYTES_MAX + (64 << 10);

/// Plaintext read per step from an HTTPS connection.
const SRMP_OUT_TLS_READ_CHUNK_BYTES: usize = 16 << 10;

/// The system CA bundles tried, in order, when `srmp_tls_ca` is not set.
pub const SYSTEM_CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The client TLS configuration of SRMP over HTTPS: servers verified against `srmp_tls_ca`, or
/// the system bundle. Err says what to set.
pub fn client_tls(
    cfg: &crate::config::Config,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let ca = match &cfg.srmp_tls_ca {
        Some(p) => p.clone(),
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                format!(
                    "no CA bundle to verify HTTPS peers: none of {SYSTEM_CA_BUNDLES:?} exists; \
                     set srmp_tls_ca to a PEM file of the CAs that signed the receivers' \
                     certificates"
                )
            })?,
    };
    crate::http::tls::client_config(&ca, None).map_err(|e| format!("srmp_tls_ca: {e}"))
}

/// The TLS side of an outgoing HTTPS connection (rustls, driven by the bytes the shard hands
/// over; no socket).
#[derive(Debug)]
struct TlsClient {
    conn: rustls::ClientConnection,
    chunk: Vec<u8>,
}

impl TlsClient {
    fn new(cfg: std::sync::Arc<rustls::ClientConfig>, host: &str) -> Result<Self, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))?;
        let mut conn = rustls::ClientConnection::new(cfg, name).map_err(|e| format!("TLS: {e}"))?;
        conn.set_buffer_limit(Some(SRMP_OUT_TLS_BUFFER_BYTES_MAX));
        Ok(TlsClient {
            conn,
            chunk: vec![0; SRMP_OUT_TLS_READ_CHUNK_BYTES],
        })
    }

    /// Records in, plaintext out.
    fn read(&mut self, mut bytes: &[u8], plain: &mut Vec<u8>) -> Result<(), String> {
        use std::io::Read as _;
        while !bytes.is_empty() {
            match self.conn.read_tls(&mut bytes) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("TLS: {e}")),
            }
            self.conn
                .process_new_packets()
                .map_err(|e| format!("TLS: {e}"))?;
            loop {
                match self.conn.reader().read(&mut self.chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        if plain.len() + n > SRMP_OUT_TLS_BUFFER_BYTES_MAX {
                            return Err("TLS: more plaintext than an answer can hold".into());
                        }
                        plain.extend_from_slice(&self.chunk[..n]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("TLS: {e}")),
                }
            }
        }
        Ok(())
    }

    /// Plaintext in (buffered by rustls until the handshake ends), records out.
    fn write(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        use std::io::Write as _;
        if !plain.is_empty() {
            self.conn
                .writer()
                .write_all(plain)
                .map_err(|e| format!("TLS: {e}"))?;
        }
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("TLS: {e}")),
            }
        }
        Ok(())
    }
}

/// The label of a stream receipt's OrderAck (and of the receipt itself, MC-MQSRM 2.2.4.1).
pub const STREAM_RECEIPT_LABEL: &str = "QM Ordering Ack";

/// The message a post carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// Its lookup id in the outgoing queue.
    pub lookup: u64,
    /// A stream message: kept after the 2xx until a stream receipt covers it.
    pub transactional: bool,
}

/// What an answer means for the message in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the receiver has it.
    Accepted(InFlight),
    /// Another status: the message stays, the connection closes.
    Refused(InFlight, u16),
}

/// Why a connection is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closing {
    /// Nothing left to send.
    Idle,
    /// Something went wrong (shown as the queue's last error).
    Failed(String),
}

/// One HTTP connection of an outgoing queue.
#[derive(Debug, Default)]
pub struct HttpOut {
    reader: ResponseReader,
    in_flight: Option<InFlight>,
    answer_by: Option<u64>,
    closing: Option<Closing>,
    /// The peer said it closes after its answer.
    peer_closes: bool,
    /// HTTPS: the TLS layer between the bytes on the wire and HTTP.
    tls: Option<TlsClient>,
}

impl HttpOut {
    pub fn new() -> Self {
        Self::default()
    }

    /// An HTTPS connection to `host`, verified with `cfg`; or, when TLS cannot start, one
    /// that closes at once with the reason.
    pub fn https(cfg: Result<std::sync::Arc<rustls::ClientConfig>, String>, host: &str) -> Self {
        let mut h = Self::default();
        match cfg.and_then(|c| TlsClient::new(c, host)) {
            Ok(t) => h.tls = Some(t),
            Err(e) => h.closing = Some(Closing::Failed(e)),
        }
        h
    }

    /// Bytes to put on the wire for `plain` (a request, or nothing: what TLS has to send, the
    /// handshake). Err closes the connection.
    pub fn wire_out(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        match self.tls.as_mut() {
            Some(t) => t.write(plain, out).inspect_err(|e| {
                self.closing = Some(Closing::Failed(e.clone()));
            }),
            None => {
                out.extend_from_slice(plain);
                Ok(())
            }
        }
    }

    /// Bytes from the wire (TLS records over HTTPS): [`HttpOut::feed`] on their plaintext.
    pub fn feed_wire(&mut self, bytes: &[u8]) -> Result<Option<Outcome>, String> {
        let Some(t) = self.tls.as_mut() else {
            return self.feed(bytes);
        };
        let mut plain = Vec::new();
        if let Err(e) = t.read(bytes, &mut plain) {
            self.closing = Some(Closing::Failed(e.clone()));
            return Err(e);
        }
        if plain.is_empty() {
            return Ok(None);
        }
        self.feed(&plain)
    }

    /// No post in flight and not closing: the next message can go.
    pub fn ready(&self) -> bool {
        self.in_flight.is_none() && self.closing.is_none()
    }

    /// A post of `f` was handed to the connection at `now_ms`.
    pub fn begin(&mut self, now_ms: u64, f: InFlight) {
        self.in_flight = Some(f);
        self.answer_by = Some(now_ms + SRMP_ANSWER_TIMEOUT_MS);
    }

    /// Bytes from the peer. `Err` is hostile or broken input: the caller closes the connection
    /// (the message in flight stays queued), logs and counts it.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<Outcome>, String> {
        let r = match self.reader.feed(bytes) {
            Ok(r) => r,
            Err(e) => return Err(self.fail(e)),
        };
        let Some(resp) = r else {
            return Ok(None);
        };
        let Some(f) = self.in_flight.take() else {
            let why = format!("an HTTP answer ({}) to no request", resp.status);
            self.closing = Some(Closing::Failed(why.clone()));
            return Err(why);
        };
        self.answer_by = None;
        if resp.close {
            self.peer_closes = true;
            self.closing.get_or_insert(Closing::Idle);
        }
        if (200..300).contains(&resp.status) {
            Ok(Some(Outcome::Accepted(f)))
        } else {
            self.closing = Some(Closing::Failed(format!(
                "the receiver answered HTTP {}",
                resp.status
            )));
            Ok(Some(Outcome::Refused(f, resp.status)))
        }
    }

    fn fail(&mut self, e: ReadError) -> String {
        let why = e.to_string();
        self.closing = Some(Closing::Failed(why.clone()));
        why
    }

    /// The connection ended: an answer that ran until the close is complete now.
    pub fn on_closed(&mut self) -> Option<Outcome> {
        let resp = self.reader.closed()?;
        let f = self.in_flight.take()?;
        Some(if (200..300).contains(&resp.status) {
            Outcome::Accepted(f)
        } else {
            Outcome::Refused(f, resp.status)
        })
    }

    /// Nothing more to send: close once the answer in flight (if any) is in.
    pub fn close_idle(&mut self) {
        if self.in_flight.is_none() {
            self.closing.get_or_insert(Closing::Idle);
        }
    }

    /// When the answer in flight is late.
    pub fn deadline(&self) -> Option<u64> {
        self.answer_by
    }

    pub fn on_timeout(&mut self, now_ms: u64) {
        if self.answer_by.is_some_and(|t| t <= now_ms) {
            self.answer_by = None;
            self.closing = Some(Closing::Failed(format!(
                "no HTTP answer within {SRMP_ANSWER_TIMEOUT_MS} ms (SRMP_ANSWER_TIMEOUT_MS)"
            )));
        }
    }

    pub fn wants_close(&self) -> bool {
        self.closing.is_some()
    }

    /// Why it closes (None: not by its own decision, the peer or the network closed it).
    pub fn closing(&self) -> Option<&Closing> {
        self.closing.as_ref()
    }
}

/// The `sendReceiptsTo` URI of this queue manager's stream messages: its SRMP endpoint's
/// `order_queue$` (Windows names the same queue). None without an SRMP endpoint (then no stream
/// receipt can come back and transactional messages over HTTP wait).
pub fn receipts_uri(cfg: &crate::config::Config) -> Option<String> {
    let addr = cfg.srmp_listen.or_else(|| {
        cfg.parameters
            .Hardened_MSMQ
            .then(|| "0.0.0.0:80".parse().expect("literal address"))
    })?;
    let https = cfg.srmp_tls_cert.is_some();
    let host = if addr.ip().is_unspecified() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let (scheme, default) = if https { ("https", 443) } else { ("http", 80) };
    let port = if addr.port() == default {
        String::new()
    } else {
        format!(":{}", addr.port())
    };
    Some(format!(
        "{scheme}://{host}{port}/msmq/private$/order_queue$"
    ))
}

/// The whole HTTP request (head and body) that carries stored message `frame` to its
/// destination: an SRMP message, or a stream receipt for a stored OrderAck. `own` is this
/// queue manager; `receipts_to` where stream receipts for our stream messages go.
pub fn build_request(
    frame: &[u8],
    own: Guid,
    receipts_to: Option<&str>,
    now_unix: u32,
) -> Result<Vec<u8>, String> {
    let u = UserMessage::parse(frame).map_err(|e| format!("stored message does not parse: {e}"))?;
    let QueueRef::Direct(dest) = u.user.destination else {
        return Err("the destination is not a direct format name".into());
    };
    let direct = DirectName::from_utf16(dest)
        .map_err(|e| format!("the destination format name does not parse: {e}"))?;
    let target =
        PostTarget::of(&direct).ok_or("the destination is not an HTTP or HTTPS format name")?;
    let class = u.message_class();
    let written = if let Some(receipt_of) = admin_ack_receipt(&u) {
        let label = u.label().to_string_lossy();
        let (guid, index) = receipt_of;
        let original_id = format!("uuid:{index}@{}", guid_text(guid));
        let at = if u.user.sent_time == 0 {
            now_unix
        } else {
            u.user.sent_time
        };
        let receipt = if class == MessageClass::ACK_REACH_QUEUE {
            Receipt::Delivery {
                received_at: at,
                original_id: &original_id,
            }
        } else {
            Receipt::Commitment {
                decided_at: at,
                positive: class == MessageClass::ACK_RECEIVE,
                original_id: &original_id,
            }
        };
        write_receipt(
            &receipt,
            &target.to,
            &label,
            own,
            u64::from(u.user.message_id),
            now_unix,
        )
    } else if let Some(oa) = u.order_ack_body() {
        write_receipt(
            &Receipt::Stream {
                qm: u.user.queue_manager_address,
                sequence: oa.tx_sequence_id,
                last_ordinal: u64::from(oa.tx_sequence_number),
            },
            &target.to,
            STREAM_RECEIPT_LABEL,
            own,
            u64::from(u.user.message_id),
            now_unix,
        )
    } else {
        let label = u.label().to_string_lossy();
        let sent = if u.user.sent_time == 0 {
            now_unix
        } else {
            u.user.sent_time
        };
        let response = match u.user.response {
            QueueRef::Direct(r) => DirectName::from_utf16(r)
                .ok()
                .and_then(|d| PostTarget::of(&d))
                .map(|t| t.to),
            _ => None,
        };
        let m = SrmpOut {
            to: &target.to,
            label: &label,
            qm: u.user.source_queue_manager,
            index: u64::from(u.user.message_id),
            sent_at: sent,
            expires_at: sent.saturating_add(u.base.time_to_reach_queue),
            ttrq: None,
            durable: u.is_recoverable(),
            priority: u.priority(),
            class: u.message_class().0,
            app: u.properties.application_tag,
            body_type: u.properties.body_type,
            correlation: Some(u.properties.correlation_id),
            journal: u.user.flags.0 & UserFlags::JP != 0,
            dead_letter: u.user.flags.0 & UserFlags::JN != 0,
            response: response.as_deref(),
            receipts: receipt_requests(&u),
            stream: u.transaction.map(|t| StreamOut {
                qm: u.user.source_queue_manager,
                sequence: t.tx_sequence_id,
                current: u64::from(t.tx_sequence_number),
                previous: Some(u64::from(t.previous_tx_sequence_number)),
                start_receipts_to: receipts_to.map(str::to_string),
            }),
            body: u.body(),
        };
        write_message(&m).ok_or("no MIME boundary found that the body does not contain")?
    };
    let head = request_head(&target.host_header(), &target.path, &written);
    let mut out = Vec::with_capacity(head.len() + written.body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&written.body);
    Ok(out)
}

/// An admin acknowledgement SRMP sends as a receipt (MC-MQSRM 2.2.5.4, 2.2.5.5): ACK_REACH_QUEUE
/// as a deliveryReceipt, ACK_RECEIVE and the receive NACKs (0xC000...) as a commitmentReceipt.
/// Returns the original message's (GUID, index) from its correlation id.
fn admin_ack_receipt(u: &UserMessage<'_>) -> Option<(Guid, u32)> {
    let class = u.message_class();
    let receipt = class == MessageClass::ACK_REACH_QUEUE
        || class == MessageClass::ACK_RECEIVE
        || (class.0 & 0xC000 == 0xC000 && !u.is_final_ack());
    if !receipt {
        return None;
    }
    let c = u.properties.correlation_id;
    let mut g = [0u8; 16];
    g.copy_from_slice(&c[..16]);
    let index = u32::from_le_bytes([c[16], c[17], c[18], c[19]]);
    Some((Guid(g), index))
}

/// The receipts a message asks for: its admin queue, when that is an HTTP(S) name, with its
/// acknowledgement flags (PA: delivery; PR/NR: commitment, positive or negative only).
fn receipt_requests(u: &UserMessage<'_>) -> ReceiptRequests {
    let QueueRef::Direct(a) = u.user.admin else {
        return ReceiptRequests::default();
    };
    let Some(to) = DirectName::from_utf16(a)
        .ok()
        .and_then(|d| PostTarget::of(&d))
        .map(|t| t.to)
    else {
        return ReceiptRequests::default();
    };
    let acks = u.properties.flags;
    let (pr, nr) = (acks.positive_receive(), acks.negative_receive());
    ReceiptRequests {
        delivery_to: acks.positive_arrival().then(|| to.clone()),
        commitment_to: (pr || nr).then_some(to),
        commitment_positive: pr && !nr,
        commitment_negative: nr && !pr,
    }
}

/// A stream receipt to store in an outgoing queue: an OrderAck from `own` for stream
/// `(stream_qm, sequence)` up to `last`, addressed to `receipts_to` (an `http(s)://` URI).
/// Returns the destination and the frame.
pub fn stream_receipt_frame(
    own: Guid,
    ordinal: u32,
    receipts_to: &str,
    stream_qm: Guid,
    sequence: u64,
    last: u32,
) -> Result<(DirectName, Vec<u8>), String> {
    let fname = crate::wire::format_name::FormatName::parse(&format!("DIRECT={receipts_to}"))
        .map_err(|e| format!("sendReceiptsTo {receipts_to:?} is not a format name: {e}"))?;
    let direct = fname
        .as_direct()
        .filter(|d| PostTarget::of(d).is_some())
        .ok_or_else(|| format!("sendReceiptsTo {receipts_to:?} is not an HTTP(S) address"))?
        .clone();
    let body = crate::wire::user::OrderAckBody {
        tx_sequence_id: sequence,
        tx_sequence_number: last,
        tx_previous_sequence_number: last.saturating_sub(1),
    }
    .to_bytes();
    let wire = direct.wire_bytes();
    let m = UserMessage::order_ack(
        own,
        ordinal,
        QueueRef::Direct(crate::wire::Utf16(&wire)),
        &body,
    )
    .with_queue_manager_address(stream_qm);
    let mut frame = vec![0u8; m.frame_len()];
    let n = m
        .encode(&mut frame)
        .map_err(|e| format!("cannot encode a stream receipt: {e}"))?;
    frame.truncate(n);
    Ok((direct, frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::srmp::parse_srmp;
    use crate::wire::headers::{TransactionHeader, TxFlags};
    use crate::wire::{utf16z, Utf16};

    fn guid() -> Guid {
        Guid::parse_text("caf195ea-615c-4264-ae08-11a4e60194c0").unwrap()
    }

    fn split(req: &[u8]) -> (String, Vec<u8>) {
        let at = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8(req[..at].to_vec()).unwrap(),
            req[at + 4..].to_vec(),
        )
    }

    fn content_type(head: &str) -> String {
        head.lines()
            .find_map(|l| l.strip_prefix("Content-Type: "))
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_stored_stream_message_becomes_an_srmp_post_that_parses_back() {
        let wire = utf16z("HTTP://127.0.0.1:8081/msmq/private$/orders");
        let label = utf16z("hello");
        let u = UserMessage::new(
            guid(),
            42,
            QueueRef::Direct(Utf16(&wire)),
            Utf16(&label),
            b"body bytes",
        )
        .with_sent_time(1_700_000_000)
        .with_time_to_reach_queue(3600)
        .with_transaction(TransactionHeader::new(TxFlags::default(), 77, 3, 2));
        let mut frame = vec![0u8; u.frame_len()];
        let n = u.encode(&mut frame).unwrap();
        frame.truncate(n);
        let req = build_request(
            &frame,
            guid(),
            Some("http://10.0.0.1:8080/msmq/private$/order_queue$"),
            1_700_000_001,
        )
        .unwrap();
        let (head, body) = split(&req);
        assert!(
            head.starts_with("POST /msmq/private$/orders HTTP/1.1\r\nHost: 127.0.0.1:8081"),
            "{head}"
        );
        let m = parse_srmp(&content_type(&head), &body).unwrap();
        assert_eq!(m.label, "hello");
        assert_eq!(m.body, b"body bytes");
        assert_eq!(m.index, 42);
        assert_eq!(m.stream, Some((77, 3, 2)));
        assert_eq!(
            m.stream_receipts_to.as_deref(),
            Some("http://10.0.0.1:8080/msmq/private$/order_queue$")
        );
        assert_eq!(m.expires_at, Some(1_700_003_600));
    }

    #[test]
    fn a_stored_order_ack_becomes_a_stream_receipt() {
        let (d, frame) = stream_receipt_frame(
            Guid([9; 16]),
            5,
            "http://127.0.0.1:8080/msmq/private$/order_queue$",
            guid(),
            77,
            4,
        )
        .unwrap();
        assert_eq!(PostTarget::of(&d).unwrap().port, 8080);
        let req = build_request(&frame, Guid([9; 16]), None, 1_700_000_000).unwrap();
        let (head, body) = split(&req);
        assert!(head.contains("Content-Type: text/xml"), "{head}");
        let m = parse_srmp(&content_type(&head), &body).unwrap();
        assert_eq!(
            m.receipt,
            Some(crate::http::srmp::ReceivedReceipt::Stream {
                qm: guid(),
                sequence: 77,
                last_ordinal: 4
            })
        );
    }

    #[test]
    fn admin_queue_flags_ask_for_receipts_and_admin_acks_become_receipts() {
        use crate::wire::headers::AckFlags;
        let wire = utf16z("HTTP://127.0.0.1:8081/msmq/private$/orders");
        let admin = utf16z("HTTP://127.0.0.1:8080/msmq/private$/admin");
        let label = utf16z("asks");
        let u = UserMessage::new(
            guid(),
            7,
            QueueRef::Direct(Utf16(&wire)),
            Utf16(&label),
            b"x",
        )
        .with_admin_queue(
            QueueRef::Direct(Utf16(&admin)),
            AckFlags(AckFlags::PA | AckFlags::PR),
        );
        let mut frame = vec![0u8; u.frame_len()];
        let n = u.encode(&mut frame).unwrap();
        frame.truncate(n);
        let (head, body) = split(&build_request(&frame, guid(), None, 1_700_000_000).unwrap());
        let m = parse_srmp(&content_type(&head), &body).unwrap();
        let to = "http://127.0.0.1:8080/msmq/private$/admin";
        assert_eq!(m.delivery_receipt_to.as_deref(), Some(to));
        assert_eq!(m.commitment_receipt_to.as_deref(), Some(to));
        assert!(m.commitment_positive_only && !m.commitment_negative_only);
        // The ACK_REACH_QUEUE a receiver stores for it goes back as a deliveryReceipt.
        let mut ack = UserMessage::new(
            Guid([3; 16]),
            9,
            QueueRef::Direct(Utf16(&admin)),
            Utf16(&label),
            b"",
        );
        ack.properties.message_class = MessageClass::ACK_REACH_QUEUE;
        ack.properties.correlation_id = u.message_identifier_bytes();
        ack.sync();
        let mut frame = vec![0u8; ack.frame_len()];
        let n = ack.encode(&mut frame).unwrap();
        frame.truncate(n);
        let (head, body) =
            split(&build_request(&frame, Guid([3; 16]), None, 1_700_000_000).unwrap());
        assert!(head.starts_with("POST /msmq/private$/admin "), "{head}");
        let r = parse_srmp(&content_type(&head), &body).unwrap();
        assert_eq!(
            r.receipt,
            Some(crate::http::srmp::ReceivedReceipt::Delivery {
                id: format!("uuid:7@{}", guid_text(guid()))
            })
        );
        assert_eq!(r.label, "asks");
    }

    #[test]
    fn answers_settle_refuse_or_close() {
        let mut h = HttpOut::new();
        assert!(h.ready());
        let f = InFlight {
            lookup: 1,
            transactional: false,
        };
        h.begin(0, f);
        assert!(!h.ready());
        assert_eq!(h.deadline(), Some(SRMP_ANSWER_TIMEOUT_MS));
        assert_eq!(h.feed(b"HTTP/1.1 200 OK\r\nContent-Len").unwrap(), None);
        assert_eq!(
            h.feed(b"gth: 0\r\n\r\n").unwrap(),
            Some(Outcome::Accepted(f))
        );
        assert!(h.ready());
        h.begin(10, f);
        assert_eq!(
            h.feed(b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno")
                .unwrap(),
            Some(Outcome::Refused(f, 500))
        );
        assert!(h.wants_close());
        // Garbage, or an answer nobody asked for, closes the connection.
        let mut g = HttpOut::new();
        g.begin(0, f);
        assert!(g.feed(b"\x00\x01garbage\r\n\r\n").is_err());
        assert!(g.wants_close());
        let mut u = HttpOut::new();
        assert!(u
            .feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err());
        // No answer in time.
        let mut t = HttpOut::new();
        t.begin(0, f);
        t.on_timeout(SRMP_ANSWER_TIMEOUT_MS);
        assert!(matches!(t.closing(), Some(Closing::Failed(_))));
    }
}
