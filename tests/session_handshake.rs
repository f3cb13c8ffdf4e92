//! The session state machine over an in-memory pipe: handshake in both roles, refusals,
//! timers, and hostile packets. No sockets: the session is sans-IO.

use lior::session::{CloseReason, Event, Framer, Inbound, Session, SessionConfig, SessionState};
use lior::wire::{EstablishConnection, Guid, Packet};

fn cfg(g: u8) -> SessionConfig {
    SessionConfig {
        own_guid: Guid([g; 16]),
        ..SessionConfig::default()
    }
}

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/vectors/mqqb-4.1/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("vector file")
}

/// Moves every transmitted byte of `from` into `to`, framing it; returns the frames' kinds.
fn pump(now: u64, from: &mut Session, to: &mut Session) -> Vec<&'static str> {
    let bytes = from.take_transmit(Vec::new());
    let mut kinds = Vec::new();
    let mut framer = Framer::new();
    let _ = framer.feed(&bytes, |frame| {
        let kind = lior::wire::parse_packet(frame)
            .map(|p| p.kind())
            .unwrap_or("bad");
        kinds.push(kind);
        to.handle_frame(now, frame).map(|_| ())
    });
    kinds
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

#[test]
fn initiator_and_acceptor_complete_the_handshake() {
    let mut a = Session::acceptor(cfg(0xAA), 0);
    // A direct-format session: the initiator does not know the acceptor's GUID.
    let mut i = Session::initiator(cfg(0x11), Guid::NULL, 0);
    assert_eq!(i.state(), SessionState::WaitingEcrMsg);
    assert_eq!(pump(0, &mut i, &mut a), ["EstablishConnection"]);
    assert_eq!(a.state(), SessionState::WaitingCpMsg);
    assert_eq!(pump(40, &mut a, &mut i), ["EstablishConnection"]);
    assert_eq!(i.state(), SessionState::WaitingCprMsg);
    assert_eq!(pump(40, &mut i, &mut a), ["ConnectionParameters"]);
    assert_eq!(a.state(), SessionState::Open);
    assert_eq!(pump(41, &mut a, &mut i), ["ConnectionParameters"]);
    assert_eq!(i.state(), SessionState::Open);
    assert_eq!(
        events(&mut i),
        [Event::Established {
            remote_qm: Guid([0xAA; 16]),
            peer_window: 64
        }]
    );
    assert_eq!(a.remote_qm(), Guid([0x11; 16]));
    assert_eq!(i.window_available(), 64);
}

#[test]
fn acceptor_answers_the_spec_frames_like_windows() {
    let mut a = Session::acceptor(cfg(0xAA), 0);
    let f3 = vector("frame3-establish-connection-request.bin");
    // Frame 3 names a ServerGuid that is not ours: per MS-MQQB 3.1.5.3.1 the reply says CS=1.
    assert_eq!(a.handle_frame(0, &f3), Err(CloseReason::WrongServerGuid));
    let reply = a.take_transmit(Vec::new());
    assert_eq!(reply.len(), 572);
    assert_eq!(
        &reply[..16],
        &vector("frame4-establish-connection-response.bin")[..16]
    );
    let Ok(Packet::EstablishConnection(ec)) = lior::wire::parse_packet(&reply) else {
        panic!("the reply is an EstablishConnection");
    };
    assert!(ec.internal.flags.refused());

    // With ServerGuid zeroed (a direct format name) the same request is accepted.
    let mut f3_direct = f3.clone();
    f3_direct[36..52].fill(0);
    let mut a = Session::acceptor(cfg(0xAA), 0);
    assert_eq!(a.handle_frame(0, &f3_direct), Ok(Inbound::Control));
    let reply = a.take_transmit(Vec::new());
    let ec = EstablishConnection::parse(&reply).unwrap();
    assert!(!ec.internal.flags.refused());
    assert_eq!(ec.server_guid, Guid([0xAA; 16]));
    assert_eq!(
        &reply[..16],
        &vector("frame4-establish-connection-response.bin")[..16]
    );

    // Frame 5 then opens the session; the reply echoes the timeouts with our own window.
    let f5 = vector("frame5-connection-parameters-request.bin");
    assert_eq!(a.handle_frame(1, &f5), Ok(Inbound::Control));
    assert_eq!(a.state(), SessionState::Open);
    let reply = a.take_transmit(Vec::new());
    assert_eq!(&reply[16..], &f5[16..], "timeouts echoed, window 64");
}

