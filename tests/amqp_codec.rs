//! The AMQP 1.0 codec (`lior::amqp`) against byte vectors derived by hand from the OASIS AMQP
//! 1.0 specification text (no capture, no other implementation): each vector names the
//! sections whose encodings it follows. Then round trips of every performative, hostile input
//! (nesting and count bombs, sizes that lie), and proptests: any bytes never panic any decoder,
//! and encode-then-decode is the identity for generated performatives, messages and values.

use lior::amqp::frame::{
    encode_amqp_frame, encode_sasl_frame, frame_len, parse_frame, FrameType, ProtocolHeader,
    AMQP_HEADER, EMPTY_FRAME, SASL_HEADER,
};
use lior::amqp::message::{
    encode_data, encode_map_section_from, Body, Header, Message, Properties,
};
use lior::amqp::performatives::{
    condition, rcv_settle_mode, snd_settle_mode, AmqpError, Attach, Begin, DeliveryState, Detach,
    Disposition, Flow, Open, Performative, Role, Source, Target, Transfer,
};
use lior::amqp::sasl::{parse_initial_response, SaslCredentials, SaslFrame, SaslInit, SaslOutcome};
use lior::amqp::types::{
    descriptor, put_binary, put_str, put_sym, Decoder, ListWriter, MapWriter, Symbols, Value,
};
use lior::amqp::{CodecError, ErrorKind, MAX_NESTING_DEPTH, MIN_MAX_FRAME_SIZE};
use proptest::prelude::*;

