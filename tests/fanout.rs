//! Issue 12 item 6: sends to multiple-element format names and `DL=` distribution lists (defined
//! in `[distribution_lists."<guid>"]`) fan out to one copy per distinct destination, each copy
//! carrying the MultiQueueFormatHeader (MS-MQMQ 2.2.20.1) with the list of destinations. Real
//! `lior serve` processes on 127.0.0.x, the real CLI, and python-qpid-proton for AMQP.

mod common;
use common::free_port;

use common::have_proton;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Client, Server, BIN};
use lior::qm::fanout::MqfLists;
use lior::wire::format_name::FormatName;
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};

const DL_A: &str = "7f2c0a3e-5b7d-4c1e-9a61-0d5e3f2b8c41";
const DL_B: &str = "0b9d7c5e-3a1f-4e2d-8c6b-5a4f3e2d1c0b";

fn write_config(dir: &Path, text: &str) -> String {
    let p = dir.join("lior.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// `lior send TO --body BODY --json` against `s`: the answer and whether the command succeeded.
fn send_json(s: &Server, to: &str, body: &str) -> (serde_json::Value, bool, String) {
    let out = Command::new(BIN)
        .args(["send", to, "--body", body, "--json", "--api", &s.api])
        .output()
        .expect("run lior send");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let v = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    (
        v,
        out.status.success(),
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

fn outcomes(v: &serde_json::Value) -> Vec<(String, String)> {
    v["destinations"]
        .as_array()
        .unwrap_or_else(|| panic!("no destinations in {v}"))
        .iter()
        .map(|d| {
            (
                d["destination"].as_str().unwrap().to_lowercase(),
                d["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn mqf(m: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = m["destination_mqf"]
        .as_array()
        .unwrap_or_else(|| panic!("no destination_mqf in {m}"))
        .iter()
        .map(|e| e.as_str().unwrap().to_lowercase())
        .collect();
    v.sort();
    v
}

#[test]
fn a_multiple_element_name_stores_one_copy_in_each_queue() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    s.cli(&["queue", "create", "a"]);
    s.cli(&["queue", "create", "b"]);
    let to = r"DIRECT=OS:.\private$\a,DIRECT=OS:.\private$\b";
    let (v, ok, text) = send_json(&s, to, "to both");
    assert!(ok, "{text}");
    assert_eq!(
        outcomes(&v),
        [
            (r"direct=os:.\private$\a".into(), "stored".into()),
            (r"direct=os:.\private$\b".into(), "stored".into())
        ],
        "{v}"
    );
    for q in ["a", "b"] {
        let got = s.receive_until(q, 1);
        assert_eq!(got.len(), 1, "{q}: {got:?}");
        assert_eq!(got[0]["body_base64"], "dG8gYm90aA==");
        // Each copy lists every destination (MS-MQMQ 2.2.20.1 Destination).
        assert_eq!(
            mqf(&got[0]),
            [r"direct=os:.\private$\a", r"direct=os:.\private$\b"]
        );
        assert!(s.receive_all(q).is_empty(), "{q} has a second copy");
    }
}

#[test]
fn the_same_queue_named_twice_gets_one_copy_and_a_missing_queue_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let c = write_config(
        d.path(),
        &format!(
            "[distribution_lists.\"{DL_A}\"]\nname = \"both\"\nmembers = \
             ['DIRECT=OS:.\\private$\\a', 'DIRECT=TCP:127.0.0.1\\PRIVATE$\\A']\n"
        ),
    );
    let s = Server::start_with(&d.path().join("data"), &["--config", &c]);
    s.cli(&["queue", "create", "a"]);
    // The list, the same queue by another name, and the same name in other case: one copy.
    let to = format!(r"DL={DL_A},DIRECT=OS:.\PRIVATE$\a,DIRECT=os:.\private$\A");
    let (v, ok, text) = send_json(&s, &to, "once");
    assert!(ok, "{text}");
    assert_eq!(outcomes(&v).len(), 1, "{v}");
    assert_eq!(s.receive_until("a", 1).len(), 1);
    assert!(s.receive_all("a").is_empty(), "a second copy in a");
    // A destination with no queue is refused by name; the others still get their copy.
    let (v, ok, text) = send_json(&s, r"DIRECT=OS:.\private$\a,DIRECT=OS:.\private$\nope", "x");
    assert!(
        !ok,
        "a refused destination must make lior send fail: {text}"
    );
    let o = outcomes(&v);
    assert!(
        o.contains(&(r"direct=os:.\private$\a".into(), "stored".into())),
        "{v}"
    );
    assert!(
        o.contains(&(r"direct=os:.\private$\nope".into(), "refused".into())),
        "{v}"
    );
    assert_eq!(s.receive_until("a", 1).len(), 1);
}

#[test]
fn a_dl_delivers_to_a_local_queue_and_to_a_remote_lior_with_the_mqf_header() {
    // Two queue managers standing for two machines (as tests/serve_outgoing.rs): B at
    // 127.0.0.2 holds `orders`, A at 127.0.0.3 holds `here` and defines the list.
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port_a = free_port("127.0.0.3");
    let cb = write_config(
        db.path(),
        &format!("aliases = [\"127.0.0.2\"]\nremote_port = {port_a}\n"),
    );
    let b = Server::start_with(
        &db.path().join("data"),
        &["--config", &cb, "--listen", "127.0.0.2:0"],
    );
    b.cli(&["queue", "create", "orders"]);
    let ca = write_config(
        da.path(),
        &format!(
            "aliases = [\"127.0.0.3\"]\nremote_port = {}\n[distribution_lists.\"{DL_A}\"]\n\
             name = \"everyone\"\nmembers = ['DIRECT=OS:.\\private$\\here', 'DL={DL_B}']\n\
             [distribution_lists.\"{DL_B}\"]\nmembers = ['DIRECT=TCP:127.0.0.2\\private$\\orders']\n",
            b.listen.port()
        ),
    );
    let listen_a = format!("127.0.0.3:{port_a}");
    let a = Server::start_with(
        &da.path().join("data"),
        &["--config", &ca, "--listen", &listen_a],
    );
    a.cli(&["queue", "create", "here"]);
    let (v, ok, text) = send_json(&a, &format!("DL={DL_A}"), "to the list");
    assert!(ok, "{text}");
    let mut o = outcomes(&v);
    o.sort();
    assert_eq!(
        o,
        [
            (r"direct=os:.\private$\here".into(), "stored".into()),
            (
                r"direct=tcp:127.0.0.2\private$\orders".into(),
                "queued".into()
            ),
        ],
        "{v}"
    );
    let want = [
        r"direct=os:.\private$\here",
        r"direct=tcp:127.0.0.2\private$\orders",
    ];
    let here = a.receive_until("here", 1);
    assert_eq!(here.len(), 1);
    assert_eq!(mqf(&here[0]), want);
    let there = b.receive_until("orders", 1);
    assert_eq!(there.len(), 1, "nothing reached B");
    assert_eq!(there[0]["body_base64"], "dG8gdGhlIGxpc3Q=");
    // The remote copy carries the Destination list (as Windows would send it).
    assert_eq!(mqf(&there[0]), want, "{}", there[0]);
    // `lior config` reports the lists.
    let out = Command::new(BIN)
        .args(["config", "--config", &ca])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(DL_A) && text.contains("everyone"), "{text}");
}

#[test]
fn a_nested_dl_loop_is_refused_at_start_naming_the_lists() {
    let d = tempfile::tempdir().unwrap();
    let c = write_config(
        d.path(),
        &format!(
            "[distribution_lists.\"{DL_A}\"]\nmembers = ['DL={DL_B}']\n\
             [distribution_lists.\"{DL_B}\"]\nmembers = ['DIRECT=OS:.\\private$\\q', 'DL={DL_A}']\n"
        ),
    );
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .args(["--config", &c, "--data-dir"])
        .arg(d.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("run lior serve");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "lior serve started: {text}");
    assert!(!text.contains("lior ready"), "{text}");
    assert!(text.contains("loop"), "{text}");
    assert!(text.contains(DL_A) && text.contains(DL_B), "{text}");
}

#[test]
fn an_amqp_producer_to_a_dl_address_fans_out() {
    if !have_proton() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let c = write_config(
        d.path(),
        &format!(
            "[distribution_lists.\"{DL_A}\"]\nmembers = ['DIRECT=OS:.\\private$\\a', \
             'DIRECT=OS:.\\private$\\b']\n"
        ),
    );
    let s = Server::start_with(
        &d.path().join("data"),
        &["--config", &c, "--amqp-listen", "127.0.0.1:0"],
    );
    s.cli(&["queue", "create", "a"]);
    s.cli(&["queue", "create", "b"]);
    let url = format!("amqp://{}", s.amqp.expect("amqp="));
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/amqp/client.py"))
        .args([url.as_str(), "send", &format!("DL={DL_A}"), "2"])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for q in ["a", "b"] {
        let got = s.receive_until(q, 2);
        assert_eq!(got.len(), 2, "{q}: {got:?}");
        assert_eq!(
            mqf(&got[0]),
            [r"direct=os:.\private$\a", r"direct=os:.\private$\b"]
        );
    }
}

/// Arrivals: a sender's copies of one message (one message id) for two queues of this machine,
/// each with the MultiQueueFormatHeader, are both stored, each in the queue its packet
/// addresses, even in one store partition (one duplicate table); the same copy sent again is
/// still a duplicate.
#[test]
fn copies_sharing_a_message_id_for_two_local_queues_are_both_stored() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start_with(&d.path().join("data"), &["--cores", "0"]);
    s.cli(&["queue", "create", "a"]);
    s.cli(&["queue", "create", "b"]);
    let names: Vec<FormatName> = [r"DIRECT=OS:.\private$\a", r"DIRECT=OS:.\private$\b"]
        .iter()
        .map(|n| FormatName::parse(n).unwrap())
        .collect();
    let lists = MqfLists::new(&names, &[], &[]).unwrap();
    let source = Guid([0x66; 16]);
    let frame = |path: &str| {
        let dest = utf16z(path);
        let label = utf16z("copy");
        let mut m = UserMessage::new(
            source,
            42,
            QueueRef::Direct(Utf16(&dest)),
            Utf16(&label),
            b"one message",
        )
        .with_recoverable(true)
        .with_sent_time(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as u32,
        )
        .with_time_to_reach_queue(345_600);
        m.multi_queue = Some(lists.header());
        m.sync();
        let mut f = vec![0u8; m.frame_len()];
        let n = m.encode(&mut f).unwrap();
        f.truncate(n);
        f
    };
    let mut c = Client::connect(s.listen, source);
    c.send(&frame(r"OS:127.0.0.1\private$\a"), true, 1);
    c.send(&frame(r"OS:127.0.0.1\private$\b"), true, 2);
    c.send(&frame(r"OS:127.0.0.1\private$\a"), true, 3);
    c.wait_acked();
    let a = s.receive_until("a", 1);
    let b = s.receive_until("b", 1);
    assert_eq!((a.len(), b.len()), (1, 1), "a: {a:?}\nb: {b:?}");
    assert_eq!(
        mqf(&b[0]),
        [r"direct=os:.\private$\a", r"direct=os:.\private$\b"]
    );
    assert!(
        s.receive_all("a").is_empty(),
        "the resend of a's copy was stored twice"
    );
}

/// Hardened mode: the local copy is stored, the copy for another machine waits in its locked
/// outgoing queue, and the answer says so for each destination.
#[test]
fn in_hardened_mode_each_destination_says_stored_or_locked() {
    let d = tempfile::tempdir().unwrap();
    let c = write_config(
        d.path(),
        "srmp_listen = \"127.0.0.1:0\"\n[Parameters]\nHardened_MSMQ = true\n",
    );
    let s = Server::start_with(&d.path().join("data"), &["--config", &c]);
    s.cli(&["queue", "create", "a"]);
    let (v, ok, text) = send_json(
        &s,
        r"DIRECT=OS:.\private$\a,DIRECT=TCP:192.0.2.1\private$\far",
        "x",
    );
    assert!(ok, "{text}");
    assert_eq!(
        outcomes(&v),
        [
            (r"direct=os:.\private$\a".into(), "stored".into()),
            (r"direct=tcp:192.0.2.1\private$\far".into(), "locked".into()),
        ],
        "{v}"
    );
    let far = &v["destinations"][1];
    assert!(
        far["held"].as_str().unwrap_or("").contains("hardened"),
        "{v}"
    );
    assert_eq!(s.receive_until("a", 1).len(), 1);
    assert_eq!(common::api::outgoing_len(&s), 1);
}
