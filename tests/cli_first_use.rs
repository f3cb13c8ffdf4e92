//! A new user's first hour (issue 8), through the real `lior` binary and a real `lior serve`:
//! large bodies, message counts, start-up errors, queue names, and the papercuts of the CLI.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use common::{Server, BIN};

/// The body limit as `lior` states it (`lior::http::api::SEND_BODY_BYTES_MAX`).
const BODY_MAX: usize = lior::http::api::SEND_BODY_BYTES_MAX;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Runs the CLI against `server` and returns its whole output, success or not.
fn run(server: &Server, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--api", &server.api])
        .output()
        .expect("run lior")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Puts `count` messages of `size` bytes into `queue` over MS-MQQB with `lior bench` (quicker
/// than as many API calls).
fn fill_with_bench(server: &Server, queue: &str, count: u32, size: u32) {
    let o = Command::new(BIN)
        .args(["bench", "--connect", &server.listen.to_string()])
        .args(["--to", &format!("DIRECT=TCP:127.0.0.1\\PRIVATE$\\{queue}")])
        .args(["--count", &count.to_string(), "--size", &size.to_string()])
        .args(["--json", "--quiet", "--cores", "0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

fn queue_len(server: &Server, name: &str) -> u64 {
    let list: serde_json::Value =
        serde_json::from_str(&server.cli(&["queue", "list", "--json"])).expect("json");
    list.as_array()
        .expect("array")
        .iter()
        .find(|q| {
            q["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .and_then(|q| q["messages"].as_u64())
        .unwrap_or_else(|| panic!("{name} not listed: {list}"))
}

/// An HTTP call to the API; returns the status and the body text.
fn http(server: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let req = ureq::request(method, &format!("http://{}{path}", server.api));
    let r = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    match r {
        Ok(resp) => (resp.status(), resp.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

// ---- 4 MB bodies ----

#[test]
fn four_megabyte_bodies_go_through_send_the_api_and_receive() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli(&["queue", "create", "big"]);
    let to = "DIRECT=OS:localhost\\private$\\big";
    // 4 MB, and the largest body lior states it takes.
    for len in [4_000_000, BODY_MAX] {
        let file = dir.path().join(format!("body-{len}"));
        std::fs::write(&file, pattern(len)).unwrap();
        let out = server.cli(&["send", to, "--body-file", file.to_str().unwrap()]);
        assert!(out.contains("local queue big"), "{out}");
    }
    // Both in one answer: more than ureq's 10 MB `into_string` limit.
    let out = server.cli(&["receive", "big", "--count", "2", "--json"]);
    let mut got: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 2);
    // Two messages may come from two store partitions in either order.
    got.sort_by_key(|m| m["body_size"].as_u64());
    for (m, len) in got.iter().zip([4_000_000, BODY_MAX]) {
        let body = b64().decode(m["body_base64"].as_str().unwrap()).unwrap();
        assert_eq!(body.len(), len);
        assert!(
            body == pattern(len),
            "body of {len} bytes changed on the way"
        );
    }
}

#[test]
fn a_body_over_the_limit_is_refused_with_its_size_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli(&["queue", "create", "big"]);
    let file = dir.path().join("too-big");
    std::fs::write(&file, pattern(BODY_MAX + 1)).unwrap();
    let o = run(
        &server,
        &[
            "send",
            "DIRECT=OS:localhost\\private$\\big",
            "--body-file",
            file.to_str().unwrap(),
        ],
    );
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains(&format!(
            "message too large: {} bytes, limit {BODY_MAX}",
            BODY_MAX + 1
        )),
        "{e}"
    );
    assert!(!e.contains("cannot reach"), "{e}");
    // The API says the same to a program: 413 with the sizes, for a body over the limit and
    // for a request past the HTTP body limit.
    for len in [BODY_MAX + 1, 4_400_000] {
        let req = serde_json::json!({
            "to": "DIRECT=OS:localhost\\private$\\big",
            "body_base64": b64().encode(pattern(len)),
        })
        .to_string();
        // Past the HTTP body limit the server answers 413 and closes without reading the rest;
        // on a loaded machine the client can meet the closed socket while still writing and
        // never see the answer: a few tries (each one still has to be a 413 to count).
        let mut answer = None;
        for _ in 0..5 {
            let r = ureq::post(&format!("http://{}/v1/send", server.api))
                .set("Content-Type", "application/json")
                .send_string(&req);
            match r {
                Ok(resp) => panic!("{len}: accepted with {}", resp.status()),
                Err(ureq::Error::Status(code, resp)) => {
                    answer = Some((code, resp.into_string().unwrap_or_default()));
                    break;
                }
                Err(e) => eprintln!("{len}: {e}; trying again"),
            }
        }
        let (status, text) = answer.expect("a 413 answer within five tries");
        assert_eq!(status, 413, "{len}: {text}");
        assert!(text.contains("message too large"), "{text}");
        assert!(text.contains("limit"), "{text}");
    }
    assert_eq!(queue_len(&server, "big"), 0);
}

#[test]
fn receiving_many_large_messages_is_split_into_bounded_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli(&["queue", "create", "big"]);
    // 18 messages of 4 MB: 72 MB, more than one answer carries (64 MiB).
    fill_with_bench(&server, "big", 18, 4_000_000);
    // One API call stops at its byte bound and says more may wait.
    let resp = ureq::post(&format!(
        "http://{}/v1/queues/big/receive?count=18",
        server.api
    ))
    .call()
    .unwrap();
    assert_eq!(resp.header(lior::http::api::MORE_HEADER), Some("true"));
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut text).unwrap();
    let first: Vec<serde_json::Value> = serde_json::from_slice(&text).unwrap();
    let bound = lior::http::api::RECEIVE_RESPONSE_BYTES_MAX / 4_000_000;
    assert!(
        (1..=bound + 1).contains(&first.len()),
        "{} messages in one answer",
        first.len()
    );
    // The CLI keeps asking until it has what it asked for.
    let left = 18 - first.len();
    let out = server.cli(&["receive", "big", "--count", &left.to_string(), "--json"]);
    assert_eq!(out.lines().count(), left);
    assert_eq!(queue_len(&server, "big"), 0);
}

// ---- counts ----

#[test]
fn count_zero_is_refused_by_the_cli_and_the_api_and_removes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli(&["queue", "create", "q"]);
    server.cli(&["send", "DIRECT=OS:localhost\\private$\\q", "--count", "3"]);
    assert_eq!(queue_len(&server, "q"), 3);
    for verb in ["receive", "peek"] {
        let o = run(&server, &[verb, "q", "--count", "0"]);
        assert!(!o.status.success(), "{verb} --count 0 succeeded");
        assert!(stderr(&o).contains("at least 1"), "{}", stderr(&o));
    }
    let o = run(
        &server,
        &["send", "DIRECT=OS:localhost\\private$\\q", "--count", "0"],
    );
    assert!(!o.status.success(), "send --count 0 succeeded");
    assert!(stderr(&o).contains("at least 1"), "{}", stderr(&o));
    for (method, path) in [
        ("POST", "/v1/queues/q/receive?count=0"),
        ("GET", "/v1/queues/q/messages?count=0"),
        ("POST", "/v1/queues/q/receive?count=10001"),
    ] {
        let (status, text) = http(&server, method, path, None);
        assert_eq!(status, 400, "{method} {path}: {text}");
        assert!(text.contains("count"), "{text}");
    }
    assert_eq!(
        queue_len(&server, "q"),
        3,
        "a refused call removed a message"
    );
    // And a real peek shows the three.
    let out = server.cli(&["peek", "q", "--count", "3", "--json"]);
    assert_eq!(out.lines().count(), 3);
}

#[test]
fn receive_past_the_per_call_cap_keeps_going_and_says_when_the_queue_ran_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli(&["queue", "create", "many"]);
    // 10,005 small messages, over MS-MQQB (quicker than 10,005 API calls).
    fill_with_bench(&server, "many", 10_005, 16);
    assert_eq!(queue_len(&server, "many"), 10_005);
    let out = server.cli(&["receive", "many", "--count", "10003", "--json"]);
    assert_eq!(out.lines().count(), 10_003);
    let o = run(&server, &["receive", "many", "--count", "5", "--json"]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
    assert!(
        stderr(&o).contains("2 of the 5"),
        "fewer than asked must be said: {}",
        stderr(&o)
    );
}

// ---- start-up errors ----

/// Runs `lior serve` to its exit (it must fail) and returns stderr. With `as_nobody`, as uid
/// 65534 when this test runs as root (root ignores permissions); None (the test is skipped,
/// saying why) when that user cannot run the binary (a checkout in a private home directory).
fn serve_fails(args: &[&str], as_nobody: bool) -> Option<String> {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(BIN);
    c.arg("serve")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    if as_nobody && is_root() {
        c.uid(65534).gid(65534);
    }
    let mut child = match c.stderr(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) if as_nobody && is_root() => {
            eprintln!("skipped: uid 65534 cannot run {BIN} ({e}); run the tests as a normal user");
            return None;
        }
        Err(e) => panic!("spawn lior serve: {e}"),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut e = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut e).unwrap();
            assert!(!status.success(), "lior serve {args:?} started: {e}");
            return Some(e);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lior serve {args:?} kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn a_data_dir_that_is_a_file_is_named_with_the_remedy() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let e = serve_fails(
        &[
            "--data-dir",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
        ],
        false,
    )
    .unwrap();
    assert!(e.contains(file.to_str().unwrap()), "{e}");
    assert!(e.contains("not a directory"), "{e}");
    assert!(e.contains("--data-dir"), "{e}");
}

#[test]
fn a_read_only_data_dir_is_named_with_the_remedy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
    let Some(e) = serve_fails(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
        ],
        true,
    ) else {
        return;
    };
    assert!(e.contains(data.to_str().unwrap()), "{e}");
    assert!(e.contains("Permission denied"), "{e}");
    assert!(e.contains("write access"), "{e}");
}

#[test]
fn a_privileged_port_names_the_address_and_the_remedy() {
    let unprivileged_start: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
    if unprivileged_start <= 1 {
        eprintln!("skipped: every port is unprivileged here (ip_unprivileged_port_start = {unprivileged_start})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let Some(e) = serve_fails(
        &[
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen",
            "127.0.0.1:1",
            "--api",
            "127.0.0.1:0",
        ],
        true,
    ) else {
        return;
    };
    assert!(e.contains("127.0.0.1:1"), "{e}");
    assert!(e.contains(">= 1024"), "{e}");
    assert!(e.contains("setcap"), "{e}");
}

#[test]
fn an_api_address_in_use_is_named_with_the_remedy() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let e = serve_fails(
        &[
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--api",
            &addr,
        ],
        false,
    )
    .unwrap();
    assert!(e.contains(&addr), "{e}");
    // The listener check names the holder (this test process) and the remedy.
    assert!(e.contains("already in use by pid"), "{e}");
    assert!(e.contains("choose another address"), "{e}");
}

// ---- names ----

#[test]
fn reserved_and_unaddressable_queue_names_are_refused_and_valid_ones_work() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    for (name, says) in [
        ("deadletter", "reserved"),
        ("journal", "reserved"),
        ("a b", "a space"),
        ("a/b", "'/'"),
        ("..", "URL"),
    ] {
        let o = run(&server, &["queue", "create", name]);
        assert!(!o.status.success(), "{name:?} was created");
        assert!(stderr(&o).contains(says), "{name:?}: {}", stderr(&o));
    }
    for name in ["orders", "bench", "orders$", "a.b-c_d"] {
        server.cli(&["queue", "create", name]);
        let to = format!("DIRECT=OS:localhost\\private$\\{name}");
        server.cli(&["send", &to, "--body", "x"]);
        assert_eq!(server.receive_all(name).len(), 1, "{name}");
        server.cli(&["queue", "delete", name]);
    }
}

