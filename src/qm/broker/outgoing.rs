//! The broker's side of outgoing queues (the table of them is [`crate::qm::outgoing`]):
//! storing a message for a remote queue manager and waking the shard that sends it, listing
//! them, and the sender's side of outgoing transactional sequences ([`TxOut`]), which
//! OrderAcks and FinalAcks (MS-MQQB 3.1.5.6, 3.1.5.7) advance.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use crate::qm::outgoing::{OutgoingDef, Transport};
use crate::store::{Class, Cursor, LookupId, MessageMeta, QueueId, QueueStore, Ticket};
use crate::wire::user::UserMessage;
use crate::wire::Guid;

use super::{
    bump, lock, unix_now, ApiError, Broker, TX_ACK_REFUSED_LOG_INTERVAL_S,
    TX_ACK_REFUSED_LOG_PEERS_MAX,
};

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
        lock(&self.outgoing)
            .iter()
            .filter(|q| partitions.contains(&q.shard))
            .cloned()
            .collect()
    }

    /// Every outgoing queue with its message count (for the API).
    pub fn list_outgoing(&self) -> Vec<OutgoingInfo> {
        let all: Vec<usize> = (0..self.partitions.len()).collect();
        self.list_outgoing_from(&self.queue_lens(&all))
    }

    /// Every outgoing queue with its counts from `lens` (gathered from the shards; no
    /// partition is read here).
    pub fn list_outgoing_from(&self, lens: &super::QueueLens) -> Vec<OutgoingInfo> {
        let defs: Vec<OutgoingDef> = lock(&self.outgoing).iter().cloned().collect();
        defs.into_iter()
            .map(|d| {
                let (messages, bytes) = lens.outgoing.get(&d.id).copied().unwrap_or((0, 0));
                let status = lock(&self.outgoing_status).get(&d.id).cloned();
                OutgoingInfo {
                    def: d,
                    messages,
                    bytes,
                    status,
                }
            })
            .collect()
    }

    /// A shard publishes the state of outgoing queue `id` (when it changes).
    pub fn note_outgoing_status(&self, id: u32, status: crate::qm::outgoing_queue::OutStatus) {
        lock(&self.outgoing_status).insert(id, status);
    }

    /// Pauses or resumes the outgoing queue of destination `key` (`TCP:10.0.0.7`, `OS:winbox`;
    /// as `GET /v1/outgoing` names it). Kept across restarts; the shard that sends it closes its
    /// session (pause) or tries again (resume) at once.
    pub fn set_outgoing_paused(&self, key: &str, paused: bool) -> Result<OutgoingDef, ApiError> {
        let def = lock(&self.outgoing)
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
        let def = lock(&self.outgoing)
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
        let ticket = {
            let mut part = self.partition(p);
            let (waiting, _) = part.store.queue_len(QueueId(queue));
            let limit = self.config.limits.outgoing_queue_messages_max as u64;
            if waiting >= limit {
                let key = lock(&self.outgoing)
                    .by_id(queue)
                    .map_or_else(|| format!("#{queue}"), |d| d.key.clone());
                if crate::ratelog::QUOTA.allow() {
                    tracing::warn!(destination = %key, waiting, limit, "outgoing queue full (limits.outgoing_queue_messages_max); message refused");
                }
                return Err(ApiError::Send(format!(
                    "the outgoing queue to {key} is full: {waiting} messages wait, \
                     limits.outgoing_queue_messages_max is {limit}; nothing was sent"
                )));
            }
            part.store.append(QueueId(queue), meta, frame)?.ticket
        };
        if let Some(f) = self.outgoing_dirty.get(p) {
            f.store(true, Ordering::Release);
        }
        self.wake(p % self.partitions.len());
        Ok(ticket)
    }

    /// The outgoing transactional sequence of `def`, read back from the stored messages the
    /// first time (the last stored number continues; an empty queue starts a new sequence whose
    /// id is above every earlier one of this destination, kept in `outgoing.json`).
    pub(super) fn tx_out_state<'g>(
        &self,
        g: &'g mut MutexGuard<'_, HashMap<u32, TxOut>>,
        def: &OutgoingDef,
    ) -> &'g mut TxOut {
        g.entry(def.id).or_insert_with(|| {
            let best = {
                let part = self.partition(def.shard);
                stored_tx_positions(&part.store, def.id)
                    .into_iter()
                    .map(|(_, id, no)| (id, no))
                    .max()
            };
            let t = match best {
                Some((seq_id, no)) => TxOut {
                    seq_id,
                    next_no: no.wrapping_add(1),
                    ..TxOut::default()
                },
                None => {
                    let last = lock(&self.outgoing)
                        .by_id(def.id)
                        .map_or(def.tx_sequence_id, |d| d.tx_sequence_id);
                    TxOut {
                        seq_id: ((u64::from(unix_now()) << 32) | 1).max(last.saturating_add(1)),
                        next_no: 1,
                        ..TxOut::default()
                    }
                }
            };
            if let Err(e) = lock(&self.outgoing).set_tx_sequence_id(def.id, t.seq_id) {
                tracing::error!(destination = %def.key, error = %e, "cannot record the outgoing transactional sequence id; a restart within this second could reuse it");
            }
            t
        })
    }

    /// Our outgoing session for queue `queue` was established with queue manager `guid` at
    /// `ip`: OrderAcks for its sequence are taken from that queue manager only.
    pub fn note_outgoing_peer(&self, queue: u32, guid: Guid, ip: std::net::IpAddr) {
        let Some(def) = lock(&self.outgoing).by_id(queue).cloned() else {
            return;
        };
        let mut g = lock(&self.tx_out);
        self.tx_out_state(&mut g, &def).peer = Some((guid, ip));
    }

    /// Transactional messages of outgoing queue `queue` were sent on a session: (TxSequenceID,
    /// highest TxSequenceNumber).
    pub fn note_tx_sent(&self, queue: u32, seq_id: u64, no: u32) {
        let Some(def) = lock(&self.outgoing).by_id(queue).cloned() else {
            return;
        };
        let mut g = lock(&self.tx_out);
        let t = self.tx_out_state(&mut g, &def);
        if t.seq_id == seq_id {
            t.sent_no = t.sent_no.max(no);
        }
    }

    /// Counts and logs (once per peer per interval) an OrderAck or FinalAck we do not take.
    pub(super) fn refuse_tx_ack(&self, from: &AckSource, what: &str, why: &str) {
        bump(&self.counters.tx_acks_refused);
        let now = unix_now();
        let mut g = lock(&self.refused_log);
        let due = g
            .get(&from.ip)
            .is_none_or(|&t| now.saturating_sub(t) >= TX_ACK_REFUSED_LOG_INTERVAL_S);
        if due {
            if g.len() >= TX_ACK_REFUSED_LOG_PEERS_MAX {
                g.clear();
            }
            g.insert(from.ip, now);
            tracing::warn!(peer = %from.ip, remote_qm = %from.remote_qm, "{what} ignored: {why} (counted in lior_tx_acks_refused_total; logged once per peer every {TX_ACK_REFUSED_LOG_INTERVAL_S} s)");
        }
    }

    /// An OrderAck or FinalAck for our own transactional sends arrived (MS-MQQB 3.1.5.6, 3.1.5.7)
    /// on a session with `from`. It is taken only from the queue manager the sequence was sent
    /// to (on our outgoing session to it, or a session from that queue manager's GUID and
    /// address), and only for numbers actually sent; anything else is counted and logged. An
    /// OrderAck deletes every message of its sequence up to its number from the outgoing queue
    /// (those asking for a FinalAck move to the awaiting queue); a FinalAck is matched by the
    /// message it names (`final_acks`). Returns whether it was taken.
    pub fn handle_tx_ack(&self, msg: &UserMessage<'_>, from: &AckSource) -> bool {
        let mut elsewhere = Vec::new();
        let taken = self.handle_tx_ack_here(msg, from, &super::everywhere, &mut elsewhere);
        debug_assert!(elsewhere.is_empty());
        taken
    }

    /// [`Broker::handle_tx_ack`] for a shard that runs the partitions `here` says: an OrderAck
    /// for an outgoing queue of another shard's partition is verified here and pushed on
    /// `elsewhere` as (partition, [`OrderAcked`]) for the caller to send to that shard
    /// (`qm::handoff::Mail::OrderAcked`), whose [`Broker::apply_order_ack`] removes the messages.
    pub fn handle_tx_ack_here(
        &self,
        msg: &UserMessage<'_>,
        from: &AckSource,
        here: super::Here<'_>,
        elsewhere: &mut Vec<(usize, OrderAcked)>,
    ) -> bool {
        let from_peer = |id: u32, t: &TxOut| {
            from.outgoing == Some(id)
                || t.peer
                    .is_some_and(|(g, ip)| g == from.remote_qm && !g.is_null() && ip == from.ip)
        };
        if let Some(fa) = msg.final_ack_body() {
            // Matched by the message it names (MS-MQQB 3.1.5.7), in `final_acks`.
            return self.take_final_ack(msg.properties.message_class, &fa, from);
        }
        let Some(oa) = msg.order_ack_body() else {
            self.refuse_tx_ack(from, "OrderAck", "malformed body");
            return false;
        };
        let mut beyond_sent = false;
        let targets: Vec<(u32, u32)> = {
            let mut g = lock(&self.tx_out);
            g.iter_mut()
                .filter(|(id, t)| from_peer(**id, t) && t.seq_id == oa.tx_sequence_id)
                .filter_map(|(id, t)| {
                    beyond_sent |= oa.tx_sequence_number > t.sent_no;
                    let n = oa.tx_sequence_number.min(t.sent_no);
                    (n > 0).then(|| {
                        t.acked_no = t.acked_no.max(n);
                        (*id, n)
                    })
                })
                .collect()
        };
        if targets.is_empty() || beyond_sent {
            self.refuse_tx_ack(
                from,
                "OrderAck",
                if targets.is_empty() {
                    "no sequence sent to that queue manager has that id"
                } else {
                    "it acknowledges numbers not sent yet"
                },
            );
            if targets.is_empty() {
                return false;
            }
        }
        bump(&self.counters.order_acks_received);
        let defs: Vec<(OutgoingDef, u32)> = {
            let t = lock(&self.outgoing);
            targets
                .iter()
                .filter_map(|&(id, n)| t.by_id(id).cloned().map(|d| (d, n)))
                .collect()
        };
        for (def, n) in defs {
            let shard = def.shard % self.partitions.len();
            let acked = OrderAcked {
                queue: def.id,
                seq_id: oa.tx_sequence_id,
                upto: n,
            };
            if here(shard) {
                self.apply_order_ack(acked);
            } else {
                elsewhere.push((shard, acked));
            }
        }
        true
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
        let queue = {
            let out = lock(&self.outgoing);
            lock(&self.tx_out)
                .iter()
                .filter(|(_, t)| t.seq_id == sequence)
                .map(|(id, _)| *id)
                .find(|id| {
                    out.by_id(*id)
                        .is_some_and(|d| d.transport == Transport::Http)
                })
        };
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

    /// Removes the messages an OrderAck acknowledged from outgoing queue `a.queue` (run by the
    /// caller: the shard of its partition, or any thread under today's locks).
    pub fn apply_order_ack(&self, a: OrderAcked) {
        let Some(def) = lock(&self.outgoing).by_id(a.queue).cloned() else {
            return;
        };
        let shard = def.shard % self.partitions.len();
        let mut part = self.partition(shard);
        let done: Vec<LookupId> = stored_tx_positions(&part.store, def.id)
            .into_iter()
            .filter(|&(_, id, no)| id == a.seq_id && no <= a.upto)
            .map(|(l, _, _)| l)
            .collect();
        for l in &done {
            // A message asking for a FinalAck waits for it (MS-MQQB AwaitingFinalACKTable).
            self.keep_awaiting_final_ack(&mut part, def.id, *l);
            if let Err(e) = part.remove_delivered(QueueId(def.id), *l) {
                tracing::error!(error = %e, "cannot remove an ordered-acknowledged message");
            }
        }
        if let Err(e) = part.commit(None) {
            tracing::error!(error = %e, "commit after an OrderAck failed");
        }
        drop(part);
        self.counters
            .outgoing_sent_acked
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        lock(&self.tx_progress).push(def.id);
        if let Some(f) = self.outgoing_dirty.get(shard) {
            f.store(true, Ordering::Release);
        }
        self.wake(shard);
    }

    /// Outgoing queues of shard `shard` whose transactional sequence progressed since the last
    /// call (their resend interval starts over).
    pub fn take_tx_progress(&self, ids: &[u32]) -> Vec<u32> {
        let mut g = lock(&self.tx_progress);
        let (mine, rest): (Vec<u32>, Vec<u32>) = g.drain(..).partition(|id| ids.contains(id));
        *g = rest;
        mine
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

/// An OrderAck verified by the shard it arrived on, for the shard running its outgoing queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderAcked {
    pub queue: u32,
    pub seq_id: u64,
    /// Messages of `seq_id` numbered up to this one are acknowledged.
    pub upto: u32,
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
