//! The one MSMQ <-> AMQP 1.0 property mapping (issue 11 item 4), as pure functions used both
//! ways: [`msmq_to_amqp`] writes the AMQP message for a stored MSMQ UserMessage, and
//! [`amqp_to_msmq`] reads an AMQP transfer payload into a [`MappedMessage`] that encodes to an
//! MSMQ frame.
//!
//! | MSMQ | AMQP 1.0 |
//! | --- | --- |
//! | body | one `data` section (several `data` sections are concatenated on the way in) |
//! | Label | properties.subject |
//! | MessageId (source QM, ordinal) | properties.message-id, string `{GUID}\ordinal` |
//! | CorrelationId (20 bytes) | properties.correlation-id, string `{GUID}\ordinal` (absent when all zero) |
//! | destination | properties.to (format name text) |
//! | ResponseQueue | properties.reply-to (format name text) |
//! | Priority 0..7 (default 3) | header.priority (always written; AMQP values above 7 read as 7) |
//! | TimeToBeReceived (s) | header.ttl (ms); `msmq.TimeToBeReceived` (uint, s) when ms overflow u32 |
//! | SentTime (Unix s) | properties.creation-time (ms) |
//! | recoverable (DM) | header.durable |
//! | AppSpecific | `msmq.AppSpecific` (uint) |
//! | Extension | `msmq.Extension` (binary) |
//! | BodyType | `msmq.BodyType` (uint) |
//! | AdminQueue | `msmq.AdminQueue` (format name text) |
//! | ack flags | `msmq.Acknowledge` (ubyte, MQMSG_ACKNOWLEDGMENT_*) |
//! | SenderId | `msmq.SenderId` (binary SID; MSMQ -> AMQP only, see below) |
//! | source QM | `msmq.SourceQueueManager` (string `{GUID}`) |
//! | TimeToReachQueue (s) | `msmq.TimeToReachQueue` (uint) |
//! | class | `msmq.Class` (ushort) |
//! | transaction | `msmq.TxSequenceId` (ulong), `msmq.TxSequenceNumber`, `msmq.TxPreviousSequenceNumber`, `msmq.TxFlags` (uint) |
//! | lookup id | message-annotation `x-opt-sequence-number` (ulong) |
//! | arrival time | message-annotation `x-opt-enqueued-time` (timestamp) |
//!
//! On the way in, a message-id of the `{GUID}\ordinal` form keeps the message's identity (a
//! message read over AMQP and sent on keeps its MSMQ id); any other message-id gets
//! `(source_qm, ordinal)`. `msmq.SenderId` is not turned back into a SecurityHeader: an AMQP
//! client cannot prove a Windows SID, so lior does not forge one. Anything absent or of an
//! unexpected type takes the MSMQ default (priority 3, express, infinite times, class NORMAL,
//! BodyType VT_UI1|VT_VECTOR, SentTime = now).

use std::fmt;

use super::message::{
    encode_data, encode_map_section_from, Body, Header, Message, MessageId, Properties,
};
use super::types::{descriptor as d, Value};
use super::CodecError;
use crate::wire::base::{INFINITE, MAX_PACKET_SIZE};
use crate::wire::format_name::FormatName;
use crate::wire::headers::{
    AckFlags, MessageClass, MessagePropertiesHeader, TransactionHeader, TxFlags,
};
use crate::wire::user::{QueueRef, UserMessage};
use crate::wire::{utf16z, Guid, Utf16};

/// Application-property and annotation names of the mapping.
pub mod names {
    pub const APP_SPECIFIC: &str = "msmq.AppSpecific";
    pub const EXTENSION: &str = "msmq.Extension";
    pub const BODY_TYPE: &str = "msmq.BodyType";
    pub const ADMIN_QUEUE: &str = "msmq.AdminQueue";
    pub const ACKNOWLEDGE: &str = "msmq.Acknowledge";
    pub const SENDER_ID: &str = "msmq.SenderId";
    /// True when the message's MSMQ signature verified on arrival (`crate::security`).
    pub const AUTHENTICATED: &str = "msmq.Authenticated";
    pub const SOURCE_QM: &str = "msmq.SourceQueueManager";
    pub const TIME_TO_REACH_QUEUE: &str = "msmq.TimeToReachQueue";
    pub const TIME_TO_BE_RECEIVED: &str = "msmq.TimeToBeReceived";
    pub const CLASS: &str = "msmq.Class";
    pub const TX_SEQUENCE_ID: &str = "msmq.TxSequenceId";
    pub const TX_SEQUENCE_NUMBER: &str = "msmq.TxSequenceNumber";
    pub const TX_PREVIOUS_SEQUENCE_NUMBER: &str = "msmq.TxPreviousSequenceNumber";
    pub const TX_FLAGS: &str = "msmq.TxFlags";
    pub const SEQUENCE_NUMBER: &str = "x-opt-sequence-number";
    pub const ENQUEUED_TIME: &str = "x-opt-enqueued-time";
}
use names as n;

