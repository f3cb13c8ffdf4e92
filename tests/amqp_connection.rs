//! The AMQP 1.0 connection state machine (`lior::amqp::connection`) driven by a client built
//! from the codec's own encoders, with a fake clock: SASL, open/begin/attach, credit and
//! ordered delivery, multi-frame transfers, dispositions, detach/end/close, heartbeats and idle
//! time-out, and hostile input (each violation closes with its condition; proptest: any bytes
//! after a valid open never panic).

use std::sync::Arc;

use lior::amqp::connection::{
    CommandError, Connection, ConnectionConfig, Event, LinkId, LinkKind, Outcome, SaslConfig,
    SendError,
};
use lior::amqp::frame::{
    encode_amqp_frame, encode_sasl_frame, frame_len, parse_frame, FrameType, AMQP_HEADER,
    EMPTY_FRAME, SASL_HEADER,
};
use lior::amqp::performatives::{
    condition, Attach, Begin, DeliveryState, Detach, Disposition, Flow, Open, Performative, Role,
    Source, Target, Transfer,
};
use lior::amqp::sasl::{SaslFrame, SaslInit};
use lior::amqp::types::Symbols;
use proptest::prelude::*;

/// What the server sent, owned, for assertions.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Header([u8; 8]),
    Mechanisms(Vec<String>),
    Outcome(u8),
    Empty,
    Open {
        max_frame_size: u32,
        idle: Option<u32>,
    },
    Begin {
        ch: u16,
        remote_channel: Option<u16>,
    },
    Attach {
        ch: u16,
        handle: u32,
        role: Role,
        has_source: bool,
        has_target: bool,
        source: Option<String>,
    },
    Flow {
        handle: Option<u32>,
        link_credit: Option<u32>,
        delivery_count: Option<u32>,
        drain: bool,
    },
    Transfer {
        handle: u32,
        delivery_id: Option<u32>,
        tag: Option<Vec<u8>>,
        more: bool,
        settled: Option<bool>,
        payload: Vec<u8>,
    },
    Disposition {
        role: Role,
        first: u32,
        last: u32,
        settled: bool,
        state: Option<String>,
    },
    Detach {
        handle: u32,
        closed: bool,
        error: Option<String>,
    },
    End,
    Close(Option<String>),
}

struct Client {
    c: Connection,
    now: u64,
    /// Server bytes not yet parsed.
    rx: Vec<u8>,
    /// How many protocol headers are still expected before frames.
    headers_due: usize,
    result: Result<(), String>,
}

impl Client {
    fn new(cfg: ConnectionConfig) -> Client {
        Client {
            c: Connection::new(cfg, 0),
            now: 0,
            rx: Vec::new(),
            headers_due: 0,
            result: Ok(()),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.result = self
            .c
            .handle_bytes(self.now, bytes)
            .map_err(|e| e.condition.to_string());
    }

    fn header(&mut self, h: &[u8; 8]) {
        self.headers_due += 1;
        self.send_raw(h);
    }

    fn perf(&mut self, ch: u16, p: &Performative<'_>) {
        self.send_raw(&enc(ch, p, &[]));
    }

    fn sasl(&mut self, f: &SaslFrame<'_>) {
        let mut out = Vec::new();
        encode_sasl_frame(&mut out, f).unwrap();
        self.send_raw(&out);
    }

    /// Everything the server sent since the last call.
    fn got(&mut self) -> Vec<Got> {
        self.c.poll_transmit(&mut self.rx);
        let mut out = Vec::new();
        loop {
            if self.rx.len() >= 8 && &self.rx[..4] == b"AMQP" && self.headers_due > 0 {
                let mut h = [0u8; 8];
                h.copy_from_slice(&self.rx[..8]);
                self.rx.drain(..8);
                self.headers_due -= 1;
                out.push(Got::Header(h));
                continue;
            }
            let n = match frame_len(&self.rx, u32::MAX) {
                Ok(Some(n)) if n <= self.rx.len() => n,
                Ok(_) => break,
                Err(e) => panic!("server sent a bad frame: {e}"),
            };
            let bytes: Vec<u8> = self.rx.drain(..n).collect();
            out.push(decode_got(&bytes));
        }
        out
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.c.poll_event()).collect()
    }

    /// Header, open; returns the server's open.
    fn open(&mut self, idle: Option<u32>) {
        self.header(&AMQP_HEADER);
        let mut o = Open::new("client");
        o.max_frame_size = 4096;
        o.idle_time_out = idle;
        self.perf(0, &Performative::Open(Box::new(o)));
        let g = self.got();
        assert_eq!(g[0], Got::Header(AMQP_HEADER));
        assert!(matches!(g[1], Got::Open { .. }), "{g:?}");
        assert!(matches!(self.events()[..], [Event::Opened { .. }]));
    }

    fn begin(&mut self, ch: u16) {
        self.perf(
            ch,
            &Performative::Begin(Begin {
                remote_channel: None,
                next_outgoing_id: 0,
                incoming_window: 100,
                outgoing_window: 100,
                handle_max: 10,
                offered_capabilities: Symbols::None,
                desired_capabilities: Symbols::None,
                properties: None,
            }),
        );
        let g = self.got();
        assert!(
            matches!(g[..], [Got::Begin { remote_channel: Some(c), .. }] if c == ch),
            "{g:?}"
        );
    }

    /// Attaches a link with the client's `role` on handle `h`; returns the server's LinkId.
    fn attach(&mut self, ch: u16, h: u32, role: Role, address: &str) -> LinkId {
        let mut a = Attach::new("link", h, role);
        if role == Role::Receiver {
            a.source = Some(Source {
                address: Some(address),
                ..Source::default()
            });
            a.target = Some(Target::default());
        } else {
            a.source = Some(Source::default());
            a.target = Some(Target {
                address: Some(address),
                ..Target::default()
            });
            a.initial_delivery_count = Some(0);
        }
        self.perf(ch, &Performative::Attach(Box::new(a)));
        match &self.events()[..] {
            [Event::LinkAttached {
                link,
                kind,
                address: got,
                ..
            }] => {
                assert_eq!(got.as_deref(), Some(address));
                assert_eq!(
                    *kind,
                    if role == Role::Receiver {
                        LinkKind::Consumer
                    } else {
                        LinkKind::Producer
                    }
                );
                *link
            }
            e => panic!("expected LinkAttached, got {e:?}"),
        }
    }

