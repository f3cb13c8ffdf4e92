//! The auditor: what the simulation promises, checked against what the real store holds.
//!
//! 1. No ack before durability: whenever the server emits a SessionAck naming a recoverable
//!    message, and whenever an OrderAck reaches the client, the message is durable in the store
//!    at that moment (visible there: recoverable records become visible only once their batch
//!    is on disk) or was already received by a consumer.
//! 2. Nothing lost: after every crash and recovery, every message ever acknowledged
//!    (recoverable: SessionAck; transactional: OrderAck) and not yet consumed is in the store.
//! 3. Transactional messages are consumed exactly once and in sequence order. Non-transactional
//!    messages are never duplicated within one server incarnation (the duplicate table sees every
//!    resend there); across a crash the in-memory duplicate table is gone, so a resend of a
//!    message whose ack was lost is stored again: counted and reported, allowed.
//! 4. Express messages may be lost in a crash, never otherwise.
//! 5. At the end, after a fault-free quiet period: every message is acknowledged, and draining
//!    the queues yields every recoverable and transactional message.
//! 6. Durable means durable in the queue's owning partition (the one the catalog assigned it):
//!    with two shards each queue lives in one of two stores, and an ack checked against the
//!    other would prove nothing.
//! 7. FIFO: per queue, sender and priority, a consumer gets a sender's express and recoverable
//!    messages in the order it sent them (message ids increase), copies stored by a later
//!    server incarnation (resends after a crash) and copies already consumed once excepted.
//!    (Transactional ones are checked by 3, which is stricter.)

use lior::qm::broker::Broker;
use lior::session::FrameError;
use lior::session::Framer;
use std::collections::{HashMap, HashSet};

use lior::store::{Cursor, QueueId, QueueStore, SimStore};
use lior::wire::user::UserMessage;
use lior::wire::{parse_packet, Guid, Packet, SessionHeader};

use super::net::Link;

/// The queues of the simulation: (name, transactional).
pub const QUEUES: [(&str, bool); 4] = [
    ("sim_a", false),
    ("sim_b", false),
    ("sim_t0", true),
    ("sim_t1", true),
];
/// Where a queue of [`QUEUES`] is stored: its store id and its owning partition.
#[derive(Clone, Copy, Debug)]
pub struct QueueAt {
    pub id: QueueId,
    pub partition: usize,
}

/// Index in [`QUEUES`] of the first transactional queue.
pub const TX_QUEUE_FIRST: usize = 2;

const BODY_MAGIC: u32 = 0x5155_4D53;

/// A message's delivery class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Express,
    Recoverable,
    /// Transactional, with its TxSequenceNumber (1, 2, ... per client and queue).
    Tx {
        seq_no: u32,
    },
}

/// The sender QM GUID of client `c`.
pub fn client_guid(c: usize) -> Guid {
    Guid([0x40 + c as u8; 16])
}

/// The TxSequenceID client `c` uses towards transactional queue `queue`.
pub fn tx_sequence_id(c: usize, queue: usize) -> u64 {
    0x5F00_0000_0000_0000 | ((c as u64) << 8) | queue as u64
}

/// The body every simulated message carries: who sent it, which message, on which connection.
pub fn body(c: usize, idx: usize, link: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&(c as u32).to_le_bytes());
    b[4..8].copy_from_slice(&(idx as u32).to_le_bytes());
    b[8..12].copy_from_slice(&link.to_le_bytes());
    b[12..16].copy_from_slice(&BODY_MAGIC.to_le_bytes());
    b
}

fn parse_body(b: &[u8]) -> Option<(usize, usize, u32)> {
    if b.len() != 16 || b[12..16] != BODY_MAGIC.to_le_bytes() {
        return None;
    }
    let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Some((u(0) as usize, u(4) as usize, u(8)))
}

/// `a <= b` in 16-bit serial arithmetic, as the session compares recoverable numbers.
fn seq_le(a: u16, b: u16) -> bool {
    b.wrapping_sub(a) < 0x8000
}

/// What the auditor knows about one message.
#[derive(Clone, Debug)]
pub struct Fact {
    pub kind: Kind,
    pub queue: usize,
    pub msg_id: u32,
    pub guid: Guid,
    /// When the client was told it may forget the message (recoverable and express: the
    /// SessionAck; transactional: the OrderAck).
    pub acked_at_ms: Option<u64>,
    pub first_sent_ms: Option<u64>,
    /// Server incarnation of every copy consumed.
    pub consumed_epochs: Vec<u32>,
}

impl Fact {
    fn store_id(&self) -> [u8; 20] {
        let mut id = [0u8; 20];
        id[..16].copy_from_slice(&self.guid.0);
        id[16..].copy_from_slice(&self.msg_id.to_le_bytes());
        id
    }
}

