//! Optional UserMessage headers (MS-MQMQ 2.2.20.x): TransactionHeader, SecurityHeader,
//! MessagePropertiesHeader, DebugHeader, SoapHeader, MultiQueueFormatHeader, SRMP sections.
//!
//! Every view here borrows from the packet and is validated once by `parse`; accessors are
//! infallible afterwards. Parsers read exactly the header's own bytes (including the padding
//! *inside* the header) and leave the padding *before the next header* to the caller, which
//! knows whether another header follows (see `UserMessage::parse`). Encoders write into a
//! [`Writer`] over the whole packet, so alignment is measured from the packet start, and they
//! refuse any value the parser would refuse, so `parse(encode(x)) == x` always holds.
//!
//! This module must not allocate while parsing, panic on any input, or use `unsafe`.

use std::fmt;

use super::{align4, ErrorKind, Guid, Reader, Result, Utf16, WireError, Writer};

fn bad(kind: ErrorKind, field: &'static str, offset: usize) -> WireError {
    WireError::new(kind, field, offset)
}

/// Converts a length to a u32 wire field, refusing lengths that do not fit.
fn len_u32(n: usize, field: &'static str, at: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| bad(ErrorKind::Overflow, field, at))
}

/// Converts a length to a u16 wire field, refusing lengths that do not fit.
fn len_u16(n: usize, field: &'static str, at: usize) -> Result<u16> {
    u16::try_from(n).map_err(|_| bad(ErrorKind::Overflow, field, at))
}

/// Length of `n` bytes rounded up to 4; saturates instead of overflowing, since the callers
/// only size buffers with it and the encoder re-checks every length anyway.
fn pad4(n: usize) -> usize {
    align4(n).unwrap_or(usize::MAX)
}

// ---------------------------------------------------------------------------------------------
// TransactionHeader
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// SecurityHeader
// ---------------------------------------------------------------------------------------------

/// SecurityHeader.Flags (MS-MQMQ 2.2.20.6). Open newtype over the u16.
///
/// ```text
/// bits 0-3 ST sender-id type | 4 AU | 5 EB body encrypted | 6 DE default provider
/// 7 AI SecurityData present | 8-11 AS signature type | 12-15 X12..X15 unused
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct SecurityFlags(pub u16);

impl SecurityFlags {
    pub const ST_MASK: u16 = 0x000F;
    pub const AU: u16 = 0x0010;
    pub const EB: u16 = 0x0020;
    pub const DE: u16 = 0x0040;
    pub const AI: u16 = 0x0080;
    pub const AS_MASK: u16 = 0x0F00;
    pub const AS_SHIFT: u16 = 8;

    pub fn sender_id_type(self) -> SenderIdType {
        SenderIdType((self.0 & Self::ST_MASK) as u8)
    }
    pub fn authenticated(self) -> bool {
        self.0 & Self::AU != 0
    }
    pub fn body_encrypted(self) -> bool {
        self.0 & Self::EB != 0
    }
    pub fn default_provider(self) -> bool {
        self.0 & Self::DE != 0
    }
    pub fn security_data_present(self) -> bool {
        self.0 & Self::AI != 0
    }
    /// AS: "MUST be 0" on the wire; Windows uses it internally for the verified signature type.
    pub fn authentication_signature_type(self) -> u8 {
        ((self.0 & Self::AS_MASK) >> Self::AS_SHIFT) as u8
    }
    pub fn with(self, bit: u16, on: bool) -> Self {
        SecurityFlags(if on { self.0 | bit } else { self.0 & !bit })
    }
    pub fn with_sender_id_type(self, st: SenderIdType) -> Self {
        SecurityFlags((self.0 & !Self::ST_MASK) | (u16::from(st.0) & Self::ST_MASK))
    }
}

impl fmt::Debug for SecurityFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "0x{:04X} ST={} EB={} DE={} AI={}",
            self.0,
            self.sender_id_type().name(),
            self.body_encrypted() as u8,
            self.default_provider() as u8,
            self.security_data_present() as u8
        )
    }
}

/// SecurityHeader.Flags.ST: what SecurityData.SecurityID holds. Open newtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderIdType(pub u8);

impl SenderIdType {
    pub const NONE: SenderIdType = SenderIdType(0);
    pub const SID: SenderIdType = SenderIdType(1);
    pub const QM_GUID: SenderIdType = SenderIdType(2);

    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "none",
            1 => "SID",
            2 => "QM GUID",
            _ => "unknown",
        }
    }
}

/// SecurityHeader, 16 bytes + SecurityData (MS-MQMQ 2.2.20.6; DIGEST §5.5).
///
/// ```text
/// 0  u16 Flags   2 u16 SenderIdSize   4 u16 EncryptionKeySize   6 u16 SignatureSize
/// 8  u32 SenderCertSize (<= 0xFFFF)   12 u32 ProviderInfoSize
/// 16 SecurityData: SecurityID, EncryptionKey, Signature, SenderCert, ProviderInfo, in this
///    order, each starting on a 4-byte boundary; an item of size 0 takes no space.
/// ```
/// The sizes are not stored: they are the lengths of the slices. Frame 7 shows that Windows
/// sends SecurityData with AI clear, so the sub-fields are read from the sizes regardless of AI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecurityHeader<'a> {
    pub flags: SecurityFlags,
    /// SecurityData.SecurityID: a SID when ST=1 (see [`Sid`]), a QM GUID when ST=2.
    pub sender_id: &'a [u8],
    /// SecurityData.EncryptionKey: a SIMPLEBLOB (MS-MQQB 2.4.2) when the body is encrypted.
    pub encryption_key: &'a [u8],
    pub signature: &'a [u8],
    /// SecurityData.SenderCert: a DER X.509 certificate.
    pub sender_cert: &'a [u8],
    /// SecurityData.ProviderInfo: u32 ProviderType + NUL-terminated UTF-16 ProviderName.
    pub provider_info: &'a [u8],
}

impl<'a> SecurityHeader<'a> {
    pub const FIXED_LEN: usize = 16;
    /// SenderCertSize is a u32 on the wire but the spec caps it at 0xFFFF.
    pub const SENDER_CERT_SIZE_MAX: usize = 0xFFFF;

    /// A header carrying only the sender's SID (what Windows sends on unsigned messages).
    pub fn with_sid(sid: &'a [u8]) -> Self {
        SecurityHeader {
            flags: SecurityFlags::default().with_sender_id_type(SenderIdType::SID),
            sender_id: sid,
            encryption_key: &[],
            signature: &[],
            sender_cert: &[],
            provider_info: &[],
        }
    }