/// Wraps an AMQP frame body in a frame header (Part 2 §2.3.1: SIZE, DOFF=2, TYPE, channel).
fn frame(frame_type: u8, channel: u16, body: &[u8]) -> Vec<u8> {
    let size = (8 + body.len()) as u32;
    let mut f = size.to_be_bytes().to_vec();
    f.extend_from_slice(&[2, frame_type]);
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn perf(bytes: &[u8]) -> (Performative<'_>, &[u8]) {
    Performative::decode(bytes).unwrap_or_else(|e| panic!("decode failed: {e}"))
}

fn encode(p: &Performative<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    p.encode(&mut out).expect("encode");
    out
}

// ---------------------------------------------------------------------------------------------
// Hand-derived vectors.

/// Part 2 §2.2: the protocol headers; Part 2 §2.3.1, §2.4.5: the empty frame.
#[test]
fn protocol_headers_and_empty_frame() {
    assert_eq!(&AMQP_HEADER, b"AMQP\x00\x01\x00\x00");
    assert_eq!(&SASL_HEADER, b"AMQP\x03\x01\x00\x00");
    assert_eq!(
        ProtocolHeader::parse(b"AMQP\x03\x01\x00\x00"),
        Ok(Some(ProtocolHeader::SASL))
    );
    assert_eq!(ProtocolHeader::parse(b"AMQP\x00\x01"), Ok(None));
    let h = ProtocolHeader::parse(b"AMQP\x00\x01\x00\x00")
        .unwrap()
        .unwrap();
    assert!(h.is_1_0_0() && h == ProtocolHeader::AMQP);
    assert_eq!(h.to_bytes(), AMQP_HEADER);
    // An HTTP client or an AMQP 0-9-1 client (AMQP 0 0 9 1 is still "AMQP") on the port.
    assert_eq!(
        ProtocolHeader::parse(b"GET / HTTP/1.1").unwrap_err().kind,
        ErrorKind::BadValue
    );
    assert_eq!(
        ProtocolHeader::parse(b"GE").unwrap_err().kind,
        ErrorKind::BadValue
    );
    assert!(!ProtocolHeader::parse(b"AMQP\x00\x00\x09\x01")
        .unwrap()
        .unwrap()
        .is_1_0_0());

    // SIZE 8, DOFF 2, TYPE 0, channel 0, no body.
    assert_eq!(EMPTY_FRAME, [0, 0, 0, 8, 2, 0, 0, 0]);
    let f = parse_frame(&EMPTY_FRAME, 512).unwrap();
    assert_eq!(f.header.frame_type, FrameType::Amqp);
    assert_eq!(f.performative(), Ok(None));
}

/// Part 2 §2.3.1 frame header; §2.7.1 open; Part 1 §1.6.20 str8 (0xa1), §1.6.1 null (0x40),
/// §1.6.5 uint (0x70), §1.6.4 ushort (0x60), §1.6.22 list8 (0xc0: size, count), §1.3 a
/// descriptor as smallulong (0x00 0x53 0x10).
#[test]
fn open_vector() {
    let body: &[u8] = &[
        0x00, 0x53, 0x10, // described, smallulong 0x10 = amqp:open:list
        0xc0, 0x0e, 0x04, // list8, size 14 (count byte + 13), 4 fields
        0xa1, 0x02, b'c', b'1', // container-id "c1"
        0x40, // hostname null
        0x70, 0x00, 0x00, 0x10, 0x00, // max-frame-size uint 4096
        0x60, 0x00, 0x07, // channel-max ushort 7
    ];
    let bytes = frame(0, 0, body);
    assert_eq!(&bytes[..8], &[0, 0, 0, 27, 2, 0, 0, 0]);
    assert_eq!(frame_len(&bytes, 512), Ok(Some(27)));
    let f = parse_frame(&bytes, 512).unwrap();
    let (p, payload) = f.performative().unwrap().unwrap();
    assert!(payload.is_empty());
    let mut want = Open::new("c1");
    want.max_frame_size = 4096;
    want.channel_max = 7;
    assert_eq!(p, Performative::Open(Box::new(want)));
    // Defaults of the absent fields (§2.7.1).
    let Performative::Open(o) = &p else {
        unreachable!()
    };
    assert_eq!(o.idle_time_out, None);
    // Our encoder writes the same bytes (smallest encodings, trailing nulls dropped).
    let mut out = Vec::new();
    encode_amqp_frame(&mut out, 0, &p, &[], 512).unwrap();
    assert_eq!(out, bytes);
}

/// §2.7.5 transfer followed by a data section (Part 3 §3.2.6): uint0 (0x43), smalluint (0x52),
/// vbin8 (0xa0), false (0x42).
#[test]
fn transfer_vector_and_wide_encodings() {
    let body: &[u8] = &[
        0x00, 0x53, 0x14, // transfer
        0xc0, 0x0a, 0x05, // list8, size 10, 5 fields
        0x43, // handle uint0
        0x52, 0x05, // delivery-id smalluint 5
        0xa0, 0x02, 0x00, 0x01, // delivery-tag vbin8 [0, 1]
        0x43, // message-format 0
        0x42, // settled false
        0x00, 0x53, 0x75, 0xa0, 0x05, b'h', b'e', b'l', b'l', b'o', // data "hello"
    ];
    let (p, payload) = perf(body);
    let want = Transfer {
        settled: Some(false),
        ..Transfer::new(0, 5, &[0, 1])
    };
    assert_eq!(p, Performative::Transfer(want));
    assert_eq!(payload, &body[15..]);
    let m = Message::decode(payload).unwrap();
    assert_eq!(
        m.body.data_sections().collect::<Vec<_>>(),
        vec![&b"hello"[..]]
    );
    assert_eq!(encode(&p), &body[..15]);

    // The same transfer in the widest encodings the spec allows: list32 (0xd0, 4-byte size and
    // count), uint (0x70), ulong descriptor (0x80), vbin32 (0xb0), boolean (0x56 0x00).
    let wide: &[u8] = &[
        0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x14, // descriptor ulong 0x14
        0xd0, 0, 0, 0, 28, 0, 0, 0, 5, // list32, size 28 (4-byte count + 24), 5 fields
        0x70, 0, 0, 0, 0, // handle
        0x70, 0, 0, 0, 5, // delivery-id
        0xb0, 0, 0, 0, 2, 0x00, 0x01, // delivery-tag vbin32
        0x70, 0, 0, 0, 0, // message-format
        0x56, 0x00, // settled, one-byte boolean false
    ];
    assert_eq!(perf(wide).0, p);
    // And with the symbolic descriptor (§1.3).
    let mut sym = vec![0x00];
    put_sym(&mut sym, "amqp:transfer:list").unwrap();
    sym.extend_from_slice(&body[3..15]);
    assert_eq!(perf(&sym).0, p);
}

/// §2.7.6 disposition settling deliveries 5..=7 as accepted (Part 3 §3.4.2, an empty list:
/// list0 0x45); true is 0x41.
#[test]
fn disposition_vector() {
    let body: &[u8] = &[
        0x00, 0x53, 0x15, // disposition
        0xc0, 0x0b, 0x05, // list8, size 11, 5 fields
        0x41, // role receiver (true)
        0x52, 0x05, // first 5
        0x52, 0x07, // last 7
        0x41, // settled
        0x00, 0x53, 0x24, 0x45, // accepted
    ];
    let want = Performative::Disposition(Disposition {
        role: Role::Receiver,
        first: 5,
        last: Some(7),
        settled: true,
        state: Some(DeliveryState::Accepted),
        batchable: false,
    });
    assert_eq!(perf(body).0, want);
    assert_eq!(encode(&want), body);
}

/// §2.7.4 flow granting 100 credits on handle 0.
#[test]
fn flow_vector() {
    let body: &[u8] = &[
        0x00, 0x53, 0x13, // flow
        0xc0, 0x12, 0x07, // list8, size 18, 7 fields
        0x43, // next-incoming-id 0
        0x70, 0x00, 0x00, 0x08, 0x00, // incoming-window 2048
        0x52, 0x01, // next-outgoing-id 1
        0x70, 0x7f, 0xff, 0xff, 0xff, // outgoing-window
        0x43, // handle 0
        0x43, // delivery-count 0
        0x52, 0x64, // link-credit 100
    ];
    let want = Performative::Flow(Flow {
        next_incoming_id: Some(0),
        incoming_window: 2048,
        next_outgoing_id: 1,
        outgoing_window: 0x7fff_ffff,
        handle: Some(0),
        delivery_count: Some(0),
        link_credit: Some(100),
        available: None,
        drain: false,
        echo: false,
        properties: None,
    });
    assert_eq!(perf(body).0, want);
    assert_eq!(encode(&want), body);
}

/// §2.7.3 attach of a receiving link whose source (Part 3 §3.5.3) is queue "q1", with an empty
/// target (§3.5.4, list0).
#[test]
fn attach_vector() {
    let body: &[u8] = &[
        0x00, 0x53, 0x12, // attach
        0xc0, 0x19, 0x07, // list8, size 25, 7 fields
        0xa1, 0x04, b'l', b'i', b'n', b'k', // name
        0x43, // handle 0
        0x41, // role receiver
        0x40, 0x40, // settle modes: defaults
        0x00, 0x53, 0x28, 0xc0, 0x05, 0x01, 0xa1, 0x02, b'q', b'1', // source {address "q1"}
        0x00, 0x53, 0x29, 0x45, // target {}
    ];
    let mut want = Attach::new("link", 0, Role::Receiver);
    want.source = Some(Source {
        address: Some("q1"),
        ..Source::default()
    });
    want.target = Some(Target::default());
    let want = Performative::Attach(Box::new(want));
    assert_eq!(perf(body).0, want);
    assert_eq!(encode(&want), body);
}

/// §2.7.9 close with an error (§2.8.14: condition symbol sym8 0xa3, description str8).
#[test]
fn close_with_error_vector() {
    let mut body = vec![0x00, 0x53, 0x18, 0xc0, 0x22, 0x01];
    body.extend_from_slice(&[0x00, 0x53, 0x1d, 0xc0, 0x1c, 0x02, 0xa3, 0x0e]);
    body.extend_from_slice(b"amqp:not-found");
    body.extend_from_slice(&[0xa1, 0x09]);
    body.extend_from_slice(b"no such q");
    // 3 descriptor bytes, 0xc0, the size byte, then `size` bytes.
    assert_eq!(body.len(), 5 + 0x22);
    let want = Performative::Close(Some(AmqpError::new(condition::NOT_FOUND, "no such q")));
    assert_eq!(perf(&body).0, want);
    assert_eq!(encode(&want), body);
}

/// Part 5 §5.3.3: sasl-mechanisms (an array8 of sym8, §1.6.24), sasl-init with a PLAIN
/// initial response (RFC 4616), sasl-outcome ok; SASL frames are TYPE 1 (§5.3.1).
#[test]
fn sasl_vectors() {
    let mut mech = vec![0x00, 0x53, 0x40, 0xc0, 0x15, 0x01];
    mech.extend_from_slice(&[0xe0, 0x12, 0x02, 0xa3, 0x09]); // array8 size 18, 2 x sym8
    mech.extend_from_slice(b"ANONYMOUS");
    mech.push(0x05);
    mech.extend_from_slice(b"PLAIN");
    let SaslFrame::Mechanisms(m) = SaslFrame::decode(&mech).unwrap() else {
        panic!("not mechanisms")
    };
    assert!(m.contains("PLAIN") && m.contains("ANONYMOUS") && !m.contains("EXTERNAL"));
    let mut out = Vec::new();
    let n = encode_sasl_frame(
        &mut out,
        &SaslFrame::Mechanisms(Symbols::Slice(&["ANONYMOUS", "PLAIN"])),
    )
    .unwrap();
    assert_eq!(out, frame(1, 0, &mech));
    assert_eq!(n, out.len());

    let mut init = vec![0x00, 0x53, 0x41, 0xc0, 0x14, 0x02, 0xa3, 0x05];
    init.extend_from_slice(b"PLAIN");
    init.extend_from_slice(&[0xa0, 0x0a, 0x00]);
    init.extend_from_slice(b"user\0pass");
    let framed = frame(1, 0, &init);
    assert_eq!(&framed[..8], &[0, 0, 0, 33, 2, 1, 0, 0]);
    let f = parse_frame(&framed, MIN_MAX_FRAME_SIZE).unwrap();
    let SaslFrame::Init(i) = f.sasl().unwrap() else {
        panic!("not init")
    };
    assert_eq!(
        parse_initial_response(&i),
        Ok(SaslCredentials::Plain {
            authzid: None,
            authcid: "user",
            password: "pass"
        })
    );
    let mut out = Vec::new();
    SaslFrame::Init(i).encode(&mut out).unwrap();
    assert_eq!(out, init);

    let outcome: &[u8] = &[0x00, 0x53, 0x44, 0xc0, 0x03, 0x01, 0x50, 0x00];
    let want = SaslFrame::Outcome(SaslOutcome {
        code: 0,
        additional_data: None,
    });
    assert_eq!(SaslFrame::decode(outcome), Ok(want));
    let mut out = Vec::new();
    want.encode(&mut out).unwrap();
    assert_eq!(out, outcome);
}

/// Part 3 §3.2: header (durable, priority 3), properties (subject), application-properties
/// (a map8 with a string key, §1.6.23), one data section.
#[test]
fn message_vector() {
    let mut b = vec![0x00, 0x53, 0x70, 0xc0, 0x04, 0x02, 0x41, 0x50, 0x03]; // header
    b.extend_from_slice(&[
        0x00, 0x53, 0x73, 0xc0, 0x09, 0x04, 0x40, 0x40, 0x40, 0xa1, 0x03,
    ]);
    b.extend_from_slice(b"lbl"); // properties: subject "lbl"
    b.extend_from_slice(&[0x00, 0x53, 0x74, 0xc1, 0x15, 0x02, 0xa1, 0x10]);
    b.extend_from_slice(b"msmq.AppSpecific");
    b.extend_from_slice(&[0x52, 0x07]); // application-properties {"msmq.AppSpecific": 7}
    b.extend_from_slice(&[0x00, 0x53, 0x75, 0xa0, 0x02, b'h', b'i']); // data "hi"
    let m = Message::decode(&b).unwrap();
    assert_eq!(
        m.header,
        Some(Header {
            durable: true,
            priority: 3,
            ..Header::default()
        })
    );
    assert_eq!(m.properties.unwrap().subject, Some("lbl"));
    assert_eq!(
        m.application_property("msmq.AppSpecific"),
        Ok(Some(Value::Uint(7)))
    );
    assert_eq!(m.application_property("msmq.Other"), Ok(None));
    assert_eq!(m.body.data_sections().collect::<Vec<_>>(), vec![&b"hi"[..]]);

    // The section encoders write the same bytes.
    let mut out = Vec::new();
    m.header.unwrap().encode(&mut out).unwrap();
    Properties {
        subject: Some("lbl"),
        ..Properties::default()
    }
    .encode(&mut out)
    .unwrap();
    encode_map_section_from(
        &mut out,
        descriptor::APPLICATION_PROPERTIES,
        &[(Value::String("msmq.AppSpecific"), Value::Uint(7))],
    )
    .unwrap();
    encode_data(&mut out, b"hi").unwrap();
    assert_eq!(out, b);
    let mut again = Vec::new();
    m.encode(&mut again).unwrap();
    assert_eq!(again, b);
}

// ---------------------------------------------------------------------------------------------
// Frames and limits.

#[test]
fn frame_len_checks_size_doff_type_and_max() {
    assert_eq!(frame_len(&[0, 0, 0], 512), Ok(None));
    let err = |b: &[u8], max| frame_len(b, max).unwrap_err();
    assert_eq!(err(&[0, 0, 0, 7, 2, 0, 0, 0], 512).field, "frame.SIZE");
    assert_eq!(err(&[0, 0, 0, 8, 1, 0, 0, 0], 512).field, "frame.DOFF");
    assert_eq!(
        err(&[0, 0, 0, 8, 3, 0, 0, 0], 512).kind,
        ErrorKind::SizeMismatch
    );
    assert_eq!(err(&[0, 0, 0, 8, 2, 7, 0, 0], 512).field, "frame.TYPE");
    let big = err(&[0, 0, 2, 1, 2, 0, 0, 0], 512);
    assert_eq!(big.kind, ErrorKind::FrameTooLarge);
    assert_eq!(big.condition(), condition::FRAMING_ERROR);
    assert_eq!(frame_len(&[0, 0, 2, 0, 2, 0, 0, 0], 512), Ok(Some(512)));
    // An extended header (DOFF 3) is skipped.
    let f = [0, 0, 0, 12, 3, 0, 0, 5, 9, 9, 9, 9];
    let p = parse_frame(&f, 512).unwrap();
    assert_eq!(
        (p.header.channel, p.extended, p.body),
        (5, &[9u8, 9, 9, 9][..], &[][..])
    );
    // A frame given with bytes missing or extra.
    assert_eq!(
        parse_frame(&f[..11], 512).unwrap_err().kind,
        ErrorKind::Truncated
    );
}

#[test]
fn encoded_frames_respect_max_frame_size() {
    let t = Performative::Transfer(Transfer::new(1, 2, b"t"));
    let mut out = Vec::new();
    let err = encode_amqp_frame(&mut out, 3, &t, &[0u8; 600], 512).unwrap_err();
    assert_eq!(err.kind, ErrorKind::FrameTooLarge);
    assert!(out.is_empty(), "a refused frame leaves nothing behind");
}

/// A 4000-byte message over max-frame-size 512: every frame fits, only the last says
/// more=false, only the first carries the tag, and the payloads concatenate to the message.
#[test]
fn transfer_splits_into_frames() {
    let payload: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
    let t = Transfer {
        settled: Some(true),
        ..Transfer::new(1, 9, b"tag")
    };
    let mut out = Vec::new();
    let n = t.encode_frames(&mut out, 4, &payload, 512).unwrap();
    let mut rest = &out[..];
    let mut got = Vec::new();
    let mut seen = 0;
    while !rest.is_empty() {
        let len = frame_len(rest, 512).unwrap().unwrap();
        let f = parse_frame(&rest[..len], 512).unwrap();
        assert_eq!(f.header.channel, 4);
        let (Performative::Transfer(x), p) = f.performative().unwrap().unwrap() else {
            panic!("not a transfer")
        };
        assert_eq!(
            (x.handle, x.delivery_id, x.settled),
            (1, Some(9), Some(true))
        );
        assert_eq!(x.delivery_tag.is_some(), seen == 0);
        seen += 1;
        assert_eq!(x.more, seen < n, "frame {seen} of {n}");
        got.extend_from_slice(p);
        rest = &rest[len..];
    }
    assert_eq!(seen, n);
    assert!(n >= 8, "{n} frames");
    assert_eq!(got, payload);

    // One frame when it fits.
    let mut out = Vec::new();
    assert_eq!(t.encode_frames(&mut out, 0, b"small", 512), Ok(1));

    // A max-frame-size too small for the performative itself: refused, nothing left behind,
    // whether or not there is payload to carry.
    for payload in [&b""[..], b"x", &payload] {
        let mut out = vec![1, 2, 3];
        let e = t.encode_frames(&mut out, 0, payload, 16).unwrap_err();
        assert_eq!(e.kind, ErrorKind::FrameTooLarge);
        assert_eq!(out, [1, 2, 3]);
    }
}

#[test]
fn nesting_bomb_stops_at_the_depth_limit() {
    // 0x00 0x00 0x00 ...: a descriptor that is a described value that is ...
    let bomb = vec![0u8; 100_000];
    let e = Decoder::new(&bomb).value("x").unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooDeep);
    assert_eq!(
        Performative::decode(&bomb).unwrap_err().kind,
        ErrorKind::TooDeep
    );
    // Lists in lists: 0xc0 size count, each level one deeper.
    let levels = MAX_NESTING_DEPTH as usize + 5;
    let mut nested = vec![0x45];
    for _ in 0..levels {
        let mut outer = vec![0xd0];
        outer.extend_from_slice(&(nested.len() as u32 + 4).to_be_bytes());
        outer.extend_from_slice(&1u32.to_be_bytes());
        outer.extend_from_slice(&nested);
        nested = outer;
    }
    let v = Decoder::new(&nested).value("x").unwrap();
    assert_eq!(v.validate("x").unwrap_err().kind, ErrorKind::TooDeep);
}

