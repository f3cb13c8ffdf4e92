//! Stream framing (DIGEST §1.1) and the top-level packet dispatch (MS-MQQB 3.1.5.1.1).

use super::base::{BaseHeader, PacketType, BASE_HEADER_LEN, INTERNAL_HEADER_LEN};
use super::control::{ConnectionParameters, EstablishConnection, SessionAck, SESSION_HEADER_LEN};
use super::user::UserMessage;
use super::{ErrorKind, Reader, Result, WireError};

/// How many bytes the packet at the start of `buf` occupies on the stream, including a
/// SessionHeader piggy-backed on a UserMessage (not counted in PacketSize, MS-MQMQ 2.2.19.1).
///
/// Returns `Ok(None)` while fewer than 16 bytes are available. Validates the version,
/// signature and PacketSize bounds, so a hostile length is refused before any buffering.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>> {
    if buf.len() < BASE_HEADER_LEN {
        return Ok(None);
    }
    let base = BaseHeader::parse(&buf[..BASE_HEADER_LEN])?;
    let mut len = base.packet_size as usize;
    if !base.flags.internal() && base.flags.session() {
        len += SESSION_HEADER_LEN;
    }
    Ok(Some(len))
}

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

/// Checks that `frame` holds exactly the bytes `base` announces: PacketSize, plus a
/// SessionHeader piggy-backed on a UserMessage. Returns PacketSize.
pub(crate) fn expect_frame_len(frame: &[u8], base: &BaseHeader) -> Result<usize> {
    let packet_size = base.packet_size as usize;
    let trailer = if !base.flags.internal() && base.flags.session() {
        SESSION_HEADER_LEN
    } else {
        0
    };
    // BaseHeader::parse bounds PacketSize to 4 MiB, so this sum cannot overflow.
    let want = packet_size + trailer;
    if frame.len() < want {
        return Err(WireError::new(
            ErrorKind::Truncated,
            "BaseHeader.PacketSize",
            frame.len(),
        ));
    }
    if frame.len() > want {
        return Err(WireError::new(
            ErrorKind::SizeMismatch,
            "BaseHeader.PacketSize",
            8,
        ));
    }
    Ok(packet_size)
}

/// Parses exactly one framed packet: `frame` must be the `frame_len` bytes of it.
pub fn parse_packet(frame: &[u8]) -> Result<Packet<'_>> {
    let base = BaseHeader::parse(frame)?;
    expect_frame_len(frame, &base)?;
    if !base.flags.internal() {
        return UserMessage::parse(frame).map(Packet::User);
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
