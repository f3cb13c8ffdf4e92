//! Issue 10, S8: a store's commit writes and fdatasyncs run on the engine shard's own ring
//! (`App::poll_file_ops`, `App::on_file_complete`). A small app owns a real store on a real
//! directory and appends from its end of turn; the loop never waits for the disk. What the
//! ring synced is there after a reopen; several full batches staged in one turn queue behind
//! the one in flight instead of blocking; a write the kernel fails (the op handed to the ring
//! names a read-only descriptor of the segment) poisons the log exactly as a failed write on
//! the store's own ring does. Every wait is bounded.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lior::engine::net::{
    App, AppError, CloseReason, ConnId, Engine, EngineConfig, FileOp, FileOpKind, Listener,
};
use lior::store::{
    Class, FileStore, MessageId, MessageMeta, QueueId, QueueStore, Store, StoreConfig, StoreError,
    UringDisk, EXPIRY_NEVER,
};

const Q: QueueId = QueueId(1);
const BODY: usize = 4 << 10;

fn cfg() -> StoreConfig {
    StoreConfig {
        segment_bytes: 256 << 10,
        batch_bytes_max: 16 << 10,
        message_bytes_max: 8 << 10,
        removal_reserve_bytes: 2 << 10,
        ..StoreConfig::default()
    }
}

fn meta(id: u32) -> MessageMeta {
    let mut m = [9u8; 20];
    m[16..].copy_from_slice(&id.to_le_bytes());
    MessageMeta {
        priority: 3,
        class: Class::Recoverable,
        message_id: MessageId(m),
        expiry_unix_s: EXPIRY_NEVER,
    }
}

#[derive(Default, Debug)]
struct Report {
    appended: u32,
    last_ticket: Option<u64>,
    durable: u64,
    /// Writes handed to the shard's ring (one per batch here: no batch spans two segments).
    writes_taken: usize,
    error: Option<StoreError>,
    append_after_error: Option<Result<(), StoreError>>,
    staging: bool,
}

struct StoreApp {
    store: FileStore,
    /// Messages to append, one entry per turn.
    script: VecDeque<u32>,
    /// Hand the kernel a read-only descriptor of the segment for each write.
    break_writes: bool,
    read_only: Vec<std::fs::File>,
    report: Arc<Mutex<Report>>,
    next_id: u32,
}

impl App for StoreApp {
    type Conn = ();

    fn accept(&mut self, _: u64, _: ConnId, _: SocketAddr, _: Listener) -> Option<()> {
        None
    }
    fn on_recv(&mut self, _: u64, _: &mut (), _: &[u8]) -> Result<(), AppError> {
        Ok(())
    }
    fn poll_transmit(&mut self, _: u64, _: &mut (), _: &mut Vec<u8>) {}
    fn deadline(&self, _: &()) -> Option<u64> {
        None
    }
    fn on_timeout(&mut self, _: u64, _: &mut ()) {}
    fn wants_close(&self, _: &()) -> bool {
        false
    }
    fn on_closed(&mut self, _: u64, _: (), _: CloseReason) {}

    fn app_deadline(&self) -> Option<u64> {
        // Keep turning (every 2 ms) so the script runs without any connection.
        Some(lior::engine::net::now_ms() + 2)
    }

    fn end_of_turn(&mut self, _now_ms: u64) {
        let mut r = self.report.lock().unwrap();
        if r.error.is_some() {
            if r.append_after_error.is_none() {
                let body = vec![1u8; BODY];
                r.append_after_error = Some(self.store.append(Q, &meta(0), &body).map(|_| ()));
            }
            return;
        }
        if let Some(n) = self.script.pop_front() {
            for _ in 0..n {
                self.next_id += 1;
                let body = vec![self.next_id as u8; BODY];
                match self.store.append(Q, &meta(self.next_id), &body) {
                    Ok(a) => {
                        r.appended += 1;
                        r.last_ticket = Some(a.ticket.0);
                    }
                    Err(e) => {
                        r.error = Some(e);
                        return;
                    }
                }
            }
            if let Err(e) = self.store.flush() {
                r.error = Some(e);
                return;
            }
        }
        match self.store.poll_durable(false) {
            Ok(t) => r.durable = t.0,
            Err(e) => r.error = Some(e),
        }
    }

    fn poll_file_ops(&mut self, out: &mut Vec<FileOp>) {
        let start = out.len();
        self.store.take_file_ops(out);
        let mut r = self.report.lock().unwrap();
        let writes = out[start..]
            .iter()
            .filter(|o| matches!(o.kind, FileOpKind::Write { .. }))
            .count();
        r.writes_taken += writes;
        if !self.break_writes {
            return;
        }
        for op in &mut out[start..] {
            if let FileOpKind::Write { .. } = op.kind {
                let ro = std::fs::File::open(format!("/proc/self/fd/{}", op.fd)).unwrap();
                op.fd = std::os::fd::AsRawFd::as_raw_fd(&ro);
                // Kept open until the app goes (after the op's completion).
                self.read_only.push(ro);
            }
        }
    }

