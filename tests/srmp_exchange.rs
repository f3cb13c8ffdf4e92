//! Two lior queue managers in hardened mode talking SRMP (MSMQ over HTTP) to each other:
//! express, recoverable and transactional (stream) messages both ways, stream receipts, a
//! `kill -9` of the receiver with messages in flight, and a peer that answers 500 or garbage.
//! Real `lior serve` processes on 127.0.0.1 only.

mod common;
use common::free_port;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::api::{metric, outgoing_len};
use common::Server;

/// Queue manager A's and B's addresses: other loopback addresses than 127.0.0.1 (which every
/// lior takes for itself) stand for two machines.
const A: &str = "127.0.0.2";
const B: &str = "127.0.0.3";

/// A port free on `ip` now (the SRMP endpoint must know its own port before it starts:
/// stream receipts come back to it).
fn hardened(dir: &Path, ip: &str, srmp_port: u16) -> Server {
    hardened_with(dir, ip, srmp_port, "")
}

fn hardened_with(dir: &Path, ip: &str, srmp_port: u16, extra: &str) -> Server {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("lior.toml");
    std::fs::write(
        &cfg,
        format!(
            "srmp_listen = \"{ip}:{srmp_port}\"\n{extra}[Parameters]\nHardened_MSMQ = true\n\
             TryConnectInterval = 200\n"
        ),
    )
    .unwrap();
    let s = Server::start_with(&dir.join("data"), &["--config", cfg.to_str().unwrap()]);
    assert_eq!(s.listen.port(), 0, "hardened: no MS-MQQB listener");
    s
}

fn send(from: &Server, to: &str, label: &str, class: &str) {
    let mut args = vec!["send", to, "--label", label, "--body", label];
    if !class.is_empty() {
        args.push(class);
    }
    let out = from.cli(&args);
    assert!(!out.contains("locked"), "{out}");
}

fn labels(got: &[serde_json::Value]) -> Vec<String> {
    got.iter()
        .map(|m| m["label"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until `f` holds, up to 20 s.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn url(ip: &str, port: u16, queue: &str) -> String {
    format!("DIRECT=HTTP://{ip}:{port}/msmq/private$/{queue}")
}

#[test]
fn two_hardened_liors_exchange_every_class_over_srmp_with_stream_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(A), free_port(B));
    let a = hardened(&dir.path().join("a"), A, pa);
    let b = hardened(&dir.path().join("b"), B, pb);
    for s in [&a, &b] {
        s.cli(&["queue", "create", "inbox"]);
        s.cli(&["queue", "create", "orders", "--transactional"]);
    }
    for (from, ip, port, tag) in [(&a, B, pb, "a"), (&b, A, pa, "b")] {
        for i in 0..3 {
            send(
                from,
                &url(ip, port, "inbox"),
                &format!("{tag}-express-{i}"),
                "",
            );
            send(
                from,
                &url(ip, port, "inbox"),
                &format!("{tag}-recoverable-{i}"),
                "--recoverable",
            );
        }
        for i in 0..5 {
            send(
                from,
                &url(ip, port, "orders"),
                &format!("{tag}-tx-{i}"),
                "--transactional",
            );
        }
    }
    for (to, tag) in [(&b, "a"), (&a, "b")] {
        let mut got = labels(&to.receive_until("inbox", 6));
        got.sort();
        let mut want: Vec<String> = (0..3)
            .flat_map(|i| {
                [
                    format!("{tag}-express-{i}"),
                    format!("{tag}-recoverable-{i}"),
                ]
            })
            .collect();
        want.sort();
        assert_eq!(got, want, "every express and recoverable message, once");
        let tx = to.receive_until("orders", 5);
        assert_eq!(
            labels(&tx),
            (0..5).map(|i| format!("{tag}-tx-{i}")).collect::<Vec<_>>(),
            "transactional: exactly once, in order"
        );
        assert!(tx.iter().all(|m| m["class"] == "transactional"));
    }
    // Stream receipts went back and settled every stream message: nothing waits any more.
    for s in [&a, &b] {
        eventually("outgoing queues drained by 2xx and stream receipts", || {
            outgoing_len(s) == 0
        });
        assert!(metric(s, "lior_srmp_stream_receipts_queued_total") >= 1);
        assert!(metric(s, "lior_srmp_receipts_received_total") >= 1);
        assert_eq!(metric(s, "lior_srmp_out_failures_total"), 0);
    }
    assert!(b.receive_all("inbox").is_empty() && a.receive_all("orders").is_empty());
}

#[test]
fn a_receiver_killed_with_messages_in_flight_gets_each_exactly_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(A), free_port(B));
    let a = hardened(&dir.path().join("a"), A, pa);
    let mut b = hardened(&dir.path().join("b"), B, pb);
    b.cli(&["queue", "create", "inbox"]);
    b.cli(&["queue", "create", "orders", "--transactional"]);
    for i in 0..15 {
        send(
            &a,
            &url(B, pb, "inbox"),
            &format!("rec-{i:02}"),
            "--recoverable",
        );
        send(
            &a,
            &url(B, pb, "orders"),
            &format!("tx-{i:02}"),
            "--transactional",
        );
        if i == 7 {
            // Some are on their way, some arrived, some wait: kill the receiver now.
            b.kill9();
            b = hardened(&dir.path().join("b"), B, pb);
        }
    }
    let mut rec = labels(&b.receive_until("inbox", 15));
    rec.sort();
    assert_eq!(
        rec,
        (0..15).map(|i| format!("rec-{i:02}")).collect::<Vec<_>>(),
        "every recoverable message, once"
    );
    assert_eq!(
        labels(&b.receive_until("orders", 15)),
        (0..15).map(|i| format!("tx-{i:02}")).collect::<Vec<_>>(),
        "every transactional message once, in order"
    );
    eventually("the sender's outgoing queue drains", || {
        outgoing_len(&a) == 0
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(b.receive_all("inbox").is_empty(), "no late duplicate");
    assert!(b.receive_all("orders").is_empty(), "no late duplicate");
}

/// A fake SRMP receiver: answers each request with the next canned answer (then 200s).
fn fake_peer(answers: Vec<&'static [u8]>) -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.4:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut answers = answers.into_iter();
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // One request per connection: read the head and the declared body.
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            let total = loop {
                let Ok(n) = c.read(&mut buf) else { break None };
                if n == 0 {
                    break None;
                }
                req.extend_from_slice(&buf[..n]);
                if let Some(at) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&req[..at]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    if req.len() >= at + 4 + len {
                        break Some(req.clone());
                    }
                }
            };
            let Some(req) = total else { continue };
            let answer = answers
                .next()
                .unwrap_or(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = c.write_all(answer);
            let _ = tx.send(req);
        }
    });
    (port, rx)
}

