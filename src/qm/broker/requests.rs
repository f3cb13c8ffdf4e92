//! The local API's operations, as the HTTP API and the CLI call them: queue administration
//! (create, delete, purge, quotas, list), peek, receive (each removal durable before the
//! message is returned), and send from a local application (into our own queue, or into the
//! outgoing queue of a remote machine).

use std::sync::atomic::Ordering;

use crate::qm::catalog::{QueueDef, QueueKind};
use crate::qm::routing::{route, Route};
use crate::store::{Class, Cursor, QueueId, QueueQuota, QueueStore, Select, StoreError, Ticket};
use crate::wire::base::INFINITE;
use crate::wire::headers::{MessageClass, TransactionHeader, TxFlags};
use crate::wire::user::UserMessage;

use super::{
    encode_message, lock, message_meta, unix_now, ApiError, Broker, Verdict, RECEIVE_BATCH_MAX,
};

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
#[derive(Clone, Debug)]
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
}

/// Default TimeToReachQueue: 4 days (MS-MQDMPR 3.1.1.12).
pub const TIME_TO_REACH_QUEUE_DEFAULT_S: u32 = 345_600;

impl<S: QueueStore> Broker<S> {
    pub fn create_queue(&self, name: &str, transactional: bool) -> Result<QueueDef, ApiError> {
        let mut cat = self.catalog.write().unwrap_or_else(|p| p.into_inner());
        let q = cat.create(name, transactional)?;
        self.catalog_generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!(queue = %q.name, id = q.id, transactional, "queue created");
        Ok(q)
    }

    pub fn delete_queue(&self, name: &str) -> Result<(), ApiError> {
        let q = {
            let mut cat = self.catalog.write().unwrap_or_else(|p| p.into_inner());
            let q = cat.delete(name)?;
            self.catalog_generation.fetch_add(1, Ordering::AcqRel);
            q
        };
        self.empty_queue(q.id, MessageClass::NACK_Q_DELETED, |s, q| s.delete_queue(q))?;
        tracing::info!(queue = %q.name, "queue deleted");
        Ok(())
    }

    /// Removes every message of queue `id` in every partition with `remove` (purge or delete),
    /// durably, then sends `class` to the senders that asked for negative receive acks.
    fn empty_queue(
        &self,
        id: u32,
        class: MessageClass,
        remove: impl Fn(&mut S, QueueId) -> Result<Ticket, StoreError>,
    ) -> Result<(), ApiError> {
        let nacks = self.negative_receive_frames(id);
        for i in 0..self.partitions.len() {
            let mut p = self.partition(i);
            let t = remove(&mut p.store, QueueId(id))?;
            p.commit(Some(t))?;
        }
        self.send_receive_acks(&nacks, class);
        Ok(())
    }

    /// Moves one message (by its lookup id) from queue `from` to queue `to`, both on this
    /// machine (a dead letter back to where it belongs, say). The copy is durable in `to`
    /// before the original leaves `from`: a crash in between leaves a copy too many, never
    /// none. A transactional message moves only into a transactional queue, and a
    /// non-transactional one only into a non-transactional queue. Runs on the API's threads.
    pub fn move_message(&self, from: &str, lookup: u64, to: &str) -> Result<(), ApiError> {
        let src = self.lookup(from)?;
        let dst = self.lookup(to)?;
        if src.id == dst.id {
            return Err(ApiError::Send(format!(
                "{from}: a message moves to another queue"
            )));
        }
        let (bytes, meta) = {
            let p = self.partition(self.owner(&src));
            let m = p
                .store
                .peek(
                    QueueId(src.id),
                    Select::Lookup(crate::store::LookupId(lookup)),
                )
                .ok_or_else(|| {
                    ApiError::NoSuchMessage(format!("{from} has no message {lookup}"))
                })?;
            (m.bytes.to_vec(), m.meta)
        };
        let transactional = meta.class == Class::Transactional;
        if transactional != dst.transactional {
            return Err(ApiError::Send(format!(
                "message {lookup} is {}transactional and queue {to} is {}: not moved",
                if transactional { "" } else { "not " },
                if dst.transactional {
                    "transactional"
                } else {
                    "not transactional"
                }
            )));
        }
        {
            let mut p = self.partition(self.owner(&dst));
            let a = p.store.append(QueueId(dst.id), &meta, &bytes)?;
            p.commit((a.ticket != Ticket::IMMEDIATE).then_some(a.ticket))?;
        }
        {
            let mut p = self.partition(self.owner(&src));
            let taken = p.store.receive(
                QueueId(src.id),
                Select::Lookup(crate::store::LookupId(lookup)),
            )?;
            if let Some(r) = taken {
                p.commit(Some(r.ticket))?;
                p.store.release(r)?;
            }
        }
        self.arrivals.notify_waiters();
        Ok(())
    }

