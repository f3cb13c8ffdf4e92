//! The acknowledgements of a shard's sessions: what becomes durable is acknowledged in order
//! (`apply_durability`, with the owners' answers for handed-off messages, `take_placements`);
//! OrderAcks of the transactional sequences received (`accept_order_ack`, `send_order_acks`);
//! and the admin acknowledgements, FinalAcks and OrderAcks owed for the frames of a receive,
//! built and stored once no frame is being handled (`send_owed_acks`).

use std::sync::atomic::Ordering;

use super::{MsmqApp, MsmqConn, Pending, ADMIN_ACKS_PER_TURN_MAX, COMMIT_ERROR_LOG_INTERVAL_MS};
use crate::qm::broker::TxAckStep;
use crate::qm::handoff::Placement;
use crate::qm::order_acks::{
    order_ack_frame, OrderAckTo, ORDER_ACKS_PER_SESSION_MAX, ORDER_ACK_WINDOW_RETRY_MS,
};
use crate::store::{QueueStore, Ticket};
use crate::wire::user::UserMessage;

impl<S: QueueStore> MsmqApp<S> {
    pub(super) fn accept_order_ack(
        &mut self,
        now_ms: u64,
        conn: &mut MsmqConn,
        key: crate::qm::txn::TxKey,
        state: crate::qm::txn::IncomingSequence,
    ) {
        let max_delay = u64::from(self.shared.broker.config.parameters.SeqMaxAckDelay);
        if !conn.order_acks.on_accepted(now_ms, key, state, max_delay)
            && now_ms >= self.order_ack_cap_logged_ms + COMMIT_ERROR_LOG_INTERVAL_MS
        {
            self.order_ack_cap_logged_ms = now_ms;
            tracing::warn!(peer = %conn.peer, "ORDER_ACKS_PER_SESSION_MAX ({ORDER_ACKS_PER_SESSION_MAX}) sequences on one session; further OrderAcks wait for the senders' resends");
        }
    }

    /// An admin acknowledgement owed for `frame`: built after the frames of this receive
    /// (`send_owed_acks`), since it goes to another queue.
    pub(super) fn owe_admin_ack(
        &mut self,
        frame: &[u8],
        class: crate::wire::headers::MessageClass,
    ) {
        if self.admin_acks.len() < ADMIN_ACKS_PER_TURN_MAX {
            self.admin_acks.push((frame.to_vec(), class));
        } else {
            tracing::warn!("too many admin acknowledgements in one turn; dropping one");
        }
    }

    /// Gives `conn` the owners' answers for its hand-offs.
    pub(super) fn take_placements(&mut self, now_ms: u64, conn: &mut MsmqConn) {
        let Some(h) = self.handoff.as_mut() else {
            return;
        };
        if h.placed.is_empty() {
            return;
        }
        let mut order_acks = Vec::new();
        let mut watch = Vec::new();
        let mut taken = 0;
        for e in conn.pending_durable.iter_mut() {
            let Pending::Handed { seq, rec } = *e else {
                continue;
            };
            let Some((placement, order_ack)) = h.placed.remove(&seq) else {
                continue;
            };
            taken += 1;
            order_acks.extend(order_ack);
            let Some(rec) = rec else {
                // Express: nothing to wait for once the owner has it (a refusal closes).
                *e = Pending::Placed;
                continue;
            };
            *e = match placement {
                Placement::At { partition, ticket } => {
                    let p = partition as usize;
                    if ticket != Ticket::IMMEDIATE {
                        if let Some(a) = self.awaiting.get_mut(p) {
                            *a = Some(a.map_or(ticket, |a| a.max(ticket)));
                        }
                        watch.push(p);
                    }
                    Pending::At {
                        partition: p,
                        ticket,
                        rec,
                    }
                }
                Placement::Refused => Pending::Refused,
            };
        }
        if taken == 0 {
            return;
        }
        for _ in 0..taken {
            conn.session.release();
        }
        conn.pending_durable.retain(|e| *e != Pending::Placed);
        for (key, state) in order_acks {
            self.accept_order_ack(now_ms, conn, key, state);
        }
        // This runs after the turn's `end_of_turn`: a partition of another shard must be
        // watched now, or nothing would wake this shard when it becomes durable.
        watch.sort_unstable();
        watch.dedup();
        for p in watch {
            if p % self.shared.shards != self.shard {
                self.watch_partition(p);
            }
        }
    }

