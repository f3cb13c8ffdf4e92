//! The AMQP 1.0 side of `lior bench`: blocking producer and consumer connections built on
//! lior's own codec ([`crate::amqp`]), one thread per connection, so the same client measures
//! lior and any other AMQP 1.0 broker (RabbitMQ's `rabbitmq_amqp1_0` plugin) with the same
//! settings.
//!
//! Client side only, and only what a load generator needs: protocol header, SASL ANONYMOUS or
//! PLAIN, open, begin, one attach, flow (link credit and the session window), transfer,
//! disposition, and detach/end/close at the end. A refused attach (the peer answers with no
//! source or target and detaches with an error) and a connection the peer closes end the run
//! with the peer's condition and description.
//!
//! - A **producer** ([`produce`]) sends unsettled transfers as fast as the link credit and the
//!   peer's session window allow, and counts a message when `accepted` comes back; latency is
//!   from send to `accepted`. The body carries [`client::STAMP_TAG`] and the send time, as the
//!   MS-MQQB bench does, so a consumer measures end to end.
//! - A **consumer** ([`consume`]) keeps `credit` granted, accepts what it receives in one
//!   disposition per read (or takes it pre-settled), and records the latency from the send time
//!   in the body to its arrival.

use std::io::{ErrorKind as IoKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::amqp::frame::{
    encode_amqp_frame, encode_sasl_frame, frame_len, parse_frame, FrameType, AMQP_HEADER,
    SASL_HEADER,
};
use crate::amqp::message::{encode_data, Header};
use crate::amqp::performatives::{
    rcv_settle_mode, snd_settle_mode, Attach, Begin, DeliveryState, Detach, Disposition, Flow,
    Open, Performative, Role, Source, Target, Transfer,
};
use crate::amqp::sasl::{code as sasl_code, SaslFrame, SaslInit, ANONYMOUS, PLAIN};
use crate::amqp::types::{descriptor, Decoder, Symbols, Value};

use super::client::{new_histogram, unix_ns, STAMP_LEN, STAMP_TAG};
use super::report::Latency;

/// The max-frame-size this client announces (and so the largest frame it reads).
const OUR_MAX_FRAME: u32 = 1 << 20;
/// Our session incoming window, in transfer frames; topped up when half is used.
const INCOMING_WINDOW: u32 = 1 << 20;
/// Send times of a producer's unsettled deliveries are kept in a ring this large; it also caps
/// what one producer has in flight, whatever credit the peer grants.
const PRODUCER_INFLIGHT_MAX: usize = 1 << 16;
/// How long connect, SASL, open, begin and attach may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a blocking read waits before the loop looks at its stop flag again.
const POLL: Duration = Duration::from_millis(50);
/// After the run stops, how long a producer waits for its in-flight messages to be accepted.
const PRODUCER_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message body the bench sends (the MSMQ maximum).
pub const BODY_MAX: usize = 4 << 20;

/// How a consumer settles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Settle {
    /// Unsettled deliveries, each accepted (at-least-once; the broker removes on accept).
    Accept,
    /// The broker sends them settled (snd-settle-mode settled; at-most-once).
    Presettled,
}

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// SASL PLAIN user and password; ANONYMOUS when `None`.
    pub plain: Option<(String, String)>,
}

