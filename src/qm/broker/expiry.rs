//! Messages whose TimeToBeReceived has passed (MS-MQDMPR 3.1.7.1.x): found per partition,
//! dead-lettered when their senders asked for negative journaling, removed, and answered with
//! a NACK_RECEIVE_TIMEOUT when their senders asked for negative receive acks.

use std::collections::HashMap;

use crate::qm::catalog::{DEADLETTER_ID, DEADXACT_ID};
use crate::store::{LookupId, MessageMeta, QueueId, QueueStore, Select, Ticket};
use crate::wire::headers::MessageClass;
use crate::wire::user::UserMessage;

use super::partition::TXN_STATE_QUEUE;
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
    /// expired. The dead-letter copies are made durable before the originals go, and that
    /// commit is waited for here (on the shard running partition `i`: a known wait of the
    /// loop, only when messages with JN expire).
    pub fn expire_partition(&self, i: usize, now_unix: u32) -> usize {
        let i = i % self.partitions.len();
        // (queue, lookup, frame, meta, dead-letter queue if JN, NR).
        type Expired = (QueueId, LookupId, Vec<u8>, MessageMeta, Option<u32>, bool);
        let mut found_msgs: Vec<Expired> = Vec::new();
        {
            let part = self.partition(i);
            let mut found = Vec::new();
            part.store.expired(now_unix, EXPIRY_BATCH_MAX, &mut found);
            for (q, lookup) in found {
                if q == TXN_STATE_QUEUE {
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
                    nr = msg.properties.flags.negative_receive();
                }
                found_msgs.push((q, lookup, frame, meta, dlq, nr));
            }
        }
        let n = found_msgs.len();
        if n == 0 {
            return 0;
        }
        // Copies for the dead-letter queue go to its owner and are durable before the originals
        // are removed (a crash in between leaves a copy too many, never none). One partition
        // lock at a time.
        let mut keep = vec![false; n];
        let mut wait: HashMap<usize, (Ticket, Vec<usize>)> = HashMap::new();
        for (k, (_, _, frame, meta, dlq, _)) in found_msgs.iter().enumerate() {
            let Some(dlq) = *dlq else { continue };
            let pi = self.dead_letter_partition(dlq);
            match self.partition(pi).store.append(QueueId(dlq), meta, frame) {
                Ok(a) => {
                    let w = wait.entry(pi).or_insert((Ticket::IMMEDIATE, Vec::new()));
                    w.0 = w.0.max(a.ticket);
                    w.1.push(k);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot dead-letter an expired message; keeping it");
                    keep[k] = true;
                }
            }
        }
        for (pi, (t, ks)) in wait {
            let t = (t != Ticket::IMMEDIATE).then_some(t);
            if let Err(e) = self.partition(pi).commit(t) {
                tracing::error!(error = %e, "cannot commit dead-lettered expired messages; keeping the originals");
                for k in ks {
                    keep[k] = true;
                }
            }
        }
        let mut nacks = Vec::new();
        {
            let mut part = self.partition(i);
            for (k, (q, lookup, frame, _, _, nr)) in found_msgs.into_iter().enumerate() {
                if keep[k] {
                    continue;
                }
                if let Err(e) = part.remove_delivered(q, lookup) {
                    tracing::error!(error = %e, "cannot remove an expired message");
                    continue;
                }
                if nr {
                    nacks.push(frame);
                }
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
        for frame in nacks {
            if let Ok(msg) = UserMessage::parse(&frame) {
                self.send_admin_ack(&msg, MessageClass::NACK_RECEIVE_TIMEOUT);
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