/// MSMQ default priority (MS-MQMQ: MQ_PRIORITY default 3).
pub const MSMQ_DEFAULT_PRIORITY: u8 = 3;

/// Why a message could not be mapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MappingError {
    /// The AMQP payload does not decode.
    Codec(CodecError),
    /// A field has a value MSMQ cannot carry: which field and why.
    Field { field: &'static str, why: String },
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MappingError::Codec(e) => write!(f, "AMQP message does not decode: {e}"),
            MappingError::Field { field, why } => {
                write!(f, "AMQP <-> MSMQ mapping: {field}: {why}")
            }
        }
    }
}

impl std::error::Error for MappingError {}

impl From<CodecError> for MappingError {
    fn from(e: CodecError) -> Self {
        MappingError::Codec(e)
    }
}

fn field(field: &'static str, why: impl Into<String>) -> MappingError {
    MappingError::Field {
        field,
        why: why.into(),
    }
}

/// `{GUID}\ordinal`, the MSMQ message-id text form.
pub fn id_text(qm: Guid, ordinal: u32) -> String {
    format!("{qm}\\{ordinal}")
}

/// Parses `{GUID}\ordinal` (braces optional, any case).
pub fn parse_id_text(s: &str) -> Option<(Guid, u32)> {
    let (g, o) = s.rsplit_once('\\')?;
    if o.is_empty() || !o.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((Guid::parse_text(g)?, o.parse().ok()?))
}

fn queue_text(
    q: &QueueRef<'_>,
    m: &UserMessage<'_>,
    admin: Option<&FormatName>,
    name: &'static str,
) -> Result<Option<String>, MappingError> {
    if q.code() == 0 {
        return Ok(None);
    }
    // A direct name keeps the sender's spelling (FormatName's text would upper-case
    // `PRIVATE$`); a response queue that is "the admin queue" is the admin queue's text.
    let raw = match (q, &m.user.admin) {
        (QueueRef::Direct(u), _) | (QueueRef::SameAsAdmin, QueueRef::Direct(u)) => Some(u),
        _ => None,
    };
    if let Some(u) = raw {
        FormatName::from_queue_ref(&QueueRef::Direct(*u), Guid::NULL, Guid::NULL, None)
            .map_err(|e| field(name, e.to_string()))?;
        return Ok(Some(format!("DIRECT={}", u.to_string_lossy())));
    }
    FormatName::from_queue_ref(
        q,
        m.user.source_queue_manager,
        m.user.queue_manager_address,
        admin,
    )
    .map(|f| Some(f.to_string()))
    .map_err(|e| field(name, e.to_string()))
}

/// Encodes the AMQP message (header, message-annotations, properties, application-properties,
/// one data section) for `msg`, appending to `out`. `lookup_id` and `arrived_unix_ms` become
/// the `x-opt-sequence-number` and `x-opt-enqueued-time` annotations. On error `out` may hold
/// a partial message; the caller truncates it.
pub fn msmq_to_amqp(
    msg: &UserMessage<'_>,
    lookup_id: u64,
    arrived_unix_ms: u64,
    out: &mut Vec<u8>,
) -> Result<(), MappingError> {
    msmq_to_amqp_counted(msg, lookup_id, arrived_unix_ms, 0, out)
}