impl Peer {
    pub fn resolve(text: &str, user: Option<&str>, password: Option<&str>) -> anyhow::Result<Peer> {
        let addr = text
            .to_socket_addrs()
            .map_err(|e| anyhow::anyhow!("--amqp {text}: cannot resolve: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("--amqp {text} resolves to no address"))?;
        let plain = match (user, password) {
            (Some(u), p) => Some((u.to_string(), p.unwrap_or_default().to_string())),
            (None, Some(_)) => anyhow::bail!("--amqp-password needs --amqp-user"),
            (None, None) => None,
        };
        Ok(Peer { addr, plain })
    }
}

/// Counters every AMQP thread and the controller share.
#[derive(Debug, Default)]
pub struct Counters {
    /// Producers: transfers sent; consumers: messages received.
    pub messages: AtomicU64,
    /// Producers: messages accepted.
    pub accepted: AtomicU64,
    /// Connections attached and ready.
    pub ready: AtomicUsize,
    /// Connections that ended (for any reason).
    pub ended: AtomicUsize,
    /// Unix-epoch milliseconds of the last message received (consumers), 0 before any.
    pub last_ms: AtomicU64,
    /// Set by the controller: stop (producers send nothing new; consumers close once they
    /// received `expect` messages, or once idle).
    pub stop: AtomicBool,
    /// Consumers: how many messages the producer side had acknowledged when it stopped
    /// (0: not known).
    pub expect: AtomicU64,
    /// Why connections failed.
    pub errors: Mutex<Vec<String>>,
}

impl Counters {
    fn error(&self, e: String) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The consuming side of a run (`--consume-amqp`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct AmqpConsumeSummary {
    /// The source address the consumers attached to.
    pub queue: String,
    pub connect: String,
    pub consumers: usize,
    pub credit: u32,
    pub settle: String,
    pub received: u64,
    /// Received messages per second, from the first message to the last.
    pub msgs_per_sec: f64,
    /// From the send time stamped in the body to the message's arrival at the consumer.
    pub end_to_end_us: Latency,
    /// Messages left in the queue when the producer side stopped (lior's API; `null` when it
    /// could not be asked, e.g. another broker).
    pub depth_at_producer_end: Option<u64>,
    /// Messages left in the queue when the consumers closed.
    pub depth_end: Option<u64>,
}

/// The producing side of a run (`--produce-amqp`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct AmqpProduceSummary {
    pub address: String,
    pub connect: String,
    pub connections: usize,
    pub size: usize,
    pub durable: bool,
    /// `--amqp-window`, if one capped the unaccepted messages.
    pub window: Option<u32>,
    pub sent: u64,
    pub accepted: u64,
    pub elapsed_s: f64,
    /// Accepted messages per second over the measured part.
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    /// From send to `accepted`.
    pub latency_us: Latency,
}

/// One blocking AMQP connection: the socket, its receive buffer, a reused transmit buffer.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    len: usize,
    out: Vec<u8>,
    peer_max_frame: u32,
    what: String,
    sasl: SaslSeen,
}

/// What one read of frames asks the caller to look at.
type FrameFn<'f> = dyn FnMut(Performative<'_>, &[u8], &mut Vec<u8>) -> anyhow::Result<()> + 'f;

impl Wire {
    fn connect(peer: &Peer, what: String) -> anyhow::Result<Wire> {
        let stream = TcpStream::connect_timeout(&peer.addr, HANDSHAKE_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("{what}: cannot connect to {}: {e}", peer.addr))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        Ok(Wire {
            stream,
            buf: vec![0; 4 << 20],
            len: 0,
            out: Vec::with_capacity(1 << 20),
            peer_max_frame: crate::amqp::MIN_MAX_FRAME_SIZE,
            what,
            sasl: SaslSeen::default(),
        })
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.stream
                .write_all(&self.out)
                .map_err(|e| anyhow::anyhow!("{}: write: {e}", self.what))?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads the peer's 8-byte protocol header.
    fn read_header(&mut self, want: [u8; 8]) -> anyhow::Result<()> {
        let mut h = [0u8; 8];
        self.stream
            .read_exact(&mut h)
            .map_err(|e| anyhow::anyhow!("{}: no protocol header from the peer: {e}", self.what))?;
        if h != want {
            anyhow::bail!(
                "{}: the peer answered protocol header {:?}, not {:?}{}",
                self.what,
                String::from_utf8_lossy(&h),
                String::from_utf8_lossy(&want),
                if want == SASL_HEADER {
                    " (the server does not offer SASL)"
                } else {
                    ""
                }
            );
        }
        Ok(())
    }

    /// Reads once (up to the socket's read time-out) and hands every complete frame to `f`.
    /// Returns whether any bytes came. A closed socket is an error.
    fn pump(&mut self, sasl: bool, f: &mut FrameFn<'_>) -> anyhow::Result<bool> {
        if self.len == self.buf.len() {
            // A frame larger than the buffer: grow to hold it (bounded by OUR_MAX_FRAME).
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = match self.stream.read(&mut self.buf[self.len..]) {
            Ok(0) => anyhow::bail!("{}: the peer closed the connection", self.what),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), IoKind::WouldBlock | IoKind::TimedOut) => {
                return Ok(false)
            }
            Err(e) if e.kind() == IoKind::Interrupted => return Ok(false),
            Err(e) => anyhow::bail!("{}: read: {e}", self.what),
        };
        self.len += n;
        let limit = if sasl {
            crate::amqp::MIN_MAX_FRAME_SIZE
        } else {
            OUR_MAX_FRAME
        };
        let mut pos = 0;
        let Wire {
            buf,
            len,
            out,
            what,
            sasl: seen,
            ..
        } = self;
        while let Some(n) = frame_len(&buf[pos..*len], limit)
            .map_err(|e| anyhow::anyhow!("{what}: bad frame from the peer: {e}"))?
        {
            if pos + n > *len {
                break;
            }
            let frame = parse_frame(&buf[pos..pos + n], limit)
                .map_err(|e| anyhow::anyhow!("{what}: bad frame from the peer: {e}"))?;
            match frame.header.frame_type {
                FrameType::Sasl => {
                    let s = frame
                        .sasl()
                        .map_err(|e| anyhow::anyhow!("{what}: bad SASL frame: {e}"))?;
                    sasl_frame(s, seen, what)?;
                }
                FrameType::Amqp => {
                    if let Some((p, payload)) = frame
                        .performative()
                        .map_err(|e| anyhow::anyhow!("{what}: bad frame from the peer: {e}"))?
                    {
                        if let Performative::Close(err) = &p {
                            anyhow::bail!(
                                "{what}: the peer closed the connection{}",
                                error_text(err.as_ref())
                            );
                        }
                        if let Performative::End(err) = &p {
                            anyhow::bail!(
                                "{what}: the peer ended the session{}",
                                error_text(err.as_ref())
                            );
                        }
                        f(p, payload, out)?;
                    }
                }
            }
            pos += n;
        }
        buf.copy_within(pos..*len, 0);
        *len -= pos;
        Ok(true)
    }