#[test]
fn our_own_guid_is_accepted_and_max_in_sessions_refuses() {
    let f3 = vector("frame3-establish-connection-request.bin");
    let server = Guid(f3[36..52].try_into().unwrap());
    let mut a = Session::acceptor(
        SessionConfig {
            own_guid: server,
            ..SessionConfig::default()
        },
        0,
    );
    assert_eq!(a.handle_frame(0, &f3), Ok(Inbound::Control));

    let mut full = Session::acceptor(
        SessionConfig {
            own_guid: server,
            refuse: true,
            ..SessionConfig::default()
        },
        0,
    );
    assert_eq!(full.handle_frame(0, &f3), Err(CloseReason::RefusedByUs));
    let reply = full.take_transmit(Vec::new());
    assert!(EstablishConnection::parse(&reply)
        .unwrap()
        .internal
        .flags
        .refused());
}

#[test]
fn initiator_closes_on_a_refusal_or_a_wrong_guid() {
    let mut a = Session::acceptor(
        SessionConfig {
            refuse: true,
            ..cfg(0xAA)
        },
        0,
    );
    let mut i = Session::initiator(cfg(0x11), Guid::NULL, 0);
    pump(0, &mut i, &mut a);
    pump(0, &mut a, &mut i);
    assert_eq!(i.state(), SessionState::Closed);
    assert_eq!(events(&mut i), [Event::Closed(CloseReason::RefusedByPeer)]);

    // Expecting one queue manager and reaching another also closes.
    let mut a = Session::acceptor(cfg(0xAA), 0);
    let mut i = Session::initiator(cfg(0x11), Guid([0xBB; 16]), 0);
    pump(0, &mut i, &mut a);
    assert_eq!(
        a.state(),
        SessionState::Closed,
        "acceptor refuses a foreign ServerGuid"
    );
    pump(0, &mut a, &mut i);
    assert_eq!(i.state(), SessionState::Closed);
}

#[test]
fn packets_out_of_order_close_the_session() {
    // A ConnectionParameters before the EstablishConnection.
    let mut a = Session::acceptor(cfg(0xAA), 0);
    let f5 = vector("frame5-connection-parameters-request.bin");
    assert!(matches!(
        a.handle_frame(0, &f5),
        Err(CloseReason::Unexpected {
            state: SessionState::WaitingEcMsg,
            packet: "ConnectionParameters"
        })
    ));
    // A SessionAck before the handshake.
    let mut a = Session::acceptor(cfg(0xAA), 0);
    assert!(a
        .handle_frame(0, &vector("frame8-session-ack.bin"))
        .is_err());
    // A second EstablishConnection on an open session.
    let mut a = Session::acceptor(cfg(0xAA), 0);
    let mut i = Session::initiator(cfg(0x11), Guid::NULL, 0);
    for _ in 0..2 {
        pump(0, &mut i, &mut a);
        pump(0, &mut a, &mut i);
    }
    assert_eq!(a.state(), SessionState::Open);
    let mut f3 = vector("frame3-establish-connection-request.bin");
    f3[36..52].fill(0);
    assert!(a.handle_frame(0, &f3).is_err());
    assert!(a.is_closed());
}

#[test]
fn garbage_closes_with_a_malformed_reason() {
    let mut a = Session::acceptor(cfg(0xAA), 0);
    let mut junk = vector("frame5-connection-parameters-request.bin");
    junk[4] = 0;
    assert!(matches!(
        a.handle_frame(0, &junk),
        Err(CloseReason::Malformed(_))
    ));
    assert_eq!(events(&mut a).len(), 1);
    assert!(a.poll_timeout().is_none(), "a closed session has no timers");
}

#[test]
fn handshake_must_finish_before_the_initialization_timer() {
    let mut a = Session::acceptor(cfg(0xAA), 1_000);
    assert_eq!(a.poll_timeout(), Some(61_000));
    a.handle_timeout(60_999);
    assert_eq!(a.state(), SessionState::WaitingEcMsg);
    a.handle_timeout(61_000);
    assert_eq!(events(&mut a), [Event::Closed(CloseReason::InitTimeout)]);
}

#[test]
fn idle_open_sessions_are_cleaned_up() {
    let mut a = Session::acceptor(cfg(0xAA), 0);
    let mut i = Session::initiator(cfg(0x11), Guid::NULL, 0);
    for _ in 0..2 {
        pump(10, &mut i, &mut a);
        pump(10, &mut a, &mut i);
    }
    assert_eq!(a.poll_timeout(), Some(300_010));
    a.handle_timeout(300_009);
    assert_eq!(a.state(), SessionState::Open);
    a.handle_timeout(300_010);
    assert!(events(&mut a).contains(&Event::Closed(CloseReason::Idle)));
}
