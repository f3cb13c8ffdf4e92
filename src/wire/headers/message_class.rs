//! MessagePropertiesHeader.MessageClass: the message class identifiers (MS-MQMQ 2.2.18.1.6;
//! DIGEST §14.1) that tell an application message from an acknowledgment or a report.

use std::fmt;

/// MessagePropertiesHeader.MessageClass (MS-MQMQ 2.2.18.1.6; DIGEST §14.1). Open newtype:
/// applications may use custom classes, and unknown values still parse.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MessageClass(pub u16);

impl MessageClass {
    pub const NORMAL: MessageClass = MessageClass(0x0000);
    pub const REPORT: MessageClass = MessageClass(0x0001);
    pub const ACK_REACH_QUEUE: MessageClass = MessageClass(0x0002);
    pub const ORDER_ACK: MessageClass = MessageClass(0x00FF);
    pub const ACK_RECEIVE: MessageClass = MessageClass(0x4000);
    pub const NACK_BAD_DST_Q: MessageClass = MessageClass(0x8000);
    /// MQMQ name NACK_DELETED; the API calls it MQMSG_CLASS_NACK_PURGED.
    pub const NACK_DELETED: MessageClass = MessageClass(0x8001);
    pub const NACK_REACH_QUEUE_TIMEOUT: MessageClass = MessageClass(0x8002);
    pub const NACK_Q_EXCEED_QUOTA: MessageClass = MessageClass(0x8003);
    pub const NACK_ACCESS_DENIED: MessageClass = MessageClass(0x8004);
    pub const NACK_HOP_COUNT_EXCEEDED: MessageClass = MessageClass(0x8005);
    pub const NACK_BAD_SIGNATURE: MessageClass = MessageClass(0x8006);
    pub const NACK_BAD_ENCRYPTION: MessageClass = MessageClass(0x8007);
    /// API only (not in the MQMQ enumeration).
    pub const NACK_COULD_NOT_ENCRYPT: MessageClass = MessageClass(0x8008);
    pub const NACK_NOT_TRANSACTIONAL_Q: MessageClass = MessageClass(0x8009);
    pub const NACK_NOT_TRANSACTIONAL_MSG: MessageClass = MessageClass(0x800A);
    pub const NACK_UNSUPPORTED_CRYPTO_PROVIDER: MessageClass = MessageClass(0x800B);
    /// API only.
    pub const NACK_SOURCE_COMPUTER_GUID_CHANGED: MessageClass = MessageClass(0x800C);
    pub const NACK_Q_DELETED: MessageClass = MessageClass(0xC000);
    pub const NACK_Q_PURGED: MessageClass = MessageClass(0xC001);
    pub const NACK_RECEIVE_TIMEOUT: MessageClass = MessageClass(0xC002);
    /// API only.
    pub const NACK_RECEIVE_TIMEOUT_AT_SENDER: MessageClass = MessageClass(0xC003);
    pub const NACK_RECEIVE_REJECTED: MessageClass = MessageClass(0xC004);

    /// Every named class, for tables and tests.
    pub const ALL: [MessageClass; 23] = [
        Self::NORMAL,
        Self::REPORT,
        Self::ACK_REACH_QUEUE,
        Self::ORDER_ACK,
        Self::ACK_RECEIVE,
        Self::NACK_BAD_DST_Q,
        Self::NACK_DELETED,
        Self::NACK_REACH_QUEUE_TIMEOUT,
        Self::NACK_Q_EXCEED_QUOTA,
        Self::NACK_ACCESS_DENIED,
        Self::NACK_HOP_COUNT_EXCEEDED,
        Self::NACK_BAD_SIGNATURE,
        Self::NACK_BAD_ENCRYPTION,
        Self::NACK_COULD_NOT_ENCRYPT,
        Self::NACK_NOT_TRANSACTIONAL_Q,
        Self::NACK_NOT_TRANSACTIONAL_MSG,
        Self::NACK_UNSUPPORTED_CRYPTO_PROVIDER,
        Self::NACK_SOURCE_COMPUTER_GUID_CHANGED,
        Self::NACK_Q_DELETED,
        Self::NACK_Q_PURGED,
        Self::NACK_RECEIVE_TIMEOUT,
        Self::NACK_RECEIVE_TIMEOUT_AT_SENDER,
        Self::NACK_RECEIVE_REJECTED,
    ];

    /// The MQMSG_CLASS_ name without its prefix, or "custom" / "unknown".
    pub fn name(self) -> &'static str {
        match self.0 {
            0x0000 => "NORMAL",
            0x0001 => "REPORT",
            0x0002 => "ACK_REACH_QUEUE",
            0x00FF => "ORDER_ACK",
            0x4000 => "ACK_RECEIVE",
            0x8000 => "NACK_BAD_DST_Q",
            0x8001 => "NACK_DELETED",
            0x8002 => "NACK_REACH_QUEUE_TIMEOUT",
            0x8003 => "NACK_Q_EXCEED_QUOTA",
            0x8004 => "NACK_ACCESS_DENIED",
            0x8005 => "NACK_HOP_COUNT_EXCEEDED",
            0x8006 => "NACK_BAD_SIGNATURE",
            0x8007 => "NACK_BAD_ENCRYPTION",
            0x8008 => "NACK_COULD_NOT_ENCRYPT",
            0x8009 => "NACK_NOT_TRANSACTIONAL_Q",
            0x800A => "NACK_NOT_TRANSACTIONAL_MSG",
            0x800B => "NACK_UNSUPPORTED_CRYPTO_PROVIDER",
            0x800C => "NACK_SOURCE_COMPUTER_GUID_CHANGED",
            0xC000 => "NACK_Q_DELETED",
            0xC001 => "NACK_Q_PURGED",
            0xC002 => "NACK_RECEIVE_TIMEOUT",
            0xC003 => "NACK_RECEIVE_TIMEOUT_AT_SENDER",
            0xC004 => "NACK_RECEIVE_REJECTED",
            v if v & !0xE1FF == 0 => "custom",
            _ => "unknown",
        }
    }

    /// Bit 15: a negative acknowledgment.
    pub fn is_nack(self) -> bool {
        self.0 & 0x8000 != 0
    }

    /// Bit 14: an acknowledgment about the receive phase (vs arrival).
    pub fn is_receive_phase(self) -> bool {
        self.0 & 0x4000 != 0
    }

    /// A FinalAck carries ACK_RECEIVE or a NACK: any class >= 0x4000 (MS-MQQB 3.1.5.1.1).
    pub fn is_final_ack_class(self) -> bool {
        self.0 >= 0x4000
    }
}

impl fmt::Debug for MessageClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:04X} {}", self.0, self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_class_names_cover_every_named_class() {
        for c in MessageClass::ALL {
            assert_ne!(c.name(), "unknown", "{:04X}", c.0);
            assert_ne!(c.name(), "custom", "{:04X}", c.0);
        }
        assert_eq!(MessageClass(0x0100).name(), "custom");
        assert_eq!(MessageClass(0x0200).name(), "unknown");
        assert!(
            MessageClass::NACK_Q_PURGED.is_nack() && MessageClass::NACK_Q_PURGED.is_receive_phase()
        );
        assert!(!MessageClass::ORDER_ACK.is_final_ack_class());
    }
}