#[test]
fn counts_that_lie_are_refused() {
    let kind = |b: &[u8]| Decoder::new(b).value("x").unwrap_err().kind;
    // list8 claiming 5 elements in 1 byte.
    assert_eq!(kind(&[0xc0, 0x02, 0x05, 0x40]), ErrorKind::SizeMismatch);
    // map8 with an odd count.
    assert_eq!(kind(&[0xc1, 0x02, 0x01, 0x40]), ErrorKind::SizeMismatch);
    // array32 of 2^32-1 nulls (zero bytes each) in 10 bytes.
    assert_eq!(
        kind(&[0xf0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x40]),
        ErrorKind::TooMany
    );
    // array8 of 200 uints in 2 bytes.
    assert_eq!(
        kind(&[0xe0, 0x04, 200, 0x70, 0, 0]),
        ErrorKind::SizeMismatch
    );
    // str32 longer than the input.
    assert_eq!(kind(&[0xb1, 0, 0, 1, 0, b'a']), ErrorKind::Truncated);
    // Invalid UTF-8; a non-ASCII symbol.
    assert_eq!(kind(&[0xa1, 0x02, 0xc3, 0x28]), ErrorKind::BadValue);
    assert_eq!(kind(&[0xa3, 0x01, 0xe9]), ErrorKind::BadValue);
    // Format codes that do not exist, an extension code.
    assert_eq!(kind(&[0x01]), ErrorKind::BadCode);
    assert_eq!(kind(&[0x4f, 0x00]), ErrorKind::Unsupported);
    // A list whose elements stop short of its size: found when iterating.
    let v = Decoder::new(&[0xc0, 0x03, 0x01, 0x40, 0x40])
        .value("x")
        .unwrap();
    assert_eq!(v.validate("x").unwrap_err().kind, ErrorKind::SizeMismatch);
}

