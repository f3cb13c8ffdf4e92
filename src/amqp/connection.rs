//! The AMQP 1.0 connection state machine, server role, sans-IO (OASIS AMQP 1.0 Part 2 §2.4
//! connections, §2.5 sessions, §2.6 links; Part 5 §5.3 SASL).
//!
//! One [`Connection`] per accepted TCP connection. Like [`crate::session`] it never touches a
//! socket or the clock: the driver feeds it received bytes and the time
//! ([`Connection::handle_bytes`]), fires its timer ([`Connection::poll_timeout`],
//! [`Connection::handle_timeout`]), sends what it produced ([`Connection::take_transmit`] or
//! [`Connection::poll_transmit`]) and reads its [`Event`]s ([`Connection::poll_event`]).
//!
//! It does: protocol header negotiation, the SASL layer when configured (ANONYMOUS, and PLAIN
//! checked by the caller's [`PlainCheck`]), open (negotiated max-frame-size, channel-max, idle
//! time-out: an empty frame every half of the peer's idle-time-out; nothing received for our own
//! idle time-out closes with `amqp:resource-limit-exceeded`), begin/end with session windows,
//! attach/detach, flow (link credit, delivery-count, drain, echo), transfer (multi-frame
//! reassembly up to [`ConnectionConfig::max_message_size`]), disposition and close. Every
//! protocol violation closes the connection with an AMQP condition and a description (see
//! [`ConnError`]); nothing panics on any input.
//!
//! The broker is not here. Links are named by a connection-wide [`LinkId`]:
//!
//! * [`Event::LinkAttached`]: a client attached a link. A [`LinkKind::Consumer`] (the client
//!   receives; the address is its source) or a [`LinkKind::Producer`] (the client sends; the
//!   address is its target). Answer [`Connection::accept_link`] or [`Connection::refuse_link`].
//!   A producer link gets [`ConnectionConfig::link_credit`] credit at once, topped up as the
//!   caller settles (so a caller that stops settling stops the producer).
//! * [`Event::Credit`]: a consumer's credit changed. Call [`Connection::send_message`] up to
//!   `credit` times (your `tag` comes back in [`Event::Disposition`]). With `drain`, send what
//!   you have, then call [`Connection::drained`].
//! * [`Event::Message`]: a complete message on a producer link. If not `settled`, call
//!   [`Connection::settle`] once it is stored (durable or in memory).
//! * [`Event::Disposition`]: the client's outcome for one of your sent messages, by your `tag`
//!   (a range disposition arrives as one event per delivery).
//! * [`Event::LinkDetached`] and [`Event::Closed`]: a link (or, before `Closed`, every link)
//!   is gone; `unsettled` lists the tags of your messages with no outcome: put them back.
//!
//! The driver's loop (a compiled example):
//!
//! ```
//! use lior::amqp::connection::{Connection, ConnectionConfig, Event, Outcome};
//!
//! fn on_readable(c: &mut Connection, now_ms: u64, bytes: &[u8], out: &mut Vec<u8>) -> bool {
//!     if let Err(e) = c.handle_bytes(now_ms, bytes) {
//!         eprintln!("amqp: closing: {e}"); // a log line and a counter
//!     }
//!     while let Some(ev) = c.poll_event() {
//!         match ev {
//!             Event::LinkAttached { link, .. } => c.accept_link(link).unwrap(),
//!             Event::Credit { link, credit, drain } => {
//!                 for tag in 0..u64::from(credit.min(10)) {
//!                     let _ = c.send_message(link, tag, b"\x00\x53\x75\xa0\x01x", false);
//!                 }
//!                 if drain {
//!                     let _ = c.drained(link);
//!                 }
//!             }
//!             Event::Message { link, delivery_id, settled, payload: _ } => {
//!                 // ... store it, then:
//!                 if !settled {
//!                     let _ = c.settle(link, delivery_id, &Outcome::Accepted);
//!                 }
//!             }
//!             Event::Disposition { .. } | Event::LinkDetached { .. } => {}
//!             Event::Opened { .. } | Event::Closed { .. } => {}
//!         }
//!     }
//!     c.poll_transmit(out); // then write `out` to the socket
//!     !c.is_closed() // false: flush `out`, then close the socket
//! }
//! let mut c = Connection::new(ConnectionConfig::default(), 0);
//! let mut out = Vec::new();
//! assert!(on_readable(&mut c, 0, b"AMQP\x00\x01\x00\x00", &mut out));
//! assert_eq!(&out[..], b"AMQP\x00\x01\x00\x00");
//! ```
//!
//! Simplifications, each on the safe side: lior never begins sessions or attaches links itself;
//! a session-level violation closes the whole connection (not just the session); after sending
//! close lior does not wait for the peer's close (the driver flushes and drops the socket);
//! receiver-settle-mode `second` is answered with `first`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use super::frame::{
    encode_amqp_frame, encode_sasl_frame, frame_len, parse_frame, FrameType, ProtocolHeader,
    AMQP_HEADER, EMPTY_FRAME, SASL_HEADER,
};
use super::performatives::{
    condition, rcv_settle_mode, snd_settle_mode, AmqpError, Attach, Begin, DeliveryState, Detach,
    Disposition, Flow, Open, Performative, Role, Source, Target, Transfer,
};
use super::sasl::{code, parse_initial_response, SaslCredentials, SaslFrame, SaslOutcome};
use super::types::Symbols;
use super::MIN_MAX_FRAME_SIZE;

/// The largest MSMQ message body (4 MB) plus room for the AMQP header, properties and
/// application properties around it: the default [`ConnectionConfig::max_message_size`].
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024 + 256 * 1024;
/// Sessions one connection may have (the channel-max lior announces is this minus one).
pub const MAX_SESSIONS: u16 = 32;
/// Links one session may have (the handle-max lior announces is this minus one).
pub const MAX_LINKS_PER_SESSION: u32 = 256;
/// Links one connection may have, over all its sessions.
pub const MAX_LINKS: usize = 1024;
/// Bytes of incomplete multi-frame messages one connection may hold, over all its links
/// (each one is also bounded by [`ConnectionConfig::max_message_size`]): beyond it the
/// connection closes with `amqp:resource-limit-exceeded`.
pub const MAX_PARTIAL_BYTES: usize = 4 * MAX_MESSAGE_SIZE;
/// Unsettled deliveries, both directions together, one connection may have.
pub const MAX_UNSETTLED: usize = 65_536;
/// The max-frame-size lior announces by default.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 256 * 1024;
/// Bytes of transmit buffer above which [`Connection::send_message`] answers
/// [`SendError::TransmitFull`] (the driver is not writing fast enough).
pub const MAX_TRANSMIT_BYTES: usize = 16 << 20;
/// Events queued and not yet polled; beyond it the connection closes with
/// `amqp:resource-limit-exceeded` (a driver that never polls).
pub const MAX_EVENTS: usize = 1 << 20;
/// The shortest heartbeat interval lior keeps, whatever tiny idle-time-out a peer announces.
pub const MIN_HEARTBEAT_MS: u64 = 100;

/// Checks a PLAIN user name and password (the config file's salted hashes, in the broker).
pub type PlainCheck = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// The SASL layer (Part 5 §5.3). With it configured, a client must start with `AMQP 3 1 0 0`.
#[derive(Clone)]
pub struct SaslConfig {
    /// Offer ANONYMOUS.
    pub anonymous: bool,
    /// Offer PLAIN, checked by this.
    pub plain: Option<PlainCheck>,
}

impl fmt::Debug for SaslConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslConfig")
            .field("anonymous", &self.anonymous)
            .field("plain", &self.plain.is_some())
            .finish()
    }
}

