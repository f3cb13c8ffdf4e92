//! The driver: clients, links and the real server, stepped on one simulated clock.
//!
//! The server side is `lior::server::MsmqApp` (the same glue `lior serve` runs) over the real
//! broker and store on a [`SimDisk`], inside the engine's own turn logic
//! (`lior::engine::turn::Turn`, the code `engine/shard.rs` drives with io_uring completions): the
//! simulation reports receives, finished sends and resets as the shard reports completions, then
//! runs `Turn::finish` (timers, `end_of_turn`, the group commit, `poll_ready`, `poll_close`,
//! `poll_transmit`, closes and deadlines); what the turn sends or closes goes to the simulated
//! links through [`SimIo`].
//! A crash drops the process state and keeps only the disk, which loses or tears what was not
//! synced; the restart rebuilds the broker from it.
//!
//! With two shards (`Faults.shards`) the broker has two store partitions (two simulated disks),
//! the catalog spreads the queues over them, and two `MsmqApp`s run over one `Shared`, each
//! connection bound to one of them at connect, so a client that reconnects may land on the
//! other shard and its resends (duplicates) cross shards.
//!
//! The wake model: a shard runs its turn in a step only when the engine would wake it: a
//! readable connection, a finished send, a due connection timer, its `app_deadline()`, or a
//! wake (`Broker::set_waker`, which in `lior serve` writes the shard's eventfd). So a lost wake
//! leaves a shard asleep; see [`World::shard_turn`] for how that is caught.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use lior::config::Config;
use lior::engine::mesh::{Mesh, Parker, LANE_BYTES_MIN};
use lior::engine::net::{App, CloseReason as NetClose, ConnId, EngineConfig, Errno};
use lior::engine::turn::{ConnState, Received, Turn, TurnIo, TurnLimits};
use lior::qm::broker::Broker;
use lior::server::{MsmqApp, Shared};
use lior::session::{Event, Framer, Inbound, Session, SessionConfig};
use lior::store::{QueueId, QueueStore, SimDisk, SimStore, Store, StoreConfig, Ticket};
use lior::wire::headers::{AckFlags, TransactionHeader, TxFlags};
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};

use super::auditor::{self, AuditCounts, Auditor, Fact, Kind, QueueAt, QUEUES, TX_QUEUE_FIRST};
use super::net::{Link, PipeShape};
use super::rng::Rng;

/// A run that has not converged after this many steps is a livelock.
pub const STEPS_MAX: u64 = 200_000;
/// Simulated time allowed after the last fault for every message to be acknowledged.
pub const QUIET_MS_MAX: u64 = 600_000;
/// The sender's transactional resend timer (`SeqResend13Time`, 30 s): transactional messages
/// still waiting for their OrderAck are sent again.
const TX_RESEND_MS: u64 = 30_000;
/// EIO, for a failed fsync.
const EIO: i32 = 5;
/// The local admin queue every third recoverable message asks an ACK_REACH_QUEUE for.
const ADMIN_QUEUE: &str = "sim_admin";

/// Whether a lost wake (see [`World::shard_turn`]) fails a run (it does since the bug pinned
/// by `sim_sessions::lost_wake_*` was fixed), rather than only being counted
/// (`Stats.lost_wakes`).
pub const LOST_WAKES_FAIL: bool = true;

/// Store geometry of a run.
#[derive(Clone, Copy, Debug)]
pub enum StoreShape {
    /// 128 KiB segments and 16 KiB commit batches: segment rolls and full batches are common.
    Small,
    /// 1 MiB segments and 256 KiB batches.
    Medium,
}

impl StoreShape {
    fn config(self) -> StoreConfig {
        let (segment, batch, message) = match self {
            StoreShape::Small => (128 << 10, 16 << 10, 4 << 10),
            StoreShape::Medium => (1 << 20, 256 << 10, 16 << 10),
        };
        StoreConfig {
            segment_bytes: segment,
            batch_bytes_max: batch,
            message_bytes_max: message,
            removal_reserve_bytes: segment / 16,
            ..StoreConfig::default()
        }
    }
}

/// Every fault rate and workload parameter of a run, drawn from its seed. Each seed switches
/// some fault kinds off entirely (swarm testing), so rare interleavings of the others show up.
#[derive(Clone, Debug)]
pub struct Faults {
    pub clients: usize,
    pub messages_per_client: usize,
    pub express_pct: u32,
    pub tx_pct: u32,
    /// Messages are handed to the clients at random times in `0..=load_ms`.
    pub load_ms: u64,
    /// No fault is injected from this time on: the system must then converge.
    pub faults_until_ms: u64,
    pub step_ms_max: u64,
    pub pipe: PipeShape,
    /// Chance per step and connection of a reset.
    pub reset_ppm: u32,
    /// Chance per step of a server crash...
    pub crash_ppm: u32,
    /// ...in the middle of a loop turn, after some receives and before the commit...
    pub crash_mid_turn_pct: u32,
    /// ...or after the appended records were submitted to the disk but before the sync, so
    /// recovery sees a torn batch (otherwise between two loop turns).
    pub crash_after_submit_pct: u32,
    /// Chance per step that the next fsync fails (the store poisons; a restart follows).
    pub fsync_fail_ppm: u32,
    /// Chance per step that a local application receives from a queue.
    pub consume_ppm: u32,
    /// Chance per step of a store maintenance pass (reclaim, compaction).
    pub maintain_ppm: u32,
    /// MaxUnackedPacket on both sides.
    pub window: u16,
    pub store: StoreShape,
    pub downtime_max_ms: u64,
    pub reconnect_max_ms: u64,
    /// Shards (and store partitions): 1 or 2. Chosen by the caller, not drawn, so the rest of
    /// the schedule of a seed does not depend on it.
    pub shards: usize,
}

impl Faults {
    pub fn draw(rng: &mut Rng) -> Faults {
        fn off_or(rng: &mut Rng, off_pct: u32, lo: u64, hi: u64) -> u32 {
            if rng.percent(off_pct) {
                0
            } else {
                rng.range(lo, hi) as u32
            }
        }
        let load_ms = rng.range(0, 20_000);
        let latency_min_ms = rng.range(0, 5);
        Faults {
            clients: rng.range(1, 3) as usize,
            messages_per_client: rng.range(5, 150) as usize,
            express_pct: rng.pick(&[0, 10, 30, 60]),
            tx_pct: rng.pick(&[0, 30, 50, 80]),
            load_ms,
            faults_until_ms: load_ms + rng.range(0, 10_000),
            step_ms_max: rng.range(1, 40),
            pipe: PipeShape {
                latency_min_ms,
                latency_max_ms: latency_min_ms + rng.range(0, 60),
                split_max: rng.pick(&[7, 100, 1500, 65536]),
                read_max: rng.pick(&[16, 512, 16384]),
            },
            reset_ppm: off_or(rng, 25, 100, 20_000),
            crash_ppm: off_or(rng, 25, 50, 3_000),
            crash_mid_turn_pct: rng.range(0, 40) as u32,
            crash_after_submit_pct: rng.range(0, 40) as u32,
            fsync_fail_ppm: off_or(rng, 50, 50, 1_000),
            consume_ppm: off_or(rng, 20, 1_000, 200_000),
            maintain_ppm: off_or(rng, 50, 1_000, 50_000),
            window: rng.pick(&[1, 2, 4, 8, 64]),
            store: rng.pick(&[StoreShape::Small, StoreShape::Medium]),
            downtime_max_ms: rng.range(0, 3_000),
            reconnect_max_ms: rng.range(1, 2_000),
            shards: 1,
        }
    }
}

