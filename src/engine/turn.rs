//! The policy half of a shard's loop turn, with no io_uring in it: the connection table (slot,
//! generation), which connections were touched, the per-connection deadlines, and calling the
//! [`App`] in the engine's order. The driver around it does the IO: `shard.rs` turns completions
//! into the event methods below and [`TurnIo`] calls into submissions; the deterministic
//! simulation (`tests/sim`) does the same on its simulated links, so it runs this very code.
//!
//! # One turn
//!
//! 1. The driver reports what happened, in order: [`Turn::accept`], [`Turn::on_recv`],
//!    [`Turn::on_sent`], [`Turn::on_connected`], [`Turn::release`] (the last completion of a
//!    closing connection).
//! 2. [`Turn::finish`]: due connection deadlines ([`App::on_timeout`]), the app's own deadline
//!    ([`App::on_app_deadline`]), [`App::end_of_turn`], [`App::poll_connect`] (unless the shard
//!    stops), [`App::poll_ready`], [`App::poll_close`], then for every connection touched this
//!    turn: [`App::poll_transmit`] if no send is in flight, [`App::wants_close`], and the
//!    re-read of [`App::deadline`].
//!
//! A connection is `Connecting`, `Open` or `Closing`. [`TurnIo::close`] says whether the driver
//! still holds something for it (an operation in flight): if not, it is removed at once and
//! [`App::on_closed`] runs; otherwise the driver calls [`Turn::release`] when it lets go.

use std::net::SocketAddr;

use slab::Slab;

use super::app::{App, CloseReason, ConnId, Listener};
use super::config::EngineConfig;
use super::timers::{TimerEntry, TimerHeap};

/// Generations are 24 bits wide (the io_uring driver packs them into `user_data`).
pub const GENERATION_MASK: u32 = 0x00ff_ffff;

/// Where a connection is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConnState {
    /// An outgoing connect is in flight.
    Connecting,
    /// Bytes flow both ways.
    Open,
    /// Closing: waiting for the driver to let go ([`Turn::release`]).
    Closing,
}

/// What one receive brought, as the driver reports it to [`Turn::on_recv`].
#[derive(Clone, Copy, Debug)]
pub enum Received<'a> {
    /// Bytes from the peer (ignored unless the connection is open).
    Bytes(&'a [u8]),
    /// Nothing for the app (a re-armed or cancelled receive, or bytes the driver dropped).
    Nothing,
    /// The receive ended the connection (end of stream, a reset, an error).
    Closed(CloseReason),
}

/// The limits a turn enforces, from [`EngineConfig`].
#[derive(Clone, Copy, Debug)]
pub struct TurnLimits {
    /// Connections in the table (incoming and outgoing); also bounds `poll_close` per call.
    pub connections_max: usize,
    /// A larger [`App::poll_transmit`] closes the connection ([`CloseReason::TransmitTooLarge`]).
    pub transmit_bytes_max: usize,
    /// [`App::poll_connect`] calls per turn.
    pub connects_per_turn_max: usize,
}

impl From<&EngineConfig> for TurnLimits {
    fn from(config: &EngineConfig) -> Self {
        TurnLimits {
            connections_max: config.max_connections,
            transmit_bytes_max: config.send_buffered_max_bytes,
            connects_per_turn_max: config.connects_per_turn_max,
        }
    }
}

/// What the driver does for real: the io_uring shard submits operations, the simulation moves
/// bytes on its links. `Slot` is the driver's own per-connection state (a socket, operations in
/// flight), kept in the turn's table next to the app's.
pub trait TurnIo {
    /// The driver's per-connection state.
    type Slot;
    /// A failure of the driver itself (not of one connection); it ends the turn.
    type Error;

    /// An empty vector for [`App::poll_transmit`] (recycled when the driver can).
    fn buffer(&mut self) -> Vec<u8>;

    /// A vector from [`TurnIo::buffer`] that was not sent.
    fn recycle(&mut self, buf: Vec<u8>);

    /// Sends all of `buf` on connection `id`; the driver reports the end with [`Turn::on_sent`].
    /// At most one send per connection is in flight.
    fn send(&mut self, id: ConnId, slot: &mut Self::Slot, buf: Vec<u8>) -> Result<(), Self::Error>;

