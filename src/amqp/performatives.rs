//! The nine performatives (OASIS AMQP 1.0 Part 2 §2.7), the definitions they use (§2.8: role,
//! settle modes, error and its conditions), the delivery states (Part 3 §3.4) and the link
//! terminuses source and target (Part 3 §3.5.3, §3.5.4).
//!
//! Each is a described list (§1.5); decoding borrows every string, binary and map from the
//! frame, so [`Transfer`], [`Flow`] and [`Disposition`] decode without allocating, and their
//! `encode` appends to a caller's `Vec<u8>` (no allocation once the buffer has grown).
//! Fields with a default are held with the default applied and written as null (and dropped
//! when trailing) when they equal it; optional fields without a default are `Option`s.

use super::frame::{begin_frame, finish_frame, FrameType};
use super::types::{
    descriptor as d, put_descriptor, Compound, Decoder, Described, Fields, ListWriter, Raw,
    Symbols, Value,
};
use super::{CodecError, ErrorKind, Result};

/// Error conditions (Part 2 §2.8.15 amqp-error, §2.8.17 connection-error, §2.8.18
/// session-error, §2.8.19 link-error).
pub mod condition {
    pub const INTERNAL_ERROR: &str = "amqp:internal-error";
    pub const NOT_FOUND: &str = "amqp:not-found";
    pub const UNAUTHORIZED_ACCESS: &str = "amqp:unauthorized-access";
    pub const DECODE_ERROR: &str = "amqp:decode-error";
    pub const RESOURCE_LIMIT_EXCEEDED: &str = "amqp:resource-limit-exceeded";
    pub const NOT_ALLOWED: &str = "amqp:not-allowed";
    pub const INVALID_FIELD: &str = "amqp:invalid-field";
    pub const NOT_IMPLEMENTED: &str = "amqp:not-implemented";
    pub const RESOURCE_LOCKED: &str = "amqp:resource-locked";
    pub const PRECONDITION_FAILED: &str = "amqp:precondition-failed";
    pub const RESOURCE_DELETED: &str = "amqp:resource-deleted";
    pub const ILLEGAL_STATE: &str = "amqp:illegal-state";
    pub const FRAME_SIZE_TOO_SMALL: &str = "amqp:frame-size-too-small";
    pub const CONNECTION_FORCED: &str = "amqp:connection:forced";
    pub const FRAMING_ERROR: &str = "amqp:connection:framing-error";
    pub const CONNECTION_REDIRECT: &str = "amqp:connection:redirect";
    pub const WINDOW_VIOLATION: &str = "amqp:session:window-violation";
    pub const ERRANT_LINK: &str = "amqp:session:errant-link";
    pub const HANDLE_IN_USE: &str = "amqp:session:handle-in-use";
    pub const UNATTACHED_HANDLE: &str = "amqp:session:unattached-handle";
    pub const DETACH_FORCED: &str = "amqp:link:detach-forced";
    pub const TRANSFER_LIMIT_EXCEEDED: &str = "amqp:link:transfer-limit-exceeded";
    pub const MESSAGE_SIZE_EXCEEDED: &str = "amqp:link:message-size-exceeded";
    pub const LINK_REDIRECT: &str = "amqp:link:redirect";
    pub const STOLEN: &str = "amqp:link:stolen";
}

/// Link role (§2.8.1): encoded as a boolean, false for sender, true for receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Sender,
    Receiver,
}

impl Role {
    fn from_bool(b: bool) -> Role {
        if b {
            Role::Receiver
        } else {
            Role::Sender
        }
    }
    fn as_bool(self) -> bool {
        self == Role::Receiver
    }
}

/// sender-settle-mode (§2.8.2).
pub mod snd_settle_mode {
    pub const UNSETTLED: u8 = 0;
    pub const SETTLED: u8 = 1;
    pub const MIXED: u8 = 2;
}

/// receiver-settle-mode (§2.8.3).
pub mod rcv_settle_mode {
    pub const FIRST: u8 = 0;
    pub const SECOND: u8 = 1;
}

/// Checks that a described value carries the expected descriptor.
fn expect(dv: &Described<'_>, code: u64, field: &'static str) -> Result<()> {
    if dv.code() == Some(code) {
        Ok(())
    } else {
        Err(CodecError::new(
            ErrorKind::BadValue,
            field,
            dv.value.offset(),
        ))
    }
}

/// The `error` type (§2.8.14): a condition symbol, a description and an info map.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AmqpError<'a> {
    pub condition: &'a str,
    pub description: Option<&'a str>,
    pub info: Option<Compound<'a>>,
}