/// What one run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub sim_ms: u64,
    pub messages: u64,
    pub links: u64,
    pub resets: u64,
    pub crashes: u64,
    pub crashes_mid_turn: u64,
    pub crashes_after_submit: u64,
    pub fsync_failures: u64,
    pub recovery_cut_bytes: u64,
    pub server_closes: u64,
    pub consumer_calls: u64,
    pub maintain_calls: u64,
    /// Runs with two shards (0 or 1 for one run).
    pub two_shard_runs: u64,
    /// Messages a shard handed to the other over the mesh (two-shard runs).
    pub handoffs: u64,
    /// Records (admin acknowledgements, dead letters) a shard sent to the shard owning their
    /// queue as `Mail::Store` (two-shard runs).
    pub records_mailed: u64,
    /// Shard turns run, and shard-steps a shard slept through (nothing woke it).
    pub turns: u64,
    pub turns_slept: u64,
    /// Turns run only because the shard's own `app_deadline()` was due.
    pub deadline_turns: u64,
    /// Calls of the waker installed with `Broker::set_waker`.
    pub wakes: u64,
    /// Connections accepted by shard 1.
    pub links_on_shard_1: u64,
    /// Lost wakes seen (with `strict_wakes` off; with it on the first fails the run).
    pub lost_wakes: u64,
    pub audit: AuditCounts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MState {
    /// The application has not handed it over yet.
    Unsubmitted,
    /// To be sent on the current (or next) session.
    Pending,
    InFlight,
    /// Transactional: session-acknowledged, waiting for its OrderAck.
    SessionAcked,
    /// Deleted by the sender.
    Done,
}

#[derive(Clone, Copy, Debug)]
struct Planned {
    kind: Kind,
    queue: usize,
    submit_at_ms: u64,
}

/// A sending queue manager: its outgoing table and its current session.
struct Client {
    guid: Guid,
    plan: Vec<Planned>,
    state: Vec<MState>,
    /// Sent in index order, so each transactional sequence goes out in order.
    pending: BTreeSet<usize>,
    next_submit: usize,
    done: usize,
    link: Option<u32>,
    session: Option<Session>,
    framer: Framer,
    reconnect_at_ms: u64,
    last_order_ack: [u32; 2],
    order_progress_ms: u64,
}

/// The simulation's part of one server connection, kept in the shard's [`Turn`] (where the
/// io_uring driver keeps its socket): the link it runs on.
struct SimConn {
    link: u32,
}

/// One shard: the engine's turn logic around the shard's app.
type SimTurn = Turn<MsmqApp<SimStore>, SimConn>;

/// What the engine submits to io_uring for a [`Turn`], done on the simulated links: a send
/// writes to the link (after the auditor checked it), a close ends the server side of it.
struct SimIo<'a> {
    now: u64,
    links: &'a mut [Link],
    rng: &'a mut Rng,
    pipe: &'a PipeShape,
    aud: &'a mut Auditor,
    broker: &'a Broker<SimStore>,
    qids: &'a [QueueAt],
    /// The lost-wake check is on for this turn (see [`World::shard_turn`]).
    check_wake: bool,
    strict_wakes: bool,
    lost_wakes: &'a mut u64,
    server_closes: &'a mut u64,
    /// Sends written this turn: the shard hears of their completion at its next turn.
    sent: &'a mut Vec<ConnId>,
    /// Trace lines (with a trace), added to the world's after the turn.
    log: Option<Vec<String>>,
    shard: usize,
}

impl SimIo<'_> {
    fn log(&mut self, what: impl FnOnce() -> String) {
        if let Some(log) = &mut self.log {
            log.push(what());
        }
    }
}

impl TurnIo for SimIo<'_> {
    type Slot = SimConn;
    type Error = String;

    fn buffer(&mut self) -> Vec<u8> {
        Vec::new()
    }

    fn recycle(&mut self, _buf: Vec<u8>) {}

    fn send(&mut self, id: ConnId, slot: &mut SimConn, buf: Vec<u8>) -> Result<(), String> {
        let now = self.now;
        let shard = self.shard;
        let link = &mut self.links[slot.link as usize];
        let advanced = self
            .aud
            .check_server_output(self.broker, self.qids, link, &buf, now)?;
        if advanced && self.check_wake && !self.strict_wakes {
            *self.lost_wakes += 1;
        } else if advanced && self.check_wake {
            return Err(format!(
                "lost wake: at {now} ms shard {shard} acknowledged recoverable messages on link \
                 {} (up to recoverable number {}) in a turn run only for its own app_deadline, \
                 with no commit in flight: they were durable before and nothing woke the shard",
                link.serial, link.rec_acked
            ));
        }
        // Bytes sent after the peer's reset are lost (the send would fail with EPIPE).
        if !link.peer_reset {
            link.s2c.write(self.rng, now, self.pipe, &buf);
        }
        self.sent.push(id);
        Ok(())
    }

    fn close(
        &mut self,
        id: ConnId,
        slot: &mut SimConn,
        reason: NetClose,
        flush: bool,
    ) -> Result<bool, String> {
        if let NetClose::App(e) = reason {
            *self.server_closes += 1;
            self.log(|| format!("server closes {id:?}: app error {}", e.0));
        } else {
            self.log(|| format!("server closes {id:?}: {reason:?}"));
        }
        let link = &mut self.links[slot.link as usize];
        link.server_slot = None;
        link.server_gone = true;
        // What was sent still arrives after a close the app asked for (the send had finished,
        // the bytes are in the socket's buffer); any other close resets.
        if !(flush || reason == NetClose::AppRequested) {
            link.c2s.clear();
            link.s2c.clear();
        }
        Ok(true)
    }

    fn released(&mut self, _slot: SimConn, _reason: NetClose) {}

    fn connect(
        &mut self,
        _id: ConnId,
        _addr: SocketAddr,
    ) -> Result<Result<SimConn, NetClose>, String> {
        // The simulated network has clients only: no outgoing connection gets through.
        Ok(Err(NetClose::ConnectFailed(Errno(111))))
    }

    fn not_opened(&mut self, _reason: NetClose) {}
}

/// The shards' wake flags, set by the broker's waker (an eventfd write in `lior serve`).
#[derive(Debug)]
struct Wake {
    flags: Vec<AtomicBool>,
    calls: AtomicU64,
    /// Injected bug ([`World::lose_broker_wakes`]): every wake is counted and dropped.
    lose: AtomicBool,
}

