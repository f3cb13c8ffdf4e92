//! One outgoing queue's sending state, sans-IO: when to open a session to the destination, name
//! resolution, retries (`TryConnectInterval`), which stored messages are in flight on the
//! current session, and the transactional resend schedule (MS-MQQB 3.1.1.3.1 outgoing queue
//! states; 3.1.1.3 ResendTimerTable; 3.1.5.9 resending what a closed session did not
//! acknowledge).
//!
//! No clock, socket, thread or store of its own: the caller passes `now_ms` and what it read
//! from the store, and carries out the [`OutAction`]s (connect, resolve a name on a helper
//! thread). `C` is the caller's handle of the open session (the server's connection id).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use crate::qm::outgoing::{OutgoingDef, Transport};
use crate::store::{Cursor, QueueId};

/// Where an outgoing queue stands (MS-MQQB 3.1.1.3.1: WAITING_RECONNECT and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutPhase<C> {
    /// Nothing to send, or not yet tried.
    Idle,
    /// A host name is being resolved (the caller runs it; see [`OutQueue::handle_resolved`]).
    Resolving,
    /// A connection is being opened or the handshake runs.
    Connecting,
    /// A session is open.
    Open(C),
    /// Closed; retry at this time (`TryConnectInterval`).
    Retry(u64),
    /// Hardened mode, or a transport lior does not send: kept, never sent.
    Locked,
    /// Paused by an administrator: kept, not sent until resumed.
    Paused,
}

/// How an outgoing queue looks to an administrator (MSMQ's MMC and PowerShell states).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutStatus {
    /// `connected`, `connecting`, `waiting to connect`, `inactive`, `locked` or `paused`.
    pub state: &'static str,
    /// When the next connection attempt is due (`now_ms` units), while waiting to connect.
    pub next_try_ms: Option<u64>,
    /// Why the last session ended or could not start, if it did not end well.
    pub last_error: Option<String>,
}

/// What the caller must do for an outgoing queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutAction {
    /// Open a connection to this address (report back with `handle_established` or
    /// `handle_closed`).
    Connect(SocketAddr),
    /// Resolve `host` (port `port`) off the loop, then call `handle_resolved`.
    Resolve { host: String, port: u16 },
}

/// The settings an outgoing queue follows.
#[derive(Debug, Clone, Copy)]
pub struct OutPolicy {
    /// Hardened mode: nothing leaves over MS-MQQB.
    pub hardened: bool,
    /// The remote MS-MQQB port (`[remotes."host"] port` where the configuration names one).
    pub port: u16,
    /// `remote_port`, the port of machines the configuration does not name.
    pub mqqb_default_port: u16,
    /// TryConnectInterval, ms.
    pub retry_ms: u64,
}

/// One outgoing queue.
#[derive(Debug)]
pub struct OutQueue<C> {
    pub def: OutgoingDef,
    phase: OutPhase<C>,
    /// The next message to send, in delivery order; reset when a session closes, so every
    /// message not yet acknowledged is sent again (MS-MQQB 3.1.5.9).
    pub cursor: Cursor,
    /// Transactional resend timer: when it fires with no OrderAck progress, every message is
    /// sent again and the interval grows.
    tx_resend_at: Option<u64>,
    tx_resend_index: usize,
    /// Lookup ids sent on the current session and still stored (in flight, or transactional
    /// and waiting for their OrderAck): never sent twice on one session.
    sent: HashSet<u64>,
    /// New messages were queued: the priorities above the cursor's are looked at again, so a
    /// new message of a higher priority than the cursor's is not left behind it.
    rescan: bool,
    /// Why the last session ended or could not start (cleared once a session is established).
    last_error: Option<String>,
}

impl<C: Copy> OutQueue<C> {
    pub fn new(def: OutgoingDef) -> Self {
        OutQueue {
            cursor: Cursor::new(QueueId(def.id)),
            phase: if def.paused {
                OutPhase::Paused
            } else {
                OutPhase::Idle
            },
            def,
            tx_resend_at: None,
            tx_resend_index: 0,
            sent: HashSet::new(),
            rescan: false,
            last_error: None,
        }
    }

