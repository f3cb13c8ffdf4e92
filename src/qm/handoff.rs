//! What shards say to each other over the mesh (`engine/mesh.rs`) when a message arrives on one
//! shard for a queue another shard owns: the message goes to its owner ([`Mail::Deliver`]), and
//! the owner says where it put it ([`Mail::Placed`]), so the receiving session acknowledges only
//! what the owner made durable. Safe code only: a record is a fixed little-endian head (this
//! module) plus, for a delivery, the frame as the record's body.
//!
//! A head is decoded with the same care as bytes from the network (a short or unknown head is an
//! error, never a panic), though only lior's own shards write them.

use crate::engine::net::ConnId;
use crate::qm::broker::AckSource;
use crate::qm::txn::{IncomingSequence, TxKey};
use crate::store::Ticket;
use crate::wire::Guid;

const TAG_DELIVER: u8 = 1;
const TAG_PLACED: u8 = 2;
const TAG_STORE: u8 = 3;
const TAG_ORDER_ACKED: u8 = 4;
const TAG_FINAL_ACK_PEER: u8 = 5;
// Branch amqpown: AMQP links on a shard that does not own their queue.
const TAG_AMQP_PRODUCE: u8 = 6;
const TAG_AMQP_PRODUCED: u8 = 7;
const TAG_AMQP_FETCH: u8 = 8;
const TAG_AMQP_FETCHED: u8 = 9;
const TAG_AMQP_SETTLE: u8 = 10;
const TAG_AMQP_WAKE: u8 = 11;
const TAG_FINAL_ACKED: u8 = 12;

/// The bit set in [`ReplyTo::seq`] of the requests of a shard's AMQP app (so an answer that
/// comes back as [`Mail::Placed`] goes to the AMQP app, not to an MS-MQQB session).
pub const AMQP_REPLY_BIT: u64 = 1 << 63;

/// What a [`Mail::Store`] record is, and so how its owner stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// A copy for a dead-letter queue (DEADLETTER or DEADXACT) the receiver owns: appended
    /// as it is (the decision was taken by the sender), counted as a dead letter.
    DeadLetter,
    /// A message for an outgoing queue the receiver sends (an admin acknowledgement for a
    /// remote admin queue): appended under `limits.outgoing_queue_messages_max`.
    Outgoing,
    /// A message this machine built for one of its own queues (an admin acknowledgement for
    /// a local admin queue): delivered as a local message (routing, quota, dead letter).
    Local,
    /// A FinalAck for the outgoing queue to its sender (branch deskown): appended like
    /// [`StoreKind::Outgoing`], counted in `lior_final_acks_sent_total`.
    FinalAck,
    /// A copy for the machine journal (`SYSTEM$;JOURNAL`, branch deskown): under
    /// `MachineJournalQuota`, never expiring, counted in `lior_journal_copies_total`.
    MachineJournal,
    /// An SRMP stream receipt for the outgoing HTTP queue to its sender (branch deskown):
    /// appended like [`StoreKind::Outgoing`], counted in `lior_srmp_stream_receipts_queued_total`.
    StreamReceipt,
}

impl StoreKind {
    fn code(self) -> u8 {
        match self {
            StoreKind::DeadLetter => 1,
            StoreKind::Outgoing => 2,
            StoreKind::Local => 3,
            StoreKind::FinalAck => 4,
            StoreKind::MachineJournal => 5,
            StoreKind::StreamReceipt => 6,
        }
    }
    fn from_code(c: u8) -> Result<StoreKind, BadMail> {
        match c {
            1 => Ok(StoreKind::DeadLetter),
            2 => Ok(StoreKind::Outgoing),
            3 => Ok(StoreKind::Local),
            4 => Ok(StoreKind::FinalAck),
            5 => Ok(StoreKind::MachineJournal),
            6 => Ok(StoreKind::StreamReceipt),
            _ => Err(BadMail),
        }
    }
}

/// Which session of which shard waits for the answer, and which of its hand-offs this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    pub shard: u32,
    pub conn: ConnId,
    /// The sending shard's hand-off number (unique per shard while the shard runs).
    pub seq: u64,
}