impl<'a> AmqpError<'a> {
    pub fn new(condition: &'a str, description: &'a str) -> Self {
        AmqpError {
            condition,
            description: Some(description),
            info: None,
        }
    }
    pub fn decode(dv: &Described<'a>) -> Result<Self> {
        expect(dv, d::ERROR, "error")?;
        let mut f = Fields::of(&dv.value, "error")?;
        let condition = f.symbol("error.condition")?;
        let condition = f.required(condition, "error.condition")?;
        Ok(AmqpError {
            condition,
            description: f.string("error.description")?,
            info: f.map("error.info")?,
        })
    }
    fn decode_field(f: &mut Fields<'a>, field: &'static str) -> Result<Option<Self>> {
        f.described(field)?.map(|dv| Self::decode(&dv)).transpose()
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_descriptor(out, d::ERROR);
        let mut w = ListWriter::begin(out);
        w.sym(out, self.condition)?;
        w.opt_str(out, self.description)?;
        opt_map(&mut w, out, self.info)?;
        w.finish(out)
    }
}

fn opt_map(w: &mut ListWriter, out: &mut Vec<u8>, m: Option<Compound<'_>>) -> Result<()> {
    match m {
        Some(m) => w.with(out, |out| {
            m.encode(out);
            Ok(())
        }),
        None => {
            w.null(out);
            Ok(())
        }
    }
}

fn opt_error(w: &mut ListWriter, out: &mut Vec<u8>, e: &Option<AmqpError<'_>>) -> Result<()> {
    match e {
        Some(e) => w.with(out, |out| e.encode(out)),
        None => {
            w.null(out);
            Ok(())
        }
    }
}

fn opt_state(w: &mut ListWriter, out: &mut Vec<u8>, s: &Option<DeliveryState<'_>>) -> Result<()> {
    match s {
        Some(s) => w.with(out, |out| s.encode(out)),
        None => {
            w.null(out);
            Ok(())
        }
    }
}

/// Delivery states and outcomes (Part 3 §3.4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DeliveryState<'a> {
    /// §3.4.1: how much of the message has arrived (for resuming).
    Received {
        section_number: u32,
        section_offset: u64,
    },
    /// §3.4.2.
    Accepted,
    /// §3.4.3, with the reason.
    Rejected(Option<AmqpError<'a>>),
    /// §3.4.4.
    Released,
    /// §3.4.5.
    Modified {
        delivery_failed: bool,
        undeliverable_here: bool,
        message_annotations: Option<Compound<'a>>,
    },
}

impl<'a> DeliveryState<'a> {
    /// Decodes a delivery state; transactional states (declared, transactional-state) are
    /// [`ErrorKind::Unsupported`].
    pub fn decode(dv: &Described<'a>, field: &'static str) -> Result<Self> {
        let unsupported = CodecError::new(ErrorKind::Unsupported, field, dv.value.offset());
        let code = dv.code().ok_or(unsupported)?;
        let mut f = Fields::of(&dv.value, field)?;
        Ok(match code {
            d::RECEIVED => {
                let section_number = f.required_uint("received.section-number")?;
                let o = f.ulong("received.section-offset")?;
                let section_offset = f.required(o, "received.section-offset")?;
                DeliveryState::Received {
                    section_number,
                    section_offset,
                }
            }
            d::ACCEPTED => DeliveryState::Accepted,
            d::REJECTED => {
                DeliveryState::Rejected(AmqpError::decode_field(&mut f, "rejected.error")?)
            }
            d::RELEASED => DeliveryState::Released,
            d::MODIFIED => DeliveryState::Modified {
                delivery_failed: f.bool("modified.delivery-failed")?.unwrap_or(false),
                undeliverable_here: f.bool("modified.undeliverable-here")?.unwrap_or(false),
                message_annotations: f.map("modified.message-annotations")?,
            },
            _ => return Err(unsupported),
        })
    }
    fn decode_field(f: &mut Fields<'a>, field: &'static str) -> Result<Option<Self>> {
        f.described(field)?
            .map(|dv| Self::decode(&dv, field))
            .transpose()
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            DeliveryState::Received {
                section_number,
                section_offset,
            } => {
                put_descriptor(out, d::RECEIVED);
                let mut w = ListWriter::begin(out);
                w.uint(out, *section_number);
                w.ulong(out, *section_offset);
                w.finish(out)
            }
            DeliveryState::Accepted => {
                put_descriptor(out, d::ACCEPTED);
                ListWriter::begin(out).finish(out)
            }
            DeliveryState::Rejected(e) => {
                put_descriptor(out, d::REJECTED);
                let mut w = ListWriter::begin(out);
                opt_error(&mut w, out, e)?;
                w.finish(out)
            }
            DeliveryState::Released => {
                put_descriptor(out, d::RELEASED);
                ListWriter::begin(out).finish(out)
            }
            DeliveryState::Modified {
                delivery_failed,
                undeliverable_here,
                message_annotations,
            } => {
                put_descriptor(out, d::MODIFIED);
                let mut w = ListWriter::begin(out);
                w.bool_default(out, *delivery_failed, false);
                w.bool_default(out, *undeliverable_here, false);
                opt_map(&mut w, out, *message_annotations)?;
                w.finish(out)
            }
        }
    }
    /// Whether this is an outcome (a terminal state), as opposed to `received`.
    pub fn is_outcome(&self) -> bool {
        !matches!(self, DeliveryState::Received { .. })
    }
}

