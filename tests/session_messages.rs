//! UserMessages over a session pair: windowing, SessionAck generation, and the rule that a
//! recoverable message is acknowledged only after the store says it is durable.

use lior::session::{CloseReason, Event, Framer, Inbound, Session, SessionConfig};
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{parse_packet, utf16z, Guid, Packet, SessionAck, SessionHeader, Utf16};

fn cfg(g: u8) -> SessionConfig {
    SessionConfig {
        own_guid: Guid([g; 16]),
        ..SessionConfig::default()
    }
}

fn encode_msg(id: u32, recoverable: bool) -> Vec<u8> {
    let dest = utf16z("OS:linux1\\private$\\orders");
    let label = utf16z("hello");
    let m = UserMessage::new(
        Guid([0x11; 16]),
        id,
        QueueRef::Direct(Utf16(&dest)),
        Utf16(&label),
        b"body",
    )
    .with_recoverable(recoverable);
    let mut out = vec![0u8; m.frame_len()];
    let n = m.encode(&mut out).unwrap();
    out.truncate(n);
    out
}

/// An open pair: (initiator, acceptor).
fn open_pair() -> (Session, Session) {
    let mut a = Session::acceptor(cfg(0xAA), 0);
    let mut i = Session::initiator(cfg(0x11), Guid::NULL, 0);
    for _ in 0..2 {
        deliver(0, &mut i, &mut a);
        deliver(0, &mut a, &mut i);
    }
    drain(&mut i);
    drain(&mut a);
    (i, a)
}

fn drain(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Moves bytes from `from` to `to`; returns (session seq, recoverable seq) of each message.
fn deliver(now: u64, from: &mut Session, to: &mut Session) -> Vec<(u16, Option<u16>)> {
    let bytes = from.take_transmit(Vec::new());
    let mut got = Vec::new();
    let mut framer = Framer::new();
    framer
        .feed(&bytes, |frame| match to.handle_frame(now, frame) {
            Ok(Inbound::Message { seq, rec_seq, .. }) => {
                got.push((seq, rec_seq));
                Ok(())
            }
            Ok(Inbound::Control) => Ok(()),
            Err(e) => Err(e),
        })
        .unwrap();
    got
}

fn acks_in(bytes: &[u8]) -> Vec<SessionHeader> {
    let mut out = Vec::new();
    let mut f = Framer::new();
    f.feed(bytes, |frame| {
        if let Ok(Packet::SessionAck(a)) = parse_packet(frame) {
            out.push(a.session);
        }
        Ok::<(), ()>(())
    })
    .unwrap();
    out
}

fn acked_tokens(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Acked { token } => Some(*token),
            _ => None,
        })
        .collect()
}

#[test]
fn express_messages_are_acknowledged_by_sequence_number() {
    let (mut i, mut a) = open_pair();
    for n in 0..3 {
        i.send_message(1, &encode_msg(n, false), false, u64::from(n))
            .unwrap();
    }
    assert_eq!(
        deliver(1, &mut i, &mut a),
        [(1, None), (2, None), (3, None)]
    );
    a.flush_acks();
    let ack_bytes = a.take_transmit(Vec::new());
    let acks = acks_in(&ack_bytes);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].ack_sequence_number, 3);
    assert_eq!(acks[0].recoverable_msg_ack_seq_number, 0);
    assert_eq!(acks[0].window_size, 64);
    let mut f = Framer::new();
    f.feed(&ack_bytes, |fr| i.handle_frame(2, fr).map(|_| ()))
        .unwrap();
    assert_eq!(acked_tokens(&drain(&mut i)), [0, 1, 2]);
    assert_eq!(i.in_flight(), 0);
}

/// A message the app handed to another shard is held: no SessionAck covers it (nor anything
/// after it) until the app releases it, so the sender's window bounds what crosses shards.
#[test]
fn held_messages_are_not_acknowledged_until_released() {
    let (mut i, mut a) = open_pair();
    for n in 0..3 {
        i.send_message(1, &encode_msg(n, false), false, u64::from(n))
            .unwrap();
    }
    deliver(1, &mut i, &mut a);
    a.hold();
    a.hold();
    a.flush_acks();
    assert!(acks_in(&a.take_transmit(Vec::new())).is_empty());
    a.release();
    a.flush_acks();
    assert!(acks_in(&a.take_transmit(Vec::new())).is_empty());
    a.release();
    a.flush_acks();
    let acks = acks_in(&a.take_transmit(Vec::new()));
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].ack_sequence_number, 3);
}

#[test]
fn recoverable_messages_wait_for_the_disk_before_their_ack() {
    let (mut i, mut a) = open_pair();
    for n in 0..4 {
        i.send_message(1, &encode_msg(n, true), true, u64::from(n))
            .unwrap();
    }
    let got = deliver(1, &mut i, &mut a);
    assert_eq!(
        got,
        [(1, Some(1)), (2, Some(2)), (3, Some(3)), (4, Some(4))]
    );
    // Nothing is on disk yet: no SessionAck may name a recoverable message.
    a.flush_acks();
    assert!(!a.has_transmit(), "no ack before durability");
    // The store makes 1 and 2 durable.
    a.handle_durable(2, 2);
    a.flush_acks();
    let acks = acks_in(&a.take_transmit(Vec::new()));
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].recoverable_msg_ack_seq_number, 1);
    assert_eq!(acks[0].recoverable_msg_ack_flags, 0b11);
    assert_eq!(
        acks[0].recoverable_msg_seq_number, 0,
        "the acceptor sent nothing"
    );
    // The initiator deletes exactly 1 and 2.
    let mut b = vec![0u8; 36];
    SessionAck::new(acks[0]).encode(&mut b).unwrap();
    i.handle_frame(3, &b).unwrap();
    assert_eq!(acked_tokens(&drain(&mut i)), [0, 1]);
    assert_eq!(i.in_flight(), 2);
    // Then 3 and 4.
    a.handle_durable(4, 4);
    a.flush_acks();
    let acks = acks_in(&a.take_transmit(Vec::new()));
    assert_eq!(
        (
            acks[0].recoverable_msg_ack_seq_number,
            acks[0].recoverable_msg_ack_flags
        ),
        (3, 0b11)
    );
}

