//! The AMQP 1.0 application on the shard engine: one [`AmqpApp`] per shard joins the engine's
//! AMQP connections ([`super::AMQP_LISTENER`]) to [`super::connection::Connection`] and the
//! broker. It never blocks the shard (but for a message to a remote machine, which goes
//! through the outgoing queue as the API's send does).
//!
//! * Producers (the client sends; target = a local queue name or an MSMQ format name): each
//!   message is mapped ([`super::mapping::amqp_to_msmq`]) and stored with the broker as an
//!   MS-MQQB message is ([`Broker::deliver_to`] into the queue's owning partition, under its
//!   lock); `accepted` goes back once the message is durable (recoverable) or stored
//!   (express): the ticket is kept and looked at each turn ([`Broker::is_durable`]), with
//!   interest registered on another shard's partition ([`Broker::note_durable_interest`]). A
//!   remote format name goes to the outgoing queue ([`Broker::enqueue_outgoing_nowait`]).
//! * Consumers (the client receives; source = a queue name or a format name of a local queue):
//!   messages go out under link credit in MSMQ order (a cursor walk), mapped with
//!   [`super::mapping::msmq_to_amqp_counted`], never removed on send. An unsettled delivery is
//!   held in the partition's [`InFlight`] set (no other consumer gets it); `accepted` removes
//!   it (durably, then the PR receive acknowledgement), `released` and a lost link give it
//!   back, `modified` with delivery-failed counts a failed delivery, `rejected` moves it to the
//!   dead-letter queue (the copy durable before the original goes). Pre-settled links remove
//!   first and send once the removal is durable (at-most-once); browse links
//!   (`distribution-mode = copy`) walk a cursor and hold nothing. A link with credit and
//!   nothing to send registers interest in the partition ([`Broker::note_arrival_interest`])
//!   and is woken by whoever sees something arrive there, with a fallback deadline
//!   ([`ARRIVAL_FALLBACK_MS`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::engine::net::{AppError, CloseReason, ConnId};
use crate::qm::broker::{message_meta, Broker, InFlight, Verdict};
use crate::qm::catalog::{QueueDef, QueueKind};
use crate::server::Shared;
use crate::store::{Cursor, LookupId, QueueId, QueueStore, Reservation, Select, Ticket};
use crate::wire::format_name::{DirectName, FormatName, QueuePath, SystemQueue};
use crate::wire::headers::MessageClass;
use crate::wire::user::UserMessage;

use super::connection::{
    Connection, ConnectionConfig, Event, LinkId, LinkKind, Outcome, SaslConfig, SendError,
};
use super::mapping::{amqp_to_msmq, msmq_to_amqp_counted, OwnedQueue};
use super::performatives::condition;

/// How long a consumer with credit and nothing to send waits at most before it looks at its
/// queue again, should no wake-up come (a message stored by the API thread wakes nobody).
pub const ARRIVAL_FALLBACK_MS: u64 = 200;

/// Stores waiting to be settled (durable or refused) on one connection. Beyond it the
/// connection closes: the client sent more than the credit lior granted.
pub const AMQP_PENDING_SETTLES_PER_CONN_MAX: usize = super::connection::MAX_UNSETTLED;

/// Removals (accepted, rejected, pre-settled) waiting for their durability on one connection.
pub const AMQP_PENDING_REMOVALS_PER_CONN_MAX: usize = super::connection::MAX_UNSETTLED;

/// Removals left by closed connections, waiting for their durability, per shard.
pub const AMQP_ORPHAN_REMOVALS_PER_SHARD_MAX: usize = 1 << 20;

/// Messages one consumer link maps and sends in one go (the rest at the next turn).
pub const AMQP_SENDS_PER_FILL_MAX: usize = 1024;

/// Counters of the AMQP door, shared by the shards (for metrics and tests).
#[derive(Debug, Default)]
pub struct AmqpCounters {
    pub connections_accepted: AtomicU64,
    pub connections_closed_error: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub accepted: AtomicU64,
    pub released: AtomicU64,
    pub rejected: AtomicU64,
    pub modified: AtomicU64,
    /// AMQPS connections closed on a TLS error (a failed handshake, garbage, a bad record).
    pub tls_errors: AtomicU64,
}

/// What every shard's AMQP app shares.
pub struct AmqpShared {
    /// The SASL layer (`None`: no SASL, the client starts with `AMQP 0 1 0 0`).
    pub sasl: Option<SaslConfig>,
    pub counters: AmqpCounters,
    /// AMQPS (`[amqp] tls_listen`): its TLS configuration and SASL layer.
    pub tls: Option<super::tls::AmqpsDoor>,
}

impl AmqpShared {
    pub fn new(sasl: Option<SaslConfig>) -> Self {
        AmqpShared {
            sasl,
            counters: AmqpCounters::default(),
            tls: None,
        }
    }

    /// Serves AMQPS too (connections on [`super::AMQPS_LISTENER`]).
    pub fn with_tls(mut self, door: Option<super::tls::AmqpsDoor>) -> Self {
        self.tls = door;
        self
    }

