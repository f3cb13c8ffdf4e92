//! One shard: its io_uring, connection table, receive buffers, timers and event loop, driving
//! one [`App`] on one thread; it owns every byte the kernel may touch and frees nothing before
//! the completion that releases it, and it makes no protocol decision.
//!
//! Operation accounting: every submitted operation that names a connection slot counts in that
//! slot's `ops_in_flight` until its last completion (a multishot receive counts once, until a
//! completion without `IORING_CQE_F_MORE`). A closing slot cancels its operations and is removed,
//! its socket closed and [`App::on_closed`] called, only when that count reaches zero. So the
//! kernel never holds a pointer into a slot that is gone, and a descriptor number is never
//! reused while an operation may still name it.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use slab::Slab;

use super::admission::PeerLimiter;
use super::app::{App, CloseReason, ConnId, Errno, Listener, ShardCtx};
use super::buffers::{RecvBufRing, SparePool};
use super::config::{Counters, EngineConfig, EngineError, ShardSetup};
use super::sockets::{self, now_ms, RawSockAddr};
use super::timers::{TimerEntry, TimerHeap};

/// The buffer group id of the shard's receive ring (each shard has its own ring, so one id).
const RECV_GROUP_ID: u16 = 0;
/// Generations are 24 bits wide inside `user_data`.
const GENERATION_MASK: u32 = 0x00ff_ffff;

/// What a completion belongs to, stored in the top byte of `user_data`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum OpKind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Connect = 4,
    ConnectTimeout = 5,
    /// Cancels every operation on one connection's socket; counts in that slot.
    Cancel = 6,
    /// The read of the shard's wake-up eventfd.
    Wake = 7,
    /// Cancels of the accept or the wake-up read at shutdown; not tied to a slot.
    AuxCancel = 8,
}

impl OpKind {
    fn from_u8(value: u8) -> Option<OpKind> {
        Some(match value {
            1 => OpKind::Accept,
            2 => OpKind::Recv,
            3 => OpKind::Send,
            4 => OpKind::Connect,
            5 => OpKind::ConnectTimeout,
            6 => OpKind::Cancel,
            7 => OpKind::Wake,
            8 => OpKind::AuxCancel,
            _ => return None,
        })
    }
}

/// `user_data` layout: kind (8 bits) | generation (24 bits) | slot (32 bits).
fn user_data(kind: OpKind, slot: usize, generation: u32) -> u64 {
    ((kind as u64) << 56) | (u64::from(generation & GENERATION_MASK) << 32) | (slot as u32 as u64)
}