impl Wake {
    fn new(shards: usize) -> Wake {
        Wake {
            flags: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            calls: AtomicU64::new(0),
            lose: AtomicBool::new(false),
        }
    }

    fn wake(&self, shard: usize) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.lose.load(Ordering::Relaxed) {
            return;
        }
        // `wake_durable_interest` maps interest bits to shard indexes below the partition
        // count; the simulation has as many partitions as shards.
        self.flags[shard % self.flags.len()].store(true, Ordering::Release);
    }

    fn take(&self, shard: usize) -> bool {
        self.flags[shard].swap(false, Ordering::AcqRel)
    }

    fn any(&self) -> bool {
        self.flags.iter().any(|f| f.load(Ordering::Acquire))
    }

    fn clear(&self) {
        for f in &self.flags {
            f.store(false, Ordering::Release);
        }
    }
}

/// Builds the broker over `stores` (one partition per shard), installs the waker and starts one
/// app per shard, as `lior serve` does.
#[allow(clippy::type_complexity)]
///
/// With two shards the apps are joined by a mesh, as `lior serve` joins them, with the smallest
/// lane the mesh allows, so full lanes (and the shards' outboxes) and boxed frames happen
/// often. Each shard's mesh wake is an eventfd of its own ([`Parker`]), read without blocking
/// as the turn starts, as the engine reads its eventfd: a lost mesh wake shows as a stall.
fn boot(
    config: &Config,
    shards: usize,
    stores: Vec<SimStore>,
    wake: &Arc<Wake>,
) -> Result<(Arc<Shared<SimStore>>, Vec<SimTurn>, Vec<Parker>), String> {
    let broker = Broker::with_stores(config.clone(), stores).map_err(|e| format!("broker: {e}"))?;
    let w = wake.clone();
    broker.set_waker(Box::new(move |s| w.wake(s)));
    let shared = Arc::new(Shared::with_shards(Arc::new(broker), shards));
    let mut apps: Vec<MsmqApp<SimStore>> = (0..shards)
        .map(|s| MsmqApp::new(shared.clone(), s))
        .collect();
    let mut parkers = Vec::new();
    if shards > 1 {
        for _ in 0..shards {
            parkers.push(Parker::new().map_err(|e| format!("eventfd: {e}"))?);
        }
        let wakers: Arc<[lior::engine::net::Waker]> = parkers.iter().map(Parker::waker).collect();
        let mesh = Mesh::new(shards, LANE_BYTES_MIN, wakers).map_err(|e| format!("mesh: {e}"))?;
        for (s, app) in apps.iter_mut().enumerate() {
            app.join_mesh(mesh.port(s).map_err(|e| format!("mesh port: {e}"))?);
        }
    }
    // The engine's limits, as `lior serve` runs with its defaults.
    let limits = TurnLimits::from(&EngineConfig::default());
    let turns = apps.into_iter().map(|app| Turn::new(app, limits)).collect();
    Ok((shared, turns, parkers))
}

struct Server {
    config: Config,
    store_cfg: StoreConfig,
    shards: usize,
    shared: Option<Arc<Shared<SimStore>>>,
    /// One app per shard while up, each in the engine's [`Turn`]; empty while down.
    apps: Vec<SimTurn>,
    /// Per shard: sends written since its last turn, whose completion it hears next turn.
    sent: Vec<Vec<ConnId>>,
    wake: Arc<Wake>,
    /// Per shard, with two: the eventfd the mesh wakes it through (see [`boot`]).
    parkers: Vec<Parker>,
    /// Per partition: the durable watermark when the sim last looked (for the completion
    /// signal, see [`World::signal_completions`]).
    seen_durable: Vec<Ticket>,
    /// While crashed: when it restarts, and its disks (one per partition).
    down: Option<(u64, Vec<SimStore>)>,
    /// Server incarnation, from 0.
    epoch: u32,
    /// A restart is due (after a failed fsync poisoned the store).
    crash_at_ms: Option<u64>,
    qids: Vec<QueueAt>,
}