/// terminus-durability (Part 3 §3.5.5).
pub mod terminus_durability {
    pub const NONE: u32 = 0;
    pub const CONFIGURATION: u32 = 1;
    pub const UNSETTLED_STATE: u32 = 2;
}

/// A link's source (Part 3 §3.5.3).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Source<'a> {
    /// The node's address: for lior, a queue name or an MSMQ format name.
    pub address: Option<&'a str>,
    pub durable: u32,
    /// Symbol; `None` means the default, `session-end`.
    pub expiry_policy: Option<&'a str>,
    pub timeout: u32,
    pub dynamic: bool,
    pub dynamic_node_properties: Option<Compound<'a>>,
    /// `move` (consume) or `copy` (browse); `None` is the node's default.
    pub distribution_mode: Option<&'a str>,
    pub filter: Option<Compound<'a>>,
    pub default_outcome: Option<DeliveryState<'a>>,
    pub outcomes: Symbols<'a>,
    pub capabilities: Symbols<'a>,
}

/// Reads an address field: `address-string` is a string; a symbol is accepted too.
fn address<'a>(f: &mut Fields<'a>, field: &'static str) -> Result<Option<&'a str>> {
    let bad = CodecError::new(ErrorKind::BadCode, field, f.offset());
    match f.value(field)? {
        None => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or(bad),
    }
}

impl<'a> Source<'a> {
    pub fn decode(dv: &Described<'a>) -> Result<Self> {
        expect(dv, d::SOURCE, "source")?;
        let mut f = Fields::of(&dv.value, "source")?;
        Ok(Source {
            address: address(&mut f, "source.address")?,
            durable: f.uint("source.durable")?.unwrap_or(0),
            expiry_policy: f.symbol("source.expiry-policy")?,
            timeout: f.uint("source.timeout")?.unwrap_or(0),
            dynamic: f.bool("source.dynamic")?.unwrap_or(false),
            dynamic_node_properties: f.map("source.dynamic-node-properties")?,
            distribution_mode: f.symbol("source.distribution-mode")?,
            filter: f.map("source.filter")?,
            default_outcome: DeliveryState::decode_field(&mut f, "source.default-outcome")?,
            outcomes: f.symbols("source.outcomes")?,
            capabilities: f.symbols("source.capabilities")?,
        })
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_descriptor(out, d::SOURCE);
        let mut w = ListWriter::begin(out);
        w.opt_str(out, self.address)?;
        uint_default(&mut w, out, self.durable, 0);
        w.opt_sym(out, self.expiry_policy)?;
        uint_default(&mut w, out, self.timeout, 0);
        w.bool_default(out, self.dynamic, false);
        opt_map(&mut w, out, self.dynamic_node_properties)?;
        w.opt_sym(out, self.distribution_mode)?;
        opt_map(&mut w, out, self.filter)?;
        opt_state(&mut w, out, &self.default_outcome)?;
        self.outcomes.field(&mut w, out)?;
        self.capabilities.field(&mut w, out)?;
        w.finish(out)
    }
}

/// A link's target (Part 3 §3.5.4).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Target<'a> {
    pub address: Option<&'a str>,
    pub durable: u32,
    pub expiry_policy: Option<&'a str>,
    pub timeout: u32,
    pub dynamic: bool,
    pub dynamic_node_properties: Option<Compound<'a>>,
    pub capabilities: Symbols<'a>,
}

impl<'a> Target<'a> {
    /// Decodes a target; a transaction coordinator (Part 4) is [`ErrorKind::Unsupported`].
    pub fn decode(dv: &Described<'a>) -> Result<Self> {
        if dv.code() != Some(d::TARGET) {
            return Err(CodecError::new(
                ErrorKind::Unsupported,
                "target",
                dv.value.offset(),
            ));
        }
        let mut f = Fields::of(&dv.value, "target")?;
        Ok(Target {
            address: address(&mut f, "target.address")?,
            durable: f.uint("target.durable")?.unwrap_or(0),
            expiry_policy: f.symbol("target.expiry-policy")?,
            timeout: f.uint("target.timeout")?.unwrap_or(0),
            dynamic: f.bool("target.dynamic")?.unwrap_or(false),
            dynamic_node_properties: f.map("target.dynamic-node-properties")?,
            capabilities: f.symbols("target.capabilities")?,
        })
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_descriptor(out, d::TARGET);
        let mut w = ListWriter::begin(out);
        w.opt_str(out, self.address)?;
        uint_default(&mut w, out, self.durable, 0);
        w.opt_sym(out, self.expiry_policy)?;
        uint_default(&mut w, out, self.timeout, 0);
        w.bool_default(out, self.dynamic, false);
        opt_map(&mut w, out, self.dynamic_node_properties)?;
        self.capabilities.field(&mut w, out)?;
        w.finish(out)
    }
}

