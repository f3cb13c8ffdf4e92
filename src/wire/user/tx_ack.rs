//! The bodies of the transactional acknowledgments, OrderAck (MS-MQQB 2.2.4.1; DIGEST §6.1) and
//! FinalAck (MS-MQQB 2.2.5.1; DIGEST §6.2), and the constants every such ack carries. Both travel
//! as the body of a UserMessage.

use crate::wire::{ErrorKind, Guid, Reader, Result, WireError};

/// `"QM Ordering Ack"` in UTF-16LE with its NUL: the Label of every OrderAck and FinalAck
/// (MS-MQQB 2.2.4, 2.2.5). A static, so building an ack allocates nothing.
pub const ORDER_ACK_LABEL: &[u8] = b"Q\0M\0 \0O\0r\0d\0e\0r\0i\0n\0g\0 \0A\0c\0k\0\0\0";

/// Private queue number of `order_queue$` (MS-MQQB 2.2.4, 3.1.7.17).
pub const ORDER_QUEUE_ID: u32 = 4;

/// Length of the OrderAck and FinalAck bodies (MessageSize 0x24).
pub const TX_ACK_BODY_LEN: usize = 36;

/// OrderAck body, 36 bytes (MS-MQQB 2.2.4.1; DIGEST §6.1).
///
/// ```text
/// 0 u64 TxSequenceID   8 u32 TxSequenceNumber   12 u32 TxPreviousSequenceNumber
/// 16 [20] Reserved (zeros when sent, ignored on receipt)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderAckBody {
    pub tx_sequence_id: u64,
    pub tx_sequence_number: u32,
    pub tx_previous_sequence_number: u32,
}

impl OrderAckBody {
    /// Parses a body of exactly 36 bytes (offsets in errors are relative to the body).
    pub fn parse(body: &[u8]) -> Result<Self> {
        expect_tx_ack_len(body, "OrderAck Body")?;
        let mut r = Reader::new(body);
        Ok(OrderAckBody {
            tx_sequence_id: r.u64("OrderAck.TxSequenceID")?,
            tx_sequence_number: r.u32("OrderAck.TxSequenceNumber")?,
            tx_previous_sequence_number: r.u32("OrderAck.TxPreviousSequenceNumber")?,
        })
    }

    pub fn to_bytes(&self) -> [u8; TX_ACK_BODY_LEN] {
        let mut b = [0u8; TX_ACK_BODY_LEN];
        b[0..8].copy_from_slice(&self.tx_sequence_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_sequence_number.to_le_bytes());
        b[12..16].copy_from_slice(&self.tx_previous_sequence_number.to_le_bytes());
        b
    }
}

/// FinalAck body, 36 bytes (MS-MQQB 2.2.5.1; DIGEST §6.2).
///
/// ```text
/// 0 u64 TxSequenceID   8 u32 TxSequenceNumber   12 u32 TxPreviousSequenceNumber
/// 16 [16] SourceGUID   32 u32 MessageID
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinalAckBody {
    pub tx_sequence_id: u64,
    pub tx_sequence_number: u32,
    pub tx_previous_sequence_number: u32,
    pub source_guid: Guid,
    pub message_id: u32,
}

impl FinalAckBody {
    pub fn parse(body: &[u8]) -> Result<Self> {
        expect_tx_ack_len(body, "FinalAck Body")?;
        let mut r = Reader::new(body);
        Ok(FinalAckBody {
            tx_sequence_id: r.u64("FinalAck.TxSequenceID")?,
            tx_sequence_number: r.u32("FinalAck.TxSequenceNumber")?,
            tx_previous_sequence_number: r.u32("FinalAck.TxPreviousSequenceNumber")?,
            source_guid: r.guid("FinalAck.SourceGUID")?,
            message_id: r.u32("FinalAck.MessageID")?,
        })
    }

    pub fn to_bytes(&self) -> [u8; TX_ACK_BODY_LEN] {
        let mut b = [0u8; TX_ACK_BODY_LEN];
        b[0..8].copy_from_slice(&self.tx_sequence_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_sequence_number.to_le_bytes());
        b[12..16].copy_from_slice(&self.tx_previous_sequence_number.to_le_bytes());
        b[16..32].copy_from_slice(&self.source_guid.0);
        b[32..36].copy_from_slice(&self.message_id.to_le_bytes());
        b
    }
}

fn expect_tx_ack_len(body: &[u8], field: &'static str) -> Result<()> {
    match body.len() {
        TX_ACK_BODY_LEN => Ok(()),
        n if n < TX_ACK_BODY_LEN => Err(WireError::new(ErrorKind::Truncated, field, n)),
        _ => Err(WireError::new(
            ErrorKind::SizeMismatch,
            field,
            TX_ACK_BODY_LEN,
        )),
    }
}
