//! Delivery of one incoming UserMessage (MS-MQQB 3.1.5.8), whichever shard, API call or SRMP
//! post brings it: expiry on arrival, routing to a local queue (with a route cache), the
//! transactional and duplicate checks, storage in the queue's owning partition, and the
//! dead-letter queue for what cannot be delivered (never dropped without a trace). Also the
//! upkeep of the incoming transactional sequence table.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::qm::catalog::{QueueDef, DEADLETTER_ID, DEADXACT_ID};
use crate::qm::dedup::{KeyedHash, PENDING};
use crate::qm::routing::{route, Route};
use crate::qm::txn::{IncomingSequence, TxKey, TxVerdict};
use crate::store::{
    Class, MessageId, MessageMeta, QueueId, QueueStore, QuotaKind, StoreError, Ticket, EXPIRY_NEVER,
};
use crate::wire::base::INFINITE;
use crate::wire::format_name::SystemQueue;
use crate::wire::headers::MessageClass;
use crate::wire::user::UserMessage;

use super::partition::Partition;
use super::{
    bump, unix_now, Broker, ROUTE_CACHE_MAX, TXN_SWEEP_BATCH_MAX, TX_ACK_REFUSED_LOG_INTERVAL_S,
};

/// Where an incoming message comes from: what `deliver_to_with` checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// This machine (the local API, AMQP, an admin acknowledgement lior built): no rights check.
    Local,
    /// An MS-MQQB session: the rights at the target and TimeToReachQueue are checked.
    Mqqb,
    /// An SRMP post: the rights at the target are checked, TimeToReachQueue is not (MC-MQSRM
    /// 3.1.5.1.4).
    Srmp,
}

/// Where a message comes from and which partitions the caller runs.
#[derive(Clone, Copy)]
struct Source<'a> {
    origin: Origin,
    here: Here<'a>,
}

impl<'a> Source<'a> {
    fn new(origin: Origin, here: Here<'a>) -> Self {
        Source { origin, here }
    }
}

/// What happened to one incoming message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Stored in `queue`; the sender may be acknowledged once `ticket` is durable.
    Stored { queue: u32, ticket: Ticket },
    /// Stored in a dead-letter queue because it could not be delivered; `class` is the NACK
    /// the spec names for it.
    DeadLettered {
        queue: u32,
        ticket: Ticket,
        class: MessageClass,
    },
    /// A duplicate of a message already received: dropped, and acknowledged at session level
    /// once the first copy (in partition `origin.0`, ticket `origin.1`) is durable.
    Duplicate { origin: (usize, Ticket) },
    /// A transactional message out of order or already received: dropped; the OrderAck tells
    /// the sender where the sequence stands.
    TxRejected { origin: (usize, Ticket) },
    /// An OrderAck or FinalAck for our own transactional sends: not stored; the caller hands
    /// the frame to [`Broker::handle_tx_ack`] once it holds no partition lock.
    TxAck,
    /// It cannot be stored now (store poisoned, disk or machine quota full): the session must be
    /// closed so the sender keeps the message and tries again later.
    Refuse(StoreError),
    /// To be stored in dead-letter queue `queue`, whose owning partition
    /// (`Delivered::partition`) the caller does not run: the caller sends
    /// `Delivered::forward` to that partition's shard as mail (`qm::handoff::Mail::Store`),
    /// and the sender is acknowledged once the owner stored it and made it durable.
    Forwarded { queue: u32, class: MessageClass },
}

/// Which partitions the caller runs: a write for any other goes to its shard as mail
/// instead of under the partition's lock. `everywhere` for callers without shards (tests,
/// the API's threads while they still store under locks).
pub type Here<'a> = &'a dyn Fn(usize) -> bool;

/// [`Here`] for a caller that may store in any partition.
pub fn everywhere(_: usize) -> bool {
    true
}

