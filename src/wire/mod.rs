//! Zero-copy views and encoders for every MS-MQQB / MS-MQMQ packet and header, and format names.
//!
//! This module does no IO, never panics on any input, and does not allocate while parsing.
//! A view wraps `&[u8]`, is validated once when parsed, and has infallible accessors after that.
//! Every length and offset from the wire goes through checked arithmetic ([`Reader`]); a bad
//! packet is a [`WireError`] that names the field and the offset where parsing stopped.
//!
//! Encoders write into a caller's buffer through [`Writer`] and return the length written.

pub mod base;
pub mod control;
pub mod format_name;
pub mod frame;
pub mod headers;
pub mod packet;
pub mod user;

use std::fmt;

pub use base::{BaseFlags, BaseHeader, InternalFlags, InternalHeader, PacketType};
pub use control::{ConnectionParameters, EstablishConnection, Ping, SessionAck, SessionHeader};
pub use frame::frame_len;
pub use packet::{parse_packet, Packet};

/// What went wrong while parsing or encoding. Small and `Copy`: it is the hot-path error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input ends before the field does.
    Truncated,
    /// A fixed field holds a value the spec forbids (signature, version, packet type...).
    BadValue,
    /// A length or offset does not fit, or arithmetic on it would overflow.
    Overflow,
    /// The sizes declared by the headers disagree with each other or with PacketSize.
    SizeMismatch,
    /// The value is legal in the spec but this implementation does not accept it.
    Unsupported,
    /// An encoder's output buffer is too small.
    BufferTooSmall,
}

impl ErrorKind {
    /// A short human description, used in log lines and `lior decode` output.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorKind::Truncated => "input ends inside the field",
            ErrorKind::BadValue => "value not allowed here",
            ErrorKind::Overflow => "length or offset overflows",
            ErrorKind::SizeMismatch => "declared sizes disagree",
            ErrorKind::Unsupported => "not supported",
            ErrorKind::BufferTooSmall => "output buffer too small",
        }
    }
}

/// A parse or encode failure: which field, at which byte offset of the packet, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError {
    pub kind: ErrorKind,
    /// The spec's name of the field (e.g. `"BaseHeader.PacketSize"`).
    pub field: &'static str,
    /// Offset from the start of the packet (or of the buffer given to the parser).
    pub offset: usize,
}

impl WireError {
    pub const fn new(kind: ErrorKind, field: &'static str, offset: usize) -> Self {
        WireError {
            kind,
            field,
            offset,
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {} (0x{:x}): {}",
            self.field,
            self.offset,
            self.offset,
            self.kind.describe()
        )
    }
}

impl std::error::Error for WireError {}

pub type Result<T> = std::result::Result<T, WireError>;

/// Rounds `n` up to a multiple of 4 (the MS-MQMQ header alignment rule), or `None` on overflow.
#[inline]
pub const fn align4(n: usize) -> Option<usize> {
    match n.checked_add(3) {
        Some(v) => Some(v & !3),
        None => None,
    }
}

/// Length of `n` bytes rounded up to 4; saturates instead of overflowing, since the callers
/// only size buffers with it and the encoders re-check every length anyway.
#[inline]
pub(crate) fn pad4(n: usize) -> usize {
    align4(n).unwrap_or(usize::MAX)
}

