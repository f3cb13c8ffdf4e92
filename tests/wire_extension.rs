//! UserMessages with the AH flag whose CompoundMessageHeader is followed by the 12-byte MQRR
//! ExtensionHeader (MS-MQRR 2.2.5.2; DIGEST §5.10-§5.11). Windows' port-1801 parser accepts
//! that shape (the Metasploit "QueueJumper" check for CVE-2023-21554 sends it: ExtensionHeader
//! {HeaderSize 12, RemainingHeadersSize 0, Flags 0}), so lior parses it, re-encodes it byte for
//! byte and shows it; every lying or overflowing variant is refused with an error that names
//! the ExtensionHeader field, and no truncation or length mutation panics.

use lior::decode::decode_stream;
use lior::wire::headers::{
    CompoundMessageHeader, ExtensionFlags, ExtensionHeader, SrmpEnvelopeHeader,
};
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{frame_len, parse_packet, utf16z, ErrorKind, Guid, Packet, Utf16, WireError};

/// The HTTP request the CompoundMessageHeader carries, with the 7-byte body at its end.
const HTTP: &[u8] = b"POST /msmq/private$/queuejumper HTTP/1.1\r\n\
Host: 192.168.10.100\r\nContent-Type: multipart/related; boundary=\"b\"\r\n\r\npayload";
const BODY: &[u8] = b"payload";
const EXT_LEN: usize = 12;

fn sender() -> Guid {
    Guid::parse_text("AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE").unwrap()
}

/// The packet without the ExtensionHeader: BaseHeader, UserHeader (RC 1, DQ 7, MP, AH) with the
/// QueueJumper destination, MPH (label "poc", empty body), SRMPEnvelopeHeader (HeaderId 0),
/// CompoundMessageHeader (HeaderId 500). Built with the encoder, which pads it to 4.
fn without_extension() -> Vec<u8> {
    let name = utf16z("http://192.168.10.100/msmq/private$/queuejumper");
    let label = utf16z("poc");
    let env = utf16z("<se:Envelope><se:Header/><se:Body/></se:Envelope>");
    let mut m = UserMessage::new(
        sender(),
        1,
        QueueRef::Direct(Utf16(&name)),
        Utf16(&label),
        &[],
    );
    m.user.flags = m.user.flags.with_hop_count(1);
    m.srmp_envelope = Some(SrmpEnvelopeHeader {
        header_id: 0,
        data: Utf16(&env),
    });
    m.compound_message = Some(CompoundMessageHeader {
        header_id: 500,
        http_body: HTTP,
        msg_body_size: BODY.len() as u32,
        msg_body_offset: (HTTP.len() - BODY.len()) as u32,
    });
    m.sync();
    let mut out = vec![0u8; m.frame_len()];
    let n = m.encode(&mut out).expect("encodes");
    out.truncate(n);
    out
}

/// Appends `tail` inside PacketSize (and fixes PacketSize).
fn with_tail(tail: &[u8]) -> Vec<u8> {
    let mut v = without_extension();
    v.extend_from_slice(tail);
    let ps = v.len() as u32;
    v[8..12].copy_from_slice(&ps.to_le_bytes());
    v
}

fn ext(header_size: u32, remaining: u32, flags: u8) -> Vec<u8> {
    let mut e = Vec::with_capacity(EXT_LEN);
    e.extend_from_slice(&header_size.to_le_bytes());
    e.extend_from_slice(&remaining.to_le_bytes());
    e.extend_from_slice(&[flags, 0, 0, 0]);
    e
}

/// The accepted shape: the packet above followed by ExtensionHeader {12, 0, 0}.
fn accepted_shape() -> Vec<u8> {
    with_tail(&ext(12, 0, 0))
}

/// Where the ExtensionHeader starts.
fn ext_at() -> usize {
    without_extension().len()
}

fn err(bytes: &[u8]) -> WireError {
    match UserMessage::parse(bytes) {
        Ok(m) => panic!("expected an error, parsed {m:?}"),
        Err(e) => e,
    }
}

fn assert_err(bytes: &[u8], kind: ErrorKind, field: &str, offset: usize) {
    let e = err(bytes);
    assert_eq!((e.kind, e.field, e.offset), (kind, field, offset), "{e}");
    // The packet layer answers the same.
    assert_eq!(parse_packet(bytes), Err(e));
}

fn encode_vec(m: &UserMessage<'_>) -> Vec<u8> {
    let mut out = vec![0u8; m.frame_len()];
    let n = m.encode(&mut out).expect("encodes");
    assert_eq!(n, out.len(), "frame_len() matches what encode writes");
    out
}

const SEED: &[u8] = include_bytes!("fuzz/corpus/parse_packet/seed-ah-compound-extension.bin");

