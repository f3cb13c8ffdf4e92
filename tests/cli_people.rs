//! The CLI for people (issue 14 item 2), through the real `lior` binary and a real `lior serve`:
//! `lior status`, purge that says what it did, tables sized to their content (and to the
//! terminal), `--json` on every command that prints data.

mod common;

use std::process::{Command, Output};

use common::{Server, BIN};

fn run(server: &Server, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--api", &server.api])
        .output()
        .expect("run lior")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn send(server: &Server, queue: &str, body: &str) {
    server.cli(&[
        "send",
        &format!("DIRECT=OS:localhost\\private$\\{queue}"),
        "--body",
        body,
    ]);
}

#[test]
fn status_shows_the_queue_manager_addresses_queues_sessions_and_disk_use() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, &["--cores", "0"]);
    server.cli(&["queue", "create", "orders"]);
    send(&server, "orders", "one");
    send(&server, "orders", "two");

    let o = run(&server, &["status"]);
    assert!(o.status.success(), "lior status: {}", text(&o.stderr));
    let out = text(&o.stdout);
    let status: serde_json::Value =
        serde_json::from_str(&server.cli(&["status", "--json"])).expect("one JSON object");
    let guid = status["qm_guid"].as_str().expect("qm_guid");
    assert!(out.contains(guid), "the GUID is shown: {out}");
    assert!(out.contains(&server.api), "the API address is shown: {out}");
    for word in [
        "MS-MQQB",
        "SRMP",
        "AMQP",
        "partitions",
        "sessions",
        "queues",
        "outgoing",
        "disk",
        "store",
    ] {
        assert!(out.contains(word), "{word} is shown: {out}");
    }
    assert_eq!(status["api"].as_str(), Some(server.api.as_str()));
    assert_eq!(status["queues"]["messages"].as_u64(), Some(2), "{status}");
    assert!(status["queues"]["count"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["store_poisoned"].as_bool(), Some(false), "{status}");
    assert_eq!(status["partitions"].as_u64(), Some(1), "{status}");
    assert!(status["sessions"]["accepted"].is_u64(), "{status}");
    // One MS-MQQB session open now is counted as open.
    let _session = common::Client::connect(server.listen, lior::wire::Guid([0x33; 16]));
    let status: serde_json::Value =
        serde_json::from_str(&server.cli(&["status", "--json"])).expect("one JSON object");
    assert_eq!(status["sessions"]["open"].as_u64(), Some(1), "{status}");
    assert!(
        server.cli(&["status"]).contains("1 open"),
        "the open session is shown"
    );
    assert!(status["outgoing"]["by_state"].is_object(), "{status}");
    let disk = status["data_dir_bytes"].as_u64().expect("data_dir_bytes");
    assert!(disk > 0, "the data directory holds files: {status}");
}

#[test]
fn purge_says_how_many_messages_and_bytes_it_removed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli(&["queue", "create", "big"]);
    for b in ["a", "b", "c"] {
        send(&server, "big", b);
    }
    let out = server.cli(&["queue", "purge", "big"]);
    assert!(out.contains("3 messages"), "the count is said: {out}");
    assert!(out.contains("bytes"), "the bytes are said: {out}");
    send(&server, "big", "d");
    let v: serde_json::Value =
        serde_json::from_str(&server.cli(&["queue", "purge", "big", "--json"])).expect("json");
    assert_eq!(v["messages"].as_u64(), Some(1), "{v}");
    assert!(v["bytes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["queue"].as_str(), Some("big"), "{v}");
}

/// Where the column whose header is `col` ends (right-aligned columns end together).
fn column_end(header: &str, col: &str) -> usize {
    header.find(col).expect("column") + col.len()
}

#[test]
fn queue_list_columns_fit_their_content_when_piped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let long = format!("a-very-long-queue-name-{}", "x".repeat(60));
    server.cli(&["queue", "create", &long]);
    server.cli(&["queue", "create", "s"]);
    send(&server, &long, "hello");
    let out = server.cli(&["queue", "list"]);
    let header = out.lines().next().expect("header");
    let end = column_end(header, "messages");
    let row = out
        .lines()
        .find(|l| l.starts_with(&long))
        .unwrap_or_else(|| panic!("the whole name is listed when piped: {out}"));
    assert_eq!(
        &row[..end].trim_end().rsplit(' ').next().unwrap(),
        &"1",
        "the messages column lines up under its header:\n{out}"
    );
    assert_eq!(row.as_bytes().get(end), Some(&b' '), "{out}");
}

