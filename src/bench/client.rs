//! The load generator's engine app: N initiator MS-MQQB sessions spread over the shards, each
//! sending one pre-encoded message template as fast as the peer's window allows (closed loop) or
//! on a fixed schedule (open loop, `--rate`), and timing every message from send to the
//! SessionAck that covers it. It knows nothing of io_uring (that is `engine/`) and decides nothing
//! about the protocol (that is `session/`).
//!
//! The hot path does not encode or allocate: the template is encoded once per session and only
//! the MessageID ordinal (and, when the body is large enough, a send timestamp) is patched before
//! [`Session::send_message`] copies it into the session's transmit buffer. Send times live in a
//! ring indexed by the message's token, bounded by the window.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::engine::net::{App, AppError, CloseReason as NetClose, ConnId, Listener};
use crate::session::{Event, Framer, Inbound, Session, SessionConfig};
use crate::wire::user::{QueueRef, UserMessage};
use crate::wire::{Guid, Utf16};

/// Byte offset of UserHeader.MessageID (the ordinal) in an encoded UserMessage: BaseHeader (16),
/// SourceQueueManager (16), QueueManagerAddress (16), TimeToBeReceived (4), SentTime (4).
pub const MESSAGE_ID_OFFSET: usize = 56;

/// Marks a body that carries a send timestamp: bytes 0..8 are this tag, 8..16 the send time in
/// nanoseconds since the Unix epoch (little-endian), for end-to-end latency on receive.
pub const STAMP_TAG: [u8; 8] = *b"liorbnch";
/// The smallest body that carries a timestamp.
pub const STAMP_LEN: usize = 16;

/// Highest latency the histograms hold (longer ones saturate): 60 s in nanoseconds.
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// How often a shard folds its local histogram into the shared ones.
const PUBLISH_INTERVAL_MS: u64 = 50;

/// A latency histogram in nanoseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("valid histogram bounds")
}