/// [`msmq_to_amqp`] with `header.delivery-count` set: the failed deliveries counted for the
/// message (AMQP consumers that answered `modified` with delivery-failed).
pub fn msmq_to_amqp_counted(
    msg: &UserMessage<'_>,
    lookup_id: u64,
    arrived_unix_ms: u64,
    delivery_count: u32,
    out: &mut Vec<u8>,
) -> Result<(), MappingError> {
    let u = &msg.user;
    let p = &msg.properties;
    let ttbr_ms = if u.time_to_be_received == INFINITE {
        None
    } else {
        u.time_to_be_received.checked_mul(1000)
    };
    Header {
        durable: msg.is_recoverable(),
        priority: msg.priority(),
        ttl: ttbr_ms,
        first_acquirer: false,
        delivery_count,
    }
    .encode(out)?;

    let enqueued = i64::try_from(arrived_unix_ms).unwrap_or(i64::MAX);
    encode_map_section_from(
        out,
        d::MESSAGE_ANNOTATIONS,
        &[
            (Value::Symbol(n::SEQUENCE_NUMBER), Value::Ulong(lookup_id)),
            (Value::Symbol(n::ENQUEUED_TIME), Value::Timestamp(enqueued)),
        ],
    )?;

    let admin_fn = if u.admin.code() == 0 {
        None
    } else {
        FormatName::from_queue_ref(
            &u.admin,
            u.source_queue_manager,
            u.queue_manager_address,
            None,
        )
        .ok()
    };
    let to = queue_text(&u.destination, msg, None, "UserHeader.DestinationQueue")?;
    let reply_to = queue_text(
        &u.response,
        msg,
        admin_fn.as_ref(),
        "UserHeader.ResponseQueue",
    )?;
    let admin = queue_text(&u.admin, msg, None, "UserHeader.AdminQueue")?;
    let mid = id_text(u.source_queue_manager, u.message_id);
    let cid = if p.correlation_id == [0; 20] {
        None
    } else {
        let mut g = [0u8; 16];
        g.copy_from_slice(&p.correlation_id[..16]);
        let mut o = [0u8; 4];
        o.copy_from_slice(&p.correlation_id[16..]);
        Some(id_text(Guid(g), u32::from_le_bytes(o)))
    };
    let label = p.label.to_string_lossy();
    Properties {
        message_id: Some(MessageId::String(&mid)),
        to: to.as_deref(),
        subject: if p.label.0.is_empty() {
            None
        } else {
            Some(&label)
        },
        reply_to: reply_to.as_deref(),
        correlation_id: cid.as_deref().map(MessageId::String),
        creation_time: Some(i64::from(u.sent_time) * 1000),
        ..Properties::default()
    }
    .encode(out)?;

    let source = u.source_queue_manager.to_string();
    let mut app: Vec<(Value<'_>, Value<'_>)> = vec![
        (
            Value::String(n::APP_SPECIFIC),
            Value::Uint(p.application_tag),
        ),
        (Value::String(n::BODY_TYPE), Value::Uint(p.body_type)),
        (Value::String(n::CLASS), Value::Ushort(p.message_class.0)),
        (Value::String(n::SOURCE_QM), Value::String(&source)),
        (
            Value::String(n::TIME_TO_REACH_QUEUE),
            Value::Uint(msg.base.time_to_reach_queue),
        ),
    ];
    if !p.extension.is_empty() {
        app.push((Value::String(n::EXTENSION), Value::Binary(p.extension)));
    }
    if p.flags.0 != 0 {
        app.push((Value::String(n::ACKNOWLEDGE), Value::Ubyte(p.flags.0)));
    }
    if let Some(a) = &admin {
        app.push((Value::String(n::ADMIN_QUEUE), Value::String(a)));
    }
    if u.time_to_be_received != INFINITE && ttbr_ms.is_none() {
        app.push((
            Value::String(n::TIME_TO_BE_RECEIVED),
            Value::Uint(u.time_to_be_received),
        ));
    }
    let sid = msg.security.as_ref().and_then(|s| s.sender_sid());
    if let Some(s) = &sid {
        app.push((Value::String(n::SENDER_ID), Value::Binary(s.as_bytes())));
    }
    if crate::security::stored_authentication(msg).is_some() {
        app.push((Value::String(n::AUTHENTICATED), Value::Bool(true)));
    }
    if let Some(t) = &msg.transaction {
        app.push((
            Value::String(n::TX_SEQUENCE_ID),
            Value::Ulong(t.tx_sequence_id),
        ));
        app.push((
            Value::String(n::TX_SEQUENCE_NUMBER),
            Value::Uint(t.tx_sequence_number),
        ));
        app.push((
            Value::String(n::TX_PREVIOUS_SEQUENCE_NUMBER),
            Value::Uint(t.previous_tx_sequence_number),
        ));
        app.push((
            Value::String(n::TX_FLAGS),
            Value::Uint(t.flags.0 & !TxFlags::CG),
        ));
    }
    encode_map_section_from(out, d::APPLICATION_PROPERTIES, &app)?;
    encode_data(out, msg.body())?;
    Ok(())
}

