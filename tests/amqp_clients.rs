//! The AMQP 1.0 door of a real `lior serve --amqp-listen 127.0.0.1:0`, driven by a real
//! client: python-qpid-proton (installed by `.ci/run` from PyPI), through the small scripts in
//! `tests/amqp/`. Send and receive, properties both ways (an MS-MQQB message read over AMQP,
//! an AMQP message read by `lior receive --json`), credit, released / modified / rejected, a
//! killed connection's unsettled messages, two consumers, browse, a 4 MB message, bad SASL and
//! a bad frame, unknown queues.
//!
//! Without python-qpid-proton these tests fail with a clear message under `CI=true`, and skip
//! loudly elsewhere.

mod common;

use common::have_proton;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, BIN};
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/amqp/client.py");

fn start(dir: &Path) -> (Server, String) {
    let server = Server::start_with(dir, &["--amqp-listen", "127.0.0.1:0"]);
    let url = format!(
        "amqp://{}",
        server.amqp.expect("the ready line names amqp=")
    );
    (server, url)
}

/// Runs one scenario of `tests/amqp/client.py`; returns its JSON lines (panics if it failed).
fn client(url: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .arg(SCRIPT)
        .arg(url)
        .args(args)
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "client.py {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn peek_count(server: &Server, queue: &str) -> usize {
    server
        .cli(&["peek", queue, "--count", "1000", "--json"])
        .lines()
        .count()
}

#[test]
fn messages_sent_over_amqp_are_received_over_amqp_in_msmq_order() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, url) = start(dir.path());
    server.cli(&["queue", "create", "orders"]);
    // Recoverable (settled once durable) and express; priorities put the last first.
    assert_eq!(
        client(&url, &["send", "orders", "3", "durable"])[0]["sent"],
        3
    );
    assert_eq!(
        client(&url, &["send", "orders", "1", "express", "urgent", "7"])[0]["sent"],
        1
    );
    let got = client(&url, &["receive", "orders", "4"]);
    let bodies: Vec<&str> = got.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["msg-0", "msg-0", "msg-1", "msg-2"]);
    assert_eq!(got[0]["subject"], "urgent");
    assert_eq!(got[0]["priority"], 7);
    assert_eq!(got[0]["durable"], false);
    assert_eq!(got[1]["durable"], true);
    // Accepted means removed.
    assert_eq!(peek_count(&server, "orders"), 0);
    // A format name of a local queue works as an address too.
    client(&url, &["send", "DIRECT=OS:.\\private$\\orders", "1"]);
    assert_eq!(
        client(
            &url,
            &["receive", "DIRECT=TCP:127.0.0.1\\private$\\orders", "1"]
        )
        .len(),
        1
    );
}

#[test]
fn an_msmq_message_is_read_over_amqp_with_its_properties() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, url) = start(dir.path());
    server.cli(&["queue", "create", "inbox"]);
    let sender = Guid([0x5a; 16]);
    let dest = utf16z("OS:127.0.0.1\\private$\\inbox");
    let label = utf16z("from windows");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let mut m = UserMessage::new(
        sender,
        4242,
        QueueRef::Direct(Utf16(&dest)),
        Utf16(&label),
        b"windows body",
    )
    .with_recoverable(true)
    .with_priority(6)
    .with_sent_time(now)
    .with_time_to_reach_queue(345_600);
    m.properties.application_tag = 77;
    let mut cid = [0u8; 20];
    cid[..16].copy_from_slice(&[0x11; 16]);
    cid[16..].copy_from_slice(&9u32.to_le_bytes());
    m.properties.correlation_id = cid;
    m.sync();
    let mut frame = vec![0u8; m.frame_len()];
    let n = m.encode(&mut frame).expect("encode");
    frame.truncate(n);
    let mut c = common::Client::connect(server.listen, sender);
    c.send(&frame, true, 1);
    c.wait_acked();

    let got = client(&url, &["receive", "inbox", "1"]);
    let g = &got[0];
    assert_eq!(g["body"], "windows body");
    assert_eq!(g["subject"], "from windows");
    assert_eq!(g["priority"], 6);
    assert_eq!(g["durable"], true);
    assert_eq!(g["id"], format!("{sender}\\4242"));
    assert_eq!(g["correlation_id"], format!("{}\\9", Guid([0x11; 16])));
    assert_eq!(g["app"]["msmq.AppSpecific"], 77);
    assert_eq!(g["app"]["msmq.SourceQueueManager"], sender.to_string());
    assert!(g["annotations"]["x-opt-sequence-number"].is_u64());
}

