//! The cross-shard mesh (`engine::mesh`) between real threads: order over many records and
//! wrap-arounds, and no lost wake when the receiver parks on its eventfd, both between plain
//! threads ([`Parker`]) and between two engine shards, where the wake is the eventfd read on
//! each shard's own ring. Every wait is bounded: a receiver left parked for a second with a
//! record waiting fails the test (a correctness bound, not a speed assertion).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use lior::engine::mesh::{Mesh, Parker, Port};
use lior::engine::net::{
    App, AppError, CloseReason, ConnId, Engine, EngineConfig, Listener, ShardCtx, Waker,
};

/// How long a parked receiver may wait for a record its sender has flushed.
const WAKE_BOUND: Duration = Duration::from_secs(1);

fn pair(lane_bytes: usize) -> (Port, Parker, Port, Parker) {
    let parkers = [
        Parker::new().expect("eventfd"),
        Parker::new().expect("eventfd"),
    ];
    let wakers: Arc<[Waker]> = parkers.iter().map(Parker::waker).collect();
    let mesh = Mesh::new(2, lane_bytes, wakers).expect("mesh");
    let [p0, p1] = parkers;
    (
        mesh.port(0).expect("port 0"),
        p0,
        mesh.port(1).expect("port 1"),
        p1,
    )
}

fn body_len(seq: u64) -> usize {
    if seq % 4999 == 0 {
        20_000 // over a quarter of the lane: crosses boxed
    } else {
        (seq % 61) as usize
    }
}

fn body_byte(seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_mul(31).wrapping_add(i as u8)
}

