//! Stream framing (DIGEST §1.1): how many bytes of the TCP stream one packet occupies, read
//! from its BaseHeader (MS-MQMQ 2.2.19.1). PacketSize does not count a SessionHeader
//! piggy-backed on a UserMessage (MS-MQMQ 2.2.20.4), so the frame is PacketSize plus 16 then.

use super::base::{BaseHeader, BASE_HEADER_LEN};
use super::control::SESSION_HEADER_LEN;
use super::{ErrorKind, Result, WireError};

/// The bytes the packet that `base` starts occupies on the stream: PacketSize, plus a
/// SessionHeader piggy-backed on a UserMessage. `BaseHeader::parse` bounds PacketSize to
/// 4 MiB, so the sum cannot overflow.
fn framed_len(base: &BaseHeader) -> usize {
    let trailer = if !base.flags.internal() && base.flags.session() {
        SESSION_HEADER_LEN
    } else {
        0
    };
    base.packet_size as usize + trailer
}

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
    Ok(Some(framed_len(&base)))
}

/// Checks that `frame` holds exactly the bytes `base` announces: PacketSize, plus a
/// SessionHeader piggy-backed on a UserMessage. Returns PacketSize.
pub(crate) fn expect_frame_len(frame: &[u8], base: &BaseHeader) -> Result<usize> {
    let want = framed_len(base);
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
    Ok(base.packet_size as usize)
}
