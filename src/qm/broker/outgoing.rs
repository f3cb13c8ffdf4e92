//! The broker's side of outgoing queues (the table of them is [`crate::qm::outgoing`]):
//! storing a message for a remote queue manager and waking the shard that sends it, listing
//! them, and the sender's side of outgoing transactional sequences ([`TxOut`]), which
//! OrderAcks and FinalAcks (MS-MQQB 3.1.5.6, 3.1.5.7) advance.
//!
//! Ownership (issue 10): an outgoing queue's messages, its [`TxOut`], its progress and its
//! published state live with the partition storing it (`Partition::tx_out`, `tx_progress`,
//! `out_status`), touched by that partition's shard only: it numbers, sends, marks sent and
//! takes OrderAcks. An OrderAck arriving on another shard is not verified there: it crosses as
//! `Mail::OrderAcked` from shard to shard, each verifying it against its own partitions
//! ([`Broker::take_order_ack_in`]), the last counting it ([`Broker::finish_order_ack`]). The
//! table of outgoing queues is read from a published snapshot without a lock
//! (`qm::outgoing::SharedOutgoing`). Left under today's partition locks, from an SRMP endpoint
//! thread: the stream receipts taken ([`Broker::handle_stream_receipt`]) and the stream
//! receipts queued (`http/srmp.rs`, [`Broker::enqueue_outgoing_nowait`]).

use std::sync::atomic::Ordering;

use crate::qm::outgoing::{OutgoingDef, Transport};
use crate::store::{Class, Cursor, LookupId, MessageMeta, QueueId, QueueStore, Ticket};
use crate::wire::user::UserMessage;
use crate::wire::Guid;

use super::{
    bump, unix_now, ApiError, Broker, Partition, TX_ACK_REFUSED_LOG_INTERVAL_S,
    TX_ACK_REFUSED_LOG_PEERS_MAX,
};

std::thread_local! {
    /// When an ignored OrderAck/FinalAck was last logged, per peer address, by this thread
    /// (a shard: `refuse_tx_ack`'s rate limit is per shard).
    static REFUSED_LOGGED: std::cell::RefCell<std::collections::HashMap<std::net::IpAddr, u32>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The sender's side of one outgoing transactional sequence. Derived from the stored messages at
/// start-up (the sequence id also from `outgoing.json`), so it needs no file of its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct TxOut {
    /// TxSequenceID as a u64 (TimeStamp << 32 | Ordinal).
    pub seq_id: u64,
    /// The number the next message gets.
    pub next_no: u32,
    /// The highest number an OrderAck acknowledged.
    pub acked_no: u32,
    /// The highest number of `seq_id` sent on a session by this process: an OrderAck may
    /// acknowledge no more than this (MS-MQQB 3.1.5.6 acknowledges what was sent).
    pub sent_no: u32,
    /// The queue manager our outgoing session to this destination reached (its GUID and
    /// address): only it may acknowledge the sequence.
    pub peer: Option<(Guid, std::net::IpAddr)>,
}

/// Where an OrderAck or FinalAck came from: the session it arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckSource {
    /// The queue manager GUID the peer gave when the session was established.
    pub remote_qm: Guid,
    /// The peer's address.
    pub ip: std::net::IpAddr,
    /// For a session we opened: the outgoing queue it carries.
    pub outgoing: Option<u32>,
}

impl<S: QueueStore> Broker<S> {
    /// Takes (and clears) the flag saying partition `p` has new outgoing messages.
    pub fn take_outgoing_dirty(&self, p: usize) -> bool {
        self.outgoing_dirty
            .get(p)
            .is_some_and(|f| f.swap(false, Ordering::AcqRel))
    }

    /// The outgoing queues stored in `partitions` (a shard sends those of the partitions it
    /// runs).
    pub fn outgoing_for(&self, partitions: &[usize]) -> Vec<OutgoingDef> {
        self.outgoing.read(|t| {
            t.iter()
                .filter(|q| partitions.contains(&q.shard))
                .cloned()
                .collect()
        })
    }

