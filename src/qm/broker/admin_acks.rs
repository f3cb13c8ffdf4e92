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

/// An acknowledgement or copy an operation on a queue owes once what it did is durable: an
/// admin acknowledgement, a FinalAck, a machine-journal copy, an SRMP stream receipt. Decided
/// by the queue's owner ([`Broker::received_acks_owed`], [`Broker::receive_nacks_owed`]),
/// built by [`Broker::owed_record`] (ONE builder per kind: [`Broker::admin_ack_record`],
/// [`Broker::final_ack_record`], [`Broker::machine_journal_record`],
/// [`Broker::stream_receipt_record`]) and stored by the shard's turn through
/// `MsmqApp::store_record` (mail to the shard running the queue it goes to), or at once by
/// [`Broker::send_owed`] on a thread that runs no shard (tests, tools, a stopping shard).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owed {
    /// The admin acknowledgement (or NACK) of class `class` for message `frame`.
    AdminAck { frame: Vec<u8>, class: MessageClass },
    /// The FinalAck of class `class` for transactional message `frame`, which left a queue of
    /// partition `partition` (whose owner knows where its sender's FinalAcks go), or to
    /// `peer` when known.
    FinalAck {
        frame: Vec<u8>,
        class: MessageClass,
        partition: usize,
        peer: Option<std::net::IpAddr>,
    },
    /// A copy of `frame` for the machine journal (source journaling).
    MachineJournal { frame: Vec<u8> },
    /// An SRMP stream receipt (MC-MQSRM 3.1.5.1.2) for stream `seq_id` of `stream_qm` up to
    /// `last`, to the sender's `sendReceiptsTo` address `to`.
    StreamReceipt {
        to: String,
        stream_qm: crate::wire::Guid,
        seq_id: u64,
        last: u32,
    },
}

impl Owed {
    /// Whether building it takes a MessageIdOrdinal.
    pub fn needs_ordinal(&self) -> bool {
        !matches!(self, Owed::MachineJournal { .. })
    }
}