    /// Pauses or resumes sending (`def.paused` is kept with it). Pausing an open session
    /// returns it: the caller closes it (MSMQ disconnects a paused queue); what it did not get
    /// acknowledged is sent again after the resume.
    pub fn set_paused(&mut self, paused: bool) -> Option<C> {
        self.def.paused = paused;
        if paused {
            let open = self.session();
            if !matches!(self.phase, OutPhase::Paused) {
                self.phase = OutPhase::Paused;
                self.start_over();
                self.tx_resend_at = None;
            }
            open
        } else {
            if matches!(self.phase, OutPhase::Paused) {
                self.phase = OutPhase::Idle;
            }
            None
        }
    }

    /// The queue as an administrator sees it.
    pub fn status(&self) -> OutStatus {
        let (state, next_try_ms) = match self.phase {
            OutPhase::Idle => ("inactive", None),
            OutPhase::Resolving | OutPhase::Connecting => ("connecting", None),
            OutPhase::Open(_) => ("connected", None),
            OutPhase::Retry(t) => ("waiting to connect", Some(t)),
            OutPhase::Locked => ("locked", None),
            OutPhase::Paused => ("paused", None),
        };
        OutStatus {
            state,
            next_try_ms,
            last_error: self.last_error.clone(),
        }
    }

    /// Records why the session ended badly (shown by [`OutQueue::status`]).
    pub fn note_error(&mut self, why: String) {
        self.last_error = Some(why);
    }

    pub fn phase(&self) -> OutPhase<C> {
        self.phase
    }

    /// The open session, if any.
    pub fn session(&self) -> Option<C> {
        match self.phase {
            OutPhase::Open(c) => Some(c),
            _ => None,
        }
    }

    /// Whether [`OutQueue::poll_action`] needs the stored message count now (an idle queue, or
    /// a retry that is due), so the caller reads the store only then.
    pub fn wants_pending(&self, now_ms: u64) -> bool {
        if self.def.paused {
            return false;
        }
        match self.phase {
            OutPhase::Idle => true,
            OutPhase::Retry(t) => t <= now_ms,
            _ => false,
        }
    }

