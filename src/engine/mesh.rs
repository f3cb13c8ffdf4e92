//! The cross-shard channel: one bounded single-producer single-consumer byte lane per ordered
//! pair of shards, so a shard can hand a frame to the shard that owns its queue without a lock.
//!
//! # Shape
//!
//! [`Mesh::new`] makes `n * n` lanes (`lanes[from * n + to]`) of `lane_bytes` each. Every shard
//! takes its one [`Port`] ([`Mesh::port`]); a port is the only producer of the lanes leaving its
//! shard and the only consumer of the lanes entering it, which is what makes a lane SPSC (a
//! second port for the same shard is refused, and a port is `!Sync`).
//!
//! A record is an 8-byte header (`u32 len | u32 meta`) and `len` payload bytes, padded to 8.
//! `meta` is the head length of an inline record, or `BOXED` plus the head length of a record
//! whose body is a `Box<[u8]>` (the payload is then `ptr u64 | body_len u64 | head`): frames
//! larger than a quarter of the lane cross that way and the receiver drops the box. When the
//! room left before the end of the lane is too small for a record, the producer writes a wrap
//! marker (`meta == WRAP`) and starts again at offset 0. `head`/`tail` count bytes since the
//! lane was made (never reduced modulo the size), so `tail - head` is the space in use.
//!
//! # Wake protocol (no wake is lost, a busy receiver costs no system call)
//!
//! During a turn a shard appends records ([`Port::try_send`]) and remembers the targets; at the
//! end of its turn [`Port::flush`] does, per target, `if !lane.wake.swap(true) { waker.wake() }`.
//! The receiver, in [`Port::recv_all`], clears the flag of every incoming lane with
//! `swap(false)` *before* reading that lane's tail. Both swaps are AcqRel read-modify-writes of
//! one atomic, so either the receiver's clear comes first (the sender then sees false and
//! writes the eventfd) or the sender's swap comes first (the receiver's clear then reads it,
//! synchronises with it and so sees the tail published before it). The wake is the target
//! shard's own eventfd, read through its ring (`OpKind::Wake` in shard.rs): a woken shard runs
//! a turn, and its [`App::end_of_turn`](super::app::App::end_of_turn) calls `recv_all`.
//!
//! Threads outside the engine (tests, a future control thread) take part with a [`Parker`]: an
//! eventfd of their own, whose [`Waker`] goes into the mesh and on which they block.
//!
//! `unsafe` is confined to `Lane` (the byte ring), the boxed-body pointer and [`Parker`]'s
//! `poll`/`read`; each block says why it is sound.

use std::alloc::Layout;
use std::cell::Cell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::app::Waker;
use super::sockets;

/// The lane size the server uses unless configured otherwise (`limits.handoff_lane_bytes`).
pub const DEFAULT_LANE_BYTES: usize = 1024 * 1024;
/// The smallest lane [`Mesh::new`] accepts.
pub const LANE_BYTES_MIN: usize = 4096;
/// The largest lane [`Mesh::new`] accepts (record lengths are u32).
pub const LANE_BYTES_MAX: usize = 1 << 30;
/// The longest head a record may carry (heads are the mail's fixed fields, not user data).
pub const HEAD_BYTES_MAX: usize = 512;

const HEADER: usize = 8;
/// `meta` bit: the body is a `Box<[u8]>` whose pointer and length are in the payload.
const BOXED: u32 = 1 << 31;
/// `meta` of a wrap marker: the rest of the lane is unused, the next record is at offset 0.
const WRAP: u32 = u32::MAX;
/// Pointer and length of a boxed body.
const BOXED_FIELDS: usize = 16;

fn padded(len: usize) -> usize {
    (len + 7) & !7
}

/// Keeps a hot atomic on its own cache line pair (adjacent-line prefetch on x86 pulls two).
#[repr(align(128))]
struct CachePadded<T>(T);

