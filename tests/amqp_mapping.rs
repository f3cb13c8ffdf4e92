//! The MSMQ <-> AMQP 1.0 property mapping (issue 11 item 4): every mapped property survives
//! MSMQ -> AMQP -> MSMQ and AMQP -> MSMQ -> AMQP, absent fields take the MSMQ defaults, and
//! hostile AMQP payloads are errors, never panics.

use lior::amqp::mapping::{amqp_to_msmq, msmq_to_amqp, names, parse_id_text, MappingError};
use lior::amqp::message::{
    encode_data, encode_map_section_from, Header, Message, MessageId, Properties,
};
use lior::amqp::types::{descriptor as d, Value};
use lior::wire::base::INFINITE;
use lior::wire::format_name::FormatName;
use lior::wire::headers::{
    body_type, AckFlags, MessageClass, SecurityFlags, SecurityHeader, SenderIdType,
    TransactionHeader, TxFlags,
};
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};
use proptest::prelude::*;

const SRC: Guid = Guid([0x11; 16]);
const DEST_QM: Guid = Guid([0x22; 16]);
const OTHER: Guid = Guid([0x33; 16]);
const NOW: u32 = 1_700_000_000;

fn to_amqp(m: &UserMessage<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    msmq_to_amqp(m, 77, 1_700_000_123_456, &mut out).unwrap();
    out
}

fn qtext(q: &QueueRef<'_>, m: &UserMessage<'_>) -> Option<String> {
    if q.code() == 0 {
        return None;
    }
    let admin = FormatName::from_queue_ref(
        &m.user.admin,
        m.user.source_queue_manager,
        m.user.queue_manager_address,
        None,
    )
    .ok();
    Some(
        FormatName::from_queue_ref(
            q,
            m.user.source_queue_manager,
            m.user.queue_manager_address,
            admin.as_ref(),
        )
        .unwrap()
        .to_string(),
    )
}

/// Every mapped MSMQ property, compared field by field (queues as format name text).
fn assert_same_msmq(a: &UserMessage<'_>, b: &UserMessage<'_>) {
    assert_eq!(a.message_id(), b.message_id(), "MessageId");
    assert_eq!(a.label(), b.label(), "Label");
    assert_eq!(a.body(), b.body(), "body");
    assert_eq!(
        a.properties.correlation_id, b.properties.correlation_id,
        "CorrelationId"
    );
    assert_eq!(a.priority(), b.priority(), "Priority");
    assert_eq!(a.is_recoverable(), b.is_recoverable(), "recoverable");
    assert_eq!(
        a.user.time_to_be_received, b.user.time_to_be_received,
        "TimeToBeReceived"
    );
    assert_eq!(
        a.base.time_to_reach_queue, b.base.time_to_reach_queue,
        "TimeToReachQueue"
    );
    assert_eq!(a.user.sent_time, b.user.sent_time, "SentTime");
    assert_eq!(
        a.properties.application_tag, b.properties.application_tag,
        "AppSpecific"
    );
    assert_eq!(a.properties.extension, b.properties.extension, "Extension");
    assert_eq!(a.properties.body_type, b.properties.body_type, "BodyType");
    assert_eq!(a.message_class(), b.message_class(), "class");
    assert_eq!(a.properties.flags, b.properties.flags, "ack flags");
    assert_eq!(
        qtext(&a.user.destination, a),
        qtext(&b.user.destination, b),
        "destination"
    );
    assert_eq!(
        qtext(&a.user.admin, a),
        qtext(&b.user.admin, b),
        "AdminQueue"
    );
    assert_eq!(
        qtext(&a.user.response, a),
        qtext(&b.user.response, b),
        "ResponseQueue"
    );
    let tx = |m: &UserMessage<'_>| {
        m.transaction.map(|t| {
            (
                t.tx_sequence_id,
                t.tx_sequence_number,
                t.previous_tx_sequence_number,
                t.flags.0,
            )
        })
    };
    assert_eq!(tx(a), tx(b), "transaction");
}

struct Names {
    dest: Vec<u8>,
    admin: Vec<u8>,
    label: Vec<u8>,
}

