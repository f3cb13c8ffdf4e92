//! MessagePropertiesHeader (MS-MQMQ 2.2.19.3; DIGEST §5.6) and the enumerations of its fields:
//! the acknowledgment flags, PrivacyLevel, the CryptoAPI ALG_IDs of HashAlgorithm and
//! EncryptionAlgorithm (DIGEST §7.2) and BodyType (MS-MQMQ 2.2.12; DIGEST §7.5).

use std::fmt;

use super::{bad, len_u32, MessageClass};
use crate::wire::{ErrorKind, Reader, Result, Utf16, Writer};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
