//! The MSMQ server on the engine: one [`MsmqApp`] per shard joins the engine's connections to
//! MS-MQQB sessions and the queue manager. Bytes arrive zero-copy from the engine's receive
//! buffers, are framed and parsed in place, and each UserMessage goes to the broker, which
//! appends it to the store partition that owns its queue. Once per loop turn the shard starts a
//! group commit of every partition it appended to (one fdatasync per partition for every
//! message of every session of the shard) and goes on without waiting: the commit's completion
//! wakes the partition's owning shard through its eventfd, the owner wakes any other shard
//! waiting for that partition, and only then do the sessions acknowledge their recoverable
//! messages.
//!
//! This module decides nothing about the protocol (that is `session/` and `qm/`) and knows
//! nothing of io_uring (that is `engine/`).
//!
//! This file is the adapter: the types (`MsmqConn`, `MsmqApp`, `Shared`, the counters),
//! `handle_frame` and the `App` impl. Each subject of the app has its file in `server/`: the
//! mail between shards (`mail.rs`), acknowledgements (`acks.rs`), commits and expiry
//! (`commits.rs`), the request desk (`desk.rs`), the outgoing queues (`outgoing.rs`, and
//! `srmp_conn.rs` for HTTP) and reassembly accounting (`reassembly.rs`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::engine::net::{App, AppError, CloseReason as NetClose, ConnId};
use crate::qm::broker::{AckSource, Broker, Verdict};
use crate::qm::handoff::{Mail, StoreKind};
use crate::qm::order_acks::OrderAcks;
use crate::qm::outgoing_queue::OutQueue;
use crate::session::{Event, FrameError, Framer, Inbound, Session, SessionConfig};
use crate::store::{QueueStore, Ticket};
use crate::wire::Guid;
use mail::Handoff;

/// AppError codes this module closes connections with.
pub mod close_code {
    /// A packet failed to parse or arrived in the wrong state.
    pub const PROTOCOL: u32 = 1;
    /// The store refused a message (poisoned, disk full, machine quota).
    pub const STORE: u32 = 2;
    /// An administrator paused the outgoing queue this session carried.
    pub const PAUSED: u32 = 3;
}

/// Acknowledgements: durability, OrderAcks, the admin acks and FinalAcks a receive owes.
mod acks;
/// Group commits, the watch on other shards' partitions, expiry.
mod commits;
/// The request desk: the HTTP API's and SRMP's requests, and the records they owe.
mod desk;
/// The mail between shards: hand-offs, placements, records, OrderAcks and FinalAcks passed on.
mod mail;
/// The outgoing queues a shard sends: connections, resolutions, resends, the session window.
mod outgoing;
/// Reassembly accounting: partial packets against the session's and the shard's budgets.
mod reassembly;
/// Outgoing HTTP (SRMP) connections: the glue to `qm::srmp_out`.
mod srmp_conn;

/// Server-wide counters, shared by all shards (for metrics).
#[derive(Debug, Default)]
pub struct ServerCounters {
    pub sessions_accepted: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub sessions_established: AtomicU64,
    pub sessions_closed_protocol: AtomicU64,
    pub sessions_closed_other: AtomicU64,
    /// Sessions closed to free the shard's reassembly budget (oldest partial packet first).
    pub sessions_dropped_reassembly: AtomicU64,
    pub messages_in: AtomicU64,
    pub acks_out: AtomicU64,
    pub order_acks_out: AtomicU64,
    pub commits: AtomicU64,
    /// Messages handed to the shard owning their queue.
    pub handoffs: AtomicU64,
    /// Sessions closed because this shard's backlog of hand-offs was full.
    pub handoff_backlog_full: AtomicU64,
    /// Records (dead letters, admin acknowledgements) a shard sent to the shard running
    /// their queue's partition (`Mail::Store`) instead of storing them there itself.
    pub records_mailed: AtomicU64,
}

/// What every shard shares.
#[derive(Debug)]
pub struct Shared<S> {
    pub broker: Arc<Broker<S>>,
    pub counters: ServerCounters,
    /// Incoming sessions open now, across shards (for `MaxInSessions`).
    pub sessions_in: AtomicU32,
    pub session_config: SessionConfig,
    /// Shards running the engine. Shard `s` runs every store partition `p` with
    /// `p % shards == s` (a data directory can have more partitions than there are cores now).
    pub shards: usize,
}

impl<S> Shared<S> {
    /// One shard per store partition.
    pub fn new(broker: Arc<Broker<S>>) -> Self
    where
        S: QueueStore,
    {
        let n = broker.partition_count();
        Self::with_shards(broker, n)
    }