fn uint_default(w: &mut ListWriter, out: &mut Vec<u8>, v: u32, default: u32) {
    if v == default {
        w.null(out)
    } else {
        w.uint(out, v)
    }
}

/// open (§2.7.1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Open<'a> {
    pub container_id: &'a str,
    pub hostname: Option<&'a str>,
    /// Default 4294967295 (no limit).
    pub max_frame_size: u32,
    /// Default 65535.
    pub channel_max: u16,
    /// Milliseconds; `None` means no idle time-out.
    pub idle_time_out: Option<u32>,
    pub outgoing_locales: Symbols<'a>,
    pub incoming_locales: Symbols<'a>,
    pub offered_capabilities: Symbols<'a>,
    pub desired_capabilities: Symbols<'a>,
    pub properties: Option<Compound<'a>>,
}

impl<'a> Open<'a> {
    pub fn new(container_id: &'a str) -> Self {
        Open {
            container_id,
            hostname: None,
            max_frame_size: u32::MAX,
            channel_max: u16::MAX,
            idle_time_out: None,
            outgoing_locales: Symbols::None,
            incoming_locales: Symbols::None,
            offered_capabilities: Symbols::None,
            desired_capabilities: Symbols::None,
            properties: None,
        }
    }
    fn decode(v: &Raw<'a>) -> Result<Self> {
        let mut f = Fields::of(v, "open")?;
        let c = f.string("open.container-id")?;
        Ok(Open {
            container_id: f.required(c, "open.container-id")?,
            hostname: f.string("open.hostname")?,
            max_frame_size: f.uint("open.max-frame-size")?.unwrap_or(u32::MAX),
            channel_max: f.ushort("open.channel-max")?.unwrap_or(u16::MAX),
            idle_time_out: f.uint("open.idle-time-out")?,
            outgoing_locales: f.symbols("open.outgoing-locales")?,
            incoming_locales: f.symbols("open.incoming-locales")?,
            offered_capabilities: f.symbols("open.offered-capabilities")?,
            desired_capabilities: f.symbols("open.desired-capabilities")?,
            properties: f.map("open.properties")?,
        })
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_descriptor(out, d::OPEN);
        let mut w = ListWriter::begin(out);
        w.str(out, self.container_id)?;
        w.opt_str(out, self.hostname)?;
        uint_default(&mut w, out, self.max_frame_size, u32::MAX);
        if self.channel_max == u16::MAX {
            w.null(out)
        } else {
            w.ushort(out, self.channel_max)
        }
        w.opt_uint(out, self.idle_time_out);
        self.outgoing_locales.field(&mut w, out)?;
        self.incoming_locales.field(&mut w, out)?;
        self.offered_capabilities.field(&mut w, out)?;
        self.desired_capabilities.field(&mut w, out)?;
        opt_map(&mut w, out, self.properties)?;
        w.finish(out)
    }
}

/// begin (§2.7.2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Begin<'a> {
    /// Set when answering a begin: the channel the peer began on.
    pub remote_channel: Option<u16>,
    pub next_outgoing_id: u32,
    pub incoming_window: u32,
    pub outgoing_window: u32,
    /// Default 4294967295.
    pub handle_max: u32,
    pub offered_capabilities: Symbols<'a>,
    pub desired_capabilities: Symbols<'a>,
    pub properties: Option<Compound<'a>>,
}

impl<'a> Begin<'a> {
    fn decode(v: &Raw<'a>) -> Result<Self> {
        let mut f = Fields::of(v, "begin")?;
        let remote_channel = f.ushort("begin.remote-channel")?;
        let next_outgoing_id = f.required_uint("begin.next-outgoing-id")?;
        let incoming_window = f.required_uint("begin.incoming-window")?;
        let outgoing_window = f.required_uint("begin.outgoing-window")?;
        Ok(Begin {
            remote_channel,
            next_outgoing_id,
            incoming_window,
            outgoing_window,
            handle_max: f.uint("begin.handle-max")?.unwrap_or(u32::MAX),
            offered_capabilities: f.symbols("begin.offered-capabilities")?,
            desired_capabilities: f.symbols("begin.desired-capabilities")?,
            properties: f.map("begin.properties")?,
        })
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_descriptor(out, d::BEGIN);
        let mut w = ListWriter::begin(out);
        w.opt_ushort(out, self.remote_channel);
        w.uint(out, self.next_outgoing_id);
        w.uint(out, self.incoming_window);
        w.uint(out, self.outgoing_window);
        uint_default(&mut w, out, self.handle_max, u32::MAX);
        self.offered_capabilities.field(&mut w, out)?;
        self.desired_capabilities.field(&mut w, out)?;
        opt_map(&mut w, out, self.properties)?;
        w.finish(out)
    }
}

