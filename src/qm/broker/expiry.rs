//! Messages whose TimeToBeReceived has passed (MS-MQDMPR 3.1.7.1.x): found per partition,
//! dead-lettered when their senders asked for negative journaling, removed, and answered with
//! a NACK_RECEIVE_TIMEOUT when their senders asked for negative receive acks.

use std::collections::HashSet;

use crate::qm::catalog::{DEADLETTER_ID, DEADXACT_ID};
use crate::store::{LookupId, MessageMeta, QueueId, QueueStore, Select};
use crate::wire::headers::MessageClass;
use crate::wire::user::UserMessage;

use super::partition::{ExpiredItem, ExpiryWave, TXN_STATE_QUEUE};
use super::{bump, Broker, EXPIRY_BATCH_MAX};

impl<S: QueueStore> Broker<S> {
    /// Drops duplicate-table entries of partition `i` older than `RemoveDuplicateCleanup`
    /// (the table does the work at most once per that period), as MSMQ purges its
    /// MessageIDHistoryTable. `now_ms` is the engine's clock, the one deliveries record.
    pub fn clean_duplicates(&self, i: usize, now_ms: u64) {
        self.partition(i).dedup.cleanup(now_ms);
    }

    /// Removes the messages of partition `i` whose TimeToBeReceived has passed (MS-MQDMPR
    /// 3.1.7.1.x): each goes to the dead-letter queue when its sender asked for negative
    /// journaling (JN), and a NACK_RECEIVE_TIMEOUT goes to the admin queue when it asked for
    /// negative receive acks; otherwise it is deleted, logged and counted. Returns how many
    /// expired now, and whether dead-letter copies wait for the disk (see
    /// [`Broker::settle_expiry`]).
    ///
    /// Never waits for the disk: a message with JN is copied into the dead-letter queue (at
    /// that queue's owner, whose commit is started), and only once the copy is durable is the
    /// original removed, by a later call (a crash in between leaves a copy too many, never
    /// none). One wave of copies waits at a time; messages with JN found meanwhile wait for the
    /// next scan.
    pub fn expire_partition(&self, i: usize, now_unix: u32) -> (usize, bool) {
        let mut forwards = Vec::new();
        let r = self.expire_partition_here(i, now_unix, &super::everywhere, &mut forwards);
        debug_assert!(forwards.is_empty());
        self.send_expiry_nacks(i);
        r
    }

    /// Sends the NACK_RECEIVE_TIMEOUTs partition `i`'s expiry owes, under the admin queues'
    /// partition locks (callers without shards; a shard takes them with
    /// [`Broker::take_expiry_nacks`] and sends them as its own admin acknowledgements).
    fn send_expiry_nacks(&self, i: usize) {
        for (q, frame) in self.take_expiry_nacks(i) {
            let mut owed = Vec::new();
            // Partition `i` held the message: its table knows where the FinalAck goes.
            self.receive_nacks_owed(
                q,
                &[(i, frame)],
                MessageClass::NACK_RECEIVE_TIMEOUT,
                &mut owed,
            );
            self.send_owed(owed);
        }
    }

    /// (store queue, frame) of partition `i`'s expired messages owed a NACK_RECEIVE_TIMEOUT
    /// (NR) or a negative FinalAck, taken.
    pub fn take_expiry_nacks(&self, i: usize) -> Vec<(u32, Vec<u8>)> {
        std::mem::take(&mut self.partition(i % self.partitions.len()).expiry_nacks)
    }

    /// [`Broker::expire_partition`] for a shard running the partitions `here` says: a copy for
    /// a dead-letter queue of another shard's partition is pushed on `forwards` (for the
    /// caller to send as `Mail::Store`, asking for the placement), and the wave waits for
    /// [`Broker::expiry_copy_placed`] for each before the originals go.
    pub fn expire_partition_here(
        &self,
        i: usize,
        now_unix: u32,
        here: super::Here<'_>,
        forwards: &mut Vec<super::SystemRecord>,
    ) -> (usize, bool) {
        let i = i % self.partitions.len();
        let (mut removed, pending) = self.settle_expiry_here(i);
        // (queue, lookup, frame, meta, dead-letter queue if JN, NR).
        type Expired = (QueueId, LookupId, Vec<u8>, MessageMeta, Option<u32>, bool);
        let mut found_msgs: Vec<Expired> = Vec::new();
        {
            let part = self.partition(i);
            let waiting: HashSet<(QueueId, LookupId)> = part
                .expiry_wave
                .as_ref()
                .map(|w| w.items.iter().map(|(q, l, _)| (*q, *l)).collect())
                .unwrap_or_default();
            let mut found = Vec::new();
            part.store.expired(now_unix, EXPIRY_BATCH_MAX, &mut found);
            for (q, lookup) in found {
                if q == TXN_STATE_QUEUE || waiting.contains(&(q, lookup)) {
                    continue;
                }
                let Some(m) = part.store.peek(q, Select::Lookup(lookup)) else {
                    continue;
                };
                let frame = m.bytes.to_vec();
                let meta = m.meta;
                let (mut dlq, mut nr) = (None, false);
                if let Ok(msg) = UserMessage::parse(&frame) {
                    if msg.user.flags.journal_negative() {
                        dlq = Some(if msg.user.flags.transactional() {
                            DEADXACT_ID
                        } else {
                            DEADLETTER_ID
                        });
                    }
                    nr = msg.properties.flags.negative_receive() || super::wants_final_ack(&msg);
                }
                if dlq.is_some() && pending {
                    // The next wave.
                    continue;
                }
                found_msgs.push((q, lookup, frame, meta, dlq, nr));
            }
        }
        if found_msgs.is_empty() {
            return (removed, pending);
        }
        // Copies for the dead-letter queue go to its owner, whose commit is started; one
        // partition lock at a time.
        let mut wave = ExpiryWave::default();
        let mut now_gone = Vec::new();
        for (q, lookup, frame, meta, dlq, nr) in found_msgs {
            let Some(dlq) = dlq else {
                now_gone.push((q, lookup, nr.then_some(frame)));
                continue;
            };
            let pi = self.dead_letter_partition(dlq);
            if !here(pi) {
                forwards.push(super::SystemRecord {
                    kind: crate::qm::handoff::StoreKind::DeadLetter,
                    queue: dlq,
                    partition: pi,
                    frame: frame.clone(),
                });
                wave.unanswered += 1;
                wave.items.push((q, lookup, nr.then_some(frame)));
                continue;
            }
            let mut p = self.partition(pi);
            match p.store.append(QueueId(dlq), &meta, &frame) {
                Ok(a) => {
                    match wave.copies.iter_mut().find(|(x, _)| *x == pi) {
                        Some((_, t)) => *t = (*t).max(a.ticket),
                        None => wave.copies.push((pi, a.ticket)),
                    }
                    wave.items.push((q, lookup, nr.then_some(frame)));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot dead-letter an expired message; keeping it");
                }
            }
        }
        for &(pi, _) in &wave.copies {
            if let Err(e) = self.partition(pi).commit(None) {
                tracing::error!(error = %e, "cannot start the commit of dead-lettered expired messages; the originals stay until it succeeds");
            }
        }
        removed += self.remove_expired(i, now_gone);
        let pending = !wave.items.is_empty();
        if pending {
            self.partition(i).expiry_wave = Some(wave);
        }
        (removed, pending)
    }

