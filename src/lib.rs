//! lior: an MSMQ-compatible queue manager for Linux.
//!
//! The library holds every layer; `src/main.rs` is only the command line.
//! See README.md for the architecture and the data flow between the modules.

pub mod amqp;
pub mod bench;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod engine;
pub mod http;
pub mod ping;
pub mod qm;
pub mod ratelog;
pub mod sdnotify;
pub mod security;
pub mod server;
pub mod session;
pub mod shard_app;
pub mod store;
pub mod wire;
