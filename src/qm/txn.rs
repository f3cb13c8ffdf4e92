//! Exactly-once-in-order receipt of transactional messages (MS-MQQB 3.1.5.8.6, DIGEST §10.3)
//! and the OrderAck schedule (3.1.1.6.2: 500 ms debounce, at most `SeqMaxAckDelay`).
//!
//! State is kept per (sender QM GUID, destination queue): the spec keeps it "per session" but
//! requires it to persist, and a sender runs one sequence per outgoing queue, so keying by sender
//! alone would make two queues' sequences collide (DIGEST §10.3 [INF]).

use std::collections::HashMap;

use crate::wire::Guid;

/// Incoming sequence state of one (sender, queue) pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IncomingSequence {
    /// TxSequenceID as a little-endian u64 (TimeStamp << 32 | Ordinal).
    pub seq_id: u64,
    /// Highest TxSequenceNumber accepted in `seq_id`.
    pub seq_no: u32,
    /// Messages refused since the last accepted one (TxMessageRejectCount).
    pub reject_count: u32,
    /// Where the last accepted message was stored (partition, store ticket); not persisted.
    /// An OrderAck or a duplicate's ack covering it waits until it is durable.
    pub origin: (usize, u64),
}

/// The verdict on one incoming transactional message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxVerdict {
    /// In order: store it, then update the state with [`TxnTable::commit`].
    Accept,
    /// A duplicate or out of order: discard it (the sender resends; the OrderAck tells it
    /// where we are).
    Reject,
}

/// The acceptance rule, on its own (MS-MQQB 3.1.5.8.6).
pub fn accept(state: &IncomingSequence, seq_id: u64, seq_no: u32, prev_no: u32) -> TxVerdict {
    let same_sequence_next =
        seq_id == state.seq_id && seq_no > state.seq_no && prev_no <= state.seq_no;
    let new_sequence = seq_id > state.seq_id && prev_no == 0;
    if same_sequence_next || new_sequence {
        TxVerdict::Accept
    } else {
        TxVerdict::Reject
    }
}

/// Key of the incoming state: sender QM and local queue id.
pub type TxKey = (Guid, u32);

/// The table of incoming sequences, bounded by `capacity` (senders × queues).
#[derive(Debug)]
pub struct TxnTable {
    capacity: usize,
    states: HashMap<TxKey, IncomingSequence>,
}

/// The table is full: the message is refused and the sender will resend later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnTableFull;

impl TxnTable {
    pub fn new(capacity: usize) -> Self {
        TxnTable {
            capacity,
            states: HashMap::new(),
        }
    }

    pub fn get(&self, key: &TxKey) -> IncomingSequence {
        self.states.get(key).copied().unwrap_or_default()
    }

    /// Judges a message; a rejection is counted.
    pub fn check(&mut self, key: TxKey, seq_id: u64, seq_no: u32, prev_no: u32) -> TxVerdict {
        let state = self.get(&key);
        let v = accept(&state, seq_id, seq_no, prev_no);
        if v == TxVerdict::Reject {
            if let Some(s) = self.states.get_mut(&key) {
                s.reject_count = s.reject_count.saturating_add(1);
            }
        }
        v
    }

    /// Records an accepted message once it is stored. Only acceptance moves the state, so a
    /// duplicate can never rewind it.
    pub fn commit(
        &mut self,
        key: TxKey,
        seq_id: u64,
        seq_no: u32,
        origin: (usize, u64),
    ) -> Result<IncomingSequence, TxnTableFull> {
        if !self.states.contains_key(&key) && self.states.len() >= self.capacity {
            return Err(TxnTableFull);
        }
        let s = IncomingSequence {
            seq_id,
            seq_no,
            reject_count: 0,
            origin,
        };
        self.states.insert(key, s);
        Ok(s)
    }

    /// Restores a state read back from disk at start-up (the highest position wins, whether
    /// it comes from a state record or from a message still in its queue).
    pub fn restore(&mut self, key: TxKey, s: IncomingSequence) {
        let cur = self.get(&key);
        if (s.seq_id, s.seq_no) > (cur.seq_id, cur.seq_no) {
            self.states.insert(key, s);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TxKey, &IncomingSequence)> {
        self.states.iter()
    }
}

/// When to send the next OrderAck for one sequence (MS-MQQB 3.1.2.7, 3.1.6.9): each accepted
/// message restarts a 500 ms timer, but never past `max_delay_ms` since the last OrderAck.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderAckTimer {
    pub deadline_ms: Option<u64>,
    pub last_sent_ms: u64,
}

