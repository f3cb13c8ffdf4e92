//! MSMQ message signatures (MS-MQQB 3.1.5.8.3 verify, 3.1.7.1.4 sign; MS-MQMQ 2.5, 2.2.20.6;
//! DIGEST §13.1).
//!
//! A signed UserMessage carries, in its SecurityHeader, an RSA signature over a digest of the
//! fields MS-MQMQ 2.5 lists ([`digest`]) and the sender's X.509 certificate. lior verifies it
//! at the target queue manager with the public key of that certificate (MSMQ's "external
//! certificate": no certificate store, no directory; like MSMQ, lior does not validate the
//! certificate itself, it proves only that the holder of its key signed these fields), and
//! records the result the way Windows does, in the stored SecurityHeader.Flags.AS (1, 3 or 5
//! for an MSMQ 1.0, 2.0 or 3.0 signature; 0 otherwise, whatever the sender put there).
//!
//! Interpretations the spec leaves open (DIGEST §17.8), besides the field bytes of [`digest`]:
//! - "RSA decrypt the Signature and compare with the hash" is read as RSASSA-PKCS1-v1_5 with
//!   the hash's DigestInfo (RFC 8017 8.2, the RFC the spec cites; CryptoAPI's CryptSignHash
//!   makes the same). The byte order of the signature is not said: RFC 8017 writes it
//!   big-endian, CryptoAPI little-endian. Verification accepts either; lior signs in
//!   CryptoAPI's order ([`SIGN_LITTLE_ENDIAN`]), the one a Windows receiver reads.
//! - Signed messages lior sends carry no sender id (ST = 0): a SID or QM GUID makes a Windows
//!   receiver look the certificate up in Active Directory, which a workgroup does not have.
//! - MS-MQQB's product notes list MD2, MD4, MD5, SHA-1, SHA-256 and SHA-512; lior verifies
//!   MD5, SHA-1, SHA-256 and SHA-512. MD5 and SHA-1 are weak: refused unless listed in
//!   `Parameters.Security.WeakHashAlgorithms` (Windows 7+'s registry value of that name enables
//!   all weak hashes by its presence; lior's lists the ones it enables). MD2 and MD4 are
//!   always refused.

mod digest;

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use x509_cert::der::{Decode as _, DecodePem as _, Encode as _};

pub use digest::{digest, feed_signed_fields, signed_bytes, SigKind};

use crate::config::Security;
use crate::wire::base::BASE_HEADER_LEN;
use crate::wire::headers::{Calg, SecurityFlags, SecurityHeader, SenderIdType};
use crate::wire::pad4;
use crate::wire::user::UserMessage;

/// lior writes signatures in CryptoAPI's little-endian byte order (see the module comment).
pub const SIGN_LITTLE_ENDIAN: bool = true;

/// A hash algorithm a signature may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlg {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlg {
    pub const ALL: [HashAlg; 4] = [
        HashAlg::Md5,
        HashAlg::Sha1,
        HashAlg::Sha256,
        HashAlg::Sha512,
    ];

    /// From MessagePropertiesHeader.HashAlgorithm (a CryptoAPI ALG_ID).
    pub fn from_calg(c: Calg) -> Option<HashAlg> {
        match c {
            Calg::MD5 => Some(HashAlg::Md5),
            Calg::SHA1 => Some(HashAlg::Sha1),
            Calg::SHA256 => Some(HashAlg::Sha256),
            Calg::SHA512 => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    pub fn calg(self) -> Calg {
        match self {
            HashAlg::Md5 => Calg::MD5,
            HashAlg::Sha1 => Calg::SHA1,
            HashAlg::Sha256 => Calg::SHA256,
            HashAlg::Sha512 => Calg::SHA512,
        }
    }

    /// The configuration's name (`HashAlgorithm = "SHA512"`).
    pub fn config_name(self) -> &'static str {
        match self {
            HashAlg::Md5 => "MD5",
            HashAlg::Sha1 => "SHA1",
            HashAlg::Sha256 => "SHA256",
            HashAlg::Sha512 => "SHA512",
        }
    }

    pub fn from_config_name(s: &str) -> Option<HashAlg> {
        HashAlg::ALL.into_iter().find(|a| a.config_name() == s)
    }

    /// MD5 and SHA-1: accepted only when configured (Windows 7+ disables them by default).
    pub fn is_weak(self) -> bool {
        matches!(self, HashAlg::Md5 | HashAlg::Sha1)
    }

    fn pkcs1(self) -> Pkcs1v15Sign {
        match self {
            HashAlg::Md5 => Pkcs1v15Sign::new::<md5::Md5>(),
            HashAlg::Sha1 => Pkcs1v15Sign::new::<sha1::Sha1>(),
            HashAlg::Sha256 => Pkcs1v15Sign::new::<sha2::Sha256>(),
            HashAlg::Sha512 => Pkcs1v15Sign::new::<sha2::Sha512>(),
        }
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.calg().name())
    }
}