#[test]
fn performative_field_errors_name_the_field() {
    // transfer with a null handle.
    let e = Performative::decode(&[0x00, 0x53, 0x14, 0xc0, 0x02, 0x01, 0x40]).unwrap_err();
    assert_eq!((e.kind, e.field), (ErrorKind::Missing, "transfer.handle"));
    assert_eq!(e.condition(), condition::DECODE_ERROR);
    // transfer whose handle is a string.
    let e = Performative::decode(&[0x00, 0x53, 0x14, 0xc0, 0x03, 0x01, 0xa1, 0x00]).unwrap_err();
    assert_eq!(
        (e.kind, e.field, e.offset),
        (ErrorKind::BadCode, "transfer.handle", 6)
    );
    // A 33-byte delivery-tag (§2.8.7 allows 32).
    let mut out = Vec::new();
    Transfer::new(0, 0, &[7; 33]).encode(&mut out).unwrap();
    let e = Performative::decode(&out).unwrap_err();
    assert_eq!(e.field, "transfer.delivery-tag");
    // An unknown descriptor; not a described value.
    assert_eq!(
        Performative::decode(&[0x00, 0x53, 0x99, 0x45])
            .unwrap_err()
            .field,
        "performative descriptor"
    );
    assert_eq!(
        Performative::decode(&[0x45]).unwrap_err().kind,
        ErrorKind::BadCode
    );
    // A transaction coordinator target is not supported: not-implemented.
    let mut out = Vec::new();
    put_descriptor_list(&mut out, descriptor::ATTACH, |w, out| {
        w.str(out, "l").unwrap();
        w.uint(out, 0);
        w.bool(out, false);
        w.null(out);
        w.null(out);
        w.null(out);
        w.with(out, |out| {
            out.extend_from_slice(&[0x00, 0x53, 0x30, 0x45]);
            Ok(())
        })
        .unwrap();
    });
    let e = Performative::decode(&out).unwrap_err();
    assert_eq!(
        (e.kind, e.condition()),
        (ErrorKind::Unsupported, condition::NOT_IMPLEMENTED)
    );
    // Display says what and where.
    let s = CodecError::new(ErrorKind::Missing, "transfer.handle", 6).to_string();
    assert!(
        s.contains("transfer.handle") && s.contains("offset 6"),
        "{s}"
    );
}

fn put_descriptor_list(
    out: &mut Vec<u8>,
    code: u64,
    f: impl FnOnce(&mut ListWriter, &mut Vec<u8>),
) {
    lior::amqp::types::put_descriptor(out, code);
    let mut w = ListWriter::begin(out);
    f(&mut w, out);
    w.finish(out).unwrap();
}

#[test]
fn delivery_states_round_trip() {
    let mut info = Vec::new();
    let mut mw = MapWriter::begin(&mut info);
    mw.entry(
        &mut info,
        &Value::Symbol("x-opt-reason"),
        &Value::String("bad"),
    )
    .unwrap();
    mw.finish(&mut info).unwrap();
    let Value::Map(map) = Decoder::new(&info).value("m").unwrap() else {
        panic!("not a map")
    };
    let states = [
        DeliveryState::Received {
            section_number: 2,
            section_offset: 1 << 40,
        },
        DeliveryState::Accepted,
        DeliveryState::Rejected(None),
        DeliveryState::Rejected(Some(AmqpError {
            condition: condition::RESOURCE_LIMIT_EXCEEDED,
            description: Some("queue full"),
            info: Some(map),
        })),
        DeliveryState::Released,
        DeliveryState::Modified {
            delivery_failed: true,
            undeliverable_here: false,
            message_annotations: Some(map),
        },
    ];
    for s in states {
        let d = Performative::Disposition(Disposition {
            role: Role::Sender,
            first: 1,
            last: None,
            settled: false,
            state: Some(s),
            batchable: true,
        });
        let bytes = encode(&d);
        assert_eq!(perf(&bytes).0, d, "{s:?}");
    }
}

