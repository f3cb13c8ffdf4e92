use super::*;
use crate::wire::headers::{AckFlags, MessageClass};
use crate::wire::user::{QueueRef, UserFlags};
use crate::wire::{Guid, Utf16};

/// Test-only keys (tests/vectors/sig/README.md says how they were made).
const SIGNER_KEY: &str = include_str!("../../tests/vectors/sig/signer-key.pem");
const OTHER_KEY: &str = include_str!("../../tests/vectors/sig/other-key.pem");

fn cert_pem(key_pem: &str, cn: &str) -> String {
    let kp = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(key_pem, &rcgen::PKCS_RSA_SHA256)
        .expect("RSA PKCS#8 key");
    let mut params = rcgen::CertificateParams::new(vec![cn.to_string()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn.to_string());
    params.self_signed(&kp).expect("self-signed").pem()
}

fn signer(hash: HashAlg) -> Signer {
    Signer::from_pem(&cert_pem(SIGNER_KEY, "lior-signer"), SIGNER_KEY, hash).expect("signer")
}

const DEST: &[u8] = b"T\0C\0P\0:\x001\x002\x007\0.\x000\0.\x000\0.\x001\0\\\0q\0\0\0";
const RESP: &[u8] = b"O\0S\0:\0h\0\\\0r\0\0\0";
const LABEL: &[u8] = b"h\0i\0\0\0";

/// A message with every signed field set to something distinct.
fn sample<'a>(body: &'a [u8]) -> UserMessage<'a> {
    let src = Guid([0x11; 16]);
    let mut m = UserMessage::new(src, 7, QueueRef::Direct(Utf16(DEST)), Utf16(LABEL), body)
        .with_recoverable(true)
        .with_priority(5)
        .with_admin_queue(
            QueueRef::Private {
                qm: Guid([0x22; 16]),
                id: 0x0000_0404,
            },
            AckFlags(AckFlags::NA | 0x40),
        )
        .with_response_queue(QueueRef::Direct(Utf16(RESP)));
    m.user.flags = m.user.flags.with(UserFlags::JP, true);
    m.user.connector_type = Some(Guid([0x33; 16]));
    m.properties.correlation_id = [0xC0; 20];
    m.properties.application_tag = 0x0102_0304;
    m.properties.message_class = MessageClass(0x0009);
    m.properties.body_type = 0x0000_1011;
    m.properties.extension = b"ext";
    m.sync();
    m
}

/// MS-MQMQ 2.5.1/2.5.2/2.5.3, spelled out field by field without the code under test.
#[test]
fn signed_fields_are_the_specs_in_its_order() {
    let m = sample(b"BODY");
    let mut v10 = Vec::new();
    v10.extend_from_slice(&[0xC0; 20]); // CorrelationID
    v10.extend_from_slice(&[0x04, 0x03, 0x02, 0x01]); // ApplicationTag
    v10.extend_from_slice(b"BODY"); // MessageBody
    v10.extend_from_slice(b"h\0i\0\0\0"); // Label, with its NUL
    v10.extend_from_slice(&[14, 0]); // ResponseQueue: DirectQueueFormatName Count
    v10.extend_from_slice(RESP); //                     and name, no padding
    v10.extend_from_slice(&[0x22; 16]); // AdminQueue: PrivateQueueFormatName GUID
    v10.extend_from_slice(&[0x04, 0x04, 0, 0]); //                               + id
    assert_eq!(signed_bytes(&m, SigKind::Msmq10), v10);

    let mut tail = Vec::new();
    tail.extend_from_slice(&[0x11; 16]); // SourceQueueManager
    tail.push(1); // DM
    tail.push(5); // PR
    tail.push(0b10); // JP << 1 | JN
    tail.push(0x04); // MPH.Flags & 0x0F (0x44 on the wire)
    tail.extend_from_slice(&[0x09, 0x00]); // MessageClass
    tail.extend_from_slice(&[0x11, 0x10, 0, 0]); // BodyType
    tail.extend_from_slice(&[0x33; 16]); // ConnectorType

    let mut v20 = v10.clone();
    v20.extend_from_slice(&tail);
    v20.extend_from_slice(&[DEST.len() as u8, 0]); // DestinationQueue Count
    v20.extend_from_slice(DEST);
    assert_eq!(signed_bytes(&m, SigKind::Msmq20), v20);

    let mut v30 = v10.clone();
    v30.extend_from_slice(b"ext"); // ExtensionData
                                   // No MultiQueueFormatHeader: an empty FormatNameList.
    v30.extend_from_slice(&tail);
    assert_eq!(signed_bytes(&m, SigKind::Msmq30), v30);

    // The digest is the hash of exactly those bytes.
    use sha2::Digest as _;
    assert_eq!(
        digest(&m, SigKind::Msmq20, HashAlg::Sha512),
        sha2::Sha512::digest(&v20).to_vec()
    );
    assert_eq!(
        digest(&m, SigKind::Msmq10, HashAlg::Md5),
        md5::Md5::digest(&v10).to_vec()
    );
}