/// Where the owner put a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Stored (or dead-lettered) at `ticket` of `partition`, or, for a duplicate or a refused
    /// transactional message, where its first copy or its sequence's last message stands: the
    /// session acknowledges it once that ticket is durable (`Ticket::IMMEDIATE`: at once).
    At { partition: u32, ticket: Ticket },
    /// The store refused it (poisoned, disk full, machine quota): the session closes without
    /// acknowledging it, so the sender keeps it.
    Refused,
}

/// What the owner of a queue did with an AMQP producer's message ([`Mail::AmqpProduced`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmqpVerdict {
    /// Stored (or its first copy stored) at `ticket` of `partition`: `accepted` once durable.
    Stored { partition: u32, ticket: Ticket },
    /// Moved to a dead-letter queue (`class`, a MessageClass): `rejected` once `ticket` of
    /// `partition` is durable (`Ticket::IMMEDIATE` when the copy went to yet another shard).
    DeadLettered {
        class: u16,
        partition: u32,
        ticket: Ticket,
    },
    /// Not stored: the queue or the machine is over its quota.
    RefusedQuota,
    /// Not stored: the store refused it (poisoned, disk full) or the queue is gone.
    Refused,
}

/// A consumer's outcome for a message, carried to the queue's owner ([`Mail::AmqpSettle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmqpSettlement {
    /// Removed (a copy to the journal first when the queue keeps one).
    Accepted,
    /// Moved to the dead-letter queue (the copy durable before the original goes).
    Rejected,
    /// Put back (`failed`: counted as a failed delivery).
    Released { failed: bool },
}

impl AmqpSettlement {
    fn code(self) -> u8 {
        match self {
            AmqpSettlement::Accepted => 1,
            AmqpSettlement::Rejected => 2,
            AmqpSettlement::Released { failed: false } => 3,
            AmqpSettlement::Released { failed: true } => 4,
        }
    }
    fn from_code(c: u8) -> Result<Self, BadMail> {
        Ok(match c {
            1 => AmqpSettlement::Accepted,
            2 => AmqpSettlement::Rejected,
            3 => AmqpSettlement::Released { failed: false },
            4 => AmqpSettlement::Released { failed: true },
            _ => return Err(BadMail),
        })
    }
}

