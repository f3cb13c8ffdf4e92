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
//! * A link whose queue another shard runs (`lior serve` on several cores, shards joined by the
//!   mesh) never touches that shard's partition: a producer's message goes to the owner by mail
//!   (`Mail::AmqpProduce`; the owner stores it as above and answers `AmqpProduced`, and
//!   `accepted` waits for the owner partition's published durable watermark, with interest
//!   bits, as MS-MQQB hand-offs do); a remote send, a fan-out copy for another shard's queue,
//!   an admin acknowledgement and a rejected message's dead-letter copy go as records through
//!   `MsmqApp::store_record` (this app's [`AmqpOutbox`], drained by `ShardApp`), answered by
//!   `Mail::Placed` when someone waits. A consumer asks the owner (`AmqpFetch` up to its
//!   credit); the owner holds what it takes in ITS in-flight set and answers `AmqpFetched`
//!   (pre-settled: removed, and sent once the removal is durable there), or remembers the
//!   consumer and mails `AmqpWake` when something arrives; outcomes go back as `AmqpSettle`,
//!   and a link or connection that goes away releases what it held there. Every
//!   `partition(p)` in this file is one this shard runs (`here`, asserted in debug builds).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::engine::net::{AppError, CloseReason, ConnId};
use crate::qm::broker::{message_meta, Broker, InFlight, Routed, SystemRecord, Verdict};
use crate::qm::catalog::{QueueDef, QueueKind};
use crate::qm::handoff::{
    AmqpSettlement, AmqpVerdict, Mail, Placement, ReplyTo, StoreKind, AMQP_REPLY_BIT, HEAD_MAX,
};
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

/// Consumers of other shards remembered by a queue's owner until something arrives in their
/// queue (`Mail::AmqpWake`). Beyond it a consumer is not remembered: it asks again after
/// [`ARRIVAL_FALLBACK_MS`].
pub const AMQP_PARKED_FETCHES_PER_SHARD_MAX: usize = 65_536;

/// Pre-settled messages a queue's owner removed for consumers of other shards, waiting for the
/// removal to be durable before they are mailed. Beyond it a fetch takes no more pre-settled
/// messages this turn.
pub const AMQP_OWED_PRESENDS_PER_SHARD_MAX: usize = 1 << 16;

/// Requests of one shard's AMQP app waiting for another shard's answer (messages handed to
/// their queue's owner, dead-letter copies). Beyond it a producer's message is rejected
/// (`amqp:resource-limit-exceeded`; the client sends it again).
pub const AMQP_HANDED_PER_SHARD_MAX: usize = 1 << 20;

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
    /// Mail the AMQP apps sent to another shard (a link on a shard that does not own its
    /// queue: messages to store, fetches, settlements, answers).
    pub cross_shard_mail: AtomicU64,
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
        let rows: [(&str, &str, &AtomicU64); 10] = [
            ("amqp_connections_accepted_total", "AMQP connections accepted.", &c.connections_accepted),
            ("amqp_connections_closed_error_total", "AMQP connections closed on a protocol error, a failed login or a time-out (each logged).", &c.connections_closed_error),
            ("amqp_messages_in_total", "Messages received on AMQP producer links.", &c.messages_in),
            ("amqp_messages_out_total", "Messages sent on AMQP consumer links.", &c.messages_out),
            ("amqp_accepted_total", "AMQP deliveries the consumer accepted (removed).", &c.accepted),
            ("amqp_released_total", "AMQP deliveries released (put back).", &c.released),
            ("amqp_rejected_total", "AMQP deliveries rejected (moved to the dead-letter queue).", &c.rejected),
            ("amqp_modified_total", "AMQP deliveries modified (put back, counted when delivery-failed).", &c.modified),
            ("amqp_tls_errors_total", "AMQPS connections closed on a TLS error (each logged).", &c.tls_errors),
            ("amqp_cross_shard_mail_total", "Mail the AMQP links sent to the shard owning their queue (or answers to such mail).", &c.cross_shard_mail),
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
    def: Arc<QueueDef>,
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
    /// The queue's partition is another shard's: messages come by mail (`Mail::AmqpFetch`).
    remote: bool,
    /// A fetch sent to the owner and not answered to its end yet.
    asking: bool,
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
    /// copy's `(partition, ticket)` is durable (looked at one after the other), and every copy
    /// mailed to another shard (`handed`: request, destination) is placed.
    SettleAll {
        link: LinkId,
        delivery_id: u32,
        waits: Vec<(usize, Ticket)>,
        handed: Vec<(u64, String)>,
        outcome: Outcome,
    },
    /// A pre-settled message removed: send it once the removal is durable.
    Presend {
        link: LinkId,
        partition: usize,
        reservation: Reservation,
    },
    /// A producer's message (or a remote send) mailed to the shard owning its queue
    /// (request `seq`): becomes `Settle` once that shard answers. `what` names the queue.
    Handed {
        link: LinkId,
        delivery_id: u32,
        seq: u64,
        what: String,
    },
    /// A rejected message whose dead-letter copy was mailed to the dead-letter queue's shard
    /// (request `seq`): becomes `Reject` once that shard answers.
    RejectHanded {
        partition: usize,
        queue: QueueId,
        lookup: LookupId,
        seq: u64,
    },
}

impl Work {
    /// The ticket this work waits for; None while it waits for another shard's answer.
    fn wait_for(&self) -> Option<(usize, Ticket)> {
        Some(match self {
            Work::Handed { .. } | Work::RejectHanded { .. } => return None,
            Work::SettleAll { handed, .. } if !handed.is_empty() => return None,
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
        })
    }
}

/// What another shard answered to a request of this shard's AMQP app.
#[derive(Debug)]
enum Resolved {
    /// To `Mail::AmqpProduce`.
    Verdict(AmqpVerdict),
    /// To a record (`Mail::Store` with a reply): a remote send, a fan-out copy, a dead letter.
    Placed(Placement),
}