impl<S: QueueStore> Broker<S> {
    /// Copies of the messages of queue `id` whose senders asked for negative receive acks (NR)
    /// or a FinalAck: purging or deleting the queue owes them a NACK (MS-MQDMPR, MS-MQQB
    /// 3.1.7.2, 3.1.7.2.2).
    /// Reads the partitions `parts` (those holding the queue).
    pub(super) fn negative_receive_frames(
        &self,
        id: u32,
        parts: &[usize],
    ) -> Vec<(usize, Vec<u8>)> {
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
                    out.push((i, m.bytes.to_vec()));
                }
            }
        }
        out
    }

    /// The negative receive acknowledgements (class `class`) owed for messages that left
    /// store queue `queue` of their partition unread (`frames`: partition, frame): the admin
    /// NACK when asked for (NR), the FinalAck when asked for. One that left a dead-letter
    /// queue, a journal, an outgoing or the awaiting queue owes no FinalAck (its sender had
    /// one already, or it is ours).
    pub fn receive_nacks_owed(
        &self,
        queue: u32,
        frames: &[(usize, Vec<u8>)],
        class: MessageClass,
        out: &mut Vec<Owed>,
    ) {
        let user_queue =
            (crate::qm::catalog::FIRST_USER_QUEUE_ID..super::JOURNAL_QUEUE_BIT).contains(&queue);
        for (p, f) in frames {
            let Ok(m) = UserMessage::parse(f) else {
                continue;
            };
            if m.properties.flags.negative_receive() {
                out.push(Owed::AdminAck {
                    frame: f.clone(),
                    class,
                });
            }
            if user_queue && super::wants_final_ack(&m) {
                out.push(Owed::FinalAck {
                    frame: f.clone(),
                    class,
                    partition: *p,
                    peer: None,
                });
            }
        }
    }

    /// What an application's receive of `frame` from queue `queue_name` (partition
    /// `partition`) owes: the positive receive acknowledgement when asked for (PR), and the
    /// ACK_RECEIVE FinalAck when asked for (MS-MQQB 3.1.7.2.2). A copy read from a journal
    /// owes nothing (acknowledged when it was received); a dead letter read back owes no
    /// FinalAck (its sender had its negative one).
    pub fn received_acks_owed(
        &self,
        queue_name: &str,
        partition: usize,
        frame: &[u8],
        out: &mut Vec<Owed>,
    ) {
        if queue_name.ends_with(super::JOURNAL_SUFFIX) {
            return;
        }
        let Ok(m) = UserMessage::parse(frame) else {
            return;
        };
        if m.properties.flags.positive_receive() {
            out.push(Owed::AdminAck {
                frame: frame.to_vec(),
                class: MessageClass::ACK_RECEIVE,
            });
        }
        if !queue_name.starts_with("system$;") && super::wants_final_ack(&m) {
            out.push(Owed::FinalAck {
                frame: frame.to_vec(),
                class: MessageClass::ACK_RECEIVE,
                partition,
                peer: None,
            });
        }
    }

    /// Builds what `o` owes as a record for the queue it goes to (`ordinal` for those that
    /// are messages of this queue manager: [`Owed::needs_ordinal`]). None when nothing can
    /// be sent (logged and counted by the builder).
    pub fn owed_record(&self, o: &Owed, ordinal: u32) -> Option<SystemRecord> {
        match o {
            Owed::AdminAck { frame, class } => {
                let m = UserMessage::parse(frame).ok()?;
                self.admin_ack_record(&m, *class, ordinal)
            }
            Owed::FinalAck {
                frame,
                class,
                partition,
                peer,
            } => {
                let m = UserMessage::parse(frame).ok()?;
                self.final_ack_record(&m, *class, *partition, *peer, ordinal)
            }
            Owed::MachineJournal { frame } => Some(self.machine_journal_record(frame)),
            Owed::StreamReceipt {
                to,
                stream_qm,
                seq_id,
                last,
            } => self.stream_receipt_record(to, *stream_qm, *seq_id, *last, ordinal),
        }
    }

    /// Builds and stores `owed` at once, committing each partition it wrote to, from a thread
    /// that runs no shard (tests and tools driving the broker from one thread, a stopping
    /// shard's last answers, and the paths not converted yet: AMQP, fan-out). A shard of `lior
    /// serve` stores them with `MsmqApp::store_record` instead (by mail to the owner).
    pub fn send_owed(&self, owed: Vec<Owed>) {
        for o in owed {
            let ordinal = if o.needs_ordinal() {
                self.next_ordinal()
            } else {
                0
            };
            if let Some(rec) = self.owed_record(&o, ordinal) {
                self.store_record_now(rec);
            }
        }
    }

    /// Stores `rec` and commits, under the partitions' locks (see [`Broker::send_owed`]).
    pub(super) fn store_record_now(&self, rec: SystemRecord) {
        let now_unix = unix_now();
        let now_ms = crate::engine::net::now_ms();
        let mut rec = rec;
        // A local admin queue may send it on to a dead-letter queue: one partition at a time.
        loop {
            match self.store_record(&rec, now_unix, now_ms, &super::delivery::everywhere) {
                RecordStored::At(p, _) => {
                    if let Err(e) = self.partition(p).commit(None) {
                        tracing::error!(error = %e, "commit after an acknowledgement or copy failed");
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

    /// Does an application's receive of `m` owe an acknowledgement?
    pub fn owes_received_acks(m: &UserMessage<'_>) -> bool {
        m.properties.flags.positive_receive() || super::wants_final_ack(m)
    }

    /// The SRMP stream receipt (MC-MQSRM 3.1.5.1.2) for stream `seq_id` of `stream_qm` up to
    /// `last`, built with MessageIdOrdinal `ordinal`, as a record for the outgoing HTTP queue
    /// to `to` (the sender's `sendReceiptsTo`). None when it cannot be built or routed (logged).
    pub fn stream_receipt_record(
        &self,
        to: &str,
        stream_qm: crate::wire::Guid,
        seq_id: u64,
        last: u32,
        ordinal: u32,
    ) -> Option<SystemRecord> {
        let built = crate::qm::srmp_out::stream_receipt_frame(
            self.guid(),
            ordinal,
            to,
            stream_qm,
            seq_id,
            last,
        )
        .and_then(|(dest, frame)| {
            let def = self.outgoing_queue_for(&dest).map_err(|e| e.to_string())?;
            Ok(SystemRecord {
                kind: StoreKind::StreamReceipt,
                queue: def.id,
                partition: def.shard % self.partitions.len(),
                frame,
            })
        });
        match built {
            Ok(r) => Some(r),
            Err(e) => {
                if crate::ratelog::SRMP.allow() {
                    tracing::warn!(to, error = %e, "cannot queue a stream receipt; the sender will resend and ask again");
                }
                None
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
    /// shard). Does not commit: the caller's turn does (or [`Broker::send_owed`]).
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
            StoreKind::Outgoing | StoreKind::FinalAck | StoreKind::StreamReceipt => {
                let counter = match rec.kind {
                    StoreKind::FinalAck => &self.counters.final_acks_sent,
                    StoreKind::StreamReceipt => &self.counters.srmp_stream_receipts_queued,
                    _ => &self.counters.admin_acks_queued,
                };
                match self.append_outgoing(
                    rec.queue,
                    rec.partition,
                    &rec.frame,
                    &message_meta(&msg),
                ) {
                    Ok(t) => {
                        bump(counter);
                        RecordStored::At(rec.partition, t)
                    }
                    Err(e) => {
                        if crate::ratelog::QUOTA.allow() {
                            tracing::error!(error = %e, kind = ?rec.kind, "cannot queue an acknowledgement in its outgoing queue");
                        }
                        RecordStored::Failed
                    }
                }
            }
            StoreKind::MachineJournal => {
                let mut part = self.partition(rec.partition);
                match self.append_machine_journal(&mut part, &rec.frame, &message_meta(&msg)) {
                    Some(t) => RecordStored::At(rec.partition, t),
                    None => RecordStored::Failed,
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
