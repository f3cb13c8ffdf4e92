//! Turns the JSON lines written by `perf/run.sh` into the markdown results table: the median of
//! every cell over the runs, and the ratios lior/ceiling and lior/Redis from the same run.
//!
//! `perf_report RESULTS.jsonl HEADER.md > TABLE.md` (HEADER.md is copied first: machine, kernel,
//! command lines).

use std::collections::BTreeMap;

use serde_json::Value;

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fmt_rate(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:.0}", x))
}

fn fmt_f(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let results = std::fs::read_to_string(args.get(1).ok_or_else(|| anyhow::anyhow!("usage"))?)?;
    let header = match args.get(2) {
        Some(h) => std::fs::read_to_string(h)?,
        None => String::new(),
    };
    let rows: Vec<Value> = results
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    // (kind, size, delivery, sessions, field) -> values over runs.
    let mut cells: BTreeMap<(String, u64, String, u64, &str), Vec<f64>> = BTreeMap::new();
    for r in &rows {
        let kind = r["kind"].as_str().unwrap_or("?").to_string();
        let size = r["size"].as_u64().unwrap_or(0);
        let delivery = r["delivery"].as_str().unwrap_or("-").to_string();
        let sessions = r["sessions"].as_u64().unwrap_or(0);
        for (field, v) in [
            ("rate", r["msgs_per_sec"].as_f64()),
            ("mb", r["mb_per_sec"].as_f64()),
            ("p50", r["latency_us"]["p50"].as_f64()),
            ("p99", r["latency_us"]["p99"].as_f64()),
            ("p999", r["latency_us"]["p999"].as_f64()),
            ("target", r["rate"].as_f64()),
        ] {
            if let Some(v) = v {
                cells
                    .entry((kind.clone(), size, delivery.clone(), sessions, field))
                    .or_default()
                    .push(v);
            }
        }
    }
    let get = |kind: &str, size: u64, delivery: &str, sessions: u64, field: &str| {
        cells
            .get(&(
                kind.to_string(),
                size,
                delivery.to_string(),
                sessions,
                field,
            ))
            .cloned()
            .and_then(median)
    };
    let runs = rows
        .iter()
        .filter_map(|r| r["run"].as_u64())
        .max()
        .unwrap_or(0);
    print!("{header}");
    println!();
    println!("### Throughput (closed loop, window 64; median of {runs} runs)\n");
    println!(
        "| size | delivery | sessions | lior msg/s | lior MB/s | lior p50 / p99 ack µs | \
         ceiling msg/s | lior / ceiling | Redis msg/s | lior / Redis | Redis p50 / p99 µs |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for size in [100u64, 4096] {
        for delivery in ["express", "recoverable"] {
            for sessions in [1u64, 16] {
                let lior = get("lior", size, delivery, sessions, "rate");
                let ceil = get("ceiling", size, "-", sessions, "rate");
                let redis = get("redis", size, delivery, sessions, "rate");
                let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "-".into(),
                };
                println!(
                    "| {size} B | {delivery} | {sessions} | {} | {} | {} / {} | {} | {} | {} | {} | {} / {} |",
                    fmt_rate(lior),
                    fmt_f(get("lior", size, delivery, sessions, "mb"), 1),
                    fmt_f(get("lior", size, delivery, sessions, "p50"), 0),
                    fmt_f(get("lior", size, delivery, sessions, "p99"), 0),
                    fmt_rate(ceil),
                    ratio(lior, ceil),
                    fmt_rate(redis),
                    ratio(lior, redis),
                    fmt_f(get("redis", size, delivery, sessions, "p50"), 0),
                    fmt_f(get("redis", size, delivery, sessions, "p99"), 0),
                );
            }
        }
    }
    if get("lior-2cores", 100, "express", 16, "rate").is_some()
        || get("lior-2cores", 100, "recoverable", 16, "rate").is_some()
    {
        println!("\n### Two server cores (`--cores 0,1`, client unpinned; one queue, sessions on both shards)\n");
        println!(
            "| size | delivery | sessions | msg/s | p50 / p99 ack µs | / one core (same run) |"
        );
        println!("|---:|---|---:|---:|---:|---:|");
        for delivery in ["express", "recoverable"] {
            let two = get("lior-2cores", 100, delivery, 16, "rate");
            let one = get("lior", 100, delivery, 16, "rate");
            let ratio = match (two, one) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            println!(
                "| 100 B | {delivery} | 16 | {} | {} / {} | {} |",
                fmt_rate(two),
                fmt_f(get("lior-2cores", 100, delivery, 16, "p50"), 0),
                fmt_f(get("lior-2cores", 100, delivery, 16, "p99"), 0),
                ratio,
            );
        }
    }
    let half: Vec<_> = cells
        .keys()
        .filter(|k| k.0 == "lior-half" && k.4 == "rate")
        .cloned()
        .collect();
    if !half.is_empty() {
        println!("\n### Latency at half the measured maximum rate (open loop, `--rate`)\n");
        println!("| size | delivery | sessions | target msg/s | achieved msg/s | p50 µs | p99 µs | p99.9 µs |");
        println!("|---:|---|---:|---:|---:|---:|---:|---:|");
        for (_, size, delivery, sessions, _) in half {
            let g = |f: &str| get("lior-half", size, &delivery, sessions, f);
            println!(
                "| {size} B | {delivery} | {sessions} | {} | {} | {} | {} | {} |",
                fmt_rate(g("target")),
                fmt_rate(g("rate")),
                fmt_f(g("p50"), 0),
                fmt_f(g("p99"), 0),
                fmt_f(g("p999"), 0),
            );
        }
    }
    Ok(())
}