/// The message ids each queue holds durably right now, read once per check by walking the
/// queue (visible = durable for recoverable records). Not a lookup by message id: the store's
/// id index is shared with the broker's transactional state records, whose ids (sender GUID +
/// queue number) collide with real message ids (sender GUID + ordinal).
pub struct DurableView<'a> {
    broker: &'a Broker<SimStore>,
    qids: &'a [QueueAt],
    sets: [Option<HashSet<[u8; 20]>>; QUEUES.len()],
}

impl<'a> DurableView<'a> {
    pub fn new(broker: &'a Broker<SimStore>, qids: &'a [QueueAt]) -> Self {
        DurableView {
            broker,
            qids,
            sets: Default::default(),
        }
    }

    fn holds(&mut self, f: &Fact) -> bool {
        let set = self.sets[f.queue].get_or_insert_with(|| {
            // The owner only: a copy in another partition would not be the one the broker
            // delivers from, so it does not make an ack true.
            let at = self.qids[f.queue];
            let part = self.broker.partition(at.partition);
            let mut cursor = Cursor::new(at.id);
            let mut set = HashSet::new();
            while let Some(m) = part.store.cursor_next(&mut cursor) {
                set.insert(m.meta.message_id.0);
            }
            set
        });
        set.contains(&f.store_id())
    }
}

/// What the auditor counted (reported by the campaign).
#[derive(Clone, Copy, Debug, Default)]
pub struct AuditCounts {
    pub session_acks_checked: u64,
    pub order_acks_checked: u64,
    pub recoveries_checked: u64,
    pub consumed: u64,
    pub duplicates_recoverable_after_crash: u64,
    pub duplicates_express_after_crash: u64,
    pub express_lost_in_crash: u64,
    pub fifo_checked: u64,
}

/// The auditor of one run.
#[derive(Debug)]
pub struct Auditor {
    pub facts: Vec<Vec<Fact>>,
    /// Server incarnation of each link.
    link_epoch: Vec<u32>,
    /// Per client and transactional queue: the last TxSequenceNumber consumed, and how many
    /// transactional messages the client has for that queue.
    tx_consumed: Vec<[u32; 2]>,
    tx_total: Vec<[u32; 2]>,
    crash_times_ms: Vec<u64>,
    /// Per (queue, client, priority): the (server incarnation, message index) of the
    /// last copy consumed for the first time, for the FIFO check.
    fifo_last: HashMap<(usize, usize, u8), (u32, usize)>,
    pub counts: AuditCounts,
}

impl Auditor {
    pub fn new(facts: Vec<Vec<Fact>>) -> Auditor {
        let tx_total = facts
            .iter()
            .map(|fs| {
                let mut t = [0u32; 2];
                for f in fs {
                    if let Kind::Tx { .. } = f.kind {
                        t[f.queue - TX_QUEUE_FIRST] += 1;
                    }
                }
                t
            })
            .collect();
        Auditor {
            tx_consumed: vec![[0; 2]; facts.len()],
            tx_total,
            facts,
            link_epoch: Vec::new(),
            crash_times_ms: Vec::new(),
            fifo_last: HashMap::new(),
            counts: AuditCounts::default(),
        }
    }

    pub fn on_link(&mut self, serial: u32, epoch: u32) {
        assert_eq!(serial as usize, self.link_epoch.len());
        self.link_epoch.push(epoch);
    }

    pub fn on_crash(&mut self, now_ms: u64) {
        self.crash_times_ms.push(now_ms);
    }

    pub fn on_sent(&mut self, c: usize, idx: usize, now_ms: u64) {
        let f = &mut self.facts[c][idx];
        f.first_sent_ms.get_or_insert(now_ms);
    }

    /// Whether the message is durable in the store now, or was consumed already.
    fn durable_or_consumed(&self, view: &mut DurableView<'_>, c: usize, idx: usize) -> bool {
        let f = &self.facts[c][idx];
        !f.consumed_epochs.is_empty() || view.holds(f)
    }

    fn describe(&self, c: usize, idx: usize) -> String {
        let f = &self.facts[c][idx];
        format!(
            "client {c} message #{idx} (id {}, {:?}, queue {})",
            f.msg_id, f.kind, QUEUES[f.queue].0
        )
    }