/// One SPSC byte ring. Only [`Port`] touches it, through the methods below.
struct Lane {
    /// Bytes the consumer has finished with; stored only by the consumer (Release).
    head: CachePadded<AtomicUsize>,
    /// Bytes the producer has published; stored only by the producer (Release).
    tail: CachePadded<AtomicUsize>,
    /// Set by the producer's flush, cleared by the consumer before it drains (see module doc).
    wake: CachePadded<AtomicBool>,
    /// `cap` bytes, 128-aligned (so every record header is 8-aligned), from `alloc_zeroed`
    /// (pages the lane never reaches are never touched); freed in Drop.
    buf: NonNull<u8>,
    cap: usize,
}

impl Lane {
    fn layout(cap: usize) -> Layout {
        Layout::from_size_align(cap, 128).expect("lane sizes are checked by Mesh::new")
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // SAFETY: `buf` was allocated in `Lane::new` with this very layout and is freed once.
        unsafe { std::alloc::dealloc(self.buf.as_ptr(), Lane::layout(self.cap)) }
    }
}

// SAFETY: `buf` is a heap block owned by the lane (moving the lane between threads moves the
// ownership; nothing is thread-local).
unsafe impl Send for Lane {}

// SAFETY: the only part not Sync by itself is `buf`. Its bytes in `[head, tail)` are written
// by the one producer before it publishes `tail` (Release) and read by the one consumer after
// it loads `tail` (Acquire); bytes outside that range are written by the producer only after
// the consumer published a `head` (Release) past them, which the producer loads with Acquire.
// One producer and one consumer per lane are guaranteed by `Mesh::port` (one Port per shard)
// and by Port being !Sync with `&mut self` methods.
unsafe impl Sync for Lane {}

impl Lane {
    fn new(cap: usize) -> Lane {
        let layout = Lane::layout(cap);
        // SAFETY: the layout has a non-zero size (Mesh::new checks LANE_BYTES_MIN).
        let buf = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(buf) = NonNull::new(buf) else {
            std::alloc::handle_alloc_error(layout)
        };
        Lane {
            head: CachePadded(AtomicUsize::new(0)),
            tail: CachePadded(AtomicUsize::new(0)),
            wake: CachePadded(AtomicBool::new(false)),
            buf,
            cap,
        }
    }

    fn base(&self) -> *mut u8 {
        self.buf.as_ptr()
    }

    /// Producer side: appends one record made of `meta`, then `parts` back to back. False when
    /// the lane has no room (nothing is written then). `cached_head` is the producer's last
    /// look at `head`, refreshed only when the cached value says "full".
    fn push(&self, cached_head: &mut usize, meta: u32, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let need = HEADER + padded(len);
        let tail = self.tail.0.load(Ordering::Relaxed);
        let offset = tail % self.cap;
        let to_end = self.cap - offset;
        let skip = if to_end < need { to_end } else { 0 };
        if tail - *cached_head + skip + need > self.cap {
            *cached_head = self.head.0.load(Ordering::Acquire);
            if tail - *cached_head + skip + need > self.cap {
                return false;
            }
        }
        let base = self.base();
        if skip > 0 {
            // SAFETY: `offset` is 8-aligned and at least 8 bytes remain before the end (every
            // position is a multiple of 8 and `to_end > 0`); the bytes from `tail` on are free
            // (checked above against the consumer's published head) and only this producer
            // writes them.
            unsafe { write_header(base.add(offset), 0, WRAP) };
        }
        let at = (tail + skip) % self.cap;
        // SAFETY: `[at, at + need)` lies inside the buffer (`need <= to_end` when not
        // wrapping, `need <= cap` at offset 0) and is free as above; `parts` are caller slices
        // that cannot overlap the lane (the lane is never handed out mutably).
        unsafe {
            write_header(base.add(at), len as u32, meta);
            let mut dst = base.add(at + HEADER);
            for part in parts {
                std::ptr::copy_nonoverlapping(part.as_ptr(), dst, part.len());
                dst = dst.add(part.len());
            }
        }
        self.tail.0.store(tail + skip + need, Ordering::Release);
        true
    }

