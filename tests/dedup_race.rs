//! Issue 10: the duplicate table recorded a new message's first copy as `(partition, 0)` before
//! it was stored, and ticket 0 is `Ticket::IMMEDIATE`: a duplicate seen by another shard in that
//! window was acknowledged at once, before the first copy was on disk. Two threads stand for two
//! shards; the first copy's append is held at a gate while the duplicate arrives.

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
fn a_duplicate_on_another_shard_is_never_acknowledged_before_the_first_copy_is_stored() {
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

    // Shard 0 takes the first copy; its append waits at the closed gate.
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
    // Shard 1 gets the duplicate meanwhile.
    let (tx, rx) = mpsc::channel();
    let (b1, f1) = (b.clone(), f.clone());
    std::thread::spawn(move || {
        let msg = UserMessage::parse(&f1).unwrap();
        let _ = tx.send(b1.deliver(&f1, &msg, 1_700_000_000, 1).verdict);
    });
    // Whatever the duplicate says while the first copy is not stored must not let its
    // acknowledgement go out: no IMMEDIATE origin.
    if let Ok(v) = rx.recv_timeout(Duration::from_millis(300)) {
        match v {
            Verdict::Duplicate { origin } => assert!(
                origin.1 != Ticket::IMMEDIATE && !b.is_durable(origin.0, origin.1),
                "a duplicate was acknowledged before its first copy was stored: {v:?}"
            ),
            Verdict::Refuse(_) => {}
            other => panic!("unexpected verdict {other:?}"),
        }
    }
    // Open the gate: the first copy is stored; the duplicate waits for exactly it.
    {
        let (m, cv) = &*gates[0];
        m.lock().unwrap().0 = false;
        cv.notify_all();
    }
    let Verdict::Stored { ticket, .. } = first.join().unwrap() else {
        panic!("the first copy was not stored");
    };
    assert_ne!(ticket, Ticket::IMMEDIATE);
    let v = rx.recv_timeout(Duration::from_secs(10));
    let Ok(Verdict::Duplicate { origin }) = v else {
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
