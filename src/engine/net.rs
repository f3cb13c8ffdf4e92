//! The network engine's public surface: the [`App`] seam a protocol layer implements, the
//! engine configuration and its limits, starting and stopping the shards, wakers and counters.
//! Nothing here (or below it) makes a protocol decision: bytes in, bytes out, deadlines, closes.
//!
//! # Shape
//!
//! [`Engine::start`] probes io_uring, checks that no other socket listens on the address (the
//! kernel would let another process of the same user join the `SO_REUSEPORT` group and take a
//! share of the connections), binds one `SO_REUSEPORT` listening socket per shard (the kernel
//! spreads incoming connections across them), then starts one thread per core in
//! [`EngineConfig::cores`], each pinned to its core and owning its own ring, buffers, connection
//! table and app instance (from the factory, called on that thread). It returns an
//! [`EngineHandle`] once every shard is ready, so [`EngineHandle::local_addr`] is known (port 0
//! works). [`EngineHandle::shutdown`] stops and joins every shard cleanly; [`Engine::run`] does
//! the same on SIGTERM or SIGINT.
//!
//! # One loop turn of a shard
//!
//! 1. Wait in `io_uring_enter` until a completion arrives, the earliest connection deadline
//!    passes, or another thread wakes the shard ([`Waker`]); the same call submits the
//!    operations queued during the previous turn.
//! 2. Read the clock once (`now_ms`), drain every completion, process them in order
//!    ([`App::accept`], [`App::on_recv`], [`App::on_connected`], closes and [`App::on_closed`]).
//! 3. Fire expired deadlines ([`App::on_timeout`]).
//! 4. [`App::end_of_turn`], then [`App::poll_connect`] and [`App::poll_ready`].
//! 5. For every connection touched this turn (accepted, connected, received bytes, finished a
//!    send, timed out, or named by `poll_ready`): [`App::poll_transmit`] if no send is in
//!    flight, then [`App::wants_close`], then re-read [`App::deadline`].
//!
//! # Decisions worth knowing
//!
//! - Timers: each shard keeps a bounded heap of connection deadlines (lazy invalidation) and
//!   bounds its `io_uring_enter` wait by the earliest live one (`IORING_ENTER_EXT_ARG` with a
//!   timespec). That is the one ring timeout per shard, with nothing to cancel or re-arm when the
//!   earliest deadline moves and no stale timeout completions to recognise.
//! - Receive: multishot receive into a registered buffer ring
//!   ([`EngineConfig::recv_buffer_count`] x [`EngineConfig::recv_buffer_size`] per shard). Every
//!   buffer goes back to the kernel as soon as [`App::on_recv`] returns, so when the ring runs
//!   dry (ENOBUFS) the engine counts it and re-arms that receive at the end of the same turn.
//! - No receive backpressure: the engine receives as long as the peer sends. The protocol's own
//!   window (or an [`AppError`]) is what bounds a peer.
//! - Wake-ups: each shard reads its eventfd through the ring, so a [`Waker`] from any thread
//!   ends the shard's wait.
//! - Closing: the engine shuts the socket down, cancels every operation on it and removes the
//!   slot only after the last completion. A close with unread bytes from the peer may reach the
//!   peer as a reset (ordinary TCP behaviour).
//! - Errno decisions: receive ECONNRESET/EPIPE close with [`CloseReason::PeerReset`], ENOBUFS
//!   re-arms, EINTR/EAGAIN re-arm, ECANCELED is our own close, anything else closes with
//!   [`CloseReason::Io`]; send EINTR/EAGAIN resend, ECONNRESET/EPIPE close with `PeerReset`,
//!   others `Io`; accept ECONNABORTED/EINTR/EAGAIN/EPROTO are ignored, EMFILE/ENFILE/ENOMEM/
//!   ENOBUFS and anything unexpected pause accepting for [`EngineConfig::accept_backoff_ms`];
//!   connect errors become [`CloseReason::ConnectFailed`], the link timeout
//!   [`CloseReason::ConnectTimedOut`]; `io_uring_enter` ETIME/EINTR/EBUSY/EAGAIN just run a turn,
//!   any other error stops the shard with [`EngineError::Io`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::admission::PeerLimiter;
use super::probe::{self, ProbeError};
use super::shard::Shard;
use super::signal::ShutdownSignal;
use super::sockets;

pub use super::sockets::now_ms;