/// Which hashes an arriving signature may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub allow_md5: bool,
    pub allow_sha1: bool,
}

impl Policy {
    /// SHA-256 and SHA-512 only (the default).
    pub const STRICT: Policy = Policy {
        allow_md5: false,
        allow_sha1: false,
    };
    /// Every hash lior can compute (`lior decode` reports, it does not judge).
    pub const ANY: Policy = Policy {
        allow_md5: true,
        allow_sha1: true,
    };

    /// From `Parameters.Security.WeakHashAlgorithms` (checked by `Config::validate`).
    pub fn from_config(s: &Security) -> Policy {
        let has = |n: &str| s.WeakHashAlgorithms.iter().any(|w| w == n);
        Policy {
            allow_md5: has("MD5"),
            allow_sha1: has("SHA1"),
        }
    }

    pub fn allows(&self, alg: HashAlg) -> bool {
        match alg {
            HashAlg::Md5 => self.allow_md5,
            HashAlg::Sha1 => self.allow_sha1,
            HashAlg::Sha256 | HashAlg::Sha512 => true,
        }
    }
}

/// Who signed a message whose signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub kind: SigKind,
    pub hash: HashAlg,
    /// The sender's SID from SecurityData.SecurityID (ST = 1), as text. Not checked against
    /// the certificate: that needs the directory (MS-MQQB 3.1.5.8.3); see [`Self::principal`].
    pub sid: Option<String>,
    /// SHA-256 of the sender certificate's DER bytes, lower-case hex.
    pub cert_sha256: String,
    /// The certificate's subject, RFC 4514 text.
    pub subject: String,
}

impl Authenticated {
    /// The principal a rights check should use: `cert:<sha256>`, the certificate that signed.
    /// The SID the message names is the sender's claim, not proven by the signature without
    /// the directory that binds certificates to SIDs.
    pub fn principal(&self) -> String {
        format!("cert:{}", self.cert_sha256)
    }
}

/// The outcome of checking a message's signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// No signature (SecurityData.Signature and MQFSignatureHeader both empty).
    Absent,
    Valid(Authenticated),
    /// Signed, but it does not verify, or cannot be verified; the reason says which.
    Invalid(String),
}

/// The sender certificate's public key, subject and fingerprint.
fn read_certificate(der: &[u8]) -> Result<(RsaPublicKey, String, String), String> {
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| format!("sender certificate is not a DER X.509 certificate: {e}"))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("sender certificate's public key: {e}"))?;
    // RsaPublicKey refuses moduli above 4096 bits: a verification costs a bounded time.
    let key = RsaPublicKey::from_public_key_der(&spki)
        .map_err(|e| format!("sender certificate has no usable RSA public key: {e}"))?;
    let subject = cert.tbs_certificate.subject.to_string();
    Ok((key, subject, hex(&sha256(der))))
}

/// SHA-256 of a certificate's DER bytes, lower-case hex (how `Authenticated::cert_sha256`
/// and `RegisteredCertificates` name a certificate).
pub fn sha256_hex(der: &[u8]) -> String {
    hex(&sha256(der))
}