impl Server {
    fn up(&self) -> bool {
        !self.apps.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashPlan {
    None,
    /// Crash after this many receives of the turn, before its commit.
    MidTurn(u32),
    /// Crash after the turn's receives, with their records submitted but not synced.
    AfterSubmit,
}

/// One simulation run.
pub struct World {
    rng: Rng,
    pub f: Faults,
    now: u64,
    server: Server,
    clients: Vec<Client>,
    links: Vec<Link>,
    aud: Auditor,
    pub stats: Stats,
    /// A lost wake fails the run (else it is counted).
    pub strict_wakes: bool,
    trace: Option<VecDeque<String>>,
    _dir: tempfile::TempDir,
}

const TRACE_LINES: usize = 400;

impl World {
    /// A run of `seed`. `fsync_failures` off zeroes that fault rate after the draw (the rest of
    /// the run is the same schedule); `trace` keeps the last events for the failure message.
    pub fn new(
        seed: u64,
        fsync_failures: bool,
        trace: bool,
        shards: usize,
    ) -> Result<World, String> {
        let mut rng = Rng::new(seed);
        let mut f = Faults::draw(&mut rng);
        if !fsync_failures {
            f.fsync_fail_ppm = 0;
        }
        if !(1..=2).contains(&shards) {
            return Err(format!("the simulation runs 1 or 2 shards, not {shards}"));
        }
        f.shards = shards;
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        config.parameters.MaxUnackedPacket = f.window;
        let store_cfg = f.store.config();
        let mut stores = Vec::new();
        for p in 0..shards {
            let (store, _) = Store::open(SimDisk::new(rng.next_u64()), store_cfg)
                .map_err(|e| format!("store open (partition {p}): {e}"))?;
            stores.push(store);
        }
        let wake = Arc::new(Wake::new(shards));
        let (shared, apps, parkers) = boot(&config, shards, stores, &wake)?;
        let mut qids = Vec::new();
        for (name, tx) in QUEUES {
            let q = shared
                .broker
                .create_queue(name, tx)
                .map_err(|e| format!("create queue {name}: {e}"))?;
            qids.push(QueueAt {
                id: QueueId(q.id),
                partition: shared.broker.owner(&q),
            });
        }
        // The admin queue some senders ask arrival acknowledgements for: with two shards, the
        // acknowledgement of a message whose queue the other shard owns crosses as
        // `Mail::Store` (not audited: nobody waits for an acknowledgement's durability).
        shared
            .broker
            .create_queue(ADMIN_QUEUE, false)
            .map_err(|e| format!("create queue {ADMIN_QUEUE}: {e}"))?;
        // The catalog gives each new queue the least-loaded partition: with two, both own some.
        for p in 0..shards {
            if !qids.iter().any(|q| q.partition == p) {
                return Err(format!(
                    "no queue of {QUEUES:?} is owned by partition {p} of {shards}: {qids:?}"
                ));
            }
        }

        let mut clients = Vec::new();
        let mut facts = Vec::new();
        for c in 0..f.clients {
            let n = f.messages_per_client;
            let mut times: Vec<u64> = (0..n).map(|_| rng.range(0, f.load_ms)).collect();
            times.sort_unstable();
            let mut seq = [0u32; 2];
            let mut plan = Vec::new();
            let mut cf = Vec::new();
            for (i, &t) in times.iter().enumerate() {
                let r = rng.below(100) as u32;
                let (kind, queue) = if r < f.express_pct {
                    (Kind::Express, rng.below(2) as usize)
                } else if r < f.express_pct + f.tx_pct {
                    let q = TX_QUEUE_FIRST + rng.below(2) as usize;
                    seq[q - TX_QUEUE_FIRST] += 1;
                    (
                        Kind::Tx {
                            seq_no: seq[q - TX_QUEUE_FIRST],
                        },
                        q,
                    )
                } else {
                    (Kind::Recoverable, rng.below(2) as usize)
                };
                plan.push(Planned {
                    kind,
                    queue,
                    submit_at_ms: t,
                });
                cf.push(Fact {
                    kind,
                    queue,
                    msg_id: i as u32 + 1,
                    guid: auditor::client_guid(c),
                    acked_at_ms: None,
                    first_sent_ms: None,
                    consumed_epochs: Vec::new(),
                });
            }
            facts.push(cf);
            clients.push(Client {
                guid: auditor::client_guid(c),
                state: vec![MState::Unsubmitted; n],
                plan,
                pending: BTreeSet::new(),
                next_submit: 0,
                done: 0,
                link: None,
                session: None,
                framer: Framer::new(),
                reconnect_at_ms: 0,
                last_order_ack: [0; 2],
                order_progress_ms: 0,
            });
        }
        let stats = Stats {
            messages: (f.clients * f.messages_per_client) as u64,
            two_shard_runs: u64::from(shards == 2),
            ..Stats::default()
        };
        Ok(World {
            rng,
            f,
            now: 0,
            server: Server {
                config,
                store_cfg,
                shards,
                shared: Some(shared),
                apps,
                wake,
                parkers,
                seen_durable: vec![Ticket(0); shards],
                sent: vec![Vec::new(); shards],
                down: None,
                epoch: 0,
                crash_at_ms: None,
                qids,
            },
            clients,
            links: Vec::new(),
            aud: Auditor::new(facts),
            stats,
            strict_wakes: LOST_WAKES_FAIL || std::env::var_os("LIOR_SIM_STRICT_WAKES").is_some(),
            trace: trace.then(VecDeque::new),
            _dir: dir,
        })
    }

    /// Injects a lost wake into this run (for the test that shows the lost-wake check catches
    /// one): every wake the broker sends (`Broker::set_waker`; with the shards joined by the
    /// mesh these are the partition owner's `wake_durable_interest` wakes of a shard waiting for
    /// its durability) is dropped, as if the owner forgot to wake the waiters. Kept across
    /// restarts.
    pub fn lose_broker_wakes(&mut self) {
        self.server.wake.lose.store(true, Ordering::Relaxed);
    }

    fn log(&mut self, what: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            if t.len() == TRACE_LINES {
                t.pop_front();
            }
            t.push_back(format!("{:>8} ms  {}", self.now, what()));
        }
    }

    /// The last trace lines (with `LIOR_SIM_TRACE=1`).
    pub fn trace_tail(&self) -> String {
        match &self.trace {
            Some(t) => t.iter().cloned().collect::<Vec<_>>().join("\n"),
            None => "(run with LIOR_SIM_TRACE=1 for the last events)".into(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.now
    }

    /// Runs to the end: faults, then a quiet period in which everything must be acknowledged,
    /// then a drain of every queue and the final audit.
    pub fn run(&mut self) -> Result<Stats, String> {
        loop {
            self.stats.steps += 1;
            if self.stats.steps > STEPS_MAX {
                return Err(format!(
                    "livelock: not converged after {STEPS_MAX} steps ({})",
                    self.progress()
                ));
            }
            self.step()?;
            if self.now >= self.f.faults_until_ms
                && self.server.crash_at_ms.is_none()
                && self.clients.iter().all(|c| c.done == c.plan.len())
            {
                break;
            }
            if self.now > self.f.faults_until_ms + QUIET_MS_MAX {
                return Err(format!(
                    "livelock: {QUIET_MS_MAX} ms after the last fault not everything is \
                     acknowledged ({})",
                    self.progress()
                ));
            }
        }
        self.drain()?;
        self.aud.final_check()?;
        self.stats.sim_ms = self.now;
        self.stats.wakes += self.server.wake.calls.load(Ordering::Relaxed);
        if let Some(shared) = &self.server.shared {
            self.stats.handoffs += shared.counters.handoffs.load(Ordering::Relaxed);
            self.stats.records_mailed += shared.counters.records_mailed.load(Ordering::Relaxed);
        }
        self.stats.audit = self.aud.counts;
        Ok(self.stats)
    }

    fn progress(&self) -> String {
        let per: Vec<String> = self
            .clients
            .iter()
            .map(|c| {
                let count = |s: MState| c.state.iter().filter(|&&x| x == s).count();
                format!(
                    "done {}/{} pending {} in flight {} awaiting OrderAck {} (last OrderAcks {:?})",
                    c.done,
                    c.plan.len(),
                    count(MState::Pending),
                    count(MState::InFlight),
                    count(MState::SessionAcked),
                    c.last_order_ack
                )
            })
            .collect();
        format!(
            "server up {}, epoch {}, {} shard(s), wake flags {:?}; clients: {}",
            self.server.up(),
            self.server.epoch,
            self.server.shards,
            self.server.wake.flags,
            per.join("; ")
        )
    }

    fn next_event_ms(&mut self) -> Option<u64> {
        // Each shard's next connection deadline or app deadline, as the engine bounds its wait.
        let turn_wakes: Vec<Option<u64>> = self
            .server
            .apps
            .iter_mut()
            .map(|t| t.next_wake_ms())
            .collect();
        let mut t: Option<u64> = None;
        let mut at = |x: Option<u64>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for l in &self.links {
            at(l.c2s.next_at());
            at(l.s2c.next_at());
        }
        for c in &self.clients {
            at(c.plan.get(c.next_submit).map(|p| p.submit_at_ms));
            match &c.session {
                Some(s) => at(s.poll_timeout()),
                None => at(Some(c.reconnect_at_ms)),
            }
            if c.state.contains(&MState::SessionAcked) {
                at(Some(c.order_progress_ms + TX_RESEND_MS));
            }
        }
        for w in turn_wakes {
            at(w);
        }
        // Finished sends and resets are completions the shard's next turn reports.
        let resets = self
            .links
            .iter()
            .any(|l| l.peer_reset && l.server_slot.is_some());
        if resets || self.server.sent.iter().any(|s| !s.is_empty()) {
            at(Some(self.now));
        }
        at(self.server.down.as_ref().map(|d| d.0));
        at(self.server.crash_at_ms);
        if self.server.wake.any() || self.any_in_flight() {
            at(Some(self.now));
        }
        t
    }

    /// Whether any partition has a commit batch in flight.
    fn any_in_flight(&self) -> bool {
        let Some(shared) = &self.server.shared else {
            return false;
        };
        (0..shared.broker.partition_count()).any(|p| shared.broker.partition(p).store.in_flight())
    }

    /// The completion wake, part 1. In `lior serve` each partition's commit completions signal
    /// its owning shard's eventfd (`set_commit_notify`), whoever submitted or reaps the batch.
    /// The simulated disk decides whether a batch is complete only when it is polled, so the sim
    /// cannot see "completion ready"; instead it wakes the owner of every partition with a
    /// batch in flight, at each step and before each call from outside the shards (consumer,
    /// maintenance) that may reap it, and (part 2, [`World::signal_completions`]) whenever a
    /// partition's durable watermark moved, whoever reaped it. That wakes the owner at least as
    /// often as the real signal, so it cannot hide a lost wake between shards
    /// (`wake_durable_interest`), only a lost completion signal, which this model does not test.
    fn wake_in_flight_owners(&mut self) {
        let Some(shared) = &self.server.shared else {
            return;
        };
        for p in 0..shared.broker.partition_count() {
            if shared.broker.partition(p).store.in_flight() {
                self.server.wake.flags[p % self.server.shards].store(true, Ordering::Release);
            }
        }
    }

    /// The completion signal itself: a partition whose durable watermark moved since the sim
    /// last looked had a batch complete, whoever reaped it (the other shard committing it for
    /// its own waiters, or a consumer's call), and the ring signals the owner's eventfd then.
    /// Checked after each shard's turn and each call from outside the shards.
    fn signal_completions(&mut self) {
        let Some(shared) = &self.server.shared else {
            return;
        };
        for p in 0..shared.broker.partition_count() {
            let d = shared.broker.partition(p).store.stats().durable;
            if d > self.server.seen_durable[p] {
                self.server.seen_durable[p] = d;
                self.server.wake.flags[p % self.server.shards].store(true, Ordering::Release);
            }
        }
    }

    /// The partition a fault or maintenance call hits: any, with two.
    fn pick_partition(&mut self) -> usize {
        if self.server.shards > 1 {
            self.rng.below(self.server.shards as u64) as usize
        } else {
            0
        }
    }

    fn advance_clock(&mut self) {
        let candidate = self.now + self.rng.range(1, self.f.step_ms_max);
        self.now = match self.next_event_ms() {
            Some(t) if t > candidate => t,
            _ => candidate,
        };
    }

    fn step(&mut self) -> Result<(), String> {
        self.advance_clock();
        let faulty = self.now < self.f.faults_until_ms;
        if self.server.up() && self.server.crash_at_ms.is_some_and(|t| self.now >= t) {
            self.log(|| "restart of the poisoned server".into());
            self.crash(false)?;
        }
        if faulty {
            for serial in 0..self.links.len() {
                let l = &self.links[serial];
                if !(l.server_gone && l.client_gone) && self.rng.chance(self.f.reset_ppm) {
                    self.stats.resets += 1;
                    self.log(|| format!("reset link {serial}"));
                    self.reset_link(serial as u32);
                }
            }
            if self.server.up()
                && self.server.crash_at_ms.is_none()
                && self.rng.chance(self.f.fsync_fail_ppm)
            {
                self.stats.fsync_failures += 1;
                let at = self.now + self.rng.range(0, 5_000);
                self.log(|| format!("the next fsync fails; restart at {at} ms"));
                self.server.crash_at_ms = Some(at);
                let p = self.pick_partition();
                if let Some(shared) = &self.server.shared {
                    shared
                        .broker
                        .partition(p)
                        .store
                        .disk_mut()
                        .faults
                        .fail_next_sync = Some(EIO);
                }
            }
        }
        let mut plan = CrashPlan::None;
        if faulty && self.server.up() && self.rng.chance(self.f.crash_ppm) {
            let r = self.rng.below(100) as u32;
            if r < self.f.crash_mid_turn_pct {
                plan = CrashPlan::MidTurn(self.rng.range(1, 4) as u32);
            } else if r < self.f.crash_mid_turn_pct + self.f.crash_after_submit_pct {
                plan = CrashPlan::AfterSubmit;
            } else {
                self.log(|| "crash between turns".into());
                self.crash(false)?;
            }
        }
        if self.server.down.as_ref().is_some_and(|d| self.now >= d.0) {
            self.restart()?;
        }
        if self.server.up() {
            self.server_turns(plan)?;
        }
        for c in 0..self.clients.len() {
            self.client_turn(c)?;
        }
        if self.server.up() && self.rng.chance(self.f.consume_ppm) {
            let q = self.rng.below(QUEUES.len() as u64) as usize;
            let n = self.rng.range(1, 40) as usize;
            self.consume(q, n)?;
        }
        if self.server.up() && self.rng.chance(self.f.maintain_ppm) {
            self.stats.maintain_calls += 1;
            let p = self.pick_partition();
            self.wake_in_flight_owners();
            if let Some(shared) = &self.server.shared {
                // Errors (a poisoned store) are the store's business; the audit sees the effect.
                let _ = shared.broker.partition(p).store.maintain();
            }
            self.signal_completions();
        }
        Ok(())
    }

    // ---- the server, as the engine drives it ----

    /// Whether shard `s` has IO: a readable or reset connection, a finished send or a due
    /// connection timer.
    fn has_io(&mut self, s: usize) -> bool {
        let now = self.now;
        if !self.server.sent[s].is_empty() {
            return true;
        }
        let turn = &mut self.server.apps[s];
        if turn.next_deadline_ms().is_some_and(|d| d <= now) {
            return true;
        }
        let links = &self.links;
        turn.conns().any(|(_, state, c)| {
            let link = &links[c.link as usize];
            state == ConnState::Open
                && (link.peer_reset || link.c2s.next_at().is_some_and(|t| t <= now))
        })
    }

    /// One step of the server: each shard (in random order with two) runs its turn if the
    /// engine would wake it. A crash planned for this step happens in the first turn that runs,
    /// or between turns if none does.
    fn server_turns(&mut self, mut plan: CrashPlan) -> Result<(), String> {
        self.wake_in_flight_owners();
        let n = self.server.shards;
        let first = if n > 1 {
            self.rng.below(n as u64) as usize
        } else {
            0
        };
        for k in 0..n {
            let s = (first + k) % n;
            if !self.server.up() {
                break;
            }
            // Cleared as the turn starts: a wake during the turn runs the next one.
            let woken = self.server.wake.take(s);
            // The mesh's wake, read as the engine reads its eventfd (both are consumed).
            let mailed = self
                .server
                .parkers
                .get(s)
                .is_some_and(|p| p.park_timeout(std::time::Duration::ZERO).unwrap_or(false));
            let woken = woken || mailed;
            let io = self.has_io(s);
            let due = self.server.apps[s]
                .app()
                .app_deadline()
                .is_some_and(|d| d <= self.now);
            if !(woken || io || due) {
                self.stats.turns_slept += 1;
                continue;
            }
            self.log(|| format!("shard {s} turn (woken {woken}, io {io}, deadline {due})"));
            let p = std::mem::replace(&mut plan, CrashPlan::None);
            self.shard_turn(s, p, !woken && !io)?;
            self.signal_completions();
        }
        if plan != CrashPlan::None {
            self.log(|| format!("crash ({plan:?} planned) while every shard sleeps"));
            return self.crash(plan == CrashPlan::AfterSubmit);
        }
        Ok(())
    }

    /// One loop turn of shard `s`, as `engine/shard.rs` runs it: the completions it would reap
    /// (the sends written in its last turn, then, connection by connection from a random one,
    /// resets and one to three reads of what has arrived), then `Turn::finish`. `deadline_only`:
    /// nothing but its own `app_deadline()` woke it.
    ///
    /// The lost-wake check: the shards' own timers (`app_deadline`: the expiry scan every
    /// 5 s, shard 0's log summary every second) would eventually run a shard that missed a wake,
    /// so a lost wake is a delay, not a stall the quiet-period check could see. Instead, a turn
    /// run only for its deadline, with no commit batch in flight anywhere (so no durability can
    /// be discovered in it for the first time), must not acknowledge recoverable messages the
    /// server had not acknowledged yet: if it does, they became durable earlier and the shard
    /// waiting for them slept through it. Commit failures (retried on a deadline by design) turn
    /// the check off for that incarnation.
    fn shard_turn(
        &mut self,
        shard: usize,
        plan: CrashPlan,
        deadline_only: bool,
    ) -> Result<(), String> {
        let now = self.now;
        self.stats.turns += 1;
        if deadline_only {
            self.stats.deadline_turns += 1;
        }
        let check_wake = deadline_only && !self.any_in_flight() && {
            let c = &self.server.shared.as_ref().expect("up").broker.counters;
            c.commit_failures.load(Ordering::Relaxed) == 0
                && c.store_poisoned.load(Ordering::Relaxed) == 0
        };
        let shared = self.server.shared.clone().expect("the server is up");
        let completed = std::mem::take(&mut self.server.sent[shard]);
        let mut io = SimIo {
            now,
            links: &mut self.links,
            rng: &mut self.rng,
            pipe: &self.f.pipe,
            aud: &mut self.aud,
            broker: &shared.broker,
            qids: &self.server.qids,
            check_wake,
            strict_wakes: self.strict_wakes,
            lost_wakes: &mut self.stats.lost_wakes,
            server_closes: &mut self.stats.server_closes,
            sent: &mut self.server.sent[shard],
            log: self.trace.is_some().then(Vec::new),
            shard,
        };
        let turn = &mut self.server.apps[shard];
        let result = run_turn(turn, &mut io, now, plan, completed);
        let lines = io.log.take().unwrap_or_default();
        // A crash below needs the only reference to the server's state.
        drop(io);
        drop(shared);
        for line in lines {
            self.log(|| line);
        }
        let recvs = result?;
        match plan {
            CrashPlan::MidTurn(_) => {
                self.stats.crashes_mid_turn += 1;
                self.log(|| format!("crash mid-turn after {recvs} receives"));
                self.crash(false)
            }
            CrashPlan::AfterSubmit => {
                self.stats.crashes_after_submit += 1;
                self.log(|| format!("crash after submitting {recvs} receives' records"));
                self.crash(true)
            }
            CrashPlan::None => Ok(()),
        }
    }

    /// A TCP reset: both ends close and whatever was in flight is lost. The server's shard
    /// learns it at its next turn.
    fn reset_link(&mut self, serial: u32) {
        let link = &mut self.links[serial as usize];
        link.c2s.clear();
        link.s2c.clear();
        if link.server_slot.is_some() {
            link.peer_reset = true;
        }
        link.server_gone = true;
        link.client_gone = true;
        let c = link.client;
        if self.clients[c].link == Some(serial) {
            self.client_disconnect(c);
        }
    }

    fn crash(&mut self, submit_first: bool) -> Result<(), String> {
        self.stats.crashes += 1;
        self.aud.on_crash(self.now);
        for link in &mut self.links {
            if !link.server_gone {
                link.server_slot = None;
                link.server_gone = true;
                link.c2s.clear();
                link.s2c.clear();
            }
        }
        for sent in &mut self.server.sent {
            sent.clear();
        }
        // Both shards stop: the process is gone.
        self.server.apps.clear();
        let shared = self.server.shared.take().expect("the server is up");
        self.stats.handoffs += shared.counters.handoffs.load(Ordering::Relaxed);
        self.stats.records_mailed += shared.counters.records_mailed.load(Ordering::Relaxed);
        let Ok(Shared { broker, .. }) = Arc::try_unwrap(shared) else {
            return Err("harness: the server state is still shared at the crash".into());
        };
        let Ok(broker) = Arc::try_unwrap(broker) else {
            return Err("harness: the broker is still shared at the crash".into());
        };
        let mut recovered = Vec::new();
        for (p, mut store) in broker.into_stores().into_iter().enumerate() {
            self.log(|| {
                format!(
                    "partition {p} at the crash: {:?} in flight {}",
                    store.stats(),
                    store.in_flight()
                )
            });
            if submit_first {
                // The records of this turn reach the disk's cache but not its platter: the
                // crash then tears them. A real commit would have appended the transactional
                // sequence records behind them in the same batch, so any prefix kept here is
                // also a prefix of that batch: a state a real crash can produce.
                let _ = store.flush();
            }
            let (store, report) = store
                .crash_and_recover(self.server.store_cfg)
                .map_err(|e| format!("recovery of partition {p} after the crash failed: {e}"))?;
            self.stats.recovery_cut_bytes += report.cut_bytes;
            self.log(|| format!("partition {p} recovered {report:?}"));
            recovered.push(store);
        }
        let back = self.now + self.rng.range(0, self.f.downtime_max_ms);
        self.log(|| format!("crashed; back at {back} ms"));
        self.server.down = Some((back, recovered));
        self.server.crash_at_ms = None;
        Ok(())
    }

    fn restart(&mut self) -> Result<(), String> {
        let (_, mut stores) = self.server.down.take().expect("the server is down");
        for store in &mut stores {
            // The failing fsync was the last one of the previous incarnation.
            store.disk_mut().faults.fail_next_sync = None;
        }
        self.stats.wakes += self.server.wake.calls.swap(0, Ordering::Relaxed);
        self.server.wake.clear();
        self.server.seen_durable = vec![Ticket(0); self.server.shards];
        let (shared, apps, parkers) = boot(
            &self.server.config,
            self.server.shards,
            stores,
            &self.server.wake,
        )
        .map_err(|e| format!("restart failed: {e}"))?;
        self.server.apps = apps;
        self.server.parkers = parkers;
        self.server.shared = Some(shared.clone());
        self.server.epoch += 1;
        let epoch = self.server.epoch;
        self.log(|| format!("server restarted, epoch {epoch}"));
        self.aud
            .check_recovery(&shared.broker, &self.server.qids, self.now)
    }

    fn consume(&mut self, q: usize, n: usize) -> Result<(), String> {
        self.stats.consumer_calls += 1;
        let Some(shared) = self.server.shared.clone() else {
            return Ok(());
        };
        // The receive may reap a commit completion (whose signal wakes the owning shard).
        self.wake_in_flight_owners();
        // A failure (a poisoned store) hands nothing out; the restart brings the messages back.
        let r = shared.broker.receive(QUEUES[q].0, n);
        self.signal_completions();
        self.log(|| {
            format!(
                "consumer receive {} x{n}: {:?}",
                QUEUES[q].0,
                r.as_ref().map(|v| v.len()).map_err(|e| e.to_string())
            )
        });
        if let Ok(got) = r {
            for r in got {
                self.aud.on_consumed(q, &r.bytes)?;
            }
        }
        Ok(())
    }

    /// After the quiet period: restart if needed and receive everything.
    fn drain(&mut self) -> Result<(), String> {
        if let Some(d) = &mut self.server.down {
            d.0 = self.now;
            self.restart()?;
        }
        let shared = self.server.shared.clone().expect("the server is up");
        for (q, (name, _)) in QUEUES.iter().enumerate() {
            loop {
                let got = shared
                    .broker
                    .receive(name, 1000)
                    .map_err(|e| format!("final receive from {name}: {e}"))?;
                if got.is_empty() {
                    break;
                }
                for r in got {
                    self.aud.on_consumed(q, &r.bytes)?;
                }
            }
        }
        Ok(())
    }

    // ---- the clients ----

    fn connect(&mut self, c: usize) {
        let now = self.now;
        let serial = self.links.len() as u32;
        let mut link = Link::new(serial, c);
        let peer = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + c as u8)),
            40_000 + (serial % 20_000) as u16,
        );
        // The engine hands a connection to one shard, which keeps it.
        let shard = if self.server.shards > 1 {
            self.rng.below(self.server.shards as u64) as usize
        } else {
            0
        };
        if shard == 1 {
            self.stats.links_on_shard_1 += 1;
        }
        // The shard's next turn polls the new connection (the accept touches it).
        let turn = &mut self.server.apps[shard];
        let accepted = turn.accept(
            now,
            peer,
            lior::server::MSMQ_LISTENER,
            SimConn { link: serial },
        );
        let slot = match accepted {
            Ok(id) => {
                link.server_slot = Some((shard, id));
                format!("{id:?}")
            }
            Err(_) => {
                link.server_gone = true;
                "refused".to_string()
            }
        };
        self.aud.on_link(serial, self.server.epoch);
        self.links.push(link);
        self.stats.links += 1;
        let cl = &mut self.clients[c];
        let cfg = SessionConfig {
            own_guid: cl.guid,
            window_size: self.f.window,
            ..SessionConfig::default()
        };
        cl.session = Some(Session::initiator(cfg, Guid::NULL, now));
        cl.framer = Framer::new();
        cl.link = Some(serial);
        self.log(|| format!("client {c} connects: link {serial}, shard {shard}, server {slot}"));
    }