    pub fn purge_queue(&self, name: &str) -> Result<(), ApiError> {
        let q = self.lookup(name)?;
        self.empty_queue(q.id, MessageClass::NACK_Q_PURGED, |s, q| s.purge(q))
    }

    pub fn lookup(&self, name: &str) -> Result<QueueDef, ApiError> {
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

    pub fn list_queues(&self) -> Vec<QueueInfo> {
        let defs: Vec<QueueDef> = self.catalog().iter().cloned().collect();
        defs.into_iter()
            .map(|q| {
                let (mut messages, mut bytes) = (0, 0);
                for i in 0..self.partitions.len() {
                    let (m, b) = self.partition(i).store.queue_len(QueueId(q.id));
                    messages += m;
                    bytes += b;
                }
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
    /// is returned: a crash after this call never brings a received message back.
    pub fn receive(&self, name: &str, count: usize) -> Result<Vec<Received>, ApiError> {
        let q = self.lookup(name)?;
        // The owner only, but for a queue an older lior spread over the partitions.
        let parts = self.read_partitions(&q);
        let n = parts.len();
        let mut out = Vec::new();
        // Start at a rotating partition so no partition is always served last.
        let start = self.receive_cursor.fetch_add(1, Ordering::Relaxed) as usize;
        while out.len() < count.min(RECEIVE_BATCH_MAX) {
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
            let Some((_, i)) = best else {
                break;
            };
            let mut p = self.partition(i);
            // Take a batch from this partition under one commit.
            let mut reservations = Vec::new();
            while out.len() + reservations.len() < count.min(RECEIVE_BATCH_MAX) {
                match p.store.receive(QueueId(q.id), Select::Front)? {
                    Some(r) => reservations.push(r),
                    None => break,
                }
                if p.store
                    .peek(QueueId(q.id), Select::Front)
                    .is_none_or(|m| Some(m.meta.priority) < best.map(|b| b.0))
                {
                    break;
                }
            }
            if reservations.is_empty() {
                continue;
            }
            let last = reservations.iter().map(|r| r.ticket).max();
            p.commit(last)?;
            for r in reservations {
                let m = p.store.reserved(&r)?;
                out.push(Received::copy(&q.name, i, &m));
                p.store.release(r)?;
            }
        }
        self.counters
            .messages_received
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        // Positive receive acknowledgements (PR), now that the removals are durable.
        for r in &out {
            if let Ok(m) = UserMessage::parse(&r.bytes) {
                if m.properties.flags.positive_receive() {
                    self.send_admin_ack(&m, MessageClass::ACK_RECEIVE);
                }
            }
        }
        Ok(out)
    }

    /// Sends a message from a local application to `to`: into our own queue when the format
    /// name names this machine, else into the outgoing queue of the remote machine. No contact
    /// with the remote machine is made here.
    pub fn send(&self, to: &str, req: &SendRequest<'_>) -> Result<SendOutcome, ApiError> {
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
        let local = self.identity.is_local(&direct.address);
        // Transactional numbering is assigned under the sequence lock and the message is
        // stored before the lock is released, so numbers follow the queue order.
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
                let def = lock(&self.outgoing)
                    .get_or_create(direct)
                    .map_err(|e| ApiError::Send(e.to_string()))?;
                let mut g = lock(&self.tx_out);
                let t = self.tx_out_state(&mut g, &def);
                let r = (t.seq_id, t.next_no);
                tx_guard = Some((g, def.id));
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
                Verdict::Duplicate { .. } | Verdict::TxRejected { .. } | Verdict::TxAck => {
                    return Err(ApiError::Send(format!("{to}: refused as a duplicate")))
                }
            };
            self.partition(d.partition)
                .commit((ticket != Ticket::IMMEDIATE).then_some(ticket))?;
            self.arrivals.notify_waiters();
            let name = self
                .catalog()
                .by_id(queue)
                .map_or_else(|| format!("{queue:#x}"), |q| q.name.clone());
            return Ok(SendOutcome {
                placed: "local",
                queue: name,
                message_id,
                held: None,
            });
        }
        let meta = message_meta(&m);
        let def = self.enqueue_outgoing(direct, &frame, &meta)?;
        if let Some((mut g, id)) = tx_guard {
            if let Some(t) = g.get_mut(&id) {
                t.next_no = t.next_no.wrapping_add(1);
            }
        }
        let held = if def.paused {
            Some("the outgoing queue is paused (lior outgoing resume)".to_string())
        } else if def.transport != crate::qm::outgoing::Transport::Mqqb {
            Some(format!(
                "locked: lior does not send over {:?} yet; kept until it does",
                def.transport
            ))
        } else if self.config.parameters.Hardened_MSMQ {
            Some(
                "locked: hardened mode sends nothing over MS-MQQB; kept until Hardened_MSMQ is \
                 off and lior restarts"
                    .to_string(),
            )
        } else {
            None
        };
        Ok(SendOutcome {
            placed: "outgoing",
            queue: def.key,
            message_id,
            held,
        })
    }
}
