//! DebugHeader (MS-MQMQ 2.2.20.8; DIGEST §5.7).

use super::bad;
use crate::wire::{ErrorKind, Guid, Reader, Result, Writer};

/// DebugHeader, 4 or 20 bytes (MS-MQMQ 2.2.20.8; DIGEST §5.7). Present iff BaseHeader.Flags.DH.
///
/// ```text
/// 0 u16 Flags (bits 0-1 QT: 0 no queue, 1 public queue GUID follows; the rest unused)
/// 2 u16 Reserved (ignored)     4 [16] QueueIdentifier (only when QT=1)
/// ```
/// Flags bits 2-15 are kept (they "MUST be ignored on receipt"); Reserved is not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugHeader {
    pub flags: u16,
    /// The public queue that receives trace reports; present exactly when QT=1.
    pub queue_identifier: Option<Guid>,
}

impl DebugHeader {
    pub const QT_MASK: u16 = 0x0003;

    pub fn queue_type(&self) -> u8 {
        (self.flags & Self::QT_MASK) as u8
    }

    /// A header naming `queue` (QT=1) or none (QT=0).
    pub fn new(queue: Option<Guid>) -> Self {
        DebugHeader {
            flags: u16::from(queue.is_some()),
            queue_identifier: queue,
        }
    }

    pub fn parse(r: &mut Reader<'_>) -> Result<Self> {
        let at = r.abs();
        let flags = r.u16("DebugHeader.Flags")?;
        r.u16("DebugHeader.Reserved")?;
        let queue_identifier = match flags & Self::QT_MASK {
            0 => None,
            1 => Some(r.guid("DebugHeader.QueueIdentifier")?),
            // QT 2 and 3 are undefined, so the header's length is unknown: stop here.
            _ => return Err(bad(ErrorKind::Unsupported, "DebugHeader.Flags.QT", at)),
        };
        Ok(DebugHeader {
            flags,
            queue_identifier,
        })
    }

    pub fn encoded_len(&self) -> usize {
        if self.queue_identifier.is_some() {
            20
        } else {
            4
        }
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        let qt = self.flags & Self::QT_MASK;
        if qt > 1 || (qt == 1) != self.queue_identifier.is_some() {
            return Err(bad(ErrorKind::BadValue, "DebugHeader.Flags.QT", w.pos()));
        }
        w.u16(self.flags, "DebugHeader.Flags")?;
        w.u16(0, "DebugHeader.Reserved")?;
        if let Some(g) = &self.queue_identifier {
            w.guid(g, "DebugHeader.QueueIdentifier")?;
        }
        Ok(())
    }
}
