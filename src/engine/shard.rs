//! One shard: the io_uring driver around a [`Turn`] (the connection table, timers and the calls
//! into the [`App`], in `turn.rs`): completions in, turned into the turn's events; the turn's
//! [`TurnIo`] calls out, turned into submissions. It owns every byte the kernel may touch and
//! frees nothing before the completion that releases it, and it makes no protocol decision.
//!
//! Operation accounting: every submitted operation that names a connection slot counts in that
//! slot's `ops_in_flight` until its last completion (a multishot receive counts once, until a
//! completion without `IORING_CQE_F_MORE`). A closing slot cancels its operations and is removed,
//! its socket closed and [`App::on_closed`] called, only when that count reaches zero. So the
//! kernel never holds a pointer into a slot that is gone, and a descriptor number is never
//! reused while an operation may still name it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use super::admission::PeerLimiter;
use super::app::FILE_TOKEN_BITS;
use super::app::{App, CloseReason, ConnId, Errno, FileOp, FileOpKind, Listener, ShardCtx};
use super::buffers::{RecvBufRing, SparePool};
use super::config::{Counters, EngineConfig, EngineError, ShardSetup};
use super::sockets::{self, now_ms, RawSockAddr};
use super::turn::{ConnState, Received, Turn, TurnIo, TurnLimits, GENERATION_MASK};

/// The buffer group id of the shard's receive ring (each shard has its own ring, so one id).
const RECV_GROUP_ID: u16 = 0;

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
    /// A file operation of the app ([`FileOp`]); the low 56 bits are its token.
    File = 9,
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
            9 => OpKind::File,
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

fn conn_user_data(kind: OpKind, id: ConnId) -> u64 {
    user_data(kind, id.slot as usize, id.generation)
}

/// A transmit the kernel may be reading: the vector is owned here until the send completes.
struct Transmit {
    buf: Vec<u8>,
    sent: usize,
}

/// The driver's part of one connection, kept in the turn's table next to the app's.
pub(crate) struct Sock {
    fd: OwnedFd,
    ops_in_flight: u32,
    recv_armed: bool,
    send: Option<Transmit>,
    /// Let the in-flight send finish before cancelling (shutdown's graceful path).
    flush_before_close: bool,
    cancel_sent: bool,
    /// The address an in-flight connect reads; boxed so it stays put until the completion.
    connect_addr: Option<Box<RawSockAddr>>,
    /// The peer address counted in the shared per-IP table (incoming connections only).
    counted_ip: Option<IpAddr>,
}

