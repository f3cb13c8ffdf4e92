//! Commits and expiry of a shard: the per-turn group commit of each partition it runs or
//! appended to (`commit_partition`), the watch on another shard's partition it waits for
//! (`watch_partition`, `await_ticket`), the eventfd its commits wake it through, and the
//! expiry of its partitions' messages with the acknowledgements that expiry owes.

use std::sync::atomic::Ordering;

use super::{unix_now, MsmqApp, COMMIT_ERROR_LOG_INTERVAL_MS, COMMIT_RETRY_MS};
use crate::store::{QueueStore, Ticket};

impl<S> MsmqApp<S> {
    /// Makes the store rings of the partitions this shard runs signal eventfd `fd` (the
    /// shard's own) when a commit completes, so the shard wakes for it. A failure is logged
    /// and the shard polls for completions instead (every millisecond while it waits).
    pub fn notify_commits_to(&mut self, fd: std::os::fd::RawFd)
    where
        S: QueueStore,
    {
        let mut ok = true;
        for &p in &self.owned {
            if let Err(e) = self.shared.broker.set_commit_notify(p, fd) {
                tracing::error!(shard = self.shard, partition = p, error = %e, "cannot register the shard's eventfd on the store ring; polling for commit completions instead");
                ok = false;
            }
        }
        self.commits_notify = ok;
    }
}

impl<S: QueueStore> MsmqApp<S> {
    /// This shard waits for ticket `t` of partition `p` (for a session's acknowledgement).
    pub(super) fn await_ticket(&mut self, p: usize, t: Ticket) {
        if t != Ticket::IMMEDIATE {
            if let Some(a) = self.awaiting.get_mut(p) {
                *a = Some(a.map_or(t, |a| a.max(t)));
            }
        }
    }

    /// The NACK_RECEIVE_TIMEOUTs partition `p`'s expiry owes, sent as this shard's admin
    /// acknowledgements (`store_record`: by mail to an admin queue another shard runs).
    pub(super) fn owe_expiry_nacks(&mut self, p: usize) {
        use crate::wire::headers::MessageClass;
        for (q, frame) in self.shared.broker.take_expiry_nacks(p) {
            let Ok(msg) = crate::wire::user::UserMessage::parse(&frame) else {
                continue;
            };
            if msg.properties.flags.negative_receive() {
                self.owe_admin_ack(&frame, MessageClass::NACK_RECEIVE_TIMEOUT);
            }
            // The negative FinalAck an expired transactional message owes its sender (none
            // for a message leaving a dead-letter queue, a journal or an outgoing queue).
            if (crate::qm::catalog::FIRST_USER_QUEUE_ID..crate::qm::broker::JOURNAL_QUEUE_BIT)
                .contains(&q)
                && crate::qm::broker::wants_final_ack(&msg)
            {
                let o = crate::qm::broker::Owed::FinalAck {
                    frame: frame.clone(),
                    class: MessageClass::NACK_RECEIVE_TIMEOUT,
                    partition: p,
                    peer: None,
                };
                self.store_owed(self.now_ms, o);
            }
        }
        if !self.admin_acks.is_empty() {
            self.send_owed_acks(self.now_ms);
        }
    }

    /// Expires partition `p`'s messages; copies for another shard's dead-letter queue go
    /// there as mail, and the wave waits for their placements. Returns whether a wave waits.
    pub(super) fn expire(&mut self, p: usize) -> bool {
        let here = self.here();
        let mut forwards = Vec::new();
        let (_, waits) =
            self.shared
                .broker
                .expire_partition_here(p, unix_now(), &here, &mut forwards);
        for rec in forwards {
            let Some(h) = self.handoff.as_mut() else {
                break;
            };
            // No session: the answer goes to the expiry wave (`expiry_copies`).
            let reply = h.sessionless_reply(self.shard);
            h.expiry_copies.insert(reply.seq, p);
            self.mail_record(&rec, Some(reply));
        }
        waits
    }

    /// The group commit of partition `p`: one flush for every message appended there since the
    /// last, across all sessions and queues, and the completions reaped, never waited for.
    /// While this shard waits for `awaiting[p]`, the partition's owner (woken by the commit's
    /// completion) wakes this shard once the durable mark moves. Returns whether it moved.
    pub(super) fn commit_partition(&mut self, now_ms: u64, p: usize) -> bool {
        let wait_for = self.awaiting[p];
        let mut part = self.shared.broker.partition(p);
        match part.commit(None) {
            Ok(mark) => {
                self.commit_retry_at = None;
                let advanced = mark > self.durable[p];
                self.durable[p] = mark;
                match wait_for {
                    Some(t) if t < mark => self.awaiting[p] = None,
                    Some(_) if p % self.shared.shards != self.shard => {
                        // Under the partition's lock: the owner's next look at it sees this.
                        self.shared.broker.note_durable_interest(p, self.shard);
                    }
                    _ => {}
                }
                drop(part);
                if advanced {
                    self.shared.counters.commits.fetch_add(1, Ordering::Relaxed);
                    self.shared.broker.wake_durable_interest(p, self.shard);
                }
                advanced
            }
            Err(e) if is_fatal(&e) => {
                if self.commit_ok {
                    self.commit_ok = false;
                    self.shared
                        .broker
                        .counters
                        .store_poisoned
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        shard = self.shard,
                        error = %e,
                        "store commit failed for good: partition {} is poisoned; closing the \
                         sessions waiting for it (their senders keep the messages and resend \
                         elsewhere or after a restart); restart lior once the disk is fixed",
                        part.index
                    );
                }
                false
            }
            Err(e) => {
                // Transient (a slow disk): the same commit is tried again shortly (an
                // application deadline, should no IO wake the shard); the sessions keep
                // waiting for it.
                self.commit_retry_at = Some(now_ms + COMMIT_RETRY_MS);
                self.shared
                    .broker
                    .counters
                    .commit_failures
                    .fetch_add(1, Ordering::Relaxed);
                if now_ms >= self.commit_error_logged_ms + COMMIT_ERROR_LOG_INTERVAL_MS {
                    self.commit_error_logged_ms = now_ms;
                    tracing::error!(shard = self.shard, partition = p, error = %e, "store commit failed; retrying each turn (logged once per {COMMIT_ERROR_LOG_INTERVAL_MS} ms)");
                }
                false
            }
        }
    }

    /// Another shard's partition this shard waits for (and did not append to): the owner wakes
    /// this shard once its durable mark moves past what it waits for.
    pub(super) fn watch_partition(&mut self, p: usize) {
        let Some(t) = self.awaiting[p] else {
            return;
        };
        let broker = &self.shared.broker;
        if !broker.is_durable(p, t) {
            broker.note_durable_interest(p, self.shard);
            // Read again after the interest is visible (see `note_durable_interest`).
            if !broker.is_durable(p, t) {
                return;
            }
        }
        self.awaiting[p] = None;
    }
}

/// Whether a failed commit can never succeed (the log is poisoned or the disk failed), as
/// opposed to one that is retried (a full batch, a commit that did not complete in time).
fn is_fatal(e: &crate::store::StoreError) -> bool {
    use crate::store::StoreError as E;
    matches!(
        e,
        E::Poisoned { .. } | E::Io { .. } | E::Corrupt { .. } | E::Ring(_)
    )
}
