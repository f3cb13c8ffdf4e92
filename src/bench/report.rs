//! The numbers `lior bench` prints: the per-second progress line and the final summary (text or
//! one JSON object). Latencies are recorded in nanoseconds and reported in microseconds.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Writes to stdout for the CLI. A reader that went away (`lior peek ... | head`) is not an
/// error worth a panic: the process exits quietly, as a command killed by SIGPIPE would, and
/// with the same status (128 + 13).
pub fn print_stdout(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("lior: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    /// How many messages the percentiles are over.
    pub samples: u64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: (h.mean() / 100.0).round() / 10.0,
            samples: h.len(),
        }
    }
}

/// The receiving side of a run (`--consume`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConsumeSummary {
    pub queue: String,
    pub received: u64,
    pub msgs_per_sec: f64,
    /// From the send time stamped in the body to the moment the API returned the message.
    pub end_to_end_us: Latency,
}

/// The final summary of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// What the producer side spoke: `msmq` (`--to`), `amqp` (`--produce-amqp`), empty when
    /// nothing was sent.
    pub protocol: String,
    pub target: String,
    pub connect: String,
    pub sessions: usize,
    pub size: usize,
    pub delivery: String,
    pub window: u16,
    /// Open-loop target rate (messages/s over all sessions), if any.
    pub rate: Option<f64>,
    /// Seconds the measured part of the run lasted.
    pub elapsed_s: f64,
    pub sent: u64,
    pub acked: u64,
    /// Acknowledged messages per second over the measured part.
    pub msgs_per_sec: f64,
    /// Acknowledged body bytes per second, in 10^6 bytes.
    pub mb_per_sec: f64,
    /// From send to the SessionAck (express) or recoverable ack that covered the message.
    pub latency_us: Latency,
    pub consume: Option<ConsumeSummary>,
    /// `--consume-amqp`: the AMQP consumers' side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amqp_consume: Option<super::amqp::AmqpConsumeSummary>,
    /// `--produce-amqp`: the AMQP producers (also in the main fields).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amqp_produce: Option<super::amqp::AmqpProduceSummary>,
    /// Why sessions closed before the end, if any did.
    pub errors: Vec<String>,
}

impl Summary {
    pub fn to_json(&self) -> String {
        // Plain data: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        if !self.target.is_empty() {
            s += &format!(
                "lior bench: {} {} to {} via {}, {} B {}, window {}{}\n",
                self.sessions,
                if self.protocol == "amqp" {
                    "AMQP connections"
                } else {
                    "sessions"
                },
                self.target,
                self.connect,
                self.size,
                self.delivery,
                self.window,
                self.rate
                    .map(|r| format!(", open loop at {r:.0} msg/s"))
                    .unwrap_or_default()
            );
            s += &format!(
                "  sent {}  acked {}  in {:.2} s\n  {:.0} msg/s  {:.1} MB/s\n",
                self.sent, self.acked, self.elapsed_s, self.msgs_per_sec, self.mb_per_sec
            );
            s += &format!("  ack latency (us): {}\n", latency_text(&self.latency_us));
        }
        if let Some(c) = &self.consume {
            s += &format!(
                "  consumed {} from {} at {:.0} msg/s\n  end-to-end latency (us): {}\n",
                c.received,
                c.queue,
                c.msgs_per_sec,
                latency_text(&c.end_to_end_us)
            );
        }
        if let Some(c) = &self.amqp_consume {
            s += &format!(
                "  AMQP: {} consumers of {} via {} (credit {}, {}): received {} at {:.0} msg/s\n  \
                 end-to-end latency (us): {}\n  queue depth: {} when the producer stopped, {} at the end\n",
                c.consumers,
                c.queue,
                c.connect,
                c.credit,
                c.settle,
                c.received,
                c.msgs_per_sec,
                latency_text(&c.end_to_end_us),
                c.depth_at_producer_end
                    .map_or("-".into(), |d| d.to_string()),
                c.depth_end.map_or("-".into(), |d| d.to_string()),
            );
        }
        for e in &self.errors {
            s += &format!("  error: {e}\n");
        }
        s
    }
}

fn latency_text(l: &Latency) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, n={})",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.samples
    )
}

/// One progress line: the second, cumulative counts, the last interval's rate and latency.
pub fn progress_line(
    second: u64,
    acked_total: u64,
    interval_acked: u64,
    interval_s: f64,
    size: usize,
    lat: &Latency,
) -> String {
    let rate = interval_acked as f64 / interval_s.max(1e-9);
    format!(
        "[{second:>4}s] acked {acked_total:>12}  {rate:>11.0} msg/s  {:>8.1} MB/s  \
         p50 {} us  p99 {} us  max {} us",
        rate * size as f64 / 1e6,
        lat.p50,
        lat.p99,
        lat.max
    )
}
