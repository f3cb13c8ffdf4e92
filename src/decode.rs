//! `lior decode`: turns captured MS-MQQB bytes (raw, or hex text as capture tools and the spec
//! print it) into a named, field-by-field description, as JSON or indented text.
//!
//! Every packet is rendered into one `serde_json::Value` tree; the text form is a walk of that
//! tree, so both outputs always say the same thing.

use serde_json::{json, Map, Value};

use crate::wire::control::PING_LEN;
use crate::wire::format_name::FormatName;
use crate::wire::headers::MqfElement;
use crate::wire::user::{QueueRef, UserFlags, UserMessage};
use crate::wire::{frame_len, parse_packet, Packet, Ping, SessionHeader, WireError};

/// Why the input could not be decoded completely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Offset in the whole input where the bad packet starts.
    pub packet_offset: usize,
    /// The index of the bad packet (0-based).
    pub packet_index: usize,
    pub error: Option<WireError>,
    pub message: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some(e) => write!(
                f,
                "packet {} at input offset {}: {} (input offset {})",
                self.packet_index,
                self.packet_offset,
                e,
                self.packet_offset.saturating_add(e.offset)
            ),
            None => write!(
                f,
                "packet {} at input offset {}: {}",
                self.packet_index, self.packet_offset, self.message
            ),
        }
    }
}

/// Turns hex text into bytes, accepting plain hex, spaced hex, and dumps with an offset column
/// (`0000  10 C0 0B 00 ...`, `00000000: 10c0 0b00 ...  ..LIOR`). Returns `None` when the input
/// does not look like hex text (then it is taken as raw bytes).
pub fn hex_text_to_bytes(input: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(input).ok()?;
    if text.trim().is_empty() {
        return None;
    }
    let mut digits = String::new();
    for line in text.lines() {
        let mut tokens: Vec<&str> = line.split_whitespace().collect();
        if tokens.is_empty() {
            continue;
        }
        let is_hex = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_hexdigit());
        // An offset column: `0000` followed by byte pairs, or `00000010:`.
        if let Some(first) = tokens.first() {
            if let Some(stripped) = first.strip_suffix(':') {
                if is_hex(stripped) {
                    tokens.remove(0);
                }
            } else if tokens.len() > 1
                && first.len() >= 4
                && is_hex(first)
                && tokens[1..].iter().all(|t| t.len() == 2 && is_hex(t))
            {
                tokens.remove(0);
            }
        }
        for t in tokens {
            // An ASCII column at the end of a dump line ends the hex part of the line.
            if !is_hex(t) || t.len() % 2 == 1 {
                break;
            }
            digits.push_str(t);
        }
    }
    if digits.is_empty() || digits.len() % 2 == 1 {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).ok())
        .collect()
}

/// Decodes one UDP Ping or a back-to-back stream of TCP packets. Returns the packets that
/// decoded, and the error that stopped decoding, if any.
pub fn decode_stream(bytes: &[u8]) -> (Vec<Value>, Option<DecodeError>) {
    // A 24-byte datagram with the Ping signature is a UDP ping, not a TCP packet.
    if bytes.len() == PING_LEN && bytes[2..4] == Ping::SIGNATURE.to_le_bytes() {
        return match Ping::parse(bytes) {
            Ok(p) => (vec![ping_value(&p)], None),
            Err(e) => (vec![], Some(error_at(0, 0, e))),
        };
    }
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let len = match frame_len(rest) {
            Ok(Some(n)) => n,
            Ok(None) => {
                return (
                    out.clone(),
                    Some(DecodeError {
                        packet_offset: pos,
                        packet_index: out.len(),
                        error: None,
                        message: format!(
                            "{} trailing bytes are too few for a 16-byte BaseHeader",
                            rest.len()
                        ),
                    }),
                )
            }
            Err(e) => return (out.clone(), Some(error_at(pos, out.len(), e))),
        };
        if len > rest.len() {
            return (
                out.clone(),
                Some(DecodeError {
                    packet_offset: pos,
                    packet_index: out.len(),
                    error: None,
                    message: format!(
                        "the packet needs {len} bytes (PacketSize plus any trailing \
                         SessionHeader) but only {} remain",
                        rest.len()
                    ),
                }),
            );
        }
        match parse_packet(&rest[..len]) {
            Ok(p) => {
                let mut v = packet_value(&p);
                if let Value::Object(m) = &mut v {
                    m.insert("offset".into(), json!(pos));
                    m.insert("length".into(), json!(len));
                }
                out.push(v);
            }
            Err(e) => return (out.clone(), Some(error_at(pos, out.len(), e))),
        }
        pos += len;
    }
    (out, None)
}