/// A GUID in the MS-DTYP packet form (Data1 u32 LE, Data2 u16 LE, Data3 u16 LE, Data4 8 bytes).
///
/// Compared as raw bytes; only the text rendering needs the mixed-endian reading.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const NULL: Guid = Guid([0; 16]);

    pub fn is_null(&self) -> bool {
        self.0 == [0; 16]
    }

    /// A fresh random (version 4) GUID.
    pub fn new_random() -> Guid {
        Guid::from_uuid(uuid::Uuid::new_v4())
    }

    /// Converts from the canonical (big-endian text order) UUID to the wire form.
    pub fn from_uuid(u: uuid::Uuid) -> Guid {
        Guid(u.to_bytes_le())
    }

    /// The canonical UUID whose text matches how Windows prints this GUID.
    pub fn to_uuid(self) -> uuid::Uuid {
        uuid::Uuid::from_bytes_le(self.0)
    }

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, with or without braces, any case.
    pub fn parse_text(s: &str) -> Option<Guid> {
        let s = s.trim();
        let s = s
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(s);
        if s.len() != 36 {
            return None;
        }
        uuid::Uuid::parse_str(s).ok().map(Guid::from_uuid)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{{}}}",
            self.to_uuid().hyphenated().to_string().to_uppercase()
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A bounds-checked cursor over an input buffer. Every read checks its range with arithmetic
/// that cannot overflow, and failures name the field and the absolute offset.
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Added to `pos` in error offsets, so sub-readers report offsets within the whole packet.
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            base: 0,
        }
    }

    /// A reader whose error offsets are reported relative to a larger packet.
    pub fn with_base(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    /// Current position relative to the start of this reader's buffer.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Absolute offset (for error messages).
    pub fn abs(&self) -> usize {
        self.base.saturating_add(self.pos)
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn err(&self, kind: ErrorKind, field: &'static str) -> WireError {
        WireError::new(kind, field, self.abs())
    }

    /// Takes `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| self.err(ErrorKind::Overflow, field))?;
        if end > self.buf.len() {
            return Err(self.err(ErrorKind::Truncated, field));
        }
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    pub fn guid(&mut self, field: &'static str) -> Result<Guid> {
        Ok(Guid(self.array(field)?))
    }

    /// Skips padding up to the next multiple of 4, measured from the start of the packet
    /// (`base + pos`). Padding contents are never validated: Windows sends uninitialised memory.
    pub fn align4(&mut self, field: &'static str) -> Result<()> {
        let abs = self.abs();
        let target = align4(abs).ok_or_else(|| self.err(ErrorKind::Overflow, field))?;
        self.take(target - abs, field).map(|_| ())
    }

    /// Skips padding up to the next multiple of 2 (direct names in MQF lists).
    pub fn align2(&mut self, field: &'static str) -> Result<()> {
        if self.abs() % 2 == 1 {
            self.take(1, field)?;
        }
        Ok(())
    }
}

/// A bounds-checked writer into a caller-owned buffer.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn put(&mut self, bytes: &[u8], field: &'static str) -> Result<()> {
        let end = self
            .pos
            .checked_add(bytes.len())
            .filter(|&e| e <= self.buf.len())
            .ok_or(WireError::new(ErrorKind::BufferTooSmall, field, self.pos))?;
        self.buf[self.pos..end].copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    pub fn u8(&mut self, v: u8, field: &'static str) -> Result<()> {
        self.put(&[v], field)
    }

    pub fn u16(&mut self, v: u16, field: &'static str) -> Result<()> {
        self.put(&v.to_le_bytes(), field)
    }

    pub fn u32(&mut self, v: u32, field: &'static str) -> Result<()> {
        self.put(&v.to_le_bytes(), field)
    }

    pub fn u64(&mut self, v: u64, field: &'static str) -> Result<()> {
        self.put(&v.to_le_bytes(), field)
    }

    pub fn guid(&mut self, g: &Guid, field: &'static str) -> Result<()> {
        self.put(&g.0, field)
    }

    /// Writes `n` copies of `byte`.
    pub fn fill(&mut self, byte: u8, n: usize, field: &'static str) -> Result<()> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(WireError::new(ErrorKind::BufferTooSmall, field, self.pos))?;
        self.buf[self.pos..end].fill(byte);
        self.pos = end;
        Ok(())
    }

    /// Zero padding up to the next multiple of 4 from the start of the buffer (= the packet).
    pub fn align4(&mut self, field: &'static str) -> Result<()> {
        let target =
            align4(self.pos).ok_or(WireError::new(ErrorKind::Overflow, field, self.pos))?;
        self.fill(0, target - self.pos, field)
    }

    /// Zero padding up to the next multiple of 2.
    pub fn align2(&mut self, field: &'static str) -> Result<()> {
        if self.pos % 2 == 1 {
            self.u8(0, field)?;
        }
        Ok(())
    }

    /// Overwrites a u32 at an earlier position (used to patch PacketSize).
    pub fn patch_u32(&mut self, at: usize, v: u32, field: &'static str) -> Result<()> {
        let end = at
            .checked_add(4)
            .filter(|&e| e <= self.pos)
            .ok_or(WireError::new(ErrorKind::BufferTooSmall, field, at))?;
        self.buf[at..end].copy_from_slice(&v.to_le_bytes());
        Ok(())
    }
}

/// A UTF-16LE string as it sits on the wire (raw bytes, even length), borrowed from the packet.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Utf16<'a>(pub &'a [u8]);

impl<'a> Utf16<'a> {
    /// The code units, including any terminating NUL that is in the slice.
    pub fn units(&self) -> impl Iterator<Item = u16> + 'a {
        self.0
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    }

    /// Decodes to a Rust string, stopping at the first NUL; invalid surrogates become U+FFFD.
    pub fn to_string_lossy(&self) -> String {
        char::decode_utf16(self.units().take_while(|&u| u != 0))
            .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    }

    /// Byte length on the wire.
    pub fn byte_len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for Utf16<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string_lossy())
    }
}

/// Encodes a Rust string as UTF-16LE bytes with a terminating NUL (allocates: for building
/// packets at the edges, not for the hot path, which reuses stored bytes).
pub fn utf16z(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity((s.len() + 1) * 2);
    for u in s.encode_utf16() {
        v.extend_from_slice(&u.to_le_bytes());
    }
    v.extend_from_slice(&[0, 0]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_matches_windows_rendering() {
        let g = Guid([
            0xD1, 0x58, 0x73, 0x55, 0x50, 0x91, 0x95, 0x95, 0x49, 0x97, 0xB6, 0xE6, 0x11, 0xEA,
            0x26, 0xC6,
        ]);
        assert_eq!(g.to_string(), "{557358D1-9150-9595-4997-B6E611EA26C6}");
        assert_eq!(
            Guid::parse_text("{557358d1-9150-9595-4997-b6e611ea26c6}"),
            Some(g)
        );
        assert_eq!(
            Guid::parse_text("557358D1-9150-9595-4997-B6E611EA26C6"),
            Some(g)
        );
        assert_eq!(Guid::parse_text("557358D1"), None);
    }

    #[test]
    fn reader_reports_absolute_offsets_and_never_overflows() {
        let data = [1u8, 2, 3];
        let mut r = Reader::with_base(&data, 100);
        assert_eq!(r.u16("a").unwrap(), 0x0201);
        let e = r.u32("b").unwrap_err();
        assert_eq!(
            (e.kind, e.field, e.offset),
            (ErrorKind::Truncated, "b", 102)
        );
        let e = r.take(usize::MAX, "c").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overflow);
    }

    #[test]
    fn utf16_round_trip() {
        let b = utf16z("mqsender label");
        assert_eq!(b.len(), 30);
        assert_eq!(Utf16(&b).to_string_lossy(), "mqsender label");
    }
}
