//! The MS-MQQB session as a sans-IO state machine, both roles (MS-MQQB §3.1, DIGEST §9, §12).
//!
//! A [`Session`] touches no socket, file or clock: bytes come in through [`Session::handle_frame`]
//! (framed by [`Framer`]), time comes in as `now_ms` arguments, storage completions come in
//! through [`Session::handle_durable`]; transmits ([`Session::poll_transmit`]), the next timer
//! deadline ([`Session::poll_timeout`]) and events ([`Session::poll_event`]) come out. The engine
//! that drives it is a thin loop; every protocol rule here is testable without a kernel.

mod framer;
mod state;

pub use framer::{FrameError, Framer};
pub use state::{
    CloseReason, Event, Inbound, Role, SendError, Session, SessionConfig, SessionCounters,
    SessionState,
};