// ---- papercuts ----

#[test]
fn output_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli(&["queue", "create", "q"]);
    server.cli(&["send", "DIRECT=OS:localhost\\private$\\q", "--count", "3"]);
    for args in [
        &["peek", "q", "--count", "3"][..],
        &["peek", "q", "--count", "3", "--json"],
        &["queue", "list"],
        &["config"],
    ] {
        let api: &[&str] = if args[0] == "config" {
            &[]
        } else {
            &["--api", &server.api]
        };
        // On a loaded machine the test thread can lose the race below (lior may have written
        // everything before the drop, and rightly exit 0): a few tries, each checked in full.
        let mut codes = Vec::new();
        for _ in 0..5 {
            let mut child = Command::new(BIN)
                .args(args)
                .args(api)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // The reader goes away before lior writes (it has yet to make its HTTP call).
            drop(child.stdout.take());
            let o = child.wait_with_output().unwrap();
            let e = stderr(&o);
            assert!(!e.contains("panicked"), "{args:?}: {e}");
            assert!(e.is_empty(), "{args:?} said: {e}");
            assert_ne!(o.status.code(), Some(101), "{args:?}");
            codes.push(o.status.code());
            if args[0] == "config" || o.status.code() == Some(141) {
                break;
            }
        }
        if args[0] != "config" {
            // It met the closed pipe and said so the way a command killed by SIGPIPE does.
            assert_eq!(
                codes.last(),
                Some(&Some(141)),
                "{args:?}: exit codes {codes:?}"
            );
        }
    }
    assert_eq!(queue_len(&server, "q"), 3);
}