fn names_() -> Names {
    Names {
        dest: utf16z("TCP:10.0.0.1\\private$\\orders"),
        admin: utf16z("OS:host\\private$\\admin"),
        label: utf16z("order 42 \u{e9}\u{1F600}"),
    }
}

fn rich<'a>(n: &'a Names, transactional: bool) -> UserMessage<'a> {
    let mut m = UserMessage::new(
        SRC,
        4242,
        QueueRef::Direct(Utf16(&n.dest)),
        Utf16(&n.label),
        b"hello \x00 body",
    )
    .with_recoverable(true)
    .with_priority(5)
    .with_sent_time(NOW - 5)
    .with_time_to_reach_queue(600)
    .with_time_to_be_received(3600)
    .with_admin_queue(
        QueueRef::Direct(Utf16(&n.admin)),
        AckFlags(AckFlags::FULL_RECEIVE),
    )
    .with_response_queue(QueueRef::Private { qm: OTHER, id: 9 });
    if transactional {
        m = m.with_transaction(TransactionHeader::new(
            TxFlags::default()
                .with(TxFlags::FM, true)
                .with_transaction_index(5),
            0x1234_5678_9abc,
            3,
            2,
        ));
    }
    m.properties.application_tag = 0xDEAD_BEEF;
    m.properties.extension = b"ext\x01\x02";
    m.properties.body_type = 8; // VT_BSTR
    m.properties.message_class = MessageClass::ACK_RECEIVE;
    let mut c = [0u8; 20];
    c[..16].copy_from_slice(&OTHER.0);
    c[16..].copy_from_slice(&17u32.to_le_bytes());
    m.properties.correlation_id = c;
    m.sync();
    m
}

fn msmq_round_trip(m: &UserMessage<'_>) {
    let amqp = to_amqp(m);
    let mapped = amqp_to_msmq(&amqp, Guid([0x99; 16]), 1, NOW).unwrap();
    let bytes = mapped.encode();
    let back = UserMessage::parse(&bytes).unwrap();
    assert_same_msmq(m, &back);
}

#[test]
fn msmq_to_amqp_to_msmq_keeps_every_property() {
    let n = names_();
    msmq_round_trip(&rich(&n, false));
    msmq_round_trip(&rich(&n, true));
    // Private destination on the destination QM (DQ 3) and public queues.
    let mut m = UserMessage::new(SRC, 1, QueueRef::DestinationPrivate(12), Utf16(&[]), b"x")
        .with_queue_manager_address(DEST_QM)
        .with_response_queue(QueueRef::Public(OTHER))
        .with_admin_queue(QueueRef::Public(DEST_QM), AckFlags(AckFlags::NA));
    m.sync();
    msmq_round_trip(&m);
    // A TimeToBeReceived whose milliseconds overflow header.ttl still survives.
    let m = UserMessage::new(SRC, 2, QueueRef::None, Utf16(&[]), b"")
        .with_time_to_be_received(INFINITE - 1);
    msmq_round_trip(&m);
}

fn app<'a>(m: &Message<'a>, k: &str) -> Option<Value<'a>> {
    m.application_property(k).unwrap()
}