/// A generation-checked handle to one connection of one shard. Stale handles (the connection
/// closed, the slot was reused) are recognised and ignored by the engine.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ConnId {
    /// Index in the shard's connection table.
    pub slot: u32,
    /// Distinguishes successive connections that reuse the same slot.
    pub generation: u32,
}

/// An app's reason for refusing bytes from a peer; the engine closes that connection and hands
/// the code back in [`CloseReason::App`]. The meaning of the code belongs to the app.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AppError(pub u32);

/// A Linux errno value, as reported by a failed socket operation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (errno {})",
            io::Error::from_raw_os_error(self.0),
            self.0
        )
    }
}

/// Why a connection ended; given to [`App::on_closed`] and counted in [`Counters`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum CloseReason {
    /// The peer closed its side in order (the receive returned end of stream).
    PeerClosed,
    /// The peer reset the connection (ECONNRESET or EPIPE).
    PeerReset,
    /// Another socket error on an established connection.
    Io(Errno),
    /// [`App::on_recv`] returned this error.
    App(AppError),
    /// [`App::wants_close`] returned true and every transmit had been sent.
    AppRequested,
    /// [`App::poll_transmit`] produced more than [`EngineConfig::send_buffered_max_bytes`].
    TransmitTooLarge,
    /// The engine is shutting down.
    Shutdown,
    /// An outgoing connection failed (ECONNREFUSED, ENETUNREACH, ...).
    ConnectFailed(Errno),
    /// An outgoing connection did not complete within [`EngineConfig::connect_timeout_ms`].
    ConnectTimedOut,
    /// An outgoing connection was not attempted: the shard's table was full.
    LimitReached,
}

/// The seam between the engine and a protocol layer: one instance per shard, driven only from
/// that shard's thread, never told about io_uring. Every method is called with the loop's
/// `now_ms` (monotonic milliseconds, see [`now_ms`]) read once per turn. Methods must not block:
/// a blocked method stalls every connection of the shard.
pub trait App {
    /// Per-connection state, stored by the engine in its connection table next to the socket.
    type Conn;

    /// A peer connected. Return None to refuse (the engine closes the socket at once and counts
    /// it); the app enforces its own session limits (MaxInSessions) here. `id` names the
    /// connection in [`App::poll_ready`].
    fn accept(&mut self, now_ms: u64, id: ConnId, peer: SocketAddr) -> Option<Self::Conn>;

    /// Bytes arrived. `bytes` borrows the kernel-filled receive buffer (no copy); the buffer
    /// returns to the kernel when this call returns, so keep what you need by copying it.
    /// Err closes this connection with [`CloseReason::App`].
    fn on_recv(&mut self, now_ms: u64, conn: &mut Self::Conn, bytes: &[u8])
        -> Result<(), AppError>;

    /// Asked once per turn for a touched connection with no send in flight. Append the bytes to
    /// send to `buf` (an empty recycled vector), or swap your own buffer into it. If `buf` is
    /// non-empty afterwards the engine sends all of it (handling short writes) and recycles the
    /// vector later; at most one send per connection is in flight. Leave it empty for nothing.
    fn poll_transmit(&mut self, now_ms: u64, conn: &mut Self::Conn, buf: &mut Vec<u8>);

    /// The next time, in `now_ms` units, at which [`App::on_timeout`] should run for this
    /// connection, or None. Re-read after every touch; after `on_timeout` the app must clear or
    /// move the deadline, or it fires again on the next turn.
    fn deadline(&self, conn: &Self::Conn) -> Option<u64>;

    /// The deadline from [`App::deadline`] has passed.
    fn on_timeout(&mut self, now_ms: u64, conn: &mut Self::Conn);

    /// True to close this connection once no transmit is pending (checked after
    /// [`App::poll_transmit`] returns nothing and no send is in flight).
    fn wants_close(&self, conn: &Self::Conn) -> bool;

    /// The connection is gone; its state comes back to the app for the last time. Called once
    /// for every connection `accept` or `poll_connect` handed over, including failed connects.
    fn on_closed(&mut self, now_ms: u64, conn: Self::Conn, reason: CloseReason);

    /// Called once per loop turn after every completion and timeout was handled and before the
    /// engine submits (group commit, ack flushing, draining cross-thread queues belong here).
    /// Also called once more after the last connection closed at shutdown.
    fn end_of_turn(&mut self, now_ms: u64);

