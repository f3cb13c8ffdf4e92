//! Property tests for the UserMessage codec: generated messages with random optional headers,
//! labels, bodies and queue references satisfy `parse(encode(x)) == x`; arbitrary bytes and
//! mutated vectors given to `frame_len` / `parse_packet` never panic, `parse_packet` answers as
//! `UserMessage::parse` does for every UserMessage, and whatever parses re-encodes to something
//! that parses back to the same value.

use lior::wire::base::{BaseFlags, BaseHeader};
use lior::wire::headers::{
    AckFlags, Calg, CompoundMessageHeader, DebugHeader, ExtensionFlags, ExtensionHeader,
    MessageClass, MessagePropertiesHeader, MqfAddressHeader, MqfElement, MultiQueueFormatHeader,
    PrivacyLevel, SecurityFlags, SecurityHeader, SoapHeader, SrmpEnvelopeHeader, TransactionHeader,
    TxFlags,
};
use lior::wire::user::{QueueRef, UserFlags, UserHeader, UserMessage};
use lior::wire::{frame_len, parse_packet, ErrorKind, Guid, Packet, SessionHeader, Utf16};
use proptest::prelude::*;

const FRAME7: &[u8] = include_bytes!("vectors/mqqb-4.1/frame7-user-message-express.bin");

/// A queue reference with owned name storage.
#[derive(Debug, Clone)]
enum Q {
    None,
    SameAsAdmin,
    SourcePrivate(u32),
    DestinationPrivate(u32),
    AdminHost(u32),
    Public([u8; 16]),
    Private([u8; 16], u32),
    Direct(Vec<u8>),
}

#[derive(Debug, Clone)]
enum E {
    Public([u8; 16]),
    Private([u8; 16], u32),
    Direct(Vec<u8>),
    Dl([u8; 16]),
}

#[derive(Debug, Clone)]
struct Tx {
    flags: u32,
    id: u64,
    number: u32,
    previous: u32,
    connector: Option<[u8; 16]>,
}

#[derive(Debug, Clone)]
struct Sec {
    flags: u16,
    items: [Vec<u8>; 5],
}

#[derive(Debug, Clone)]
struct Mph {
    flags: u8,
    label: Vec<u8>,
    class: u16,
    correlation: [u8; 20],
    body_type: u32,
    tag: u32,
    ext: Vec<u8>,
    area: Vec<u8>,
    /// MessageSize as a fraction of the area, and which of the two sizes is the larger.
    size_pick: (u16, bool),
    privacy: u32,
    hash: u32,
    enc: u32,
}

#[derive(Debug, Clone)]
struct Srmp {
    env_id: u16,
    env: Vec<u8>,
    cm_id: u16,
    http: Vec<u8>,
    pick: (u16, u16),
    /// The MQRR ExtensionHeader's Flags and Reserved, when one follows the SRMP sections.
    ext: Option<(u8, [u8; 3])>,
}

#[derive(Debug, Clone)]
struct Spec {
    reserved: u8,
    base_flags: u16,
    ttrq: u32,
    sqm: [u8; 16],
    qma: [u8; 16],
    ttbr: u32,
    sent: u32,
    mid: u32,
    extra_flags: u32,
    dq: Q,
    aq: Q,
    rq: Q,
    connector: Option<[u8; 16]>,
    tx: Option<Tx>,
    sec: Option<Sec>,
    mph: Mph,
    debug: Option<(u16, Option<[u8; 16]>)>,
    srmp: Option<Srmp>,
    soap: Option<(Vec<u8>, Vec<u8>)>,
    mqf: Option<([Vec<E>; 3], Vec<u8>)>,
    mqf_first: bool,
    session: Option<[u16; 7]>,
}

fn wchars(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u16>(), 0..max)
        .prop_map(|v| v.iter().flat_map(|u| u.to_le_bytes()).collect())
}

/// A NUL-terminated UTF-16 name with no other NUL (what an MQF direct element must be).
fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1u16..=0xFFFF, 0..20).prop_map(|v| {
        let mut b: Vec<u8> = v.iter().flat_map(|u| u.to_le_bytes()).collect();
        b.extend_from_slice(&[0, 0]);
        b
    })
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn queue(codes: &'static [u8]) -> impl Strategy<Value = Q> {
    (
        prop::sample::select(codes),
        any::<u32>(),
        any::<[u8; 16]>(),
        wchars(30),
    )
        .prop_map(|(c, id, g, s)| match c {
            0 => Q::None,
            1 => Q::SameAsAdmin,
            2 => Q::SourcePrivate(id),
            3 => Q::DestinationPrivate(id),
            4 => Q::AdminHost(id),
            5 => Q::Public(g),
            6 => Q::Private(g, id),
            _ => Q::Direct(s),
        })
}

