//! The local API's operations, as the HTTP API and the CLI call them: queue administration
//! (create, delete, purge, quotas, list), peek, receive (each removal durable before the
//! message is returned), and send from a local application (into our own queue, or into the
//! outgoing queue of a remote machine).

use std::sync::atomic::Ordering;

use crate::qm::catalog::{QueueDef, QueueKind};
use crate::qm::routing::{route, Route};
use crate::store::{Class, Cursor, QueueId, QueueQuota, QueueStore, Select, Ticket};
use crate::wire::base::INFINITE;
use crate::wire::headers::{MessageClass, TransactionHeader, TxFlags};
use crate::wire::user::UserMessage;

use super::{encode_message, message_meta, unix_now, ApiError, Broker, Verdict, RECEIVE_BATCH_MAX};

/// A message handed out by receive or peek, copied out of the store.
#[derive(Clone, Debug)]
pub struct Received {
    pub queue: String,
    pub partition: usize,
    pub lookup_id: u64,
    pub priority: u8,
    pub class: Class,
    pub bytes: Vec<u8>,
}

impl Received {
    fn copy(queue: &str, partition: usize, m: &crate::store::MessageRef<'_>) -> Received {
        Received {
            queue: queue.to_string(),
            partition,
            lookup_id: m.lookup_id.0,
            priority: m.meta.priority,
            class: m.meta.class,
            bytes: m.bytes.to_vec(),
        }
    }
}

/// Per-queue counts for the API.
#[derive(Clone, Debug, serde::Serialize)]
pub struct QueueInfo {
    pub name: String,
    pub id: u32,
    pub kind: QueueKind,
    pub transactional: bool,
    pub messages: u64,
    pub bytes: u64,
}

/// What the local API's send did with a message.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SendOutcome {
    /// `local` (stored in one of our queues) or `outgoing` (waiting for the remote machine).
    pub placed: &'static str,
    /// The local queue, or the outgoing queue's destination.
    pub queue: String,
    pub message_id: String,
    /// Why the outgoing queue keeps the message without sending it (hardened mode, a transport
    /// lior does not send, paused), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

/// What a local application sends.
#[derive(Clone, Debug, Default)]
pub struct SendRequest<'a> {
    pub label: &'a str,
    pub body: &'a [u8],
    pub priority: u8,
    pub recoverable: bool,
    /// Seconds; `None` = 4 days (the Windows default).
    pub time_to_reach_queue: Option<u32>,
    pub time_to_be_received: Option<u32>,
    pub app_specific: u32,
    /// Send inside a (single-message) transaction: exactly once, in order. The destination
    /// must be a transactional queue.
    pub transactional: bool,
    /// One copy of a send to a multiple-element or `DL=` name: the MultiQueueFormatHeader
    /// lists it carries (`qm/fanout.rs`).
    pub mqf: Option<&'a crate::qm::fanout::MqfLists>,
    /// Positive source journaling (UserHeader JP): a transactional message's copy goes to the
    /// machine journal on its positive FinalAck.
    pub journal: bool,
    /// Negative source journaling (UserHeader JN): a transactional message goes to the
    /// transactional dead-letter queue on a negative FinalAck.
    pub dead_letter: bool,
}

/// Default TimeToReachQueue: 4 days (MS-MQDMPR 3.1.1.12).
pub const TIME_TO_REACH_QUEUE_DEFAULT_S: u32 = 345_600;

/// What an operation did without waiting for the disk: its result, and the `(partition,
/// ticket)` pairs that must be durable before the result is handed out.
#[derive(Debug)]
pub struct Staged<T> {
    pub value: T,
    pub waits: Vec<(usize, Ticket)>,
}

