//! Admin acknowledgements (MS-MQQB 3.1.7.15): the ACK or NACK a sender asked for, built and
//! queued for its admin queue (stored straight into it when that queue is ours), and the
//! negative receive acks owed when a queue is purged or deleted (with the FinalAcks owed then:
//! `final_acks`).

use crate::store::{Cursor, QueueId, QueueStore};
use crate::wire::headers::MessageClass;
use crate::wire::user::UserMessage;

use crate::qm::handoff::StoreKind;

use super::{bump, encode_message, message_meta, unix_now, Broker, Verdict, RECEIVE_BATCH_MAX};

/// A write for a queue whose partition the writer may not run (a dead letter, an admin
/// acknowledgement, any system copy): stored by [`Broker::store_record`] under the
/// partition's owner, or sent there as `qm::handoff::Mail::Store` by a shard that does not
/// run it (`MsmqApp::store_record`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemRecord {
    pub kind: StoreKind,
    pub queue: u32,
    /// The partition holding `queue` (its shard stores the record).
    pub partition: usize,
    pub frame: Vec<u8>,
}

/// What [`Broker::store_record`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordStored {
    /// Stored at that ticket of that partition (durable with the partition's next commit).
    At(usize, crate::store::Ticket),
    /// A local delivery turned into a dead letter for a partition the caller does not run:
    /// store this record there instead.
    Forward(SystemRecord),
    /// Not stored (logged and counted).
    Failed,
}

impl<S: QueueStore> Broker<S> {
    /// Copies of the messages of queue `id` whose senders asked for negative receive acks (NR)
    /// or a FinalAck: purging or deleting the queue owes them a NACK (MS-MQDMPR, MS-MQQB
    /// 3.1.7.2, 3.1.7.2.2).
    /// Reads the partitions `parts` (those holding the queue).
    pub(super) fn negative_receive_frames(&self, id: u32, parts: &[usize]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for &i in parts {
            let p = self.partition(i);
            let mut c = Cursor::new(QueueId(id));
            while let Some(m) = p.store.cursor_next(&mut c) {
                if out.len() >= RECEIVE_BATCH_MAX {
                    tracing::warn!(
                        "more than {RECEIVE_BATCH_MAX} NACKs owed; the rest are not sent"
                    );
                    return out;
                }
                let user_queue = (crate::qm::catalog::FIRST_USER_QUEUE_ID
                    ..super::JOURNAL_QUEUE_BIT)
                    .contains(&id);
                if UserMessage::parse(m.bytes).is_ok_and(|u| {
                    u.properties.flags.negative_receive()
                        || (user_queue && super::wants_final_ack(&u))
                }) {
                    out.push(m.bytes.to_vec());
                }
            }
        }
        out
    }

    /// The negative receive acknowledgements (class `class`) owed for messages that left
    /// their queue unread: the admin NACK when asked for (NR), the FinalAck when asked for.
    pub fn send_receive_acks(&self, frames: &[Vec<u8>], class: MessageClass) {
        for f in frames {
            if let Ok(m) = UserMessage::parse(f) {
                self.send_receive_nack(&m, class);
            }
        }
    }

    /// [`Broker::send_receive_acks`] for one message.
    pub fn send_receive_nack(&self, m: &UserMessage<'_>, class: MessageClass) {
        if m.properties.flags.negative_receive() {
            self.send_admin_ack(m, class);
        }
        self.send_final_ack_if_asked(m, class);
    }

    /// [`Broker::send_receive_nack`] for a message that left store queue `queue`: one that
    /// left a dead-letter queue, a journal, an outgoing or the awaiting queue owes no FinalAck
    /// (its sender had one already, or it is ours).
    pub fn send_receive_nack_at(&self, queue: u32, m: &UserMessage<'_>, class: MessageClass) {
        if (crate::qm::catalog::FIRST_USER_QUEUE_ID..super::JOURNAL_QUEUE_BIT).contains(&queue) {
            self.send_receive_nack(m, class);
        } else if m.properties.flags.negative_receive() {
            self.send_admin_ack(m, class);
        }
    }

    /// An application received `m`: the positive receive acknowledgement when asked for
    /// (PR), and the ACK_RECEIVE FinalAck when asked for (MS-MQQB 3.1.7.2.2).
    pub fn send_received_acks(&self, m: &UserMessage<'_>) {
        if m.properties.flags.positive_receive() {
            self.send_admin_ack(m, MessageClass::ACK_RECEIVE);
        }
        self.send_final_ack_if_asked(m, MessageClass::ACK_RECEIVE);
    }

