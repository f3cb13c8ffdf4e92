//! A session fed a hostile byte stream in arbitrary chunks: the acceptor must never panic,
//! and once closed it must stay closed. The first byte picks the chunking, the rest is the
//! stream; a valid handshake prefix (frames 3 and 5 with ServerGuid zero) is prepended when the
//! second byte is odd, so the fuzzer also reaches the open state.
//!
//! The body of the `session_stream` fuzz target, shared with tests/fuzz_corpus.rs (which replays
//! the corpus in every `cargo test`, without cargo-fuzz).

use lior::session::{Framer, Session, SessionConfig};
use lior::wire::Guid;

const F3: &[u8] = include_bytes!("../../vectors/mqqb-4.1/frame3-establish-connection-request.bin");
const F5: &[u8] = include_bytes!("../../vectors/mqqb-4.1/frame5-connection-parameters-request.bin");

pub fn check(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let chunk = usize::from(data[0]).max(1);
    let mut stream = Vec::new();
    if data[1] & 1 == 1 {
        let mut f3 = F3.to_vec();
        f3[36..52].fill(0);
        stream.extend_from_slice(&f3);
        stream.extend_from_slice(F5);
    }
    stream.extend_from_slice(&data[2..]);
    let cfg = SessionConfig {
        own_guid: Guid([7; 16]),
        ..SessionConfig::default()
    };
    let mut s = Session::acceptor(cfg, 0);
    let mut framer = Framer::new();
    let mut now = 0u64;
    for c in stream.chunks(chunk) {
        now += 1;
        let r = framer.feed(c, |frame| {
            let r = s.handle_frame(now, frame).map(|inbound| {
                if let lior::session::Inbound::Message {
                    rec_seq: Some(r), ..
                } = inbound
                {
                    s.handle_durable(now, r);
                }
            });
            r
        });
        s.flush_acks();
        let _ = s.take_transmit(Vec::new());
        while s.poll_event().is_some() {}
        if r.is_err() || s.is_closed() {
            break;
        }
        if let Some(t) = s.poll_timeout() {
            if t <= now + 100_000 {
                s.handle_timeout(t);
            }
        }
    }
}
