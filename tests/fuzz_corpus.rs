//! Replays every fuzz corpus (tests/fuzz/corpus/TARGET) through the very body of its fuzz
//! target (tests/fuzz/checks/TARGET.rs), so each `cargo test` runs what the fuzzer checks over
//! the seeds and every input saved there, without cargo-fuzz or a nightly toolchain. A crash
//! the fuzzer finds is kept by copying it into the corpus.

#[path = "fuzz/checks/amqp_frame.rs"]
mod amqp_frame;
#[path = "fuzz/checks/parse_packet.rs"]
mod parse_packet;
#[path = "fuzz/checks/session_stream.rs"]
mod session_stream;
#[path = "fuzz/checks/srmp.rs"]
mod srmp;

use std::path::PathBuf;

/// Every file of `tests/fuzz/corpus/<target>`, sorted by name, with its bytes.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

/// Runs `check` over `target`'s corpus, naming the input that fails.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let files = corpus(target);
    for (name, data) in &files {
        if let Err(e) = std::panic::catch_unwind(|| check(data)) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("fuzz target {target}: tests/fuzz/corpus/{target}/{name} fails: {why}");
        }
    }
    files.len()
}

#[test]
fn the_parse_packet_corpus_passes_its_target() {
    assert!(replay("parse_packet", parse_packet::check) >= 8);
}

#[test]
fn the_session_stream_corpus_passes_its_target() {
    assert!(replay("session_stream", session_stream::check) >= 8);
}

#[test]
fn the_amqp_frame_corpus_passes_its_target() {
    assert!(replay("amqp_frame", amqp_frame::check) >= 4);
}

#[test]
fn the_srmp_corpus_passes_its_target() {
    assert!(replay("srmp", srmp::check) >= 10);
}

/// The SRMP seeds are the MC-MQSRM section 4 requests as sent: each multipart one parses into
/// the message the spec describes (so the fuzzer starts from inputs that reach deep), and the
/// hostile ones are refused.
#[test]
fn the_srmp_seeds_are_the_spec_examples() {
    use lior::http::srmp::parse_srmp;
    let mut parsed = Vec::new();
    for (name, data) in corpus("srmp") {
        let i = data.iter().position(|&b| b == b'\n').unwrap();
        let ct = String::from_utf8(data[..i].to_vec()).unwrap();
        let r = parse_srmp(&ct, &data[i + 1..]);
        parsed.push((name.clone(), r.as_ref().map(|m| m.label.clone()).ok()));
        if name.starts_with("seed-hostile-") && name != "seed-hostile-stream-message.bin" {
            assert!(r.is_err(), "{name} was accepted");
        }
        if ct.starts_with("multipart/") && name.starts_with("seed-mc-mqsrm-") {
            let m = r.unwrap_or_else(|e| panic!("{name}: {e}"));
            // 4.5 sends to a multicast address (PGM), the others to http://machine2.
            assert!(
                m.to.starts_with("http://machine") || m.to == "MSMQ:MULTICAST=234.1.1.1:8001",
                "{name}: {}",
                m.to
            );
        }
    }
    let label = |n: &str| {
        parsed
            .iter()
            .find(|(name, _)| name == n)
            .and_then(|(_, l)| l.clone())
    };
    assert_eq!(
        label("seed-mc-mqsrm-4.1-1.bin").as_deref(),
        Some("mqsender label")
    );
    assert_eq!(label("seed-mc-mqsrm-4.2-1.bin").as_deref(), Some(""));
    // The stream sample's first message: stream 4839986701558349830, number 1, durable.
    let data = &corpus("srmp")
        .into_iter()
        .find(|(n, _)| n == "seed-mc-mqsrm-4.4-1.bin")
        .unwrap()
        .1;
    let i = data.iter().position(|&b| b == b'\n').unwrap();
    let m = parse_srmp(std::str::from_utf8(&data[..i]).unwrap(), &data[i + 1..]).unwrap();
    assert_eq!(m.stream, Some((4_839_986_701_558_349_830, 1, 0)));
    assert!(m.durable);
    assert_eq!(m.body, b"First Message");
}
