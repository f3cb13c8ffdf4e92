//! The mail between shards (`qm::handoff` over `engine/mesh.rs` lanes): a message for a queue
//! another shard runs is handed to it (`hand_off`) and placed there (`place`), the answer coming
//! back to its session; records a shard owes a queue it does not run go as `Mail::Store`
//! (`store_record`, THE way to write a record anywhere); OrderAcks and FinalAcks for our own
//! sends go round the shards until the one running their partition takes them; and
//! `take_mail` takes all of it each turn. [`Handoff`] is a shard's side of the mesh.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use super::{close_code, unix_now, MsmqApp, MsmqConn, Pending, ADMIN_ACKS_PER_TURN_MAX};
use crate::engine::net::ConnId;
use crate::qm::broker::{AckSource, OrderAckIn, RecordStored, Routed, SystemRecord, Verdict};
use crate::qm::handoff::{Mail, Placement, ReplyTo, StoreKind, AMQP_REPLY_BIT, HEAD_MAX};
use crate::store::{QueueStore, Ticket};
use crate::wire::user::UserMessage;

/// The cross-shard side of a shard: its mesh port, mail it could not send yet (a full lane)
/// and its hand-offs waiting for an answer.
pub(super) struct Handoff {
    pub(super) port: crate::engine::mesh::Port,
    /// Per target shard, in order: records waiting for room in the lane.
    pub(super) outbox: Vec<VecDeque<(Vec<u8>, Vec<u8>)>>,
    /// Bytes held in `outbox` (deliveries count against
    /// `limits.handoff_backlog_bytes_per_shard_max`; answers always wait, they are bounded by
    /// the deliveries they answer).
    outbox_bytes: usize,
    /// The next hand-off number.
    next_seq: u64,
    /// Hand-offs not answered yet, with their sessions.
    pub(super) handed: HashMap<u64, ConnId>,
    /// Answers a session has not taken yet (it takes them in `poll_transmit`).
    pub(super) placed: HashMap<u64, Placed>,
    /// Copies of expired messages sent to another shard's dead-letter queue, by hand-off
    /// number, with the partition whose expiry wave waits for their placement.
    pub(super) expiry_copies: HashMap<u64, usize>,
    /// Records the request desk owes (receive acks, FinalAcks, copies) sent to another shard,
    /// by hand-off number, with the desk's number for them (branch deskown).
    pub(super) desk_records: HashMap<u64, u64>,
}

/// An owner's answer, waiting for its session.
type Placed = (
    crate::qm::handoff::Placement,
    Option<(crate::qm::txn::TxKey, crate::qm::txn::IncomingSequence)>,
);

impl<S: QueueStore> MsmqApp<S> {
    /// Joins this shard to the others through `port`: from now on a message whose queue
    /// another shard owns is handed to that shard, and this shard takes theirs.
    pub fn join_mesh(&mut self, port: crate::engine::mesh::Port) {
        let n = port.mesh().shards();
        self.meshed = true;
        self.handoff = Some(Handoff {
            port,
            outbox: (0..n).map(|_| VecDeque::new()).collect(),
            outbox_bytes: 0,
            next_seq: 0,
            handed: HashMap::new(),
            placed: HashMap::new(),
            expiry_copies: HashMap::new(),
            desk_records: HashMap::new(),
        });
    }

    /// Whether mail from another shard waits for this one, or this one has mail it could not
    /// send yet (for a driver that runs a shard only when it has work, like the simulation).
    pub fn has_mail(&self) -> bool {
        self.handoff
            .as_ref()
            .is_some_and(|h| h.port.has_mail() || h.outbox.iter().any(|o| !o.is_empty()))
    }

    /// The shard to hand `msg` to: the one running the partition that stores it, when that is
    /// another shard and the shards are joined by a mesh.
    pub(super) fn handoff_target(&self, routed: &Routed, msg: &UserMessage<'_>) -> Option<usize> {
        self.handoff.as_ref()?;
        let p = self.shared.broker.route_partition(routed, msg)?;
        let to = p % self.shared.shards;
        (to != self.shard).then_some(to)
    }