    pub fn parse(r: &mut Reader<'a>) -> Result<Self> {
        let start = r.abs();
        let flags = SecurityFlags(r.u16("SecurityHeader.Flags")?);
        let sender_id_size = r.u16("SecurityHeader.SenderIdSize")? as usize;
        let encryption_key_size = r.u16("SecurityHeader.EncryptionKeySize")? as usize;
        let signature_size = r.u16("SecurityHeader.SignatureSize")? as usize;
        let cert_at = r.abs();
        let sender_cert_size = r.u32("SecurityHeader.SenderCertSize")? as usize;
        let provider_info_size = r.u32("SecurityHeader.ProviderInfoSize")? as usize;
        if sender_cert_size > Self::SENDER_CERT_SIZE_MAX {
            return Err(bad(
                ErrorKind::Overflow,
                "SecurityHeader.SenderCertSize",
                cert_at,
            ));
        }
        if sender_id_size == 0
            && encryption_key_size == 0
            && signature_size == 0
            && sender_cert_size == 0
            && provider_info_size == 0
        {
            // "At least one of the fields ... MUST be nonzero."
            return Err(bad(
                ErrorKind::BadValue,
                "SecurityHeader.SenderIdSize",
                start + 2,
            ));
        }
        if flags.sender_id_type() == SenderIdType::NONE && sender_id_size != 0 {
            // ST=0: "the SenderIdSize field MUST be set to 0x0000".
            return Err(bad(ErrorKind::BadValue, "SecurityHeader.Flags.ST", start));
        }
        let sender_id = Self::item(r, sender_id_size, "SecurityHeader.SecurityData.SecurityID")?;
        let encryption_key = Self::item(
            r,
            encryption_key_size,
            "SecurityHeader.SecurityData.EncryptionKey",
        )?;
        let signature = Self::item(r, signature_size, "SecurityHeader.SecurityData.Signature")?;
        let sender_cert = Self::item(
            r,
            sender_cert_size,
            "SecurityHeader.SecurityData.SenderCert",
        )?;
        let provider_info = Self::item(
            r,
            provider_info_size,
            "SecurityHeader.SecurityData.ProviderInfo",
        )?;
        Ok(SecurityHeader {
            flags,
            sender_id,
            encryption_key,
            signature,
            sender_cert,
            provider_info,
        })
    }

    /// Reads one SecurityData item: aligned to 4 before it, and nothing at all when empty.
    fn item(r: &mut Reader<'a>, size: usize, field: &'static str) -> Result<&'a [u8]> {
        if size == 0 {
            return Ok(&[]);
        }
        r.align4(field)?;
        r.take(size, field)
    }

    fn items(&self) -> [&'a [u8]; 5] {
        [
            self.sender_id,
            self.encryption_key,
            self.signature,
            self.sender_cert,
            self.provider_info,
        ]
    }

    /// Bytes from the header start to the end of the last non-empty item (no trailing padding),
    /// assuming the header starts on a 4-byte boundary.
    pub fn encoded_len(&self) -> usize {
        let mut n = Self::FIXED_LEN;
        for item in self.items() {
            if !item.is_empty() {
                n = pad4(n).saturating_add(item.len());
            }
        }
        n
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        let at = w.pos();
        if self.items().iter().all(|i| i.is_empty()) {
            return Err(bad(
                ErrorKind::BadValue,
                "SecurityHeader.SenderIdSize",
                at + 2,
            ));
        }
        if self.flags.sender_id_type() == SenderIdType::NONE && !self.sender_id.is_empty() {
            return Err(bad(ErrorKind::BadValue, "SecurityHeader.Flags.ST", at));
        }
        if self.sender_cert.len() > Self::SENDER_CERT_SIZE_MAX {
            return Err(bad(
                ErrorKind::Overflow,
                "SecurityHeader.SenderCertSize",
                at + 8,
            ));
        }
        w.u16(self.flags.0, "SecurityHeader.Flags")?;
        w.u16(
            len_u16(self.sender_id.len(), "SecurityHeader.SenderIdSize", at + 2)?,
            "SecurityHeader.SenderIdSize",
        )?;
        w.u16(
            len_u16(
                self.encryption_key.len(),
                "SecurityHeader.EncryptionKeySize",
                at + 4,
            )?,
            "SecurityHeader.EncryptionKeySize",
        )?;
        w.u16(
            len_u16(self.signature.len(), "SecurityHeader.SignatureSize", at + 6)?,
            "SecurityHeader.SignatureSize",
        )?;
        w.u32(
            self.sender_cert.len() as u32,
            "SecurityHeader.SenderCertSize",
        )?;
        w.u32(
            len_u32(
                self.provider_info.len(),
                "SecurityHeader.ProviderInfoSize",
                at + 12,
            )?,
            "SecurityHeader.ProviderInfoSize",
        )?;
        for item in self.items() {
            if !item.is_empty() {
                w.align4("SecurityHeader.SecurityData")?;
                w.put(item, "SecurityHeader.SecurityData")?;
            }
        }
        Ok(())
    }

    /// The sender's SID, when ST=1 and SecurityID is a well-formed SID.
    pub fn sender_sid(&self) -> Option<Sid<'a>> {
        if self.flags.sender_id_type() == SenderIdType::SID {
            Sid::parse(self.sender_id)
        } else {
            None
        }
    }

    /// The sending QM's GUID, when ST=2 and SecurityID is 16 bytes.
    pub fn sender_qm_guid(&self) -> Option<Guid> {
        if self.flags.sender_id_type() != SenderIdType::QM_GUID {
            return None;
        }
        let a: [u8; 16] = self.sender_id.try_into().ok()?;
        Some(Guid(a))
    }

    /// ProviderInfo.ProviderType, when ProviderInfo holds at least 4 bytes.
    pub fn provider_type(&self) -> Option<u32> {
        let a: [u8; 4] = self.provider_info.get(..4)?.try_into().ok()?;
        Some(u32::from_le_bytes(a))
    }

    /// ProviderInfo.ProviderName (UTF-16, with its NUL), when present and of even length.
    pub fn provider_name(&self) -> Option<Utf16<'a>> {
        let name = self.provider_info.get(4..)?;
        (name.len() % 2 == 0).then_some(Utf16(name))
    }
}

/// A security identifier in the MS-DTYP 2.4.2.2 packet form, borrowed from SecurityID.
///
/// ```text
/// 0 u8 Revision   1 u8 SubAuthorityCount   2 [6] IdentifierAuthority (big-endian)
/// 8 u32 SubAuthority[SubAuthorityCount] (little-endian, MS-MQMQ 2.2.20.6)
/// ```
/// `Display` renders the familiar `S-1-5-21-...` text without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sid<'a>(&'a [u8]);

impl<'a> Sid<'a> {
    /// Largest SubAuthorityCount MS-DTYP allows.
    pub const SUB_AUTHORITY_MAX: usize = 15;

