//! Format names in the binary encodings: QUEUE_FORMAT_TYPE and QUEUE_SUFFIX_TYPE (MS-MQMQ
//! 2.2.6, 2.2.11), the MQFFormatNameElement FormatType (2.2.18.1.4), and the UserHeader queue
//! references of DestinationQueue, AdminQueue and ResponseQueue (2.2.19.2; DIGEST §5.3), in both
//! directions.

use super::error::{FormatNameError, FormatNameErrorKind as K, Result};
use super::{DirectName, FormatName, QueuePath, QueueSuffix, SystemQueue};
use crate::wire::user::QueueRef;
use crate::wire::{utf16z, Guid, Utf16};

/// QUEUE_FORMAT_TYPE (MS-MQMQ 2.2.6). It is an RPC value, not part of the MS-MQQB encoding, but
/// the admin API and MS-MQDMPR reasoning use it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum QueueFormatType {
    Unknown = 0,
    Public = 1,
    Private = 2,
    Direct = 3,
    Machine = 4,
    Connector = 5,
    DistributionList = 6,
    Multicast = 7,
    Subqueue = 8,
}

/// QUEUE_SUFFIX_TYPE (MS-MQMQ 2.2.11).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum QueueSuffixType {
    None = 0,
    Journal = 1,
    DeadLetter = 2,
    DeadXact = 3,
    XactOnly = 4,
    Subqueue = 5,
}

/// MQFFormatNameElement.FormatType values (MS-MQMQ 2.2.18.1.4).
pub mod mqf_format_type {
    pub const PUBLIC: u16 = 0x0001;
    pub const PRIVATE: u16 = 0x0002;
    pub const DIRECT: u16 = 0x0003;
    pub const DISTRIBUTION_LIST: u16 = 0x0006;
}

/// Which UserHeader field a queue goes in; each allows different encodings (MS-MQMQ 2.2.19.2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum QueueRole {
    /// DQ: codes 0, 3, 5, 7.
    Destination,
    /// AQ: codes 0, 2, 3, 5, 6, 7.
    Admin,
    /// RQ: codes 0-7.
    Response,
}

/// What the UserHeader around a queue reference says: the GUIDs that codes 2, 3, 4 and 6 are
/// relative to, and the admin queue that codes 1 and 4 refer to.
#[derive(Clone, Copy, Debug)]
pub struct WireContext<'f> {
    /// UserHeader.SourceQueueManager.
    pub source_qm: Guid,
    /// UserHeader.QueueManagerAddress (GUID_NULL for direct destinations).
    pub destination_qm: Guid,
    /// The admin queue of the same message, when there is one.
    pub admin: Option<&'f FormatName>,
}

impl SystemQueue {
    pub fn suffix_type(self) -> QueueSuffixType {
        match self {
            SystemQueue::Journal => QueueSuffixType::Journal,
            SystemQueue::DeadLetter => QueueSuffixType::DeadLetter,
            SystemQueue::DeadXact => QueueSuffixType::DeadXact,
        }
    }
}

impl DirectName {
    /// [`Self::wire_string`] as UTF-16LE with the terminating NUL, ready for a
    /// [`QueueRef::Direct`] or an MQFDirectQueueFormatName.
    pub fn wire_bytes(&self) -> Vec<u8> {
        utf16z(&self.wire_string())
    }

    /// Decodes and parses the UTF-16LE string of a UserHeader code 7 queue. Reads up to the
    /// first NUL; a missing NUL is tolerated, unpaired surrogates are an error.
    pub fn from_utf16(u: Utf16<'_>) -> Result<DirectName> {
        if u.byte_len() % 2 != 0 {
            return Err(FormatNameError::no_position(K::BadUtf16));
        }
        let mut s = String::new();
        for r in char::decode_utf16(u.units().take_while(|&c| c != 0)) {
            match r {
                Ok(c) => s.push(c),
                Err(_) => return Err(FormatNameError::no_position(K::BadUtf16)),
            }
        }
        DirectName::parse_wire(&s)
    }
}