/// The result of [`Broker::deliver`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub verdict: Verdict,
    /// Set for transactional messages: the sequence state to acknowledge with an OrderAck.
    pub order_ack: Option<(TxKey, IncomingSequence)>,
    /// An admin acknowledgement the sender asked for (ACK_REACH_QUEUE or a NACK class).
    pub admin_ack: Option<MessageClass>,
    /// The partition the message was stored in (the owner of its queue or of the dead-letter
    /// queue): a `Stored`/`DeadLettered` ticket is a ticket of this partition, and the caller
    /// commits it.
    pub partition: usize,
    /// For [`Verdict::Forwarded`]: the record to store (the frame as the dead-letter queue
    /// keeps it).
    pub forward: Option<Vec<u8>>,
}

/// Destinations already resolved to a local queue, valid for one catalog generation. Each
/// shard keeps its own (no lock on the message path); a catalog change bumps the generation and
/// every cache starts over at its next look-up.
#[derive(Debug, Default)]
pub struct RouteCache {
    generation: u64,
    /// By the raw UTF-16 bytes of a direct format name (keyed fast hash: looked up per
    /// message, and SipHash over ~60 bytes showed in the profile).
    direct: HashMap<Vec<u8>, Arc<QueueDef>, KeyedHash>,
    /// By private queue number.
    numbers: HashMap<u32, Arc<QueueDef>, KeyedHash>,
}

impl RouteCache {
    fn get(
        &self,
        generation: u64,
        dest: &crate::wire::user::QueueRef<'_>,
    ) -> Option<Arc<QueueDef>> {
        if self.generation != generation {
            return None;
        }
        match dest {
            crate::wire::user::QueueRef::Direct(s) => self.direct.get(s.0).cloned(),
            crate::wire::user::QueueRef::DestinationPrivate(n) => self.numbers.get(n).cloned(),
            _ => None,
        }
    }

    fn put(&mut self, generation: u64, dest: &crate::wire::user::QueueRef<'_>, q: &Arc<QueueDef>) {
        if self.generation != generation
            || self.direct.len() + self.numbers.len() >= ROUTE_CACHE_MAX
        {
            self.direct.clear();
            self.numbers.clear();
            self.generation = generation;
        }
        match dest {
            crate::wire::user::QueueRef::Direct(s) => {
                self.direct.insert(s.0.to_vec(), q.clone());
            }
            crate::wire::user::QueueRef::DestinationPrivate(n) => {
                self.numbers.insert(*n, q.clone());
            }
            _ => {}
        }
    }
}

/// Where an incoming message goes, decided before anything is stored
/// ([`Broker::route_incoming`]), so a shard routes each message once: to pick the shard that
/// stores it and then to store it.
#[derive(Debug)]
pub enum Routed {
    /// An OrderAck or FinalAck for our own sends: taken by the session's shard.
    TxAck,
    Queue(Arc<QueueDef>),
    /// Nowhere here: the dead-letter queue, with the reason.
    Nowhere(String),
}

impl<S: QueueStore> Broker<S> {
    /// Resolves `msg`'s destination: from `cache` when seen before in this catalog generation
    /// (no parsing, no catalog look-up), else from the catalog (a read lock, taken only on a
    /// miss), remembered in `cache`.
    fn route_msg(&self, cache: &mut RouteCache, msg: &UserMessage<'_>) -> Routed {
        let u = &msg.user;
        let generation = self.catalog_generation.load(Ordering::Acquire);
        let ours =
            u.queue_manager_address.is_null() || u.queue_manager_address == self.identity.guid;
        if ours {
            if let Some(q) = cache.get(generation, &u.destination) {
                return Routed::Queue(q);
            }
        }
        let route = route(u, &self.identity);
        match self.resolve(&route) {
            Some(q) => {
                let q = Arc::new(q);
                cache.put(generation, &u.destination, &q);
                Routed::Queue(q)
            }
            None => Routed::Nowhere(match &route {
                Route::NotHere(w) | Route::Unknown(w) => w.clone(),
                Route::Named(n) => format!("no queue named {n}"),
                Route::Number(n) => format!("no private queue number {n:#x}"),
                Route::System(s) => format!("no system queue {s:?}"),
            }),
        }
    }