    /// Accepts exactly `8 + 4 * SubAuthorityCount` bytes with a count of at most 15.
    pub fn parse(bytes: &'a [u8]) -> Option<Sid<'a>> {
        let count = *bytes.get(1)? as usize;
        if count > Self::SUB_AUTHORITY_MAX || bytes.len() != 8 + 4 * count {
            return None;
        }
        Some(Sid(bytes))
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    pub fn revision(&self) -> u8 {
        self.0[0]
    }

    /// IdentifierAuthority as a 48-bit number.
    pub fn identifier_authority(&self) -> u64 {
        self.0[2..8]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    }

    pub fn sub_authorities(&self) -> impl Iterator<Item = u32> + 'a {
        self.0[8..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

impl fmt::Display for Sid<'_> {
    /// MS-DTYP 2.4.2.1: the authority is decimal below 2^32 and `0x` + 12 hex digits above.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = self.identifier_authority();
        if auth < (1u64 << 32) {
            write!(f, "S-{}-{}", self.revision(), auth)?;
        } else {
            write!(f, "S-{}-0x{:012X}", self.revision(), auth)?;
        }
        for s in self.sub_authorities() {
            write!(f, "-{s}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// ---------------------------------------------------------------------------------------------
// MessagePropertiesHeader and its enumerations
// ---------------------------------------------------------------------------------------------

/// MessagePropertiesHeader.Flags: which administration acknowledgments the sender wants.
/// Open newtype; bits 4-7 are unused and kept as they are.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct AckFlags(pub u8);

impl AckFlags {
    /// PA: positive arrival (MQMSG_ACKNOWLEDGMENT_POS_ARRIVAL).
    pub const PA: u8 = 0x01;
    /// PR: positive receive.
    pub const PR: u8 = 0x02;
    /// NA: negative arrival (MQMSG_ACKNOWLEDGMENT_NEG_ARRIVAL).
    pub const NA: u8 = 0x04;
    /// NR: negative receive.
    pub const NR: u8 = 0x08;
    /// MQMSG_ACKNOWLEDGMENT_FULL_RECEIVE = PR | NA | NR.
    pub const FULL_RECEIVE: u8 = 0x0E;

    pub fn positive_arrival(self) -> bool {
        self.0 & Self::PA != 0
    }
    pub fn positive_receive(self) -> bool {
        self.0 & Self::PR != 0
    }
    pub fn negative_arrival(self) -> bool {
        self.0 & Self::NA != 0
    }
    pub fn negative_receive(self) -> bool {
        self.0 & Self::NR != 0
    }
    /// Whether any acknowledgment is requested (which obliges the sender to name an AdminQueue).
    pub fn any(self) -> bool {
        self.0 & 0x0F != 0
    }
}

impl fmt::Debug for AckFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02X}", self.0)?;
        for (bit, name) in [
            (Self::PA, "PA"),
            (Self::PR, "PR"),
            (Self::NA, "NA"),
            (Self::NR, "NR"),
        ] {
            if self.0 & bit != 0 {
                write!(f, " {name}")?;
            }
        }
        Ok(())
    }
}

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

/// MessagePropertiesHeader.PrivacyLevel. Open newtype: any other value is an authentication
/// failure for the protocol layer to report, not a parse error.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct PrivacyLevel(pub u32);

impl PrivacyLevel {
    pub const NONE: PrivacyLevel = PrivacyLevel(0);
    /// 40-bit end-to-end encryption.
    pub const BASE: PrivacyLevel = PrivacyLevel(1);
    /// 128-bit end-to-end encryption.
    pub const ENHANCED: PrivacyLevel = PrivacyLevel(3);
    pub const AES: PrivacyLevel = PrivacyLevel(5);

    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "none",
            1 => "base",
            3 => "enhanced",
            5 => "AES",
            _ => "unknown",
        }
    }
}

impl fmt::Debug for PrivacyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.name())
    }
}

/// A CryptoAPI ALG_ID as used in HashAlgorithm / EncryptionAlgorithm (MS-MQMQ 2.2.19.3;
/// DIGEST §7.2). Open newtype: it is only validated when the message is signed or encrypted.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Calg(pub u32);

impl Calg {
    pub const MD2: Calg = Calg(0x8001);
    pub const MD4: Calg = Calg(0x8002);
    /// 0x8003 is MD5 per MS-MQMQ (MS-MQDMPR 3.1.7.1.31 wrongly says MD4).
    pub const MD5: Calg = Calg(0x8003);
    pub const SHA1: Calg = Calg(0x8004);
    pub const SHA256: Calg = Calg(0x800C);
    pub const SHA512: Calg = Calg(0x800E);
    pub const RC2: Calg = Calg(0x6602);
    pub const RC4: Calg = Calg(0x6801);
    pub const AES128: Calg = Calg(0x660E);
    pub const AES192: Calg = Calg(0x660F);
    pub const AES256: Calg = Calg(0x6610);
    /// CALG_RSA_KEYX, the key-exchange algorithm inside a SIMPLEBLOB.
    pub const RSA_KEYX: Calg = Calg(0xA400);

    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "none",
            0x8001 => "MD2",
            0x8002 => "MD4",
            0x8003 => "MD5",
            0x8004 => "SHA-1",
            0x800C => "SHA-256",
            0x800E => "SHA-512",
            0x6602 => "RC2",
            0x6801 => "RC4",
            0x660E => "AES-128",
            0x660F => "AES-192",
            0x6610 => "AES-256",
            0xA400 => "RSA_KEYX",
            _ => "unknown",
        }
    }

    /// One of the six hash algorithms MessagePropertiesHeader.HashAlgorithm allows.
    pub fn is_hash(self) -> bool {
        matches!(self.0, 0x8001..=0x8004 | 0x800C | 0x800E)
    }

    /// One of the five ciphers MessagePropertiesHeader.EncryptionAlgorithm allows.
    pub fn is_cipher(self) -> bool {
        matches!(self.0, 0x6602 | 0x6801 | 0x660E..=0x6610)
    }
}

impl fmt::Debug for Calg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:04X} {}", self.0, self.name())
    }
}

/// BodyType VARTYPE values the specs mention (MS-MQMQ 2.2.12; DIGEST §7.5). BodyType itself is
/// an opaque u32 hint: frame 7 carries 8 (VT_BSTR), which is not in the spec's list.
pub mod body_type {
    pub const VT_EMPTY: u32 = 0x0000;
    pub const VT_BSTR: u32 = 0x0008;
    pub const VT_LPWSTR: u32 = 0x001F;
    pub const VT_UI1: u32 = 0x0011;
    pub const VT_VECTOR: u32 = 0x1000;
    /// A byte array: what most non-COM senders use.
    pub const VT_UI1_VECTOR: u32 = VT_VECTOR | VT_UI1;
}

