//! UserMessage codec tests: the MS-MQQB §4.1 frame 7 capture, the DIGEST §15.2 derived vectors
//! V1-V3, round trips with every optional header, and `rejects_*` tests for each class of bad
//! input (truncation, bad constants, lying sizes, missing headers, overflowing lengths).

use lior::wire::base::MAX_PACKET_SIZE;
use lior::wire::headers::{
    AckFlags, Calg, CompoundMessageHeader, DebugHeader, MessageClass, MqfAddressHeader, MqfElement,
    MultiQueueFormatHeader, PrivacyLevel, SecurityFlags, SecurityHeader, SenderIdType, SoapHeader,
    SrmpEnvelopeHeader, TransactionHeader, TxFlags,
};
use lior::wire::user::{
    FinalAckBody, OrderAckBody, QueueRef, UserFlags, UserMessage, ORDER_QUEUE_ID,
};
use lior::wire::{
    frame_len, parse_packet, utf16z, ErrorKind, Guid, Packet, SessionHeader, Utf16, WireError,
};

const FRAME7: &[u8] = include_bytes!("vectors/mqqb-4.1/frame7-user-message-express.bin");

/// Parses a DIGEST-style hex dump: each line is an offset followed by hex byte pairs.
fn hex(dump: &str) -> Vec<u8> {
    dump.lines()
        .flat_map(|l| l.split_whitespace().skip(1))
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

const V1: &str = "
0000  10 00 00 00 4C 49 4F 52 08 01 00 00 FF FF FF FF
0010  11 11 11 11 22 22 33 33 44 44 55 55 55 55 55 55
0020  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0030  FF FF FF FF 00 00 00 65 01 00 00 00 00 1C 20 00
0040  4A 00 54 00 43 00 50 00 3A 00 31 00 39 00 32 00
0050  2E 00 30 00 2E 00 32 00 2E 00 31 00 30 00 5C 00
0060  50 00 52 00 49 00 56 00 41 00 54 00 45 00 24 00
0070  5C 00 6F 00 72 00 64 00 65 00 72 00 5F 00 71 00
0080  75 00 65 00 75 00 65 00 24 00 00 00 00 10 FF 00
0090  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00A0  00 00 00 00 00 00 00 00 00 00 00 00 24 00 00 00
00B0  24 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00C0  00 00 00 00 51 00 4D 00 20 00 4F 00 72 00 64 00
00D0  65 00 72 00 69 00 6E 00 67 00 20 00 41 00 63 00
00E0  6B 00 00 00 01 00 00 00 00 00 00 5F 03 00 00 00
00F0  02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0100  00 00 00 00 00 00 00 00";

const V2: &str = "
0000  10 00 03 00 4C 49 4F 52 C8 00 00 00 00 46 05 00
0010  AA AA AA AA BB BB CC CC DD DD EE EE EE EE EE EE
0020  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0030  FF FF FF FF 00 00 00 65 07 00 00 00 00 1C 20 00
0040  3E 00 54 00 43 00 50 00 3A 00 31 00 39 00 32 00
0050  2E 00 30 00 2E 00 32 00 2E 00 32 00 30 00 5C 00
0060  70 00 72 00 69 00 76 00 61 00 74 00 65 00 24 00
0070  5C 00 6F 00 72 00 64 00 65 00 72 00 73 00 00 00
0080  00 06 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0090  00 00 00 00 00 00 00 00 11 10 00 00 00 00 00 00
00A0  04 00 00 00 04 00 00 00 00 00 00 00 00 00 00 00
00B0  00 00 00 00 00 00 00 00 68 00 65 00 6C 00 6C 00
00C0  6F 00 00 00 48 69 21 21";

const V3: &str = "
0000  10 00 00 00 4C 49 4F 52 CC 00 00 00 00 46 05 00
0010  AA AA AA AA BB BB CC CC DD DD EE EE EE EE EE EE
0020  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0030  FF FF FF FF 00 00 00 65 08 00 00 00 20 1C 30 00
0040  38 00 54 00 43 00 50 00 3A 00 31 00 39 00 32 00
0050  2E 00 30 00 2E 00 32 00 2E 00 32 00 30 00 5C 00
0060  70 00 72 00 69 00 76 00 61 00 74 00 65 00 24 00
0070  5C 00 74 00 78 00 71 00 00 00 00 00 5C 00 00 00
0080  01 00 00 00 00 00 00 5F 01 00 00 00 00 00 00 00
0090  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00A0  00 00 00 00 00 00 00 00 11 10 00 00 00 00 00 00
00B0  02 00 00 00 02 00 00 00 00 00 00 00 00 00 00 00
00C0  00 00 00 00 00 00 00 00 54 58 00 00";

/// The receiver GUID {11111111-2222-3333-4444-555555555555} of DIGEST §15.2.
fn receiver() -> Guid {
    Guid::parse_text("11111111-2222-3333-4444-555555555555").unwrap()
}

/// The sender GUID {AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE} of DIGEST §15.2.
fn sender() -> Guid {
    Guid::parse_text("AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE").unwrap()
}

fn patched(src: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut v = src.to_vec();
    v[at..at + bytes.len()].copy_from_slice(bytes);
    v
}

/// Sets PacketSize and returns the frame cut or extended (with zeros) to that size.
fn resized(src: &[u8], packet_size: usize) -> Vec<u8> {
    let mut v = src.to_vec();
    v.resize(packet_size, 0);
    v[8..12].copy_from_slice(&(packet_size as u32).to_le_bytes());
    v
}

fn encode_vec(m: &UserMessage<'_>) -> Vec<u8> {
    let mut out = vec![0u8; m.frame_len()];
    let n = m.encode(&mut out).expect("encodes");
    assert_eq!(n, out.len(), "frame_len() matches what encode writes");
    out
}

fn err(bytes: &[u8]) -> WireError {
    match UserMessage::parse(bytes) {
        Ok(m) => panic!("expected an error, parsed {m:?}"),
        Err(e) => e,
    }
}

fn assert_err(bytes: &[u8], kind: ErrorKind, field: &str) {
    let e = err(bytes);
    assert_eq!((e.kind, e.field), (kind, field), "{e}");
}

// ----- vectors ------------------------------------------------------------------------------

#[test]
fn frame7_parses_to_the_documented_values() {
    let m = UserMessage::parse(FRAME7).expect("frame 7 parses");
    assert_eq!(m.base.packet_size, 2224);
    assert_eq!(m.priority(), 3);
    assert_eq!(m.base.time_to_reach_queue, 345_600);
    assert_eq!(
        m.user.source_queue_manager.to_string(),
        "{557358D1-9150-9595-4997-B6E611EA26C6}"
    );
    assert!(m.user.queue_manager_address.is_null());
    assert_eq!(m.user.time_to_be_received, u32::MAX);
    // The capture's SentTime bytes are "LIOR" (DIGEST §15.1 anomaly); we keep the bytes.
    assert_eq!(m.user.sent_time, 0x524F_494C);
    assert_eq!(m.message_id().1, 2286);
    assert_eq!(m.user.flags, UserFlags(0x0028_1C00));
    assert!(!m.is_recoverable() && !m.is_transactional());
    match m.user.destination {
        QueueRef::Direct(s) => {
            assert_eq!(s.to_string_lossy(), "OS:a04bm02\\q");
            assert_eq!(s.byte_len(), 26);
        }
        other => panic!("destination {other:?}"),
    }
    assert_eq!(m.user.admin, QueueRef::None);
    assert_eq!(m.user.response, QueueRef::None);

    let sec = m.security.expect("SecurityHeader present");
    assert_eq!(sec.flags, SecurityFlags(0x0001));
    assert_eq!(sec.flags.sender_id_type(), SenderIdType::SID);
    assert_eq!(sec.sender_id.len(), 28);
    assert!(sec.encryption_key.is_empty() && sec.signature.is_empty());
    assert!(sec.sender_cert.is_empty() && sec.provider_info.is_empty());
    assert_eq!(
        sec.sender_sid().expect("SID").to_string(),
        "S-1-5-21-3181267629-1039849782-3663111779-1000"
    );

    let p = &m.properties;
    assert_eq!(p.flags, AckFlags(0x0F));
    assert_eq!(m.label().to_string_lossy(), "mqsender label");
    assert_eq!(p.label_length(), 15);
    assert_eq!(m.message_class(), MessageClass::NORMAL);
    assert_eq!(p.body_type, 8);
    assert_eq!((p.message_size, p.allocation_body_size), (2000, 2000));
    assert_eq!(p.privacy_level, PrivacyLevel::NONE);
    assert_eq!(p.hash_algorithm, Calg::SHA1);
    assert_eq!(p.encryption_algorithm, Calg::RC4);
    assert!(p.extension.is_empty());
    assert_eq!(m.body().len(), 2000);
    assert!(m.body().chunks(2).all(|c| c == b"a\0"));
    assert!(m.debug.is_none() && m.soap.is_none() && m.multi_queue.is_none());
    assert!(m.session.is_none());
}

#[test]
fn frame7_reencodes_byte_for_byte() {
    let m = UserMessage::parse(FRAME7).unwrap();
    assert_eq!(m.packet_size(), 2224);
    assert_eq!(encode_vec(&m), FRAME7);
}

#[test]
fn frame7_through_the_packet_layer() {
    assert_eq!(frame_len(FRAME7), Ok(Some(2224)));
    match parse_packet(FRAME7).expect("parses") {
        Packet::User(m) => assert_eq!(m.body().len(), 2000),
        other => panic!("{}", other.kind()),
    }
}

#[test]
fn frame7_with_a_piggybacked_session_header() {
    let sh = SessionHeader {
        ack_sequence_number: 5,
        recoverable_msg_ack_seq_number: 2,
        recoverable_msg_ack_flags: 3,
        user_msg_sequence_number: 7,
        recoverable_msg_seq_number: 1,
        window_size: 64,
        reserved: 0,
    };
    let m = UserMessage::parse(FRAME7).unwrap().with_session(sh);
    let bytes = encode_vec(&m);
    assert_eq!(bytes.len(), 2240);
    assert_eq!(
        &bytes[8..12],
        &2224u32.to_le_bytes(),
        "trailer is outside PacketSize"
    );
    assert_eq!(frame_len(&bytes), Ok(Some(2240)));
    let back = match parse_packet(&bytes).unwrap() {
        Packet::User(m) => m,
        other => panic!("{}", other.kind()),
    };
    assert_eq!(back.session, Some(sh));
    assert_eq!(back, m);
    // Without its trailer the frame is truncated.
    assert_eq!(err(&bytes[..2224]).kind, ErrorKind::Truncated);
}

#[test]
fn v1_order_ack_parses_and_matches_the_builder() {
    let bytes = hex(V1);
    assert_eq!(bytes.len(), 264);
    let m = UserMessage::parse(&bytes).expect("V1 parses");
    assert!(m.is_order_ack() && !m.is_final_ack());
    assert_eq!(m.base.flags.0, 0);
    assert_eq!(m.user.flags, UserFlags(0x0020_1C00));
    assert_eq!(m.label().to_string_lossy(), "QM Ordering Ack");
    let body = m.order_ack_body().expect("36-byte body");
    assert_eq!(body.tx_sequence_id, 0x5F00_0000_0000_0001);
    assert_eq!(
        (body.tx_sequence_number, body.tx_previous_sequence_number),
        (3, 2)
    );
    assert_eq!(encode_vec(&m), bytes);

    let name = utf16z("TCP:192.0.2.10\\PRIVATE$\\order_queue$");
    let body_bytes = body.to_bytes();
    let built = UserMessage::order_ack(receiver(), 1, QueueRef::Direct(Utf16(&name)), &body_bytes)
        .with_sent_time(0x6500_0000);
    assert_eq!(encode_vec(&built), bytes, "order_ack() builds V1 exactly");
}

#[test]
fn v2_express_message_parses_and_matches_the_builder() {
    let bytes = hex(V2);
    assert_eq!(bytes.len(), 200);
    let m = UserMessage::parse(&bytes).expect("V2 parses");
    assert_eq!(m.body(), b"Hi!!");
    assert_eq!(m.label().to_string_lossy(), "hello");
    assert_eq!(m.message_id(), (sender(), 7));
    assert_eq!(m.properties.body_type, 0x1011);
    assert_eq!(encode_vec(&m), bytes);

    let name = utf16z("TCP:192.0.2.20\\private$\\orders");
    let label = utf16z("hello");
    let built = UserMessage::new(
        sender(),
        7,
        QueueRef::Direct(Utf16(&name)),
        Utf16(&label),
        b"Hi!!",
    )
    .with_sent_time(0x6500_0000)
    .with_time_to_reach_queue(345_600);
    assert_eq!(encode_vec(&built), bytes, "new() builds V2 exactly");
}

#[test]
fn v3_transactional_message_parses_and_matches_the_builder() {
    let bytes = hex(V3);
    assert_eq!(bytes.len(), 204);
    let m = UserMessage::parse(&bytes).expect("V3 parses");
    let tx = m.transaction.expect("TransactionHeader");
    assert!(tx.flags.first_message() && tx.flags.last_message());
    assert_eq!(tx.flags.transaction_index(), 5);
    assert_eq!(
        (tx.tx_sequence_ordinal(), tx.tx_sequence_timestamp()),
        (1, 0x5F00_0000)
    );
    assert_eq!(
        (tx.tx_sequence_number, tx.previous_tx_sequence_number),
        (1, 0)
    );
    assert!(m.is_recoverable() && m.priority() == 0);
    assert_eq!(m.label().byte_len(), 0);
    assert_eq!(m.body(), b"TX");
    assert_eq!(encode_vec(&m), bytes);

    let name = utf16z("TCP:192.0.2.20\\private$\\txq");
    let built = UserMessage::new(
        sender(),
        8,
        QueueRef::Direct(Utf16(&name)),
        Utf16(&[]),
        b"TX",
    )
    .with_sent_time(0x6500_0000)
    .with_time_to_reach_queue(345_600)
    .with_transaction(TransactionHeader::new(
        TxFlags(0x5C),
        0x5F00_0000_0000_0001,
        1,
        0,
    ));
    assert_eq!(
        encode_vec(&built),
        bytes,
        "with_transaction() builds V3 exactly"
    );
}

#[test]
fn final_ack_builder_round_trips() {
    let body = FinalAckBody {
        tx_sequence_id: 0x5F00_0000_0000_0001,
        tx_sequence_number: 9,
        tx_previous_sequence_number: 8,
        source_guid: sender(),
        message_id: 77,
    };
    let bytes36 = body.to_bytes();
    let m = UserMessage::final_ack(
        receiver(),
        2,
        QueueRef::DestinationPrivate(ORDER_QUEUE_ID),
        MessageClass::NACK_Q_PURGED,
        &bytes36,
    )
    .with_queue_manager_address(sender());
    assert!(m.is_recoverable() && m.is_final_ack() && !m.is_order_ack());
    let bytes = encode_vec(&m);
    let back = UserMessage::parse(&bytes).unwrap();
    assert_eq!(back.final_ack_body(), Some(body));
    assert_eq!(back.user.flags, UserFlags(0x0020_0C20), "MP | DQ 3 | DM 1");
    assert_eq!(
        OrderAckBody::parse(&bytes36[..35]).unwrap_err().kind,
        ErrorKind::Truncated
    );
}

// ----- round trips with every optional header -------------------------------------------------

struct Parts {
    dq: Vec<u8>,
    aq: Vec<u8>,
    label: Vec<u8>,
    soap_h: Vec<u8>,
    soap_b: Vec<u8>,
    env: Vec<u8>,
    http: Vec<u8>,
    mqf_list: [u8; 256],
}

fn parts() -> Parts {
    Parts {
        dq: utf16z("TCP:10.0.0.1\\private$\\q"),
        aq: utf16z("OS:host\\admin"),
        label: utf16z("odd"),
        soap_h: utf16z("<h/>"),
        soap_b: utf16z("<body>x</body>"),
        env: utf16z("<se:Envelope/>"),
        http: b"POST /msmq HTTP/1.1\r\n\r\nbody!".to_vec(),
        mqf_list: [0u8; 256],
    }
}

fn kitchen_sink<'a>(p: &'a mut Parts, mqf_first: bool) -> UserMessage<'a> {
    let g = Guid([0x42; 16]);
    let elements = [
        MqfElement::Direct(Utf16(&p.dq)),
        MqfElement::Public(g),
        MqfElement::Private { qm: g, id: 3 },
        MqfElement::DistributionList(g),
    ];
    let dest = MqfAddressHeader::build(&elements, &mut p.mqf_list).unwrap();
    let mut m = UserMessage::new(
        g,
        99,
        QueueRef::Direct(Utf16(&p.dq)),
        Utf16(&p.label),
        b"12345",
    )
    .with_transaction(TransactionHeader {
        flags: TxFlags(TxFlags::CG | TxFlags::FA).with_transaction_index(0xABCDE),
        tx_sequence_id: 7,
        tx_sequence_number: 2,
        previous_tx_sequence_number: 1,
        connector_qm_guid: Some(g),
    })
    .with_admin_queue(
        QueueRef::Direct(Utf16(&p.aq)),
        AckFlags(AckFlags::FULL_RECEIVE),
    )
    .with_response_queue(QueueRef::Private { qm: g, id: 5 })
    .with_security(SecurityHeader {
        flags: SecurityFlags(0x0002 | SecurityFlags::DE),
        sender_id: &[1; 16],
        encryption_key: &[2; 3],
        signature: &[3; 5],
        sender_cert: &[4; 1],
        provider_info: &[5; 7],
    })
    .with_session(SessionHeader {
        window_size: 64,
        ..Default::default()
    });
    m.user.connector_type = Some(Guid([9; 16]));
    m.properties.extension = b"ext";
    m.properties.correlation_id = [7; 20];
    m.debug = Some(DebugHeader::new(Some(g)));
    m.soap = Some(SoapHeader {
        header: Utf16(&p.soap_h),
        body: Utf16(&p.soap_b),
    });
    m.multi_queue = Some(MultiQueueFormatHeader {
        destination: dest,
        administration: MqfAddressHeader::EMPTY,
        response: MqfAddressHeader::EMPTY,
        signature: &[0xEE; 3],
    });
    m.srmp_envelope = Some(SrmpEnvelopeHeader {
        header_id: 0,
        data: Utf16(&p.env),
    });
    m.compound_message = Some(CompoundMessageHeader {
        header_id: 500,
        http_body: &p.http,
        msg_body_size: 5,
        msg_body_offset: 23,
    });
    m.multi_queue_before_soap = mqf_first;
    m.sync();
    m
}