/// A queue reference that owns its direct name (what [`QueueRef`] borrows).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum OwnedQueue {
    #[default]
    None,
    Public(Guid),
    Private {
        qm: Guid,
        id: u32,
    },
    /// UTF-16LE with NUL, without `DIRECT=`.
    Direct(Vec<u8>),
}

impl OwnedQueue {
    pub(crate) fn parse(text: &str, name: &'static str) -> Result<Self, MappingError> {
        let f = FormatName::parse(text).map_err(|e| field(name, format!("{text:?}: {e}")))?;
        match f {
            // Keep the sender's spelling of the name after `DIRECT=` (checked just above).
            FormatName::Direct(_) => match text.split_once('=') {
                Some((_, rest)) => Ok(OwnedQueue::Direct(utf16z(rest.trim()))),
                None => Err(field(name, format!("{text:?}: no DIRECT= prefix"))),
            },
            FormatName::Public {
                queue,
                journal: false,
            } => Ok(OwnedQueue::Public(queue)),
            FormatName::Private {
                qm,
                id,
                journal: false,
            } => Ok(OwnedQueue::Private { qm, id }),
            _ => Err(field(
                name,
                format!("{text:?}: only DIRECT=, PUBLIC= and PRIVATE= names can be carried"),
            )),
        }
    }

    /// As an admin or response queue reference (code 6 for private names).
    fn as_ref(&self) -> QueueRef<'_> {
        match self {
            OwnedQueue::None => QueueRef::None,
            OwnedQueue::Public(g) => QueueRef::Public(*g),
            OwnedQueue::Private { qm, id } => QueueRef::Private { qm: *qm, id: *id },
            OwnedQueue::Direct(b) => QueueRef::Direct(Utf16(b)),
        }
    }
}

/// An MSMQ message read from AMQP: owns everything a [`UserMessage`] borrows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedMessage {
    pub source_qm: Guid,
    pub ordinal: u32,
    pub destination: OwnedQueue,
    pub admin: OwnedQueue,
    pub response: OwnedQueue,
    /// UTF-16LE with NUL; empty when there is no label.
    pub label: Vec<u8>,
    pub body: Vec<u8>,
    pub extension: Vec<u8>,
    pub correlation_id: [u8; 20],
    pub priority: u8,
    pub recoverable: bool,
    pub time_to_be_received: u32,
    pub time_to_reach_queue: u32,
    pub sent_time: u32,
    pub app_specific: u32,
    pub body_type: u32,
    pub class: MessageClass,
    pub acks: AckFlags,
    pub transaction: Option<TransactionHeader>,
}

impl MappedMessage {
    /// The UserMessage view, built with the `UserMessage` builders.
    pub fn user_message(&self) -> UserMessage<'_> {
        let dest = match &self.destination {
            OwnedQueue::Private { id, .. } => QueueRef::DestinationPrivate(*id),
            other => other.as_ref(),
        };
        let mut m = UserMessage::new(
            self.source_qm,
            self.ordinal,
            dest,
            Utf16(&self.label),
            &self.body,
        )
        .with_recoverable(self.recoverable)
        .with_priority(self.priority)
        .with_sent_time(self.sent_time)
        .with_time_to_reach_queue(self.time_to_reach_queue)
        .with_time_to_be_received(self.time_to_be_received);
        if let OwnedQueue::Private { qm, .. } = &self.destination {
            m = m.with_queue_manager_address(*qm);
        }
        if self.admin != OwnedQueue::None || self.acks.0 != 0 {
            m = m.with_admin_queue(self.admin.as_ref(), self.acks);
        }
        if self.response != OwnedQueue::None {
            m = m.with_response_queue(self.response.as_ref());
        }
        if let Some(t) = self.transaction {
            m = m.with_transaction(t);
        }
        m.properties.application_tag = self.app_specific;
        m.properties.body_type = self.body_type;
        m.properties.message_class = self.class;
        m.properties.correlation_id = self.correlation_id;
        m.properties.extension = &self.extension;
        m.sync();
        m
    }

    /// The frame of one copy of a message sent to a multiple-element or `DL=` address: with the
    /// MultiQueueFormatHeader (`qm/fanout.rs`). Empty if it does not encode (too large).
    pub fn encode_with_mqf(&self, mqf: &crate::qm::fanout::MqfLists) -> Vec<u8> {
        let mut m = self.user_message();
        m.multi_queue = Some(mqf.header());
        m.sync();
        let mut buf = vec![0u8; m.frame_len()];
        match m.encode(&mut buf) {
            Ok(len) => {
                buf.truncate(len);
                buf
            }
            Err(_) => Vec::new(),
        }
    }

    /// The MSMQ frame (PacketSize bytes). [`amqp_to_msmq`] checked that it encodes, so this
    /// returns an empty vector only if that check was bypassed by editing the fields.
    pub fn encode(&self) -> Vec<u8> {
        let m = self.user_message();
        let mut buf = vec![0u8; m.frame_len()];
        match m.encode(&mut buf) {
            Ok(len) => {
                buf.truncate(len);
                buf
            }
            Err(_) => Vec::new(),
        }
    }
}