    /// Consumer side: hands every published record to `f` in order, releasing each one's
    /// space after `f` returns. Returns how many records were handed over.
    fn drain(&self, from: usize, f: &mut dyn FnMut(usize, Record<'_>)) -> usize {
        let tail = self.tail.0.load(Ordering::Acquire);
        let mut head = self.head.0.load(Ordering::Relaxed);
        let base = self.base();
        let mut count = 0;
        while head != tail {
            let offset = head % self.cap;
            // SAFETY: `offset` is 8-aligned and inside the buffer; the header was written
            // before the producer published a tail past it (Acquire above).
            let (len, meta) = unsafe { read_header(base.add(offset)) };
            if meta == WRAP {
                head += self.cap - offset;
                self.head.0.store(head, Ordering::Release);
                continue;
            }
            let len = len as usize;
            // SAFETY: the producer published `len` payload bytes after the header, inside the
            // buffer; the producer does not overwrite them until `head` moves past them, which
            // happens only after `f` (and so every borrow of `payload`) has returned.
            let payload = unsafe { std::slice::from_raw_parts(base.add(offset + HEADER), len) };
            let record = if meta & BOXED != 0 {
                let head_len = (meta & !BOXED) as usize;
                let ptr = u64::from_ne_bytes(payload[0..8].try_into().expect("8 bytes")) as usize;
                let body_len =
                    u64::from_ne_bytes(payload[8..16].try_into().expect("8 bytes")) as usize;
                // SAFETY: `ptr`/`body_len` come from `Box::into_raw` in `Port::send_boxed`; the
                // record is read exactly once (head then moves past it), so the box is rebuilt
                // and owned exactly once. A Box<[u8]> may be dropped on any thread.
                let body = unsafe {
                    Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr as *mut u8, body_len))
                };
                Record {
                    head: &payload[BOXED_FIELDS..BOXED_FIELDS + head_len],
                    body: Body::Boxed(body),
                }
            } else {
                let head_len = meta as usize;
                Record {
                    head: &payload[..head_len],
                    body: Body::Inline(&payload[head_len..]),
                }
            };
            head += HEADER + padded(len);
            // Releases the record's space after `f` returns, or while unwinding if `f`
            // panics: a boxed body already moved into `record` must never be rebuilt twice.
            let release = Release {
                head: &self.head.0,
                to: head,
            };
            f(from, record);
            drop(release);
            count += 1;
        }
        count
    }

    fn is_empty(&self) -> bool {
        self.tail.0.load(Ordering::Acquire) == self.head.0.load(Ordering::Relaxed)
    }
}

/// Publishes a consumer's new head when dropped (see `Lane::drain`).
struct Release<'a> {
    head: &'a AtomicUsize,
    to: usize,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.head.store(self.to, Ordering::Release);
    }
}

/// # Safety
/// `at` must be 8-aligned with 8 writable bytes.
unsafe fn write_header(at: *mut u8, len: u32, meta: u32) {
    let word = u64::from(len) | (u64::from(meta) << 32);
    // SAFETY: guaranteed by the caller.
    unsafe { (at as *mut u64).write(word) }
}

/// # Safety
/// `at` must be 8-aligned with 8 initialised readable bytes.
unsafe fn read_header(at: *const u8) -> (u32, u32) {
    // SAFETY: guaranteed by the caller.
    let word = unsafe { (at as *const u64).read() };
    (word as u32, (word >> 32) as u32)
}

/// Why a mesh or a port could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshError {
    /// `Mesh::new` was given a bad size or waker count; the text says which and the range.
    Config(String),
    /// `Mesh::port` was asked for a shard the mesh does not have.
    NoSuchShard { shard: usize, shards: usize },
    /// `Mesh::port` was asked twice for one shard (each shard has exactly one port while it
    /// lives; drop the first to take another).
    PortTaken(usize),
}