#[test]
fn every_optional_header_round_trips_in_both_soap_mqf_orders() {
    for mqf_first in [false, true] {
        let mut p = parts();
        let m = kitchen_sink(&mut p, mqf_first);
        let bytes = encode_vec(&m);
        assert_eq!(bytes.len() % 4, 0);
        let back = UserMessage::parse(&bytes).expect("parses");
        assert_eq!(back, m, "mqf_first={mqf_first}");
        assert_eq!(back.multi_queue_before_soap, mqf_first);
        assert_eq!(back.compound_message.unwrap().msg_body(), b"body!");
        let dest: Vec<_> = back.multi_queue.unwrap().destination.elements().collect();
        assert_eq!(dest.len(), 4);
        assert_eq!(encode_vec(&back), bytes);
    }
}

#[test]
fn body_area_follows_the_larger_of_message_size_and_allocation() {
    let area = [0xAB_u8; 16];
    let mut m = UserMessage::new(
        sender(),
        1,
        QueueRef::DestinationPrivate(9),
        Utf16(&[]),
        &area,
    );
    m.properties.message_size = 10;
    m.properties.allocation_body_size = 16;
    m.sync();
    let bytes = encode_vec(&m);
    let back = UserMessage::parse(&bytes).unwrap();
    assert_eq!(back.body().len(), 10);
    assert_eq!(back.properties.message_body.len(), 16);
    // An inconsistent area is refused by the encoder, not silently written.
    m.properties.allocation_body_size = 12;
    let mut out = vec![0u8; 512];
    assert_eq!(
        m.encode(&mut out).unwrap_err().kind,
        ErrorKind::SizeMismatch
    );
}