fn error_at(pos: usize, index: usize, e: WireError) -> DecodeError {
    DecodeError {
        packet_offset: pos,
        packet_index: index,
        error: Some(e),
        message: e.to_string(),
    }
}

fn hex(v: u64, width: usize) -> Value {
    Value::String(format!("0x{v:0width$X}"))
}

fn ping_value(p: &Ping) -> Value {
    json!({
        "packet": "Ping",
        "Flags": hex(u64::from(p.flags), 4),
        "RC": p.flags & Ping::RC != 0,
        "RF": p.flags & Ping::RF != 0,
        "Signature": hex(u64::from(Ping::SIGNATURE), 4),
        "Cookie": p.cookie,
        "QMGuid": p.qm_guid.to_string(),
    })
}

fn base_value(b: &crate::wire::BaseHeader) -> Value {
    json!({
        "VersionNumber": "0x10",
        "Reserved": hex(u64::from(b.reserved), 2),
        "Flags": {
            "value": hex(u64::from(b.flags.0), 4),
            "PR": b.flags.priority(),
            "set": b.flags.names(),
        },
        "Signature": "LIOR",
        "PacketSize": b.packet_size,
        "TimeToReachQueue": ttl(b.time_to_reach_queue),
    })
}

fn ttl(v: u32) -> Value {
    if v == u32::MAX {
        json!("INFINITE")
    } else {
        json!(v)
    }
}

fn internal_value(i: &crate::wire::InternalHeader) -> Value {
    json!({
        "Reserved": i.reserved,
        "Flags": {
            "value": hex(u64::from(i.flags.0), 4),
            "PT": format!("{} ({})", i.flags.packet_type().0, i.flags.packet_type().name()),
            "CS (connection refused)": i.flags.refused(),
        },
    })
}

/// The SessionHeader as named fields.
pub fn session_header_value(s: &SessionHeader) -> Value {
    json!({
        "AckSequenceNumber": s.ack_sequence_number,
        "RecoverableMsgAckSeqNumber": s.recoverable_msg_ack_seq_number,
        "RecoverableMsgAckFlags": format!("0x{:08X}", s.recoverable_msg_ack_flags),
        "UserMsgSequenceNumber": s.user_msg_sequence_number,
        "RecoverableMsgSeqNumber": s.recoverable_msg_seq_number,
        "WindowSize": s.window_size,
        "Reserved": s.reserved,
    })
}