/// Messages and bytes per queue id (catalog queues and outgoing queues apart): what
/// `GET /v1/queues`, `GET /v1/outgoing` and `/metrics` show, gathered from the shards.
#[derive(Clone, Debug, Default)]
pub struct QueueLens {
    pub queues: std::collections::HashMap<u32, (u64, u64)>,
    pub outgoing: std::collections::HashMap<u32, (u64, u64)>,
    /// Incoming transactional sequence states kept.
    pub tx_sequences: u64,
    /// (outown) Each outgoing queue's state as the shard sending it last published it.
    pub outgoing_status: std::collections::HashMap<u32, crate::qm::outgoing_queue::OutStatus>,
}

impl QueueLens {
    /// Adds another shard's counts.
    pub fn add(&mut self, other: QueueLens) {
        for (mine, theirs) in [
            (&mut self.queues, other.queues),
            (&mut self.outgoing, other.outgoing),
        ] {
            for (id, (m, b)) in theirs {
                let e = mine.entry(id).or_insert((0, 0));
                e.0 += m;
                e.1 += b;
            }
        }
        self.tx_sequences += other.tx_sequences;
        self.outgoing_status.extend(other.outgoing_status);
    }
}

/// Whether a message with `meta` may move into queue `dst` (the same transaction type).
pub fn check_move(
    meta: &crate::store::MessageMeta,
    dst: &QueueDef,
    lookup: u64,
) -> Result<(), ApiError> {
    let transactional = meta.class == Class::Transactional;
    if transactional != dst.transactional {
        return Err(ApiError::Send(format!(
            "message {lookup} is {}transactional and queue {} is {}: not moved",
            if transactional { "" } else { "not " },
            dst.name,
            if dst.transactional {
                "transactional"
            } else {
                "not transactional"
            }
        )));
    }
    Ok(())
}

impl<S: QueueStore> Broker<S> {
    pub fn create_queue(&self, name: &str, transactional: bool) -> Result<QueueDef, ApiError> {
        let mut cat = self.catalog.write().unwrap_or_else(|p| p.into_inner());
        let q = cat.create(name, transactional)?;
        self.catalog_generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!(queue = %q.name, id = q.id, transactional, "queue created");
        Ok(q)
    }

    /// Deletes a queue and, durably, its messages (for tests and tools that drive the broker
    /// from one thread; `lior serve` deletes the catalog entry with [`Broker::delete_queue_entry`]
    /// and asks the owning shard to empty it).
    pub fn delete_queue(&self, name: &str) -> Result<(), ApiError> {
        let q = self.delete_queue_entry(name)?;
        let staged = self.empty_queue_staged(&q, true)?;
        self.wait_durable(&staged.waits)?;
        self.send_owed(staged.value);
        Ok(())
    }

    /// Removes queue `name` from the catalog (no new message is routed to it from now on: the
    /// catalog generation moves, so every shard's route cache forgets it). Its messages stay
    /// until its owning shard empties it ([`Broker::empty_queue_staged`] with `delete`).
    pub fn delete_queue_entry(&self, name: &str) -> Result<QueueDef, ApiError> {
        let mut cat = self.catalog.write().unwrap_or_else(|p| p.into_inner());
        let q = cat.delete(name)?;
        self.catalog_generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!(queue = %q.name, "queue deleted");
        Ok(q)
    }

    /// Stages the removal of every message of queue `q` in the partitions holding it (purge, or
    /// with `delete` forgets its quota too); returns the negative receive acknowledgements
    /// owed (NACK_Q_PURGED or NACK_Q_DELETED, admin NACKs and FinalAcks, to store once the
    /// removal is durable) and the tickets to wait for. Runs on the queue's owning shard.
    pub fn empty_queue_staged(
        &self,
        q: &QueueDef,
        delete: bool,
    ) -> Result<Staged<Vec<super::Owed>>, ApiError> {
        let parts = self.read_partitions(q);
        let class = if delete {
            MessageClass::NACK_Q_DELETED
        } else {
            MessageClass::NACK_Q_PURGED
        };
        // A journal's copies were received already: emptying it owes nobody anything.
        let mut nacks = Vec::new();
        if !q.name.ends_with(super::JOURNAL_SUFFIX) {
            let frames = self.negative_receive_frames(q.id, &parts);
            self.receive_nacks_owed(q.id, &frames, class, &mut nacks);
        }
        let mut waits = Vec::new();
        for i in parts {
            let mut p = self.partition(i);
            let t = if delete {
                // Its journal goes with it (a later queue never inherits its copies).
                if q.id < super::JOURNAL_QUEUE_BIT {
                    let j = p.store.delete_queue(QueueId(super::journal_id(q.id)))?;
                    waits.push((i, j));
                }
                p.store.delete_queue(QueueId(q.id))?
            } else {
                p.store.purge(QueueId(q.id))?
            };
            waits.push((i, t));
        }
        Ok(Staged {
            value: nacks,
            waits,
        })
    }