    /// Hands `frame` to shard `to`, which owns its queue; a recoverable message waits in the
    /// session for the owner's answer and then for the owner's durability. Err closes the
    /// session (without acknowledging the message) when the lane is full and this shard's
    /// backlog of hand-offs is at its limit.
    pub(super) fn hand_off<'f>(
        &mut self,
        conn: &mut MsmqConn,
        to: usize,
        rec_seq: Option<u16>,
        mail: impl FnOnce(ReplyTo) -> Mail<'f>,
    ) -> Result<(), u32> {
        let limit = self
            .shared
            .broker
            .config
            .limits
            .handoff_backlog_bytes_per_shard_max;
        let Some(h) = self.handoff.as_mut() else {
            return Err(close_code::STORE);
        };
        let seq = h.next_seq;
        let mail = mail(ReplyTo {
            shard: self.shard as u32,
            conn: conn.id,
            seq,
        });
        let mut head = [0u8; HEAD_MAX];
        let (n, body) = mail.encode_head(&mut head);
        if !h.send(to, &head[..n], body, Some(limit)) {
            self.shared
                .counters
                .handoff_backlog_full
                .fetch_add(1, Ordering::Relaxed);
            if crate::ratelog::QUOTA.allow() {
                tracing::warn!(peer = %conn.peer, to, limit, "messages for another shard's queues wait past limits.handoff_backlog_bytes_per_shard_max; closing the session (its sender keeps what was not acknowledged)");
            }
            return Err(close_code::STORE);
        }
        h.next_seq += 1;
        h.handed.insert(seq, conn.id);
        self.shared
            .counters
            .handoffs
            .fetch_add(1, Ordering::Relaxed);
        conn.session.hold();
        conn.pending_durable
            .push_back(Pending::Handed { seq, rec: rec_seq });
        Ok(())
    }

    /// The owner's side of a hand-off: stores the message as if it had arrived here, and says
    /// where it went.
    /// None when the owner dead-lettered it into another shard's dead-letter queue: pushed on
    /// `forwards` for that shard, which answers the session.
    fn place(
        &mut self,
        now_ms: u64,
        now_unix: u32,
        frame: &[u8],
        forwards: &mut Vec<SystemRecord>,
    ) -> Option<Placed> {
        let msg = match UserMessage::parse(frame) {
            Ok(m) => m,
            Err(e) => {
                // It parsed on the shard that received it: a bug, not a peer's fault.
                tracing::error!(error = %e, "a message handed over by another shard does not parse; refusing it");
                return Some((Placement::Refused, None));
            }
        };
        let routed = self.shared.broker.route_incoming(&mut self.routes, &msg);
        // The partition whose FinalAck address table the sending shard told (`FinalAckPeer`).
        let noted = self
            .shared
            .broker
            .route_partition(&routed, &msg)
            .unwrap_or(usize::MAX);
        let here = self.here();
        let d = self
            .shared
            .broker
            .deliver_routed_here(routed, frame, &msg, now_unix, now_ms, &here);
        // A transactional message refused here owes its sender a negative FinalAck (the
        // session it came on is another shard's: the sender's address comes from the table).
        if let Some(class) = d.final_nack(&msg) {
            if self.final_acks.len() < ADMIN_ACKS_PER_TURN_MAX {
                self.final_acks.push(crate::qm::broker::Owed::FinalAck {
                    frame: frame.to_vec(),
                    class,
                    partition: noted,
                    peer: None,
                });
            }
        }
        let placement = match d.verdict {
            Verdict::Forwarded { queue, .. } => {
                if let Some(class) = d.admin_ack {
                    self.owe_admin_ack(frame, class);
                }
                if let Some(frame) = d.forward {
                    forwards.push(SystemRecord {
                        kind: StoreKind::DeadLetter,
                        queue,
                        partition: d.partition,
                        frame,
                    });
                    return None;
                }
                Placement::Refused
            }
            Verdict::Stored { ticket, .. } | Verdict::DeadLettered { ticket, .. } => {
                if let Some(a) = self.appended.get_mut(d.partition) {
                    *a = true;
                }
                Placement::At {
                    partition: d.partition as u32,
                    ticket,
                }
            }
            Verdict::Refuse(e) => {
                tracing::error!(error = %e, "cannot store a message handed over by another shard; its session closes so the sender keeps it");
                Placement::Refused
            }
            Verdict::Duplicate { origin } | Verdict::TxRejected { origin } => Placement::At {
                partition: origin.0 as u32,
                ticket: origin.1,
            },
            Verdict::TxAck => Placement::At {
                partition: 0,
                ticket: Ticket::IMMEDIATE,
            },
        };
        if let Some(class) = d.admin_ack {
            self.owe_admin_ack(frame, class);
        }
        Some((placement, d.order_ack))
    }

    /// `sender`'s FinalAcks go to `ip`: noted in partition `p`'s table by the shard running
    /// it (here, or by mail ahead of the message's hand-off on the same lane).
    pub(super) fn note_final_ack_peer(
        &mut self,
        p: usize,
        sender: crate::wire::Guid,
        ip: std::net::IpAddr,
    ) {
        if (self.here())(p) {
            self.shared.broker.note_final_ack_peer(p, sender, ip);
        } else {
            let to = p % self.shared.shards;
            self.mail(
                to,
                Mail::FinalAckPeer {
                    partition: p as u32,
                    sender,
                    ip,
                },
            );
        }
    }

    /// THE way a shard writes a record into a queue it may not run (a dead letter, an admin
    /// acknowledgement, a FinalAck, a journal copy, any system copy): stored here when this
    /// shard runs `rec.partition`, else sent to the shard that does as `Mail::Store`. With
    /// `reply`, that session is answered (`Mail::Placed`) once the record is stored.
    pub fn store_record(&mut self, now_ms: u64, rec: SystemRecord, reply: Option<ReplyTo>) {
        let here = self.here();
        let mut rec = rec;
        loop {
            if !here(rec.partition) {
                self.mail_record(&rec, reply);
                return;
            }
            let stored = self
                .shared
                .broker
                .store_record(&rec, unix_now(), now_ms, &here);
            match stored {
                RecordStored::At(p, ticket) => {
                    if let Some(a) = self.appended.get_mut(p) {
                        *a = true;
                    }
                    if let Some(r) = reply {
                        let partition = p as u32;
                        self.answer(r, Placement::At { partition, ticket }, None);
                    }
                    return;
                }
                RecordStored::Forward(next) => rec = next,
                RecordStored::Failed => {
                    if let Some(r) = reply {
                        self.answer(r, Placement::Refused, None);
                    }
                    return;
                }
            }
        }
    }

    /// Whether this shard is joined to the others by a mesh (it then stores only into the
    /// partitions it runs; see `join_mesh`).
    pub fn is_meshed(&self) -> bool {
        self.meshed
    }

    /// Sends an encoded record (head, body) to shard `to`, as [`MsmqApp::mail`] does: for
    /// this shard's AMQP app (branch amqpown), whose mail is bounded by its links' credit and
    /// limits. False without a mesh (dropped, logged).
    pub fn send_mail(&mut self, to: usize, head: &[u8], body: &[u8]) -> bool {
        let Some(h) = self.handoff.as_mut() else {
            tracing::error!(to, "mail for another shard without a mesh; dropped");
            return false;
        };
        h.send(to, head, body, None)
    }

    /// Moves waiting mail into the lanes and wakes the shards it went to (after the AMQP
    /// app's end of turn, which runs after this app's).
    pub fn flush_mail(&mut self) {
        if let Some(h) = self.handoff.as_mut() {
            h.drain_outbox();
            h.port.flush();
        }
    }

    /// Sends `mail` to shard `to` (never refused: what this shard mails on its own is bounded
    /// by the frames and mail it takes per turn).
    /// Sends `rec` to the shard running its partition as `Mail::Store` (answered to `reply`
    /// once stored there), counted in `records_mailed`.
    pub(super) fn mail_record(&mut self, rec: &SystemRecord, reply: Option<ReplyTo>) {
        let mail = Mail::Store {
            reply,
            kind: rec.kind,
            queue: rec.queue,
            partition: rec.partition as u32,
            now_unix: unix_now(),
            frame: &rec.frame,
        };
        self.mail(rec.partition % self.shared.shards, mail);
        self.shared
            .counters
            .records_mailed
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn mail(&mut self, to: usize, mail: Mail<'_>) {
        let Some(h) = self.handoff.as_mut() else {
            tracing::error!(to, "mail for another shard without a mesh; dropped");
            return;
        };
        let mut head = [0u8; HEAD_MAX];
        let (n, body) = mail.encode_head(&mut head);
        h.send(to, &head[..n], body, None);
    }

    /// Answers the session `reply` names (on this shard or another) with where its message went.
    fn answer(
        &mut self,
        reply: ReplyTo,
        placement: Placement,
        order_ack: Option<(crate::qm::txn::TxKey, crate::qm::txn::IncomingSequence)>,
    ) {
        self.mail(
            reply.shard as usize,
            Mail::Placed {
                reply,
                placement,
                order_ack,
            },
        );
    }

    /// Takes the mail other shards sent: messages for this shard's queues (stored, answered)
    /// and answers for this shard's sessions (kept for them, the sessions made ready).
    pub(super) fn take_mail(&mut self, now_ms: u64) {
        let Some(mut h) = self.handoff.take() else {
            return;
        };
        h.drain_outbox();
        let mut answers: Vec<(usize, [u8; HEAD_MAX], usize)> = Vec::new();
        // Records to store (or send on), with the session to answer; OrderAcks to apply.
        let mut records: Vec<(SystemRecord, Option<ReplyTo>)> = Vec::new();
        // OrderAcks from other shards, each with whether a shard before took it and how many
        // shards (this one included) have still to look at it.
        let mut order_acked: Vec<(OrderAckIn, bool, u32)> = Vec::new();
        // FinalAcks other shards did not hold, with how many shards have still to look.
        let mut final_acked: Vec<(Vec<u8>, AckSource, u32)> = Vec::new();
        let mut forwards = Vec::new();
        let mut copies_placed: Vec<(usize, Option<(usize, Ticket)>)> = Vec::new();
        let mut desk_placed: Vec<(u64, Option<(usize, Ticket)>)> = Vec::new();
        let mut amqp_mail = Vec::new();
        let Handoff {
            port,
            handed,
            placed,
            expiry_copies,
            desk_records,
            ..
        } = &mut h;
        port.recv_all(|from, rec| match Mail::decode(rec.head(), rec.body()) {
            Ok(Mail::Deliver {
                reply,
                now_unix,
                frame,
            }) => {
                let Some((placement, order_ack)) =
                    self.place(now_ms, now_unix, frame, &mut forwards)
                else {
                    // Dead-lettered into another shard's queue: that shard answers.
                    records.extend(forwards.drain(..).map(|r| (r, Some(reply))));
                    return;
                };
                let mut head = [0u8; HEAD_MAX];
                let (n, _) = Mail::Placed {
                    reply,
                    placement,
                    order_ack,
                }
                .encode_head(&mut head);
                answers.push((from, head, n));
            }
            Ok(Mail::Placed { reply, .. }) if reply.seq & AMQP_REPLY_BIT != 0 => {
                amqp_mail.push((from, rec.head().to_vec(), Vec::new()));
            }
            Ok(
                Mail::AmqpProduce { .. }
                | Mail::AmqpProduced { .. }
                | Mail::AmqpFetch { .. }
                | Mail::AmqpFetched { .. }
                | Mail::AmqpSettle { .. }
                | Mail::AmqpWake { .. },
            ) => {
                amqp_mail.push((from, rec.head().to_vec(), rec.body().to_vec()));
            }
            Ok(Mail::Placed {
                reply,
                placement,
                order_ack,
            }) => {
                if let Some(p) = expiry_copies.remove(&reply.seq) {
                    let at = match placement {
                        Placement::At { partition, ticket } => Some((partition as usize, ticket)),
                        Placement::Refused => None,
                    };
                    copies_placed.push((p, at));
                    return;
                }
                if let Some(id) = desk_records.remove(&reply.seq) {
                    let at = match placement {
                        Placement::At { partition, ticket } => Some((partition as usize, ticket)),
                        Placement::Refused => None,
                    };
                    desk_placed.push((id, at));
                    return;
                }
                let Some(conn) = handed.remove(&reply.seq) else {
                    // Its session closed meanwhile.
                    return;
                };
                debug_assert_eq!(conn, reply.conn);
                if placement == Placement::Refused {
                    self.closes.push((conn, close_code::STORE));
                }
                placed.insert(reply.seq, (placement, order_ack));
                self.ready.push(conn);
            }
            Ok(Mail::Store {
                reply,
                kind,
                queue,
                partition,
                now_unix: _,
                frame,
            }) => {
                let record = SystemRecord {
                    kind,
                    queue,
                    partition: partition as usize,
                    frame: frame.to_vec(),
                };
                records.push((record, reply));
            }
            Ok(Mail::OrderAcked {
                from,
                seq_id,
                number,
                taken,
                hops_left,
            }) => {
                let a = OrderAckIn {
                    from,
                    seq_id,
                    number,
                };
                order_acked.push((a, taken, hops_left));
            }
            Ok(Mail::FinalAcked {
                from,
                hops_left,
                frame,
            }) => {
                final_acked.push((frame.to_vec(), from, hops_left));
            }
            Ok(Mail::FinalAckPeer {
                partition,
                sender,
                ip,
            }) => {
                // Sent to this shard because it runs `partition` (see `note_final_ack_peer`).
                debug_assert_eq!(partition as usize % self.shared.shards, self.shard);
                self.shared
                    .broker
                    .note_final_ack_peer(partition as usize, sender, ip);
            }
            Err(_) => {
                tracing::error!(from, "unreadable mail from another shard; dropped");
            }
        });
        for (to, head, n) in answers {
            // Answers are never refused: they are bounded by the deliveries they answer.
            h.send(to, &head[..n], &[], None);
        }
        self.handoff = Some(h);
        self.amqp_inbox.append(&mut amqp_mail);
        for (record, reply) in records {
            self.store_record(now_ms, record, reply);
        }
        for (a, taken, hops_left) in order_acked {
            self.order_ack_here(a, taken, hops_left);
        }
        for (frame, from, hops_left) in final_acked {
            self.final_ack_here(now_ms, &frame, from, hops_left);
        }
        for (p, at) in copies_placed {
            self.shared.broker.expiry_copy_placed(p, at);
        }
        if let Some(desk) = self.desk.as_mut() {
            for (id, at) in desk_placed {
                desk.record_placed(id, at);
            }
        }
    }

    /// Sends FinalAck `frame` (arrived on `from`) on to the next shard, which `hops_left`
    /// shards (itself included) are still to look at.
    pub(super) fn forward_final_ack(&mut self, frame: &[u8], from: AckSource, hops_left: u32) {
        let next = (self.shard + 1) % self.shared.shards;
        self.mail(
            next,
            Mail::FinalAcked {
                from,
                hops_left,
                frame,
            },
        );
    }

    /// FinalAck `frame` from another shard: looked for in the partitions this shard runs and
    /// taken there (its copy stored where it goes), else sent on to the next shard, or, by the
    /// last, counted unmatched.
    fn final_ack_here(&mut self, now_ms: u64, frame: &[u8], from: AckSource, hops_left: u32) {
        let broker = self.shared.broker.clone();
        let Ok(msg) = UserMessage::parse(frame) else {
            tracing::error!("a FinalAck passed on by another shard does not parse; dropped");
            return;
        };
        let Some(fa) = msg.final_ack_body() else {
            tracing::error!("a FinalAck passed on by another shard has no FinalAck body; dropped");
            return;
        };
        let class = msg.properties.message_class;
        for &p in &self.owned {
            if let Some(copy) = broker.take_final_ack_in(p, class, &fa) {
                if let Some(rec) = copy {
                    self.store_record(now_ms, rec, None);
                }
                return;
            }
        }
        if hops_left > 1 {
            self.forward_final_ack(frame, from, hops_left - 1);
        } else {
            broker.finish_final_ack(&from, false);
        }
    }

    /// Sends OrderAck `a` on to the next shard, which `hops_left` shards (itself included)
    /// are still to look at.
    pub(super) fn forward_order_ack(&mut self, a: OrderAckIn, taken: bool, hops_left: u32) {
        let next = (self.shard + 1) % self.shared.shards;
        self.mail(
            next,
            Mail::OrderAcked {
                from: a.from,
                seq_id: a.seq_id,
                number: a.number,
                taken,
                hops_left,
            },
        );
    }

    /// OrderAck `a` from another shard: verified against the outgoing sequences of the
    /// partitions this shard runs and applied there, then sent on to the next shard, or, by
    /// the last, counted as received or refused.
    fn order_ack_here(&mut self, a: OrderAckIn, mut taken: bool, hops_left: u32) {
        let broker = self.shared.broker.clone();
        for &p in &self.owned {
            taken |= broker.take_order_ack_in(p, &a);
        }
        if hops_left > 1 {
            self.forward_order_ack(a, taken, hops_left - 1);
        } else {
            broker.finish_order_ack(&a, taken);
        }
    }
}