    /// Starts closing connection `id` (`flush`: an in-flight send may finish first). Ok(true)
    /// when the driver holds nothing for it any more, so the turn removes it now; Ok(false): the
    /// driver calls [`Turn::release`] later.
    fn close(
        &mut self,
        id: ConnId,
        slot: &mut Self::Slot,
        reason: CloseReason,
        flush: bool,
    ) -> Result<bool, Self::Error>;

    /// The connection is removed from the table: free what the driver kept for it.
    fn released(&mut self, slot: Self::Slot, reason: CloseReason);

    /// Opens an outgoing connection to `addr` for `id`; the driver reports its end with
    /// [`Turn::on_connected`]. Ok(Err(reason)): it failed at once (the app hears `reason`).
    fn connect(
        &mut self,
        id: ConnId,
        addr: SocketAddr,
    ) -> Result<Result<Self::Slot, CloseReason>, Self::Error>;

    /// A connection that never had a slot ended (an outgoing connection that could not be
    /// attempted), for the driver's counters.
    fn not_opened(&mut self, reason: CloseReason);
}

struct Entry<C, S> {
    generation: u32,
    state: ConnState,
    /// Taken out only when the entry is removed, to hand back to the app.
    conn: Option<C>,
    send_in_flight: bool,
    deadline_ms: Option<u64>,
    touched: bool,
    close_reason: CloseReason,
    io: S,
}

/// One shard's connections and app, driven by events (see the module documentation).
pub struct Turn<A: App, S> {
    app: A,
    limits: TurnLimits,
    slab: Slab<Entry<A::Conn, S>>,
    next_generation: u32,
    timers: TimerHeap,
    /// Connections to poll in [`Turn::finish`], as (slot, generation).
    touched: Vec<(usize, u32)>,
    /// The `now_ms` of the last call, for closes that happen inside another call.
    now_ms: u64,
}

impl<A: App, S> Turn<A, S> {
    pub fn new(app: A, limits: TurnLimits) -> Self {
        Turn {
            app,
            slab: Slab::with_capacity(limits.connections_max),
            next_generation: 0,
            timers: TimerHeap::new(2 * limits.connections_max + 16),
            touched: Vec::with_capacity(limits.connections_max),
            now_ms: 0,
            limits,
        }
    }

    pub fn app(&self) -> &A {
        &self.app
    }

    pub fn app_mut(&mut self) -> &mut A {
        &mut self.app
    }

    /// Connections in the table (any state).
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    fn entry(&self, id: ConnId) -> Option<&Entry<A::Conn, S>> {
        self.slab
            .get(id.slot as usize)
            .filter(|e| e.generation == id.generation)
    }

    fn entry_mut(&mut self, id: ConnId) -> Option<&mut Entry<A::Conn, S>> {
        self.slab
            .get_mut(id.slot as usize)
            .filter(|e| e.generation == id.generation)
    }

    /// The state of connection `id`, or None when it is gone (or `id` is stale).
    pub fn state(&self, id: ConnId) -> Option<ConnState> {
        self.entry(id).map(|e| e.state)
    }

    /// The driver's state of connection `id`.
    pub fn slot(&self, id: ConnId) -> Option<&S> {
        self.entry(id).map(|e| &e.io)
    }

    /// The driver's state of connection `id`, to change.
    pub fn slot_mut(&mut self, id: ConnId) -> Option<&mut S> {
        self.entry_mut(id).map(|e| &mut e.io)
    }