/// Mail for a connection of this shard, taken in its next `poll_transmit`.
#[derive(Debug)]
enum Answer {
    Fetched {
        queue: u32,
        link: LinkId,
        lookup: u64,
        priority: u8,
        failed: u32,
        last: bool,
        held: bool,
        frame: Vec<u8>,
    },
    Wake {
        link: LinkId,
    },
}

/// A consumer of another shard waiting at this shard (its queue's owner) for an arrival.
#[derive(Debug)]
struct Parked {
    reply: ReplyTo,
    link: LinkId,
    partition: usize,
    /// The partition's `arrivals` when the consumer found nothing.
    seen: u64,
}

/// An answer to a pre-settled fetch of another shard's consumer: mailed once the removal is
/// durable (or at once: `reservation` None, an empty last answer).
#[derive(Debug)]
struct Owed {
    partition: usize,
    reservation: Option<Reservation>,
    reply: ReplyTo,
    queue: u32,
    link: LinkId,
    last: bool,
}

/// What the AMQP app sends through its shard's mail port: `ShardApp` drains it into the
/// MS-MQQB app (`MsmqApp::send_mail`, `MsmqApp::store_record`) after each AMQP hook.
#[derive(Debug, Default)]
pub struct AmqpOutbox {
    /// Encoded mail: (shard, head, body).
    pub mail: Vec<(usize, Vec<u8>, Vec<u8>)>,
    /// Records for queues this shard may not run (admin acknowledgements, remote sends,
    /// fan-out copies, dead letters), each with the request to answer, if any.
    pub records: Vec<(SystemRecord, Option<ReplyTo>)>,
}

