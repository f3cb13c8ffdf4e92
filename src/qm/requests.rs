//! The local HTTP API and SRMP talk to the shards by request, never by lock: each request goes
//! to the shard that owns the queue over a bounded channel (`limits.api_requests_per_shard_max`
//! per shard) with a one-shot reply, and that shard serves it in its own turn ([`Desk`]).
//!
//! - [`ShardClient`] (the API's and SRMP's side): `try_send`, wake the shard, await the reply.
//!   A full channel is [`ApiError::Busy`] at once (HTTP 503 with a Retry-After), never a blocked
//!   thread; a shard that stopped (its receiver dropped) is `Busy` too.
//! - [`Desk`] (the shard's side): drains its channel at the start of the shard's end of turn,
//!   at most [`API_REQUESTS_PER_TURN_MAX`] a turn, stages each operation on the partitions the
//!   shard runs and answers once what it staged is durable. Those answers wait in a bounded
//!   list ([`API_REPLIES_OWED_PER_SHARD_MAX`]; while it is full the channel is not drained, so
//!   new requests find it full and are answered 503) and are settled after the shard's group
//!   commits, where it learns its partitions' durability. A receive with a wait that finds
//!   nothing is parked (`limits.api_waiting_receives_per_shard_max`) until a message arrives in
//!   its queue (looked for at each of the owner's turns, which every store into its partitions
//!   causes) or its deadline passes (the shard's application deadline).
//!
//! No clock, socket or lock of its own: times come from the shard's turn.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;

use crate::qm::broker::{
    ApiError, Broker, Owed, QueueLens, Received, SendOutcome, SendRequest, Staged, Verdict,
};
use crate::qm::catalog::QueueDef;
use crate::store::{MessageMeta, QueueStore, Ticket};
use crate::wire::user::UserMessage;

/// Requests one shard takes from its channel in one loop turn at most (the rest wait for the
/// next turn, which follows at once).
pub const API_REQUESTS_PER_TURN_MAX: usize = 256;
/// Answers one shard keeps waiting for the disk at most; while full, its request channel is
/// not drained (new requests are answered 503).
pub const API_REPLIES_OWED_PER_SHARD_MAX: usize = 4_096;

/// Where a request's answer goes.
pub type Reply<T> = tokio::sync::oneshot::Sender<Result<T, ApiError>>;

/// Messages handed out by a receive or a peek, and whether the answer stopped at its byte
/// bound with messages left.
pub type Messages = (Vec<Received>, bool);

/// A local application's send, owned (it crosses to the shard).
#[derive(Clone, Debug)]
pub struct SendOwned {
    pub label: String,
    pub body: Vec<u8>,
    pub priority: u8,
    pub recoverable: bool,
    pub time_to_reach_queue: Option<u32>,
    pub time_to_be_received: Option<u32>,
    pub app_specific: u32,
    pub transactional: bool,
    /// A copy of a fanned-out send: the MultiQueueFormatHeader lists (`qm/fanout.rs`).
    pub mqf: Option<Arc<crate::qm::fanout::MqfLists>>,
    pub journal: bool,
    pub dead_letter: bool,
}

impl SendOwned {
    pub fn as_request(&self) -> SendRequest<'_> {
        SendRequest {
            label: &self.label,
            body: &self.body,
            priority: self.priority,
            recoverable: self.recoverable,
            time_to_reach_queue: self.time_to_reach_queue,
            time_to_be_received: self.time_to_be_received,
            app_specific: self.app_specific,
            transactional: self.transactional,
            mqf: self.mqf.as_deref(),
            journal: self.journal,
            dead_letter: self.dead_letter,
        }
    }
}