/// Runs `lior ARGS` on a pseudo-terminal (`script`) `cols` wide; None when `script` is missing.
fn on_terminal(server: &Server, args: &str, cols: u16) -> Option<String> {
    let cmd = format!("{BIN} {args} --api {}", server.api);
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("COLUMNS", cols.to_string())
        .output()
        .ok()?;
    assert!(o.status.success(), "{cmd}: {}", text(&o.stderr));
    Some(text(&o.stdout).replace('\r', ""))
}

#[test]
fn tables_on_a_terminal_are_cut_to_its_width_with_an_ellipsis() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let long = format!("long-{}", "y".repeat(110));
    server.cli(&["queue", "create", &long]);
    let Some(out) = on_terminal(&server, "queue list", 70) else {
        eprintln!("skipped: no `script` to give lior a terminal");
        return;
    };
    let row = out
        .lines()
        .find(|l| l.starts_with("long-"))
        .unwrap_or_else(|| panic!("the queue is listed: {out}"));
    assert!(
        row.contains('…'),
        "a long name is cut with an ellipsis: {out}"
    );
    for l in out.lines() {
        assert!(l.chars().count() <= 70, "{l:?} is wider than the terminal");
    }
}

#[test]
fn every_command_that_prints_data_takes_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let v: serde_json::Value =
        serde_json::from_str(&server.cli(&["queue", "create", "j", "--json"])).expect("create");
    assert_eq!(v["name"].as_str(), Some("j"), "{v}");
    let sent = server.cli(&[
        "send",
        "DIRECT=OS:localhost\\private$\\j",
        "--body",
        "x",
        "--count",
        "2",
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = sent
        .lines()
        .map(|l| serde_json::from_str(l).expect("one object a line"))
        .collect();
    assert_eq!(lines.len(), 2, "{sent}");
    assert!(lines[0]["message_id"].is_string(), "{sent}");
    let v: serde_json::Value =
        serde_json::from_str(&server.cli(&["queue", "delete", "j", "--json"])).expect("delete");
    assert_eq!(v["deleted"].as_str(), Some("j"), "{v}");
}

/// Puts `count` small messages into `queue` over MS-MQQB with `lior bench`.
fn fill_with_bench(server: &Server, queue: &str, count: u32) {
    let o = Command::new(BIN)
        .args(["bench", "--connect", &server.listen.to_string()])
        .args(["--to", &format!("DIRECT=TCP:127.0.0.1\\PRIVATE$\\{queue}")])
        .args(["--count", &count.to_string(), "--size", "16"])
        .args(["--json", "--quiet", "--cores", "0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// Long runs show progress on stderr (here with the interval at 0 ms, so that every step shows
/// without the test waiting on the clock); stdout keeps only the messages.
#[test]
fn a_long_receive_and_a_purge_show_progress_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli(&["queue", "create", "many"]);
    fill_with_bench(&server, "many", 10_010);
    let o = Command::new(BIN)
        .args(["receive", "many", "--count", "10005", "--json"])
        .args(["--api", &server.api])
        .env("LIOR_PROGRESS_EVERY_MS", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().count(), 10_005);
    let err = text(&o.stderr);
    assert!(
        err.contains("lior receive: 10000 of 10005 from many"),
        "progress past the first batch: {err}"
    );
    let o = Command::new(BIN)
        .args(["queue", "purge", "many"])
        .args(["--api", &server.api])
        .env("LIOR_PROGRESS_EVERY_MS", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("purged many: 5 messages"),
        "{}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stderr).contains("lior queue purge: removing 5 messages"),
        "{}",
        text(&o.stderr)
    );
}
