//! Admin acknowledgements (MS-MQQB 3.1.7.15): the ACK or NACK a sender asked for, built and
//! queued for its admin queue (stored straight into it when that queue is ours), and the
//! negative receive acks owed when a queue is purged or deleted (with the FinalAcks owed then:
//! `final_acks`).

use crate::store::{Cursor, QueueId, QueueStore};
use crate::wire::headers::MessageClass;
use crate::wire::user::UserMessage;

use super::{bump, encode_message, message_meta, unix_now, Broker, Verdict, RECEIVE_BATCH_MAX};

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
    /// for the sender's admin queue. Only direct admin queues can be reached without a
    /// directory service; others are logged and counted.
    pub fn send_admin_ack(&self, msg: &UserMessage<'_>, class: MessageClass) {
        let u = &msg.user;
        // Windows 7+ does not acknowledge acknowledgements (MS-MQQB <62>).
        if msg.properties.message_class != MessageClass::NORMAL {
            return;
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
            return;
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
                return;
            }
        };
        let Some(dest) = admin.as_direct() else {
            tracing::info!(admin = %admin, "admin queue needs a directory service; ack not sent");
            bump(&self.counters.acks_unroutable);
            return;
        };
        let wire = dest.wire_bytes();
        let ordinal = self.next_ordinal();
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
                return;
            }
        };
        if self.identity.is_local(&dest.address) {
            self.deliver_local_ack(&frame, class, &admin.to_string());
            return;
        }
        let meta = message_meta(&m);
        // Nobody waits for an acknowledgement's durability (and a shard must not wait for the
        // disk): the commit is started, the partition's owner reaps it.
        match self.enqueue_outgoing_nowait(dest, &frame, &meta) {
            Ok((def, _, _)) => {
                bump(&self.counters.admin_acks_queued);
                tracing::info!(class = class.name(), to = %admin, via = %def.key, "admin acknowledgement queued");
            }
            Err(e) => {
                if crate::ratelog::QUOTA.allow() {
                    tracing::error!(error = %e, "cannot queue an admin acknowledgement");
                }
            }
        }
    }

    /// Stores an admin acknowledgement whose admin queue is on this machine straight into it
    /// (never over the network to ourselves). Call with no partition lock held.
    fn deliver_local_ack(&self, frame: &[u8], class: MessageClass, to: &str) {
        let Ok(msg) = UserMessage::parse(frame) else {
            tracing::error!("an admin acknowledgement we built does not parse");
            return;
        };
        // Stored in the admin queue's owning partition, like every message of that queue.
        let d = self.deliver(frame, &msg, unix_now(), crate::engine::net::now_ms());
        match d.verdict {
            Verdict::Stored { ticket, .. } | Verdict::DeadLettered { ticket, .. } => {
                // Durable with this commit or the shard's next one; nobody waits for it.
                let _ = ticket;
                if let Err(e) = self.partition(d.partition).commit(None) {
                    tracing::error!(error = %e, "commit after a local admin acknowledgement failed");
                }
                // The partition's shard (maybe another) looks at the receives it keeps waiting.
                self.wake(d.partition);
                bump(&self.counters.admin_acks_queued);
                tracing::info!(
                    class = class.name(),
                    to,
                    "admin acknowledgement stored locally"
                );
            }
            v => tracing::error!(verdict = ?v, to, "cannot store a local admin acknowledgement"),
        }
    }
}
