//! `kill -9` of `lior serve` during a recoverable load from several senders, then a restart on
//! the same data directory: every message whose SessionAck a sender saw is there exactly once.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{message, Client, Server};
use lior::wire::Guid;

const SENDERS: u32 = 4;
const CYCLES: u32 = 3;

#[test]
fn kill9_during_recoverable_load_loses_and_duplicates_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    server.cli(&["queue", "create", "durable"]);
    // message id -> times it was reported acknowledged (must be 1), across all cycles.
    let acked: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let mut seed = 0x9E37_79B9_u64;
    let mut next_id = 1u32;
    for cycle in 0..CYCLES {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..SENDERS)
            .map(|s| {
                let (acked, stop, listen) = (acked.clone(), stop.clone(), server.listen);
                // Each sender owns a disjoint id range for this cycle.
                let first = next_id + s * 1_000_000;
                std::thread::spawn(move || {
                    let guid = Guid([s as u8 + 1; 16]);
                    let mut c = Client::connect(listen, guid);
                    let mut id = first;
                    while !stop.load(Ordering::Relaxed) {
                        let f = message(
                            guid,
                            id,
                            "TCP:127.0.0.1\\private$\\durable",
                            &id.to_le_bytes(),
                            true,
                        );
                        if !c.try_send(&f, true, u64::from(id)) {
                            break;
                        }
                        id += 1;
                        c.pump();
                        let mut a = acked.lock().unwrap();
                        for t in c.acked.drain(..) {
                            *a.entry(t as u32).or_default() += 1;
                        }
                    }
                    // Drain what is still arriving until the server is gone.
                    while !c.closed {
                        c.pump();
                    }
                    let mut a = acked.lock().unwrap();
                    for t in c.acked.drain(..) {
                        *a.entry(t as u32).or_default() += 1;
                    }
                })
            })
            .collect();
        next_id += SENDERS * 1_000_000;
        // A pseudo-random moment between 300 and 1000 ms into the load.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 700));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        server = Server::start(dir.path());
        let a = acked.lock().unwrap();
        assert!(a.values().all(|&n| n == 1), "an ack was reported twice");
        println!("cycle {cycle}: {} messages acknowledged so far", a.len());
    }
    let got = server.receive_all("durable");
    let mut seen: HashMap<u32, u32> = HashMap::new();
    for m in &got {
        let body = base64_decode(m["body_base64"].as_str().unwrap());
        *seen
            .entry(u32::from_le_bytes(body.try_into().unwrap()))
            .or_default() += 1;
    }
    let acked = acked.lock().unwrap();
    let lost: Vec<_> = acked.keys().filter(|id| !seen.contains_key(id)).collect();
    let dup: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    println!(
        "acknowledged {}, stored {} (unacknowledged but stored: {}), lost {}, duplicated {}",
        acked.len(),
        got.len(),
        seen.len().saturating_sub(acked.len()),
        lost.len(),
        dup.len()
    );
    assert!(acked.len() > 100, "the load ran: {} acks", acked.len());
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(dup.is_empty(), "duplicated: {dup:?}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}
