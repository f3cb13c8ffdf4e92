//! Fuzz target: any bytes as an SRMP request, Content-Type on the first line and the multipart
//! body after it, through lior's MIME split and SOAP envelope reading (see checks/srmp.rs).
//! Seeds: tests/fuzz/corpus/srmp (MC-MQSRM section 4, see make_srmp_seeds.py).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/srmp.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
