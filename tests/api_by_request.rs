//! The HTTP API talks to the shard that owns a queue by request (issue 10, S7): a receive with
//! a wait is kept by the owning shard until a message arrives there, whichever shard or door
//! brought it; the shard's bounded lists answer 503 with a Retry-After when full; and a receive
//! is answered only once its removal is durable (a `kill -9` right after the answer never brings
//! the message back).

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::api::metric_or_none;
use common::{message, Client, Server};
use lior::wire::Guid;

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// Creates queues until one is owned by a partition of shard `shard` (of 2); returns its name.
fn queue_on_shard(server: &Server, shard: u64) -> String {
    for i in 0..8 {
        let name = format!("w{i}");
        let created: serde_json::Value = ureq::post(&format!("http://{}/v1/queues", server.api))
            .send_json(serde_json::json!({ "name": name }))
            .expect("create queue")
            .into_json()
            .expect("json");
        let p = created["partition"].as_u64().expect("partition");
        if p % 2 == shard {
            return name;
        }
    }
    panic!("no queue landed on shard {shard}");
}

/// A receive of one message from `queue` waiting up to `wait_ms`, on its own thread: the
/// bodies it got and how long it took.
fn waiting_receive(
    server: &Server,
    queue: &str,
    wait_ms: u64,
) -> std::thread::JoinHandle<(Vec<Vec<u8>>, Duration)> {
    let url = format!(
        "http://{}/v1/queues/{queue}/receive?count=1&wait_ms={wait_ms}",
        server.api
    );
    std::thread::spawn(move || {
        let t = Instant::now();
        let got: serde_json::Value = ureq::post(&url)
            .call()
            .expect("receive")
            .into_json()
            .expect("json");
        let bodies = got
            .as_array()
            .expect("array")
            .iter()
            .map(|m| b64(m["body_base64"].as_str().expect("body_base64")))
            .collect();
        (bodies, t.elapsed())
    })
}

/// Waits (up to 20 s) until the shards keep `n` receives waiting.
fn wait_for_waiting_receives(server: &Server, n: u64) {
    let until = Instant::now() + Duration::from_secs(20);
    while metric_or_none(server, "lior_api_receives_waiting") != Some(n) {
        assert!(
            Instant::now() < until,
            "the shards never kept {n} receives waiting"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn accepted_on(server: &Server, shard: usize) -> u64 {
    metric_or_none(
        server,
        &format!("lior_shard_connections_accepted_total{{shard=\"{shard}\"}}"),
    )
    .unwrap_or(0)
}

/// A session that the kernel gave to shard `shard` (connects until one lands there).
fn session_on_shard(server: &Server, shard: usize, guid: Guid) -> Client {
    for _ in 0..64 {
        let before = accepted_on(server, shard);
        let c = Client::connect(server.listen, guid);
        if accepted_on(server, shard) > before {
            return c;
        }
    }
    panic!("no connection reached shard {shard}");
}

#[test]
fn a_waiting_receive_at_the_owning_shard_gets_what_another_shard_and_the_api_bring() {
    const WAIT_MS: u64 = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("data"), &["--cores", "0,1"]);
    let q = queue_on_shard(&server, 1);
    let guid = Guid([0x5a; 16]);
    let mut client = session_on_shard(&server, 0, guid);

    // Over MS-MQQB to a session on shard 0: handed to shard 1, which gives it to the receive
    // it keeps waiting.
    let r = waiting_receive(&server, &q, WAIT_MS);
    wait_for_waiting_receives(&server, 1);
    let f = message(
        guid,
        1,
        &format!("TCP:127.0.0.1\\private$\\{q}"),
        b"over mqqb",
        true,
    );
    client.send(&f, true, 1);
    client.wait_acked();
    let (bodies, took) = r.join().unwrap();
    assert_eq!(
        bodies,
        vec![b"over mqqb".to_vec()],
        "the waiting receive ended empty after {took:?}"
    );
    assert!(
        took < Duration::from_millis(WAIT_MS),
        "answered by its deadline, not by the arrival"
    );

    // Over the API: the send goes to the owner, which gives it to the waiting receive.
    let r = waiting_receive(&server, &q, WAIT_MS);
    wait_for_waiting_receives(&server, 1);
    server.cli(&[
        "send",
        &format!("DIRECT=OS:localhost\\private$\\{q}"),
        "--body",
        "over the api",
    ]);
    let (bodies, took) = r.join().unwrap();
    assert_eq!(
        bodies,
        vec![b"over the api".to_vec()],
        "the waiting receive ended empty after {took:?}"
    );

    // With nothing arriving, the wait ends empty at its deadline.
    let r = waiting_receive(&server, &q, 300);
    let (bodies, _) = r.join().unwrap();
    assert!(bodies.is_empty());
}

#[test]
fn a_receive_past_the_shards_waiting_limit_is_answered_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lior.toml");
    std::fs::write(
        &cfg,
        "cores = [0]\n[limits]\napi_waiting_receives_per_shard_max = 1\n",
    )
    .unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    server.cli(&["queue", "create", "a"]);
    server.cli(&["queue", "create", "b"]);
    // One receive waits (the limit)...
    let first = waiting_receive(&server, "a", 30_000);
    wait_for_waiting_receives(&server, 1);
    // ...so another that would wait is refused at once, with when to try again.
    let url = format!(
        "http://{}/v1/queues/b/receive?count=1&wait_ms=30000",
        server.api
    );
    let t = Instant::now();
    match ureq::post(&url).call() {
        Err(ureq::Error::Status(503, resp)) => {
            assert_eq!(resp.header("retry-after"), Some("1"));
            let body = resp.into_string().unwrap();
            assert!(
                body.contains("limits.api_waiting_receives_per_shard_max"),
                "{body}"
            );
        }
        other => panic!("expected 503, got {other:?} after {:?}", t.elapsed()),
    }
    // A receive that does not wait is still served.
    let (code, body) = match ureq::post(&format!(
        "http://{}/v1/queues/b/receive?count=1",
        server.api
    ))
    .call()
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    };
    assert_eq!((code, body.trim()), (200, "[]"));
    // The waiting one gets the next message of its queue.
    server.cli(&["send", "DIRECT=OS:localhost\\private$\\a", "--body", "x"]);
    let (bodies, _) = first.join().unwrap();
    assert_eq!(bodies, vec![b"x".to_vec()]);
    wait_for_waiting_receives(&server, 0);
}

