//! Exactly-once-in-order receipt of transactional messages (MS-MQQB 3.1.5.8.6, DIGEST §10.3)
//! and the OrderAck schedule (3.1.1.6.2: 500 ms debounce, at most `SeqMaxAckDelay`).
//!
//! State is kept per (sender QM GUID, destination queue): the spec keeps it "per session" but
//! requires it to persist, and a sender runs one sequence per outgoing queue, so keying by sender
//! alone would make two queues' sequences collide (DIGEST §10.3 [INF]).

use std::collections::{HashMap, VecDeque};

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
    /// The position before the last move to a newer sequence (persisted). A sender still
    /// sending the older sequence in order shows the move was not its own (a spoofed message
    /// with its GUID and a higher TxSequenceID): its messages are still taken and the state
    /// moves back.
    pub prior: Option<(u64, u32)>,
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

/// One kept state, with what eviction and spoof resistance need.
#[derive(Clone, Copy, Debug)]
struct Entry {
    s: IncomingSequence,
    /// Unix seconds of the last accepted message (rejections do not keep a state alive).
    last_s: u32,
}

/// The bounds of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnLimits {
    /// States kept at most.
    pub capacity: usize,
    /// A full table may evict a state idle at least this long (seconds).
    pub evict_idle_s: u32,
    /// A state idle this long is forgotten in any case (seconds).
    pub idle_max_s: u32,
}

/// The table of incoming sequences, bounded by `capacity` (senders × queues), states evicted by
/// age.
#[derive(Debug)]
pub struct TxnTable {
    limits: TxnLimits,
    states: HashMap<TxKey, Entry>,
    /// Keys in the order of the time recorded with them (older first); an entry whose key was
    /// accepted again since carries a stale time and is refreshed when it surfaces.
    order: VecDeque<(TxKey, u32)>,
    /// Keys forgotten since the last [`TxnTable::take_evicted`] (their persisted records go).
    evicted: Vec<TxKey>,
    /// Times the table was full and refused a new sequence.
    pub refused_full: u64,
    /// States evicted (by age or to make room).
    pub evictions: u64,
}

/// The table is full: the message is refused and the sender will resend later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnTableFull;

impl TxnTable {
    pub fn new(limits: TxnLimits) -> Self {
        TxnTable {
            limits: TxnLimits {
                capacity: limits.capacity.max(1),
                ..limits
            },
            states: HashMap::new(),
            order: VecDeque::new(),
            evicted: Vec::new(),
            refused_full: 0,
            evictions: 0,
        }
    }

