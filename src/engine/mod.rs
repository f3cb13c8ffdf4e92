//! The engine: io_uring rings, buffers, the slab of connections, timers, core pinning and the
//! shard event loops; it moves bytes and time between sockets (and files, for the store) and the
//! layers above and must not make protocol decisions.

pub mod admission;
pub mod app;
mod buffers;
pub mod config;
pub mod host;
pub mod mesh;
pub mod net;
pub mod probe;
mod shard;
pub mod signal;
mod sockets;
mod timers;
pub mod turn;
pub mod uring;
