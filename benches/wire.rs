//! Criterion benches for the UserMessage codec's hot path (no syscalls): parse and encode of
//! the MS-MQQB §4.1 frame 7 capture (2224 bytes, SecurityHeader, 2000-byte body) and of an
//! express message with a 100-byte body (the common small-message case; 264 bytes on the wire,
//! since a UserMessage is never shorter than 120 bytes).
//!
//! Run: `cargo bench --bench wire`. Results and the machine are recorded in `perf/wire.md`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{parse_packet, utf16z, Guid, Utf16};

const FRAME7: &[u8] = include_bytes!("../tests/vectors/mqqb-4.1/frame7-user-message-express.bin");

fn bench_frame(c: &mut Criterion, name: &str, frame: &[u8]) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| {
        b.iter(|| UserMessage::parse(black_box(frame)).map(|m| m.body().len()))
    });
    g.bench_function("parse_packet", |b| {
        b.iter(|| parse_packet(black_box(frame)).is_ok())
    });
    let m = UserMessage::parse(frame).expect("bench frame parses");
    let mut out = vec![0u8; m.frame_len()];
    g.bench_function("encode", |b| {
        b.iter(|| black_box(&m).encode(black_box(&mut out)))
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_frame(c, "frame7_2224B", FRAME7);

    // An express message with a 100-byte body: BaseHeader + UserHeader with a short direct
    // name + MPH with a 5-character label.
    let name = utf16z("TCP:10.1.2.3\\q");
    let label = utf16z("hello");
    let body = [0x42u8; 100];
    let m = UserMessage::new(
        Guid([7; 16]),
        1,
        QueueRef::Direct(Utf16(&name)),
        Utf16(&label),
        &body,
    );
    assert_eq!(
        m.packet_size(),
        264,
        "16 + 48 + 32 (name) + 56 + 12 (label) + 100 (body)"
    );
    let mut small = vec![0u8; m.frame_len()];
    m.encode(&mut small).expect("encodes");
    bench_frame(c, "express_body100B", &small);
}

criterion_group!(wire, benches);
criterion_main!(wire);
