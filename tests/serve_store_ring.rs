//! Issue 10, S8: a shard's store writes and fdatasyncs go on the shard's own ring. `lior serve`
//! acknowledges recoverable messages only after the fdatasync of their batch, which now
//! completes on the shard's ring (counted in `lior_store_ops_on_shard_ring_total`); what was
//! acknowledged survives `kill -9`, and a SIGTERM stop (the shards stop, then the daemon's final
//! commit runs on each store's own ring again) loses nothing either.

mod common;

use common::api::metric;
use common::{message, Client, Server};
use lior::wire::Guid;

fn send_recoverable(server: &Server, guid: u8, first: u32, n: u32) {
    let mut c = Client::connect(server.listen, Guid([guid; 16]));
    for i in first..first + n {
        let f = message(
            Guid([guid; 16]),
            i,
            "TCP:127.0.0.1\\private$\\ring",
            &[5; 300],
            true,
        );
        c.send(&f, true, u64::from(i));
    }
    c.wait_acked();
    assert_eq!(c.acked.len(), n as usize);
}

#[test]
fn recoverable_messages_are_synced_on_the_shard_ring_and_survive_kill9_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data);
    server.cli(&["queue", "create", "ring"]);
    send_recoverable(&server, 1, 1, 40);
    let ops = metric(&server, "lior_store_ops_on_shard_ring_total");
    assert!(
        ops >= 2,
        "the acknowledged messages' write and fdatasync ran on the shard's ring: {ops}"
    );
    assert_eq!(
        metric(&server, "lior_store_ops_on_shard_ring_failed_total"),
        0
    );
    assert_eq!(metric(&server, "lior_store_poisoned"), 0);

    // Acknowledged means synced: nothing is lost to kill -9.
    server.kill9();
    let mut server = Server::start(&data);
    send_recoverable(&server, 2, 1, 25);
    // A clean stop with the shards' rings gone: the final commit works on the stores' own.
    server.stop_term();
    let server = Server::start(&data);
    assert_eq!(server.receive_all("ring").len(), 65);
}