// ----- the accepted shape -------------------------------------------------------------------

#[test]
fn ah_message_with_the_extension_header_parses() {
    let bytes = accepted_shape();
    assert_eq!(bytes.len() % 4, 0);
    let m = UserMessage::parse(&bytes).expect("the QueueJumper shape parses");
    assert_eq!(m.base.packet_size as usize, bytes.len());
    assert!(m.user.flags.http());
    assert_eq!(m.user.flags.hop_count(), 1);
    assert_eq!(m.compound_message.unwrap().header_id, 500);
    assert_eq!(m.compound_message.unwrap().msg_body(), BODY);
    assert_eq!(m.label().to_string_lossy(), "poc");
    assert_eq!(
        m.extension,
        Some(ExtensionHeader {
            header_size: 12,
            remaining_headers_size: 0,
            flags: ExtensionFlags(0),
            reserved: [0; 3],
        })
    );
    assert_eq!(m.packet_size(), bytes.len());
    match parse_packet(&bytes) {
        Ok(Packet::User(p)) => assert_eq!(p, m),
        other => panic!("parse_packet: {other:?}"),
    }
    assert_eq!(frame_len(&bytes), Ok(Some(bytes.len())));

    // The ExtensionHeader needs the AH flag: the same 12 bytes after a message without the SRMP
    // sections are unexplained bytes, as before.
    let body = [1u8; 4];
    let m = UserMessage::new(
        sender(),
        1,
        QueueRef::DestinationPrivate(9),
        Utf16(&[]),
        &body,
    );
    let mut v = encode_vec(&m);
    let end = v.len();
    v.extend_from_slice(&ext(12, 0, 0));
    let ps = v.len() as u32;
    v[8..12].copy_from_slice(&ps.to_le_bytes());
    assert_err(&v, ErrorKind::SizeMismatch, "BaseHeader.PacketSize", end);
}

#[test]
fn ah_message_with_the_extension_header_round_trips_byte_for_byte() {
    let bytes = accepted_shape();
    let m = UserMessage::parse(&bytes).expect("parses");
    assert_eq!(encode_vec(&m), bytes);
    // With a piggy-backed SessionHeader after PacketSize as well.
    let mut s = bytes.clone();
    s[2] |= 0x10; // BaseHeader.Flags.SH
    s.extend_from_slice(&[0u8; 16]);
    let m = UserMessage::parse(&s).expect("parses with a SessionHeader trailer");
    assert!(m.session.is_some());
    assert_eq!(encode_vec(&m), s);
}

#[test]
fn the_fuzz_seed_is_the_accepted_shape() {
    assert_eq!(SEED, &accepted_shape()[..]);
    UserMessage::parse(SEED).expect("the seed parses");
}

#[test]
fn decode_shows_the_packet_instead_of_refusing_it() {
    let (values, error) = decode_stream(&accepted_shape());
    assert_eq!(error, None);
    assert_eq!(values.len(), 1);
    assert_eq!(values[0]["CompoundMessageHeader"]["HeaderId"], 500);
}

#[test]
fn encoder_refuses_an_extension_header_the_parser_would_refuse() {
    let bytes = accepted_shape();
    let good = UserMessage::parse(&bytes).unwrap();
    let encode_err = |m: &UserMessage<'_>| {
        let mut out = vec![0u8; m.frame_len()];
        m.encode(&mut out).expect_err("refused")
    };
    // Without the SRMP sections (and so without AH).
    let mut m = good;
    m.srmp_envelope = None;
    m.compound_message = None;
    m.sync();
    assert!(!m.user.flags.http());
    assert_eq!(encode_err(&m).field, "UserMessage.extension");
    // Sizes and flags it would not parse back.
    for (x, field) in [
        (
            ExtensionHeader {
                header_size: 16,
                ..ExtensionHeader::default()
            },
            "ExtensionHeader.HeaderSize",
        ),
        (
            ExtensionHeader {
                remaining_headers_size: 148,
                ..ExtensionHeader::default()
            },
            "ExtensionHeader.RemainingHeadersSize",
        ),
        (
            ExtensionHeader {
                flags: ExtensionFlags(ExtensionFlags::SQ),
                ..ExtensionHeader::default()
            },
            "ExtensionHeader.Flags",
        ),
    ] {
        let mut m = good;
        m.extension = Some(x);
        assert_eq!(encode_err(&m).field, field);
    }
    // Built from scratch: the header goes after SOAP and MQF when they are there too.
    let mut m = good;
    m.extension = None;
    m.sync();
    let plain = encode_vec(&m);
    m.extension = Some(ExtensionHeader::default());
    m.sync();
    assert_eq!(m.base.packet_size as usize, plain.len() + EXT_LEN);
    assert_eq!(encode_vec(&m), bytes);
}

