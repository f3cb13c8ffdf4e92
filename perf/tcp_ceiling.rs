//! The raw loopback ceiling for `lior bench`: a plain TCP sender and receiver that move the same
//! bytes with the same batching as an MS-MQQB session, and nothing else. The sender writes
//! frames of exactly the size lior's bench sends (the same encoded UserMessage) in batches of
//! what its window allows; the receiver frames the stream and answers each read with one 36-byte
//! "ack" naming how many frames it has seen (as lior answers each loop turn with one
//! SessionAck). No parsing, no storage, no durability: the most a session could do on this
//! loopback with these cores.
//!
//! ```text
//! taskset -c 0 tcp_ceiling recv --listen 127.0.0.1:0          # prints "listen=ADDR"
//! taskset -c 1 tcp_ceiling send --connect ADDR --size 100 --sessions 1 --duration 5
//! ```
//!
//! The sender prints one JSON object like `lior bench --json` (`msgs_per_sec`, `mb_per_sec`,
//! `latency_us` from a batch's write to the ack that covers it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lior::bench::client::{encode_template, new_histogram, SessionPlan};
use lior::bench::report::Latency;
use lior::wire::{utf16z, Guid};

const ACK_LEN: usize = 36;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("recv") => recv(&arg(&args, "--listen").unwrap_or("127.0.0.1:0".into())),
        Some("send") => send(&args),
        _ => anyhow::bail!("usage: tcp_ceiling recv --listen ADDR | send --connect ADDR --size B --sessions N --duration S [--window W]"),
    }
}

/// Accepts connections forever; each gets a thread that reads frames and acks every read.
fn recv(listen: &str) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen)?;
    println!("listen={}", l.local_addr()?);
    std::io::stdout().flush()?;
    for s in l.incoming() {
        let s = s?;
        std::thread::spawn(move || {
            let _ = serve_conn(s);
        });
    }
    Ok(())
}

fn serve_conn(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    // The first 4 bytes name the frame size of this connection.
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr)?;
    let frame = u32::from_le_bytes(hdr) as u64;
    let mut buf = vec![0u8; 16 * 1024];
    let mut bytes: u64 = 0;
    let mut ack = [0u8; ACK_LEN];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        bytes += n as u64;
        // Like a session: count whole frames, acknowledge once per read.
        let frames = bytes / frame;
        ack[..8].copy_from_slice(&frames.to_le_bytes());
        s.write_all(&ack)?;
    }
}

fn send(args: &[String]) -> anyhow::Result<()> {
    let connect = arg(args, "--connect").ok_or_else(|| anyhow::anyhow!("--connect"))?;
    let size: usize = arg(args, "--size").unwrap_or("100".into()).parse()?;
    let sessions: usize = arg(args, "--sessions").unwrap_or("1".into()).parse()?;
    let duration: f64 = arg(args, "--duration").unwrap_or("5".into()).parse()?;
    let window: u64 = arg(args, "--window").unwrap_or("64".into()).parse()?;
    let plan = SessionPlan {
        destination_wire: utf16z("TCP:127.0.0.1\\PRIVATE$\\bench"),
        body_size: size,
        recoverable: false,
        window: window as u16,
        quota: None,
        interval_ns: None,
    };
    let (frame, _) = encode_template(Guid([7; 16]), &plan)?;
    let stop = Arc::new(AtomicBool::new(false));
    let hist = Arc::new(Mutex::new(new_histogram()));
    let epoch = Instant::now();
    let mut threads = Vec::new();
    for _ in 0..sessions {
        let (stop, hist) = (stop.clone(), hist.clone());
        let frame = frame.clone();
        let mut s = TcpStream::connect(&connect)?;
        s.set_nodelay(true)?;
        threads.push(std::thread::spawn(move || -> std::io::Result<()> {
            s.write_all(&(frame.len() as u32).to_le_bytes())?;
            let mut local = new_histogram();
            let mut batch = Vec::with_capacity(frame.len() * window as usize);
            // Send time per frame number, a ring as in lior bench.
            let ring = (window as usize * 2).next_power_of_two();
            let mut times = vec![0u64; ring];
            let (mut sent, mut got) = (0u64, 0u64);
            let mut ackbuf = [0u8; 64 * ACK_LEN];
            let mut pending = Vec::new();
            let mut counted = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let room = window - (sent - got);
                if room > 0 {
                    batch.clear();
                    let now = epoch.elapsed().as_nanos() as u64;
                    for _ in 0..room {
                        batch.extend_from_slice(&frame);
                        times[(sent % ring as u64) as usize] = now;
                        sent += 1;
                    }
                    s.write_all(&batch)?;
                }
                let n = s.read(&mut ackbuf)?;
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&ackbuf[..n]);
                let whole = pending.len() / ACK_LEN * ACK_LEN;
                for a in pending[..whole].chunks(ACK_LEN) {
                    let mut f = [0u8; 8];
                    f.copy_from_slice(&a[..8]);
                    got = got.max(u64::from_le_bytes(f));
                }
                pending.drain(..whole);
                let now = epoch.elapsed().as_nanos() as u64;
                while counted < got {
                    let t = times[(counted % ring as u64) as usize];
                    local.saturating_record(now.saturating_sub(t).max(1));
                    counted += 1;
                }
            }
            let _ = hist.lock().map(|mut h| h.add(&local));
            Ok(())
        }));
    }
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(duration));
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let h = hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let n = h.len();
    let rate = n as f64 / elapsed;
    println!(
        "{}",
        serde_json::json!({
            "tool": "tcp_ceiling",
            "sessions": sessions,
            "size": size,
            "frame_bytes": frame.len(),
            "window": window,
            "elapsed_s": elapsed,
            "acked": n,
            "msgs_per_sec": rate.round(),
            "mb_per_sec": (rate * size as f64 / 1e6 * 100.0).round() / 100.0,
            "latency_us": Latency::from_histogram(&h),
        })
    );
    Ok(())
}