    pub(super) fn resolve(&self, route: &Route) -> Option<QueueDef> {
        let cat = self.catalog();
        match route {
            Route::Named(n) => cat.lookup(n).cloned(),
            Route::Number(n) => cat.by_id(*n).cloned(),
            Route::System(SystemQueue::DeadLetter) => cat.lookup("deadletter").cloned(),
            Route::System(SystemQueue::DeadXact) => cat.lookup("deadxact").cloned(),
            Route::System(SystemQueue::Journal) => cat.lookup("journal").cloned(),
            Route::NotHere(_) | Route::Unknown(_) => None,
        }
    }

    /// The partition [`Broker::deliver`] would store `msg` in (its queue's owner, or the
    /// dead-letter queue's owner for a message that routes nowhere), without storing it; None
    /// for an OrderAck or FinalAck, which the session's own shard takes. A shard hands a
    /// message whose partition another shard runs to that shard (`qm::handoff`). The owner
    /// may still dead-letter it elsewhere (expired, wrong class, quota): that is its decision.
    pub fn route_partition(&self, routed: &Routed, msg: &UserMessage<'_>) -> Option<usize> {
        match routed {
            Routed::TxAck => None,
            Routed::Queue(q) => Some(self.owner(q)),
            Routed::Nowhere(_) => Some(self.dead_letter_partition(
                if msg.user.flags.transactional() {
                    DEADXACT_ID
                } else {
                    DEADLETTER_ID
                },
            )),
        }
    }

    /// Where `msg` goes (see [`Routed`]), through `cache`, the calling shard's route cache.
    pub fn route_incoming(&self, cache: &mut RouteCache, msg: &UserMessage<'_>) -> Routed {
        if msg.is_order_ack() || msg.is_final_ack() {
            return Routed::TxAck;
        }
        self.route_msg(cache, msg)
    }

    /// [`Broker::deliver_routed`] with the message routed here without a route cache (tests,
    /// tools, local admin acks): the destination is resolved from the catalog. The message is
    /// this machine's own (an admin acknowledgement lior built), so the rights at the target
    /// are not checked.
    pub fn deliver(
        &self,
        frame: &[u8],
        msg: &UserMessage<'_>,
        now_unix: u32,
        now_ms: u64,
    ) -> Delivered {
        let routed = self.route_incoming(&mut RouteCache::default(), msg);
        self.deliver_routed_from(
            routed,
            frame,
            msg,
            now_unix,
            now_ms,
            Source::new(Origin::Local, &everywhere),
        )
    }

    /// Takes one incoming UserMessage (MS-MQQB 3.1.5.8): expiry, routing, the rights at the
    /// target, transactional and duplicate checks, then storage in its queue's owning
    /// partition or a dead-letter queue's.
    /// Locks that one partition itself: call it holding no partition lock. The caller commits
    /// `Delivered::partition`. `routed` is [`Broker::route_incoming`]'s answer for `msg`, a
    /// message that arrived from the network (MS-MQQB).
    pub fn deliver_routed(
        &self,
        routed: Routed,
        frame: &[u8],
        msg: &UserMessage<'_>,
        now_unix: u32,
        now_ms: u64,
    ) -> Delivered {
        self.deliver_routed_here(routed, frame, msg, now_unix, now_ms, &everywhere)
    }

    /// [`Broker::deliver_routed`] for a shard that runs the partitions `here` says: a dead
    /// letter for a partition it does not run is not stored but returned
    /// ([`Verdict::Forwarded`], the record in `Delivered::forward`) for the caller to send to
    /// that partition's shard (`qm::handoff::Mail::Store`).
    pub fn deliver_routed_here(
        &self,
        routed: Routed,
        frame: &[u8],
        msg: &UserMessage<'_>,
        now_unix: u32,
        now_ms: u64,
        here: Here<'_>,
    ) -> Delivered {
        self.deliver_routed_from(
            routed,
            frame,
            msg,
            now_unix,
            now_ms,
            Source::new(Origin::Mqqb, here),
        )
    }

    fn deliver_routed_from(
        &self,
        routed: Routed,
        frame: &[u8],
        msg: &UserMessage<'_>,
        now_unix: u32,
        now_ms: u64,
        src: Source<'_>,
    ) -> Delivered {
        let Source { origin, here } = src;
        match routed {
            Routed::TxAck => Delivered {
                verdict: Verdict::TxAck,
                order_ack: None,
                admin_ack: None,
                partition: 0,
                forward: None,
            },
            Routed::Queue(q) => {
                self.deliver_to_with(frame, msg, &q, now_unix, now_ms, Source::new(origin, here))
            }
            Routed::Nowhere(why) => {
                self.dead_letter(here, frame, msg, MessageClass::NACK_BAD_DST_Q, &why)
            }
        }
    }

