//! Durable message throughput of the store next to the raw pwrite+fdatasync ceiling of the same
//! disk, measured in the same run.
//!
//! `cargo run --release --example store_throughput [dir] [runs]`
//!
//! For 100 B and 4 KiB messages, each run measures:
//! - ceiling: the same number of message bytes written with pwrite into a file zero-filled in
//!   advance, one fdatasync per batch (64 KiB, and 1 MiB), sequentially;
//! - store: `FileStore` appends (record header + crc + index), group commit driven like an
//!   event loop (flush when 256 KiB are staged, keep staging while a batch is in flight),
//!   into fresh preallocated segments; a message counts once `poll_durable` says so.
//!
//! Medians over the runs are printed with the ratio store / ceiling.

use lior::store::{
    Class, MessageId, MessageMeta, QueueId, QueueStore, Store, StoreConfig, StoreError, UringDisk,
    EXPIRY_NEVER,
};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

const FLUSH_BYTES: usize = 256 << 10;

fn ceiling(dir: &Path, msg: usize, count: usize, batch: usize) -> anyhow::Result<f64> {
    let path = dir.join("ceiling.dat");
    let total = msg * count;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < total + batch {
        f.write_all_at(&zeros, off as u64)?;
        off += zeros.len();
    }
    f.sync_all()?;
    let per_batch = (batch / msg).max(1);
    let buf = vec![0x5Au8; per_batch * msg];
    let t = Instant::now();
    let mut written = 0usize;
    let mut pos = 0u64;
    while written < count {
        let n = per_batch.min(count - written);
        f.write_all_at(&buf[..n * msg], pos)?;
        f.sync_data()?;
        pos += (n * msg) as u64;
        written += n;
    }
    let rate = count as f64 / t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

fn store(dir: &Path, msg: usize, count: usize) -> anyhow::Result<(f64, f64)> {
    let sdir = dir.join("store");
    let _ = std::fs::remove_dir_all(&sdir);
    let cfg = StoreConfig::default();
    let (mut s, _) = Store::open(UringDisk::open(&sdir)?, cfg)?;
    let payload = vec![0x5Au8; msg];
    let mut m = MessageMeta {
        priority: 3,
        class: Class::Recoverable,
        message_id: MessageId([1; 20]),
        expiry_unix_s: EXPIRY_NEVER,
    };
    let t = Instant::now();
    let mut last = lior::store::Ticket(0);
    let mut i = 0usize;
    while i < count {
        m.message_id.0[16..].copy_from_slice(&(i as u32).to_le_bytes());
        match s.append(QueueId((i % 4) as u32), &m, &payload) {
            Ok(a) => {
                last = a.ticket;
                i += 1;
            }
            Err(StoreError::BatchFull) => {
                s.flush()?;
                s.poll_durable(true)?;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if s.pending_bytes() >= FLUSH_BYTES {
            s.flush()?;
            s.poll_durable(false)?;
        }
    }
    while !s.is_durable(last) {
        s.flush()?;
        s.poll_durable(true)?;
    }
    let rate = count as f64 / t.elapsed().as_secs_f64();
    let st = s.stats();
    let avg_batch = (count * lior::store::record::message_space(msg)) as f64 / st.batches as f64;
    drop(s);
    std::fs::remove_dir_all(&sdir)?;
    Ok((rate, avg_batch))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "target/store-perf".into()),
    );
    let runs: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    std::fs::create_dir_all(&dir)?;
    println!("dir {} runs {runs}", dir.display());
    println!(
        "{:>6} {:>14} {:>14} {:>14} {:>10} {:>12} {:>12}",
        "size",
        "ceil64K msg/s",
        "ceil1M msg/s",
        "store msg/s",
        "avg batch",
        "store/64K",
        "store/1M"
    );
    let sizes: Vec<(usize, usize)> = match std::env::var("STORE_PERF_ONLY_100").is_ok() {
        true => vec![(100, 3_000_000)],
        false => vec![(100, 3_000_000), (4096, 120_000)],
    };
    for (msg, count) in sizes {
        let (mut c64, mut c1m, mut st, mut ab) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            c64.push(ceiling(&dir, msg, count, 64 << 10)?);
            let (r, a) = store(&dir, msg, count)?;
            st.push(r);
            ab.push(a);
            c1m.push(ceiling(&dir, msg, count, 1 << 20)?);
        }
        let (c64, c1m, st, ab) = (median(c64), median(c1m), median(st), median(ab));
        println!(
            "{msg:>6} {c64:>14.0} {c1m:>14.0} {st:>14.0} {:>9.0}K {:>12.2} {:>12.2}",
            ab / 1024.0,
            st / c64,
            st / c1m
        );
    }
    Ok(())
}