/// MessagePropertiesHeader, 56 bytes fixed + Label + ExtensionData + MessageBody, the whole
/// padded to a multiple of 4 (MS-MQMQ 2.2.19.3; DIGEST §5.6).
///
/// ```text
/// 0  u8  Flags (AckFlags)     1 u8 LabelLength (WCHARs incl. NUL, 0..=0xFA)
/// 2  u16 MessageClass         4 [20] CorrelationID
/// 24 u32 BodyType             28 u32 ApplicationTag
/// 32 u32 MessageSize          36 u32 AllocationBodySize
/// 40 u32 PrivacyLevel         44 u32 HashAlgorithm       48 u32 EncryptionAlgorithm
/// 52 u32 ExtensionSize
/// 56 Label[2*LabelLength]  ExtensionData[ExtensionSize]  MessageBody  (the last two unaligned)
/// .. padding to 4
/// ```
/// Body extent (DIGEST §5.6, [UNCONFIRMED] in the spec): the body area on the wire is
/// `max(MessageSize, AllocationBodySize)` bytes, and the message body is its first MessageSize
/// bytes. The spec says both "MessageBody is MessageSize bytes" and "AllocationBodySize bytes
/// are allocated for it"; every known sender makes them equal, and taking the larger one keeps
/// a ciphertext that is longer than the plaintext (PKCS#5 padding) in one contiguous slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessagePropertiesHeader<'a> {
    pub flags: AckFlags,
    pub message_class: MessageClass,
    pub correlation_id: [u8; 20],
    /// A VARTYPE hint (see [`body_type`]); never interpreted.
    pub body_type: u32,
    pub application_tag: u32,
    /// MessageSize: the length of the message body proper.
    pub message_size: u32,
    pub allocation_body_size: u32,
    pub privacy_level: PrivacyLevel,
    pub hash_algorithm: Calg,
    pub encryption_algorithm: Calg,
    /// Label, UTF-16LE including its NUL; empty when LabelLength is 0.
    pub label: Utf16<'a>,
    /// ExtensionData (PROPID_M_EXTENSION), opaque.
    pub extension: &'a [u8],
    /// The whole body area: `max(MessageSize, AllocationBodySize)` bytes. Use [`Self::body`]
    /// for the message body itself.
    pub message_body: &'a [u8],
}

impl<'a> MessagePropertiesHeader<'a> {
    pub const FIXED_LEN: usize = 56;
    /// Largest LabelLength (250 WCHARs = 500 bytes, including the NUL).
    pub const LABEL_LENGTH_MAX: u8 = 0xFA;

    /// A NORMAL-class header for `body` with `label` (UTF-16LE incl. NUL, or empty), no acks,
    /// no security, BodyType VT_UI1|VT_VECTOR, MessageSize = AllocationBodySize = body length.
    /// A body longer than u32::MAX cannot be sent anyway; its sizes saturate and encode refuses it.
    pub fn new(label: Utf16<'a>, body: &'a [u8]) -> Self {
        let size = u32::try_from(body.len()).unwrap_or(u32::MAX);
        MessagePropertiesHeader {
            flags: AckFlags::default(),
            message_class: MessageClass::NORMAL,
            correlation_id: [0; 20],
            body_type: body_type::VT_UI1_VECTOR,
            application_tag: 0,
            message_size: size,
            allocation_body_size: size,
            privacy_level: PrivacyLevel::NONE,
            hash_algorithm: Calg(0),
            encryption_algorithm: Calg(0),
            label,
            extension: &[],
            message_body: body,
        }
    }

    /// The message body: the first MessageSize bytes of the body area.
    pub fn body(&self) -> &'a [u8] {
        let n = (self.message_size as usize).min(self.message_body.len());
        &self.message_body[..n]
    }

    /// LabelLength as it goes on the wire (WCHARs including the NUL).
    pub fn label_length(&self) -> usize {
        self.label.byte_len() / 2
    }

    pub fn parse(r: &mut Reader<'a>) -> Result<Self> {
        let flags = AckFlags(r.u8("MessagePropertiesHeader.Flags")?);
        let label_at = r.abs();
        let label_length = r.u8("MessagePropertiesHeader.LabelLength")?;
        if label_length > Self::LABEL_LENGTH_MAX {
            return Err(bad(
                ErrorKind::BadValue,
                "MessagePropertiesHeader.LabelLength",
                label_at,
            ));
        }
        let message_class = MessageClass(r.u16("MessagePropertiesHeader.MessageClass")?);
        let correlation_id = r.array::<20>("MessagePropertiesHeader.CorrelationID")?;
        let body_type = r.u32("MessagePropertiesHeader.BodyType")?;
        let application_tag = r.u32("MessagePropertiesHeader.ApplicationTag")?;
        let message_size = r.u32("MessagePropertiesHeader.MessageSize")?;
        let allocation_body_size = r.u32("MessagePropertiesHeader.AllocationBodySize")?;
        let privacy_level = PrivacyLevel(r.u32("MessagePropertiesHeader.PrivacyLevel")?);
        let hash_algorithm = Calg(r.u32("MessagePropertiesHeader.HashAlgorithm")?);
        let encryption_algorithm = Calg(r.u32("MessagePropertiesHeader.EncryptionAlgorithm")?);
        let extension_size = r.u32("MessagePropertiesHeader.ExtensionSize")?;
        let label = Utf16(r.take(
            usize::from(label_length) * 2,
            "MessagePropertiesHeader.Label",
        )?);
        // u32 -> usize is lossless on the 32- and 64-bit targets lior supports; `take` checks
        // every length against the bytes that are really there, with overflow-checked adds.
        let extension = r.take(
            extension_size as usize,
            "MessagePropertiesHeader.ExtensionData",
        )?;
        let area = message_size.max(allocation_body_size) as usize;
        let message_body = r.take(area, "MessagePropertiesHeader.MessageBody")?;
        Ok(MessagePropertiesHeader {
            flags,
            message_class,
            correlation_id,
            body_type,
            application_tag,
            message_size,
            allocation_body_size,
            privacy_level,
            hash_algorithm,
            encryption_algorithm,
            label,
            extension,
            message_body,
        })
    }

    /// Bytes from the header start to the end of the body area (without the final padding).
    pub fn encoded_len(&self) -> usize {
        Self::FIXED_LEN
            .saturating_add(self.label.byte_len())
            .saturating_add(self.extension.len())
            .saturating_add(self.message_body.len())
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        let at = w.pos();
        let label_bytes = self.label.byte_len();
        if label_bytes % 2 != 0 || label_bytes / 2 > usize::from(Self::LABEL_LENGTH_MAX) {
            return Err(bad(
                ErrorKind::BadValue,
                "MessagePropertiesHeader.LabelLength",
                at + 1,
            ));
        }
        let area = self.message_size.max(self.allocation_body_size) as usize;
        if self.message_body.len() != area {
            return Err(bad(
                ErrorKind::SizeMismatch,
                "MessagePropertiesHeader.MessageSize",
                at + 32,
            ));
        }
        let extension_size = len_u32(
            self.extension.len(),
            "MessagePropertiesHeader.ExtensionSize",
            at + 52,
        )?;
        w.u8(self.flags.0, "MessagePropertiesHeader.Flags")?;
        w.u8(
            (label_bytes / 2) as u8,
            "MessagePropertiesHeader.LabelLength",
        )?;
        w.u16(self.message_class.0, "MessagePropertiesHeader.MessageClass")?;
        w.put(
            &self.correlation_id,
            "MessagePropertiesHeader.CorrelationID",
        )?;
        w.u32(self.body_type, "MessagePropertiesHeader.BodyType")?;
        w.u32(
            self.application_tag,
            "MessagePropertiesHeader.ApplicationTag",
        )?;
        w.u32(self.message_size, "MessagePropertiesHeader.MessageSize")?;
        w.u32(
            self.allocation_body_size,
            "MessagePropertiesHeader.AllocationBodySize",
        )?;
        w.u32(self.privacy_level.0, "MessagePropertiesHeader.PrivacyLevel")?;
        w.u32(
            self.hash_algorithm.0,
            "MessagePropertiesHeader.HashAlgorithm",
        )?;
        w.u32(
            self.encryption_algorithm.0,
            "MessagePropertiesHeader.EncryptionAlgorithm",
        )?;
        w.u32(extension_size, "MessagePropertiesHeader.ExtensionSize")?;
        w.put(self.label.0, "MessagePropertiesHeader.Label")?;
        w.put(self.extension, "MessagePropertiesHeader.ExtensionData")?;
        w.put(self.message_body, "MessagePropertiesHeader.MessageBody")
    }
}