/// Every performative, with its optional fields set, encodes and decodes back.
#[test]
fn every_performative_round_trips() {
    let mut props = Vec::new();
    let mut mw = MapWriter::begin(&mut props);
    mw.entry(
        &mut props,
        &Value::Symbol("product"),
        &Value::String("lior"),
    )
    .unwrap();
    mw.finish(&mut props).unwrap();
    let Value::Map(props) = Decoder::new(&props).value("m").unwrap() else {
        panic!("not a map")
    };
    let caps = ["ANONYMOUS-RELAY", "DELAYED_DELIVERY"];
    let open = Open {
        container_id: "lior-1",
        hostname: Some("localhost"),
        max_frame_size: 65536,
        channel_max: 255,
        idle_time_out: Some(30_000),
        outgoing_locales: Symbols::One("en-US"),
        incoming_locales: Symbols::Slice(&["en-US", "fr-FR"]),
        offered_capabilities: Symbols::Slice(&caps),
        desired_capabilities: Symbols::None,
        properties: Some(props),
    };
    let source = Source {
        address: Some("FormatName:DIRECT=OS:.\\private$\\q"),
        durable: 2,
        expiry_policy: Some("never"),
        timeout: 60,
        dynamic: false,
        dynamic_node_properties: None,
        distribution_mode: Some("copy"),
        filter: Some(props),
        default_outcome: Some(DeliveryState::Released),
        outcomes: Symbols::Slice(&["amqp:accepted:list", "amqp:rejected:list"]),
        capabilities: Symbols::One("queue"),
    };
    let target = Target {
        address: Some("q"),
        durable: 1,
        expiry_policy: None,
        timeout: 0,
        dynamic: true,
        dynamic_node_properties: Some(props),
        capabilities: Symbols::None,
    };
    let all = [
        Performative::Open(Box::new(open)),
        Performative::Open(Box::new(Open::new(""))),
        Performative::Begin(Begin {
            remote_channel: Some(3),
            next_outgoing_id: 1,
            incoming_window: 5000,
            outgoing_window: u32::MAX,
            handle_max: 1023,
            offered_capabilities: Symbols::None,
            desired_capabilities: Symbols::One("x"),
            properties: None,
        }),
        Performative::Attach(Box::new(Attach {
            snd_settle_mode: snd_settle_mode::SETTLED,
            rcv_settle_mode: rcv_settle_mode::SECOND,
            source: Some(source),
            target: Some(target),
            unsettled: Some(props),
            incomplete_unsettled: true,
            initial_delivery_count: Some(0),
            max_message_size: Some(4 << 20),
            ..Attach::new("sender-1", 7, Role::Sender)
        })),
        Performative::Flow(Flow {
            next_incoming_id: None,
            incoming_window: 1,
            next_outgoing_id: 2,
            outgoing_window: 3,
            handle: Some(4),
            delivery_count: Some(5),
            link_credit: Some(6),
            available: Some(7),
            drain: true,
            echo: true,
            properties: Some(props),
        }),
        Performative::Transfer(Transfer {
            handle: 1,
            delivery_id: None,
            delivery_tag: None,
            message_format: None,
            settled: None,
            more: true,
            rcv_settle_mode: Some(1),
            state: Some(DeliveryState::Received {
                section_number: 0,
                section_offset: 0,
            }),
            resume: true,
            aborted: true,
            batchable: true,
        }),
        Performative::Disposition(Disposition {
            role: Role::Receiver,
            first: u32::MAX,
            last: Some(0),
            settled: false,
            state: None,
            batchable: false,
        }),
        Performative::Detach(Detach {
            handle: 9,
            closed: true,
            error: Some(AmqpError {
                condition: condition::UNAUTHORIZED_ACCESS,
                description: None,
                info: Some(props),
            }),
        }),
        Performative::Detach(Detach {
            handle: 0,
            closed: false,
            error: None,
        }),
        Performative::End(None),
        Performative::End(Some(AmqpError::new(condition::DECODE_ERROR, "bad"))),
        Performative::Close(None),
        Performative::Close(Some(AmqpError::new(condition::FRAMING_ERROR, "x"))),
    ];
    for p in all {
        let mut out = Vec::new();
        let n = encode_amqp_frame(&mut out, 17, &p, b"", u32::MAX).unwrap();
        assert_eq!(n, out.len());
        let f = parse_frame(&out, u32::MAX).unwrap();
        assert_eq!(f.header.channel, 17);
        let (q, rest) = f.performative().unwrap().unwrap();
        assert_eq!(q, p, "{}", p.name());
        assert!(rest.is_empty());
    }
}

#[test]
fn sasl_frames_round_trip_and_credentials() {
    let frames = [
        SaslFrame::Mechanisms(Symbols::One("ANONYMOUS")),
        SaslFrame::Init(SaslInit {
            mechanism: "ANONYMOUS",
            initial_response: Some(b"me@example.com"),
            hostname: Some("host"),
        }),
        SaslFrame::Challenge(b"c"),
        SaslFrame::Response(b""),
        SaslFrame::Outcome(SaslOutcome {
            code: 1,
            additional_data: Some(b"no"),
        }),
    ];
    for s in frames {
        let mut out = Vec::new();
        encode_sasl_frame(&mut out, &s).unwrap();
        let f = parse_frame(&out, MIN_MAX_FRAME_SIZE).unwrap();
        assert_eq!(f.header.frame_type, FrameType::Sasl);
        assert_eq!(f.sasl(), Ok(s));
        // An AMQP frame decoder refuses a SASL frame.
        assert_eq!(f.performative().unwrap_err().field, "frame.TYPE");
    }
    let init = |m, r: &'static [u8]| SaslInit {
        mechanism: m,
        initial_response: Some(r),
        hostname: None,
    };
    assert_eq!(
        parse_initial_response(&init("ANONYMOUS", b"me@example.com")),
        Ok(SaslCredentials::Anonymous {
            trace: Some("me@example.com")
        })
    );
    assert_eq!(
        parse_initial_response(&init("ANONYMOUS", b"")),
        Ok(SaslCredentials::Anonymous { trace: None })
    );
    assert_eq!(
        parse_initial_response(&init("PLAIN", b"admin\0bob\0secret")),
        Ok(SaslCredentials::Plain {
            authzid: Some("admin"),
            authcid: "bob",
            password: "secret"
        })
    );
    let kind = |m, r| parse_initial_response(&init(m, r)).unwrap_err().kind;
    assert_eq!(kind("PLAIN", b"bob\0secret"), ErrorKind::BadValue);
    assert_eq!(kind("PLAIN", b"\0bob\0secret\0"), ErrorKind::BadValue);
    assert_eq!(kind("PLAIN", b"\0\0secret"), ErrorKind::Missing);
    assert_eq!(kind("PLAIN", b"\0bob\0\xff"), ErrorKind::BadValue);
    assert_eq!(kind("SCRAM-SHA-256", b"n,,n=bob"), ErrorKind::Unsupported);
    // A SASL frame larger than 512 bytes cannot be sent (§5.3.1).
    let big = [0u8; 600];
    let mut out = Vec::new();
    assert_eq!(
        encode_sasl_frame(&mut out, &SaslFrame::Challenge(&big))
            .unwrap_err()
            .kind,
        ErrorKind::FrameTooLarge
    );
}