impl FormatName {
    /// QUEUE_FORMAT_TYPE of a single name; `None` for a multiple-element name, which is a list
    /// of QUEUE_FORMATs rather than one.
    pub fn format_type(&self) -> Option<QueueFormatType> {
        Some(match self {
            FormatName::Direct(d) if d.queue.subqueue().is_some() => QueueFormatType::Subqueue,
            FormatName::Direct(_) => QueueFormatType::Direct,
            FormatName::Public { .. } => QueueFormatType::Public,
            FormatName::Private { .. } => QueueFormatType::Private,
            FormatName::Machine { .. } => QueueFormatType::Machine,
            FormatName::Connector { .. } => QueueFormatType::Connector,
            FormatName::DistributionList { .. } => QueueFormatType::DistributionList,
            FormatName::Multicast(_) => QueueFormatType::Multicast,
            FormatName::Multiple(_) => return None,
        })
    }

    /// QUEUE_SUFFIX_TYPE (MS-MQMQ 2.2.11) of a single name.
    pub fn suffix_type(&self) -> QueueSuffixType {
        match self {
            FormatName::Direct(d) => match &d.queue {
                QueuePath::System(kind) => kind.suffix_type(),
                QueuePath::Public { suffix, .. } | QueuePath::Private { suffix, .. } => {
                    match suffix {
                        QueueSuffix::None => QueueSuffixType::None,
                        QueueSuffix::Journal => QueueSuffixType::Journal,
                        QueueSuffix::Subqueue(_) => QueueSuffixType::Subqueue,
                    }
                }
            },
            FormatName::Public { journal: true, .. }
            | FormatName::Private { journal: true, .. } => QueueSuffixType::Journal,
            FormatName::Machine { queue, .. } => queue.suffix_type(),
            FormatName::Connector {
                xact_only: true, ..
            } => QueueSuffixType::XactOnly,
            _ => QueueSuffixType::None,
        }
    }

    /// MQFFormatNameElement.FormatType (MS-MQMQ 2.2.18.1.4) for an element of a
    /// MultiQueueFormatHeader list, or `None` for kinds that list cannot carry.
    pub fn mqf_format_type(&self) -> Option<u16> {
        match self {
            FormatName::Public { journal: false, .. } => Some(mqf_format_type::PUBLIC),
            FormatName::Private { journal: false, .. } => Some(mqf_format_type::PRIVATE),
            FormatName::Direct(_) => Some(mqf_format_type::DIRECT),
            FormatName::DistributionList { .. } => Some(mqf_format_type::DISTRIBUTION_LIST),
            _ => None,
        }
    }

    /// For a direct name, the UTF-16LE bytes (with NUL) of the name without `DIRECT=`, as a
    /// UserHeader code 7 queue or an MQF direct element carries them.
    pub fn direct_wire_string(&self) -> Option<Vec<u8>> {
        self.as_direct().map(DirectName::wire_bytes)
    }

    /// The UserHeader.QueueManagerAddress this name needs as a destination (MS-MQMQ 2.2.19.2):
    /// GUID_NULL for a direct name, the hosting QM for a private name. `None` when it takes a
    /// directory to know (public names) or the name cannot be a destination.
    pub fn queue_manager_address(&self) -> Option<Guid> {
        match self {
            FormatName::Direct(_) => Some(Guid::NULL),
            FormatName::Private { qm, .. } => Some(*qm),
            _ => None,
        }
    }