impl Handoff {
    /// A reply address for mail no session waits for (a desk record, an expiry copy): a fresh
    /// hand-off number on shard `shard`, which the caller files where the answer goes; the
    /// connection part names no slot.
    pub(super) fn sessionless_reply(&mut self, shard: usize) -> ReplyTo {
        let seq = self.next_seq;
        self.next_seq += 1;
        ReplyTo {
            shard: shard as u32,
            conn: ConnId {
                slot: u32::MAX,
                generation: 0,
            },
            seq,
        }
    }

    /// Sends one record to shard `to`, in order after any waiting for room; a full lane keeps
    /// it in the outbox unless that would pass `limit` bytes (then false, nothing kept).
    fn send(&mut self, to: usize, head: &[u8], body: &[u8], limit: Option<usize>) -> bool {
        if self.outbox[to].is_empty() && self.port.try_send(to, head, body) {
            return true;
        }
        let bytes = head.len() + body.len();
        if limit.is_some_and(|max| self.outbox_bytes + bytes > max) {
            return false;
        }
        self.outbox[to].push_back((head.to_vec(), body.to_vec()));
        self.outbox_bytes += bytes;
        true
    }

    /// Moves what waits in the outbox into the lanes, as far as they have room.
    pub(super) fn drain_outbox(&mut self) {
        for (to, queue) in self.outbox.iter_mut().enumerate() {
            while let Some((head, body)) = queue.front() {
                if !self.port.try_send(to, head, body) {
                    break;
                }
                self.outbox_bytes -= head.len() + body.len();
                queue.pop_front();
            }
        }
    }
}
