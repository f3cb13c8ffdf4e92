//! Fuzz target: any bytes go to `frame_len` and `parse_packet` (and straight to
//! `UserMessage::parse`). Neither may panic; and whatever parses as a UserMessage must
//! re-encode to bytes that parse back to the same value (with the PacketSize the encoder
//! computes, since a peer may omit the final alignment padding).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/parse_packet.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
