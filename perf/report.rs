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
    if !rows
        .iter()
        .any(|r| matches!(r["kind"].as_str(), Some("lior" | "ceiling" | "redis")))
    {
        // perf/amqp.sh alone: only its own tables.
        amqp_tables(&rows);
        return Ok(());
    }
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
    amqp_tables(&rows);
    Ok(())
}

/// The AMQP 1.0 rows of `perf/amqp.sh`: produce and consume beside RabbitMQ, and MS-MQQB in with
/// AMQP out on lior (the issue-11 targets).
fn amqp_tables(rows: &[Value]) {
    // (kind, field) -> values over runs.
    let mut cells: BTreeMap<(String, &str), Vec<f64>> = BTreeMap::new();
    for r in rows {
        let kind = r["kind"].as_str().unwrap_or("?");
        let c = &r["amqp_consume"];
        let fields: Vec<(&str, Option<f64>)> = if kind.starts_with("amqp-produce-") {
            vec![
                ("rate", r["msgs_per_sec"].as_f64()),
                ("p50", r["latency_us"]["p50"].as_f64()),
                ("p99", r["latency_us"]["p99"].as_f64()),
            ]
        } else if kind.starts_with("amqp-consume-") || kind.starts_with("e2e-") {
            vec![
                ("rate", c["msgs_per_sec"].as_f64()),
                ("received", c["received"].as_f64()),
                ("p50", c["end_to_end_us"]["p50"].as_f64()),
                ("p99", c["end_to_end_us"]["p99"].as_f64()),
                ("p999", c["end_to_end_us"]["p999"].as_f64()),
                ("depth", c["depth_at_producer_end"].as_f64()),
                ("produced", r["msgs_per_sec"].as_f64()),
                ("target", r["rate"].as_f64()),
            ]
        } else {
            continue;
        };
        for (f, v) in fields {
            if let Some(v) = v {
                cells.entry((kind.to_string(), f)).or_default().push(v);
            }
        }
    }
    if cells.is_empty() {
        return;
    }
    let get = |kind: &str, f: &str| cells.get(&(kind.to_string(), f)).cloned().and_then(median);
    let runs = rows
        .iter()
        .filter(|r| r["kind"].as_str().is_some_and(|k| k.starts_with("amqp-")))
        .filter_map(|r| r["run"].as_u64())
        .max()
        .unwrap_or(0);
    println!("\n### AMQP 1.0, lior beside RabbitMQ (100 B, same client and settings; median of {runs} runs)\n");
    println!("| row | lior msg/s | RabbitMQ msg/s | lior / RabbitMQ (target >= 3) | lior p50 / p99 µs | RabbitMQ p50 / p99 µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (what, kind, lat) in [
        (
            "produce: 1 connection, unsettled, counted at `accepted`",
            "produce",
            "send to accepted",
        ),
        (
            "consume: backlog drained by 1 consumer, accepting",
            "consume",
            "end to end",
        ),
    ] {
        let l = get(&format!("amqp-{kind}-lior"), "rate");
        let r = get(&format!("amqp-{kind}-rabbitmq"), "rate");
        let ratio = match (l, r) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        let lat_of = |server: &str| {
            format!(
                "{} / {}",
                fmt_f(get(&format!("amqp-{kind}-{server}"), "p50"), 0),
                fmt_f(get(&format!("amqp-{kind}-{server}"), "p99"), 0)
            )
        };
        println!(
            "| {what} ({lat}) | {} | {} | {ratio} | {} | {} |",
            fmt_rate(l),
            fmt_rate(r),
            lat_of("lior"),
            lat_of("rabbitmq"),
        );
    }
    if get("e2e-lior", "rate").is_some() || get("e2e-lior-half", "rate").is_some() {
        println!("\n### MS-MQQB in, AMQP 1.0 out (lior: express 100 B, 1 session, window 64, plus 1 AMQP consumer)\n");
        println!("| load | MS-MQQB acked msg/s | drained end to end msg/s (target >= 500,000) | depth when the producer stopped | end-to-end p50 / p99 / p99.9 µs (target p99 <= 5,000 at half rate) |");
        println!("|---|---:|---:|---:|---:|");
        for (what, kind) in [
            ("full speed", "e2e-lior"),
            ("half the drained rate, open loop", "e2e-lior-half"),
        ] {
            if get(kind, "rate").is_none() {
                continue;
            }
            let load = match get(kind, "target") {
                Some(t) => format!("{what} ({t:.0} msg/s)"),
                None => what.to_string(),
            };
            println!(
                "| {load} | {} | {} | {} | {} / {} / {} |",
                fmt_rate(get(kind, "produced")),
                fmt_rate(get(kind, "rate")),
                fmt_rate(get(kind, "depth")),
                fmt_f(get(kind, "p50"), 0),
                fmt_f(get(kind, "p99"), 0),
                fmt_f(get(kind, "p999"), 0),
            );
        }
    }
}