#[test]
fn message_sections_out_of_order_or_mixed_are_refused() {
    let mut header = Vec::new();
    Header::default().encode(&mut header).unwrap();
    let mut data = Vec::new();
    encode_data(&mut data, b"x").unwrap();
    let mut value = Vec::new();
    lior::amqp::message::encode_amqp_value(&mut value, &Value::Null).unwrap();
    let cat = |parts: &[&[u8]]| parts.concat();
    let field = |b: &[u8]| Message::decode(b).unwrap_err().field;
    assert_eq!(field(&cat(&[&data, &header])), "message section order");
    assert_eq!(
        field(&cat(&[&header, &header, &data])),
        "message section order"
    );
    assert_eq!(field(&cat(&[&data, &value])), "message section order");
    // Several data sections are one body.
    let two = cat(&[&header, &data, &data]);
    let m = Message::decode(&two).unwrap();
    assert_eq!(m.body.data_sections().count(), 2);
    assert_eq!(m.body.data_len(), 2);
    assert!(matches!(m.body, Body::Data { count: 2, .. }));
    // application-properties with a non-string key.
    let mut ap = Vec::new();
    encode_map_section_from(
        &mut ap,
        descriptor::APPLICATION_PROPERTIES,
        &[(Value::Symbol("k"), Value::Uint(1))],
    )
    .unwrap();
    assert_eq!(field(&ap), "application-properties key");
}

// ---------------------------------------------------------------------------------------------
// Proptests.

/// An owned value tree, to generate values and check what decodes.
#[derive(Debug, Clone)]
enum Ov {
    Null,
    Bool(bool),
    Ubyte(u8),
    Ushort(u16),
    Uint(u32),
    Ulong(u64),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Double(f64),
    Char(u32),
    Timestamp(i64),
    Uuid([u8; 16]),
    Binary(Vec<u8>),
    String(String),
    Symbol(String),
    List(Vec<Ov>),
    Map(Vec<(Ov, Ov)>),
    Described(u64, Box<Ov>),
}

fn ov() -> impl Strategy<Value = Ov> {
    let leaf = prop_oneof![
        Just(Ov::Null),
        any::<bool>().prop_map(Ov::Bool),
        any::<u8>().prop_map(Ov::Ubyte),
        any::<u16>().prop_map(Ov::Ushort),
        prop_oneof![Just(0u32), 1..256u32, any::<u32>()].prop_map(Ov::Uint),
        prop_oneof![Just(0u64), 1..256u64, any::<u64>()].prop_map(Ov::Ulong),
        any::<i8>().prop_map(Ov::Byte),
        any::<i16>().prop_map(Ov::Short),
        any::<i32>().prop_map(Ov::Int),
        any::<i64>().prop_map(Ov::Long),
        (-1e300..1e300f64).prop_map(Ov::Double),
        any::<u32>().prop_map(Ov::Char),
        any::<i64>().prop_map(Ov::Timestamp),
        any::<[u8; 16]>().prop_map(Ov::Uuid),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Ov::Binary),
        "\\PC{0,20}".prop_map(Ov::String),
        "[a-z:.-]{0,20}".prop_map(Ov::Symbol),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Ov::List),
            prop::collection::vec((inner.clone(), inner.clone()), 0..5).prop_map(Ov::Map),
            (any::<u64>(), inner).prop_map(|(c, v)| Ov::Described(c, Box::new(v))),
        ]
    })
}

fn put_ov(out: &mut Vec<u8>, v: &Ov) {
    match v {
        Ov::Null => Value::Null.encode(out).unwrap(),
        Ov::Bool(b) => Value::Bool(*b).encode(out).unwrap(),
        Ov::Ubyte(x) => Value::Ubyte(*x).encode(out).unwrap(),
        Ov::Ushort(x) => Value::Ushort(*x).encode(out).unwrap(),
        Ov::Uint(x) => Value::Uint(*x).encode(out).unwrap(),
        Ov::Ulong(x) => Value::Ulong(*x).encode(out).unwrap(),
        Ov::Byte(x) => Value::Byte(*x).encode(out).unwrap(),
        Ov::Short(x) => Value::Short(*x).encode(out).unwrap(),
        Ov::Int(x) => Value::Int(*x).encode(out).unwrap(),
        Ov::Long(x) => Value::Long(*x).encode(out).unwrap(),
        Ov::Double(x) => Value::Double(*x).encode(out).unwrap(),
        Ov::Char(x) => Value::Char(*x).encode(out).unwrap(),
        Ov::Timestamp(x) => Value::Timestamp(*x).encode(out).unwrap(),
        Ov::Uuid(x) => Value::Uuid(*x).encode(out).unwrap(),
        Ov::Binary(b) => put_binary(out, b).unwrap(),
        Ov::String(s) => put_str(out, s).unwrap(),
        Ov::Symbol(s) => put_sym(out, s).unwrap(),
        Ov::List(items) => {
            // Not ListWriter (it drops trailing nulls, a composite's rule, not a list's).
            let mut body = Vec::new();
            items.iter().for_each(|i| put_ov(&mut body, i));
            out.push(0xd0);
            out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            out.extend_from_slice(&body);
        }
        Ov::Map(entries) => {
            let mut w = MapWriter::begin(out);
            for (k, v) in entries {
                let (mut kb, mut vb) = (Vec::new(), Vec::new());
                put_ov(&mut kb, k);
                put_ov(&mut vb, v);
                let k = Decoder::new(&kb).value("k").unwrap();
                let v = Decoder::new(&vb).value("v").unwrap();
                w.entry(out, &k, &v).unwrap();
            }
            w.finish(out).unwrap();
        }
        Ov::Described(c, v) => {
            lior::amqp::types::put_descriptor(out, *c);
            put_ov(out, v);
        }
    }
}

fn check_ov(want: &Ov, got: Value<'_>) {
    match (want, got) {
        (Ov::Null, Value::Null) => {}
        (Ov::Bool(a), Value::Bool(b)) => assert_eq!(*a, b),
        (Ov::Ubyte(a), Value::Ubyte(b)) => assert_eq!(*a, b),
        (Ov::Ushort(a), Value::Ushort(b)) => assert_eq!(*a, b),
        (Ov::Uint(a), Value::Uint(b)) => assert_eq!(*a, b),
        (Ov::Ulong(a), Value::Ulong(b)) => assert_eq!(*a, b),
        (Ov::Byte(a), Value::Byte(b)) => assert_eq!(*a, b),
        (Ov::Short(a), Value::Short(b)) => assert_eq!(*a, b),
        (Ov::Int(a), Value::Int(b)) => assert_eq!(*a, b),
        (Ov::Long(a), Value::Long(b)) => assert_eq!(*a, b),
        (Ov::Double(a), Value::Double(b)) => assert_eq!(a.to_bits(), b.to_bits()),
        (Ov::Char(a), Value::Char(b)) => assert_eq!(*a, b),
        (Ov::Timestamp(a), Value::Timestamp(b)) => assert_eq!(*a, b),
        (Ov::Uuid(a), Value::Uuid(b)) => assert_eq!(*a, b),
        (Ov::Binary(a), Value::Binary(b)) => assert_eq!(&a[..], b),
        (Ov::String(a), Value::String(b)) => assert_eq!(a, b),
        (Ov::Symbol(a), Value::Symbol(b)) => assert_eq!(a, b),
        (Ov::List(a), Value::List(l)) => {
            let got: Vec<_> = l.iter("l").map(|v| v.unwrap()).collect();
            assert_eq!(a.len(), got.len());
            a.iter().zip(got).for_each(|(a, b)| check_ov(a, b));
        }
        (Ov::Map(a), Value::Map(m)) => {
            let got: Vec<_> = m.entries("m").map(|e| e.unwrap()).collect();
            assert_eq!(a.len(), got.len());
            for ((ak, av), (bk, bv)) in a.iter().zip(got) {
                check_ov(ak, bk);
                check_ov(av, bv);
            }
        }
        (Ov::Described(c, a), Value::Described(d)) => {
            assert_eq!(d.code(), Some(*c));
            check_ov(a, d.value.decode("d").unwrap());
        }
        (a, b) => panic!("want {a:?}, got {b:?}"),
    }
}