impl fmt::Display for MeshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeshError::Config(what) => write!(f, "shard mesh: {what}"),
            MeshError::NoSuchShard { shard, shards } => {
                write!(f, "shard mesh: no shard {shard} (the mesh has {shards})")
            }
            MeshError::PortTaken(shard) => write!(
                f,
                "shard mesh: shard {shard} already has its port (one per shard: it is the only \
                 sender and receiver of that shard's lanes)"
            ),
        }
    }
}

impl std::error::Error for MeshError {}

/// Every lane between `n` shards and their wakers. Shared (`Arc`) by the ports.
pub struct Mesh {
    n: usize,
    lanes: Box<[Lane]>,
    wakers: Arc<[Waker]>,
    taken: Box<[AtomicBool]>,
}

impl fmt::Debug for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mesh")
            .field("shards", &self.n)
            .field("lane_bytes", &self.lane_bytes())
            .finish()
    }
}

impl Mesh {
    /// Makes the lanes between `n` shards, `lane_bytes` each (rounded down to a multiple of 8,
    /// between [`LANE_BYTES_MIN`] and [`LANE_BYTES_MAX`]); `wakers[i]` wakes shard `i`.
    pub fn new(n: usize, lane_bytes: usize, wakers: Arc<[Waker]>) -> Result<Arc<Mesh>, MeshError> {
        if n == 0 {
            return Err(MeshError::Config("at least one shard is needed".into()));
        }
        if wakers.len() != n {
            return Err(MeshError::Config(format!(
                "{} wakers for {n} shards (one per shard, by index)",
                wakers.len()
            )));
        }
        if !(LANE_BYTES_MIN..=LANE_BYTES_MAX).contains(&lane_bytes) {
            return Err(MeshError::Config(format!(
                "lane size {lane_bytes} bytes is outside {LANE_BYTES_MIN}..={LANE_BYTES_MAX} \
                 (limits.handoff_lane_bytes)"
            )));
        }
        let cap = lane_bytes & !7;
        Ok(Arc::new(Mesh {
            n,
            lanes: (0..n * n).map(|_| Lane::new(cap)).collect(),
            wakers,
            taken: (0..n).map(|_| AtomicBool::new(false)).collect(),
        }))
    }

    /// How many shards the mesh joins.
    pub fn shards(&self) -> usize {
        self.n
    }

    /// The usable bytes of each lane.
    pub fn lane_bytes(&self) -> usize {
        self.lanes[0].cap
    }

    /// The largest head plus body that [`Port::try_send`] copies into the lane; larger bodies
    /// cross boxed.
    pub fn inline_max(&self) -> usize {
        self.lane_bytes() / 4 - HEADER
    }

    /// Shard `me`'s port: its sending end of every lane `me -> *` and receiving end of every
    /// lane `* -> me`. One at a time per shard.
    pub fn port(self: &Arc<Self>, me: usize) -> Result<Port, MeshError> {
        let Some(taken) = self.taken.get(me) else {
            return Err(MeshError::NoSuchShard {
                shard: me,
                shards: self.n,
            });
        };
        if taken.swap(true, Ordering::AcqRel) {
            return Err(MeshError::PortTaken(me));
        }
        Ok(Port {
            me,
            mesh: Arc::clone(self),
            cached_head: vec![0; self.n],
            dirty: vec![false; self.n],
            targets: Vec::with_capacity(self.n),
            _not_sync: PhantomData,
        })
    }

    fn lane(&self, from: usize, to: usize) -> &Lane {
        &self.lanes[from * self.n + to]
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // Every port is gone (each holds an Arc): free the boxed bodies still in the lanes.
        for (index, lane) in self.lanes.iter().enumerate() {
            lane.drain(index / self.n, &mut |_, _| {});
        }
    }
}