#[test]
fn stale_or_impossible_durability_reports_are_ignored() {
    let (mut i, mut a) = open_pair();
    i.send_message(1, &encode_msg(1, true), true, 1).unwrap();
    deliver(1, &mut i, &mut a);
    a.handle_durable(1, 9); // more than was received
    a.flush_acks();
    assert!(!a.has_transmit());
    a.handle_durable(1, 1);
    a.flush_acks();
    assert_eq!(acks_in(&a.take_transmit(Vec::new())).len(), 1);
}

#[test]
fn more_than_32_newly_durable_messages_take_several_acks() {
    let mut a_cfg = cfg(0xAA);
    a_cfg.window_size = 200;
    let mut a = Session::acceptor(a_cfg, 0);
    let mut i_cfg = cfg(0x11);
    i_cfg.window_size = 200;
    let mut i = Session::initiator(i_cfg, Guid::NULL, 0);
    for _ in 0..2 {
        deliver(0, &mut i, &mut a);
        deliver(0, &mut a, &mut i);
    }
    for n in 0..70 {
        i.send_message(1, &encode_msg(n, true), true, u64::from(n))
            .unwrap();
    }
    assert_eq!(deliver(1, &mut i, &mut a).len(), 70);
    a.handle_durable(2, 70);
    a.flush_acks();
    let acks = acks_in(&a.take_transmit(Vec::new()));
    let covered: Vec<(u16, u32)> = acks
        .iter()
        .map(|h| {
            (
                h.recoverable_msg_ack_seq_number,
                h.recoverable_msg_ack_flags,
            )
        })
        .collect();
    assert_eq!(covered, [(1, u32::MAX), (33, u32::MAX), (65, 0b11_1111)]);
    let mut f = Framer::new();
    let mut bytes = Vec::new();
    for h in &acks {
        let mut b = vec![0u8; 36];
        SessionAck::new(*h).encode(&mut b).unwrap();
        bytes.extend_from_slice(&b);
    }
    f.feed(&bytes, |fr| i.handle_frame(3, fr).map(|_| ()))
        .unwrap();
    assert_eq!(acked_tokens(&drain(&mut i)).len(), 70);
}

#[test]
fn the_window_limits_unacknowledged_sends() {
    let (mut i, mut a) = open_pair();
    for n in 0..64 {
        i.send_message(1, &encode_msg(n, false), false, u64::from(n))
            .unwrap();
    }
    assert_eq!(
        i.send_message(1, &encode_msg(99, false), false, 99),
        Err(lior::session::SendError::WindowFull)
    );
    deliver(1, &mut i, &mut a);
    a.flush_acks();
    deliver(2, &mut a, &mut i);
    assert_eq!(i.window_available(), 64);
}

#[test]
fn a_wrong_recoverable_count_closes_the_session() {
    let (mut i, _a) = open_pair();
    let mut b = vec![0u8; 36];
    SessionAck::new(SessionHeader {
        recoverable_msg_seq_number: 5, // the peer claims 5 recoverable sends we never saw
        window_size: 64,
        ..Default::default()
    })
    .encode(&mut b)
    .unwrap();
    assert_eq!(i.handle_frame(1, &b), Err(CloseReason::CountMismatch));
}

#[test]
fn a_silent_peer_times_out_unacknowledged_sends() {
    let (mut i, _a) = open_pair();
    i.send_message(1_000, &encode_msg(1, false), false, 1)
        .unwrap();
    let deadline = i.poll_timeout().unwrap();
    assert_eq!(deadline, 21_000, "AckWaitTimeout 20 s x multiplier 1");
    i.handle_timeout(deadline);
    assert!(drain(&mut i).contains(&Event::Closed(CloseReason::AckTimeout)));
    assert_eq!(i.unacked_tokens().collect::<Vec<_>>(), [1], "to be resent");
}

#[test]
fn the_ack_send_timer_acknowledges_the_window_even_if_the_disk_is_slow() {
    let (mut i, mut a) = open_pair();
    i.send_message(0, &encode_msg(1, true), true, 1).unwrap();
    deliver(0, &mut i, &mut a);
    a.flush_acks();
    assert!(!a.has_transmit());
    let t = a.poll_timeout().unwrap();
    assert_eq!(t, 10_000, "AckWaitTimeout / 2");
    a.handle_timeout(t);
    let acks = acks_in(&a.take_transmit(Vec::new()));
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].ack_sequence_number, 1);
    assert_eq!(
        acks[0].recoverable_msg_ack_seq_number, 0,
        "nothing durable is named"
    );
}