    fn send(&mut self, p: &Performative<'_>) -> anyhow::Result<()> {
        encode_amqp_frame(&mut self.out, 0, p, &[], self.peer_max_frame)
            .map_err(|e| anyhow::anyhow!("{}: cannot encode {}: {e}", self.what, p.name()))?;
        Ok(())
    }
}

/// SASL frames are answered by [`handshake`]; this keeps the mechanisms and the outcome.
fn sasl_frame(s: SaslFrame<'_>, seen: &mut SaslSeen, what: &str) -> anyhow::Result<()> {
    match s {
        SaslFrame::Mechanisms(m) => {
            let mut v = Vec::new();
            let _ = m.for_each(|s| v.push(s.to_string()));
            seen.mechanisms = Some(v);
        }
        SaslFrame::Outcome(o) => seen.outcome = Some(o.code),
        SaslFrame::Challenge(_) => anyhow::bail!(
            "{what}: the server sent a SASL challenge; only ANONYMOUS and PLAIN are supported"
        ),
        _ => anyhow::bail!("{what}: unexpected SASL frame from the server"),
    }
    Ok(())
}

#[derive(Debug, Default)]
struct SaslSeen {
    mechanisms: Option<Vec<String>>,
    outcome: Option<u8>,
}

fn error_text(e: Option<&crate::amqp::performatives::AmqpError<'_>>) -> String {
    match e {
        Some(e) => format!(
            ": {}{}",
            e.condition,
            e.description.map(|d| format!(" ({d})")).unwrap_or_default()
        ),
        None => " (no error given)".into(),
    }
}

/// Connects, authenticates, opens, begins and attaches one link; returns the connection with
/// the peer's max-frame-size known and the peer's first flow (if it came with the attach).
/// `attach` is our attach; the peer's answer must carry a source (consumer) or target
/// (producer), else the attach was refused and the detach that follows says why.
fn handshake(
    peer: &Peer,
    what: String,
    attach: &Attach<'_>,
    begin_out: &Begin<'_>,
    on_other: &mut FrameFn<'_>,
) -> anyhow::Result<Wire> {
    let mut w = Wire::connect(peer, what.clone())?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    // SASL.
    w.stream.write_all(&SASL_HEADER)?;
    w.read_header(SASL_HEADER)?;
    let mechanisms = loop {
        if let Some(m) = w.sasl.mechanisms.take() {
            break m;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: no SASL mechanisms in time"
        );
        w.pump(true, &mut |_, _, _| Ok(()))?;
    };
    let has = |m: &str| mechanisms.iter().any(|x| x == m);
    let response;
    let init = match &peer.plain {
        Some((user, password)) => {
            anyhow::ensure!(
                has(PLAIN),
                "{what}: the server does not offer SASL PLAIN (it offers {mechanisms:?})"
            );
            response = format!("\0{user}\0{password}").into_bytes();
            SaslInit {
                mechanism: PLAIN,
                initial_response: Some(&response),
                hostname: None,
            }
        }
        None => {
            anyhow::ensure!(
                has(ANONYMOUS),
                "{what}: the server does not offer SASL ANONYMOUS (it offers {mechanisms:?}): \
                 pass --amqp-user and --amqp-password"
            );
            SaslInit {
                mechanism: ANONYMOUS,
                initial_response: Some(b"lior-bench"),
                hostname: None,
            }
        }
    };
    encode_sasl_frame(&mut w.out, &SaslFrame::Init(init))
        .map_err(|e| anyhow::anyhow!("{what}: cannot encode sasl-init: {e}"))?;
    w.flush()?;
    let outcome = loop {
        if let Some(o) = w.sasl.outcome.take() {
            break o;
        }
        anyhow::ensure!(Instant::now() < deadline, "{what}: no SASL outcome in time");
        w.pump(true, &mut |_, _, _| Ok(()))?;
    };
    anyhow::ensure!(
        outcome == sasl_code::OK,
        "{what}: SASL {} refused by the server (sasl-outcome code {outcome}{})",
        init.mechanism,
        if outcome == sasl_code::AUTH {
            ": bad user or password"
        } else {
            ""
        }
    );
    // AMQP: header, open, begin, attach in one write.
    w.out.extend_from_slice(&AMQP_HEADER);
    let mut open = Open::new("lior-bench");
    open.max_frame_size = OUR_MAX_FRAME;
    open.channel_max = 0;
    open.hostname = None;
    w.send(&Performative::Open(Box::new(open)))?;
    w.send(&Performative::Begin(*begin_out))?;
    w.send(&Performative::Attach(Box::new(*attach)))?;
    w.flush()?;
    w.read_header(AMQP_HEADER)?;
    let mut opened = false;
    let mut begun = false;
    let mut attached: Option<bool> = None;
    let mut peer_max = 0u32;
    let mut refused: Option<String> = None;
    while attached != Some(true) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: no open/begin/attach from the peer within {HANDSHAKE_TIMEOUT:?}"
        );
        w.pump(false, &mut |p, payload, out| {
            match p {
                Performative::Open(o) => {
                    opened = true;
                    peer_max = o.max_frame_size;
                }
                Performative::Begin(b) => {
                    begun = true;
                    on_other(Performative::Begin(b), payload, out)?;
                }
                Performative::Attach(a) => {
                    let ok = match attach.role {
                        Role::Receiver => a.source.is_some(),
                        Role::Sender => a.target.is_some(),
                    };
                    attached = Some(ok);
                }
                Performative::Detach(d) => {
                    refused = Some(format!(
                        "{what}: attach to {:?} refused{}",
                        attach_address(attach),
                        error_text(d.error.as_ref())
                    ));
                }
                other => on_other(other, payload, out)?,
            }
            Ok(())
        })
        .map_err(|e| match &refused {
            Some(r) => anyhow::anyhow!("{r}"),
            None => e,
        })?;
        if let Some(r) = refused.take() {
            anyhow::bail!("{r}");
        }
        if attached == Some(false) {
            // The detach with the reason follows; wait a little for it.
            let until = Instant::now() + Duration::from_secs(2);
            while refused.is_none() && Instant::now() < until {
                let r = w.pump(false, &mut |p, _, _| {
                    if let Performative::Detach(d) = p {
                        refused = Some(error_text(d.error.as_ref()));
                    }
                    Ok(())
                });
                if let Err(e) = r {
                    refused = Some(format!(" ({e})"));
                }
            }
            anyhow::bail!(
                "{what}: attach to {:?} refused{}",
                attach_address(attach),
                refused.unwrap_or_else(|| " (no source/target in the answer)".into())
            );
        }
    }
    anyhow::ensure!(opened && begun, "{what}: attach before open/begin");
    w.peer_max_frame = peer_max.max(crate::amqp::MIN_MAX_FRAME_SIZE);
    w.stream.set_read_timeout(Some(POLL))?;
    w.flush()?;
    Ok(w)
}