    /// Every outgoing queue with its message count (for the API).
    pub fn list_outgoing(&self) -> Vec<OutgoingInfo> {
        let all: Vec<usize> = (0..self.partitions.len()).collect();
        self.list_outgoing_from(&self.queue_lens(&all))
    }

    /// Every outgoing queue with its counts from `lens` (gathered from the shards; no
    /// partition is read here).
    pub fn list_outgoing_from(&self, lens: &super::QueueLens) -> Vec<OutgoingInfo> {
        self.outgoing
            .all()
            .into_iter()
            .map(|d| {
                let (messages, bytes) = lens.outgoing.get(&d.id).copied().unwrap_or((0, 0));
                let status = lens.outgoing_status.get(&d.id).cloned();
                OutgoingInfo {
                    def: d,
                    messages,
                    bytes,
                    status,
                }
            })
            .collect()
    }

    /// The shard sending outgoing queue `id` publishes its state (when it changes): kept with
    /// the queue's partition, read there when the shard answers the API's `Lens` request.
    pub fn note_outgoing_status(&self, id: u32, status: crate::qm::outgoing_queue::OutStatus) {
        let Some(p) = self.outgoing.read(|t| t.by_id(id).map(|d| d.shard)) else {
            return;
        };
        self.partition(p).out_status.insert(id, status);
    }

    /// Pauses or resumes the outgoing queue of destination `key` (`TCP:10.0.0.7`, `OS:winbox`;
    /// as `GET /v1/outgoing` names it). Kept across restarts; the shard that sends it closes its
    /// session (pause) or tries again (resume) at once.
    pub fn set_outgoing_paused(&self, key: &str, paused: bool) -> Result<OutgoingDef, ApiError> {
        // Rare: under the outgoing table's writers' lock (lookups do not take it).
        let def = self
            .outgoing
            .set_paused(key, paused)
            .ok_or_else(|| ApiError::NoSuchQueue(format!("outgoing queue {key}")))?
            .map_err(|e| ApiError::Send(e.to_string()))?;
        let shard = def.shard % self.partitions.len();
        if let Some(f) = self.outgoing_dirty.get(shard) {
            f.store(true, Ordering::Release);
        }
        self.wake(shard);
        Ok(def)
    }

    /// Stores an encoded message in the outgoing queue of its direct destination, durably
    /// when `recoverable` (this call waits for the commit: for the API's threads), and wakes
    /// the shard that sends it.
    pub fn enqueue_outgoing(
        &self,
        dest: &crate::wire::format_name::DirectName,
        frame: &[u8],
        meta: &MessageMeta,
    ) -> Result<OutgoingDef, ApiError> {
        self.queue_outgoing(dest, frame, meta, true)
            .map(|(def, _, _)| def)
    }

    /// [`Broker::enqueue_outgoing`] for a shard, which must never wait for the disk: the
    /// commit is started, not waited for. Returns the outgoing queue, its partition and the
    /// message's ticket there: whoever owes an answer once it is durable (an AMQP producer)
    /// waits for that ticket as for any other.
    pub fn enqueue_outgoing_nowait(
        &self,
        dest: &crate::wire::format_name::DirectName,
        frame: &[u8],
        meta: &MessageMeta,
    ) -> Result<(OutgoingDef, usize, Ticket), ApiError> {
        self.queue_outgoing(dest, frame, meta, false)
    }

    fn queue_outgoing(
        &self,
        dest: &crate::wire::format_name::DirectName,
        frame: &[u8],
        meta: &MessageMeta,
        wait: bool,
    ) -> Result<(OutgoingDef, usize, Ticket), ApiError> {
        let def = self.outgoing_queue_for(dest)?;
        let shard = def.shard % self.partitions.len();
        let ticket = self.append_outgoing(def.id, shard, frame, meta)?;
        let wait_for = (wait && ticket != Ticket::IMMEDIATE).then_some(ticket);
        self.partition(shard).commit(wait_for)?;
        Ok((def, shard, ticket))
    }