    fn flow(&mut self, ch: u16, handle: u32, delivery_count: u32, credit: u32, drain: bool) {
        self.perf(
            ch,
            &Performative::Flow(Flow {
                next_incoming_id: Some(0),
                incoming_window: 100,
                next_outgoing_id: 0,
                outgoing_window: 100,
                handle: Some(handle),
                delivery_count: Some(delivery_count),
                link_credit: Some(credit),
                available: None,
                drain,
                echo: false,
                properties: None,
            }),
        );
    }

    /// Asserts the connection closed with `cond`: the result, the close frame, the event.
    fn assert_closed_with(&mut self, cond: &str) {
        assert_eq!(self.result, Err(cond.to_string()), "handle_bytes result");
        assert!(self.c.is_closed());
        let g = self.got();
        assert_eq!(
            g.last(),
            Some(&Got::Close(Some(cond.to_string()))),
            "frames: {g:?}"
        );
        let ev = self.events();
        match ev.last() {
            Some(Event::Closed {
                by_peer: false,
                error: Some(e),
            }) => {
                assert_eq!(e.condition, cond);
                assert!(e.description.as_deref().is_some_and(|d| !d.is_empty()));
            }
            e => panic!("expected Closed, got {e:?}"),
        }
    }
}

fn enc(ch: u16, p: &Performative<'_>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_amqp_frame(&mut out, ch, p, payload, u32::MAX).unwrap();
    out
}

fn state_name(s: &Option<DeliveryState<'_>>) -> Option<String> {
    s.as_ref().map(|s| match s {
        DeliveryState::Accepted => "accepted".to_string(),
        DeliveryState::Released => "released".to_string(),
        DeliveryState::Rejected(e) => format!("rejected:{}", e.map_or("", |e| e.condition)),
        DeliveryState::Modified { .. } => "modified".to_string(),
        DeliveryState::Received { .. } => "received".to_string(),
    })
}

fn decode_got(bytes: &[u8]) -> Got {
    let f = parse_frame(bytes, u32::MAX).unwrap();
    let ch = f.header.channel;
    if f.header.frame_type == FrameType::Sasl {
        return match f.sasl().unwrap() {
            SaslFrame::Mechanisms(m) => {
                let mut v = Vec::new();
                m.for_each(|s| v.push(s.to_string())).unwrap();
                Got::Mechanisms(v)
            }
            SaslFrame::Outcome(o) => Got::Outcome(o.code),
            other => panic!("server sent {other:?}"),
        };
    }
    let Some((p, payload)) = f.performative().unwrap() else {
        return Got::Empty;
    };
    match p {
        Performative::Open(o) => Got::Open {
            max_frame_size: o.max_frame_size,
            idle: o.idle_time_out,
        },
        Performative::Begin(b) => Got::Begin {
            ch,
            remote_channel: b.remote_channel,
        },
        Performative::Attach(a) => Got::Attach {
            ch,
            handle: a.handle,
            role: a.role,
            has_source: a.source.is_some(),
            has_target: a.target.is_some(),
            source: a.source.and_then(|s| s.address).map(str::to_string),
        },
        Performative::Flow(f) => Got::Flow {
            handle: f.handle,
            link_credit: f.link_credit,
            delivery_count: f.delivery_count,
            drain: f.drain,
        },
        Performative::Transfer(t) => Got::Transfer {
            handle: t.handle,
            delivery_id: t.delivery_id,
            tag: t.delivery_tag.map(<[u8]>::to_vec),
            more: t.more,
            settled: t.settled,
            payload: payload.to_vec(),
        },
        Performative::Disposition(d) => Got::Disposition {
            role: d.role,
            first: d.first,
            last: d.last(),
            settled: d.settled,
            state: state_name(&d.state),
        },
        Performative::Detach(d) => Got::Detach {
            handle: d.handle,
            closed: d.closed,
            error: d.error.map(|e| e.condition.to_string()),
        },
        Performative::End(_) => Got::End,
        Performative::Close(e) => Got::Close(e.map(|e| e.condition.to_string())),
    }
}

fn sasl_cfg() -> ConnectionConfig {
    ConnectionConfig {
        sasl: Some(SaslConfig {
            anonymous: true,
            plain: Some(Arc::new(|u: &str, p: &str| u == "alice" && p == "s3cret")),
        }),
        ..ConnectionConfig::default()
    }
}

fn transfer(handle: u32, id: Option<u32>, more: bool, settled: bool) -> Performative<'static> {
    let mut t = Transfer::new(handle, 0, b"t");
    t.delivery_id = id;
    if id.is_none() {
        t.delivery_tag = None;
        t.message_format = None;
    }
    t.more = more;
    t.settled = Some(settled);
    Performative::Transfer(t)
}

/// An opened client with a session on channel 0 and an accepted link of `role`.
fn with_link(cfg: ConnectionConfig, role: Role) -> (Client, LinkId) {
    let mut cl = Client::new(cfg);
    cl.open(None);
    cl.begin(0);
    let l = cl.attach(0, 0, role, "q1");
    cl.c.accept_link(l).unwrap();
    cl.got();
    cl.events();
    (cl, l)
}

// ---------------------------------------------------------------------------------------------

