//! The OrderAcks one incoming session owes, sans-IO (MS-MQQB 3.1.1.3 OrderAck timer, 3.1.5.8.x
//! accepting transactional messages, 3.1.7.17 addressing the OrderAck).
//!
//! An accepted transactional message (re)starts its sequence's timer (debounced by
//! OrderAckTimeout, capped by SeqMaxAckDelay since the last OrderAck); when it fires the session
//! sends one OrderAck naming the highest number accepted. An OrderAck says every message up to
//! it is stored, so none goes out while a message of the session is not yet durable
//! ([`OrderAcks::hold`]). The table is bounded per session ([`ORDER_ACKS_PER_SESSION_MAX`]):
//! past it a sequence's OrderAck waits for that sender's next message or resend.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::qm::catalog::ORDER_QUEUE_ID;
use crate::qm::txn::{IncomingSequence, OrderAckTimer, TxKey};
use crate::wire::user::{OrderAckBody, QueueRef, UserMessage};
use crate::wire::{utf16z, Guid, Utf16};

/// OrderAck schedules one session keeps at most (one per sender × queue it carries).
pub const ORDER_ACKS_PER_SESSION_MAX: usize = 4_096;

/// How soon an OrderAck held back for durability is tried again.
pub const ORDER_ACK_RETRY_MS: u64 = 10;

/// How soon an OrderAck the session could not take (its window was full) is tried again.
pub const ORDER_ACK_WINDOW_RETRY_MS: u64 = 50;

/// The OrderAck schedules of one session.
#[derive(Debug, Default)]
pub struct OrderAcks {
    map: HashMap<TxKey, (OrderAckTimer, IncomingSequence)>,
}

impl OrderAcks {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// A transactional message of sequence `key` was accepted, leaving it at `state`. False
    /// when the table is full and `key` is new (no OrderAck is scheduled for it).
    pub fn on_accepted(
        &mut self,
        now_ms: u64,
        key: TxKey,
        state: IncomingSequence,
        max_delay_ms: u64,
    ) -> bool {
        if self.map.len() >= ORDER_ACKS_PER_SESSION_MAX && !self.map.contains_key(&key) {
            return false;
        }
        let e = self.map.entry(key).or_default();
        e.0.on_accepted(now_ms, max_delay_ms);
        e.1 = state;
        true
    }

    /// Messages of the session are not durable yet: every OrderAck that is due waits a little
    /// longer (it would claim they are stored).
    pub fn hold(&mut self, now_ms: u64) {
        for (t, _) in self.map.values_mut() {
            if t.deadline_ms.is_some_and(|d| d <= now_ms) {
                t.deadline_ms = Some(now_ms + ORDER_ACK_RETRY_MS);
            }
        }
    }

    /// The OrderAcks due now (each marked sent).
    pub fn take_due(&mut self, now_ms: u64) -> Vec<IncomingSequence> {
        self.map
            .values_mut()
            .filter_map(|(t, s)| t.fire(now_ms).then_some(*s))
            .collect()
    }

    /// The OrderAck for `s` could not be sent: try again at `at_ms`.
    pub fn retry_at(&mut self, s: IncomingSequence, at_ms: u64) {
        if let Some(entry) = self.map.values_mut().find(|(_, st)| *st == s) {
            entry.0.deadline_ms = Some(at_ms);
        }
    }

    /// The earliest OrderAck deadline.
    pub fn deadline(&self) -> Option<u64> {
        self.map.values().filter_map(|(t, _)| t.deadline_ms).min()
    }

    /// Forgets the sequences whose OrderAck went out and that have nothing new (they come back
    /// with their sender's next message).
    pub fn prune(&mut self) {
        self.map
            .retain(|_, (t, _)| t.deadline_ms.is_some() || t.last_sent_ms == 0);
    }
}

/// Where an OrderAck goes (MS-MQQB 3.1.7.17).
#[derive(Debug, Clone, Copy)]
pub enum OrderAckTo {
    /// The session carried direct format names: `DIRECT=TCP:<sender address>\PRIVATE$\order_queue$`.
    Direct(IpAddr),
    /// Otherwise the sender's order queue by number, `PRIVATE=<sender QM>\4`.
    Private(Guid),
}

