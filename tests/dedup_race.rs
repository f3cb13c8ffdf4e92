//! Issue 10: the duplicate table recorded a new message's first copy as `(partition, 0)` before
//! it was stored, and ticket 0 is `Ticket::IMMEDIATE`: a duplicate seen by another shard in that
//! window was acknowledged at once, before the first copy was on disk. The window needed a
//! second thread inside the partition while the first copy was being appended. By design there
//! is none now: a partition is touched only by the shard that runs it (a duplicate arriving on
//! another shard is handed to the owner, `qm/handoff.rs`), and the partition is kept in an
//! `OwnedCell` whose second borrow panics instead of waiting. These tests hold the first copy's
//! append at a gate, as the old test did, and check that another thread cannot get in, then that
//! the duplicate, once the owner takes it, waits for exactly the first copy's commit. (The
//! two-shard simulation, tests/sim_sessions.rs, checks "no ack before durability" with
//! duplicates crossing shards through the real hand-off.)

use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use lior::config::Config;
use lior::qm::broker::{Broker, Verdict};
use lior::store::{SimDisk, Store, StoreConfig, StoreError, Ticket};
use lior::wire::user::UserMessage;
use lior::wire::Guid;

mod common;
use common::stores::{recoverable_to_q, Hook, Hooked};

/// Open (false) or closed (true), and whether an append is waiting at it.
type Gate = Arc<(Mutex<(bool, bool)>, Condvar)>;

/// Appends to a store hooked by a gate wait while the gate is closed.
impl Hook for Gate {
    fn before_append(&self) -> Result<(), StoreError> {
        let (m, cv) = &**self;
        let mut g = m.lock().unwrap();
        if g.0 {
            g.1 = true;
            cv.notify_all();
            while g.0 {
                g = cv.wait(g).unwrap();
            }
        }
        Ok(())
    }
}

#[test]
fn a_duplicate_on_another_thread_cannot_enter_the_partition_while_the_first_copy_is_stored() {
    let d = tempfile::tempdir().unwrap();
    let cfg = Config {
        data_dir: d.path().to_path_buf(),
        ..Config::default()
    };
    let gates: Vec<Gate> = (0..2)
        .map(|_| Arc::new((Mutex::new((false, false)), Condvar::new())))
        .collect();
    let stores = gates
        .iter()
        .enumerate()
        .map(|(i, g)| Hooked {
            inner: Store::open(SimDisk::new(11 + i as u64), StoreConfig::default())
                .unwrap()
                .0,
            hook: g.clone(),
        })
        .collect();
    let b = Arc::new(Broker::with_stores(cfg, stores).unwrap());
    b.create_queue("q", false).unwrap();
    let f = recoverable_to_q(Guid([0x21; 16]), 9);

    // The owner takes the first copy; its append waits at the closed gate.
    gates[0].0.lock().unwrap().0 = true;
    let (b0, f0) = (b.clone(), f.clone());
    let first = std::thread::spawn(move || {
        let msg = UserMessage::parse(&f0).unwrap();
        b0.deliver(&f0, &msg, 1_700_000_000, 0).verdict
    });
    {
        let (m, cv) = &*gates[0];
        let mut g = m.lock().unwrap();
        while !g.1 {
            g = cv.wait(g).unwrap();
        }
    }
    // Another thread tries the duplicate meanwhile: it cannot get in. It neither answers nor
    // waits: it panics (an ownership bug made loud), and the partition is untouched.
    let (tx, rx) = mpsc::channel();
    let (b1, f1) = (b.clone(), f.clone());
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let msg = UserMessage::parse(&f1).unwrap();
            b1.deliver(&f1, &msg, 1_700_000_000, 1).verdict
        }));
        let _ = tx.send(r.map_err(|e| e.downcast_ref::<String>().cloned().unwrap_or_default()));
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Err(_) => panic!("the second thread waits for the partition (a lock), 10 s and counting"),
        Ok(Ok(v)) => panic!("a second thread got into the partition and answered {v:?}"),
        Ok(Err(msg)) => assert!(msg.contains("borrowed already"), "{msg}"),
    }
    // Open the gate: the first copy is stored.
    {
        let (m, cv) = &*gates[0];
        m.lock().unwrap().0 = false;
        cv.notify_all();
    }
    let Verdict::Stored { ticket, .. } = first.join().unwrap() else {
        panic!("the first copy was not stored");
    };
    assert_ne!(ticket, Ticket::IMMEDIATE);
    // The owner now takes the duplicate (as the hand-off brings it): it waits for exactly the
    // first copy, which is not durable before its commit.
    let msg = UserMessage::parse(&f).unwrap();
    let v = b.deliver(&f, &msg, 1_700_000_000, 2).verdict;
    let Verdict::Duplicate { origin } = v else {
        panic!("unexpected verdict {v:?}");
    };
    assert_eq!(
        origin,
        (0, ticket),
        "the duplicate waits for the first copy"
    );
    assert!(!b.is_durable(0, ticket), "not durable before the commit");
    b.partition(0).commit(Some(ticket)).unwrap();
    assert!(b.is_durable(0, ticket));
}
