//! Protocol headers and frames (OASIS AMQP 1.0 Part 2 §2.2 version negotiation, §2.3 framing;
//! Part 5 §5.3.1 SASL frames).
//!
//! A connection starts with an 8-byte protocol header from each side: `AMQP 0 1 0 0` for AMQP,
//! `AMQP 3 1 0 0` for a SASL layer first (`AMQP 2 1 0 0` asks for TLS, which lior does not
//! offer). Then come frames:
//!
//! ```text
//! 0   u32 SIZE   the whole frame, header included (>= 8)
//! 4   u8  DOFF   where the body starts, in 4-byte words (>= 2)
//! 5   u8  TYPE   0x00 AMQP, 0x01 SASL
//! 6   u16 channel (AMQP; ignored for SASL)
//! 8   extended header (DOFF*4 - 8 bytes, ignored), then the body
//! ```
//!
//! An AMQP frame with an empty body is a keep-alive (§2.4.5). A frame larger than the
//! max-frame-size the receiver announced is a framing error; before open is exchanged the
//! limit is [`MIN_MAX_FRAME_SIZE`].

use super::performatives::Performative;
use super::sasl::SaslFrame;
use super::{CodecError, ErrorKind, Result, MIN_MAX_FRAME_SIZE};

pub const PROTOCOL_HEADER_LEN: usize = 8;
/// `AMQP 0 1 0 0`: the AMQP protocol, version 1.0.0 (§2.2).
pub const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";
/// `AMQP 3 1 0 0`: a SASL layer first (Part 5 §5.3.1).
pub const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
/// `AMQP 2 1 0 0`: a TLS layer first (Part 5 §5.2.1).
pub const TLS_HEADER: [u8; 8] = *b"AMQP\x02\x01\x00\x00";

pub const FRAME_HEADER_LEN: usize = 8;
/// The empty AMQP frame on channel 0, sent as a heartbeat (§2.4.5).
pub const EMPTY_FRAME: [u8; 8] = [0, 0, 0, 8, 2, 0, 0, 0];

/// Protocol ids of the header's fifth byte.
pub mod protocol_id {
    pub const AMQP: u8 = 0;
    pub const TLS: u8 = 2;
    pub const SASL: u8 = 3;
}

/// A received protocol header (§2.2): `AMQP`, protocol id, major, minor, revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolHeader {
    pub protocol_id: u8,
    pub major: u8,
    pub minor: u8,
    pub revision: u8,
}

impl ProtocolHeader {
    pub const AMQP: ProtocolHeader = ProtocolHeader {
        protocol_id: protocol_id::AMQP,
        major: 1,
        minor: 0,
        revision: 0,
    };
    pub const SASL: ProtocolHeader = ProtocolHeader {
        protocol_id: protocol_id::SASL,
        major: 1,
        minor: 0,
        revision: 0,
    };

    /// Parses the first 8 bytes of a connection. `Ok(None)` when fewer have arrived. Anything
    /// that does not start with `AMQP` is an error (`protocol header`, offset 0): the spec
    /// (§2.2) says to answer with our own header and close.
    pub fn parse(buf: &[u8]) -> Result<Option<ProtocolHeader>> {
        let Some(h) = buf.get(..PROTOCOL_HEADER_LEN) else {
            // Fail early on a prefix that can never become "AMQP".
            let n = buf.len().min(4);
            if buf[..n] != b"AMQP"[..n] {
                return Err(CodecError::new(ErrorKind::BadValue, "protocol header", 0));
            }
            return Ok(None);
        };
        if &h[..4] != b"AMQP" {
            return Err(CodecError::new(ErrorKind::BadValue, "protocol header", 0));
        }
        Ok(Some(ProtocolHeader {
            protocol_id: h[4],
            major: h[5],
            minor: h[6],
            revision: h[7],
        }))
    }

    /// Whether this is exactly version 1.0.0 (the only version lior speaks).
    pub fn is_1_0_0(&self) -> bool {
        self.major == 1 && self.minor == 0 && self.revision == 0
    }

    pub fn to_bytes(&self) -> [u8; 8] {
        [
            b'A',
            b'M',
            b'Q',
            b'P',
            self.protocol_id,
            self.major,
            self.minor,
            self.revision,
        ]
    }
}

/// Frame types (§2.3.1; Part 5 §5.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameType {
    Amqp = 0,
    Sasl = 1,
}

/// The fixed 8-byte frame header (§2.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub size: u32,
    pub doff: u8,
    pub frame_type: FrameType,
    pub channel: u16,
}

impl FrameHeader {
    /// Parses and checks a frame header: SIZE >= 8 and <= `max_frame_size`, DOFF >= 2 and
    /// within SIZE, TYPE AMQP or SASL.
    pub fn parse(buf: &[u8], max_frame_size: u32) -> Result<FrameHeader> {
        let h = buf.get(..FRAME_HEADER_LEN).ok_or(CodecError::new(
            ErrorKind::Truncated,
            "frame header",
            0,
        ))?;
        let size = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let doff = h[4];
        if size < FRAME_HEADER_LEN as u32 {
            return Err(CodecError::new(ErrorKind::SizeMismatch, "frame.SIZE", 0));
        }
        if size > max_frame_size {
            return Err(CodecError::new(ErrorKind::FrameTooLarge, "frame.SIZE", 0));
        }
        if doff < 2 {
            return Err(CodecError::new(ErrorKind::BadValue, "frame.DOFF", 4));
        }
        if u32::from(doff) * 4 > size {
            return Err(CodecError::new(ErrorKind::SizeMismatch, "frame.DOFF", 4));
        }
        let frame_type = match h[5] {
            0 => FrameType::Amqp,
            1 => FrameType::Sasl,
            _ => return Err(CodecError::new(ErrorKind::BadValue, "frame.TYPE", 5)),
        };
        Ok(FrameHeader {
            size,
            doff,
            frame_type,
            channel: u16::from_be_bytes([h[6], h[7]]),
        })
    }
}