    /// [`Broker::deliver`] for a shard that runs the partitions `here` says (a message this
    /// machine built, `routed` by [`Broker::route_incoming`]): a dead letter for another
    /// shard's partition comes back as [`Verdict::Forwarded`].
    pub fn deliver_local_here(
        &self,
        routed: Routed,
        frame: &[u8],
        msg: &UserMessage<'_>,
        now_unix: u32,
        now_ms: u64,
        here: Here<'_>,
    ) -> Delivered {
        self.deliver_routed_from(
            routed,
            frame,
            msg,
            now_unix,
            now_ms,
            Source::new(Origin::Local, here),
        )
    }

    /// Delivers a message of this machine (the local API, AMQP) whose queue is already known;
    /// the rights at the target are not checked (see `qm::rights`). Locks the queue's owning
    /// partition (or the dead-letter queue's) itself.
    pub fn deliver_to(
        &self,
        frame: &[u8],
        msg: &UserMessage<'_>,
        queue: &QueueDef,
        now_unix: u32,
        now_ms: u64,
    ) -> Delivered {
        self.deliver_to_with(
            frame,
            msg,
            queue,
            now_unix,
            now_ms,
            Source::new(Origin::Local, &everywhere),
        )
    }

    /// [`Broker::deliver_to`] for a message that arrived over SRMP: its TimeToReachQueue
    /// (`<TTrq>`, or `<expiresAt>` minus `<sentAt>`) is checked by the sender while sending and
    /// "not checked while processing a received message" (MC-MQSRM 3.1.5.1.4), so a sender
    /// whose clock or `<sentAt>` lies in the past is not dead-lettered on arrival. (MC-MQSRM
    /// 2.2.5.1.1 also says an expired message "MUST be discarded"; the processing rule of
    /// 3.1.5.1.4 is followed.) The rights at the target are checked.
    pub fn deliver_to_over_srmp(
        &self,
        frame: &[u8],
        msg: &UserMessage<'_>,
        queue: &QueueDef,
        now_unix: u32,
        now_ms: u64,
    ) -> Delivered {
        self.deliver_to_with(
            frame,
            msg,
            queue,
            now_unix,
            now_ms,
            Source::new(Origin::Srmp, &everywhere),
        )
    }

