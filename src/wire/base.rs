//! BaseHeader (MS-MQMQ 2.2.19.1) and InternalHeader (MS-MQQB 2.2.1): the first bytes of every
//! packet on TCP 1801. Plain `Copy` values: they are fixed-size, so there is nothing to borrow.

use super::{ErrorKind, Reader, Result, WireError, Writer};

pub const BASE_HEADER_LEN: usize = 16;
pub const INTERNAL_HEADER_LEN: usize = 4;
/// BaseHeader.VersionNumber.
pub const VERSION: u8 = 0x10;
/// BaseHeader.Signature: wire bytes `4C 49 4F 52` ("LIOR").
pub const SIGNATURE: u32 = 0x524F_494C;
/// Largest PacketSize the spec allows (4 MiB).
pub const MAX_PACKET_SIZE: u32 = 0x0040_0000;
/// TimeToReachQueue value meaning "infinite"; required on packets that are not UserMessages.
pub const INFINITE: u32 = 0xFFFF_FFFF;

/// BaseHeader.Flags. An open newtype: reserved bits are kept, never rejected.
///
/// ```text
/// bit  0-2 PR priority | 3 IN internal | 4 SH SessionHeader | 5 DH DebugHeader
///      6-7 reserved    | 8 TR trace    | 9-15 reserved
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct BaseFlags(pub u16);

impl BaseFlags {
    pub const PRIORITY_MASK: u16 = 0x0007;
    pub const INTERNAL: u16 = 0x0008;
    pub const SESSION: u16 = 0x0010;
    pub const DEBUG: u16 = 0x0020;
    pub const TRACE: u16 = 0x0100;

    pub fn priority(self) -> u8 {
        (self.0 & Self::PRIORITY_MASK) as u8
    }
    pub fn internal(self) -> bool {
        self.0 & Self::INTERNAL != 0
    }
    pub fn session(self) -> bool {
        self.0 & Self::SESSION != 0
    }
    pub fn debug(self) -> bool {
        self.0 & Self::DEBUG != 0
    }
    pub fn trace(self) -> bool {
        self.0 & Self::TRACE != 0
    }
    pub fn with(self, bit: u16, on: bool) -> Self {
        BaseFlags(if on { self.0 | bit } else { self.0 & !bit })
    }
    pub fn with_priority(self, p: u8) -> Self {
        BaseFlags((self.0 & !Self::PRIORITY_MASK) | (u16::from(p) & Self::PRIORITY_MASK))
    }
    /// Names of the set flags, for `lior decode`.
    pub fn names(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (bit, name) in [
            (Self::INTERNAL, "IN"),
            (Self::SESSION, "SH"),
            (Self::DEBUG, "DH"),
            (Self::TRACE, "TR"),
        ] {
            if self.0 & bit != 0 {
                v.push(name);
            }
        }
        v
    }
}

impl std::fmt::Debug for BaseFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "0x{:04X} PR={} {:?}",
            self.0,
            self.priority(),
            self.names()
        )
    }
}

/// BaseHeader, 16 bytes (MS-MQMQ 2.2.19.1).
///
/// ```text
/// 0  u8  VersionNumber (0x10)      1 u8 Reserved (any)      2 u16 Flags
/// 4  u32 Signature (0x524F494C)    8 u32 PacketSize          12 u32 TimeToReachQueue
/// ```
/// PacketSize counts the BaseHeader and all padding but not a SessionHeader piggy-backed on a
/// UserMessage (see [`super::frame::frame_len`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseHeader {
    pub reserved: u8,
    pub flags: BaseFlags,
    pub packet_size: u32,
    pub time_to_reach_queue: u32,
}