/// One shard's end of the mesh. `Send` (it may be made before the shard thread runs) but not
/// `Sync`: exactly one thread sends and receives through it.
pub struct Port {
    me: usize,
    mesh: Arc<Mesh>,
    /// Per target: the last `head` seen of lane `me -> target`.
    cached_head: Vec<usize>,
    /// Per target: records were sent since the last flush.
    dirty: Vec<bool>,
    targets: Vec<usize>,
    _not_sync: PhantomData<Cell<()>>,
}

impl fmt::Debug for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Port").field("shard", &self.me).finish()
    }
}

impl Port {
    /// The shard this port belongs to.
    pub fn shard(&self) -> usize {
        self.me
    }

    /// The mesh this port is part of.
    pub fn mesh(&self) -> &Arc<Mesh> {
        &self.mesh
    }

    /// Appends one record `head ++ body` to the lane towards `to` (copying it once); a body too
    /// large for the lane's inline limit ([`Mesh::inline_max`]) is copied into a box and sent
    /// as by [`Port::send_boxed`]. Never blocks: false when the lane is full (keep the record
    /// and try after the target drained), or when `head` is longer than [`HEAD_BYTES_MAX`] or
    /// `to` is not a shard (programming errors, asserted in debug builds). The target is woken
    /// by the next [`Port::flush`].
    pub fn try_send(&mut self, to: usize, head: &[u8], body: &[u8]) -> bool {
        if !self.check(to, head) {
            return false;
        }
        if head.len() + body.len() > self.mesh.inline_max() {
            return self.send_boxed(to, head, body.into()).is_ok();
        }
        let lane = self.mesh.lane(self.me, to);
        if !lane.push(&mut self.cached_head[to], head.len() as u32, &[head, body]) {
            return false;
        }
        self.mark(to);
        true
    }

    /// Appends one record whose body crosses as the box itself (no copy); the receiver drops
    /// it. On a full lane (or a bad `to`/`head`, as in [`Port::try_send`]) the box comes back.
    pub fn send_boxed(&mut self, to: usize, head: &[u8], body: Box<[u8]>) -> Result<(), Box<[u8]>> {
        if !self.check(to, head) {
            return Err(body);
        }
        let body_len = body.len() as u64;
        let ptr = Box::into_raw(body);
        let fields = [
            (ptr as *mut u8 as usize as u64).to_ne_bytes(),
            body_len.to_ne_bytes(),
        ];
        let lane = self.mesh.lane(self.me, to);
        let meta = BOXED | head.len() as u32;
        if lane.push(
            &mut self.cached_head[to],
            meta,
            &[&fields[0], &fields[1], head],
        ) {
            self.mark(to);
            Ok(())
        } else {
            // SAFETY: `ptr` came from `Box::into_raw` just above and was not published (the
            // push wrote nothing), so this is its only owner.
            Err(unsafe { Box::from_raw(ptr) })
        }
    }

    fn check(&self, to: usize, head: &[u8]) -> bool {
        let ok = to < self.mesh.n && head.len() <= HEAD_BYTES_MAX;
        debug_assert!(
            ok,
            "mesh send to shard {to} with a {}-byte head",
            head.len()
        );
        ok
    }

    fn mark(&mut self, to: usize) {
        if !self.dirty[to] {
            self.dirty[to] = true;
            self.targets.push(to);
        }
    }

    /// Wakes every shard this port sent to since the last flush, at most once each, and only
    /// if the target has not been woken and not drained since (see the module's wake
    /// protocol). Call once at the end of every turn. Returns the number of wakes written.
    pub fn flush(&mut self) -> usize {
        let mut woken = 0;
        for to in self.targets.drain(..) {
            self.dirty[to] = false;
            let lane = self.mesh.lane(self.me, to);
            if lane.wake.0.swap(true, Ordering::AcqRel) {
                continue;
            }
            match self.mesh.wakers[to].wake() {
                Ok(()) => woken += 1,
                Err(error) => {
                    // Let the next flush try again rather than leave a flag nobody acts on.
                    lane.wake.0.store(false, Ordering::Release);
                    tracing::error!(
                        from = self.me,
                        to,
                        %error,
                        "shard mesh: waking a shard failed; the next flush tries again"
                    );
                }
            }
        }
        woken
    }

