//! The UserMessage packet (MS-MQMQ 2.2.20) and its UserHeader (2.2.19.2) with queue encodings.
//! STUB: being written.

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

#[derive(Clone, Debug, PartialEq)]
pub struct UserMessage<'a> {
    pub base: BaseHeader,
    pub raw: &'a [u8],
    pub session: Option<SessionHeader>,
}

impl<'a> UserMessage<'a> {
    pub fn parse(frame: &'a [u8]) -> Result<Self> {
        Err(WireError::new(ErrorKind::Unsupported, "UserMessage", frame.len().min(16)))
    }
}

#[allow(dead_code)]
fn _unused(_: Guid) {}