/// One operation for the shard owning the queue (or, for `Lens`, for every shard).
#[derive(Debug)]
pub enum Request {
    /// Up to `count` messages of `queue` in delivery order, about `max_bytes` at most.
    Peek {
        queue: String,
        count: usize,
        max_bytes: usize,
        reply: Reply<Messages>,
    },
    /// Removes up to `count` messages (about `max_bytes`); answered once the removals are
    /// durable. Finding none before `until_ms` (the engine's clock), it waits for one.
    Receive {
        queue: String,
        count: usize,
        max_bytes: usize,
        until_ms: u64,
        reply: Reply<Messages>,
    },
    /// Purges the queue, or with `delete` deletes it: the catalog entry and the messages go in
    /// one step of the owning shard, so no message of the shard lands in a deleted queue.
    /// Answered once durable, then the negative receive acks are sent.
    Empty {
        queue: String,
        delete: bool,
        reply: Reply<()>,
    },
    /// A copy of one message (first step of a move).
    PeekMessage {
        queue: QueueDef,
        lookup: u64,
        reply: Reply<(Vec<u8>, MessageMeta)>,
    },
    /// Stores a moved message's copy; answered once durable (second step of a move).
    StoreCopy {
        queue: QueueDef,
        bytes: Vec<u8>,
        meta: MessageMeta,
        reply: Reply<()>,
    },
    /// Removes the moved message; answered once durable (last step of a move).
    RemoveMessage {
        queue: QueueDef,
        lookup: u64,
        reply: Reply<()>,
    },
    /// A local application's send (to a local queue, or to the outgoing queue of a remote
    /// machine); answered once stored durably (recoverable) or at once (express).
    Send {
        to: String,
        message: SendOwned,
        reply: Reply<SendOutcome>,
    },
    /// A message that arrived over SRMP, already encoded, for `queue`; answered once durable.
    /// `Some(reason)` says it was refused (HTTP 400). A stream message whose sender asked for
    /// stream receipts (`stream_receipts`: its `sendReceiptsTo` and the stream's queue
    /// manager) gets one, stored before the answer (MC-MQSRM 3.1.5.1.2).
    Deliver {
        queue: QueueDef,
        frame: Vec<u8>,
        now_unix: u32,
        reply: Reply<Option<String>>,
        stream_receipts: Option<(String, crate::wire::Guid)>,
    },
    /// The messages and bytes of every queue in the shard's partitions.
    Lens { reply: Reply<QueueLens> },
    /// An SRMP stream receipt (MC-MQSRM 2.2.5.6) for our stream (`qm`, `sequence`) up to
    /// `last_ordinal`, from `ip`: taken by the shard's turn as an MS-MQQB OrderAck arriving on
    /// it is (the outgoing queue's shard removes what it covers, by mail). Answered at once
    /// (a receipt is never answered with an error). Branch deskown.
    StreamReceipt {
        qm: crate::wire::Guid,
        sequence: u64,
        last_ordinal: u64,
        ip: std::net::IpAddr,
        reply: Reply<()>,
    },
}

/// Makes a bounded request channel per shard: the senders for a [`ShardClient`], the receivers
/// for each shard's [`Desk`]. `limit` is at least 1.
pub fn channels(shards: usize, limit: usize) -> (Vec<SyncSender<Request>>, Vec<Receiver<Request>>) {
    (0..shards.max(1))
        .map(|_| std::sync::mpsc::sync_channel(limit.max(1)))
        .unzip()
}

/// The API's and SRMP's handle on the shards (cheap to clone).
#[derive(Clone)]
pub struct ShardClient {
    senders: Arc<[SyncSender<Request>]>,
    wake: Arc<dyn Fn(usize) + Send + Sync>,
    limit: usize,
}

impl std::fmt::Debug for ShardClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardClient")
            .field("shards", &self.senders.len())
            .field("limit", &self.limit)
            .finish()
    }
}

impl ShardClient {
    /// A client over the senders of [`channels`]; `wake(shard)` makes that shard run a turn.
    pub fn new(
        senders: Vec<SyncSender<Request>>,
        limit: usize,
        wake: Arc<dyn Fn(usize) + Send + Sync>,
    ) -> Self {
        ShardClient {
            senders: senders.into(),
            wake,
            limit,
        }
    }

    pub fn shards(&self) -> usize {
        self.senders.len()
    }

    /// The shard running store partition `p`.
    pub fn shard_of(&self, partition: usize) -> usize {
        partition % self.senders.len().max(1)
    }

