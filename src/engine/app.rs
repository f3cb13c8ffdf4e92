//! The seam between the engine and a protocol layer: the [`App`] trait and the plain types its
//! methods speak ([`ConnId`], [`Listener`], [`CloseReason`], [`AppError`], [`Errno`]), plus what the app's
//! factory receives ([`ShardCtx`]) and the [`Waker`] other threads use. Everything here is
//! re-exported from [`super::net`], where callers name it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::sockets;

/// A generation-checked handle to one connection of one shard. Stale handles (the connection
/// closed, the slot was reused) are recognised and ignored by the engine.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ConnId {
    /// Index in the shard's connection table.
    pub slot: u32,
    /// Distinguishes successive connections that reuse the same slot.
    pub generation: u32,
}

/// Which listening address an incoming connection arrived on: the tag its caller gave the address
/// in [`super::net::EngineConfig::listen`], handed to [`App::accept`]. One engine can serve
/// several protocols (say MS-MQQB on 1801 and AMQP on 5672) from the same shards, loop and
/// connection table; the app tells them apart by this tag, the engine attaches no meaning to it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Listener(pub u16);

impl Listener {
    /// The tag of the one address of [`super::net::EngineConfig::listening_on`].
    pub const FIRST: Listener = Listener(0);
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "listener {}", self.0)
    }
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

/// Why a connection ended; given to [`App::on_closed`] and counted in
/// [`Counters`](super::net::Counters).
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
    /// [`App::poll_transmit`] produced more than
    /// [`super::net::EngineConfig::send_buffered_max_bytes`].
    TransmitTooLarge,
    /// The engine is shutting down.
    Shutdown,
    /// An outgoing connection failed (ECONNREFUSED, ENETUNREACH, ...).
    ConnectFailed(Errno),
    /// An outgoing connection did not complete within
    /// [`super::net::EngineConfig::connect_timeout_ms`].
    ConnectTimedOut,
    /// An outgoing connection was not attempted: the shard's table was full.
    LimitReached,
}

/// The seam between the engine and a protocol layer: one instance per shard, driven only from
/// that shard's thread, never told about io_uring. Every method is called with the loop's
/// `now_ms` (monotonic milliseconds, see [`super::net::now_ms`]) read once per turn. Methods
/// must not block: a blocked method stalls every connection of the shard.
pub trait App {
    /// Per-connection state, stored by the engine in its connection table next to the socket.
    type Conn;

    /// A peer connected on `listener` (the tag of the address it reached, see [`Listener`]).
    /// Return None to refuse (the engine closes the socket at once and counts it in
    /// `refused_app`); the app enforces its own session limits (MaxInSessions) here, and refuses
    /// a listener it does not serve. `id` names the connection in [`App::poll_ready`].
    fn accept(
        &mut self,
        now_ms: u64,
        id: ConnId,
        peer: SocketAddr,
        listener: Listener,
    ) -> Option<Self::Conn>;

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

    /// File operations to run on the shard's ring (store writes and fdatasyncs), polled once
    /// per turn after [`App::end_of_turn`]; see [`FileOp`] for the buffer contract. A chain
    /// of linked ops must be appended in one call. The loop never waits for them: each
    /// result comes back through [`App::on_file_complete`] in a later turn.
    fn poll_file_ops(&mut self, _out: &mut Vec<FileOp>) {}

    /// The kernel's result for the op named `token` (`>= 0`, or `-errno`; `-ECANCELED` for
    /// an op whose linked predecessor failed or was short). Called before the turn's
    /// [`App::end_of_turn`].
    fn on_file_complete(&mut self, _now_ms: u64, _token: u64, _result: i32) {}

    /// The shard's loop is over and takes no more file ops: drive what is staged yourself.
    /// `all_completed` is false only when ops handed out never completed (the shard gave up
    /// after twice the shutdown grace): their buffers must then be leaked, never freed.
    fn file_ops_stopped(&mut self, _all_completed: bool) {}
}

/// Bits of [`FileOp::token`] the engine carries (the rest of `user_data` names the op kind).
pub const FILE_TOKEN_BITS: u32 = 56;

/// What a [`FileOp`] does.
#[derive(Clone, Copy, Debug)]
pub enum FileOpKind {
    /// A positioned write of `len` bytes at `ptr` to `offset`.
    Write {
        /// The bytes; owned by the app, unmoved and unfreed until the op's completion.
        ptr: *const u8,
        /// How many.
        len: u32,
        /// Where in the file.
        offset: u64,
    },
    /// An fdatasync of the file.
    Fdatasync,
}

/// A file operation an app hands its shard to run on the shard's own ring
/// ([`App::poll_file_ops`]); its result comes back through [`App::on_file_complete`].
///
/// Contract: the file stays open and a write's buffer stays valid and unmodified until that
/// completion, or, if the shard stops without it (its kernel ring held the op for more than
/// twice the shutdown grace), forever: [`App::file_ops_stopped`] says so and the app must leak.
#[derive(Clone, Copy, Debug)]
pub struct FileOp {
    /// The file.
    pub fd: RawFd,
    /// What to do.
    pub kind: FileOpKind,
    /// The next op of the same [`App::poll_file_ops`] call runs only after this one succeeded
    /// in full (io_uring's IO_LINK); a failed or short one cancels it (`-ECANCELED`).
    pub link: bool,
    /// The app's name for the op, below `1 << FILE_TOKEN_BITS`.
    pub token: u64,
}

/// What the factory of [`super::net::Engine::start_with_ctx`] gets on each shard's thread:
/// which shard it builds the app for, how many there are, and every shard's [`Waker`] (by
/// index), made before any app, so an app can wake the others (say, through a
/// [`super::mesh::Mesh`]).
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

    /// The shard's eventfd, for a ring that should wake the shard when it posts a completion
    /// (`io_uring_register_eventfd`); valid while this waker lives.
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.eventfd.as_raw_fd()
    }
}