    /// The outgoing queue of direct destination `dest` (made, and kept in outgoing.json, the
    /// first time).
    pub fn outgoing_queue_for(
        &self,
        dest: &crate::wire::format_name::DirectName,
    ) -> Result<OutgoingDef, ApiError> {
        // A lookup without a lock; a new destination (rare) is made under the outgoing
        // table's writers' lock, which lookups do not take.
        let def = self
            .outgoing
            .get_or_create(dest)
            .map_err(|e| ApiError::Send(e.to_string()))?;
        let hardened = self.config.parameters.Hardened_MSMQ;
        if def.transport == Transport::Ipx || (hardened && def.transport == Transport::Mqqb) {
            tracing::warn!(
                destination = %def.key,
                "message kept in a locked outgoing queue: {}",
                if self.config.parameters.Hardened_MSMQ {
                    "hardened mode sends only over HTTP"
                } else {
                    "this transport is not sent by lior yet"
                }
            );
        }
        Ok(def)
    }

    /// Appends `frame` to outgoing queue `queue` stored in partition `p` (under
    /// `limits.outgoing_queue_messages_max`), without committing, and tells `p`'s shard it has
    /// something to send.
    pub(super) fn append_outgoing(
        &self,
        queue: u32,
        p: usize,
        frame: &[u8],
        meta: &MessageMeta,
    ) -> Result<Ticket, ApiError> {
        let ticket = self.append_outgoing_in(&mut self.partition(p), queue, frame, meta)?;
        self.outgoing_queued(p);
        Ok(ticket)
    }

    /// [`Broker::append_outgoing`] into `part`, already held (the caller tells its shard,
    /// [`Broker::outgoing_queued`]).
    pub(super) fn append_outgoing_in(
        &self,
        part: &mut Partition<S>,
        queue: u32,
        frame: &[u8],
        meta: &MessageMeta,
    ) -> Result<Ticket, ApiError> {
        let (waiting, _) = part.store.queue_len(QueueId(queue));
        let limit = self.config.limits.outgoing_queue_messages_max as u64;
        if waiting >= limit {
            let key = self
                .outgoing
                .read(|t| t.by_id(queue).map(|d| d.key.clone()))
                .unwrap_or_else(|| format!("#{queue}"));
            if crate::ratelog::QUOTA.allow() {
                tracing::warn!(destination = %key, waiting, limit, "outgoing queue full (limits.outgoing_queue_messages_max); message refused");
            }
            return Err(ApiError::Send(format!(
                "the outgoing queue to {key} is full: {waiting} messages wait, \
                 limits.outgoing_queue_messages_max is {limit}; nothing was sent"
            )));
        }
        Ok(part.store.append(QueueId(queue), meta, frame)?.ticket)
    }

    /// Partition `p` has new outgoing messages: its shard is told and woken.
    pub(super) fn outgoing_queued(&self, p: usize) {
        if let Some(f) = self.outgoing_dirty.get(p) {
            f.store(true, Ordering::Release);
        }
        self.wake(p % self.partitions.len());
    }