    /// Sends the request `make` builds to `shard`, wakes it and waits for its answer. Never
    /// blocks a thread: a full channel is `Busy` at once.
    pub async fn ask<T>(
        &self,
        shard: usize,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<T, ApiError> {
        let shard = shard % self.senders.len().max(1);
        let Some(tx) = self.senders.get(shard) else {
            return Err(ApiError::Busy("no shard runs".into()));
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        match tx.try_send(make(reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::Busy(format!(
                    "shard {shard} has {} requests waiting (limits.api_requests_per_shard_max); \
                     try again shortly",
                    self.limit
                )))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::Busy(format!(
                    "shard {shard} is stopping; try again once lior runs"
                )))
            }
        }
        (self.wake)(shard);
        answer.await.unwrap_or_else(|_| {
            Err(ApiError::Busy(format!(
                "shard {shard} stopped before answering; try again once lior runs"
            )))
        })
    }

    /// The messages and bytes of every queue, added up over the shards.
    pub async fn lens(&self) -> Result<QueueLens, ApiError> {
        let mut all = QueueLens::default();
        for s in 0..self.senders.len() {
            all.add(self.ask(s, |reply| Request::Lens { reply }).await?);
        }
        Ok(all)
    }
}

/// An answer to give once its tickets are durable (and then the records it owes).
enum Answer {
    Messages(Reply<Messages>, Messages),
    Unit(Reply<()>),
    Sent(Reply<SendOutcome>, SendOutcome),
    Delivered(Reply<Option<String>>, Option<String>),
}

impl Answer {
    /// Answers with an error instead (the tickets will never be durable).
    fn refuse(self, e: ApiError) {
        match self {
            Answer::Messages(reply, _) => drop(reply.send(Err(e))),
            Answer::Unit(reply) => drop(reply.send(Err(e))),
            Answer::Sent(reply, _) => drop(reply.send(Err(e))),
            Answer::Delivered(reply, _) => drop(reply.send(Err(e))),
        }
    }

    fn give(self) {
        match self {
            Answer::Messages(reply, value) => {
                if let Err(Ok((msgs, _))) = reply.send(Ok(value)) {
                    // Removed durably and the caller is gone: say so.
                    tracing::warn!(
                        messages = msgs.len(),
                        queue = msgs.first().map_or("", |m| m.queue.as_str()),
                        "a receive's caller went away before its answer; the messages it took \
                         are removed"
                    );
                }
            }
            Answer::Unit(reply) => {
                let _ = reply.send(Ok(()));
            }
            Answer::Sent(reply, v) => {
                let _ = reply.send(Ok(v));
            }
            Answer::Delivered(reply, v) => {
                let _ = reply.send(Ok(v));
            }
        }
    }
}

/// An answer waiting for the disk: first for `waits` (what the operation staged), then for
/// the records it owes (`records`: receive acks, FinalAcks, copies for other queues), stored
/// once `waits` are durable (so a crash never sends an acknowledgement for a removal that did
/// not happen) and durable before the answer (so an answered receive never loses its
/// acknowledgement to a crash).
struct Owing {
    waits: Vec<(usize, Ticket)>,
    answer: Answer,
    records: Vec<Owed>,
}

/// An answer whose records are being stored by the shard's turn (`take_records`), some
/// perhaps by another shard: `left` placements to hear of (`record_placed`), with the tickets
/// of those placed.
struct Storing {
    answer: Answer,
    left: usize,
    waits: Vec<(usize, Ticket)>,
}

/// A receive waiting for a message.
struct Parked {
    queue: String,
    partition: usize,
    count: usize,
    max_bytes: usize,
    until_ms: u64,
    reply: Reply<Messages>,
}

