//! `lior store check` and `lior store salvage` on a real data directory, through the real
//! binary; and `lior serve` refusing to start on damage, naming it.

mod common;

use common::stores::tagged_meta;
use lior::store::{
    segment_file_name, Cursor, FileStore, MessageMeta, QueueId, QueueStore, Store, StoreConfig,
    UringDisk,
};
use std::path::Path;
use std::process::Command;

fn lior() -> Command {
    Command::new(common::BIN)
}

/// `lior serve` with `extra` over data directory `dir`: loopback ports, no engine cores.
fn serve(dir: &Path, extra: &[&str]) -> Command {
    let mut c = lior();
    c.arg("serve").args(extra).args([
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--cores",
        "0",
        "--data-dir",
    ]);
    c.arg(dir);
    c
}

fn meta(tag: u64) -> MessageMeta {
    tagged_meta(tag, 2)
}

fn open(dir: &Path) -> FileStore {
    Store::open(UringDisk::open(dir).unwrap(), StoreConfig::default())
        .unwrap()
        .0
}

fn count(dir: &Path) -> u64 {
    let s = open(dir);
    let mut c = Cursor::new(QueueId(7));
    let mut n = 0;
    while s.cursor_next(&mut c).is_some() {
        n += 1;
    }
    n
}

/// A data directory as `lior serve` lays it out, with 60 durable messages in 6 batches in
/// partition 0. Returns the offset of message 30's record.
fn data_dir(dir: &Path) -> usize {
    let p0 = dir.join("partition-0");
    let mut s = open(&p0);
    for t in 0..60u64 {
        s.append(QueueId(7), &meta(t), &vec![t as u8; 500]).unwrap();
        if t % 10 == 9 {
            s.flush().unwrap();
            while s.stats().pending_bytes > 0 || s.in_flight() {
                s.poll_durable(true).unwrap();
                s.flush().unwrap();
            }
        }
    }
    s.close().unwrap();
    drop(s);
    // Find message 30 (the records are 8-aligned; its payload is 500 bytes of 30).
    let data = std::fs::read(p0.join(segment_file_name(1))).unwrap();
    let at = data
        .windows(500)
        .position(|w| w.iter().all(|&b| b == 30))
        .unwrap();
    at - 56
}

/// After salvage of the `data_dir` with one damaged record: `lior store check` finds it clean
/// and every other message (59) is there.
fn assert_salvaged(dir: &Path) {
    let out = lior().args(["store", "check"]).arg(dir).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(count(&dir.join("partition-0")), 59);
}

#[test]
fn check_and_salvage_a_real_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rec = data_dir(dir);
    let out = lior().args(["store", "check"]).arg(dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("clean"), "{text}");

    // One flipped payload byte in the middle of the acknowledged messages.
    let seg = dir.join("partition-0").join(segment_file_name(1));
    let mut data = std::fs::read(&seg).unwrap();
    data[rec + 300] ^= 1;
    std::fs::write(&seg, &data).unwrap();

    let out = lior().args(["store", "check"]).arg(dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("damage at offset {rec}")), "{text}");
    assert!(text.contains("DAMAGED"), "{text}");
    let out = lior()
        .args(["store", "check", "--json"])
        .arg(dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clean"], false);
    assert_eq!(v["partitions"][0]["segments"][0]["holes"][0]["offset"], rec);

    // lior serve refuses to start, naming the damage, and changes nothing.
    let out = serve(dir, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("00000000000000000001.log at offset {rec}")),
        "{err}"
    );
    assert!(err.contains("lior store salvage"), "{err}");
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        data,
        "start-up changed the log"
    );

    // Salvage: the damaged file is copied aside, every other record kept.
    let out = lior().args(["store", "salvage"]).arg(dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("skipped:"), "{text}");
    let copy = dir
        .join("partition-0")
        .join(format!("{}.damaged", segment_file_name(1)));
    assert_eq!(std::fs::read(&copy).unwrap(), data);
    assert_salvaged(dir);
}

/// `lior serve --salvage` salvages a damaged data directory, starts, and after SIGTERM leaves a
/// clean store behind (the clean stop's commit marker included).
#[test]
fn serve_salvage_starts_on_a_damaged_dir_and_stops_clean() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rec = data_dir(dir);
    let seg = dir.join("partition-0").join(segment_file_name(1));
    let mut data = std::fs::read(&seg).unwrap();
    data[rec + 100] ^= 4;
    std::fs::write(&seg, &data).unwrap();
    let mut child = serve(dir, &["--salvage"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("lior ready"), "{line}");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(dir
        .join("partition-0")
        .join(format!("{}.damaged", segment_file_name(1)))
        .exists());
    assert_salvaged(dir);
}