    /// Encodes this name as the UserHeader queue reference for `role` (MS-MQMQ 2.2.19.2,
    /// DIGEST §5.3). A direct name's UTF-16 string is written into `scratch`, which the
    /// returned reference borrows.
    ///
    /// Private names pick the shortest encoding the header allows: on the source QM (code 2,
    /// AQ/RQ), on the destination QM (code 3), on the admin queue's QM (code 4, RQ only), else
    /// the full GUID (code 6, AQ/RQ). The source is tried first, which is what an admin queue
    /// on the sending machine (the usual case) needs. A response queue equal to the admin queue
    /// is code 1.
    pub fn to_queue_ref<'a>(
        &self,
        role: QueueRole,
        ctx: &WireContext<'_>,
        scratch: &'a mut Vec<u8>,
    ) -> Result<QueueRef<'a>> {
        if role == QueueRole::Response && ctx.admin.is_some_and(|a| a.eq_ignore_case(self)) {
            return Ok(QueueRef::SameAsAdmin);
        }
        match self {
            FormatName::Direct(d) => {
                scratch.clear();
                scratch.extend_from_slice(&d.wire_bytes());
                if scratch.len() > usize::from(u16::MAX) {
                    return Err(FormatNameError::no_position(K::WireNameTooLong));
                }
                Ok(QueueRef::Direct(Utf16(scratch.as_slice())))
            }
            FormatName::Public {
                queue,
                journal: false,
            } => Ok(QueueRef::Public(*queue)),
            FormatName::Private {
                qm,
                id,
                journal: false,
            } => {
                let (qm, id) = (*qm, *id);
                match role {
                    QueueRole::Destination if qm == ctx.destination_qm => {
                        Ok(QueueRef::DestinationPrivate(id))
                    }
                    QueueRole::Destination => {
                        Err(FormatNameError::no_position(K::WrongQueueManager))
                    }
                    _ if qm == ctx.source_qm => Ok(QueueRef::SourcePrivate(id)),
                    _ if qm == ctx.destination_qm => Ok(QueueRef::DestinationPrivate(id)),
                    QueueRole::Response if matches!(ctx.admin, Some(FormatName::Private { qm: a, .. }) if *a == qm) => {
                        Ok(QueueRef::AdminHostPrivate(id))
                    }
                    _ => Ok(QueueRef::Private { qm, id }),
                }
            }
            _ => Err(FormatNameError::no_position(K::NoWireEncoding)),
        }
    }

    /// Decodes a UserHeader queue reference (MS-MQMQ 2.2.19.2) into a format name, resolving the
    /// relative codes with the header's GUIDs: 2 against `source_qm`, 3 against `destination_qm`
    /// (UserHeader.QueueManagerAddress; it is GUID_NULL when the destination was direct, and
    /// then the result names the null QM, which the caller reads as "this QM"), 4 against the
    /// admin queue's QM, and 1 is the admin queue itself. Never panics on hostile input.
    pub fn from_queue_ref(
        q: &QueueRef<'_>,
        source_qm: Guid,
        destination_qm: Guid,
        admin: Option<&FormatName>,
    ) -> Result<FormatName> {
        let private = |qm, id| FormatName::Private {
            qm,
            id,
            journal: false,
        };
        match *q {
            QueueRef::None => Err(FormatNameError::no_position(K::NoQueue)),
            QueueRef::SameAsAdmin => admin
                .cloned()
                .ok_or(FormatNameError::no_position(K::NeedsAdminQueue)),
            QueueRef::SourcePrivate(id) => Ok(private(source_qm, id)),
            QueueRef::DestinationPrivate(id) => Ok(private(destination_qm, id)),
            QueueRef::AdminHostPrivate(id) => match admin {
                Some(FormatName::Private { qm, .. }) => Ok(private(*qm, id)),
                _ => Err(FormatNameError::no_position(K::NeedsAdminQueue)),
            },
            QueueRef::Public(queue) => Ok(FormatName::Public {
                queue,
                journal: false,
            }),
            QueueRef::Private { qm, id } => Ok(private(qm, id)),
            QueueRef::Direct(u) => DirectName::from_utf16(u).map(FormatName::Direct),
        }
    }
}