#[test]
fn encoder_refuses_flags_that_disagree_with_headers() {
    let body = [1u8; 4];
    let base = UserMessage::new(
        sender(),
        1,
        QueueRef::DestinationPrivate(9),
        Utf16(&[]),
        &body,
    );
    let mut out = vec![0u8; 512];
    for (bit, field) in [
        (UserFlags::TH, "UserHeader.Flags.TH"),
        (UserFlags::SH, "UserHeader.Flags.SH"),
        (UserFlags::MQ, "UserHeader.Flags.MQ"),
        (UserFlags::HH, "UserHeader.Flags.HH"),
    ] {
        let mut m = base;
        m.user.flags = m.user.flags.with(bit, true);
        let e = m.encode(&mut out).unwrap_err();
        assert_eq!(e.field, field);
    }
    let mut m = base;
    m.user.flags = m.user.flags.with_queue_codes(7, 0, 0);
    assert_eq!(m.encode(&mut out).unwrap_err().field, "UserHeader.Flags.DQ");
    let mut m = base;
    m.user.admin = QueueRef::SameAsAdmin;
    m.sync();
    assert_eq!(m.encode(&mut out).unwrap_err().field, "UserHeader.Flags.AQ");
    let e = base.encode(&mut out[..100]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BufferTooSmall);
}