    /// Outgoing connections to open (initiator role). Polled after `end_of_turn` until None or a
    /// per-turn limit. A failure is reported through [`App::on_closed`].
    fn poll_connect(&mut self, _now_ms: u64) -> Option<(SocketAddr, Self::Conn)> {
        None
    }

    /// An outgoing connection was established; bytes can flow from now on.
    fn on_connected(&mut self, _now_ms: u64, _id: ConnId, _conn: &mut Self::Conn) {}

    /// Connections that were not touched by IO this turn but have something new for the engine
    /// (a transmit, a changed deadline, a close), e.g. after `end_of_turn` made acks available.
    /// Drained after `end_of_turn`; stale ids are ignored.
    fn poll_ready(&mut self) -> Option<ConnId> {
        None
    }

    /// Other connections the app wants closed now, with the code handed back in
    /// [`CloseReason::App`] (say, to drop the session holding the oldest partial packet when a
    /// shared budget runs out). Drained after `end_of_turn` and after every receive completion;
    /// stale ids are ignored.
    fn poll_close(&mut self) -> Option<(ConnId, AppError)> {
        None
    }

    /// The next time, in `now_ms` units, at which [`App::on_app_deadline`] should run for the
    /// app as a whole (retries, resends, expiry scans), or None. Read before every wait, so a
    /// shard with no IO and no connection still wakes for it.
    fn app_deadline(&self) -> Option<u64> {
        None
    }

    /// The deadline from [`App::app_deadline`] has passed; called at most once per turn, after
    /// connection timeouts and before [`App::end_of_turn`]. The app must clear or move the
    /// deadline, or it fires again on the next turn.
    fn on_app_deadline(&mut self, _now_ms: u64) {}
}

/// What the factory of [`Engine::start_with_ctx`] gets on each shard's thread: which shard it
/// builds the app for, how many there are, and every shard's [`Waker`] (by index), made before
/// any app, so an app can wake the others (say, through a [`crate::engine::mesh::Mesh`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ShardCtx {
    /// This shard's index, `0..shards`.
    pub index: usize,
    /// How many shards the engine runs.
    pub shards: usize,
    /// `wakers[i]` wakes shard `i`.
    pub wakers: Arc<[Waker]>,
}

/// Every limit and knob of the engine, per shard unless said otherwise. A full table refuses;
/// nothing grows past these.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where to listen (port 0 picks a free port, see [`EngineHandle::local_addr`]); None runs
    /// only outgoing connections. Default None: the protocol layer chooses its port.
    pub listen_addr: Option<SocketAddr>,
    /// The CPUs to run one shard on each; empty means every CPU this process may use. Default
    /// empty.
    pub cores: Vec<usize>,
    /// Pin each shard thread to its core with `sched_setaffinity`. Default true.
    pub pin_threads: bool,
    /// Connections per shard, accepted and outgoing together; beyond it new connections are
    /// accepted and closed at once (counted in `refused_limit`). Default 1024.
    pub max_connections: usize,
    /// Provided receive buffers per shard; a power of two, at most 32768. Default 512.
    pub recv_buffer_count: u16,
    /// Bytes per receive buffer (the most one `on_recv` call sees). Default 16384.
    pub recv_buffer_size: u32,
    /// The most bytes one connection may hand over in a single transmit; more closes the
    /// connection with [`CloseReason::TransmitTooLarge`]. Default 4 MiB + 64 KiB (an MSMQ
    /// message body limit plus headers).
    pub send_buffered_max_bytes: usize,
    /// The listen(2) backlog. Default 1024.
    pub listen_backlog: u32,
    /// Submission queue entries per ring (the completion queue gets four times as many).
    /// Default 1024.
    pub ring_entries: u32,
    /// How long an outgoing connect may take. Default 10000.
    pub connect_timeout_ms: u64,
    /// Outgoing connects started per loop turn at most. Default 64.
    pub connects_per_turn_max: usize,
    /// Recycled transmit vectors kept per shard. Default 256.
    pub spare_buffers_max: usize,
    /// Recycled transmit vectors larger than this are freed instead of kept. Default 1 MiB.
    pub spare_buffer_capacity_max_bytes: usize,
    /// Pause before accepting again after the process ran out of descriptors or memory
    /// (EMFILE, ENFILE, ENOMEM, ENOBUFS). Default 100.
    pub accept_backoff_ms: u64,
    /// How long shutdown waits for in-flight transmits before cancelling them; after twice this
    /// a shard stops waiting for the kernel and leaks its buffers rather than free memory the
    /// kernel may still write. Default 5000.
    pub shutdown_grace_ms: u64,
    /// Set TCP_NODELAY on every connection. Default true.
    pub tcp_nodelay: bool,
    /// Incoming connections one peer IP address may hold open at once over every shard;
    /// beyond it new ones are closed at once (counted in `refused_per_ip`). Default unlimited.
    pub max_connections_per_ip: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            listen_addr: None,
            cores: Vec::new(),
            pin_threads: true,
            max_connections: 1024,
            recv_buffer_count: 512,
            recv_buffer_size: 16 * 1024,
            send_buffered_max_bytes: 4 * 1024 * 1024 + 64 * 1024,
            listen_backlog: 1024,
            ring_entries: 1024,
            connect_timeout_ms: 10_000,
            connects_per_turn_max: 64,
            spare_buffers_max: 256,
            spare_buffer_capacity_max_bytes: 1024 * 1024,
            accept_backoff_ms: 100,
            shutdown_grace_ms: 5000,
            tcp_nodelay: true,
            max_connections_per_ip: usize::MAX,
        }
    }
}

