//! Issue 9.3 / 9.5: a burst of one-message transactional sequences from random source GUIDs
//! (one sequence-state record each) used to fail the shard's group commit, after which the
//! shard never acknowledged a recoverable message again; and the sequence table only grew.
//! One shard, so the flood and the legitimate sender share the commit.

mod common;

use std::io::Write;

use common::{message, Client, Server};
use lior::wire::headers::{TransactionHeader, TxFlags};
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};

const FLOOD: u32 = 50_000;

fn tx_frame(source: Guid, dest: &[u8]) -> Vec<u8> {
    let label = utf16z("");
    let m = UserMessage::new(
        source,
        1,
        QueueRef::Direct(Utf16(dest)),
        Utf16(&label[..0]),
        b"f",
    )
    .with_recoverable(true)
    .with_transaction(TransactionHeader::new(
        TxFlags::default()
            .with(TxFlags::FM, true)
            .with(TxFlags::LM, true),
        (1_700_000_000u64 << 32) | 1,
        1,
        0,
    ));
    let mut f = vec![0u8; m.frame_len()];
    let n = m.encode(&mut f).unwrap();
    f.truncate(n);
    f
}

#[test]
fn a_burst_of_spoofed_transactional_senders_does_not_stop_acks_for_a_legitimate_one() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start_with(&d.path().join("data"), &["--cores", "0"]);
    s.cli(&["queue", "create", "txq", "--transactional"]);
    s.cli(&["queue", "create", "orders"]);
    let dest = utf16z("TCP:127.0.0.1\\private$\\txq");
    let mut burst = Vec::new();
    for i in 0..FLOOD {
        let mut g = [0u8; 16];
        g[..4].copy_from_slice(&i.to_le_bytes());
        g[4..8].copy_from_slice(&0x5F00_u32.to_le_bytes());
        burst.extend_from_slice(&tx_frame(Guid(g), &dest));
    }
    // The flood is written in one go, past the session window (a hostile sender ignores it).
    let mut flood = Client::connect(s.listen, Guid([0x77; 16]));
    flood.stream.write_all(&burst).unwrap();
    // A legitimate sender beside it is still acknowledged.
    let mut c = Client::connect(s.listen, Guid([0x78; 16]));
    for id in 1..=3 {
        let f = message(
            Guid([0x78; 16]),
            id,
            "TCP:127.0.0.1\\private$\\orders",
            b"legit",
            true,
        );
        c.send(&f, true, u64::from(id));
    }
    c.wait_acked();
    assert_eq!(s.receive_until("orders", 3).len(), 3);
    drop(flood);
}
