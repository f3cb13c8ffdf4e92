//! The AMQP message format (OASIS AMQP 1.0 Part 3 §3.2): the sections a transfer's payload
//! holds, in this order, each a described value:
//!
//! ```text
//! header? delivery-annotations? message-annotations?      (annotated message, §3.2.1-3.2.3)
//!   properties? application-properties?                   (bare message, §3.2.4-3.2.5)
//!   ( data+ | amqp-sequence+ | amqp-value )               (body, §3.2.6-3.2.8)
//! footer?                                                 (§3.2.9)
//! ```
//!
//! [`Message::decode`] gives a borrowed view (strings, maps and the body are slices of the
//! payload); [`Message::encode`] and the `encode_*` section functions write into a caller's
//! `Vec<u8>`.

use super::types::{
    descriptor as d, put_binary, put_descriptor, Compound, Decoder, Described, Fields, ListWriter,
    MapWriter, Value,
};
use super::{CodecError, ErrorKind, Result};

/// Default priority of the header section (§3.2.1).
pub const DEFAULT_PRIORITY: u8 = 4;

/// header (§3.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub durable: bool,
    pub priority: u8,
    /// Milliseconds.
    pub ttl: Option<u32>,
    pub first_acquirer: bool,
    pub delivery_count: u32,
}

impl Default for Header {
    fn default() -> Self {
        Header {
            durable: false,
            priority: DEFAULT_PRIORITY,
            ttl: None,
            first_acquirer: false,
            delivery_count: 0,
        }
    }
}

impl Header {
    fn decode(dv: &Described<'_>) -> Result<Self> {
        let mut f = Fields::of(&dv.value, "header")?;
        Ok(Header {
            durable: f.bool("header.durable")?.unwrap_or(false),
            priority: f.ubyte("header.priority")?.unwrap_or(DEFAULT_PRIORITY),
            ttl: f.uint("header.ttl")?,
            first_acquirer: f.bool("header.first-acquirer")?.unwrap_or(false),
            delivery_count: f.uint("header.delivery-count")?.unwrap_or(0),
        })
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_descriptor(out, d::HEADER);
        let mut w = ListWriter::begin(out);
        w.bool_default(out, self.durable, false);
        if self.priority == DEFAULT_PRIORITY {
            w.null(out)
        } else {
            w.ubyte(out, self.priority)
        }
        w.opt_uint(out, self.ttl);
        w.bool_default(out, self.first_acquirer, false);
        if self.delivery_count == 0 {
            w.null(out)
        } else {
            w.uint(out, self.delivery_count)
        }
        w.finish(out)
    }
}

/// message-id and correlation-id (§3.2.11-3.2.15): ulong, uuid, binary or string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageId<'a> {
    Ulong(u64),
    Uuid([u8; 16]),
    Binary(&'a [u8]),
    String(&'a str),
}

impl<'a> MessageId<'a> {
    fn from_value(v: Value<'a>) -> Option<Self> {
        match v {
            Value::Ulong(n) => Some(MessageId::Ulong(n)),
            Value::Uuid(u) => Some(MessageId::Uuid(u)),
            Value::Binary(b) => Some(MessageId::Binary(b)),
            Value::String(s) => Some(MessageId::String(s)),
            _ => None,
        }
    }
    fn value(&self) -> Value<'a> {
        match *self {
            MessageId::Ulong(n) => Value::Ulong(n),
            MessageId::Uuid(u) => Value::Uuid(u),
            MessageId::Binary(b) => Value::Binary(b),
            MessageId::String(s) => Value::String(s),
        }
    }
}

/// properties (§3.2.4): the bare message's immutable properties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Properties<'a> {
    pub message_id: Option<MessageId<'a>>,
    pub user_id: Option<&'a [u8]>,
    pub to: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub reply_to: Option<&'a str>,
    pub correlation_id: Option<MessageId<'a>>,
    /// Symbol.
    pub content_type: Option<&'a str>,
    /// Symbol.
    pub content_encoding: Option<&'a str>,
    /// Milliseconds since the Unix epoch.
    pub absolute_expiry_time: Option<i64>,
    pub creation_time: Option<i64>,
    pub group_id: Option<&'a str>,
    pub group_sequence: Option<u32>,
    pub reply_to_group_id: Option<&'a str>,
}