    /// The client's connection is gone: everything not deleted is sent again on the next.
    fn client_disconnect(&mut self, c: usize) {
        let reconnect = self.now + self.rng.range(1, self.f.reconnect_max_ms);
        let cl = &mut self.clients[c];
        if let Some(serial) = cl.link.take() {
            self.links[serial as usize].client_gone = true;
        }
        cl.session = None;
        cl.framer = Framer::new();
        for (i, s) in cl.state.iter_mut().enumerate() {
            if matches!(s, MState::InFlight | MState::SessionAcked) {
                *s = MState::Pending;
                cl.pending.insert(i);
            }
        }
        cl.reconnect_at_ms = reconnect;
    }

    fn encode(&self, c: usize, idx: usize, serial: u32) -> Vec<u8> {
        let p = self.clients[c].plan[idx];
        let dest = utf16z(&format!("OS:localhost\\private$\\{}", QUEUES[p.queue].0));
        let label = utf16z("sim");
        let body = auditor::body(c, idx, serial);
        let mut m = UserMessage::new(
            self.clients[c].guid,
            idx as u32 + 1,
            QueueRef::Direct(Utf16(&dest)),
            Utf16(&label),
            &body,
        )
        .with_recoverable(p.kind != Kind::Express);
        let admin = utf16z(&format!("OS:localhost\\private$\\{ADMIN_QUEUE}"));
        if p.kind == Kind::Recoverable && idx % 3 == 0 {
            m = m.with_admin_queue(QueueRef::Direct(Utf16(&admin)), AckFlags(AckFlags::PA));
        }
        if let Kind::Tx { seq_no } = p.kind {
            m = m.with_transaction(TransactionHeader::new(
                TxFlags::default(),
                auditor::tx_sequence_id(c, p.queue),
                seq_no,
                seq_no - 1,
            ));
        }
        let mut out = vec![0u8; m.frame_len()];
        let n = m.encode(&mut out).expect("simulated messages encode");
        out.truncate(n);
        out
    }