    /// Builds the admin acknowledgements and takes the OrderAcks/FinalAcks owed for frames
    /// received (or placed for another shard) since the last call; they store into other
    /// queues, so they wait until no frame is being handled.
    pub(super) fn send_owed_acks(&mut self, now_ms: u64) {
        for (frame, class) in std::mem::take(&mut self.admin_acks) {
            let Ok(msg) = UserMessage::parse(&frame) else {
                continue;
            };
            let ordinal = self.next_ordinal();
            if let Some(rec) = self.shared.broker.admin_ack_record(&msg, class, ordinal) {
                self.store_record(now_ms, rec, None);
            }
        }
        for o in std::mem::take(&mut self.final_acks) {
            self.store_owed(now_ms, o);
        }
        let here = self.here();
        let mut forward = Vec::new();
        let mut finals_on = Vec::new();
        let mut copies = Vec::new();
        for (frame, from) in std::mem::take(&mut self.tx_acks) {
            if let Ok(msg) = UserMessage::parse(&frame) {
                match self.shared.broker.handle_tx_ack_here(&msg, &from, &here) {
                    TxAckStep::Done(_) => {}
                    TxAckStep::Forward(a, taken) => forward.push((a, taken)),
                    TxAckStep::FinalTaken(copy) => copies.extend(copy),
                    TxAckStep::FinalOn => finals_on.push((frame, from)),
                }
            }
        }
        for (a, taken) in forward {
            // Verified and applied by the shards running the other partitions, one after the
            // other (only an outgoing queue's owner knows what it sent, and to whom).
            self.forward_order_ack(a, taken, self.shared.shards as u32 - 1);
        }
        for (frame, from) in finals_on {
            // Looked for by the shards running the other partitions, one after the other.
            self.forward_final_ack(&frame, from, self.shared.shards as u32 - 1);
        }
        for rec in copies {
            self.store_record(now_ms, rec, None);
        }
    }

    pub(super) fn send_order_acks(&mut self, now_ms: u64, conn: &mut MsmqConn) {
        // An OrderAck says every message up to its number is stored: it waits while any
        // message of this session is not yet durable.
        if !conn.pending_durable.is_empty() {
            conn.order_acks.hold(now_ms);
            return;
        }
        let own = self.shared.broker.guid();
        // DIRECT=TCP to the sender's address when the session carried direct format names,
        // else PRIVATE=<sender>\4.
        let to = if conn.direct_format {
            OrderAckTo::Direct(conn.peer.ip())
        } else {
            OrderAckTo::Private(conn.session.remote_qm())
        };
        for s in conn.order_acks.take_due(now_ms) {
            let ordinal = self.next_ordinal();
            let bytes = match order_ack_frame(own, ordinal, &s, to) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode an OrderAck");
                    continue;
                }
            };
            match conn.session.send_message(now_ms, &bytes, false, 0) {
                Ok(_) => {
                    self.shared
                        .counters
                        .order_acks_out
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    // The window is full: try again shortly; the OrderAck is cumulative.
                    tracing::debug!(?e, "OrderAck deferred");
                    conn.order_acks
                        .retry_at(s, now_ms + ORDER_ACK_WINDOW_RETRY_MS);
                }
            }
        }
    }

    pub(super) fn apply_durability(&mut self, now_ms: u64, conn: &mut MsmqConn) {
        self.take_placements(now_ms, conn);
        let mut last = None;
        while let Some(&front) = conn.pending_durable.front() {
            let Pending::At {
                partition: p,
                ticket: t,
                rec,
            } = front
            else {
                break;
            };
            let durable = if !self.commit_ok {
                false
            } else if self.durable.get(p).is_some_and(|&d| t < d) {
                true
            } else {
                // Committed by another shard or an API call since this shard's last commit
                // (its published watermark; no lock).
                self.shared.broker.is_durable(p, t)
            };
            if durable {
                last = Some(rec);
                conn.pending_durable.pop_front();
            } else {
                break;
            }
        }
        if let Some(rec) = last {
            conn.session.handle_durable(now_ms, rec);
        }
    }
}