#[test]
fn msmq_to_amqp_writes_the_documented_fields() {
    let n = names_();
    let m = rich(&n, false);
    let amqp = to_amqp(&m);
    let a = Message::decode(&amqp).unwrap();
    let h = a.header.unwrap();
    assert_eq!((h.durable, h.priority, h.ttl), (true, 5, Some(3_600_000)));
    let p = a.properties.unwrap();
    assert_eq!(p.subject, Some("order 42 \u{e9}\u{1F600}"));
    let Some(MessageId::String(mid)) = p.message_id else {
        panic!("message-id {:?}", p.message_id)
    };
    assert_eq!(parse_id_text(mid), Some((SRC, 4242)));
    assert_eq!(
        mid, "{11111111-1111-1111-1111-111111111111}\\4242",
        "the {{guid}}\\ordinal form"
    );
    let Some(MessageId::String(cid)) = p.correlation_id else {
        panic!("correlation-id {:?}", p.correlation_id)
    };
    assert_eq!(parse_id_text(cid), Some((OTHER, 17)));
    assert_eq!(p.to, Some("DIRECT=TCP:10.0.0.1\\private$\\orders"));
    let reply = FormatName::parse(p.reply_to.unwrap()).unwrap();
    assert_eq!(
        reply,
        FormatName::Private {
            qm: OTHER,
            id: 9,
            journal: false
        }
    );
    assert_eq!(p.creation_time, Some(i64::from(NOW - 5) * 1000));
    assert_eq!(
        a.body.data_sections().collect::<Vec<_>>(),
        vec![&b"hello \x00 body"[..]]
    );
    assert_eq!(app(&a, names::APP_SPECIFIC), Some(Value::Uint(0xDEAD_BEEF)));
    assert_eq!(
        app(&a, names::EXTENSION),
        Some(Value::Binary(b"ext\x01\x02"))
    );
    assert_eq!(app(&a, names::BODY_TYPE), Some(Value::Uint(8)));
    assert_eq!(
        app(&a, names::ADMIN_QUEUE),
        Some(Value::String("DIRECT=OS:host\\private$\\admin"))
    );
    assert_eq!(
        app(&a, names::ACKNOWLEDGE),
        Some(Value::Ubyte(AckFlags::FULL_RECEIVE))
    );
    assert_eq!(app(&a, names::TIME_TO_REACH_QUEUE), Some(Value::Uint(600)));
    assert_eq!(app(&a, names::CLASS), Some(Value::Ushort(0x4000)));
    assert_eq!(
        app(&a, names::SOURCE_QM),
        Some(Value::String("{11111111-1111-1111-1111-111111111111}"))
    );
    let ma = a.message_annotations.unwrap();
    assert_eq!(
        ma.get(names::SEQUENCE_NUMBER, "ma").unwrap(),
        Some(Value::Ulong(77))
    );
    assert_eq!(
        ma.get(names::ENQUEUED_TIME, "ma").unwrap(),
        Some(Value::Timestamp(1_700_000_123_456))
    );
    // Transaction fields.
    let t = to_amqp(&rich(&n, true));
    let a = Message::decode(&t).unwrap();
    assert_eq!(
        app(&a, names::TX_SEQUENCE_ID),
        Some(Value::Ulong(0x1234_5678_9abc))
    );
    assert_eq!(app(&a, names::TX_SEQUENCE_NUMBER), Some(Value::Uint(3)));
    assert_eq!(
        app(&a, names::TX_PREVIOUS_SEQUENCE_NUMBER),
        Some(Value::Uint(2))
    );
    assert!(app(&a, names::TX_FLAGS).is_some());
}

#[test]
fn sender_id_is_an_application_property() {
    // S-1-5-21-1-2-3-1001: revision 1, 5 sub-authorities, authority 5.
    let mut sid = vec![1u8, 5, 0, 0, 0, 0, 0, 5];
    for s in [21u32, 1, 2, 3, 1001] {
        sid.extend_from_slice(&s.to_le_bytes());
    }
    let m =
        UserMessage::new(SRC, 3, QueueRef::None, Utf16(&[]), b"b").with_security(SecurityHeader {
            flags: SecurityFlags(0).with_sender_id_type(SenderIdType::SID),
            sender_id: &sid,
            encryption_key: &[],
            signature: &[],
            sender_cert: &[],
            provider_info: &[],
        });
    let amqp = to_amqp(&m);
    let a = Message::decode(&amqp).unwrap();
    assert_eq!(app(&a, names::SENDER_ID), Some(Value::Binary(&sid)));
}

/// An AMQP message written by a client, with every mapped field set.
fn client_message(out: &mut Vec<u8>) {
    Header {
        durable: true,
        priority: 6,
        ttl: Some(90_000),
        first_acquirer: false,
        delivery_count: 0,
    }
    .encode(out)
    .unwrap();
    Properties {
        message_id: Some(MessageId::String(
            "{AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE}\\31",
        )),
        to: Some("DIRECT=TCP:192.168.1.5\\private$\\in"),
        subject: Some("from amqp"),
        reply_to: Some("DIRECT=OS:box\\private$\\replies"),
        correlation_id: Some(MessageId::String(
            "{01234567-89AB-CDEF-0123-456789ABCDEF}\\8",
        )),
        creation_time: Some(1_650_000_000_000),
        ..Properties::default()
    }
    .encode(out)
    .unwrap();
    encode_map_section_from(
        out,
        d::APPLICATION_PROPERTIES,
        &[
            (Value::String(names::APP_SPECIFIC), Value::Uint(7)),
            (Value::String(names::EXTENSION), Value::Binary(b"xx")),
            (Value::String(names::BODY_TYPE), Value::Uint(0x11)),
            (
                Value::String(names::ADMIN_QUEUE),
                Value::String("DIRECT=OS:box\\private$\\admin"),
            ),
            (
                Value::String(names::ACKNOWLEDGE),
                Value::Ubyte(AckFlags::PA),
            ),
            (Value::String(names::TIME_TO_REACH_QUEUE), Value::Uint(120)),
            (Value::String(names::CLASS), Value::Ushort(0)),
        ],
    )
    .unwrap();
    encode_data(out, b"payload from a Linux client").unwrap();
}