#[test]
fn sasl_anonymous_then_open() {
    let mut cl = Client::new(sasl_cfg());
    cl.header(&SASL_HEADER);
    let g = cl.got();
    assert_eq!(g[0], Got::Header(SASL_HEADER));
    assert_eq!(
        g[1],
        Got::Mechanisms(vec!["PLAIN".to_string(), "ANONYMOUS".to_string()])
    );
    cl.sasl(&SaslFrame::Init(SaslInit {
        mechanism: "ANONYMOUS",
        initial_response: Some(b"trace"),
        hostname: None,
    }));
    assert_eq!(cl.got(), vec![Got::Outcome(0)]);
    assert_eq!(cl.result, Ok(()));
    cl.open(None);
    assert_eq!(cl.c.user(), None);
    assert!(cl.c.is_open());
}

#[test]
fn sasl_plain_good_and_bad_password() {
    let mut cl = Client::new(sasl_cfg());
    cl.header(&SASL_HEADER);
    cl.got();
    cl.sasl(&SaslFrame::Init(SaslInit {
        mechanism: "PLAIN",
        initial_response: Some(b"\0alice\0s3cret"),
        hostname: None,
    }));
    assert_eq!(cl.got(), vec![Got::Outcome(0)]);
    assert_eq!(cl.c.user(), Some("alice"));
    cl.open(None);

    let mut bad = Client::new(sasl_cfg());
    bad.header(&SASL_HEADER);
    bad.got();
    bad.sasl(&SaslFrame::Init(SaslInit {
        mechanism: "PLAIN",
        initial_response: Some(b"\0alice\0wrong"),
        hostname: None,
    }));
    assert_eq!(bad.got(), vec![Got::Outcome(1)]);
    assert_eq!(bad.result, Err(condition::UNAUTHORIZED_ACCESS.to_string()));
    assert!(bad.c.is_closed());
    assert_eq!(bad.c.user(), None);
    // Nothing more is taken.
    bad.header(&AMQP_HEADER);
    assert_eq!(bad.got(), vec![]);
}

#[test]
fn sasl_required_but_client_skips_it() {
    // With ANONYMOUS offered, a client without a SASL layer is taken as anonymous.
    let mut cl = Client::new(sasl_cfg());
    cl.header(&AMQP_HEADER);
    assert_eq!(cl.got(), vec![Got::Header(AMQP_HEADER)]);
    assert!(!cl.c.is_closed());
    assert!(cl.result.is_ok());
    // Without it, the server answers with the header it wants, then closes.
    let mut cfg = sasl_cfg();
    cfg.sasl.as_mut().unwrap().anonymous = false;
    let mut cl = Client::new(cfg.clone());
    cl.header(&AMQP_HEADER);
    assert_eq!(cl.got(), vec![Got::Header(SASL_HEADER)]);
    assert!(cl.c.is_closed());
    assert!(cl.result.is_err());
    // And a mechanism not offered is an auth failure.
    let mut cl = Client::new(cfg);
    cl.header(&SASL_HEADER);
    assert_eq!(cl.got()[1], Got::Mechanisms(vec!["PLAIN".to_string()]));
    cl.sasl(&SaslFrame::Init(SaslInit {
        mechanism: "ANONYMOUS",
        initial_response: None,
        hostname: None,
    }));
    assert_eq!(cl.got(), vec![Got::Outcome(1)]);
    assert!(cl.c.is_closed());
}

#[test]
fn open_negotiates_and_begin_attach_both_roles() {
    let cfg = ConnectionConfig {
        max_frame_size: 8192,
        idle_timeout_ms: 30_000,
        link_credit: 7,
        ..ConnectionConfig::default()
    };
    let mut cl = Client::new(cfg);
    cl.header(&AMQP_HEADER);
    let mut o = Open::new("client");
    o.max_frame_size = 1024;
    cl.perf(0, &Performative::Open(Box::new(o)));
    assert_eq!(
        cl.got()[1],
        Got::Open {
            max_frame_size: 8192,
            idle: Some(30_000)
        }
    );
    cl.events();
    cl.begin(3);
    let cons = cl.attach(3, 0, Role::Receiver, "orders");
    let prod = cl.attach(3, 1, Role::Sender, "invoices");
    assert_ne!(cons, prod);
    cl.c.accept_link(cons).unwrap();
    cl.c.accept_link(prod).unwrap();
    assert_eq!(cl.c.accept_link(prod), Err(CommandError::WrongState));
    let g = cl.got();
    assert!(
        matches!(
            &g[0],
            Got::Attach { ch: 0, role: Role::Sender, source: Some(s), has_target: true, .. } if s == "orders"
        ),
        "{g:?}"
    );
    assert!(matches!(
        &g[1],
        Got::Attach {
            role: Role::Receiver,
            ..
        }
    ));
    // The producer link got its credit.
    assert!(matches!(
        g[2],
        Got::Flow {
            handle: Some(_),
            link_credit: Some(7),
            delivery_count: Some(0),
            ..
        }
    ));
    // A big message goes out in frames of at most the client's 1024 bytes.
    cl.flow(3, 0, 0, 1, false);
    assert_eq!(
        cl.events(),
        vec![Event::Credit {
            link: cons,
            credit: 1,
            drain: false
        }]
    );
    let big = vec![7u8; 3000];
    cl.c.send_message(cons, 1, &big, true).unwrap();
    let mut out = Vec::new();
    cl.c.poll_transmit(&mut out);
    let mut at = 0;
    let mut frames = 0;
    while at < out.len() {
        let n = frame_len(&out[at..], u32::MAX).unwrap().unwrap();
        assert!(n <= 1024);
        at += n;
        frames += 1;
    }
    assert!(frames >= 3);
}

