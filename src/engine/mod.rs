//! The shard's IO engine: io_uring rings and (later) buffers, sessions and timers.
//!
//! It owns kernel interaction; it must not make protocol decisions. Today it holds only the
//! minimal file-IO ring the store uses; the network engine extends the same ring type.

pub mod uring;
