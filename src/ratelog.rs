//! Rate-limited logging for lines a peer can cause once per message or per connection
//! (dead-lettering, malformed packets, refused sessions, limits reached): the first
//! [`RateLog::burst`] lines of each interval are written, the rest are counted, and the next line
//! after the interval is preceded by one summary line with the count suppressed. A flood of
//! 50,000 messages to unknown queues then writes a few dozen lines, not 18 MB.
//!
//! ```
//! use lior::ratelog::RateLog;
//! static DEAD_LETTER: RateLog = RateLog::new("dead-letter", 20, 5_000);
//! if DEAD_LETTER.allow() {
//!     tracing::warn!("undeliverable message moved to the dead-letter queue");
//! }
//! ```

use std::sync::Mutex;
use std::time::Instant;

/// Lines written per interval before suppression starts, for the per-message log sites.
pub const RATELOG_BURST: u32 = 20;
/// The interval of the per-message log sites, ms.
pub const RATELOG_INTERVAL_MS: u64 = 5_000;

/// One rate-limited log site (or family of sites). Cheap: one uncontended lock per call.
#[derive(Debug)]
pub struct RateLog {
    name: &'static str,
    burst: u32,
    interval_ms: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Start of the current interval; None before the first line.
    since: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl RateLog {
    /// A site named `name` (in the summary line) writing `burst` lines per `interval_ms`.
    pub const fn new(name: &'static str, burst: u32, interval_ms: u64) -> Self {
        RateLog {
            name,
            burst,
            interval_ms,
            state: Mutex::new(State {
                since: None,
                written: 0,
                suppressed: 0,
            }),
        }
    }

    /// The lines written per interval.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// True when the caller should write its line now. When an interval with suppressed lines
    /// has ended, the summary line ("N lines suppressed") is written here first.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let fresh = s
            .since
            .is_none_or(|t| now.duration_since(t).as_millis() as u64 >= self.interval_ms);
        if fresh {
            let suppressed = std::mem::take(&mut s.suppressed);
            s.since = Some(now);
            s.written = 0;
            if suppressed > 0 {
                self.summary(suppressed);
            }
        }
        if s.written < self.burst {
            s.written += 1;
            true
        } else {
            s.suppressed += 1;
            false
        }
    }

    /// Writes the summary line now if the interval has ended with lines suppressed, so a flood
    /// that stopped is still summarised (called by the daemon's once-a-second tick).
    pub fn flush(&self) {
        self.flush_at(Instant::now());
    }

    fn flush_at(&self, now: Instant) {
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let ended = s
            .since
            .is_some_and(|t| now.duration_since(t).as_millis() as u64 >= self.interval_ms);
        if ended && s.suppressed > 0 {
            let suppressed = std::mem::take(&mut s.suppressed);
            s.since = Some(now);
            s.written = self.burst;
            self.summary(suppressed);
        }
    }

    fn summary(&self, suppressed: u64) {
        tracing::warn!(
            what = self.name,
            suppressed,
            interval_ms = self.interval_ms,
            burst = self.burst,
            "similar log lines suppressed: {suppressed} {} lines were not written",
            self.name
        );
    }

    /// Lines suppressed in the current interval so far (for tests and metrics).
    pub fn suppressed(&self) -> u64 {
        match self.state.lock() {
            Ok(s) => s.suppressed,
            Err(poisoned) => poisoned.into_inner().suppressed,
        }
    }
}

/// Messages moved to a dead-letter queue (`qm::broker`).
pub static DEAD_LETTER: RateLog = RateLog::new("dead-letter", RATELOG_BURST, RATELOG_INTERVAL_MS);
/// Sessions closed for a malformed packet or a limit (`server`).
pub static MALFORMED: RateLog =
    RateLog::new("malformed-packet", RATELOG_BURST, RATELOG_INTERVAL_MS);
/// Sessions and connections refused at a limit (MaxInSessions, slots, per-IP, descriptors).
pub static REFUSED: RateLog =
    RateLog::new("refused-connection", RATELOG_BURST, RATELOG_INTERVAL_MS);
/// SRMP requests refused or malformed (`http::srmp`).
pub static SRMP: RateLog = RateLog::new("srmp-request", RATELOG_BURST, RATELOG_INTERVAL_MS);

/// Every site above, for [`flush_all`].
/// Messages refused by a queue or outgoing-queue limit.
pub static QUOTA: RateLog = RateLog::new("queue-quota", RATELOG_BURST, RATELOG_INTERVAL_MS);
/// Every rate-limited kind, for the periodic summary.
pub static ALL: [&RateLog; 5] = [&DEAD_LETTER, &MALFORMED, &REFUSED, &SRMP, &QUOTA];

/// Summarises every site whose interval ended with lines suppressed.
pub fn flush_all() {
    for r in ALL {
        r.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_burst_then_suppressed_then_a_new_interval() {
        let r = RateLog::new("t", 3, 1_000);
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| r.allow_at(t0)).count();
        assert_eq!(allowed, 3);
        assert_eq!(r.suppressed(), 7);
        assert!(!r.allow_at(t0 + Duration::from_millis(999)));
        assert!(r.allow_at(t0 + Duration::from_millis(1_000)));
        assert_eq!(r.suppressed(), 0, "the summary took the count");
        let t1 = t0 + Duration::from_millis(1_000);
        for _ in 0..5 {
            r.allow_at(t1);
        }
        assert_eq!(r.suppressed(), 3);
        r.flush_at(t1 + Duration::from_millis(500));
        assert_eq!(r.suppressed(), 3, "not before the interval ends");
        r.flush_at(t1 + Duration::from_millis(1_000));
        assert_eq!(r.suppressed(), 0);
        assert!(
            !r.allow_at(t1 + Duration::from_millis(1_001)),
            "the new interval starts full"
        );
    }
}