#[test]
fn refused_link_gets_null_terminus_and_detach_with_condition() {
    let mut cl = Client::new(ConnectionConfig::default());
    cl.open(None);
    cl.begin(0);
    let l = cl.attach(0, 5, Role::Receiver, "nope");
    cl.c.refuse_link(l, condition::NOT_FOUND, "no queue nope")
        .unwrap();
    let g = cl.got();
    assert!(matches!(
        g[0],
        Got::Attach {
            has_source: false,
            ..
        }
    ));
    assert!(
        matches!(&g[1], Got::Detach { closed: true, error: Some(c), .. } if c == condition::NOT_FOUND)
    );
    // The client's answering detach ends it; nothing is sent back.
    cl.perf(
        0,
        &Performative::Detach(Detach {
            handle: 5,
            closed: true,
            error: None,
        }),
    );
    assert_eq!(cl.got(), vec![]);
    assert!(matches!(cl.events()[..], [Event::LinkDetached { .. }]));
}

#[test]
fn credit_then_messages_in_order_and_drain() {
    let (mut cl, l) = with_link(ConnectionConfig::default(), Role::Receiver);
    assert_eq!(
        cl.c.send_message(l, 0, b"x", false),
        Err(SendError::NoCredit)
    );
    cl.flow(0, 0, 0, 3, false);
    assert_eq!(
        cl.events(),
        vec![Event::Credit {
            link: l,
            credit: 3,
            drain: false
        }]
    );
    for i in 0..3u64 {
        assert_eq!(
            cl.c.send_message(l, 100 + i, &[i as u8; 5], false),
            Ok(i as u32)
        );
    }
    assert_eq!(
        cl.c.send_message(l, 9, b"x", false),
        Err(SendError::NoCredit)
    );
    let g = cl.got();
    assert_eq!(g.len(), 3);
    for (i, t) in g.iter().enumerate() {
        match t {
            Got::Transfer {
                delivery_id,
                tag,
                payload,
                more,
                settled,
                ..
            } => {
                assert_eq!(*delivery_id, Some(i as u32));
                assert_eq!(tag.as_deref(), Some(&(100 + i as u64).to_be_bytes()[..]));
                assert_eq!(payload, &vec![i as u8; 5]);
                assert!(!more);
                assert_eq!(*settled, Some(false));
            }
            o => panic!("{o:?}"),
        }
    }
    // Drain: the client's delivery-count is 3, 4 more credit, drain.
    cl.flow(0, 0, 3, 4, true);
    assert_eq!(
        cl.events(),
        vec![Event::Credit {
            link: l,
            credit: 4,
            drain: true
        }]
    );
    cl.c.send_message(l, 103, b"y", true).unwrap();
    cl.c.drained(l).unwrap();
    let g = cl.got();
    assert!(
        matches!(
            g.last(),
            Some(Got::Flow {
                link_credit: Some(0),
                delivery_count: Some(7),
                drain: true,
                ..
            })
        ),
        "{g:?}"
    );
    assert_eq!(cl.c.credit(l), 0);
}

#[test]
fn three_frame_transfer_in_and_settle() {
    let (mut cl, l) = with_link(ConnectionConfig::default(), Role::Sender);
    let mut bytes = enc(0, &transfer(0, Some(0), true, false), b"aaa");
    bytes.extend(enc(0, &transfer(0, None, true, false), b"bbb"));
    // Nothing before the last frame.
    cl.send_raw(&bytes);
    assert_eq!(cl.events(), vec![]);
    cl.send_raw(&enc(0, &transfer(0, Some(0), false, false), b"cc"));
    assert_eq!(
        cl.events(),
        vec![Event::Message {
            link: l,
            delivery_id: 0,
            settled: false,
            payload: b"aaabbbcc".to_vec()
        }]
    );
    assert_eq!(cl.c.unsettled(), 1);
    assert_eq!(cl.c.settle(l, 0, &Outcome::Accepted), Ok(true));
    assert_eq!(cl.c.settle(l, 0, &Outcome::Accepted), Ok(false));
    let g = cl.got();
    assert_eq!(
        g[0],
        Got::Disposition {
            role: Role::Receiver,
            first: 0,
            last: 0,
            settled: true,
            state: Some("accepted".to_string())
        }
    );
    // A pre-settled one needs no settle.
    cl.send_raw(&enc(0, &transfer(0, Some(1), false, true), b"z"));
    assert!(matches!(
        cl.events()[..],
        [Event::Message {
            settled: true,
            delivery_id: 1,
            ..
        }]
    ));
    assert_eq!(cl.c.unsettled(), 0);
}

#[test]
fn producer_credit_follows_settlement() {
    let cfg = ConnectionConfig {
        link_credit: 4,
        ..ConnectionConfig::default()
    };
    let (mut cl, l) = with_link(cfg, Role::Sender);
    for i in 0..4 {
        cl.send_raw(&enc(0, &transfer(0, Some(i), false, false), b"m"));
    }
    assert_eq!(cl.events().len(), 4);
    assert_eq!(cl.c.credit(l), 0);
    assert!(!cl.got().iter().any(|g| matches!(
        g,
        Got::Flow {
            handle: Some(_),
            ..
        }
    )));
    // A fifth is beyond credit.
    // (Checked in hostile_input_closes_with_the_right_condition.)
    cl.c.settle(l, 0, &Outcome::Accepted).unwrap();
    assert!(!cl.got().iter().any(|g| matches!(
        g,
        Got::Flow {
            handle: Some(_),
            ..
        }
    )));
    cl.c.settle(l, 1, &Outcome::Released).unwrap();
    let g = cl.got();
    assert!(
        g.iter().any(|g| matches!(
            g,
            Got::Flow {
                link_credit: Some(2),
                delivery_count: Some(4),
                ..
            }
        )),
        "{g:?}"
    );
}

