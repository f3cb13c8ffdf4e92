//! Fuzz target: any bytes as an AMQP 1.0 byte stream after the protocol header. Frames are cut
//! with `frame_len` (max-frame-size from the first byte: 512 << (b % 8)); each frame goes to
//! the AMQP or SASL decoder by its TYPE; a transfer's payload goes to the message decoder.
//! Nothing may panic; whatever decodes must re-encode to bytes that decode to the same value.
//!
//! The body of the `amqp_frame` fuzz target, shared with tests/fuzz_corpus.rs (which replays
//! the corpus in every `cargo test`, without cargo-fuzz).

use lior::amqp::frame::{frame_len, parse_frame, FrameType};
use lior::amqp::message::Message;
use lior::amqp::performatives::Performative;
use lior::amqp::sasl::{parse_initial_response, SaslFrame};
use lior::amqp::types::Decoder;

fn check_performative(p: &Performative<'_>, payload: &[u8]) {
    let mut out = Vec::new();
    p.encode(&mut out)
        .expect("re-encode of a decoded performative");
    let (again, rest) = Performative::decode(&out).expect("re-decode");
    assert_eq!(&again, p, "re-decode differs");
    assert!(rest.is_empty());
    if let Performative::Transfer(_) = p {
        if let Ok(m) = Message::decode(payload) {
            // Compared as bytes: an amqp-value body may be a NaN float, unequal to itself.
            let mut out = Vec::new();
            m.encode(&mut out).expect("re-encode of a decoded message");
            let mut again = Vec::new();
            let m2 = Message::decode(&out).expect("re-decode");
            m2.encode(&mut again).expect("re-encode");
            assert_eq!(again, out);
        }
    }
}

fn check_sasl(s: &SaslFrame<'_>) {
    let mut out = Vec::new();
    s.encode(&mut out)
        .expect("re-encode of a decoded SASL frame");
    assert_eq!(SaslFrame::decode(&out).as_ref(), Ok(s));
    if let SaslFrame::Init(i) = s {
        let _ = parse_initial_response(i);
    }
}

pub fn check(data: &[u8]) {
    let Some((&b, mut rest)) = data.split_first() else {
        return;
    };
    let max = 512u32 << (b % 8);
    // The raw bytes as one value tree too.
    if let Ok(v) = Decoder::new(rest).value("fuzz") {
        let _ = v.validate("fuzz");
    }
    while let Ok(Some(n)) = frame_len(rest, max) {
        if n > rest.len() {
            break;
        }
        let (frame, tail) = rest.split_at(n);
        rest = tail;
        let Ok(f) = parse_frame(frame, max) else {
            continue;
        };
        match f.header.frame_type {
            FrameType::Amqp => {
                if let Ok(Some((p, payload))) = f.performative() {
                    check_performative(&p, payload);
                }
            }
            FrameType::Sasl => {
                if let Ok(s) = f.sasl() {
                    check_sasl(&s);
                }
            }
        }
    }
}