// ----- refusals -----------------------------------------------------------------------------

#[test]
fn rejects_header_size_smaller_than_the_header() {
    let at = ext_at();
    for hs in [0u32, 4, 8, 11] {
        assert_err(
            &with_tail(&ext(hs, 0, 0)),
            ErrorKind::BadValue,
            "ExtensionHeader.HeaderSize",
            at,
        );
    }
}

#[test]
fn rejects_header_size_past_the_packet_and_sizes_that_overflow() {
    let at = ext_at();
    for hs in [
        16u32,
        13,
        0x7FFF_FFFF,
        0x8000_0000,
        u32::MAX - 11,
        u32::MAX - 3,
        u32::MAX,
    ] {
        assert_err(
            &with_tail(&ext(hs, 0, 0)),
            ErrorKind::Overflow,
            "ExtensionHeader.HeaderSize",
            at,
        );
    }
    // RemainingHeadersSize announcing headers past PacketSize, including values whose sum with
    // the header's offset or size overflows a u32.
    for rem in [4u32, 148, u32::MAX - 11, u32::MAX - 3, u32::MAX] {
        assert_err(
            &with_tail(&ext(12, rem, 0)),
            ErrorKind::Overflow,
            "ExtensionHeader.RemainingHeadersSize",
            at + 4,
        );
    }
    // Both at once: HeaderSize is checked first.
    assert_err(
        &with_tail(&ext(u32::MAX, u32::MAX, 0xFF)),
        ErrorKind::Overflow,
        "ExtensionHeader.HeaderSize",
        at,
    );
}

#[test]
fn rejects_a_longer_extension_header_and_the_remote_read_headers_after_it() {
    let at = ext_at();
    // HeaderSize 16 with the 4 bytes present: a layout the spec does not define.
    let mut tail = ext(16, 0, 0);
    tail.extend_from_slice(&[0; 4]);
    assert_err(
        &with_tail(&tail),
        ErrorKind::Unsupported,
        "ExtensionHeader.HeaderSize",
        at,
    );
    // A SubqueueHeader (148 bytes, SQ) that is really there: only remote-read replies carry it.
    let mut tail = ext(12, 148, 0x02);
    tail.extend_from_slice(&[0; 148]);
    assert_err(
        &with_tail(&tail),
        ErrorKind::Unsupported,
        "ExtensionHeader.RemainingHeadersSize",
        at + 4,
    );
}

#[test]
fn rejects_flags_announcing_headers_that_are_not_there() {
    let at = ext_at();
    // DL, SQ and EA each announce a header after this one; RemainingHeadersSize 0 says none.
    for flags in [0x01u8, 0x02, 0x10, 0x13] {
        assert_err(
            &with_tail(&ext(12, 0, flags)),
            ErrorKind::BadValue,
            "ExtensionHeader.Flags",
            at + 8,
        );
    }
    // DI and the unused bits announce nothing: kept as they are.
    for flags in [0x04u8, 0x08, 0xE0, 0xEC] {
        let bytes = with_tail(&ext(12, 0, flags));
        let m = UserMessage::parse(&bytes).expect("unused flag bits are ignored");
        assert_eq!(m.extension.unwrap().flags, ExtensionFlags(flags));
        assert_eq!(encode_vec(&m), bytes);
    }
}

#[test]
fn rejects_a_second_extension_header_and_other_bytes_after_it() {
    let at = ext_at();
    let mut tail = ext(12, 0, 0);
    tail.extend_from_slice(&ext(12, 0, 0));
    assert_err(
        &with_tail(&tail),
        ErrorKind::SizeMismatch,
        "ExtensionHeader.RemainingHeadersSize",
        at + EXT_LEN,
    );
    let mut tail = ext(12, 0, 0);
    tail.extend_from_slice(&[0; 4]);
    assert_err(
        &with_tail(&tail),
        ErrorKind::SizeMismatch,
        "ExtensionHeader.RemainingHeadersSize",
        at + EXT_LEN,
    );
}

#[test]
fn rejects_a_truncated_extension_header() {
    let at = ext_at();
    let full = ext(12, 0, 0);
    for (keep, field) in [
        (1, "ExtensionHeader.HeaderSize"),
        (3, "ExtensionHeader.HeaderSize"),
        (4, "ExtensionHeader.RemainingHeadersSize"),
        (5, "ExtensionHeader.RemainingHeadersSize"),
        (8, "ExtensionHeader.Flags"),
        (9, "ExtensionHeader.Reserved"),
        (11, "ExtensionHeader.Reserved"),
    ] {
        let e = err(&with_tail(&full[..keep]));
        assert_eq!(
            (e.kind, e.field),
            (ErrorKind::Truncated, field),
            "{keep}: {e}"
        );
        assert!(e.offset >= at, "{keep}: {e}");
    }
}