impl Sock {
    fn new(fd: OwnedFd) -> Self {
        Sock {
            fd,
            ops_in_flight: 0,
            recv_armed: false,
            send: None,
            flush_before_close: false,
            cancel_sent: false,
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

/// The ring and what submitting needs: the turn's [`TurnIo`].
struct UringIo {
    index: usize,
    ring: IoUring,
    spares: SparePool,
    counters: Arc<Counters>,
    /// Open incoming connections per peer address, shared by every shard.
    peers: Arc<PeerLimiter>,
    /// The link timeout of every connect; the kernel reads it when the connect is submitted.
    connect_timeout: Box<Timespec>,
    /// Completions drained this turn, processed in order.
    cqes: Vec<cqueue::Entry>,
}

pub(crate) struct Shard<A: App> {
    index: usize,
    config: EngineConfig,
    turn: Turn<A, Sock>,
    io: UringIo,
    bufs: RecvBufRing,
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
    /// Connections whose multishot receive ended and must be re-armed this turn.
    rearm_recv: Vec<ConnId>,
    now_ms: u64,
    stopping_since_ms: Option<u64>,
    /// Run the next turn without waiting: work was left for it.
    more_work: bool,
    /// The app's file operations submitted and not completed yet; the shard does not exit
    /// (and so its ring does not go) before this is zero.
    file_ops_in_flight: u64,
    /// Reused for [`App::poll_file_ops`].
    file_ops: Vec<FileOp>,
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
            turn: Turn::new(app, TurnLimits::from(&config)),
            io: UringIo {
                index,
                ring,
                spares: SparePool::new(
                    config.spare_buffers_max,
                    config.spare_buffer_capacity_max_bytes,
                ),
                counters,
                peers,
                connect_timeout,
                cqes: Vec::with_capacity(entries as usize * 4),
            },
            bufs,
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
            rearm_recv: Vec::with_capacity(config.max_connections),
            now_ms: now_ms(),
            stopping_since_ms: None,
            more_work: false,
            file_ops_in_flight: 0,
            file_ops: Vec::new(),
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

            let connecting = self.stopping_since_ms.is_none();
            if self.turn.finish(self.now_ms, connecting, &mut self.io)? {
                // A per-turn limit was hit: more may be waiting, so do not sleep.
                self.more_work = true;
            }
            self.rearm_recvs()?;
            self.submit_file_ops()?;

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
                if self.turn.is_empty()
                    && self.aux_ops_in_flight == 0
                    && self.file_ops_in_flight == 0
                {
                    break true;
                }
                if waited >= 2 * self.config.shutdown_grace_ms {
                    tracing::error!(
                        shard = self.index,
                        connections = self.turn.len(),
                        aux_ops = self.aux_ops_in_flight,
                        file_ops = self.file_ops_in_flight,
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
        self.turn.app_mut().end_of_turn(self.now_ms);
        // What that last end of turn staged, and anything later, the app drives itself.
        let all_completed = self.file_ops_in_flight == 0;
        self.turn.app_mut().file_ops_stopped(all_completed);
        self.teardown(clean);
        Ok(())
    }

    /// Submits the file operations the app staged this turn (store writes and fdatasyncs)
    /// with the turn's other operations; a linked chain goes in one piece.
    fn submit_file_ops(&mut self) -> Result<(), EngineError> {
        let mut ops = std::mem::take(&mut self.file_ops);
        self.turn.app_mut().poll_file_ops(&mut ops);
        let mut chain: Vec<squeue::Entry> = Vec::new();
        let mut result = Ok(());
        for op in &ops {
            debug_assert!(op.token < 1 << FILE_TOKEN_BITS);
            let data = ((OpKind::File as u64) << 56) | (op.token & ((1 << FILE_TOKEN_BITS) - 1));
            let mut flags = squeue::Flags::empty();
            if op.link {
                flags |= squeue::Flags::IO_LINK;
            }
            let entry = match op.kind {
                FileOpKind::Write { ptr, len, offset } => {
                    // ASYNC: the copy into the page cache runs on an io-wq worker instead of
                    // inline in io_uring_enter, so the loop goes on meanwhile.
                    flags |= squeue::Flags::ASYNC;
                    opcode::Write::new(Fd(op.fd), ptr, len)
                        .offset(offset)
                        .build()
                }
                FileOpKind::Fdatasync => opcode::Fsync::new(Fd(op.fd))
                    .flags(io_uring::types::FsyncFlags::DATASYNC)
                    .build(),
            };
            chain.push(entry.flags(flags).user_data(data));
            if !op.link {
                // SAFETY: the app owns each write's buffer and keeps it, and the file, until
                // the op's completion reaches `on_file_complete`, or for ever if the shard
                // stops without it (`FileOp`'s contract, `file_ops_stopped(false)`); an fsync
                // carries no buffer.
                result = unsafe { self.io.push(&chain) };
                if result.is_err() {
                    break;
                }
                self.file_ops_in_flight += chain.len() as u64;
                Counters::bump(&self.io.counters.file_ops_submitted, chain.len() as u64);
                chain.clear();
            }
        }
        if result.is_ok() && !chain.is_empty() {
            // A chain left open by the app: its last op links to nothing; submit it as is.
            // SAFETY: as above.
            result = unsafe { self.io.push(&chain) };
            if result.is_ok() {
                self.file_ops_in_flight += chain.len() as u64;
                Counters::bump(&self.io.counters.file_ops_submitted, chain.len() as u64);
            }
        }
        ops.clear();
        self.file_ops = ops;
        result
    }

    fn on_file_complete(&mut self, token: u64, result: i32) {
        self.file_ops_in_flight = self.file_ops_in_flight.saturating_sub(1);
        if result < 0 {
            Counters::bump(&self.io.counters.file_ops_failed, 1);
        }
        self.turn
            .app_mut()
            .on_file_complete(self.now_ms, token, result);
    }

    fn teardown(mut self, clean: bool) {
        if clean {
            // Every operation has completed, so nothing selects from the buffer ring any more.
            if let Err(error) = self.bufs.unregister(&self.io.ring.submitter()) {
                tracing::warn!(shard = self.index, %error, "unregistering the buffer ring");
            }
            return;
        }
        // The kernel may still write into receive buffers, transmit vectors or the wake-up
        // buffer: leak them all. Dropping the ring then makes the kernel cancel what is left.
        let Shard {
            bufs,
            turn,
            wake_buf,
            io:
                UringIo {
                    connect_timeout,
                    ring,
                    ..
                },
            ..
        } = self;
        bufs.leak();
        let app = turn.leak_connections();
        std::mem::forget(wake_buf);
        std::mem::forget(connect_timeout);
        drop(ring);
        drop(app);
    }

    // ----- submission -----

    /// Submits this turn's operations and waits for a completion, the earliest deadline, or
    /// nothing at all when work is pending.
    fn submit_and_wait(&mut self) -> Result<(), EngineError> {
        let wait_ms = if self.more_work {
            Some(0)
        } else {
            self.next_wake_ms().map(|at| at.saturating_sub(now_ms()))
        };
        self.more_work = false;
        let ring = &mut self.io.ring;
        let result = match wait_ms {
            Some(0) => ring.submit(),
            Some(ms) => {
                let ts = Timespec::new()
                    .sec(ms / 1000)
                    .nsec(((ms % 1000) * 1_000_000) as u32);
                let args = SubmitArgs::new().timespec(&ts);
                ring.submitter().submit_with_args(1, &args)
            }
            None => ring.submit_and_wait(1),
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
        let mut earliest = self.turn.next_wake_ms();
        let mut consider = |at: Option<u64>| {
            if let Some(at) = at {
                earliest = Some(earliest.map_or(at, |e: u64| e.min(at)));
            }
        };
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
        let io = &mut self.io;
        io.cqes.extend(io.ring.completion());
        let mut index = 0;
        while index < self.io.cqes.len() {
            let cqe = self.io.cqes[index].clone();
            index += 1;
            self.handle_cqe(cqe)?;
        }
        self.io.cqes.clear();
        Ok(())
    }

    fn handle_cqe(&mut self, cqe: cqueue::Entry) -> Result<(), EngineError> {
        let result = cqe.result();
        let flags = cqe.flags();
        if cqe.user_data() >> 56 == OpKind::File as u64 {
            self.on_file_complete(cqe.user_data() & ((1 << FILE_TOKEN_BITS) - 1), result);
            return Ok(());
        }
        let Some((kind, key, generation)) = decode_user_data(cqe.user_data()) else {
            // Not ours (nothing else submits on this ring): drop it, but never lose a buffer.
            self.give_back_buffer(flags);
            Counters::bump(&self.io.counters.stale_completions, 1);
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
        let id = ConnId {
            slot: key as u32,
            generation,
        };
        if self.turn.state(id).is_none() {
            // Cannot happen while the accounting holds (slots outlive their operations); if it
            // ever does, the completion is recognised as stale and dropped.
            self.give_back_buffer(flags);
            Counters::bump(&self.io.counters.stale_completions, 1);
            return Ok(());
        }
        match kind {
            OpKind::Recv => self.on_recv(id, result, flags)?,
            OpKind::Send => self.on_send(id, result)?,
            OpKind::Connect => self.on_connect(id, result)?,
            OpKind::ConnectTimeout | OpKind::Cancel => {
                // A link timeout reports -ETIME when it fired (the connect then completes with
                // -ECANCELED) and -ECANCELED/-ENOENT/-EALREADY when the connect won; a cancel
                // reports how many operations it found or -ENOENT/-EALREADY. None of these
                // needs a decision beyond the accounting.
                if let Some(sock) = self.turn.slot_mut(id) {
                    sock.ops_in_flight -= 1;
                }
            }
            OpKind::Accept | OpKind::Wake | OpKind::AuxCancel | OpKind::File => {}
        }
        if self.turn.state(id) == Some(ConnState::Closing) {
            self.progress_close(id)?;
        }
        Ok(())
    }

    fn give_back_buffer(&mut self, flags: u32) {
        if let Some(bid) = cqueue::buffer_select(flags) {
            self.bufs.give_back(bid);
        }
    }

    fn on_accept(&mut self, acceptor: usize, result: i32, flags: u32) -> Result<(), EngineError> {
        let counters = Arc::clone(&self.io.counters);
        let Some(tag) = self.acceptors.get(acceptor).map(|a| a.tag) else {
            // Cannot happen: only arm_accept names an acceptor, by its index.
            Counters::bump(&counters.stale_completions, 1);
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
                    Counters::bump(&counters.accept_errors, 1);
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
                    Counters::bump(&counters.accept_errors, 1);
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
            Counters::bump(&counters.refused_shutdown, 1);
            return Ok(());
        }
        let peer = match sockets::peer_addr(fd.as_raw_fd()) {
            Ok(peer) => peer,
            Err(_) => {
                // ENOTCONN: the peer already reset. Nothing to serve.
                Counters::bump(&counters.accept_errors, 1);
                return Ok(());
            }
        };
        if self.turn.len() >= self.config.max_connections {
            Counters::bump(&counters.refused_limit, 1);
            if crate::ratelog::REFUSED.allow() {
                tracing::warn!(
                    shard = self.index,
                    %peer,
                    limit = self.config.max_connections,
                    refused = counters.refused_limit.load(Ordering::Relaxed),
                    "connection table full; closing a new connection (limits.connections_per_shard_max and the descriptor budget)"
                );
            }
            return Ok(());
        }
        if !self.io.peers.try_add(peer.ip()) {
            Counters::bump(&counters.refused_per_ip, 1);
            if crate::ratelog::REFUSED.allow() {
                tracing::warn!(
                    shard = self.index,
                    %peer,
                    limit = self.io.peers.max(),
                    refused = counters.refused_per_ip.load(Ordering::Relaxed),
                    "too many connections from one address; closing a new one (limits.connections_per_ip_max)"
                );
            }
            return Ok(());
        }
        let mut sock = Sock::new(fd);
        sock.counted_ip = Some(peer.ip());
        let id = match self.turn.accept(self.now_ms, peer, tag, sock) {
            Ok(id) => id,
            Err(_refused) => {
                // Dropping the refused slot closes its socket.
                self.io.peers.remove(peer.ip());
                Counters::bump(&counters.refused_app, 1);
                return Ok(());
            }
        };
        if self.config.tcp_nodelay {
            if let Some(sock) = self.turn.slot(id) {
                // Failing to set an option on a live socket only costs latency; not worth a
                // close.
                let _ = sockets::set_nodelay(sock.fd.as_raw_fd());
            }
        }
        Counters::bump(&counters.accepted, 1);
        self.arm_recv(id)
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

    fn on_recv(&mut self, id: ConnId, result: i32, flags: u32) -> Result<(), EngineError> {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let open = self.turn.state(id) == Some(ConnState::Open);
        if let Some(sock) = self.turn.slot_mut(id) {
            if !more {
                sock.recv_armed = false;
                sock.ops_in_flight -= 1;
            }
        }
        let received = if result > 0 {
            match bid {
                Some(bid) if open => match self.bufs.bytes(bid, result as usize) {
                    Some(bytes) => {
                        Counters::bump(&self.io.counters.bytes_in, bytes.len() as u64);
                        Received::Bytes(bytes)
                    }
                    None => Received::Closed(CloseReason::Io(Errno(libc::EINVAL))),
                },
                // Bytes for a closing connection are dropped; the buffer goes back regardless.
                Some(_) => Received::Nothing,
                // A receive result without a buffer breaks the provided-buffer contract.
                None => Received::Closed(CloseReason::Io(Errno(libc::EINVAL))),
            }
        } else if result == 0 {
            Received::Closed(CloseReason::PeerClosed)
        } else {
            match -result {
                // Every provided buffer is in use. They all return to the ring during this
                // turn (on_recv never keeps one), so re-arming at the end of the turn finds
                // buffers again.
                libc::ENOBUFS => {
                    Counters::bump(&self.io.counters.recv_buffer_exhausted, 1);
                    Received::Nothing
                }
                libc::ECANCELED | libc::EINTR | libc::EAGAIN => Received::Nothing,
                libc::ECONNRESET | libc::EPIPE => Received::Closed(CloseReason::PeerReset),
                errno => Received::Closed(CloseReason::Io(Errno(errno))),
            }
        };
        let done = self.turn.on_recv(self.now_ms, id, received, &mut self.io);
        // The app has returned: the buffer goes back to the kernel.
        if let Some(bid) = bid {
            self.bufs.give_back(bid);
        }
        done?;
        if !more && self.turn.state(id) == Some(ConnState::Open) {
            self.rearm_recv.push(id);
        }
        Ok(())
    }

    fn on_send(&mut self, id: ConnId, result: i32) -> Result<(), EngineError> {
        let state = self.turn.state(id);
        let Some(sock) = self.turn.slot_mut(id) else {
            return Ok(());
        };
        sock.ops_in_flight -= 1;
        let Some(transmit) = sock.send.as_mut() else {
            return Ok(());
        };
        let may_continue = state == Some(ConnState::Open)
            || (state == Some(ConnState::Closing) && sock.flush_before_close && !sock.cancel_sent);
        let mut close = None;
        let mut resend = false;
        if result > 0 {
            Counters::bump(&self.io.counters.bytes_out, result as u64);
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
            return self.io.submit_send(id, sock);
        }
        // The kernel is done with the vector (the completion arrived): recycle it.
        if let Some(transmit) = sock.send.take() {
            self.io.spares.put(transmit.buf);
        }
        self.turn.on_sent(self.now_ms, id, close, &mut self.io)
    }

    fn on_connect(&mut self, id: ConnId, result: i32) -> Result<(), EngineError> {
        let state = self.turn.state(id);
        let Some(sock) = self.turn.slot_mut(id) else {
            return Ok(());
        };
        sock.ops_in_flight -= 1;
        // The kernel has read the address; the link timeout does not use it.
        sock.connect_addr = None;
        if state != Some(ConnState::Connecting) {
            return Ok(());
        }
        if result < 0 {
            let reason = match -result {
                // Only the link timeout cancels a connect of a slot that is not closing.
                libc::ECANCELED | libc::ETIME => CloseReason::ConnectTimedOut,
                errno => CloseReason::ConnectFailed(Errno(errno)),
            };
            return self
                .turn
                .on_connected(self.now_ms, id, Err(reason), &mut self.io);
        }
        Counters::bump(&self.io.counters.connected, 1);
        if self.config.tcp_nodelay {
            let _ = sockets::set_nodelay(sock.fd.as_raw_fd());
        }
        self.turn
            .on_connected(self.now_ms, id, Ok(()), &mut self.io)?;
        self.arm_recv(id)
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
            unsafe { self.io.push(&[entry])? };
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
        unsafe { self.io.push(&[entry]) }
    }

    fn arm_recv(&mut self, id: ConnId) -> Result<(), EngineError> {
        let Some(sock) = self.turn.slot_mut(id) else {
            return Ok(());
        };
        let entry = opcode::RecvMulti::new(Fd(sock.fd.as_raw_fd()), self.bufs.group_id())
            .build()
            .user_data(conn_user_data(OpKind::Recv, id));
        sock.recv_armed = true;
        sock.ops_in_flight += 1;
        // SAFETY: the receive writes only into provided buffers, owned by `self.bufs` for the
        // shard's lifetime; the socket stays open until the slot's last completion.
        unsafe { self.io.push(&[entry]) }
    }

    fn rearm_recvs(&mut self) -> Result<(), EngineError> {
        let mut rearm = std::mem::take(&mut self.rearm_recv);
        for &id in &rearm {
            let wanted = self.turn.state(id) == Some(ConnState::Open)
                && self.turn.slot(id).is_some_and(|sock| !sock.recv_armed);
            if wanted {
                self.arm_recv(id)?;
            }
        }
        rearm.clear();
        self.rearm_recv = rearm;
        Ok(())
    }

    // ----- closing -----

    /// Moves a closing connection on after a completion: releases it when nothing is in
    /// flight, otherwise cancels what is (once the flush, if any, is done).
    fn progress_close(&mut self, id: ConnId) -> Result<(), EngineError> {
        let Some(sock) = self.turn.slot_mut(id) else {
            return Ok(());
        };
        if self.io.progress_close(id, sock)? {
            self.turn.release(self.now_ms, id, &mut self.io);
        }
        Ok(())
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
            unsafe { self.io.push(&[entry])? };
        }
        if self.wake_armed {
            let entry = opcode::AsyncCancel::new(user_data(OpKind::Wake, 0, 0))
                .build()
                .user_data(user_data(OpKind::AuxCancel, 0, 0));
            self.aux_ops_in_flight += 1;
            // SAFETY: a cancel points at no memory.
            unsafe { self.io.push(&[entry])? };
        }
        self.turn
            .close_all(self.now_ms, CloseReason::Shutdown, &mut self.io)
    }

    /// The grace period is over: cancel transmits still in flight.
    fn abandon_flushes(&mut self) -> Result<(), EngineError> {
        let ids: Vec<ConnId> = self
            .turn
            .conns()
            .filter(|(_, _, sock)| sock.flush_before_close)
            .map(|(id, _, _)| id)
            .collect();
        for id in ids {
            if let Some(sock) = self.turn.slot_mut(id) {
                sock.flush_before_close = false;
            }
            self.progress_close(id)?;
        }
        Ok(())
    }
}

impl UringIo {
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

    fn submit_send(&mut self, id: ConnId, sock: &mut Sock) -> Result<(), EngineError> {
        let Some(transmit) = sock.send.as_ref() else {
            return Ok(());
        };
        let rest = &transmit.buf[transmit.sent..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(Fd(sock.fd.as_raw_fd()), rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(conn_user_data(OpKind::Send, id));
        sock.ops_in_flight += 1;
        // SAFETY: the bytes live in the heap block of `sock.send`'s vector, which stays in the
        // slot (not moved out, not resized) until this send's completion is processed, and the
        // slot is not removed before its last completion.
        unsafe { self.push(&[entry]) }
    }

    /// Moves a closing connection on: true when nothing is in flight (it can be removed);
    /// otherwise cancels what is (once the flush, if any, is done) and returns false.
    fn progress_close(&mut self, id: ConnId, sock: &mut Sock) -> Result<bool, EngineError> {
        if sock.ops_in_flight == 0 {
            return Ok(true);
        }
        if sock.cancel_sent || (sock.flush_before_close && sock.send.is_some()) {
            return Ok(false);
        }
        sock.cancel_sent = true;
        sock.ops_in_flight += 1;
        // Shutting the socket down makes every operation on it finish even if the cancel finds
        // one mid-flight (-EALREADY), which bounds the wait for the last completion.
        sockets::shutdown_both(sock.fd.as_raw_fd());
        let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(sock.fd.as_raw_fd())).all())
            .build()
            .user_data(conn_user_data(OpKind::Cancel, id));
        // SAFETY: a cancel points at no memory; it names the socket, which stays open until
        // this cancel's own completion (it counts in ops_in_flight).
        unsafe { self.push(&[entry])? };
        Ok(false)
    }
}

impl TurnIo for UringIo {
    type Slot = Sock;
    type Error = EngineError;

    fn buffer(&mut self) -> Vec<u8> {
        self.spares.take()
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        self.spares.put(buf);
    }

    fn send(&mut self, id: ConnId, sock: &mut Sock, buf: Vec<u8>) -> Result<(), EngineError> {
        sock.send = Some(Transmit { buf, sent: 0 });
        self.submit_send(id, sock)
    }

    fn close(
        &mut self,
        id: ConnId,
        sock: &mut Sock,
        _reason: CloseReason,
        flush: bool,
    ) -> Result<bool, EngineError> {
        sock.flush_before_close = flush;
        self.progress_close(id, sock)
    }

    /// The last completion has arrived: closes the socket.
    fn released(&mut self, sock: Sock, reason: CloseReason) {
        debug_assert_eq!(sock.ops_in_flight, 0);
        if let Some(transmit) = sock.send {
            self.spares.put(transmit.buf);
        }
        self.counters.count_close(reason);
        if let Some(ip) = sock.counted_ip {
            self.peers.remove(ip);
        }
        drop(sock.fd);
    }

    fn connect(
        &mut self,
        id: ConnId,
        addr: SocketAddr,
    ) -> Result<Result<Sock, CloseReason>, EngineError> {
        let fd = match sockets::tcp_socket(&addr) {
            Ok(fd) => fd,
            Err(error) => {
                return Ok(Err(CloseReason::ConnectFailed(Errno(
                    error.raw_os_error().unwrap_or(libc::EIO),
                ))))
            }
        };
        let raw_fd = fd.as_raw_fd();
        let addr = Box::new(RawSockAddr::from_socket_addr(addr));
        let (addr_ptr, addr_len) = (addr.as_ptr(), addr.len);
        let mut sock = Sock::new(fd);
        sock.connect_addr = Some(addr);
        sock.ops_in_flight = 2;
        let connect = opcode::Connect::new(Fd(raw_fd), addr_ptr, addr_len)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(conn_user_data(OpKind::Connect, id));
        let timeout = opcode::LinkTimeout::new(&*self.connect_timeout)
            .build()
            .user_data(conn_user_data(OpKind::ConnectTimeout, id));
        // SAFETY: the address is boxed in the slot (the Box moves into the turn's table, its
        // heap block stays put) until the connect completes (on_connect drops it then), and the
        // slot outlives its operations; the timespec is boxed in the shard, which outlives
        // every operation.
        unsafe { self.push(&[connect, timeout])? };
        Ok(Ok(sock))
    }

    fn not_opened(&mut self, reason: CloseReason) {
        self.counters.count_close(reason);
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