fn attach_address<'a>(a: &Attach<'a>) -> &'a str {
    match a.role {
        Role::Receiver => a.source.and_then(|s| s.address).unwrap_or(""),
        Role::Sender => a.target.and_then(|t| t.address).unwrap_or(""),
    }
}

/// Ends the link, the session and the connection politely (errors ignored: the run is over).
fn goodbye(w: &mut Wire) {
    let _ = w.send(&Performative::Detach(Detach {
        handle: 0,
        closed: true,
        error: None,
    }));
    let _ = w.send(&Performative::End(None));
    let _ = w.send(&Performative::Close(None));
    let _ = w.flush();
    // Wait briefly for the peer's close, so what we settled is processed before the socket goes.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match w.pump(false, &mut |_, _, _| Ok(())) {
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

/// What one consumer connection does.
#[derive(Clone, Debug)]
pub struct ConsumePlan {
    pub source: String,
    pub credit: u32,
    pub settle: Settle,
    /// After `stop`, close once no message came for this long.
    pub idle: Duration,
    /// After `stop`, close after this long whatever comes.
    pub tail_max: Duration,
}

/// The outcome of one consumer connection.
pub struct Consumed {
    pub hist: Histogram<u64>,
    pub received: u64,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

/// Runs one consumer connection until stopped.
pub fn consume(
    index: usize,
    peer: &Peer,
    plan: &ConsumePlan,
    c: &Counters,
) -> anyhow::Result<Consumed> {
    let what = format!(
        "AMQP consumer {index} of {:?} at {}",
        plan.source, peer.addr
    );
    let name = format!("lior-bench-consumer-{index}");
    let mut attach = Attach::new(&name, 0, Role::Receiver);
    attach.snd_settle_mode = match plan.settle {
        Settle::Accept => snd_settle_mode::UNSETTLED,
        Settle::Presettled => snd_settle_mode::SETTLED,
    };
    attach.rcv_settle_mode = rcv_settle_mode::FIRST;
    attach.source = Some(Source {
        address: Some(&plan.source),
        ..Source::default()
    });
    attach.target = Some(Target::default());
    let begin = Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: INCOMING_WINDOW,
        outgoing_window: u32::MAX,
        handle_max: 0,
        offered_capabilities: Symbols::None,
        desired_capabilities: Symbols::None,
        properties: None,
    };
    let mut w = handshake(peer, what.clone(), &attach, &begin, &mut |_, _, _| Ok(()))?;
    let credit = plan.credit.max(1);
    let mut st = ConsumerState {
        hist: new_histogram(),
        delivery_count: 0,
        credit,
        next_incoming_id: 0,
        window: INCOMING_WINDOW,
        to_accept: Vec::with_capacity(credit as usize),
        partial: Vec::new(),
        partial_id: None,
        received: 0,
        presettled: plan.settle == Settle::Presettled,
        bad: 0,
    };
    w.send(&st.flow(credit))?;
    w.flush()?;
    c.ready.fetch_add(1, Ordering::Relaxed);
    let mut stopped_at: Option<Instant> = None;
    let mut last_msg = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    loop {
        let before = st.received;
        w.pump(false, &mut |p, payload, _| st.on_frame(p, payload, &what))?;
        if st.received > before {
            last_msg = Instant::now();
            first.get_or_insert(last_msg);
            last = Some(last_msg);
            c.messages
                .fetch_add(st.received - before, Ordering::Relaxed);
            c.last_ms
                .store(crate::engine::net::now_ms(), Ordering::Relaxed);
        }
        st.settle_and_refill(&mut w, credit)?;
        if c.stop.load(Ordering::Relaxed) {
            // Idle counts from the stop at the earliest: what the producer sent just before
            // it may still be on its way.
            let at = *stopped_at.get_or_insert_with(Instant::now);
            let expect = c.expect.load(Ordering::Relaxed);
            if (expect > 0 && c.messages.load(Ordering::Relaxed) >= expect)
                || last_msg.max(at).elapsed() >= plan.idle
                || at.elapsed() >= plan.tail_max
            {
                break;
            }
        }
    }
    anyhow::ensure!(
        st.bad == 0,
        "{what}: {} messages had no data section to read",
        st.bad
    );
    goodbye(&mut w);
    Ok(Consumed {
        hist: st.hist,
        received: st.received,
        first,
        last,
    })
}

struct ConsumerState {
    hist: Histogram<u64>,
    delivery_count: u32,
    /// Credit the peer still has on our link.
    credit: u32,
    next_incoming_id: u32,
    window: u32,
    /// Delivery ids received whole and not yet accepted.
    to_accept: Vec<u32>,
    /// A multi-frame delivery being put together.
    partial: Vec<u8>,
    partial_id: Option<u32>,
    received: u64,
    presettled: bool,
    bad: u64,
}

impl ConsumerState {
    fn flow(&self, credit: u32) -> Performative<'static> {
        Performative::Flow(Flow {
            next_incoming_id: Some(self.next_incoming_id),
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: 0,
            outgoing_window: u32::MAX,
            handle: Some(0),
            delivery_count: Some(self.delivery_count),
            link_credit: Some(credit),
            available: None,
            drain: false,
            echo: false,
            properties: None,
        })
    }

    fn on_frame(&mut self, p: Performative<'_>, payload: &[u8], what: &str) -> anyhow::Result<()> {
        match p {
            Performative::Transfer(t) => {
                self.next_incoming_id = self.next_incoming_id.wrapping_add(1);
                self.window = self.window.saturating_sub(1);
                let first = self.partial_id.is_none();
                let id = match (t.delivery_id, self.partial_id) {
                    (Some(id), _) => id,
                    (None, Some(id)) => id,
                    (None, None) => anyhow::bail!("{what}: a transfer without a delivery-id"),
                };
                if first {
                    self.delivery_count = self.delivery_count.wrapping_add(1);
                    self.credit = self.credit.saturating_sub(1);
                }
                if t.aborted {
                    self.partial.clear();
                    self.partial_id = None;
                    return Ok(());
                }
                if t.more {
                    self.partial.extend_from_slice(payload);
                    self.partial_id = Some(id);
                    return Ok(());
                }
                let now = unix_ns();
                let whole: &[u8] = if self.partial_id.is_some() {
                    self.partial.extend_from_slice(payload);
                    &self.partial
                } else {
                    payload
                };
                match first_data_section(whole) {
                    Some(body) => {
                        if body.len() >= STAMP_LEN && body[..8] == STAMP_TAG {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(&body[8..16]);
                            let sent = u64::from_le_bytes(b);
                            self.hist.saturating_record(now.saturating_sub(sent).max(1));
                        }
                    }
                    None => self.bad += 1,
                }
                self.partial.clear();
                self.partial_id = None;
                self.received += 1;
                if !self.presettled && t.settled != Some(true) {
                    self.to_accept.push(id);
                }
                Ok(())
            }
            Performative::Detach(d) => anyhow::bail!(
                "{what}: the peer detached the link{}",
                error_text(d.error.as_ref())
            ),
            // Flow (the sender's link state) and disposition (none expected) need nothing.
            _ => Ok(()),
        }
    }

    /// Accepts what came (contiguous ranges, one disposition each) and tops up the credit and
    /// the session window when half is used.
    fn settle_and_refill(&mut self, w: &mut Wire, credit: u32) -> anyhow::Result<()> {
        if !self.to_accept.is_empty() {
            let ids = std::mem::take(&mut self.to_accept);
            let mut i = 0;
            while i < ids.len() {
                let first = ids[i];
                let mut last = first;
                while i + 1 < ids.len() && ids[i + 1] == last.wrapping_add(1) {
                    i += 1;
                    last = ids[i];
                }
                w.send(&Performative::Disposition(Disposition {
                    role: Role::Receiver,
                    first,
                    last: (last != first).then_some(last),
                    settled: true,
                    state: Some(DeliveryState::Accepted),
                    batchable: false,
                }))?;
                i += 1;
            }
            self.to_accept = ids;
            self.to_accept.clear();
        }
        if self.credit <= credit / 2 || self.window <= INCOMING_WINDOW / 2 {
            self.credit = credit;
            self.window = INCOMING_WINDOW;
            w.send(&self.flow(credit))?;
        }
        w.flush()
    }
}

