//! The UserHeader (MS-MQMQ 2.2.19.2; DIGEST §5.2) that follows the BaseHeader of every
//! UserMessage, and its Flags.

use super::queue_ref::{QueueField, QueueRef};
use crate::wire::{ErrorKind, Guid, Reader, Result, WireError, Writer};

/// UserHeader.Flags (u32). Open newtype.
///
/// ```text
/// bits 0-4 RC hop count | 5-6 DM delivery | 7 X1 | 8 JN | 9 JP | 10-12 DQ | 13-15 AQ
/// 16-18 RQ | 19 SH | 20 TH | 21 MP | 22 CQ | 23 MQ | 24 X2 | 25 AH | 26-27 X3 | 28 HH | 29-31 X4
/// ```
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
    pub const X1: u32 = 0x0000_0080;
    pub const X2: u32 = 0x0100_0000;
    pub const X3_MASK: u32 = 0x0C00_0000;
    pub const X4_MASK: u32 = 0xE000_0000;
    pub const DQ_MASK: u32 = 0x0000_1C00;
    pub const AQ_MASK: u32 = 0x0000_E000;
    pub const RQ_MASK: u32 = 0x0007_0000;
    pub const DQ_SHIFT: u32 = 10;
    pub const AQ_SHIFT: u32 = 13;
    pub const RQ_SHIFT: u32 = 16;
    pub const DM_SHIFT: u32 = 5;
    /// RC must stay within 0..=0x1D; a QM that would exceed it NACKs with HOP_COUNT_EXCEEDED.
    pub const HOP_COUNT_MAX: u8 = 0x1D;

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
    pub fn journal_negative(self) -> bool {
        self.0 & Self::JN != 0
    }
    pub fn journal_positive(self) -> bool {
        self.0 & Self::JP != 0
    }
    /// DQ: the DestinationQueue encoding (a [`QueueRef::code`]).
    pub fn dq(self) -> u8 {
        ((self.0 & Self::DQ_MASK) >> Self::DQ_SHIFT) as u8
    }
    pub fn aq(self) -> u8 {
        ((self.0 & Self::AQ_MASK) >> Self::AQ_SHIFT) as u8
    }
    pub fn rq(self) -> u8 {
        ((self.0 & Self::RQ_MASK) >> Self::RQ_SHIFT) as u8
    }
    pub fn security(self) -> bool {
        self.0 & Self::SH != 0
    }
    pub fn properties(self) -> bool {
        self.0 & Self::MP != 0
    }
    pub fn connector(self) -> bool {
        self.0 & Self::CQ != 0
    }
    pub fn multi_queue(self) -> bool {
        self.0 & Self::MQ != 0
    }
    /// AH: the message arrived over HTTP (never legitimately set on 1801).
    pub fn http(self) -> bool {
        self.0 & Self::AH != 0
    }
    pub fn soap(self) -> bool {
        self.0 & Self::HH != 0
    }
    pub fn with(self, bit: u32, on: bool) -> Self {
        UserFlags(if on { self.0 | bit } else { self.0 & !bit })
    }
    pub fn with_delivery_mode(self, dm: u8) -> Self {
        UserFlags((self.0 & !Self::DM_MASK) | ((u32::from(dm) << Self::DM_SHIFT) & Self::DM_MASK))
    }
    pub fn with_hop_count(self, rc: u8) -> Self {
        UserFlags((self.0 & !Self::HOP_COUNT_MASK) | (u32::from(rc) & Self::HOP_COUNT_MASK))
    }
    /// Replaces DQ, AQ and RQ (each masked to 3 bits).
    pub fn with_queue_codes(self, dq: u8, aq: u8, rq: u8) -> Self {
        let v = self.0 & !(Self::DQ_MASK | Self::AQ_MASK | Self::RQ_MASK);
        UserFlags(
            v | ((u32::from(dq) << Self::DQ_SHIFT) & Self::DQ_MASK)
                | ((u32::from(aq) << Self::AQ_SHIFT) & Self::AQ_MASK)
                | ((u32::from(rq) << Self::RQ_SHIFT) & Self::RQ_MASK),
        )
    }
}