    /// Appends the AMQP counters to a Prometheus text exposition (`/metrics`).
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let c = &self.counters;
        let rows: [(&str, &str, &AtomicU64); 9] = [
            ("amqp_connections_accepted_total", "AMQP connections accepted.", &c.connections_accepted),
            ("amqp_connections_closed_error_total", "AMQP connections closed on a protocol error, a failed login or a time-out (each logged).", &c.connections_closed_error),
            ("amqp_messages_in_total", "Messages received on AMQP producer links.", &c.messages_in),
            ("amqp_messages_out_total", "Messages sent on AMQP consumer links.", &c.messages_out),
            ("amqp_accepted_total", "AMQP deliveries the consumer accepted (removed).", &c.accepted),
            ("amqp_released_total", "AMQP deliveries released (put back).", &c.released),
            ("amqp_rejected_total", "AMQP deliveries rejected (moved to the dead-letter queue).", &c.rejected),
            ("amqp_modified_total", "AMQP deliveries modified (put back, counted when delivery-failed).", &c.modified),
            ("amqp_tls_errors_total", "AMQPS connections closed on a TLS error (each logged).", &c.tls_errors),
        ];
        for (name, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP lior_{name} {help}\n# TYPE lior_{name} counter\nlior_{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// A local queue as a link sees it.
#[derive(Clone, Debug)]
struct LocalQueue {
    def: QueueDef,
    partition: usize,
}

#[derive(Debug)]
enum Target {
    Local(LocalQueue),
    Remote(DirectName),
    /// A multiple-element or `DL=` address (producers only): each destination's format name
    /// and where its copy goes, and the MQF lists every copy carries (`qm/fanout.rs`).
    Fanout(
        Arc<[(String, crate::qm::fanout::CopyTarget)]>,
        Arc<crate::qm::fanout::MqfLists>,
    ),
}

#[derive(Debug)]
struct Consumer {
    queue: LocalQueue,
    browse: bool,
    presettled: bool,
    credit: u32,
    drain: bool,
    /// Browse links: where the walk stands.
    cursor: Cursor,
    /// Unsettled deliveries of this link (lookup ids), held in the partition's in-flight set.
    held: HashSet<u64>,
    /// Pre-settled messages removed and waiting for durability before they are sent.
    presend: usize,
    /// Waiting for an arrival in its partition.
    waiting: bool,
}

#[derive(Debug)]
enum Role {
    Producer(Target),
    Consumer(Consumer),
}

/// Work waiting for a ticket to be durable.
#[derive(Debug)]
enum Work {
    /// A producer's message: settle `outcome` once `ticket` of `partition` is durable.
    Settle {
        link: LinkId,
        delivery_id: u32,
        partition: usize,
        ticket: Ticket,
        outcome: Outcome,
    },
    /// A removal (accepted, or a rejected message whose copy is in the dead-letter queue):
    /// release once durable, then the receive acknowledgements (PR and FinalAck for an
    /// accepted one; NR and a NACK_RECEIVE_REJECTED FinalAck for a rejected one).
    Remove {
        partition: usize,
        reservation: Reservation,
        rejected: bool,
    },
    /// A rejected message copied to the dead-letter queue: remove the original once the copy
    /// is durable.
    Reject {
        partition: usize,
        queue: QueueId,
        lookup: LookupId,
        copy_partition: usize,
        copy_ticket: Ticket,
    },
    /// A message produced to a multiple-element or `DL=` address: settle `outcome` once every
    /// copy's `(partition, ticket)` is durable (looked at one after the other).
    SettleAll {
        link: LinkId,
        delivery_id: u32,
        waits: Vec<(usize, Ticket)>,
        outcome: Outcome,
    },
    /// A pre-settled message removed: send it once the removal is durable.
    Presend {
        link: LinkId,
        partition: usize,
        reservation: Reservation,
    },
}

impl Work {
    fn wait_for(&self) -> (usize, Ticket) {
        match self {
            Work::Settle {
                partition, ticket, ..
            } => (*partition, *ticket),
            Work::SettleAll { waits, .. } => {
                waits.last().copied().unwrap_or((0, Ticket::IMMEDIATE))
            }
            Work::Remove {
                partition,
                reservation,
                ..
            }
            | Work::Presend {
                partition,
                reservation,
                ..
            } => (*partition, reservation.ticket),
            Work::Reject {
                copy_partition,
                copy_ticket,
                ..
            } => (*copy_partition, *copy_ticket),
        }
    }
}

/// One AMQP connection's state.
pub struct AmqpConn {
    id: ConnId,
    peer: SocketAddr,
    conn: Connection,
    links: HashMap<LinkId, Role>,
    work: Vec<Work>,
    /// A fallback look at waiting consumers at this time.
    arrival_deadline: Option<u64>,
    logged_close: bool,
    /// AMQPS: the TLS layer between the engine's bytes and `conn`, and a reused buffer for
    /// the plaintext passing through it.
    tls: Option<Box<super::tls::TlsLayer>>,
    tls_plain: Vec<u8>,
}

impl std::fmt::Debug for AmqpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConn")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("links", &self.links.len())
            .finish()
    }
}

/// The per-shard AMQP app (driven by [`crate::shard_app::ShardApp`]).
pub struct AmqpApp<S> {
    shared: Arc<Shared<S>>,
    amqp: Arc<AmqpShared>,
    shard: usize,
    /// Partitions this shard appended to (or staged removals in) this turn.
    appended: Vec<bool>,
    /// Partitions with work of this shard waiting for their durability.
    awaiting: Vec<bool>,
    /// Per partition: the `arrivals` count this shard last woke consumers for.
    arrivals_woken: Vec<u64>,
    /// Connections with work waiting for durability (looked at every turn).
    busy: HashSet<ConnId>,
    /// Connections with a consumer waiting for an arrival.
    waiting: HashSet<ConnId>,
    ready: Vec<ConnId>,
    /// Removals of closed connections.
    orphans: Vec<Work>,
}

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// Resolves a link address to a local queue, or (`remote_ok`) a remote direct format name.
fn resolve<S: QueueStore>(
    broker: &Broker<S>,
    address: Option<&str>,
    remote_ok: bool,
) -> Result<Target, (&'static str, String)> {
    let Some(addr) = address.map(str::trim).filter(|a| !a.is_empty()) else {
        return Err((
            condition::NOT_FOUND,
            "no address: name a queue (`orders`, `private$\\orders`) or a format name".into(),
        ));
    };
    let local = |name: &str| -> Result<Target, (&'static str, String)> {
        let def = broker.lookup(name).map_err(|_| {
            (
                condition::NOT_FOUND,
                format!("no queue {name:?} on this machine (see `lior queue list`)"),
            )
        })?;
        let partition = broker.owner(&def);
        Ok(Target::Local(LocalQueue { def, partition }))
    };
    if !addr.contains('=') {
        return local(addr);
    }
    let f =
        FormatName::parse(addr).map_err(|e| (condition::NOT_FOUND, format!("{addr:?}: {e}")))?;
    if remote_ok && crate::qm::fanout::is_fanout(&f) {
        return resolve_fanout(broker, &f);
    }
    let Some(d) = f.as_direct() else {
        return Err((
            condition::NOT_IMPLEMENTED,
            format!("{addr:?}: only DIRECT= format names and queue names are served over AMQP"),
        ));
    };
    if broker.identity.is_local(&d.address) {
        match &d.queue {
            QueuePath::Private { name, .. } | QueuePath::Public { name, .. } => {
                local(name.as_str())
            }
            QueuePath::System(SystemQueue::DeadLetter) => local("deadletter"),
            QueuePath::System(SystemQueue::DeadXact) => local("deadxact"),
            QueuePath::System(SystemQueue::Journal) => local("journal"),
        }
    } else if remote_ok {
        Ok(Target::Remote(d.clone()))
    } else {
        Err((
            condition::NOT_FOUND,
            format!("{addr:?} names another machine: lior serves only its own queues to consumers"),
        ))
    }
}

