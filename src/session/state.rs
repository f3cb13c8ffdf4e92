//! The session state machine: handshake (MS-MQQB 3.1.5.2-3.1.5.4), SessionAck windowing and
//! generation (3.1.5.5, 3.1.5.8.2, 3.1.5.8.7, 3.1.7.1.3), and the session timers (3.1.2, 3.1.6).

use std::collections::VecDeque;

use crate::wire::base::BASE_HEADER_LEN;
use crate::wire::control::{
    ConnectionParameters, EstablishConnection, SessionAck, SessionHeader,
    CONNECTION_PARAMETERS_LEN, ESTABLISH_CONNECTION_LEN, SESSION_ACK_LEN,
};
use crate::wire::user::UserMessage;
use crate::wire::{parse_packet, Guid, Packet, WireError};

/// Session settings, with the Windows product defaults (DIGEST §12).
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Our queue-manager GUID.
    pub own_guid: Guid,
    /// Our session window (`MaxUnackedPacket`, Windows 64).
    pub window_size: u16,
    /// AckWaitTimeout we ask for as initiator (wire range 20,000..=120,000 ms).
    pub ack_timeout_ms: u32,
    /// Session Initialization Timer: 60,000 + 2 × `RoundTripDelay` ms.
    pub init_timeout_ms: u64,
    /// Session Cleanup Timer (`CleanupInterval`): idle sessions close after this.
    pub cleanup_interval_ms: u64,
    /// `QosCleanupIntervalMultiplier` for the Session Ack Wait Timer (1; 2 for direct names).
    pub ack_wait_multiplier: u32,
    /// Refuse the session in the EstablishConnection reply (CS=1), e.g. at `MaxInSessions`.
    pub refuse: bool,
    /// The most bytes `send_message` queues before it answers `TransmitFull`.
    pub transmit_limit_bytes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            own_guid: Guid::NULL,
            window_size: 64,
            ack_timeout_ms: 20_000,
            init_timeout_ms: 60_000,
            cleanup_interval_ms: 300_000,
            ack_wait_multiplier: 1,
            refuse: false,
            transmit_limit_bytes: 8 << 20,
        }
    }
}

/// Which end of the TCP connection we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We accepted the connection on port 1801.
    Acceptor,
    /// We opened it; `expected_server` is the peer's QM GUID, or NULL for a direct format name
    /// (then whatever GUID the acceptor answers with is adopted, DIGEST §9.1).
    Initiator { expected_server: Guid },
}

/// MS-MQQB 3.1.1.3.1 SessionState.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    WaitingEcMsg,
    WaitingEcrMsg,
    WaitingCpMsg,
    WaitingCprMsg,
    Open,
    Closed,
}

/// Why a session closed. Small and `Copy`, for logs and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A packet failed to parse.
    Malformed(WireError),
    /// A well-formed packet that is not allowed in this state.
    Unexpected {
        state: SessionState,
        packet: &'static str,
    },
    /// The EstablishConnection request named another queue manager (we answered CS=1).
    WrongServerGuid,
    /// We refused the session by policy (MaxInSessions); we answered CS=1.
    RefusedByUs,
    /// The acceptor answered with CS=1, or with GUIDs that do not match our request.
    RefusedByPeer,
    /// The handshake did not finish within the Session Initialization Timer.
    InitTimeout,
    /// Unacknowledged messages and no packet at all from the peer for a whole Ack Wait period.
    AckTimeout,
    /// No UserMessage traffic for a whole Session Cleanup period.
    Idle,
    /// The peer's SessionHeader counts disagree with what we received (MS-MQQB 3.1.5.5.5).
    CountMismatch,
    /// Closed by the local side (shutdown, admin).
    Local,
}