    fn client_turn(&mut self, c: usize) -> Result<(), String> {
        let now = self.now;
        {
            let cl = &mut self.clients[c];
            while cl
                .plan
                .get(cl.next_submit)
                .is_some_and(|p| p.submit_at_ms <= now)
            {
                cl.state[cl.next_submit] = MState::Pending;
                cl.pending.insert(cl.next_submit);
                cl.next_submit += 1;
            }
        }
        if self.clients[c].link.is_none() {
            if now < self.clients[c].reconnect_at_ms {
                return Ok(());
            }
            if !self.server.up() {
                self.clients[c].reconnect_at_ms = now + self.rng.range(1, self.f.reconnect_max_ms);
                return Ok(());
            }
            self.connect(c);
        }
        let serial = self.clients[c].link.expect("connected");
        // Receive.
        let mut order_acks = Vec::new();
        let mut broken = false;
        while let Some(bytes) =
            self.links[serial as usize]
                .s2c
                .read(&mut self.rng, now, &self.f.pipe)
        {
            let cl = &mut self.clients[c];
            let session = cl.session.as_mut().expect("connected");
            let r = cl.framer.feed(&bytes, |frame| {
                match session.handle_frame(now, frame) {
                    Ok(Inbound::Message { msg, rec_seq, .. }) => {
                        if let Some(b) = msg.order_ack_body() {
                            order_acks.push(b);
                        }
                        // Nothing the server sends us needs our disk.
                        if let Some(r) = rec_seq {
                            session.handle_durable(now, r);
                        }
                        Ok(())
                    }
                    Ok(Inbound::Control) => Ok(()),
                    Err(e) => Err(e),
                }
            });
            if r.is_err() {
                broken = true;
                break;
            }
        }
        for b in order_acks {
            let Some(q) = (TX_QUEUE_FIRST..QUEUES.len())
                .find(|&q| auditor::tx_sequence_id(c, q) == b.tx_sequence_id)
            else {
                return Err(format!("client {c} got an OrderAck for a foreign sequence"));
            };
            self.on_order_ack(c, q, b.tx_sequence_number)?;
        }
        if self.drain_client_events(c)? || broken {
            self.log(|| format!("client {c} closes link {serial}"));
            self.reset_link(serial);
            return Ok(());
        }
        let link = &self.links[serial as usize];
        if link.server_gone && link.s2c.is_empty() {
            self.log(|| format!("client {c} sees link {serial} closed"));
            self.client_disconnect(c);
            return Ok(());
        }
        let session = self.clients[c].session.as_mut().expect("connected");
        if session.poll_timeout().is_some_and(|t| t <= now) {
            session.handle_timeout(now);
            if self.drain_client_events(c)? {
                self.log(|| format!("client {c} session timed out on link {serial}"));
                self.reset_link(serial);
                return Ok(());
            }
        }
        // The transactional resend timer.
        let cl = &mut self.clients[c];
        if cl.state.contains(&MState::SessionAcked) && now >= cl.order_progress_ms + TX_RESEND_MS {
            for (i, s) in cl.state.iter_mut().enumerate() {
                if *s == MState::SessionAcked {
                    *s = MState::Pending;
                    cl.pending.insert(i);
                }
            }
            cl.order_progress_ms = now;
        }
        // Send what the window admits, oldest first.
        while let Some(&idx) = self.clients[c].pending.first() {
            let frame = self.encode(c, idx, serial);
            let kind = self.clients[c].plan[idx].kind;
            let cl = &mut self.clients[c];
            let session = cl.session.as_mut().expect("connected");
            if session
                .send_message(now, &frame, kind != Kind::Express, idx as u64)
                .is_err()
            {
                break;
            }
            cl.pending.remove(&idx);
            cl.state[idx] = MState::InFlight;
            if kind != Kind::Express {
                self.links[serial as usize].rec_map.push(idx);
            }
            self.aud.on_sent(c, idx, now);
            self.log(|| format!("client {c} sends #{idx} {kind:?} on link {serial}"));
        }
        let session = self.clients[c].session.as_mut().expect("connected");
        session.flush_acks();
        if session.has_transmit() {
            let bytes = session.take_transmit(Vec::new());
            self.links[serial as usize]
                .c2s
                .write(&mut self.rng, now, &self.f.pipe, &bytes);
        }
        Ok(())
    }