    fn deliver_to_with(
        &self,
        frame: &[u8],
        msg: &UserMessage<'_>,
        queue: &QueueDef,
        now_unix: u32,
        now_ms: u64,
        src: Source<'_>,
    ) -> Delivered {
        let Source { origin, here } = src;
        let check_reach_time = origin != Origin::Srmp;
        let u = &msg.user;
        let transactional = u.flags.transactional();
        let acks = msg.properties.flags;
        let partition = self.owner(queue);
        // MS-MQQB 3.1.5.8.3 at the target: a signature is verified with the certificate the
        // message carries and the result kept in the stored SecurityHeader.Flags.AS, as Windows
        // does (`security::stored_authentication`); a bad one is refused (NACK_BAD_SIGNATURE,
        // which the admin-ack path sends only under PermitInsecureNacks).
        let judged =
            match crate::security::judge_arrival(frame, msg, &self.config.parameters.security) {
                Ok(j) => j,
                Err(why) => {
                    return self.dead_letter(
                        here,
                        frame,
                        msg,
                        MessageClass::NACK_BAD_SIGNATURE,
                        &why,
                    )
                }
            };
        // Rights at the target (MS-MQQB 3.1.5.8.3): encrypted bodies, Authenticate, send right,
        // with the identity the signature proved.
        if origin != Origin::Local {
            if let Some(refused) = self.refuse_at_target(
                here,
                frame,
                msg,
                queue,
                partition,
                judged.authenticated.as_ref(),
            ) {
                return refused;
            }
        }
        let frame: &[u8] = &judged.frame;
        let mut out = Delivered {
            verdict: Verdict::Duplicate {
                origin: (0, Ticket::IMMEDIATE),
            },
            order_ack: None,
            admin_ack: None,
            partition,
            forward: None,
        };
        // TimeToReachQueue, checked after routing as MS-MQQB 3.1.5.8 orders the steps. The spec
        // has the receiver ignore an expired message; lior keeps it in the dead-letter queue
        // instead, so nothing is dropped without a trace.
        let ttrq = msg.base.time_to_reach_queue;
        if check_reach_time
            && ttrq != INFINITE
            && u.sent_time != 0
            && now_unix.saturating_sub(u.sent_time) > ttrq
        {
            bump(&self.counters.expired_on_arrival);
            return self.dead_letter(
                here,
                frame,
                msg,
                MessageClass::NACK_REACH_QUEUE_TIMEOUT,
                &format!(
                    "expired before reaching queue {} (sent {} s ago, TimeToReachQueue {} s)",
                    queue.name,
                    now_unix.saturating_sub(u.sent_time),
                    ttrq
                ),
            );
        }
        if transactional && !queue.transactional {
            return self.dead_letter(
                here,
                frame,
                msg,
                MessageClass::NACK_NOT_TRANSACTIONAL_Q,
                &format!(
                    "transactional message for non-transactional queue {}",
                    queue.name
                ),
            );
        }
        if !transactional && queue.transactional {
            return self.dead_letter(
                here,
                frame,
                msg,
                MessageClass::NACK_NOT_TRANSACTIONAL_MSG,
                &format!(
                    "non-transactional message for transactional queue {}",
                    queue.name
                ),
            );
        }
        // One step of the queue's owner from the transactional and duplicate checks to the
        // append and the recorded state: the queue's order is the order of its appends, an
        // accepted message always gets its state, and the tables (the partition's own) are
        // never seen half-updated.
        let mut part = self.partition(out.partition);
        let key = (u.source_queue_manager, queue.id);
        let mut tx_state = None;
        if let (true, Some(th)) = (transactional, msg.transaction) {
            let seq_id = th.tx_sequence_id;
            let txn = &mut part.txn;
            let mut verdict = txn.check(
                key,
                seq_id,
                th.tx_sequence_number,
                th.previous_tx_sequence_number,
            );
            if verdict == TxVerdict::Accept && !txn.has_room(&key, now_unix) {
                // Full of recently active sequences: refused, not stored without its state
                // (which would store it again on every resend). The sender resends later.
                verdict = TxVerdict::Reject;
                self.log_txn_full(txn.len());
            }
            if verdict == TxVerdict::Reject {
                bump(&self.counters.tx_rejected);
                let state = txn.get(&key);
                out.verdict = Verdict::TxRejected {
                    origin: (state.origin.0, Ticket(state.origin.1)),
                };
                out.order_ack = Some((key, state));
                return out;
            }
            tx_state = Some((seq_id, th.tx_sequence_number));
        }
        // The duplicate table is the owner's (one per partition): the look-up, the append and
        // the recorded place happen in one step of the owner, so no copy ever sees another
        // copy's entry without its place (the race `tests/dedup_race.rs` pins cannot be
        // written).
        let dedup_key = (crate::qm::fanout::dedup_source(msg, queue.id), u.message_id);
        if tx_state.is_none() {
            if let Some(origin) = part.dedup.check_and_insert(dedup_key, now_ms, PENDING) {
                debug_assert!(origin != PENDING, "a duplicate-table entry left pending");
                bump(&self.counters.duplicates_dropped);
                out.verdict = Verdict::Duplicate {
                    origin: (origin.0, Ticket(origin.1)),
                };
                return out;
            }
        }
        let stored = self.store(&mut part, queue.id, frame, msg);
        if tx_state.is_none() {
            match stored {
                Ok(ticket) => {
                    let origin = (part.index, ticket.0);
                    part.dedup.set_origin(&dedup_key, origin)
                }
                // Not stored: a resend must be taken, not dropped as a duplicate.
                Err(_) => part.dedup.remove(&dedup_key),
            }
        }
        match stored {
            Ok(ticket) => {
                bump(&self.counters.messages_stored);
                self.counters
                    .bytes_stored
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
                out.verdict = Verdict::Stored {
                    queue: queue.id,
                    ticket,
                };
                if let Some((seq_id, seq_no)) = tx_state {
                    let origin = (part.index, ticket.0);
                    match part.txn.commit(key, seq_id, seq_no, origin, now_unix) {
                        Ok(s) => {
                            part.txn_dirty.insert(key, s);
                            out.order_ack = Some((key, s));
                        }
                        // Room was made above, in the same step.
                        Err(_) => self.log_txn_full(part.txn.len()),
                    }
                    let evicted = part.txn.take_evicted();
                    part.txn_forget.extend(evicted);
                }
                if acks.positive_arrival() {
                    out.admin_ack = Some(MessageClass::ACK_REACH_QUEUE);
                }
                out
            }
            Err(StoreError::Quota {
                kind: QuotaKind::QueueBytes | QuotaKind::QueueMessages,
                used,
                limit,
            }) => {
                // A full queue: NACK_Q_EXCEED_QUOTA; the message goes to our dead-letter queue
                // if the sender asked for negative journaling (MS-MQQB 3.1.5.8.8).
                if crate::ratelog::QUOTA.allow() {
                    tracing::info!(queue = %queue.name, used, limit, "queue quota exceeded (limits.queue_messages_max or the queue's quota)");
                }
                if u.flags.journal_negative() && !transactional {
                    // The dead-letter queue has its own owner: one partition lock at a time.
                    drop(part);
                    self.dead_letter(here, frame, msg, MessageClass::NACK_Q_EXCEED_QUOTA, "quota")
                } else {
                    bump(&self.counters.nacks_owed);
                    Delivered {
                        verdict: Verdict::DeadLettered {
                            queue: queue.id,
                            ticket: Ticket::IMMEDIATE,
                            class: MessageClass::NACK_Q_EXCEED_QUOTA,
                        },
                        order_ack: None,
                        admin_ack: Some(MessageClass::NACK_Q_EXCEED_QUOTA)
                            .filter(|_| acks.negative_arrival()),
                        partition: out.partition,
                        forward: None,
                    }
                }
            }
            Err(e) => {
                bump(&self.counters.refused_store_errors);
                Delivered {
                    verdict: Verdict::Refuse(e),
                    order_ack: None,
                    admin_ack: None,
                    partition: out.partition,
                    forward: None,
                }
            }
        }
    }