#[test]
fn binary_bodies_are_summarized_and_text_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli(&["queue", "create", "q"]);
    let to = "DIRECT=OS:localhost\\private$\\q";
    let file = dir.path().join("bin");
    std::fs::write(&file, b"\x1b[31mred\x00\xff\x07").unwrap();
    server.cli(&["send", to, "--body-file", file.to_str().unwrap()]);
    server.cli(&["send", to, "--body", "hello, world"]);
    let out = server.cli(&["receive", "q", "--count", "2"]);
    assert!(
        !out.contains('\x1b'),
        "escape sequence printed raw: {out:?}"
    );
    assert!(!out.contains('\x07'), "bell printed raw: {out:?}");
    assert!(
        out.contains("11 bytes, binary: 1b 5b 33 31 6d 72 65 64 00 ff 07"),
        "{out}"
    );
    assert!(out.contains("12 bytes: hello, world"), "{out}");
}

#[test]
fn log_lines_carry_no_colour_codes_into_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("lior.log");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("lior ready"), "{line}");
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    // Logged before the ready line, so it is in the file by now.
    assert!(
        text.contains("store recovered"),
        "no log line to check: {text}"
    );
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log file: {text:?}"
    );
}

#[test]
fn lior_config_names_srmp_listen() {
    let out = Command::new(BIN).arg("config").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("srmp_listen"), "{text}");
    // What it prints is a valid configuration file.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("lior.toml");
    std::fs::write(&f, &text).unwrap();
    let again = Command::new(BIN)
        .args(["config", "--config", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(String::from_utf8(again.stdout).unwrap(), text);
}

#[test]
fn a_local_send_of_the_wrong_transaction_type_is_an_error_and_leaves_no_copy() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli(&["queue", "create", "txq", "--transactional"]);
    server.cli(&["queue", "create", "plain"]);
    for (args, says) in [
        (
            &["send", "DIRECT=OS:localhost\\private$\\txq", "--body", "x"][..],
            "is a transactional queue",
        ),
        (
            &[
                "send",
                "DIRECT=OS:localhost\\private$\\plain",
                "--body",
                "x",
                "--transactional",
            ],
            "is not a transactional queue",
        ),
        (
            &[
                "send",
                "DIRECT=OS:localhost\\private$\\nosuch",
                "--body",
                "x",
            ],
            "no such queue",
        ),
    ] {
        let o = run(&server, args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("nothing was sent"), "{}", stderr(&o));
    }
    for q in ["system$;deadletter", "system$;deadxact", "txq", "plain"] {
        assert_eq!(queue_len(&server, q), 0, "{q} holds a copy");
    }
    // The right type goes through.
    server.cli(&[
        "send",
        "DIRECT=OS:localhost\\private$\\txq",
        "--body",
        "x",
        "--transactional",
    ]);
    assert_eq!(queue_len(&server, "txq"), 1);
}