// ----- rejects --------------------------------------------------------------------------------

#[test]
fn rejects_every_truncation_of_frame7() {
    for n in 0..FRAME7.len() {
        assert!(UserMessage::parse(&FRAME7[..n]).is_err(), "prefix {n}");
        assert!(parse_packet(&FRAME7[..n]).is_err(), "prefix {n}");
        match frame_len(&FRAME7[..n]) {
            Ok(None) => assert!(n < 16),
            Ok(Some(len)) => assert_eq!(len, 2224),
            Err(e) => panic!("frame_len({n}): {e}"),
        }
    }
}

#[test]
fn rejects_every_truncation_with_a_consistent_packet_size() {
    // Lying PacketSize: the frame is cut and PacketSize says so, so the headers overrun it.
    for n in 16..FRAME7.len() - 2 {
        let v = resized(FRAME7, n);
        assert!(UserMessage::parse(&v).is_err(), "PacketSize {n}");
    }
}

#[test]
fn rejects_bad_version_and_signature() {
    assert_err(
        &patched(FRAME7, 0, &[0x11]),
        ErrorKind::BadValue,
        "BaseHeader.VersionNumber",
    );
    assert_err(
        &patched(FRAME7, 4, b"LIOS"),
        ErrorKind::BadValue,
        "BaseHeader.Signature",
    );
}