/// Signs `m` with `s` the way a sender does, returning the encoded frame.
fn signed_frame(s: &Signer, body: &[u8]) -> Vec<u8> {
    let mut m = sample(body);
    let sig = s.signature(&mut m).expect("sign");
    s.attach(&mut m, &sig);
    let mut out = vec![0u8; m.frame_len()];
    let n = m.encode(&mut out).expect("encode");
    out.truncate(n);
    out
}

#[test]
fn sign_then_verify_round_trips_for_each_hash() {
    for hash in HashAlg::ALL {
        let s = signer(hash);
        let frame = signed_frame(&s, b"payload");
        let m = UserMessage::parse(&frame).expect("parses");
        assert_eq!(m.properties.hash_algorithm, hash.calg());
        let sec = m.security.expect("security header");
        assert_eq!(sec.sender_cert, s.cert_der());
        assert_eq!(sec.flags.sender_id_type(), SenderIdType::NONE);
        match verify(&m, &Policy::ANY) {
            Verification::Valid(a) => {
                assert_eq!((a.kind, a.hash), (SigKind::Msmq20, hash));
                assert!(a.subject.contains("lior-signer"), "{}", a.subject);
                assert_eq!(a.cert_sha256.len(), 64);
            }
            other => panic!("{hash:?}: {other:?}"),
        }
    }
}

