//! lior: an MSMQ-compatible queue manager for Linux.
//!
//! The library holds every layer; `src/main.rs` is only the command line.
//! See README.md for the architecture and the data flow between the modules.

pub mod engine;
pub mod session;
pub mod wire;