#[test]
fn rejects_internal_flag_on_a_user_message() {
    assert_err(
        &patched(FRAME7, 2, &[0x0B]),
        ErrorKind::BadValue,
        "BaseHeader.Flags.IN",
    );
}

#[test]
fn rejects_packet_size_too_small_too_large_and_lying() {
    for ps in [0u32, 15] {
        let e = err(&patched(FRAME7, 8, &ps.to_le_bytes()));
        assert_eq!(e.field, "BaseHeader.PacketSize");
    }
    let e = err(&patched(FRAME7, 8, &(MAX_PACKET_SIZE + 1).to_le_bytes()));
    assert_eq!(
        (e.kind, e.field),
        (ErrorKind::Overflow, "BaseHeader.PacketSize")
    );
    // PacketSize larger than the bytes given.
    let e = err(&patched(FRAME7, 8, &2228u32.to_le_bytes()));
    assert_eq!(
        (e.kind, e.field),
        (ErrorKind::Truncated, "BaseHeader.PacketSize")
    );
    // More bytes than PacketSize.
    let mut longer = FRAME7.to_vec();
    longer.extend_from_slice(&[0; 4]);
    assert_eq!(err(&longer).kind, ErrorKind::SizeMismatch);
    // Four unexplained bytes inside PacketSize: more than alignment padding.
    let e = err(&resized(FRAME7, 2228));
    assert_eq!(
        (e.kind, e.field, e.offset),
        (ErrorKind::SizeMismatch, "BaseHeader.PacketSize", 2222)
    );
    // A PacketSize without the final padding is tolerated (< 4 bytes of trailing padding).
    let unpadded = resized(FRAME7, 2222);
    let m = UserMessage::parse(&unpadded).expect("unpadded end tolerated");
    assert_eq!(m.body().len(), 2000);
}