/// The body of a message's first data section, found without decoding the other sections
/// (a full `Message::decode` of lior's mapped properties was a fifth of the consumer's time).
fn first_data_section(payload: &[u8]) -> Option<&[u8]> {
    let mut dec = Decoder::new(payload);
    while !dec.is_empty() {
        let Ok(Value::Described(dv)) = dec.value("message section") else {
            return None;
        };
        if dv.code() == Some(descriptor::DATA) {
            return match dv.value.decode("data") {
                Ok(Value::Binary(b)) => Some(b),
                _ => None,
            };
        }
    }
    None
}

/// What one producer connection sends.
#[derive(Clone, Debug)]
pub struct ProducePlan {
    pub address: String,
    pub size: usize,
    pub durable: bool,
    /// Messages to send, or `None` to run until stopped.
    pub quota: Option<u64>,
    /// At most this many unaccepted messages (besides the link credit and
    /// [`PRODUCER_INFLIGHT_MAX`]).
    pub window: Option<u32>,
}

/// The outcome of one producer connection.
pub struct Produced {
    pub hist: Histogram<u64>,
    pub sent: u64,
    pub accepted: u64,
}

/// Encodes the message once: a header (durable) and one data section whose body starts with
/// the stamp. Returns it with the offset of the 8-byte send time.
fn encode_message(size: usize, durable: bool) -> anyhow::Result<(Vec<u8>, Option<usize>)> {
    let mut body = vec![0u8; size];
    for (i, b) in body.iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    if size >= STAMP_LEN {
        body[..8].copy_from_slice(&STAMP_TAG);
    }
    let mut out = Vec::with_capacity(size + 64);
    Header {
        durable,
        ..Header::default()
    }
    .encode(&mut out)
    .map_err(|e| anyhow::anyhow!("cannot encode the header: {e}"))?;
    let data_at = out.len();
    encode_data(&mut out, &body).map_err(|e| anyhow::anyhow!("cannot encode the body: {e}"))?;
    // The body is the last `size` bytes.
    let body_at = out.len() - size;
    debug_assert!(body_at > data_at);
    Ok((out, (size >= STAMP_LEN).then_some(body_at + 8)))
}

