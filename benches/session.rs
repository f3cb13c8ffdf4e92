//! The hot send -> store -> ack path with no syscalls: an initiator session sends pre-encoded
//! messages (template patched per message), an acceptor session delivers them to the queue
//! manager over the in-memory store and emits SessionAcks, which the initiator consumes.
//! Reported per message (criterion "time" is ns per message) for 100 B and 4 KiB bodies,
//! express and recoverable, and for the session alone (no store).
//!
//! The queue is drained outside the timed part every so often, so the store stays in a steady
//! state instead of growing for the whole run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lior::bench::client::SessionPlan;
use lior::bench::pair::{mem_broker, MemStore, Pair};
use lior::wire::utf16z;

/// Messages between two drains of the queue.
const DRAIN_EVERY: u64 = 20_000;

fn plan(size: usize, recoverable: bool) -> SessionPlan {
    SessionPlan {
        destination_wire: utf16z("TCP:127.0.0.1\\PRIVATE$\\bench"),
        body_size: size,
        recoverable,
        window: 64,
        quota: None,
        interval_ns: None,
    }
}

fn bench_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("send_ack");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for size in [100usize, 4096] {
        for recoverable in [false, true] {
            let class = if recoverable {
                "recoverable"
            } else {
                "express"
            };
            let dir = tempfile::tempdir().expect("tempdir");
            let b = mem_broker(dir.path()).expect("broker");
            let mut pair = Pair::new(&plan(size, recoverable), Some(Arc::clone(&b))).expect("pair");
            let mut since_drain = 0;
            g.bench_function(format!("store/{class}/{size}B"), |bch| {
                bch.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    let mut done = 0;
                    while done < iters {
                        let n = (iters - done).min(DRAIN_EVERY - since_drain).max(1);
                        let t = Instant::now();
                        done += pair.run(n);
                        spent += t.elapsed();
                        since_drain += n;
                        if since_drain >= DRAIN_EVERY {
                            while !b.receive("bench", 10_000).expect("drain").is_empty() {}
                            since_drain = 0;
                        }
                    }
                    spent
                })
            });
            assert_eq!(pair.not_stored, 0, "every message must be stored");
        }
        let mut pair =
            Pair::<MemStore>::new(&plan(size, false), None).expect("pair without a store");
        g.bench_function(format!("session_only/express/{size}B"), |bch| {
            bch.iter_custom(|iters| {
                let t = Instant::now();
                pair.run(iters);
                t.elapsed()
            })
        });
    }
    g.finish();
}

/// The duplicate table, full (Windows' 10,000 entries), as every new message meets it: a miss,
/// an insert and an eviction of the oldest identifier.
fn bench_dedup(c: &mut Criterion) {
    use lior::qm::dedup::DuplicateTable;
    use lior::wire::Guid;
    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    let sender = Guid([7; 16]);
    let mut table = DuplicateTable::new(10_000, 30 * 60 * 1000);
    let mut n: u32 = 0;
    for _ in 0..10_000 {
        n = n.wrapping_add(1);
        table.check_and_insert((sender, n), u64::from(n), (0, 0));
    }
    g.bench_function("check_and_insert/full_10000/new_id", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            table.check_and_insert((sender, n), u64::from(n), (0, u64::from(n)))
        })
    });
    // As the store's path uses it: the check, then the first copy's place once appended.
    // (check, then the place once appended: one new identifier)
    fn check_then_place(t: &mut DuplicateTable, sender: Guid, n: &mut u32) -> bool {
        *n = n.wrapping_add(1);
        let key = (sender, *n);
        let hit = t.check_and_insert(key, u64::from(*n), lior::qm::dedup::PENDING);
        t.set_origin(&key, (0, u64::from(*n)));
        hit.is_some()
    }
    g.bench_function("check_insert_set_origin/full_10000/new_id", |b| {
        b.iter(|| check_then_place(&mut table, sender, &mut n))
    });
    // A larger RemoveDuplicateSize (100,000), whose table does not fit in the caches.
    let mut big = DuplicateTable::new(100_000, 30 * 60 * 1000);
    for _ in 0..100_000 {
        n = n.wrapping_add(1);
        big.check_and_insert((sender, n), u64::from(n), (0, 0));
    }
    g.bench_function("check_insert_set_origin/full_100000/new_id", |b| {
        b.iter(|| check_then_place(&mut big, sender, &mut n))
    });
    g.finish();
}

criterion_group!(benches, bench_path, bench_dedup);
criterion_main!(benches);