/// Connection settings; every limit has a default in the constants above.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    /// Our container-id (the open performative).
    pub container_id: String,
    /// `None`: no SASL layer (the client starts with `AMQP 0 1 0 0`).
    pub sasl: Option<SaslConfig>,
    /// The max-frame-size we announce and enforce on received frames (>= 512).
    pub max_frame_size: u32,
    /// Our idle time-out in ms (announced in open; 0: none). Nothing received for this long
    /// closes the connection with `amqp:resource-limit-exceeded`.
    pub idle_timeout_ms: u32,
    /// The time a client has, from the connection's start, to complete the handshake (header,
    /// SASL, open) before the connection is dropped.
    pub open_timeout_ms: u64,
    /// Our incoming session window, in transfer frames.
    pub session_window: u32,
    /// The credit each producer link is kept at (minus its unsettled deliveries).
    pub link_credit: u32,
    /// The largest message (all its transfer frames) we accept; larger is
    /// `amqp:link:message-size-exceeded`.
    pub max_message_size: usize,
    /// Unsettled deliveries, both directions, this connection may hold.
    pub max_unsettled: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            container_id: "lior".to_string(),
            sasl: None,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            idle_timeout_ms: 60_000,
            open_timeout_ms: 30_000,
            session_window: 2048,
            link_credit: 256,
            max_message_size: MAX_MESSAGE_SIZE,
            max_unsettled: MAX_UNSETTLED,
        }
    }
}

/// A link, connection-wide. Stays unique for the connection's life (never reused).
pub type LinkId = u32;

/// What a link is for, from the broker's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// The client receives (its attach has role receiver): the broker sends from `address`.
    Consumer,
    /// The client sends (its attach has role sender): the broker stores into `address`.
    Producer,
}

/// An outcome (Part 3 §3.4), owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Released,
    Rejected {
        condition: String,
        description: Option<String>,
    },
    Modified {
        delivery_failed: bool,
        undeliverable_here: bool,
    },
}

impl Outcome {
    fn from_state(s: &DeliveryState<'_>) -> Option<Outcome> {
        Some(match s {
            DeliveryState::Received { .. } => return None,
            DeliveryState::Accepted => Outcome::Accepted,
            DeliveryState::Released => Outcome::Released,
            DeliveryState::Rejected(e) => Outcome::Rejected {
                condition: e.map_or(String::new(), |e| e.condition.to_string()),
                description: e.and_then(|e| e.description.map(str::to_string)),
            },
            DeliveryState::Modified {
                delivery_failed,
                undeliverable_here,
                ..
            } => Outcome::Modified {
                delivery_failed: *delivery_failed,
                undeliverable_here: *undeliverable_here,
            },
        })
    }
    fn to_state(&self) -> DeliveryState<'_> {
        match self {
            Outcome::Accepted => DeliveryState::Accepted,
            Outcome::Released => DeliveryState::Released,
            Outcome::Rejected {
                condition,
                description,
            } => DeliveryState::Rejected(Some(AmqpError {
                condition,
                description: description.as_deref(),
                info: None,
            })),
            Outcome::Modified {
                delivery_failed,
                undeliverable_here,
            } => DeliveryState::Modified {
                delivery_failed: *delivery_failed,
                undeliverable_here: *undeliverable_here,
                message_annotations: None,
            },
        }
    }
}

/// An AMQP error, owned (what a peer sent, or what we sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorInfo {
    pub condition: String,
    pub description: Option<String>,
}

impl ErrorInfo {
    fn from_amqp(e: &AmqpError<'_>) -> ErrorInfo {
        ErrorInfo {
            condition: e.condition.to_string(),
            description: e.description.map(str::to_string),
        }
    }
}

/// Why the connection closed on our side: the condition sent to the peer (in close, or as the
/// sasl-outcome / protocol header answer before open) and what happened, for the log line.
/// After it the connection is closed: flush the transmit buffer, then drop the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnError {
    pub condition: &'static str,
    pub description: String,
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.condition, self.description)
    }
}

impl std::error::Error for ConnError {}

/// What the connection tells the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The client's open arrived (and ours went out). `user` is the SASL PLAIN user, if any.
    Opened {
        container_id: String,
        hostname: Option<String>,
        user: Option<String>,
    },
    /// A client attached a link: answer [`Connection::accept_link`] or
    /// [`Connection::refuse_link`]. `browse`: the source asked `distribution-mode = copy`.
    /// `presettled`: the client asked snd-settle-mode settled (at-most-once).
    LinkAttached {
        link: LinkId,
        kind: LinkKind,
        address: Option<String>,
        name: String,
        browse: bool,
        presettled: bool,
    },
    /// A consumer link may now take `credit` more messages (its total, not an increment).
    /// With `drain`, send what is available, then call [`Connection::drained`].
    Credit {
        link: LinkId,
        credit: u32,
        drain: bool,
    },
    /// A complete message on a producer link. If `!settled`, call [`Connection::settle`] with
    /// this `delivery_id` once it is stored.
    Message {
        link: LinkId,
        delivery_id: u32,
        settled: bool,
        payload: Vec<u8>,
    },
    /// The client's outcome for a message sent with [`Connection::send_message`] (by its
    /// `tag`). `state: None`: settled without an outcome (treat as released: at-least-once).
    Disposition {
        link: LinkId,
        tag: u64,
        state: Option<Outcome>,
    },
    /// The link is gone (the client detached it, ended its session, closed, or the connection
    /// was lost). `unsettled`: tags of sent messages without an outcome, to put back.
    LinkDetached {
        link: LinkId,
        closed: bool,
        error: Option<ErrorInfo>,
        unsettled: Vec<u64>,
    },
    /// The connection is over. `error`: the peer's close error (`by_peer`) or ours.
    Closed {
        by_peer: bool,
        error: Option<ErrorInfo>,
    },
}

/// Why a command was not done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// No such link (never existed, or detached since).
    UnknownLink,
    /// The link is not in a state for this (e.g. accept twice, send on a producer link).
    WrongState,
    /// The connection is closed.
    Closed,
}

/// Why [`Connection::send_message`] did not send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No such consumer link, or not accepted yet, or detached.
    UnknownLink,
    /// The link has no credit: wait for [`Event::Credit`].
    NoCredit,
    /// The client's session window is shut: wait for [`Event::Credit`].
    SessionWindow,
    /// Too many unsettled deliveries ([`ConnectionConfig::max_unsettled`]).
    TooManyUnsettled,
    /// The transmit buffer holds more than [`MAX_TRANSMIT_BYTES`]: write it out first.
    TransmitFull,
    /// The connection is closed.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the client's protocol header; `sasl_done` once SASL succeeded.
    Header {
        sasl_done: bool,
    },
    /// SASL header exchanged, mechanisms sent, waiting for sasl-init.
    SaslInit,
    /// AMQP header exchanged, waiting for the client's open.
    AwaitOpen,
    Opened,
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Attach received, the broker has not answered.
    Pending,
    Attached,
    /// Refused or closed by us: our detach is sent, waiting for the client's.
    DetachSent,
}

struct Partial {
    delivery_id: u32,
    settled: bool,
    payload: Vec<u8>,
}

struct Link {
    /// Our session's local channel.
    channel: u16,
    local_handle: u32,
    kind: LinkKind,
    state: LinkState,
    name: String,
    source: Option<String>,
    target: Option<String>,
    browse: bool,
    presettled: bool,
    /// Delivery count (ours when we send; the sender's when we receive).
    delivery_count: u32,
    /// Credit: the client's (consumer) or ours granted (producer).
    credit: u32,
    drain: bool,
    /// Producer: incoming delivery in progress.
    partial: Option<Partial>,
    /// Producer: delivered to the broker, not settled by it yet.
    unsettled_in: BTreeSet<u32>,
}