    /// Removes the originals of partition `i`'s wave of dead-lettered expired messages once
    /// every copy is durable (read from the copies' partitions' published marks, without their
    /// locks). Returns how many were removed and whether a wave still waits.
    pub fn settle_expiry(&self, i: usize) -> (usize, bool) {
        let r = self.settle_expiry_here(i);
        self.send_expiry_nacks(i);
        r
    }

    /// [`Broker::settle_expiry`] for a shard: the NACK_RECEIVE_TIMEOUTs owed are left for
    /// [`Broker::take_expiry_nacks`].
    pub fn settle_expiry_here(&self, i: usize) -> (usize, bool) {
        let wave = {
            let mut part = self.partition(i);
            let Some(w) = part.expiry_wave.as_ref() else {
                return (0, false);
            };
            if w.unanswered > 0 || !w.copies.iter().all(|&(pi, t)| self.is_durable(pi, t)) {
                return (0, true);
            }
            if w.refused {
                tracing::error!(
                    partition = i,
                    "a dead-letter queue refused copies of expired messages; the originals stay \
                     until the next scan copies them again"
                );
                part.expiry_wave = None;
                return (0, false);
            }
            part.expiry_wave.take()
        };
        let items = wave.map(|w| w.items).unwrap_or_default();
        (self.remove_expired(i, items), false)
    }

    /// The placement of a copy partition `i`'s expiry wave sent to another shard's dead-letter
    /// queue came back: `Some((partition, ticket))` where it was stored, None if refused.
    pub fn expiry_copy_placed(&self, i: usize, placed: Option<(usize, crate::store::Ticket)>) {
        let mut part = self.partition(i % self.partitions.len());
        let Some(w) = part.expiry_wave.as_mut() else {
            return;
        };
        w.unanswered = w.unanswered.saturating_sub(1);
        match placed {
            Some((pi, t)) => match w.copies.iter_mut().find(|(x, _)| *x == pi) {
                Some((_, m)) => *m = (*m).max(t),
                None => w.copies.push((pi, t)),
            },
            None => w.refused = true,
        }
    }

    /// Removes expired messages from partition `i` (their removal committed with its next
    /// commit, started here) and sends the NACK_RECEIVE_TIMEOUTs owed.
    fn remove_expired(&self, i: usize, items: Vec<ExpiredItem>) -> usize {
        if items.is_empty() {
            return 0;
        }
        let mut n = 0;
        {
            let mut part = self.partition(i);
            for (q, lookup, nack) in items {
                if let Err(e) = part.remove_delivered(q, lookup) {
                    tracing::error!(error = %e, "cannot remove an expired message");
                    continue;
                }
                n += 1;
                part.expiry_nacks.extend(nack.map(|f| (q.0, f)));
                bump(&self.counters.expired_in_queue);
                tracing::info!(
                    queue = q.0,
                    lookup = lookup.0,
                    "message expired (TimeToBeReceived)"
                );
            }
            if let Err(e) = part.commit(None) {
                tracing::error!(error = %e, "commit after expiry failed");
            }
        }
        n
    }

    /// Lookup ids of messages whose TimeToBeReceived has passed, per partition.
    pub fn expired(&self, now_unix: u32, max: usize) -> Vec<(usize, QueueId, LookupId)> {
        let mut out = Vec::new();
        for i in 0..self.partitions.len() {
            let mut v = Vec::new();
            self.partition(i).store.expired(now_unix, max, &mut v);
            out.extend(v.into_iter().map(|(q, l)| (i, q, l)));
        }
        out
    }
}