    /// `shards` shards over the broker's partitions.
    pub fn with_shards(broker: Arc<Broker<S>>, shards: usize) -> Self
    where
        S: QueueStore,
    {
        let p = &broker.config.parameters;
        let session_config = SessionConfig {
            own_guid: broker.guid(),
            window_size: p.MaxUnackedPacket,
            ack_timeout_ms: p.AckTimeout,
            init_timeout_ms: broker.config.session_init_timeout_ms(),
            cleanup_interval_ms: u64::from(p.CleanupInterval),
            ack_wait_multiplier: 1,
            refuse: false,
            transmit_limit_bytes: broker.config.limits.session_transmit_bytes_max,
        };
        Shared {
            broker,
            counters: ServerCounters::default(),
            sessions_in: AtomicU32::new(0),
            session_config,
            shards: shards.max(1),
        }
    }
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct MsmqConn {
    id: ConnId,
    peer: SocketAddr,
    session: Session,
    framer: Framer,
    /// Recoverable messages not yet durable, in arrival order. A duplicate waits for its first
    /// copy, wherever that was stored; a message handed to its queue's owner waits for the
    /// owner's answer first.
    pending_durable: VecDeque<Pending>,
    /// OrderAck state per (sender, queue) of the transactional messages on this session.
    order_acks: OrderAcks,
    /// Set when any received message used a direct format name (MS-MQQB 3.1.7.17).
    direct_format: bool,
    incoming: bool,
    established: bool,
    /// Whether this incoming session took a MaxInSessions slot (at its EstablishConnection).
    counted: bool,
    /// For sessions we opened: the outgoing queue (store queue id) they carry.
    outgoing: Option<u32>,
    /// For an outgoing queue sent over HTTP: the SRMP connection (the MS-MQQB `session` is
    /// then unused; see `srmp_conn`).
    http: Option<Box<crate::qm::srmp_out::HttpOut>>,
    /// The app's turn in which this connection was put on its `waiting` list (so the check is
    /// O(1) per message, not a search of every waiting session).
    waiting_turn: Option<u64>,
}

/// A recoverable message of a session, waiting to be acknowledged (cumulatively, in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// Stored (or its first copy stored) at `ticket` of partition `partition`.
    At {
        partition: usize,
        ticket: Ticket,
        rec: u16,
    },
    /// Handed to the shard that owns its queue (`qm::handoff`), not answered yet; the session
    /// holds its SessionAcks until it is (`Session::hold`). `rec` for a recoverable message.
    Handed { seq: u64, rec: Option<u16> },
    /// The owner's store refused it: never acknowledged (the session is closing).
    Refused,
    /// An express message the owner took (removed at once; never waits).
    Placed,
}