#[test]
fn rejects_flags_announcing_headers_that_are_not_there() {
    let v2 = hex(V2);
    // Base.DH: a DebugHeader after the MPH, but the packet ends there.
    assert_err(
        &patched(&v2, 2, &[0x23]),
        ErrorKind::Truncated,
        "DebugHeader.Flags",
    );
    // HH, MQ, AH: the same for SOAP, MQF and the SRMP sections.
    for (flag, field) in [
        (UserFlags::HH, "SoapHeader.HeaderSectionID"),
        (UserFlags::MQ, "MQFAddressHeader.HeaderSize"),
        (UserFlags::AH, "SRMPEnvelopeHeader.HeaderId"),
    ] {
        let f = 0x0020_1C00 | flag;
        assert_err(
            &patched(&v2, 0x3C, &f.to_le_bytes()),
            ErrorKind::Truncated,
            field,
        );
    }
    // CQ: the ConnectorType GUID would be read from the MPH, leaving the MPH short.
    let f = 0x0020_1C00u32 | UserFlags::CQ;
    assert!(UserMessage::parse(&patched(&v2, 0x3C, &f.to_le_bytes())).is_err());
    // SH and TH (with DM=1): the headers would be read from the MPH's bytes.
    for f in [0x0028_1C00u32, 0x0030_1C20] {
        assert!(
            UserMessage::parse(&patched(&v2, 0x3C, &f.to_le_bytes())).is_err(),
            "{f:x}"
        );
    }
    // MP clear.
    assert_err(
        &patched(&v2, 0x3C, &0x0000_1C00u32.to_le_bytes()),
        ErrorKind::BadValue,
        "UserHeader.Flags.MP",
    );
}

