//! Fuzz target: any bytes as an AMQP 1.0 byte stream after the protocol header. Frames are cut
//! with `frame_len` (max-frame-size from the first byte: 512 << (b % 8)); each frame goes to
//! the AMQP or SASL decoder by its TYPE; a transfer's payload goes to the message decoder.
//! Nothing may panic; whatever decodes must re-encode to bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/amqp_frame.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