fn sha256(b: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// RSASSA-PKCS1-v1_5 in either byte order (see the module comment).
fn rsa_verifies(key: &RsaPublicKey, alg: HashAlg, hashed: &[u8], sig: &[u8]) -> bool {
    if key.verify(alg.pkcs1(), hashed, sig).is_ok() {
        return true;
    }
    let mut rev = sig.to_vec();
    rev.reverse();
    key.verify(alg.pkcs1(), hashed, &rev).is_ok()
}

/// Verifies `m`'s signature as MS-MQQB 3.1.5.8.3 does, with the certificate it carries: the
/// SecurityData.Signature as MSMQ 2.0, then as MSMQ 1.0; else the MQFSignatureHeader's as
/// MSMQ 3.0. The hash is MessagePropertiesHeader.HashAlgorithm, which `policy` must allow.
pub fn verify(m: &UserMessage<'_>, policy: &Policy) -> Verification {
    let sec = m.security.as_ref();
    let sd_sig = sec.map_or(&[][..], |s| s.signature);
    let mqf_sig = m.multi_queue.as_ref().map_or(&[][..], |h| h.signature);
    if sd_sig.is_empty() && mqf_sig.is_empty() {
        return Verification::Absent;
    }
    let cert = sec.map_or(&[][..], |s| s.sender_cert);
    if cert.is_empty() {
        return Verification::Invalid(
            "signed without a sender certificate (lior has no directory to find the sender's \
             key)"
                .into(),
        );
    }
    let calg = m.properties.hash_algorithm;
    let Some(alg) = HashAlg::from_calg(calg) else {
        return Verification::Invalid(format!(
            "HashAlgorithm {calg:?} is not one lior verifies (MD5, SHA-1, SHA-256, SHA-512)"
        ));
    };
    if !policy.allows(alg) {
        return Verification::Invalid(format!(
            "signed with {alg}, a weak hash refused by default; add \"{}\" to \
             Parameters.Security.WeakHashAlgorithms to accept it",
            alg.config_name()
        ));
    }
    let (key, subject, cert_sha256) = match read_certificate(cert) {
        Ok(k) => k,
        Err(e) => return Verification::Invalid(e),
    };
    let kinds: &[SigKind] = if !sd_sig.is_empty() {
        &[SigKind::Msmq20, SigKind::Msmq10]
    } else {
        &[SigKind::Msmq30]
    };
    let sig = if sd_sig.is_empty() { mqf_sig } else { sd_sig };
    for &kind in kinds {
        if rsa_verifies(&key, alg, &digest(m, kind, alg), sig) {
            return Verification::Valid(Authenticated {
                kind,
                hash: alg,
                sid: sec.and_then(|s| s.sender_sid()).map(|s| s.to_string()),
                cert_sha256,
                subject,
            });
        }
    }
    Verification::Invalid(format!(
        "signature does not verify ({} with {alg}, certificate {subject})",
        if sd_sig.is_empty() {
            "MSMQ 3.0"
        } else {
            "MSMQ 2.0 or 1.0"
        }
    ))
}

/// An arriving message as it is to be stored: its frame with SecurityHeader.Flags.AS set to
/// the verified signature type (or cleared), and who signed it.
#[derive(Debug)]
pub struct Judged<'f> {
    pub frame: Cow<'f, [u8]>,
    pub authenticated: Option<Authenticated>,
}

impl Judged<'_> {
    /// For the rights check: whether the message is authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.is_some()
    }
}

/// Where the SecurityHeader of `m` starts in its frame (it follows the UserHeader and the
/// TransactionHeader, each started on a 4-byte boundary).
fn security_header_offset(m: &UserMessage<'_>) -> usize {
    let mut at = pad4(BASE_HEADER_LEN + m.user.encoded_len());
    if let Some(t) = &m.transaction {
        at = pad4(at + t.encoded_len());
    }
    at
}