    /// Does an application's receive of `m` owe an acknowledgement?
    pub fn owes_received_acks(m: &UserMessage<'_>) -> bool {
        m.properties.flags.positive_receive() || super::wants_final_ack(m)
    }

    /// Builds the admin acknowledgement (or NACK) of `msg` (MS-MQQB 3.1.7.15) and queues it
    /// for the sender's admin queue, storing it under that queue's partition lock (the API's
    /// threads, AMQP and the request desk; a shard of `lior serve` uses
    /// [`Broker::admin_ack_record`] and sends the record to the partition's shard instead).
    pub fn send_admin_ack(&self, msg: &UserMessage<'_>, class: MessageClass) {
        let Some(rec) = self.admin_ack_record(msg, class, self.next_ordinal()) else {
            return;
        };
        let now_unix = unix_now();
        let now_ms = crate::engine::net::now_ms();
        let mut rec = rec;
        // A local admin queue may send it on to a dead-letter queue: one partition at a time.
        loop {
            match self.store_record(&rec, now_unix, now_ms, &super::delivery::everywhere) {
                RecordStored::At(p, _) => {
                    if let Err(e) = self.partition(p).commit(None) {
                        tracing::error!(error = %e, "commit after an admin acknowledgement failed");
                    }
                    // The partition's shard (maybe another) looks at what waits for it.
                    self.wake(p % self.partitions.len());
                    return;
                }
                RecordStored::Forward(next) => rec = next,
                RecordStored::Failed => return,
            }
        }
    }

