//! The queue references of a UserHeader (MS-MQMQ 2.2.19.2; DIGEST §5.3): DestinationQueue,
//! AdminQueue and ResponseQueue, each in one of the encodings of 2.2.18.1.5 and 2.2.18.1.7
//! (PrivateQueueFormatNameId, PublicQueueFormatName, PrivateQueueFormatName,
//! DirectQueueFormatName) that the 3-bit DQ/AQ/RQ codes name.

use crate::wire::{pad4, ErrorKind, Guid, Reader, Result, Utf16, WireError, Writer};

/// A queue reference as encoded in UserHeader DQ/AQ/RQ (MS-MQMQ 2.2.19.2, DIGEST §5.3).
///
/// ```text
/// code 2/3/4  u32 PrivateQueueIdentifier                      (PrivateQueueFormatNameId)
/// code 5      [16] PublicQueueIdentifier                      (PublicQueueFormatName)
/// code 6      [16] QM GUID (start rounded up to 4) + u32 id   (PrivateQueueFormatName)
/// code 7      u16 Count (bytes incl. NUL) + UTF-16LE name, end padded to 4
/// ```
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

/// Which UserHeader queue field a [`QueueRef`] sits in; each allows a different set of codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum QueueField {
    Destination,
    Admin,
    Response,
}

impl QueueField {
    /// DQ ∈ {0,3,5,7}, AQ ∈ {0,2,3,5,6,7}, RQ ∈ 0..=7 (MS-MQMQ 2.2.19.2 tables).
    pub(super) fn allows(self, code: u8) -> bool {
        match self {
            QueueField::Destination => matches!(code, 0 | 3 | 5 | 7),
            QueueField::Admin => matches!(code, 0 | 2 | 3 | 5 | 6 | 7),
            QueueField::Response => code <= 7,
        }
    }

    pub(super) fn flag_name(self) -> &'static str {
        match self {
            QueueField::Destination => "UserHeader.Flags.DQ",
            QueueField::Admin => "UserHeader.Flags.AQ",
            QueueField::Response => "UserHeader.Flags.RQ",
        }
    }

    fn field_name(self) -> &'static str {
        match self {
            QueueField::Destination => "UserHeader.DestinationQueue",
            QueueField::Admin => "UserHeader.AdminQueue",
            QueueField::Response => "UserHeader.ResponseQueue",
        }
    }
}

impl<'a> QueueRef<'a> {
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

    pub(super) fn parse(r: &mut Reader<'a>, code: u8, field: QueueField) -> Result<Self> {
        let name = field.field_name();
        Ok(match code {
            0 => QueueRef::None,
            1 => QueueRef::SameAsAdmin,
            2 => QueueRef::SourcePrivate(r.u32(name)?),
            3 => QueueRef::DestinationPrivate(r.u32(name)?),
            4 => QueueRef::AdminHostPrivate(r.u32(name)?),
            5 => QueueRef::Public(r.guid(name)?),
            6 => {
                // PrivateQueueFormatName: "the start of this field is rounded up to the next
                // 4-byte boundary" (always true here, since every queue field ends aligned).
                r.align4(name)?;
                let qm = r.guid(name)?;
                QueueRef::Private {
                    qm,
                    id: r.u32(name)?,
                }
            }
            _ => {
                let at = r.abs();
                let count = usize::from(r.u16(name)?);
                if count % 2 != 0 {
                    // Count is a byte length of a WCHAR string; an odd value cannot be one.
                    return Err(WireError::new(ErrorKind::BadValue, name, at));
                }
                let s = Utf16(r.take(count, name)?);
                r.align4(name)?;
                QueueRef::Direct(s)
            }
        })
    }

    /// Bytes on the wire, starting at a 4-byte boundary, including trailing padding.
    pub(super) fn encoded_len(&self) -> usize {
        match self {
            QueueRef::None | QueueRef::SameAsAdmin => 0,
            QueueRef::SourcePrivate(_)
            | QueueRef::DestinationPrivate(_)
            | QueueRef::AdminHostPrivate(_) => 4,
            QueueRef::Public(_) => 16,
            QueueRef::Private { .. } => 20,
            QueueRef::Direct(s) => pad4(2usize.saturating_add(s.byte_len())),
        }
    }

    pub(super) fn encode(&self, w: &mut Writer<'_>, field: QueueField) -> Result<()> {
        let name = field.field_name();
        match self {
            QueueRef::None | QueueRef::SameAsAdmin => Ok(()),
            QueueRef::SourcePrivate(id)
            | QueueRef::DestinationPrivate(id)
            | QueueRef::AdminHostPrivate(id) => w.u32(*id, name),
            QueueRef::Public(g) => w.guid(g, name),
            QueueRef::Private { qm, id } => {
                w.align4(name)?;
                w.guid(qm, name)?;
                w.u32(*id, name)
            }
            QueueRef::Direct(s) => {
                let at = w.pos();
                let count = u16::try_from(s.byte_len())
                    .ok()
                    .filter(|c| c % 2 == 0)
                    .ok_or(WireError::new(ErrorKind::BadValue, name, at))?;
                w.u16(count, name)?;
                w.put(s.0, name)?;
                w.align4(name)
            }
        }
    }
}