/// A shard's side of the requests: its channel, the answers waiting for the disk and the
/// receives waiting for a message.
pub struct Desk<S> {
    broker: Arc<Broker<S>>,
    rx: Receiver<Request>,
    shard: usize,
    /// The partitions this shard runs (for `Lens`).
    owned: Vec<usize>,
    owed: Vec<Owing>,
    /// Records owed by answers whose tickets are durable, for the shard's turn to store
    /// (`take_records`), by answer number.
    to_store: Vec<(u64, Vec<Owed>)>,
    /// Answers waiting for their records' placements, by answer number.
    storing: HashMap<u64, Storing>,
    next_storing: u64,
    /// Record tickets placed since the last `serve` (the shard watches them).
    placed: Vec<(usize, Ticket)>,
    /// OrderAcks (SRMP stream receipts) for the shard's turn to take (`take_tx_acks`).
    tx_acks: Vec<(Vec<u8>, crate::qm::broker::AckSource)>,
    parked: VecDeque<Parked>,
    parked_max: usize,
    /// Requests may be left in the channel (the per-turn bound stopped the drain).
    backlog: bool,
    /// `parked.len()` as last added to `BrokerCounters::api_receives_waiting`.
    parked_published: usize,
    /// Waits for the answers' tickets, blocking, and gives them (for `Drop`, which knows no
    /// `QueueStore`).
    finish: fn(&Broker<S>, Vec<Owing>),
}

/// Gives each answer once its tickets are durable, waiting for them, after storing the
/// records it owes at once (a stopping shard: its turn no longer runs).
fn finish<S: QueueStore>(broker: &Broker<S>, owed: Vec<Owing>) {
    for o in owed {
        match broker.wait_durable(&o.waits) {
            Ok(()) => {
                broker.send_owed(o.records);
                o.answer.give();
            }
            Err(e) => {
                tracing::error!(error = %e, "an API answer's removal or message did not become durable at shutdown; not answered")
            }
        }
    }
}

impl<S: QueueStore> Desk<S> {
    pub fn new(
        broker: Arc<Broker<S>>,
        rx: Receiver<Request>,
        shard: usize,
        owned: Vec<usize>,
    ) -> Self {
        let parked_max = broker.config.limits.api_waiting_receives_per_shard_max;
        Desk {
            broker,
            rx,
            shard,
            owned,
            owed: Vec::new(),
            to_store: Vec::new(),
            storing: HashMap::new(),
            next_storing: 0,
            placed: Vec::new(),
            tx_acks: Vec::new(),
            parked: VecDeque::new(),
            parked_max,
            backlog: false,
            parked_published: 0,
            finish: finish::<S>,
        }
    }