#[test]
fn a_peer_answering_500_or_garbage_keeps_the_message_queued_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (port, requests) = fake_peer(vec![
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
        b"\x00\x01\x02 not HTTP at all\r\n\r\n",
    ]);
    let a = hardened(&dir.path().join("a"), A, free_port(A));
    send(
        &a,
        &url("127.0.0.4", port, "inbox"),
        "kept",
        "--recoverable",
    );
    // First post: 500. The message stays, counted.
    let first = requests.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(first.starts_with(b"POST /msmq/private$/inbox HTTP/1.1\r\n"));
    eventually("the 500 is counted", || {
        metric(&a, "lior_srmp_out_failures_total") >= 1
    });
    assert_eq!(outgoing_len(&a), 1, "kept after a 500");
    // Second post: garbage. Still kept, counted, and lior still serves.
    requests.recv_timeout(Duration::from_secs(20)).unwrap();
    eventually("the garbage is counted", || {
        metric(&a, "lior_srmp_out_failures_total") >= 2
    });
    // Third: 200. The message is settled and removed.
    let third = requests.recv_timeout(Duration::from_secs(20)).unwrap();
    let text = String::from_utf8_lossy(&third);
    assert!(text.contains("<action>MSMQ:kept</action>"), "{text}");
    assert!(
        text.contains("<durable/>"),
        "recoverable is durable: {text}"
    );
    eventually("settled by the 200", || outgoing_len(&a) == 0);
}