/// One piece of mail between shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mail<'a> {
    /// A UserMessage for a queue the receiving shard owns; `frame` is the packet as received.
    Deliver {
        reply: ReplyTo,
        now_unix: u32,
        frame: &'a [u8],
    },
    /// The owner's answer to a [`Mail::Deliver`], with the sequence state to acknowledge with
    /// an OrderAck for a transactional message.
    Placed {
        reply: ReplyTo,
        placement: Placement,
        order_ack: Option<(TxKey, IncomingSequence)>,
    },
    /// "Store this record in this queue you own": a write another shard decided (a dead
    /// letter decided under its queue's state, an admin acknowledgement, any system copy).
    /// `partition` is the receiver's partition holding `queue`; with `reply`, the receiver
    /// answers that session with a [`Mail::Placed`] (a dead letter its sender waits for).
    Store {
        reply: Option<ReplyTo>,
        kind: StoreKind,
        queue: u32,
        partition: u32,
        now_unix: u32,
        frame: &'a [u8],
    },
    /// An OrderAck for our transactional sends as it arrived on another shard (MS-MQQB
    /// 3.1.5.6), not verified: the receiver verifies it against the outgoing sequences of the
    /// partitions it runs (sent to `from`? numbers sent?) and removes what it acknowledges
    /// there. It passes from shard to shard: `taken` says whether a shard before took it,
    /// `hops_left` how many shards (this one included) have still to look; the last counts it
    /// as received or refused.
    OrderAcked {
        from: AckSource,
        seq_id: u64,
        number: u32,
        taken: bool,
        hops_left: u32,
    },
    /// A transactional message of `sender` asking for a FinalAck came from `ip` on a session
    /// of the sending shard, for a queue of the receiver's partition `partition`: that
    /// partition's FinalAck address table notes it (`qm::broker::final_acks`). Sent ahead of
    /// the message's [`Mail::Deliver`] on the same lane (branch deskown).
    FinalAckPeer {
        partition: u32,
        sender: Guid,
        ip: std::net::IpAddr,
    },
    // Branch amqpown: AMQP links on a shard that does not own their queue.
    /// An AMQP producer's message (`frame`, mapped to MSMQ) for queue `queue`, which the
    /// receiver owns: stored as a local message, answered with [`Mail::AmqpProduced`].
    AmqpProduce {
        reply: ReplyTo,
        queue: u32,
        now_unix: u32,
        frame: &'a [u8],
    },
    /// The owner's answer to [`Mail::AmqpProduce`].
    AmqpProduced {
        reply: ReplyTo,
        verdict: AmqpVerdict,
    },
    /// A consumer link `link` of `reply`'s connection has `credit`: the owner of `queue` takes
    /// up to that many messages (into its in-flight set, unless `browse`; removed first when
    /// `presettled`) and answers with one [`Mail::AmqpFetched`] each, the last marked. A
    /// browse link walks on from `cursor` (priority, lookup id of the last message it saw).
    AmqpFetch {
        reply: ReplyTo,
        queue: u32,
        link: u32,
        credit: u32,
        browse: bool,
        presettled: bool,
        cursor: Option<(u8, u64)>,
    },
    /// One answer to [`Mail::AmqpFetch`]: a message (`frame` as stored, its lookup id, the
    /// priority its browse cursor stands at after it, and its failed deliveries), or none
    /// (`frame` empty). `held`: the owner holds it in its in-flight set for this consumer (to
    /// be settled with [`Mail::AmqpSettle`], or released should the link be gone). `last`
    /// ends the answer; an empty last one means "nothing more now": the owner mails
    /// [`Mail::AmqpWake`] when something arrives.
    AmqpFetched {
        reply: ReplyTo,
        queue: u32,
        link: u32,
        lookup: u64,
        priority: u8,
        failed: u32,
        last: bool,
        held: bool,
        frame: &'a [u8],
    },
    /// A consumer's outcome for message `lookup` of `queue`, which the receiver owns and holds
    /// in its in-flight set (one way: the owner removes, returns or dead-letters it).
    AmqpSettle {
        queue: u32,
        lookup: u64,
        settlement: AmqpSettlement,
    },
    /// Something arrived in the queue consumer link `link` asked for: ask again.
    AmqpWake { reply: ReplyTo, link: u32 },
    /// A FinalAck for one of our transactional messages (MS-MQQB 3.1.5.7; `frame` the ack
    /// packet as it arrived on `from`), which no partition of the shards before held: the
    /// receiver looks for the message it names in the partitions it runs (awaiting queue,
    /// outgoing queues) and takes it there, or sends it on; `hops_left` shards (this one
    /// included) have still to look, and the last counts it unmatched.
    FinalAcked {
        from: AckSource,
        hops_left: u32,
        frame: &'a [u8],
    },
}

/// A head too short, or with an unknown tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadMail;

/// The longest head [`Mail::encode_head`] writes.
pub const HEAD_MAX: usize = 96;

struct W<'b> {
    buf: &'b mut [u8; HEAD_MAX],
    at: usize,
}

impl W<'_> {
    fn put(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
}

struct R<'b> {
    buf: &'b [u8],
}

impl<'b> R<'b> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], BadMail> {
        let (h, t) = self.buf.split_at_checked(N).ok_or(BadMail)?;
        self.buf = t;
        h.try_into().map_err(|_| BadMail)
    }
    fn u8(&mut self) -> Result<u8, BadMail> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, BadMail> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, BadMail> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

/// An ack's session (`AckSource`): the peer's GUID, its address (v4 mapped into 16 bytes,
/// with the family), and the outgoing queue the session carries, if ours.
fn put_source(w: &mut W<'_>, from: &AckSource) {
    w.put(&from.remote_qm.0);
    match from.ip {
        std::net::IpAddr::V4(a) => {
            w.put(&[4]);
            w.put(&a.to_ipv6_mapped().octets());
        }
        std::net::IpAddr::V6(a) => {
            w.put(&[6]);
            w.put(&a.octets());
        }
    }
    match from.outgoing {
        None => w.put(&[0]),
        Some(q) => {
            w.put(&[1]);
            w.put(&q.to_le_bytes());
        }
    }
}