    /// Blocks until each `(partition, ticket)` is durable (tests and tools that drive the
    /// broker from one thread, and a shard's last act before it stops).
    pub fn wait_durable(&self, waits: &[(usize, Ticket)]) -> Result<(), ApiError> {
        for &(p, t) in waits {
            if !self.is_durable(p, t) {
                self.partition(p).commit(Some(t))?;
            }
        }
        Ok(())
    }

    /// Moves one message (by its lookup id) from queue `from` to queue `to`, both on this
    /// machine (a dead letter back to where it belongs, say). The copy is durable in `to`
    /// before the original leaves `from`: a crash in between leaves a copy too many, never
    /// none. A transactional message moves only into a transactional queue, and a
    /// non-transactional one only into a non-transactional queue. From one thread; `lior
    /// serve`'s API asks the owning shards for the same three steps
    /// ([`Broker::peek_message`], [`Broker::store_copy`], [`Broker::remove_message`]).
    pub fn move_message(&self, from: &str, lookup: u64, to: &str) -> Result<(), ApiError> {
        let (src, dst) = self.move_queues(from, to)?;
        let (bytes, meta) = self.peek_message(&src, lookup)?;
        check_move(&meta, &dst, lookup)?;
        let copy = self.store_copy(&dst, &bytes, &meta)?;
        self.wait_durable(&copy)?;
        let removed = self.remove_message(&src, lookup)?;
        self.wait_durable(&removed)?;
        Ok(())
    }

    /// The two queues of a move, checked (both exist, not the same queue).
    pub fn move_queues(&self, from: &str, to: &str) -> Result<(QueueDef, QueueDef), ApiError> {
        let src = self.lookup(from)?;
        let dst = self.lookup(to)?;
        if src.id == dst.id {
            return Err(ApiError::Send(format!(
                "{from}: a message moves to another queue"
            )));
        }
        Ok((src, dst))
    }

    /// A copy of message `lookup` of queue `q` (first step of a move; on `q`'s owner).
    pub fn peek_message(
        &self,
        q: &QueueDef,
        lookup: u64,
    ) -> Result<(Vec<u8>, crate::store::MessageMeta), ApiError> {
        let p = self.partition(self.owner(q));
        let m = p
            .store
            .peek(
                QueueId(q.id),
                Select::Lookup(crate::store::LookupId(lookup)),
            )
            .ok_or_else(|| {
                ApiError::NoSuchMessage(format!("{} has no message {lookup}", q.name))
            })?;
        Ok((m.bytes.to_vec(), m.meta))
    }

    /// Appends a copy of a moved message to queue `q` (on `q`'s owner); returns what to wait
    /// for before the original may go.
    pub fn store_copy(
        &self,
        q: &QueueDef,
        bytes: &[u8],
        meta: &crate::store::MessageMeta,
    ) -> Result<Vec<(usize, Ticket)>, ApiError> {
        let i = self.owner(q);
        let mut p = self.partition(i);
        let a = p.store.append(QueueId(q.id), meta, bytes)?;
        Ok(vec![(i, a.ticket)])
    }

