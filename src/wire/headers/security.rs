//! SecurityHeader (MS-MQMQ 2.2.20.6; DIGEST §5.5) and its SecurityData items, with the
//! sender SID they may carry (MS-DTYP 2.4.2.2).

use std::fmt;

use super::{bad, len_u16, len_u32};
use crate::wire::{pad4, ErrorKind, Guid, Reader, Result, Utf16, Writer};

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
}