#[test]
fn an_amqp_message_is_read_by_lior_receive_with_its_properties() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, url) = start(dir.path());
    server.cli(&["queue", "create", "outbox"]);
    client(
        &url,
        &["send", "outbox", "1", "durable", "hello", "5", "42"],
    );
    let out = server.cli(&["receive", "outbox", "--json"]);
    let m: serde_json::Value =
        serde_json::from_str(out.lines().next().expect("one message")).expect("json");
    assert_eq!(m["label"], "hello");
    assert_eq!(m["priority"], 5);
    assert_eq!(m["app_specific"], 42);
    assert_eq!(m["class"], "recoverable");
    assert_eq!(m["body_base64"], "bXNnLTA="); // msg-0
    assert!(m["destination"]
        .as_str()
        .unwrap()
        .to_ascii_lowercase()
        .ends_with("private$\\outbox"));
}

#[test]
fn link_credit_bounds_what_a_consumer_holds() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, url) = start(dir.path());
    server.cli(&["queue", "create", "work"]);
    client(&url, &["send", "work", "5"]);
    let r = &client(&url, &["credit", "work"])[0];
    assert_eq!(r["first"], 2, "{r}");
    assert_eq!(r["rest"], serde_json::json!(["msg-2", "msg-3", "msg-4"]));
    // The two the first link held (unsettled) came back when its connection closed.
    assert_eq!(peek_count(&server, "work"), 2);
}

#[test]
fn released_modified_and_rejected_deliveries() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, url) = start(dir.path());
    server.cli(&["queue", "create", "flaky"]);
    client(&url, &["send", "flaky", "1"]);
    let steps = client(&url, &["outcomes", "flaky"]);
    let counts: Vec<u64> = steps
        .iter()
        .map(|s| s["delivery_count"].as_u64().unwrap())
        .collect();
    // Released: back unchanged; modified (delivery-failed): counted; then rejected.
    assert_eq!(counts, [0, 0, 1], "{steps:?}");
    assert!(steps.iter().all(|s| s["body"] == "msg-0"));
    assert_eq!(peek_count(&server, "flaky"), 0);
    for (m, n) in [("released", 1), ("modified", 1), ("rejected", 1)] {
        assert_eq!(
            common::api::metric(&server, &format!("lior_amqp_{m}_total")),
            n
        );
    }
    let dl = server.cli(&["peek", "deadletter", "--json"]);
    assert!(
        dl.contains("bXNnLTA="),
        "not in the dead-letter queue: {dl}"
    );
}

#[test]
fn a_killed_client_gives_its_unsettled_messages_back() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, url) = start(dir.path());
    server.cli(&["queue", "create", "jobs"]);
    client(&url, &["send", "jobs", "5"]);
    let mut holder = Command::new("python3")
        .args([SCRIPT, &url, "hold", "jobs", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = holder.stdout.take().expect("stdout");
    let mut text = String::new();
    let mut buf = [0u8; 1024];
    while !text.contains("holding") {
        let n = out.read(&mut buf).expect("read");
        assert!(n > 0, "the holder ended early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // Held: nobody else gets them...
    let r = &client(&url, &["two-consumers", "jobs", "10"])[0];
    let mut seen: Vec<String> = r["first"]
        .as_array()
        .unwrap()
        .iter()
        .chain(r["second"].as_array().unwrap())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    seen.sort();
    assert_eq!(seen, ["msg-3", "msg-4"], "{r}");
    // ...until the client dies without settling them: kill -9.
    holder.kill().expect("kill");
    holder.wait().expect("wait");
    let got = client(&url, &["receive", "jobs", "5"]);
    let mut bodies: Vec<&str> = got.iter().map(|m| m["body"].as_str().unwrap()).collect();
    bodies.sort();
    assert_eq!(bodies, ["msg-0", "msg-1", "msg-2", "msg-3", "msg-4"]);
    assert_eq!(peek_count(&server, "jobs"), 0);
}

#[test]
fn browse_links_leave_the_messages_in_place() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, url) = start(dir.path());
    server.cli(&["queue", "create", "shelf"]);
    client(&url, &["send", "shelf", "3"]);
    let b = &client(&url, &["browse", "shelf", "3"])[0];
    assert_eq!(b["browsed"], serde_json::json!(["msg-0", "msg-1", "msg-2"]));
    assert_eq!(peek_count(&server, "shelf"), 3);
}

#[test]
fn pre_settled_links_remove_before_sending() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, url) = start(dir.path());
    server.cli(&["queue", "create", "once"]);
    client(&url, &["send", "once", "3"]);
    let r = &client(&url, &["presettled", "once", "3"])[0];
    assert_eq!(r["got"], serde_json::json!(["msg-0", "msg-1", "msg-2"]));
    // Nothing was settled by the client, and nothing comes back: at-most-once.
    assert_eq!(peek_count(&server, "once"), 0);
}