/// Nanoseconds since the Unix epoch (for timestamps that another process may read).
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What every shard and the controlling thread share.
#[derive(Debug)]
pub struct Shared {
    /// The clock origin for latency (monotonic).
    pub epoch: Instant,
    /// `engine::net::now_ms()` read together with `epoch`, to turn schedule times into
    /// engine deadlines.
    pub epoch_engine_ms: u64,
    /// Set by the controller: start sending (once every session is open).
    pub go: AtomicBool,
    /// Set by the controller: send nothing new, let what is in flight be acknowledged.
    pub stop: AtomicBool,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub sessions_open: AtomicUsize,
    pub sessions_closed: AtomicUsize,
    /// Sessions that sent their whole `--count` quota and saw it acknowledged.
    pub sessions_done: AtomicUsize,
    /// Shards that have seen `stop` at the start of their turn's end (branch `stall`): from
    /// then on they send nothing new, so `sent` stops moving.
    pub shards_stopped: AtomicUsize,
    /// Latency since the last progress line (the controller resets it).
    pub interval: Mutex<Histogram<u64>>,
    /// Latency over the measured part of the run (the controller resets it at the start).
    pub total: Mutex<Histogram<u64>>,
    /// Why sessions closed early, for the summary.
    pub errors: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            epoch: Instant::now(),
            epoch_engine_ms: crate::engine::net::now_ms(),
            go: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            sessions_open: AtomicUsize::new(0),
            sessions_closed: AtomicUsize::new(0),
            sessions_done: AtomicUsize::new(0),
            shards_stopped: AtomicUsize::new(0),
            interval: Mutex::new(new_histogram()),
            total: Mutex::new(new_histogram()),
            errors: Mutex::new(Vec::new()),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

/// What one session sends.
#[derive(Clone, Debug)]
pub struct SessionPlan {
    pub destination_wire: Vec<u8>,
    pub body_size: usize,
    pub recoverable: bool,
    /// Our window (the smaller of ours and the peer's applies).
    pub window: u16,
    /// Messages to send, or None to run until stopped.
    pub quota: Option<u64>,
    /// Open loop: nanoseconds between two messages of this session.
    pub interval_ns: Option<u64>,
}

/// Encodes the template of `plan`'s message; returns it with the body's offset in it.
/// The most bytes one bench session queues for one write: a window of small messages fits, and
/// a single message of up to 4 MiB goes alone. The engine allows one packet more than this
/// ([`ENGINE_TRANSMIT_BYTES_MAX`]), so a full batch never closes the connection as
/// `TransmitTooLarge`.
pub const TRANSMIT_BYTES_MAX: usize = 4 << 20;
/// The engine's per-write limit for bench connections: a full batch, plus one largest frame
/// (the session lets one frame past its limit when its buffer is empty), plus acks.
pub const ENGINE_TRANSMIT_BYTES_MAX: usize =
    TRANSMIT_BYTES_MAX + crate::wire::base::MAX_PACKET_SIZE as usize + (64 << 10);

pub fn encode_template(source: Guid, plan: &SessionPlan) -> anyhow::Result<(Vec<u8>, usize)> {
    let mut body = vec![0u8; plan.body_size];
    for (i, b) in body.iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    if body.len() >= STAMP_LEN {
        body[..8].copy_from_slice(&STAMP_TAG);
    }
    let label: [u8; 0] = [];
    let m = UserMessage::new(
        source,
        1,
        QueueRef::Direct(Utf16(&plan.destination_wire)),
        Utf16(&label),
        &body,
    )
    .with_recoverable(plan.recoverable);
    let mut out = vec![0u8; m.frame_len()];
    let n = m
        .encode(&mut out)
        .map_err(|e| anyhow::anyhow!("cannot encode the message: {e}"))?;
    out.truncate(n);
    let parsed = UserMessage::parse(&out)
        .map_err(|e| anyhow::anyhow!("the encoded message does not parse: {e}"))?;
    let body_offset = parsed.body().as_ptr() as usize - out.as_ptr() as usize;
    anyhow::ensure!(
        parsed.user.message_id == 1
            && out[MESSAGE_ID_OFFSET..MESSAGE_ID_OFFSET + 4] == 1u32.to_le_bytes(),
        "MessageID is not where the template patcher expects it"
    );
    Ok((out, body_offset))
}

/// The sending side of one session: the template, the counts, the send-time ring.
#[derive(Debug)]
pub struct Sender {
    template: Vec<u8>,
    /// Where the timestamp goes, when the body is large enough for one.
    stamp_offset: Option<usize>,
    recoverable: bool,
    next_ordinal: u32,
    pub sent: u64,
    pub acked: u64,
    quota: u64,
    interval_ns: Option<u64>,
    /// Open loop: when this session's next message is due (ns since the epoch).
    next_due_ns: u64,
    /// Send time of each message in flight, indexed by token & mask.
    times: Box<[u64]>,
    mask: u64,
}

impl Sender {
    pub fn new(template: Vec<u8>, body_offset: usize, plan: &SessionPlan) -> Sender {
        // The session keeps recoverable messages until their recoverable ack, which may come
        // after the window has moved on; twice the window bounds what is in flight here.
        let ring = (usize::from(plan.window.max(1)) * 2).next_power_of_two();
        let stamp_offset = (plan.body_size >= STAMP_LEN).then_some(body_offset + 8);
        Sender {
            template,
            stamp_offset,
            recoverable: plan.recoverable,
            next_ordinal: 1,
            sent: 0,
            acked: 0,
            quota: plan.quota.unwrap_or(u64::MAX),
            interval_ns: plan.interval_ns,
            next_due_ns: 0,
            times: vec![0u64; ring].into_boxed_slice(),
            mask: ring as u64 - 1,
        }
    }

    /// Starts the open-loop schedule at `now_ns`.
    pub fn start(&mut self, now_ns: u64) {
        self.next_due_ns = now_ns;
    }

    pub fn done(&self) -> bool {
        self.sent >= self.quota && self.acked >= self.sent
    }

    /// Queues as many messages as the window, the ring, the quota and the schedule allow.
    /// Returns how many were queued. Does not allocate beyond the session's transmit buffer.
    pub fn fill(&mut self, session: &mut Session, now_ms: u64, now_ns: u64, unix_ns: u64) -> u64 {
        let mut n = 0;
        while self.sent < self.quota && self.sent - self.acked < self.times.len() as u64 {
            let stamp_ns = match self.interval_ns {
                // Open loop: latency counts from when the message was due, so a stall of the
                // peer shows up in every message it delayed (no coordinated omission).
                Some(_) => {
                    if self.next_due_ns > now_ns {
                        break;
                    }
                    self.next_due_ns
                }
                None => now_ns,
            };
            let ordinal = self.next_ordinal;
            self.template[MESSAGE_ID_OFFSET..MESSAGE_ID_OFFSET + 4]
                .copy_from_slice(&ordinal.to_le_bytes());
            if let Some(o) = self.stamp_offset {
                // The body stamp is wall-clock time so another process can read it; for an
                // open-loop message it is shifted back to when the message was due.
                let stamp = unix_ns.saturating_sub(now_ns.saturating_sub(stamp_ns));
                self.template[o..o + 8].copy_from_slice(&stamp.to_le_bytes());
            }
            let token = self.sent;
            match session.send_message(now_ms, &self.template, self.recoverable, token) {
                Ok(_) => {
                    self.times[(token & self.mask) as usize] = stamp_ns;
                    self.sent += 1;
                    self.next_ordinal = self.next_ordinal.wrapping_add(1).max(1);
                    if let Some(iv) = self.interval_ns {
                        self.next_due_ns += iv;
                    }
                    n += 1;
                }
                Err(_) => break,
            }
        }
        n
    }