fn app_value<'a>(m: &Message<'a>, key: &'static str) -> Result<Option<Value<'a>>, MappingError> {
    Ok(m.application_property(key)?)
}

fn app_uint(m: &Message<'_>, key: &'static str) -> Result<Option<u32>, MappingError> {
    Ok(match app_value(m, key)? {
        Some(Value::Uint(v)) => Some(v),
        Some(Value::Ushort(v)) => Some(u32::from(v)),
        Some(Value::Ubyte(v)) => Some(u32::from(v)),
        Some(Value::Int(v)) => u32::try_from(v).ok(),
        Some(Value::Long(v)) => u32::try_from(v).ok(),
        Some(Value::Ulong(v)) => u32::try_from(v).ok(),
        _ => None,
    })
}

fn app_str<'a>(m: &Message<'a>, key: &'static str) -> Result<Option<&'a str>, MappingError> {
    Ok(match app_value(m, key)? {
        Some(Value::String(s)) | Some(Value::Symbol(s)) => Some(s),
        _ => None,
    })
}

/// Reads an AMQP transfer payload into an MSMQ message sent from `source_qm` as message
/// `ordinal` (unless its message-id is `{GUID}\ordinal`), at `now_unix` when it has no
/// creation-time. Errors name the field; no input panics.
pub fn amqp_to_msmq(
    payload: &[u8],
    source_qm: Guid,
    ordinal: u32,
    now_unix: u32,
) -> Result<MappedMessage, MappingError> {
    let m = Message::decode(payload)?;
    let props = m.properties.unwrap_or_default();
    let body: Vec<u8> = match m.body {
        Body::Empty => Vec::new(),
        Body::Data { .. } => {
            let mut v = Vec::with_capacity(m.body.data_len());
            for s in m.body.data_sections() {
                v.extend_from_slice(s);
            }
            v
        }
        Body::Value(Value::Binary(b)) => b.to_vec(),
        Body::Value(Value::Null) => Vec::new(),
        Body::Value(v) => {
            return Err(field(
                "amqp-value",
                format!(
                    "an {} body has no MSMQ form; send the bytes as a data section",
                    v.type_name()
                ),
            ))
        }
        Body::Sequence { .. } => {
            return Err(field(
                "amqp-sequence",
                "a sequence body has no MSMQ form; send the bytes as a data section",
            ))
        }
    };
    if body.len() > MAX_PACKET_SIZE as usize {
        return Err(field(
            "data",
            format!(
                "{} bytes is more than an MSMQ packet holds ({MAX_PACKET_SIZE})",
                body.len()
            ),
        ));
    }
    let (src, ord) = match props.message_id {
        Some(MessageId::String(s)) => parse_id_text(s).unwrap_or((source_qm, ordinal)),
        _ => (source_qm, ordinal),
    };
    let correlation_id = match props.correlation_id {
        Some(MessageId::String(s)) => match parse_id_text(s) {
            Some((g, o)) => {
                let mut c = [0u8; 20];
                c[..16].copy_from_slice(&g.0);
                c[16..].copy_from_slice(&o.to_le_bytes());
                c
            }
            None => [0; 20],
        },
        Some(MessageId::Binary(b)) if b.len() == 20 => {
            let mut c = [0u8; 20];
            c.copy_from_slice(b);
            c
        }
        _ => [0; 20],
    };
    let label = match props.subject {
        None | Some("") => Vec::new(),
        Some(s) => {
            let l = utf16z(s);
            if l.len() > usize::from(MessagePropertiesHeader::LABEL_LENGTH_MAX) * 2 {
                return Err(field(
                    "properties.subject",
                    format!(
                        "{} UTF-16 units; an MSMQ label holds {} including its NUL",
                        l.len() / 2,
                        MessagePropertiesHeader::LABEL_LENGTH_MAX
                    ),
                ));
            }
            l
        }
    };
    let destination = match props.to {
        Some(t) => OwnedQueue::parse(t, "properties.to")?,
        None => OwnedQueue::None,
    };
    let response = match props.reply_to {
        Some(t) => OwnedQueue::parse(t, "properties.reply-to")?,
        None => OwnedQueue::None,
    };
    let admin = match app_str(&m, n::ADMIN_QUEUE)? {
        Some(t) => OwnedQueue::parse(t, "application-properties msmq.AdminQueue")?,
        None => OwnedQueue::None,
    };
    let header = m.header;
    let ttbr = match header.and_then(|h| h.ttl) {
        Some(ms) => ms.div_ceil(1000),
        None => app_uint(&m, n::TIME_TO_BE_RECEIVED)?.unwrap_or(INFINITE),
    };
    let sent_time = match props.creation_time {
        Some(ms) if ms >= 0 => u32::try_from(ms / 1000).unwrap_or(u32::MAX),
        _ => now_unix,
    };
    let acks = match app_value(&m, n::ACKNOWLEDGE)? {
        Some(Value::Ubyte(b)) => AckFlags(b),
        _ => AckFlags::default(),
    };
    let class = match app_uint(&m, n::CLASS)? {
        Some(c) => MessageClass(u16::try_from(c).unwrap_or(MessageClass::NORMAL.0)),
        None => MessageClass::NORMAL,
    };
    let extension = match app_value(&m, n::EXTENSION)? {
        Some(Value::Binary(b)) => b.to_vec(),
        _ => Vec::new(),
    };
    let transaction = match app_value(&m, n::TX_SEQUENCE_ID)? {
        Some(Value::Ulong(id)) => {
            let no = app_uint(&m, n::TX_SEQUENCE_NUMBER)?.unwrap_or(0);
            let prev = app_uint(&m, n::TX_PREVIOUS_SEQUENCE_NUMBER)?.unwrap_or(0);
            let fl = app_uint(&m, n::TX_FLAGS)?.unwrap_or(0);
            let fl = TxFlags(fl & !TxFlags::RESERVED_MASK);
            Some(TransactionHeader::new(fl, id, no, prev))
        }
        _ => None,
    };
    let mapped = MappedMessage {
        source_qm: src,
        ordinal: ord,
        destination,
        admin,
        response,
        label,
        body,
        extension,
        correlation_id,
        priority: header.map_or(MSMQ_DEFAULT_PRIORITY, |h| h.priority.min(7)),
        recoverable: header.is_some_and(|h| h.durable),
        time_to_be_received: ttbr,
        time_to_reach_queue: app_uint(&m, n::TIME_TO_REACH_QUEUE)?.unwrap_or(INFINITE),
        sent_time,
        app_specific: app_uint(&m, n::APP_SPECIFIC)?.unwrap_or(0),
        body_type: app_uint(&m, n::BODY_TYPE)?
            .unwrap_or(crate::wire::headers::body_type::VT_UI1_VECTOR),
        class,
        acks,
        transaction,
    };
    let um = mapped.user_message();
    if um.frame_len() > MAX_PACKET_SIZE as usize {
        return Err(field(
            "message",
            format!(
                "the MSMQ packet would be {} bytes, limit {MAX_PACKET_SIZE}",
                um.frame_len()
            ),
        ));
    }
    let mut buf = vec![0u8; um.frame_len()];
    um.encode(&mut buf)
        .map_err(|e| field("message", format!("does not encode as MSMQ: {e}")))?;
    Ok(mapped)
}