// ---------------------------------------------------------------------------------------------
// DebugHeader
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// SoapHeader
// ---------------------------------------------------------------------------------------------

/// SoapHeader: two sections (MS-MQMQ 2.2.20.7; DIGEST §5.8). Present iff UserHeader.Flags.HH.
///
/// ```text
/// 0 u16 HeaderSectionID (0x0320)  2 u16 Reserved  4 u32 HeaderDataLength (WCHARs incl. NUL)
/// 8 Header[2*HeaderDataLength]    .. padding to 4
/// + u16 BodySectionID (0x0384)    u16 Reserved1   u32 BodyDataLength (WCHARs incl. NUL)
///   Body[2*BodyDataLength]        .. padding to 4
/// ```
/// The spec is silent on padding inside this header; we pad each section to 4 as DIGEST §5.8
/// infers from the general rule that headers start on 4-byte boundaries [UNCONFIRMED].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoapHeader<'a> {
    /// The application's SOAP header fragment (PROPID_M_SOAP_HEADER), UTF-16LE incl. NUL.
    pub header: Utf16<'a>,
    /// The application's SOAP body (PROPID_M_SOAP_BODY), UTF-16LE incl. NUL.
    pub body: Utf16<'a>,
}

impl<'a> SoapHeader<'a> {
    pub const HEADER_SECTION_ID: u16 = 0x0320;
    pub const BODY_SECTION_ID: u16 = 0x0384;

    pub fn parse(r: &mut Reader<'a>) -> Result<Self> {
        let header = Self::section(
            r,
            Self::HEADER_SECTION_ID,
            "SoapHeader.HeaderSectionID",
            "SoapHeader.HeaderDataLength",
            "SoapHeader.Header",
        )?;
        r.align4("SoapHeader.Header")?;
        let body = Self::section(
            r,
            Self::BODY_SECTION_ID,
            "SoapHeader.BodySectionID",
            "SoapHeader.BodyDataLength",
            "SoapHeader.Body",
        )?;
        Ok(SoapHeader { header, body })
    }