fn get_source(r: &mut R<'_>) -> Result<AckSource, BadMail> {
    let remote_qm = Guid(r.take::<16>()?);
    let family = r.u8()?;
    let octets = std::net::Ipv6Addr::from(r.take::<16>()?);
    let ip = match family {
        4 => std::net::IpAddr::V4(octets.to_ipv4_mapped().ok_or(BadMail)?),
        6 => std::net::IpAddr::V6(octets),
        _ => return Err(BadMail),
    };
    let outgoing = match r.u8()? {
        0 => None,
        1 => Some(r.u32()?),
        _ => return Err(BadMail),
    };
    Ok(AckSource {
        remote_qm,
        ip,
        outgoing,
    })
}

fn put_reply(w: &mut W<'_>, r: &ReplyTo) {
    w.put(&r.shard.to_le_bytes());
    w.put(&r.conn.slot.to_le_bytes());
    w.put(&r.conn.generation.to_le_bytes());
    w.put(&r.seq.to_le_bytes());
}

fn get_reply(r: &mut R<'_>) -> Result<ReplyTo, BadMail> {
    Ok(ReplyTo {
        shard: r.u32()?,
        conn: ConnId {
            slot: r.u32()?,
            generation: r.u32()?,
        },
        seq: r.u64()?,
    })
}