/// A producer's multiple-element or `DL=` address: every destination must take copies (a private
/// non-transactional queue here, or another machine), else the attach is refused naming each
/// one that cannot (a message has one AMQP outcome, so no destination is left out silently).
fn resolve_fanout<S: QueueStore>(
    broker: &Broker<S>,
    f: &FormatName,
) -> Result<Target, (&'static str, String)> {
    use crate::qm::fanout::CopyTarget;
    let (names, lists) =
        crate::qm::fanout::plan(broker, f, None, None).map_err(|e| (condition::NOT_FOUND, e))?;
    let mut dests = Vec::with_capacity(names.len());
    let mut refused = Vec::new();
    for n in names {
        let text = n.to_string();
        match resolve(broker, Some(&text), true) {
            Ok(Target::Local(q)) if q.def.kind != QueueKind::Private || q.def.transactional => {
                refused.push(format!(
                    "{text}: {} is a system or transactional queue, not served to AMQP producers",
                    q.def.name
                ))
            }
            Ok(Target::Local(q)) => dests.push((text, CopyTarget::Local(q.def))),
            Ok(Target::Remote(d)) => dests.push((text, CopyTarget::Remote(d))),
            Ok(Target::Fanout(..)) => refused.push(format!("{text}: not a single name")),
            Err((_, why)) => refused.push(why),
        }
    }
    if !refused.is_empty() {
        return Err((
            condition::NOT_FOUND,
            format!("{f}: {}; nothing is sent to it", refused.join("; ")),
        ));
    }
    Ok(Target::Fanout(dests.into(), Arc::new(lists)))
}

impl<S: QueueStore> AmqpApp<S> {
    pub fn new(shared: Arc<Shared<S>>, amqp: Arc<AmqpShared>, shard: usize) -> Self {
        let n = shared.broker.partition_count();
        AmqpApp {
            shared,
            amqp,
            shard,
            appended: vec![false; n],
            awaiting: vec![false; n],
            arrivals_woken: vec![0; n],
            busy: HashSet::new(),
            waiting: HashSet::new(),
            ready: Vec::new(),
            orphans: Vec::new(),
        }
    }

    fn broker(&self) -> &Broker<S> {
        &self.shared.broker
    }

    fn owns(&self, p: usize) -> bool {
        p % self.shared.shards == self.shard
    }

    /// A connection arrived on the AMQP listener.
    pub fn accept(&mut self, now_ms: u64, id: ConnId, peer: SocketAddr) -> AmqpConn {
        let sasl = self.amqp.sasl.clone();
        self.new_conn(now_ms, id, peer, sasl)
    }

    fn new_conn(
        &mut self,
        now_ms: u64,
        id: ConnId,
        peer: SocketAddr,
        sasl: Option<SaslConfig>,
    ) -> AmqpConn {
        let cfg = ConnectionConfig {
            container_id: format!("lior-{}", self.broker().guid()),
            sasl,
            ..ConnectionConfig::default()
        };
        self.amqp
            .counters
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        AmqpConn {
            id,
            peer,
            conn: Connection::new(cfg, now_ms),
            links: HashMap::new(),
            work: Vec::new(),
            arrival_deadline: None,
            logged_close: false,
            tls: None,
            tls_plain: Vec::new(),
        }
    }