    pub(super) fn store(
        &self,
        part: &mut Partition<S>,
        queue: u32,
        frame: &[u8],
        msg: &UserMessage<'_>,
    ) -> Result<Ticket, StoreError> {
        let meta = message_meta(msg);
        let (used, _) = part.store.queue_len(QueueId(queue));
        let limit = self.config.limits.queue_messages_max;
        if used >= limit {
            return Err(StoreError::Quota {
                kind: QuotaKind::QueueMessages,
                used,
                limit,
            });
        }
        // A full commit batch is submitted by the store itself (it never returns BatchFull for
        // a message that fits a batch), so three 3 MB messages in one turn are all stored.
        part.store
            .append(QueueId(queue), &meta, frame)
            .map(|a| a.ticket)
    }

    /// Stores `frame` in the dead-letter queue (transactional or not) at that queue's owner;
    /// locks that partition itself.
    pub(super) fn dead_letter(
        &self,
        here: Here<'_>,
        frame: &[u8],
        msg: &UserMessage<'_>,
        class: MessageClass,
        why: &str,
    ) -> Delivered {
        let dlq = if msg.user.flags.transactional() {
            DEADXACT_ID
        } else {
            DEADLETTER_ID
        };
        let acks = msg.properties.flags;
        let admin_ack = (acks.negative_arrival()).then_some(class);
        let has_admin_queue = msg.user.admin.code() != 0;
        // One line per message would let a sender fill the disk with log: rate-limited, with
        // a summary of what was left out (the dead_lettered counter has every one).
        if crate::ratelog::DEAD_LETTER.allow() {
            tracing::warn!(
                source = %msg.user.source_queue_manager,
                id = msg.user.message_id,
                nack = ?class,
                nack_requested = acks.negative_arrival(),
                admin_queue = has_admin_queue,
                "undeliverable message moved to the dead-letter queue: {why}"
            );
        }
        let pi = self.dead_letter_partition(dlq);
        let frame = crate::security::clear_claimed_authentication(frame, msg);
        if !here(pi) {
            // The dead-letter queue's owner stores it when the mail arrives (counted here, as
            // a dead letter stored here is).
            bump(&self.counters.dead_lettered);
            if admin_ack.is_some() && has_admin_queue {
                bump(&self.counters.nacks_owed);
            }
            return Delivered {
                verdict: Verdict::Forwarded { queue: dlq, class },
                order_ack: None,
                admin_ack,
                partition: pi,
                forward: Some(frame.into_owned()),
            };
        }
        let stored = self.store(&mut self.partition(pi), dlq, &frame, msg);
        match stored {
            Ok(ticket) => {
                bump(&self.counters.dead_lettered);
                if admin_ack.is_some() && has_admin_queue {
                    bump(&self.counters.nacks_owed);
                }
                Delivered {
                    verdict: Verdict::DeadLettered {
                        queue: dlq,
                        ticket,
                        class,
                    },
                    order_ack: None,
                    admin_ack,
                    partition: pi,
                    forward: None,
                }
            }
            Err(e) => {
                bump(&self.counters.refused_store_errors);
                Delivered {
                    verdict: Verdict::Refuse(e),
                    order_ack: None,
                    admin_ack: None,
                    partition: pi,
                    forward: None,
                }
            }
        }
    }