    /// The outgoing transactional sequence of `def`, read back from the stored messages the
    /// first time (the last stored number continues; an empty queue starts a new sequence whose
    /// id is above every earlier one of this destination, kept in `outgoing.json`). `part` is
    /// the partition storing `def` (its owner's step: the state lives there).
    pub(super) fn tx_out_state<'g>(
        &self,
        part: &'g mut Partition<S>,
        def: &OutgoingDef,
    ) -> &'g mut TxOut {
        debug_assert_eq!(part.index, def.shard % self.partitions.len());
        if !part.tx_out.contains_key(&def.id) {
            let best = stored_tx_positions(&part.store, def.id)
                .into_iter()
                .map(|(_, id, no)| (id, no))
                .max();
            let t = match best {
                Some((seq_id, no)) => TxOut {
                    seq_id,
                    next_no: no.wrapping_add(1),
                    ..TxOut::default()
                },
                None => {
                    let last = self
                        .outgoing
                        .read(|t| t.by_id(def.id).map(|d| d.tx_sequence_id))
                        .unwrap_or(def.tx_sequence_id);
                    TxOut {
                        seq_id: ((u64::from(unix_now()) << 32) | 1).max(last.saturating_add(1)),
                        next_no: 1,
                        ..TxOut::default()
                    }
                }
            };
            // Rare (once per outgoing queue and run, or per new sequence): writes outgoing.json.
            if let Err(e) = self.outgoing.set_tx_sequence_id(def.id, t.seq_id) {
                tracing::error!(destination = %def.key, error = %e, "cannot record the outgoing transactional sequence id; a restart within this second could reuse it");
            }
            part.tx_out.insert(def.id, t);
        }
        part.tx_out.entry(def.id).or_default()
    }

    /// Our outgoing session for queue `queue` was established with queue manager `guid` at
    /// `ip`: OrderAcks for its sequence are taken from that queue manager only. Called by the
    /// shard running the queue's partition (the state lives there).
    pub fn note_outgoing_peer(&self, queue: u32, guid: Guid, ip: std::net::IpAddr) {
        let Some(def) = self.outgoing.by_id(queue) else {
            return;
        };
        let mut part = self.partition(def.shard);
        self.tx_out_state(&mut part, &def).peer = Some((guid, ip));
    }

    /// Transactional messages of outgoing queue `queue` were sent on a session: (TxSequenceID,
    /// highest TxSequenceNumber). Called by the shard running the queue's partition.
    pub fn note_tx_sent(&self, queue: u32, seq_id: u64, no: u32) {
        let Some(p) = self.outgoing.read(|t| t.by_id(queue).map(|d| d.shard)) else {
            return;
        };
        let mut part = self.partition(p);
        let t = match part.tx_out.get_mut(&queue) {
            Some(t) => t,
            None => {
                let Some(def) = self.outgoing.by_id(queue) else {
                    return;
                };
                self.tx_out_state(&mut part, &def)
            }
        };
        if t.seq_id == seq_id {
            t.sent_no = t.sent_no.max(no);
        }
    }

    /// Counts and logs (once per peer per interval) an OrderAck or FinalAck we do not take.
    pub(super) fn refuse_tx_ack(&self, from: &AckSource, what: &str, why: &str) {
        bump(&self.counters.tx_acks_refused);
        let now = unix_now();
        // Rate-limited per thread (each shard its own): no lock shared with other shards.
        let due = REFUSED_LOGGED.with(|g| {
            let mut g = g.borrow_mut();
            let due = g
                .get(&from.ip)
                .is_none_or(|&t| now.saturating_sub(t) >= TX_ACK_REFUSED_LOG_INTERVAL_S);
            if due {
                if g.len() >= TX_ACK_REFUSED_LOG_PEERS_MAX {
                    g.clear();
                }
                g.insert(from.ip, now);
            }
            due
        });
        if due {
            tracing::warn!(peer = %from.ip, remote_qm = %from.remote_qm, "{what} ignored: {why} (counted in lior_tx_acks_refused_total; logged once per peer every {TX_ACK_REFUSED_LOG_INTERVAL_S} s)");
        }
    }

    /// An OrderAck or FinalAck for our own transactional sends arrived (MS-MQQB 3.1.5.6, 3.1.5.7)
    /// on a session with `from`. It is taken only from the queue manager the sequence was sent
    /// to (on our outgoing session to it, or a session from that queue manager's GUID and
    /// address), and only for numbers actually sent; anything else is counted and logged. An
    /// OrderAck deletes every message of its sequence up to its number from the outgoing queue
    /// (those asking for a FinalAck move to the awaiting queue); a FinalAck is matched by the
    /// message it names (`final_acks`). Returns whether it was taken. Looks at every partition
    /// (one lock at a time): for a caller that runs them all (tests, SRMP under today's locks).
    pub fn handle_tx_ack(&self, msg: &UserMessage<'_>, from: &AckSource) -> bool {
        match self.handle_tx_ack_here(msg, from, &super::everywhere) {
            TxAckStep::Done(taken) => taken,
            TxAckStep::Forward(a, taken) => {
                debug_assert!(false, "every partition is here");
                self.finish_order_ack(&a, taken)
            }
            TxAckStep::FinalTaken(copy) => {
                if let Some(rec) = copy {
                    self.store_record_now(rec);
                }
                true
            }
            TxAckStep::FinalOn => {
                debug_assert!(false, "every partition is here");
                self.finish_final_ack(from, false)
            }
        }
    }

    /// [`Broker::handle_tx_ack`] for a shard that runs the partitions `here` says. An OrderAck
    /// is verified and applied by the owner of each outgoing queue it could be for (only the
    /// owner knows what its sequence sent and to whom: `Partition::tx_out`): this shard does it
    /// for its own partitions and returns [`TxAckStep::Forward`] when other shards must look at
    /// theirs (`qm::handoff::Mail::OrderAcked`, passed from shard to shard; the last one
    /// counts the OrderAck or its refusal, [`Broker::finish_order_ack`]).
    pub fn handle_tx_ack_here(
        &self,
        msg: &UserMessage<'_>,
        from: &AckSource,
        here: super::Here<'_>,
    ) -> TxAckStep {
        if let Some(fa) = msg.final_ack_body() {
            // Matched by the message it names (MS-MQQB 3.1.5.7), in `final_acks`: looked for
            // in this shard's partitions, then (`FinalAckOn`) in the others' by their owners.
            let class = msg.properties.message_class;
            let mut all_here = true;
            for p in 0..self.partitions.len() {
                if !here(p) {
                    all_here = false;
                } else if let Some(copy) = self.take_final_ack_in(p, class, &fa) {
                    return TxAckStep::FinalTaken(copy);
                }
            }
            return if all_here || fa.source_guid != self.guid() {
                TxAckStep::Done(self.finish_final_ack(from, false))
            } else {
                TxAckStep::FinalOn
            };
        }
        let Some(oa) = msg.order_ack_body() else {
            self.refuse_tx_ack(from, "OrderAck", "malformed body");
            return TxAckStep::Done(false);
        };
        let a = OrderAckIn {
            from: *from,
            seq_id: oa.tx_sequence_id,
            number: oa.tx_sequence_number,
        };
        let mut taken = false;
        let mut all_here = true;
        for p in 0..self.partitions.len() {
            if here(p) {
                taken |= self.take_order_ack_in(p, &a);
            } else {
                all_here = false;
            }
        }
        if all_here {
            TxAckStep::Done(self.finish_order_ack(&a, taken))
        } else {
            TxAckStep::Forward(a, taken)
        }
    }

    /// OrderAck `a` as partition `p`'s owner sees it: for each outgoing queue of `p` whose
    /// sequence `a.seq_id` was sent to `a.from`, the messages numbered up to `a.number` (and
    /// no further than what was sent) leave the queue, in one step of the owner. An OrderAck
    /// acknowledging numbers not sent yet is counted and logged as refused (what was sent is
    /// still taken). Returns whether any queue of `p` took it.
    pub fn take_order_ack_in(&self, p: usize, a: &OrderAckIn) -> bool {
        let from = &a.from;
        let from_peer = |id: u32, t: &TxOut| {
            from.outgoing == Some(id)
                || t.peer
                    .is_some_and(|(g, ip)| g == from.remote_qm && !g.is_null() && ip == from.ip)
        };
        let mut part = self.partition(p);
        let mut beyond_sent = false;
        let targets: Vec<(u32, u32)> = part
            .tx_out
            .iter_mut()
            .filter(|(id, t)| from_peer(**id, t) && t.seq_id == a.seq_id)
            .filter_map(|(id, t)| {
                beyond_sent |= a.number > t.sent_no;
                let n = a.number.min(t.sent_no);
                (n > 0).then(|| {
                    t.acked_no = t.acked_no.max(n);
                    (*id, n)
                })
            })
            .collect();
        let mut done = 0u64;
        for &(queue, upto) in &targets {
            let acked: Vec<LookupId> = stored_tx_positions(&part.store, queue)
                .into_iter()
                .filter(|&(_, id, no)| id == a.seq_id && no <= upto)
                .map(|(l, _, _)| l)
                .collect();
            for l in &acked {
                // A message asking for a FinalAck waits for it (MS-MQQB AwaitingFinalACKTable).
                self.keep_awaiting_final_ack(&mut part, queue, *l);
                if let Err(e) = part.remove_delivered(QueueId(queue), *l) {
                    tracing::error!(error = %e, "cannot remove an ordered-acknowledged message");
                }
            }
            done += acked.len() as u64;
            part.tx_progress.push(queue);
        }
        if !targets.is_empty() {
            if let Err(e) = part.commit(None) {
                tracing::error!(error = %e, "commit after an OrderAck failed");
            }
        }
        drop(part);
        if beyond_sent {
            self.refuse_tx_ack(from, "OrderAck", "it acknowledges numbers not sent yet");
        }
        if targets.is_empty() {
            return false;
        }
        self.counters
            .outgoing_sent_acked
            .fetch_add(done, Ordering::Relaxed);
        if let Some(f) = self.outgoing_dirty.get(p) {
            f.store(true, Ordering::Release);
        }
        self.wake(p);
        true
    }

    /// Every owner has looked at OrderAck `a` (`taken`: some outgoing queue took it): counted
    /// as received, or as refused when no sequence sent to that queue manager has its id.
    /// Returns `taken`.
    pub fn finish_order_ack(&self, a: &OrderAckIn, taken: bool) -> bool {
        if taken {
            bump(&self.counters.order_acks_received);
        } else {
            self.refuse_tx_ack(
                &a.from,
                "OrderAck",
                "no sequence sent to that queue manager has that id",
            );
        }
        taken
    }

    /// The state of incoming transactional sequence `key` (sender, queue) in partition `p`.
    pub fn incoming_sequence(
        &self,
        p: usize,
        key: crate::qm::txn::TxKey,
    ) -> crate::qm::txn::IncomingSequence {
        self.partition(p).txn.get(&key)
    }

    /// A stream receipt (MC-MQSRM 2.2.5.6) for our stream (`qm`, `sequence`) up to
    /// `last_ordinal` arrived at the SRMP endpoint from `ip`: taken as the OrderAck it is, for
    /// the HTTP outgoing queue that sends that sequence (only for numbers it sent; anything else
    /// is counted in `lior_tx_acks_refused_total` and logged). Returns whether it was taken.
    pub fn handle_stream_receipt(
        &self,
        qm: Guid,
        sequence: u64,
        last_ordinal: u64,
        ip: std::net::IpAddr,
    ) -> bool {
        self.stream_receipt_order_ack(qm, sequence, last_ordinal, ip)
            .is_some_and(|(ack, from)| {
                UserMessage::parse(&ack).is_ok_and(|m| self.handle_tx_ack(&m, &from))
            })
    }

    /// [`Broker::handle_stream_receipt`] up to the OrderAck it stands for and where it came
    /// from, for a shard to take as it takes an MS-MQQB OrderAck (`handle_tx_ack_here`; branch
    /// deskown: the SRMP endpoint asks a shard by request). None when refused (counted, logged).
    pub fn stream_receipt_order_ack(
        &self,
        qm: Guid,
        sequence: u64,
        last_ordinal: u64,
        ip: std::net::IpAddr,
    ) -> Option<(Vec<u8>, AckSource)> {
        // The HTTP outgoing queue sending that sequence, from the outgoing table's snapshot
        // (`tx_sequence_id` is recorded there when the sequence starts): no partition is
        // looked at, so any thread may ask.
        let queue = self.outgoing.read(|out| {
            out.iter()
                .find(|d| d.tx_sequence_id == sequence && d.transport == Transport::Http)
                .map(|d| d.id)
        });
        let from = AckSource {
            remote_qm: Guid::NULL,
            ip,
            outgoing: queue,
        };
        let (Some(_), true, Ok(last)) = (queue, qm == self.guid(), u32::try_from(last_ordinal))
        else {
            self.refuse_tx_ack(
                &from,
                "stream receipt",
                "not for a stream this queue manager sends over HTTP",
            );
            return None;
        };
        let body = crate::wire::user::OrderAckBody {
            tx_sequence_id: sequence,
            tx_sequence_number: last,
            tx_previous_sequence_number: last.saturating_sub(1),
        }
        .to_bytes();
        let ack = UserMessage::order_ack(
            self.guid(),
            0,
            crate::wire::user::QueueRef::DestinationPrivate(crate::wire::user::ORDER_QUEUE_ID),
            &body,
        );
        Some((super::encode_message(&ack).ok()?, from))
    }

    /// Outgoing queues of partition `p` whose transactional sequence progressed since the last
    /// call (their resend interval starts over). For `p`'s owner.
    pub fn take_tx_progress(&self, p: usize) -> Vec<u32> {
        std::mem::take(&mut self.partition(p).tx_progress)
    }
}