fn decode_user_data(user_data: u64) -> Option<(OpKind, usize, u32)> {
    let kind = OpKind::from_u8((user_data >> 56) as u8)?;
    let generation = ((user_data >> 32) as u32) & GENERATION_MASK;
    Some((kind, user_data as u32 as usize, generation))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SlotState {
    /// An outgoing connect is in flight.
    Connecting,
    /// Bytes flow both ways.
    Open,
    /// Waiting for the last completion before removal.
    Closing,
}

/// A transmit the kernel may be reading: the vector is owned here until the send completes.
struct Transmit {
    buf: Vec<u8>,
    sent: usize,
}

struct Slot<C> {
    fd: OwnedFd,
    generation: u32,
    state: SlotState,
    /// Taken out only by `finalize`, to hand back to the app.
    conn: Option<C>,
    ops_in_flight: u32,
    recv_armed: bool,
    send: Option<Transmit>,
    close_reason: CloseReason,
    /// Let the in-flight send finish before cancelling (shutdown's graceful path).
    flush_before_close: bool,
    cancel_sent: bool,
    deadline_ms: Option<u64>,
    touched: bool,
    /// The address an in-flight connect reads; boxed so it stays put until the completion.
    connect_addr: Option<Box<RawSockAddr>>,
    /// The peer address counted in the shared per-IP table (incoming connections only).
    counted_ip: Option<IpAddr>,
}

impl<C> Slot<C> {
    fn new(fd: OwnedFd, generation: u32, state: SlotState, conn: C) -> Self {
        Slot {
            fd,
            generation,
            state,
            conn: Some(conn),
            ops_in_flight: 0,
            recv_armed: false,
            send: None,
            close_reason: CloseReason::Shutdown,
            flush_before_close: false,
            cancel_sent: false,
            deadline_ms: None,
            touched: false,
            connect_addr: None,
            counted_ip: None,
        }
    }
}

/// One listening socket of this shard and its multishot accept; `user_data` of the accept names
/// the acceptor by its index in [`Shard::acceptors`].
struct Acceptor {
    tag: Listener,
    /// Closed (None) at shutdown, once the accept has completed for the last time.
    fd: Option<OwnedFd>,
    armed: bool,
}

pub(crate) struct Shard<A: App> {
    index: usize,
    config: EngineConfig,
    ring: IoUring,
    app: A,
    slab: Slab<Slot<A::Conn>>,
    next_generation: u32,
    bufs: RecvBufRing,
    spares: SparePool,
    timers: TimerHeap,
    counters: Arc<Counters>,
    /// Open incoming connections per peer address, shared by every shard.
    peers: Arc<PeerLimiter>,
    stop: Arc<AtomicBool>,
    /// One per configured listen address, in the configured order.
    acceptors: Vec<Acceptor>,
    accept_paused_until_ms: Option<u64>,
    eventfd: Arc<OwnedFd>,
    /// Where the wake-up read lands; boxed so it outlives any in-flight read.
    wake_buf: Box<u64>,
    wake_armed: bool,
    wake_failed: bool,
    /// Accept, wake-up read and their cancels: must all complete before the shard exits.
    aux_ops_in_flight: u32,
    /// The link timeout of every connect; the kernel reads it when the connect is submitted.
    connect_timeout: Box<Timespec>,
    /// Completions drained this turn, processed in order.
    cqes: Vec<cqueue::Entry>,
    /// Connections to poll after the app's end of turn, as (slot, generation).
    touched: Vec<(usize, u32)>,
    /// Connections whose multishot receive ended and must be re-armed this turn.
    rearm_recv: Vec<(usize, u32)>,
    now_ms: u64,
    stopping_since_ms: Option<u64>,
    /// Run the next turn without waiting: work was left for it.
    more_work: bool,
}

impl<A: App> Shard<A> {
    pub(crate) fn new<F: Fn(ShardCtx) -> A>(
        setup: ShardSetup,
        factory: &F,
    ) -> Result<Self, EngineError> {
        let ShardSetup {
            index,
            core: _,
            config,
            listeners,
            eventfd,
            wakers,
            stop,
            counters,
            peers,
        } = setup;
        let shard = Some(index);
        let entries = config.ring_entries;
        // COOP_TASKRUN and SINGLE_ISSUER fit a ring used by one thread only; they are an
        // optimisation, so a kernel that refuses them gets a plain ring.
        let ring = IoUring::builder()
            .setup_cqsize(entries.saturating_mul(4))
            .setup_coop_taskrun()
            .setup_single_issuer()
            .build(entries)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(entries.saturating_mul(4))
                    .build(entries)
            })
            .map_err(|error| EngineError::io(shard, "io_uring_setup", error))?;
        let mut bufs = RecvBufRing::new(
            config.recv_buffer_count,
            config.recv_buffer_size,
            RECV_GROUP_ID,
        )
        .map_err(|error| EngineError::io(shard, "allocating receive buffers", error))?;
        bufs.register(&ring.submitter()).map_err(|error| {
            EngineError::io(shard, "registering the receive buffer ring", error)
        })?;
        let connect_timeout = Box::new(
            Timespec::new()
                .sec(config.connect_timeout_ms / 1000)
                .nsec(((config.connect_timeout_ms % 1000) * 1_000_000) as u32),
        );
        let app = factory(ShardCtx {
            index,
            shards: wakers.len(),
            wakers,
        });
        Ok(Shard {
            index,
            ring,
            app,
            slab: Slab::with_capacity(config.max_connections),
            next_generation: 0,
            bufs,
            spares: SparePool::new(
                config.spare_buffers_max,
                config.spare_buffer_capacity_max_bytes,
            ),
            timers: TimerHeap::new(2 * config.max_connections + 16),
            counters,
            peers,
            stop,
            acceptors: listeners
                .into_iter()
                .map(|(tag, fd)| Acceptor {
                    tag,
                    fd: Some(fd),
                    armed: false,
                })
                .collect(),
            accept_paused_until_ms: None,
            eventfd,
            wake_buf: Box::new(0),
            wake_armed: false,
            wake_failed: false,
            aux_ops_in_flight: 0,
            connect_timeout,
            cqes: Vec::with_capacity(entries as usize * 4),
            touched: Vec::with_capacity(config.max_connections),
            rearm_recv: Vec::with_capacity(config.max_connections),
            now_ms: now_ms(),
            stopping_since_ms: None,
            more_work: false,
            config,
        })
    }

    /// The event loop; returns when shutdown is complete.
    pub(crate) fn run(mut self) -> Result<(), EngineError> {
        self.now_ms = now_ms();
        self.arm_accept()?;
        self.arm_wake()?;
        let clean = loop {
            self.submit_and_wait()?;
            self.now_ms = now_ms();
            self.reap()?;
            self.fire_timers();
            self.fire_app_deadline();

            self.app.end_of_turn(self.now_ms);
            if self.stopping_since_ms.is_none() {
                self.poll_connects()?;
            }
            self.poll_ready();
            self.poll_closes()?;
            self.service_touched()?;
            self.rearm_recvs()?;

            if self.stopping_since_ms.is_none() && self.stop.load(Ordering::SeqCst) {
                self.begin_shutdown()?;
            }
            if let Some(since) = self.stopping_since_ms {
                let waited = self.now_ms.saturating_sub(since);
                if waited >= self.config.shutdown_grace_ms {
                    self.abandon_flushes()?;
                }
                for acceptor in &mut self.acceptors {
                    if !acceptor.armed {
                        // The accept has completed for the last time: the listener can go.
                        acceptor.fd = None;
                    }
                }
                if self.slab.is_empty() && self.aux_ops_in_flight == 0 {
                    break true;
                }
                if waited >= 2 * self.config.shutdown_grace_ms {
                    tracing::error!(
                        shard = self.index,
                        connections = self.slab.len(),
                        aux_ops = self.aux_ops_in_flight,
                        "shutdown: the kernel still holds operations after twice the grace \
                         period; leaking their buffers instead of freeing them"
                    );
                    break false;
                }
            } else {
                self.arm_accept()?;
                self.arm_wake()?;
            }
        };
        self.app.end_of_turn(self.now_ms);
        self.teardown(clean);
        Ok(())
    }

    fn teardown(mut self, clean: bool) {
        if clean {
            // Every operation has completed, so nothing selects from the buffer ring any more.
            if let Err(error) = self.bufs.unregister(&self.ring.submitter()) {
                tracing::warn!(shard = self.index, %error, "unregistering the buffer ring");
            }
            return;
        }
        // The kernel may still write into receive buffers, transmit vectors or the wake-up
        // buffer: leak them all. Dropping the ring then makes the kernel cancel what is left.
        let Shard {
            bufs,
            slab,
            wake_buf,
            connect_timeout,
            ring,
            ..
        } = self;
        bufs.leak();
        std::mem::forget(slab);
        std::mem::forget(wake_buf);
        std::mem::forget(connect_timeout);
        drop(ring);
    }

    // ----- submission -----

    /// Queues SQEs for this turn's single submission. When the submission queue is full the
    /// batch so far goes to the kernel early; `entries` always land in the same batch (a linked
    /// connect and its timeout must not be split).
    ///
    /// # Safety
    ///
    /// Every pointer inside `entries` must stay valid until the matching completion arrives.
    unsafe fn push(&mut self, entries: &[squeue::Entry]) -> Result<(), EngineError> {
        loop {
            {
                let mut sq = self.ring.submission();
                if sq.capacity() - sq.len() >= entries.len() {
                    // SAFETY: the caller guarantees the memory the entries point at.
                    unsafe { sq.push_multiple(entries) }.map_err(|_| {
                        EngineError::io(Some(self.index), "queueing", io::Error::other("sq full"))
                    })?;
                    return Ok(());
                }
            }
            self.submit_now()?;
        }
    }

    /// Submits without waiting, because the submission queue is full.
    fn submit_now(&mut self) -> Result<(), EngineError> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(error) => match error.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // The completion queue is backed up: move completions into this turn's
                    // batch (they are processed before the turn ends), then retry.
                    Some(libc::EBUSY) | Some(libc::EAGAIN) => {
                        let before = self.cqes.len();
                        self.cqes.extend(self.ring.completion());
                        if self.cqes.len() == before {
                            std::thread::yield_now();
                        }
                    }
                    _ => return Err(EngineError::io(Some(self.index), "io_uring_enter", error)),
                },
            }
        }
    }

    /// Submits this turn's operations and waits for a completion, the earliest deadline, or
    /// nothing at all when work is pending.
    fn submit_and_wait(&mut self) -> Result<(), EngineError> {
        let wait_ms = if self.more_work {
            Some(0)
        } else {
            self.next_wake_ms().map(|at| at.saturating_sub(now_ms()))
        };
        self.more_work = false;
        let result = match wait_ms {
            Some(0) => self.ring.submit(),
            Some(ms) => {
                let ts = Timespec::new()
                    .sec(ms / 1000)
                    .nsec(((ms % 1000) * 1_000_000) as u32);
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(()),
            Err(error) => match error.raw_os_error() {
                // ETIME: the deadline passed; EINTR: a signal; EBUSY/EAGAIN: completions are
                // backed up and the turn that follows drains them. All mean "run a turn".
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {
                    Ok(())
                }
                _ => Err(EngineError::io(Some(self.index), "io_uring_enter", error)),
            },
        }
    }

    /// The earliest time the loop must wake on its own, if any.
    fn next_wake_ms(&mut self) -> Option<u64> {
        let mut earliest = self.next_live_deadline();
        let app_deadline = self.app.app_deadline();
        let mut consider = |at: Option<u64>| {
            if let Some(at) = at {
                earliest = Some(earliest.map_or(at, |e: u64| e.min(at)));
            }
        };
        consider(app_deadline);
        if self.acceptors.iter().any(|a| !a.armed) && self.stopping_since_ms.is_none() {
            consider(self.accept_paused_until_ms);
        }
        if let Some(since) = self.stopping_since_ms {
            // Only a step of the shutdown that is still ahead counts; one already passed would
            // make every wait zero and spin the loop.
            let grace = self.config.shutdown_grace_ms;
            let now = self.now_ms;
            consider(
                [since + grace, since + 2 * grace]
                    .into_iter()
                    .find(|&at| at > now),
            );
        }
        earliest
    }

    // ----- completions -----

    fn reap(&mut self) -> Result<(), EngineError> {
        self.cqes.extend(self.ring.completion());
        let mut index = 0;
        while index < self.cqes.len() {
            let cqe = self.cqes[index].clone();
            index += 1;
            self.handle_cqe(cqe)?;
        }
        self.cqes.clear();
        Ok(())
    }

    fn handle_cqe(&mut self, cqe: cqueue::Entry) -> Result<(), EngineError> {
        let result = cqe.result();
        let flags = cqe.flags();
        let Some((kind, key, generation)) = decode_user_data(cqe.user_data()) else {
            // Not ours (nothing else submits on this ring): drop it, but never lose a buffer.
            self.give_back_buffer(flags);
            Counters::bump(&self.counters.stale_completions, 1);
            return Ok(());
        };
        match kind {
            OpKind::Accept => return self.on_accept(key, result, flags),
            OpKind::Wake => {
                self.on_wake(result);
                return Ok(());
            }
            OpKind::AuxCancel => {
                self.aux_ops_in_flight -= 1;
                return Ok(());
            }
            _ => {}
        }
        let live = matches!(self.slab.get(key), Some(slot) if slot.generation == generation);
        if !live {
            // Cannot happen while the accounting holds (slots outlive their operations); if it
            // ever does, the completion is recognised as stale and dropped.
            self.give_back_buffer(flags);
            Counters::bump(&self.counters.stale_completions, 1);
            return Ok(());
        }
        match kind {
            OpKind::Recv => self.on_recv(key, result, flags)?,
            OpKind::Send => self.on_send(key, result)?,
            OpKind::Connect => self.on_connect(key, result)?,
            OpKind::ConnectTimeout | OpKind::Cancel => {
                // A link timeout reports -ETIME when it fired (the connect then completes with
                // -ECANCELED) and -ECANCELED/-ENOENT/-EALREADY when the connect won; a cancel
                // reports how many operations it found or -ENOENT/-EALREADY. None of these
                // needs a decision beyond the accounting.
                self.slab[key].ops_in_flight -= 1;
            }
            OpKind::Accept | OpKind::Wake | OpKind::AuxCancel => {}
        }
        let closing = matches!(
            self.slab.get(key),
            Some(slot) if slot.generation == generation && slot.state == SlotState::Closing
        );
        if closing {
            self.progress_close(key)?;
        }
        Ok(())
    }

    fn give_back_buffer(&mut self, flags: u32) {
        if let Some(bid) = cqueue::buffer_select(flags) {
            self.bufs.give_back(bid);
        }
    }

    fn on_accept(&mut self, acceptor: usize, result: i32, flags: u32) -> Result<(), EngineError> {
        let Some(tag) = self.acceptors.get(acceptor).map(|a| a.tag) else {
            // Cannot happen: only arm_accept names an acceptor, by its index.
            Counters::bump(&self.counters.stale_completions, 1);
            if result >= 0 {
                // SAFETY: a successful accept hands over a descriptor nothing else owns.
                drop(unsafe { OwnedFd::from_raw_fd(result) });
            }
            return Ok(());
        };
        if !cqueue::more(flags) {
            self.acceptors[acceptor].armed = false;
            self.aux_ops_in_flight -= 1;
        }
        if result < 0 {
            match -result {
                // Cancelled at shutdown.
                libc::ECANCELED => {}
                // The peer gave up before the accept, or a transient condition: keep going.
                libc::ECONNABORTED | libc::EINTR | libc::EAGAIN | libc::EPROTO => {}
                // Out of descriptors or memory: accepting again at once would spin, so pause.
                libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS => {
                    Counters::bump(&self.counters.accept_errors, 1);
                    if crate::ratelog::REFUSED.allow() {
                        tracing::warn!(
                            shard = self.index,
                            errno = %Errno(-result),
                            pause_ms = self.config.accept_backoff_ms,
                            "out of descriptors or memory; accepting paused (see the descriptor budget and RLIMIT_NOFILE)"
                        );
                    }
                    self.accept_paused_until_ms = Some(self.now_ms + self.config.accept_backoff_ms);
                }
                errno => {
                    Counters::bump(&self.counters.accept_errors, 1);
                    tracing::warn!(shard = self.index, errno = %Errno(errno), "accept failed");
                    self.accept_paused_until_ms = Some(self.now_ms + self.config.accept_backoff_ms);
                }
            }
            return Ok(());
        }
        // SAFETY: a successful accept completion hands over a new descriptor that nothing else
        // owns; the OwnedFd closes it on every path below that does not keep it.
        let fd = unsafe { OwnedFd::from_raw_fd(result) };
        if self.stopping_since_ms.is_some() {
            Counters::bump(&self.counters.refused_shutdown, 1);
            return Ok(());
        }
        let peer = match sockets::peer_addr(fd.as_raw_fd()) {
            Ok(peer) => peer,
            Err(_) => {
                // ENOTCONN: the peer already reset. Nothing to serve.
                Counters::bump(&self.counters.accept_errors, 1);
                return Ok(());
            }
        };
        if self.slab.len() >= self.config.max_connections {
            Counters::bump(&self.counters.refused_limit, 1);
            if crate::ratelog::REFUSED.allow() {
                tracing::warn!(
                    shard = self.index,
                    %peer,
                    limit = self.config.max_connections,
                    refused = self.counters.refused_limit.load(Ordering::Relaxed),
                    "connection table full; closing a new connection (limits.connections_per_shard_max and the descriptor budget)"
                );
            }
            return Ok(());
        }
        if !self.peers.try_add(peer.ip()) {
            Counters::bump(&self.counters.refused_per_ip, 1);
            if crate::ratelog::REFUSED.allow() {
                tracing::warn!(
                    shard = self.index,
                    %peer,
                    limit = self.peers.max(),
                    refused = self.counters.refused_per_ip.load(Ordering::Relaxed),
                    "too many connections from one address; closing a new one (limits.connections_per_ip_max)"
                );
            }
            return Ok(());
        }
        let generation = self.next_generation();
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        let id = ConnId {
            slot: key as u32,
            generation,
        };
        let Some(conn) = self.app.accept(self.now_ms, id, peer, tag) else {
            self.peers.remove(peer.ip());
            Counters::bump(&self.counters.refused_app, 1);
            return Ok(());
        };
        if self.config.tcp_nodelay {
            // Failing to set an option on a live socket only costs latency; not worth a close.
            let _ = sockets::set_nodelay(fd.as_raw_fd());
        }
        let mut slot = Slot::new(fd, generation, SlotState::Open, conn);
        slot.counted_ip = Some(peer.ip());
        entry.insert(slot);
        Counters::bump(&self.counters.accepted, 1);
        self.arm_recv(key)?;
        self.touch(key);
        Ok(())
    }

    fn on_wake(&mut self, result: i32) {
        self.wake_armed = false;
        self.aux_ops_in_flight -= 1;
        if result >= 0 {
            return;
        }
        match -result {
            libc::ECANCELED | libc::EINTR | libc::EAGAIN => {}
            errno => {
                // Re-arming a read that keeps failing would spin; other threads' wakes are
                // then only noticed on the next IO or deadline. Say so loudly.
                tracing::error!(shard = self.index, errno = %Errno(errno), "wake-up read failed; cross-thread wakes disabled");
                self.wake_failed = true;
            }
        }
    }

    fn on_recv(&mut self, key: usize, result: i32, flags: u32) -> Result<(), EngineError> {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let slot = &mut self.slab[key];
        if !more {
            slot.recv_armed = false;
            slot.ops_in_flight -= 1;
        }
        let mut close = None;
        if result > 0 {
            match bid {
                Some(bid) if slot.state == SlotState::Open => {
                    let len = result as usize;
                    match (self.bufs.bytes(bid, len), slot.conn.as_mut()) {
                        (Some(bytes), Some(conn)) => {
                            Counters::bump(&self.counters.bytes_in, len as u64);
                            if let Err(error) = self.app.on_recv(self.now_ms, conn, bytes) {
                                close = Some(CloseReason::App(error));
                            }
                        }
                        _ => close = Some(CloseReason::Io(Errno(libc::EINVAL))),
                    }
                    self.bufs.give_back(bid);
                }
                // Bytes for a closing connection are dropped; the buffer goes back regardless.
                Some(bid) => self.bufs.give_back(bid),
                // A receive result without a buffer breaks the provided-buffer contract.
                None => close = Some(CloseReason::Io(Errno(libc::EINVAL))),
            }
        } else {
            if let Some(bid) = bid {
                self.bufs.give_back(bid);
            }
            if result == 0 {
                close = Some(CloseReason::PeerClosed);
            } else {
                match -result {
                    // Every provided buffer is in use. They all return to the ring during this
                    // turn (on_recv never keeps one), so re-arming at the end of the turn finds
                    // buffers again.
                    libc::ENOBUFS => Counters::bump(&self.counters.recv_buffer_exhausted, 1),
                    libc::ECANCELED => {}
                    libc::EINTR | libc::EAGAIN => {}
                    libc::ECONNRESET | libc::EPIPE => close = Some(CloseReason::PeerReset),
                    errno => close = Some(CloseReason::Io(Errno(errno))),
                }
            }
        }
        self.poll_closes()?;
        // The app may have named this very connection in `poll_close`; it may be gone.
        let Some(slot) = self.slab.get(key) else {
            return Ok(());
        };
        if let Some(reason) = close {
            self.begin_close(key, reason, false)?;
        } else if slot.state == SlotState::Open {
            if !more {
                self.rearm_recv.push((key, slot.generation));
            }
            self.touch(key);
        }
        Ok(())
    }

    fn on_send(&mut self, key: usize, result: i32) -> Result<(), EngineError> {
        let slot = &mut self.slab[key];
        slot.ops_in_flight -= 1;
        let Some(transmit) = slot.send.as_mut() else {
            return Ok(());
        };
        let may_continue = slot.state == SlotState::Open
            || (slot.state == SlotState::Closing && slot.flush_before_close && !slot.cancel_sent);
        let mut close = None;
        let mut resend = false;
        if result > 0 {
            Counters::bump(&self.counters.bytes_out, result as u64);
            transmit.sent += result as usize;
            resend = transmit.sent < transmit.buf.len() && may_continue;
        } else if result == 0 {
            // A zero-byte send of a non-empty buffer: the socket cannot take bytes any more.
            close = Some(CloseReason::Io(Errno(libc::EPIPE)));
        } else {
            match -result {
                libc::EINTR | libc::EAGAIN => resend = may_continue,
                libc::ECANCELED => {}
                libc::EPIPE | libc::ECONNRESET => close = Some(CloseReason::PeerReset),
                errno => close = Some(CloseReason::Io(Errno(errno))),
            }
        }
        if resend {
            return self.submit_send(key);
        }
        // The kernel is done with the vector (the completion arrived): recycle it.
        if let Some(transmit) = slot.send.take() {
            self.spares.put(transmit.buf);
        }
        if let Some(reason) = close {
            self.begin_close(key, reason, false)?;
        } else if slot.state == SlotState::Open {
            self.touch(key);
        }
        Ok(())
    }

    fn on_connect(&mut self, key: usize, result: i32) -> Result<(), EngineError> {
        let slot = &mut self.slab[key];
        slot.ops_in_flight -= 1;
        // The kernel has read the address; the link timeout does not use it.
        slot.connect_addr = None;
        if slot.state != SlotState::Connecting {
            return Ok(());
        }
        if result < 0 {
            let reason = match -result {
                // Only the link timeout cancels a connect of a slot that is not closing.
                libc::ECANCELED | libc::ETIME => CloseReason::ConnectTimedOut,
                errno => CloseReason::ConnectFailed(Errno(errno)),
            };
            return self.begin_close(key, reason, false);
        }
        slot.state = SlotState::Open;
        Counters::bump(&self.counters.connected, 1);
        if self.config.tcp_nodelay {
            let _ = sockets::set_nodelay(slot.fd.as_raw_fd());
        }
        let id = ConnId {
            slot: key as u32,
            generation: slot.generation,
        };
        if let Some(conn) = slot.conn.as_mut() {
            self.app.on_connected(self.now_ms, id, conn);
        }
        self.arm_recv(key)?;
        self.touch(key);
        Ok(())
    }

    // ----- per-turn app polling -----

    fn fire_timers(&mut self) {
        while let Some(entry) = self.timers.peek() {
            if entry.deadline_ms > self.now_ms {
                break;
            }
            self.timers.pop();
            let key = entry.slot as usize;
            let Some(slot) = self.slab.get_mut(key) else {
                continue;
            };
            if slot.generation != entry.generation
                || slot.state != SlotState::Open
                || slot.deadline_ms != Some(entry.deadline_ms)
            {
                continue;
            }
            slot.deadline_ms = None;
            if let Some(conn) = slot.conn.as_mut() {
                // The app may have moved its deadline during this turn (say in on_recv) without
                // the engine having re-read it yet: ask again so a moved deadline never fires
                // early. The touch below re-reads and reschedules it either way.
                if self.app.deadline(conn).is_some_and(|at| at <= self.now_ms) {
                    self.app.on_timeout(self.now_ms, conn);
                }
            }
            self.touch(key);
        }
    }

    /// Runs the app's own deadline once if it has passed (see [`App::app_deadline`]).
    fn fire_app_deadline(&mut self) {
        if self.app.app_deadline().is_some_and(|at| at <= self.now_ms) {
            self.app.on_app_deadline(self.now_ms);
        }
    }

    fn poll_connects(&mut self) -> Result<(), EngineError> {
        for _ in 0..self.config.connects_per_turn_max {
            let Some((addr, conn)) = self.app.poll_connect(self.now_ms) else {
                return Ok(());
            };
            if self.slab.len() >= self.config.max_connections {
                self.counters.count_close(CloseReason::LimitReached);
                self.app
                    .on_closed(self.now_ms, conn, CloseReason::LimitReached);
                continue;
            }
            let fd = match sockets::tcp_socket(&addr) {
                Ok(fd) => fd,
                Err(error) => {
                    let reason = CloseReason::ConnectFailed(Errno(
                        error.raw_os_error().unwrap_or(libc::EIO),
                    ));
                    self.counters.count_close(reason);
                    self.app.on_closed(self.now_ms, conn, reason);
                    continue;
                }
            };
            let generation = self.next_generation();
            let raw_fd = fd.as_raw_fd();
            let addr = Box::new(RawSockAddr::from_socket_addr(addr));
            let (addr_ptr, addr_len) = (addr.as_ptr(), addr.len);
            let mut slot = Slot::new(fd, generation, SlotState::Connecting, conn);
            slot.connect_addr = Some(addr);
            slot.ops_in_flight = 2;
            let key = self.slab.insert(slot);
            let connect = opcode::Connect::new(Fd(raw_fd), addr_ptr, addr_len)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(user_data(OpKind::Connect, key, generation));
            let timeout = opcode::LinkTimeout::new(&*self.connect_timeout)
                .build()
                .user_data(user_data(OpKind::ConnectTimeout, key, generation));
            // SAFETY: the address is boxed in the slot until the connect completes (on_connect
            // drops it then) and the slot outlives its operations; the timespec is boxed in the
            // shard, which outlives every operation.
            unsafe { self.push(&[connect, timeout])? };
        }
        // The per-turn limit was hit: more may be waiting, so do not sleep.
        self.more_work = true;
        Ok(())
    }

    fn poll_ready(&mut self) {
        let limit = 2 * self.config.max_connections;
        for _ in 0..limit {
            let Some(id) = self.app.poll_ready() else {
                return;
            };
            let key = id.slot as usize;
            if matches!(self.slab.get(key), Some(slot) if slot.generation == id.generation) {
                self.touch(key);
            }
        }
        self.more_work = true;
    }

    /// Closes the connections the app names in [`App::poll_close`].
    fn poll_closes(&mut self) -> Result<(), EngineError> {
        for _ in 0..self.config.max_connections {
            let Some((id, error)) = self.app.poll_close() else {
                return Ok(());
            };
            let key = id.slot as usize;
            if matches!(self.slab.get(key), Some(slot) if slot.generation == id.generation) {
                self.begin_close(key, CloseReason::App(error), false)?;
            }
        }
        Ok(())
    }

    fn touch(&mut self, key: usize) {
        let slot = &mut self.slab[key];
        if !slot.touched {
            slot.touched = true;
            self.touched.push((key, slot.generation));
        }
    }

    fn service_touched(&mut self) -> Result<(), EngineError> {
        let mut touched = std::mem::take(&mut self.touched);
        for &(key, generation) in &touched {
            let Some(slot) = self.slab.get_mut(key) else {
                continue;
            };
            if slot.generation != generation {
                continue;
            }
            slot.touched = false;
            if slot.state != SlotState::Open {
                continue;
            }
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            if slot.send.is_none() {
                let mut buf = self.spares.take();
                self.app.poll_transmit(self.now_ms, conn, &mut buf);
                if buf.is_empty() {
                    self.spares.put(buf);
                } else if buf.len() > self.config.send_buffered_max_bytes {
                    self.spares.put(buf);
                    self.begin_close(key, CloseReason::TransmitTooLarge, false)?;
                    continue;
                } else {
                    slot.send = Some(Transmit { buf, sent: 0 });
                    self.submit_send(key)?;
                }
            }
            let slot = &mut self.slab[key];
            let Some(conn) = slot.conn.as_ref() else {
                continue;
            };
            if slot.send.is_none() && self.app.wants_close(conn) {
                self.begin_close(key, CloseReason::AppRequested, false)?;
                continue;
            }
            let deadline = self.app.deadline(conn);
            if deadline != slot.deadline_ms {
                slot.deadline_ms = deadline;
                if let Some(deadline_ms) = deadline {
                    self.schedule(TimerEntry {
                        deadline_ms,
                        slot: key as u32,
                        generation,
                    });
                }
            }
        }
        touched.clear();
        // Keep the allocation; anything touched meanwhile (closes) was pushed to the new list.
        touched.append(&mut self.touched);
        self.touched = touched;
        Ok(())
    }

    fn schedule(&mut self, entry: TimerEntry) {
        if self.timers.is_full() {
            // Stale entries filled the heap: rebuild it from the live deadlines (at most one per
            // connection, so well under the limit).
            let live = self.slab.iter().filter_map(|(key, slot)| {
                slot.deadline_ms.map(|deadline_ms| TimerEntry {
                    deadline_ms,
                    slot: key as u32,
                    generation: slot.generation,
                })
            });
            self.timers.rebuild(live);
            // The rebuilt heap already holds this entry (its slot's deadline was set first).
            return;
        }
        self.timers.push(entry);
    }

    /// The earliest deadline that still belongs to a live connection; stale tops are dropped.
    fn next_live_deadline(&mut self) -> Option<u64> {
        while let Some(entry) = self.timers.peek() {
            let live = matches!(
                self.slab.get(entry.slot as usize),
                Some(slot) if slot.generation == entry.generation
                    && slot.deadline_ms == Some(entry.deadline_ms)
                    && slot.state == SlotState::Open
            );
            if live {
                return Some(entry.deadline_ms);
            }
            self.timers.pop();
        }
        None
    }

    // ----- arming operations -----

    /// Arms the multishot accept of every listener that has none in flight (a multishot accept
    /// ends on an error or when the kernel drops it), unless accepting is paused.
    fn arm_accept(&mut self) -> Result<(), EngineError> {
        if self.stopping_since_ms.is_some() || self.acceptors.iter().all(|a| a.armed) {
            return Ok(());
        }
        if let Some(until) = self.accept_paused_until_ms {
            if self.now_ms < until {
                return Ok(());
            }
            self.accept_paused_until_ms = None;
        }
        for index in 0..self.acceptors.len() {
            let acceptor = &mut self.acceptors[index];
            if acceptor.armed {
                continue;
            }
            let Some(fd) = acceptor.fd.as_ref() else {
                continue;
            };
            let entry = opcode::AcceptMulti::new(Fd(fd.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(user_data(OpKind::Accept, index, 0));
            acceptor.armed = true;
            self.aux_ops_in_flight += 1;
            // SAFETY: a multishot accept without an address points at no memory; the listener
            // is closed only after the accept's last completion.
            unsafe { self.push(&[entry])? };
        }
        Ok(())
    }

    fn arm_wake(&mut self) -> Result<(), EngineError> {
        if self.wake_armed || self.wake_failed || self.stopping_since_ms.is_some() {
            return Ok(());
        }
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(Fd(self.eventfd.as_raw_fd()), buf as *mut u8, 8)
            .build()
            .user_data(user_data(OpKind::Wake, 0, 0));
        self.wake_armed = true;
        self.aux_ops_in_flight += 1;
        // SAFETY: `wake_buf` is boxed in the shard and the shard exits (or leaks it) only after
        // this read's completion; the eventfd is kept open by the shard's Arc.
        unsafe { self.push(&[entry]) }
    }

    fn arm_recv(&mut self, key: usize) -> Result<(), EngineError> {
        let slot = &mut self.slab[key];
        let entry = opcode::RecvMulti::new(Fd(slot.fd.as_raw_fd()), self.bufs.group_id())
            .build()
            .user_data(user_data(OpKind::Recv, key, slot.generation));
        slot.recv_armed = true;
        slot.ops_in_flight += 1;
        // SAFETY: the receive writes only into provided buffers, owned by `self.bufs` for the
        // shard's lifetime; the socket stays open until the slot's last completion.
        unsafe { self.push(&[entry]) }
    }

    fn rearm_recvs(&mut self) -> Result<(), EngineError> {
        let mut rearm = std::mem::take(&mut self.rearm_recv);
        for &(key, generation) in &rearm {
            let wanted = matches!(
                self.slab.get(key),
                Some(slot) if slot.generation == generation
                    && slot.state == SlotState::Open
                    && !slot.recv_armed
            );
            if wanted {
                self.arm_recv(key)?;
            }
        }
        rearm.clear();
        self.rearm_recv = rearm;
        Ok(())
    }

    fn submit_send(&mut self, key: usize) -> Result<(), EngineError> {
        let slot = &mut self.slab[key];
        let Some(transmit) = slot.send.as_ref() else {
            return Ok(());
        };
        let rest = &transmit.buf[transmit.sent..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(Fd(slot.fd.as_raw_fd()), rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(OpKind::Send, key, slot.generation));
        slot.ops_in_flight += 1;
        // SAFETY: the bytes live in the heap block of `slot.send`'s vector, which stays in the
        // slot (not moved out, not resized) until this send's completion is processed, and the
        // slot is not removed before its last completion.
        unsafe { self.push(&[entry]) }
    }

    // ----- closing -----

    /// Starts closing a connection. With `flush`, an in-flight send may finish first.
    fn begin_close(
        &mut self,
        key: usize,
        reason: CloseReason,
        flush: bool,
    ) -> Result<(), EngineError> {
        let slot = &mut self.slab[key];
        if slot.state == SlotState::Closing {
            return Ok(());
        }
        slot.state = SlotState::Closing;
        slot.close_reason = reason;
        slot.flush_before_close = flush;
        slot.deadline_ms = None;
        self.progress_close(key)
    }

    /// Moves a closing slot on: removes it when nothing is in flight, otherwise cancels what is
    /// (once the flush, if any, is done).
    fn progress_close(&mut self, key: usize) -> Result<(), EngineError> {
        let slot = &mut self.slab[key];
        if slot.ops_in_flight == 0 {
            self.finalize(key);
            return Ok(());
        }
        if slot.cancel_sent || (slot.flush_before_close && slot.send.is_some()) {
            return Ok(());
        }
        slot.cancel_sent = true;
        slot.ops_in_flight += 1;
        // Shutting the socket down makes every operation on it finish even if the cancel finds
        // one mid-flight (-EALREADY), which bounds the wait for the last completion.
        sockets::shutdown_both(slot.fd.as_raw_fd());
        let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(slot.fd.as_raw_fd())).all())
            .build()
            .user_data(user_data(OpKind::Cancel, key, slot.generation));
        // SAFETY: a cancel points at no memory; it names the socket, which stays open until
        // this cancel's own completion (it counts in ops_in_flight).
        unsafe { self.push(&[entry]) }
    }

    /// Removes a slot whose last completion has arrived: closes the socket and hands the
    /// connection back to the app.
    fn finalize(&mut self, key: usize) {
        let slot = self.slab.remove(key);
        debug_assert_eq!(slot.ops_in_flight, 0);
        if let Some(transmit) = slot.send {
            self.spares.put(transmit.buf);
        }
        self.counters.count_close(slot.close_reason);
        if let Some(ip) = slot.counted_ip {
            self.peers.remove(ip);
        }
        drop(slot.fd);
        if let Some(conn) = slot.conn {
            self.app.on_closed(self.now_ms, conn, slot.close_reason);
        }
    }

    fn begin_shutdown(&mut self) -> Result<(), EngineError> {
        self.stopping_since_ms = Some(self.now_ms);
        let armed: Vec<RawFd> = self
            .acceptors
            .iter()
            .filter(|a| a.armed)
            .filter_map(|a| a.fd.as_ref().map(|fd| fd.as_raw_fd()))
            .collect();
        for fd in armed {
            let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
                .build()
                .user_data(user_data(OpKind::AuxCancel, 0, 0));
            self.aux_ops_in_flight += 1;
            // SAFETY: a cancel points at no memory; the listener stays open until the
            // accept's last completion.
            unsafe { self.push(&[entry])? };
        }
        if self.wake_armed {
            let entry = opcode::AsyncCancel::new(user_data(OpKind::Wake, 0, 0))
                .build()
                .user_data(user_data(OpKind::AuxCancel, 0, 0));
            self.aux_ops_in_flight += 1;
            // SAFETY: a cancel points at no memory.
            unsafe { self.push(&[entry])? };
        }
        let keys: Vec<(usize, bool)> = self
            .slab
            .iter()
            .map(|(key, slot)| (key, slot.state == SlotState::Open))
            .collect();
        for (key, open) in keys {
            self.begin_close(key, CloseReason::Shutdown, open)?;
        }
        Ok(())
    }

    /// The grace period is over: cancel transmits still in flight.
    fn abandon_flushes(&mut self) -> Result<(), EngineError> {
        let keys: Vec<usize> = self
            .slab
            .iter()
            .filter(|(_, slot)| slot.flush_before_close)
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            self.slab[key].flush_before_close = false;
            self.progress_close(key)?;
        }
        Ok(())
    }

    fn next_generation(&mut self) -> u32 {
        self.next_generation = (self.next_generation + 1) & GENERATION_MASK;
        self.next_generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let encoded = user_data(OpKind::Send, 123_456, 0x00ab_cdef);
        assert_eq!(
            decode_user_data(encoded),
            Some((OpKind::Send, 123_456, 0x00ab_cdef))
        );
        // The generation wraps inside its 24 bits instead of spilling into the kind.
        let wrapped = user_data(OpKind::Recv, 1, 0xff00_0001);
        assert_eq!(decode_user_data(wrapped), Some((OpKind::Recv, 1, 1)));
        assert_eq!(decode_user_data(0), None);
    }
}