#[test]
fn a_four_megabyte_message_goes_both_ways() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, url) = start(dir.path());
    server.cli(&["queue", "create", "big"]);
    let size = 4_000_000usize;
    client(&url, &["send-big", "big", &size.to_string()]);
    let r = &client(&url, &["receive-big", "big"])[0];
    assert_eq!(r["len"], size);
    assert_eq!(r["pattern"], true);
}

#[test]
fn unknown_and_internal_queues_are_refused_with_their_conditions() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, url) = start(dir.path());
    let s = &client(&url, &["send-expect-error", "nope"])[0];
    assert!(
        s["error"].as_str().unwrap().contains("amqp:not-found"),
        "{s}"
    );
    let r = &client(&url, &["receive-expect-error", "nope"])[0];
    assert!(
        r["error"].as_str().unwrap().contains("amqp:not-found"),
        "{r}"
    );
    // lior's own queues: no producer into the dead-letter queue, nobody takes the OrderAcks.
    let s = &client(&url, &["send-expect-error", "deadletter"])[0];
    assert!(
        s["error"].as_str().unwrap().contains("amqp:not-allowed"),
        "{s}"
    );
    let r = &client(&url, &["receive-expect-error", "private$\\order_queue$"])[0];
    assert!(
        r["error"].as_str().unwrap().contains("amqp:not-allowed"),
        "{r}"
    );
}

#[test]
fn sasl_plain_logs_in_with_the_right_password_only() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut hash = Command::new(BIN)
        .args(["amqp-user", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    hash.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = hash.wait_with_output().expect("hash");
    let phc = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let cfg = dir.path().join("lior.toml");
    std::fs::write(
        &cfg,
        format!(
            "[amqp]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\n[[amqp.users]]\nname = \
             \"app\"\npassword_hash = \"{phc}\"\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, &["--config", cfg.to_str().unwrap()]);
    let url = format!("amqp://{}", server.amqp.expect("amqp="));
    server.cli(&["queue", "create", "secure"]);
    let bad = &client(&url, &["sasl", "app", "wrong", "secure"])[0];
    let e = bad["error"].as_str().expect("refused");
    assert!(
        e.contains("unauthorized-access") || e.contains("Authentication failed"),
        "{e}"
    );
    let good = &client(&url, &["sasl", "app", "s3cret", "secure"])[0];
    assert_eq!(good["error"], serde_json::Value::Null, "{good}");
    assert_eq!(peek_count(&server, "secure"), 1);
}

#[test]
fn a_bad_frame_closes_the_connection_with_a_condition() {
    use lior::amqp::frame::{encode_sasl_frame, AMQP_HEADER, SASL_HEADER};
    use lior::amqp::sasl::{SaslFrame, SaslInit};
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _url) = start(dir.path());
    let mut s = TcpStream::connect(server.amqp.unwrap()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = SASL_HEADER.to_vec();
    encode_sasl_frame(
        &mut hello,
        &SaslFrame::Init(SaslInit {
            mechanism: "ANONYMOUS",
            initial_response: None,
            hostname: None,
        }),
    )
    .unwrap();
    hello.extend_from_slice(&AMQP_HEADER);
    // A frame whose body is a performative with an unknown descriptor (0x99, an empty list).
    hello.extend_from_slice(b"\x00\x00\x00\x0c\x02\x00\x00\x00\x00\x53\x99\x45");
    s.write_all(&hello).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("amqp:"),
        "closed without an AMQP condition: {got:?}"
    );
    // Counted (and logged), and the server goes on serving.
    assert_eq!(
        common::api::metric(&server, "lior_amqp_connections_closed_error_total"),
        1
    );
    assert!(TcpStream::connect(server.amqp.unwrap()).is_ok());
}

#[test]
fn a_waiting_consumer_gets_messages_stored_after_it_attached() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, url) = start(dir.path());
    server.cli(&["queue", "create", "later"]);
    // The consumer attaches to an empty queue and waits (credit, nothing to send)...
    let waiter = Command::new("python3")
        .args([SCRIPT, &url, "receive", "later", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(500));
    // ...then one message comes over MS-MQQB, one over the HTTP API.
    let sender = Guid([0x5b; 16]);
    let mut c = common::Client::connect(server.listen, sender);
    c.send(
        &common::message(
            sender,
            1,
            "OS:127.0.0.1\\private$\\later",
            b"over mqqb",
            true,
        ),
        true,
        1,
    );
    c.wait_acked();
    server.cli(&[
        "send",
        "DIRECT=OS:.\\private$\\later",
        "--body",
        "over the api",
    ]);
    let out = waiter.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("over mqqb") && text.contains("over the api"),
        "{text}"
    );
}

