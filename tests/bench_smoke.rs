//! `lior bench` against a real `lior serve` on loopback: every message sent is acknowledged and
//! stored, the JSON summary carries the promised fields, and `--consume` drains the queue.
//! No timing is asserted.

mod common;

use std::process::Command;

use common::{Server, BIN};

fn bench(server: &Server, args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("bench")
        .args([
            "--connect",
            &server.listen.to_string(),
            "--api",
            &server.api,
        ])
        .args(["--json", "--quiet", "--cores", "0"])
        .args(args)
        .output()
        .expect("run lior bench");
    assert!(
        out.status.success(),
        "lior bench {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn queue_messages(server: &Server, name: &str) -> u64 {
    let list: serde_json::Value =
        serde_json::from_str(&server.cli(&["queue", "list", "--json"])).expect("json");
    list.as_array()
        .expect("array")
        .iter()
        .find(|q| q["name"] == name)
        .and_then(|q| q["messages"].as_u64())
        .expect("queue listed")
}

#[test]
fn bench_count_express_and_recoverable_with_consume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    server.cli(&["queue", "create", "smoke"]);
    let to = "DIRECT=TCP:127.0.0.1\\PRIVATE$\\smoke";

    let s = bench(
        &server,
        &[
            "--to",
            to,
            "--count",
            "3000",
            "--sessions",
            "3",
            "--size",
            "100",
        ],
    );
    assert_eq!(s["sent"], 3000, "{s}");
    assert_eq!(s["acked"], 3000, "{s}");
    assert_eq!(s["errors"].as_array().map(Vec::len), Some(0), "{s}");
    for k in ["msgs_per_sec", "mb_per_sec"] {
        assert!(s[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {s}");
    }
    let lat = &s["latency_us"];
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            lat[k].as_f64().is_some_and(|v| v > 0.0),
            "latency {k} in {s}"
        );
    }
    assert!(lat["p50"].as_f64() <= lat["max"].as_f64());
    assert_eq!(lat["samples"], 3000);
    assert_eq!(queue_messages(&server, "smoke"), 3000);

    // Recoverable, drained through the local API at the same time: the 3000 express messages
    // left in the queue come out too (without a timestamp of this run, so no latency for them).
    let s = bench(
        &server,
        &[
            "--to",
            to,
            "--count",
            "1000",
            "--sessions",
            "2",
            "--size",
            "64",
            "--delivery",
            "recoverable",
            "--consume",
            "smoke",
        ],
    );
    assert_eq!(s["acked"], 1000, "{s}");
    assert_eq!(s["delivery"], "recoverable");
    let c = &s["consume"];
    assert_eq!(c["received"], 4000, "{s}");
    assert!(c["end_to_end_us"]["samples"].as_u64() >= Some(1000), "{s}");
    assert_eq!(queue_messages(&server, "smoke"), 0);
}

#[test]
fn bench_reports_a_refused_connection() {
    // Nothing listens on this port (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let out = Command::new(BIN)
        .args([
            "bench",
            "--to",
            "DIRECT=TCP:127.0.0.1\\PRIVATE$\\q",
            "--count",
            "10",
        ])
        .args(["--connect", &format!("127.0.0.1:{port}"), "--cores", "0"])
        .output()
        .expect("run lior bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open the sessions"), "{err}");
}

#[test]
fn bench_sends_messages_of_several_megabytes_and_refuses_too_large_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    server.cli(&["queue", "create", "big"]);
    let to = "DIRECT=TCP:127.0.0.1\\PRIVATE$\\big";
    // A window of 3 MB messages is far more than one write may carry: the bench must batch
    // by bytes, not close its own connection as TransmitTooLarge.
    for delivery in ["express", "recoverable"] {
        let s = bench(
            &server,
            &[
                "--to",
                to,
                "--count",
                "4",
                "--size",
                "3000000",
                "--delivery",
                delivery,
            ],
        );
        assert_eq!(s["acked"], 4, "{s}");
        assert_eq!(s["errors"].as_array().map(Vec::len), Some(0), "{s}");
    }
    assert_eq!(queue_messages(&server, "big"), 8);
    // The largest body lior states it takes goes through too.
    let max = lior::http::api::SEND_BODY_BYTES_MAX.to_string();
    let s = bench(&server, &["--to", to, "--count", "1", "--size", &max]);
    assert_eq!(s["acked"], 1, "{s}");
    // One byte more is refused up front, with the sizes.
    let over = (lior::http::api::SEND_BODY_BYTES_MAX + 1).to_string();
    let out = Command::new(BIN)
        .args(["bench", "--to", to, "--count", "1", "--size", &over])
        .args(["--connect", &server.listen.to_string(), "--cores", "0"])
        .output()
        .expect("run lior bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("message too large"), "{err}");
    assert!(
        err.contains(&format!("limit {}", lior::http::api::SEND_BODY_BYTES_MAX)),
        "{err}"
    );
}