/// Runs one producer connection until its quota is accepted or it is stopped.
pub fn produce(
    index: usize,
    peer: &Peer,
    plan: &ProducePlan,
    go: &AtomicBool,
    c: &Counters,
) -> anyhow::Result<Produced> {
    let what = format!(
        "AMQP producer {index} to {:?} at {}",
        plan.address, peer.addr
    );
    let name = format!("lior-bench-producer-{index}");
    let mut attach = Attach::new(&name, 0, Role::Sender);
    attach.snd_settle_mode = snd_settle_mode::UNSETTLED;
    attach.rcv_settle_mode = rcv_settle_mode::FIRST;
    attach.source = Some(Source::default());
    attach.target = Some(Target {
        address: Some(&plan.address),
        ..Target::default()
    });
    attach.initial_delivery_count = Some(0);
    let begin = Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: INCOMING_WINDOW,
        outgoing_window: u32::MAX,
        handle_max: 0,
        offered_capabilities: Symbols::None,
        desired_capabilities: Symbols::None,
        properties: None,
    };
    let (mut msg, stamp_at) = encode_message(plan.size, plan.durable)?;
    let mut st = ProducerState {
        hist: new_histogram(),
        times: vec![0; PRODUCER_INFLIGHT_MAX].into_boxed_slice(),
        next_id: 0,
        next_transfer_id: 0,
        delivery_count: 0,
        credit: 0,
        remote_window: 0,
        sent: 0,
        accepted: 0,
        refused: 0,
        refusal: None,
        epoch: Instant::now(),
    };
    // The peer's begin and first flow may come with the attach.
    let mut early: Vec<FlowState> = Vec::new();
    let mut w = handshake(peer, what.clone(), &attach, &begin, &mut |p, _, _| {
        match p {
            // The answer's incoming-window is the first session window.
            Performative::Begin(b) => early.push((Some(0), b.incoming_window, None, None)),
            Performative::Flow(f) if f.handle.is_none_or(|h| h == 0) => early.push((
                f.next_incoming_id,
                f.incoming_window,
                f.delivery_count,
                f.handle.and(f.link_credit),
            )),
            _ => {}
        }
        Ok(())
    })?;
    for (nid, iw, dc, lc) in early {
        st.on_flow(nid, iw, dc, lc);
    }
    c.ready.fetch_add(1, Ordering::Relaxed);
    while !go.load(Ordering::Acquire) {
        if c.stop.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let quota = plan.quota.unwrap_or(u64::MAX);
    let in_flight_max = plan.window.map_or(PRODUCER_INFLIGHT_MAX, |w| {
        (w as usize).min(PRODUCER_INFLIGHT_MAX)
    });
    let frames_per_msg =
        (msg.len() as u64 / u64::from(w.peer_max_frame).saturating_sub(64).max(1) + 1) as u32;
    let mut tag = [0u8; 4];
    let mut stop_at: Option<Instant> = None;
    loop {
        let stopping = c.stop.load(Ordering::Relaxed);
        // Send what credit, the session window, the ring and the quota allow.
        let mut n = 0u64;
        while !stopping
            && st.sent < quota
            && st.credit > 0
            && st.remote_window >= frames_per_msg
            && ((st.sent - st.accepted - st.refused) as usize) < in_flight_max
        {
            let id = st.next_id;
            let stamp = unix_ns();
            if let Some(o) = stamp_at {
                msg[o..o + 8].copy_from_slice(&stamp.to_le_bytes());
            }
            tag.copy_from_slice(&id.to_be_bytes());
            let frames = Transfer::new(0, id, &tag)
                .encode_frames(&mut w.out, 0, &msg, w.peer_max_frame)
                .map_err(|e| anyhow::anyhow!("{what}: cannot encode a transfer: {e}"))?;
            st.times[id as usize % PRODUCER_INFLIGHT_MAX] = st.now_ns().max(1);
            st.next_id = id.wrapping_add(1);
            st.delivery_count = st.delivery_count.wrapping_add(1);
            st.credit -= 1;
            st.remote_window = st.remote_window.saturating_sub(frames as u32);
            st.next_transfer_id = st.next_transfer_id.wrapping_add(frames as u32);
            st.sent += 1;
            n += 1;
            // Write in batches so a large credit does not build one huge buffer.
            if w.out.len() >= 256 << 10 {
                w.flush()?;
            }
        }
        if n > 0 {
            c.messages.fetch_add(n, Ordering::Relaxed);
            w.flush()?;
        }
        let in_flight = st.sent - st.accepted - st.refused;
        if (st.sent >= quota || stopping) && in_flight == 0 {
            break;
        }
        if stopping {
            let at = *stop_at.get_or_insert_with(Instant::now);
            if at.elapsed() >= PRODUCER_SETTLE_TIMEOUT {
                break;
            }
        }
        let before = st.accepted;
        w.pump(false, &mut |p, _, _| st.on_frame(p, &what))?;
        if st.accepted > before {
            c.accepted
                .fetch_add(st.accepted - before, Ordering::Relaxed);
        }
    }
    if st.refused > 0 {
        c.error(format!(
            "{what}: {} messages not accepted{}",
            st.refused,
            st.refusal.as_deref().unwrap_or("")
        ));
    }
    goodbye(&mut w);
    Ok(Produced {
        hist: st.hist,
        sent: st.sent,
        accepted: st.accepted,
    })
}

