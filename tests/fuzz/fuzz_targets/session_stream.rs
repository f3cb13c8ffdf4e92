//! A session fed a hostile byte stream in arbitrary chunks: the acceptor must never panic,
//! and once closed it must stay closed. The first byte picks the chunking, the rest is the
//! stream; a valid handshake prefix (frames 3 and 5 with ServerGuid zero) is prepended when the
//! second byte is odd, so the fuzzer also reaches the open state.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/session_stream.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