/// For a stream framer: the length of the frame at the front of `buf`, `Ok(None)` when its
/// header has not all arrived, an error when the header is bad or the frame exceeds
/// `max_frame_size` (the value lior announced in open, or [`MIN_MAX_FRAME_SIZE`] before).
pub fn frame_len(buf: &[u8], max_frame_size: u32) -> Result<Option<usize>> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let h = FrameHeader::parse(buf, max_frame_size)?;
    Ok(Some(h.size as usize))
}

/// One frame, borrowed: its header, extended header and body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    /// The extended header (ignored by AMQP 1.0 peers, kept for completeness).
    pub extended: &'a [u8],
    pub body: &'a [u8],
}

/// Parses exactly one frame (`buf.len()` must equal its SIZE, as [`frame_len`] gave).
pub fn parse_frame(buf: &[u8], max_frame_size: u32) -> Result<Frame<'_>> {
    let header = FrameHeader::parse(buf, max_frame_size)?;
    if buf.len() != header.size as usize {
        return Err(CodecError::new(
            if buf.len() < header.size as usize {
                ErrorKind::Truncated
            } else {
                ErrorKind::SizeMismatch
            },
            "frame.SIZE",
            0,
        ));
    }
    let doff = usize::from(header.doff) * 4;
    Ok(Frame {
        header,
        extended: &buf[FRAME_HEADER_LEN..doff],
        body: &buf[doff..],
    })
}

impl<'a> Frame<'a> {
    /// Offset of the body in the frame, for error offsets.
    pub fn body_offset(&self) -> usize {
        usize::from(self.header.doff) * 4
    }

    /// Decodes an AMQP frame's body: `None` for an empty (keep-alive) frame, else the
    /// performative and the bytes after it (a transfer's payload; empty for the others).
    /// Error offsets count from the start of the frame.
    pub fn performative(&self) -> Result<Option<(Performative<'a>, &'a [u8])>> {
        if self.header.frame_type != FrameType::Amqp {
            return Err(CodecError::new(ErrorKind::BadValue, "frame.TYPE", 5));
        }
        if self.body.is_empty() {
            return Ok(None);
        }
        Performative::decode_at(self.body, self.body_offset()).map(Some)
    }

    /// Decodes a SASL frame's body.
    pub fn sasl(&self) -> Result<SaslFrame<'a>> {
        if self.header.frame_type != FrameType::Sasl {
            return Err(CodecError::new(ErrorKind::BadValue, "frame.TYPE", 5));
        }
        SaslFrame::decode_at(self.body, self.body_offset())
    }
}

/// Starts a frame in `out` (header with DOFF 2, SIZE patched by [`finish_frame`]); returns
/// where it starts.
pub fn begin_frame(out: &mut Vec<u8>, frame_type: FrameType, channel: u16) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, 2, frame_type as u8]);
    out.extend_from_slice(&channel.to_be_bytes());
    start
}

/// Patches the SIZE of the frame begun at `start`; refuses a frame larger than the peer's
/// `max_frame_size` (the caller splits transfers to fit, see
/// [`Transfer::encode_frame`](super::performatives::Transfer)).
pub fn finish_frame(out: &mut [u8], start: usize, max_frame_size: u32) -> Result<usize> {
    if start.saturating_add(FRAME_HEADER_LEN) > out.len() {
        return Err(CodecError::new(ErrorKind::Truncated, "frame header", start));
    }
    let len = out.len() - start;
    let size = u32::try_from(len)
        .ok()
        .filter(|&s| s <= max_frame_size)
        .ok_or(CodecError::new(
            ErrorKind::FrameTooLarge,
            "frame.SIZE",
            start,
        ))?;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(len)
}

/// Encodes one AMQP frame carrying `perf` (and `payload`, for a transfer) on `channel`.
/// Returns the frame's length.
pub fn encode_amqp_frame(
    out: &mut Vec<u8>,
    channel: u16,
    perf: &Performative<'_>,
    payload: &[u8],
    max_frame_size: u32,
) -> Result<usize> {
    let start = begin_frame(out, FrameType::Amqp, channel);
    let r = perf.encode(out).and_then(|()| {
        out.extend_from_slice(payload);
        finish_frame(out, start, max_frame_size)
    });
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// Encodes one SASL frame. Returns the frame's length. SASL frames must fit in
/// [`MIN_MAX_FRAME_SIZE`] (Part 5 §5.3.1).
pub fn encode_sasl_frame(out: &mut Vec<u8>, frame: &SaslFrame<'_>) -> Result<usize> {
    let start = begin_frame(out, FrameType::Sasl, 0);
    let r = frame
        .encode(out)
        .and_then(|()| finish_frame(out, start, MIN_MAX_FRAME_SIZE));
    if r.is_err() {
        out.truncate(start);
    }
    r
}