/// One parsed packet as a named tree.
pub fn packet_value(p: &Packet<'_>) -> Value {
    let mut m = Map::new();
    m.insert("packet".into(), json!(p.kind()));
    match p {
        Packet::EstablishConnection(ec) => {
            m.insert("BaseHeader".into(), base_value(&ec.base));
            m.insert("InternalHeader".into(), internal_value(&ec.internal));
            let os = ec.operating_system;
            let uniform = ec.padding.iter().all(|&b| b == ec.padding[0]);
            m.insert(
                "EstablishConnectionHeader".into(),
                json!({
                    "ClientGuid": ec.client_guid.to_string(),
                    "ServerGuid": ec.server_guid.to_string(),
                    "TimeStamp": ec.time_stamp,
                    "OperatingSystem": {
                        "value": hex(u64::from(os.0), 4),
                        "SE (no ping sent)": os.no_ping_sent(),
                        "OS (server)": os.server_os(),
                        "QS (GQoS)": os.qos(),
                    },
                    "Reserved": ec.reserved,
                    "Padding": if uniform {
                        format!("512 bytes of 0x{:02X}", ec.padding[0])
                    } else {
                        "512 bytes, mixed".to_string()
                    },
                }),
            );
        }
        Packet::ConnectionParameters(cp) => {
            m.insert("BaseHeader".into(), base_value(&cp.base));
            m.insert("InternalHeader".into(), internal_value(&cp.internal));
            m.insert(
                "ConnectionParametersHeader".into(),
                json!({
                    "RecoverableAckTimeout": cp.recoverable_ack_timeout,
                    "AckTimeout": cp.ack_timeout,
                    "Reserved": cp.reserved,
                    "WindowSize": cp.window_size,
                }),
            );
        }
        Packet::SessionAck(a) => {
            m.insert("BaseHeader".into(), base_value(&a.base));
            m.insert("InternalHeader".into(), internal_value(&a.internal));
            m.insert("SessionHeader".into(), session_header_value(&a.session));
        }
        Packet::User(u) => {
            m.insert("BaseHeader".into(), base_value(&u.base));
            user_message_fields(u, &mut m);
            if let Some(s) = &u.session {
                m.insert("SessionHeader".into(), session_header_value(s));
            }
        }
    }
    Value::Object(m)
}

fn queue_value(q: &QueueRef<'_>, u: &UserMessage<'_>) -> Value {
    let encoding = match q.code() {
        0 => "0 (none)",
        1 => "1 (same as admin queue)",
        2 => "2 (private queue on the source QM)",
        3 => "3 (private queue on the destination QM)",
        4 => "4 (private queue on the admin queue's QM)",
        5 => "5 (public queue)",
        6 => "6 (private queue on another QM)",
        _ => "7 (direct format name)",
    };
    let mut m = Map::new();
    m.insert("encoding".into(), json!(encoding));
    match q {
        QueueRef::None | QueueRef::SameAsAdmin => {}
        QueueRef::SourcePrivate(n)
        | QueueRef::DestinationPrivate(n)
        | QueueRef::AdminHostPrivate(n) => {
            m.insert("PrivateQueueId".into(), hex(u64::from(*n), 8));
        }
        QueueRef::Public(g) => {
            m.insert("QueueGuid".into(), json!(g.to_string()));
        }
        QueueRef::Private { qm, id } => {
            m.insert("QueueManagerGuid".into(), json!(qm.to_string()));
            m.insert("PrivateQueueId".into(), hex(u64::from(*id), 8));
        }
        QueueRef::Direct(s) => {
            m.insert("Count".into(), json!(s.byte_len()));
            m.insert("DirectName".into(), json!(s.to_string_lossy()));
        }
    }
    if let Ok(f) = FormatName::from_queue_ref(
        q,
        u.user.source_queue_manager,
        u.user.queue_manager_address,
        None,
    ) {
        m.insert("format_name".into(), json!(f.to_string()));
    }
    Value::Object(m)
}

fn bytes_summary(b: &[u8]) -> Value {
    const SHOWN: usize = 32;
    let head: String = b.iter().take(SHOWN).map(|x| format!("{x:02X}")).collect();
    if b.len() > SHOWN {
        json!(format!("{} bytes: {head}...", b.len()))
    } else {
        json!(format!("{} bytes: {head}", b.len()))
    }
}

/// The message body: UTF-16 text when it looks like it, else printable ASCII, else hex.
fn body_preview(b: &[u8]) -> Value {
    const SHOWN: usize = 64;
    let utf16_text = b.len() >= 2
        && b.len() % 2 == 0
        && b.chunks_exact(2)
            .all(|c| c[1] == 0 && (c[0] >= 0x20 || c[0] == b'\n'));
    if utf16_text {
        let t: String = b
            .chunks_exact(2)
            .take(SHOWN)
            .map(|c| c[0] as char)
            .collect();
        return json!(format!(
            "UTF-16 text: {t:?}{}",
            if b.len() / 2 > SHOWN { "..." } else { "" }
        ));
    }
    if !b.is_empty() && b.iter().all(|&c| (0x20..0x7F).contains(&c) || c == b'\n') {
        let t: String = b.iter().take(SHOWN).map(|&c| c as char).collect();
        return json!(format!(
            "text: {t:?}{}",
            if b.len() > SHOWN { "..." } else { "" }
        ));
    }
    bytes_summary(b)
}

