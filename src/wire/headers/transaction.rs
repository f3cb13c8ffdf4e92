//! TransactionHeader (MS-MQMQ 2.2.20.5; DIGEST §5.4): the sequence of a transactional
//! (exactly-once-in-order) message, with its TxFlags.

use std::fmt;

use super::bad;
use crate::wire::{ErrorKind, Guid, Reader, Result, Writer};

/// TransactionHeader.Flags (MS-MQMQ 2.2.20.5). Open newtype over the u32.
///
/// ```text
/// bit 0 CG ConnectorQMGuid present | 1 FA FinalAck requested | 2 FM first message of the
/// transaction | 3 LM last message | 4-23 ID (20-bit transaction index) | 24-31 X1..X8 unused
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct TxFlags(pub u32);

impl TxFlags {
    pub const CG: u32 = 0x0000_0001;
    pub const FA: u32 = 0x0000_0002;
    pub const FM: u32 = 0x0000_0004;
    pub const LM: u32 = 0x0000_0008;
    pub const ID_MASK: u32 = 0x00FF_FFF0;
    pub const ID_SHIFT: u32 = 4;
    /// Bits 24-31 (X1..X8). See [`TransactionHeader::parse`] for why they are refused.
    pub const RESERVED_MASK: u32 = 0xFF00_0000;

    pub fn connector_qm_guid_present(self) -> bool {
        self.0 & Self::CG != 0
    }
    pub fn final_ack_requested(self) -> bool {
        self.0 & Self::FA != 0
    }
    pub fn first_message(self) -> bool {
        self.0 & Self::FM != 0
    }
    pub fn last_message(self) -> bool {
        self.0 & Self::LM != 0
    }
    /// The 20-bit transaction index (ID) shared by all messages of one transaction.
    pub fn transaction_index(self) -> u32 {
        (self.0 & Self::ID_MASK) >> Self::ID_SHIFT
    }
    pub fn with(self, bit: u32, on: bool) -> Self {
        TxFlags(if on { self.0 | bit } else { self.0 & !bit })
    }
    /// Replaces the ID field; only the low 20 bits of `index` are kept (the index wraps at 2^20).
    pub fn with_transaction_index(self, index: u32) -> Self {
        TxFlags((self.0 & !Self::ID_MASK) | ((index << Self::ID_SHIFT) & Self::ID_MASK))
    }
}

impl fmt::Debug for TxFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "0x{:08X} CG={} FA={} FM={} LM={} ID={}",
            self.0,
            self.connector_qm_guid_present() as u8,
            self.final_ack_requested() as u8,
            self.first_message() as u8,
            self.last_message() as u8,
            self.transaction_index()
        )
    }
}

/// TransactionHeader, 20 or 36 bytes (MS-MQMQ 2.2.20.5; DIGEST §5.4).
///
/// ```text
/// 0  u32 Flags (TxFlags)
/// 4  u64 TxSequenceID   (u32 Ordinal at 4, u32 TimeStamp at 8; compared as one LE u64)
/// 12 u32 TxSequenceNumber          16 u32 PreviousTxSequenceNumber
/// 20 [16] ConnectorQMGuid          (only when Flags.CG)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransactionHeader {
    pub flags: TxFlags,
    pub tx_sequence_id: u64,
    pub tx_sequence_number: u32,
    pub previous_tx_sequence_number: u32,
    /// Present exactly when `flags.CG` is set; opaque, never interpreted.
    pub connector_qm_guid: Option<Guid>,
}

impl TransactionHeader {
    pub const LEN: usize = 20;
    pub const LEN_WITH_CONNECTOR: usize = 36;

    /// A header for message `number` of sequence `tx_sequence_id` (CG clear).
    pub fn new(flags: TxFlags, tx_sequence_id: u64, number: u32, previous: u32) -> Self {
        TransactionHeader {
            flags: flags.with(TxFlags::CG, false),
            tx_sequence_id,
            tx_sequence_number: number,
            previous_tx_sequence_number: previous,
            connector_qm_guid: None,
        }
    }

    /// TxSequenceID.Ordinal (the low 32 bits).
    pub fn tx_sequence_ordinal(&self) -> u32 {
        self.tx_sequence_id as u32
    }

    /// TxSequenceID.TimeStamp (the high 32 bits).
    pub fn tx_sequence_timestamp(&self) -> u32 {
        (self.tx_sequence_id >> 32) as u32
    }

    /// Parses the header at the reader's position.
    ///
    /// The spec contradicts itself on Flags bits 24-31: 2.2.20.5 opens with "any value not
    /// specified in the table MUST be treated as an error by closing the session", and then names
    /// those bits X1..X8, "MUST be ignored on receipt". We follow the first sentence (and the
    /// project brief): a set bit 24-31 is refused as `Unsupported`, because no known sender sets
    /// them and a strict reading protects the exactly-once sequence state.
    pub fn parse(r: &mut Reader<'_>) -> Result<Self> {
        let at = r.abs();
        let flags = TxFlags(r.u32("TransactionHeader.Flags")?);
        if flags.0 & TxFlags::RESERVED_MASK != 0 {
            return Err(bad(ErrorKind::Unsupported, "TransactionHeader.Flags", at));
        }
        let tx_sequence_id = r.u64("TransactionHeader.TxSequenceID")?;
        let tx_sequence_number = r.u32("TransactionHeader.TxSequenceNumber")?;
        let previous_tx_sequence_number = r.u32("TransactionHeader.PreviousTxSequenceNumber")?;
        let connector_qm_guid = if flags.connector_qm_guid_present() {
            Some(r.guid("TransactionHeader.ConnectorQMGuid")?)
        } else {
            None
        };
        Ok(TransactionHeader {
            flags,
            tx_sequence_id,
            tx_sequence_number,
            previous_tx_sequence_number,
            connector_qm_guid,
        })
    }

    pub fn encoded_len(&self) -> usize {
        if self.connector_qm_guid.is_some() {
            Self::LEN_WITH_CONNECTOR
        } else {
            Self::LEN
        }
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        let at = w.pos();
        if self.flags.0 & TxFlags::RESERVED_MASK != 0
            || self.flags.connector_qm_guid_present() != self.connector_qm_guid.is_some()
        {
            return Err(bad(ErrorKind::BadValue, "TransactionHeader.Flags", at));
        }
        w.u32(self.flags.0, "TransactionHeader.Flags")?;
        w.u64(self.tx_sequence_id, "TransactionHeader.TxSequenceID")?;
        w.u32(
            self.tx_sequence_number,
            "TransactionHeader.TxSequenceNumber",
        )?;
        w.u32(
            self.previous_tx_sequence_number,
            "TransactionHeader.PreviousTxSequenceNumber",
        )?;
        if let Some(g) = &self.connector_qm_guid {
            w.guid(g, "TransactionHeader.ConnectorQMGuid")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_flags_fields() {
        let f = TxFlags(0x5C);
        assert!(f.first_message() && f.last_message() && !f.final_ack_requested());
        assert_eq!(f.transaction_index(), 5);
        assert_eq!(
            TxFlags(0)
                .with_transaction_index(0x1F_FFFF)
                .transaction_index(),
            0xF_FFFF
        );
    }
}