/// UserHeader, 48 bytes + queue names (+16 ConnectorType) (MS-MQMQ 2.2.19.2; DIGEST §5.2).
///
/// ```text
/// 0  [16] SourceQueueManager        16 [16] QueueManagerAddress (NULL for direct names)
/// 32 u32 TimeToBeReceived           36 u32 SentTime        40 u32 MessageID
/// 44 u32 Flags (UserFlags)          48 DestinationQueue (DQ), AdminQueue (AQ),
///                                      ResponseQueue (RQ), each ending on a 4-byte boundary
/// .. [16] ConnectorType             (only when CQ)
/// ```
/// `flags` keeps the DQ/AQ/RQ/CQ bits; the encoder checks they agree with the queue fields.
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

impl<'a> UserHeader<'a> {
    pub const FIXED_LEN: usize = 48;
    pub(super) const FLAGS_OFFSET: usize = 44;

    pub fn parse(r: &mut Reader<'a>) -> Result<Self> {
        let source_queue_manager = r.guid("UserHeader.SourceQueueManager")?;
        let queue_manager_address = r.guid("UserHeader.QueueManagerAddress")?;
        let time_to_be_received = r.u32("UserHeader.TimeToBeReceived")?;
        let sent_time = r.u32("UserHeader.SentTime")?;
        let message_id = r.u32("UserHeader.MessageID")?;
        let flags_at = r.abs();
        let flags = UserFlags(r.u32("UserHeader.Flags")?);
        let mut queues = [QueueRef::None; 3];
        for (slot, (field, code)) in queues.iter_mut().zip([
            (QueueField::Destination, flags.dq()),
            (QueueField::Admin, flags.aq()),
            (QueueField::Response, flags.rq()),
        ]) {
            if !field.allows(code) {
                // "Any value ... other than those specified ... MUST be treated as an error by
                // closing the session."
                return Err(WireError::new(
                    ErrorKind::Unsupported,
                    field.flag_name(),
                    flags_at,
                ));
            }
            *slot = QueueRef::parse(r, code, field)?;
        }
        let connector_type = if flags.connector() {
            Some(r.guid("UserHeader.ConnectorType")?)
        } else {
            None
        };
        let [destination, admin, response] = queues;
        Ok(UserHeader {
            source_queue_manager,
            queue_manager_address,
            time_to_be_received,
            sent_time,
            message_id,
            flags,
            destination,
            admin,
            response,
            connector_type,
        })
    }

    /// Bytes on the wire (always a multiple of 4).
    pub fn encoded_len(&self) -> usize {
        Self::FIXED_LEN
            .saturating_add(self.destination.encoded_len())
            .saturating_add(self.admin.encoded_len())
            .saturating_add(self.response.encoded_len())
            .saturating_add(if self.connector_type.is_some() { 16 } else { 0 })
    }

    /// The flags with DQ/AQ/RQ/CQ taken from the fields (other bits unchanged).
    pub fn synced_flags(&self) -> UserFlags {
        self.flags
            .with_queue_codes(
                self.destination.code(),
                self.admin.code(),
                self.response.code(),
            )
            .with(UserFlags::CQ, self.connector_type.is_some())
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        let flags_at = w.pos() + Self::FLAGS_OFFSET;
        for (field, q, code) in [
            (QueueField::Destination, &self.destination, self.flags.dq()),
            (QueueField::Admin, &self.admin, self.flags.aq()),
            (QueueField::Response, &self.response, self.flags.rq()),
        ] {
            if q.code() != code || !field.allows(code) {
                return Err(WireError::new(
                    ErrorKind::BadValue,
                    field.flag_name(),
                    flags_at,
                ));
            }
        }
        if self.flags.connector() != self.connector_type.is_some() {
            return Err(WireError::new(
                ErrorKind::BadValue,
                "UserHeader.Flags.CQ",
                flags_at,
            ));
        }
        w.guid(&self.source_queue_manager, "UserHeader.SourceQueueManager")?;
        w.guid(
            &self.queue_manager_address,
            "UserHeader.QueueManagerAddress",
        )?;
        w.u32(self.time_to_be_received, "UserHeader.TimeToBeReceived")?;
        w.u32(self.sent_time, "UserHeader.SentTime")?;
        w.u32(self.message_id, "UserHeader.MessageID")?;
        w.u32(self.flags.0, "UserHeader.Flags")?;
        self.destination.encode(w, QueueField::Destination)?;
        self.admin.encode(w, QueueField::Admin)?;
        self.response.encode(w, QueueField::Response)?;
        if let Some(g) = &self.connector_type {
            w.guid(g, "UserHeader.ConnectorType")?;
        }
        Ok(())
    }
}