struct Session {
    local_channel: u16,
    remote_channel: u16,
    /// Next incoming transfer id expected from the peer.
    next_incoming_id: u32,
    /// What remains of our incoming window.
    incoming_window: u32,
    /// Our next outgoing transfer id.
    next_outgoing_id: u32,
    /// Our next outgoing delivery id.
    next_delivery_id: u32,
    /// What remains of the peer's incoming window.
    remote_incoming_window: u32,
    handle_max: u32,
    /// Links of this session: (remote handle, link id).
    links: Vec<(u32, LinkId)>,
}

/// One AMQP connection, server role. See the module doc.
pub struct Connection {
    cfg: ConnectionConfig,
    state: State,
    rx: Vec<u8>,
    transmit: Vec<u8>,
    events: VecDeque<Event>,
    user: Option<String>,
    our_open_sent: bool,
    /// Limit for frames we send (the peer's max-frame-size).
    peer_max_frame: u32,
    channel_max: u16,
    heartbeat_ms: Option<u64>,
    started_ms: u64,
    last_rx_ms: u64,
    last_heartbeat_ms: u64,
    sessions: Vec<Session>,
    links: BTreeMap<LinkId, Link>,
    next_link_id: LinkId,
    /// Our unsettled outgoing deliveries: (local channel, delivery id) -> (link, tag).
    unsettled_out: BTreeMap<(u16, u32), (LinkId, u64)>,
    unsettled_in_count: usize,
    /// Bytes held in incomplete incoming deliveries (all links).
    partial_bytes: usize,
    closed_error: Option<ConnError>,
}

type Res = Result<(), ConnError>;

fn err(condition: &'static str, description: impl Into<String>) -> ConnError {
    ConnError {
        condition,
        description: description.into(),
    }
}

impl Connection {
    /// A new server-side connection, accepted at `now_ms`.
    pub fn new(mut cfg: ConnectionConfig, now_ms: u64) -> Connection {
        cfg.max_frame_size = cfg.max_frame_size.max(MIN_MAX_FRAME_SIZE);
        cfg.link_credit = cfg.link_credit.max(1);
        cfg.session_window = cfg.session_window.max(1);
        Connection {
            cfg,
            state: State::Header { sasl_done: false },
            rx: Vec::new(),
            transmit: Vec::new(),
            events: VecDeque::new(),
            user: None,
            our_open_sent: false,
            peer_max_frame: MIN_MAX_FRAME_SIZE,
            channel_max: 0,
            heartbeat_ms: None,
            started_ms: now_ms,
            last_rx_ms: now_ms,
            last_heartbeat_ms: now_ms,
            sessions: Vec::new(),
            links: BTreeMap::new(),
            next_link_id: 0,
            unsettled_out: BTreeMap::new(),
            unsettled_in_count: 0,
            partial_bytes: 0,
            closed_error: None,
        }
    }

    /// The connection is over: flush the transmit buffer, then drop the socket.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the client's open has been answered (and the connection not closed).
    pub fn is_open(&self) -> bool {
        self.state == State::Opened
    }

    /// The SASL PLAIN user, once authenticated.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Why we closed, if we did.
    pub fn close_error(&self) -> Option<&ConnError> {
        self.closed_error.as_ref()
    }

    /// A consumer link's current credit (0 for an unknown link).
    pub fn credit(&self, link: LinkId) -> u32 {
        self.links.get(&link).map_or(0, |l| l.credit)
    }