    /// Hands every record waiting in the lanes towards this shard to `f(from, record)`, lane
    /// by lane, in the order each sender sent them. A record's space is reused once `f`
    /// returns; copy what must outlive the call (or take a boxed body with
    /// [`Record::into_body`]). Returns the number of records.
    pub fn recv_all(&mut self, mut f: impl FnMut(usize, Record<'_>)) -> usize {
        let mut count = 0;
        for from in 0..self.mesh.n {
            let lane = self.mesh.lane(from, self.me);
            // Clear before reading the tail: a sender whose flush finds the flag clear wakes us
            // again; one that finds it set published its tail before our clear read it.
            lane.wake.0.swap(false, Ordering::AcqRel);
            count += lane.drain(from, &mut f);
        }
        count
    }

    /// True when a record is waiting for this shard (for a scheduler that runs a shard only
    /// when it has work, like the simulation).
    pub fn has_mail(&self) -> bool {
        (0..self.mesh.n).any(|from| !self.mesh.lane(from, self.me).is_empty())
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // Records sent this turn still reach their targets.
        self.flush();
        self.mesh.taken[self.me].store(false, Ordering::Release);
    }
}

/// One record received from another shard.
#[derive(Debug)]
pub struct Record<'a> {
    head: &'a [u8],
    body: Body<'a>,
}

#[derive(Debug)]
enum Body<'a> {
    Inline(&'a [u8]),
    Boxed(Box<[u8]>),
}

impl<'a> Record<'a> {
    /// The head as sent.
    pub fn head(&self) -> &[u8] {
        self.head
    }

    /// The body as sent (inline in the lane, or the box).
    pub fn body(&self) -> &[u8] {
        match &self.body {
            Body::Inline(bytes) => bytes,
            Body::Boxed(bytes) => bytes,
        }
    }

    /// True when the body crossed as a box.
    pub fn is_boxed(&self) -> bool {
        matches!(self.body, Body::Boxed(_))
    }

    /// The body as an owned box: the sent box itself, or a copy of an inline body.
    pub fn into_body(self) -> Box<[u8]> {
        match self.body {
            Body::Inline(bytes) => bytes.into(),
            Body::Boxed(bytes) => bytes,
        }
    }
}

/// An eventfd a thread outside the engine blocks on, with a [`Waker`] other threads (or a
/// [`Mesh`]) use to wake it. Not `Sync`: one thread parks on it.
#[derive(Debug)]
pub struct Parker {
    eventfd: Arc<OwnedFd>,
    _not_sync: PhantomData<Cell<()>>,
}

impl Parker {
    /// A new parker with a clear counter.
    pub fn new() -> io::Result<Parker> {
        Ok(Parker {
            eventfd: Arc::new(sockets::eventfd()?),
            _not_sync: PhantomData,
        })
    }

    /// A waker for this parker.
    pub fn waker(&self) -> Waker {
        Waker::new(Arc::clone(&self.eventfd))
    }