impl<'a> Mail<'a> {
    /// Writes the head into `buf`; returns its length and the body to send after it.
    pub fn encode_head(&self, buf: &mut [u8; HEAD_MAX]) -> (usize, &'a [u8]) {
        let mut w = W { buf, at: 0 };
        match *self {
            Mail::Deliver {
                reply,
                now_unix,
                frame,
            } => {
                w.put(&[TAG_DELIVER]);
                put_reply(&mut w, &reply);
                w.put(&now_unix.to_le_bytes());
                (w.at, frame)
            }
            Mail::Placed {
                reply,
                placement,
                order_ack,
            } => {
                w.put(&[TAG_PLACED]);
                put_reply(&mut w, &reply);
                match placement {
                    Placement::At { partition, ticket } => {
                        w.put(&[1]);
                        w.put(&partition.to_le_bytes());
                        w.put(&ticket.0.to_le_bytes());
                    }
                    Placement::Refused => w.put(&[0]),
                }
                match order_ack {
                    None => w.put(&[0]),
                    Some(((guid, queue), s)) => {
                        w.put(&[1]);
                        w.put(&guid.0);
                        w.put(&queue.to_le_bytes());
                        w.put(&s.seq_id.to_le_bytes());
                        w.put(&s.seq_no.to_le_bytes());
                        w.put(&s.reject_count.to_le_bytes());
                        w.put(&(s.origin.0 as u32).to_le_bytes());
                        w.put(&s.origin.1.to_le_bytes());
                        match s.prior {
                            None => w.put(&[0]),
                            Some((id, no)) => {
                                w.put(&[1]);
                                w.put(&id.to_le_bytes());
                                w.put(&no.to_le_bytes());
                            }
                        }
                    }
                }
                (w.at, &[])
            }
            Mail::Store {
                reply,
                kind,
                queue,
                partition,
                now_unix,
                frame,
            } => {
                w.put(&[TAG_STORE]);
                match reply {
                    None => w.put(&[0]),
                    Some(r) => {
                        w.put(&[1]);
                        put_reply(&mut w, &r);
                    }
                }
                w.put(&[kind.code()]);
                w.put(&queue.to_le_bytes());
                w.put(&partition.to_le_bytes());
                w.put(&now_unix.to_le_bytes());
                (w.at, frame)
            }
            Mail::OrderAcked {
                from,
                seq_id,
                number,
                taken,
                hops_left,
            } => {
                w.put(&[TAG_ORDER_ACKED]);
                put_source(&mut w, &from);
                w.put(&seq_id.to_le_bytes());
                w.put(&number.to_le_bytes());
                w.put(&[u8::from(taken)]);
                w.put(&hops_left.to_le_bytes());
                (w.at, &[])
            }
            Mail::FinalAckPeer {
                partition,
                sender,
                ip,
            } => {
                w.put(&[TAG_FINAL_ACK_PEER]);
                w.put(&partition.to_le_bytes());
                w.put(&sender.0);
                match ip {
                    std::net::IpAddr::V4(a) => {
                        w.put(&[4]);
                        w.put(&a.octets());
                    }
                    std::net::IpAddr::V6(a) => {
                        w.put(&[6]);
                        w.put(&a.octets());
                    }
                }
                (w.at, &[])
            }
            Mail::AmqpProduce {
                reply,
                queue,
                now_unix,
                frame,
            } => {
                w.put(&[TAG_AMQP_PRODUCE]);
                put_reply(&mut w, &reply);
                w.put(&queue.to_le_bytes());
                w.put(&now_unix.to_le_bytes());
                (w.at, frame)
            }
            Mail::AmqpProduced { reply, verdict } => {
                w.put(&[TAG_AMQP_PRODUCED]);
                put_reply(&mut w, &reply);
                let (code, class, partition, ticket) = match verdict {
                    AmqpVerdict::Stored { partition, ticket } => (1u8, 0u16, partition, ticket),
                    AmqpVerdict::DeadLettered {
                        class,
                        partition,
                        ticket,
                    } => (2, class, partition, ticket),
                    AmqpVerdict::RefusedQuota => (3, 0, 0, Ticket(0)),
                    AmqpVerdict::Refused => (4, 0, 0, Ticket(0)),
                };
                w.put(&[code]);
                w.put(&class.to_le_bytes());
                w.put(&partition.to_le_bytes());
                w.put(&ticket.0.to_le_bytes());
                (w.at, &[])
            }
            Mail::AmqpFetch {
                reply,
                queue,
                link,
                credit,
                browse,
                presettled,
                cursor,
            } => {
                w.put(&[TAG_AMQP_FETCH]);
                put_reply(&mut w, &reply);
                w.put(&queue.to_le_bytes());
                w.put(&link.to_le_bytes());
                w.put(&credit.to_le_bytes());
                w.put(&[u8::from(browse) | (u8::from(presettled) << 1)]);
                match cursor {
                    None => w.put(&[0]),
                    Some((prio, lookup)) => {
                        w.put(&[1, prio]);
                        w.put(&lookup.to_le_bytes());
                    }
                }
                (w.at, &[])
            }
            Mail::AmqpFetched {
                reply,
                queue,
                link,
                lookup,
                priority,
                failed,
                last,
                held,
                frame,
            } => {
                w.put(&[TAG_AMQP_FETCHED]);
                put_reply(&mut w, &reply);
                w.put(&queue.to_le_bytes());
                w.put(&link.to_le_bytes());
                w.put(&lookup.to_le_bytes());
                w.put(&[priority]);
                w.put(&failed.to_le_bytes());
                w.put(&[u8::from(last) | (u8::from(held) << 1)]);
                (w.at, frame)
            }
            Mail::AmqpSettle {
                queue,
                lookup,
                settlement,
            } => {
                w.put(&[TAG_AMQP_SETTLE]);
                w.put(&queue.to_le_bytes());
                w.put(&lookup.to_le_bytes());
                w.put(&[settlement.code()]);
                (w.at, &[])
            }
            Mail::AmqpWake { reply, link } => {
                w.put(&[TAG_AMQP_WAKE]);
                put_reply(&mut w, &reply);
                w.put(&link.to_le_bytes());
                (w.at, &[])
            }
            Mail::FinalAcked {
                from,
                hops_left,
                frame,
            } => {
                w.put(&[TAG_FINAL_ACKED]);
                put_source(&mut w, &from);
                w.put(&hops_left.to_le_bytes());
                (w.at, frame)
            }
        }
    }

