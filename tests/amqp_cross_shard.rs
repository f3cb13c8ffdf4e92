//! Issue 10, S7c (2): on `lior serve --cores 0,1`, an AMQP link that lands on the shard that does
//! not own its queue reaches the owner by mail (`qm::handoff::Mail::Amqp*`): a producer's
//! messages are stored by the owner and accepted once durable there, a consumer's messages are
//! taken into the owner's in-flight set and settled there; a `kill -9` keeps what was settled
//! removed and gives back what was not; a consumer that goes away gives its messages back.
//! Real clients: `tests/amqp/client.py` (python-qpid-proton), pinned to a shard with
//! `LIOR_SHARD`/`LIOR_API` (it connects until the kernel gives the connection to that shard).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::api::{metric, metric_or_none};
use common::{have_proton, Server};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/amqp/client.py");

fn start(data: &Path) -> (Server, String) {
    let server = Server::start_with(data, &["--cores", "0,1", "--amqp-listen", "127.0.0.1:0"]);
    let url = format!(
        "amqp://{}",
        server.amqp.expect("the ready line names amqp=")
    );
    (server, url)
}

fn python(server: &Server, url: &str, shard: Option<u64>, args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(SCRIPT).arg(url).args(args);
    if let Some(s) = shard {
        c.env("LIOR_SHARD", s.to_string())
            .env("LIOR_API", &server.api);
    }
    c
}

/// Runs one scenario of `tests/amqp/client.py` on `shard` (any when None); returns its JSON
/// lines (panics if it failed).
fn client(server: &Server, url: &str, shard: Option<u64>, args: &[&str]) -> Vec<serde_json::Value> {
    let out = python(server, url, shard, args)
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "client.py {args:?} on shard {shard:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn bodies(got: &[serde_json::Value]) -> Vec<String> {
    got.iter()
        .map(|m| m["body"].as_str().expect("body").to_string())
        .collect()
}

fn msgs(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("msg-{i}")).collect()
}

/// The shard running queue `name` (its partition, as `queues.json` in the test's own data
/// directory keeps it, modulo the two shards).
fn owner_shard(data: &Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(data.join("queues.json")).expect("queues.json");
    let cat: serde_json::Value = serde_json::from_str(&text).expect("json");
    let q = cat["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no queue {name} in {cat}"))
        .clone();
    q["partition"].as_u64().expect("partition") % 2
}

/// A holder: receives `n` messages of `queue` on `shard` without settling them, and stays
/// (with its output pipe, kept open as long as the holder lives).
fn hold(
    server: &Server,
    url: &str,
    shard: u64,
    queue: &str,
    n: usize,
) -> (Child, std::process::ChildStdout) {
    let mut holder = python(server, url, Some(shard), &["hold", queue, &n.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = holder.stdout.take().expect("stdout");
    let mut text = String::new();
    let mut buf = [0u8; 1024];
    while !text.contains("holding") {
        let got = out.read(&mut buf).expect("read");
        assert!(got > 0, "the holder ended early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..got]));
    }
    (holder, out)
}

fn wait_for_metric(server: &Server, name: &str, at_least: u64) {
    let until = Instant::now() + Duration::from_secs(30);
    while metric_or_none(server, name).unwrap_or(0) < at_least {
        assert!(Instant::now() < until, "{name} never reached {at_least}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails before S7c (2): the AMQP app locked the owner's partition from any shard, so no AMQP
/// mail existed (`lior_amqp_cross_shard_mail_total` was not reported).
#[test]
fn a_producer_and_a_consumer_on_the_other_shard_go_through_the_owner_in_order() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (server, url) = start(&data);
    server.cli(&["queue", "create", "orders"]);
    let other = 1 - owner_shard(&data, "orders");

    client(&server, &url, Some(other), &["send", "orders", "20"]);
    let mailed = metric(&server, "lior_amqp_cross_shard_mail_total");
    // One message to store and one answer each, at least.
    assert!(
        mailed >= 40,
        "{mailed} AMQP mails for 20 messages from the other shard"
    );

    let got = client(
        &server,
        &url,
        Some(other),
        &["receive", "orders", "20", "7"],
    );
    assert_eq!(bodies(&got), msgs(0..20));
    assert!(metric(&server, "lior_amqp_cross_shard_mail_total") > mailed);
    // Every accepted message is removed at the owner (and counted there once durable).
    wait_for_metric(&server, "lior_messages_received_total", 20);
    let list: serde_json::Value =
        serde_json::from_str(&server.cli(&["queue", "list", "--json"])).expect("json");
    let left = list
        .as_array()
        .expect("array")
        .iter()
        .find(|q| q["name"] == "orders")
        .and_then(|q| q["messages"].as_u64());
    assert_eq!(left, Some(0));
}

#[test]
fn after_kill_9_what_the_other_shards_consumer_settled_stays_gone_and_the_rest_comes_back() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut server, url) = start(&data);
    server.cli(&["queue", "create", "jobs"]);
    let other = 1 - owner_shard(&data, "jobs");
    client(&server, &url, None, &["send", "jobs", "10"]);

    // Six received and accepted on the other shard, in order; their removals durable at the
    // owner (counted only then).
    let got = client(&server, &url, Some(other), &["receive", "jobs", "6", "1"]);
    assert_eq!(bodies(&got), msgs(0..6));
    wait_for_metric(&server, "lior_messages_received_total", 6);
    // Four held unsettled on the other shard when the server dies.
    let (mut holder, _out) = hold(&server, &url, other, "jobs", 4);
    server.kill9();
    let _ = holder.kill();
    let _ = holder.wait();

    let (server, url) = start(&data);
    let got = client(&server, &url, Some(other), &["receive", "jobs", "4", "10"]);
    assert_eq!(bodies(&got), msgs(6..10));
    let more = client(&server, &url, None, &["receive-expect-error", "jobs"]);
    assert!(
        more[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("Timeout")),
        "nothing more is delivered: {more:?}"
    );
}

#[test]
fn a_consumer_on_the_other_shard_that_goes_away_gives_its_messages_back() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (server, url) = start(&data);
    server.cli(&["queue", "create", "work"]);
    let other = 1 - owner_shard(&data, "work");
    client(&server, &url, None, &["send", "work", "5"]);

    let (mut holder, _out) = hold(&server, &url, other, "work", 3);
    // Held at the owner for the other shard's consumer: nobody else gets them.
    let r = &client(&server, &url, None, &["two-consumers", "work", "10"])[0];
    let mut seen: Vec<String> = r["first"]
        .as_array()
        .expect("first")
        .iter()
        .chain(r["second"].as_array().expect("second"))
        .map(|v| v.as_str().expect("body").to_string())
        .collect();
    seen.sort();
    assert_eq!(seen, msgs(3..5), "{r}");
    // Its connection closes without settling them: they go back to the owner's queue.
    holder.kill().expect("kill");
    holder.wait().expect("wait");
    let got = client(&server, &url, Some(other), &["receive", "work", "5"]);
    let mut got = bodies(&got);
    got.sort();
    assert_eq!(got, msgs(0..5));
}