    /// A connection arrived on the AMQPS listener: TLS, then AMQP with the AMQPS door's SASL.
    pub fn accept_tls(&mut self, now_ms: u64, id: ConnId, peer: SocketAddr) -> Option<AmqpConn> {
        let door = self.amqp.tls.as_ref()?;
        let (config, sasl) = (door.config.clone(), door.sasl.clone());
        let layer = match super::tls::TlsLayer::new(config) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%peer, error = %e, "amqps: cannot start TLS; connection refused");
                return None;
            }
        };
        let mut c = self.new_conn(now_ms, id, peer, sasl);
        c.tls = Some(Box::new(layer));
        Some(c)
    }

    fn tls_failed(&self, c: &mut AmqpConn, why: &str) {
        self.amqp
            .counters
            .tls_errors
            .fetch_add(1, Ordering::Relaxed);
        if crate::ratelog::MALFORMED.allow() {
            tracing::warn!(peer = %c.peer, error = %why, "amqps: TLS error; closing the connection");
        }
        c.logged_close = true;
    }

    pub fn on_recv(&mut self, now_ms: u64, c: &mut AmqpConn, bytes: &[u8]) -> Result<(), AppError> {
        let mut plain = std::mem::take(&mut c.tls_plain);
        let bytes = match c.tls.as_mut() {
            None => bytes,
            Some(tls) => {
                plain.clear();
                if let Err(e) = tls.on_ciphertext(bytes, &mut plain) {
                    self.tls_failed(c, &e);
                }
                &plain[..]
            }
        };
        let handled = if bytes.is_empty() {
            Ok(())
        } else {
            c.conn.handle_bytes(now_ms, bytes)
        };
        c.tls_plain = plain;
        if let Err(e) = handled {
            // The condition went to the peer; `wants_close` closes once it is sent.
            self.log_close(c, &e.to_string());
        }
        self.drive(now_ms, c);
        Ok(())
    }

    fn log_close(&self, c: &mut AmqpConn, why: &str) {
        if c.logged_close {
            return;
        }
        c.logged_close = true;
        self.amqp
            .counters
            .connections_closed_error
            .fetch_add(1, Ordering::Relaxed);
        if crate::ratelog::MALFORMED.allow() {
            tracing::warn!(peer = %c.peer, error = %why, "amqp: closing the connection");
        }
    }

    pub fn poll_transmit(&mut self, now_ms: u64, c: &mut AmqpConn, buf: &mut Vec<u8>) {
        self.do_work(now_ms, c);
        if !c.work.is_empty()
            && !c.conn.is_closed()
            && self
                .shared
                .broker
                .counters
                .store_poisoned
                .load(Ordering::Relaxed)
                > 0
        {
            // Nothing more becomes durable: the client keeps what was not accepted.
            tracing::warn!(peer = %c.peer, waiting = c.work.len(), "store poisoned; closing an AMQP connection with messages waiting for the disk");
            c.conn.close(Some((
                condition::INTERNAL_ERROR,
                "lior's store failed for good (see its log); messages not accepted were not \
                 stored durably: send them again elsewhere or after lior restarts",
            )));
        }
        self.fill_all(now_ms, c);
        self.drive(now_ms, c);
        if let Some(tls) = c.tls.as_mut() {
            // AMQPS: the plaintext goes through rustls; `buf` gets the records.
            let mut plain = std::mem::take(&mut c.tls_plain);
            plain.clear();
            if c.conn.has_transmit() {
                plain = c.conn.take_transmit(plain);
            }
            let sent = tls.transmit(&plain, c.conn.is_closed(), buf);
            plain.clear();
            c.tls_plain = plain;
            if let Err(e) = sent {
                self.tls_failed(c, &e);
            }
        } else if c.conn.has_transmit() {
            let spare = std::mem::take(buf);
            *buf = c.conn.take_transmit(spare);
        }
        if !c.work.is_empty() {
            self.busy.insert(c.id);
        }
    }

    pub fn deadline(&self, c: &AmqpConn) -> Option<u64> {
        match (c.conn.poll_timeout(), c.arrival_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn on_timeout(&mut self, now_ms: u64, c: &mut AmqpConn) {
        c.conn.handle_timeout(now_ms);
        if c.arrival_deadline.is_some_and(|d| now_ms >= d) {
            c.arrival_deadline = None;
            self.ready.push(c.id);
            for r in c.links.values_mut() {
                if let Role::Consumer(k) = r {
                    k.waiting = false;
                }
            }
        }
        if let Some(e) = c.conn.close_error() {
            let why = e.to_string();
            self.log_close(c, &why);
        }
        self.drive(now_ms, c);
    }

    pub fn wants_close(&self, c: &AmqpConn) -> bool {
        match &c.tls {
            // A connection closed before its handshake ended (the AMQP open time-out) has
            // nothing to flush.
            Some(t) => {
                t.failed()
                    || t.peer_closed()
                    || (c.conn.is_closed() && (t.close_sent() || t.is_handshaking()))
            }
            None => c.conn.is_closed(),
        }
    }

    pub fn on_closed(&mut self, now_ms: u64, mut c: AmqpConn, reason: CloseReason) {
        c.conn.connection_lost();
        self.drive(now_ms, &mut c);
        // Whatever a link still held goes back to its place.
        let links: Vec<LinkId> = c.links.keys().copied().collect();
        for l in links {
            self.drop_link(&mut c, l, &[]);
        }
        for w in c.work.drain(..) {
            match w {
                Work::Settle { .. } | Work::SettleAll { .. } => {}
                other => {
                    if self.orphans.len() < AMQP_ORPHAN_REMOVALS_PER_SHARD_MAX {
                        self.orphans.push(other);
                    } else {
                        tracing::warn!("AMQP_ORPHAN_REMOVALS_PER_SHARD_MAX reached: a removal's space is reclaimed at the next restart");
                    }
                }
            }
        }
        self.busy.remove(&c.id);
        self.waiting.remove(&c.id);
        tracing::info!(peer = %c.peer, ?reason, "amqp connection closed");
    }

    /// After the MS-MQQB app's end of turn (which committed this shard's partitions): commits
    /// what this shard staged elsewhere, wakes consumers waiting for arrivals, and makes the
    /// connections with work waiting for durability ready.
    pub fn end_of_turn(&mut self, now_ms: u64) {
        let n = self.appended.len();
        for p in 0..n {
            let appended = std::mem::take(&mut self.appended[p]);
            if appended {
                let mut part = self.shared.broker.partition(p);
                if let Err(e) = part.commit(None) {
                    if crate::ratelog::QUOTA.allow() {
                        tracing::error!(partition = p, error = %e, "amqp: store commit failed; retrying next turn");
                    }
                    self.appended[p] = true;
                }
            }
            if (appended || self.owns(p)) && self.broker().has_arrival_interest(p) {
                let arrivals = self.broker().partition(p).arrivals;
                if arrivals != self.arrivals_woken[p] {
                    self.arrivals_woken[p] = arrivals;
                    let bits = self.broker().wake_arrival_interest(p, self.shard);
                    if bits & (1 << (self.shard % 64)) != 0 {
                        self.wake_waiting();
                    }
                }
            }
        }
        // Orphaned removals (their connection closed).
        if !self.orphans.is_empty() {
            let orphans = std::mem::take(&mut self.orphans);
            for w in orphans {
                if let Some(w) = self.try_work(now_ms, None, w) {
                    self.orphans.push(w);
                }
            }
            for w in &self.orphans {
                let (p, _) = w.wait_for();
                self.awaiting[p] = true;
            }
        }
        // Another shard's partition we wait for: its owner wakes us once it is durable.
        for p in 0..n {
            if std::mem::take(&mut self.awaiting[p]) && !self.owns(p) {
                self.shared.broker.note_durable_interest(p, self.shard);
            }
        }
        self.ready.extend(self.busy.drain());
    }

    fn wake_waiting(&mut self) {
        self.ready.extend(self.waiting.drain());
    }

    pub fn app_deadline(&self) -> Option<u64> {
        None
    }

    pub fn poll_ready(&mut self) -> Option<ConnId> {
        self.ready.pop()
    }

    /// Reads the connection's events and acts on them.
    fn drive(&mut self, now_ms: u64, c: &mut AmqpConn) {
        while let Some(ev) = c.conn.poll_event() {
            match ev {
                Event::Opened { .. } => {}
                Event::LinkAttached {
                    link,
                    kind,
                    address,
                    browse,
                    presettled,
                    ..
                } => self.attach(c, link, kind, address.as_deref(), browse, presettled),
                Event::Credit {
                    link,
                    credit,
                    drain,
                } => {
                    if let Some(Role::Consumer(k)) = c.links.get_mut(&link) {
                        k.credit = credit;
                        k.drain = drain;
                        k.waiting = false;
                    }
                    self.fill(now_ms, c, link);
                }
                Event::Message {
                    link,
                    delivery_id,
                    settled,
                    payload,
                } => self.produce(now_ms, c, link, delivery_id, settled, &payload),
                Event::Disposition { link, tag, state } => self.disposition(c, link, tag, state),
                Event::LinkDetached {
                    link, unsettled, ..
                } => self.drop_link(c, link, &unsettled),
                Event::Closed { .. } => {}
            }
        }
    }

    fn attach(
        &mut self,
        c: &mut AmqpConn,
        link: LinkId,
        kind: LinkKind,
        address: Option<&str>,
        browse: bool,
        presettled: bool,
    ) {
        let target = resolve(self.broker(), address, kind == LinkKind::Producer);
        let role = match (kind, target) {
            (_, Err((cond, why))) => {
                tracing::info!(peer = %c.peer, ?address, why, "amqp: link refused");
                let _ = c.conn.refuse_link(link, cond, &why);
                return;
            }
            (_, Ok(Target::Local(q))) if q.def.kind == QueueKind::OrderQueue => {
                let why = format!(
                    "{} holds lior's own transactional acknowledgements: not served over AMQP",
                    q.def.name
                );
                let _ = c.conn.refuse_link(link, condition::NOT_ALLOWED, &why);
                return;
            }
            (LinkKind::Producer, Ok(Target::Local(q))) if q.def.kind != QueueKind::Private => {
                let why = format!(
                    "{} is a system queue: lior puts messages there itself; send to a \
                     private queue",
                    q.def.name
                );
                let _ = c.conn.refuse_link(link, condition::NOT_ALLOWED, &why);
                return;
            }
            (LinkKind::Producer, Ok(Target::Local(q))) if q.def.transactional => {
                let why = format!(
                    "{} is a transactional queue: AMQP transactions are not served; send to a \
                     non-transactional queue",
                    q.def.name
                );
                let _ = c.conn.refuse_link(link, condition::NOT_IMPLEMENTED, &why);
                return;
            }
            (LinkKind::Producer, Ok(t)) => Role::Producer(t),
            (LinkKind::Consumer, Ok(Target::Local(q))) => Role::Consumer(Consumer {
                cursor: Cursor::new(QueueId(q.def.id)),
                queue: q,
                browse,
                presettled,
                credit: 0,
                drain: false,
                held: HashSet::new(),
                presend: 0,
                waiting: false,
            }),
            (LinkKind::Consumer, Ok(Target::Remote(_) | Target::Fanout(..))) => return,
        };
        if c.conn.accept_link(link).is_ok() {
            c.links.insert(link, role);
        }
    }

    /// A message on a producer link: store it, settle once durable.
    fn produce(
        &mut self,
        now_ms: u64,
        c: &mut AmqpConn,
        link: LinkId,
        delivery_id: u32,
        settled: bool,
        payload: &[u8],
    ) {
        self.amqp
            .counters
            .messages_in
            .fetch_add(1, Ordering::Relaxed);
        let Some(Role::Producer(target)) = c.links.get(&link) else {
            return;
        };
        let reject = |c: &mut AmqpConn, cond: &str, why: String| {
            if crate::ratelog::MALFORMED.allow() {
                tracing::info!(peer = %c.peer, why, "amqp: message rejected");
            }
            if !settled {
                let _ = c.conn.settle(
                    link,
                    delivery_id,
                    &Outcome::Rejected {
                        condition: cond.to_string(),
                        description: Some(why),
                    },
                );
            }
        };
        if c.work.len() >= AMQP_PENDING_SETTLES_PER_CONN_MAX {
            c.conn.close(Some((
                condition::RESOURCE_LIMIT_EXCEEDED,
                "AMQP_PENDING_SETTLES_PER_CONN_MAX stores wait for the disk",
            )));
            return;
        }
        if let Some(Role::Producer(Target::Fanout(dests, lists))) = c.links.get(&link) {
            let (dests, lists) = (dests.clone(), lists.clone());
            return self.produce_fanout(
                now_ms,
                c,
                link,
                delivery_id,
                settled,
                payload,
                &dests,
                &lists,
            );
        }
        let broker = &self.shared.broker;
        let mut m = match amqp_to_msmq(payload, broker.guid(), broker.next_ordinal(), unix_now()) {
            Ok(m) => m,
            Err(e) => {
                let cond = match e {
                    super::mapping::MappingError::Codec(_) => condition::DECODE_ERROR,
                    _ => condition::INVALID_FIELD,
                };
                return reject(c, cond, e.to_string());
            }
        };
        let dest_text = match target {
            Target::Local(q) => format!("DIRECT=OS:.\\{}", queue_path(&q.def)),
            Target::Remote(d) => format!("DIRECT={}", d.wire_string()),
            Target::Fanout(..) => return,
        };
        match OwnedQueue::parse(&dest_text, "target") {
            Ok(d) => m.destination = d,
            Err(e) => return reject(c, condition::INVALID_FIELD, e.to_string()),
        }
        let mut frame = m.encode();
        // Messages for other machines carry our signature when one is configured.
        if let (Target::Remote(_), Some(s), false) = (&target, &broker.signer, frame.is_empty()) {
            match s.sign_frame(&frame) {
                Ok(f) => frame = f,
                Err(e) => return reject(c, condition::INVALID_FIELD, e),
            }
        }
        let msg = match UserMessage::parse(&frame) {
            Ok(u) if !frame.is_empty() => u,
            Ok(_) | Err(_) => {
                return reject(
                    c,
                    condition::INVALID_FIELD,
                    "the message does not encode as an MSMQ packet".into(),
                )
            }
        };
        match target {
            Target::Fanout(..) => {}
            Target::Remote(d) => {
                // Through the outgoing queue: stored there and its commit started, never waited
                // for on the shard; `accepted` once that ticket is durable, as for a local queue.
                match broker.enqueue_outgoing_nowait(d, &frame, &message_meta(&msg)) {
                    Ok((_, partition, ticket)) => {
                        if settled {
                            return;
                        }
                        c.work.push(Work::Settle {
                            link,
                            delivery_id,
                            partition,
                            ticket,
                            outcome: Outcome::Accepted,
                        });
                        self.busy.insert(c.id);
                    }
                    Err(e) => reject(c, condition::RESOURCE_LIMIT_EXCEEDED, e.to_string()),
                }
            }
            Target::Local(q) => {
                let d = broker.deliver_to(&frame, &msg, &q.def, unix_now(), now_ms);
                if let Some(class) = d.admin_ack {
                    broker.send_admin_ack(&msg, class);
                }
                let (p, ticket, outcome) = match d.verdict {
                    Verdict::Stored { ticket, .. } => (d.partition, ticket, Outcome::Accepted),
                    Verdict::Duplicate { origin } | Verdict::TxRejected { origin } => {
                        (origin.0, origin.1, Outcome::Accepted)
                    }
                    Verdict::TxAck => (d.partition, Ticket::IMMEDIATE, Outcome::Accepted),
                    Verdict::DeadLettered { class, ticket, .. } => {
                        let (cond, what) = if class == MessageClass::NACK_Q_EXCEED_QUOTA {
                            (
                                condition::RESOURCE_LIMIT_EXCEEDED,
                                format!("queue {} is over its quota", q.def.name),
                            )
                        } else {
                            (
                                condition::PRECONDITION_FAILED,
                                format!("not deliverable to {} ({})", q.def.name, class.name()),
                            )
                        };
                        (
                            d.partition,
                            ticket,
                            Outcome::Rejected {
                                condition: cond.to_string(),
                                description: Some(what),
                            },
                        )
                    }
                    Verdict::Forwarded { .. } => {
                        // `deliver_to` stores in any partition: never forwarded.
                        debug_assert!(false, "deliver_to forwarded a dead letter");
                        return reject(c, condition::INTERNAL_ERROR, "not stored".to_string());
                    }
                    Verdict::Refuse(e) => {
                        let cond = if matches!(e, crate::store::StoreError::Quota { .. }) {
                            condition::RESOURCE_LIMIT_EXCEEDED
                        } else {
                            condition::INTERNAL_ERROR
                        };
                        return reject(c, cond, format!("cannot store the message: {e}"));
                    }
                };
                if ticket != Ticket::IMMEDIATE {
                    self.appended[p] = true;
                }
                if settled {
                    return;
                }
                c.work.push(Work::Settle {
                    link,
                    delivery_id,
                    partition: p,
                    ticket,
                    outcome,
                });
                self.busy.insert(c.id);
            }
        }
    }

    /// A message on a producer link to a multiple-element or `DL=` address: one copy per
    /// destination, each with its own message id and the MQF lists (`qm/fanout.rs`); settled
    /// `accepted` once every copy is durable, or `rejected` naming what each destination got
    /// when one could not take its copy.
    #[allow(clippy::too_many_arguments)]
    fn produce_fanout(
        &mut self,
        now_ms: u64,
        c: &mut AmqpConn,
        link: LinkId,
        delivery_id: u32,
        settled: bool,
        payload: &[u8],
        dests: &[(String, crate::qm::fanout::CopyTarget)],
        lists: &crate::qm::fanout::MqfLists,
    ) {
        use crate::qm::fanout::{store_copy_nowait, CopyTarget};
        let broker = self.shared.broker.clone();
        let now = unix_now();
        let mut waits = Vec::with_capacity(dests.len());
        let mut report = Vec::new();
        let mut failed = false;
        for (text, target) in dests {
            let copy = amqp_to_msmq(payload, broker.guid(), broker.next_ordinal(), now)
                .map_err(|e| e.to_string())
                .and_then(|mut m| {
                    let dest = match target {
                        CopyTarget::Local(def) => format!("DIRECT=OS:.\\{}", queue_path(def)),
                        CopyTarget::Remote(d) => format!("DIRECT={}", d.wire_string()),
                    };
                    m.destination =
                        OwnedQueue::parse(&dest, "target").map_err(|e| e.to_string())?;
                    let frame = m.encode_with_mqf(lists);
                    if frame.is_empty() {
                        return Err(
                            "the copy does not encode as an MSMQ packet (too large?)".into()
                        );
                    }
                    store_copy_nowait(&broker, target, frame, now, now_ms)
                });
            match copy {
                Ok((p, t)) => {
                    if t != Ticket::IMMEDIATE && matches!(target, CopyTarget::Local(_)) {
                        self.appended[p] = true;
                    }
                    waits.push((p, t));
                    report.push(format!("{text}: stored"));
                }
                Err(why) => {
                    failed = true;
                    report.push(format!("{text}: refused: {why}"));
                }
            }
        }
        if failed && crate::ratelog::MALFORMED.allow() {
            tracing::info!(peer = %c.peer, report = report.join("; "), "amqp: fan-out incomplete");
        }
        if settled {
            return;
        }
        let outcome = if failed {
            Outcome::Rejected {
                condition: condition::PRECONDITION_FAILED.to_string(),
                description: Some(report.join("; ")),
            }
        } else {
            Outcome::Accepted
        };
        c.work.push(Work::SettleAll {
            link,
            delivery_id,
            waits,
            outcome,
        });
        self.busy.insert(c.id);
    }

    /// The client's outcome for one of our deliveries.
    fn disposition(&mut self, c: &mut AmqpConn, link: LinkId, tag: u64, state: Option<Outcome>) {
        let Some(Role::Consumer(k)) = c.links.get_mut(&link) else {
            return;
        };
        if k.browse || !k.held.remove(&tag) {
            return;
        }
        let (p, q, l) = (k.queue.partition, QueueId(k.queue.def.id), LookupId(tag));
        // A journaled queue (as it was when the link attached) keeps a copy of what is accepted.
        let journaled = k.queue.def.journal.then(|| k.queue.def.clone());
        let counters = &self.amqp.counters;
        let broker = &self.shared.broker;
        match state {
            Some(Outcome::Accepted) => {
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                let mut part = broker.partition(p);
                part.inflight.forget(q, l);
                if let Some(def) = &journaled {
                    let copy = part.store.peek(q, Select::Lookup(l)).map(|m| {
                        let meta = crate::store::MessageMeta {
                            expiry_unix_s: crate::store::EXPIRY_NEVER,
                            ..m.meta
                        };
                        (m.bytes.to_vec(), meta)
                    });
                    if let Some((bytes, meta)) = copy {
                        broker.journal_received(&mut part, def, &meta, &bytes);
                    }
                }
                match part.store.receive(q, Select::Lookup(l)) {
                    Ok(Some(r)) => {
                        drop(part);
                        self.appended[p] = true;
                        c.work.push(Work::Remove {
                            partition: p,
                            reservation: r,
                            rejected: false,
                        });
                        self.busy.insert(c.id);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(partition = p, error = %e, "amqp: cannot remove an accepted message; it stays in its queue")
                    }
                }
            }
            Some(Outcome::Rejected {
                condition,
                description,
            }) => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                // The copy goes to the dead-letter queue first (held meanwhile); the original
                // is removed once the copy is durable.
                let copy = {
                    let part = broker.partition(p);
                    part.store
                        .peek(q, Select::Lookup(l))
                        .map(|m| (m.bytes.to_vec(), m.meta))
                };
                let Some((bytes, meta)) = copy else {
                    broker.partition(p).inflight.forget(q, l);
                    return;
                };
                let transactional = UserMessage::parse(&bytes)
                    .map(|m| m.user.flags.transactional())
                    .unwrap_or(false);
                let dlq = if transactional {
                    "deadxact"
                } else {
                    "deadletter"
                };
                let Ok(dl) = broker.lookup(dlq) else {
                    broker.partition(p).inflight.drop_held(q, l);
                    return;
                };
                let dp = broker.owner(&dl);
                let appended = broker
                    .partition(dp)
                    .store
                    .append(QueueId(dl.id), &meta, &bytes);
                match appended {
                    Ok(a) => {
                        if crate::ratelog::DEAD_LETTER.allow() {
                            tracing::warn!(peer = %c.peer, queue = %k.queue.def.name, lookup = tag, condition, ?description, "amqp: message rejected by its consumer; moved to the dead-letter queue");
                        }
                        self.appended[dp] = true;
                        c.work.push(Work::Reject {
                            partition: p,
                            queue: q,
                            lookup: l,
                            copy_partition: dp,
                            copy_ticket: a.ticket,
                        });
                        self.busy.insert(c.id);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "amqp: cannot copy a rejected message to the dead-letter queue; it stays in its queue");
                        broker.partition(p).inflight.drop_held(q, l);
                    }
                }
            }
            Some(Outcome::Modified {
                delivery_failed, ..
            }) => {
                counters.modified.fetch_add(1, Ordering::Relaxed);
                let mut part = broker.partition(p);
                if delivery_failed {
                    part.inflight.note_failed(q, l);
                }
                part.inflight.drop_held(q, l);
                k.waiting = false;
            }
            Some(Outcome::Released) | None => {
                counters.released.fetch_add(1, Ordering::Relaxed);
                broker.partition(p).inflight.drop_held(q, l);
                k.waiting = false;
            }
        }
    }

    /// A link is gone: its unsettled deliveries go back to their places.
    fn drop_link(&mut self, c: &mut AmqpConn, link: LinkId, _unsettled: &[u64]) {
        let Some(role) = c.links.remove(&link) else {
            return;
        };
        if let Role::Consumer(k) = role {
            if k.held.is_empty() {
                return;
            }
            let q = QueueId(k.queue.def.id);
            let mut part = self.shared.broker.partition(k.queue.partition);
            for l in k.held {
                part.inflight.drop_held(q, LookupId(l));
            }
        }
    }

    /// Does the work whose tickets are durable.
    fn do_work(&mut self, now_ms: u64, c: &mut AmqpConn) {
        if c.work.is_empty() {
            return;
        }
        // At most twice: once, then again if a partition became durable while the interest
        // in it was being registered (so no wake-up is lost between the look and the bit).
        for _ in 0..2 {
            let work = std::mem::take(&mut c.work);
            for w in work {
                if let Some(w) = self.try_work(now_ms, Some(c), w) {
                    c.work.push(w);
                }
            }
            let mut again = false;
            for w in &c.work {
                let (p, t) = w.wait_for();
                self.awaiting[p] = true;
                if !self.owns(p) {
                    // Another shard's partition: its owner wakes this shard once the mark
                    // moves; read it again after the bit is visible.
                    self.shared.broker.note_durable_interest(p, self.shard);
                    again |= self.shared.broker.is_durable(p, t);
                }
            }
            if !again {
                break;
            }
        }
    }

    /// Does `w` if its ticket is durable (None), else gives it back.
    fn try_work(&mut self, _now_ms: u64, c: Option<&mut AmqpConn>, w: Work) -> Option<Work> {
        let (p, t) = w.wait_for();
        let broker = self.shared.broker.clone();
        if !broker.is_durable(p, t) {
            return Some(w);
        }
        match w {
            Work::Settle {
                link,
                delivery_id,
                outcome,
                ..
            } => {
                if let Some(c) = c {
                    let _ = c.conn.settle(link, delivery_id, &outcome);
                }
            }
            Work::SettleAll {
                link,
                delivery_id,
                mut waits,
                outcome,
            } => {
                // Every copy durable so far is done with; the first that is not is waited for.
                while let Some(&(p, t)) = waits.last() {
                    if !broker.is_durable(p, t) {
                        break;
                    }
                    waits.pop();
                }
                if !waits.is_empty() {
                    return Some(Work::SettleAll {
                        link,
                        delivery_id,
                        waits,
                        outcome,
                    });
                }
                if let Some(c) = c {
                    let _ = c.conn.settle(link, delivery_id, &outcome);
                }
            }
            Work::Remove {
                partition,
                reservation,
                rejected,
            } => {
                let mut part = broker.partition(partition);
                let pr = part
                    .store
                    .reserved(&reservation)
                    .ok()
                    .filter(|m| {
                        UserMessage::parse(m.bytes).is_ok_and(|u| {
                            Broker::<S>::owes_received_acks(&u)
                                || (rejected && u.properties.flags.negative_receive())
                        })
                    })
                    .map(|m| m.bytes.to_vec());
                if let Err(e) = part.store.release(reservation) {
                    tracing::error!(error = %e, "amqp: cannot release a removed message");
                }
                drop(part);
                broker
                    .counters
                    .messages_received
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(b) = pr {
                    if let Ok(m) = UserMessage::parse(&b) {
                        if rejected {
                            broker.send_receive_nack(&m, MessageClass::NACK_RECEIVE_REJECTED);
                        } else {
                            broker.send_received_acks(&m);
                        }
                    }
                }
            }
            Work::Reject {
                partition,
                queue,
                lookup,
                ..
            } => {
                let mut part = broker.partition(partition);
                part.inflight.forget(queue, lookup);
                match part.store.receive(queue, Select::Lookup(lookup)) {
                    Ok(Some(r)) => {
                        self.appended[partition] = true;
                        let w = Work::Remove {
                            partition,
                            reservation: r,
                            rejected: true,
                        };
                        return Some(w);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "amqp: cannot remove a dead-lettered message")
                    }
                }
            }
            Work::Presend {
                link,
                partition,
                reservation,
            } => {
                let mut part = broker.partition(partition);
                let mut payload = Vec::new();
                if let Ok(m) = part.store.reserved(&reservation) {
                    if let Ok(u) = UserMessage::parse(m.bytes) {
                        let _ = msmq_to_amqp_counted(
                            &u,
                            m.lookup_id.0,
                            u64::from(u.user.sent_time) * 1000,
                            0,
                            &mut payload,
                        );
                    }
                }
                let tag = reservation.lookup_id.0;
                if let Err(e) = part.store.release(reservation) {
                    tracing::error!(error = %e, "amqp: cannot release a removed message");
                }
                drop(part);
                if let Some(c) = c {
                    if let Some(Role::Consumer(k)) = c.links.get_mut(&link) {
                        k.presend = k.presend.saturating_sub(1);
                    }
                    if !payload.is_empty() && c.conn.send_message(link, tag, &payload, true).is_ok()
                    {
                        self.amqp
                            .counters
                            .messages_out
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        None
    }

    fn fill_all(&mut self, now_ms: u64, c: &mut AmqpConn) {
        // A connection no longer in `waiting` was woken by an arrival (`wake_waiting`): its
        // consumers look again. Without this only a flow or the fallback deadline cleared their
        // flag, so a consumer that had drained its queue saw new messages up to
        // ARRIVAL_FALLBACK_MS late (found by `lior bench --consume-amqp`: end-to-end p50 ~100 ms).
        if !self.waiting.contains(&c.id) {
            for r in c.links.values_mut() {
                if let Role::Consumer(k) = r {
                    k.waiting = false;
                }
            }
        }
        let links: Vec<LinkId> = c
            .links
            .iter()
            .filter(
                |(_, r)| matches!(r, Role::Consumer(k) if !k.waiting && (k.credit > 0 || k.drain)),
            )
            .map(|(l, _)| *l)
            .collect();
        for l in links {
            self.fill(now_ms, c, l);
        }
    }

    /// Sends what the consumer link's credit allows, in MSMQ order.
    fn fill(&mut self, now_ms: u64, c: &mut AmqpConn, link: LinkId) {
        let Some(Role::Consumer(k)) = c.links.get_mut(&link) else {
            return;
        };
        k.credit = c.conn.credit(link);
        let q = QueueId(k.queue.def.id);
        let p = k.queue.partition;
        let mut room = (k.credit as usize).saturating_sub(k.presend);
        let broker = self.shared.broker.clone();
        let mut part = broker.partition(p);
        let mut buf = Vec::new();
        let mut sent = 0usize;
        let mut staged = false;
        let mut cursor = if k.browse { k.cursor } else { Cursor::new(q) };
        let mut full = false;
        while room > 0 && sent < AMQP_SENDS_PER_FILL_MAX {
            let before = cursor;
            let Some(m) = part.store.cursor_next(&mut cursor) else {
                break;
            };
            let l = m.lookup_id;
            if !k.browse && part.inflight.contains(q, l) {
                continue;
            }
            if k.presettled && !k.browse {
                match part.store.receive(q, Select::Lookup(l)) {
                    Ok(Some(r)) => {
                        staged = true;
                        k.presend += 1;
                        room -= 1;
                        sent += 1;
                        c.work.push(Work::Presend {
                            link,
                            partition: p,
                            reservation: r,
                        });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "amqp: cannot remove a message for a pre-settled consumer");
                        break;
                    }
                }
                if c.work.len() >= AMQP_PENDING_REMOVALS_PER_CONN_MAX {
                    break;
                }
                continue;
            }
            let failed = part.inflight.failed(q, l);
            let Ok(u) = UserMessage::parse(m.bytes) else {
                if crate::ratelog::MALFORMED.allow() {
                    tracing::error!(queue = %k.queue.def.name, lookup = l.0, "amqp: a stored message does not parse; skipped");
                }
                continue;
            };
            buf.clear();
            if let Err(e) = msmq_to_amqp_counted(
                &u,
                l.0,
                u64::from(u.user.sent_time) * 1000,
                failed,
                &mut buf,
            ) {
                if crate::ratelog::MALFORMED.allow() {
                    tracing::error!(queue = %k.queue.def.name, lookup = l.0, error = %e, "amqp: a stored message cannot be mapped; skipped");
                }
                continue;
            }
            if !k.browse && !part.inflight.hold(q, l) {
                full = true;
                break;
            }
            match c.conn.send_message(link, l.0, &buf, k.browse) {
                Ok(_) => {
                    sent += 1;
                    room -= 1;
                    if !k.browse {
                        k.held.insert(l.0);
                    }
                }
                Err(e) => {
                    if !k.browse {
                        part.inflight.drop_held(q, l);
                    }
                    cursor = before;
                    if e != SendError::NoCredit {
                        full = true;
                    }
                    break;
                }
            }
        }
        if k.browse {
            k.cursor = cursor;
        }
        let waiting = room > 0 && !full && sent < AMQP_SENDS_PER_FILL_MAX;
        if waiting {
            // Nothing more to send: be woken when something arrives (the interest is set under
            // the partition's lock, so a commit after this look wakes us).
            broker.note_arrival_interest(p, self.shard);
        }
        drop(part);
        if staged {
            self.appended[p] = true;
            self.busy.insert(c.id);
        }
        self.amqp
            .counters
            .messages_out
            .fetch_add(sent as u64, Ordering::Relaxed);
        let drain = k.drain;
        k.credit = k.credit.saturating_sub(sent as u32);
        if waiting {
            k.waiting = true;
            if drain && k.presend == 0 {
                k.drain = false;
                k.waiting = false;
                let _ = c.conn.drained(link);
            }
            self.waiting.insert(c.id);
            c.arrival_deadline = Some(now_ms + ARRIVAL_FALLBACK_MS);
        } else if sent >= AMQP_SENDS_PER_FILL_MAX || full {
            // More next turn (the transmit buffer drains, a send completion runs a turn), and a
            // fallback look should nothing else wake this connection (a full in-flight table).
            self.busy.insert(c.id);
            if full {
                c.arrival_deadline = Some(now_ms + ARRIVAL_FALLBACK_MS);
            }
        }
    }

    /// Whether partition `p`'s in-flight set is empty (for tests and metrics).
    pub fn inflight_len(&self, p: usize) -> usize {
        let part = self.shared.broker.partition(p);
        let i: &InFlight = &part.inflight;
        i.len()
    }
}

/// The queue's path as a direct format name spells it (`private$\name` or `name`).
fn queue_path(q: &QueueDef) -> String {
    use crate::qm::catalog::QueueKind as K;
    match q.kind {
        K::Private => format!("private$\\{}", q.name),
        K::DeadLetter => "SYSTEM$;DEADLETTER".into(),
        K::DeadXact => "SYSTEM$;DEADXACT".into(),
        K::Journal => "SYSTEM$;JOURNAL".into(),
        _ => q.name.clone(),
    }
}