#[test]
fn amqp_to_msmq_to_amqp_keeps_every_property() {
    let mut first = Vec::new();
    client_message(&mut first);
    let mapped = amqp_to_msmq(&first, SRC, 1, NOW).unwrap();
    let bytes = mapped.encode();
    let um = UserMessage::parse(&bytes).unwrap();
    assert_eq!(um.priority(), 6);
    assert!(um.is_recoverable());
    assert_eq!(um.user.time_to_be_received, 90);
    assert_eq!(um.user.sent_time, 1_650_000_000);
    assert_eq!(um.label().to_string_lossy(), "from amqp");
    assert_eq!(um.properties.flags, AckFlags(AckFlags::PA));
    let second = to_amqp(&um);
    let (a, b) = (
        Message::decode(&first).unwrap(),
        Message::decode(&second).unwrap(),
    );
    assert_eq!(a.header, b.header, "header");
    let (pa, pb) = (a.properties.unwrap(), b.properties.unwrap());
    assert_eq!(pa.message_id, pb.message_id);
    assert_eq!(pa.to, pb.to);
    assert_eq!(pa.subject, pb.subject);
    assert_eq!(pa.reply_to, pb.reply_to);
    assert_eq!(pa.correlation_id, pb.correlation_id);
    assert_eq!(pa.creation_time, pb.creation_time);
    assert_eq!(
        a.body.data_sections().collect::<Vec<_>>(),
        b.body.data_sections().collect::<Vec<_>>()
    );
    for k in [
        names::APP_SPECIFIC,
        names::EXTENSION,
        names::BODY_TYPE,
        names::ADMIN_QUEUE,
        names::ACKNOWLEDGE,
        names::TIME_TO_REACH_QUEUE,
        names::CLASS,
    ] {
        assert_eq!(app(&a, k), app(&b, k), "{k}");
    }
}

#[test]
fn absent_fields_take_the_msmq_defaults() {
    let mut p = Vec::new();
    encode_data(&mut p, b"only a body").unwrap();
    let mapped = amqp_to_msmq(&p, SRC, 55, NOW).unwrap();
    let bytes = mapped.encode();
    let m = UserMessage::parse(&bytes).unwrap();
    assert_eq!(m.message_id(), (SRC, 55));
    assert_eq!(m.priority(), 3, "MSMQ default priority");
    assert!(!m.is_recoverable());
    assert!(m.transaction.is_none());
    assert_eq!(m.user.time_to_be_received, INFINITE);
    assert_eq!(m.base.time_to_reach_queue, INFINITE);
    assert_eq!(m.user.sent_time, NOW);
    assert_eq!(m.message_class(), MessageClass::NORMAL);
    assert_eq!(m.properties.body_type, body_type::VT_UI1_VECTOR);
    assert_eq!(m.properties.application_tag, 0);
    assert_eq!(m.properties.flags, AckFlags::default());
    assert_eq!(m.properties.correlation_id, [0; 20]);
    assert!(m.label().0.is_empty());
    assert_eq!(m.body(), b"only a body");
    assert_eq!(
        (
            m.user.destination.code(),
            m.user.admin.code(),
            m.user.response.code()
        ),
        (0, 0, 0)
    );
    // A message-id that is not {guid}\ordinal does not change the identity.
    let mut p = Vec::new();
    Properties {
        message_id: Some(MessageId::Ulong(5)),
        ..Properties::default()
    }
    .encode(&mut p)
    .unwrap();
    let mapped = amqp_to_msmq(&p, SRC, 56, NOW).unwrap();
    assert_eq!((mapped.source_qm, mapped.ordinal), (SRC, 56));
    assert!(mapped.body.is_empty());
    // MSMQ -> AMQP: default priority 3 is written explicitly (AMQP's own default is 4).
    let m = UserMessage::new(SRC, 1, QueueRef::None, Utf16(&[]), b"");
    let a = to_amqp(&m);
    assert_eq!(Message::decode(&a).unwrap().header.unwrap().priority, 3);
}