/// MS-MQQB 3.1.5.8.3 for a message at its target queue manager: verifies a signature with the
/// hashes `security` allows and returns the frame to store, with the result in
/// SecurityHeader.Flags.AS (a copy only when AS changes: signed messages, or a sender that set
/// AS itself). `Err` is the reason to refuse it with NACK_BAD_SIGNATURE.
pub fn judge_arrival<'f>(
    frame: &'f [u8],
    m: &UserMessage<'_>,
    security: &Security,
) -> Result<Judged<'f>, String> {
    let Some(sec) = &m.security else {
        return Ok(Judged {
            frame: Cow::Borrowed(frame),
            authenticated: None,
        });
    };
    let authenticated = match verify(m, &Policy::from_config(security)) {
        Verification::Absent => None,
        Verification::Valid(a) => Some(a),
        Verification::Invalid(why) => return Err(why),
    };
    let want = authenticated.as_ref().map_or(0, |a| a.kind.as_value());
    if sec.flags.authentication_signature_type() == want {
        return Ok(Judged {
            frame: Cow::Borrowed(frame),
            authenticated,
        });
    }
    let at = security_header_offset(m);
    let flags = SecurityFlags(
        (sec.flags.0 & !SecurityFlags::AS_MASK) | (u16::from(want) << SecurityFlags::AS_SHIFT),
    );
    let mut copy = frame.to_vec();
    match copy.get_mut(at..at + 2) {
        Some(b) if u16::from_le_bytes([b[0], b[1]]) == sec.flags.0 => {
            b.copy_from_slice(&flags.0.to_le_bytes())
        }
        // The layout is the parser's own; a mismatch is a bug, and storing AS unchecked is not
        // an option.
        _ => return Err("internal: SecurityHeader not where the packet layout puts it".into()),
    }
    Ok(Judged {
        frame: Cow::Owned(copy),
        authenticated,
    })
}

/// `frame` with a SecurityHeader.Flags.AS its sender set cleared (a copy only then), for
/// messages stored without [`judge_arrival`] (the dead-letter queue): AS says "verified here",
/// which the sender cannot claim. A frame [`judge_arrival`] already marked (its AS bytes differ
/// from what `m` was parsed with) is kept as it is.
pub fn clear_claimed_authentication<'f>(frame: &'f [u8], m: &UserMessage<'_>) -> Cow<'f, [u8]> {
    let Some(sec) = &m.security else {
        return Cow::Borrowed(frame);
    };
    if sec.flags.authentication_signature_type() == 0 {
        return Cow::Borrowed(frame);
    }
    let at = security_header_offset(m);
    match frame.get(at..at + 2) {
        Some(b) if u16::from_le_bytes([b[0], b[1]]) == sec.flags.0 => {
            let mut copy = frame.to_vec();
            let cleared = sec.flags.0 & !SecurityFlags::AS_MASK;
            copy[at..at + 2].copy_from_slice(&cleared.to_le_bytes());
            Cow::Owned(copy)
        }
        _ => Cow::Borrowed(frame),
    }
}

/// The verified signature type recorded in a stored message (SecurityHeader.Flags.AS), if any.
pub fn stored_authentication(m: &UserMessage<'_>) -> Option<SigKind> {
    let sec = m.security.as_ref()?;
    SigKind::from_as_value(sec.flags.authentication_signature_type())
}

/// The certificate and key lior signs the messages it sends with
/// (`Parameters.Security.SigningCertificate` and `SigningKey`), and the hash
/// (`HashAlgorithm`).
pub struct Signer {
    key: RsaPrivateKey,
    cert_der: Vec<u8>,
    hash: HashAlg,
    subject: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("subject", &self.subject)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// From the configured PEM files; None when signing is not configured.
    pub fn from_config(s: &Security) -> Result<Option<Signer>, String> {
        let (Some(cert), Some(key)) = (&s.SigningCertificate, &s.SigningKey) else {
            return Ok(None);
        };
        let read = |p: &Path, what: &str| {
            std::fs::read_to_string(p).map_err(|e| {
                format!(
                    "Parameters.Security.{what} {}: cannot read: {e}",
                    p.display()
                )
            })
        };
        let hash = HashAlg::from_config_name(&s.HashAlgorithm).ok_or_else(|| {
            format!(
                "Parameters.Security.HashAlgorithm {:?}: expected MD5, SHA1, SHA256 or SHA512",
                s.HashAlgorithm
            )
        })?;
        Signer::from_pem(
            &read(cert, "SigningCertificate")?,
            &read(key, "SigningKey")?,
            hash,
        )
        .map(Some)
        .map_err(|e| {
            format!(
                "Parameters.Security.SigningCertificate {} / SigningKey {}: {e}",
                cert.display(),
                key.display()
            )
        })
    }