    /// A message was acknowledged: returns its latency in ns.
    pub fn on_acked(&mut self, token: u64, now_ns: u64) -> u64 {
        self.acked += 1;
        now_ns.saturating_sub(self.times[(token & self.mask) as usize])
    }

    /// Open loop: the next time a message is due, if the session may send more.
    pub fn next_due_ns(&self) -> Option<u64> {
        (self.interval_ns.is_some() && self.sent < self.quota).then_some(self.next_due_ns)
    }
}

/// One bench connection.
#[derive(Debug)]
pub struct BenchConn {
    index: usize,
    id: Option<ConnId>,
    session: Session,
    framer: Framer,
    sender: Sender,
    established: bool,
    started: bool,
    done: bool,
}

/// The per-shard app.
pub struct BenchApp {
    shared: Arc<Shared>,
    to_connect: Vec<(SocketAddr, BenchConn)>,
    conns: Vec<ConnId>,
    ready: Vec<ConnId>,
    go_seen: bool,
    /// This shard has counted itself in `Shared::shards_stopped`.
    stop_seen: bool,
    hist: Histogram<u64>,
    last_publish_ms: u64,
    acked_unpublished: u64,
}

/// Builds the connection state of session `index` (template encoded once, here).
pub fn build_conn(index: usize, plan: &SessionPlan, now_ms: u64) -> anyhow::Result<BenchConn> {
    let own = Guid(*uuid::Uuid::new_v4().as_bytes());
    let (template, body_offset) = encode_template(own, plan)?;
    let cfg = SessionConfig {
        own_guid: own,
        window_size: plan.window,
        transmit_limit_bytes: TRANSMIT_BYTES_MAX,
        ..SessionConfig::default()
    };
    Ok(BenchConn {
        index,
        id: None,
        session: Session::initiator(cfg, Guid::NULL, now_ms),
        framer: Framer::new(),
        sender: Sender::new(template, body_offset, plan),
        established: false,
        started: false,
        done: false,
    })
}

impl BenchApp {
    /// An app for one shard that opens the given connections.
    pub fn new(shared: Arc<Shared>, mut to_connect: Vec<(SocketAddr, BenchConn)>) -> BenchApp {
        to_connect.reverse();
        BenchApp {
            shared,
            to_connect,
            conns: Vec::new(),
            ready: Vec::new(),
            go_seen: false,
            stop_seen: false,
            hist: new_histogram(),
            last_publish_ms: crate::engine::net::now_ms(),
            acked_unpublished: 0,
        }
    }

    fn publish(&mut self) {
        let s = &self.shared;
        if self.acked_unpublished > 0 {
            s.acked.fetch_add(self.acked_unpublished, Ordering::Relaxed);
            self.acked_unpublished = 0;
        }
        if !self.hist.is_empty() {
            for h in [&s.interval, &s.total] {
                let mut g = h.lock().unwrap_or_else(|p| p.into_inner());
                // Same bounds on both sides: adding cannot fail.
                let _ = g.add(&self.hist);
            }
            self.hist.reset();
        }
    }

