//! Fuzz target: any bytes as an SRMP request (MC-MQSRM): the first line is the Content-Type,
//! the rest the multipart body (the MIME split and the SOAP envelope reading of
//! `lior::http::srmp::parse_srmp`). Nothing may panic; what parses must be a message lior can
//! store (a `<to>`, a priority of at most 7, a stream message durable, the body a part of the
//! request) and parse the same way again; the same first line as a request path goes to
//! `queue_path`, and as a time to `parse_srmp_time`.
//!
//! The body of the `srmp` fuzz target, shared with tests/fuzz_corpus.rs (which replays the
//! corpus in every `cargo test`, without cargo-fuzz).

use lior::http::srmp::{parse_srmp, parse_srmp_time, queue_path};

pub fn check(data: &[u8]) {
    let (first, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let content_type = String::from_utf8_lossy(first);
    if let Some(p) = queue_path(&content_type) {
        assert!(!p.is_empty() && !p.contains('/'), "queue_path gave {p:?}");
    }
    let _ = parse_srmp_time(&content_type);
    let Ok(m) = parse_srmp(&content_type, body) else {
        return;
    };
    assert!(!m.to.is_empty(), "accepted without a <to>");
    assert!(m.priority <= 7, "priority {}", m.priority);
    assert!(
        m.stream.is_none() || m.durable,
        "a stream message that is not durable"
    );
    assert!(
        m.body.is_empty() || memchr::memmem::find(body, &m.body).is_some(),
        "the message body is not a part of the request"
    );
    assert_eq!(
        parse_srmp(&content_type, body).as_ref(),
        Ok(&m),
        "parsed differently twice"
    );
}