impl CloseReason {
    pub fn describe(&self) -> String {
        match self {
            CloseReason::Malformed(e) => format!("malformed packet: {e}"),
            CloseReason::Unexpected { state, packet } => {
                format!("unexpected {packet} in state {state:?}")
            }
            CloseReason::WrongServerGuid => "EstablishConnection for another queue manager".into(),
            CloseReason::RefusedByUs => "refused: MaxInSessions reached".into(),
            CloseReason::RefusedByPeer => "the peer refused the session".into(),
            CloseReason::InitTimeout => "handshake timed out".into(),
            CloseReason::AckTimeout => "no SessionAck from the peer in time".into(),
            CloseReason::Idle => "idle session cleanup".into(),
            CloseReason::CountMismatch => "SessionHeader counts disagree".into(),
            CloseReason::Local => "closed locally".into(),
        }
    }
}

/// What the session tells its driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake finished.
    Established { remote_qm: Guid, peer_window: u16 },
    /// An outgoing message the caller sent with this token was acknowledged by the peer and
    /// may be deleted (express: by AckSequenceNumber; recoverable: by the recoverable ack).
    Acked { token: u64 },
    /// The session is closed: send what `take_transmit` still holds, then close the socket.
    /// Unacknowledged outgoing messages are to be sent again on a new session.
    Closed(CloseReason),
}

/// What a frame brought in. The UserMessage variant is the common case; it is not boxed, so
/// that receiving a message never allocates.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound<'a> {
    /// A session-control packet, fully handled here.
    Control,
    /// A UserMessage (application message, admin ack, OrderAck, FinalAck) for the queue manager.
    /// `rec_seq` is its recoverable sequence number when it is recoverable: pass that number to
    /// [`Session::handle_durable`] once the message is on disk, and only then is it acknowledged.
    Message {
        msg: UserMessage<'a>,
        seq: u16,
        rec_seq: Option<u16>,
    },
}

/// Why `send_message` did not take a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    NotOpen,
    /// The peer's window is full: wait for an `Acked` event.
    WindowFull,
    /// The transmit buffer is over its limit: drain it first.
    TransmitFull,
}

#[derive(Clone, Copy, Debug)]
struct Outgoing {
    seq: u16,
    /// 0 for express (MS-MQQB: RecoverableSequenceNumber 0x0000 marks express).
    rec_seq: u16,
    token: u64,
    session_acked: bool,
}

/// `a <= b` in 16-bit serial-number arithmetic (the counters wrap after 65,535 messages).
fn seq_le(a: u16, b: u16) -> bool {
    b.wrapping_sub(a) < 0x8000
}

/// One MS-MQQB session. See the module docs for the driving protocol.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    role: Role,
    state: SessionState,
    remote_qm: Guid,
    /// AckWaitTimeout in force (ours as initiator; the initiator's as acceptor).
    ack_timeout_ms: u64,
    /// RecoverableAckSendTimeout in force.
    recoverable_ack_timeout_ms: u64,
    /// The peer's window (ReceivedWindowSize).
    peer_window: u16,
    ec_sent_at_ms: u64,

    // Receive side (MS-MQQB 3.1.1.3.1 counters).
    msg_received: u16,
    rec_received: u16,
    unacked_received: u16,
    /// Received messages the app has not taken yet (handed to another shard, not placed):
    /// no SessionAck covers them, so the sender's window is the back-pressure.
    held: u32,
    /// Set by [`Session::refuse_next_establish`].
    refuse_at_establish: Option<bool>,
    /// LastAckedRecoverableMsgSeqNumber.
    rec_acked: u16,
    /// Highest recoverable sequence number such that it and all before it are on disk.
    rec_durable: u16,

    // Send side.
    msg_sent: u16,
    rec_sent: u16,
    outgoing: VecDeque<Outgoing>,
    unacked_sent: u16,
    received_since_ack_wait: bool,

    // Timers, as absolute deadlines in the caller's millisecond clock.
    init_deadline: Option<u64>,
    ack_send_deadline: Option<u64>,
    ack_wait_deadline: Option<u64>,
    last_user_traffic_ms: u64,

    transmit: Vec<u8>,
    events: VecDeque<Event>,
    counters: SessionCounters,
}

/// Per-session counts for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounters {
    pub acks_sent: u64,
    pub acks_received: u64,
    pub user_msg_count_mismatches: u64,
}