#[test]
fn rejects_transactions_that_are_express_or_use_unknown_flag_bits() {
    let v3 = hex(V3);
    // TH with DM=0.
    assert_err(
        &patched(&v3, 0x3C, &0x0030_1C00u32.to_le_bytes()),
        ErrorKind::BadValue,
        "UserHeader.Flags.DM",
    );
    for bit in 24..32 {
        let flags = 0x5Cu32 | (1 << bit);
        assert_err(
            &patched(&v3, 0x7C, &flags.to_le_bytes()),
            ErrorKind::Unsupported,
            "TransactionHeader.Flags",
        );
    }
    // CG set without room for the ConnectorQMGuid.
    assert!(UserMessage::parse(&patched(&v3, 0x7C, &[0x5D])).is_err());
}

#[test]
fn rejects_unsupported_queue_codes() {
    let v2 = hex(V2);
    for dq in [1u32, 2, 4, 6] {
        let f = 0x0020_0000 | (dq << 10);
        assert_err(
            &patched(&v2, 0x3C, &f.to_le_bytes()),
            ErrorKind::Unsupported,
            "UserHeader.Flags.DQ",
        );
    }
    for aq in [1u32, 4] {
        let f = 0x0020_1C00 | (aq << 13);
        assert_err(
            &patched(&v2, 0x3C, &f.to_le_bytes()),
            ErrorKind::Unsupported,
            "UserHeader.Flags.AQ",
        );
    }
    // Every RQ code is legal; with no room for the name they fail on size, not on the code.
    for rq in 2u32..8 {
        let f = 0x0020_1C00 | (rq << 16);
        let e = err(&patched(&v2, 0x3C, &f.to_le_bytes()));
        assert_ne!(e.field, "UserHeader.Flags.RQ");
    }
}

#[test]
fn rejects_bad_direct_name_counts() {
    assert_err(
        &patched(FRAME7, 0x40, &[0x1B]),
        ErrorKind::BadValue,
        "UserHeader.DestinationQueue",
    );
    assert!(UserMessage::parse(&patched(FRAME7, 0x40, &[0xFE, 0xFF])).is_err());
}

#[test]
fn rejects_security_header_sizes_that_overflow_or_lie() {
    // SenderIdSize near u16::MAX: runs past PacketSize.
    assert_err(
        &patched(FRAME7, 0x5E, &[0xFF, 0xFF]),
        ErrorKind::Truncated,
        "SecurityHeader.SecurityData.SecurityID",
    );
    for at in [0x60, 0x62] {
        assert!(UserMessage::parse(&patched(FRAME7, at, &[0xFF, 0xFF])).is_err());
    }
    // SenderCertSize above the 0xFFFF cap.
    assert_err(
        &patched(FRAME7, 0x64, &0x1_0000u32.to_le_bytes()),
        ErrorKind::Overflow,
        "SecurityHeader.SenderCertSize",
    );
    assert!(UserMessage::parse(&patched(FRAME7, 0x68, &u32::MAX.to_le_bytes())).is_err());
    // All five sizes zero.
    assert_err(
        &patched(FRAME7, 0x5E, &[0, 0]),
        ErrorKind::BadValue,
        "SecurityHeader.SenderIdSize",
    );
    // ST=0 with a sender id.
    assert_err(
        &patched(FRAME7, 0x5C, &[0x00]),
        ErrorKind::BadValue,
        "SecurityHeader.Flags.ST",
    );
}

#[test]
fn rejects_message_properties_lengths_that_overflow() {
    assert_err(
        &patched(FRAME7, 0x89, &[0xFF]),
        ErrorKind::BadValue,
        "MessagePropertiesHeader.LabelLength",
    );
    assert_err(
        &patched(FRAME7, 0x89, &[0xFB]),
        ErrorKind::BadValue,
        "MessagePropertiesHeader.LabelLength",
    );
    for (at, field) in [
        (0xBC, "MessagePropertiesHeader.ExtensionData"),
        (0xA8, "MessagePropertiesHeader.MessageBody"),
        (0xAC, "MessagePropertiesHeader.MessageBody"),
    ] {
        for v in [u32::MAX, u32::MAX - 3, 0x8000_0000] {
            assert_err(
                &patched(FRAME7, at, &v.to_le_bytes()),
                ErrorKind::Truncated,
                field,
            );
        }
    }
    // MessageSize smaller than the body: bytes left over inside PacketSize.
    let short = patched(
        &patched(FRAME7, 0xA8, &1000u32.to_le_bytes()),
        0xAC,
        &1000u32.to_le_bytes(),
    );
    assert_err(&short, ErrorKind::SizeMismatch, "BaseHeader.PacketSize");
    // MessageSize alone smaller: the body area still follows AllocationBodySize.
    let smaller = patched(FRAME7, 0xA8, &1000u32.to_le_bytes());
    let m = UserMessage::parse(&smaller).unwrap();
    assert_eq!(
        (m.body().len(), m.properties.message_body.len()),
        (1000, 2000)
    );
}