#[test]
fn kill9_right_after_a_receive_is_answered_never_brings_the_message_back() {
    const MESSAGES: u32 = 400;
    const CYCLES: usize = 6;
    const PER_RECEIVE: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start_with(&data, &["--cores", "0,1"]);
    server.cli(&["queue", "create", "q"]);
    let guid = Guid([0x6b; 16]);
    let mut c = Client::connect(server.listen, guid);
    for id in 1..=MESSAGES {
        let f = message(
            guid,
            id,
            "TCP:127.0.0.1\\private$\\q",
            &id.to_le_bytes(),
            true,
        );
        c.send(&f, true, u64::from(id));
    }
    c.wait_acked();
    drop(c);
    let mut received: Vec<u32> = Vec::new();
    for cycle in 0..CYCLES {
        // Receives one after another, then kill -9 the moment the last answer is in.
        for _ in 0..3 {
            let got: serde_json::Value = ureq::post(&format!(
                "http://{}/v1/queues/q/receive?count={PER_RECEIVE}",
                server.api
            ))
            .call()
            .expect("receive")
            .into_json()
            .expect("json");
            for m in got.as_array().unwrap() {
                let b = b64(m["body_base64"].as_str().unwrap());
                received.push(u32::from_le_bytes(b.try_into().unwrap()));
            }
        }
        server.kill9();
        server = Server::start_with(&data, &["--cores", "0,1"]);
        println!("cycle {cycle}: {} received so far", received.len());
    }
    for m in server.receive_all("q") {
        let b = b64(m["body_base64"].as_str().unwrap());
        received.push(u32::from_le_bytes(b.try_into().unwrap()));
    }
    let mut seen = std::collections::HashMap::new();
    for id in &received {
        *seen.entry(*id).or_insert(0u32) += 1;
    }
    let again: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        again.is_empty(),
        "received, then back after kill -9: {again:?}"
    );
    let lost: Vec<u32> = (1..=MESSAGES).filter(|id| !seen.contains_key(id)).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
}