    /// Every connection with its state and the driver's slot, in table order.
    pub fn conns(&self) -> impl Iterator<Item = (ConnId, ConnState, &S)> + '_ {
        self.slab.iter().map(|(key, e)| {
            let id = ConnId {
                slot: key as u32,
                generation: e.generation,
            };
            (id, e.state, &e.io)
        })
    }

    /// The earliest time the driver must run a turn on its own: the earliest live connection
    /// deadline or the app's deadline ([`App::app_deadline`]).
    pub fn next_wake_ms(&mut self) -> Option<u64> {
        let conn = self.next_deadline_ms();
        match (conn, self.app.app_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn next_generation(&mut self) -> u32 {
        self.next_generation = (self.next_generation + 1) & GENERATION_MASK;
        self.next_generation
    }

    fn id_of(&self, key: usize) -> ConnId {
        ConnId {
            slot: key as u32,
            generation: self.slab[key].generation,
        }
    }

    // ----- events -----

    /// A peer connected on `listener`. Asks [`App::accept`]; Err gives the driver's slot back
    /// when the app refuses. The driver checks its own limits (the table's size with
    /// [`Turn::len`]) first.
    pub fn accept(
        &mut self,
        now_ms: u64,
        peer: SocketAddr,
        listener: Listener,
        io: S,
    ) -> Result<ConnId, S> {
        self.now_ms = now_ms;
        let generation = self.next_generation();
        let entry = self.slab.vacant_entry();
        let id = ConnId {
            slot: entry.key() as u32,
            generation,
        };
        let Some(conn) = self.app.accept(now_ms, id, peer, listener) else {
            return Err(io);
        };
        entry.insert(Entry {
            generation,
            state: ConnState::Open,
            conn: Some(conn),
            send_in_flight: false,
            deadline_ms: None,
            touched: false,
            close_reason: CloseReason::Shutdown,
            io,
        });
        self.touch(id.slot as usize);
        Ok(id)
    }

    /// A receive on `id` completed. Bytes go to [`App::on_recv`] (an error closes the
    /// connection), then the app's [`App::poll_close`] runs, then the connection is touched.
    pub fn on_recv<I: TurnIo<Slot = S>>(
        &mut self,
        now_ms: u64,
        id: ConnId,
        received: Received<'_>,
        io: &mut I,
    ) -> Result<(), I::Error> {
        self.now_ms = now_ms;
        let mut close = None;
        match received {
            Received::Bytes(bytes) => {
                if let Some(entry) = self.slab.get_mut(id.slot as usize) {
                    if entry.generation == id.generation && entry.state == ConnState::Open {
                        if let Some(conn) = entry.conn.as_mut() {
                            if let Err(error) = self.app.on_recv(now_ms, conn, bytes) {
                                close = Some(CloseReason::App(error));
                            }
                        }
                    }
                }
            }
            Received::Nothing => {}
            Received::Closed(reason) => close = Some(reason),
        }
        self.poll_closes(io)?;
        // The app may have named this very connection in `poll_close`; it may be gone.
        let Some(state) = self.state(id) else {
            return Ok(());
        };
        if let Some(reason) = close {
            self.begin_close(id.slot as usize, reason, false, io)?;
        } else if state == ConnState::Open {
            self.touch(id.slot as usize);
        }
        Ok(())
    }

    /// The send on `id` ended: all sent, or abandoned (`close`: the reason to close with).
    pub fn on_sent<I: TurnIo<Slot = S>>(
        &mut self,
        now_ms: u64,
        id: ConnId,
        close: Option<CloseReason>,
        io: &mut I,
    ) -> Result<(), I::Error> {
        self.now_ms = now_ms;
        let Some(entry) = self.entry_mut(id) else {
            return Ok(());
        };
        entry.send_in_flight = false;
        let state = entry.state;
        if let Some(reason) = close {
            self.begin_close(id.slot as usize, reason, false, io)?;
        } else if state == ConnState::Open {
            self.touch(id.slot as usize);
        }
        Ok(())
    }

    /// The outgoing connect of `id` ended: established (the app hears
    /// [`App::on_connected`]) or failed with `reason`.
    pub fn on_connected<I: TurnIo<Slot = S>>(
        &mut self,
        now_ms: u64,
        id: ConnId,
        result: Result<(), CloseReason>,
        io: &mut I,
    ) -> Result<(), I::Error> {
        self.now_ms = now_ms;
        let Some(entry) = self
            .slab
            .get_mut(id.slot as usize)
            .filter(|e| e.generation == id.generation)
        else {
            return Ok(());
        };
        if entry.state != ConnState::Connecting {
            return Ok(());
        }
        if let Err(reason) = result {
            return self.begin_close(id.slot as usize, reason, false, io);
        }
        entry.state = ConnState::Open;
        if let Some(conn) = entry.conn.as_mut() {
            self.app.on_connected(now_ms, id, conn);
        }
        self.touch(id.slot as usize);
        Ok(())
    }

    /// The driver let go of closing connection `id` (after [`TurnIo::close`] said Ok(false)):
    /// it is removed and the app hears [`App::on_closed`].
    pub fn release<I: TurnIo<Slot = S>>(&mut self, now_ms: u64, id: ConnId, io: &mut I) {
        self.now_ms = now_ms;
        if self.state(id) == Some(ConnState::Closing) {
            self.finalize(id.slot as usize, io);
        }
    }

    /// Closes every connection for a shutdown: open ones may finish their send first.
    pub fn close_all<I: TurnIo<Slot = S>>(
        &mut self,
        now_ms: u64,
        reason: CloseReason,
        io: &mut I,
    ) -> Result<(), I::Error> {
        self.now_ms = now_ms;
        let keys: Vec<(usize, bool)> = self
            .slab
            .iter()
            .map(|(key, e)| (key, e.state == ConnState::Open))
            .collect();
        for (key, open) in keys {
            if self.slab.contains(key) {
                self.begin_close(key, reason, open, io)?;
            }
        }
        Ok(())
    }

    /// The rest of the turn, after the driver reported every event (see the module
    /// documentation); `connecting`: ask [`App::poll_connect`] (not while the shard stops).
    /// Returns true when a per-turn limit left work for the next turn (run it without waiting).
    pub fn finish<I: TurnIo<Slot = S>>(
        &mut self,
        now_ms: u64,
        connecting: bool,
        io: &mut I,
    ) -> Result<bool, I::Error> {
        self.now_ms = now_ms;
        self.fire_timers();
        if self.app.app_deadline().is_some_and(|at| at <= now_ms) {
            self.app.on_app_deadline(now_ms);
        }
        self.app.end_of_turn(now_ms);
        let mut more = false;
        if connecting {
            more |= self.poll_connects(io)?;
        }
        more |= self.poll_ready();
        self.poll_closes(io)?;
        self.service_touched(io)?;
        Ok(more)
    }

    /// Removes every connection without a word to the app or the driver, handing the app back:
    /// for a driver that must leak what the kernel may still write into.
    pub fn leak_connections(self) -> A {
        std::mem::forget(self.slab);
        self.app
    }

    // ----- inside a turn -----

    fn touch(&mut self, key: usize) {
        let entry = &mut self.slab[key];
        if !entry.touched {
            entry.touched = true;
            self.touched.push((key, entry.generation));
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now_ms;
        while let Some(timer) = self.timers.peek() {
            if timer.deadline_ms > now {
                break;
            }
            self.timers.pop();
            let key = timer.slot as usize;
            let Some(entry) = self.slab.get_mut(key) else {
                continue;
            };
            if entry.generation != timer.generation
                || entry.state != ConnState::Open
                || entry.deadline_ms != Some(timer.deadline_ms)
            {
                continue;
            }
            entry.deadline_ms = None;
            if let Some(conn) = entry.conn.as_mut() {
                // The app may have moved its deadline during this turn (say in on_recv) without
                // the turn having re-read it yet: ask again so a moved deadline never fires
                // early. The touch below re-reads and reschedules it either way.
                if self.app.deadline(conn).is_some_and(|at| at <= now) {
                    self.app.on_timeout(now, conn);
                }
            }
            self.touch(key);
        }
    }

    /// Returns true when the per-turn limit was hit (more may be waiting).
    fn poll_connects<I: TurnIo<Slot = S>>(&mut self, io: &mut I) -> Result<bool, I::Error> {
        let now = self.now_ms;
        for _ in 0..self.limits.connects_per_turn_max {
            let Some((addr, conn)) = self.app.poll_connect(now) else {
                return Ok(false);
            };
            if self.slab.len() >= self.limits.connections_max {
                io.not_opened(CloseReason::LimitReached);
                self.app.on_closed(now, conn, CloseReason::LimitReached);
                continue;
            }
            let generation = self.next_generation();
            let key = self.slab.vacant_key();
            let id = ConnId {
                slot: key as u32,
                generation,
            };
            match io.connect(id, addr)? {
                Ok(slot) => {
                    self.slab.insert(Entry {
                        generation,
                        state: ConnState::Connecting,
                        conn: Some(conn),
                        send_in_flight: false,
                        deadline_ms: None,
                        touched: false,
                        close_reason: CloseReason::Shutdown,
                        io: slot,
                    });
                }
                Err(reason) => {
                    io.not_opened(reason);
                    self.app.on_closed(now, conn, reason);
                }
            }
        }
        Ok(true)
    }

    /// Returns true when the per-turn limit was hit.
    fn poll_ready(&mut self) -> bool {
        for _ in 0..2 * self.limits.connections_max {
            let Some(id) = self.app.poll_ready() else {
                return false;
            };
            if self.entry(id).is_some() {
                self.touch(id.slot as usize);
            }
        }
        true
    }

    /// Closes the connections the app names in [`App::poll_close`].
    fn poll_closes<I: TurnIo<Slot = S>>(&mut self, io: &mut I) -> Result<(), I::Error> {
        for _ in 0..self.limits.connections_max {
            let Some((id, error)) = self.app.poll_close() else {
                return Ok(());
            };
            if self.entry(id).is_some() {
                self.begin_close(id.slot as usize, CloseReason::App(error), false, io)?;
            }
        }
        Ok(())
    }

    fn service_touched<I: TurnIo<Slot = S>>(&mut self, io: &mut I) -> Result<(), I::Error> {
        let now = self.now_ms;
        let mut touched = std::mem::take(&mut self.touched);
        for &(key, generation) in &touched {
            let Some(entry) = self.slab.get_mut(key) else {
                continue;
            };
            if entry.generation != generation {
                continue;
            }
            entry.touched = false;
            if entry.state != ConnState::Open {
                continue;
            }
            let Some(conn) = entry.conn.as_mut() else {
                continue;
            };
            let id = ConnId {
                slot: key as u32,
                generation,
            };
            if !entry.send_in_flight {
                let mut buf = io.buffer();
                self.app.poll_transmit(now, conn, &mut buf);
                if buf.is_empty() {
                    io.recycle(buf);
                } else if buf.len() > self.limits.transmit_bytes_max {
                    io.recycle(buf);
                    self.begin_close(key, CloseReason::TransmitTooLarge, false, io)?;
                    continue;
                } else {
                    entry.send_in_flight = true;
                    io.send(id, &mut entry.io, buf)?;
                }
            }
            // The send may have ended the connection already (a driver that finds it gone).
            let Some(entry) = self.slab.get_mut(key) else {
                continue;
            };
            if entry.generation != generation || entry.state != ConnState::Open {
                continue;
            }
            let Some(conn) = entry.conn.as_ref() else {
                continue;
            };
            if !entry.send_in_flight && self.app.wants_close(conn) {
                self.begin_close(key, CloseReason::AppRequested, false, io)?;
                continue;
            }
            let deadline = self.app.deadline(conn);
            if deadline != entry.deadline_ms {
                entry.deadline_ms = deadline;
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

    fn schedule(&mut self, timer: TimerEntry) {
        if self.timers.is_full() {
            // Stale entries filled the heap: rebuild it from the live deadlines (at most one per
            // connection, so well under the limit).
            let live = self.slab.iter().filter_map(|(key, e)| {
                e.deadline_ms.map(|deadline_ms| TimerEntry {
                    deadline_ms,
                    slot: key as u32,
                    generation: e.generation,
                })
            });
            self.timers.rebuild(live);
            // The rebuilt heap already holds this entry (its slot's deadline was set first).
            return;
        }
        self.timers.push(timer);
    }

    /// The earliest deadline that still belongs to a live connection; stale tops are dropped.
    pub fn next_deadline_ms(&mut self) -> Option<u64> {
        while let Some(timer) = self.timers.peek() {
            let live = matches!(
                self.slab.get(timer.slot as usize),
                Some(e) if e.generation == timer.generation
                    && e.deadline_ms == Some(timer.deadline_ms)
                    && e.state == ConnState::Open
            );
            if live {
                return Some(timer.deadline_ms);
            }
            self.timers.pop();
        }
        None
    }

    // ----- closing -----

    /// Starts closing a connection. With `flush`, an in-flight send may finish first.
    fn begin_close<I: TurnIo<Slot = S>>(
        &mut self,
        key: usize,
        reason: CloseReason,
        flush: bool,
        io: &mut I,
    ) -> Result<(), I::Error> {
        let id = self.id_of(key);
        let entry = &mut self.slab[key];
        if entry.state == ConnState::Closing {
            return Ok(());
        }
        entry.state = ConnState::Closing;
        entry.close_reason = reason;
        entry.deadline_ms = None;
        if io.close(id, &mut entry.io, reason, flush)? {
            self.finalize(key, io);
        }
        Ok(())
    }

    /// Removes a connection: the driver frees its slot, the app gets its state back.
    fn finalize<I: TurnIo<Slot = S>>(&mut self, key: usize, io: &mut I) {
        let entry = self.slab.remove(key);
        io.released(entry.io, entry.close_reason);
        if let Some(conn) = entry.conn {
            self.app.on_closed(self.now_ms, conn, entry.close_reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::app::AppError;
    use std::net::{IpAddr, Ipv4Addr};

    /// An app that records what it is asked and sends what it is told to.
    #[derive(Default)]
    struct Probe {
        calls: Vec<String>,
        /// Per connection (by its number): transmits still to hand out.
        outbox: Vec<Vec<Vec<u8>>>,
        deadline: Option<u64>,
        ready: Vec<ConnId>,
        close: Vec<(ConnId, AppError)>,
    }

    impl App for Probe {
        type Conn = usize;

        fn accept(&mut self, _: u64, _: ConnId, _: SocketAddr, _: Listener) -> Option<usize> {
            self.outbox.push(Vec::new());
            Some(self.outbox.len() - 1)
        }

        fn on_recv(&mut self, _: u64, conn: &mut usize, bytes: &[u8]) -> Result<(), AppError> {
            self.calls.push(format!("recv {conn} {}", bytes.len()));
            if bytes == b"bad" {
                return Err(AppError(7));
            }
            Ok(())
        }

        fn poll_transmit(&mut self, _: u64, conn: &mut usize, buf: &mut Vec<u8>) {
            if let Some(next) = self.outbox[*conn].pop() {
                buf.extend_from_slice(&next);
            }
        }

        fn deadline(&self, _: &usize) -> Option<u64> {
            self.deadline
        }

        fn on_timeout(&mut self, now_ms: u64, conn: &mut usize) {
            self.calls.push(format!("timeout {conn} at {now_ms}"));
            self.deadline = None;
        }

        fn wants_close(&self, _: &usize) -> bool {
            false
        }

        fn on_closed(&mut self, _: u64, conn: usize, reason: CloseReason) {
            self.calls.push(format!("closed {conn} {reason:?}"));
        }

        fn end_of_turn(&mut self, _: u64) {}

        fn poll_ready(&mut self) -> Option<ConnId> {
            self.ready.pop()
        }

        fn poll_close(&mut self) -> Option<(ConnId, AppError)> {
            self.close.pop()
        }
    }

    /// A driver that records sends and closes; `hold` keeps closing connections until
    /// [`Turn::release`].
    #[derive(Default)]
    struct Recorder {
        sends: Vec<(ConnId, Vec<u8>)>,
        closes: Vec<(ConnId, CloseReason)>,
        released: usize,
        hold: bool,
    }

    impl TurnIo for Recorder {
        type Slot = ();
        type Error = ();

        fn buffer(&mut self) -> Vec<u8> {
            Vec::new()
        }

        fn recycle(&mut self, _: Vec<u8>) {}

        fn send(&mut self, id: ConnId, _: &mut (), buf: Vec<u8>) -> Result<(), ()> {
            self.sends.push((id, buf));
            Ok(())
        }

        fn close(
            &mut self,
            id: ConnId,
            _: &mut (),
            reason: CloseReason,
            _: bool,
        ) -> Result<bool, ()> {
            self.closes.push((id, reason));
            Ok(!self.hold)
        }

        fn released(&mut self, _: (), _: CloseReason) {
            self.released += 1;
        }

        fn connect(&mut self, _: ConnId, _: SocketAddr) -> Result<Result<(), CloseReason>, ()> {
            Ok(Err(CloseReason::LimitReached))
        }

        fn not_opened(&mut self, _: CloseReason) {}
    }

    fn turn() -> Turn<Probe, ()> {
        Turn::new(
            Probe::default(),
            TurnLimits {
                connections_max: 8,
                transmit_bytes_max: 16,
                connects_per_turn_max: 1,
            },
        )
    }

    fn peer() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1801)
    }

    #[test]
    fn one_send_in_flight_per_connection() {
        let mut t = turn();
        let mut io = Recorder::default();
        let id = t.accept(0, peer(), Listener::FIRST, ()).unwrap();
        t.app_mut().outbox[0] = vec![b"second".to_vec(), b"first".to_vec()];
        t.finish(1, true, &mut io).unwrap();
        assert_eq!(io.sends, vec![(id, b"first".to_vec())]);
        // Named by poll_ready while the send is in flight: not asked for another.
        t.app_mut().ready.push(id);
        t.finish(2, true, &mut io).unwrap();
        assert_eq!(io.sends.len(), 1);
        t.on_sent(3, id, None, &mut io).unwrap();
        t.finish(3, true, &mut io).unwrap();
        assert_eq!(io.sends[1], (id, b"second".to_vec()));
    }

    #[test]
    fn a_held_close_reaches_the_app_on_release_and_stale_ids_are_ignored() {
        let mut t = turn();
        let mut io = Recorder {
            hold: true,
            ..Recorder::default()
        };
        let id = t.accept(0, peer(), Listener::FIRST, ()).unwrap();
        t.on_recv(1, id, Received::Bytes(b"bad"), &mut io).unwrap();
        assert_eq!(io.closes, vec![(id, CloseReason::App(AppError(7)))]);
        assert_eq!(t.state(id), Some(ConnState::Closing));
        assert!(!t.app().calls.iter().any(|c| c.starts_with("closed")));
        // Bytes for a closing connection never reach the app.
        t.on_recv(2, id, Received::Bytes(b"late"), &mut io).unwrap();
        t.release(3, id, &mut io);
        assert_eq!(t.state(id), None);
        assert_eq!(io.released, 1);
        assert_eq!(
            t.app().calls,
            vec![
                "recv 0 3".to_string(),
                "closed 0 App(AppError(7))".to_string()
            ]
        );
        // The slot is reused under a new generation; the old id names nothing.
        let again = t.accept(4, peer(), Listener::FIRST, ()).unwrap();
        assert_eq!(again.slot, id.slot);
        assert_ne!(again.generation, id.generation);
        t.app_mut().close.push((id, AppError(1)));
        t.on_recv(5, again, Received::Nothing, &mut io).unwrap();
        assert_eq!(t.state(again), Some(ConnState::Open));
    }

    #[test]
    fn a_deadline_fires_once_and_bounds_the_wait() {
        let mut t = turn();
        let mut io = Recorder::default();
        t.accept(0, peer(), Listener::FIRST, ()).unwrap();
        t.app_mut().deadline = Some(10);
        t.finish(1, true, &mut io).unwrap();
        assert_eq!(t.next_wake_ms(), Some(10));
        t.finish(9, true, &mut io).unwrap();
        t.finish(10, true, &mut io).unwrap();
        t.finish(11, true, &mut io).unwrap();
        assert_eq!(t.app().calls, vec!["timeout 0 at 10".to_string()]);
        assert_eq!(t.next_wake_ms(), None);
    }

    #[test]
    fn an_oversized_transmit_closes_the_connection() {
        let mut t = turn();
        let mut io = Recorder::default();
        let id = t.accept(0, peer(), Listener::FIRST, ()).unwrap();
        t.app_mut().outbox[0] = vec![vec![0; 17]];
        t.finish(1, true, &mut io).unwrap();
        assert!(io.sends.is_empty());
        assert_eq!(io.closes, vec![(id, CloseReason::TransmitTooLarge)]);
        assert_eq!(t.state(id), None);
    }
}
