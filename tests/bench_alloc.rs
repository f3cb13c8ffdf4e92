//! The steady-state send -> ack path allocates nothing per message: a counting global allocator
//! watches an initiator session (fed by `lior bench`'s template sender) and an acceptor session
//! exchanging messages and SessionAcks, express and recoverable, 100 B and 4 KiB.
//!
//! The queue manager's store is measured too, and reported, but not held to zero: an express
//! message is kept in memory in its own allocation until it is received (that is what storing
//! it means), and the queue index grows as the queue does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use lior::bench::client::SessionPlan;
use lior::bench::pair::{mem_broker, MemStore, Pair};
use lior::wire::utf16z;

struct Counting;

thread_local! {
    /// Allocations made by this thread: the tests of this file run in parallel, and each counts
    /// only its own.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    ALLOCS.with(|c| c.set(c.get() + 1));
}

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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

/// Allocations per message over `n` messages, after a warm-up that lets every buffer reach
/// its steady size.
fn allocs_per_message(pair: &mut Pair<MemStore>, n: u64) -> (u64, u64) {
    pair.run(100_000);
    let before = allocs();
    let done = pair.run(n);
    (allocs() - before, done)
}

#[test]
fn session_send_ack_path_allocates_nothing_per_message() {
    for size in [100, 4096] {
        for recoverable in [false, true] {
            let mut pair = Pair::<MemStore>::new(&plan(size, recoverable), None).expect("pair");
            let (allocs, done) = allocs_per_message(&mut pair, 200_000);
            assert!(done >= 50_000, "only {done} messages were acknowledged");
            assert_eq!(
                allocs, 0,
                "{allocs} allocations for {done} messages ({size} B, recoverable {recoverable})"
            );
        }
    }
}

#[test]
fn store_path_allocations_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = mem_broker(dir.path()).expect("broker");
    for recoverable in [false, true] {
        let mut pair = Pair::new(&plan(100, recoverable), Some(b.clone())).expect("pair");
        let (allocs, done) = allocs_per_message(&mut pair, 20_000);
        assert_eq!(pair.not_stored, 0, "every message is stored");
        assert!(done >= 20_000);
        eprintln!(
            "with the store ({}): {:.2} allocations per message",
            if recoverable {
                "recoverable"
            } else {
                "express"
            },
            allocs as f64 / done as f64
        );
    }
}