    /// Stages the removal of message `lookup` from queue `q` (last step of a move, on `q`'s
    /// owner); nothing when another receiver took it meanwhile.
    pub fn remove_message(
        &self,
        q: &QueueDef,
        lookup: u64,
    ) -> Result<Vec<(usize, Ticket)>, ApiError> {
        let i = self.owner(q);
        let mut p = self.partition(i);
        let taken = p.store.receive(
            QueueId(q.id),
            Select::Lookup(crate::store::LookupId(lookup)),
        )?;
        Ok(match taken {
            Some(r) => {
                let t = r.ticket;
                p.release_when_durable(r);
                vec![(i, t)]
            }
            None => Vec::new(),
        })
    }

    pub fn purge_queue(&self, name: &str) -> Result<(), ApiError> {
        let q = self.lookup(name)?;
        let staged = self.empty_queue_staged(&q, false)?;
        self.wait_durable(&staged.waits)?;
        self.send_owed(staged.value);
        Ok(())
    }

    pub fn lookup(&self, name: &str) -> Result<QueueDef, ApiError> {
        if let Some(base) = super::journal_base(name) {
            return self.journal_def(base);
        }
        self.catalog()
            .lookup(name)
            .cloned()
            .ok_or_else(|| ApiError::NoSuchQueue(name.to_string()))
    }

    pub fn set_queue_quota(&self, name: &str, quota: QueueQuota) -> Result<(), ApiError> {
        let q = self.lookup(name)?;
        for i in 0..self.partitions.len() {
            self.partition(i)
                .store
                .set_queue_quota(QueueId(q.id), quota);
        }
        Ok(())
    }

    /// Every queue with its messages and bytes (from one thread: reads every partition).
    pub fn list_queues(&self) -> Vec<QueueInfo> {
        let all: Vec<usize> = (0..self.partitions.len()).collect();
        self.list_queues_from(&self.queue_lens(&all))
    }

    /// The messages and bytes of every queue and outgoing queue in partitions `parts` (a shard
    /// answers for the partitions it runs; the API adds the shards' answers up).
    pub fn queue_lens(&self, parts: &[usize]) -> QueueLens {
        let queues: Vec<u32> = self.catalog().iter().map(|q| q.id).collect();
        let outgoing: Vec<u32> = self.outgoing.read(|t| t.iter().map(|d| d.id).collect());
        let mut lens = QueueLens::default();
        for &i in parts {
            let p = self.partition(i);
            lens.tx_sequences += p.txn.len() as u64;
            lens.outgoing_status
                .extend(p.out_status.iter().map(|(id, st)| (*id, st.clone())));
            for (ids, into) in [(&queues, &mut lens.queues), (&outgoing, &mut lens.outgoing)] {
                for &id in ids {
                    let (m, b) = p.store.queue_len(QueueId(id));
                    if m > 0 || b > 0 {
                        let e = into.entry(id).or_insert((0, 0));
                        e.0 += m;
                        e.1 += b;
                    }
                }
            }
        }
        lens
    }

    /// Every queue of the catalog with its counts from `lens` (no partition is read).
    pub fn list_queues_from(&self, lens: &QueueLens) -> Vec<QueueInfo> {
        let defs: Vec<QueueDef> = self.catalog().iter().cloned().collect();
        defs.into_iter()
            .map(|q| {
                let (messages, bytes) = lens.queues.get(&q.id).copied().unwrap_or((0, 0));
                QueueInfo {
                    name: q.name,
                    id: q.id,
                    kind: q.kind,
                    transactional: q.transactional,
                    messages,
                    bytes,
                }
            })
            .collect()
    }

    /// The queue with catalog id `id`, if any.
    pub fn queue_by_id(&self, id: u32) -> Option<QueueDef> {
        self.catalog().by_id(id).cloned()
    }

    /// The store partition a request about queue `name` goes to (its owner).
    pub fn owner_of(&self, name: &str) -> Result<usize, ApiError> {
        Ok(self.owner(&self.lookup(name)?))
    }