/// OrderAckTimeout of MS-MQQB 3.1.3.2.
pub const ORDER_ACK_TIMEOUT_MS: u64 = 500;

impl OrderAckTimer {
    pub fn on_accepted(&mut self, now_ms: u64, max_delay_ms: u64) {
        let debounced = now_ms.saturating_add(ORDER_ACK_TIMEOUT_MS);
        let cap = self.last_sent_ms.saturating_add(max_delay_ms).max(now_ms);
        self.deadline_ms = Some(match self.deadline_ms {
            // Running: restart it, unless the cap since the last OrderAck has been reached.
            Some(d) => debounced.min(cap).max(d.min(cap)),
            None => debounced,
        });
    }

    /// Whether an OrderAck is due; marks it sent.
    pub fn fire(&mut self, now_ms: u64) -> bool {
        if self.deadline_ms.is_some_and(|d| now_ms >= d) {
            self.deadline_ms = None;
            self.last_sent_ms = now_ms;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEQ: u64 = 0x5F00_0000_0000_0001;

    #[test]
    fn the_acceptance_rule_of_the_spec() {
        let s = IncomingSequence::default();
        // A new sequence must start with PreviousTxSequenceNumber 0.
        assert_eq!(accept(&s, SEQ, 1, 0), TxVerdict::Accept);
        assert_eq!(accept(&s, SEQ, 2, 1), TxVerdict::Reject);
        let s = IncomingSequence {
            seq_id: SEQ,
            seq_no: 3,
            ..Default::default()
        };
        assert_eq!(accept(&s, SEQ, 4, 3), TxVerdict::Accept, "the next one");
        assert_eq!(
            accept(&s, SEQ, 6, 3),
            TxVerdict::Accept,
            "a gap left by expiry"
        );
        assert_eq!(accept(&s, SEQ, 3, 2), TxVerdict::Reject, "a duplicate");
        assert_eq!(
            accept(&s, SEQ, 5, 4),
            TxVerdict::Reject,
            "out of order: 4 missing"
        );
        assert_eq!(
            accept(&s, SEQ + 1, 1, 0),
            TxVerdict::Accept,
            "a newer sequence"
        );
        assert_eq!(
            accept(&s, SEQ - 1, 1, 0),
            TxVerdict::Reject,
            "an older sequence"
        );
    }

    #[test]
    fn duplicates_never_rewind_the_state_and_are_counted() {
        let mut t = TxnTable::new(10);
        let key = (Guid([1; 16]), 7);
        for n in 1..=3 {
            assert_eq!(t.check(key, SEQ, n, n - 1), TxVerdict::Accept);
            t.commit(key, SEQ, n, (0, 0)).unwrap();
        }
        assert_eq!(t.check(key, SEQ, 2, 1), TxVerdict::Reject);
        assert_eq!(t.check(key, SEQ, 1, 0), TxVerdict::Reject);
        assert_eq!(t.get(&key).seq_no, 3);
        assert_eq!(t.get(&key).reject_count, 2);
        // Another queue from the same sender has its own sequence.
        assert_eq!(t.check((Guid([1; 16]), 8), SEQ, 1, 0), TxVerdict::Accept);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = TxnTable::new(2);
        t.commit((Guid([1; 16]), 1), SEQ, 1, (0, 0)).unwrap();
        t.commit((Guid([2; 16]), 1), SEQ, 1, (0, 0)).unwrap();
        assert_eq!(
            t.commit((Guid([3; 16]), 1), SEQ, 1, (0, 0)),
            Err(TxnTableFull)
        );
        // Existing keys still advance.
        assert!(t.commit((Guid([1; 16]), 1), SEQ, 2, (0, 0)).is_ok());
    }

    #[test]
    fn order_acks_are_debounced_but_never_delayed_past_the_maximum() {
        let mut tm = OrderAckTimer::default();
        tm.on_accepted(0, 10_000);
        assert_eq!(tm.deadline_ms, Some(500));
        // A steady stream every 100 ms keeps pushing it back...
        for t in (100..=9_900).step_by(100) {
            tm.on_accepted(t, 10_000);
            assert!(!tm.fire(t));
        }
        // ...but not past 10 s after the last OrderAck.
        assert_eq!(tm.deadline_ms, Some(10_000));
        tm.on_accepted(9_950, 10_000);
        assert!(tm.fire(10_000));
        assert_eq!(tm.last_sent_ms, 10_000);
    }
}