fn clamp(v: u64, lo: u64, hi: u64) -> u64 {
    v.max(lo).min(hi)
}

impl Session {
    /// A session on a connection we accepted.
    pub fn acceptor(cfg: SessionConfig, now_ms: u64) -> Session {
        Session::new(cfg, Role::Acceptor, now_ms)
    }

    /// A session we open; the EstablishConnection request is queued for transmit at once.
    pub fn initiator(cfg: SessionConfig, expected_server: Guid, now_ms: u64) -> Session {
        let mut s = Session::new(cfg, Role::Initiator { expected_server }, now_ms);
        let ec = EstablishConnection::request(s.cfg.own_guid, expected_server, now_ms as u32);
        s.push_packet(ESTABLISH_CONNECTION_LEN, |b| ec.encode(b));
        s.ec_sent_at_ms = now_ms;
        s.state = SessionState::WaitingEcrMsg;
        s
    }

    fn new(cfg: SessionConfig, role: Role, now_ms: u64) -> Session {
        let init = now_ms.saturating_add(cfg.init_timeout_ms);
        let ack_timeout_ms = u64::from(cfg.ack_timeout_ms);
        Session {
            role,
            state: SessionState::WaitingEcMsg,
            remote_qm: Guid::NULL,
            ack_timeout_ms,
            recoverable_ack_timeout_ms: 500,
            peer_window: 1,
            ec_sent_at_ms: now_ms,
            msg_received: 0,
            rec_received: 0,
            unacked_received: 0,
            held: 0,
            refuse_at_establish: None,
            rec_acked: 0,
            rec_durable: 0,
            msg_sent: 0,
            rec_sent: 0,
            outgoing: VecDeque::new(),
            unacked_sent: 0,
            received_since_ack_wait: false,
            init_deadline: Some(init),
            ack_send_deadline: None,
            ack_wait_deadline: None,
            last_user_traffic_ms: now_ms,
            transmit: Vec::new(),
            events: VecDeque::new(),
            counters: SessionCounters::default(),
            cfg,
        }
    }