    /// A table bounded at `capacity`, evicting nothing by age (tests).
    pub fn with_capacity(capacity: usize) -> Self {
        TxnTable::new(TxnLimits {
            capacity,
            evict_idle_s: u32::MAX,
            idle_max_s: u32::MAX,
        })
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub fn get(&self, key: &TxKey) -> IncomingSequence {
        self.states.get(key).map(|e| e.s).unwrap_or_default()
    }

    /// Judges a message; a rejection is counted.
    pub fn check(&mut self, key: TxKey, seq_id: u64, seq_no: u32, prev_no: u32) -> TxVerdict {
        let Some(e) = self.states.get_mut(&key) else {
            return accept(&IncomingSequence::default(), seq_id, seq_no, prev_no);
        };
        let mut v = accept(&e.s, seq_id, seq_no, prev_no);
        if v == TxVerdict::Reject {
            if let Some((pid, pno)) = e.s.prior {
                if seq_id == pid && seq_no > pno && prev_no <= pno {
                    v = TxVerdict::Accept;
                }
            }
        }
        if v == TxVerdict::Reject {
            e.s.reject_count = e.s.reject_count.saturating_add(1);
        }
        v
    }

    /// Whether a new key can be taken now (making room if a state is idle long enough);
    /// `Err` when the table is full of recently active states.
    fn make_room(&mut self, now_s: u32) -> Result<(), TxnTableFull> {
        while self.states.len() >= self.limits.capacity {
            let Some((key, t)) = self.order.pop_front() else {
                return Err(TxnTableFull);
            };
            match self.states.get(&key).map(|e| e.last_s) {
                Some(latest) if latest != t => self.order.push_back((key, latest)),
                Some(latest) => {
                    if now_s.saturating_sub(latest) < self.limits.evict_idle_s {
                        self.order.push_front((key, t));
                        self.refused_full += 1;
                        return Err(TxnTableFull);
                    }
                    self.forget(key);
                }
                None => {}
            }
        }
        Ok(())
    }

    fn forget(&mut self, key: TxKey) {
        if self.states.remove(&key).is_some() {
            self.evicted.push(key);
            self.evictions += 1;
        }
    }

    /// Forgets states idle longer than the maximum (MSMQ keeps a sequence until its sender can
    /// no longer be resending it). Bounded work: looks at most `max` keys.
    pub fn sweep(&mut self, now_s: u32, max: usize) {
        for _ in 0..max {
            let Some(&(key, t)) = self.order.front() else {
                return;
            };
            match self.states.get(&key).map(|e| e.last_s) {
                Some(latest) if latest != t => {
                    self.order.pop_front();
                    self.order.push_back((key, latest));
                }
                Some(latest) if now_s.saturating_sub(latest) >= self.limits.idle_max_s => {
                    self.order.pop_front();
                    self.forget(key);
                }
                Some(_) => return,
                None => {
                    self.order.pop_front();
                }
            }
        }
    }

    /// Keys forgotten since the last call.
    pub fn take_evicted(&mut self) -> Vec<TxKey> {
        std::mem::take(&mut self.evicted)
    }

    /// Whether a message starting or continuing `key` could be recorded now (a full table of
    /// active states refuses new keys): checked before the message is stored, so a refused
    /// message is never stored without its state.
    pub fn has_room(&mut self, key: &TxKey, now_s: u32) -> bool {
        self.states.contains_key(key) || self.make_room(now_s).is_ok()
    }

    /// Records an accepted message once it is stored. Only acceptance moves the state, so a
    /// duplicate can never rewind it.
    pub fn commit(
        &mut self,
        key: TxKey,
        seq_id: u64,
        seq_no: u32,
        origin: (usize, u64),
        now_s: u32,
    ) -> Result<IncomingSequence, TxnTableFull> {
        let old = match self.states.get(&key) {
            Some(e) => Some(*e),
            None => {
                self.make_room(now_s)?;
                None
            }
        };
        let s = IncomingSequence {
            seq_id,
            seq_no,
            reject_count: 0,
            origin,
            prior: None,
        };
        let prior = match old {
            // A move to a newer sequence remembers where the older one stood.
            Some(o) if seq_id > o.s.seq_id => Some((o.s.seq_id, o.s.seq_no)),
            // The same sequence keeps what it had; a move back (the sender of the older
            // sequence went on) drops the newer one.
            Some(o) if seq_id == o.s.seq_id => o.s.prior,
            _ => None,
        };
        let s = IncomingSequence { prior, ..s };
        self.states.insert(key, Entry { s, last_s: now_s });
        // One order entry per key: an existing key's entry is refreshed when it surfaces.
        if old.is_none() {
            self.order.push_back((key, now_s));
        }
        if self.order.len() > self.states.len().saturating_mul(2) + 16 {
            self.compact_order();
        }
        Ok(s)
    }

    /// Drops stale entries of the order queue (one per key remains).
    fn compact_order(&mut self) {
        let states = &self.states;
        self.order
            .retain(|(k, t)| states.get(k).is_some_and(|e| e.last_s == *t));
        // Equal times of one key may remain twice; harmless (the second is skipped later).
    }

    /// Restores a state read back from disk at start-up (the highest position wins, whether
    /// it comes from a state record or from a message still in its queue). Restored states
    /// count as active at `now_s`. Past the capacity, the rest are not kept (logged by the
    /// caller).
    pub fn restore(&mut self, key: TxKey, mut s: IncomingSequence, now_s: u32) -> bool {
        let cur = self.get(&key);
        if (s.seq_id, s.seq_no) <= (cur.seq_id, cur.seq_no) {
            return true;
        }
        // A move to a newer sequence known only from a stored message (its state record was
        // torn off, or it is the message of a spoofer) remembers where the older one stood.
        if s.prior.is_none() && s.seq_id > cur.seq_id && cur.seq_id != 0 {
            s.prior = Some((cur.seq_id, cur.seq_no));
        } else if s.prior.is_none() && s.seq_id == cur.seq_id {
            s.prior = cur.prior;
        }
        if !self.states.contains_key(&key) && self.states.len() >= self.limits.capacity {
            return false;
        }
        let fresh = !self.states.contains_key(&key);
        self.states.insert(key, Entry { s, last_s: now_s });
        if fresh {
            self.order.push_back((key, now_s));
        }
        true
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TxKey, &IncomingSequence)> {
        self.states.iter().map(|(k, e)| (k, &e.s))
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
        let mut t = TxnTable::with_capacity(10);
        let key = (Guid([1; 16]), 7);
        for n in 1..=3 {
            assert_eq!(t.check(key, SEQ, n, n - 1), TxVerdict::Accept);
            t.commit(key, SEQ, n, (0, 0), 0).unwrap();
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
        let mut t = TxnTable::with_capacity(2);
        t.commit((Guid([1; 16]), 1), SEQ, 1, (0, 0), 0).unwrap();
        t.commit((Guid([2; 16]), 1), SEQ, 1, (0, 0), 0).unwrap();
        assert_eq!(
            t.commit((Guid([3; 16]), 1), SEQ, 1, (0, 0), 0),
            Err(TxnTableFull)
        );
        // Existing keys still advance.
        assert!(t.commit((Guid([1; 16]), 1), SEQ, 2, (0, 0), 0).is_ok());
    }

    #[test]
    fn a_full_table_evicts_the_longest_idle_state_and_idle_states_age_out() {
        let mut t = TxnTable::new(TxnLimits {
            capacity: 3,
            evict_idle_s: 100,
            idle_max_s: 1_000,
        });
        let k = |n: u8| (Guid([n; 16]), 1);
        for n in 1..=3 {
            t.commit(k(n), SEQ, 1, (0, 0), u32::from(n)).unwrap();
        }
        // 1 stays active; 2 is then the longest idle.
        t.commit(k(1), SEQ, 2, (0, 0), 50).unwrap();
        // Nobody idle long enough yet: a new key is refused, nothing is lost.
        assert!(!t.has_room(&k(4), 60));
        assert_eq!(t.commit(k(4), SEQ, 1, (0, 0), 60), Err(TxnTableFull));
        assert_eq!(t.len(), 3);
        // Later, the longest idle (2) makes room, and its record is to be deleted.
        assert!(t.has_room(&k(4), 200));
        t.commit(k(4), SEQ, 1, (0, 0), 200).unwrap();
        assert_eq!(t.get(&k(2)), IncomingSequence::default());
        assert_eq!(t.get(&k(1)).seq_no, 2);
        assert_eq!(t.take_evicted(), vec![k(2)]);
        // Past the maximum idle time everything idle goes.
        t.sweep(1_100, 100);
        assert_eq!(t.len(), 1, "only 4 (active at 200) is left");
        assert_eq!(t.get(&k(4)).seq_no, 1);
        let mut gone = t.take_evicted();
        gone.sort();
        assert_eq!(gone, vec![k(1), k(3)]);
        // Many accepts of one key never grow the order queue without bound.
        for n in 2..10_000 {
            t.commit(k(4), SEQ, n, (0, 0), 1_100).unwrap();
        }
        assert!(t.order.len() < 64);
    }

    #[test]
    fn a_spoofed_higher_sequence_does_not_block_the_sender_still_in_its_own() {
        let mut t = TxnTable::with_capacity(10);
        let key = (Guid([1; 16]), 7);
        for n in 1..=3 {
            assert_eq!(t.check(key, SEQ, n, n - 1), TxVerdict::Accept);
            t.commit(key, SEQ, n, (0, 0), 0).unwrap();
        }
        // Someone claims the sender's GUID with the highest sequence id there is.
        assert_eq!(t.check(key, u64::MAX, 1, 0), TxVerdict::Accept);
        t.commit(key, u64::MAX, 1, (0, 0), 0).unwrap();
        // The real sender goes on in order: taken, and the state moves back to it.
        assert_eq!(t.check(key, SEQ, 4, 3), TxVerdict::Accept);
        t.commit(key, SEQ, 4, (0, 0), 0).unwrap();
        assert_eq!((t.get(&key).seq_id, t.get(&key).seq_no), (SEQ, 4));
        // Its duplicates are still refused.
        assert_eq!(t.check(key, SEQ, 4, 3), TxVerdict::Reject);
        assert_eq!(t.check(key, SEQ, 2, 1), TxVerdict::Reject);
        // A real move to a newer sequence of the sender's own is not undone by old resends.
        assert_eq!(t.check(key, SEQ + 1, 1, 0), TxVerdict::Accept);
        t.commit(key, SEQ + 1, 1, (0, 0), 0).unwrap();
        assert_eq!(t.check(key, SEQ, 4, 3), TxVerdict::Reject);
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