#[test]
fn delivery_and_commitment_receipts_come_back_as_admin_acks_in_the_senders_admin_queue() {
    use lior::http::srmp_write::{write_message, ReceiptRequests, SrmpOut};
    use lior::wire::Guid;
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(A), free_port(B));
    let a = hardened(&dir.path().join("a"), A, pa);
    let b = hardened(&dir.path().join("b"), B, pb);
    a.cli(&["queue", "create", "admin"]);
    b.cli(&["queue", "create", "inbox"]);
    // A sender (on A's machine) asks B for both receipts, to A's admin queue over HTTP.
    let admin = format!("http://{A}:{pa}/msmq/private$/admin");
    let sender = Guid::parse_text("caf195ea-615c-4264-ae08-11a4e60194c0").unwrap();
    let to = format!("http://{B}:{pb}/msmq/private$/inbox");
    let w = write_message(&SrmpOut {
        to: &to,
        label: "wants receipts",
        qm: sender,
        index: 41,
        sent_at: 1_700_000_000,
        expires_at: u32::MAX,
        ttrq: None,
        durable: true,
        priority: 3,
        class: 0,
        app: 0,
        body_type: 0,
        correlation: None,
        journal: false,
        dead_letter: false,
        response: None,
        receipts: ReceiptRequests {
            delivery_to: Some(admin.clone()),
            commitment_to: Some(admin),
            commitment_positive: false,
            commitment_negative: false,
        },
        stream: None,
        body: b"hello",
    })
    .unwrap();
    let r = ureq::post(&format!("http://{B}:{pb}/msmq/private$/inbox"))
        .set("Content-Type", &w.content_type)
        .set("SOAPAction", "\"MSMQMessage\"")
        .send_bytes(&w.body)
        .unwrap();
    assert_eq!(r.status(), 200);
    let original = format!("{}\\41", sender);
    // Stored at B: the delivery receipt reaches A's admin queue as ACK_REACH_QUEUE.
    let acks = a.receive_until("admin", 1);
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert!(
        acks[0]["message_class"]
            .as_str()
            .unwrap()
            .contains("REACH_QUEUE"),
        "{acks:?}"
    );
    assert_eq!(acks[0]["label"], "wants receipts");
    let corr = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(acks[0]["correlation_id_base64"].as_str().unwrap())
            .unwrap()
    };
    assert_eq!(
        &corr[16..],
        &41u32.to_le_bytes(),
        "correlated with {original}"
    );
    assert_eq!(&corr[..16], &sender.0);
    // An application receives it at B: the commitment receipt reaches A as ACK_RECEIVE.
    let got = b.receive_until("inbox", 1);
    assert_eq!(got.len(), 1);
    let acks = a.receive_until("admin", 1);
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert!(
        acks[0]["message_class"]
            .as_str()
            .unwrap()
            .contains("ACK_RECEIVE"),
        "{acks:?}"
    );
    assert!(metric(&a, "lior_srmp_receipts_received_total") >= 2);
    eventually("B's receipts are all sent", || outgoing_len(&b) == 0);
}

/// A CA and a certificate it signed for both test addresses, as PEM files in `dir`: (ca, cert,
/// key). Generated here (rcgen), nothing read from outside the repository.
fn pki(dir: &Path) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "lior SRMP test CA");
    let ca = p.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![A.into(), B.into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let paths = ["ca.pem", "srmp.pem", "srmp.key"].map(|f| dir.join(f));
    std::fs::write(&paths[0], ca.pem()).unwrap();
    std::fs::write(&paths[1], cert.pem()).unwrap();
    std::fs::write(&paths[2], key.serialize_pem()).unwrap();
    let [a, b, c] = paths.map(|p| p.to_str().unwrap().to_string());
    (a, b, c)
}

#[test]
fn two_liors_exchange_over_https_and_an_untrusted_peer_keeps_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(dir.path());
    let tls =
        format!("srmp_tls_cert = \"{cert}\"\nsrmp_tls_key = \"{key}\"\nsrmp_tls_ca = \"{ca}\"\n");
    let (pa, pb) = (free_port(A), free_port(B));
    let a = hardened_with(&dir.path().join("a"), A, pa, &tls);
    let b = hardened_with(&dir.path().join("b"), B, pb, &tls);
    b.cli(&["queue", "create", "inbox"]);
    b.cli(&["queue", "create", "orders", "--transactional"]);
    let https = |q: &str| format!("DIRECT=HTTPS://{B}:{pb}/msmq/private$/{q}");
    send(&a, &https("inbox"), "over-tls", "--recoverable");
    for i in 0..3 {
        send(
            &a,
            &https("orders"),
            &format!("tls-tx-{i}"),
            "--transactional",
        );
    }
    assert_eq!(labels(&b.receive_until("inbox", 1)), ["over-tls"]);
    assert_eq!(
        labels(&b.receive_until("orders", 3)),
        ["tls-tx-0", "tls-tx-1", "tls-tx-2"]
    );
    // The stream receipts came back over HTTPS too.
    eventually("A's outgoing queue drains", || outgoing_len(&a) == 0);

    // A sender that does not trust B's CA keeps its message, counted.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (other_ca, _, _) = pki(&other);
    let c = hardened_with(
        &dir.path().join("c"),
        A,
        free_port(A),
        &format!("srmp_tls_ca = \"{other_ca}\"\n"),
    );
    send(&c, &https("inbox"), "untrusted", "--recoverable");
    eventually("the failed handshake is counted", || {
        metric(&c, "lior_srmp_out_failures_total") >= 1
    });
    assert_eq!(outgoing_len(&c), 1, "kept");
    assert!(b.receive_all("inbox").is_empty());
}