/// A flow's next-incoming-id, incoming-window, delivery-count and link-credit (for our link).
type FlowState = (Option<u32>, u32, Option<u32>, Option<u32>);

struct ProducerState {
    hist: Histogram<u64>,
    /// Send time (ns since `epoch`, never 0) of each unsettled delivery, by id modulo the ring.
    times: Box<[u64]>,
    next_id: u32,
    /// Our session's next-outgoing-id: transfer frames sent (a large message takes several).
    next_transfer_id: u32,
    delivery_count: u32,
    credit: u32,
    /// Transfer frames the peer's session still takes.
    remote_window: u32,
    sent: u64,
    accepted: u64,
    /// Deliveries the peer rejected, released or modified.
    refused: u64,
    refusal: Option<String>,
    epoch: Instant,
}

impl ProducerState {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn on_flow(&mut self, nid: Option<u32>, iw: u32, dc: Option<u32>, lc: Option<u32>) {
        // Session: the peer takes transfers up to next-incoming-id + incoming-window.
        let base = nid.unwrap_or(0);
        self.remote_window = base.wrapping_add(iw).wrapping_sub(self.next_transfer_id);
        if self.remote_window > iw {
            self.remote_window = iw;
        }
        // Link: credit counts from the peer's view of the delivery-count.
        if let Some(lc) = lc {
            let dc = dc.unwrap_or(0);
            self.credit = dc.wrapping_add(lc).wrapping_sub(self.delivery_count);
            if self.credit > lc {
                self.credit = 0;
            }
        }
    }

