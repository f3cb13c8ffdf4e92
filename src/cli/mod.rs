//! What the CLI shows a person: tables sized to their content and to the terminal, progress
//! lines on stderr, and the `lior status` screen.

pub mod status;
pub mod table;

use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

/// How often a progress line may be written (on a terminal it is rewritten in place).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A progress line on stderr for a long run: rewritten in place on a terminal, otherwise at most
/// one line per [`PROGRESS_EVERY`]; nothing at all for runs shorter than that.
pub struct Progress {
    started: Instant,
    last: Option<Instant>,
    terminal: bool,
    every: Duration,
}

/// Environment variable that sets the progress interval in ms (tests set 0 to see every line
/// without waiting on the clock).
pub const PROGRESS_EVERY_ENV: &str = "LIOR_PROGRESS_EVERY_MS";

impl Progress {
    pub fn new() -> Progress {
        let every = std::env::var(PROGRESS_EVERY_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(PROGRESS_EVERY, Duration::from_millis);
        Progress {
            started: Instant::now(),
            last: None,
            terminal: std::io::stderr().is_terminal(),
            every,
        }
    }

    /// Says `what` if the interval passed since the start and since the last line.
    pub fn tick(&mut self, what: impl FnOnce() -> String) {
        let now = Instant::now();
        if now - self.started < self.every || self.last.is_some_and(|l| now - l < self.every) {
            return;
        }
        self.last = Some(now);
        let secs = (now - self.started).as_secs();
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(err, "\r\x1b[K{} ({secs} s)", what())
        } else {
            writeln!(err, "{} ({secs} s)", what())
        };
        let _ = err.flush();
    }

    /// Ends a line left open on a terminal.
    pub fn done(&self) {
        if self.terminal && self.last.is_some() {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

/// Bytes for a person: `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}