    /// Reads a record: its head and its body.
    pub fn decode(head: &[u8], body: &'a [u8]) -> Result<Mail<'a>, BadMail> {
        let mut r = R { buf: head };
        match r.u8()? {
            TAG_DELIVER => Ok(Mail::Deliver {
                reply: get_reply(&mut r)?,
                now_unix: r.u32()?,
                frame: body,
            }),
            TAG_PLACED => {
                let reply = get_reply(&mut r)?;
                let placement = match r.u8()? {
                    0 => Placement::Refused,
                    1 => Placement::At {
                        partition: r.u32()?,
                        ticket: Ticket(r.u64()?),
                    },
                    _ => return Err(BadMail),
                };
                let order_ack = match r.u8()? {
                    0 => None,
                    1 => {
                        let guid = Guid(r.take::<16>()?);
                        let queue = r.u32()?;
                        let seq_id = r.u64()?;
                        let seq_no = r.u32()?;
                        let reject_count = r.u32()?;
                        let origin = (r.u32()? as usize, r.u64()?);
                        let prior = match r.u8()? {
                            0 => None,
                            1 => Some((r.u64()?, r.u32()?)),
                            _ => return Err(BadMail),
                        };
                        Some((
                            (guid, queue),
                            IncomingSequence {
                                seq_id,
                                seq_no,
                                reject_count,
                                origin,
                                prior,
                            },
                        ))
                    }
                    _ => return Err(BadMail),
                };
                Ok(Mail::Placed {
                    reply,
                    placement,
                    order_ack,
                })
            }
            TAG_STORE => {
                let reply = match r.u8()? {
                    0 => None,
                    1 => Some(get_reply(&mut r)?),
                    _ => return Err(BadMail),
                };
                Ok(Mail::Store {
                    reply,
                    kind: StoreKind::from_code(r.u8()?)?,
                    queue: r.u32()?,
                    partition: r.u32()?,
                    now_unix: r.u32()?,
                    frame: body,
                })
            }
            TAG_ORDER_ACKED => {
                let from = get_source(&mut r)?;
                Ok(Mail::OrderAcked {
                    from,
                    seq_id: r.u64()?,
                    number: r.u32()?,
                    taken: match r.u8()? {
                        0 => false,
                        1 => true,
                        _ => return Err(BadMail),
                    },
                    hops_left: r.u32()?,
                })
            }
            TAG_FINAL_ACK_PEER => {
                let partition = r.u32()?;
                let sender = Guid(r.take::<16>()?);
                let ip = match r.u8()? {
                    4 => std::net::IpAddr::from(r.take::<4>()?),
                    6 => std::net::IpAddr::from(r.take::<16>()?),
                    _ => return Err(BadMail),
                };
                Ok(Mail::FinalAckPeer {
                    partition,
                    sender,
                    ip,
                })
            }
            TAG_AMQP_PRODUCE => Ok(Mail::AmqpProduce {
                reply: get_reply(&mut r)?,
                queue: r.u32()?,
                now_unix: r.u32()?,
                frame: body,
            }),
            TAG_AMQP_PRODUCED => {
                let reply = get_reply(&mut r)?;
                let code = r.u8()?;
                let class = u16::from_le_bytes(r.take()?);
                let partition = r.u32()?;
                let ticket = Ticket(r.u64()?);
                let verdict = match code {
                    1 => AmqpVerdict::Stored { partition, ticket },
                    2 => AmqpVerdict::DeadLettered {
                        class,
                        partition,
                        ticket,
                    },
                    3 => AmqpVerdict::RefusedQuota,
                    4 => AmqpVerdict::Refused,
                    _ => return Err(BadMail),
                };
                Ok(Mail::AmqpProduced { reply, verdict })
            }
            TAG_AMQP_FETCH => {
                let reply = get_reply(&mut r)?;
                let queue = r.u32()?;
                let link = r.u32()?;
                let credit = r.u32()?;
                let flags = r.u8()?;
                if flags > 3 {
                    return Err(BadMail);
                }
                let cursor = match r.u8()? {
                    0 => None,
                    1 => Some((r.u8()?, r.u64()?)),
                    _ => return Err(BadMail),
                };
                Ok(Mail::AmqpFetch {
                    reply,
                    queue,
                    link,
                    credit,
                    browse: flags & 1 != 0,
                    presettled: flags & 2 != 0,
                    cursor,
                })
            }
            TAG_AMQP_FETCHED => {
                let reply = get_reply(&mut r)?;
                let queue = r.u32()?;
                let link = r.u32()?;
                let lookup = r.u64()?;
                let priority = r.u8()?;
                let failed = r.u32()?;
                let flags = r.u8()?;
                if flags > 3 {
                    return Err(BadMail);
                }
                Ok(Mail::AmqpFetched {
                    reply,
                    queue,
                    link,
                    lookup,
                    priority,
                    failed,
                    last: flags & 1 != 0,
                    held: flags & 2 != 0,
                    frame: body,
                })
            }
            TAG_AMQP_SETTLE => Ok(Mail::AmqpSettle {
                queue: r.u32()?,
                lookup: r.u64()?,
                settlement: AmqpSettlement::from_code(r.u8()?)?,
            }),
            TAG_FINAL_ACKED => Ok(Mail::FinalAcked {
                from: get_source(&mut r)?,
                hops_left: r.u32()?,
                frame: body,
            }),
            TAG_AMQP_WAKE => Ok(Mail::AmqpWake {
                reply: get_reply(&mut r)?,
                link: r.u32()?,
            }),
            _ => Err(BadMail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> ReplyTo {
        ReplyTo {
            shard: 1,
            conn: ConnId {
                slot: 7,
                generation: 9,
            },
            seq: 0x0102_0304_0506_0708,
        }
    }

    fn round_trip(m: Mail<'_>) {
        let mut buf = [0u8; HEAD_MAX];
        let (n, body) = m.encode_head(&mut buf);
        assert_eq!(Mail::decode(&buf[..n], body), Ok(m));
        // Every shorter head is refused, never a panic.
        for cut in 0..n {
            assert_eq!(
                Mail::decode(&buf[..cut], body),
                Err(BadMail),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn every_mail_round_trips_and_short_heads_are_refused() {
        round_trip(Mail::Deliver {
            reply: reply(),
            now_unix: 1_700_000_000,
            frame: b"frame bytes",
        });
        round_trip(Mail::Placed {
            reply: reply(),
            placement: Placement::Refused,
            order_ack: None,
        });
        for (reply, kind) in [
            (None, StoreKind::DeadLetter),
            (Some(reply()), StoreKind::Outgoing),
            (Some(reply()), StoreKind::Local),
        ] {
            round_trip(Mail::Store {
                reply,
                kind,
                queue: 0xFFFF_FF01,
                partition: 1,
                now_unix: 1_700_000_000,
                frame: b"dead letter",
            });
        }
        for (ip, outgoing, taken) in [
            ("192.0.2.7", Some(0xFFFE_0001), true),
            ("2001:db8::7", None, false),
        ] {
            round_trip(Mail::OrderAcked {
                from: AckSource {
                    remote_qm: Guid([6; 16]),
                    ip: ip.parse().unwrap(),
                    outgoing,
                },
                seq_id: u64::MAX - 1,
                number: 9,
                taken,
                hops_left: 3,
            });
        }
        for prior in [None, Some((u64::MAX, 3))] {
            round_trip(Mail::Placed {
                reply: reply(),
                placement: Placement::At {
                    partition: 3,
                    ticket: Ticket(42),
                },
                order_ack: Some((
                    (Guid([5; 16]), 77),
                    IncomingSequence {
                        seq_id: 11,
                        seq_no: 12,
                        reject_count: 13,
                        origin: (2, 99),
                        prior,
                    },
                )),
            });
        }
    }

    #[test]
    fn unknown_tags_are_refused() {
        assert_eq!(Mail::decode(&[0], &[]), Err(BadMail));
        assert_eq!(Mail::decode(&[9; 40], &[]), Err(BadMail));
        assert_eq!(Mail::decode(&[], &[]), Err(BadMail));
    }

    /// Branch deskown: the FinalAck address note and the new record kinds.
    #[test]
    fn final_ack_peer_notes_and_the_desks_record_kinds_round_trip() {
        for ip in ["10.1.2.3", "fe80::1"] {
            round_trip(Mail::FinalAckPeer {
                partition: 3,
                sender: Guid([9; 16]),
                ip: ip.parse().unwrap(),
            });
        }
        for kind in [
            StoreKind::FinalAck,
            StoreKind::MachineJournal,
            StoreKind::StreamReceipt,
        ] {
            round_trip(Mail::Store {
                reply: Some(reply()),
                kind,
                queue: 0xFFFE_0001,
                partition: 1,
                now_unix: 1_700_000_000,
                frame: b"ack",
            });
        }
    }

    #[test]
    fn final_acks_passed_between_shards_round_trip() {
        for (ip, outgoing) in [("10.1.2.3", None), ("fe80::1", Some(7))] {
            round_trip(Mail::FinalAcked {
                from: AckSource {
                    remote_qm: Guid([3; 16]),
                    ip: ip.parse().unwrap(),
                    outgoing,
                },
                hops_left: 2,
                frame: b"a final ack packet",
            });
        }
    }

    #[test]
    fn amqp_mail_round_trips_and_hostile_heads_are_refused() {
        round_trip(Mail::AmqpProduce {
            reply: ReplyTo {
                seq: AMQP_REPLY_BIT | 5,
                ..reply()
            },
            queue: 12,
            now_unix: 1_700_000_000,
            frame: b"an msmq packet",
        });
        for verdict in [
            AmqpVerdict::Stored {
                partition: 1,
                ticket: Ticket(77),
            },
            AmqpVerdict::DeadLettered {
                class: 0xC001,
                partition: 0,
                ticket: Ticket::IMMEDIATE,
            },
            AmqpVerdict::RefusedQuota,
            AmqpVerdict::Refused,
        ] {
            round_trip(Mail::AmqpProduced {
                reply: reply(),
                verdict,
            });
        }
        for (browse, presettled, cursor) in [
            (false, false, None),
            (true, false, Some((7, u64::MAX))),
            (false, true, None),
        ] {
            round_trip(Mail::AmqpFetch {
                reply: reply(),
                queue: 3,
                link: 9,
                credit: 100,
                browse,
                presettled,
                cursor,
            });
        }
        for (last, held, frame) in [
            (false, true, &b"stored bytes"[..]),
            (true, false, &b""[..]),
            (true, true, &b"x"[..]),
        ] {
            round_trip(Mail::AmqpFetched {
                reply: reply(),
                queue: 3,
                link: 9,
                lookup: 1 << 40,
                priority: 3,
                failed: 2,
                last,
                held,
                frame,
            });
        }
        for settlement in [
            AmqpSettlement::Accepted,
            AmqpSettlement::Rejected,
            AmqpSettlement::Released { failed: false },
            AmqpSettlement::Released { failed: true },
        ] {
            round_trip(Mail::AmqpSettle {
                queue: 4,
                lookup: 8,
                settlement,
            });
        }
        round_trip(Mail::AmqpWake {
            reply: reply(),
            link: 2,
        });

        // Codes and flags out of range are refused, never guessed at.
        let mut buf = [0u8; HEAD_MAX];
        let (n, _) = Mail::AmqpSettle {
            queue: 4,
            lookup: 8,
            settlement: AmqpSettlement::Accepted,
        }
        .encode_head(&mut buf);
        for bad in [0u8, 5, 0xFF] {
            let mut h = buf;
            h[n - 1] = bad;
            assert_eq!(Mail::decode(&h[..n], &[]), Err(BadMail), "settlement {bad}");
        }
        let (n, _) = Mail::AmqpProduced {
            reply: reply(),
            verdict: AmqpVerdict::Refused,
        }
        .encode_head(&mut buf);
        let code_at = n - 8 - 4 - 2 - 1;
        for bad in [0u8, 5, 0xFF] {
            let mut h = buf;
            h[code_at] = bad;
            assert_eq!(Mail::decode(&h[..n], &[]), Err(BadMail), "verdict {bad}");
        }
        let (n, _) = Mail::AmqpFetch {
            reply: reply(),
            queue: 3,
            link: 9,
            credit: 1,
            browse: false,
            presettled: false,
            cursor: None,
        }
        .encode_head(&mut buf);
        for (at, bad) in [(n - 2, 4u8), (n - 2, 0xFF), (n - 1, 2), (n - 1, 0xFF)] {
            let mut h = buf;
            h[at] = bad;
            assert_eq!(
                Mail::decode(&h[..n], &[]),
                Err(BadMail),
                "fetch byte {at} = {bad}"
            );
        }
        let (n, _) = Mail::AmqpFetched {
            reply: reply(),
            queue: 3,
            link: 9,
            lookup: 1,
            priority: 3,
            failed: 0,
            last: true,
            held: false,
            frame: &[],
        }
        .encode_head(&mut buf);
        let mut h = buf;
        h[n - 1] = 4;
        assert_eq!(
            Mail::decode(&h[..n], &[]),
            Err(BadMail),
            "fetched flags = 4"
        );
    }
}
