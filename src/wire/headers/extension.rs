//! The MQRR ExtensionHeader (MS-MQRR 2.2.5.2; DIGEST §5.10-§5.11) as it follows the SRMP
//! sections of a UserMessage with UserHeader.Flags.AH.
//!
//! MS-MQRR defines it for remote-read replies, where it announces a SubqueueHeader, a
//! DeadLetterHeader and an ExtendedAddressHeader after it. Windows' port-1801 parser also
//! accepts it, inside PacketSize, after the CompoundMessageHeader of an AH message (the
//! CVE-2023-21554 "QueueJumper" packet carries `{HeaderSize 12, RemainingHeadersSize 0,
//! Flags 0}`), so lior accepts exactly that: a 12-byte header with nothing after it. Every
//! other size is refused naming the field; no length from it is ever added unchecked.

use super::bad;
use crate::wire::{ErrorKind, Reader, Result, Writer};

/// ExtensionHeader.Flags (u8). Open newtype: the unused bits are kept as they came.
///
/// ```text
/// bit 0 DL (DeadLetterHeader follows) | 1 SQ (SubqueueHeader follows) | 2 X2 | 3 DI (dead-letter
/// queue invalid) | 4 EA (ExtendedAddressHeader follows) | 5-7 X5-X7
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct ExtensionFlags(pub u8);

impl ExtensionFlags {
    pub const DL: u8 = 0x01;
    pub const SQ: u8 = 0x02;
    pub const DI: u8 = 0x08;
    pub const EA: u8 = 0x10;
    /// The bits that announce a header after the ExtensionHeader.
    pub const PRESENCE_MASK: u8 = Self::DL | Self::SQ | Self::EA;

    /// The names of the set DL/SQ/DI/EA bits, for `lior decode`.
    pub fn names(self) -> Vec<&'static str> {
        [
            (Self::DL, "DL"),
            (Self::SQ, "SQ"),
            (Self::DI, "DI"),
            (Self::EA, "EA"),
        ]
        .into_iter()
        .filter(|&(bit, _)| self.0 & bit != 0)
        .map(|(_, name)| name)
        .collect()
    }

    /// True when a bit announces a header after this one.
    pub fn announces_headers(self) -> bool {
        self.0 & Self::PRESENCE_MASK != 0
    }
}

/// ExtensionHeader (MS-MQRR 2.2.5.2), 12 bytes.
///
/// ```text
/// 0 u32 HeaderSize (12)   4 u32 RemainingHeadersSize (0)   8 u8 Flags   9 [3] Reserved
/// ```
/// A parsed value always has HeaderSize 12 and RemainingHeadersSize 0 (the only shape accepted
/// on 1801); the fields are kept so that `lior decode` shows what came, and the encoder refuses
/// any other value, so `parse(encode(x)) == x` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtensionHeader {
    pub header_size: u32,
    pub remaining_headers_size: u32,
    pub flags: ExtensionFlags,
    /// Sent as zero by the QueueJumper packet; "MUST be ignored" on receipt, so kept as is.
    pub reserved: [u8; 3],
}

impl Default for ExtensionHeader {
    fn default() -> Self {
        ExtensionHeader {
            header_size: Self::LEN as u32,
            remaining_headers_size: 0,
            flags: ExtensionFlags(0),
            reserved: [0; 3],
        }
    }
}

impl ExtensionHeader {
    /// The header's size on the wire, and the only HeaderSize accepted.
    pub const LEN: usize = 12;