fn message_id<'a>(f: &mut Fields<'a>, field: &'static str) -> Result<Option<MessageId<'a>>> {
    let at = CodecError::new(ErrorKind::BadCode, field, f.offset());
    match f.value(field)? {
        None => Ok(None),
        Some(v) => MessageId::from_value(v).map(Some).ok_or(at),
    }
}

fn address<'a>(f: &mut Fields<'a>, field: &'static str) -> Result<Option<&'a str>> {
    let at = CodecError::new(ErrorKind::BadCode, field, f.offset());
    match f.value(field)? {
        None => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or(at),
    }
}

impl<'a> Properties<'a> {
    fn decode(dv: &Described<'a>) -> Result<Self> {
        let mut f = Fields::of(&dv.value, "properties")?;
        Ok(Properties {
            message_id: message_id(&mut f, "properties.message-id")?,
            user_id: f.binary("properties.user-id")?,
            to: address(&mut f, "properties.to")?,
            subject: f.string("properties.subject")?,
            reply_to: address(&mut f, "properties.reply-to")?,
            correlation_id: message_id(&mut f, "properties.correlation-id")?,
            content_type: f.symbol("properties.content-type")?,
            content_encoding: f.symbol("properties.content-encoding")?,
            absolute_expiry_time: f.timestamp("properties.absolute-expiry-time")?,
            creation_time: f.timestamp("properties.creation-time")?,
            group_id: f.string("properties.group-id")?,
            group_sequence: f.uint("properties.group-sequence")?,
            reply_to_group_id: f.string("properties.reply-to-group-id")?,
        })
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_descriptor(out, d::PROPERTIES);
        let mut w = ListWriter::begin(out);
        w.opt_value(out, self.message_id.map(|m| m.value()).as_ref())?;
        w.opt_binary(out, self.user_id)?;
        w.opt_str(out, self.to)?;
        w.opt_str(out, self.subject)?;
        w.opt_str(out, self.reply_to)?;
        w.opt_value(out, self.correlation_id.map(|m| m.value()).as_ref())?;
        w.opt_sym(out, self.content_type)?;
        w.opt_sym(out, self.content_encoding)?;
        w.opt_timestamp(out, self.absolute_expiry_time);
        w.opt_timestamp(out, self.creation_time);
        w.opt_str(out, self.group_id)?;
        w.opt_uint(out, self.group_sequence);
        w.opt_str(out, self.reply_to_group_id)?;
        w.finish(out)
    }
}

/// The body of a message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Body<'a> {
    /// No body section (not conformant, but accepted from lenient clients).
    Empty,
    /// One or more data sections (§3.2.6). `first` is the first section's bytes (the whole
    /// body in the common single-section case); `count` sections are encoded in `sections`.
    Data {
        first: &'a [u8],
        count: u32,
        sections: &'a [u8],
    },
    /// One or more amqp-sequence sections (§3.2.7), encoded in `sections`.
    Sequence { count: u32, sections: &'a [u8] },
    /// One amqp-value section (§3.2.8).
    Value(Value<'a>),
}

impl<'a> Body<'a> {
    /// The bytes of every data section, in order (one slice each, no copy).
    pub fn data_sections(&self) -> impl Iterator<Item = &'a [u8]> {
        let (sections, count) = match *self {
            Body::Data {
                sections, count, ..
            } => (sections, count),
            _ => (&[][..], 0),
        };
        let mut dec = Decoder::new(sections);
        (0..count).filter_map(move |_| match dec.value("data") {
            Ok(Value::Described(dv)) => match dv.value.decode("data") {
                Ok(Value::Binary(b)) => Some(b),
                _ => None,
            },
            _ => None,
        })
    }
    /// The total length of the data sections.
    pub fn data_len(&self) -> usize {
        self.data_sections().map(<[u8]>::len).sum()
    }
}