    /// Serves what waits, at the start of the shard's end of turn: answers parked receives
    /// whose deadline passed, gives parked receives the messages that arrived, then takes new
    /// requests. Pushes into `touched` every `(partition, ticket)` an answer now waits for:
    /// the shard commits those partitions this turn and watches them.
    pub fn serve(&mut self, now_ms: u64, touched: &mut Vec<(usize, Ticket)>) {
        touched.append(&mut self.placed);
        self.serve_parked(now_ms, touched);
        self.backlog = false;
        let mut taken = 0;
        while self.answers_owed() < API_REPLIES_OWED_PER_SHARD_MAX {
            if taken == API_REQUESTS_PER_TURN_MAX {
                self.backlog = true;
                break;
            }
            match self.rx.try_recv() {
                Ok(req) => self.handle(now_ms, req, touched),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
            taken += 1;
        }
        self.publish_parked();
    }

    /// Answers those whose tickets are all durable now (after the shard's commits, where it
    /// learns its partitions' durability); those owing records first have them stored
    /// ([`Desk::take_records`]).
    pub fn settle(&mut self) {
        if self.owed.is_empty() {
            return;
        }
        let broker = self.broker.clone();
        let mut i = 0;
        while i < self.owed.len() {
            if self.owed[i]
                .waits
                .iter()
                .all(|&(p, t)| broker.is_durable(p, t))
            {
                let o = self.owed.swap_remove(i);
                if o.records.is_empty() {
                    o.answer.give();
                } else {
                    let id = self.next_storing;
                    self.next_storing += 1;
                    self.storing.insert(
                        id,
                        Storing {
                            answer: o.answer,
                            left: o.records.len(),
                            waits: Vec::new(),
                        },
                    );
                    self.to_store.push((id, o.records));
                }
            } else {
                i += 1;
            }
        }
    }

    /// The records answers owe, to store now, each with its answer's number: the shard builds
    /// each (`Broker::owed_record`), stores it (`MsmqApp::store_record`'s rule: here, or by
    /// mail to the shard running its queue) and tells [`Desk::record_placed`] where it went.
    pub fn take_records(&mut self) -> Vec<(u64, Vec<Owed>)> {
        std::mem::take(&mut self.to_store)
    }

    /// One record of answer `id` was stored at `at` (None: not stored, logged and counted
    /// where that was decided). Once all are, the answer waits for them to be durable.
    pub fn record_placed(&mut self, id: u64, at: Option<(usize, Ticket)>) {
        let Some(s) = self.storing.get_mut(&id) else {
            return;
        };
        s.left = s.left.saturating_sub(1);
        if let Some(w) = at.filter(|&(_, t)| t != Ticket::IMMEDIATE) {
            s.waits.push(w);
        }
        if s.left > 0 {
            return;
        }
        let Some(s) = self.storing.remove(&id) else {
            return;
        };
        let waits: Vec<(usize, Ticket)> = s
            .waits
            .into_iter()
            .filter(|&(p, t)| !self.broker.is_durable(p, t))
            .collect();
        if waits.is_empty() {
            s.answer.give();
            return;
        }
        self.placed.extend(waits.iter().copied());
        self.owed.push(Owing {
            waits,
            answer: s.answer,
            records: Vec::new(),
        });
    }

    /// The OrderAcks requests brought (SRMP stream receipts), with where each came from, for
    /// the shard's turn to take as it takes those arriving on its sessions.
    pub fn take_tx_acks(&mut self) -> Vec<(Vec<u8>, crate::qm::broker::AckSource)> {
        std::mem::take(&mut self.tx_acks)
    }

    /// Answers staged and not given yet.
    fn answers_owed(&self) -> usize {
        self.owed.len() + self.storing.len()
    }

    /// The store failed for good: the answers waiting for it say so (nothing they staged will
    /// become durable before a restart).
    pub fn fail_owed(&mut self) {
        // Records owed by answers whose removals are durable are still stored and answered.
        let (failed, kept): (Vec<Owing>, Vec<Owing>) = std::mem::take(&mut self.owed)
            .into_iter()
            .partition(|o| !o.waits.is_empty());
        self.owed = kept;
        for o in failed {
            o.answer.refuse(ApiError::NotDurable(format!(
                "the store of partition(s) {:?} failed for good (see the log); nothing more \
                 becomes durable there until lior restarts: restart lior once the disk is fixed",
                o.waits.iter().map(|w| w.0).collect::<Vec<_>>()
            )));
        }
    }

    /// When the shard must run again for the desk: a parked receive's deadline, or at once
    /// while requests are left in the channel.
    pub fn deadline(&self, now_ms: u64) -> Option<u64> {
        let parked = self.parked.iter().map(|p| p.until_ms).min();
        if self.backlog || !self.to_store.is_empty() || !self.placed.is_empty() {
            Some(now_ms)
        } else {
            parked
        }
    }

    /// The `(partition, ticket)` pairs answers wait for.
    pub fn waits(&self) -> impl Iterator<Item = (usize, Ticket)> + '_ {
        self.owed.iter().flat_map(|o| o.waits.iter().copied())
    }

