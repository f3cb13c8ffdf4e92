//! Issue 9.7: an admin acknowledgement for an admin queue on this machine
//! (`DIRECT=TCP:127.0.0.1\private$\adminq`, `DIRECT=OS:localhost\...`, our listen address) went
//! into an outgoing queue and out over TCP to `remote_port`, instead of into the local queue.

mod common;

use common::api::get_json;
use common::{Client, Server};
use lior::wire::headers::AckFlags;
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};

#[test]
fn acknowledgements_for_a_local_admin_queue_are_stored_locally() {
    let d = tempfile::tempdir().unwrap();
    // Listen on an address of our own other than 127.0.0.1; remote_port points nowhere useful.
    let cfg = d.path().join("lior.toml");
    std::fs::write(&cfg, "remote_port = 9\n").unwrap();
    let s = Server::start_with(
        &d.path().join("data"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.21:0",
        ],
    );
    s.cli(&["queue", "create", "orders"]);
    s.cli(&["queue", "create", "txq", "--transactional"]);
    s.cli(&["queue", "create", "adminq"]);
    let mut c = Client::connect(s.listen, Guid([0x31; 16]));
    let label = utf16z("tracked");
    let admins = [
        "TCP:127.0.0.1\\private$\\adminq",
        "TCP:127.0.0.21\\private$\\adminq",
        "OS:localhost\\private$\\adminq",
        "OS:.\\private$\\adminq",
    ];
    let mut id = 0;
    for admin in admins {
        let admin = utf16z(admin);
        // Arrives: ACK_REACH_QUEUE. Non-transactional into a transactional queue:
        // NACK_NOT_TRANSACTIONAL_MSG.
        for (dest, flags) in [
            ("TCP:127.0.0.21\\private$\\orders", AckFlags::PA),
            ("TCP:127.0.0.21\\private$\\txq", AckFlags::NA),
        ] {
            id += 1;
            let dest = utf16z(dest);
            let m = UserMessage::new(
                Guid([0x31; 16]),
                id,
                QueueRef::Direct(Utf16(&dest)),
                Utf16(&label),
                b"x",
            )
            .with_recoverable(true)
            .with_admin_queue(QueueRef::Direct(Utf16(&admin)), AckFlags(flags));
            let mut f = vec![0u8; m.frame_len()];
            let n = m.encode(&mut f).unwrap();
            c.send(&f[..n], true, u64::from(id));
        }
    }
    c.wait_acked();
    let acks = s.receive_until("adminq", 8);
    let mut classes: Vec<String> = acks
        .iter()
        .map(|m| m["message_class"].as_str().unwrap().to_string())
        .collect();
    classes.sort();
    assert_eq!(
        classes,
        [
            "ACK_REACH_QUEUE",
            "ACK_REACH_QUEUE",
            "ACK_REACH_QUEUE",
            "ACK_REACH_QUEUE",
            "NACK_NOT_TRANSACTIONAL_MSG",
            "NACK_NOT_TRANSACTIONAL_MSG",
            "NACK_NOT_TRANSACTIONAL_MSG",
            "NACK_NOT_TRANSACTIONAL_MSG"
        ]
    );
    let out = get_json(&s, "/v1/outgoing");
    assert!(
        out.as_array().unwrap().is_empty(),
        "nothing went to an outgoing queue: {out}"
    );
}