    /// With `pending` messages stored: start a connection, a name resolution, or lock the
    /// queue; None when there is nothing to do. Call when [`OutQueue::wants_pending`].
    pub fn poll_action(
        &mut self,
        now_ms: u64,
        pending: u64,
        policy: &OutPolicy,
    ) -> Option<OutAction> {
        if !self.wants_pending(now_ms) {
            return None;
        }
        if pending == 0 {
            self.phase = OutPhase::Idle;
            return None;
        }
        // Hardened mode sends over HTTP(S) only (SRMP); IPX is never sent.
        let port = match self.def.transport {
            Transport::Http => self.http_port(policy),
            Transport::Mqqb if !policy.hardened => policy.port,
            _ => {
                self.phase = OutPhase::Locked;
                return None;
            }
        };
        let host = self.def.host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                self.phase = OutPhase::Connecting;
                Some(OutAction::Connect(SocketAddr::new(ip, port)))
            }
            Err(_) => {
                self.phase = OutPhase::Resolving;
                Some(OutAction::Resolve {
                    host: self.def.host.clone(),
                    port,
                })
            }
        }
    }

    /// The port an HTTP(S) queue connects to: the format name's, else the `[remotes."host"]`
    /// port when the configuration names one (`policy.port` differs from MS-MQQB's 1801),
    /// else 80 or 443.
    fn http_port(&self, policy: &OutPolicy) -> u16 {
        if let Some(p) = self.def.port {
            return p;
        }
        if policy.port != policy.mqqb_default_port {
            return policy.port;
        }
        if self.def.https() {
            443
        } else {
            80
        }
    }

    /// The name resolution ended: connect, or retry after `retry_ms`.
    pub fn handle_resolved(
        &mut self,
        now_ms: u64,
        result: Result<SocketAddr, String>,
        retry_ms: u64,
    ) -> Option<OutAction> {
        if !matches!(self.phase, OutPhase::Resolving) {
            return None;
        }
        match result {
            Ok(addr) => {
                self.phase = OutPhase::Connecting;
                Some(OutAction::Connect(addr))
            }
            Err(e) => {
                self.last_error = Some(format!("cannot resolve {}: {e}", self.def.host));
                self.phase = OutPhase::Retry(now_ms + retry_ms);
                None
            }
        }
    }

    /// The session to the destination is established.
    pub fn handle_established(&mut self, session: C) {
        self.phase = OutPhase::Open(session);
        self.last_error = None;
    }

    /// The session closed: everything it did not get acknowledged is sent again on the next
    /// one, which is tried after `retry_ms`.
    pub fn handle_closed(&mut self, now_ms: u64, retry_ms: u64) {
        // Closed because it was paused, it stays paused.
        self.phase = if self.def.paused {
            OutPhase::Paused
        } else {
            OutPhase::Retry(now_ms + retry_ms)
        };
        self.start_over();
    }

    /// The next session starts from the front: nothing counts as sent on it yet.
    fn start_over(&mut self) {
        self.cursor = Cursor::new(QueueId(self.def.id));
        self.sent.clear();
    }

    /// New messages were stored for this queue.
    pub fn handle_new_messages(&mut self) {
        self.rescan = true;
    }

    /// Takes the "look above the cursor again" flag (see `rescan`).
    pub fn take_rescan(&mut self) -> bool {
        std::mem::take(&mut self.rescan)
    }

    /// Sets the flag again: the rescan stopped early (the window filled).
    pub fn keep_rescan(&mut self) {
        self.rescan = true;
    }

    pub fn was_sent(&self, lookup: u64) -> bool {
        self.sent.contains(&lookup)
    }

    /// Message `lookup` went out on the current session. A transactional one starts the
    /// resend timer (`resend_ms` from the schedule, see [`OutQueue::resend_interval`]).
    pub fn note_sent(&mut self, now_ms: u64, lookup: u64, transactional: bool, resend_ms: u64) {
        self.sent.insert(lookup);
        if transactional && self.tx_resend_at.is_none() {
            self.tx_resend_at = Some(now_ms + resend_ms);
        }
    }

    /// The peer acknowledged message `lookup` (it is removed from the store).
    pub fn handle_acked(&mut self, lookup: u64) {
        self.sent.remove(&lookup);
    }

    /// The index into the resend schedule the next transactional resend waits for.
    pub fn resend_interval(&self) -> usize {
        self.tx_resend_index
    }

    /// An OrderAck removed messages: the resend schedule starts over, and only what is still
    /// stored (`stored(lookup)`) counts as sent.
    pub fn handle_tx_progress(&mut self, stored: impl Fn(u64) -> bool) {
        self.tx_resend_index = 0;
        self.tx_resend_at = None;
        self.sent.retain(|&l| stored(l));
    }

    /// If the transactional resend timer fired with no OrderAck progress: every transactional
    /// message is sent again from the start, with the next (longer) interval of a schedule of
    /// `schedule_len` steps. `transactional(lookup)` tells which sent messages are (others still
    /// in flight are not sent again). Returns whether it fired.
    pub fn handle_resend_timer(
        &mut self,
        now_ms: u64,
        schedule_len: usize,
        transactional: impl Fn(u64) -> bool,
    ) -> bool {
        if self.tx_resend_at.is_none_or(|t| t > now_ms) {
            return false;
        }
        self.tx_resend_index = (self.tx_resend_index + 1).min(schedule_len.saturating_sub(1));
        self.tx_resend_at = None;
        self.cursor = Cursor::new(QueueId(self.def.id));
        self.sent.retain(|&l| !transactional(l));
        true
    }

    /// The next time this queue needs a look without any IO: a retry or a transactional
    /// resend that falls due.
    pub fn next_deadline(&self) -> Option<u64> {
        let retry = match self.phase {
            OutPhase::Retry(t) => Some(t),
            _ => None,
        };
        match (retry, self.tx_resend_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(host: &str, transport: Transport) -> OutgoingDef {
        OutgoingDef {
            id: 0x4000_0000,
            key: format!("TCP:{host}"),
            host: host.into(),
            transport,
            shard: 0,
            tx_sequence_id: 0,
            paused: false,
            port: None,
        }
    }

    const POLICY: OutPolicy = OutPolicy {
        hardened: false,
        port: 1801,
        mqqb_default_port: 1801,
        retry_ms: 60_000,
    };

    #[test]
    fn an_empty_queue_stays_idle_and_a_filled_one_connects() {
        let mut q = OutQueue::<u32>::new(def("10.0.0.7", Transport::Mqqb));
        assert!(q.wants_pending(0));
        assert_eq!(q.poll_action(0, 0, &POLICY), None);
        assert_eq!(q.phase(), OutPhase::Idle);
        assert_eq!(
            q.poll_action(5, 3, &POLICY),
            Some(OutAction::Connect("10.0.0.7:1801".parse().unwrap()))
        );
        assert_eq!(q.phase(), OutPhase::Connecting);
        assert!(
            !q.wants_pending(6),
            "no second connection while one is opening"
        );
        assert_eq!(q.poll_action(6, 3, &POLICY), None);
        q.handle_established(9);
        assert_eq!(q.session(), Some(9));
    }

    #[test]
    fn a_host_name_is_resolved_then_connected_or_retried() {
        let mut q = OutQueue::<u32>::new(def("winbox", Transport::Mqqb));
        assert_eq!(
            q.poll_action(0, 1, &POLICY),
            Some(OutAction::Resolve {
                host: "winbox".into(),
                port: 1801
            })
        );
        assert_eq!(q.handle_resolved(10, Err("no address".into()), 1_000), None);
        assert_eq!(q.phase(), OutPhase::Retry(1_010));
        assert_eq!(q.next_deadline(), Some(1_010));
        assert!(!q.wants_pending(1_009));
        assert!(q.wants_pending(1_010));
        assert!(matches!(
            q.poll_action(1_010, 1, &POLICY),
            Some(OutAction::Resolve { .. })
        ));
        let addr: SocketAddr = "10.1.1.1:1801".parse().unwrap();
        assert_eq!(
            q.handle_resolved(1_020, Ok(addr), 1_000),
            Some(OutAction::Connect(addr))
        );
        // A late answer for a queue no longer resolving is ignored.
        assert_eq!(q.handle_resolved(1_030, Ok(addr), 1_000), None);
    }

    #[test]
    fn hardened_mode_and_other_transports_lock_the_queue() {
        let hardened = OutPolicy {
            hardened: true,
            ..POLICY
        };
        let mut q = OutQueue::<u32>::new(def("10.0.0.7", Transport::Mqqb));
        assert_eq!(q.poll_action(0, 1, &hardened), None);
        assert_eq!(q.phase(), OutPhase::Locked);
        assert!(!q.wants_pending(u64::MAX), "a locked queue stays locked");
        let mut i = OutQueue::<u32>::new(def("10.0.0.7", Transport::Ipx));
        assert_eq!(i.poll_action(0, 1, &POLICY), None);
        assert_eq!(i.phase(), OutPhase::Locked);
    }

    #[test]
    fn http_queues_send_in_hardened_mode_on_their_own_port() {
        let hardened = OutPolicy {
            hardened: true,
            ..POLICY
        };
        let mut h = OutQueue::<u32>::new(def("10.0.0.7", Transport::Http));
        assert_eq!(
            h.poll_action(0, 1, &hardened),
            Some(OutAction::Connect("10.0.0.7:80".parse().unwrap()))
        );
        let mut d = def("10.0.0.7", Transport::Http);
        d.key = "HTTPS:10.0.0.7:8443".into();
        d.port = Some(8443);
        let mut s = OutQueue::<u32>::new(d);
        assert_eq!(
            s.poll_action(0, 1, &hardened),
            Some(OutAction::Connect("10.0.0.7:8443".parse().unwrap()))
        );
        let mut d = def("10.0.0.7", Transport::Http);
        d.key = "HTTPS:10.0.0.7".into();
        let mut s = OutQueue::<u32>::new(d);
        assert_eq!(
            s.poll_action(0, 1, &hardened),
            Some(OutAction::Connect("10.0.0.7:443".parse().unwrap()))
        );
    }

    #[test]
    fn a_closed_session_sends_everything_unacknowledged_again_after_the_retry() {
        let mut q = OutQueue::<u32>::new(def("10.0.0.7", Transport::Mqqb));
        q.poll_action(0, 2, &POLICY);
        q.handle_established(1);
        q.note_sent(0, 11, false, 30_000);
        q.note_sent(0, 12, false, 30_000);
        q.handle_acked(11);
        assert!(!q.was_sent(11) && q.was_sent(12));
        q.handle_closed(100, 60_000);
        assert!(!q.was_sent(12), "sent again on the next session");
        assert_eq!(q.phase(), OutPhase::Retry(60_100));
        assert_eq!(q.poll_action(60_099, 1, &POLICY), None);
        assert!(matches!(
            q.poll_action(60_100, 1, &POLICY),
            Some(OutAction::Connect(_))
        ));
    }

    #[test]
    fn the_transactional_resend_schedule_grows_and_restarts_on_progress() {
        let mut q = OutQueue::<u32>::new(def("10.0.0.7", Transport::Mqqb));
        q.note_sent(0, 1, true, 30_000);
        q.note_sent(0, 2, false, 30_000);
        assert_eq!(q.next_deadline(), Some(30_000));
        assert!(!q.handle_resend_timer(29_999, 4, |_| true));
        assert!(q.handle_resend_timer(30_000, 4, |l| l == 1));
        assert_eq!(q.resend_interval(), 1);
        assert!(
            !q.was_sent(1) && q.was_sent(2),
            "only transactional ones go again"
        );
        for _ in 0..10 {
            q.note_sent(0, 1, true, 1);
            assert!(q.handle_resend_timer(u64::MAX, 4, |_| true));
        }
        assert_eq!(q.resend_interval(), 3, "capped at the last step");
        q.note_sent(0, 5, true, 1);
        q.handle_tx_progress(|l| l != 5);
        assert_eq!(q.resend_interval(), 0);
        assert!(!q.was_sent(5), "the OrderAck removed it");
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn a_paused_queue_closes_its_session_sends_nothing_and_resumes() {
        let mut q = OutQueue::<u32>::new(def("10.0.0.7", Transport::Mqqb));
        q.poll_action(0, 2, &POLICY);
        q.handle_established(4);
        q.note_sent(0, 11, false, 30_000);
        assert_eq!(q.status().state, "connected");
        assert_eq!(q.set_paused(true), Some(4), "the open session is closed");
        assert_eq!(q.status().state, "paused");
        assert!(!q.was_sent(11), "sent again after the resume");
        // The close of that session keeps it paused, and nothing starts while paused.
        q.handle_closed(20, 1_000);
        assert_eq!(q.phase(), OutPhase::Paused);
        assert!(!q.wants_pending(u64::MAX));
        assert_eq!(q.poll_action(u64::MAX, 5, &POLICY), None);
        assert_eq!(q.set_paused(false), None);
        assert_eq!(q.status().state, "inactive");
        assert!(matches!(
            q.poll_action(30, 5, &POLICY),
            Some(OutAction::Connect(_))
        ));
        // A queue loaded paused starts paused.
        let mut d = def("10.0.0.8", Transport::Mqqb);
        d.paused = true;
        assert_eq!(OutQueue::<u32>::new(d).status().state, "paused");
    }

    #[test]
    fn the_status_names_the_state_the_retry_and_the_last_error() {
        let mut q = OutQueue::<u32>::new(def("winbox", Transport::Mqqb));
        q.poll_action(0, 1, &POLICY);
        q.handle_resolved(5, Err("no address".into()), 1_000);
        let s = q.status();
        assert_eq!(s.state, "waiting to connect");
        assert_eq!(s.next_try_ms, Some(1_005));
        assert!(s.last_error.unwrap().contains("cannot resolve winbox"));
        q.poll_action(1_005, 1, &POLICY);
        q.handle_resolved(1_006, Ok("10.1.1.1:1801".parse().unwrap()), 1_000);
        q.handle_established(1);
        assert_eq!(q.status().last_error, None, "cleared by a session");
    }
}