/// attach (§2.7.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attach<'a> {
    pub name: &'a str,
    pub handle: u32,
    pub role: Role,
    /// [`snd_settle_mode`]; default mixed.
    pub snd_settle_mode: u8,
    /// [`rcv_settle_mode`]; default first.
    pub rcv_settle_mode: u8,
    pub source: Option<Source<'a>>,
    pub target: Option<Target<'a>>,
    pub unsettled: Option<Compound<'a>>,
    pub incomplete_unsettled: bool,
    pub initial_delivery_count: Option<u32>,
    pub max_message_size: Option<u64>,
    pub offered_capabilities: Symbols<'a>,
    pub desired_capabilities: Symbols<'a>,
    pub properties: Option<Compound<'a>>,
}

impl<'a> Attach<'a> {
    pub fn new(name: &'a str, handle: u32, role: Role) -> Self {
        Attach {
            name,
            handle,
            role,
            snd_settle_mode: snd_settle_mode::MIXED,
            rcv_settle_mode: rcv_settle_mode::FIRST,
            source: None,
            target: None,
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: None,
            max_message_size: None,
            offered_capabilities: Symbols::None,
            desired_capabilities: Symbols::None,
            properties: None,
        }
    }
    fn decode(v: &Raw<'a>) -> Result<Self> {
        let mut f = Fields::of(v, "attach")?;
        let n = f.string("attach.name")?;
        let name = f.required(n, "attach.name")?;
        let h = f.uint("attach.handle")?;
        let handle = f.required(h, "attach.handle")?;
        let r = f.bool("attach.role")?;
        let role = Role::from_bool(f.required(r, "attach.role")?);
        let snd = f.ubyte("attach.snd-settle-mode")?;
        let rcv = f.ubyte("attach.rcv-settle-mode")?;
        if snd.is_some_and(|m| m > snd_settle_mode::MIXED) {
            return Err(CodecError::new(
                ErrorKind::BadValue,
                "attach.snd-settle-mode",
                v.offset(),
            ));
        }
        if rcv.is_some_and(|m| m > rcv_settle_mode::SECOND) {
            return Err(CodecError::new(
                ErrorKind::BadValue,
                "attach.rcv-settle-mode",
                v.offset(),
            ));
        }
        let source = f
            .described("attach.source")?
            .map(|dv| Source::decode(&dv))
            .transpose()?;
        let target = f
            .described("attach.target")?
            .map(|dv| Target::decode(&dv))
            .transpose()?;
        Ok(Attach {
            name,
            handle,
            role,
            snd_settle_mode: snd.unwrap_or(snd_settle_mode::MIXED),
            rcv_settle_mode: rcv.unwrap_or(rcv_settle_mode::FIRST),
            source,
            target,
            unsettled: f.map("attach.unsettled")?,
            incomplete_unsettled: f.bool("attach.incomplete-unsettled")?.unwrap_or(false),
            initial_delivery_count: f.uint("attach.initial-delivery-count")?,
            max_message_size: f.ulong("attach.max-message-size")?,
            offered_capabilities: f.symbols("attach.offered-capabilities")?,
            desired_capabilities: f.symbols("attach.desired-capabilities")?,
            properties: f.map("attach.properties")?,
        })
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_descriptor(out, d::ATTACH);
        let mut w = ListWriter::begin(out);
        w.str(out, self.name)?;
        w.uint(out, self.handle);
        w.bool(out, self.role.as_bool());
        if self.snd_settle_mode == snd_settle_mode::MIXED {
            w.null(out)
        } else {
            w.ubyte(out, self.snd_settle_mode)
        }
        if self.rcv_settle_mode == rcv_settle_mode::FIRST {
            w.null(out)
        } else {
            w.ubyte(out, self.rcv_settle_mode)
        }
        match &self.source {
            Some(s) => w.with(out, |out| s.encode(out))?,
            None => w.null(out),
        }
        match &self.target {
            Some(t) => w.with(out, |out| t.encode(out))?,
            None => w.null(out),
        }
        opt_map(&mut w, out, self.unsettled)?;
        w.bool_default(out, self.incomplete_unsettled, false);
        w.opt_uint(out, self.initial_delivery_count);
        w.opt_ulong(out, self.max_message_size);
        self.offered_capabilities.field(&mut w, out)?;
        self.desired_capabilities.field(&mut w, out)?;
        opt_map(&mut w, out, self.properties)?;
        w.finish(out)
    }
}

