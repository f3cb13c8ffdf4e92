//! Issue 9.3 / 9.5: a burst of one-message transactional sequences from random source GUIDs
//! (one sequence-state record each) used to fail the shard's group commit, after which the
//! shard never acknowledged a recoverable message again; and the sequence table only grew.
//! One shard, so the flood and the legitimate sender share the commit.

mod common;

use std::io::Write;

use common::api::metric;
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

fn tx_msg(source: Guid, id: u32, seq_id: u64, no: u32) -> Vec<u8> {
    common::tx_message(
        source,
        id,
        "TCP:127.0.0.1\\private$\\txq",
        seq_id,
        no,
        false,
    )
}

/// Issue 9.5: the incoming sequence table (65,536 sender/queue pairs) never evicted; once
/// full, a new legitimate sender got no OrderAck and its messages were stored again on every
/// resend. Now it is bounded by `limits.tx_sequences_max`, evicts idle states, and stays under
/// its bound across a restart.
#[test]
fn the_sequence_table_stays_under_its_bound_and_evicts() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("lior.toml");
    std::fs::write(
        &cfg,
        "[limits]\ntx_sequences_max = 100\ntx_sequence_evict_idle_s = 0\n",
    )
    .unwrap();
    let args = ["--config", cfg.to_str().unwrap(), "--cores", "0"];
    let mut s = Server::start_with(&d.path().join("data"), &args);
    s.cli(&["queue", "create", "txq", "--transactional"]);
    let dest = utf16z("TCP:127.0.0.1\\private$\\txq");
    let mut c = Client::connect(s.listen, Guid([0x79; 16]));
    for i in 0..300u32 {
        let mut g = [0u8; 16];
        g[..4].copy_from_slice(&i.to_le_bytes());
        c.send(&tx_frame(Guid(g), &dest), true, u64::from(i));
    }
    c.wait_acked();
    assert!(metric(&s, "lior_tx_sequences") <= 100);
    // A new legitimate sender still gets its sequence in, exactly once.
    let legit = Guid([0x7A; 16]);
    let seq = (1_800_000_000u64 << 32) | 1;
    let mut l = Client::connect(s.listen, legit);
    for no in 1..=3 {
        l.send(&tx_msg(legit, no, seq, no), true, u64::from(no));
    }
    l.wait_acked();
    assert!(metric(&s, "lior_tx_sequences") <= 100);
    drop((c, l));
    // After a restart the table is still bounded, and the sender's resends are duplicates.
    s.kill9();
    let s = Server::start_with(&d.path().join("data"), &args);
    assert!(metric(&s, "lior_tx_sequences") <= 100);
    let mut l = Client::connect(s.listen, legit);
    for no in 1..=3 {
        l.send(&tx_msg(legit, no, seq, no), true, u64::from(no));
    }
    l.send(&tx_msg(legit, 4, seq, 4), true, 4);
    l.wait_acked();
    let got: Vec<u32> = s
        .receive_all("txq")
        .iter()
        .filter(|m| m["label"] == "tx")
        .map(|m| {
            use base64::Engine as _;
            let b = base64::engine::general_purpose::STANDARD
                .decode(m["body_base64"].as_str().unwrap())
                .unwrap();
            u32::from_le_bytes(b.try_into().unwrap())
        })
        .collect();
    assert_eq!(got, [1, 2, 3, 4], "exactly once, in order");
}