#[test]
fn a_producer_to_another_machine_fills_its_outgoing_queue() {
    if !have_proton() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, url) = start(dir.path());
    // 192.0.2.0/24 is TEST-NET-1: nothing answers there; the attach and the accepted outcome
    // do not wait for the remote machine.
    let r = &client(&url, &["send", "DIRECT=TCP:192.0.2.1\\private$\\far", "2"])[0];
    assert_eq!(r["sent"], 2);
    assert_eq!(common::api::outgoing_len(&server), 2);
}

#[test]
fn an_amqp_message_reaches_a_second_lior_over_mqqb_with_its_properties() {
    if !have_proton() {
        return;
    }
    // Two queue managers standing for two machines (as tests/serve_outgoing.rs): B at
    // 127.0.0.2 holds the queue, A at 127.0.0.3 takes the AMQP message and sends it on.
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &Path, alias: &str, remote_port: u16| {
        let p = dir.join("lior.toml");
        std::fs::write(
            &p,
            format!("aliases = [\"{alias}\"]\nremote_port = {remote_port}\n"),
        )
        .unwrap();
        p.to_str().unwrap().to_string()
    };
    let port_a = std::net::TcpListener::bind("127.0.0.3:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cb = config(db.path(), "127.0.0.2", port_a);
    let b = Server::start_with(
        &db.path().join("data"),
        &["--config", &cb, "--listen", "127.0.0.2:0"],
    );
    let ca = config(da.path(), "127.0.0.3", b.listen.port());
    let listen_a = format!("127.0.0.3:{port_a}");
    let a = Server::start_with(
        &da.path().join("data"),
        &[
            "--config",
            &ca,
            "--listen",
            &listen_a,
            "--amqp-listen",
            "127.0.0.1:0",
        ],
    );
    b.cli(&["queue", "create", "orders"]);
    let url = format!("amqp://{}", a.amqp.expect("amqp="));
    client(
        &url,
        &[
            "send",
            "DIRECT=TCP:127.0.0.2\\private$\\orders",
            "1",
            "durable",
            "to windows",
            "2",
            "99",
        ],
    );
    let got = b.receive_until("orders", 1);
    assert_eq!(got.len(), 1, "nothing reached B");
    let m = &got[0];
    assert_eq!(m["label"], "to windows");
    assert_eq!(m["priority"], 2);
    assert_eq!(m["app_specific"], 99);
    assert_eq!(m["class"], "recoverable");
    assert_eq!(m["body_base64"], "bXNnLTA=");
    // The id A gave it: {A's GUID}\ordinal, A as the source queue manager.
    let id = m["message_id"].as_str().unwrap();
    assert_eq!(id.split('\\').next(), m["source_qm"].as_str(), "{m}");
}

#[test]
fn rhea_sends_and_receives_too() {
    // Optional second client (Node.js rhea), installed by .ci/run into tests/amqp/node_modules.
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/amqp/node_modules/rhea");
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node || !modules.exists() {
        eprintln!(
            "SKIPPED (loudly): rhea is not installed (node and `cd tests/amqp && npm install \
             rhea`; bash .ci/run does it)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _url) = start(dir.path());
    server.cli(&["queue", "create", "rhea"]);
    let a = server.amqp.unwrap();
    let out = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/amqp/rhea_client.js"
        ))
        .args([&a.ip().to_string(), &a.port().to_string(), "rhea", "3"])
        .output()
        .expect("run node");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "rhea_client.js: {text}");
    let r: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(r["accepted"], 3, "{r}");
    assert_eq!(
        r["received"],
        serde_json::json!(["rhea-0", "rhea-1", "rhea-2"])
    );
    assert_eq!(r["subject"], "from rhea");
    assert_eq!(peek_count(&server, "rhea"), 0);
}
