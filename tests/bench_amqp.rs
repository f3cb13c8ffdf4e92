//! `lior bench --produce-amqp` and `--consume-amqp` against a real `lior serve --amqp-listen`
//! on loopback: every message produced is accepted and stored, the consumers drain exactly that
//! many (a missed or duplicated message fails the count), the queue is empty afterwards, and the
//! JSON summaries carry the promised fields. A refused attach is a clear error. No timing is
//! asserted.

mod common;

use std::process::{Command, Output};

use common::{Server, BIN};

fn bench(server: &Server, args: &[&str]) -> Output {
    let amqp = server.amqp.expect("the ready line names amqp=").to_string();
    Command::new(BIN)
        .arg("bench")
        .args(["--amqp", &amqp, "--api", &server.api, "--json", "--quiet"])
        .args(args)
        .output()
        .expect("run lior bench")
}

fn bench_ok(server: &Server, args: &[&str]) -> serde_json::Value {
    let out = bench(server, args);
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

fn assert_latency(lat: &serde_json::Value, samples: u64, what: &str) {
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            lat[k].as_f64().is_some_and(|v| v > 0.0),
            "{what} latency {k} in {lat}"
        );
    }
    assert!(lat["p50"].as_f64() <= lat["p99"].as_f64(), "{lat}");
    assert_eq!(lat["samples"], samples, "{what}: {lat}");
}

#[test]
fn bench_produces_and_consumes_over_amqp_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &["--amqp-listen", "127.0.0.1:0"]);
    server.cli(&["queue", "create", "amqpbench"]);

    // 2000 produced over 3 connections, half of them durable.
    let p = bench_ok(
        &server,
        &[
            "--produce-amqp",
            "amqpbench",
            "--count",
            "1500",
            "--connections",
            "3",
            "--size",
            "100",
        ],
    );
    assert_eq!(p["protocol"], "amqp", "{p}");
    assert_eq!(p["sent"], 1500, "{p}");
    assert_eq!(p["acked"], 1500, "{p}");
    assert_eq!(p["errors"].as_array().map(Vec::len), Some(0), "{p}");
    assert!(p["msgs_per_sec"].as_f64().is_some_and(|v| v > 0.0), "{p}");
    assert_latency(&p["latency_us"], 1500, "produce");
    assert_eq!(p["amqp_produce"]["accepted"], 1500, "{p}");
    let d = bench_ok(
        &server,
        &[
            "--produce-amqp",
            "amqpbench",
            "--count",
            "500",
            "--durable",
            "--size",
            "200",
        ],
    );
    assert_eq!(d["acked"], 500, "{d}");
    assert_eq!(d["delivery"], "recoverable", "{d}");
    assert_eq!(queue_messages(&server, "amqpbench"), 2000);

    // Two consumers with a small credit drain the backlog: exactly 2000, none left.
    let c = bench_ok(
        &server,
        &[
            "--consume-amqp",
            "amqpbench",
            "--consumers",
            "2",
            "--credit",
            "50",
        ],
    );
    let a = &c["amqp_consume"];
    assert_eq!(a["received"], 2000, "{c}");
    assert_eq!(a["settle"], "accept", "{c}");
    assert!(a["msgs_per_sec"].as_f64().is_some_and(|v| v > 0.0), "{c}");
    assert_latency(&a["end_to_end_us"], 2000, "end-to-end");
    assert_eq!(a["depth_end"], 0, "{c}");
    assert_eq!(c["errors"].as_array().map(Vec::len), Some(0), "{c}");
    assert_eq!(queue_messages(&server, "amqpbench"), 0);

    // MS-MQQB producer and a pre-settled AMQP consumer in one run: all that was acknowledged
    // arrives once.
    let both = bench_ok(
        &server,
        &[
            "--to",
            "DIRECT=TCP:127.0.0.1\\PRIVATE$\\amqpbench",
            "--connect",
            &server.listen.to_string(),
            "--cores",
            "0",
            "--count",
            "1000",
            "--consume-amqp",
            "amqpbench",
            "--settle",
            "presettled",
        ],
    );
    assert_eq!(both["acked"], 1000, "{both}");
    assert_eq!(both["amqp_consume"]["received"], 1000, "{both}");
    assert!(
        both["amqp_consume"]["depth_at_producer_end"].is_u64(),
        "{both}"
    );
    assert_eq!(both["amqp_consume"]["depth_end"], 0, "{both}");
    assert_eq!(queue_messages(&server, "amqpbench"), 0);
}

#[test]
fn bench_amqp_says_why_an_attach_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &["--amqp-listen", "127.0.0.1:0"]);
    for args in [
        &["--consume-amqp", "no-such-queue"][..],
        &["--produce-amqp", "no-such-queue", "--count", "10"][..],
    ] {
        let out = bench(&server, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("refused") && err.contains("amqp:not-found"),
            "{args:?}: {err}"
        );
    }
    // PLAIN where the server offers only ANONYMOUS.
    let out = bench(
        &server,
        &[
            "--produce-amqp",
            "x",
            "--count",
            "1",
            "--amqp-user",
            "u",
            "--amqp-password",
            "p",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not offer SASL PLAIN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_amqp_moves_messages_larger_than_one_frame() {
    // lior announces a 256 KiB max-frame-size: 600,000 B goes as several transfer frames each
    // way (the producer splits, the consumer puts them together).
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &["--amqp-listen", "127.0.0.1:0"]);
    server.cli(&["queue", "create", "big"]);
    let p = bench_ok(
        &server,
        &[
            "--produce-amqp",
            "big",
            "--count",
            "6",
            "--connections",
            "2",
            "--size",
            "600000",
        ],
    );
    assert_eq!(p["acked"], 6, "{p}");
    let c = bench_ok(&server, &["--consume-amqp", "big", "--credit", "2"]);
    assert_eq!(c["amqp_consume"]["received"], 6, "{c}");
    assert_eq!(c["amqp_consume"]["end_to_end_us"]["samples"], 6, "{c}");
    assert_eq!(queue_messages(&server, "big"), 0);
}

#[test]
fn bench_amqp_says_so_when_the_server_goes_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_with(dir.path(), &["--amqp-listen", "127.0.0.1:0"]);
    server.cli(&["queue", "create", "gone"]);
    let amqp = server.amqp.expect("amqp=").to_string();
    let child = Command::new(BIN)
        .args(["bench", "--consume-amqp", "gone", "--amqp", &amqp])
        .args([
            "--api",
            &server.api,
            "--duration",
            "60",
            "--json",
            "--quiet",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn lior bench");
    // Let the consumer attach, then kill -9 the server under it.
    std::thread::sleep(std::time::Duration::from_secs(2));
    server.kill9();
    let out = child.wait_with_output().expect("wait for lior bench");
    assert!(!out.status.success(), "exit status {:?}", out.status);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("AMQP consumer 0")
            && (err.contains("closed the connection") || err.contains("read:")),
        "{err}"
    );
}