    fn on_frame(&mut self, p: Performative<'_>, what: &str) -> anyhow::Result<()> {
        match p {
            Performative::Flow(f) if f.handle.is_none_or(|h| h == 0) => {
                let lc = f.handle.and(f.link_credit);
                self.on_flow(f.next_incoming_id, f.incoming_window, f.delivery_count, lc);
            }
            Performative::Disposition(d) if d.role == Role::Receiver => {
                let now = self.now_ns();
                let accepted = matches!(d.state, Some(DeliveryState::Accepted));
                if !accepted && self.refusal.is_none() {
                    self.refusal = Some(match d.state {
                        Some(DeliveryState::Rejected(e)) => {
                            format!(" (rejected{})", error_text(e.as_ref()))
                        }
                        Some(DeliveryState::Released) => " (released)".into(),
                        Some(DeliveryState::Modified { .. }) => " (modified)".into(),
                        _ => " (no outcome)".into(),
                    });
                }
                if !accepted && !d.settled {
                    // A state without settlement (e.g. received): wait for the outcome.
                    return Ok(());
                }
                let mut id = d.first;
                loop {
                    let slot = &mut self.times[id as usize % PRODUCER_INFLIGHT_MAX];
                    if *slot != 0 {
                        if accepted {
                            self.hist
                                .saturating_record(now.saturating_sub(*slot).max(1));
                            self.accepted += 1;
                        } else {
                            self.refused += 1;
                        }
                        *slot = 0;
                    }
                    if id == d.last() {
                        break;
                    }
                    id = id.wrapping_add(1);
                }
            }
            Performative::Detach(d) => anyhow::bail!(
                "{what}: the peer detached the link{}",
                error_text(d.error.as_ref())
            ),
            _ => {}
        }
        Ok(())
    }
}

/// Asks lior's API how many messages `queue` holds (`None` if it cannot tell).
pub fn lior_depth(api: &str, queue: &str) -> Option<u64> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let v: serde_json::Value = agent
        .get(&format!("http://{api}/v1/queues"))
        .call()
        .ok()?
        .into_json()
        .ok()?;
    let name = queue.rsplit('\\').next().unwrap_or(queue);
    v.as_array()?
        .iter()
        .find(|q| {
            q["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .and_then(|q| q["messages"].as_u64())
}

/// Merges the histograms of several threads.
pub fn merge(hists: &[Histogram<u64>]) -> Histogram<u64> {
    let mut all = new_histogram();
    for h in hists {
        // Same bounds everywhere: adding cannot fail.
        let _ = all.add(h);
    }
    all
}

/// Starts `n` consumer threads; they count into `c`.
pub fn start_consumers(
    n: usize,
    peer: &Peer,
    plan: &ConsumePlan,
    c: &Arc<Counters>,
) -> Vec<std::thread::JoinHandle<Option<Consumed>>> {
    (0..n)
        .map(|i| {
            let (peer, plan, c) = (peer.clone(), plan.clone(), Arc::clone(c));
            std::thread::spawn(move || {
                let r = consume(i, &peer, &plan, &c);
                c.ended.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(r) => Some(r),
                    Err(e) => {
                        c.error(format!("{e:#}"));
                        None
                    }
                }
            })
        })
        .collect()
}

/// Starts `n` producer threads (they wait for `go`); they count into `c`.
pub fn start_producers(
    n: usize,
    peer: &Peer,
    plan: &ProducePlan,
    go: &Arc<AtomicBool>,
    c: &Arc<Counters>,
) -> Vec<std::thread::JoinHandle<Option<Produced>>> {
    (0..n)
        .map(|i| {
            let quota = plan
                .quota
                .map(|q| q / n as u64 + u64::from((i as u64) < q % n as u64));
            let plan = ProducePlan {
                quota,
                ..plan.clone()
            };
            let (peer, go, c) = (peer.clone(), Arc::clone(go), Arc::clone(c));
            std::thread::spawn(move || {
                let r = produce(i, &peer, &plan, &go, &c);
                c.ended.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(p) => Some(p),
                    Err(e) => {
                        c.error(format!("{e:#}"));
                        None
                    }
                }
            })
        })
        .collect()
}

/// Waits until `n` connections of `c` are ready; an error if one failed first or it took too
/// long.
pub fn wait_ready(c: &Counters, n: usize, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT + Duration::from_secs(2);
    while c.ready.load(Ordering::Relaxed) < n {
        let e = c.errors();
        if !e.is_empty() {
            anyhow::bail!("{}", e.join("; "));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: {} of {n} connections ready after {:?}",
            c.ready.load(Ordering::Relaxed),
            HANDSHAKE_TIMEOUT
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}
