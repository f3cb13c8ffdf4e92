//! Fuzz target: any bytes go to `frame_len` and `parse_packet` (and straight to
//! `UserMessage::parse`). Neither may panic; and whatever parses as a UserMessage must
//! re-encode to bytes that parse back to the same value (with the PacketSize the encoder
//! computes, since a peer may omit the final alignment padding).
//!
//! The body of the `parse_packet` fuzz target, shared with tests/fuzz_corpus.rs (which replays
//! the corpus in every `cargo test`, without cargo-fuzz).

use lior::wire::user::UserMessage;
use lior::wire::{frame_len, parse_packet, ErrorKind, Packet};

fn round_trip(m: &UserMessage<'_>) {
    let mut out = vec![0u8; m.frame_len()];
    match m.encode(&mut out) {
        Ok(n) => {
            assert_eq!(n, out.len(), "frame_len() disagrees with encode()");
            let mut want = *m;
            want.base.packet_size = m.packet_size() as u32;
            assert_eq!(UserMessage::parse(&out[..n]), Ok(want), "re-parse differs");
            assert_eq!(frame_len(&out[..n]), Ok(Some(n)));
        }
        // The only refusal allowed for a parsed value: an MQF-before-SOAP order that the
        // reader's order detection would read the other way.
        Err(e) => assert!(
            m.multi_queue_before_soap && e.kind == ErrorKind::Unsupported,
            "re-encode of a parsed message failed: {e}"
        ),
    }
}

pub fn check(data: &[u8]) {
    let _ = frame_len(data);
    if let Ok(Packet::User(m)) = parse_packet(data) {
        round_trip(&m);
    }
    if let Ok(m) = UserMessage::parse(data) {
        round_trip(&m);
    }
}