impl AmqpOutbox {
    pub fn is_empty(&self) -> bool {
        self.mail.is_empty() && self.records.is_empty()
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
    /// Removals of closed connections, and the owner's side of other shards' settlements.
    orphans: Vec<Work>,
    /// Set once the shard joined the others by a mesh (`ShardApp` keeps it in step): this
    /// app then touches only the partitions its shard runs, and mails the others' owners.
    meshed: bool,
    /// Mail and records for the shard's port.
    pub outbox: AmqpOutbox,
    next_seq: u64,
    /// Requests waiting for another shard's answer, with the connection to make ready then.
    handed: HashMap<u64, Option<ConnId>>,
    /// Answers to requests, taken by the work waiting for them.
    resolved: HashMap<u64, Resolved>,
    /// Mail for connections, taken in their next `poll_transmit`.
    answers: HashMap<ConnId, Vec<Answer>>,
    /// Connections open on this shard.
    live: HashSet<ConnId>,
    /// Owner side: consumers of other shards waiting for arrivals, by (shard, connection, link).
    parked: HashMap<(u32, ConnId, LinkId), Parked>,
    /// Owner side: answers to pre-settled fetches, in order, waiting for durability.
    owed: std::collections::VecDeque<Owed>,
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
        Ok(Target::Local(LocalQueue {
            def: Arc::new(def),
            partition,
        }))
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
            Ok(Target::Local(q)) => dests.push((text, CopyTarget::Local((*q.def).clone()))),
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
            meshed: false,
            outbox: AmqpOutbox::default(),
            // 0 is never a request: `AMQP_REPLY_BIT` alone says nobody waits for the answer.
            next_seq: 1,
            handed: HashMap::new(),
            resolved: HashMap::new(),
            answers: HashMap::new(),
            live: HashSet::new(),
            parked: HashMap::new(),
            owed: std::collections::VecDeque::new(),
        }
    }

    /// Whether the shard is joined to the others by a mesh (set by `ShardApp` before each
    /// hook): partitions of other shards are then reached by mail only.
    pub fn set_meshed(&mut self, meshed: bool) {
        self.meshed = meshed;
    }

    /// Whether this app may touch partition `p` itself: its shard runs it, or there is no
    /// mesh (one shard, or an app driven alone).
    fn here(&self, p: usize) -> bool {
        !self.meshed || self.owns(p)
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
        self.live.insert(id);
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
        self.take_answers(now_ms, c);
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
        // Messages other shards sent this connection and it did not take go back too.
        for a in self.answers.remove(&c.id).unwrap_or_default() {
            self.release_unsent(a);
        }
        self.live.remove(&c.id);
        for w in c.work.drain(..) {
            match w {
                Work::Settle { .. } => {}
                Work::SettleAll { handed, .. } => {
                    for (seq, _) in handed {
                        self.handed.remove(&seq);
                        self.resolved.remove(&seq);
                    }
                }
                Work::Handed { seq, .. } => {
                    // Its answer, when it comes, is dropped.
                    self.handed.remove(&seq);
                    self.resolved.remove(&seq);
                }
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
                // Only what this app may touch is ever marked (`here`): with a mesh, the
                // partitions this shard runs.
                debug_assert!(
                    self.here(p),
                    "amqp appended to partition {p} of another shard"
                );
                let mut part = self.shared.broker.partition(p);
                if let Err(e) = part.commit(None) {
                    if crate::ratelog::QUOTA.allow() {
                        tracing::error!(partition = p, error = %e, "amqp: store commit failed; retrying next turn");
                    }
                    self.appended[p] = true;
                }
            }
            if (appended || self.owns(p)) && self.broker().has_arrival_interest(p) {
                debug_assert!(self.here(p));
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
        // Orphaned removals (their connection closed) and other shards' settlements.
        if !self.orphans.is_empty() {
            let orphans = std::mem::take(&mut self.orphans);
            for w in orphans {
                if let Some(w) = self.try_work(now_ms, None, w) {
                    self.orphans.push(w);
                }
            }
            for w in &self.orphans {
                if let Some((p, _)) = w.wait_for() {
                    self.awaiting[p] = true;
                }
            }
        }
        self.wake_parked();
        self.send_owed();
        // Another shard's partition we wait for: its owner wakes us once it is durable (its
        // published watermark and interest bits; never its lock).
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
                remote: !self.here(q.partition),
                asking: false,
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
        let broker = self.shared.broker.clone();
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
        let shards = self.shared.shards;
        match target {
            Target::Fanout(..) => {}
            Target::Remote(d) => {
                // Through the outgoing queue: stored there and its commit started, never waited
                // for on the shard; `accepted` once that ticket is durable, as for a local queue.
                let def = match broker.outgoing_queue_for(d) {
                    Ok(def) => def,
                    Err(e) => return reject(c, condition::RESOURCE_LIMIT_EXCEEDED, e.to_string()),
                };
                let p = def.shard % broker.partition_count();
                if !self.here(p) {
                    // The outgoing queue's shard stores it and answers (`Mail::Store`).
                    let reply = (!settled).then(|| self.request(Some(c.id)));
                    self.outbox.records.push((
                        SystemRecord {
                            kind: StoreKind::Outgoing,
                            queue: def.id,
                            partition: p,
                            frame,
                        },
                        reply,
                    ));
                    if let Some(r) = reply {
                        c.work.push(Work::Handed {
                            link,
                            delivery_id,
                            seq: r.seq,
                            what: format!("the outgoing queue to {}", def.key),
                        });
                    }
                    return;
                }
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
                let def = q.def.clone();
                if !self.here(q.partition) {
                    // Stored by the shard owning the queue, which answers with the verdict.
                    let to = q.partition % shards;
                    if self.handed.len() >= AMQP_HANDED_PER_SHARD_MAX {
                        return reject(
                            c,
                            condition::RESOURCE_LIMIT_EXCEEDED,
                            "AMQP_HANDED_PER_SHARD_MAX messages wait for their queues' shards; \
                             send it again"
                                .into(),
                        );
                    }
                    let reply = if settled {
                        ReplyTo {
                            shard: self.shard as u32,
                            conn: c.id,
                            seq: AMQP_REPLY_BIT,
                        }
                    } else {
                        self.request(Some(c.id))
                    };
                    self.send_mail(
                        to,
                        Mail::AmqpProduce {
                            reply,
                            queue: def.id,
                            now_unix: unix_now(),
                            frame: &frame,
                        },
                    );
                    if !settled {
                        c.work.push(Work::Handed {
                            link,
                            delivery_id,
                            seq: reply.seq,
                            what: def.name.clone(),
                        });
                    }
                    return;
                }
                let (verdict, why) = self.store_here(now_ms, unix_now(), &frame, &msg, &def);
                match settlement_of(verdict, &def.name, why) {
                    Ok((p, ticket, outcome)) => {
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
                    Err((cond, why)) => reject(c, cond, why),
                }
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
        use crate::qm::fanout::{store_remote_copy_nowait, CopyTarget};
        let broker = self.shared.broker.clone();
        let now = unix_now();
        let shards = self.shared.shards;
        let mut waits = Vec::with_capacity(dests.len());
        let mut handed = Vec::new();
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
                    Ok(frame)
                });
            // Where the copy goes: stored here (a partition this shard runs), or mailed to the
            // shard running its queue (placed later: `handed`).
            let stored = copy.and_then(|frame| match target {
                CopyTarget::Local(def) => {
                    let p = broker.owner(def);
                    if !self.here(p) {
                        let reply = self.reply_for(settled, c.id);
                        self.send_mail(
                            p % shards,
                            Mail::AmqpProduce {
                                reply,
                                queue: def.id,
                                now_unix: now,
                                frame: &frame,
                            },
                        );
                        return Ok(Err(reply.seq));
                    }
                    let msg = UserMessage::parse(&frame)
                        .map_err(|e| format!("the copy does not encode as an MSMQ packet: {e}"))?;
                    let def = Arc::new(def.clone());
                    let (verdict, why) = self.store_here(now_ms, now, &frame, &msg, &def);
                    match settlement_of(verdict, &def.name, why) {
                        Ok((p, t, Outcome::Accepted)) => Ok(Ok((p, t))),
                        Ok((_, _, Outcome::Rejected { description, .. })) => {
                            Err(description.unwrap_or_default())
                        }
                        Ok(_) => Err("not stored".into()),
                        Err((_, why)) => Err(why),
                    }
                }
                CopyTarget::Remote(d) => {
                    let def = broker.outgoing_queue_for(d).map_err(|e| e.to_string())?;
                    let p = def.shard % broker.partition_count();
                    if self.here(p) {
                        return store_remote_copy_nowait(&broker, d, frame).map(Ok);
                    }
                    let frame = match &broker.signer {
                        Some(s) => s.sign_frame(&frame)?,
                        None => frame,
                    };
                    let reply = self.reply_for(settled, c.id);
                    self.outbox.records.push((
                        SystemRecord {
                            kind: StoreKind::Outgoing,
                            queue: def.id,
                            partition: p,
                            frame,
                        },
                        Some(reply),
                    ));
                    Ok(Err(reply.seq))
                }
            });
            match stored {
                Ok(Ok((p, t))) => {
                    waits.push((p, t));
                    report.push(format!("{text}: stored"));
                }
                Ok(Err(seq)) => {
                    handed.push((seq, text.clone()));
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
            handed,
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
        let name = k.queue.def.name.clone();
        let remote = k.remote;
        let counters = &self.amqp.counters;
        let settlement = match state {
            Some(Outcome::Accepted) => {
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                AmqpSettlement::Accepted
            }
            Some(Outcome::Rejected {
                condition,
                description,
            }) => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                if crate::ratelog::DEAD_LETTER.allow() {
                    tracing::warn!(peer = %c.peer, queue = %name, lookup = tag, condition, ?description, "amqp: message rejected by its consumer; moved to the dead-letter queue");
                }
                AmqpSettlement::Rejected
            }
            Some(Outcome::Modified {
                delivery_failed, ..
            }) => {
                counters.modified.fetch_add(1, Ordering::Relaxed);
                k.waiting = false;
                AmqpSettlement::Released {
                    failed: delivery_failed,
                }
            }
            Some(Outcome::Released) | None => {
                counters.released.fetch_add(1, Ordering::Relaxed);
                k.waiting = false;
                AmqpSettlement::Released { failed: false }
            }
        };
        if remote {
            // The owner holds it: it removes, returns or dead-letters it.
            self.send_mail(
                p % self.shared.shards,
                Mail::AmqpSettle {
                    queue: q.0,
                    lookup: tag,
                    settlement,
                },
            );
            return;
        }
        self.settle_here(Some(c), p, q, l, journaled, settlement);
    }

    /// Settles message `l` of queue `q` in partition `p`, which this app may touch (its
    /// shard's, or any without a mesh): for a consumer of this shard (`c`), or of another
    /// shard (`Mail::AmqpSettle`, `c` None: the work is this shard's own).
    fn settle_here(
        &mut self,
        c: Option<&mut AmqpConn>,
        p: usize,
        q: QueueId,
        l: LookupId,
        journaled: Option<Arc<QueueDef>>,
        settlement: AmqpSettlement,
    ) {
        debug_assert!(
            self.here(p),
            "amqp settles in partition {p} of another shard"
        );
        let broker = self.shared.broker.clone();
        let work = match settlement {
            AmqpSettlement::Accepted => {
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
                        self.appended[p] = true;
                        Work::Remove {
                            partition: p,
                            reservation: r,
                            rejected: false,
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::error!(partition = p, error = %e, "amqp: cannot remove an accepted message; it stays in its queue");
                        return;
                    }
                }
            }
            AmqpSettlement::Rejected => {
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
                if !self.here(dp) {
                    // The dead-letter queue's shard stores the copy and answers.
                    let reply = self.request(c.as_ref().map(|c| c.id));
                    self.outbox.records.push((
                        SystemRecord {
                            kind: StoreKind::DeadLetter,
                            queue: dl.id,
                            partition: dp,
                            frame: bytes,
                        },
                        Some(reply),
                    ));
                    Work::RejectHanded {
                        partition: p,
                        queue: q,
                        lookup: l,
                        seq: reply.seq,
                    }
                } else {
                    let appended = broker
                        .partition(dp)
                        .store
                        .append(QueueId(dl.id), &meta, &bytes);
                    match appended {
                        Ok(a) => {
                            self.appended[dp] = true;
                            Work::Reject {
                                partition: p,
                                queue: q,
                                lookup: l,
                                copy_partition: dp,
                                copy_ticket: a.ticket,
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "amqp: cannot copy a rejected message to the dead-letter queue; it stays in its queue");
                            broker.partition(p).inflight.drop_held(q, l);
                            return;
                        }
                    }
                }
            }
            AmqpSettlement::Released { failed } => {
                let mut part = broker.partition(p);
                if failed {
                    part.inflight.note_failed(q, l);
                }
                part.inflight.drop_held(q, l);
                return;
            }
        };
        match c {
            Some(c) => {
                c.work.push(work);
                self.busy.insert(c.id);
            }
            None => self.orphan(work),
        }
    }

    /// Keeps `w` (its connection closed, or another shard's settlement) until it is done.
    fn orphan(&mut self, w: Work) {
        if self.orphans.len() < AMQP_ORPHAN_REMOVALS_PER_SHARD_MAX {
            self.orphans.push(w);
        } else {
            tracing::warn!("AMQP_ORPHAN_REMOVALS_PER_SHARD_MAX reached: a removal's space is reclaimed at the next restart");
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
            if k.remote {
                // The owner holds them: each goes back there by mail.
                let to = k.queue.partition % self.shared.shards;
                for l in k.held {
                    self.send_mail(
                        to,
                        Mail::AmqpSettle {
                            queue: q.0,
                            lookup: l,
                            settlement: AmqpSettlement::Released { failed: false },
                        },
                    );
                }
                return;
            }
            debug_assert!(self.here(k.queue.partition));
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
                let Some((p, t)) = w.wait_for() else {
                    continue;
                };
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
    fn try_work(&mut self, now_ms: u64, c: Option<&mut AmqpConn>, w: Work) -> Option<Work> {
        let broker = self.shared.broker.clone();
        match w.wait_for() {
            Some((p, t)) if !broker.is_durable(p, t) => return Some(w),
            Some(_) => {}
            // Waits for another shard's answer.
            None => return self.try_handed(now_ms, c, w),
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
            Work::Handed { .. } | Work::RejectHanded { .. } => return Some(w),
            Work::SettleAll {
                link,
                delivery_id,
                mut waits,
                handed,
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
                        handed,
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
                debug_assert!(self.here(partition));
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
                        // The admin acknowledgement (PR, or NR for a rejected one) goes as a
                        // record to its queue's shard (`MsmqApp::store_record`), never under
                        // another shard's lock.
                        let flags = m.properties.flags;
                        let (class, owed) = if rejected {
                            (
                                MessageClass::NACK_RECEIVE_REJECTED,
                                flags.negative_receive(),
                            )
                        } else {
                            (MessageClass::ACK_RECEIVE, flags.positive_receive())
                        };
                        if owed {
                            if let Some(rec) =
                                broker.admin_ack_record(&m, class, broker.next_ordinal())
                            {
                                self.outbox.records.push((rec, None));
                            }
                        }
                        // The FinalAck too, from this partition's address table (its owner).
                        if crate::qm::broker::wants_final_ack(&m) {
                            if let Some(rec) = broker.final_ack_record(
                                &m,
                                class,
                                partition,
                                None,
                                broker.next_ordinal(),
                            ) {
                                self.outbox.records.push((rec, None));
                            }
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
                debug_assert!(self.here(partition));
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
                debug_assert!(self.here(partition));
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
        if matches!(c.links.get(&link), Some(Role::Consumer(k)) if k.remote) {
            return self.fetch(c, link);
        }
        let Some(Role::Consumer(k)) = c.links.get_mut(&link) else {
            return;
        };
        k.credit = c.conn.credit(link);
        let q = QueueId(k.queue.def.id);
        let p = k.queue.partition;
        debug_assert!(
            self.here(p),
            "amqp consumer reads partition {p} of another shard"
        );
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
        debug_assert!(self.here(p));
        let part = self.shared.broker.partition(p);
        let i: &InFlight = &part.inflight;
        i.len()
    }
}

/// The AMQP outcome of a verdict on a producer's message for queue `name` (`why`: the store's
/// refusal, when known): the ticket to wait for and the outcome then, or the rejection now.
fn settlement_of(
    verdict: AmqpVerdict,
    name: &str,
    why: Option<String>,
) -> Result<(usize, Ticket, Outcome), (&'static str, String)> {
    match verdict {
        AmqpVerdict::Stored { partition, ticket } => {
            Ok((partition as usize, ticket, Outcome::Accepted))
        }
        AmqpVerdict::DeadLettered {
            class,
            partition,
            ticket,
        } => {
            let class = MessageClass(class);
            let (cond, what) = if class == MessageClass::NACK_Q_EXCEED_QUOTA {
                (
                    condition::RESOURCE_LIMIT_EXCEEDED,
                    format!("queue {name} is over its quota"),
                )
            } else {
                (
                    condition::PRECONDITION_FAILED,
                    format!("not deliverable to {name} ({})", class.name()),
                )
            };
            Ok((
                partition as usize,
                ticket,
                Outcome::Rejected {
                    condition: cond.to_string(),
                    description: Some(what),
                },
            ))
        }
        AmqpVerdict::RefusedQuota => Err((
            condition::RESOURCE_LIMIT_EXCEEDED,
            why.unwrap_or_else(|| format!("cannot store the message in {name}: over a quota")),
        )),
        AmqpVerdict::Refused => Err((
            condition::INTERNAL_ERROR,
            why.unwrap_or_else(|| {
                format!("cannot store the message in {name} (see lior's log); send it again")
            }),
        )),
    }
}

/// Links on a shard that does not own their queue (issue 10): producers' messages, fetches and
/// settlements cross to the owner by mail (`qm::handoff::Mail::Amqp*`), the owner answers by
/// mail, and durability comes back as the owner partition's published watermark.
impl<S: QueueStore> AmqpApp<S> {
    /// A new request whose answer wakes connection `conn` (None: this shard's own work).
    fn request(&mut self, conn: Option<ConnId>) -> ReplyTo {
        let seq = AMQP_REPLY_BIT | self.next_seq;
        self.next_seq += 1;
        self.handed.insert(seq, conn);
        ReplyTo {
            shard: self.shard as u32,
            conn: conn.unwrap_or(ConnId {
                slot: u32::MAX,
                generation: u32::MAX,
            }),
            seq,
        }
    }

    /// A request of connection `conn`, whose answer nobody waits for when `settled`.
    fn reply_for(&mut self, settled: bool, conn: ConnId) -> ReplyTo {
        if settled {
            ReplyTo {
                shard: self.shard as u32,
                conn,
                seq: AMQP_REPLY_BIT,
            }
        } else {
            self.request(Some(conn))
        }
    }

    fn send_mail(&mut self, to: usize, mail: Mail<'_>) {
        let mut head = [0u8; HEAD_MAX];
        let (n, body) = mail.encode_head(&mut head);
        self.outbox
            .mail
            .push((to, head[..n].to_vec(), body.to_vec()));
        self.amqp
            .counters
            .cross_shard_mail
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Stores a producer's message in queue `def`, whose partition this app may touch: its
    /// admin acknowledgement and a dead letter for another shard's queue go out as records.
    fn store_here(
        &mut self,
        now_ms: u64,
        now_unix: u32,
        frame: &[u8],
        msg: &UserMessage<'_>,
        def: &Arc<QueueDef>,
    ) -> (AmqpVerdict, Option<String>) {
        let broker = self.shared.broker.clone();
        let (shard, shards, meshed) = (self.shard, self.shared.shards, self.meshed);
        let here = move |p: usize| !meshed || p % shards == shard;
        debug_assert!(here(broker.owner(def)));
        let d = broker.deliver_local_here(
            Routed::Queue(def.clone()),
            frame,
            msg,
            now_unix,
            now_ms,
            &here,
        );
        if let Some(class) = d.admin_ack {
            if let Some(rec) = broker.admin_ack_record(msg, class, broker.next_ordinal()) {
                self.outbox.records.push((rec, None));
            }
        }
        let p = d.partition;
        let verdict = match d.verdict {
            Verdict::Stored { ticket, .. } => {
                if ticket != Ticket::IMMEDIATE {
                    self.appended[p] = true;
                }
                AmqpVerdict::Stored {
                    partition: p as u32,
                    ticket,
                }
            }
            Verdict::Duplicate { origin } | Verdict::TxRejected { origin } => AmqpVerdict::Stored {
                partition: origin.0 as u32,
                ticket: origin.1,
            },
            Verdict::TxAck => AmqpVerdict::Stored {
                partition: p as u32,
                ticket: Ticket::IMMEDIATE,
            },
            Verdict::DeadLettered { class, ticket, .. } => {
                if ticket != Ticket::IMMEDIATE {
                    self.appended[p] = true;
                }
                AmqpVerdict::DeadLettered {
                    class: class.0,
                    partition: p as u32,
                    ticket,
                }
            }
            Verdict::Forwarded { queue, class } => {
                // Its dead letter goes to the dead-letter queue's shard; the producer is told
                // at once (a rejected message is not kept for it).
                if let Some(frame) = d.forward {
                    self.outbox.records.push((
                        SystemRecord {
                            kind: StoreKind::DeadLetter,
                            queue,
                            partition: p,
                            frame,
                        },
                        None,
                    ));
                }
                AmqpVerdict::DeadLettered {
                    class: class.0,
                    partition: 0,
                    ticket: Ticket::IMMEDIATE,
                }
            }
            Verdict::Refuse(e) => {
                let why = format!("cannot store the message: {e}");
                return if matches!(e, crate::store::StoreError::Quota { .. }) {
                    (AmqpVerdict::RefusedQuota, Some(why))
                } else {
                    (AmqpVerdict::Refused, Some(why))
                };
            }
        };
        (verdict, None)
    }

    /// Work waiting for another shard's answer: done (or turned into work waiting for a
    /// ticket) once it came.
    fn try_handed(&mut self, now_ms: u64, c: Option<&mut AmqpConn>, w: Work) -> Option<Work> {
        match w {
            Work::Handed {
                link,
                delivery_id,
                seq,
                what,
            } => {
                let Some(r) = self.resolved.remove(&seq) else {
                    return Some(Work::Handed {
                        link,
                        delivery_id,
                        seq,
                        what,
                    });
                };
                let settle = match r {
                    Resolved::Verdict(v) => settlement_of(v, &what, None),
                    Resolved::Placed(Placement::At { partition, ticket }) => {
                        Ok((partition as usize, ticket, Outcome::Accepted))
                    }
                    Resolved::Placed(Placement::Refused) => Err((
                        condition::RESOURCE_LIMIT_EXCEEDED,
                        format!("{what} did not take the message (see lior's log); send it again"),
                    )),
                };
                match settle {
                    Ok((partition, ticket, outcome)) => self.try_work(
                        now_ms,
                        c,
                        Work::Settle {
                            link,
                            delivery_id,
                            partition,
                            ticket,
                            outcome,
                        },
                    ),
                    Err((cond, why)) => {
                        if let Some(c) = c {
                            let outcome = Outcome::Rejected {
                                condition: cond.to_string(),
                                description: Some(why),
                            };
                            let _ = c.conn.settle(link, delivery_id, &outcome);
                        }
                        None
                    }
                }
            }
            Work::SettleAll {
                link,
                delivery_id,
                mut waits,
                handed,
                mut outcome,
            } => {
                let mut left = Vec::new();
                for (seq, text) in handed {
                    let at = match self.resolved.remove(&seq) {
                        None => {
                            left.push((seq, text));
                            continue;
                        }
                        Some(Resolved::Verdict(AmqpVerdict::Stored { partition, ticket }))
                        | Some(Resolved::Placed(Placement::At { partition, ticket })) => {
                            Some((partition as usize, ticket))
                        }
                        Some(_) => None,
                    };
                    match at {
                        Some(at) => waits.push(at),
                        None => {
                            let refused = format!("{text}: refused by its queue's shard");
                            outcome = match outcome {
                                Outcome::Rejected {
                                    condition,
                                    description,
                                } => Outcome::Rejected {
                                    condition,
                                    description: Some(match description {
                                        Some(d) => format!("{d}; {refused}"),
                                        None => refused,
                                    }),
                                },
                                _ => Outcome::Rejected {
                                    condition: condition::PRECONDITION_FAILED.to_string(),
                                    description: Some(refused),
                                },
                            };
                        }
                    }
                }
                let w = Work::SettleAll {
                    link,
                    delivery_id,
                    waits,
                    handed: left,
                    outcome,
                };
                if w.wait_for().is_none() {
                    return Some(w);
                }
                self.try_work(now_ms, c, w)
            }
            Work::RejectHanded {
                partition,
                queue,
                lookup,
                seq,
            } => match self.resolved.remove(&seq) {
                None => Some(Work::RejectHanded {
                    partition,
                    queue,
                    lookup,
                    seq,
                }),
                Some(Resolved::Placed(Placement::At {
                    partition: cp,
                    ticket,
                })) => self.try_work(
                    now_ms,
                    c,
                    Work::Reject {
                        partition,
                        queue,
                        lookup,
                        copy_partition: cp as usize,
                        copy_ticket: ticket,
                    },
                ),
                Some(_) => {
                    tracing::error!(
                        "amqp: the dead-letter queue's shard did not take a rejected message's \
                         copy; it stays in its queue"
                    );
                    debug_assert!(self.here(partition));
                    self.shared
                        .broker
                        .partition(partition)
                        .inflight
                        .drop_held(queue, lookup);
                    None
                }
            },
            other => Some(other),
        }
    }

    /// A consumer link whose queue another shard owns: asks it for up to the link's credit.
    fn fetch(&mut self, c: &mut AmqpConn, link: LinkId) {
        let Some(Role::Consumer(k)) = c.links.get_mut(&link) else {
            return;
        };
        if k.asking || k.waiting {
            return;
        }
        k.credit = c.conn.credit(link);
        let want = (k.credit as usize).min(AMQP_SENDS_PER_FILL_MAX) as u32;
        if want == 0 {
            return;
        }
        k.asking = true;
        let mail = Mail::AmqpFetch {
            reply: ReplyTo {
                shard: self.shard as u32,
                conn: c.id,
                seq: AMQP_REPLY_BIT,
            },
            queue: k.queue.def.id,
            link,
            credit: want,
            browse: k.browse,
            presettled: k.presettled && !k.browse,
            cursor: if k.browse {
                k.cursor.last.map(|(p, l)| (p, l.0))
            } else {
                None
            },
        };
        let to = k.queue.partition % self.shared.shards;
        self.send_mail(to, mail);
    }

    /// Takes the mail the MS-MQQB app received for this app (after its end of turn): other
    /// shards' requests for this shard's queues, and answers to this shard's requests.
    pub fn take_mail(&mut self, now_ms: u64, inbox: Vec<(usize, Vec<u8>, Vec<u8>)>) {
        for (from, head, body) in inbox {
            match Mail::decode(&head, &body) {
                Ok(Mail::Placed {
                    reply, placement, ..
                }) => self.resolve(reply.seq, Resolved::Placed(placement)),
                Ok(Mail::AmqpProduced { reply, verdict }) => {
                    self.resolve(reply.seq, Resolved::Verdict(verdict))
                }
                Ok(Mail::AmqpProduce {
                    reply,
                    queue,
                    now_unix,
                    frame,
                }) => self.owner_produce(now_ms, reply, queue, now_unix, frame),
                Ok(Mail::AmqpFetch {
                    reply,
                    queue,
                    link,
                    credit,
                    browse,
                    presettled,
                    cursor,
                }) => self.owner_fetch(reply, queue, link, credit, browse, presettled, cursor),
                Ok(Mail::AmqpSettle {
                    queue,
                    lookup,
                    settlement,
                }) => self.owner_settle(queue, lookup, settlement),
                Ok(Mail::AmqpFetched {
                    reply,
                    queue,
                    link,
                    lookup,
                    priority,
                    failed,
                    last,
                    held,
                    frame,
                }) => {
                    let a = Answer::Fetched {
                        queue,
                        link,
                        lookup,
                        priority,
                        failed,
                        last,
                        held,
                        frame: frame.to_vec(),
                    };
                    self.answer(reply.conn, a);
                }
                Ok(Mail::AmqpWake { reply, link }) => {
                    self.answer(reply.conn, Answer::Wake { link })
                }
                Ok(_) | Err(_) => {
                    tracing::error!(
                        from,
                        "amqp: unreadable or misrouted mail from another shard; dropped"
                    );
                }
            }
        }
    }

    fn resolve(&mut self, seq: u64, r: Resolved) {
        // Gone: its connection closed meanwhile (or nobody waits: a pre-settled message).
        let Some(conn) = self.handed.remove(&seq) else {
            return;
        };
        self.resolved.insert(seq, r);
        if let Some(c) = conn {
            self.ready.push(c);
        }
    }

    fn answer(&mut self, conn: ConnId, a: Answer) {
        if self.live.contains(&conn) {
            self.answers.entry(conn).or_default().push(a);
            self.ready.push(conn);
        } else {
            self.release_unsent(a);
        }
    }

    /// A message another shard holds for a connection that cannot take it: back to its owner.
    fn release_unsent(&mut self, a: Answer) {
        if let Answer::Fetched {
            queue,
            lookup,
            held: true,
            ref frame,
            ..
        } = a
        {
            if frame.is_empty() {
                return;
            }
            let Some(def) = self.shared.broker.queue_by_id(queue) else {
                return;
            };
            let to = self.shared.broker.owner(&def) % self.shared.shards;
            self.send_mail(
                to,
                Mail::AmqpSettle {
                    queue,
                    lookup,
                    settlement: AmqpSettlement::Released { failed: false },
                },
            );
        }
    }

    /// The answers other shards sent `c`: messages for its consumers, wake-ups.
    fn take_answers(&mut self, now_ms: u64, c: &mut AmqpConn) {
        let Some(list) = self.answers.remove(&c.id) else {
            return;
        };
        let mut buf = Vec::new();
        for a in list {
            let Answer::Fetched {
                queue,
                link,
                lookup,
                priority,
                failed,
                last,
                held,
                ref frame,
            } = a
            else {
                if let Answer::Wake { link } = a {
                    if let Some(Role::Consumer(k)) = c.links.get_mut(&link) {
                        k.waiting = false;
                    }
                }
                continue;
            };
            let Some(Role::Consumer(k)) = c
                .links
                .get_mut(&link)
                .filter(|r| matches!(r, Role::Consumer(k) if k.remote && k.queue.def.id == queue))
            else {
                self.release_unsent(a);
                continue;
            };
            let mut taken = frame.is_empty();
            if !frame.is_empty() {
                buf.clear();
                let mapped = UserMessage::parse(frame)
                    .map_err(|e| e.to_string())
                    .and_then(|u| {
                        msmq_to_amqp_counted(
                            &u,
                            lookup,
                            u64::from(u.user.sent_time) * 1000,
                            failed,
                            &mut buf,
                        )
                        .map_err(|e| e.to_string())
                    });
                match mapped {
                    Ok(_) => {
                        if c.conn.send_message(link, lookup, &buf, !held).is_ok() {
                            taken = true;
                            k.credit = k.credit.saturating_sub(1);
                            if held {
                                k.held.insert(lookup);
                            }
                            if k.browse {
                                k.cursor.last = Some((priority, LookupId(lookup)));
                            }
                            self.amqp
                                .counters
                                .messages_out
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        if crate::ratelog::MALFORMED.allow() {
                            tracing::error!(queue = %k.queue.def.name, lookup, error = %e, "amqp: a stored message cannot be mapped; skipped");
                        }
                        // Skipped: a browse walks past it; a held one stays held by this link
                        // (given back when the link goes), or it would come back at once.
                        taken = true;
                        if held {
                            k.held.insert(lookup);
                        }
                        if k.browse {
                            k.cursor.last = Some((priority, LookupId(lookup)));
                        }
                    }
                }
            }
            if last {
                k.asking = false;
                if frame.is_empty() {
                    if k.drain {
                        k.drain = false;
                        let _ = c.conn.drained(link);
                    } else {
                        // Nothing now: the owner wakes us when something arrives, and a
                        // fallback look comes should that wake-up be lost.
                        k.waiting = true;
                        self.waiting.insert(c.id);
                        c.arrival_deadline = Some(now_ms + ARRIVAL_FALLBACK_MS);
                    }
                }
            }
            if !taken {
                self.release_unsent(a);
            }
        }
    }

    /// The owner's side of `Mail::AmqpProduce`: stores the message, answers with the verdict.
    fn owner_produce(
        &mut self,
        now_ms: u64,
        reply: ReplyTo,
        queue: u32,
        now_unix: u32,
        frame: &[u8],
    ) {
        let broker = self.shared.broker.clone();
        let verdict = match (broker.queue_by_id(queue), UserMessage::parse(frame)) {
            (Some(def), Ok(msg)) if self.here(broker.owner(&def)) => {
                self.store_here(now_ms, now_unix, frame, &msg, &Arc::new(def))
                    .0
            }
            (def, msg) => {
                tracing::error!(queue, known = def.is_some(), parses = msg.is_ok(), "amqp: a message handed over by another shard is for no queue of this shard (deleted?), or does not parse; refused");
                AmqpVerdict::Refused
            }
        };
        if reply.seq != AMQP_REPLY_BIT {
            self.send_mail(reply.shard as usize, Mail::AmqpProduced { reply, verdict });
        }
    }

    /// The owner's side of `Mail::AmqpFetch`: takes up to `credit` messages of `queue` (held
    /// in the in-flight set, or removed for a pre-settled link) and mails them; with nothing
    /// to take, remembers the consumer and wakes it when something arrives.
    #[allow(clippy::too_many_arguments)]
    fn owner_fetch(
        &mut self,
        reply: ReplyTo,
        queue: u32,
        link: LinkId,
        credit: u32,
        browse: bool,
        presettled: bool,
        cursor: Option<(u8, u64)>,
    ) {
        let broker = self.shared.broker.clone();
        let to = reply.shard as usize;
        let empty_last = |me: &mut Self| {
            me.send_mail(
                to,
                Mail::AmqpFetched {
                    reply,
                    queue,
                    link,
                    lookup: 0,
                    priority: 0,
                    failed: 0,
                    last: true,
                    held: false,
                    frame: &[],
                },
            )
        };
        let Some(def) = broker.queue_by_id(queue) else {
            return empty_last(self);
        };
        let p = broker.owner(&def);
        if !self.here(p) {
            tracing::error!(queue = %def.name, partition = p, "amqp: a fetch for a queue this shard does not run; answered empty");
            return empty_last(self);
        }
        let q = QueueId(queue);
        let max = (credit as usize).min(AMQP_SENDS_PER_FILL_MAX);
        let mut found: Vec<(u64, u8, u32, Vec<u8>)> = Vec::new();
        let mut removed: Vec<Reservation> = Vec::new();
        let mut walk = Cursor {
            queue: q,
            last: cursor.map(|(pr, l)| (pr, LookupId(l))),
        };
        let mut part = broker.partition(p);
        while found.len() + removed.len() < max {
            let Some(m) = part.store.cursor_next(&mut walk) else {
                break;
            };
            let l = m.lookup_id;
            let priority = walk.last.map_or(0, |(pr, _)| pr);
            if browse {
                found.push((l.0, priority, 0, m.bytes.to_vec()));
                continue;
            }
            if part.inflight.contains(q, l) {
                continue;
            }
            if presettled {
                if self.owed.len() + removed.len() >= AMQP_OWED_PRESENDS_PER_SHARD_MAX {
                    break;
                }
                match part.store.receive(q, Select::Lookup(l)) {
                    Ok(Some(r)) => removed.push(r),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "amqp: cannot remove a message for a pre-settled consumer");
                        break;
                    }
                }
                continue;
            }
            let bytes = m.bytes.to_vec();
            let failed = part.inflight.failed(q, l);
            if !part.inflight.hold(q, l) {
                break;
            }
            found.push((l.0, priority, failed, bytes));
        }
        if found.is_empty() && removed.is_empty() {
            if self.parked.len() < AMQP_PARKED_FETCHES_PER_SHARD_MAX {
                // Under the partition's lock: an arrival after this look moves `arrivals`.
                let seen = part.arrivals;
                self.parked.insert(
                    (reply.shard, reply.conn, link),
                    Parked {
                        reply,
                        link,
                        partition: p,
                        seen,
                    },
                );
            }
            drop(part);
            return empty_last(self);
        }
        drop(part);
        if !removed.is_empty() {
            self.appended[p] = true;
            let n = removed.len();
            for (i, r) in removed.into_iter().enumerate() {
                self.owed.push_back(Owed {
                    partition: p,
                    reservation: Some(r),
                    reply,
                    queue,
                    link,
                    last: i + 1 == n,
                });
            }
            return;
        }
        let n = found.len();
        for (i, (lookup, priority, failed, bytes)) in found.into_iter().enumerate() {
            self.send_mail(
                to,
                Mail::AmqpFetched {
                    reply,
                    queue,
                    link,
                    lookup,
                    priority,
                    failed,
                    last: i + 1 == n,
                    held: !browse,
                    frame: &bytes,
                },
            );
        }
    }

    /// The owner's side of `Mail::AmqpSettle`: a message this shard holds for another shard's
    /// consumer is removed, given back or dead-lettered.
    fn owner_settle(&mut self, queue: u32, lookup: u64, settlement: AmqpSettlement) {
        let broker = self.shared.broker.clone();
        let Some(def) = broker.queue_by_id(queue) else {
            return;
        };
        let p = broker.owner(&def);
        let (q, l) = (QueueId(queue), LookupId(lookup));
        if !self.here(p) || !broker.partition(p).inflight.contains(q, l) {
            // Not held (a late release of a message already settled): nothing to do.
            return;
        }
        let journaled = def.journal.then(|| Arc::new(def.clone()));
        self.settle_here(None, p, q, l, journaled, settlement);
    }

    /// Wakes the other shards' consumers waiting for arrivals in this shard's partitions.
    fn wake_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let broker = self.shared.broker.clone();
        let mut now: HashMap<usize, u64> = HashMap::new();
        let mut woken = Vec::new();
        for (key, w) in &self.parked {
            debug_assert!(self.here(w.partition));
            let a = *now
                .entry(w.partition)
                .or_insert_with(|| broker.partition(w.partition).arrivals);
            if a != w.seen {
                woken.push(*key);
            }
        }
        for key in woken {
            if let Some(w) = self.parked.remove(&key) {
                self.send_mail(
                    w.reply.shard as usize,
                    Mail::AmqpWake {
                        reply: w.reply,
                        link: w.link,
                    },
                );
            }
        }
    }

    /// Mails the pre-settled messages whose removal is durable, in order.
    fn send_owed(&mut self) {
        let broker = self.shared.broker.clone();
        while let Some(o) = self.owed.front() {
            if let Some(r) = &o.reservation {
                if !broker.is_durable(o.partition, r.ticket) {
                    self.awaiting[o.partition] = true;
                    break;
                }
            }
            let Some(o) = self.owed.pop_front() else {
                break;
            };
            let mut bytes = Vec::new();
            let mut lookup = 0;
            if let Some(r) = o.reservation {
                debug_assert!(self.here(o.partition));
                let mut part = broker.partition(o.partition);
                if let Ok(m) = part.store.reserved(&r) {
                    bytes = m.bytes.to_vec();
                    lookup = m.lookup_id.0;
                }
                if let Err(e) = part.store.release(r) {
                    tracing::error!(error = %e, "amqp: cannot release a removed message");
                }
            }
            self.send_mail(
                o.reply.shard as usize,
                Mail::AmqpFetched {
                    reply: o.reply,
                    queue: o.queue,
                    link: o.link,
                    lookup,
                    priority: 0,
                    failed: 0,
                    last: o.last,
                    held: false,
                    frame: &bytes,
                },
            );
        }
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