    /// Peeks at up to `count` messages of a queue in delivery order, without removing them.
    /// The queue's messages are in its owning partition (for a queue an older lior spread
    /// over the partitions, in every partition, merged by priority only).
    pub fn peek(&self, name: &str, count: usize) -> Result<Vec<Received>, ApiError> {
        self.peek_bounded(name, count, usize::MAX)
            .map(|(out, _)| out)
    }

    /// Peeks up to `count` messages, stopping once about `max_bytes` of message bytes are
    /// copied (at least one message is); says whether it stopped at that bound with more
    /// messages left.
    pub fn peek_bounded(
        &self,
        name: &str,
        count: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Received>, bool), ApiError> {
        let q = self.lookup(name)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        for i in self.read_partitions(&q) {
            let p = self.partition(i);
            let mut c = Cursor::new(QueueId(q.id));
            while out.len() < count.min(RECEIVE_BATCH_MAX) {
                let Some(m) = p.store.cursor_next(&mut c) else {
                    break;
                };
                if !out.is_empty() && bytes.saturating_add(m.bytes.len()) > max_bytes {
                    more = true;
                    break;
                }
                bytes += m.bytes.len();
                out.push(Received::copy(&q.name, i, &m));
            }
        }
        out.sort_by_key(|m| std::cmp::Reverse(m.priority));
        out.truncate(count);
        Ok((out, more))
    }

    /// Receives (removes) up to `count` messages. Each removal is durable before the message
    /// is returned: a crash after this call never brings a received message back. From one
    /// thread (tests, tools); `lior serve` stages the same on the queue's owning shard
    /// ([`Broker::receive_staged`]) and answers once the shard sees the removals durable.
    pub fn receive(&self, name: &str, count: usize) -> Result<Vec<Received>, ApiError> {
        let staged = self.receive_staged(name, count, usize::MAX)?;
        self.wait_durable(&staged.waits)?;
        let (out, _) = staged.value;
        self.send_owed(self.received_owed(&out));
        Ok(out)
    }

