//! Issue 9.3 (server part): after one failed group commit, `end_of_turn` kept `commit_ok =
//! false` for good and the shard never acknowledged a recoverable message again, silently. Now
//! a transient failure is retried on the next turn, and a poisoned store poisons loudly: the
//! `lior_store_poisoned` counter, and the sessions waiting for it are closed so their senders
//! keep the messages. Driven like `engine/shard.rs` drives the app, over the real broker and a
//! simulated store whose commits can be made to fail.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use lior::config::Config;
use lior::engine::net::{App, ConnId};
use lior::qm::broker::Broker;
use lior::server::{MsmqApp, MsmqConn, Shared};
use lior::session::{Event, Framer, Session, SessionConfig};
use lior::store::{SimDisk, Store, StoreConfig, StoreError};
use lior::wire::Guid;

mod common;
use common::stores::{recoverable_to_q, Hook, Hooked};

/// What the next `poll_durable` calls do: 0 = work, n > 0 = fail transiently n more times,
/// u32::MAX = the log is poisoned.
const POISONED: u32 = u32::MAX;

/// The failure count of a store: its `poll_durable` fails while it is not 0.
struct Fail(Arc<AtomicU32>);

impl Fail {
    fn failure(&self) -> Option<StoreError> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            POISONED => Some(StoreError::Poisoned { errno: 5 }),
            n => {
                self.0.store(n - 1, Ordering::SeqCst);
                Some(StoreError::NotDurable)
            }
        }
    }
}

impl Hook for Fail {
    fn before_append(&self) -> Result<(), StoreError> {
        if self.0.load(Ordering::SeqCst) == POISONED {
            return Err(StoreError::Poisoned { errno: 5 });
        }
        Ok(())
    }
    fn before_poll_durable(&self) -> Result<(), StoreError> {
        match self.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

type FailStore = Hooked<Fail>;

/// The server app, one connection to it, and the client session at the other end.
struct Rig {
    shared: Arc<Shared<FailStore>>,
    app: MsmqApp<FailStore>,
    conn: MsmqConn,
    client: Session,
    framer: Framer,
    now: u64,
    acked: Vec<u64>,
    closed: bool,
}

impl Rig {
    /// One loop turn of the server and the client.
    fn turn(&mut self) {
        self.now += 5;
        let now = self.now;
        if self.client.has_transmit() {
            let bytes = self.client.take_transmit(Vec::new());
            let _ = self.app.on_recv(now, &mut self.conn, &bytes);
        }
        if self.app.deadline(&self.conn).is_some_and(|d| d <= now) {
            self.app.on_timeout(now, &mut self.conn);
        }
        self.app.end_of_turn(now);
        while self.app.poll_ready().is_some() {}
        let mut buf = Vec::new();
        self.app.poll_transmit(now, &mut self.conn, &mut buf);
        if self.app.wants_close(&self.conn) {
            self.closed = true;
        }
        let client = &mut self.client;
        let _ = self
            .framer
            .feed(&buf, |f| client.handle_frame(now, f).map(|_| ()));
        self.client.flush_acks();
        while let Some(ev) = self.client.poll_event() {
            if let Event::Acked { token } = ev {
                self.acked.push(token);
            }
        }
    }
}

fn rig(dir: &std::path::Path, fail: Arc<AtomicU32>) -> Rig {
    let cfg = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    let inner = Store::open(SimDisk::new(5), StoreConfig::default())
        .unwrap()
        .0;
    let broker = Broker::with_stores(
        cfg,
        vec![Hooked {
            inner,
            hook: Fail(fail),
        }],
    )
    .unwrap();
    broker.create_queue("q", false).unwrap();
    let shared = Arc::new(Shared::new(Arc::new(broker)));
    let mut app = MsmqApp::new(shared.clone(), 0);
    let peer: SocketAddr = "10.0.0.9:40000".parse().unwrap();
    let id = ConnId {
        slot: 0,
        generation: 1,
    };
    let conn = app
        .accept(0, id, peer, lior::server::MSMQ_LISTENER)
        .unwrap();
    let client = Session::initiator(
        SessionConfig {
            own_guid: Guid([0x41; 16]),
            ..SessionConfig::default()
        },
        Guid::NULL,
        0,
    );
    let mut r = Rig {
        shared,
        app,
        conn,
        client,
        framer: Framer::new(),
        now: 0,
        acked: Vec::new(),
        closed: false,
    };
    for _ in 0..100 {
        if r.client.state() == lior::session::SessionState::Open {
            return r;
        }
        r.turn();
    }
    panic!("no handshake");
}

fn message(id: u32) -> Vec<u8> {
    recoverable_to_q(Guid([0x41; 16]), id)
}

#[test]
fn a_commit_that_failed_once_is_retried_and_the_message_is_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicU32::new(0));
    let mut r = rig(d.path(), fail.clone());
    // The next two commits fail (a slow or stuck disk), then the disk works again.
    fail.store(2, Ordering::SeqCst);
    r.client.send_message(r.now, &message(1), true, 1).unwrap();
    for _ in 0..200 {
        r.turn();
        if !r.acked.is_empty() {
            break;
        }
    }
    assert_eq!(r.acked, [1], "acknowledged once the commit succeeded");
    assert!(!r.closed);
    // And later messages too.
    r.client.send_message(r.now, &message(2), true, 2).unwrap();
    for _ in 0..200 {
        r.turn();
        if r.acked.len() == 2 {
            break;
        }
    }
    assert_eq!(r.acked, [1, 2]);
}

#[test]
fn a_poisoned_store_closes_the_waiting_sessions_and_says_so() {
    let d = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicU32::new(0));
    let mut r = rig(d.path(), fail.clone());
    r.client.send_message(r.now, &message(1), true, 1).unwrap();
    for _ in 0..200 {
        r.turn();
        if !r.acked.is_empty() {
            break;
        }
    }
    assert_eq!(r.acked, [1]);
    // The message is appended, then the log is poisoned before its commit.
    r.client.send_message(r.now, &message(2), true, 2).unwrap();
    let bytes = r.client.take_transmit(Vec::new());
    r.app.on_recv(r.now, &mut r.conn, &bytes).unwrap();
    fail.store(POISONED, Ordering::SeqCst);
    for _ in 0..200 {
        r.turn();
        if r.closed {
            break;
        }
    }
    assert!(
        r.closed,
        "the session waiting for the poisoned store is closed"
    );
    assert_eq!(r.acked, [1], "message 2 is never acknowledged");
    assert_eq!(
        r.shared
            .broker
            .counters
            .store_poisoned
            .load(Ordering::Relaxed),
        1
    );
}