// ---- README ----

/// The text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in README.md, fences removed.
fn readme_block(name: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let from = readme.find(&begin).expect("begin marker") + begin.len();
    let to = readme.find(&end).expect("end marker");
    readme[from..to]
        .lines()
        .filter(|l| !l.starts_with("```"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_readme_srmp_example_works_as_pasted() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipped: the README example uses curl, which is not installed here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lior.toml");
    std::fs::write(&cfg, "srmp_listen = \"127.0.0.1:0\"\n").unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    server.cli(&["queue", "create", "orders"]);
    let script = readme_block("srmp-example");
    assert!(script.contains("127.0.0.1:8080"), "{script}");
    // The only change: the port this server chose instead of the README's 8080.
    let script = script.replace(
        "127.0.0.1:8080",
        &server.srmp.expect("an SRMP endpoint").to_string(),
    );
    let o = Command::new("sh")
        .args(["-e", "-c", &script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the README example failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    let got = server.receive_all("orders");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["label"], "hello label");
    let body = b64()
        .decode(got[0]["body_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(body, b"hello over SRMP");
}

#[test]
fn the_readme_states_the_limits_lior_applies() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let commas = |n: usize| {
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    for n in [
        lior::http::api::SEND_BODY_BYTES_MAX,
        lior::http::api::SEND_REQUEST_BYTES_MAX,
        lior::http::api::RECEIVE_COUNT_MAX,
    ] {
        assert!(
            readme.contains(&commas(n)),
            "README does not say {}",
            commas(n)
        );
    }
    assert!(readme.contains(&format!("limit {BODY_MAX}")));
}

// ---- order (issue 10) ----

/// The user's report: with two cores, `lior send` of n1..n6 one at a time was peeked as
/// `n1 n3 n5 n2 n4 n6` and received as `n2 n1 n4 n3 n6 n5`. MSMQ delivers a queue in priority
/// order, FIFO within a priority.
#[test]
fn send_peek_receive_keep_order_on_two_cores() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("data"), &["--cores", "0,1"]);
    server.cli(&["queue", "create", "q"]);
    let to = "DIRECT=OS:localhost\\private$\\q";
    let names: Vec<String> = (1..=6).map(|i| format!("n{i}")).collect();
    for n in &names {
        server.cli(&["send", to, "--body", n]);
    }
    let bodies = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json line");
                let b = b64()
                    .decode(v["body_base64"].as_str().expect("body_base64"))
                    .expect("base64");
                String::from_utf8(b).expect("utf-8")
            })
            .collect()
    };
    let peeked = bodies(&server.cli(&["peek", "q", "--count", "6", "--json"]));
    assert_eq!(peeked, names, "peek order");
    let received = bodies(&server.cli(&["receive", "q", "--count", "6", "--json"]));
    assert_eq!(received, names, "receive order");
}

/// A `lior serve` whose stdout reader went away (a closed pipe) keeps serving: the ready line
/// cannot be written, which is logged, not a panic.
#[test]
fn serve_keeps_running_when_its_stdout_is_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let api = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api",
            &api.to_string(),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the server writes its ready line.
    drop(child.stdout.take());
    let url = format!("http://{api}/v1/status");
    let mut up = false;
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "lior serve exited with {status}: {}",
                common::stderr_of(&mut child)
            );
        }
        if ureq::get(&url).call().is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(up, "the API never answered");
    // It serves normally and stops normally on SIGTERM (before, the main thread panicked on
    // the ready line and the process hung half-alive).
    sigterm(child.id());
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "lior serve did not stop on SIGTERM: {}",
            common::stderr_of(&mut child)
        );
    };
    let err = common::stderr_of(&mut child);
    assert!(status.success(), "{status}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `kill -TERM pid` through the `kill` command (no unsafe in tests).
fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}