/// The headers of a UserMessage, in wire order.
/// `valid (...)`, `invalid: why` or `absent`: the signature checked as lior's queue manager
/// would (MS-MQQB 3.1.5.8.3), except that a weak hash is named rather than refused.
fn signature_text(u: &UserMessage<'_>) -> String {
    use crate::security::{verify, Policy, Verification};
    match verify(u, &Policy::ANY) {
        Verification::Absent => "absent".into(),
        Verification::Invalid(why) => format!("invalid: {why}"),
        Verification::Valid(a) => format!(
            "valid ({}, {}{}, certificate {}, sha256 {})",
            a.kind.name(),
            a.hash,
            if a.hash.is_weak() {
                ": weak, refused unless Parameters.Security.WeakHashAlgorithms lists it"
            } else {
                ""
            },
            a.subject,
            a.cert_sha256
        ),
    }
}

fn user_message_fields(u: &UserMessage<'_>, m: &mut Map<String, Value>) {
    let h = &u.user;
    let f = h.flags;
    let mut set = Vec::new();
    for (bit, name) in [
        (UserFlags::JN, "JN"),
        (UserFlags::JP, "JP"),
        (UserFlags::SH, "SH"),
        (UserFlags::TH, "TH"),
        (UserFlags::MP, "MP"),
        (UserFlags::CQ, "CQ"),
        (UserFlags::MQ, "MQ"),
        (UserFlags::AH, "AH"),
        (UserFlags::HH, "HH"),
    ] {
        if f.0 & bit != 0 {
            set.push(name);
        }
    }
    let mut uh = Map::new();
    uh.insert(
        "SourceQueueManager".into(),
        json!(h.source_queue_manager.to_string()),
    );
    uh.insert(
        "QueueManagerAddress".into(),
        json!(h.queue_manager_address.to_string()),
    );
    uh.insert("TimeToBeReceived".into(), ttl(h.time_to_be_received));
    uh.insert("SentTime".into(), json!(h.sent_time));
    uh.insert("MessageID".into(), json!(h.message_id));
    uh.insert(
        "Flags".into(),
        json!({
            "value": hex(u64::from(f.0), 8),
            "RC (hop count)": f.hop_count(),
            "DM (delivery)": if f.recoverable() { "1 (recoverable)" } else { "0 (express)" },
            "DQ": f.dq(), "AQ": f.aq(), "RQ": f.rq(),
            "set": set,
        }),
    );
    uh.insert("DestinationQueue".into(), queue_value(&h.destination, u));
    if h.admin.code() != 0 {
        uh.insert("AdminQueue".into(), queue_value(&h.admin, u));
    }
    if h.response.code() != 0 {
        uh.insert("ResponseQueue".into(), queue_value(&h.response, u));
    }
    if let Some(g) = h.connector_type {
        uh.insert("ConnectorType".into(), json!(g.to_string()));
    }
    m.insert("UserHeader".into(), Value::Object(uh));

    if let Some(t) = &u.transaction {
        m.insert(
            "TransactionHeader".into(),
            json!({
                "Flags": {
                    "value": hex(u64::from(t.flags.0), 8),
                    "CG (connector GUID)": t.flags.connector_qm_guid_present(),
                    "FA (final ack)": t.flags.final_ack_requested(),
                    "FM (first message)": t.flags.first_message(),
                    "LM (last message)": t.flags.last_message(),
                    "ID (transaction index)": t.flags.transaction_index(),
                },
                "TxSequenceID": hex(t.tx_sequence_id, 16),
                "TxSequenceID.Ordinal": t.tx_sequence_ordinal(),
                "TxSequenceID.TimeStamp": t.tx_sequence_timestamp(),
                "TxSequenceNumber": t.tx_sequence_number,
                "PreviousTxSequenceNumber": t.previous_tx_sequence_number,
                "ConnectorQMGuid": t.connector_qm_guid.map(|g| g.to_string()),
            }),
        );
    }
    if let Some(sec) = &u.security {
        let mut sm = Map::new();
        let fl = sec.flags;
        sm.insert(
            "Flags".into(),
            json!({
                "value": hex(u64::from(fl.0), 4),
                "ST (sender id type)": fl.sender_id_type().name(),
                "EB (body encrypted)": fl.body_encrypted(),
                "DE (default provider)": fl.default_provider(),
                "AI (security data)": fl.security_data_present(),
            }),
        );
        sm.insert("SenderIdSize".into(), json!(sec.sender_id.len()));
        sm.insert("EncryptionKeySize".into(), json!(sec.encryption_key.len()));
        sm.insert("SignatureSize".into(), json!(sec.signature.len()));
        sm.insert("SenderCertSize".into(), json!(sec.sender_cert.len()));
        sm.insert("ProviderInfoSize".into(), json!(sec.provider_info.len()));
        if let Some(sid) = sec.sender_sid() {
            sm.insert("SenderId (SID)".into(), json!(sid.to_string()));
        } else if let Some(g) = sec.sender_qm_guid() {
            sm.insert("SenderId (QM GUID)".into(), json!(g.to_string()));
        } else if !sec.sender_id.is_empty() {
            sm.insert("SenderId".into(), bytes_summary(sec.sender_id));
        }
        for (k, v) in [
            ("EncryptionKey", sec.encryption_key),
            ("Signature", sec.signature),
            ("SenderCert", sec.sender_cert),
        ] {
            if !v.is_empty() {
                sm.insert(k.into(), bytes_summary(v));
            }
        }
        if let Some(name) = sec.provider_name() {
            sm.insert("ProviderName".into(), json!(name.to_string_lossy()));
        }
        m.insert("SecurityHeader".into(), Value::Object(sm));
    }
    m.insert("signature".into(), json!(signature_text(u)));
    let p = &u.properties;
    let mut acks = Vec::new();
    for (bit, name) in [(0x01, "PA"), (0x02, "PR"), (0x04, "NA"), (0x08, "NR")] {
        if p.flags.0 & bit != 0 {
            acks.push(name);
        }
    }
    m.insert(
        "MessagePropertiesHeader".into(),
        json!({
            "Flags": { "value": hex(u64::from(p.flags.0), 2), "acks requested": acks },
            "LabelLength": p.label.byte_len() / 2,
            "MessageClass": format!("0x{:04X} ({})", p.message_class.0, p.message_class.name()),
            "CorrelationID": p.correlation_id.iter().map(|b| format!("{b:02X}")).collect::<String>(),
            "BodyType": p.body_type,
            "ApplicationTag": p.application_tag,
            "MessageSize": p.message_size,
            "AllocationBodySize": p.allocation_body_size,
            "PrivacyLevel": format!("{} ({})", p.privacy_level.0, p.privacy_level.name()),
            "HashAlgorithm": format!("0x{:04X} ({})", p.hash_algorithm.0, p.hash_algorithm.name()),
            "EncryptionAlgorithm": format!("0x{:04X} ({})", p.encryption_algorithm.0, p.encryption_algorithm.name()),
            "ExtensionSize": p.extension.len(),
            "Label": p.label.to_string_lossy(),
            "Body": body_preview(u.body()),
        }),
    );
    if let Some(d) = &u.debug {
        m.insert(
            "DebugHeader".into(),
            json!({
                "Flags": hex(u64::from(d.flags), 4),
                "QueueIdentifier": d.queue_identifier.map(|g| g.to_string()),
            }),
        );
    }
    if let Some(e) = &u.srmp_envelope {
        m.insert(
            "SRMPEnvelopeHeader".into(),
            json!({ "HeaderId": e.header_id, "Data": e.data.to_string_lossy() }),
        );
    }
    if let Some(c) = &u.compound_message {
        m.insert(
            "CompoundMessageHeader".into(),
            json!({
                "HeaderId": c.header_id,
                "HTTPBodySize": c.http_body.len(),
                "MsgBodySize": c.msg_body_size,
                "MsgBodyOffset": c.msg_body_offset,
            }),
        );
    }
    if let Some(sp) = &u.soap {
        m.insert(
            "SoapHeader".into(),
            json!({ "Header": sp.header.to_string_lossy(), "Body": sp.body.to_string_lossy() }),
        );
    }
    if let Some(mq) = &u.multi_queue {
        let list = |a: &crate::wire::headers::MqfAddressHeader<'_>| -> Value {
            a.elements()
                .map(|e| match e {
                    MqfElement::Public(g) => json!(format!("PUBLIC={g}")),
                    MqfElement::Private { qm, id } => json!(format!("PRIVATE={qm}\\{id:08x}")),
                    MqfElement::Direct(s) => json!(format!("DIRECT={}", s.to_string_lossy())),
                    MqfElement::DistributionList(g) => json!(format!("DL={g}")),
                })
                .collect()
        };
        m.insert(
            "MultiQueueFormatHeader".into(),
            json!({
                "Destination": list(&mq.destination),
                "Administration": list(&mq.administration),
                "Response": list(&mq.response),
                "SignatureSize": mq.signature.len(),
            }),
        );
    }
    if let Some(x) = &u.extension {
        m.insert(
            "ExtensionHeader".into(),
            json!({
                "HeaderSize": x.header_size,
                "RemainingHeadersSize": x.remaining_headers_size,
                "Flags": { "value": hex(u64::from(x.flags.0), 2), "set": x.flags.names() },
                "Reserved": x.reserved.iter().map(|b| format!("{b:02X}")).collect::<String>(),
            }),
        );
    }
}