#[test]
fn changing_any_signed_field_fails_verification() {
    let s = signer(HashAlg::Sha256);
    let frame = signed_frame(&s, b"payload");
    let m = UserMessage::parse(&frame).expect("parses");
    assert!(matches!(
        verify(&m, &Policy::STRICT),
        Verification::Valid(_)
    ));
    let other_dest: &[u8] = b"T\0C\0P\0:\x001\x002\x007\0.\x000\0.\x000\0.\x001\0\\\0z\0\0\0";
    type Tamper = Box<dyn Fn(&mut UserMessage<'_>)>;
    let tampers: Vec<(&str, Tamper)> = vec![
        (
            "body",
            Box::new(|m: &mut UserMessage<'_>| m.properties.message_body = b"paylaod"),
        ),
        (
            "label",
            Box::new(|m: &mut UserMessage<'_>| m.properties.label = Utf16(b"h\0o\0\0\0")),
        ),
        (
            "correlation id",
            Box::new(|m: &mut UserMessage<'_>| m.properties.correlation_id[19] ^= 1),
        ),
        (
            "app specific",
            Box::new(|m: &mut UserMessage<'_>| m.properties.application_tag += 1),
        ),
        (
            "response queue",
            Box::new(|m: &mut UserMessage<'_>| m.user.response = QueueRef::None),
        ),
        (
            "admin queue",
            Box::new(|m: &mut UserMessage<'_>| {
                m.user.admin = QueueRef::Private {
                    qm: Guid([0x22; 16]),
                    id: 0x405,
                }
            }),
        ),
        (
            "source QM",
            Box::new(|m: &mut UserMessage<'_>| m.user.source_queue_manager.0[0] ^= 1),
        ),
        (
            "delivery mode",
            Box::new(|m: &mut UserMessage<'_>| m.user.flags = m.user.flags.with_delivery_mode(0)),
        ),
        (
            "priority",
            Box::new(|m: &mut UserMessage<'_>| m.base.flags = m.base.flags.with_priority(6)),
        ),
        (
            "journal",
            Box::new(|m: &mut UserMessage<'_>| {
                m.user.flags = m.user.flags.with(UserFlags::JN, true)
            }),
        ),
        (
            "ack flags",
            Box::new(|m: &mut UserMessage<'_>| m.properties.flags = AckFlags(AckFlags::PA)),
        ),
        (
            "class",
            Box::new(|m: &mut UserMessage<'_>| m.properties.message_class = MessageClass(1)),
        ),
        (
            "body type",
            Box::new(|m: &mut UserMessage<'_>| m.properties.body_type = 8),
        ),
        (
            "connector",
            Box::new(|m: &mut UserMessage<'_>| m.user.connector_type = None),
        ),
        (
            "destination",
            Box::new(move |m: &mut UserMessage<'_>| {
                m.user.destination = QueueRef::Direct(Utf16(other_dest))
            }),
        ),
    ];
    for (what, f) in tampers {
        let mut t = m;
        f(&mut t);
        match verify(&t, &Policy::STRICT) {
            Verification::Invalid(why) => assert!(why.contains("does not verify"), "{why}"),
            other => panic!("{what} changed, still {other:?}"),
        }
    }
    // Fields outside the signed list do not matter (the AS bits, the message id, TTBR).
    let mut t = m;
    t.user.message_id += 1;
    t.user.time_to_be_received = 60;
    assert!(matches!(
        verify(&t, &Policy::STRICT),
        Verification::Valid(_)
    ));
}

#[test]
fn weak_hashes_are_refused_unless_allowed() {
    for hash in [HashAlg::Md5, HashAlg::Sha1] {
        let frame = signed_frame(&signer(hash), b"x");
        let m = UserMessage::parse(&frame).expect("parses");
        match verify(&m, &Policy::STRICT) {
            Verification::Invalid(why) => {
                assert!(
                    why.contains("weak") && why.contains("WeakHashAlgorithms"),
                    "{why}"
                )
            }
            other => panic!("{hash:?} under STRICT: {other:?}"),
        }
        let only = Policy {
            allow_md5: hash == HashAlg::Md5,
            allow_sha1: hash == HashAlg::Sha1,
        };
        assert!(matches!(verify(&m, &only), Verification::Valid(_)));
        let mut cfg = Security::default();
        let err = judge_arrival(&frame, &m, &cfg).expect_err("refused by default");
        assert!(err.contains("weak"), "{err}");
        cfg.WeakHashAlgorithms = vec![hash.config_name().to_string()];
        assert!(judge_arrival(&frame, &m, &cfg)
            .expect("allowed")
            .is_authenticated());
    }
}

#[test]
fn msmq10_signatures_and_big_endian_signatures_verify() {
    let s = signer(HashAlg::Sha512);
    let key = RsaPrivateKey::from_pkcs8_pem(SIGNER_KEY).expect("key");
    let mut m = sample(b"old sender");
    m.properties.hash_algorithm = Calg::SHA512;
    // An MSMQ 1.0 signature in RFC 8017 (big-endian) byte order.
    let sig = key
        .sign(
            HashAlg::Sha512.pkcs1(),
            &digest(&m, SigKind::Msmq10, HashAlg::Sha512),
        )
        .expect("sign");
    s.attach(&mut m, &sig);
    match verify(&m, &Policy::STRICT) {
        Verification::Valid(a) => assert_eq!(a.kind, SigKind::Msmq10),
        other => panic!("{other:?}"),
    }
    // Something outside the 1.0 list changes nothing for a 1.0 signature...
    let mut t = m;
    t.base.flags = t.base.flags.with_priority(1);
    assert!(matches!(
        verify(&t, &Policy::STRICT),
        Verification::Valid(_)
    ));
    // ...but the body does.
    t.properties.message_body = b"new sender";
    assert!(matches!(
        verify(&t, &Policy::STRICT),
        Verification::Invalid(_)
    ));
}

#[test]
fn a_signature_by_another_key_or_without_a_certificate_is_invalid() {
    let s = signer(HashAlg::Sha256);
    let frame = signed_frame(&s, b"x");
    let m = UserMessage::parse(&frame).expect("parses");
    let other = Signer::from_pem(&cert_pem(OTHER_KEY, "mallory"), OTHER_KEY, HashAlg::Sha256)
        .expect("other signer");
    let mut t = m;
    let sec = t.security.expect("security");
    t.security = Some(SecurityHeader {
        sender_cert: other.cert_der(),
        ..sec
    });
    assert!(matches!(
        verify(&t, &Policy::STRICT),
        Verification::Invalid(_)
    ));
    t.security = Some(SecurityHeader {
        sender_cert: &[],
        ..sec
    });
    match verify(&t, &Policy::STRICT) {
        Verification::Invalid(why) => assert!(why.contains("certificate"), "{why}"),
        other => panic!("{other:?}"),
    }
    t.security = Some(SecurityHeader {
        sender_cert: b"not a certificate",
        ..sec
    });
    assert!(matches!(
        verify(&t, &Policy::STRICT),
        Verification::Invalid(_)
    ));
    // A key that is not the certificate's is refused when configuring.
    let e = Signer::from_pem(&cert_pem(SIGNER_KEY, "x"), OTHER_KEY, HashAlg::Sha256)
        .expect_err("mismatch");
    assert!(e.contains("not the certificate's"), "{e}");
}

#[test]
fn arrival_records_the_result_in_the_stored_as_bits() {
    let s = signer(HashAlg::Sha512);
    let frame = signed_frame(&s, b"x");
    let m = UserMessage::parse(&frame).expect("parses");
    assert_eq!(stored_authentication(&m), None);
    let j = judge_arrival(&frame, &m, &Security::default()).expect("valid");
    assert!(j.is_authenticated());
    let stored = UserMessage::parse(&j.frame).expect("stored frame parses");
    assert_eq!(stored_authentication(&stored), Some(SigKind::Msmq20));
    // Only the AS bits changed.
    let diff: Vec<usize> = (0..frame.len())
        .filter(|&i| frame[i] != j.frame[i])
        .collect();
    assert_eq!(diff.len(), 1, "{diff:?}");

    // A sender claiming AS itself on an unsigned message gets it cleared.
    let sid = [1u8, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0];
    let mut u = sample(b"y");
    let mut sec = SecurityHeader::with_sid(&sid);
    sec.flags = SecurityFlags(sec.flags.0 | (3 << SecurityFlags::AS_SHIFT));
    u.security = Some(sec);
    u.sync();
    let mut buf = vec![0u8; u.frame_len()];
    let n = u.encode(&mut buf).expect("encode");
    buf.truncate(n);
    let forged = UserMessage::parse(&buf).expect("parses");
    assert_eq!(stored_authentication(&forged), Some(SigKind::Msmq20));
    let j = judge_arrival(&buf, &forged, &Security::default()).expect("unsigned is fine");
    assert!(!j.is_authenticated());
    let stored = UserMessage::parse(&j.frame).expect("parses");
    assert_eq!(stored_authentication(&stored), None);

    // A transactional message: the SecurityHeader comes after the TransactionHeader.
    let mut t = sample(b"z").with_transaction(crate::wire::headers::TransactionHeader::new(
        crate::wire::headers::TxFlags::default(),
        1,
        1,
        0,
    ));
    let sig = s.signature(&mut t).expect("sign");
    s.attach(&mut t, &sig);
    let mut buf = vec![0u8; t.frame_len()];
    let n = t.encode(&mut buf).expect("encode");
    buf.truncate(n);
    let tm = UserMessage::parse(&buf).expect("parses");
    let j = judge_arrival(&buf, &tm, &Security::default()).expect("valid");
    let stored = UserMessage::parse(&j.frame).expect("parses");
    assert_eq!(stored_authentication(&stored), Some(SigKind::Msmq20));
}

#[test]
fn an_authenticated_message_says_so_over_amqp() {
    let s = signer(HashAlg::Sha256);
    let frame = signed_frame(&s, b"x");
    let m = UserMessage::parse(&frame).expect("parses");
    let amqp_of = |f: &[u8]| {
        let mut out = Vec::new();
        let m = UserMessage::parse(f).expect("parses");
        crate::amqp::mapping::msmq_to_amqp(&m, 1, 0, &mut out).expect("maps");
        out
    };
    let name = crate::amqp::mapping::names::AUTHENTICATED;
    // As it arrived (AS 0): no property.
    let before = amqp_of(&frame);
    let a = crate::amqp::message::Message::decode(&before).expect("decodes");
    assert_eq!(a.application_property(name).expect("readable"), None);
    // As stored after verification.
    let j = judge_arrival(&frame, &m, &Security::default()).expect("valid");
    let after = amqp_of(&j.frame);
    let a = crate::amqp::message::Message::decode(&after).expect("decodes");
    assert_eq!(
        a.application_property(name).expect("readable"),
        Some(crate::amqp::types::Value::Bool(true))
    );
}

/// MSMQ 3.0: a multi-destination message signs ExtensionData and the destination list, and
/// carries its signature in the MQFSignatureHeader (MS-MQQB 3.1.7.1.4, 3.1.5.8.3).
#[test]
fn msmq30_signatures_in_the_mqf_header_verify() {
    use crate::wire::headers::{MqfAddressHeader, MqfElement, MultiQueueFormatHeader};
    let s = signer(HashAlg::Sha512);
    let key = RsaPrivateKey::from_pkcs8_pem(SIGNER_KEY).expect("key");
    let mut list = [0u8; 128];
    let dest = MqfAddressHeader::build(
        &[
            MqfElement::Direct(Utf16(DEST)),
            MqfElement::Public(Guid([0x44; 16])),
        ],
        &mut list,
    )
    .expect("list");
    let mut m = sample(b"to many");
    m.properties.hash_algorithm = Calg::SHA512;
    m.multi_queue = Some(MultiQueueFormatHeader {
        destination: dest,
        administration: MqfAddressHeader::EMPTY,
        response: MqfAddressHeader::EMPTY,
        signature: &[],
    });
    // The destination list is part of what is signed, right after ExtensionData.
    let bytes = signed_bytes(&m, SigKind::Msmq30);
    let at = 20 + 4 + 7 + LABEL.len() + 2 + RESP.len() + 20 + 3;
    assert_eq!(&bytes[at..at + dest.list.len()], dest.list);
    let mut sig = key
        .sign(
            HashAlg::Sha512.pkcs1(),
            &digest(&m, SigKind::Msmq30, HashAlg::Sha512),
        )
        .expect("sign");
    sig.reverse(); // CryptoAPI order
    let mqf = m.multi_queue.expect("mqf");
    m.multi_queue = Some(MultiQueueFormatHeader {
        signature: &sig,
        ..mqf
    });
    m.security = Some(SecurityHeader {
        flags: SecurityFlags::default().with(SecurityFlags::DE, true),
        sender_id: &[],
        encryption_key: &[],
        signature: &[],
        sender_cert: s.cert_der(),
        provider_info: &[],
    });
    m.sync();
    let mut buf = vec![0u8; m.frame_len()];
    let n = m.encode(&mut buf).expect("encode");
    buf.truncate(n);
    let parsed = UserMessage::parse(&buf).expect("parses");
    match verify(&parsed, &Policy::STRICT) {
        Verification::Valid(a) => assert_eq!(a.kind, SigKind::Msmq30),
        other => panic!("{other:?}"),
    }
    let j = judge_arrival(&buf, &parsed, &Security::default()).expect("valid");
    let stored = UserMessage::parse(&j.frame).expect("parses");
    assert_eq!(stored_authentication(&stored), Some(SigKind::Msmq30));
    // The extension and the destination list are protected.
    let mut t = parsed;
    t.properties.extension = b"exu";
    assert!(matches!(
        verify(&t, &Policy::STRICT),
        Verification::Invalid(_)
    ));
    let mut t = parsed;
    let mqf = t.multi_queue.expect("mqf");
    t.multi_queue = Some(MultiQueueFormatHeader {
        destination: MqfAddressHeader {
            element_count: 1,
            list: &mqf.destination.list[..DEST.len() + 2],
        },
        ..mqf
    });
    assert!(matches!(
        verify(&t, &Policy::STRICT),
        Verification::Invalid(_)
    ));
}