/// Every decoder on the same bytes: none may panic; what decodes re-encodes to bytes that
/// decode to the same thing.
fn decode_everything(data: &[u8]) {
    let _ = ProtocolHeader::parse(data);
    let _ = frame_len(data, u32::MAX);
    if let Ok(f) = parse_frame(data, u32::MAX) {
        let _ = f.performative();
        let _ = f.sasl();
    }
    if let Ok((p, _)) = Performative::decode(data) {
        let mut out = Vec::new();
        p.encode(&mut out).unwrap();
        assert_eq!(Performative::decode(&out).unwrap().0, p);
    }
    if let Ok(s) = SaslFrame::decode(data) {
        let mut out = Vec::new();
        s.encode(&mut out).unwrap();
        assert_eq!(SaslFrame::decode(&out), Ok(s));
    }
    if let Ok(m) = Message::decode(data) {
        // Compared as bytes: an amqp-value body may be a NaN float, unequal to itself.
        let mut out = Vec::new();
        m.encode(&mut out).unwrap();
        let mut again = Vec::new();
        Message::decode(&out).unwrap().encode(&mut again).unwrap();
        assert_eq!(again, out);
    }
    let mut dec = Decoder::new(data);
    while let Ok(v) = dec.value("fuzz") {
        if v.validate("fuzz").is_ok() {
            let mut out = Vec::new();
            v.encode(&mut out).unwrap();
            let mut again = Vec::new();
            Decoder::new(&out)
                .value("x")
                .unwrap()
                .encode(&mut again)
                .unwrap();
            assert_eq!(out, again);
        }
    }
}

prop_compose! {
    fn transfer_parts()(
        handle in any::<u32>(), id in prop::option::of(any::<u32>()),
        tag in prop::option::of(prop::collection::vec(any::<u8>(), 0..=32)),
        format in prop::option::of(any::<u32>()), settled in prop::option::of(any::<bool>()),
        flags in any::<[bool; 4]>(), rcv in prop::option::of(0u8..2),
        state in 0u8..6, n in any::<u32>(), off in any::<u64>(),
    ) -> (u32, Option<u32>, Option<Vec<u8>>, Option<u32>, Option<bool>, [bool; 4], Option<u8>, u8, u32, u64) {
        (handle, id, tag, format, settled, flags, rcv, state, n, off)
    }
}

fn state(kind: u8, n: u32, off: u64) -> Option<DeliveryState<'static>> {
    match kind {
        0 => None,
        1 => Some(DeliveryState::Accepted),
        2 => Some(DeliveryState::Released),
        3 => Some(DeliveryState::Rejected(Some(AmqpError::new(
            condition::NOT_FOUND,
            "x",
        )))),
        4 => Some(DeliveryState::Modified {
            delivery_failed: n % 2 == 0,
            undeliverable_here: n % 3 == 0,
            message_annotations: None,
        }),
        _ => Some(DeliveryState::Received {
            section_number: n,
            section_offset: off,
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_everything(&data);
    }

    /// Valid performatives with bytes flipped: deeper coverage than random bytes.
    #[test]
    fn mutated_performatives_never_panic(
        which in 0usize..4, flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let mut out = Vec::new();
        match which {
            0 => Performative::Transfer(Transfer::new(1, 2, b"ab")).encode(&mut out),
            1 => Performative::Attach(Box::new(Attach {
                source: Some(Source { address: Some("q"), ..Source::default() }),
                target: Some(Target::default()),
                ..Attach::new("n", 0, Role::Receiver)
            })).encode(&mut out),
            2 => Performative::Disposition(Disposition {
                role: Role::Receiver, first: 1, last: Some(3), settled: true,
                state: Some(DeliveryState::Rejected(Some(AmqpError::new("a:b", "c")))),
                batchable: false,
            }).encode(&mut out),
            _ => Performative::Open(Box::new(Open::new("c"))).encode(&mut out),
        }.unwrap();
        for (at, b) in flips {
            let i = at % out.len();
            out[i] = b;
        }
        decode_everything(&out);
    }

    #[test]
    fn values_round_trip(v in ov()) {
        let mut out = Vec::new();
        put_ov(&mut out, &v);
        let mut dec = Decoder::new(&out);
        let got = dec.value("v").unwrap();
        prop_assert!(dec.is_empty());
        got.validate("v").unwrap();
        check_ov(&v, got);
        // Re-encoding a decoded value gives the same bytes.
        let mut again = Vec::new();
        got.encode(&mut again).unwrap();
        prop_assert_eq!(again, out);
    }

    #[test]
    fn transfers_round_trip(parts in transfer_parts(), payload in prop::collection::vec(any::<u8>(), 0..64)) {
        let (handle, delivery_id, tag, message_format, settled, f, rcv_settle_mode, s, n, off) = parts;
        let t = Transfer {
            handle, delivery_id, delivery_tag: tag.as_deref(), message_format, settled,
            more: f[0], rcv_settle_mode, state: state(s, n, off), resume: f[1], aborted: f[2],
            batchable: f[3],
        };
        let mut out = Vec::new();
        encode_amqp_frame(&mut out, 1, &Performative::Transfer(t), &payload, u32::MAX).unwrap();
        let f = parse_frame(&out, u32::MAX).unwrap();
        let (p, rest) = f.performative().unwrap().unwrap();
        prop_assert_eq!(p, Performative::Transfer(t));
        prop_assert_eq!(rest, &payload[..]);
    }

    #[test]
    fn flows_and_dispositions_round_trip(
        a in any::<[u32; 4]>(), o in any::<[Option<u32>; 5]>(), b in any::<[bool; 5]>(),
        s in 0u8..6,
    ) {
        let flow = Performative::Flow(Flow {
            next_incoming_id: o[0], incoming_window: a[0], next_outgoing_id: a[1],
            outgoing_window: a[2], handle: o[1], delivery_count: o[2], link_credit: o[3],
            available: o[4], drain: b[0], echo: b[1], properties: None,
        });
        let disp = Performative::Disposition(Disposition {
            role: if b[2] { Role::Receiver } else { Role::Sender }, first: a[3], last: o[0],
            settled: b[3], state: state(s, a[0], u64::from(a[1])), batchable: b[4],
        });
        for p in [flow, disp] {
            let bytes = encode(&p);
            prop_assert_eq!(perf(&bytes).0, p);
        }
    }

    #[test]
    fn links_sessions_connections_round_trip(
        name in "\\PC{0,40}", addr in prop::option::of("[ -~]{0,300}"), h in any::<u32>(),
        n in any::<[u32; 4]>(), ch in any::<u16>(), flags in any::<[bool; 4]>(),
        modes in (0u8..3, 0u8..2), idle in prop::option::of(any::<u32>()),
        max in prop::option::of(any::<u64>()), caps in prop::collection::vec("[a-z-]{1,12}", 0..4),
    ) {
        let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
        let attach = Performative::Attach(Box::new(Attach {
            snd_settle_mode: modes.0, rcv_settle_mode: modes.1,
            source: flags[0].then_some(Source { address: addr.as_deref(), timeout: n[0], dynamic: flags[1], outcomes: Symbols::Slice(&caps), ..Source::default() }),
            target: flags[2].then_some(Target { address: addr.as_deref(), durable: n[1], capabilities: Symbols::Slice(&caps), ..Target::default() }),
            incomplete_unsettled: flags[3], initial_delivery_count: idle, max_message_size: max,
            offered_capabilities: Symbols::Slice(&caps),
            ..Attach::new(&name, h, if flags[1] { Role::Receiver } else { Role::Sender })
        }));
        let begin = Performative::Begin(Begin {
            remote_channel: flags[0].then_some(ch), next_outgoing_id: n[0], incoming_window: n[1],
            outgoing_window: n[2], handle_max: n[3], offered_capabilities: Symbols::None,
            desired_capabilities: Symbols::Slice(&caps), properties: None,
        });
        let open = Performative::Open(Box::new(Open {
            hostname: addr.as_deref(), max_frame_size: n[0], channel_max: ch, idle_time_out: idle,
            desired_capabilities: Symbols::Slice(&caps), ..Open::new(&name)
        }));
        let detach = Performative::Detach(Detach { handle: h, closed: flags[0], error: flags[1].then_some(AmqpError { condition: "amqp:x", description: Some(&name), info: None }) });
        let end = Performative::End(flags[2].then_some(AmqpError::new("amqp:y", &name)));
        let close = Performative::Close(None);
        for p in [attach, begin, open, detach, end, close] {
            let bytes = encode(&p);
            prop_assert_eq!(perf(&bytes).0, p);
        }
    }

    #[test]
    fn messages_round_trip(
        durable in any::<bool>(), prio in any::<u8>(), ttl in prop::option::of(any::<u32>()),
        subject in prop::option::of("\\PC{0,30}"), id in prop::option::of(any::<u64>()),
        ct in any::<i64>(), bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..3),
        app in prop::collection::vec(("[a-zA-Z.]{1,20}", any::<i32>()), 0..4),
    ) {
        let mut out = Vec::new();
        let header = Header { durable, priority: prio, ttl, ..Header::default() };
        header.encode(&mut out).unwrap();
        let props = Properties {
            message_id: id.map(lior::amqp::message::MessageId::Ulong),
            subject: subject.as_deref(), creation_time: Some(ct), ..Properties::default()
        };
        props.encode(&mut out).unwrap();
        let entries: Vec<(Value, Value)> = app.iter().map(|(k, v)| (Value::String(k), Value::Int(*v))).collect();
        encode_map_section_from(&mut out, descriptor::APPLICATION_PROPERTIES, &entries).unwrap();
        for b in &bodies {
            encode_data(&mut out, b).unwrap();
        }
        let m = Message::decode(&out).unwrap();
        prop_assert_eq!(m.header, Some(header));
        prop_assert_eq!(m.properties, Some(props));
        for (k, v) in &app {
            // The first entry with that key wins.
            let first = app.iter().find(|(k2, _)| k2 == k).unwrap().1;
            prop_assert_eq!(m.application_property(k).unwrap(), Some(Value::Int(first)));
            let _ = v;
        }
        let got: Vec<&[u8]> = m.body.data_sections().collect();
        let want: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(got, want);
        let mut again = Vec::new();
        m.encode(&mut again).unwrap();
        prop_assert_eq!(again, out);
    }
}

