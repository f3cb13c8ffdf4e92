//! Crash loop: a real process appends and consumes as fast as it can on real files through
//! io_uring and is killed with SIGKILL at random moments, then restarted on the same directory.
//! After every kill: every message the child reported durable is present exactly once and
//! intact, nothing it reported consumed comes back, and order within a priority holds.
//!
//! The child is this test binary re-executed (`crash_child`, ignored in normal runs). It prints
//! `A <lookup> <queue> <prio> <tag>` after an append is durable and `C <lookup>` after a
//! removal is durable, so the parent only ever learns durable facts.

use lior::store::{
    Class, Cursor, FileStore, MessageId, MessageMeta, QueueId, QueueStore, Select, Store,
    StoreConfig, StoreError, UringDisk, EXPIRY_NEVER,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const QUEUES: u32 = 3;
const KILLS: u32 = 55;

fn cfg() -> StoreConfig {
    StoreConfig {
        segment_bytes: 1 << 20,
        batch_bytes_max: 128 << 10,
        message_bytes_max: 4 << 10,
        removal_reserve_bytes: 64 << 10,
        compact_segments_min: 3,
        ..StoreConfig::default()
    }
}

fn meta(prio: u8, tag: u64) -> MessageMeta {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(&tag.to_le_bytes());
    MessageMeta {
        priority: prio,
        class: Class::Recoverable,
        message_id: MessageId(id),
        expiry_unix_s: EXPIRY_NEVER,
    }
}

fn payload(tag: u64) -> Vec<u8> {
    let mut v = vec![(tag % 251) as u8; 100];
    v[..8].copy_from_slice(&tag.to_le_bytes());
    v
}

fn open(dir: &str) -> FileStore {
    Store::open(UringDisk::open(std::path::Path::new(dir)).unwrap(), cfg())
        .unwrap()
        .0
}

#[test]
#[ignore = "the crash-loop child; run by crash_loop_kill_9"]
fn crash_child() {
    let Ok(dir) = std::env::var("LIOR_STORE_CRASH_DIR") else {
        return;
    };
    let generation: u64 = std::env::var("LIOR_STORE_CRASH_GEN")
        .unwrap()
        .parse()
        .unwrap();
    let mut s = open(&dir);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
    // libtest printed "test crash_child ... " without a newline: end that line first.
    writeln!(out).unwrap();
    let mut x = generation.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut counter = 0u64;
    let mut appended = Vec::new();
    let mut held = Vec::new();
    loop {
        for _ in 0..(rnd() % 128) {
            let tag = (generation << 32) | counter;
            let (q, prio) = ((rnd() % QUEUES as u64) as u32, (rnd() % 8) as u8);
            match s.append(QueueId(q), &meta(prio, tag), &payload(tag)) {
                Ok(a) => {
                    counter += 1;
                    appended.push((a.ticket, a.lookup_id.0, q, prio, tag));
                }
                Err(StoreError::BatchFull) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let depth = s.stats().messages;
        let take = if depth > 3000 { 160 } else { rnd() % 100 };
        for _ in 0..take {
            let q = QueueId((rnd() % QUEUES as u64) as u32);
            match s.receive(q, Select::Front) {
                Ok(Some(r)) => held.push(r),
                Ok(None) => {}
                Err(StoreError::BatchFull) => break,
                Err(e) => panic!("{e}"),
            }
        }
        // Announce staged removals before they can become durable: a kill may land after a
        // removal is durable but before its `C` line.
        for r in &held {
            writeln!(out, "R {}", r.lookup_id.0).unwrap();
        }
        out.flush().unwrap();
        s.flush().unwrap();
        s.poll_durable(true).unwrap();
        for (t, l, q, p, tag) in appended.drain(..) {
            assert!(s.is_durable(t));
            writeln!(out, "A {l} {q} {p} {tag}").unwrap();
        }
        for r in held.drain(..) {
            let m = s.reserved(&r).unwrap();
            let tag = u64::from_le_bytes(m.meta.message_id.0[..8].try_into().unwrap());
            assert_eq!(m.bytes, &payload(tag)[..]);
            writeln!(out, "C {}", r.lookup_id.0).unwrap();
            s.release(r).unwrap();
        }
        s.maintain().unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn crash_loop_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let exe = std::env::current_exe().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut x = seed;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    println!("crash loop seed {seed}");
    let mut acked: BTreeMap<u64, (u32, u8, u64)> = BTreeMap::new();
    let mut consumed: BTreeSet<u64> = BTreeSet::new();
    // Removals staged by the child whose durability it had not reported when killed.
    let mut removing: BTreeSet<u64> = BTreeSet::new();
    let mut unreported_removals = 0u64;
    let (mut reported_appends, mut reported_consumes, mut max_present) = (0u64, 0u64, 0usize);
    for generation in 1..=KILLS as u64 {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LIOR_STORE_CRASH_DIR", &dir_s)
            .env("LIOR_STORE_CRASH_GEN", generation.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut r = std::io::BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.ends_with('\n') {
                    lines.push(line.trim_end().to_string());
                }
                line.clear();
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(40 + rnd() % 160));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            status.code().is_none(),
            "child exited by itself: {status:?} (it panicked?)"
        );
        for line in reader.join().unwrap() {
            let f: Vec<&str> = line.split(' ').collect();
            match f[0] {
                "A" => {
                    let l: u64 = f[1].parse().unwrap();
                    let v = (
                        f[2].parse().unwrap(),
                        f[3].parse().unwrap(),
                        f[4].parse().unwrap(),
                    );
                    assert!(acked.insert(l, v).is_none(), "lookup id {l} reused");
                    reported_appends += 1;
                }
                "R" => {
                    removing.insert(f[1].parse::<u64>().unwrap());
                }
                "C" => {
                    let l: u64 = f[1].parse().unwrap();
                    assert!(
                        acked.remove(&l).is_some(),
                        "consumed {l} never reported durable"
                    );
                    assert!(removing.remove(&l), "consumed {l} without announcing it");
                    consumed.insert(l);
                    reported_consumes += 1;
                }
                _ => {}
            }
        }
        // Restart on the same directory and check.
        let s = open(&dir_s);
        let mut present = BTreeMap::new();
        for q in 0..QUEUES {
            let mut c = Cursor::new(QueueId(q));
            let mut last: BTreeMap<u8, u64> = BTreeMap::new();
            let mut last_prio = 7u8;
            while let Some(m) = s.cursor_next(&mut c) {
                let l = m.lookup_id.0;
                let p = m.meta.priority;
                let tag = u64::from_le_bytes(m.meta.message_id.0[..8].try_into().unwrap());
                assert!(
                    present.insert(l, (q, p, tag)).is_none(),
                    "gen {generation}: {l} twice"
                );
                assert!(
                    !consumed.contains(&l),
                    "gen {generation}: consumed {l} came back"
                );
                assert!(
                    last.insert(p, l).unwrap_or(0) < l,
                    "gen {generation}: FIFO broken"
                );
                assert!(p <= last_prio, "gen {generation}: priority order broken");
                last_prio = p;
                assert_eq!(m.bytes, &payload(tag)[..], "gen {generation}: {l} damaged");
                if let Some(&(aq, ap, at)) = acked.get(&l) {
                    assert_eq!((aq, ap, at), (q, p, tag));
                }
            }
        }
        for l in acked.keys() {
            assert!(
                present.contains_key(l) || removing.contains(l),
                "gen {generation}: durable {l} lost"
            );
        }
        max_present = max_present.max(present.len());
        // Unreported survivors are durable now; track them like reported ones. Announced
        // removals that took effect are consumed; the others did not happen.
        drop(s);
        for l in std::mem::take(&mut removing) {
            if !present.contains_key(&l) {
                acked.remove(&l);
                consumed.insert(l);
                unreported_removals += 1;
            }
        }
        for (l, v) in present {
            acked.entry(l).or_insert(v);
        }
    }
    println!(
        "crash loop: {KILLS} kill -9 restarts, {reported_appends} appends reported durable, \
         {reported_consumes} removals reported durable, {unreported_removals} removals durable \
         but unreported at the kill, {} messages present at the end, \
         largest queue total {max_present}",
        acked.len()
    );
    assert!(reported_appends > 2_000 && reported_consumes > 500);
}