/// flow (§2.7.4). Session flow state, plus link flow state when `handle` is set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flow<'a> {
    pub next_incoming_id: Option<u32>,
    pub incoming_window: u32,
    pub next_outgoing_id: u32,
    pub outgoing_window: u32,
    pub handle: Option<u32>,
    pub delivery_count: Option<u32>,
    pub link_credit: Option<u32>,
    pub available: Option<u32>,
    pub drain: bool,
    pub echo: bool,
    pub properties: Option<Compound<'a>>,
}

impl<'a> Flow<'a> {
    fn decode(v: &Raw<'a>) -> Result<Self> {
        let mut f = Fields::of(v, "flow")?;
        let next_incoming_id = f.uint("flow.next-incoming-id")?;
        let incoming_window = f.required_uint("flow.incoming-window")?;
        let next_outgoing_id = f.required_uint("flow.next-outgoing-id")?;
        let outgoing_window = f.required_uint("flow.outgoing-window")?;
        Ok(Flow {
            next_incoming_id,
            incoming_window,
            next_outgoing_id,
            outgoing_window,
            handle: f.uint("flow.handle")?,
            delivery_count: f.uint("flow.delivery-count")?,
            link_credit: f.uint("flow.link-credit")?,
            available: f.uint("flow.available")?,
            drain: f.bool("flow.drain")?.unwrap_or(false),
            echo: f.bool("flow.echo")?.unwrap_or(false),
            properties: f.map("flow.properties")?,
        })
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_descriptor(out, d::FLOW);
        let mut w = ListWriter::begin(out);
        w.opt_uint(out, self.next_incoming_id);
        w.uint(out, self.incoming_window);
        w.uint(out, self.next_outgoing_id);
        w.uint(out, self.outgoing_window);
        w.opt_uint(out, self.handle);
        w.opt_uint(out, self.delivery_count);
        w.opt_uint(out, self.link_credit);
        w.opt_uint(out, self.available);
        w.bool_default(out, self.drain, false);
        w.bool_default(out, self.echo, false);
        opt_map(&mut w, out, self.properties)?;
        w.finish(out)
    }
}

/// transfer (§2.7.5). The message bytes follow the performative in the frame body.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transfer<'a> {
    pub handle: u32,
    /// Mandatory on a delivery's first transfer, may be omitted on its continuations.
    pub delivery_id: Option<u32>,
    pub delivery_tag: Option<&'a [u8]>,
    pub message_format: Option<u32>,
    pub settled: Option<bool>,
    /// More transfers of this delivery follow.
    pub more: bool,
    pub rcv_settle_mode: Option<u8>,
    pub state: Option<DeliveryState<'a>>,
    pub resume: bool,
    pub aborted: bool,
    pub batchable: bool,
}

impl<'a> Transfer<'a> {
    pub fn new(handle: u32, delivery_id: u32, delivery_tag: &'a [u8]) -> Self {
        Transfer {
            handle,
            delivery_id: Some(delivery_id),
            delivery_tag: Some(delivery_tag),
            message_format: Some(0),
            settled: None,
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        }
    }
    fn decode(v: &Raw<'a>) -> Result<Self> {
        let mut f = Fields::of(v, "transfer")?;
        let h = f.uint("transfer.handle")?;
        let handle = f.required(h, "transfer.handle")?;
        let delivery_id = f.uint("transfer.delivery-id")?;
        let delivery_tag = f.binary("transfer.delivery-tag")?;
        if delivery_tag.is_some_and(|t| t.len() > 32) {
            // §2.8.7: a delivery-tag is at most 32 bytes.
            return Err(CodecError::new(
                ErrorKind::TooMany,
                "transfer.delivery-tag",
                v.offset(),
            ));
        }
        Ok(Transfer {
            handle,
            delivery_id,
            delivery_tag,
            message_format: f.uint("transfer.message-format")?,
            settled: f.bool("transfer.settled")?,
            more: f.bool("transfer.more")?.unwrap_or(false),
            rcv_settle_mode: f.ubyte("transfer.rcv-settle-mode")?,
            state: DeliveryState::decode_field(&mut f, "transfer.state")?,
            resume: f.bool("transfer.resume")?.unwrap_or(false),
            aborted: f.bool("transfer.aborted")?.unwrap_or(false),
            batchable: f.bool("transfer.batchable")?.unwrap_or(false),
        })
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_descriptor(out, d::TRANSFER);
        let mut w = ListWriter::begin(out);
        w.uint(out, self.handle);
        w.opt_uint(out, self.delivery_id);
        w.opt_binary(out, self.delivery_tag)?;
        w.opt_uint(out, self.message_format);
        w.opt_bool(out, self.settled);
        w.bool_default(out, self.more, false);
        w.opt_ubyte(out, self.rcv_settle_mode);
        opt_state(&mut w, out, &self.state)?;
        w.bool_default(out, self.resume, false);
        w.bool_default(out, self.aborted, false);
        w.bool_default(out, self.batchable, false);
        w.finish(out)
    }