    fn section(
        r: &mut Reader<'a>,
        id: u16,
        id_field: &'static str,
        len_field: &'static str,
        data_field: &'static str,
    ) -> Result<Utf16<'a>> {
        let at = r.abs();
        if r.u16(id_field)? != id {
            return Err(bad(ErrorKind::BadValue, id_field, at));
        }
        r.u16("SoapHeader.Reserved")?;
        let len_at = r.abs();
        let wchars = r.u32(len_field)? as usize;
        let bytes = wchars
            .checked_mul(2)
            .ok_or(bad(ErrorKind::Overflow, len_field, len_at))?;
        Ok(Utf16(r.take(bytes, data_field)?))
    }

    /// Bytes from the header start to the end of Body (without the final padding).
    pub fn encoded_len(&self) -> usize {
        pad4(8usize.saturating_add(self.header.byte_len()))
            .saturating_add(8)
            .saturating_add(self.body.byte_len())
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        for (id, s, len_field, data_field) in [
            (
                Self::HEADER_SECTION_ID,
                self.header,
                "SoapHeader.HeaderDataLength",
                "SoapHeader.Header",
            ),
            (
                Self::BODY_SECTION_ID,
                self.body,
                "SoapHeader.BodyDataLength",
                "SoapHeader.Body",
            ),
        ] {
            let at = w.pos();
            if s.byte_len() % 2 != 0 {
                return Err(bad(ErrorKind::BadValue, len_field, at + 4));
            }
            let wchars = len_u32(s.byte_len() / 2, len_field, at + 4)?;
            if id == Self::BODY_SECTION_ID {
                w.align4("SoapHeader.Header")?;
            }
            w.u16(id, "SoapHeader.SectionID")?;
            w.u16(0, "SoapHeader.Reserved")?;
            w.u32(wchars, len_field)?;
            w.put(s.0, data_field)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// MultiQueueFormatHeader
// ---------------------------------------------------------------------------------------------

/// One MQFFormatNameElement (MS-MQMQ 2.2.18.1.4): u16 FormatType, then the name.
///
/// | FormatType | FormatName | start of FormatName |
/// |---|---|---|
/// | 1 public | 16-byte queue GUID | right after FormatType (the spec gives no rounding) |
/// | 2 private | 16-byte QM GUID + u32 queue number | rounded up to 4 |
/// | 3 direct | NUL-terminated UTF-16, no length prefix | rounded up to 2 |
/// | 6 distribution list | 16-byte DL GUID | rounded up to 4 |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MqfElement<'a> {
    Public(Guid),
    Private {
        qm: Guid,
        id: u32,
    },
    /// The direct format name including its NUL (without `DIRECT=`).
    Direct(Utf16<'a>),
    DistributionList(Guid),
}

impl<'a> MqfElement<'a> {
    pub const PUBLIC: u16 = 0x0001;
    pub const PRIVATE: u16 = 0x0002;
    pub const DIRECT: u16 = 0x0003;
    pub const DISTRIBUTION_LIST: u16 = 0x0006;

    pub fn format_type(&self) -> u16 {
        match self {
            MqfElement::Public(_) => Self::PUBLIC,
            MqfElement::Private { .. } => Self::PRIVATE,
            MqfElement::Direct(_) => Self::DIRECT,
            MqfElement::DistributionList(_) => Self::DISTRIBUTION_LIST,
        }
    }

    /// Reads one element. The reader's absolute offsets must have the packet's alignment
    /// (a format-name list always starts on a 4-byte boundary, so a list-relative reader does).
    fn parse(r: &mut Reader<'a>) -> Result<Self> {
        let at = r.abs();
        match r.u16("MQFFormatNameElement.FormatType")? {
            Self::PUBLIC => Ok(MqfElement::Public(
                r.guid("MQFFormatNameElement.PublicQueueIdentifier")?,
            )),
            Self::PRIVATE => {
                r.align4("MQFFormatNameElement.SourceQueueManager")?;
                let qm = r.guid("MQFFormatNameElement.SourceQueueManager")?;
                let id = r.u32("MQFFormatNameElement.PrivateQueueIdentifier")?;
                Ok(MqfElement::Private { qm, id })
            }
            Self::DIRECT => {
                r.align2("MQFDirectQueueFormatName")?;
                let start = *r;
                let mut n = 0usize;
                // Scan for the terminating NUL; every step consumes 2 bytes, so the loop is
                // bounded by the list length.
                loop {
                    n += 2;
                    if r.u16("MQFDirectQueueFormatName.DirectFormatName")? == 0 {
                        break;
                    }
                }
                let mut s = start;
                Ok(MqfElement::Direct(Utf16(
                    s.take(n, "MQFDirectQueueFormatName.DirectFormatName")?,
                )))
            }
            Self::DISTRIBUTION_LIST => {
                r.align4("MQFDistributionQueueFormatName")?;
                Ok(MqfElement::DistributionList(r.guid(
                    "MQFDistributionQueueFormatName.DistributionListIdentifier",
                )?))
            }
            _ => Err(bad(
                ErrorKind::BadValue,
                "MQFFormatNameElement.FormatType",
                at,
            )),
        }
    }

    /// Writes one element. `w` must be positioned relative to a 4-aligned origin.
    fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        w.u16(self.format_type(), "MQFFormatNameElement.FormatType")?;
        match self {
            MqfElement::Public(g) => w.guid(g, "MQFFormatNameElement.PublicQueueIdentifier"),
            MqfElement::Private { qm, id } => {
                w.align4("MQFFormatNameElement.SourceQueueManager")?;
                w.guid(qm, "MQFFormatNameElement.SourceQueueManager")?;
                w.u32(*id, "MQFFormatNameElement.PrivateQueueIdentifier")
            }
            MqfElement::Direct(s) => {
                let at = w.pos();
                // The name carries no length: it must end with its only NUL, or a reader
                // would see a different list.
                let units = s.byte_len() / 2;
                let nul_ok = s.byte_len() % 2 == 0
                    && units > 0
                    && s.units().position(|u| u == 0) == Some(units - 1);
                if !nul_ok {
                    return Err(bad(
                        ErrorKind::BadValue,
                        "MQFDirectQueueFormatName.DirectFormatName",
                        at,
                    ));
                }
                w.align2("MQFDirectQueueFormatName")?;
                w.put(s.0, "MQFDirectQueueFormatName.DirectFormatName")
            }
            MqfElement::DistributionList(g) => {
                w.align4("MQFDistributionQueueFormatName")?;
                w.guid(
                    g,
                    "MQFDistributionQueueFormatName.DistributionListIdentifier",
                )
            }
        }
    }
}

/// Iterator over a validated format-name list.
#[derive(Clone, Debug)]
pub struct MqfElements<'a> {
    r: Reader<'a>,
    left: u32,
}

impl<'a> Iterator for MqfElements<'a> {
    type Item = MqfElement<'a>;

    fn next(&mut self) -> Option<MqfElement<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        match MqfElement::parse(&mut self.r) {
            Ok(e) => Some(e),
            Err(_) => {
                // Unreachable for a list that came through `MqfAddressHeader::parse`; a
                // hand-built list that is malformed simply ends early.
                self.left = 0;
                None
            }
        }
    }
}

/// MQFAddressHeader (MS-MQMQ 2.2.20.2): one of the three format-name lists of a
/// MultiQueueFormatHeader.
///
/// ```text
/// 0 u32 HeaderSize (12 + list incl. its end padding)   4 u16 HeaderID   6 u16 Reserved
/// 8 u32 ElementCount                                   12 FormatNameList, end padded to 4
/// ```
/// `list` holds the elements' bytes exactly (interior alignment included, end padding not).
/// A HeaderSize with or without the end padding is accepted; the encoder includes it, since
/// the spec makes the padding part of FormatNameList.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MqfAddressHeader<'a> {
    pub element_count: u32,
    pub list: &'a [u8],
}

impl<'a> MqfAddressHeader<'a> {
    pub const FIXED_LEN: usize = 12;
    pub const DESTINATION_ID: u16 = 0x0064;
    pub const ADMIN_ID: u16 = 0x00C8;
    pub const RESPONSE_ID: u16 = 0x012C;
    pub const SIGNATURE_ID: u16 = 0x015E;

    /// An empty list (ElementCount 0).
    pub const EMPTY: MqfAddressHeader<'static> = MqfAddressHeader {
        element_count: 0,
        list: &[],
    };

    pub fn elements(&self) -> MqfElements<'a> {
        MqfElements {
            r: Reader::new(self.list),
            left: self.element_count,
        }
    }

    /// Builds a list: writes `elements` into `out` and returns the header that borrows it.
    pub fn build(elements: &[MqfElement<'_>], out: &'a mut [u8]) -> Result<MqfAddressHeader<'a>> {
        let mut w = Writer::new(out);
        for e in elements {
            e.encode(&mut w)?;
        }
        let n = w.pos();
        let element_count = len_u32(elements.len(), "MQFAddressHeader.ElementCount", 0)?;
        Ok(MqfAddressHeader {
            element_count,
            list: &out[..n],
        })
    }

    /// Parses a header whose HeaderID must be `id`; the elements must fit inside HeaderSize.
    pub fn parse(r: &mut Reader<'a>, id: u16) -> Result<Self> {
        let start = r.abs();
        let header_size = r.u32("MQFAddressHeader.HeaderSize")? as usize;
        let id_at = r.abs();
        if r.u16("MQFAddressHeader.HeaderID")? != id {
            return Err(bad(ErrorKind::BadValue, "MQFAddressHeader.HeaderID", id_at));
        }
        r.u16("MQFAddressHeader.Reserved")?;
        let element_count = r.u32("MQFAddressHeader.ElementCount")?;
        let list_len = header_size.checked_sub(Self::FIXED_LEN).ok_or(bad(
            ErrorKind::SizeMismatch,
            "MQFAddressHeader.HeaderSize",
            start,
        ))?;
        let list_at = r.abs();
        let region = r.take(list_len, "MQFAddressHeader.FormatNameList")?;
        // Elements are parsed inside the region HeaderSize declares, never past it.
        let mut lr = Reader::with_base(region, list_at);
        for _ in 0..element_count {
            MqfElement::parse(&mut lr)?;
        }
        let used = lr.pos();
        if pad4(used) < list_len {
            return Err(bad(
                ErrorKind::SizeMismatch,
                "MQFAddressHeader.HeaderSize",
                start,
            ));
        }
        Ok(MqfAddressHeader {
            element_count,
            list: &region[..used],
        })
    }

    pub fn encoded_len(&self) -> usize {
        Self::FIXED_LEN.saturating_add(pad4(self.list.len()))
    }

    pub fn encode(&self, w: &mut Writer<'_>, id: u16) -> Result<()> {
        let at = w.pos();
        // The list is raw bytes; check it is exactly `element_count` valid elements so the
        // receiver reads back the same list.
        let mut lr = Reader::new(self.list);
        for _ in 0..self.element_count {
            MqfElement::parse(&mut lr)
                .map_err(|e| bad(e.kind, e.field, at + Self::FIXED_LEN + e.offset))?;
        }
        if lr.remaining() != 0 {
            return Err(bad(
                ErrorKind::SizeMismatch,
                "MQFAddressHeader.ElementCount",
                at + 8,
            ));
        }
        let header_size = len_u32(self.encoded_len(), "MQFAddressHeader.HeaderSize", at)?;
        w.u32(header_size, "MQFAddressHeader.HeaderSize")?;
        w.u16(id, "MQFAddressHeader.HeaderID")?;
        w.u16(0, "MQFAddressHeader.Reserved")?;
        w.u32(self.element_count, "MQFAddressHeader.ElementCount")?;
        w.put(self.list, "MQFAddressHeader.FormatNameList")?;
        w.align4("MQFAddressHeader.FormatNameList")
    }
}