    /// Invariant 1 at the source: every SessionAck and OrderAck the server writes to `link`.
    /// Returns whether the output acknowledges recoverable messages beyond what the server had
    /// acknowledged on this link before (the wake check in `world.rs` uses it).
    pub fn check_server_output(
        &mut self,
        broker: &Broker<SimStore>,
        qids: &[QueueAt],
        link: &mut Link,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<bool, String> {
        let mut headers: Vec<SessionHeader> = Vec::new();
        let mut order_acks = Vec::new();
        let r = Framer::new().feed(bytes, |frame| {
            match parse_packet(frame) {
                Ok(Packet::SessionAck(a)) => headers.push(a.session),
                Ok(Packet::User(m)) => {
                    if let Some(h) = m.session {
                        headers.push(h);
                    }
                    if let Some(b) = m.order_ack_body() {
                        order_acks.push(b);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(format!("the server wrote a malformed packet: {e}")),
            }
            Ok(())
        });
        match r {
            Ok(()) => {}
            Err(FrameError::Handler(e)) => return Err(e),
            Err(FrameError::Wire(e)) => {
                return Err(format!("the server wrote an unframeable stream: {e}"))
            }
        }
        let c = link.client;
        let mut view = DurableView::new(broker, qids);
        let mut advanced = false;
        for h in headers {
            let base = h.recoverable_msg_ack_seq_number;
            if base == 0 {
                continue;
            }
            if link.rec_acked == 0 || !seq_le(base, link.rec_acked) {
                link.rec_acked = base;
                advanced = true;
            }
            let flags = h.recoverable_msg_ack_flags;
            for (i, &idx) in link.rec_map.iter().enumerate() {
                let rec = (i + 1) as u16;
                let k = rec.wrapping_sub(base);
                let named = seq_le(rec, base) || (k < 32 && flags & (1 << k) != 0);
                if !named || self.facts[c][idx].kind != Kind::Recoverable {
                    continue;
                }
                self.counts.session_acks_checked += 1;
                if !self.durable_or_consumed(&mut view, c, idx) {
                    return Err(format!(
                        "ack before durability: at {now_ms} ms the server acknowledged {} \
                         (recoverable number {rec} on link {}) while the store does not hold \
                         it durably",
                        self.describe(c, idx),
                        link.serial
                    ));
                }
            }
        }
        for b in order_acks {
            let Some(q) =
                (TX_QUEUE_FIRST..QUEUES.len()).find(|&q| tx_sequence_id(c, q) == b.tx_sequence_id)
            else {
                return Err(format!(
                    "the server sent client {c} an OrderAck for unknown sequence {:#x}",
                    b.tx_sequence_id
                ));
            };
            self.check_order_ack(broker, qids, c, q, b.tx_sequence_number, now_ms, false)?;
        }
        Ok(advanced)
    }

    /// Invariant 1 for an OrderAck: every message of the sequence up to `n` is durable.
    /// `arrived` marks the client's copy of the ack: from then on the client forgets them.
    #[allow(clippy::too_many_arguments)]
    pub fn check_order_ack(
        &mut self,
        broker: &Broker<SimStore>,
        qids: &[QueueAt],
        c: usize,
        queue: usize,
        n: u32,
        now_ms: u64,
        arrived: bool,
    ) -> Result<(), String> {
        let mut view = DurableView::new(broker, qids);
        for idx in 0..self.facts[c].len() {
            let f = &self.facts[c][idx];
            let Kind::Tx { seq_no } = f.kind else {
                continue;
            };
            if f.queue != queue || seq_no > n {
                continue;
            }
            self.counts.order_acks_checked += 1;
            if !self.durable_or_consumed(&mut view, c, idx) {
                return Err(format!(
                    "OrderAck before durability: at {now_ms} ms an OrderAck up to {n} covers {} \
                     which the store does not hold durably",
                    self.describe(c, idx)
                ));
            }
            if arrived {
                self.facts[c][idx].acked_at_ms.get_or_insert(now_ms);
            }
        }
        Ok(())
    }

    /// The client got a SessionAck deleting message `idx`.
    pub fn on_client_ack(
        &mut self,
        broker: &Broker<SimStore>,
        qids: &[QueueAt],
        c: usize,
        idx: usize,
        now_ms: u64,
    ) -> Result<(), String> {
        match self.facts[c][idx].kind {
            Kind::Express => {}
            Kind::Recoverable => {
                self.counts.session_acks_checked += 1;
                let mut view = DurableView::new(broker, qids);
                if !self.durable_or_consumed(&mut view, c, idx) {
                    return Err(format!(
                        "ack before durability: at {now_ms} ms client {c} received the ack of {} \
                         which the store does not hold durably",
                        self.describe(c, idx)
                    ));
                }
            }
            // The hop ack of a transactional message is not the end-to-end one.
            Kind::Tx { .. } => return Ok(()),
        }
        self.facts[c][idx].acked_at_ms.get_or_insert(now_ms);
        Ok(())
    }

    /// Invariant 2: after a crash and recovery every acknowledged durable message is there.
    pub fn check_recovery(
        &mut self,
        broker: &Broker<SimStore>,
        qids: &[QueueAt],
        now_ms: u64,
    ) -> Result<(), String> {
        self.counts.recoveries_checked += 1;
        let mut view = DurableView::new(broker, qids);
        for c in 0..self.facts.len() {
            for idx in 0..self.facts[c].len() {
                let f = &self.facts[c][idx];
                if f.kind == Kind::Express || f.acked_at_ms.is_none() {
                    continue;
                }
                if !self.durable_or_consumed(&mut view, c, idx) {
                    return Err(format!(
                        "lost in a crash: {} was acknowledged at {} ms and is not in the store \
                         recovered at {now_ms} ms",
                        self.describe(c, idx),
                        f.acked_at_ms.unwrap_or(0)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Invariant 3: a consumer received `bytes` from queue `queue` during server incarnation
    /// `epoch_now`.
    pub fn on_consumed(&mut self, queue: usize, bytes: &[u8]) -> Result<(), String> {
        self.counts.consumed += 1;
        let msg = UserMessage::parse(bytes)
            .map_err(|e| format!("a received message does not parse: {e}"))?;
        let Some((c, idx, serial)) = parse_body(msg.body()) else {
            return Err(format!(
                "queue {} gave out a message the simulation never sent",
                QUEUES[queue].0
            ));
        };
        let known = c < self.facts.len()
            && idx < self.facts[c].len()
            && (serial as usize) < self.link_epoch.len();
        if !known || self.facts[c][idx].queue != queue {
            return Err(format!(
                "queue {} gave out a message with a foreign body ({c}, {idx}, {serial})",
                QUEUES[queue].0
            ));
        }
        let epoch = self.link_epoch[serial as usize];
        let what = self.describe(c, idx);
        let f = &mut self.facts[c][idx];
        match f.kind {
            Kind::Tx { seq_no } => {
                let last = &mut self.tx_consumed[c][queue - TX_QUEUE_FIRST];
                if seq_no != *last + 1 {
                    return Err(format!(
                        "exactly-once-in-order broken: consumed {what} right after number {last} \
                         of its sequence"
                    ));
                }
                *last = seq_no;
            }
            Kind::Express | Kind::Recoverable => {
                // Invariant 7 (express and recoverable alike: the store keeps them in one order).
                if f.consumed_epochs.is_empty() {
                    self.counts.fifo_checked += 1;
                    let key = (queue, c, msg.priority());
                    let at = (epoch, idx);
                    if let Some(&last) = self.fifo_last.get(&key) {
                        if at <= last {
                            return Err(format!(
                                "FIFO broken: consumed {what} (stored by server incarnation \
                                 {epoch}) after message #{} of the same sender, queue and \
                                 priority (incarnation {})",
                                last.1, last.0
                            ));
                        }
                    }
                    self.fifo_last.insert(key, at);
                }
                if f.consumed_epochs.contains(&epoch) {
                    return Err(format!(
                        "duplicate: {what} was consumed twice from copies accepted by the same \
                         server incarnation {epoch} (the duplicate table should drop resends)"
                    ));
                }
                if !f.consumed_epochs.is_empty() {
                    if f.kind == Kind::Express {
                        self.counts.duplicates_express_after_crash += 1;
                    } else {
                        self.counts.duplicates_recoverable_after_crash += 1;
                    }
                }
            }
        }
        f.consumed_epochs.push(epoch);
        Ok(())
    }

    /// Invariants 3-5 after the final drain.
    pub fn final_check(&mut self) -> Result<(), String> {
        for c in 0..self.facts.len() {
            for idx in 0..self.facts[c].len() {
                let f = &self.facts[c][idx];
                if !f.consumed_epochs.is_empty() {
                    continue;
                }
                match f.kind {
                    Kind::Express => {
                        let sent = f.first_sent_ms.unwrap_or(u64::MAX);
                        if self.crash_times_ms.iter().any(|&t| t >= sent) {
                            self.counts.express_lost_in_crash += 1;
                        } else {
                            return Err(format!(
                                "lost without a crash: {} was never delivered",
                                self.describe(c, idx)
                            ));
                        }
                    }
                    Kind::Recoverable | Kind::Tx { .. } => {
                        return Err(format!(
                            "lost: {} was acknowledged at {:?} ms but the drained queues do not \
                             hold it",
                            self.describe(c, idx),
                            f.acked_at_ms
                        ))
                    }
                }
            }
            for q in 0..2 {
                if self.tx_consumed[c][q] != self.tx_total[c][q] {
                    return Err(format!(
                        "client {c} queue {}: consumed transactional messages up to {} of {}",
                        QUEUES[TX_QUEUE_FIRST + q].0,
                        self.tx_consumed[c][q],
                        self.tx_total[c][q]
                    ));
                }
            }
        }
        Ok(())
    }
}