// ----- never a panic ------------------------------------------------------------------------

/// Parsing any variant must not panic, must agree between the packet layer and the UserMessage
/// parser, and anything that parses must re-encode to bytes that parse back the same.
fn check(bytes: &[u8]) -> Result<UserMessage<'_>, WireError> {
    let _ = frame_len(bytes);
    let _ = decode_stream(bytes);
    let m = UserMessage::parse(bytes);
    if lior::wire::BaseHeader::parse(bytes).is_ok_and(|b| !b.flags.internal()) {
        assert_eq!(parse_packet(bytes), m.map(Packet::User));
    }
    if let Ok(m) = &m {
        let out = encode_vec(m);
        let mut want = *m;
        want.base.packet_size = m.packet_size() as u32;
        assert_eq!(UserMessage::parse(&out), Ok(want));
    }
    m
}

#[test]
fn every_truncation_of_the_accepted_shape_is_refused_without_panicking() {
    let full = accepted_shape();
    for n in 0..full.len() {
        // Cut, PacketSize unchanged.
        assert!(check(&full[..n]).is_err(), "cut to {n} parsed");
        // Cut with a PacketSize that matches: only the whole ExtensionHeader may go (the
        // CompoundMessageHeader then ends the packet, as without one).
        if n >= 16 && n != ext_at() {
            let mut v = full[..n].to_vec();
            v[8..12].copy_from_slice(&(n as u32).to_le_bytes());
            assert!(check(&v).is_err(), "consistent cut to {n} parsed");
        }
    }
    assert!(check(&full).is_ok());
    assert!(check(&without_extension()).is_ok());
}

#[test]
fn length_mutations_of_the_accepted_shape_never_panic() {
    let full = accepted_shape();
    let at = ext_at();
    let lengths = [
        0u32,
        1,
        3,
        4,
        7,
        11,
        12,
        13,
        16,
        148,
        0xFFFF,
        0x7FFF_FFFF,
        0x8000_0000,
        u32::MAX - 15,
        u32::MAX - 11,
        u32::MAX - 3,
        u32::MAX,
    ];
    // Every aligned u32 of the packet (which covers PacketSize, the queue name count, the MPH
    // sizes, DataLength, HTTPBodySize, MsgBodySize, MsgBodyOffset, HeaderSize and
    // RemainingHeadersSize), set to each length and to its own value +- 1.
    for pos in (0..full.len()).step_by(4) {
        let own = u32::from_le_bytes(full[pos..pos + 4].try_into().unwrap());
        for v in lengths
            .iter()
            .copied()
            .chain([own.wrapping_add(1), own.wrapping_sub(1)])
        {
            let mut b = full.clone();
            b[pos..pos + 4].copy_from_slice(&v.to_le_bytes());
            let r = check(&b);
            // A change inside the ExtensionHeader's sizes is refused naming that header.
            let lies = (pos == at && v != 12) || (pos == at + 4 && v != 0);
            if lies {
                let e = r.expect_err("a lying ExtensionHeader size is refused");
                assert!(e.field.starts_with("ExtensionHeader."), "{pos} = {v}: {e}");
            }
        }
    }
    // And every single byte of the ExtensionHeader set to each value.
    for pos in at..at + EXT_LEN {
        for v in 0..=255u8 {
            let mut b = full.clone();
            b[pos] = v;
            if let Err(e) = check(&b) {
                assert!(e.field.starts_with("ExtensionHeader."), "{pos} = {v}: {e}");
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

    /// Random byte edits anywhere in the accepted shape (half of them near its end: the HTTP
    /// body and the ExtensionHeader) never panic, and whatever still parses round-trips. When
    /// every edit is inside the ExtensionHeader, a refusal names that header.
    #[test]
    fn random_edits_of_the_accepted_shape_never_panic(
        edits in proptest::collection::vec((0usize..64, proptest::prelude::any::<u8>(), proptest::prelude::any::<bool>()), 1..8),
        cut in 0usize..32,
    ) {
        let full = accepted_shape();
        let len = full.len();
        let at = ext_at();
        let mut b = full;
        let mut only_in_extension = true;
        for (back, v, near_end) in edits {
            // Half the edits land in the last 64 bytes (ExtensionHeader, HTTP body end).
            let i = if near_end { len - 1 - back } else { (back * 7919) % len };
            only_in_extension &= i >= at;
            b[i] = v;
        }
        b.truncate(len - cut);
        let r = check(&b);
        if only_in_extension && cut == 0 {
            if let Err(e) = r {
                proptest::prop_assert!(e.field.starts_with("ExtensionHeader."), "{}", e);
            }
        }
    }
}