#[test]
fn a_million_records_cross_two_threads_in_order() {
    const RECORDS: u64 = 1_000_000;
    let (mut tx, _tx_parker, mut rx, rx_parker) = pair(64 * 1024);
    let producer = thread::spawn(move || {
        let mut body = Vec::new();
        for seq in 0..RECORDS {
            body.clear();
            body.extend((0..body_len(seq)).map(|i| body_byte(seq, i)));
            let mut full_since = None;
            while !tx.try_send(1, &seq.to_le_bytes(), &body) {
                // Full: make sure the receiver knows, and let it drain.
                tx.flush();
                let since = *full_since.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < Duration::from_secs(5),
                    "lane full for 5 s at record {seq}: the receiver stopped draining"
                );
                thread::yield_now();
            }
            if seq % 64 == 63 {
                tx.flush();
            }
        }
        tx.flush();
    });
    let mut expect = 0u64;
    let mut boxed = 0;
    while expect < RECORDS {
        let got = rx.recv_all(|from, record| {
            assert_eq!(from, 0);
            let seq = u64::from_le_bytes(record.head().try_into().expect("8-byte head"));
            assert_eq!(seq, expect, "records out of order");
            let body = record.body();
            assert_eq!(body.len(), body_len(seq), "record {seq}");
            assert!(
                body.iter()
                    .enumerate()
                    .all(|(i, &b)| b == body_byte(seq, i)),
                "record {seq} body damaged"
            );
            boxed += usize::from(record.is_boxed());
            expect += 1;
        });
        if got == 0 && expect < RECORDS {
            // A flushed sender wakes us; 5 s without a wake means one was lost (the sender
            // flushes every 64 records and whenever the lane is full).
            let woken = rx_parker
                .park_timeout(Duration::from_secs(5))
                .expect("park");
            assert!(
                woken || rx.has_mail(),
                "receiver parked 5 s at record {expect} without a wake"
            );
        }
    }
    producer.join().expect("producer");
    assert_eq!(boxed, (RECORDS as usize).div_ceil(4999));
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64: deterministic per seed.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Busy work for a random 0..`max_us` microseconds, so a sender's next record often lands
/// while the receiver is waking or still draining the previous one (the window where a wrongly
/// ordered clear of the wake flag loses a wake).
fn spin(rng: &mut Rng, max_us: u64) {
    let until = Instant::now() + Duration::from_micros(rng.next() % max_us);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

fn seq_of(head: &[u8]) -> u64 {
    u64::from_le_bytes(head.try_into().expect("8-byte head"))
}

/// Handoffs: the sender sends bursts of 1 to 3 records, flushing after each one, then waits
/// for the receiver's acknowledgement of the last; the receiver, like a shard's turn, drains
/// once, acknowledges what it got and parks. A lost wake leaves a record in the lane with the
/// receiver parked and the sender waiting for its acknowledgement: the 1 s bound fails.
#[test]
fn no_wake_is_lost_over_100k_handoffs_between_parked_threads() {
    const HANDOFFS: u64 = 100_000;
    let (mut a, a_parker, mut b, b_parker) = pair(4096);
    let receiver = thread::spawn(move || {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut expect = 0u64;
        let mut parked_since: Option<Instant> = None;
        while expect < HANDOFFS {
            let got = b.recv_all(|from, record| {
                assert_eq!(from, 0);
                assert_eq!(seq_of(record.head()), expect, "records out of order");
                expect += 1;
                spin(&mut rng, 20);
            });
            if got > 0 {
                // Acknowledge, then park at once like a shard ending its turn: a record that
                // arrived during the drain must have woken us.
                parked_since = None;
                assert!(b.try_send(0, &(expect - 1).to_le_bytes(), b""));
                b.flush();
                if expect == HANDOFFS {
                    break;
                }
            }
            let since = *parked_since.get_or_insert_with(Instant::now);
            let left = WAKE_BOUND.saturating_sub(since.elapsed());
            let woken = b_parker.park_timeout(left).expect("park");
            assert!(
                woken || b.has_mail(),
                "receiver parked {WAKE_BOUND:?} after record {expect} with no wake"
            );
            assert!(
                !(b.has_mail() && since.elapsed() >= WAKE_BOUND),
                "record {expect} waited {WAKE_BOUND:?} in the lane: a wake was lost"
            );
        }
    });
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut seq = 0u64;
    while seq < HANDOFFS {
        let burst = (1 + rng.next() % 3).min(HANDOFFS - seq);
        for k in 0..burst {
            assert!(a.try_send(1, &seq.to_le_bytes(), b"x"));
            a.flush();
            seq += 1;
            if k + 1 < burst {
                spin(&mut rng, 60);
            }
        }
        let want = seq - 1;
        let start = Instant::now();
        let mut acked = None;
        while acked != Some(want) {
            a.recv_all(|_, record| acked = Some(seq_of(record.head())));
            if acked == Some(want) {
                break;
            }
            let left = WAKE_BOUND.saturating_sub(start.elapsed());
            let woken = a_parker.park_timeout(left).expect("park");
            assert!(
                woken || a.has_mail(),
                "no acknowledgement of record {want} within {WAKE_BOUND:?}: a wake was lost"
            );
        }
    }
    receiver.join().expect("receiver thread");
}

// ----- two engine shards: the same handoffs, woken through each shard's ring -----

/// Shard 0 sends bursts (one record per turn, waking itself for the next of the burst) and
/// waits for shard 1's acknowledgement; shard 1 acknowledges each drain. Every wake crosses
/// the target shard's eventfd read on its io_uring.
struct Player {
    index: usize,
    port: Port,
    wakers: Arc<[Waker]>,
    total: u64,
    rng: Rng,
    next: u64,
    burst_left: u64,
    acked: Option<u64>,
    progress: Arc<AtomicU64>,
    done: mpsc::Sender<()>,
}

impl Player {
    fn send_next(&mut self) {
        assert!(self.port.try_send(1, &self.next.to_le_bytes(), &[0xab; 40]));
        self.next += 1;
        self.burst_left -= 1;
        if self.burst_left > 0 {
            self.wakers[0]
                .wake()
                .expect("wake myself for the next of the burst");
        }
    }

    fn sender_turn(&mut self) {
        let mut acked = self.acked;
        self.port.recv_all(|from, record| {
            assert_eq!(from, 1);
            acked = Some(seq_of(record.head()));
        });
        self.acked = acked;
        if let Some(acked) = acked {
            self.progress.store(acked + 1, Ordering::SeqCst);
            if acked + 1 == self.total {
                let _ = self.done.send(());
                return;
            }
        }
        if self.burst_left > 0 {
            self.send_next();
        } else if self.next < self.total && self.acked.map_or(0, |a| a + 1) == self.next {
            self.burst_left = (1 + self.rng.next() % 3).min(self.total - self.next);
            self.send_next();
        }
    }

    fn receiver_turn(&mut self) {
        let mut expect = self.next;
        let rng = &mut self.rng;
        let got = self.port.recv_all(|from, record| {
            assert_eq!(from, 0);
            assert_eq!(seq_of(record.head()), expect, "records out of order");
            assert_eq!(record.body(), &[0xab; 40]);
            expect += 1;
            spin(rng, 20);
        });
        self.next = expect;
        if got > 0 {
            assert!(self.port.try_send(0, &(expect - 1).to_le_bytes(), b""));
        }
    }
}

impl App for Player {
    type Conn = ();

    fn accept(
        &mut self,
        _now_ms: u64,
        _id: ConnId,
        _peer: std::net::SocketAddr,
        _listener: Listener,
    ) -> Option<()> {
        None
    }

    fn on_recv(&mut self, _now_ms: u64, _conn: &mut (), _bytes: &[u8]) -> Result<(), AppError> {
        Ok(())
    }

    fn poll_transmit(&mut self, _now_ms: u64, _conn: &mut (), _buf: &mut Vec<u8>) {}

    fn deadline(&self, _conn: &()) -> Option<u64> {
        None
    }

    fn on_timeout(&mut self, _now_ms: u64, _conn: &mut ()) {}

    fn wants_close(&self, _conn: &()) -> bool {
        false
    }

    fn on_closed(&mut self, _now_ms: u64, _conn: (), _reason: CloseReason) {}

    fn end_of_turn(&mut self, _now_ms: u64) {
        if self.index == 0 {
            self.sender_turn();
        } else {
            self.receiver_turn();
        }
        self.port.flush();
    }
}

#[test]
fn two_shards_hand_records_over_without_a_lost_wake() {
    const HANDOFFS: u64 = 30_000;
    let mesh: Arc<OnceLock<Arc<Mesh>>> = Arc::new(OnceLock::new());
    let progress = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    let config = EngineConfig {
        cores: vec![0, 1],
        pin_threads: false,
        ring_entries: 64,
        recv_buffer_count: 16,
        recv_buffer_size: 4096,
        ..EngineConfig::default()
    };
    let factory_progress = Arc::clone(&progress);
    let handle = Engine::start_with_ctx(config, move |ctx: ShardCtx| {
        assert_eq!((ctx.shards, ctx.wakers.len()), (2, 2));
        let mesh = mesh.get_or_init(|| {
            Mesh::new(ctx.shards, 64 * 1024, Arc::clone(&ctx.wakers)).expect("mesh")
        });
        Player {
            index: ctx.index,
            port: mesh.port(ctx.index).expect("one port per shard"),
            wakers: Arc::clone(&ctx.wakers),
            total: HANDOFFS,
            rng: Rng(0x1234_5678_9abc_def1 + ctx.index as u64),
            next: 0,
            burst_left: 0,
            acked: None,
            progress: Arc::clone(&factory_progress),
            done: done_tx.clone(),
        }
    })
    .expect("engine starts");
    // An idle shard runs a turn when woken: shard 0 sends its first record then.
    handle
        .waker(0)
        .expect("shard 0")
        .wake()
        .expect("wake shard 0");
    let mut last = (0, Instant::now());
    loop {
        match done_rx.recv_timeout(Duration::from_millis(2)) {
            Ok(()) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("a shard stopped (panicked?)"),
        }
        let now = progress.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        }
        assert!(
            last.1.elapsed() < WAKE_BOUND,
            "no acknowledgement for {WAKE_BOUND:?} after {now} records: a shard parked with a \
             record waiting (lost wake)"
        );
    }
    assert_eq!(progress.load(Ordering::SeqCst), HANDOFFS);
    handle.shutdown().expect("clean shutdown");
}