fn element() -> impl Strategy<Value = E> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(E::Public),
        (any::<[u8; 16]>(), any::<u32>()).prop_map(|(g, i)| E::Private(g, i)),
        name().prop_map(E::Direct),
        any::<[u8; 16]>().prop_map(E::Dl),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    let base = (
        any::<u8>(),
        any::<u16>(),
        any::<u32>(),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    );
    let queues = (
        queue(&[0, 3, 5, 7]),
        queue(&[0, 2, 3, 5, 6, 7]),
        queue(&[0, 1, 2, 3, 4, 5, 6, 7]),
        prop::option::of(any::<[u8; 16]>()),
    );
    let tx = prop::option::of(
        (
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            prop::option::of(any::<[u8; 16]>()),
        )
            .prop_map(|(flags, id, number, previous, connector)| Tx {
                flags,
                id,
                number,
                previous,
                connector,
            }),
    );
    let sec = prop::option::of(
        (
            any::<u16>(),
            [bytes(40), bytes(9), bytes(70), bytes(5), bytes(30)],
        )
            .prop_map(|(flags, items)| Sec { flags, items }),
    );
    let mph = (
        any::<u8>(),
        wchars(251),
        any::<u16>(),
        any::<[u8; 20]>(),
        any::<u32>(),
        any::<u32>(),
        bytes(20),
        bytes(300),
        (any::<u16>(), any::<bool>()),
        (any::<u32>(), any::<u32>(), any::<u32>()),
    )
        .prop_map(
            |(flags, label, class, correlation, body_type, tag, ext, area, size_pick, algs)| Mph {
                flags,
                label,
                class,
                correlation,
                body_type,
                tag,
                ext,
                area,
                size_pick,
                privacy: algs.0,
                hash: algs.1,
                enc: algs.2,
            },
        );
    let tail = (
        prop::option::of((any::<u16>(), prop::option::of(any::<[u8; 16]>()))),
        prop::option::of(
            (
                any::<u16>(),
                wchars(20),
                any::<u16>(),
                bytes(60),
                (any::<u16>(), any::<u16>()),
                prop::option::of((any::<u8>(), any::<[u8; 3]>())),
            )
                .prop_map(|(env_id, env, cm_id, http, pick, ext)| Srmp {
                    env_id,
                    env,
                    cm_id,
                    http,
                    pick,
                    ext,
                }),
        ),
        prop::option::of((wchars(30), wchars(30))),
        prop::option::of((
            [
                prop::collection::vec(element(), 0..5),
                prop::collection::vec(element(), 0..3),
                prop::collection::vec(element(), 0..3),
            ],
            bytes(20),
        )),
        any::<bool>(),
        prop::option::of(any::<[u16; 7]>()),
    );
    (base, queues, tx, sec, mph, tail).prop_map(|(b, q, tx, sec, mph, t)| Spec {
        reserved: b.0,
        base_flags: b.1,
        ttrq: b.2,
        sqm: b.3,
        qma: b.4,
        ttbr: b.5,
        sent: b.6,
        mid: b.7,
        extra_flags: b.8,
        dq: q.0,
        aq: q.1,
        rq: q.2,
        connector: q.3,
        tx,
        sec,
        mph,
        debug: t.0,
        srmp: t.1,
        soap: t.2,
        mqf: t.3,
        mqf_first: t.4,
        session: t.5,
    })
}

fn qref(q: &Q) -> QueueRef<'_> {
    match q {
        Q::None => QueueRef::None,
        Q::SameAsAdmin => QueueRef::SameAsAdmin,
        Q::SourcePrivate(i) => QueueRef::SourcePrivate(*i),
        Q::DestinationPrivate(i) => QueueRef::DestinationPrivate(*i),
        Q::AdminHost(i) => QueueRef::AdminHostPrivate(*i),
        Q::Public(g) => QueueRef::Public(Guid(*g)),
        Q::Private(g, i) => QueueRef::Private {
            qm: Guid(*g),
            id: *i,
        },
        Q::Direct(s) => QueueRef::Direct(Utf16(s)),
    }
}

/// Encodes the three MQF lists into owned buffers (the headers borrow from them).
fn mqf_lists(s: &Spec) -> Vec<(u32, Vec<u8>)> {
    let Some((lists, _)) = &s.mqf else {
        return Vec::new();
    };
    lists
        .iter()
        .map(|list| {
            let elements: Vec<MqfElement<'_>> = list
                .iter()
                .map(|e| match e {
                    E::Public(g) => MqfElement::Public(Guid(*g)),
                    E::Private(g, i) => MqfElement::Private {
                        qm: Guid(*g),
                        id: *i,
                    },
                    E::Direct(n) => MqfElement::Direct(Utf16(n)),
                    E::Dl(g) => MqfElement::DistributionList(Guid(*g)),
                })
                .collect();
            let mut buf = vec![0u8; 1024];
            let h = MqfAddressHeader::build(&elements, &mut buf).expect("list fits");
            (h.element_count, h.list.to_vec())
        })
        .collect()
}