fn with_mqf(list_elements: &[MqfElement<'_>]) -> Vec<u8> {
    let mut store = [0u8; 128];
    let dest = MqfAddressHeader::build(list_elements, &mut store).unwrap();
    let mut m = UserMessage::new(
        sender(),
        1,
        QueueRef::DestinationPrivate(9),
        Utf16(&[]),
        b"x",
    );
    m.multi_queue = Some(MultiQueueFormatHeader {
        destination: dest,
        administration: MqfAddressHeader::EMPTY,
        response: MqfAddressHeader::EMPTY,
        signature: &[],
    });
    m.sync();
    encode_vec(&m)
}

#[test]
fn rejects_multi_queue_headers_that_lie() {
    let g = Guid([1; 16]);
    let bytes = with_mqf(&[MqfElement::Public(g)]);
    // The MQF header starts after BaseHeader(16) + UserHeader(52) + MPH(57 -> 60) = 128.
    let at = 128;
    assert_eq!(&bytes[at + 4..at + 6], &[0x64, 0]);
    assert!(UserMessage::parse(&bytes).is_ok());
    for count in [2u32, 0x4000_0000, u32::MAX] {
        assert!(
            UserMessage::parse(&patched(&bytes, at + 8, &count.to_le_bytes())).is_err(),
            "ElementCount {count}"
        );
    }
    for size in [0u32, 11, 12, 100, u32::MAX] {
        assert!(
            UserMessage::parse(&patched(&bytes, at, &size.to_le_bytes())).is_err(),
            "HeaderSize {size}"
        );
    }
    assert_err(
        &patched(&bytes, at + 4, &[0xC8]),
        ErrorKind::BadValue,
        "MQFAddressHeader.HeaderID",
    );
    assert_err(
        &patched(&bytes, at + 12, &[0x05]),
        ErrorKind::BadValue,
        "MQFFormatNameElement.FormatType",
    );
    // A direct name without its NUL runs off the list.
    let name = utf16z("ab");
    let bytes = with_mqf(&[MqfElement::Direct(Utf16(&name))]);
    let e = err(&patched(&bytes, at + 12 + 2 + 4, &[b'c', 0]));
    assert_eq!(e.field, "MQFDirectQueueFormatName.DirectFormatName");
}

#[test]
fn rejects_bad_soap_debug_and_srmp_sections() {
    let mut p = parts();
    let m = kitchen_sink(&mut p, false);
    let bytes = encode_vec(&m);
    let ps = m.packet_size();
    // Locate the SOAP header by its section id, the debug header just after the MPH.
    let soap_at = (0..ps)
        .step_by(4)
        .find(|&i| bytes[i..i + 2] == [0x20, 0x03])
        .unwrap();
    assert_err(
        &patched(&bytes, soap_at, &[0x21]),
        ErrorKind::BadValue,
        "SoapHeader.HeaderSectionID",
    );
    assert!(UserMessage::parse(&patched(&bytes, soap_at + 4, &u32::MAX.to_le_bytes())).is_err());
    // CompoundMessageHeader MsgBodyOffset + MsgBodySize past HTTPBodySize (CVE-2023-21554 class).
    let http_at = (0..ps)
        .step_by(4)
        .find(|&i| bytes[i..i + 2] == 500u16.to_le_bytes())
        .unwrap();
    let e = err(&patched(&bytes, http_at + 12, &u32::MAX.to_le_bytes()));
    assert_eq!(
        (e.kind, e.field),
        (ErrorKind::Overflow, "CompoundMessageHeader.MsgBodySize")
    );
    let e = err(&patched(&bytes, http_at + 4, &u32::MAX.to_le_bytes()));
    assert_eq!(e.field, "CompoundMessageHeader.Data");

    // DebugHeader QT=2 has no defined layout.
    let body = [0u8; 4];
    let mut d = UserMessage::new(
        sender(),
        1,
        QueueRef::DestinationPrivate(9),
        Utf16(&[]),
        &body,
    );
    d.debug = Some(DebugHeader::new(None));
    d.sync();
    let bytes = encode_vec(&d);
    let dbg_at = d.packet_size() - 4;
    assert_err(
        &patched(&bytes, dbg_at, &[0x02]),
        ErrorKind::Unsupported,
        "DebugHeader.Flags.QT",
    );
}
