//! Messages of several megabytes into the queue manager within one loop turn (no commit between
//! them, as when a sender's window of 3 MB messages arrives in one read): each is stored, none is
//! refused because the store's commit batch filled up.

use lior::config::Config;
use lior::qm::broker::{Broker, Verdict};
use lior::store::{SimDisk, SimStore, Store, StoreConfig};
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};

fn broker(dir: &std::path::Path) -> Broker<SimStore> {
    let cfg = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    let (store, _) = Store::open(SimDisk::new(7), StoreConfig::default()).unwrap();
    Broker::with_stores(cfg, vec![store]).unwrap()
}

#[test]
fn several_large_recoverable_messages_in_one_turn_are_all_stored() {
    let d = tempfile::tempdir().unwrap();
    let b = broker(d.path());
    b.create_queue("big", false).unwrap();
    let dest = utf16z("OS:localhost\\private$\\big");
    let label = utf16z("big");
    let mut tickets = Vec::new();
    for id in 1..=4u32 {
        let body = vec![id as u8; 3_000_000];
        let m = UserMessage::new(
            Guid([0x22; 16]),
            id,
            QueueRef::Direct(Utf16(&dest)),
            Utf16(&label),
            &body,
        )
        .with_recoverable(true);
        let mut frame = vec![0u8; m.frame_len()];
        let n = m.encode(&mut frame).unwrap();
        frame.truncate(n);
        let msg = UserMessage::parse(&frame).unwrap();
        match b.deliver(&frame, &msg, 1_700_000_000, 0).verdict {
            Verdict::Stored { ticket, .. } => tickets.push(ticket),
            other => panic!("message {id} not stored: {other:?}"),
        }
    }
    // The end of the loop turn.
    b.partition(0).commit(tickets.last().copied()).unwrap();
    let got = b.receive("big", 10).unwrap();
    assert_eq!(got.len(), 4);
    for (i, r) in got.iter().enumerate() {
        let m = UserMessage::parse(&r.bytes).unwrap();
        assert_eq!(m.body().len(), 3_000_000);
        assert!(m.body().iter().all(|&x| x == i as u8 + 1));
    }
}