fn build<'a>(s: &'a Spec, lists: &'a [(u32, Vec<u8>)]) -> UserMessage<'a> {
    let user_extra = s.extra_flags
        & (UserFlags::HOP_COUNT_MASK
            | UserFlags::JN
            | UserFlags::JP
            | UserFlags::X1
            | UserFlags::X2
            | UserFlags::X3_MASK
            | UserFlags::X4_MASK);
    let mut user_flags = UserFlags(user_extra).with_delivery_mode((s.extra_flags >> 5) as u8 & 3);
    if s.tx.is_some() && !user_flags.recoverable() {
        user_flags = user_flags.with_delivery_mode(1);
    }
    let m = &s.mph;
    let area = &m.area[..];
    let ms = (area.len() * usize::from(m.size_pick.0)) / 0xFFFF;
    let (message_size, allocation) = if m.size_pick.1 {
        (ms, area.len())
    } else {
        (area.len(), ms)
    };
    let label_len = m.label.len().min(500);
    let mut msg = UserMessage {
        base: BaseHeader {
            reserved: s.reserved,
            flags: BaseFlags(s.base_flags),
            packet_size: 0,
            time_to_reach_queue: s.ttrq,
        },
        user: UserHeader {
            source_queue_manager: Guid(s.sqm),
            queue_manager_address: Guid(s.qma),
            time_to_be_received: s.ttbr,
            sent_time: s.sent,
            message_id: s.mid,
            flags: user_flags,
            destination: qref(&s.dq),
            admin: qref(&s.aq),
            response: qref(&s.rq),
            connector_type: s.connector.map(Guid),
        },
        transaction: s.tx.as_ref().map(|t| TransactionHeader {
            flags: TxFlags(t.flags & !TxFlags::RESERVED_MASK)
                .with(TxFlags::CG, t.connector.is_some()),
            tx_sequence_id: t.id,
            tx_sequence_number: t.number,
            previous_tx_sequence_number: t.previous,
            connector_qm_guid: t.connector.map(Guid),
        }),
        security: s.sec.as_ref().map(|sec| {
            let [a, b, c, d, e] = &sec.items;
            let mut h = SecurityHeader {
                flags: SecurityFlags(sec.flags),
                sender_id: a,
                encryption_key: b,
                signature: c,
                sender_cert: d,
                provider_info: e,
            };
            if h.flags.sender_id_type().0 == 0 {
                h.sender_id = &[];
            }
            if [h.sender_id, b, c, d, e].iter().all(|i| i.is_empty()) {
                h.provider_info = &[0x5A];
            }
            h
        }),
        properties: MessagePropertiesHeader {
            flags: AckFlags(m.flags),
            message_class: MessageClass(m.class),
            correlation_id: m.correlation,
            body_type: m.body_type,
            application_tag: m.tag,
            message_size: message_size as u32,
            allocation_body_size: allocation as u32,
            privacy_level: PrivacyLevel(m.privacy),
            hash_algorithm: Calg(m.hash),
            encryption_algorithm: Calg(m.enc),
            label: Utf16(&m.label[..label_len]),
            extension: &m.ext,
            message_body: area,
        },
        debug: s.debug.map(|(flags, g)| DebugHeader {
            flags: (flags & !DebugHeader::QT_MASK) | u16::from(g.is_some()),
            queue_identifier: g.map(Guid),
        }),
        srmp_envelope: s.srmp.as_ref().map(|x| SrmpEnvelopeHeader {
            header_id: x.env_id,
            data: Utf16(&x.env),
        }),
        compound_message: s.srmp.as_ref().map(|x| {
            let len = x.http.len();
            let offset = len * usize::from(x.pick.0) / 0xFFFF;
            let size = (len - offset) * usize::from(x.pick.1) / 0xFFFF;
            CompoundMessageHeader {
                header_id: x.cm_id,
                http_body: &x.http,
                msg_body_size: size as u32,
                msg_body_offset: offset as u32,
            }
        }),
        soap: s.soap.as_ref().map(|(h, b)| SoapHeader {
            header: Utf16(h),
            body: Utf16(b),
        }),
        multi_queue: s.mqf.as_ref().map(|(_, sig)| {
            let h = |i: usize| MqfAddressHeader {
                element_count: lists[i].0,
                list: &lists[i].1,
            };
            MultiQueueFormatHeader {
                destination: h(0),
                administration: h(1),
                response: h(2),
                signature: sig,
            }
        }),
        multi_queue_before_soap: s.mqf_first,
        extension: s
            .srmp
            .as_ref()
            .and_then(|x| x.ext)
            .map(|(flags, reserved)| ExtensionHeader {
                flags: ExtensionFlags(flags & !ExtensionFlags::PRESENCE_MASK),
                reserved,
                ..ExtensionHeader::default()
            }),
        session: s.session.map(|v| SessionHeader {
            ack_sequence_number: v[0],
            recoverable_msg_ack_seq_number: v[1],
            recoverable_msg_ack_flags: u32::from(v[2]) << 16 | u32::from(v[3]),
            user_msg_sequence_number: v[4],
            recoverable_msg_seq_number: v[5],
            window_size: v[6],
            reserved: v[0] ^ v[6],
        }),
    };
    msg.sync();
    msg
}