/// MultiQueueFormatHeader (MS-MQMQ 2.2.20.1-2.2.20.3; DIGEST §5.9). Present iff
/// UserHeader.Flags.MQ.
///
/// ```text
/// Destination MQFAddressHeader (HeaderID 0x0064), padded to 4
/// Administration MQFAddressHeader (0x00C8), padded to 4
/// Response MQFAddressHeader (0x012C), padded to 4
/// MQFSignatureHeader: u16 ID (0x015E), u16 Reserved, u32 Size, Signature[Size]
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultiQueueFormatHeader<'a> {
    pub destination: MqfAddressHeader<'a>,
    pub administration: MqfAddressHeader<'a>,
    pub response: MqfAddressHeader<'a>,
    /// MQFSignatureHeader.Signature.
    pub signature: &'a [u8],
}

impl<'a> MultiQueueFormatHeader<'a> {
    pub fn parse(r: &mut Reader<'a>) -> Result<Self> {
        let destination = MqfAddressHeader::parse(r, MqfAddressHeader::DESTINATION_ID)?;
        r.align4("MQFAddressHeader")?;
        let administration = MqfAddressHeader::parse(r, MqfAddressHeader::ADMIN_ID)?;
        r.align4("MQFAddressHeader")?;
        let response = MqfAddressHeader::parse(r, MqfAddressHeader::RESPONSE_ID)?;
        r.align4("MQFAddressHeader")?;
        let at = r.abs();
        if r.u16("MQFSignatureHeader.ID")? != MqfAddressHeader::SIGNATURE_ID {
            return Err(bad(ErrorKind::BadValue, "MQFSignatureHeader.ID", at));
        }
        r.u16("MQFSignatureHeader.Reserved")?;
        let size = r.u32("MQFSignatureHeader.Size")? as usize;
        let signature = r.take(size, "MQFSignatureHeader.Signature")?;
        Ok(MultiQueueFormatHeader {
            destination,
            administration,
            response,
            signature,
        })
    }

    /// Bytes from the header start to the end of the signature (without final padding).
    pub fn encoded_len(&self) -> usize {
        self.destination
            .encoded_len()
            .saturating_add(self.administration.encoded_len())
            .saturating_add(self.response.encoded_len())
            .saturating_add(8)
            .saturating_add(self.signature.len())
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        self.destination
            .encode(w, MqfAddressHeader::DESTINATION_ID)?;
        self.administration.encode(w, MqfAddressHeader::ADMIN_ID)?;
        self.response.encode(w, MqfAddressHeader::RESPONSE_ID)?;
        let at = w.pos();
        let size = len_u32(self.signature.len(), "MQFSignatureHeader.Size", at + 4)?;
        w.u16(MqfAddressHeader::SIGNATURE_ID, "MQFSignatureHeader.ID")?;
        w.u16(0, "MQFSignatureHeader.Reserved")?;
        w.u32(size, "MQFSignatureHeader.Size")?;
        w.put(self.signature, "MQFSignatureHeader.Signature")
    }
}

// ---------------------------------------------------------------------------------------------
// SRMP sections (UserHeader.Flags.AH): HTTP-only, never sent on 1801
// ---------------------------------------------------------------------------------------------

/// SRMPEnvelopeHeader (MS-MQRR 2.2.5.1.2; DIGEST §5.10). Only in messages that arrived over
/// HTTP (UserHeader.AH); a spec-conforming 1801 peer never sends it, but CVE-2023-21554 was
/// exploited through exactly this path, so it is parsed with checked arithmetic and refused
/// by the protocol layer.
///
/// ```text
/// 0 u16 HeaderId   2 u16 Reserved   4 u32 DataLength (WCHARs, per the QueueJumper packet)
/// 8 Data[2*DataLength] (UTF-16 SOAP envelope incl. NUL), then padding to 4
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrmpEnvelopeHeader<'a> {
    pub header_id: u16,
    pub data: Utf16<'a>,
}

impl<'a> SrmpEnvelopeHeader<'a> {
    pub fn parse(r: &mut Reader<'a>) -> Result<Self> {
        let header_id = r.u16("SRMPEnvelopeHeader.HeaderId")?;
        r.u16("SRMPEnvelopeHeader.Reserved")?;
        let len_at = r.abs();
        let wchars = r.u32("SRMPEnvelopeHeader.DataLength")? as usize;
        let bytes = wchars.checked_mul(2).ok_or(bad(
            ErrorKind::Overflow,
            "SRMPEnvelopeHeader.DataLength",
            len_at,
        ))?;
        let data = Utf16(r.take(bytes, "SRMPEnvelopeHeader.Data")?);
        Ok(SrmpEnvelopeHeader { header_id, data })
    }

    pub fn encoded_len(&self) -> usize {
        8usize.saturating_add(self.data.byte_len())
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        let at = w.pos();
        if self.data.byte_len() % 2 != 0 {
            return Err(bad(
                ErrorKind::BadValue,
                "SRMPEnvelopeHeader.DataLength",
                at + 4,
            ));
        }
        let wchars = len_u32(
            self.data.byte_len() / 2,
            "SRMPEnvelopeHeader.DataLength",
            at + 4,
        )?;
        w.u16(self.header_id, "SRMPEnvelopeHeader.HeaderId")?;
        w.u16(0, "SRMPEnvelopeHeader.Reserved")?;
        w.u32(wchars, "SRMPEnvelopeHeader.DataLength")?;
        w.put(self.data.0, "SRMPEnvelopeHeader.Data")
    }
}