    /// Handles the client session's events; true if it closed.
    fn drain_client_events(&mut self, c: usize) -> Result<bool, String> {
        let mut closed = false;
        loop {
            let Some(ev) = self.clients[c]
                .session
                .as_mut()
                .and_then(|s| s.poll_event())
            else {
                return Ok(closed);
            };
            match ev {
                Event::Acked { token } => self.on_acked(c, token as usize)?,
                Event::Closed(_) => closed = true,
                Event::Established { .. } => {}
            }
        }
    }

    fn on_acked(&mut self, c: usize, idx: usize) -> Result<(), String> {
        if self.clients[c].state[idx] != MState::InFlight {
            return Err(format!(
                "client {c}: ack for message #{idx} in state {:?}",
                self.clients[c].state[idx]
            ));
        }
        let p = self.clients[c].plan[idx];
        self.log(|| format!("client {c} acked #{idx}"));
        let shared = self.server.shared.clone();
        if let Some(shared) = &shared {
            self.aud
                .on_client_ack(&shared.broker, &self.server.qids, c, idx, self.now)?;
        }
        let cl = &mut self.clients[c];
        cl.state[idx] = match p.kind {
            Kind::Tx { seq_no } if seq_no > cl.last_order_ack[p.queue - TX_QUEUE_FIRST] => {
                MState::SessionAcked
            }
            _ => {
                cl.done += 1;
                MState::Done
            }
        };
        Ok(())
    }

