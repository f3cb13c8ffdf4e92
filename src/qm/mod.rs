//! The queue manager: queues, routing a message to a local queue, outgoing queues and their
//! states, acks and NACKs, dead-letter and journal, duplicate detection, transactional receipt,
//! access checks and hardened mode. Knows nothing about io_uring or sockets.

pub mod broker;
pub mod catalog;
pub mod dedup;
pub mod fanout;
pub mod handoff;
pub mod identity;
pub mod order_acks;
pub mod outgoing;
pub mod outgoing_queue;
pub mod requests;
pub mod rights;
pub mod routing;
pub mod srmp_out;
pub mod txn;