/// The OrderAck message for sequence state `s`, sent by queue manager `own` with message
/// ordinal `ordinal`, encoded as a frame.
pub fn order_ack_frame(
    own: Guid,
    ordinal: u32,
    s: &IncomingSequence,
    to: OrderAckTo,
) -> Result<Vec<u8>, crate::wire::WireError> {
    let body = OrderAckBody {
        tx_sequence_id: s.seq_id,
        tx_sequence_number: s.seq_no,
        tx_previous_sequence_number: s.seq_no.saturating_sub(1),
    }
    .to_bytes();
    let direct;
    let m = match to {
        OrderAckTo::Direct(ip) => {
            direct = utf16z(&format!("TCP:{ip}\\PRIVATE$\\order_queue$"));
            UserMessage::order_ack(own, ordinal, QueueRef::Direct(Utf16(&direct)), &body)
        }
        OrderAckTo::Private(remote) => UserMessage::order_ack(
            own,
            ordinal,
            QueueRef::DestinationPrivate(ORDER_QUEUE_ID),
            &body,
        )
        .with_queue_manager_address(remote),
    };
    let mut bytes = vec![0u8; m.frame_len()];
    let n = m.encode(&mut bytes)?;
    bytes.truncate(n);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qm::txn::ORDER_ACK_TIMEOUT_MS;

    fn seq(no: u32) -> IncomingSequence {
        IncomingSequence {
            seq_id: 7,
            seq_no: no,
            ..Default::default()
        }
    }

    #[test]
    fn an_order_ack_is_due_after_the_timeout_and_held_while_not_durable() {
        let mut o = OrderAcks::default();
        let key = (Guid([1; 16]), 5);
        assert!(o.on_accepted(0, key, seq(1), 10_000));
        assert!(o.on_accepted(10, key, seq(2), 10_000));
        assert_eq!(o.deadline(), Some(10 + ORDER_ACK_TIMEOUT_MS));
        assert!(o.take_due(10 + ORDER_ACK_TIMEOUT_MS - 1).is_empty());
        o.hold(10 + ORDER_ACK_TIMEOUT_MS);
        assert_eq!(
            o.deadline(),
            Some(10 + ORDER_ACK_TIMEOUT_MS + ORDER_ACK_RETRY_MS)
        );
        let due = o.take_due(10 + ORDER_ACK_TIMEOUT_MS + ORDER_ACK_RETRY_MS);
        assert_eq!(
            due,
            vec![seq(2)],
            "one OrderAck naming the highest accepted"
        );
        assert_eq!(o.deadline(), None);
        o.prune();
        assert!(o.is_empty(), "sent and nothing new: forgotten");
    }

    #[test]
    fn a_refused_send_is_retried_and_the_table_is_bounded() {
        let mut o = OrderAcks::default();
        let key = (Guid([2; 16]), 5);
        o.on_accepted(0, key, seq(3), 10_000);
        let due = o.take_due(ORDER_ACK_TIMEOUT_MS);
        o.retry_at(due[0], ORDER_ACK_TIMEOUT_MS + ORDER_ACK_WINDOW_RETRY_MS);
        assert_eq!(
            o.deadline(),
            Some(ORDER_ACK_TIMEOUT_MS + ORDER_ACK_WINDOW_RETRY_MS)
        );
        for q in 0..ORDER_ACKS_PER_SESSION_MAX as u32 {
            o.on_accepted(0, (Guid([3; 16]), q), seq(1), 10_000);
        }
        assert_eq!(o.len(), ORDER_ACKS_PER_SESSION_MAX);
        assert!(
            !o.on_accepted(0, (Guid([4; 16]), 1), seq(1), 10_000),
            "full"
        );
        assert!(
            o.on_accepted(1, key, seq(4), 10_000),
            "a known sequence still counts"
        );
    }

    #[test]
    fn the_frame_is_addressed_as_the_spec_says() {
        let f = order_ack_frame(
            Guid([9; 16]),
            3,
            &seq(4),
            OrderAckTo::Direct("10.0.0.1".parse().unwrap()),
        )
        .unwrap();
        let m = UserMessage::parse(&f).unwrap();
        assert_eq!(m.user.message_id, 3);
        let f = order_ack_frame(
            Guid([9; 16]),
            4,
            &seq(4),
            OrderAckTo::Private(Guid([8; 16])),
        )
        .unwrap();
        let m = UserMessage::parse(&f).unwrap();
        assert_eq!(
            m.user.destination.code(),
            QueueRef::DestinationPrivate(0).code()
        );
    }
}