    fn on_order_ack(&mut self, c: usize, q: usize, n: u32) -> Result<(), String> {
        self.log(|| format!("client {c} OrderAck {} up to {n}", QUEUES[q].0));
        if let Some(shared) = self.server.shared.clone() {
            self.aud
                .check_order_ack(&shared.broker, &self.server.qids, c, q, n, self.now, true)?;
        }
        let now = self.now;
        let cl = &mut self.clients[c];
        let last = &mut cl.last_order_ack[q - TX_QUEUE_FIRST];
        if n > *last {
            *last = n;
            cl.order_progress_ms = now;
        }
        for idx in 0..cl.plan.len() {
            let p = cl.plan[idx];
            if let Kind::Tx { seq_no } = p.kind {
                if p.queue == q && seq_no <= n && cl.state[idx] == MState::SessionAcked {
                    cl.state[idx] = MState::Done;
                    cl.done += 1;
                }
            }
        }
        Ok(())
    }
}

/// The completions and the end of one shard turn (see [`World::shard_turn`]): returns the
/// receives it ran. A crash planned mid-turn stops it after that many receives, one planned
/// after the submit stops it after every receive, before `Turn::finish`.
fn run_turn(
    turn: &mut SimTurn,
    io: &mut SimIo<'_>,
    now: u64,
    plan: CrashPlan,
    completed: Vec<ConnId>,
) -> Result<u32, String> {
    for id in completed {
        turn.on_sent(now, id, None, io)?;
    }
    let mine: Vec<(ConnId, u32)> = turn
        .conns()
        .filter(|(_, state, _)| *state == ConnState::Open)
        .map(|(id, _, c)| (id, c.link))
        .collect();
    let n = mine.len();
    let start = io.rng.below(n as u64) as usize;
    let mut recvs = 0;
    'conns: for k in 0..n {
        let (id, link) = mine[(start + k) % n];
        if io.links[link as usize].peer_reset {
            turn.on_recv(now, id, Received::Closed(NetClose::PeerReset), io)?;
            continue;
        }
        let reads = io.rng.range(1, 3);
        for _ in 0..reads {
            if turn.state(id) != Some(ConnState::Open) {
                break;
            }
            let Some(bytes) = io.links[link as usize].c2s.read(io.rng, now, io.pipe) else {
                break;
            };
            turn.on_recv(now, id, Received::Bytes(&bytes), io)?;
            recvs += 1;
            if matches!(plan, CrashPlan::MidTurn(k) if recvs >= k) {
                break 'conns;
            }
        }
    }
    if plan == CrashPlan::None {
        turn.finish(now, true, io)?;
    }
    Ok(recvs)
}