    /// Receives waiting for a message now.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    fn owe(
        &mut self,
        staged_waits: Vec<(usize, Ticket)>,
        answer: Answer,
        records: Vec<Owed>,
        touched: &mut Vec<(usize, Ticket)>,
    ) {
        let waits: Vec<(usize, Ticket)> = staged_waits
            .into_iter()
            .filter(|&(p, t)| !self.broker.is_durable(p, t))
            .collect();
        if waits.is_empty() && records.is_empty() {
            answer.give();
            return;
        }
        touched.extend(waits.iter().copied());
        // With nothing to wait for, `settle` (later this turn) sends its records on.
        self.owed.push(Owing {
            waits,
            answer,
            records,
        });
    }

    fn serve_parked(&mut self, now_ms: u64, touched: &mut Vec<(usize, Ticket)>) {
        if self.parked.is_empty() {
            return;
        }
        // Queues found empty this turn: the other receives waiting there are not tried.
        let mut empty: HashSet<String> = HashSet::new();
        let mut keep = VecDeque::with_capacity(self.parked.len());
        while let Some(p) = self.parked.pop_front() {
            if p.reply.is_closed() {
                // The caller went away: nothing is taken for it.
                continue;
            }
            if p.until_ms <= now_ms {
                let _ = p.reply.send(Ok((Vec::new(), false)));
                continue;
            }
            if empty.contains(&p.queue) || self.answers_owed() >= API_REPLIES_OWED_PER_SHARD_MAX {
                keep.push_back(p);
                continue;
            }
            match self.broker.receive_staged(&p.queue, p.count, p.max_bytes) {
                Ok(staged) if !staged.value.0.is_empty() => {
                    self.owe_messages(staged, p.reply, touched);
                }
                Ok(_) => {
                    empty.insert(p.queue.clone());
                    keep.push_back(p);
                }
                Err(e) => {
                    let _ = p.reply.send(Err(e));
                }
            }
        }
        self.parked = keep;
        // A store into these partitions by another shard (an AMQP producer there) wakes this
        // one (see `Broker::note_arrival_interest`).
        let mut noted: Vec<usize> = Vec::new();
        for p in &self.parked {
            if !noted.contains(&p.partition) {
                noted.push(p.partition);
                self.broker.note_arrival_interest(p.partition, self.shard);
            }
        }
    }

    fn owe_messages(
        &mut self,
        staged: Staged<Messages>,
        reply: Reply<Messages>,
        touched: &mut Vec<(usize, Ticket)>,
    ) {
        let Staged { value, waits } = staged;
        // The receive acks and FinalAcks go out once the removals are durable, before the
        // answer.
        let records = self.broker.received_owed(&value.0);
        self.owe(waits, Answer::Messages(reply, value), records, touched);
    }

    fn handle(&mut self, now_ms: u64, req: Request, touched: &mut Vec<(usize, Ticket)>) {
        let broker = self.broker.clone();
        match req {
            Request::Peek {
                queue,
                count,
                max_bytes,
                reply,
            } => {
                let _ = reply.send(broker.peek_bounded(&queue, count, max_bytes));
            }
            Request::Receive {
                queue,
                count,
                max_bytes,
                until_ms,
                reply,
            } => {
                if reply.is_closed() {
                    return;
                }
                // Receives already waiting on this queue go first.
                let queued = self.parked.iter().any(|p| p.queue == queue);
                let staged = if queued {
                    Ok(None)
                } else {
                    broker
                        .receive_staged(&queue, count, max_bytes)
                        .map(|s| (!s.value.0.is_empty()).then_some(s))
                };
                match staged {
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                    Ok(Some(s)) => self.owe_messages(s, reply, touched),
                    Ok(None) if until_ms <= now_ms => {
                        let _ = reply.send(Ok((Vec::new(), false)));
                    }
                    Ok(None) if self.parked.len() >= self.parked_max => {
                        let _ = reply.send(Err(ApiError::Busy(format!(
                            "{} receives already wait on shard {} \
                             (limits.api_waiting_receives_per_shard_max); try again shortly",
                            self.parked.len(),
                            self.shard
                        ))));
                    }
                    Ok(None) => {
                        let partition = broker.owner_of(&queue).unwrap_or(0);
                        broker.note_arrival_interest(partition, self.shard);
                        self.parked.push_back(Parked {
                            queue,
                            partition,
                            count,
                            max_bytes,
                            until_ms,
                            reply,
                        });
                    }
                }
            }
            Request::Empty {
                queue,
                delete,
                reply,
            } => match if delete {
                broker.delete_queue_entry(&queue)
            } else {
                broker.lookup(&queue)
            }
            .and_then(|q| broker.empty_queue_staged(&q, delete))
            {
                Ok(Staged { value, waits }) => {
                    // The negative receive acks go out once the removal is durable.
                    self.owe(waits, Answer::Unit(reply), value, touched);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Request::PeekMessage {
                queue,
                lookup,
                reply,
            } => {
                let _ = reply.send(broker.peek_message(&queue, lookup));
            }
            Request::StoreCopy {
                queue,
                bytes,
                meta,
                reply,
            } => match broker.store_copy(&queue, &bytes, &meta) {
                Ok(waits) => self.owe(waits, Answer::Unit(reply), Vec::new(), touched),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Request::RemoveMessage {
                queue,
                lookup,
                reply,
            } => match broker.remove_message(&queue, lookup) {
                Ok(waits) => self.owe(waits, Answer::Unit(reply), Vec::new(), touched),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Request::Send { to, message, reply } => {
                let mut records = Vec::new();
                match broker.send_staged(&to, &message.as_request(), &mut records) {
                    Ok(Staged { value, waits }) => {
                        self.owe(waits, Answer::Sent(reply, value), records, touched)
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Request::Deliver {
                queue,
                frame,
                now_unix,
                reply,
                stream_receipts,
            } => match deliver(&broker, &queue, &frame, now_unix, now_ms, stream_receipts) {
                Ok((Staged { value, waits }, records)) => {
                    self.owe(waits, Answer::Delivered(reply, value), records, touched)
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Request::Lens { reply } => {
                let _ = reply.send(Ok(broker.queue_lens(&self.owned)));
            }
            Request::StreamReceipt {
                qm,
                sequence,
                last_ordinal,
                ip,
                reply,
            } => {
                if let Some(ack) = broker.stream_receipt_order_ack(qm, sequence, last_ordinal, ip) {
                    if self.tx_acks.len() < API_REQUESTS_PER_TURN_MAX {
                        self.tx_acks.push(ack);
                    }
                }
                let _ = reply.send(Ok(()));
            }
        }
    }
}

/// Stores an SRMP message in `queue`: `Some(reason)` when refused (HTTP 400), and what must be
/// durable before the 200 (MC-MQSRM 3.1.5.1.3: a durable or stream message is on disk first;
/// a duplicate or a stream message already received waits for its first copy), with the
/// records it owes (the receipts it asked for, as admin acknowledgements to its admin queue,
/// `http::srmp`).
#[allow(clippy::type_complexity)]
fn deliver<S: QueueStore>(
    broker: &Broker<S>,
    queue: &QueueDef,
    frame: &[u8],
    now_unix: u32,
    now_ms: u64,
    stream_receipts: Option<(String, crate::wire::Guid)>,
) -> Result<(Staged<Option<String>>, Vec<Owed>), ApiError> {
    let msg = UserMessage::parse(frame)
        .map_err(|e| ApiError::Send(format!("encoded message does not parse: {e}")))?;
    // The engine's clock: the duplicate table's times are all on it.
    let d = broker.deliver_to_over_srmp(frame, &msg, queue, now_unix, now_ms);
    let mut records = Vec::new();
    if let Some(class) = d.admin_ack {
        records.push(Owed::AdminAck {
            frame: frame.to_vec(),
            class,
        });
    }
    let (value, waits) = match d.verdict {
        Verdict::Stored { ticket, .. } => (None, vec![(d.partition, ticket)]),
        Verdict::Duplicate { origin } | Verdict::TxRejected { origin } => (None, vec![origin]),
        Verdict::DeadLettered { class, .. } => {
            (Some(format!("rejected: {}", class.name())), Vec::new())
        }
        Verdict::TxAck => (None, Vec::new()),
        Verdict::Refuse(e) => return Err(ApiError::Store(e)),
        Verdict::Forwarded { .. } => {
            // `deliver_to_over_srmp` stores in any partition: never forwarded.
            debug_assert!(false, "deliver_to_over_srmp forwarded a dead letter");
            return Err(ApiError::Send("not stored".to_string()));
        }
    };
    // Only for a message accepted (answered 200).
    if let (None, Some((to, stream_qm)), Some(th)) = (&value, stream_receipts, msg.transaction) {
        // Up to the last number the stream has in order here (this shard runs the queue's
        // partition, which holds the sequence state), at most this message's: everything up
        // to it is durable before the receipt is stored.
        let (seq_id, current) = (th.tx_sequence_id, th.tx_sequence_number);
        let owner = broker.owner_of(&queue.name).unwrap_or(d.partition);
        let state = broker.incoming_sequence(owner, (msg.user.source_queue_manager, queue.id));
        if state.seq_id == seq_id && state.seq_no != 0 {
            records.push(Owed::StreamReceipt {
                to,
                stream_qm,
                seq_id,
                last: state.seq_no.min(current),
            });
        }
    }
    Ok((Staged { value, waits }, records))
}

impl<S> Desk<S> {
    /// Keeps `lior_api_receives_waiting` (the broker's counter, over all shards) up to date.
    fn publish_parked(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let (now, was) = (self.parked.len(), self.parked_published);
        let c = &self.broker.counters.api_receives_waiting;
        if now > was {
            c.fetch_add((now - was) as u64, Relaxed);
        } else if was > now {
            c.fetch_sub((was - now) as u64, Relaxed);
        }
        self.parked_published = now;
    }
}

impl<S> Drop for Desk<S> {
    /// The shard stops: answers waiting for the disk get it (a blocking wait is fine now: the
    /// shard's loop has ended), so a receive whose removal becomes durable is never lost to
    /// its caller; parked receives are answered empty.
    fn drop(&mut self) {
        for p in self.parked.drain(..) {
            let _ = p.reply.send(Ok((Vec::new(), false)));
        }
        self.publish_parked();
        let mut owed = std::mem::take(&mut self.owed);
        // Records not stored yet are stored at once by `finish`; those mailed to another
        // shard may be lost with it if it stops first (the answers are given: their removals
        // are durable).
        let mut to_store: HashMap<u64, Vec<Owed>> = self.to_store.drain(..).collect();
        for (id, s) in self.storing.drain() {
            owed.push(Owing {
                waits: Vec::new(),
                answer: s.answer,
                records: to_store.remove(&id).unwrap_or_default(),
            });
        }
        if !owed.is_empty() {
            (self.finish)(&self.broker, owed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn lens_request(reply: Reply<QueueLens>) -> Request {
        Request::Lens { reply }
    }

    #[test]
    fn a_full_channel_is_busy_at_once_and_a_stopped_shard_is_busy() {
        let (tx, mut rx) = channels(2, 1);
        let (w, woken) = std::sync::mpsc::channel();
        let client = ShardClient::new(
            tx,
            1,
            Arc::new(move |s| {
                let _ = w.send(s);
            }),
        );
        let rt = runtime();
        rt.block_on(async {
            // The first request fills shard 1's channel (nobody serves it yet)...
            let c = client.clone();
            let first = tokio::spawn(async move { c.ask(1, lens_request).await });
            tokio::task::yield_now().await;
            // ...so the next is refused at once, naming the limit.
            match client.ask(1, lens_request).await {
                Err(ApiError::Busy(why)) => {
                    assert!(why.contains("limits.api_requests_per_shard_max"), "{why}")
                }
                other => panic!("expected Busy, got {other:?}"),
            }
            // Shard 0's channel is its own.
            let c = client.clone();
            let zero = tokio::spawn(async move { c.ask(0, lens_request).await });
            tokio::task::yield_now().await;
            // The shard serves the first: its answer arrives.
            let Ok(Request::Lens { reply }) = rx[1].try_recv() else {
                panic!("no request at shard 1");
            };
            let _ = reply.send(Ok(QueueLens {
                tx_sequences: 7,
                ..QueueLens::default()
            }));
            assert_eq!(first.await.unwrap().unwrap().tx_sequences, 7);
            // A shard that drops a request without answering (it stopped): Busy.
            drop(rx[0].try_recv().unwrap());
            assert!(matches!(zero.await.unwrap(), Err(ApiError::Busy(_))));
            // A shard whose receiver is gone: Busy at once.
            rx.remove(1);
            assert!(matches!(
                client.ask(1, lens_request).await,
                Err(ApiError::Busy(_))
            ));
        });
        assert_eq!(woken.try_iter().collect::<Vec<_>>(), vec![1, 0]);
    }
}