    /// Unsettled deliveries, both directions.
    pub fn unsettled(&self) -> usize {
        self.unsettled_out.len() + self.unsettled_in_count
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether bytes wait to be sent.
    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// Appends the bytes to send to `out` (and forgets them).
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.transmit);
        self.transmit.clear();
    }

    /// Hands the bytes to send to the driver and takes `spare` (cleared) as the next buffer.
    pub fn take_transmit(&mut self, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        std::mem::replace(&mut self.transmit, spare)
    }

    /// When [`Connection::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::Closed => None,
            State::Opened => {
                let idle = (self.cfg.idle_timeout_ms > 0).then(|| {
                    self.last_rx_ms
                        .saturating_add(u64::from(self.cfg.idle_timeout_ms))
                });
                let hb = self
                    .heartbeat_ms
                    .map(|h| self.last_heartbeat_ms.saturating_add(h));
                match (idle, hb) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            _ => Some(self.started_ms.saturating_add(self.cfg.open_timeout_ms)),
        }
    }

    /// Fires the timers due at `now_ms`: the handshake deadline, our idle time-out (closes
    /// with `amqp:resource-limit-exceeded`) and heartbeats.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        match self.state {
            State::Closed => {}
            State::Opened => {
                if self.cfg.idle_timeout_ms > 0
                    && now_ms
                        >= self
                            .last_rx_ms
                            .saturating_add(u64::from(self.cfg.idle_timeout_ms))
                {
                    let e = err(
                        condition::RESOURCE_LIMIT_EXCEEDED,
                        format!(
                            "idle time-out: nothing received for {} ms (lior's idle-time-out)",
                            now_ms - self.last_rx_ms
                        ),
                    );
                    self.fail(e);
                    return;
                }
                if let Some(h) = self.heartbeat_ms {
                    if now_ms >= self.last_heartbeat_ms.saturating_add(h) {
                        self.transmit.extend_from_slice(&EMPTY_FRAME);
                        self.last_heartbeat_ms = now_ms;
                    }
                }
            }
            _ => {
                if now_ms >= self.started_ms.saturating_add(self.cfg.open_timeout_ms) {
                    let e = err(
                        condition::RESOURCE_LIMIT_EXCEEDED,
                        format!(
                            "handshake not complete {} ms after the connection started",
                            self.cfg.open_timeout_ms
                        ),
                    );
                    self.fail(e);
                }
            }
        }
    }

    /// The TCP connection was lost (read 0, reset): every link is detached (its unsettled
    /// messages listed) and the connection is closed.
    pub fn connection_lost(&mut self) {
        if self.state != State::Closed {
            self.detach_all(None);
            self.state = State::Closed;
            self.push(Event::Closed {
                by_peer: true,
                error: Some(ErrorInfo {
                    condition: condition::CONNECTION_FORCED.to_string(),
                    description: Some("the TCP connection was lost".to_string()),
                }),
            });
        }
    }

    /// Closes the connection from our side (e.g. lior shutting down), with an optional error.
    pub fn close(&mut self, error: Option<(&'static str, &str)>) {
        if self.state == State::Closed {
            return;
        }
        match error {
            Some((c, d)) => {
                self.fail(err(c, d));
            }
            None => {
                if self.our_open_sent {
                    self.send_perf(0, &Performative::Close(None));
                }
                self.detach_all(None);
                self.state = State::Closed;
                self.push(Event::Closed {
                    by_peer: false,
                    error: None,
                });
            }
        }
    }

    /// Feeds received bytes. `Err` means the connection closed on a violation (or failed
    /// authentication): the error went to the peer; log it, flush the transmit buffer and drop
    /// the socket. Bytes after close are ignored.
    pub fn handle_bytes(&mut self, now_ms: u64, bytes: &[u8]) -> Res {
        if self.state == State::Closed {
            return Ok(());
        }
        self.last_rx_ms = now_ms;
        let mut rx = std::mem::take(&mut self.rx);
        rx.extend_from_slice(bytes);
        let mut used = 0;
        let r = loop {
            if self.state == State::Closed {
                break Ok(());
            }
            let rest = &rx[used..];
            if let State::Header { sasl_done } = self.state {
                match ProtocolHeader::parse(rest) {
                    Ok(None) => break Ok(()),
                    Ok(Some(h)) => {
                        used += 8;
                        if let Err(e) = self.on_header(h, sasl_done) {
                            break Err(e);
                        }
                    }
                    Err(e) => {
                        let ours = self.preferred_header(sasl_done);
                        self.transmit.extend_from_slice(&ours);
                        break Err(self.fail(err(
                            condition::FRAMING_ERROR,
                            format!("{e}: not an AMQP protocol header"),
                        )));
                    }
                }
                continue;
            }
            match frame_len(rest, self.cfg.max_frame_size) {
                Ok(Some(n)) if n <= rest.len() => {
                    used += n;
                    if let Err(e) = self.on_frame(&rest[..n]) {
                        break Err(e);
                    }
                }
                Ok(_) => break Ok(()),
                Err(e) => {
                    let e = err(e.condition(), e.to_string());
                    break Err(self.fail(e));
                }
            }
        };
        if self.state == State::Closed {
            rx.clear();
        } else {
            rx.drain(..used);
            self.reopen_windows();
        }
        self.rx = rx;
        if r.is_ok() && self.events.len() > MAX_EVENTS {
            return Err(self.fail(err(
                condition::RESOURCE_LIMIT_EXCEEDED,
                format!("more than MAX_EVENTS ({MAX_EVENTS}) events not polled"),
            )));
        }
        r
    }

    fn preferred_header(&self, sasl_done: bool) -> [u8; 8] {
        if self.cfg.sasl.is_some() && !sasl_done {
            SASL_HEADER
        } else {
            AMQP_HEADER
        }
    }

    fn on_header(&mut self, h: ProtocolHeader, sasl_done: bool) -> Res {
        if !sasl_done
            && h.to_bytes() == AMQP_HEADER
            && self.cfg.sasl.as_ref().is_some_and(|s| s.anonymous)
        {
            // A client without a SASL layer (rhea's default) where ANONYMOUS is offered: the
            // same access as SASL ANONYMOUS, so it is taken as that.
            self.transmit.extend_from_slice(&AMQP_HEADER);
            self.state = State::AwaitOpen;
            return Ok(());
        }
        let ours = self.preferred_header(sasl_done);
        self.transmit.extend_from_slice(&ours);
        if h.to_bytes() != ours {
            let what = match (h.protocol_id, ours == SASL_HEADER) {
                (0, true) => "lior requires SASL (AMQP 3 1 0 0) first",
                (3, false) if sasl_done => "SASL is already done: AMQP 0 1 0 0 expected",
                (3, false) => "SASL is not configured: AMQP 0 1 0 0 expected",
                (2, _) => "TLS (AMQP 2 1 0 0) is not offered",
                _ => "unsupported protocol id or version (lior speaks 1.0.0)",
            };
            return Err(self.fail(err(
                condition::NOT_IMPLEMENTED,
                format!("protocol header {:?}: {what}", h.to_bytes()),
            )));
        }
        if ours == SASL_HEADER {
            let sasl = self.cfg.sasl.clone().unwrap_or(SaslConfig {
                anonymous: false,
                plain: None,
            });
            let mut mechs: Vec<&str> = Vec::with_capacity(2);
            if sasl.plain.is_some() {
                mechs.push(super::sasl::PLAIN);
            }
            if sasl.anonymous {
                mechs.push(super::sasl::ANONYMOUS);
            }
            if mechs.is_empty() {
                return Err(self.fail(err(
                    condition::INTERNAL_ERROR,
                    "SASL configured with no mechanism: enable anonymous or plain",
                )));
            }
            let f = SaslFrame::Mechanisms(Symbols::Slice(&mechs));
            let _ = encode_sasl_frame(&mut self.transmit, &f);
            self.state = State::SaslInit;
        } else {
            self.state = State::AwaitOpen;
        }
        Ok(())
    }

    fn sasl_outcome(&mut self, c: u8) {
        let _ = encode_sasl_frame(
            &mut self.transmit,
            &SaslFrame::Outcome(SaslOutcome {
                code: c,
                additional_data: None,
            }),
        );
    }

    fn on_sasl(&mut self, f: &super::frame::Frame<'_>) -> Res {
        let init = match f.sasl() {
            Ok(SaslFrame::Init(i)) => i,
            Ok(other) => {
                self.sasl_outcome(code::SYS_PERM);
                return Err(self.fail(err(
                    condition::NOT_ALLOWED,
                    format!("SASL: sasl-init expected, got {other:?}"),
                )));
            }
            Err(e) => {
                self.sasl_outcome(code::SYS_PERM);
                let e = err(e.condition(), format!("SASL: {e}"));
                return Err(self.fail(e));
            }
        };
        let sasl = self.cfg.sasl.clone();
        let ok = match (parse_initial_response(&init), sasl) {
            (Ok(SaslCredentials::Anonymous { .. }), Some(s)) if s.anonymous => Ok(None),
            (
                Ok(SaslCredentials::Plain {
                    authzid,
                    authcid,
                    password,
                }),
                Some(SaslConfig {
                    plain: Some(check), ..
                }),
            ) => {
                if authzid.is_some_and(|z| z != authcid) {
                    Err(format!(
                        "PLAIN: user {authcid:?} may not act as {:?}",
                        authzid.unwrap_or("")
                    ))
                } else if check(authcid, password) {
                    Ok(Some(authcid.to_string()))
                } else {
                    Err(format!("PLAIN: bad user name or password for {authcid:?}"))
                }
            }
            (Err(e), _) => Err(format!("SASL {}: {e}", init.mechanism)),
            _ => Err(format!("SASL mechanism {:?} not offered", init.mechanism)),
        };
        match ok {
            Ok(user) => {
                self.sasl_outcome(code::OK);
                self.user = user;
                self.state = State::Header { sasl_done: true };
                Ok(())
            }
            Err(d) => {
                self.sasl_outcome(code::AUTH);
                Err(self.fail(err(condition::UNAUTHORIZED_ACCESS, d)))
            }
        }
    }

    fn on_frame(&mut self, bytes: &[u8]) -> Res {
        let f = match parse_frame(bytes, self.cfg.max_frame_size) {
            Ok(f) => f,
            Err(e) => return Err(self.fail(err(e.condition(), e.to_string()))),
        };
        if self.state == State::SaslInit {
            return self.on_sasl(&f);
        }
        if f.header.frame_type != FrameType::Amqp {
            return Err(self.fail(err(
                condition::FRAMING_ERROR,
                "a SASL frame after the SASL layer",
            )));
        }
        let (perf, payload) = match f.performative() {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(()), // heartbeat
            Err(e) => return Err(self.fail(err(e.condition(), e.to_string()))),
        };
        let channel = f.header.channel;
        if self.state == State::AwaitOpen {
            return match perf {
                Performative::Open(o) => self.on_open(&o),
                p => Err(self.fail(err(
                    condition::NOT_ALLOWED,
                    format!("{} before open", p.name()),
                ))),
            };
        }
        match perf {
            Performative::Open(_) => Err(self.fail(err(condition::NOT_ALLOWED, "a second open"))),
            Performative::Close(e) => {
                self.send_perf(0, &Performative::Close(None));
                self.detach_all(None);
                self.state = State::Closed;
                self.push(Event::Closed {
                    by_peer: true,
                    error: e.as_ref().map(ErrorInfo::from_amqp),
                });
                Ok(())
            }
            Performative::Begin(b) => self.on_begin(channel, &b),
            p => {
                let Some(si) = self
                    .sessions
                    .iter()
                    .position(|s| s.remote_channel == channel)
                else {
                    return Err(self.fail(err(
                        condition::NOT_ALLOWED,
                        format!("{} on channel {channel}, which has no session", p.name()),
                    )));
                };
                match p {
                    Performative::Attach(a) => self.on_attach(si, &a),
                    Performative::Flow(fl) => self.on_flow(si, &fl),
                    Performative::Transfer(t) => self.on_transfer(si, &t, payload),
                    Performative::Disposition(d) => self.on_disposition(si, &d),
                    Performative::Detach(d) => self.on_detach(si, &d),
                    Performative::End(e) => {
                        self.on_end(si, e.as_ref());
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    fn send_open(&mut self) {
        let mut o = Open::new(&self.cfg.container_id);
        o.max_frame_size = self.cfg.max_frame_size;
        o.channel_max = MAX_SESSIONS - 1;
        o.idle_time_out = (self.cfg.idle_timeout_ms > 0).then_some(self.cfg.idle_timeout_ms);
        let p = Performative::Open(Box::new(o));
        let _ = encode_amqp_frame(&mut self.transmit, 0, &p, &[], MIN_MAX_FRAME_SIZE);
        self.our_open_sent = true;
    }

    fn on_open(&mut self, o: &Open<'_>) -> Res {
        self.send_open();
        if o.max_frame_size < MIN_MAX_FRAME_SIZE {
            return Err(self.fail(err(
                condition::INVALID_FIELD,
                format!(
                    "open.max-frame-size {} is below the minimum 512",
                    o.max_frame_size
                ),
            )));
        }
        self.peer_max_frame = o.max_frame_size;
        self.channel_max = o.channel_max.min(MAX_SESSIONS - 1);
        self.heartbeat_ms = o
            .idle_time_out
            .filter(|&t| t > 0)
            .map(|t| (u64::from(t) / 2).max(MIN_HEARTBEAT_MS));
        self.last_heartbeat_ms = self.last_rx_ms;
        self.state = State::Opened;
        self.push(Event::Opened {
            container_id: o.container_id.to_string(),
            hostname: o.hostname.map(str::to_string),
            user: self.user.clone(),
        });
        Ok(())
    }

    fn on_begin(&mut self, channel: u16, b: &Begin<'_>) -> Res {
        if b.remote_channel.is_some() {
            return Err(self.fail(err(
                condition::NOT_ALLOWED,
                format!("begin on channel {channel} answers a begin lior never sent"),
            )));
        }
        if channel > self.channel_max {
            return Err(self.fail(err(
                condition::NOT_ALLOWED,
                format!(
                    "begin on channel {channel}, above the negotiated channel-max {}",
                    self.channel_max
                ),
            )));
        }
        if self.sessions.iter().any(|s| s.remote_channel == channel) {
            return Err(self.fail(err(
                condition::NOT_ALLOWED,
                format!("begin on channel {channel}, which already has a session"),
            )));
        }
        if self.sessions.len() >= usize::from(MAX_SESSIONS) {
            return Err(self.fail(err(
                condition::RESOURCE_LIMIT_EXCEEDED,
                format!("more than MAX_SESSIONS ({MAX_SESSIONS}) sessions"),
            )));
        }
        let local = (0..MAX_SESSIONS)
            .find(|c| !self.sessions.iter().any(|s| s.local_channel == *c))
            .unwrap_or(0);
        let s = Session {
            local_channel: local,
            remote_channel: channel,
            next_incoming_id: b.next_outgoing_id,
            incoming_window: self.cfg.session_window,
            next_outgoing_id: 0,
            next_delivery_id: 0,
            remote_incoming_window: b.incoming_window,
            handle_max: MAX_LINKS_PER_SESSION - 1,
            links: Vec::new(),
        };
        let reply = Begin {
            remote_channel: Some(channel),
            next_outgoing_id: 0,
            incoming_window: s.incoming_window,
            outgoing_window: u32::MAX,
            handle_max: s.handle_max,
            offered_capabilities: Symbols::None,
            desired_capabilities: Symbols::None,
            properties: None,
        };
        self.sessions.push(s);
        self.send_perf(local, &Performative::Begin(reply));
        Ok(())
    }

    fn on_end(&mut self, si: usize, e: Option<&AmqpError<'_>>) {
        let s = self.sessions.remove(si);
        let error = e.map(ErrorInfo::from_amqp);
        for (_, id) in &s.links {
            self.remove_link(*id, false, error.clone());
        }
        self.send_perf(s.local_channel, &Performative::End(None));
    }

    fn link_of(&self, si: usize, remote_handle: u32) -> Option<LinkId> {
        self.sessions[si]
            .links
            .iter()
            .find(|(h, _)| *h == remote_handle)
            .map(|(_, id)| *id)
    }

    fn on_attach(&mut self, si: usize, a: &Attach<'_>) -> Res {
        let s = &self.sessions[si];
        if a.handle > s.handle_max {
            return Err(self.fail(err(
                condition::NOT_ALLOWED,
                format!(
                    "attach handle {} above the session's handle-max {}",
                    a.handle, s.handle_max
                ),
            )));
        }
        if self.link_of(si, a.handle).is_some() {
            return Err(self.fail(err(
                condition::HANDLE_IN_USE,
                format!("attach on handle {}, already attached", a.handle),
            )));
        }
        if self.links.len() >= MAX_LINKS {
            return Err(self.fail(err(
                condition::RESOURCE_LIMIT_EXCEEDED,
                format!("more than MAX_LINKS ({MAX_LINKS}) links"),
            )));
        }
        let s = &self.sessions[si];
        let local_handle = (0..=s.handle_max)
            .find(|h| {
                !s.links
                    .iter()
                    .any(|(_, id)| self.links.get(id).is_some_and(|l| l.local_handle == *h))
            })
            .unwrap_or(0);
        let kind = match a.role {
            Role::Receiver => LinkKind::Consumer,
            Role::Sender => LinkKind::Producer,
        };
        let source = a.source.and_then(|s| s.address).map(str::to_string);
        let target = a.target.and_then(|t| t.address).map(str::to_string);
        let browse = a
            .source
            .is_some_and(|s| s.distribution_mode == Some("copy"));
        let presettled = a.snd_settle_mode == snd_settle_mode::SETTLED;
        let id = self.next_link_id;
        self.next_link_id = self.next_link_id.wrapping_add(1);
        let link = Link {
            channel: s.local_channel,
            local_handle,
            kind,
            state: LinkState::Pending,
            name: a.name.to_string(),
            source: source.clone(),
            target: target.clone(),
            browse,
            presettled,
            delivery_count: if kind == LinkKind::Producer {
                a.initial_delivery_count.unwrap_or(0)
            } else {
                0
            },
            credit: 0,
            drain: false,
            partial: None,
            unsettled_in: BTreeSet::new(),
        };
        self.sessions[si].links.push((a.handle, id));
        self.links.insert(id, link);
        self.push(Event::LinkAttached {
            link: id,
            kind,
            address: if kind == LinkKind::Consumer {
                source
            } else {
                target
            },
            name: a.name.to_string(),
            browse,
            presettled,
        });
        Ok(())
    }

    fn send_attach(&mut self, id: LinkId, refused: bool) {
        let Some(l) = self.links.get(&id) else { return };
        let role = match l.kind {
            LinkKind::Consumer => Role::Sender,
            LinkKind::Producer => Role::Receiver,
        };
        let mut a = Attach::new(&l.name, l.local_handle, role);
        a.snd_settle_mode = if l.presettled {
            snd_settle_mode::SETTLED
        } else {
            snd_settle_mode::MIXED
        };
        a.rcv_settle_mode = rcv_settle_mode::FIRST;
        let refused_consumer = refused && l.kind == LinkKind::Consumer;
        let refused_producer = refused && l.kind == LinkKind::Producer;
        a.source = (!refused_consumer).then(|| Source {
            address: l.source.as_deref(),
            distribution_mode: l.browse.then_some("copy"),
            ..Source::default()
        });
        a.target = (!refused_producer).then(|| Target {
            address: l.target.as_deref(),
            ..Target::default()
        });
        if l.kind == LinkKind::Consumer {
            a.initial_delivery_count = Some(l.delivery_count);
        } else {
            a.max_message_size = Some(self.cfg.max_message_size as u64);
        }
        let ch = l.channel;
        let p = Performative::Attach(Box::new(a));
        let max = self.peer_max_frame;
        let _ = encode_amqp_frame(&mut self.transmit, ch, &p, &[], max);
    }

    /// Accepts an attached link. A producer link gets its credit now; a consumer link's
    /// credit arrives as [`Event::Credit`] (at once if the client already granted some).
    pub fn accept_link(&mut self, link: LinkId) -> Result<(), CommandError> {
        if self.state == State::Closed {
            return Err(CommandError::Closed);
        }
        let l = self.links.get_mut(&link).ok_or(CommandError::UnknownLink)?;
        if l.state != LinkState::Pending {
            return Err(CommandError::WrongState);
        }
        l.state = LinkState::Attached;
        let (kind, credit, drain) = (l.kind, l.credit, l.drain);
        self.send_attach(link, false);
        match kind {
            LinkKind::Producer => self.top_up_credit(link, true),
            LinkKind::Consumer => {
                if credit > 0 || drain {
                    self.push(Event::Credit {
                        link,
                        credit,
                        drain,
                    });
                }
            }
        }
        Ok(())
    }

    /// Refuses an attached link (e.g. `amqp:not-found`, `amqp:unauthorized-access`): an attach
    /// without a terminus, then a detach with the error (Part 2 §2.6.3).
    pub fn refuse_link(
        &mut self,
        link: LinkId,
        condition: &str,
        description: &str,
    ) -> Result<(), CommandError> {
        if self.state == State::Closed {
            return Err(CommandError::Closed);
        }
        let l = self.links.get(&link).ok_or(CommandError::UnknownLink)?;
        if l.state != LinkState::Pending {
            return Err(CommandError::WrongState);
        }
        self.send_attach(link, true);
        self.send_detach(link, Some(AmqpError::new(condition, description)));
        Ok(())
    }

    /// Detaches (closes) an attached link from our side, e.g. its queue was deleted. Its
    /// unsettled messages come back in [`Event::LinkDetached`] when the client answers.
    pub fn close_link(
        &mut self,
        link: LinkId,
        condition: &str,
        description: &str,
    ) -> Result<(), CommandError> {
        if self.state == State::Closed {
            return Err(CommandError::Closed);
        }
        let l = self.links.get(&link).ok_or(CommandError::UnknownLink)?;
        if l.state != LinkState::Attached {
            return Err(CommandError::WrongState);
        }
        self.send_detach(link, Some(AmqpError::new(condition, description)));
        Ok(())
    }

    fn send_detach(&mut self, link: LinkId, error: Option<AmqpError<'_>>) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        l.state = LinkState::DetachSent;
        l.credit = 0;
        let (ch, h) = (l.channel, l.local_handle);
        self.send_perf(
            ch,
            &Performative::Detach(Detach {
                handle: h,
                closed: true,
                error,
            }),
        );
    }

    /// Sends one message on a consumer link. `tag` is yours: it comes back in
    /// [`Event::Disposition`] or in the `unsettled` list of [`Event::LinkDetached`]. A link
    /// the client made pre-settled sends settled whatever `settled` says. Returns the delivery
    /// id.
    pub fn send_message(
        &mut self,
        link: LinkId,
        tag: u64,
        payload: &[u8],
        settled: bool,
    ) -> Result<u32, SendError> {
        if self.state != State::Opened {
            return Err(SendError::Closed);
        }
        if self.transmit.len() > MAX_TRANSMIT_BYTES {
            return Err(SendError::TransmitFull);
        }
        let l = self.links.get(&link).ok_or(SendError::UnknownLink)?;
        if l.kind != LinkKind::Consumer || l.state != LinkState::Attached {
            return Err(SendError::UnknownLink);
        }
        if l.credit == 0 {
            return Err(SendError::NoCredit);
        }
        let settled = settled || l.presettled;
        if !settled && self.unsettled() >= self.cfg.max_unsettled {
            return Err(SendError::TooManyUnsettled);
        }
        let (ch, handle) = (l.channel, l.local_handle);
        let Some(si) = self.sessions.iter().position(|s| s.local_channel == ch) else {
            return Err(SendError::UnknownLink);
        };
        let s = &self.sessions[si];
        if s.remote_incoming_window == 0 {
            return Err(SendError::SessionWindow);
        }
        let delivery_id = s.next_delivery_id;
        let tag_bytes = tag.to_be_bytes();
        let mut t = Transfer::new(handle, delivery_id, &tag_bytes);
        t.settled = Some(settled);
        let frames = match t.encode_frames(&mut self.transmit, ch, payload, self.peer_max_frame) {
            Ok(n) => n as u32,
            Err(_) => return Err(SendError::TransmitFull),
        };
        let s = &mut self.sessions[si];
        s.next_delivery_id = s.next_delivery_id.wrapping_add(1);
        s.next_outgoing_id = s.next_outgoing_id.wrapping_add(frames);
        s.remote_incoming_window = s.remote_incoming_window.saturating_sub(frames);
        if let Some(l) = self.links.get_mut(&link) {
            l.credit -= 1;
            l.delivery_count = l.delivery_count.wrapping_add(1);
        }
        if !settled {
            self.unsettled_out.insert((ch, delivery_id), (link, tag));
        }
        Ok(delivery_id)
    }

    /// After an [`Event::Credit`] with `drain`: the caller sent all it had; the rest of the
    /// credit is spent (delivery-count advanced) and the client told so.
    pub fn drained(&mut self, link: LinkId) -> Result<(), CommandError> {
        if self.state != State::Opened {
            return Err(CommandError::Closed);
        }
        let l = self.links.get_mut(&link).ok_or(CommandError::UnknownLink)?;
        if l.kind != LinkKind::Consumer {
            return Err(CommandError::WrongState);
        }
        l.delivery_count = l.delivery_count.wrapping_add(l.credit);
        l.credit = 0;
        l.drain = false;
        self.send_link_flow(link, true);
        Ok(())
    }

    /// Settles a message received on a producer link (once it is stored). Returns `Ok(false)`
    /// when there was nothing to settle (already settled, or the link is gone).
    pub fn settle(
        &mut self,
        link: LinkId,
        delivery_id: u32,
        outcome: &Outcome,
    ) -> Result<bool, CommandError> {
        if self.state != State::Opened {
            return Err(CommandError::Closed);
        }
        let Some(l) = self.links.get_mut(&link) else {
            return Ok(false);
        };
        if !l.unsettled_in.remove(&delivery_id) {
            return Ok(false);
        }
        self.unsettled_in_count -= 1;
        let ch = l.channel;
        let d = Disposition {
            role: Role::Receiver,
            first: delivery_id,
            last: None,
            settled: true,
            state: Some(outcome.to_state()),
            batchable: false,
        };
        self.send_perf(ch, &Performative::Disposition(d));
        self.top_up_credit(link, false);
        Ok(true)
    }

    fn send_perf(&mut self, channel: u16, p: &Performative<'_>) {
        let max = self.peer_max_frame;
        let _ = encode_amqp_frame(&mut self.transmit, channel, p, &[], max);
    }

    fn session_flow(&self, si: usize) -> Flow<'static> {
        let s = &self.sessions[si];
        Flow {
            next_incoming_id: Some(s.next_incoming_id),
            incoming_window: s.incoming_window,
            next_outgoing_id: s.next_outgoing_id,
            outgoing_window: u32::MAX,
            handle: None,
            delivery_count: None,
            link_credit: None,
            available: None,
            drain: false,
            echo: false,
            properties: None,
        }
    }

    fn send_link_flow(&mut self, link: LinkId, echo_drain: bool) {
        let Some(l) = self.links.get(&link) else {
            return;
        };
        let Some(si) = self
            .sessions
            .iter()
            .position(|s| s.local_channel == l.channel)
        else {
            return;
        };
        let mut f = self.session_flow(si);
        f.handle = Some(l.local_handle);
        f.delivery_count = Some(l.delivery_count);
        f.link_credit = Some(l.credit);
        f.drain = echo_drain && l.kind == LinkKind::Consumer;
        let ch = l.channel;
        self.send_perf(ch, &Performative::Flow(f));
    }

    /// Keeps a producer link's credit at `link_credit` minus its unsettled deliveries,
    /// granting only when at least half of it is missing (or `force`).
    fn top_up_credit(&mut self, link: LinkId, force: bool) {
        let room = self.cfg.max_unsettled.saturating_sub(self.unsettled()) as u32;
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if l.kind != LinkKind::Producer || l.state != LinkState::Attached {
            return;
        }
        let target = (self
            .cfg
            .link_credit
            .saturating_sub(l.unsettled_in.len() as u32))
        .min(room);
        if target > l.credit && (force || target - l.credit >= self.cfg.link_credit.div_ceil(2)) {
            l.credit = target;
            self.send_link_flow(link, false);
        }
    }

    fn on_flow(&mut self, si: usize, f: &Flow<'_>) -> Res {
        let s = &mut self.sessions[si];
        let was_shut = s.remote_incoming_window == 0;
        s.remote_incoming_window = match f.next_incoming_id {
            Some(n) => n
                .wrapping_add(f.incoming_window)
                .wrapping_sub(s.next_outgoing_id),
            None => f.incoming_window,
        };
        if s.remote_incoming_window > f.incoming_window {
            // The peer's next-incoming-id is ahead of what we sent: its window cannot cover it.
            s.remote_incoming_window = f.incoming_window;
        }
        let reopened = was_shut && s.remote_incoming_window > 0;
        let Some(h) = f.handle else {
            if f.echo {
                let fl = self.session_flow(si);
                let ch = self.sessions[si].local_channel;
                self.send_perf(ch, &Performative::Flow(fl));
            }
            if reopened {
                self.recredit_session(si);
            }
            return Ok(());
        };
        let Some(id) = self.link_of(si, h) else {
            return Err(self.fail(err(
                condition::UNATTACHED_HANDLE,
                format!("flow on handle {h}, which is not attached"),
            )));
        };
        let Some(l) = self.links.get_mut(&id) else {
            return Ok(());
        };
        match l.kind {
            LinkKind::Consumer => {
                // Part 2 §2.6.7: credit = delivery-count(rcv) + link-credit(rcv) - ours.
                let dc = f.delivery_count.unwrap_or(0);
                let lc = f.link_credit.unwrap_or(0);
                let credit = dc.wrapping_add(lc).wrapping_sub(l.delivery_count);
                l.credit = if credit > lc { 0 } else { credit };
                l.drain = f.drain;
                let (credit, drain, attached) = (l.credit, l.drain, l.state == LinkState::Attached);
                if attached {
                    self.push(Event::Credit {
                        link: id,
                        credit,
                        drain,
                    });
                }
                if f.echo {
                    self.send_link_flow(id, false);
                }
            }
            LinkKind::Producer => {
                if let Some(dc) = f.delivery_count {
                    l.delivery_count = dc;
                }
                if f.echo {
                    self.send_link_flow(id, false);
                }
            }
        }
        if reopened {
            self.recredit_session(si);
        }
        Ok(())
    }

    fn recredit_session(&mut self, si: usize) {
        let ids: Vec<LinkId> = self.sessions[si].links.iter().map(|(_, id)| *id).collect();
        for id in ids {
            if let Some(l) = self.links.get(&id) {
                if l.kind == LinkKind::Consumer && l.state == LinkState::Attached && l.credit > 0 {
                    let (credit, drain) = (l.credit, l.drain);
                    self.push(Event::Credit {
                        link: id,
                        credit,
                        drain,
                    });
                }
            }
        }
    }

    fn on_transfer(&mut self, si: usize, t: &Transfer<'_>, payload: &[u8]) -> Res {
        let s = &mut self.sessions[si];
        if s.incoming_window == 0 {
            let rc = s.remote_channel;
            return Err(self.fail(err(
                condition::WINDOW_VIOLATION,
                format!("transfer on channel {rc} beyond lior's incoming-window"),
            )));
        }
        s.incoming_window -= 1;
        s.next_incoming_id = s.next_incoming_id.wrapping_add(1);
        let Some(id) = self.link_of(si, t.handle) else {
            return Err(self.fail(err(
                condition::UNATTACHED_HANDLE,
                format!("transfer on handle {}, which is not attached", t.handle),
            )));
        };
        let max_msg = self.cfg.max_message_size;
        let room = self.cfg.max_unsettled.saturating_sub(self.unsettled());
        let Some(l) = self.links.get_mut(&id) else {
            return Ok(());
        };
        if l.kind != LinkKind::Producer {
            return Err(self.fail(err(
                condition::NOT_ALLOWED,
                format!(
                    "transfer on handle {}, a link where the client is the receiver",
                    t.handle
                ),
            )));
        }
        match &mut l.partial {
            None => {
                let Some(delivery_id) = t.delivery_id else {
                    return Err(self.fail(err(
                        condition::INVALID_FIELD,
                        format!(
                            "transfer on handle {} starts a delivery without a delivery-id",
                            t.handle
                        ),
                    )));
                };
                if l.state == LinkState::DetachSent {
                    // In flight when we detached: dropped, the client sees the detach.
                    return Ok(());
                }
                if l.credit == 0 {
                    return Err(self.fail(err(
                        condition::TRANSFER_LIMIT_EXCEEDED,
                        format!("transfer on handle {} without link credit", t.handle),
                    )));
                }
                let settled = t.settled.unwrap_or(false) || l.presettled;
                if !settled && room == 0 {
                    return Err(self.fail(err(
                        condition::RESOURCE_LIMIT_EXCEEDED,
                        "more unsettled deliveries than max_unsettled",
                    )));
                }
                l.credit -= 1;
                l.delivery_count = l.delivery_count.wrapping_add(1);
                l.partial = Some(Partial {
                    delivery_id,
                    settled,
                    payload: Vec::new(),
                });
            }
            Some(p) => {
                if t.delivery_id.is_some_and(|d| d != p.delivery_id) {
                    let d = p.delivery_id;
                    return Err(self.fail(err(
                        condition::NOT_ALLOWED,
                        format!(
                            "transfer with delivery-id {:?} while delivery {d} on handle {} is \
                             incomplete",
                            t.delivery_id, t.handle
                        ),
                    )));
                }
                if t.settled == Some(true) {
                    p.settled = true;
                }
            }
        }
        let Some(p) = l.partial.as_mut() else {
            return Ok(());
        };
        if t.aborted {
            self.partial_bytes -= p.payload.len();
            l.partial = None;
            self.after_transfer(si, id);
            return Ok(());
        }
        if p.payload.len() + payload.len() > max_msg {
            let d = p.delivery_id;
            return Err(self.fail(err(
                condition::MESSAGE_SIZE_EXCEEDED,
                format!(
                    "delivery {d} on handle {} is larger than {max_msg} bytes",
                    t.handle
                ),
            )));
        }
        if self.partial_bytes + payload.len() > MAX_PARTIAL_BYTES {
            return Err(self.fail(err(
                condition::RESOURCE_LIMIT_EXCEEDED,
                format!(
                    "incomplete deliveries on this connection hold more than \
                     MAX_PARTIAL_BYTES ({MAX_PARTIAL_BYTES})"
                ),
            )));
        }
        p.payload.extend_from_slice(payload);
        self.partial_bytes += payload.len();
        if !t.more {
            let Some(p) = l.partial.take() else {
                return Ok(());
            };
            self.partial_bytes -= p.payload.len();
            if !p.settled {
                l.unsettled_in.insert(p.delivery_id);
                self.unsettled_in_count += 1;
            }
            self.push(Event::Message {
                link: id,
                delivery_id: p.delivery_id,
                settled: p.settled,
                payload: p.payload,
            });
        }
        self.after_transfer(si, id);
        Ok(())
    }

    fn after_transfer(&mut self, _si: usize, link: LinkId) {
        self.top_up_credit(link, false);
    }

    /// Once per received batch: reopens the incoming window of each session that used half
    /// of it. (Per batch, not per frame: a peer that sends more than the window it was told
    /// in one go is caught with `amqp:session:window-violation`.)
    fn reopen_windows(&mut self) {
        for si in 0..self.sessions.len() {
            if self.sessions[si].incoming_window <= self.cfg.session_window / 2 {
                self.sessions[si].incoming_window = self.cfg.session_window;
                let f = self.session_flow(si);
                let ch = self.sessions[si].local_channel;
                self.send_perf(ch, &Performative::Flow(f));
            }
        }
    }

    fn on_disposition(&mut self, si: usize, d: &Disposition<'_>) -> Res {
        let ch = self.sessions[si].local_channel;
        let first = d.first;
        let last = d.last();
        match d.role {
            Role::Receiver => {
                // About our deliveries (the client's outcomes).
                let outcome = d.state.as_ref().and_then(Outcome::from_state);
                if outcome.is_none() && !d.settled {
                    return Ok(()); // a `received` state or nothing: not terminal
                }
                // Walks the table, not the range (a range may be huge), without allocating.
                let mut any = false;
                let spans = if first <= last {
                    [(first, last), (1, 0)]
                } else {
                    [(first, u32::MAX), (0, last)]
                };
                for (lo, hi) in spans {
                    if lo > hi {
                        continue;
                    }
                    while let Some((&k, &(link, tag))) =
                        self.unsettled_out.range((ch, lo)..=(ch, hi)).next()
                    {
                        self.unsettled_out.remove(&k);
                        any = true;
                        self.push(Event::Disposition {
                            link,
                            tag,
                            state: outcome.clone(),
                        });
                    }
                }
                if !d.settled && any {
                    let reply = Disposition {
                        role: Role::Sender,
                        first,
                        last: d.last,
                        settled: true,
                        state: None,
                        batchable: false,
                    };
                    self.send_perf(ch, &Performative::Disposition(reply));
                }
            }
            Role::Sender => {
                // The client settles its own deliveries: forget them.
                if !d.settled {
                    return Ok(());
                }
                let ids: Vec<LinkId> = self.sessions[si].links.iter().map(|(_, i)| *i).collect();
                for id in ids {
                    if let Some(l) = self.links.get_mut(&id) {
                        let gone: Vec<u32> = if first <= last {
                            l.unsettled_in.range(first..=last).copied().collect()
                        } else {
                            l.unsettled_in
                                .iter()
                                .copied()
                                .filter(|x| *x >= first || *x <= last)
                                .collect()
                        };
                        for g in gone {
                            l.unsettled_in.remove(&g);
                            self.unsettled_in_count -= 1;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn on_detach(&mut self, si: usize, d: &Detach<'_>) -> Res {
        let Some(id) = self.link_of(si, d.handle) else {
            return Err(self.fail(err(
                condition::UNATTACHED_HANDLE,
                format!("detach on handle {}, which is not attached", d.handle),
            )));
        };
        let we_detached = self
            .links
            .get(&id)
            .is_some_and(|l| l.state == LinkState::DetachSent);
        if !we_detached {
            if let Some(l) = self.links.get(&id) {
                let (ch, h, pending) = (l.channel, l.local_handle, l.state == LinkState::Pending);
                if pending {
                    // Detached before the broker answered: answer the attach first.
                    self.send_attach(id, true);
                }
                self.send_perf(
                    ch,
                    &Performative::Detach(Detach {
                        handle: h,
                        closed: d.closed,
                        error: None,
                    }),
                );
            }
        }
        self.sessions[si].links.retain(|(h, _)| *h != d.handle);
        self.remove_link(id, d.closed, d.error.as_ref().map(ErrorInfo::from_amqp));
        Ok(())
    }

    /// Forgets a link and reports it, with its unsettled tags.
    fn remove_link(&mut self, id: LinkId, closed: bool, error: Option<ErrorInfo>) {
        let Some(l) = self.links.remove(&id) else {
            return;
        };
        self.unsettled_in_count -= l.unsettled_in.len();
        if let Some(p) = &l.partial {
            self.partial_bytes -= p.payload.len();
        }
        let keys: Vec<(u16, u32)> = self
            .unsettled_out
            .iter()
            .filter(|(_, (lid, _))| *lid == id)
            .map(|(k, _)| *k)
            .collect();
        let mut unsettled = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some((_, tag)) = self.unsettled_out.remove(&k) {
                unsettled.push(tag);
            }
        }
        self.push(Event::LinkDetached {
            link: id,
            closed,
            error,
            unsettled,
        });
    }

    fn detach_all(&mut self, error: Option<ErrorInfo>) {
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            self.remove_link(id, false, error.clone());
        }
        self.sessions.clear();
    }

    fn push(&mut self, e: Event) {
        self.events.push_back(e);
    }

    /// Closes on our side with `e`: the error goes to the peer as it can at this stage (close
    /// after our open; before the AMQP layer, the header or sasl-outcome already queued says
    /// it), every link is detached, and `Closed` is reported.
    fn fail(&mut self, e: ConnError) -> ConnError {
        if self.state == State::Closed {
            return e;
        }
        if matches!(self.state, State::AwaitOpen | State::Opened) {
            if !self.our_open_sent {
                self.send_open();
            }
            let max = if self.state == State::Opened {
                self.peer_max_frame
            } else {
                MIN_MAX_FRAME_SIZE
            };
            let mut desc = e.description.clone();
            // A close must fit the peer's frame limit: trim a long description.
            if desc.len() > 400 {
                let mut cut = 400;
                while !desc.is_char_boundary(cut) {
                    cut -= 1;
                }
                desc.truncate(cut);
            }
            let p = Performative::Close(Some(AmqpError::new(e.condition, &desc)));
            let _ = encode_amqp_frame(&mut self.transmit, 0, &p, &[], max);
        }
        let info = ErrorInfo {
            condition: e.condition.to_string(),
            description: Some(e.description.clone()),
        };
        self.detach_all(Some(info.clone()));
        self.state = State::Closed;
        self.closed_error = Some(e.clone());
        self.push(Event::Closed {
            by_peer: false,
            error: Some(info),
        });
        e
    }
}