/// The per-shard app.
pub struct MsmqApp<S> {
    shared: Arc<Shared<S>>,
    shard: usize,
    /// The store partitions this shard runs (commits every turn, expires, sends the outgoing
    /// queues of): every `p` with `p % shards == shard`.
    owned: Vec<usize>,
    /// Per partition: the highest ticket this shard appended there or waits for there and that
    /// is not durable yet, if any; each end of turn commits (without waiting) every partition
    /// with one, and forgets it once durable.
    awaiting: Vec<Option<Ticket>>,
    /// Connections with recoverable messages waiting for the disk (each once per turn).
    waiting: Vec<ConnId>,
    /// Counts loop turns; `waiting` is emptied into `ready` at the end of each.
    turn: u64,
    ready: Vec<ConnId>,
    /// Per partition: the durable watermark after this shard's last commit of it.
    durable: Vec<Ticket>,
    /// False once a commit failed for good: the store is poisoned and nothing more becomes
    /// durable; sessions waiting for it are closed.
    commit_ok: bool,
    /// When a transient commit failure was last logged.
    commit_error_logged_ms: u64,
    /// When the per-session OrderAck bound was last logged.
    order_ack_cap_logged_ms: u64,
    /// The outgoing queues this shard sends, by store queue id.
    out: HashMap<u32, OutQueue<ConnId>>,
    /// The status of each outgoing queue last published to the broker (for the API).
    published: HashMap<u32, crate::qm::outgoing_queue::OutStatus>,
    /// Name resolutions running on helper threads, by outgoing queue id.
    resolving: HashMap<u32, std::sync::mpsc::Receiver<std::io::Result<SocketAddr>>>,
    /// Connections to open: (address, outgoing queue id).
    connects: VecDeque<(SocketAddr, u32)>,
    now_ms: u64,
    /// Admin acknowledgements owed for frames received this turn.
    admin_acks: Vec<(Vec<u8>, crate::wire::headers::MessageClass)>,
    /// OrderAcks and FinalAcks for our own sends received this turn, with the session each
    /// came on.
    tx_acks: Vec<(Vec<u8>, AckSource)>,
    /// Negative FinalAcks owed for transactional messages refused at arrival this turn, with
    /// the sender's address when the session is ours.
    final_acks: Vec<crate::qm::broker::Owed>,
    /// The transactional resend intervals, ms (SeqResend13Time ... SeqResend10Time).
    resend_ms: [u64; 10],
    /// Bytes held in the framers of this shard's sessions.
    reassembly_bytes: usize,
    /// Sessions holding part of a packet: since when (ms) and how many bytes.
    partials: HashMap<ConnId, (u64, usize)>,
    /// Sessions dropped to free the reassembly budget, until their close completes.
    evicted: std::collections::HashSet<ConnId>,
    /// Closes for the engine to carry out (see `App::poll_close`).
    closes: Vec<(ConnId, u32)>,
    next_expiry_ms: u64,
    /// When a transiently failed commit is tried again (the shard may have no IO to wake it).
    commit_retry_at: Option<u64>,
    /// Shard 0 summarises rate-limited log lines (of every thread) at this time.
    next_log_flush_ms: u64,
    /// False when this shard's eventfd could not be registered on its partitions' store rings:
    /// it then looks for completed commits every millisecond while it waits for one. (Apps
    /// driven by tests and the simulation are woken by their driver.)
    commits_notify: bool,
    /// Set when this shard runs beside others (`lior serve` on several cores): messages for
    /// queues another shard owns go there over the mesh. Without it (tests driving one app),
    /// every message is stored from this shard under the owner partition's lock.
    handoff: Option<Handoff>,
    /// Set by `join_mesh`: this shard stores only into the partitions it runs.
    meshed: bool,
    /// Partitions this shard appended to this turn (it commits them at the end of it).
    appended: Vec<bool>,
    /// This shard's destinations already resolved (its own: no lock on the message path).
    routes: crate::qm::broker::RouteCache,
    /// Per partition: expired messages wait for their dead-letter copies to be durable.
    expiry_waits: Vec<bool>,
    /// The requests of the HTTP API and SRMP for the queues this shard owns (`lior serve`;
    /// apps driven by tests have none).
    desk: Option<crate::qm::requests::Desk<S>>,
    /// The `sendReceiptsTo` of the stream messages this queue manager sends over SRMP.
    srmp_receipts_to: Option<String>,
    /// The client TLS configuration of SRMP over HTTPS, or why there is none.
    srmp_tls: Result<Arc<rustls::ClientConfig>, String>,
    /// Branch amqpown: mail for this shard's AMQP app (`Mail::Amqp*`, and `Mail::Placed`
    /// answering a request of it: `AMQP_REPLY_BIT`), as (from, head, body); `ShardApp` hands
    /// it over after each end of turn.
    pub amqp_inbox: Vec<(usize, Vec<u8>, Vec<u8>)>,
}

/// How often a shard looks whether the dead-letter copies of expired messages are durable
/// (only while some wait; the copies may be another shard's partition, which does not wake
/// this one).
pub const EXPIRY_SETTLE_POLL_MS: u64 = 5;

/// How often a shard looks for messages whose TimeToBeReceived passed.
pub const EXPIRY_SCAN_INTERVAL_MS: u64 = 5_000;

/// How soon a transiently failed commit is tried again.
pub const COMMIT_RETRY_MS: u64 = 10;

/// How often a name resolution running on a helper thread is looked at.
pub const RESOLVE_POLL_MS: u64 = 20;

/// How often shard 0 writes the summary of rate-limited log lines (`ratelog`).
pub const LOG_FLUSH_INTERVAL_MS: u64 = 1_000;

/// Transient commit failures are logged at most once per this interval.
pub const COMMIT_ERROR_LOG_INTERVAL_MS: u64 = 10_000;

/// Admin acknowledgements one shard builds per loop turn at most (a bound on the copies kept).
pub const ADMIN_ACKS_PER_TURN_MAX: usize = 4_096;