/// (lookup id, TxSequenceID, TxSequenceNumber) of every transactional message stored in
/// outgoing queue `queue`, in delivery order.
fn stored_tx_positions<S: QueueStore>(store: &S, queue: u32) -> Vec<(LookupId, u64, u32)> {
    let mut c = Cursor::new(QueueId(queue));
    let mut out = Vec::new();
    while let Some(m) = store.cursor_next(&mut c) {
        if m.meta.class != Class::Transactional {
            continue;
        }
        if let Some(t) = UserMessage::parse(m.bytes).ok().and_then(|u| u.transaction) {
            out.push((m.lookup_id, t.tx_sequence_id, t.tx_sequence_number));
        }
    }
    out
}

/// An OrderAck as it arrived (MS-MQQB 3.1.5.6), not verified yet: each owner of an outgoing
/// queue verifies it against what its sequence sent and to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderAckIn {
    /// The session it came on.
    pub from: AckSource,
    pub seq_id: u64,
    /// Messages of `seq_id` numbered up to this one are acknowledged.
    pub number: u32,
}

/// What a shard made of an OrderAck or a FinalAck that arrived on it.
#[derive(Clone, Debug)]
pub enum TxAckStep {
    /// Handled, and counted as taken (true) or refused.
    Done(bool),
    /// An OrderAck the owners of other partitions must still look at; `bool`: whether one of
    /// this shard's partitions took it.
    Forward(OrderAckIn, bool),
    /// A FinalAck taken here, with the copy it owes (machine journal or `deadxact`) for the
    /// caller to store where that queue lives.
    FinalTaken(Option<super::SystemRecord>),
    /// A FinalAck none of this shard's partitions held: the owners of the others must look
    /// (`Mail::FinalAcked`, passed from shard to shard like an OrderAck).
    FinalOn,
}

/// An outgoing queue as the API lists it.
#[derive(Debug, Clone)]
pub struct OutgoingInfo {
    pub def: OutgoingDef,
    /// Messages and bytes waiting (not yet acknowledged by the destination).
    pub messages: u64,
    pub bytes: u64,
    /// As its shard last published it; None before the shard first looked at it.
    pub status: Option<crate::qm::outgoing_queue::OutStatus>,
}