/// Parsing, re-encoding and re-parsing agree for anything that parses.
fn check_reencode(m: &UserMessage<'_>) -> Result<(), TestCaseError> {
    let mut out = vec![0u8; m.frame_len()];
    match m.encode(&mut out) {
        Ok(n) => {
            let back = UserMessage::parse(&out[..n]);
            let mut want = *m;
            want.base.packet_size = m.packet_size() as u32;
            prop_assert_eq!(back, Ok(want));
        }
        // The one value the encoder may refuse after a parse: MQF written before SOAP in a
        // way that the reader's order detection would read differently.
        Err(e) => prop_assert!(
            m.multi_queue_before_soap && e.kind == ErrorKind::Unsupported,
            "re-encode failed: {e}"
        ),
    }
    Ok(())
}

fn poke(frame: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
    let mut v = frame.to_vec();
    for &(i, b) in edits {
        let i = i % v.len();
        v[i] = b;
    }
    v
}

fn check_any(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _ = frame_len(bytes);
    // parse_packet hands the BaseHeader it parsed down to the UserMessage parser instead of
    // parsing it again: it must answer exactly as UserMessage::parse does, errors included.
    if BaseHeader::parse(bytes).is_ok_and(|b| !b.flags.internal()) {
        prop_assert_eq!(
            parse_packet(bytes),
            UserMessage::parse(bytes).map(Packet::User)
        );
    }
    if let Ok(Packet::User(m)) = parse_packet(bytes) {
        check_reencode(&m)?;
    }
    if let Ok(m) = UserMessage::parse(bytes) {
        check_reencode(&m)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_messages_round_trip(s in spec()) {
        let lists = mqf_lists(&s);
        let m = build(&s, &lists);
        let mut out = vec![0u8; m.frame_len()];
        match m.encode(&mut out) {
            Ok(n) => {
                prop_assert_eq!(n, out.len());
                prop_assert_eq!(frame_len(&out), Ok(Some(n)));
                prop_assert_eq!(UserMessage::parse(&out), Ok(m));
                match parse_packet(&out) {
                    Ok(Packet::User(p)) => prop_assert_eq!(p, m),
                    other => prop_assert!(false, "parse_packet: {:?}", other),
                }
            }
            Err(e) => prop_assert!(
                m.multi_queue_before_soap && e.kind == ErrorKind::Unsupported,
                "encode failed: {}", e
            ),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in bytes(400)) {
        check_any(&b)?;
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_base_header_never_panic(
        flags in any::<u16>(), b in bytes(600), sh in any::<bool>(),
    ) {
        // A plausible BaseHeader with a PacketSize that matches, so the body parsers are reached.
        let flags = (flags & !BaseFlags::INTERNAL) | if sh { BaseFlags::SESSION } else { 0 };
        let mut v = vec![0x10, 0, 0, 0, 0x4C, 0x49, 0x4F, 0x52, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        v[2..4].copy_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&b);
        let ps = v.len() - if sh && v.len() >= 32 { 16 } else { 0 };
        v[8..12].copy_from_slice(&(ps as u32).to_le_bytes());
        check_any(&v)?;
    }

    #[test]
    fn mutated_frame7_never_panics(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        check_any(&poke(FRAME7, &edits))?;
    }

    #[test]
    fn mutated_generated_messages_never_panic(
        s in spec(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<u16>(),
    ) {
        let lists = mqf_lists(&s);
        let m = build(&s, &lists);
        let mut out = vec![0u8; m.frame_len()];
        if m.encode(&mut out).is_ok() {
            let v = poke(&out, &edits);
            check_any(&v)?;
            // The same edits with PacketSize rewritten to a shorter, consistent length.
            let n = 16 + usize::from(cut) % v.len().saturating_sub(15).max(1);
            let mut w = v[..n.min(v.len())].to_vec();
            if w.len() >= 16 {
                let ps = w.len() as u32;
                w[8..12].copy_from_slice(&ps.to_le_bytes());
            }
            check_any(&w)?;
        }
    }
}