fn err(payload: &[u8]) -> MappingError {
    amqp_to_msmq(payload, SRC, 1, NOW).unwrap_err()
}

#[test]
fn bodies_and_fields_msmq_cannot_carry_are_errors() {
    let mut p = Vec::new();
    lior::amqp::message::encode_amqp_value(&mut p, &Value::String("text")).unwrap();
    assert!(matches!(
        err(&p),
        MappingError::Field {
            field: "amqp-value",
            ..
        }
    ));
    let long = "x".repeat(250);
    let mut p = Vec::new();
    Properties {
        subject: Some(&long),
        ..Properties::default()
    }
    .encode(&mut p)
    .unwrap();
    let e = err(&p);
    assert!(
        matches!(
            e,
            MappingError::Field {
                field: "properties.subject",
                ..
            }
        ),
        "{e}"
    );
    let mut p = Vec::new();
    Properties {
        to: Some("not a format name"),
        ..Properties::default()
    }
    .encode(&mut p)
    .unwrap();
    assert!(matches!(
        err(&p),
        MappingError::Field {
            field: "properties.to",
            ..
        }
    ));
    let mut p = Vec::new();
    client_message(&mut p);
    for cut in 1..p.len() {
        let _ = amqp_to_msmq(&p[..cut], SRC, 1, NOW);
    }
    assert!(matches!(err(&p[..p.len() - 1]), MappingError::Codec(_)));
    // A body too large for one MSMQ packet.
    let big = vec![0u8; 4 * 1024 * 1024 + 1];
    let mut p = Vec::new();
    encode_data(&mut p, &big).unwrap();
    assert!(matches!(err(&p), MappingError::Field { .. }));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(m) = amqp_to_msmq(&bytes, SRC, 1, NOW) {
            prop_assert!(UserMessage::parse(&m.encode()).is_ok());
        }
    }

    #[test]
    fn mutated_client_messages_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
    ) {
        let mut p = Vec::new();
        client_message(&mut p);
        for (i, b) in flips {
            let at = i.index(p.len());
            p[at] = b;
        }
        if let Ok(m) = amqp_to_msmq(&p, SRC, 1, NOW) {
            let bytes = m.encode();
            let um = UserMessage::parse(&bytes);
            prop_assert!(um.is_ok());
            let mut out = Vec::new();
            prop_assert!(msmq_to_amqp(&um.unwrap(), 1, 2, &mut out).is_ok());
        }
    }

    #[test]
    fn random_properties_round_trip(
        label in "\\PC{0,40}",
        body in proptest::collection::vec(any::<u8>(), 0..256),
        prio in 0u8..8,
        recoverable in any::<bool>(),
        ttbr in any::<u32>(),
        ttrq in any::<u32>(),
        sent in any::<u32>(),
        tag in any::<u32>(),
        ordinal in any::<u32>(),
        acks in any::<u8>(),
    ) {
        let l = if label.is_empty() { Vec::new() } else { utf16z(&label) };
        let mut m = UserMessage::new(SRC, ordinal, QueueRef::None, Utf16(&l), &body)
            .with_priority(prio)
            .with_recoverable(recoverable)
            .with_time_to_be_received(ttbr)
            .with_time_to_reach_queue(ttrq)
            .with_sent_time(sent);
        m.properties.application_tag = tag;
        m.properties.flags = AckFlags(acks);
        m.sync();
        let amqp = to_amqp(&m);
        let mapped = amqp_to_msmq(&amqp, OTHER, 0, NOW).unwrap();
        let bytes = mapped.encode();
        let back = UserMessage::parse(&bytes).unwrap();
        assert_same_msmq(&m, &back);
    }
}