    /// Encodes the delivery as as many frames as `max_frame_size` (the peer's) needs: the first
    /// carries every field, the continuations the handle, delivery-id and `more`. Returns the
    /// number of frames. Appends to `out` without allocating once it has grown.
    /// On error `out` is left as it was.
    pub fn encode_frames(
        &self,
        out: &mut Vec<u8>,
        channel: u16,
        payload: &[u8],
        max_frame_size: u32,
    ) -> Result<usize> {
        let len = out.len();
        let r = self.encode_frames_inner(out, channel, payload, max_frame_size);
        if r.is_err() {
            out.truncate(len);
        }
        r
    }

    fn encode_frames_inner(
        &self,
        out: &mut Vec<u8>,
        channel: u16,
        payload: &[u8],
        max_frame_size: u32,
    ) -> Result<usize> {
        let max = max_frame_size as usize;
        let mut rest = payload;
        let mut frames = 0;
        let mut t = *self;
        loop {
            let start = begin_frame(out, FrameType::Amqp, channel);
            t.more = true;
            Performative::Transfer(t).encode(out)?;
            let room = max.saturating_sub(out.len() - start);
            if room == 0 && !rest.is_empty() {
                return Err(CodecError::new(
                    ErrorKind::FrameTooLarge,
                    "transfer (max-frame-size too small for the performative)",
                    start,
                ));
            }
            if rest.len() <= room {
                // Last frame: re-encode with this delivery's own `more` (false for a whole
                // delivery), which is never longer.
                out.truncate(begin_frame_end(start));
                t.more = self.more;
                Performative::Transfer(t).encode(out)?;
                out.extend_from_slice(rest);
                finish_frame(out, start, max_frame_size)?;
                return Ok(frames + 1);
            }
            let (now, later) = rest.split_at(room);
            out.extend_from_slice(now);
            finish_frame(out, start, max_frame_size)?;
            frames += 1;
            rest = later;
            t = Transfer {
                handle: self.handle,
                delivery_id: self.delivery_id,
                delivery_tag: None,
                message_format: None,
                settled: self.settled,
                more: true,
                rcv_settle_mode: None,
                state: None,
                resume: false,
                aborted: false,
                batchable: self.batchable,
            };
        }
    }
}

fn begin_frame_end(start: usize) -> usize {
    start + super::frame::FRAME_HEADER_LEN
}

/// disposition (§2.7.6): settles or updates the state of deliveries `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Disposition<'a> {
    pub role: Role,
    pub first: u32,
    /// `None` means `first` only.
    pub last: Option<u32>,
    pub settled: bool,
    pub state: Option<DeliveryState<'a>>,
    pub batchable: bool,
}

impl<'a> Disposition<'a> {
    fn decode(v: &Raw<'a>) -> Result<Self> {
        let mut f = Fields::of(v, "disposition")?;
        let r = f.bool("disposition.role")?;
        let role = Role::from_bool(f.required(r, "disposition.role")?);
        let first = f.required_uint("disposition.first")?;
        Ok(Disposition {
            role,
            first,
            last: f.uint("disposition.last")?,
            settled: f.bool("disposition.settled")?.unwrap_or(false),
            state: DeliveryState::decode_field(&mut f, "disposition.state")?,
            batchable: f.bool("disposition.batchable")?.unwrap_or(false),
        })
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_descriptor(out, d::DISPOSITION);
        let mut w = ListWriter::begin(out);
        w.bool(out, self.role.as_bool());
        w.uint(out, self.first);
        w.opt_uint(out, self.last);
        w.bool_default(out, self.settled, false);
        opt_state(&mut w, out, &self.state)?;
        w.bool_default(out, self.batchable, false);
        w.finish(out)
    }
    /// The last delivery-id covered.
    pub fn last(&self) -> u32 {
        self.last.unwrap_or(self.first)
    }
}

/// detach (§2.7.7).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detach<'a> {
    pub handle: u32,
    pub closed: bool,
    pub error: Option<AmqpError<'a>>,
}

