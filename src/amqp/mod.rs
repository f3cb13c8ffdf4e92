//! AMQP 1.0 codec: sans-IO, zero-copy views and encoders for the OASIS AMQP 1.0 standard
//! (ISO/IEC 19464), the protocol lior will speak to Linux applications on `amqp_listen`.
//!
//! AMQP 1.0 is a peer-to-peer protocol: after an 8-byte protocol header each side sends frames
//! (an 8-byte header and a body). An AMQP frame body is a *performative* (open, begin, attach,
//! flow, transfer, disposition, detach, end, close) encoded in the AMQP type system, followed,
//! for a transfer, by a slice of the message. SASL negotiation uses its own header and frames.
//!
//! Like [`crate::wire`], this module does no IO and never panics on any input. Decoders take
//! `&[u8]` and return views that borrow from it (strings, binaries, delivery tags, payloads and
//! maps are slices of the received bytes); compound values (lists, maps, arrays) are decoded
//! lazily and element by element. Encoders append to a caller's `Vec<u8>`: a caller that reuses
//! its buffer encodes transfer, flow and disposition without allocating. Every failure is a
//! [`CodecError`] naming the field and the byte offset; [`CodecError::condition`] gives the AMQP
//! error condition to send back before closing.
//!
//! | file | OASIS AMQP 1.0 sections |
//! | --- | --- |
//! | `types.rs` | Part 1 (Types): §1.2 type encodings, §1.3 descriptors, §1.5 composite type representation, §1.6 primitive type definitions |
//! | `frame.rs` | Part 2 (Transport): §2.2 version negotiation (protocol headers), §2.3 framing, §2.4.5 idle time-out (empty frames), §2.7.1 max-frame-size, §2.8.15 MIN-MAX-FRAME-SIZE; Part 5 §5.3.1 SASL frames |
//! | `performatives.rs` | Part 2: §2.7 performatives, §2.8 definitions (role, settle modes, error and its conditions §2.8.14-2.8.18); Part 3 (Messaging): §3.4 delivery state, §3.5.3 source, §3.5.4 target |
//! | `sasl.rs` | Part 5 (Security): §5.3.3 SASL frames; RFC 4505 (ANONYMOUS) and RFC 4616 (PLAIN) initial responses |
//! | `auth.rs` | Part 5 §5.3 SASL PLAIN against the `[[amqp.users]]` Argon2 hashes (RFC 4616) |
//! | `config.rs` | the `[amqp]` configuration section (listen address, mechanisms, users, AMQPS) |
//! | `tls.rs` | AMQPS: rustls between the engine's bytes and the sans-IO connection |
//! | `message.rs` | Part 3: §3.2 message format (header, delivery-annotations, message-annotations, properties, application-properties, data, amqp-sequence, amqp-value, footer) |
//!
//! How a listener uses it (sketch; `buf` is the connection's receive buffer after the protocol
//! header, `out` its reused transmit buffer):
//!
//! ```
//! use lior::amqp::frame::{encode_amqp_frame, frame_len, parse_frame, FrameType};
//! use lior::amqp::message::Message;
//! use lior::amqp::performatives::{AmqpError, DeliveryState, Disposition, Performative, Role};
//! use lior::amqp::sasl::{parse_initial_response, SaslFrame};
//!
//! fn on_bytes(buf: &[u8], out: &mut Vec<u8>, our_max: u32, peer_max: u32) -> usize {
//!     let mut used = 0;
//!     loop {
//!         let rest = &buf[used..];
//!         let n = match frame_len(rest, our_max) {
//!             Ok(Some(n)) if n <= rest.len() => n,
//!             Ok(_) => return used, // wait for more bytes
//!             Err(e) => {
//!                 // Close with the condition, then drop the connection.
//!                 let desc = e.to_string();
//!                 let close = Performative::Close(Some(AmqpError::new(e.condition(), &desc)));
//!                 let _ = encode_amqp_frame(out, 0, &close, &[], peer_max);
//!                 return buf.len();
//!             }
//!         };
//!         let Ok(f) = parse_frame(&rest[..n], our_max) else { return buf.len() };
//!         used += n;
//!         match f.header.frame_type {
//!             FrameType::Sasl => {
//!                 if let Ok(SaslFrame::Init(init)) = f.sasl() {
//!                     let _who = parse_initial_response(&init);
//!                 }
//!             }
//!             FrameType::Amqp => match f.performative() {
//!                 Ok(None) => {} // keep-alive
//!                 Ok(Some((Performative::Transfer(t), payload))) => {
//!                     // (a multi-frame delivery is reassembled first, while t.more)
//!                     let m = Message::decode(payload);
//!                     let settle = Performative::Disposition(Disposition {
//!                         role: Role::Receiver,
//!                         first: t.delivery_id.unwrap_or(0),
//!                         last: None,
//!                         settled: true,
//!                         state: Some(if m.is_ok() {
//!                             DeliveryState::Accepted
//!                         } else {
//!                             DeliveryState::Rejected(None)
//!                         }),
//!                         batchable: false,
//!                     });
//!                     let _ = encode_amqp_frame(out, f.header.channel, &settle, &[], peer_max);
//!                 }
//!                 Ok(Some((_other, _))) => {}
//!                 Err(_e) => return buf.len(),
//!             },
//!         }
//!     }
//! }
//! # let mut out = Vec::new();
//! # assert_eq!(on_bytes(&lior::amqp::frame::EMPTY_FRAME, &mut out, 512, 512), 8);
//! ```
//!
//! Supported: every primitive encoding of §1.6 decodes (decimal32/64/128 kept as opaque bytes,
//! char as its raw UTF-32 code unit); described types with ulong or symbol descriptors; arrays
//! whose element constructor is a format code or one level of descriptor. Not supported (a
//! [`CodecError`] with [`ErrorKind::Unsupported`]): extension format codes (`0x?F`),
//! descriptors other than ulong or symbol, transactions (coordinator target, declared and
//! transactional-state delivery states).