/// CompoundMessageHeader (MS-MQRR 2.2.5.1.2; DIGEST §5.10): the raw HTTP request of an SRMP
/// message, with the message body located inside it.
///
/// ```text
/// 0 u16 HeaderId  2 u16 Reserved  4 u32 HTTPBodySize  8 u32 MsgBodySize  12 u32 MsgBodyOffset
/// 16 Data[HTTPBodySize], then padding to 4
/// ```
/// Validated: `MsgBodyOffset + MsgBodySize <= HTTPBodySize`, computed without overflow. That
/// unchecked sum is the class of bug behind CVE-2023-21554.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompoundMessageHeader<'a> {
    pub header_id: u16,
    pub http_body: &'a [u8],
    pub msg_body_size: u32,
    pub msg_body_offset: u32,
}

impl<'a> CompoundMessageHeader<'a> {
    pub fn parse(r: &mut Reader<'a>) -> Result<Self> {
        let header_id = r.u16("CompoundMessageHeader.HeaderId")?;
        r.u16("CompoundMessageHeader.Reserved")?;
        let http_body_size = r.u32("CompoundMessageHeader.HTTPBodySize")? as usize;
        let size_at = r.abs();
        let msg_body_size = r.u32("CompoundMessageHeader.MsgBodySize")?;
        let msg_body_offset = r.u32("CompoundMessageHeader.MsgBodyOffset")?;
        let http_body = r.take(http_body_size, "CompoundMessageHeader.Data")?;
        let c = CompoundMessageHeader {
            header_id,
            http_body,
            msg_body_size,
            msg_body_offset,
        };
        if c.msg_body_range().is_none() {
            return Err(bad(
                ErrorKind::Overflow,
                "CompoundMessageHeader.MsgBodySize",
                size_at,
            ));
        }
        Ok(c)
    }

    fn msg_body_range(&self) -> Option<std::ops::Range<usize>> {
        let start = self.msg_body_offset as usize;
        let end = start.checked_add(self.msg_body_size as usize)?;
        (end <= self.http_body.len()).then_some(start..end)
    }

    /// The message body inside the HTTP request (empty if the header was built inconsistently;
    /// a parsed header is always consistent).
    pub fn msg_body(&self) -> &'a [u8] {
        match self.msg_body_range() {
            Some(range) => self.http_body.get(range).unwrap_or(&[]),
            None => &[],
        }
    }

    pub fn encoded_len(&self) -> usize {
        16usize.saturating_add(self.http_body.len())
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        let at = w.pos();
        if self.msg_body_range().is_none() {
            return Err(bad(
                ErrorKind::Overflow,
                "CompoundMessageHeader.MsgBodySize",
                at + 8,
            ));
        }
        let size = len_u32(
            self.http_body.len(),
            "CompoundMessageHeader.HTTPBodySize",
            at + 4,
        )?;
        w.u16(self.header_id, "CompoundMessageHeader.HeaderId")?;
        w.u16(0, "CompoundMessageHeader.Reserved")?;
        w.u32(size, "CompoundMessageHeader.HTTPBodySize")?;
        w.u32(self.msg_body_size, "CompoundMessageHeader.MsgBodySize")?;
        w.u32(self.msg_body_offset, "CompoundMessageHeader.MsgBodyOffset")?;
        w.put(self.http_body, "CompoundMessageHeader.Data")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sid_renders_like_windows() {
        let sid = [
            0x01, 0x05, 0, 0, 0, 0, 0, 0x05, 0x15, 0, 0, 0, 0xAD, 0x4A, 0x9E, 0xBD, 0x36, 0xD9,
            0xFA, 0x3D, 0x63, 0xA6, 0x56, 0xDA, 0xE8, 0x03, 0, 0,
        ];
        let s = Sid::parse(&sid).expect("well-formed SID");
        assert_eq!(
            s.to_string(),
            "S-1-5-21-3181267629-1039849782-3663111779-1000"
        );
        assert!(Sid::parse(&sid[..27]).is_none());
        let big = [1, 0, 0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC];
        assert_eq!(
            Sid::parse(&big).expect("no sub-authorities").to_string(),
            "S-1-0x123456789ABC"
        );
    }

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

    #[test]
    fn calg_names_and_kinds() {
        for c in [
            Calg::MD2,
            Calg::MD4,
            Calg::MD5,
            Calg::SHA1,
            Calg::SHA256,
            Calg::SHA512,
        ] {
            assert!(c.is_hash() && !c.is_cipher(), "{c:?}");
        }
        for c in [
            Calg::RC2,
            Calg::RC4,
            Calg::AES128,
            Calg::AES192,
            Calg::AES256,
        ] {
            assert!(c.is_cipher() && !c.is_hash(), "{c:?}");
        }
        assert_eq!(Calg(0x8003).name(), "MD5");
        assert_eq!(Calg(0x8005).name(), "unknown");
        assert!(!Calg(0x8005).is_hash());
    }

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

    #[test]
    fn mqf_list_round_trips_with_alignment() {
        let name = crate::wire::utf16z("TCP:1.2.3.4\\q");
        let g = Guid([7; 16]);
        let elements = [
            MqfElement::Public(g),
            MqfElement::Direct(Utf16(&name)),
            MqfElement::Private { qm: g, id: 9 },
            MqfElement::Direct(Utf16(&name)),
            MqfElement::DistributionList(g),
        ];
        let mut buf = [0u8; 256];
        let h = MqfAddressHeader::build(&elements, &mut buf).expect("fits");
        let got: Vec<_> = h.elements().collect();
        assert_eq!(got, elements);
        // Public GUID right after its FormatType: 2 + 16 = 18; the direct name starts at 20.
        assert_eq!(&h.list[20..22], &name[..2]);
    }

    #[test]
    fn compound_message_offsets_are_overflow_checked() {
        let mut pkt = vec![0u8; 0];
        pkt.extend_from_slice(&[0xF4, 0x01, 0, 0]);
        pkt.extend_from_slice(&8u32.to_le_bytes());
        pkt.extend_from_slice(&7u32.to_le_bytes());
        pkt.extend_from_slice(&u32::MAX.to_le_bytes());
        pkt.extend_from_slice(&[0u8; 8]);
        let e = CompoundMessageHeader::parse(&mut Reader::new(&pkt)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overflow);
        pkt[12..16].copy_from_slice(&1u32.to_le_bytes());
        let c = CompoundMessageHeader::parse(&mut Reader::new(&pkt)).expect("in range");
        assert_eq!(c.msg_body().len(), 7);
    }
}