impl BaseHeader {
    /// Parses and validates version, signature and the PacketSize bounds (16..=4 MiB).
    pub fn parse(buf: &[u8]) -> Result<BaseHeader> {
        let mut r = Reader::new(buf);
        let version = r.u8("BaseHeader.VersionNumber")?;
        if version != VERSION {
            return Err(WireError::new(
                ErrorKind::BadValue,
                "BaseHeader.VersionNumber",
                0,
            ));
        }
        let reserved = r.u8("BaseHeader.Reserved")?;
        let flags = BaseFlags(r.u16("BaseHeader.Flags")?);
        if r.u32("BaseHeader.Signature")? != SIGNATURE {
            return Err(WireError::new(
                ErrorKind::BadValue,
                "BaseHeader.Signature",
                4,
            ));
        }
        let packet_size = r.u32("BaseHeader.PacketSize")?;
        if packet_size < BASE_HEADER_LEN as u32 {
            return Err(WireError::new(
                ErrorKind::SizeMismatch,
                "BaseHeader.PacketSize",
                8,
            ));
        }
        if packet_size > MAX_PACKET_SIZE {
            return Err(WireError::new(
                ErrorKind::Overflow,
                "BaseHeader.PacketSize",
                8,
            ));
        }
        let time_to_reach_queue = r.u32("BaseHeader.TimeToReachQueue")?;
        Ok(BaseHeader {
            reserved,
            flags,
            packet_size,
            time_to_reach_queue,
        })
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        w.u8(VERSION, "BaseHeader.VersionNumber")?;
        w.u8(self.reserved, "BaseHeader.Reserved")?;
        w.u16(self.flags.0, "BaseHeader.Flags")?;
        w.u32(SIGNATURE, "BaseHeader.Signature")?;
        w.u32(self.packet_size, "BaseHeader.PacketSize")?;
        w.u32(self.time_to_reach_queue, "BaseHeader.TimeToReachQueue")
    }

    /// The BaseHeader of an internal packet as Windows sends it: PR=3, IN, TTRQ infinite.
    pub fn internal(packet_size: u32, reserved: u8, session: bool) -> BaseHeader {
        BaseHeader {
            reserved,
            flags: BaseFlags(3 | BaseFlags::INTERNAL).with(BaseFlags::SESSION, session),
            packet_size,
            time_to_reach_queue: INFINITE,
        }
    }
}

/// InternalHeader.Flags PT field: which internal packet follows (MS-MQQB 2.2.1). Open enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketType(pub u8);

impl PacketType {
    pub const SESSION_ACK: PacketType = PacketType(1);
    pub const ESTABLISH_CONNECTION: PacketType = PacketType(2);
    pub const CONNECTION_PARAMETERS: PacketType = PacketType(3);

    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "SessionAck",
            2 => "EstablishConnection",
            3 => "ConnectionParameters",
            _ => "unknown",
        }
    }
}

/// InternalHeader.Flags: PT (bits 0-3), CS connection refused (bit 4), rest reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InternalFlags(pub u16);

impl InternalFlags {
    pub const PT_MASK: u16 = 0x000F;
    pub const REFUSED: u16 = 0x0010;

    pub fn packet_type(self) -> PacketType {
        PacketType((self.0 & Self::PT_MASK) as u8)
    }
    pub fn refused(self) -> bool {
        self.0 & Self::REFUSED != 0
    }
    pub fn new(pt: PacketType, refused: bool) -> Self {
        InternalFlags(u16::from(pt.0) & Self::PT_MASK | if refused { Self::REFUSED } else { 0 })
    }
}

/// InternalHeader, 4 bytes (MS-MQQB 2.2.1): `0 u16 Reserved | 2 u16 Flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InternalHeader {
    pub reserved: u16,
    pub flags: InternalFlags,
}

impl InternalHeader {
    pub fn parse(r: &mut Reader<'_>) -> Result<InternalHeader> {
        let reserved = r.u16("InternalHeader.Reserved")?;
        let flags = InternalFlags(r.u16("InternalHeader.Flags")?);
        Ok(InternalHeader { reserved, flags })
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        w.u16(self.reserved, "InternalHeader.Reserved")?;
        w.u16(self.flags.0, "InternalHeader.Flags")
    }

    pub fn new(pt: PacketType, refused: bool) -> Self {
        InternalHeader {
            reserved: 0,
            flags: InternalFlags::new(pt, refused),
        }
    }
}
