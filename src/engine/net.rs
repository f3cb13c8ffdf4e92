//! The network engine's public surface: the [`App`] seam a protocol layer implements, the
//! engine configuration and its limits, starting and stopping the shards, wakers and counters.
//! Nothing here (or below it) makes a protocol decision: bytes in, bytes out, deadlines, closes.
//! The app seam lives in `app.rs` and the configuration, counters and errors in `config.rs`
//! (so `shard.rs` needs neither this module nor the other way round); callers name them here.
//!
//! # Shape
//!
//! [`Engine::start`] probes io_uring, checks that no other socket listens on any of the
//! addresses of [`EngineConfig::listen`] (the kernel would let another process of the same user
//! join the `SO_REUSEPORT` group and take a share of the connections), binds one `SO_REUSEPORT`
//! listening socket per shard and per address (the kernel spreads incoming connections across
//! a group; a failure names the address and fails the start), then starts one thread per core in
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
//!    ([`App::accept`] with the [`Listener`] the connection arrived on, [`App::on_recv`], [`App::on_connected`], closes and [`App::on_closed`]).
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

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::admission::PeerLimiter;
use super::probe;
use super::shard::Shard;
use super::signal::ShutdownSignal;
use super::sockets;

pub use super::app::{
    App, AppError, CloseReason, ConnId, Errno, FileOp, FileOpKind, Listener, ShardCtx, Waker,
    FILE_TOKEN_BITS,
};
pub(crate) use super::config::ShardSetup;
pub use super::config::{Counters, CountersSnapshot, EngineConfig, EngineError, LISTENERS_MAX};
pub use super::sockets::now_ms;

struct ShardHandle {
    core: usize,
    waker: Waker,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<Result<(), EngineError>>>,
}

/// The running engine. Dropping it shuts the shards down too (errors are then lost; call
/// [`EngineHandle::shutdown`] to see them).
pub struct EngineHandle {
    /// Holds the listen addresses against another lior process (see `host::claim_address`).
    _claims: Vec<std::os::unix::net::UnixListener>,
    local_addrs: Vec<(Listener, SocketAddr)>,
    stop: Arc<AtomicBool>,
    shards: Vec<ShardHandle>,
}

impl EngineHandle {
    /// The bound address of the first configured listener (the real port when port 0 was asked
    /// for), or None when the engine does not listen. See [`EngineHandle::local_addr_of`].
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addrs.first().map(|&(_, addr)| addr)
    }

    /// The bound address of the listener tagged `listener`, or None when there is none.
    pub fn local_addr_of(&self, listener: Listener) -> Option<SocketAddr> {
        self.local_addrs
            .iter()
            .find(|&&(tag, _)| tag == listener)
            .map(|&(_, addr)| addr)
    }

    /// Every bound listening address with its tag, in the configured order.
    pub fn local_addrs(&self) -> &[(Listener, SocketAddr)] {
        &self.local_addrs
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

        // Bind every listener before any thread starts, so a bind error is reported plainly (with
        // the address) and the port chosen for port 0 is shared by every shard.
        let mut listeners: Vec<Vec<(Listener, OwnedFd)>> =
            cores.iter().map(|_| Vec::new()).collect();
        let mut local_addrs = Vec::with_capacity(config.listen.len());
        let mut claims = Vec::new();
        for &(tag, mut addr) in &config.listen {
            // SO_REUSEPORT would also let another process (of the same user) share the port
            // and take a share of the connections: refuse to start beside one.
            if addr.port() != 0 {
                claims.push(super::host::claim_address(addr).map_err(EngineError::AddressInUse)?);
            }
            super::host::ensure_no_listener(addr, "listen").map_err(EngineError::AddressInUse)?;
            let asked = addr;
            for shard in listeners.iter_mut() {
                let fd = sockets::listen_reuseport(addr, config.listen_backlog)
                    .map_err(|error| EngineError::Listen { addr: asked, error })?;
                if addr.port() == 0 {
                    // The first shard's socket got a free port: every other shard joins it.
                    addr = sockets::local_addr(fd.as_raw_fd())
                        .map_err(|error| EngineError::io(None, "getsockname", error))?;
                }
                shard.push((tag, fd));
            }
            local_addrs.push((tag, addr));
        }

        let stop = Arc::new(AtomicBool::new(false));
        let peers = PeerLimiter::new(config.max_connections_per_ip);
        let factory = Arc::new(app_factory);
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), EngineError>)>();
        let mut handle = EngineHandle {
            _claims: claims,
            local_addrs,
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
        for (index, ((core, listeners), eventfd)) in cores
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
                listeners,
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