    fn on_file_complete(&mut self, _now_ms: u64, token: u64, result: i32) {
        self.store.file_complete(token, result);
    }

    fn file_ops_stopped(&mut self, all_completed: bool) {
        assert!(
            all_completed,
            "the shard waits for its file ops before it stops"
        );
        self.store.stage_on_shard(false).unwrap();
    }
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        listen: vec![(Listener::FIRST, "127.0.0.1:0".parse().unwrap())],
        // One shard: the store is its own (a second would find the directory locked).
        cores: vec![0],
        ring_entries: 64,
        recv_buffer_count: 8,
        recv_buffer_size: 4096,
        ..EngineConfig::default()
    }
}

/// Runs the script on one shard until `done` says so (or 10 s pass), then stops the engine.
/// Returns the report and the engine's file ops submitted.
fn run(
    dir: &std::path::Path,
    script: Vec<u32>,
    break_writes: bool,
    done: impl Fn(&Report) -> bool,
) -> (Arc<Mutex<Report>>, u64) {
    let report = Arc::new(Mutex::new(Report::default()));
    let r2 = report.clone();
    let dir2 = dir.to_path_buf();
    let handle = Engine::start(engine_config(), move |_| {
        let mut store = Store::open(UringDisk::open(&dir2).unwrap(), cfg())
            .unwrap()
            .0;
        let staging = store.stage_on_shard(true).unwrap();
        r2.lock().unwrap().staging = staging;
        StoreApp {
            store,
            script: script.clone().into(),
            break_writes,
            read_only: Vec::new(),
            report: r2.clone(),
            next_id: 0,
        }
    })
    .expect("engine starts");
    let until = Instant::now() + Duration::from_secs(10);
    while !done(&report.lock().unwrap()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let submitted = handle.counters().file_ops_submitted;
    handle.shutdown().expect("clean shutdown");
    (report, submitted)
}

fn all_durable(r: &Report) -> bool {
    r.error.is_some() || r.last_ticket.is_some_and(|t| t < r.durable)
}

#[test]
fn commits_complete_on_the_shard_ring_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (report, submitted) = run(dir.path(), vec![2, 1, 3], false, |r| {
        r.appended == 6 && all_durable(r)
    });
    let r = report.lock().unwrap();
    assert!(r.staging, "a UringDisk stages for the shard's ring");
    assert!(r.error.is_none(), "{:?}", r.error);
    assert!(all_durable(&r), "durable through the shard ring: {r:?}");
    assert!(
        submitted >= 2,
        "writes and syncs went on the shard ring: {submitted}"
    );
    drop(r);
    let store = Store::open(UringDisk::open(dir.path()).unwrap(), cfg())
        .unwrap()
        .0;
    assert_eq!(store.queue_len(Q).0, 6);
}

#[test]
fn full_batches_in_one_turn_queue_behind_the_one_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    // Twelve 4 KiB messages in one turn are four 16 KiB batches: one goes, the others queue;
    // the loop never waits, and all of them become durable one batch at a time.
    let (report, _) = run(dir.path(), vec![12], false, |r| {
        r.appended == 12 && all_durable(r)
    });
    let r = report.lock().unwrap();
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.appended, 12);
    assert!(all_durable(&r), "{r:?}");
    // Had the store waited for the batch in flight (its disk's own ring, blocking the loop),
    // the first batch would not have gone through the shard's ring.
    assert!(
        r.writes_taken >= 4,
        "every batch on the shard's ring: {r:?}"
    );
    drop(r);
    let store = Store::open(UringDisk::open(dir.path()).unwrap(), cfg())
        .unwrap()
        .0;
    assert_eq!(store.queue_len(Q).0, 12);
}

#[test]
fn a_write_the_kernel_fails_on_the_shard_ring_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (report, submitted) = run(dir.path(), vec![2], true, |r| {
        r.append_after_error.is_some()
    });
    let r = report.lock().unwrap();
    assert!(submitted >= 2, "{submitted}");
    assert!(
        matches!(r.error, Some(StoreError::Poisoned { errno }) if errno == libc::EBADF),
        "a failed write poisons: {r:?}"
    );
    assert!(
        r.last_ticket.is_some_and(|t| t >= r.durable),
        "nothing of the failed batch is durable: {r:?}"
    );
    assert!(
        matches!(r.append_after_error, Some(Err(StoreError::Poisoned { .. }))),
        "the log refuses writes after: {r:?}"
    );
}