/// Renders a value tree as indented text.
pub fn to_text(v: &Value) -> String {
    let mut out = String::new();
    write_text(v, 0, &mut out);
    out
}

fn write_text(v: &Value, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                match val {
                    Value::Object(_) => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        write_text(val, depth + 1, out);
                    }
                    Value::Array(items) if items.iter().any(|i| i.is_object()) => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        for (i, item) in items.iter().enumerate() {
                            out.push_str(&format!("{pad}  [{i}]\n"));
                            write_text(item, depth + 2, out);
                        }
                    }
                    _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(val))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_forms_are_understood() {
        let want = vec![0x10u8, 0xC0, 0x0B, 0x00];
        assert_eq!(hex_text_to_bytes(b"10c00b00").unwrap(), want);
        assert_eq!(hex_text_to_bytes(b"10 C0 0B 00\n").unwrap(), want);
        assert_eq!(hex_text_to_bytes(b"0000  10 C0 0B 00").unwrap(), want);
        assert_eq!(
            hex_text_to_bytes(b"00000000: 10c0 0b00  ....").unwrap(),
            want
        );
        assert_eq!(hex_text_to_bytes(b"\x10\xc0"), None);
        assert_eq!(hex_text_to_bytes(b"hello"), None);
    }

    #[test]
    fn short_and_lying_inputs_are_reported_with_offsets() {
        let (ok, err) = decode_stream(&[0x10, 0x00]);
        assert!(ok.is_empty());
        assert!(err.unwrap().message.contains("too few"));
        let mut b = vec![0u8; 40];
        b[..8].copy_from_slice(&[0x10, 0, 0x0B, 0, 0x4C, 0x49, 0x4F, 0x52]);
        b[8..12].copy_from_slice(&100u32.to_le_bytes());
        let (_, err) = decode_stream(&b);
        assert!(err.unwrap().message.contains("needs 100 bytes"));
    }
}