impl EngineConfig {
    fn validate(&self) -> Result<(), EngineError> {
        let bad = |what: &'static str| Err(EngineError::Config(what));
        if self.max_connections_per_ip == 0 {
            return bad("max_connections_per_ip must be positive");
        }
        if self.max_connections == 0 || self.max_connections > (u32::MAX as usize) {
            return bad("max_connections must be between 1 and u32::MAX");
        }
        if !self.recv_buffer_count.is_power_of_two() || self.recv_buffer_count > 32768 {
            return bad("recv_buffer_count must be a power of two no larger than 32768");
        }
        if self.recv_buffer_size == 0 || self.recv_buffer_size > i32::MAX as u32 {
            return bad("recv_buffer_size must be between 1 and i32::MAX");
        }
        if self.connects_per_turn_max == 0 {
            return bad("connects_per_turn_max must be positive");
        }
        if self.send_buffered_max_bytes == 0 {
            return bad("send_buffered_max_bytes must be positive");
        }
        if self.ring_entries < 8 || !self.ring_entries.is_power_of_two() {
            return bad("ring_entries must be a power of two of at least 8");
        }
        Ok(())
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters of one shard: atomics written by the shard thread (Relaxed), readable
        /// from any thread for metrics. [`Counters::snapshot`] copies them into a plain struct.
        #[derive(Default, Debug)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A plain copy of [`Counters`] (or their sum over shards).
        #[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
        pub struct CountersSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Copies every counter; each is read atomically, the set is not one instant.
            pub fn snapshot(&self) -> CountersSnapshot {
                CountersSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl CountersSnapshot {
            /// Field-by-field sum, for totals over shards.
            pub fn add(&mut self, other: &CountersSnapshot) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

counters! {
    /// Incoming connections the app accepted.
    accepted,
    /// Incoming connections closed at once because the table was full.
    refused_limit,
    /// Incoming connections the app refused.
    refused_app,
    /// Incoming connections closed at once because their peer address had too many open.
    refused_per_ip,
    /// Incoming connections closed at once because the shard was shutting down.
    refused_shutdown,
    /// Accept failures other than a peer aborting before the accept.
    accept_errors,
    /// Outgoing connections established.
    connected,
    /// Outgoing connections that failed.
    connect_failed,
    /// Outgoing connections that timed out.
    connect_timed_out,
    /// Outgoing connections not attempted because the table was full.
    connect_refused_limit,
    /// Closes because the peer closed in order.
    closed_peer_closed,
    /// Closes because the peer reset.
    closed_peer_reset,
    /// Closes because of another socket error.
    closed_io_error,
    /// Closes because `on_recv` returned an error.
    closed_app_error,
    /// Closes the app asked for through `wants_close`.
    closed_app_requested,
    /// Closes because a transmit exceeded `send_buffered_max_bytes`.
    closed_transmit_too_large,
    /// Closes caused by shutdown.
    closed_shutdown,
    /// Bytes handed to the app.
    bytes_in,
    /// Bytes the kernel accepted for sending.
    bytes_out,
    /// Times a receive stopped because every provided buffer was in use (ENOBUFS).
    recv_buffer_exhausted,
    /// Completions for connections that had already gone (dropped after returning buffers).
    stale_completions,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    pub(crate) fn count_close(&self, reason: CloseReason) {
        let counter = match reason {
            CloseReason::PeerClosed => &self.closed_peer_closed,
            CloseReason::PeerReset => &self.closed_peer_reset,
            CloseReason::Io(_) => &self.closed_io_error,
            CloseReason::App(_) => &self.closed_app_error,
            CloseReason::AppRequested => &self.closed_app_requested,
            CloseReason::TransmitTooLarge => &self.closed_transmit_too_large,
            CloseReason::Shutdown => &self.closed_shutdown,
            CloseReason::ConnectFailed(_) => &self.connect_failed,
            CloseReason::ConnectTimedOut => &self.connect_timed_out,
            CloseReason::LimitReached => &self.connect_refused_limit,
        };
        Counters::bump(counter, 1);
    }
}

/// Wakes one shard from any thread: its loop runs a turn (so [`App::end_of_turn`],
/// [`App::poll_connect`] and [`App::poll_ready`] see whatever the caller queued). Cheap to
/// clone; keeps the shard's eventfd open for as long as it lives.
#[derive(Clone, Debug)]
pub struct Waker {
    eventfd: Arc<OwnedFd>,
}

impl Waker {
    pub(crate) fn new(eventfd: Arc<OwnedFd>) -> Self {
        Waker { eventfd }
    }

    /// Makes the shard run a loop turn soon. Never blocks in practice (an eventfd write only
    /// blocks when its counter nears 2^64).
    pub fn wake(&self) -> io::Result<()> {
        sockets::eventfd_signal(self.eventfd.as_raw_fd())
    }
}

/// Errors starting or running the engine (not the hot path: connection errors are
/// [`CloseReason`]s, never these).
#[derive(Debug)]
pub enum EngineError {
    /// io_uring is unusable here; the message says why and what to check.
    Probe(ProbeError),
    /// The configuration breaks a rule.
    Config(&'static str),
    /// A system call failed while setting up or running; `what` names the step.
    Io {
        shard: Option<usize>,
        what: &'static str,
        error: io::Error,
    },
    /// A shard thread panicked.
    ShardPanicked(usize),
    /// Another socket already listens on the address; the message names its holder.
    AddressInUse(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Probe(error) => write!(f, "{error}"),
            EngineError::Config(what) => write!(f, "invalid engine configuration: {what}"),
            EngineError::Io {
                shard: Some(shard),
                what,
                error,
            } => write!(f, "shard {shard}: {what}: {error}"),
            EngineError::Io {
                shard: None,
                what,
                error,
            } => write!(f, "{what}: {error}"),
            EngineError::ShardPanicked(shard) => write!(f, "shard {shard} panicked"),
            EngineError::AddressInUse(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for EngineError {}

impl EngineError {
    pub(crate) fn io(shard: Option<usize>, what: &'static str, error: io::Error) -> Self {
        EngineError::Io { shard, what, error }
    }
}

/// What a shard thread receives from [`Engine::start`].
pub(crate) struct ShardSetup {
    pub(crate) index: usize,
    pub(crate) core: usize,
    pub(crate) config: EngineConfig,
    pub(crate) listener: Option<OwnedFd>,
    pub(crate) eventfd: Arc<OwnedFd>,
    pub(crate) wakers: Arc<[Waker]>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) peers: Arc<PeerLimiter>,
}

struct ShardHandle {
    core: usize,
    waker: Waker,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<Result<(), EngineError>>>,
}

/// The running engine. Dropping it shuts the shards down too (errors are then lost; call
/// [`EngineHandle::shutdown`] to see them).
pub struct EngineHandle {
    /// Holds the listen address against another lior process (see `host::claim_address`).
    _claim: Option<std::os::unix::net::UnixListener>,
    local_addr: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    shards: Vec<ShardHandle>,
}

impl EngineHandle {
    /// The bound listening address (the real port when port 0 was asked for), or None when the
    /// engine does not listen.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// How many shards run.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The core each shard runs on, by shard index.
    pub fn cores(&self) -> Vec<usize> {
        self.shards.iter().map(|shard| shard.core).collect()
    }

    /// A waker for one shard, for cross-thread work.
    pub fn waker(&self, shard: usize) -> Option<Waker> {
        self.shards.get(shard).map(|s| s.waker.clone())
    }

    /// The live counters of one shard, to hand to a metrics thread.
    pub fn shard_counters(&self, shard: usize) -> Option<Arc<Counters>> {
        self.shards.get(shard).map(|s| Arc::clone(&s.counters))
    }

    /// The sum of every shard's counters right now.
    pub fn counters(&self) -> CountersSnapshot {
        let mut total = CountersSnapshot::default();
        for shard in &self.shards {
            total.add(&shard.counters.snapshot());
        }
        total
    }

    /// Asks every shard to stop: each finishes its turn, stops accepting, lets in-flight
    /// transmits finish (up to `shutdown_grace_ms`), closes every connection
    /// ([`CloseReason::Shutdown`]), calls a last [`App::end_of_turn`] and exits. Then joins them
    /// and returns the first error any shard hit.
    pub fn shutdown(mut self) -> Result<(), EngineError> {
        self.stop_and_join()
    }

    /// Blocks until SIGTERM or SIGINT (see [`crate::engine::signal`]), then shuts down.
    pub fn run_until_signal(self, signal: &ShutdownSignal) -> Result<(), EngineError> {
        signal.wait();
        self.shutdown()
    }

    fn stop_and_join(&mut self) -> Result<(), EngineError> {
        self.stop.store(true, Ordering::SeqCst);
        for shard in &self.shards {
            // A failed wake leaves the shard to notice the flag on its next completion or
            // deadline; nothing better can be done from here, so the error is only logged.
            if let Err(error) = shard.waker.wake() {
                tracing::warn!(%error, "could not wake a shard for shutdown");
            }
        }
        let mut first_error = None;
        for (index, shard) in self.shards.iter_mut().enumerate() {
            let Some(thread) = shard.thread.take() else {
                continue;
            };
            let result = match thread.join() {
                Ok(result) => result,
                Err(_) => Err(EngineError::ShardPanicked(index)),
            };
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        if let Err(error) = self.stop_and_join() {
            tracing::error!(%error, "engine shard failed");
        }
    }
}

/// Starts and runs the network engine.
pub struct Engine;

impl Engine {
    /// Probes io_uring, binds the listening sockets, starts one pinned shard thread per core with
    /// its own app from `app_factory(shard_index)` (called on the shard's thread, so the app need
    /// not be Send), and returns once every shard is ready to run its loop.
    pub fn start<A, F>(config: EngineConfig, app_factory: F) -> Result<EngineHandle, EngineError>
    where
        A: App + 'static,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        Engine::start_with_ctx(config, move |ctx: ShardCtx| app_factory(ctx.index))
    }

    /// As [`Engine::start`], but the factory gets a [`ShardCtx`]: every shard's waker exists
    /// before the first app is made.
    pub fn start_with_ctx<A, F>(
        config: EngineConfig,
        app_factory: F,
    ) -> Result<EngineHandle, EngineError>
    where
        A: App + 'static,
        F: Fn(ShardCtx) -> A + Send + Sync + 'static,
    {
        // The probe runs on a throw-away thread: tearing down a ring queues kernel task work
        // (TWA_SIGNAL) on every thread that used it, which would make the caller's next
        // blocking system call fail once with EINTR.
        let probed = std::thread::scope(|scope| scope.spawn(probe::check).join());
        match probed {
            Ok(result) => result.map_err(EngineError::Probe)?,
            Err(_) => return Err(EngineError::ShardPanicked(0)),
        };
        config.validate()?;
        let cores = if config.cores.is_empty() {
            sockets::allowed_cpus()
                .map_err(|error| EngineError::io(None, "sched_getaffinity", error))?
        } else {
            config.cores.clone()
        };
        if cores.is_empty() {
            return Err(EngineError::Config("no CPU to run a shard on"));
        }

        // Bind every listener before any thread starts, so a bind error is reported plainly and
        // the port chosen for port 0 is shared by every shard.
        let mut listeners = Vec::with_capacity(cores.len());
        let mut local_addr = None;
        let mut claim = None;
        if let Some(mut addr) = config.listen_addr {
            // SO_REUSEPORT would also let another process (of the same user) share the port
            // and take a share of the connections: refuse to start beside one.
            if addr.port() != 0 {
                claim = Some(super::host::claim_address(addr).map_err(EngineError::AddressInUse)?);
            }
            super::host::ensure_no_listener(addr, "listen").map_err(EngineError::AddressInUse)?;
            for _ in &cores {
                let fd =
                    sockets::listen_reuseport(addr, config.listen_backlog).map_err(|error| {
                        EngineError::io(None, "binding the listening socket", error)
                    })?;
                if local_addr.is_none() {
                    let bound = sockets::local_addr(fd.as_raw_fd())
                        .map_err(|error| EngineError::io(None, "getsockname", error))?;
                    addr = bound;
                    local_addr = Some(bound);
                }
                listeners.push(Some(fd));
            }
        } else {
            listeners.resize_with(cores.len(), || None);
        }

        let stop = Arc::new(AtomicBool::new(false));
        let peers = PeerLimiter::new(config.max_connections_per_ip);
        let factory = Arc::new(app_factory);
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), EngineError>)>();
        let mut handle = EngineHandle {
            _claim: claim,
            local_addr,
            stop: Arc::clone(&stop),
            shards: Vec::with_capacity(cores.len()),
        };
        let mut eventfds = Vec::with_capacity(cores.len());
        for index in 0..cores.len() {
            eventfds
                .push(Arc::new(sockets::eventfd().map_err(|error| {
                    EngineError::io(Some(index), "eventfd", error)
                })?));
        }
        let wakers: Arc<[Waker]> = eventfds
            .iter()
            .map(|eventfd| Waker::new(Arc::clone(eventfd)))
            .collect();
        for (index, ((core, listener), eventfd)) in cores
            .iter()
            .copied()
            .zip(listeners)
            .zip(eventfds)
            .enumerate()
        {
            let counters = Arc::new(Counters::default());
            let setup = ShardSetup {
                index,
                core,
                config: config.clone(),
                listener,
                eventfd: Arc::clone(&eventfd),
                wakers: Arc::clone(&wakers),
                stop: Arc::clone(&stop),
                counters: Arc::clone(&counters),
                peers: Arc::clone(&peers),
            };
            let factory = Arc::clone(&factory);
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("lior-shard-{index}"))
                .spawn(move || shard_main(setup, &*factory, ready))
                .map_err(|error| {
                    EngineError::io(Some(index), "spawning the shard thread", error)
                })?;
            handle.shards.push(ShardHandle {
                core,
                waker: Waker::new(eventfd),
                counters,
                thread: Some(thread),
            });
        }
        drop(ready_tx);

        for _ in 0..handle.shards.len() {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((_, Err(error))) => {
                    // Dropping the handle stops and joins the shards that did start.
                    drop(handle);
                    return Err(error);
                }
                Err(_) => {
                    // A shard thread died before reporting: it panicked during set-up.
                    let index = handle.shards.len();
                    drop(handle);
                    return Err(EngineError::ShardPanicked(index));
                }
            }
        }
        Ok(handle)
    }

    /// Starts the engine, installs the SIGTERM/SIGINT handlers and blocks until one arrives,
    /// then shuts down cleanly.
    pub fn run<A, F>(config: EngineConfig, app_factory: F) -> Result<(), EngineError>
    where
        A: App + 'static,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        Engine::run_with_ctx(config, move |ctx: ShardCtx| app_factory(ctx.index))
    }

    /// As [`Engine::run`], with the factory of [`Engine::start_with_ctx`].
    pub fn run_with_ctx<A, F>(config: EngineConfig, app_factory: F) -> Result<(), EngineError>
    where
        A: App + 'static,
        F: Fn(ShardCtx) -> A + Send + Sync + 'static,
    {
        let signal = super::signal::install()
            .map_err(|error| EngineError::io(None, "installing signal handlers", error))?;
        let handle = Engine::start_with_ctx(config, app_factory)?;
        handle.run_until_signal(&signal)
    }
}

fn shard_main<A, F>(
    setup: ShardSetup,
    factory: &F,
    ready: mpsc::Sender<(usize, Result<(), EngineError>)>,
) -> Result<(), EngineError>
where
    A: App,
    F: Fn(ShardCtx) -> A,
{
    let index = setup.index;
    if setup.config.pin_threads {
        if let Err(error) = sockets::pin_current_thread(setup.core) {
            let error = EngineError::io(Some(index), "sched_setaffinity", error);
            // The receiver only disappears if start() itself is gone; nothing to report to then.
            let _ = ready.send((index, Err(error)));
            return Ok(());
        }
    }
    let shard = match Shard::new(setup, factory) {
        Ok(shard) => shard,
        Err(error) => {
            let _ = ready.send((index, Err(error)));
            return Ok(());
        }
    };
    let _ = ready.send((index, Ok(())));
    drop(ready);
    shard.run()
}