#[test]
fn amqp_value_body_and_symbolic_sections() {
    let mut out = Vec::new();
    lior::amqp::message::encode_amqp_value(&mut out, &Value::String("hello")).unwrap();
    let m = Message::decode(&out).unwrap();
    assert_eq!(m.body, Body::Value(Value::String("hello")));
    // A list as ListWriter writes it for a composite: trailing nulls dropped.
    let mut l = Vec::new();
    let mut w = ListWriter::begin(&mut l);
    w.uint(&mut l, 1);
    w.null(&mut l);
    w.finish(&mut l).unwrap();
    assert_eq!(l, [0xc0, 0x03, 0x01, 0x52, 0x01]);
}

/// A symbol-multiple field must be an array of symbols: an array of another 0x?3 type (uint0,
/// smallulong, char, timestamp) is refused, not read as symbols.
#[test]
fn symbols_field_refuses_arrays_of_other_types() {
    let mut out = Vec::new();
    put_descriptor_list(&mut out, descriptor::OPEN, |w, out| {
        w.str(out, "c").unwrap();
        for _ in 0..4 {
            w.null(out);
        }
        w.with(out, |out| {
            // outgoing-locales: array8 of two uint0 (0x43).
            out.extend_from_slice(&[0xe0, 0x02, 0x02, 0x43]);
            Ok(())
        })
        .unwrap();
    });
    let e = Performative::decode(&out).unwrap_err();
    assert_eq!(
        (e.kind, e.field),
        (ErrorKind::BadCode, "open.outgoing-locales")
    );
}

/// The fuzz seeds (tests/fuzz/corpus/amqp_frame) are real streams: cut into frames they
/// decode as the fuzz target sees them, and every decoder survives them.
#[test]
fn fuzz_seeds_decode() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/corpus/amqp_frame");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        decode_everything(&data);
        let max = 512u32 << (data[0] % 8);
        let mut rest = &data[1..];
        let mut kinds = Vec::new();
        while let Some(n) = frame_len(rest, max).unwrap() {
            let f = parse_frame(&rest[..n], max).unwrap();
            kinds.push(match f.header.frame_type {
                FrameType::Amqp => match f.performative() {
                    Ok(Some((p, _))) => p.name(),
                    Ok(None) => "empty",
                    Err(e) => e.kind.describe(),
                },
                FrameType::Sasl => match f.sasl().unwrap() {
                    SaslFrame::Mechanisms(_) => "sasl-mechanisms",
                    SaslFrame::Init(_) => "sasl-init",
                    _ => "sasl",
                },
            });
            rest = &rest[n..];
        }
        names.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            kinds,
        ));
    }
    names.sort();
    let expect = [
        (
            "seed-connection-open-attach-flow-transfer-disposition-close.bin",
            vec![
                "open",
                "attach",
                "flow",
                "transfer",
                "disposition",
                "close",
                "empty",
            ],
        ),
        ("seed-nesting-bomb.bin", vec![ErrorKind::TooDeep.describe()]),
        (
            "seed-sasl-mechanisms-init.bin",
            vec!["sasl-mechanisms", "sasl-init"],
        ),
        ("seed-transfer-full-message.bin", vec!["transfer"]),
    ];
    let got: Vec<(&str, Vec<&str>)> = names.iter().map(|(n, k)| (n.as_str(), k.clone())).collect();
    assert_eq!(
        got,
        expect
            .iter()
            .map(|(n, k)| (*n, k.clone()))
            .collect::<Vec<_>>()
    );
}
