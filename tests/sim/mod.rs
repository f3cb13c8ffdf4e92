//! A deterministic simulation of lior's MS-MQQB server (TigerBeetle VOPR / FoundationDB style):
//! clients over a simulated TCP network (splits, coalescing, latency, connection resets), the
//! real server glue (`lior::server::MsmqApp`) driven as the io_uring engine drives it, the real
//! broker over a simulated disk (crashes, torn unsynced writes, failed fsyncs), and an auditor
//! that checks every acknowledgement against what the store really holds.
//!
//! Everything is drawn from one seed; nothing reads the wall clock or the OS random source, so a
//! failing seed replays exactly (`LIOR_SIM_SEED=<n>`).

pub mod auditor;
pub mod net;
pub mod rng;
pub mod world;
