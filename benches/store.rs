//! Store hot paths without syscalls: record append with crc (100 B and 4 KiB) into the staged
//! batch of the simulated disk, the consume path (receive + release of durable messages), and
//! the expiry scan.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lior::store::{
    record, Class, LookupId, MessageId, MessageMeta, QueueId, QueueStore, Select, SimDisk,
    SimStore, Store, StoreConfig, EXPIRY_NEVER,
};

fn meta(i: u32) -> MessageMeta {
    let mut id = [3u8; 20];
    id[16..].copy_from_slice(&i.to_le_bytes());
    MessageMeta {
        priority: (i % 8) as u8,
        class: Class::Recoverable,
        message_id: MessageId(id),
        expiry_unix_s: EXPIRY_NEVER,
    }
}

fn cfg() -> StoreConfig {
    StoreConfig {
        segment_bytes: 64 << 20,
        batch_bytes_max: 8 << 20,
        ..StoreConfig::default()
    }
}

fn bench(c: &mut Criterion) {
    for size in [100usize, 4096] {
        let payload = vec![0xA5u8; size];
        let mut g = c.benchmark_group(format!("store_append_{size}B"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("encode_record_crc", |b| {
            let mut buf = Vec::with_capacity(64 << 20);
            let m = meta(1);
            b.iter(|| {
                if buf.len() > (60 << 20) {
                    buf.clear();
                }
                record::encode_message(&mut buf, 7, QueueId(1), LookupId(7), &m, &payload)
            })
        });
        g.bench_function("store_append_index", |b| {
            // Appends into the staged batch (record, crc, index); the batch is committed to the
            // simulated disk (a memcpy, no syscall) every 4 MiB.
            let mut s: SimStore = Store::open(SimDisk::new(1), cfg()).unwrap().0;
            s.disk_mut().faults.complete_percent = 100;
            let mut i = 0u32;
            b.iter(|| {
                i = i.wrapping_add(1);
                if s.pending_bytes() > (4 << 20) {
                    s.flush().unwrap();
                    s.poll_durable(true).unwrap();
                    if s.stats().messages > 200_000 {
                        s.purge(QueueId(1)).unwrap();
                        s.flush().unwrap();
                        s.poll_durable(true).unwrap();
                        s.maintain().unwrap();
                    }
                }
                s.append(QueueId(1), &meta(i), &payload).unwrap()
            })
        });
        g.finish();
    }
    // The expiry scan the queue manager runs every 5 s: 100,000 messages of which 1,000 have
    // expired (the rest expire later or never).
    let mut g = c.benchmark_group("store_expiry_scan");
    g.bench_function("expired_1k_of_100k", |b| {
        let payload = vec![1u8; 100];
        let mut s: SimStore = Store::open(SimDisk::new(3), cfg()).unwrap().0;
        s.disk_mut().faults.complete_percent = 100;
        for i in 0..100_000u32 {
            let m = MessageMeta {
                expiry_unix_s: match i % 100 {
                    0 => 1_000,
                    1..=49 => 9_000,
                    _ => EXPIRY_NEVER,
                },
                ..meta(i)
            };
            s.append(QueueId(1 + i % 4), &m, &payload).unwrap();
            if s.pending_bytes() > (4 << 20) {
                s.flush().unwrap();
                s.poll_durable(true).unwrap();
            }
        }
        s.flush().unwrap();
        s.poll_durable(true).unwrap();
        let mut out = Vec::with_capacity(1_000);
        b.iter(|| {
            out.clear();
            s.expired(5_000, 4_096, &mut out);
            assert_eq!(out.len(), 1_000);
        })
    });
    g.finish();
    let mut g = c.benchmark_group("store_consume");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("receive_release_100B", |b| {
        let payload = vec![1u8; 100];
        b.iter_batched(
            || {
                let mut s: SimStore = Store::open(SimDisk::new(2), cfg()).unwrap().0;
                for i in 0..10_000u32 {
                    s.append(QueueId(1), &meta(i), &payload).unwrap();
                }
                s.flush().unwrap();
                s.poll_durable(true).unwrap();
                s
            },
            |mut s| {
                let mut held = Vec::with_capacity(10_000);
                while let Some(r) = s.receive(QueueId(1), Select::Front).unwrap() {
                    held.push(r);
                }
                s.flush().unwrap();
                s.poll_durable(true).unwrap();
                let mut n = 0usize;
                for r in held {
                    n += s.reserved(&r).unwrap().bytes.len();
                    s.release(r).unwrap();
                }
                (s, n)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