    /// Takes up to `count` messages of queue `name` in delivery order, stopping once about
    /// `max_bytes` of message bytes are taken (at least one message is), and stages their
    /// removal: the messages are copied now, their removals become durable with the partition's
    /// next group commit, and their space is released once they are. The caller hands the
    /// messages out only once every ticket of `waits` is durable, then calls
    /// [`Broker::ack_received`]. Says whether it stopped at `max_bytes` with messages left.
    pub fn receive_staged(
        &self,
        name: &str,
        count: usize,
        max_bytes: usize,
    ) -> Result<Staged<(Vec<Received>, bool)>, ApiError> {
        let q = self.lookup(name)?;
        // The owner only, but for a queue an older lior spread over the partitions.
        let parts = self.read_partitions(&q);
        let n = parts.len();
        let want = count.min(RECEIVE_BATCH_MAX);
        let mut out = Vec::new();
        let mut waits: Vec<(usize, Ticket)> = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        // Start at a rotating partition so no partition is always served last.
        let start = self.receive_cursor.fetch_add(1, Ordering::Relaxed) as usize;
        'outer: while out.len() < want {
            // The highest priority at the front of any partition goes first.
            let mut best: Option<(u8, usize)> = None;
            for k in 0..n {
                let i = parts[(start + k) % n];
                let p = self.partition(i);
                if let Some(m) = p.store.peek(QueueId(q.id), Select::Front) {
                    if best.is_none_or(|(prio, _)| m.meta.priority > prio) {
                        best = Some((m.meta.priority, i));
                    }
                }
            }
            let Some((prio, i)) = best else {
                break;
            };
            let mut p = self.partition(i);
            let mut last = None;
            // Take from this partition while its front keeps that priority.
            while out.len() < want {
                let Some(m) = p.store.peek(QueueId(q.id), Select::Front) else {
                    break;
                };
                if m.meta.priority < prio {
                    break;
                }
                if !out.is_empty() && bytes.saturating_add(m.bytes.len()) > max_bytes {
                    more = true;
                    if let Some(t) = last {
                        waits.push((i, t));
                    }
                    break 'outer;
                }
                let copy = Received::copy(&q.name, i, &m);
                let lookup = m.lookup_id;
                let meta = crate::store::MessageMeta {
                    expiry_unix_s: crate::store::EXPIRY_NEVER,
                    ..m.meta
                };
                // A journaled queue keeps a copy, durable with the removal (`journal`).
                self.journal_received(&mut p, &q, &meta, &copy.bytes);
                let Some(r) = p.store.receive(QueueId(q.id), Select::Lookup(lookup))? else {
                    break;
                };
                bytes += copy.bytes.len();
                last = Some(last.map_or(r.ticket, |t: Ticket| t.max(r.ticket)));
                p.release_when_durable(r);
                out.push(copy);
            }
            match last {
                Some(t) => waits.push((i, t)),
                None => break,
            }
        }
        self.counters
            .messages_received
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(Staged {
            value: (out, more),
            waits,
        })
    }

    /// The positive receive acknowledgements (PR) and FinalAcks owed for messages handed out
    /// (to store once their removals are durable).
    pub fn received_owed(&self, out: &[Received]) -> Vec<super::Owed> {
        let mut owed = Vec::new();
        for r in out {
            self.received_acks_owed(&r.queue, r.partition, &r.bytes, &mut owed);
        }
        owed
    }

    /// Sends a message from a local application to `to`: into our own queue when the format
    /// name names this machine, else into the outgoing queue of the remote machine. No contact
    /// with the remote machine is made here.
    pub fn send(&self, to: &str, req: &SendRequest<'_>) -> Result<SendOutcome, ApiError> {
        let mut owed = Vec::new();
        let staged = self.send_staged(to, req, &mut owed)?;
        self.wait_durable(&staged.waits)?;
        self.send_owed(owed);
        Ok(staged.value)
    }

    /// The store partition a local application's send to `to` goes to: the owner of the local
    /// queue it names, or the partition of the outgoing queue of the remote machine (made if
    /// new). A name that cannot be sent to goes to partition 0, whose shard says why.
    pub fn owner_for_send(&self, to: &str) -> usize {
        let Ok(fname) = crate::wire::format_name::FormatName::parse(to) else {
            return 0;
        };
        let Some(direct) = fname.as_direct() else {
            return 0;
        };
        if self.identity.is_local(&direct.address) {
            let wire = direct.wire_bytes();
            let m = UserMessage::new(
                self.guid(),
                0,
                crate::wire::user::QueueRef::Direct(crate::wire::Utf16(&wire)),
                crate::wire::Utf16(&[]),
                &[],
            );
            self.resolve(&route(&m.user, &self.identity))
                .map_or(0, |q| self.owner(&q))
        } else {
            self.outgoing
                .get_or_create(direct)
                .map_or(0, |d| d.shard % self.partitions.len())
        }
    }

    /// [`Broker::send`] without waiting: the message is appended (in its queue's owning
    /// partition, or its outgoing queue's), and the caller answers once `waits` are durable.
    /// Runs on the shard owning that partition (see [`Broker::owner_for_send`]): the
    /// transactional numbering and the append are one step there, and no lock is held across
    /// a commit. A source-journal copy it owes is pushed on `owed` (stored once the message
    /// is durable, by the caller).
    pub fn send_staged(
        &self,
        to: &str,
        req: &SendRequest<'_>,
        owed: &mut Vec<super::Owed>,
    ) -> Result<Staged<SendOutcome>, ApiError> {
        let fname = crate::wire::format_name::FormatName::parse(to)
            .map_err(|e| ApiError::Send(format!("{to}: {e}")))?;
        let Some(direct) = fname.as_direct() else {
            return Err(ApiError::Send(format!(
                "{to}: only DIRECT= format names can be sent to without a directory service"
            )));
        };
        let wire = direct.wire_bytes();
        let label = crate::wire::utf16z(req.label);
        let label = if req.label.is_empty() {
            Vec::new()
        } else {
            label
        };
        let own = self.guid();
        let ordinal = self.next_ordinal();
        let now = unix_now();
        let mut m = UserMessage::new(
            own,
            ordinal,
            crate::wire::user::QueueRef::Direct(crate::wire::Utf16(&wire)),
            crate::wire::Utf16(&label),
            req.body,
        )
        .with_recoverable(req.recoverable)
        .with_priority(req.priority.min(7))
        .with_sent_time(now)
        .with_time_to_reach_queue(
            req.time_to_reach_queue
                .unwrap_or(TIME_TO_REACH_QUEUE_DEFAULT_S),
        )
        .with_time_to_be_received(req.time_to_be_received.unwrap_or(INFINITE));
        m.properties.application_tag = req.app_specific;
        m.user.flags = m
            .user
            .flags
            .with(crate::wire::user::UserFlags::JP, req.journal)
            .with(crate::wire::user::UserFlags::JN, req.dead_letter);
        if let Some(l) = req.mqf {
            m.multi_queue = Some(l.header());
            m.sync();
        }
        let local = self.identity.is_local(&direct.address);
        // Transactional numbering is assigned under the sequence lock and the message is
        // appended before the lock is released (no commit under it), so numbers follow the
        // queue order.
        let mut tx_guard = None;
        if req.transactional {
            let (seq_id, no) = if local {
                let q = match crate::qm::routing::route(&m.user, &self.identity) {
                    Route::Named(n) => self.lookup(&n)?.id,
                    Route::Number(n) => n,
                    _ => return Err(ApiError::Send(format!("{to}: no such local queue"))),
                };
                let owner = self.catalog().by_id(q).map_or(0, |d| self.owner(d));
                let s = self.partition(owner).txn.get(&(own, q));
                let seq_id = if s.seq_id == 0 {
                    (u64::from(now) << 32) | 1
                } else {
                    s.seq_id
                };
                (seq_id, s.seq_no.wrapping_add(1))
            } else {
                // The sequence lives with the outgoing queue's partition, which this shard
                // runs (`owner_for_send`); its guard is kept until the message is appended.
                let def = self.outgoing_queue_for(direct)?;
                let mut part = self.partition(def.shard);
                let t = self.tx_out_state(&mut part, &def);
                let r = (t.seq_id, t.next_no);
                tx_guard = Some((part, def));
                r
            };
            m = m.with_transaction(TransactionHeader::new(
                TxFlags::default()
                    .with(TxFlags::FM, true)
                    .with(TxFlags::LM, true)
                    .with_transaction_index(ordinal & 0x000F_FFFF),
                seq_id,
                no,
                no.saturating_sub(1),
            ));
        }
        // Signed last, when every signed field is final (MS-MQQB 3.1.7.1.4).
        let signature = match &self.signer {
            Some(s) => s.signature(&mut m).map_err(ApiError::Send)?,
            None => Vec::new(),
        };
        if let Some(s) = self.signer.as_ref().filter(|_| !signature.is_empty()) {
            s.attach(&mut m, &signature);
        }
        if m.frame_len() > crate::wire::base::MAX_PACKET_SIZE as usize {
            return Err(ApiError::Send(format!(
                "message too large: the packet would be {} bytes (body {} bytes), limit {} \
                 (MS-MQMQ PacketSize)",
                m.frame_len(),
                req.body.len(),
                crate::wire::base::MAX_PACKET_SIZE
            )));
        }
        let frame = encode_message(&m)?;
        let message_id = format!("{own}\\{ordinal}");
        if local {
            let msg = UserMessage::parse(&frame)
                .map_err(|e| ApiError::Send(format!("encoded message does not parse: {e}")))?;
            // A local application hears of a wrong queue or transaction type as an error, and
            // the message is not kept: no copy goes to a dead-letter queue (that is for messages
            // that arrive from other machines, whose senders cannot be told directly).
            let Some(queue) = self.resolve(&route(&msg.user, &self.identity)) else {
                return Err(ApiError::Send(format!(
                    "{to}: no such queue on this machine (see `lior queue list`); nothing was sent"
                )));
            };
            if queue.transactional != req.transactional {
                return Err(ApiError::Send(if queue.transactional {
                    format!(
                        "{to}: {} is a transactional queue; send with --transactional \
                         (API: \"transactional\": true); nothing was sent",
                        queue.name
                    )
                } else {
                    format!(
                        "{to}: {} is not a transactional queue; send without --transactional; \
                         nothing was sent",
                        queue.name
                    )
                }));
            }
            // The engine's clock: the duplicate table's times are all on it.
            let now_ms = crate::engine::net::now_ms();
            let d = self.deliver_to(&frame, &msg, &queue, now, now_ms);
            let (queue, ticket) = match d.verdict {
                Verdict::Stored { queue, ticket } => (queue, ticket),
                Verdict::DeadLettered { class, .. } => {
                    return Err(ApiError::Send(format!(
                        "{to}: not deliverable here ({}); moved to the dead-letter queue",
                        class.name()
                    )))
                }
                Verdict::Refuse(e) => return Err(ApiError::Store(e)),
                Verdict::Forwarded { .. } => {
                    // `deliver_to` stores in any partition: never forwarded.
                    debug_assert!(false, "deliver_to forwarded a dead letter");
                    return Err(ApiError::Send(format!("{to}: not stored")));
                }
                Verdict::Duplicate { .. } | Verdict::TxRejected { .. } | Verdict::TxAck => {
                    return Err(ApiError::Send(format!("{to}: refused as a duplicate")))
                }
            };
            if req.journal && !req.transactional {
                // Source journaling: delivered (stored) here, so journaled once durable.
                owed.push(super::Owed::MachineJournal {
                    frame: frame.clone(),
                });
            }
            let name = self
                .catalog()
                .by_id(queue)
                .map_or_else(|| format!("{queue:#x}"), |q| q.name.clone());
            return Ok(Staged {
                value: SendOutcome {
                    placed: "local",
                    queue: name,
                    message_id,
                    held: None,
                },
                waits: vec![(d.partition, ticket)],
            });
        }
        let meta = message_meta(&m);
        let (def, partition, ticket) = match tx_guard {
            // Numbered and appended in one step of the outgoing queue's partition.
            Some((mut part, def)) => {
                let ticket = self.append_outgoing_in(&mut part, def.id, &frame, &meta)?;
                if let Some(t) = part.tx_out.get_mut(&def.id) {
                    t.next_no = t.next_no.wrapping_add(1);
                }
                part.commit(None)?;
                let p = part.index;
                drop(part);
                self.outgoing_queued(p);
                (def, p, ticket)
            }
            None => self.enqueue_outgoing_nowait(direct, &frame, &meta)?,
        };
        let held = if def.paused {
            Some("the outgoing queue is paused (lior outgoing resume)".to_string())
        } else if def.transport == crate::qm::outgoing::Transport::Ipx {
            Some(format!(
                "locked: lior does not send over {:?}; kept",
                def.transport
            ))
        } else if self.config.parameters.Hardened_MSMQ
            && def.transport == crate::qm::outgoing::Transport::Mqqb
        {
            Some(
                "locked: hardened mode sends nothing over MS-MQQB; kept until Hardened_MSMQ is \
                 off and lior restarts"
                    .to_string(),
            )
        } else {
            None
        };
        Ok(Staged {
            value: SendOutcome {
                placed: "outgoing",
                queue: def.key,
                message_id,
                held,
            },
            waits: vec![(partition, ticket)],
        })
    }
}
