//! The top-level packet dispatch (MS-MQQB 3.1.5.1.1): one framed packet (see [`super::frame`])
//! becomes a [`Packet`].

use super::base::{BaseHeader, PacketType, BASE_HEADER_LEN, INTERNAL_HEADER_LEN};
use super::control::{ConnectionParameters, EstablishConnection, SessionAck};
use super::frame::expect_frame_len;
use super::user::UserMessage;
use super::{ErrorKind, Reader, Result, WireError};

/// Kept at its old path, `wire::packet::frame_len`; it lives in [`super::frame`].
pub use super::frame::frame_len;

/// One parsed packet from TCP 1801.
///
/// UserMessage, the common case, is the large variant; boxing it would allocate per packet on
/// the hot path, so the size difference is accepted.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Packet<'a> {
    EstablishConnection(EstablishConnection<'a>),
    ConnectionParameters(ConnectionParameters),
    SessionAck(SessionAck),
    /// Application messages, admin acks, OrderAcks and FinalAcks: all UserMessage packets.
    User(UserMessage<'a>),
}

impl Packet<'_> {
    /// The spec's name of the packet kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Packet::EstablishConnection(_) => "EstablishConnection",
            Packet::ConnectionParameters(_) => "ConnectionParameters",
            Packet::SessionAck(_) => "SessionAck",
            Packet::User(_) => "UserMessage",
        }
    }
}

/// Parses exactly one framed packet: `frame` must be the `frame_len` bytes of it.
pub fn parse_packet(frame: &[u8]) -> Result<Packet<'_>> {
    let base = BaseHeader::parse(frame)?;
    let packet_size = expect_frame_len(frame, &base)?;
    if !base.flags.internal() {
        // The BaseHeader is parsed and checked once, here, and handed down.
        return UserMessage::parse_framed(frame, base, packet_size).map(Packet::User);
    }
    let mut r = Reader::new(frame);
    r.take(BASE_HEADER_LEN, "BaseHeader")?;
    let internal = super::base::InternalHeader::parse(&mut r)?;
    match internal.flags.packet_type() {
        PacketType::ESTABLISH_CONNECTION => {
            EstablishConnection::parse(frame).map(Packet::EstablishConnection)
        }
        PacketType::CONNECTION_PARAMETERS => {
            ConnectionParameters::parse(frame).map(Packet::ConnectionParameters)
        }
        PacketType::SESSION_ACK => SessionAck::parse(frame).map(Packet::SessionAck),
        _ => Err(WireError::new(
            ErrorKind::BadValue,
            "InternalHeader.Flags.PT",
            BASE_HEADER_LEN + INTERNAL_HEADER_LEN - 2,
        )),
    }
}