    pub fn state(&self) -> SessionState {
        self.state
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn remote_qm(&self) -> Guid {
        self.remote_qm
    }
    pub fn counters(&self) -> SessionCounters {
        self.counters
    }
    pub fn is_closed(&self) -> bool {
        self.state == SessionState::Closed
    }
    /// Messages sent on this session and not yet deleted by a SessionAck.
    pub fn in_flight(&self) -> usize {
        self.outgoing.len()
    }
    /// How many more messages the window admits now.
    pub fn window_available(&self) -> u16 {
        if self.state != SessionState::Open {
            return 0;
        }
        self.send_window().saturating_sub(self.unacked_sent)
    }

    fn send_window(&self) -> u16 {
        // The spec compares with the local WindowSize; the peer's is the meaningful limit, so
        // the smaller of the two applies (DIGEST §9.4).
        self.cfg.window_size.min(self.peer_window).max(1)
    }

    fn close(&mut self, reason: CloseReason) -> CloseReason {
        if self.state != SessionState::Closed {
            self.state = SessionState::Closed;
            self.init_deadline = None;
            self.ack_send_deadline = None;
            self.ack_wait_deadline = None;
            self.events.push_back(Event::Closed(reason));
        }
        reason
    }

    /// Closes the session from the local side.
    pub fn close_local(&mut self) {
        self.close(CloseReason::Local);
    }

    fn push_packet(
        &mut self,
        len: usize,
        encode: impl FnOnce(&mut [u8]) -> crate::wire::Result<usize>,
    ) {
        let start = self.transmit.len();
        self.transmit.resize(start + len, 0);
        let n = encode(&mut self.transmit[start..]);
        // Our own fixed-size packets always fit the space reserved for them.
        debug_assert_eq!(n, Ok(len));
    }

    /// Handles one frame from [`super::Framer`]. On `Err` the session is closed (and an
    /// `Event::Closed` is queued).
    pub fn handle_frame<'a>(
        &mut self,
        now_ms: u64,
        frame: &'a [u8],
    ) -> Result<Inbound<'a>, CloseReason> {
        if self.state == SessionState::Closed {
            return Err(CloseReason::Local);
        }
        let packet = match parse_packet(frame) {
            Ok(p) => p,
            Err(e) => return Err(self.close(CloseReason::Malformed(e))),
        };
        self.received_since_ack_wait = true;
        let unexpected = |s: &Session, p: &Packet<'_>| CloseReason::Unexpected {
            state: s.state,
            packet: p.kind(),
        };
        match (self.state, packet) {
            (SessionState::WaitingEcMsg, Packet::EstablishConnection(ec)) => {
                if let Some(decide) = self.refuse_at_establish.take() {
                    self.cfg.refuse = decide;
                }
                self.on_ec_request(&ec)?;
                Ok(Inbound::Control)
            }
            (SessionState::WaitingEcrMsg, Packet::EstablishConnection(ec)) => {
                self.on_ec_response(now_ms, &ec)?;
                Ok(Inbound::Control)
            }
            (SessionState::WaitingCpMsg, Packet::ConnectionParameters(cp)) => {
                self.on_cp_request(now_ms, &cp);
                Ok(Inbound::Control)
            }
            (SessionState::WaitingCprMsg, Packet::ConnectionParameters(cp)) => {
                self.peer_window = cp.window_size.max(1);
                self.open(now_ms);
                Ok(Inbound::Control)
            }
            (SessionState::Open, Packet::SessionAck(ack)) => {
                self.on_session_header(now_ms, &ack.session)?;
                Ok(Inbound::Control)
            }
            (SessionState::Open, Packet::User(msg)) => self.on_user_message(now_ms, msg),
            (_, p) => {
                let r = unexpected(self, &p);
                Err(self.close(r))
            }
        }
    }

    fn on_ec_request(&mut self, ec: &EstablishConnection<'_>) -> Result<(), CloseReason> {
        self.remote_qm = ec.client_guid;
        let wrong_guid = !(ec.server_guid.is_null() || ec.server_guid == self.cfg.own_guid);
        let refuse = wrong_guid || self.cfg.refuse;
        let reply = EstablishConnection::response(ec, self.cfg.own_guid, refuse);
        self.push_packet(ESTABLISH_CONNECTION_LEN, |b| reply.encode(b));
        if refuse {
            let reason = if wrong_guid {
                CloseReason::WrongServerGuid
            } else {
                CloseReason::RefusedByUs
            };
            return Err(self.close(reason));
        }
        self.state = SessionState::WaitingCpMsg;
        Ok(())
    }

    fn on_ec_response(
        &mut self,
        now_ms: u64,
        ec: &EstablishConnection<'_>,
    ) -> Result<(), CloseReason> {
        let Role::Initiator { expected_server } = self.role else {
            return Err(self.close(CloseReason::RefusedByPeer));
        };
        let guid_ok = ec.client_guid == self.cfg.own_guid
            && (expected_server.is_null() || ec.server_guid == expected_server);
        if !guid_ok || ec.internal.flags.refused() {
            return Err(self.close(CloseReason::RefusedByPeer));
        }
        self.remote_qm = ec.server_guid;
        let rtt = now_ms.saturating_sub(self.ec_sent_at_ms);
        self.recoverable_ack_timeout_ms = clamp(rtt.saturating_mul(8), 500, 120_000);
        let cp = ConnectionParameters::new(
            self.recoverable_ack_timeout_ms as u32,
            self.cfg.ack_timeout_ms,
            self.cfg.window_size,
        );
        self.push_packet(CONNECTION_PARAMETERS_LEN, |b| cp.encode(b));
        self.state = SessionState::WaitingCprMsg;
        Ok(())
    }

    fn on_cp_request(&mut self, now_ms: u64, cp: &ConnectionParameters) {
        // Adopt the initiator's parameters (MS-MQQB 3.1.5.4.1), clamped to the wire ranges so a
        // hostile value cannot make our timers absurd.
        let (ra_lo, ra_hi) = ConnectionParameters::RECOVERABLE_ACK_TIMEOUT_RANGE;
        let (at_lo, at_hi) = ConnectionParameters::ACK_TIMEOUT_RANGE;
        self.peer_window = cp.window_size.max(1);
        self.ack_timeout_ms = clamp(
            u64::from(cp.ack_timeout),
            u64::from(at_lo),
            u64::from(at_hi),
        );
        self.recoverable_ack_timeout_ms = clamp(
            u64::from(cp.recoverable_ack_timeout),
            u64::from(ra_lo),
            u64::from(ra_hi),
        );
        let reply = ConnectionParameters::new(
            cp.recoverable_ack_timeout,
            cp.ack_timeout,
            self.cfg.window_size,
        );
        self.push_packet(CONNECTION_PARAMETERS_LEN, |b| reply.encode(b));
        self.open(now_ms);
    }

    fn open(&mut self, now_ms: u64) {
        // The end of the handshake starts the first idle period.
        self.last_user_traffic_ms = now_ms;
        self.state = SessionState::Open;
        self.init_deadline = None;
        self.events.push_back(Event::Established {
            remote_qm: self.remote_qm,
            peer_window: self.peer_window,
        });
    }

    fn on_user_message<'a>(
        &mut self,
        now_ms: u64,
        msg: UserMessage<'a>,
    ) -> Result<Inbound<'a>, CloseReason> {
        if let Some(sh) = msg.session {
            self.on_session_header(now_ms, &sh)?;
        }
        self.last_user_traffic_ms = now_ms;
        self.msg_received = self.msg_received.wrapping_add(1);
        self.unacked_received = self.unacked_received.saturating_add(1);
        let rec_seq = if msg.user.flags.recoverable() {
            self.rec_received = self.rec_received.wrapping_add(1);
            // The ack for a recoverable message waits for the disk, and at most
            // RecoverableAckSendTimeout once it is there (MS-MQQB 3.1.5.8.7).
            Some(self.rec_received)
        } else {
            None
        };
        if self.ack_send_deadline.is_none() {
            self.ack_send_deadline = Some(now_ms.saturating_add(self.ack_timeout_ms / 2));
        }
        Ok(Inbound::Message {
            msg,
            seq: self.msg_received,
            rec_seq,
        })
    }

    /// The store reports that the recoverable message with this recoverable sequence number,
    /// and every one before it on this session, is on disk.
    pub fn handle_durable(&mut self, now_ms: u64, rec_seq: u16) {
        let ahead = rec_seq.wrapping_sub(self.rec_durable);
        let received = self.rec_received.wrapping_sub(self.rec_durable);
        // Ignore stale or impossible completions (for messages of an earlier session number).
        if ahead == 0 || ahead > received {
            return;
        }
        self.rec_durable = rec_seq;
        let deadline = now_ms.saturating_add(self.recoverable_ack_timeout_ms);
        self.ack_send_deadline = Some(self.ack_send_deadline.map_or(deadline, |d| d.min(deadline)));
    }

    /// The app has not taken the message just received yet (it handed it to the shard that
    /// owns its queue): SessionAcks wait until [`Session::release`] says it has, so a sender
    /// never has more than its window in flight between shards. The ack timer still
    /// acknowledges the window when it fires (the message is in lior's memory by then, as an
    /// express message is when acknowledged), so a sender never times out on a stuck shard.
    pub fn hold(&mut self) {
        self.held = self.held.saturating_add(1);
    }

    /// Whether this session (the acceptor) still waits for the peer's EstablishConnection: the
    /// moment it would take one of the queue manager's MaxInSessions slots.
    pub fn awaits_establish(&self) -> bool {
        self.state == SessionState::WaitingEcMsg
    }

    /// Decides, for the EstablishConnection about to be handled, whether to refuse it (CS=1)
    /// rather than what [`SessionConfig::refuse`] said at creation.
    pub fn refuse_next_establish(&mut self, refuse: bool) {
        self.refuse_at_establish = Some(refuse);
    }

    /// One message [`Session::hold`] kept is now taken by the app.
    pub fn release(&mut self) {
        self.held = self.held.saturating_sub(1);
    }

    /// Whether a SessionAck is owed now: messages not yet acknowledged, and every recoverable
    /// one among them on disk (otherwise the ack waits for the store, one group commit).
    fn ack_ready(&self) -> bool {
        if self.held > 0 {
            return false;
        }
        let durable_progress = self.rec_durable != self.rec_acked;
        let waiting_for_disk = self.rec_durable != self.rec_received;
        (self.unacked_received > 0 && !waiting_for_disk) || durable_progress
    }

    /// Sends the SessionAcks owed now. The engine calls this once per loop turn, after storage
    /// completions: acknowledgements are coalesced per turn, never delayed past it, which gives
    /// low latency when idle and one ack per batch under load.
    pub fn flush_acks(&mut self) {
        if self.state == SessionState::Open && self.ack_ready() {
            self.send_acks();
        }
    }

    fn send_acks(&mut self) {
        // RecoverableMsgAckSeqNumber is the lowest unacknowledged persisted number and bit k of
        // the flags stands for that number + k (MS-MQMQ 2.2.20.4). A Windows sender deletes
        // every recoverable message numbered at or below RecoverableMsgAckSeqNumber
        // (MS-MQQB 3.1.5.5.3), so only numbers already on disk are ever named; more than 32
        // newly durable messages take several SessionAcks.
        let mut pending = self.rec_durable.wrapping_sub(self.rec_acked);
        loop {
            let k = pending.min(32);
            let (base, flags) = if k == 0 {
                (0, 0)
            } else {
                let flags = if k == 32 { u32::MAX } else { (1u32 << k) - 1 };
                (self.rec_acked.wrapping_add(1), flags)
            };
            let header = SessionHeader {
                ack_sequence_number: self.msg_received,
                recoverable_msg_ack_seq_number: base,
                recoverable_msg_ack_flags: flags,
                user_msg_sequence_number: self.msg_sent,
                recoverable_msg_seq_number: self.rec_sent,
                window_size: self.cfg.window_size,
                reserved: 0,
            };
            let ack = SessionAck::new(header);
            self.push_packet(SESSION_ACK_LEN, |b| ack.encode(b));
            self.counters.acks_sent += 1;
            self.rec_acked = self.rec_acked.wrapping_add(k);
            pending -= k;
            if pending == 0 {
                break;
            }
        }
        self.unacked_received = 0;
        self.ack_send_deadline = None;
    }

    fn on_session_header(&mut self, now_ms: u64, sh: &SessionHeader) -> Result<(), CloseReason> {
        self.counters.acks_received += 1;
        // 3.1.5.5.1: mark everything up to AckSequenceNumber as session-acknowledged.
        for e in self.outgoing.iter_mut() {
            if !e.session_acked && seq_le(e.seq, sh.ack_sequence_number) {
                e.session_acked = true;
                self.unacked_sent = self.unacked_sent.saturating_sub(1);
            }
        }
        // 3.1.5.5.2 and 3.1.5.5.3: delete acknowledged express and recoverable entries.
        let base = sh.recoverable_msg_ack_seq_number;
        let flags = sh.recoverable_msg_ack_flags;
        let events = &mut self.events;
        self.outgoing.retain(|e| {
            let done = if e.rec_seq == 0 {
                e.session_acked
            } else if base == 0 {
                false
            } else {
                let k = e.rec_seq.wrapping_sub(base);
                seq_le(e.rec_seq, base) || (k < 32 && flags & (1 << k) != 0)
            };
            if done {
                events.push_back(Event::Acked { token: e.token });
            }
            !done
        });
        // 3.1.5.5.5: counts. Windows is known to send a wrong UserMsgSequenceNumber (MS-MQMQ
        // <14>), so that one is counted, not fatal; the recoverable count is checked.
        if sh.user_msg_sequence_number != self.msg_received {
            self.counters.user_msg_count_mismatches += 1;
        }
        if sh.recoverable_msg_seq_number != self.rec_received {
            return Err(self.close(CloseReason::CountMismatch));
        }
        self.ack_wait_deadline = if self.outgoing.iter().any(|e| !e.session_acked) {
            Some(now_ms.saturating_add(self.ack_wait_ms()))
        } else {
            None
        };
        Ok(())
    }

    fn ack_wait_ms(&self) -> u64 {
        self.ack_timeout_ms
            .saturating_mul(u64::from(self.cfg.ack_wait_multiplier.max(1)))
    }

    /// Queues one encoded UserMessage `frame` for transmit. `token` comes back in
    /// `Event::Acked` when the peer has acknowledged it. Returns its session sequence number.
    pub fn send_message(
        &mut self,
        now_ms: u64,
        frame: &[u8],
        recoverable: bool,
        token: u64,
    ) -> Result<u16, SendError> {
        if self.state != SessionState::Open {
            return Err(SendError::NotOpen);
        }
        if self.window_available() == 0 {
            return Err(SendError::WindowFull);
        }
        if self.transmit.len().saturating_add(frame.len()) > self.cfg.transmit_limit_bytes
            && !self.transmit.is_empty()
        {
            return Err(SendError::TransmitFull);
        }
        debug_assert!(frame.len() >= BASE_HEADER_LEN);
        self.transmit.extend_from_slice(frame);
        self.msg_sent = self.msg_sent.wrapping_add(1);
        let rec_seq = if recoverable {
            self.rec_sent = self.rec_sent.wrapping_add(1);
            self.rec_sent
        } else {
            0
        };
        self.outgoing.push_back(Outgoing {
            seq: self.msg_sent,
            rec_seq,
            token,
            session_acked: false,
        });
        self.unacked_sent += 1;
        self.last_user_traffic_ms = now_ms;
        if self.ack_wait_deadline.is_none() {
            self.ack_wait_deadline = Some(now_ms.saturating_add(self.ack_wait_ms()));
            self.received_since_ack_wait = false;
        }
        Ok(self.msg_sent)
    }

    /// Tokens of messages sent on this session and not yet acknowledged, oldest first: after a
    /// close they are to be sent again on a new session.
    pub fn unacked_tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.outgoing.iter().map(|e| e.token)
    }

    /// The earliest deadline at which [`Session::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.state == SessionState::Closed {
            return None;
        }
        let cleanup = (self.state == SessionState::Open).then(|| {
            self.last_user_traffic_ms
                .saturating_add(self.cfg.cleanup_interval_ms)
        });
        [
            self.init_deadline,
            self.ack_send_deadline,
            self.ack_wait_deadline,
            cleanup,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers that are due at `now_ms`.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if self.state == SessionState::Closed {
            return;
        }
        if self.init_deadline.is_some_and(|d| now_ms >= d) {
            self.close(CloseReason::InitTimeout);
            return;
        }
        if self.state != SessionState::Open {
            return;
        }
        if now_ms
            >= self
                .last_user_traffic_ms
                .saturating_add(self.cfg.cleanup_interval_ms)
        {
            self.close(CloseReason::Idle);
            return;
        }
        if self.ack_send_deadline.is_some_and(|d| now_ms >= d) {
            // Even with recoverable messages still waiting for the disk, acknowledge what can
            // be (the window), so the sender never times out on a slow disk.
            if self.unacked_received > 0 || self.rec_durable != self.rec_acked {
                self.send_acks();
            }
            self.ack_send_deadline = None;
        }
        if self.ack_wait_deadline.is_some_and(|d| now_ms >= d) {
            if !self.outgoing.iter().any(|e| !e.session_acked) {
                self.ack_wait_deadline = None;
            } else if !self.received_since_ack_wait {
                self.close(CloseReason::AckTimeout);
            } else {
                self.received_since_ack_wait = false;
                self.ack_wait_deadline = Some(now_ms.saturating_add(self.ack_wait_ms()));
            }
        }
    }

    /// Whether bytes wait to be sent.
    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// Hands the bytes to send to the driver, which owns them until its write completes, and
    /// takes `spare` (cleared) as the next transmit buffer, so a buffer the kernel reads is never
    /// touched again by the session.
    pub fn take_transmit(&mut self, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        std::mem::replace(&mut self.transmit, spare)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}