    /// The owning partition of dead-letter queue `dlq` (DEADLETTER_ID or DEADXACT_ID).
    pub(super) fn dead_letter_partition(&self, dlq: u32) -> usize {
        self.catalog()
            .by_id(dlq)
            .map_or(dlq as usize % self.partitions.len(), |q| self.owner(q))
    }

    /// Logs (once a minute) that the transactional sequence table is full.
    fn log_txn_full(&self, len: usize) {
        bump(&self.counters.tx_table_full);
        let now = unix_now();
        let last = self.txn_full_logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= TX_ACK_REFUSED_LOG_INTERVAL_S
            && self
                .txn_full_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                states = len,
                "transactional sequence table full (limits.tx_sequences_max = {}); messages \
                 starting new sequences are refused until states idle for \
                 limits.tx_sequence_evict_idle_s = {} s can be evicted; raise the limit if \
                 these senders are legitimate",
                self.config.limits.tx_sequences_max,
                self.config.limits.tx_sequence_evict_idle_s
            );
        }
    }

    /// Forgets partition `i`'s transactional sequence states idle past their time (bounded
    /// work per call); their records go at the partition's next commit. Run by its owner.
    pub fn sweep_txn(&self, i: usize, now_unix: u32) {
        let mut part = self.partition(i);
        part.txn.sweep(now_unix, TXN_SWEEP_BATCH_MAX);
        let evicted = part.txn.take_evicted();
        part.txn_forget.extend(evicted);
    }

    /// Transactional sequence states kept now, over every partition (for metrics).
    pub fn txn_len(&self) -> usize {
        (0..self.partition_count())
            .map(|i| self.partition(i).txn.len())
            .sum()
    }
}

/// The store metadata of a message we built.
pub fn message_meta(m: &UserMessage<'_>) -> MessageMeta {
    let u = &m.user;
    let mut id = [0u8; 20];
    id[..16].copy_from_slice(&u.source_queue_manager.0);
    id[16..].copy_from_slice(&u.message_id.to_le_bytes());
    MessageMeta {
        priority: m.base.flags.priority(),
        class: if u.flags.transactional() {
            Class::Transactional
        } else if u.flags.recoverable() {
            Class::Recoverable
        } else {
            Class::Express
        },
        message_id: MessageId(id),
        expiry_unix_s: if u.time_to_be_received == INFINITE {
            EXPIRY_NEVER
        } else {
            u.sent_time
                .saturating_add(u.time_to_be_received)
                .min(EXPIRY_NEVER - 1)
        },
    }
}