    /// Blocks until a wake arrives (returns true and consumes every wake so far) or `timeout`
    /// passes (false). A wake sent before the call is not lost: it returns at once.
    pub fn park_timeout(&self, timeout: Duration) -> io::Result<bool> {
        let fd = self.eventfd.as_raw_fd();
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let mut pollfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on the stack for the duration of the call.
            let ready = unsafe { libc::poll(&mut pollfd, 1, ms) };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            if ready == 0 {
                if left.is_zero() {
                    return Ok(false);
                }
                continue;
            }
            let mut value: u64 = 0;
            // SAFETY: reads exactly 8 bytes into a local u64; the eventfd is readable (only
            // this thread reads it: Parker is !Sync and not Clone), so the read does not block.
            let got = unsafe { libc::read(fd, &mut value as *mut u64 as *mut libc::c_void, 8) };
            if got == 8 {
                return Ok(true);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(n: usize, lane_bytes: usize) -> (Arc<Mesh>, Vec<Parker>) {
        let parkers: Vec<Parker> = (0..n).map(|_| Parker::new().expect("eventfd")).collect();
        let wakers: Arc<[Waker]> = parkers.iter().map(Parker::waker).collect();
        (Mesh::new(n, lane_bytes, wakers).expect("mesh"), parkers)
    }

    fn drain(port: &mut Port) -> Vec<(usize, Vec<u8>, Vec<u8>, bool)> {
        let mut got = Vec::new();
        port.recv_all(|from, r| {
            got.push((from, r.head().to_vec(), r.body().to_vec(), r.is_boxed()))
        });
        got
    }

    #[test]
    fn records_keep_their_order_and_sender() {
        let (mesh, _p) = mesh(3, 4096);
        let (mut a, mut b, mut c) = (
            mesh.port(0).unwrap(),
            mesh.port(1).unwrap(),
            mesh.port(2).unwrap(),
        );
        assert!(a.try_send(2, b"a", b"1"));
        assert!(b.try_send(2, b"b", b""));
        assert!(a.try_send(2, b"", b"22"));
        assert!(c.try_send(2, b"self", b"3"));
        let got = drain(&mut c);
        let flat: Vec<(usize, &[u8], &[u8])> = got
            .iter()
            .map(|(f, h, b, _)| (*f, &h[..], &b[..]))
            .collect();
        assert_eq!(
            flat,
            vec![
                (0, &b"a"[..], &b"1"[..]),
                (0, b"", b"22"),
                (1, b"b", b""),
                (2, b"self", b"3")
            ]
        );
        assert!(drain(&mut c).is_empty());
    }

    #[test]
    fn a_full_lane_refuses_and_accepts_again_once_drained() {
        let (mesh, _p) = mesh(2, 4096);
        let (mut a, mut b) = (mesh.port(0).unwrap(), mesh.port(1).unwrap());
        let body = [7u8; 100]; // 8 + 104 bytes a record
        let mut sent = 0;
        while a.try_send(1, &[], &body) {
            sent += 1;
        }
        assert_eq!(sent, 4096 / 112);
        assert!(!a.try_send(1, &[], &body), "still full");
        assert_eq!(drain(&mut b).len(), sent);
        assert!(a.try_send(1, &[], &body));
    }

    #[test]
    fn records_wrap_around_the_end_of_the_lane_intact() {
        let (mesh, _p) = mesh(2, 4096);
        let (mut a, mut b) = (mesh.port(0).unwrap(), mesh.port(1).unwrap());
        let mut next = 0u32;
        let mut expect = 0u32;
        // Sizes that do not divide the lane, so records land across many offsets and wraps.
        for round in 0..2000 {
            for _ in 0..(round % 7) {
                let len = (next as usize * 37) % 900;
                let body: Vec<u8> = (0..len).map(|i| (i as u32 ^ next) as u8).collect();
                if !a.try_send(1, &next.to_le_bytes(), &body) {
                    break;
                }
                next += 1;
            }
            b.recv_all(|_, r| {
                assert_eq!(r.head(), expect.to_le_bytes());
                let len = (expect as usize * 37) % 900;
                assert_eq!(r.body().len(), len);
                assert!(r
                    .body()
                    .iter()
                    .enumerate()
                    .all(|(i, &x)| x == (i as u32 ^ expect) as u8));
                assert!(!r.is_boxed());
                expect += 1;
            });
        }
        assert_eq!(expect, next);
        assert!(next > 3000, "enough records to wrap many times ({next})");
    }

    #[test]
    fn large_bodies_cross_boxed_and_are_freed() {
        let (mesh, _p) = mesh(2, 4096);
        let (mut a, mut b) = (mesh.port(0).unwrap(), mesh.port(1).unwrap());
        let big = vec![9u8; 5000]; // larger than the lane itself
        assert!(a.try_send(1, b"h", &big));
        let boxed: Box<[u8]> = vec![1u8, 2, 3].into();
        let ptr = boxed.as_ptr();
        a.send_boxed(1, b"x", boxed).expect("room");
        let mut got = Vec::new();
        b.recv_all(|_, r| got.push((r.head().to_vec(), r.is_boxed(), r.into_body())));
        assert_eq!(got[0].0, b"h");
        assert!(got[0].1);
        assert_eq!(&got[0].2[..], &big[..]);
        assert_eq!(got[1].0, b"x");
        assert_eq!(got[1].2.as_ptr(), ptr, "the box itself crossed, not a copy");
        // Boxes left in a lane are freed with the mesh (Miri/ASan would flag a leak here).
        assert!(a.try_send(1, b"", &big));
        drop((a, b));
        drop(mesh);
    }

    #[test]
    fn a_record_whose_handler_panicked_is_consumed_once() {
        let (mesh, _p) = mesh(2, 4096);
        let (mut a, mut b) = (mesh.port(0).unwrap(), mesh.port(1).unwrap());
        a.send_boxed(1, b"boom", vec![1u8; 64].into()).unwrap();
        assert!(a.try_send(1, b"next", b""));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.recv_all(|_, r| assert_ne!(r.head(), b"boom"));
        }));
        assert!(panicked.is_err());
        // The box was dropped by the unwind; the record is not handed out (or rebuilt) again.
        let got = drain(&mut b);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, b"next");
    }

    #[test]
    fn a_full_lane_gives_the_box_back() {
        let (mesh, _p) = mesh(2, 4096);
        let mut a = mesh.port(0).unwrap();
        while a.try_send(1, &[], &[0; 200]) {}
        while a.try_send(1, &[], &[]) {}
        let back = a
            .send_boxed(1, b"", vec![5u8; 10].into())
            .expect_err("full");
        assert_eq!(&back[..], &[5u8; 10]);
    }

    #[test]
    fn one_port_per_shard() {
        let (mesh, _p) = mesh(2, 4096);
        let a = mesh.port(0).unwrap();
        assert_eq!(mesh.port(0).unwrap_err(), MeshError::PortTaken(0));
        assert!(matches!(
            mesh.port(2),
            Err(MeshError::NoSuchShard {
                shard: 2,
                shards: 2
            })
        ));
        drop(a);
        assert!(mesh.port(0).is_ok());
        let wakers: Arc<[Waker]> = Arc::from(Vec::new());
        assert!(Mesh::new(1, 4096, wakers).is_err());
    }

    #[test]
    fn flush_wakes_each_target_once_until_it_drains() {
        let (mesh, parkers) = mesh(3, 4096);
        let (mut a, mut b) = (mesh.port(0).unwrap(), mesh.port(1).unwrap());
        assert_eq!(a.flush(), 0, "nothing sent");
        for _ in 0..3 {
            assert!(a.try_send(1, b"", b"x"));
        }
        assert!(a.try_send(2, b"", b"y"));
        assert_eq!(a.flush(), 2, "one wake per target, not per record");
        assert!(a.try_send(1, b"", b"x"));
        assert_eq!(a.flush(), 0, "target 1 has not drained since its wake");
        assert!(parkers[1].park_timeout(Duration::from_secs(1)).unwrap());
        assert!(b.has_mail());
        assert_eq!(drain(&mut b).len(), 4);
        assert!(!b.has_mail());
        assert!(
            !parkers[1].park_timeout(Duration::ZERO).unwrap(),
            "one wake, consumed"
        );
        assert!(a.try_send(1, b"", b"x"));
        assert_eq!(a.flush(), 1, "drained, so woken again");
        assert!(parkers[1].park_timeout(Duration::from_secs(1)).unwrap());
    }
}
