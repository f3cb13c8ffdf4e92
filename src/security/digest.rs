//! The signed fields of a UserMessage and their digest (MS-MQMQ 2.5; MS-MQQB 3.1.5.8.3,
//! 3.1.7.1.4; DIGEST §13.1).
//!
//! The spec lists the fields and their order for each signature type; it does not spell out
//! the bytes of each field (DIGEST §17.8). lior reads "the value of the field" as the field's
//! bytes in the packet, as the wire structures of MS-MQMQ define them, with these choices
//! (each an interpretation, marked [INTERP] where it is made below):
//!
//! - fixed-size fields are their little-endian wire bytes (CorrelationID 20 bytes,
//!   ApplicationTag u32, SourceQueueManager and ConnectorType 16-byte GUIDs in packet form);
//!   the casts the spec writes, `(BYTE)`, `(USHORT)`, `(ULONG)`, give 1, 2 and 4 bytes;
//! - MessageBody is the message body proper (MessageSize bytes), Label the LabelLength WCHARs
//!   including the NUL, ExtensionData its ExtensionSize bytes;
//! - a UserHeader queue field (DestinationQueue, AdminQueue, ResponseQueue) is the queue format
//!   structure of its DQ/AQ/RQ code (MS-MQMQ 2.2.18.1.5, 2.2.18.1.7): a u32 queue number, a
//!   16-byte GUID, GUID + u32, or a DirectQueueFormatName's u16 Count and its Count bytes. The
//!   padding after a direct name is left out: the spec lets it hold any value (MS-MQMQ
//!   2.2.18.1.5.2), so it cannot be part of what a signature protects;
//! - MultiQueueFormatHeader.FormatNameList (MSMQ 3.0) is the Destination list's elements, the
//!   list that stands in for DestinationQueue in a multi-destination signature;
//! - a field that is absent (no admin or response queue, code 1 "same as admin", no
//!   ConnectorType, an empty label or extension) contributes no bytes.

use crate::wire::headers::{MqfAddressHeader, MultiQueueFormatHeader};
use crate::wire::user::{QueueRef, UserMessage};

use super::HashAlg;

/// The three signature formats of MS-MQMQ 2.5 (the AS values Windows records, 1/3/5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigKind {
    /// MSMQ 1.0: six fields (MS-MQMQ 2.5.1). SecurityHeader.Flags.AS = 1.
    Msmq10,
    /// MSMQ 2.0: fifteen fields (MS-MQMQ 2.5.2). AS = 3.
    Msmq20,
    /// MSMQ 3.0, multi-destination messages, signature in the MQFSignatureHeader
    /// (MS-MQMQ 2.5.3). AS = 5.
    Msmq30,
}

impl SigKind {
    /// The SecurityHeader.Flags.AS value MS-MQQB 3.1.5.8.3 sets for a verified signature.
    pub fn as_value(self) -> u8 {
        match self {
            SigKind::Msmq10 => 1,
            SigKind::Msmq20 => 3,
            SigKind::Msmq30 => 5,
        }
    }

    pub fn from_as_value(v: u8) -> Option<SigKind> {
        match v {
            1 => Some(SigKind::Msmq10),
            3 => Some(SigKind::Msmq20),
            5 => Some(SigKind::Msmq30),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SigKind::Msmq10 => "MSMQ 1.0",
            SigKind::Msmq20 => "MSMQ 2.0",
            SigKind::Msmq30 => "MSMQ 3.0",
        }
    }
}

/// Feeds a UserHeader queue field's value to `out` (see the module comment).
fn queue_field(q: &QueueRef<'_>, out: &mut dyn FnMut(&[u8])) {
    match q {
        QueueRef::None | QueueRef::SameAsAdmin => {}
        QueueRef::SourcePrivate(n)
        | QueueRef::DestinationPrivate(n)
        | QueueRef::AdminHostPrivate(n) => out(&n.to_le_bytes()),
        QueueRef::Public(g) => out(&g.0),
        QueueRef::Private { qm, id } => {
            out(&qm.0);
            out(&id.to_le_bytes());
        }
        QueueRef::Direct(s) => {
            // [INTERP] Count (u16) and the name with its NUL; the end padding is left out.
            let count = u16::try_from(s.0.len()).unwrap_or(u16::MAX);
            out(&count.to_le_bytes());
            out(s.0);
        }
    }
}

/// Feeds the fields `kind` signs, in the spec's order, to `out`. One call per field (or per
/// part of a field), so the same walk drives a hasher and the tests that spell the bytes out.
pub fn feed_signed_fields(m: &UserMessage<'_>, kind: SigKind, out: &mut dyn FnMut(&[u8])) {
    let p = &m.properties;
    let u = &m.user;
    // The six fields every format starts with (MS-MQMQ 2.5.1).
    out(&p.correlation_id);
    out(&p.application_tag.to_le_bytes());
    out(p.body());
    out(p.label.0);
    queue_field(&u.response, out);
    queue_field(&u.admin, out);
    if kind == SigKind::Msmq10 {
        return;
    }
    if kind == SigKind::Msmq30 {
        out(p.extension);
        let dest = m
            .multi_queue
            .as_ref()
            .map_or(MqfAddressHeader::EMPTY, |h: &MultiQueueFormatHeader<'_>| {
                h.destination
            });
        out(dest.list);
    }
    out(&u.source_queue_manager.0);
    out(&[u.flags.delivery_mode()]);
    out(&[m.base.flags.priority()]);
    out(&[(u8::from(u.flags.journal_positive()) << 1) | u8::from(u.flags.journal_negative())]);
    out(&[p.flags.0 & 0x0F]);
    out(&p.message_class.0.to_le_bytes());
    out(&p.body_type.to_le_bytes());
    if let Some(g) = &u.connector_type {
        out(&g.0);
    }
    if kind == SigKind::Msmq20 {
        queue_field(&u.destination, out);
    }
}

/// The concatenation of the signed fields (for `lior decode` and tests; hashing streams).
pub fn signed_bytes(m: &UserMessage<'_>, kind: SigKind) -> Vec<u8> {
    let mut v = Vec::new();
    feed_signed_fields(m, kind, &mut |b| v.extend_from_slice(b));
    v
}

/// The digest of the signed fields with `alg`.
pub fn digest(m: &UserMessage<'_>, kind: SigKind, alg: HashAlg) -> Vec<u8> {
    fn run<D: sha2::Digest>(m: &UserMessage<'_>, kind: SigKind) -> Vec<u8> {
        let mut h = D::new();
        feed_signed_fields(m, kind, &mut |b| h.update(b));
        h.finalize().to_vec()
    }
    match alg {
        HashAlg::Md5 => run::<md5::Md5>(m, kind),
        HashAlg::Sha1 => run::<sha1::Sha1>(m, kind),
        HashAlg::Sha256 => run::<sha2::Sha256>(m, kind),
        HashAlg::Sha512 => run::<sha2::Sha512>(m, kind),
    }
}
