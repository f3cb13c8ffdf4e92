//! Criterion benches for the AMQP 1.0 codec's hot path (no syscalls): decoding a transfer frame
//! carrying a 100-byte message (frame header, performative, message sections) and encoding a
//! disposition that settles it, into a reused buffer.
//!
//! Run: `cargo bench --bench amqp`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use lior::amqp::frame::{encode_amqp_frame, parse_frame};
use lior::amqp::message::{encode_data, Message};
use lior::amqp::performatives::{DeliveryState, Disposition, Performative, Role, Transfer};

fn benches(c: &mut Criterion) {
    let mut message = Vec::new();
    encode_data(&mut message, &[0x42; 100]).expect("encode message");
    let tag = 1u64.to_be_bytes();
    let mut frame = Vec::new();
    Transfer::new(0, 1, &tag)
        .encode_frames(&mut frame, 1, &message, 65536)
        .expect("encode transfer");

    let mut g = c.benchmark_group("amqp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_transfer_100B", |b| {
        b.iter(|| {
            let f = parse_frame(black_box(&frame), 65536).expect("frame");
            match f.performative() {
                Ok(Some((Performative::Transfer(t), payload))) => {
                    let m = Message::decode(payload).expect("message");
                    (t.delivery_id, m.body.data_len())
                }
                _ => unreachable!("bench frame is a transfer"),
            }
        })
    });
    let mut out = Vec::with_capacity(256);
    g.bench_function("encode_disposition", |b| {
        let mut id = 0u32;
        b.iter(|| {
            out.clear();
            id = id.wrapping_add(1);
            let d = Performative::Disposition(Disposition {
                role: Role::Receiver,
                first: id,
                last: None,
                settled: true,
                state: Some(DeliveryState::Accepted),
                batchable: false,
            });
            encode_amqp_frame(&mut out, 1, black_box(&d), &[], 65536).expect("encode")
        })
    });
    g.finish();
}

criterion_group!(amqp, benches);
criterion_main!(amqp);