    /// A PEM certificate and its RSA private key (PKCS#8 `PRIVATE KEY` or PKCS#1
    /// `RSA PRIVATE KEY`).
    pub fn from_pem(cert_pem: &str, key_pem: &str, hash: HashAlg) -> Result<Signer, String> {
        let cert = x509_cert::Certificate::from_pem(cert_pem.as_bytes())
            .map_err(|e| format!("not a PEM X.509 certificate: {e}"))?;
        let cert_der = cert
            .to_der()
            .map_err(|e| format!("certificate does not encode: {e}"))?;
        if cert_der.len() > SecurityHeader::SENDER_CERT_SIZE_MAX {
            return Err(format!(
                "certificate is {} bytes; a SecurityHeader carries at most {}",
                cert_der.len(),
                SecurityHeader::SENDER_CERT_SIZE_MAX
            ));
        }
        let key = RsaPrivateKey::from_pkcs8_pem(key_pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(key_pem))
            .map_err(|e| format!("not a PEM RSA private key (PKCS#8 or PKCS#1): {e}"))?;
        let (public, subject, _) = read_certificate(&cert_der)?;
        if public != key.to_public_key() {
            return Err("the key is not the certificate's (public keys differ)".into());
        }
        Ok(Signer {
            key,
            cert_der,
            hash,
            subject,
        })
    }

    pub fn hash(&self) -> HashAlg {
        self.hash
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Sets `m`'s HashAlgorithm and returns its MSMQ 2.0 signature (MS-MQQB 3.1.7.1.4), in
    /// CryptoAPI byte order. Sign last: every signed field must be final.
    pub fn signature(&self, m: &mut UserMessage<'_>) -> Result<Vec<u8>, String> {
        m.properties.hash_algorithm = self.hash.calg();
        let hashed = digest(m, SigKind::Msmq20, self.hash);
        let mut sig = self
            .key
            .sign_with_rng(&mut rsa::rand_core::OsRng, self.hash.pkcs1(), &hashed)
            .map_err(|e| format!("RSA signing failed: {e}"))?;
        if SIGN_LITTLE_ENDIAN {
            sig.reverse();
        }
        Ok(sig)
    }

    /// `frame` (an encoded UserMessage) signed: parsed, signed, encoded again.
    pub fn sign_frame(&self, frame: &[u8]) -> Result<Vec<u8>, String> {
        let mut m = UserMessage::parse(frame)
            .map_err(|e| format!("the message to sign does not parse: {e}"))?;
        let sig = self.signature(&mut m)?;
        self.attach(&mut m, &sig);
        let mut out = vec![0u8; m.frame_len()];
        let n = m
            .encode(&mut out)
            .map_err(|e| format!("the signed message does not encode: {e}"))?;
        out.truncate(n);
        Ok(out)
    }

    /// Puts on `m` a SecurityHeader with `signature` and this certificate (ST = 0, DE and AI
    /// set, AS 0) and syncs its flags and size.
    pub fn attach<'a>(&'a self, m: &mut UserMessage<'a>, signature: &'a [u8]) {
        m.security = Some(SecurityHeader {
            flags: SecurityFlags::default()
                .with_sender_id_type(SenderIdType::NONE)
                .with(SecurityFlags::DE, true)
                .with(SecurityFlags::AI, true),
            sender_id: &[],
            encryption_key: &[],
            signature,
            sender_cert: &self.cert_der,
            provider_info: &[],
        });
        m.sync();
    }
}

#[cfg(test)]
mod tests;