    /// Parses the header at the reader's position. `r` must end where PacketSize does: the
    /// sizes are checked against what is left of the packet.
    ///
    /// Refusals, each naming the field at its offset: HeaderSize below 12 (`BadValue`), past
    /// the end of the packet (`Overflow`) or above 12 within it (`Unsupported`: no longer
    /// layout is defined); RemainingHeadersSize past the end of the packet (`Overflow`) or
    /// non-zero within it (`Unsupported`: the remote-read headers never come on 1801); Flags
    /// DL/SQ/EA announcing a header that RemainingHeadersSize 0 says is absent (`BadValue`).
    /// A header cut short is `Truncated` at the first missing field. Bytes after the header
    /// are the caller's to refuse (see `UserMessage::parse`).
    pub fn parse(r: &mut Reader<'_>) -> Result<Self> {
        let size_at = r.abs();
        let header_size = r.u32("ExtensionHeader.HeaderSize")?;
        let remaining_at = r.abs();
        let remaining_headers_size = r.u32("ExtensionHeader.RemainingHeadersSize")?;
        let flags_at = r.abs();
        let flags = ExtensionFlags(r.u8("ExtensionHeader.Flags")?);
        let reserved = r.array::<3>("ExtensionHeader.Reserved")?;

        // Compared, never added: `size_at + HeaderSize` is the sum that must not overflow.
        let left = r.remaining();
        match (header_size as usize).checked_sub(Self::LEN) {
            None => {
                return Err(bad(
                    ErrorKind::BadValue,
                    "ExtensionHeader.HeaderSize",
                    size_at,
                ))
            }
            Some(0) => {}
            Some(extra) if extra > left => {
                return Err(bad(
                    ErrorKind::Overflow,
                    "ExtensionHeader.HeaderSize",
                    size_at,
                ))
            }
            Some(_) => {
                return Err(bad(
                    ErrorKind::Unsupported,
                    "ExtensionHeader.HeaderSize",
                    size_at,
                ))
            }
        }
        if remaining_headers_size as usize > left {
            return Err(bad(
                ErrorKind::Overflow,
                "ExtensionHeader.RemainingHeadersSize",
                remaining_at,
            ));
        }
        if remaining_headers_size != 0 {
            return Err(bad(
                ErrorKind::Unsupported,
                "ExtensionHeader.RemainingHeadersSize",
                remaining_at,
            ));
        }
        if flags.announces_headers() {
            return Err(bad(ErrorKind::BadValue, "ExtensionHeader.Flags", flags_at));
        }
        Ok(ExtensionHeader {
            header_size,
            remaining_headers_size,
            flags,
            reserved,
        })
    }

    pub fn encoded_len(&self) -> usize {
        Self::LEN
    }

    /// Writes the header; refuses (at the field) any value [`Self::parse`] would refuse.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        let at = w.pos();
        if self.header_size as usize != Self::LEN {
            return Err(bad(ErrorKind::BadValue, "ExtensionHeader.HeaderSize", at));
        }
        if self.remaining_headers_size != 0 {
            return Err(bad(
                ErrorKind::Unsupported,
                "ExtensionHeader.RemainingHeadersSize",
                at + 4,
            ));
        }
        if self.flags.announces_headers() {
            return Err(bad(ErrorKind::BadValue, "ExtensionHeader.Flags", at + 8));
        }
        w.u32(self.header_size, "ExtensionHeader.HeaderSize")?;
        w.u32(
            self.remaining_headers_size,
            "ExtensionHeader.RemainingHeadersSize",
        )?;
        w.u8(self.flags.0, "ExtensionHeader.Flags")?;
        w.put(&self.reserved, "ExtensionHeader.Reserved")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(hs: u32, rem: u32, flags: u8, after: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&hs.to_le_bytes());
        v.extend_from_slice(&rem.to_le_bytes());
        v.extend_from_slice(&[flags, 7, 8, 9]);
        v.resize(v.len() + after, 0);
        v
    }

    fn parse(b: &[u8]) -> Result<ExtensionHeader> {
        ExtensionHeader::parse(&mut Reader::with_base(b, 100))
    }

    #[test]
    fn the_queue_jumper_shape_round_trips() {
        let b = bytes(12, 0, 0x04, 0);
        let h = parse(&b).unwrap();
        assert_eq!(h.reserved, [7, 8, 9]);
        assert!(h.flags.names().is_empty());
        assert_eq!(ExtensionFlags(0x08).names(), ["DI"]);
        let mut out = [0u8; 12];
        let mut w = Writer::new(&mut out);
        h.encode(&mut w).unwrap();
        assert_eq!(&out[..], &b[..]);
    }

    #[test]
    fn sizes_are_compared_without_overflow() {
        let e = parse(&bytes(u32::MAX, 0, 0, 0)).unwrap_err();
        assert_eq!(
            (e.kind, e.field, e.offset),
            (ErrorKind::Overflow, "ExtensionHeader.HeaderSize", 100)
        );
        let e = parse(&bytes(12, u32::MAX, 0, 3)).unwrap_err();
        assert_eq!(
            (e.kind, e.field, e.offset),
            (
                ErrorKind::Overflow,
                "ExtensionHeader.RemainingHeadersSize",
                104
            )
        );
        let e = parse(&bytes(12, 3, 0, 3)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
        let e = parse(&bytes(11, 0, 0, 3)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadValue);
        let e = parse(&bytes(12, 0, 0, 0)[..9]).unwrap_err();
        assert_eq!(
            (e.kind, e.field),
            (ErrorKind::Truncated, "ExtensionHeader.Reserved")
        );
    }
}