impl<S: QueueStore> MsmqApp<S> {
    pub fn new(shared: Arc<Shared<S>>, shard: usize) -> Self {
        let partitions = shared.broker.partition_count();
        let resend_ms = shared
            .broker
            .config
            .resend_schedule_s()
            .map(|s| u64::from(s) * 1000);
        let shards = shared.shards;
        let owned = (0..partitions).filter(|p| p % shards == shard).collect();
        let srmp_receipts_to = crate::qm::srmp_out::receipts_uri(&shared.broker.config);
        let srmp_tls = crate::qm::srmp_out::client_tls(&shared.broker.config);
        MsmqApp {
            resend_ms,
            shared,
            shard,
            owned,
            awaiting: vec![None; partitions],
            waiting: Vec::new(),
            turn: 0,
            ready: Vec::new(),
            durable: vec![Ticket(0); partitions],
            commit_ok: true,
            commit_error_logged_ms: 0,
            order_ack_cap_logged_ms: 0,
            out: HashMap::new(),
            resolving: HashMap::new(),
            published: HashMap::new(),
            connects: VecDeque::new(),
            now_ms: 0,
            admin_acks: Vec::new(),
            tx_acks: Vec::new(),
            final_acks: Vec::new(),
            next_expiry_ms: 0,
            commit_retry_at: None,
            next_log_flush_ms: 0,
            commits_notify: true,
            reassembly_bytes: 0,
            partials: HashMap::new(),
            evicted: std::collections::HashSet::new(),
            closes: Vec::new(),
            handoff: None,
            meshed: false,
            appended: vec![false; partitions],
            routes: crate::qm::broker::RouteCache::default(),
            expiry_waits: vec![false; partitions],
            desk: None,
            srmp_receipts_to,
            srmp_tls,
            amqp_inbox: Vec::new(),
        }
    }
}

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

impl<S> MsmqApp<S> {
    /// Puts `conn` on this turn's list of connections waiting for the disk, once.
    fn mark_waiting(&mut self, conn: &mut MsmqConn) {
        if conn.waiting_turn != Some(self.turn) {
            conn.waiting_turn = Some(self.turn);
            self.waiting.push(conn.id);
        }
    }
}