#[test]
fn dispositions_ranges_settled_and_unsettled() {
    let (mut cl, l) = with_link(ConnectionConfig::default(), Role::Receiver);
    cl.flow(0, 0, 0, 10, false);
    cl.events();
    for i in 0..6u64 {
        cl.c.send_message(l, 10 + i, b"m", false).unwrap();
    }
    cl.got();
    // Settled range 1..=3 accepted.
    cl.perf(
        0,
        &Performative::Disposition(Disposition {
            role: Role::Receiver,
            first: 1,
            last: Some(3),
            settled: true,
            state: Some(DeliveryState::Accepted),
            batchable: false,
        }),
    );
    let ev = cl.events();
    assert_eq!(
        ev,
        (11..=13)
            .map(|tag| Event::Disposition {
                link: l,
                tag,
                state: Some(Outcome::Accepted)
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(cl.got(), vec![]);
    // Unsettled rejected for 0: the server settles it back.
    cl.perf(
        0,
        &Performative::Disposition(Disposition {
            role: Role::Receiver,
            first: 0,
            last: None,
            settled: false,
            state: Some(DeliveryState::Modified {
                delivery_failed: true,
                undeliverable_here: false,
                message_annotations: None,
            }),
            batchable: false,
        }),
    );
    assert_eq!(
        cl.events(),
        vec![Event::Disposition {
            link: l,
            tag: 10,
            state: Some(Outcome::Modified {
                delivery_failed: true,
                undeliverable_here: false
            })
        }]
    );
    assert!(matches!(
        cl.got()[..],
        [Got::Disposition {
            role: Role::Sender,
            first: 0,
            settled: true,
            ..
        }]
    ));
    // Deliveries already settled are not reported twice.
    cl.perf(
        0,
        &Performative::Disposition(Disposition {
            role: Role::Receiver,
            first: 0,
            last: Some(3),
            settled: true,
            state: Some(DeliveryState::Released),
            batchable: false,
        }),
    );
    assert_eq!(cl.events(), vec![]);
    // Detach: 4 and 5 come back unsettled.
    cl.perf(
        0,
        &Performative::Detach(Detach {
            handle: 0,
            closed: true,
            error: None,
        }),
    );
    assert_eq!(
        cl.events(),
        vec![Event::LinkDetached {
            link: l,
            closed: true,
            error: None,
            unsettled: vec![14, 15]
        }]
    );
    assert!(matches!(
        cl.got()[..],
        [Got::Detach {
            closed: true,
            error: None,
            ..
        }]
    ));
    assert_eq!(
        cl.c.send_message(l, 1, b"x", false),
        Err(SendError::UnknownLink)
    );
}

#[test]
fn unsettled_table_has_a_limit() {
    let cfg = ConnectionConfig {
        max_unsettled: 2,
        ..ConnectionConfig::default()
    };
    let (mut cl, l) = with_link(cfg, Role::Receiver);
    cl.flow(0, 0, 0, 10, false);
    cl.events();
    cl.c.send_message(l, 1, b"a", false).unwrap();
    cl.c.send_message(l, 2, b"b", false).unwrap();
    assert_eq!(
        cl.c.send_message(l, 3, b"c", false),
        Err(SendError::TooManyUnsettled)
    );
    // Pre-settled messages hold no table entry.
    assert!(cl.c.send_message(l, 4, b"d", true).is_ok());
    assert_eq!(cl.c.unsettled(), 2);
}

/// Incomplete multi-frame deliveries over all links are bounded by MAX_PARTIAL_BYTES (each
/// stays under max_message_size, together they do not).
#[test]
fn incomplete_deliveries_have_a_connection_limit() {
    use lior::amqp::connection::{DEFAULT_MAX_FRAME_SIZE, MAX_MESSAGE_SIZE, MAX_PARTIAL_BYTES};
    let (mut cl, _) = with_link(ConnectionConfig::default(), Role::Sender);
    for h in 1..6 {
        let l = cl.attach(0, h, Role::Sender, "q");
        cl.c.accept_link(l).unwrap();
    }
    cl.got();
    let chunk = vec![5u8; DEFAULT_MAX_FRAME_SIZE as usize - 100];
    let per_link = MAX_MESSAGE_SIZE / chunk.len() - 1;
    let mut sent = 0;
    'outer: for h in 0..6u32 {
        for i in 0..per_link {
            let id = (i == 0).then_some(h);
            cl.send_raw(&enc(0, &transfer(h, id, true, false), &chunk));
            sent += chunk.len();
            if cl.result.is_err() {
                break 'outer;
            }
        }
    }
    assert!(sent > MAX_PARTIAL_BYTES);
    cl.assert_closed_with(condition::RESOURCE_LIMIT_EXCEEDED);
}

#[test]
fn detach_end_close_and_connection_lost() {
    let (mut cl, l) = with_link(ConnectionConfig::default(), Role::Receiver);
    let p = cl.attach(0, 1, Role::Sender, "q2");
    cl.c.accept_link(p).unwrap();
    cl.got();
    cl.perf(
        0,
        &Performative::Detach(Detach {
            handle: 1,
            closed: true,
            error: None,
        }),
    );
    assert!(matches!(cl.got()[..], [Got::Detach { closed: true, .. }]));
    assert!(matches!(cl.events()[..], [Event::LinkDetached { link, .. }] if link == p));
    cl.perf(0, &Performative::End(None));
    assert_eq!(cl.got(), vec![Got::End]);
    assert!(matches!(cl.events()[..], [Event::LinkDetached { link, .. }] if link == l));
    cl.perf(0, &Performative::Close(None));
    assert_eq!(cl.got(), vec![Got::Close(None)]);
    assert_eq!(
        cl.events(),
        vec![Event::Closed {
            by_peer: true,
            error: None
        }]
    );
    assert!(cl.c.is_closed());

    // A lost connection returns every unsettled message.
    let (mut cl, l) = with_link(ConnectionConfig::default(), Role::Receiver);
    cl.flow(0, 0, 0, 2, false);
    cl.events();
    cl.c.send_message(l, 41, b"a", false).unwrap();
    cl.c.send_message(l, 42, b"b", false).unwrap();
    cl.c.connection_lost();
    let ev = cl.events();
    assert!(matches!(&ev[0], Event::LinkDetached { unsettled, .. } if unsettled == &vec![41, 42]));
    assert!(matches!(ev[1], Event::Closed { .. }));
}

#[test]
fn heartbeats_and_idle_timeout_with_a_fake_clock() {
    let cfg = ConnectionConfig {
        idle_timeout_ms: 5_000,
        ..ConnectionConfig::default()
    };
    let mut cl = Client::new(cfg);
    cl.open(Some(2_000));
    // Heartbeats every 1,000 ms (half the client's 2,000).
    assert_eq!(cl.c.poll_timeout(), Some(1_000));
    cl.c.handle_timeout(999);
    assert_eq!(cl.got(), vec![]);
    cl.c.handle_timeout(1_000);
    assert_eq!(cl.got(), vec![Got::Empty]);
    cl.c.handle_timeout(2_000);
    assert_eq!(cl.got(), vec![Got::Empty]);
    // The client's heartbeat at 4,000 keeps the connection alive past 5,000.
    cl.now = 4_000;
    cl.send_raw(&EMPTY_FRAME);
    assert_eq!(cl.result, Ok(()));
    cl.c.handle_timeout(5_000);
    assert!(!cl.c.is_closed());
    assert_eq!(cl.c.poll_timeout(), Some(6_000));
    cl.c.handle_timeout(8_999);
    assert!(!cl.c.is_closed());
    cl.got();
    cl.c.handle_timeout(9_000);
    assert!(cl.c.is_closed());
    let g = cl.got();
    assert_eq!(
        g.last(),
        Some(&Got::Close(Some(
            condition::RESOURCE_LIMIT_EXCEEDED.to_string()
        )))
    );
    assert_eq!(cl.c.poll_timeout(), None);

    // A client that never completes the handshake is dropped.
    let mut cl = Client::new(ConnectionConfig {
        open_timeout_ms: 100,
        ..ConnectionConfig::default()
    });
    cl.header(&AMQP_HEADER);
    assert_eq!(cl.c.poll_timeout(), Some(100));
    cl.c.handle_timeout(100);
    assert!(cl.c.is_closed());
}

/// Each malformed or forbidden input, after a valid open (and session, and links as needed),
/// closes with its condition.
#[test]
fn hostile_input_closes_with_the_right_condition() {
    type Setup = fn(&mut Client);
    let none: Setup = |_| {};
    let session: Setup = |cl| cl.begin(0);
    let producer: Setup = |cl| {
        cl.begin(0);
        let l = cl.attach(0, 0, Role::Sender, "q");
        cl.c.accept_link(l).unwrap();
        cl.got();
    };
    let pending_producer: Setup = |cl| {
        cl.begin(0);
        cl.attach(0, 0, Role::Sender, "q");
    };
    let consumer: Setup = |cl| {
        cl.begin(0);
        let l = cl.attach(0, 0, Role::Receiver, "q");
        cl.c.accept_link(l).unwrap();
        cl.got();
    };
    let mut window = Vec::new();
    for i in 0..5 {
        window.extend(enc(0, &transfer(0, Some(i), false, true), b"w"));
    }
    let mut too_big = enc(0, &transfer(0, Some(0), true, true), &[1u8; 3000]);
    too_big.extend(enc(0, &transfer(0, None, false, true), &[1u8; 3000]));
    let mut bad_header = vec![0, 0, 0, 12, 1, 0, 0, 0];
    bad_header.extend([0; 4]);
    let mut bad_type = vec![0, 0, 0, 8, 2, 9, 0, 0];
    bad_type.truncate(8);
    let mut huge = vec![0x7f, 0, 0, 0, 2, 0, 0, 0];
    huge.extend([0; 8]);
    let not_described = vec![0, 0, 0, 10, 2, 0, 0, 0, 0x40, 0x40];
    let bad_list = vec![0, 0, 0, 14, 2, 0, 0, 0, 0x00, 0x53, 0x10, 0xc0, 0x09, 0x01];
    let second_open = enc(0, &Performative::Open(Box::new(Open::new("x"))), &[]);
    let attach0 = {
        let mut a = Attach::new("dup", 0, Role::Sender);
        a.initial_delivery_count = Some(0);
        enc(0, &Performative::Attach(Box::new(a)), &[])
    };
    let big_handle = enc(
        0,
        &Performative::Attach(Box::new(Attach::new("h", 100_000, Role::Sender))),
        &[],
    );
    let begin_high = enc(
        200,
        &Performative::Begin(Begin {
            remote_channel: None,
            next_outgoing_id: 0,
            incoming_window: 1,
            outgoing_window: 1,
            handle_max: 1,
            offered_capabilities: Symbols::None,
            desired_capabilities: Symbols::None,
            properties: None,
        }),
        &[],
    );
    let answer_begin = enc(
        1,
        &Performative::Begin(Begin {
            remote_channel: Some(0),
            next_outgoing_id: 0,
            incoming_window: 1,
            outgoing_window: 1,
            handle_max: 1,
            offered_capabilities: Symbols::None,
            desired_capabilities: Symbols::None,
            properties: None,
        }),
        &[],
    );
    let mut interleave = enc(0, &transfer(0, Some(0), true, false), b"a");
    interleave.extend(enc(0, &transfer(0, Some(7), false, false), b"b"));
    let cases: Vec<(&str, Setup, Vec<u8>, &str)> = vec![
        (
            "DOFF < 2",
            none,
            vec![0, 0, 0, 8, 1, 0, 0, 0],
            condition::FRAMING_ERROR,
        ),
        ("frame type 9", none, bad_type, condition::FRAMING_ERROR),
        (
            "frame over max-frame-size",
            none,
            huge,
            condition::FRAMING_ERROR,
        ),
        (
            "SIZE < 8",
            none,
            vec![0, 0, 0, 4, 2, 0, 0, 0],
            condition::FRAMING_ERROR,
        ),
        (
            "body not described",
            none,
            not_described,
            condition::DECODE_ERROR,
        ),
        ("list size lies", none, bad_list, condition::DECODE_ERROR),
        (
            "SASL frame after SASL",
            none,
            bad_header,
            condition::FRAMING_ERROR,
        ),
        ("second open", none, second_open, condition::NOT_ALLOWED),
        (
            "end without session",
            none,
            enc(0, &Performative::End(None), &[]),
            condition::NOT_ALLOWED,
        ),
        (
            "begin above channel-max",
            none,
            begin_high,
            condition::NOT_ALLOWED,
        ),
        (
            "begin answering nothing",
            none,
            answer_begin,
            condition::NOT_ALLOWED,
        ),
        (
            "transfer on unattached handle",
            session,
            enc(0, &transfer(3, Some(0), false, true), b"x"),
            condition::UNATTACHED_HANDLE,
        ),
        (
            "detach unattached handle",
            session,
            enc(
                0,
                &Performative::Detach(Detach {
                    handle: 9,
                    closed: true,
                    error: None,
                }),
                &[],
            ),
            condition::UNATTACHED_HANDLE,
        ),
        (
            "attach above handle-max",
            session,
            big_handle,
            condition::NOT_ALLOWED,
        ),
        ("handle in use", producer, attach0, condition::HANDLE_IN_USE),
        (
            "transfer without credit",
            pending_producer,
            enc(0, &transfer(0, Some(0), false, true), b"x"),
            condition::TRANSFER_LIMIT_EXCEEDED,
        ),
        (
            "transfer on a consumer link",
            consumer,
            enc(0, &transfer(0, Some(0), false, true), b"x"),
            condition::NOT_ALLOWED,
        ),
        (
            "first transfer without delivery-id",
            producer,
            enc(0, &transfer(0, None, false, true), b"x"),
            condition::INVALID_FIELD,
        ),
        (
            "interleaved delivery-id",
            producer,
            interleave,
            condition::NOT_ALLOWED,
        ),
        (
            "beyond the session window",
            producer,
            window,
            condition::WINDOW_VIOLATION,
        ),
        (
            "message too large",
            producer,
            too_big,
            condition::MESSAGE_SIZE_EXCEEDED,
        ),
    ];
    for (name, setup, bytes, cond) in cases {
        let mut cl = Client::new(ConnectionConfig {
            session_window: 4,
            link_credit: 100,
            max_message_size: 5000,
            max_frame_size: 4096,
            ..ConnectionConfig::default()
        });
        cl.open(None);
        setup(&mut cl);
        cl.events();
        cl.send_raw(&bytes);
        assert_eq!(cl.result, Err(cond.to_string()), "case {name}");
        cl.assert_closed_with(cond);
    }
}

#[test]
fn bad_protocol_header_and_frames_before_open() {
    let mut cl = Client::new(ConnectionConfig::default());
    cl.headers_due = 1;
    cl.send_raw(b"GET / HTTP/1.1\r\n");
    assert_eq!(cl.result, Err(condition::FRAMING_ERROR.to_string()));
    assert_eq!(cl.got(), vec![Got::Header(AMQP_HEADER)]);
    assert!(cl.c.is_closed());

    // A begin before open: our open, then close with not-allowed.
    let mut cl = Client::new(ConnectionConfig::default());
    cl.header(&AMQP_HEADER);
    cl.perf(
        0,
        &Performative::Begin(Begin {
            remote_channel: None,
            next_outgoing_id: 0,
            incoming_window: 1,
            outgoing_window: 1,
            handle_max: 1,
            offered_capabilities: Symbols::None,
            desired_capabilities: Symbols::None,
            properties: None,
        }),
    );
    let g = cl.got();
    assert!(matches!(g[1], Got::Open { .. }), "{g:?}");
    assert_eq!(g[2], Got::Close(Some(condition::NOT_ALLOWED.to_string())));
    assert!(cl.c.is_closed());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Any bytes after a valid open (with a session and a link of each role), in any split,
    /// never panic; a failure always leaves the connection closed with a close frame last.
    #[test]
    fn any_bytes_after_open_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        split in 0usize..600,
        prefix_ok in any::<bool>(),
    ) {
        let (mut cl, _l) = with_link(ConnectionConfig::default(), Role::Sender);
        let p = cl.attach(0, 1, Role::Receiver, "q");
        let _ = cl.c.accept_link(p);
        cl.got();
        let mut input = Vec::new();
        if prefix_ok {
            // A valid frame first, so the garbage starts at a frame boundary.
            input.extend(enc(0, &transfer(0, Some(0), true, false), b"part"));
        }
        input.extend(&bytes);
        let at = split.min(input.len());
        cl.send_raw(&input[..at]);
        let first = cl.result.clone();
        cl.send_raw(&input[at..]);
        if first.is_err() || cl.result.is_err() {
            prop_assert!(cl.c.is_closed());
            let g = cl.got();
            prop_assert!(matches!(g.last(), Some(Got::Close(Some(_)))), "{:?}", g);
        }
        // Timers and commands after anything still work.
        cl.c.handle_timeout(u64::MAX / 2);
        while cl.c.poll_event().is_some() {}
    }
}

#[derive(Debug, Clone)]
enum Op {
    Transfer {
        handle: u32,
        id: Option<u32>,
        more: bool,
        settled: bool,
        aborted: bool,
        len: usize,
    },
    Flow {
        handle: Option<u32>,
        dc: u32,
        credit: u32,
        drain: bool,
        echo: bool,
    },
    Disposition {
        receiver: bool,
        first: u32,
        last: Option<u32>,
        settled: bool,
        state: u8,
    },
    Attach {
        handle: u32,
        receiver: bool,
    },
    Detach {
        handle: u32,
        closed: bool,
    },
    End,
    /// Caller commands: accept/refuse every pending link, send on and settle links.
    Caller {
        refuse: bool,
        send: u8,
        settle_id: u32,
        drained: bool,
    },
    Tick(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop_oneof![9 => Just(0u32), 1 => 0u32..4], proptest::option::of(0u32..4), any::<bool>(), any::<bool>(), any::<bool>(), 0usize..40)
            .prop_map(|(handle, id, more, settled, aborted, len)| Op::Transfer { handle, id, more, settled, aborted, len }),
        3 => (proptest::option::of(prop_oneof![4 => Just(1u32), 1 => 0u32..4]), 0u32..8, 0u32..8, any::<bool>(), any::<bool>())
            .prop_map(|(handle, dc, credit, drain, echo)| Op::Flow { handle, dc, credit, drain, echo }),
        2 => (any::<bool>(), 0u32..8, proptest::option::of(0u32..8), any::<bool>(), 0u8..6)
            .prop_map(|(receiver, first, last, settled, state)| Op::Disposition { receiver, first, last, settled, state }),
        1 => (2u32..4, any::<bool>()).prop_map(|(handle, receiver)| Op::Attach { handle, receiver }),
        1 => (0u32..3, any::<bool>()).prop_map(|(handle, closed)| Op::Detach { handle, closed }),
        1 => Just(Op::End),
        4 => (any::<bool>(), 0u8..4, 0u32..6, any::<bool>())
            .prop_map(|(refuse, send, settle_id, drained)| Op::Caller { refuse, send, settle_id, drained }),
        1 => (0u16..40_000).prop_map(Op::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Any sequence of well-formed performatives (legal or not in their state) and caller
    /// commands never panics; a connection that closed on our side sent close last.
    #[test]
    fn any_performative_sequence_never_panics(ops in proptest::collection::vec(op(), 0..60)) {
        let mut cl = Client::new(ConnectionConfig { link_credit: 3, max_unsettled: 6, ..ConnectionConfig::default() });
        cl.open(Some(1000));
        cl.begin(0);
        let mut pending: Vec<LinkId> = Vec::new();
        // A producer link on handle 0 and a consumer link on handle 1, accepted.
        let p = cl.attach(0, 0, Role::Sender, "q");
        let c = cl.attach(0, 1, Role::Receiver, "q");
        cl.c.accept_link(p).unwrap();
        cl.c.accept_link(c).unwrap();
        cl.got();
        let mut links: Vec<LinkId> = vec![p, c];
        let mut tag = 0u64;
        let mut received: Vec<(LinkId, u32)> = Vec::new();
        for o in ops {
            match o {
                Op::Transfer { handle, id, more, settled, aborted, len } => {
                    let mut t = Transfer::new(handle, id.unwrap_or(0), b"t");
                    t.delivery_id = id;
                    t.more = more;
                    t.settled = Some(settled);
                    t.aborted = aborted;
                    cl.send_raw(&enc(0, &Performative::Transfer(t), &vec![1u8; len]));
                }
                Op::Flow { handle, dc, credit, drain, echo } => cl.perf(0, &Performative::Flow(Flow {
                    next_incoming_id: Some(0), incoming_window: 10, next_outgoing_id: 0,
                    outgoing_window: 10, handle, delivery_count: Some(dc), link_credit: Some(credit),
                    available: None, drain, echo, properties: None,
                })),
                Op::Disposition { receiver, first, last, settled, state } => {
                    let state = match state {
                        0 => None,
                        1 => Some(DeliveryState::Accepted),
                        2 => Some(DeliveryState::Released),
                        3 => Some(DeliveryState::Rejected(None)),
                        4 => Some(DeliveryState::Received { section_number: 0, section_offset: 0 }),
                        _ => Some(DeliveryState::Modified { delivery_failed: true, undeliverable_here: false, message_annotations: None }),
                    };
                    cl.perf(0, &Performative::Disposition(Disposition {
                        role: if receiver { Role::Receiver } else { Role::Sender },
                        first, last, settled, state, batchable: false,
                    }));
                }
                Op::Attach { handle, receiver } => {
                    let mut a = Attach::new("l", handle, if receiver { Role::Receiver } else { Role::Sender });
                    a.source = Some(Source { address: Some("q"), ..Source::default() });
                    a.target = Some(Target { address: Some("q"), ..Target::default() });
                    cl.perf(0, &Performative::Attach(Box::new(a)));
                }
                Op::Detach { handle, closed } => cl.perf(0, &Performative::Detach(Detach { handle, closed, error: None })),
                Op::End => cl.perf(0, &Performative::End(None)),
                Op::Caller { refuse, send, settle_id, drained } => {
                    for l in pending.drain(..) {
                        let _ = if refuse { cl.c.refuse_link(l, condition::NOT_FOUND, "no") } else { cl.c.accept_link(l) };
                        links.push(l);
                    }
                    for &l in &links {
                        for _ in 0..send {
                            tag += 1;
                            let _ = cl.c.send_message(l, tag, b"m", tag % 2 == 0);
                        }
                        let _ = cl.c.settle(l, settle_id, &Outcome::Accepted);
                        for &(ml, id) in &received {
                            let _ = cl.c.settle(ml, id, &Outcome::Released);
                        }
                        if drained {
                            let _ = cl.c.drained(l);
                        }
                    }
                }
                Op::Tick(ms) => {
                    cl.now += u64::from(ms);
                    cl.c.handle_timeout(cl.now);
                }
            }
            for e in cl.events() {
                match e {
                    Event::LinkAttached { link, .. } => pending.push(link),
                    Event::Message { link, delivery_id, .. } => received.push((link, delivery_id)),
                    _ => {}
                }
            }
            let closed_before = cl.c.is_closed();
            let g = cl.got();
            if closed_before && cl.c.close_error().is_some() && !g.is_empty() {
                prop_assert!(matches!(g.last(), Some(Got::Close(Some(_)))), "{:?}", g);
            }
            prop_assert!(cl.c.unsettled() <= 6);
        }
    }
}
