//! The engine's configuration, its per-shard counters and its errors, and what a shard thread
//! is handed at start: the types both the starting side ([`super::net`]) and the running side
//! (`shard.rs`) need, kept here so neither imports the other. Re-exported from
//! [`super::net`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::admission::PeerLimiter;
use super::app::{CloseReason, Listener, Waker};
use super::probe::ProbeError;

/// Listen addresses one engine takes at most (each costs one socket and one multishot accept
/// per shard).
pub const LISTENERS_MAX: usize = 16;

/// Every limit and knob of the engine, per shard unless said otherwise. A full table refuses;
/// nothing grows past these.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where to listen, each address with the [`Listener`] tag that [`super::app::App::accept`]
    /// receives for connections that arrive on it (tags chosen by the caller, unique; see
    /// [`EngineConfig::listening_on`] for the one-address case). Every shard accepts on every
    /// address. Port 0 picks a free port (see [`super::net::EngineHandle::local_addr_of`]).
    /// Empty runs only outgoing connections. Default empty: the protocol layer chooses.
    pub listen: Vec<(Listener, SocketAddr)>,
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
            listen: Vec::new(),
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
    /// The default configuration listening on one address, tagged [`Listener::FIRST`].
    pub fn listening_on(addr: SocketAddr) -> EngineConfig {
        EngineConfig {
            listen: vec![(Listener::FIRST, addr)],
            ..EngineConfig::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), EngineError> {
        let bad = |what: &'static str| Err(EngineError::Config(what));
        if self.listen.len() > LISTENERS_MAX {
            return bad("more listen addresses than LISTENERS_MAX");
        }
        for (i, (tag, addr)) in self.listen.iter().enumerate() {
            for (other_tag, other_addr) in &self.listen[..i] {
                if tag == other_tag {
                    return bad("two listen addresses have the same Listener tag");
                }
                if addr == other_addr && addr.port() != 0 {
                    return bad("the same listen address is given twice");
                }
            }
        }
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
    /// File operations (store writes and fdatasyncs) the app handed to the shard's ring.
    file_ops_submitted,
    /// File operations that completed with an errno (the app decides what it means).
    file_ops_failed,
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
    /// A listening socket could not be opened on `addr` (bind or listen failed).
    Listen { addr: SocketAddr, error: io::Error },
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
            EngineError::Listen { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
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

/// What a shard thread receives from [`super::net::Engine::start`].
pub(crate) struct ShardSetup {
    pub(crate) index: usize,
    pub(crate) core: usize,
    pub(crate) config: EngineConfig,
    /// This shard's listening sockets, one per configured address, with their tags.
    pub(crate) listeners: Vec<(Listener, OwnedFd)>,
    pub(crate) eventfd: Arc<OwnedFd>,
    pub(crate) wakers: Arc<[Waker]>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) peers: Arc<PeerLimiter>,
}