impl<S: QueueStore> MsmqApp<S> {
    /// Processes one frame; Err closes the connection at once.
    fn handle_frame(&mut self, now_ms: u64, conn: &mut MsmqConn, frame: &[u8]) -> Result<(), u32> {
        if conn.incoming && !conn.counted && conn.session.awaits_establish() {
            self.take_session_slot(conn);
        }
        let inbound = match conn.session.handle_frame(now_ms, frame) {
            Ok(i) => i,
            // The session queued its own goodbye (a refusal reply) if it has one; `wants_close`
            // closes once it is sent.
            Err(_) => return Ok(()),
        };
        let Inbound::Message { msg, rec_seq, .. } = inbound else {
            return Ok(());
        };
        self.shared
            .counters
            .messages_in
            .fetch_add(1, Ordering::Relaxed);
        if msg.user.destination.code() == 7 {
            conn.direct_format = true;
        }
        // Routed once: to find the shard that stores it, and to store it here if that is us.
        let routed = self.shared.broker.route_incoming(&mut self.routes, &msg);
        if crate::qm::broker::wants_final_ack(&msg) {
            // Where its FinalAck goes: noted by the partition that stores it.
            if let Some(p) = self.shared.broker.route_partition(&routed, &msg) {
                self.note_final_ack_peer(p, msg.user.source_queue_manager, conn.peer.ip());
            }
        }
        if let Some(to) = self.handoff_target(&routed, &msg) {
            let now_unix = unix_now();
            return self.hand_off(conn, to, rec_seq, |reply| Mail::Deliver {
                reply,
                now_unix,
                frame,
            });
        }
        // Stored in the partition owning the queue (locked by the broker for this message only).
        let here = self.here();
        let d =
            self.shared
                .broker
                .deliver_routed_here(routed, frame, &msg, unix_now(), now_ms, &here);
        let own = d.partition;
        let wait_for = match d.verdict {
            Verdict::Forwarded { queue, .. } => {
                // A dead letter for another shard's dead-letter queue: that shard stores it and
                // answers this session, which acknowledges it once it is durable there.
                if let Some(class) = d.admin_ack {
                    self.owe_admin_ack(frame, class);
                }
                if let Some(class) = d.final_nack(&msg) {
                    if self.final_acks.len() < ADMIN_ACKS_PER_TURN_MAX {
                        self.final_acks.push(crate::qm::broker::Owed::FinalAck {
                            frame: frame.to_vec(),
                            class,
                            partition: own,
                            peer: Some(conn.peer.ip()),
                        });
                    }
                }
                let Some(record) = d.forward else {
                    return Err(close_code::STORE);
                };
                let to = own % self.shared.shards;
                self.hand_off(conn, to, rec_seq, |reply| Mail::Store {
                    reply: Some(reply),
                    kind: StoreKind::DeadLetter,
                    queue,
                    partition: own as u32,
                    now_unix: unix_now(),
                    frame: &record,
                })?;
                self.shared
                    .counters
                    .records_mailed
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Verdict::Stored { ticket, .. } | Verdict::DeadLettered { ticket, .. } => {
                if let Some(a) = self.appended.get_mut(own) {
                    *a = true;
                }
                (own, ticket)
            }
            Verdict::Refuse(e) => {
                tracing::error!(peer = %conn.peer, error = %e, "cannot store a message; closing the session so the sender keeps it");
                return Err(close_code::STORE);
            }
            // A duplicate is acknowledged only once its first copy is durable.
            Verdict::Duplicate { origin } | Verdict::TxRejected { origin } => origin,
            Verdict::TxAck => {
                // Handled after the frames of this receive (it locks partitions).
                if self.tx_acks.len() < ADMIN_ACKS_PER_TURN_MAX {
                    let from = AckSource {
                        remote_qm: conn.session.remote_qm(),
                        ip: conn.peer.ip(),
                        outgoing: conn.outgoing,
                    };
                    self.tx_acks.push((frame.to_vec(), from));
                }
                (own, Ticket::IMMEDIATE)
            }
        };
        if let Some(class) = d.admin_ack {
            self.owe_admin_ack(frame, class);
        }
        if let Some(class) = d.final_nack(&msg) {
            if self.final_acks.len() < ADMIN_ACKS_PER_TURN_MAX {
                self.final_acks.push(crate::qm::broker::Owed::FinalAck {
                    frame: frame.to_vec(),
                    class,
                    partition: own,
                    peer: Some(conn.peer.ip()),
                });
            }
        }
        if let Some((key, state)) = d.order_ack {
            self.accept_order_ack(now_ms, conn, key, state);
        }
        if let Some(rec) = rec_seq {
            let (p, t) = wait_for;
            if t == Ticket::IMMEDIATE && conn.pending_durable.is_empty() {
                // Nothing to wait for, and nothing earlier on this session waits either
                // (durability is acknowledged cumulatively).
                conn.session.handle_durable(now_ms, rec);
            } else {
                conn.pending_durable.push_back(Pending::At {
                    partition: p,
                    ticket: t,
                    rec,
                });
                self.await_ticket(p, t);
                self.mark_waiting(conn);
            }
        }
        Ok(())
    }

    /// A fresh MessageIdOrdinal, from this thread's lease (`qm::identity::OrdinalLeases`).
    fn next_ordinal(&mut self) -> u32 {
        self.shared.broker.next_ordinal()
    }

    /// An incoming session takes one of the MaxInSessions slots when its first packet (the
    /// EstablishConnection) arrives, not when TCP accepts it: a connection that never speaks
    /// holds no slot (it only lives `limits.handshake_timeout_ms`), so silent connections cannot
    /// lock real senders out. Past MaxInSessions the EstablishConnection is answered with CS=1,
    /// as Windows does, and the connection closes once the answer is sent.
    fn take_session_slot(&mut self, conn: &mut MsmqConn) {
        let max = self.shared.broker.config.parameters.MaxInSessions;
        let n = self.shared.sessions_in.fetch_add(1, Ordering::Relaxed);
        conn.counted = true;
        let refuse = n >= max;
        conn.session.refuse_next_establish(refuse);
        if refuse {
            self.shared
                .counters
                .sessions_refused
                .fetch_add(1, Ordering::Relaxed);
            if crate::ratelog::REFUSED.allow() {
                tracing::warn!(peer = %conn.peer, max, "MaxInSessions reached; refusing the session");
            }
        } else {
            self.shared
                .counters
                .sessions_accepted
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The partitions this shard stores into itself: those it runs, or every one for an app
    /// driven alone (tests), which stores anywhere under the partitions' locks.
    fn here(&self) -> impl Fn(usize) -> bool {
        // Not `handoff.is_some()`: `take_mail` holds the handoff while it places mail.
        let (shard, shards, meshed) = (self.shard, self.shared.shards, self.meshed);
        move |p| !meshed || p % shards == shard
    }

    fn drain_events(&mut self, conn: &mut MsmqConn) {
        while let Some(ev) = conn.session.poll_event() {
            match ev {
                Event::Established {
                    remote_qm,
                    peer_window,
                } => {
                    conn.established = true;
                    if let Some(q) = conn.outgoing.and_then(|q| self.out.get_mut(&q)) {
                        q.handle_established(conn.id);
                        self.shared
                            .broker
                            .note_outgoing_peer(q.def.id, remote_qm, conn.peer.ip());
                    }
                    self.shared
                        .counters
                        .sessions_established
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(peer = %conn.peer, %remote_qm, peer_window, "session established");
                }
                Event::Acked { token } => {
                    if let Some(q) = conn.outgoing {
                        self.outgoing_acked(q, token);
                    }
                }
                Event::Closed(reason) => {
                    tracing::info!(peer = %conn.peer, reason = %reason.describe(), "session closing");
                    let c = match reason {
                        crate::session::CloseReason::Malformed(_)
                        | crate::session::CloseReason::Unexpected { .. }
                        | crate::session::CloseReason::CountMismatch => {
                            &self.shared.counters.sessions_closed_protocol
                        }
                        _ => &self.shared.counters.sessions_closed_other,
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// (outown) The message of a debug assertion: every outgoing queue a shard sends is stored in a
/// partition that shard runs (`MsmqApp::out` is filled from `Broker::outgoing_for(owned)`), so
/// its partition is touched by its owner's thread only.
fn not_run_here(shard: usize, p: usize) -> String {
    format!("shard {shard} touches partition {p} of an outgoing queue it does not run")
}

/// The engine listener MS-MQQB connections arrive on (`daemon.rs` tags the addresses; AMQP's is
/// [`crate::amqp::AMQP_LISTENER`]). Until the AMQP app is served, a connection on any other
/// listener is refused here.
pub const MSMQ_LISTENER: crate::engine::net::Listener = crate::engine::net::Listener(0);

impl<S: QueueStore> App for MsmqApp<S> {
    type Conn = MsmqConn;

    fn accept(
        &mut self,
        now_ms: u64,
        id: ConnId,
        peer: SocketAddr,
        listener: crate::engine::net::Listener,
    ) -> Option<MsmqConn> {
        if listener != MSMQ_LISTENER {
            // `ShardApp` routes AMQP connections to the AMQP app; this app serves MS-MQQB only.
            tracing::debug!(%peer, %listener, "not an MS-MQQB listener: refused");
            return None;
        }
        let mut cfg = self.shared.session_config.clone();
        // A connection that does not finish its handshake soon holds a descriptor for nothing:
        // incoming sessions get limits.handshake_timeout_ms, not the 60 s Session
        // Initialization Timer. Its MaxInSessions slot is taken when its EstablishConnection
        // arrives (`take_session_slot`).
        cfg.init_timeout_ms = self.shared.broker.config.incoming_handshake_timeout_ms();
        Some(MsmqConn {
            id,
            peer,
            session: Session::acceptor(cfg, now_ms),
            framer: Framer::new(),
            pending_durable: VecDeque::new(),
            order_acks: OrderAcks::default(),
            direct_format: false,
            incoming: true,
            counted: false,
            established: false,
            outgoing: None,
            http: None,
            waiting_turn: None,
        })
    }

    fn on_recv(&mut self, now_ms: u64, conn: &mut MsmqConn, bytes: &[u8]) -> Result<(), AppError> {
        if conn.http.is_some() {
            return self.http_recv(conn, bytes);
        }
        if self.evicted.contains(&conn.id) {
            // Dropped for the reassembly budget; its close is under way.
            return Err(AppError(close_code::PROTOCOL));
        }
        let mut framer = std::mem::take(&mut conn.framer);
        let r = framer.feed(bytes, |frame| self.handle_frame(now_ms, conn, frame));
        let after = framer.buffered();
        conn.framer = framer;
        if let Err(code) = self.account_reassembly(now_ms, conn, after) {
            return Err(AppError(code));
        }
        self.send_owed_acks(now_ms);
        self.drain_events(conn);
        match r {
            Ok(()) => Ok(()),
            Err(FrameError::Wire(e)) => {
                if crate::ratelog::MALFORMED.allow() {
                    tracing::warn!(peer = %conn.peer, error = %e, "malformed packet; closing the session");
                }
                self.shared
                    .counters
                    .sessions_closed_protocol
                    .fetch_add(1, Ordering::Relaxed);
                Err(AppError(close_code::PROTOCOL))
            }
            Err(FrameError::Handler(code)) => Err(AppError(code)),
        }
    }

    fn poll_transmit(&mut self, now_ms: u64, conn: &mut MsmqConn, buf: &mut Vec<u8>) {
        if conn.http.is_some() {
            return self.http_transmit(now_ms, conn, buf);
        }
        self.apply_durability(now_ms, conn);
        if !self.commit_ok && !conn.pending_durable.is_empty() && !conn.session.is_closed() {
            // Nothing more becomes durable here: the sender keeps its messages only if the
            // session ends without acknowledging them.
            tracing::warn!(peer = %conn.peer, waiting = conn.pending_durable.len(), "store poisoned; closing a session with unacknowledged recoverable messages");
            conn.session.close_local();
        }
        if !conn.order_acks.is_empty() {
            self.send_order_acks(now_ms, conn);
        }
        if let Some(q) = conn.outgoing {
            self.fill_window(now_ms, conn, q);
        }
        let before = conn.session.counters().acks_sent;
        conn.session.flush_acks();
        let sent = conn.session.counters().acks_sent - before;
        if sent > 0 {
            self.shared
                .counters
                .acks_out
                .fetch_add(sent, Ordering::Relaxed);
        }
        if conn.session.has_transmit() {
            let spare = std::mem::take(buf);
            *buf = conn.session.take_transmit(spare);
        }
        if !conn.pending_durable.is_empty() {
            self.mark_waiting(conn);
        }
        self.drain_events(conn);
    }

    fn deadline(&self, conn: &MsmqConn) -> Option<u64> {
        if let Some(h) = &conn.http {
            return h.deadline();
        }
        let order = conn.order_acks.deadline();
        match (conn.session.poll_timeout(), order) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timeout(&mut self, now_ms: u64, conn: &mut MsmqConn) {
        if let Some(h) = conn.http.as_deref_mut() {
            return h.on_timeout(now_ms);
        }
        conn.session.handle_timeout(now_ms);
        self.send_order_acks(now_ms, conn);
        conn.order_acks.prune();
        self.drain_events(conn);
    }

    fn wants_close(&self, conn: &MsmqConn) -> bool {
        if let Some(h) = &conn.http {
            return h.wants_close();
        }
        conn.session.is_closed()
    }

    fn on_closed(&mut self, now_ms: u64, mut conn: MsmqConn, reason: NetClose) {
        let http_error = if conn.http.is_some() {
            Some(self.http_closed(&mut conn))
        } else {
            None
        };
        if let Some((_, held)) = self.partials.remove(&conn.id) {
            self.reassembly_bytes = self.reassembly_bytes.saturating_sub(held);
        }
        self.evicted.remove(&conn.id);
        if let Some(h) = self.handoff.as_mut() {
            // Answers still to come for this session are dropped when they arrive.
            for e in &conn.pending_durable {
                if let Pending::Handed { seq, .. } = e {
                    h.handed.remove(seq);
                    h.placed.remove(seq);
                }
            }
        }
        if conn.counted {
            self.shared.sessions_in.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(q) = conn.outgoing.and_then(|q| self.out.get_mut(&q)) {
            let retry = u64::from(self.shared.broker.config.parameters.TryConnectInterval);
            if let Some(why) = http_error {
                if let Some(why) = why.filter(|_| !q.def.paused) {
                    q.note_error(format!("{why} ({reason:?})"));
                }
            } else if !q.def.paused {
                q.note_error(if conn.established {
                    format!("session to {} closed: {reason:?}", conn.peer)
                } else {
                    format!("cannot connect to {}: {reason:?}", conn.peer)
                });
            }
            q.handle_closed(now_ms, retry);
            tracing::info!(destination = %q.def.key, ?reason, retry_ms = retry, "outgoing session closed");
        }
        tracing::info!(
            peer = %conn.peer,
            ?reason,
            established = conn.established,
            remote_qm = %conn.session.remote_qm(),
            "connection closed"
        );
    }

    fn end_of_turn(&mut self, now_ms: u64) {
        self.take_mail(now_ms);
        self.send_owed_acks(now_ms);
        self.serve_requests(now_ms);
        for p in 0..self.awaiting.len() {
            // The shard's own partitions are committed every turn (completions, releases,
            // maintenance), and any other it appended to this turn (a dead letter, an admin
            // acknowledgement); one it only waits for is watched, not locked.
            let appended = std::mem::take(&mut self.appended[p]);
            if p % self.shared.shards == self.shard || appended {
                self.commit_partition(now_ms, p);
                if appended && p % self.shared.shards != self.shard {
                    // Something landed in another shard's partition (a dead letter, an admin
                    // acknowledgement): its owner looks at the receives it keeps waiting.
                    self.shared.broker.wake(p % self.shared.shards);
                }
            } else if self.awaiting[p].is_some() {
                self.watch_partition(p);
            }
        }
        if let Some(desk) = self.desk.as_mut() {
            if self.commit_ok {
                desk.settle();
            } else {
                desk.fail_owed();
            }
        }
        if let Some(h) = self.handoff.as_mut() {
            h.drain_outbox();
            h.port.flush();
        }
        for p in 0..self.expiry_waits.len() {
            if self.expiry_waits[p] {
                self.expiry_waits[p] = self.shared.broker.settle_expiry_here(p).1;
                self.owe_expiry_nacks(p);
            }
        }
        self.ready.append(&mut self.waiting);
        self.turn += 1;
        self.now_ms = now_ms;
        self.manage_outgoing(now_ms);
        if now_ms >= self.next_expiry_ms {
            self.next_expiry_ms = now_ms + EXPIRY_SCAN_INTERVAL_MS;
            for p in self.owned.clone() {
                self.expiry_waits[p] = self.expire(p);
                self.owe_expiry_nacks(p);
                self.shared.broker.clean_duplicates(p, now_ms);
                self.shared.broker.sweep_txn(p, unix_now());
            }
        }
        if let Some(h) = self.handoff.as_mut() {
            // Copies of expired messages mailed just now.
            h.drain_outbox();
            h.port.flush();
        }
        if self.shard == 0 && now_ms >= self.next_log_flush_ms {
            self.next_log_flush_ms = now_ms + LOG_FLUSH_INTERVAL_MS;
            crate::ratelog::flush_all();
        }
    }

    /// The shard's own timers, so an idle shard still retries outgoing connections
    /// (TryConnectInterval), resends transactional messages, scans for expired messages and
    /// retries a failed commit: the earliest of them. `end_of_turn`, which follows
    /// `on_app_deadline`, does the work and moves each.
    fn app_deadline(&self) -> Option<u64> {
        let mut d = self.next_expiry_ms;
        for o in self.out.values() {
            if let Some(t) = o.next_deadline() {
                d = d.min(t);
            }
        }
        if !self.resolving.is_empty() {
            d = d.min(self.now_ms + RESOLVE_POLL_MS);
        }
        if let Some(t) = self.commit_retry_at {
            d = d.min(t);
        }
        if self.expiry_waits.iter().any(|&w| w) {
            d = d.min(self.now_ms + EXPIRY_SETTLE_POLL_MS);
        }
        if !self.commits_notify && self.awaiting.iter().any(Option::is_some) {
            d = d.min(self.now_ms + 1);
        }
        if self
            .handoff
            .as_ref()
            .is_some_and(|h| h.outbox.iter().any(|o| !o.is_empty()))
        {
            // A full lane: try again shortly (the receiver does not wake the sender).
            d = d.min(self.now_ms + 1);
        }
        if self.shard == 0 {
            d = d.min(self.next_log_flush_ms);
        }
        if let Some(t) = self.desk.as_ref().and_then(|k| k.deadline(self.now_ms)) {
            // A receive's wait ends, or requests are left in the channel.
            d = d.min(t);
        }
        Some(d)
    }

    fn on_app_deadline(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    fn poll_ready(&mut self) -> Option<ConnId> {
        self.ready.pop()
    }

    fn poll_close(&mut self) -> Option<(ConnId, AppError)> {
        self.closes.pop().map(|(id, code)| (id, AppError(code)))
    }

    fn poll_connect(&mut self, now_ms: u64) -> Option<(SocketAddr, MsmqConn)> {
        let (addr, q) = self.connects.pop_front()?;
        tracing::info!(%addr, queue = q, "opening an outgoing session");
        let http = srmp_conn::http_state(self.out.get(&q).map(|o| &o.def), &self.srmp_tls);
        let mut cfg = self.shared.session_config.clone();
        // Direct-format sessions wait twice as long for acks (QosCleanupIntervalMultiplier).
        cfg.ack_wait_multiplier = self
            .shared
            .broker
            .config
            .parameters
            .QosCleanupIntervalMultiplier;
        Some((
            addr,
            MsmqConn {
                id: ConnId {
                    slot: u32::MAX,
                    generation: 0,
                },
                peer: addr,
                session: Session::initiator(cfg, Guid::NULL, now_ms),
                framer: Framer::new(),
                pending_durable: VecDeque::new(),
                order_acks: OrderAcks::default(),
                direct_format: true,
                incoming: false,
                counted: false,
                established: false,
                outgoing: Some(q),
                http,
                waiting_turn: None,
            },
        ))
    }

    fn on_connected(&mut self, _now_ms: u64, id: ConnId, conn: &mut MsmqConn) {
        conn.id = id;
        if conn.http.is_some() {
            // No handshake over HTTP: the connection is the session.
            conn.established = true;
            if let Some(q) = conn.outgoing.and_then(|q| self.out.get_mut(&q)) {
                q.handle_established(id);
            }
        }
    }
}

/// Our GUID as the text Windows would print (for logs and the API).
pub fn guid_text(g: Guid) -> String {
    g.to_string()
}