    fn drain_events(&mut self, conn: &mut BenchConn) {
        let now_ns = self.shared.now_ns();
        while let Some(ev) = conn.session.poll_event() {
            match ev {
                Event::Acked { token } => {
                    let ns = conn.sender.on_acked(token, now_ns);
                    self.hist.saturating_record(ns.max(1));
                    self.acked_unpublished += 1;
                }
                Event::Established { .. } => {
                    conn.established = true;
                    self.shared.sessions_open.fetch_add(1, Ordering::Relaxed);
                }
                Event::Closed(reason) => {
                    let mut e = self.shared.errors.lock().unwrap_or_else(|p| p.into_inner());
                    e.push(format!("session {}: {}", conn.index, reason.describe()));
                }
            }
        }
        if !conn.done && conn.sender.done() {
            conn.done = true;
            self.shared.sessions_done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl App for BenchApp {
    type Conn = BenchConn;

    fn accept(
        &mut self,
        _now_ms: u64,
        _id: ConnId,
        _peer: SocketAddr,
        _listener: Listener,
    ) -> Option<BenchConn> {
        // The bench listens on nothing.
        None
    }

    fn on_recv(&mut self, now_ms: u64, conn: &mut BenchConn, bytes: &[u8]) -> Result<(), AppError> {
        let session = &mut conn.session;
        let r = conn.framer.feed(bytes, |frame| {
            match session.handle_frame(now_ms, frame) {
                // A message from the peer (an OrderAck, a NACK) is taken as handled at once.
                Ok(Inbound::Message {
                    rec_seq: Some(r), ..
                }) => session.handle_durable(now_ms, r),
                Ok(_) => {}
                // The session queued its goodbye; `wants_close` ends the connection.
                Err(_) => {}
            }
            Ok::<(), ()>(())
        });
        self.drain_events(conn);
        r.map_err(|_| AppError(1))
    }

    fn poll_transmit(&mut self, now_ms: u64, conn: &mut BenchConn, buf: &mut Vec<u8>) {
        let shared = &self.shared;
        if conn.established && shared.go.load(Ordering::Relaxed) {
            let now_ns = shared.now_ns();
            if !conn.started {
                conn.started = true;
                conn.sender.start(now_ns);
            }
            if !shared.stop.load(Ordering::Relaxed) {
                let n = conn
                    .sender
                    .fill(&mut conn.session, now_ms, now_ns, unix_ns());
                // Published at once (one atomic add per batch), so the controller never sees
                // everything acknowledged while a batch it does not know of is in flight.
                if n > 0 {
                    shared.sent.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
        conn.session.flush_acks();
        if conn.session.has_transmit() {
            let spare = std::mem::take(buf);
            *buf = conn.session.take_transmit(spare);
        }
        self.drain_events(conn);
    }

    fn deadline(&self, conn: &BenchConn) -> Option<u64> {
        let session = conn.session.poll_timeout();
        let due = if conn.started && !self.shared.stop.load(Ordering::Relaxed) {
            // Rounded down: the engine's deadlines are in milliseconds, so within the last
            // millisecond before a message is due the shard polls without sleeping (it has its
            // own core), and the message leaves within microseconds of when it is due rather
            // than at the next millisecond tick.
            conn.sender
                .next_due_ns()
                .map(|ns| self.shared.epoch_engine_ms + ns / 1_000_000)
        } else {
            None
        };
        match (session, due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timeout(&mut self, now_ms: u64, conn: &mut BenchConn) {
        conn.session.handle_timeout(now_ms);
        self.drain_events(conn);
    }

    fn wants_close(&self, conn: &BenchConn) -> bool {
        conn.session.is_closed()
    }

    fn on_closed(&mut self, _now_ms: u64, conn: BenchConn, reason: NetClose) {
        self.shared.sessions_closed.fetch_add(1, Ordering::Relaxed);
        if !matches!(reason, NetClose::Shutdown) && !conn.session.is_closed() {
            let mut e = self.shared.errors.lock().unwrap_or_else(|p| p.into_inner());
            e.push(format!(
                "session {}: connection closed: {reason:?}",
                conn.index
            ));
        }
        if let Some(id) = conn.id {
            self.conns.retain(|c| *c != id);
        }
        self.publish();
    }

    fn end_of_turn(&mut self, now_ms: u64) {
        if !self.stop_seen && self.shared.stop.load(Ordering::Acquire) {
            // Every `poll_transmit` of this shard from now on reads `stop` as set, and every
            // message it queued before is in `sent` already: the controller's drain may trust
            // `sent` once every shard said so (Release: with those counts).
            self.stop_seen = true;
            self.shared.shards_stopped.fetch_add(1, Ordering::Release);
        }
        if !self.go_seen && self.shared.go.load(Ordering::Relaxed) {
            // The controller woke us: every open session starts sending now.
            self.go_seen = true;
            self.ready.extend_from_slice(&self.conns);
        }
        if now_ms >= self.last_publish_ms + PUBLISH_INTERVAL_MS || self.acked_unpublished > 0 {
            // Counters are cheap to publish every turn; the histogram only every interval.
            let s = &self.shared;
            s.acked.fetch_add(self.acked_unpublished, Ordering::Relaxed);
            self.acked_unpublished = 0;
            if now_ms >= self.last_publish_ms + PUBLISH_INTERVAL_MS {
                self.last_publish_ms = now_ms;
                self.publish();
            }
        }
    }

    fn poll_connect(&mut self, _now_ms: u64) -> Option<(SocketAddr, BenchConn)> {
        self.to_connect.pop()
    }

    fn on_connected(&mut self, _now_ms: u64, id: ConnId, conn: &mut BenchConn) {
        conn.id = Some(id);
        self.conns.push(id);
    }

    fn poll_ready(&mut self) -> Option<ConnId> {
        self.ready.pop()
    }
}
