//! The UserMessage packet (MS-MQMQ 2.2.20) and its UserHeader (2.2.19.2) with queue encodings.
//! STUB: the public names below are the agreed API; the parser and encoder are being written.

use super::base::BaseHeader;
use super::control::SessionHeader;
use super::{ErrorKind, Guid, Result, Utf16, WireError};

/// A queue reference as encoded in UserHeader DQ/AQ/RQ (MS-MQMQ 2.2.19.2, DIGEST §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRef<'a> {
    /// Code 0: absent.
    None,
    /// Code 1 (RQ only): the response queue is the admin queue.
    SameAsAdmin,
    /// Code 2: private queue number on the source QM.
    SourcePrivate(u32),
    /// Code 3: private queue number on the destination QM.
    DestinationPrivate(u32),
    /// Code 4 (RQ only): private queue number on the admin queue's host.
    AdminHostPrivate(u32),
    /// Code 5: public queue GUID.
    Public(Guid),
    /// Code 6: private queue on some other QM.
    Private { qm: Guid, id: u32 },
    /// Code 7: direct format name without `DIRECT=`, UTF-16LE including the NUL.
    Direct(Utf16<'a>),
}

impl QueueRef<'_> {
    /// The 3-bit wire code (0..=7).
    pub fn code(&self) -> u8 {
        match self {
            QueueRef::None => 0,
            QueueRef::SameAsAdmin => 1,
            QueueRef::SourcePrivate(_) => 2,
            QueueRef::DestinationPrivate(_) => 3,
            QueueRef::AdminHostPrivate(_) => 4,
            QueueRef::Public(_) => 5,
            QueueRef::Private { .. } => 6,
            QueueRef::Direct(_) => 7,
        }
    }
}

/// UserHeader.Flags (u32). Open newtype.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct UserFlags(pub u32);

impl UserFlags {
    pub const HOP_COUNT_MASK: u32 = 0x0000_001F;
    pub const DM_MASK: u32 = 0x0000_0060;
    pub const JN: u32 = 0x0000_0100;
    pub const JP: u32 = 0x0000_0200;
    pub const SH: u32 = 0x0008_0000;
    pub const TH: u32 = 0x0010_0000;
    pub const MP: u32 = 0x0020_0000;
    pub const CQ: u32 = 0x0040_0000;
    pub const MQ: u32 = 0x0080_0000;
    pub const AH: u32 = 0x0200_0000;
    pub const HH: u32 = 0x1000_0000;

    /// DM: 0 express, 1 recoverable.
    pub fn delivery_mode(self) -> u8 {
        ((self.0 & Self::DM_MASK) >> 5) as u8
    }
    pub fn recoverable(self) -> bool {
        self.delivery_mode() != 0
    }
    pub fn transactional(self) -> bool {
        self.0 & Self::TH != 0
    }
    pub fn hop_count(self) -> u8 {
        (self.0 & Self::HOP_COUNT_MASK) as u8
    }
}

/// UserHeader (MS-MQMQ 2.2.19.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserHeader<'a> {
    pub source_queue_manager: Guid,
    pub queue_manager_address: Guid,
    pub time_to_be_received: u32,
    pub sent_time: u32,
    pub message_id: u32,
    pub flags: UserFlags,
    pub destination: QueueRef<'a>,
    pub admin: QueueRef<'a>,
    pub response: QueueRef<'a>,
    pub connector_type: Option<Guid>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UserMessage<'a> {
    pub base: BaseHeader,
    pub user: UserHeader<'a>,
    /// The piggy-backed SessionHeader after PacketSize, when BaseHeader.SH is set.
    pub session: Option<SessionHeader>,
}

impl<'a> UserMessage<'a> {
    pub fn parse(frame: &'a [u8]) -> Result<Self> {
        Err(WireError::new(
            ErrorKind::Unsupported,
            "UserMessage",
            frame.len().min(16),
        ))
    }
}