impl<'a> Detach<'a> {
    fn decode(v: &Raw<'a>) -> Result<Self> {
        let mut f = Fields::of(v, "detach")?;
        let h = f.uint("detach.handle")?;
        Ok(Detach {
            handle: f.required(h, "detach.handle")?,
            closed: f.bool("detach.closed")?.unwrap_or(false),
            error: AmqpError::decode_field(&mut f, "detach.error")?,
        })
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_descriptor(out, d::DETACH);
        let mut w = ListWriter::begin(out);
        w.uint(out, self.handle);
        w.bool_default(out, self.closed, false);
        opt_error(&mut w, out, &self.error)?;
        w.finish(out)
    }
}

/// end (§2.7.8) and close (§2.7.9) carry only an optional error.
fn decode_error_only<'a>(v: &Raw<'a>, name: &'static str) -> Result<Option<AmqpError<'a>>> {
    let mut f = Fields::of(v, name)?;
    AmqpError::decode_field(&mut f, name)
}

fn encode_error_only(out: &mut Vec<u8>, code: u64, e: &Option<AmqpError<'_>>) -> Result<()> {
    put_descriptor(out, code);
    let mut w = ListWriter::begin(out);
    opt_error(&mut w, out, e)?;
    w.finish(out)
}

/// One performative, as carried by an AMQP frame.
///
/// Open and attach are boxed: they are large (their capabilities, source and target views)
/// and rare (once per connection, once per link), while transfer, flow and disposition, the
/// hot path, stay inline and allocation-free.
#[derive(Clone, Debug, PartialEq)]
pub enum Performative<'a> {
    Open(Box<Open<'a>>),
    Begin(Begin<'a>),
    Attach(Box<Attach<'a>>),
    Flow(Flow<'a>),
    Transfer(Transfer<'a>),
    Disposition(Disposition<'a>),
    Detach(Detach<'a>),
    /// end (§2.7.8), with its optional error.
    End(Option<AmqpError<'a>>),
    /// close (§2.7.9), with its optional error.
    Close(Option<AmqpError<'a>>),
}

impl<'a> Performative<'a> {
    /// The spec's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Performative::Open(_) => "open",
            Performative::Begin(_) => "begin",
            Performative::Attach(_) => "attach",
            Performative::Flow(_) => "flow",
            Performative::Transfer(_) => "transfer",
            Performative::Disposition(_) => "disposition",
            Performative::Detach(_) => "detach",
            Performative::End(_) => "end",
            Performative::Close(_) => "close",
        }
    }

    /// Decodes the performative at the front of a frame body; returns it and the bytes after
    /// it (a transfer's payload).
    pub fn decode(body: &'a [u8]) -> Result<(Self, &'a [u8])> {
        Self::decode_at(body, 0)
    }

    /// As [`Performative::decode`], with error offsets counted from `base`.
    pub fn decode_at(body: &'a [u8], base: usize) -> Result<(Self, &'a [u8])> {
        let mut dec = Decoder::with_base(body, base);
        let raw = dec.raw("performative")?;
        let dv = match raw.decode("performative")? {
            Value::Described(dv) => dv,
            _ => return Err(CodecError::new(ErrorKind::BadCode, "performative", base)),
        };
        let v = &dv.value;
        let p = match dv.code() {
            Some(d::OPEN) => Performative::Open(Box::new(Open::decode(v)?)),
            Some(d::BEGIN) => Performative::Begin(Begin::decode(v)?),
            Some(d::ATTACH) => Performative::Attach(Box::new(Attach::decode(v)?)),
            Some(d::FLOW) => Performative::Flow(Flow::decode(v)?),
            Some(d::TRANSFER) => Performative::Transfer(Transfer::decode(v)?),
            Some(d::DISPOSITION) => Performative::Disposition(Disposition::decode(v)?),
            Some(d::DETACH) => Performative::Detach(Detach::decode(v)?),
            Some(d::END) => Performative::End(decode_error_only(v, "end.error")?),
            Some(d::CLOSE) => Performative::Close(decode_error_only(v, "close.error")?),
            _ => {
                return Err(CodecError::new(
                    ErrorKind::BadValue,
                    "performative descriptor",
                    base,
                ))
            }
        };
        Ok((p, dec.remaining()))
    }

    /// Appends the encoded performative (not the frame header) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Performative::Open(p) => p.encode(out),
            Performative::Begin(p) => p.encode(out),
            Performative::Attach(p) => p.encode(out),
            Performative::Flow(p) => p.encode(out),
            Performative::Transfer(p) => p.encode(out),
            Performative::Disposition(p) => p.encode(out),
            Performative::Detach(p) => p.encode(out),
            Performative::End(e) => encode_error_only(out, d::END, e),
            Performative::Close(e) => encode_error_only(out, d::CLOSE, e),
        }
    }
}
