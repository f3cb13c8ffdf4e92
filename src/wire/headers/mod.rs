//! The headers of a UserMessage after its UserHeader (MS-MQMQ 2.2.19.3, 2.2.20.x), one file
//! per header: `transaction` (TransactionHeader), `security` (SecurityHeader),
//! `properties` (MessagePropertiesHeader, with `message_class`), `debug` (DebugHeader),
//! `soap` (SoapHeader), `mqf` (MultiQueueFormatHeader), `srmp` (the SRMP sections of
//! a message that came over HTTP) and `extension` (the MQRR ExtensionHeader that may follow
//! them). The SessionHeader (2.2.20.4) lives in `wire::control`.
//! Callers name every type through this module (`wire::headers::X`).
//!
//! Every view here borrows from the packet and is validated once by `parse`; accessors are
//! infallible afterwards. Parsers read exactly the header's own bytes (including the padding
//! *inside* the header) and leave the padding *before the next header* to the caller, which
//! knows whether another header follows (see `UserMessage::parse`). Encoders write into a
//! [`Writer`](super::Writer) over the whole packet, so alignment is measured from the packet
//! start, and they refuse any value the parser would refuse, so `parse(encode(x)) == x` always
//! holds.
//!
//! This module must not allocate while parsing, panic on any input, or use `unsafe`.

mod debug;
mod extension;
mod message_class;
mod mqf;
mod properties;
mod security;
mod soap;
mod srmp;
mod transaction;

pub use debug::DebugHeader;
pub use extension::{ExtensionFlags, ExtensionHeader};
pub use message_class::MessageClass;
pub use mqf::{MqfAddressHeader, MqfElement, MqfElements, MultiQueueFormatHeader};
pub use properties::{body_type, AckFlags, Calg, MessagePropertiesHeader, PrivacyLevel};
pub use security::{SecurityFlags, SecurityHeader, SenderIdType, Sid};
pub use soap::SoapHeader;
pub use srmp::{CompoundMessageHeader, SrmpEnvelopeHeader};
pub use transaction::{TransactionHeader, TxFlags};

use super::{ErrorKind, Result, WireError};

fn bad(kind: ErrorKind, field: &'static str, offset: usize) -> WireError {
    WireError::new(kind, field, offset)
}

/// Converts a length to a u32 wire field, refusing lengths that do not fit.
fn len_u32(n: usize, field: &'static str, at: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| bad(ErrorKind::Overflow, field, at))
}

/// Converts a length to a u16 wire field, refusing lengths that do not fit.
fn len_u16(n: usize, field: &'static str, at: usize) -> Result<u16> {
    u16::try_from(n).map_err(|_| bad(ErrorKind::Overflow, field, at))
}