/// A decoded message: a borrowed view over a (reassembled) transfer payload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Message<'a> {
    pub header: Option<Header>,
    /// A map with symbol or ulong keys.
    pub delivery_annotations: Option<Compound<'a>>,
    /// A map with symbol or ulong keys (`x-opt-...` for lior's own).
    pub message_annotations: Option<Compound<'a>>,
    pub properties: Option<Properties<'a>>,
    /// A map with string keys and simple values (checked at decode).
    pub application_properties: Option<Compound<'a>>,
    pub body: Body<'a>,
    pub footer: Option<Compound<'a>>,
}

/// Section positions, for the order check.
const fn rank(code: u64) -> Option<u8> {
    Some(match code {
        d::HEADER => 0,
        d::DELIVERY_ANNOTATIONS => 1,
        d::MESSAGE_ANNOTATIONS => 2,
        d::PROPERTIES => 3,
        d::APPLICATION_PROPERTIES => 4,
        d::DATA | d::AMQP_SEQUENCE | d::AMQP_VALUE => 5,
        d::FOOTER => 6,
        _ => return None,
    })
}

impl<'a> Message<'a> {
    /// Decodes the sections of a message. Sections out of order, repeated (other than data or
    /// amqp-sequence), of mixed body kinds, or unknown are an error.
    pub fn decode(payload: &'a [u8]) -> Result<Self> {
        let mut m = Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: None,
            application_properties: None,
            body: Body::Empty,
            footer: None,
        };
        let mut dec = Decoder::new(payload);
        let mut last: Option<u8> = None;
        let mut body_start = 0;
        while !dec.is_empty() {
            let at = dec.offset();
            let dv = match dec.value("message section")? {
                Value::Described(dv) => dv,
                _ => return Err(CodecError::new(ErrorKind::BadCode, "message section", at)),
            };
            let c = dv.code().unwrap_or(u64::MAX);
            let r = rank(c).ok_or(CodecError::new(
                ErrorKind::BadValue,
                "message section descriptor",
                at,
            ))?;
            let repeat_ok = matches!((c, m.body), (d::DATA, Body::Data { .. }))
                || matches!((c, m.body), (d::AMQP_SEQUENCE, Body::Sequence { .. }));
            if last.is_some_and(|l| l > r || (l == r && !repeat_ok)) {
                return Err(CodecError::new(
                    ErrorKind::BadValue,
                    "message section order",
                    at,
                ));
            }
            if last != Some(r) {
                body_start = at;
            }
            last = Some(r);
            let map = |name| -> Result<Compound<'a>> {
                match dv.value.decode(name)? {
                    Value::Map(mp) => Ok(mp),
                    _ => Err(CodecError::new(ErrorKind::BadCode, name, at)),
                }
            };
            match c {
                d::HEADER => m.header = Some(Header::decode(&dv)?),
                d::DELIVERY_ANNOTATIONS => {
                    m.delivery_annotations = Some(map("delivery-annotations")?)
                }
                d::MESSAGE_ANNOTATIONS => m.message_annotations = Some(map("message-annotations")?),
                d::PROPERTIES => m.properties = Some(Properties::decode(&dv)?),
                d::APPLICATION_PROPERTIES => {
                    let mp = map("application-properties")?;
                    check_application_properties(&mp)?;
                    m.application_properties = Some(mp);
                }
                d::DATA => {
                    let b = match dv.value.decode("data")? {
                        Value::Binary(b) => b,
                        _ => return Err(CodecError::new(ErrorKind::BadCode, "data", at)),
                    };
                    let end = dec.offset();
                    m.body = match m.body {
                        Body::Data { first, count, .. } => Body::Data {
                            first,
                            count: count + 1,
                            sections: &payload[body_start..end],
                        },
                        _ => Body::Data {
                            first: b,
                            count: 1,
                            sections: &payload[body_start..end],
                        },
                    };
                }
                d::AMQP_SEQUENCE => {
                    if !matches!(dv.value.decode("amqp-sequence")?, Value::List(_)) {
                        return Err(CodecError::new(ErrorKind::BadCode, "amqp-sequence", at));
                    }
                    let end = dec.offset();
                    let count = match m.body {
                        Body::Sequence { count, .. } => count + 1,
                        _ => 1,
                    };
                    m.body = Body::Sequence {
                        count,
                        sections: &payload[body_start..end],
                    };
                }
                d::AMQP_VALUE => m.body = Body::Value(dv.value.decode("amqp-value")?),
                _ => m.footer = Some(map("footer")?),
            }
        }
        Ok(m)
    }

    /// The value of the application property `name`.
    pub fn application_property(&self, name: &str) -> Result<Option<Value<'a>>> {
        match &self.application_properties {
            Some(m) => m.get(name, "application-properties"),
            None => Ok(None),
        }
    }

    /// Encodes every section present.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        if let Some(h) = &self.header {
            h.encode(out)?;
        }
        if let Some(m) = &self.delivery_annotations {
            encode_map_section(out, d::DELIVERY_ANNOTATIONS, m);
        }
        if let Some(m) = &self.message_annotations {
            encode_map_section(out, d::MESSAGE_ANNOTATIONS, m);
        }
        if let Some(p) = &self.properties {
            p.encode(out)?;
        }
        if let Some(m) = &self.application_properties {
            encode_map_section(out, d::APPLICATION_PROPERTIES, m);
        }
        match self.body {
            Body::Empty => {}
            Body::Data { sections, .. } | Body::Sequence { sections, .. } => {
                out.extend_from_slice(sections)
            }
            Body::Value(v) => {
                put_descriptor(out, d::AMQP_VALUE);
                v.encode(out)?;
            }
        }
        if let Some(m) = &self.footer {
            encode_map_section(out, d::FOOTER, m);
        }
        Ok(())
    }
}