    /// The admin acknowledgement (or NACK) of `msg` (MS-MQQB 3.1.7.15), built with
    /// MessageIdOrdinal `ordinal`, as a record for the queue it goes to: the outgoing queue of
    /// the sender's direct admin queue, or that admin queue itself when it is on this machine.
    /// None when none is owed or it cannot be routed (logged and counted). Store it with
    /// `MsmqApp::store_record` on a shard (mail to the queue's owner when another shard runs
    /// it), or [`Broker::store_record`].
    pub fn admin_ack_record(
        &self,
        msg: &UserMessage<'_>,
        class: MessageClass,
        ordinal: u32,
    ) -> Option<SystemRecord> {
        let u = &msg.user;
        // Windows 7+ does not acknowledge acknowledgements (MS-MQQB <62>).
        if msg.properties.message_class != MessageClass::NORMAL {
            return None;
        }
        let insecure = matches!(
            class,
            MessageClass::NACK_BAD_DST_Q
                | MessageClass::NACK_BAD_ENCRYPTION
                | MessageClass::NACK_BAD_SIGNATURE
                | MessageClass::NACK_ACCESS_DENIED
                | MessageClass::NACK_UNSUPPORTED_CRYPTO_PROVIDER
        );
        if insecure && !self.config.parameters.security.PermitInsecureNacks {
            tracing::info!(nack = ?class, "NACK not sent: PermitInsecureNacks is off (SendInsecureNacks)");
            bump(&self.counters.nacks_suppressed);
            return None;
        }
        let admin = match crate::wire::format_name::FormatName::from_queue_ref(
            &u.admin,
            u.source_queue_manager,
            u.queue_manager_address,
            None,
        ) {
            Ok(f) => f,
            Err(_) => {
                bump(&self.counters.acks_unroutable);
                return None;
            }
        };
        let Some(dest) = admin.as_direct() else {
            tracing::info!(admin = %admin, "admin queue needs a directory service; ack not sent");
            bump(&self.counters.acks_unroutable);
            return None;
        };
        let wire = dest.wire_bytes();
        let body: &[u8] =
            if class.is_nack() && !msg.security.is_some_and(|s| s.flags.body_encrypted()) {
                msg.body()
            } else {
                &[]
            };
        let mut m = UserMessage::new(
            self.guid(),
            ordinal,
            crate::wire::user::QueueRef::Direct(crate::wire::Utf16(&wire)),
            msg.properties.label,
            body,
        )
        .with_recoverable(u.flags.recoverable())
        .with_sent_time(unix_now());
        if let crate::wire::user::QueueRef::Direct(_) = u.destination {
            m = m.with_response_queue(u.destination);
        }
        m.properties.message_class = class;
        let mut corr = [0u8; 20];
        corr[..16].copy_from_slice(&u.source_queue_manager.0);
        corr[16..].copy_from_slice(&u.message_id.to_le_bytes());
        m.properties.correlation_id = corr;
        m.properties.body_type = msg.properties.body_type;
        m.sync();
        let frame = match encode_message(&m) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot build an admin acknowledgement");
                return None;
            }
        };
        if self.identity.is_local(&dest.address) {
            // Stored in the admin queue's owning partition, like every message of that queue
            // (or in the dead-letter queue's, should it route nowhere).
            let routed = self.route_incoming(&mut super::RouteCache::default(), &m);
            let partition = self.route_partition(&routed, &m)?;
            let queue = match &routed {
                super::Routed::Queue(q) => q.id,
                _ => crate::qm::catalog::DEADLETTER_ID,
            };
            tracing::info!(class = class.name(), to = %admin, "admin acknowledgement for a local queue");
            return Some(SystemRecord {
                kind: StoreKind::Local,
                queue,
                partition,
                frame,
            });
        }
        match self.outgoing_queue_for(dest) {
            Ok(def) => {
                tracing::info!(class = class.name(), to = %admin, via = %def.key, "admin acknowledgement queued");
                Some(SystemRecord {
                    kind: StoreKind::Outgoing,
                    queue: def.id,
                    partition: def.shard % self.partitions.len(),
                    frame,
                })
            }
            Err(e) => {
                if crate::ratelog::QUOTA.allow() {
                    tracing::error!(error = %e, "cannot queue an admin acknowledgement");
                }
                None
            }
        }
    }

    /// Stores `rec` in its queue, in partition `rec.partition` (under its lock: on a shard,
    /// only a partition the shard runs; `MsmqApp::store_record` mails the others to their
    /// shard). Does not commit: the caller's turn does (or [`Broker::send_admin_ack`]).
    /// `here` says which partitions the caller runs, for a local delivery that dead-letters.
    pub fn store_record(
        &self,
        rec: &SystemRecord,
        now_unix: u32,
        now_ms: u64,
        here: super::delivery::Here<'_>,
    ) -> RecordStored {
        let Ok(msg) = UserMessage::parse(&rec.frame) else {
            tracing::error!(
                queue = rec.queue,
                "a record for another queue does not parse; dropped"
            );
            return RecordStored::Failed;
        };
        match rec.kind {
            StoreKind::DeadLetter => {
                let stored = {
                    let mut part = self.partition(rec.partition);
                    self.store(&mut part, rec.queue, &rec.frame, &msg)
                };
                match stored {
                    // Counted where it was decided (`dead_letter`; expiry counts its own).
                    Ok(t) => RecordStored::At(rec.partition, t),
                    Err(e) => {
                        bump(&self.counters.refused_store_errors);
                        tracing::error!(error = %e, queue = rec.queue, "cannot store a dead letter");
                        RecordStored::Failed
                    }
                }
            }
            StoreKind::Outgoing => {
                match self.append_outgoing(
                    rec.queue,
                    rec.partition,
                    &rec.frame,
                    &message_meta(&msg),
                ) {
                    Ok(t) => {
                        bump(&self.counters.admin_acks_queued);
                        RecordStored::At(rec.partition, t)
                    }
                    Err(e) => {
                        if crate::ratelog::QUOTA.allow() {
                            tracing::error!(error = %e, "cannot queue an admin acknowledgement");
                        }
                        RecordStored::Failed
                    }
                }
            }
            StoreKind::Local => {
                let routed = self.route_incoming(&mut super::RouteCache::default(), &msg);
                let d = self.deliver_local_here(routed, &rec.frame, &msg, now_unix, now_ms, here);
                match d.verdict {
                    Verdict::Stored { ticket, .. } | Verdict::DeadLettered { ticket, .. } => {
                        bump(&self.counters.admin_acks_queued);
                        RecordStored::At(d.partition, ticket)
                    }
                    Verdict::Forwarded { queue, .. } => match d.forward {
                        Some(frame) => RecordStored::Forward(SystemRecord {
                            kind: StoreKind::DeadLetter,
                            queue,
                            partition: d.partition,
                            frame,
                        }),
                        None => RecordStored::Failed,
                    },
                    v => {
                        tracing::error!(verdict = ?v, "cannot store a local admin acknowledgement");
                        RecordStored::Failed
                    }
                }
            }
        }
    }
}