pub mod app;
pub mod auth;
pub mod config;
pub mod connection;
pub mod frame;
pub mod mapping;
pub mod message;
pub mod performatives;
pub mod sasl;
pub mod tls;
pub mod types;

use std::fmt;

use crate::engine::net::Listener;

/// The engine listener AMQP connections arrive on (`daemon.rs` tags `[amqp] listen` with it;
/// MS-MQQB's is [`crate::server::MSMQ_LISTENER`]).
pub const AMQP_LISTENER: Listener = Listener(1);

/// The engine listener AMQPS connections arrive on (`[amqp] tls_listen`; see [`tls`]).
pub const AMQPS_LISTENER: Listener = Listener(2);

/// Deepest nesting of described values and compounds a decoder follows. AMQP's own
/// performatives nest 4 deep (transfer > state > error > info map); hostile input nests
/// 0x00 0x00 0x00... to exhaust the stack, so the decoder stops here with [`ErrorKind::TooDeep`].
pub const MAX_NESTING_DEPTH: u32 = 32;

/// Most elements one list, map or array may declare. A list or map element takes at least one
/// byte, so their counts are also bounded by their size; an array of a zero-width type (null,
/// true, uint0...) is not, and without this limit `count = 2^32-1` in 6 bytes would make a
/// walker spin for minutes. 2^20 is above any array a 4 MB message can carry usefully.
pub const MAX_ELEMENTS: u32 = 1 << 20;

/// The smallest max-frame-size a peer may announce (Part 2 §2.8.15 MIN-MAX-FRAME-SIZE); frames
/// up to this size may be sent before open is exchanged.
pub const MIN_MAX_FRAME_SIZE: u32 = 512;

/// What went wrong while decoding or encoding. `Copy`: it is the hot-path error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input ends inside the field.
    Truncated,
    /// A format code that is not valid where it appears (or not a format code at all).
    BadCode,
    /// A field holds a value the spec forbids (bad UTF-8, a bad protocol header, doff < 2...).
    BadValue,
    /// A mandatory field is null or absent.
    Missing,
    /// The declared sizes and counts disagree with each other or with the bytes present.
    SizeMismatch,
    /// Nesting deeper than [`MAX_NESTING_DEPTH`].
    TooDeep,
    /// More elements than [`MAX_ELEMENTS`], or an encoded value too long for its width.
    TooMany,
    /// A frame larger than the negotiated max-frame-size.
    FrameTooLarge,
    /// Legal in the spec but not implemented here.
    Unsupported,
}

impl ErrorKind {
    /// A short human description, for log lines and the error's description field.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorKind::Truncated => "input ends inside the field",
            ErrorKind::BadCode => "format code not allowed here",
            ErrorKind::BadValue => "value not allowed here",
            ErrorKind::Missing => "mandatory field is null or absent",
            ErrorKind::SizeMismatch => "declared sizes or counts disagree",
            ErrorKind::TooDeep => "nested deeper than MAX_NESTING_DEPTH",
            ErrorKind::TooMany => "more elements than MAX_ELEMENTS, or too long for its encoding",
            ErrorKind::FrameTooLarge => "frame larger than the negotiated max-frame-size",
            ErrorKind::Unsupported => "not supported by lior",
        }
    }
}

/// A decode or encode failure: which field, at which byte offset (from the start of the buffer
/// given to the decoder), and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecError {
    pub kind: ErrorKind,
    /// The spec's name of the field (e.g. `"transfer.delivery-tag"`).
    pub field: &'static str,
    pub offset: usize,
}

impl CodecError {
    pub const fn new(kind: ErrorKind, field: &'static str, offset: usize) -> Self {
        CodecError {
            kind,
            field,
            offset,
        }
    }

    /// The AMQP error condition a peer should receive (in close, or detach for a link-level
    /// problem) before lior drops the connection: a bad protocol header, frame header or an
    /// oversized frame is `amqp:connection:framing-error`, an unsupported feature
    /// `amqp:not-implemented`, everything else `amqp:decode-error`.
    pub fn condition(&self) -> &'static str {
        match self.kind {
            ErrorKind::FrameTooLarge => performatives::condition::FRAMING_ERROR,
            ErrorKind::Unsupported => performatives::condition::NOT_IMPLEMENTED,
            _ if self.field.starts_with("frame") || self.field.starts_with("protocol") => {
                performatives::condition::FRAMING_ERROR
            }
            _ => performatives::condition::DECODE_ERROR,
        }
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AMQP {} at offset {} (0x{:x}): {}",
            self.field,
            self.offset,
            self.offset,
            self.kind.describe()
        )
    }
}

impl std::error::Error for CodecError {}

pub type Result<T> = std::result::Result<T, CodecError>;

pub use frame::{frame_len, parse_frame, Frame, FrameHeader, FrameType, ProtocolHeader};
pub use message::Message;
pub use performatives::{AmqpError, DeliveryState, Performative};
pub use sasl::{SaslCredentials, SaslFrame};
pub use types::{Decoder, Value};