/// §3.2.5: application-properties keys are strings, values simple types (not map, list or
/// array).
fn check_application_properties(m: &Compound<'_>) -> Result<()> {
    let mut items = m.iter("application-properties");
    let mut key = true;
    loop {
        let at = items.offset();
        let Some(v) = items.next() else { break };
        let v = v?;
        let ok = if key {
            matches!(v, Value::String(_))
        } else {
            !matches!(
                v,
                Value::List(_) | Value::Map(_) | Value::Array(_) | Value::Unknown(_)
            )
        };
        if !ok {
            return Err(CodecError::new(
                ErrorKind::BadCode,
                if key {
                    "application-properties key"
                } else {
                    "application-properties value"
                },
                at,
            ));
        }
        key = !key;
    }
    Ok(())
}

/// Writes an annotations, application-properties or footer section from a received map.
pub fn encode_map_section(out: &mut Vec<u8>, code: u64, m: &Compound<'_>) {
    put_descriptor(out, code);
    m.encode(out);
}

/// Writes a map section from entries (e.g. application-properties from MSMQ properties:
/// `(Value::String("msmq.AppSpecific"), Value::Uint(7))`).
pub fn encode_map_section_from(
    out: &mut Vec<u8>,
    code: u64,
    entries: &[(Value<'_>, Value<'_>)],
) -> Result<()> {
    put_descriptor(out, code);
    let mut w = MapWriter::begin(out);
    for (k, v) in entries {
        w.entry(out, k, v)?;
    }
    w.finish(out)
}

/// Writes one data section (§3.2.6).
pub fn encode_data(out: &mut Vec<u8>, body: &[u8]) -> Result<()> {
    put_descriptor(out, d::DATA);
    put_binary(out, body)
}

/// Writes one amqp-value section (§3.2.8).
pub fn encode_amqp_value(out: &mut Vec<u8>, v: &Value<'_>) -> Result<()> {
    put_descriptor(out, d::AMQP_VALUE);
    v.encode(out)
}
