//! Deterministic simulation of MS-MQQB sessions against the real server glue, broker and store
//! (STYLE.md "Tests" 4): lossy, splitting, resetting network; crashing, tearing disk; an auditor
//! for no ack before durability, no loss, exactly-once-in-order where promised. See `sim/`.
//!
//! - `cargo test --test sim_sessions` runs a fixed batch of seeds.
//! - `LIOR_SIM_SEED=<n>` replays one seed; `LIOR_SIM_TRACE=1` adds its last events on failure.
//! - `LIOR_SIM_SEEDS=<count>` (and optionally `LIOR_SIM_FIRST=<n>`) runs a longer campaign.
//! - `LIOR_SIM_FSYNC_FAILURES=1` also injects failed fsyncs (see [`fsync_failures`]).

mod sim;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use sim::world::{Stats, World};

/// Seeds the default test runs (kept under a few seconds of the test budget).
const DEFAULT_SEEDS: u64 = 120;
/// Seeds are spread over the u64 space so consecutive runs do not share a prefix.
fn seed_of(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x1105_2024
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Whether runs inject failed fsyncs. Off by default: after a failed fsync the simulated disk
/// may keep any part of the unsynced writes (as Linux may), so a removal record of a receive
/// that reported an error can survive the restart, and records the store never called durable
/// come back. About 1.5% of seeds with this fault still fail on such states; the regressions
/// below pin the bugs this fault found and that are fixed.
fn fsync_failures() -> bool {
    std::env::var_os("LIOR_SIM_FSYNC_FAILURES").is_some()
}

/// One seed; on failure, a message naming the seed and how to replay it.
fn run_seed(seed: u64) -> Result<Stats, String> {
    run_seed_with(seed, fsync_failures())
}

fn run_seed_with(seed: u64, fsync: bool) -> Result<Stats, String> {
    let trace = std::env::var_os("LIOR_SIM_TRACE").is_some();
    let mut world = match World::new(seed, fsync, trace) {
        Ok(w) => w,
        Err(e) => return Err(format!("seed {seed}: setup failed: {e}")),
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| world.run()));
    let why = match outcome {
        Ok(Ok(stats)) => return Ok(stats),
        Ok(Err(e)) => e,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            format!("panic: {msg}")
        }
    };
    Err(format!(
        "simulation seed {seed} failed at {} ms (step {}): {why}\n  faults: {:?}\n  replay: \
         LIOR_SIM_SEED={seed} LIOR_SIM_TRACE=1{} cargo test --test sim_sessions -- --nocapture\n\
         {}",
        world.now_ms(),
        world.stats.steps,
        world.f,
        if fsync {
            " LIOR_SIM_FSYNC_FAILURES=1"
        } else {
            ""
        },
        world.trace_tail()
    ))
}

#[derive(Default)]
struct Totals {
    runs: u64,
    stats: Stats,
}

impl Totals {
    fn add(&mut self, s: &Stats) {
        let t = &mut self.stats;
        self.runs += 1;
        t.steps += s.steps;
        t.sim_ms += s.sim_ms;
        t.messages += s.messages;
        t.links += s.links;
        t.resets += s.resets;
        t.crashes += s.crashes;
        t.crashes_mid_turn += s.crashes_mid_turn;
        t.crashes_after_submit += s.crashes_after_submit;
        t.fsync_failures += s.fsync_failures;
        t.recovery_cut_bytes += s.recovery_cut_bytes;
        t.server_closes += s.server_closes;
        t.consumer_calls += s.consumer_calls;
        t.maintain_calls += s.maintain_calls;
        let (a, b) = (&mut t.audit, &s.audit);
        a.session_acks_checked += b.session_acks_checked;
        a.order_acks_checked += b.order_acks_checked;
        a.recoveries_checked += b.recoveries_checked;
        a.consumed += b.consumed;
        a.duplicates_recoverable_after_crash += b.duplicates_recoverable_after_crash;
        a.duplicates_express_after_crash += b.duplicates_express_after_crash;
        a.express_lost_in_crash += b.express_lost_in_crash;
    }
}

fn campaign(seeds: impl Iterator<Item = u64>) {
    let start = Instant::now();
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    for seed in seeds {
        match run_seed(seed) {
            Ok(s) => totals.add(&s),
            Err(e) => {
                eprintln!("{e}\n");
                failures.push(seed);
            }
        }
    }
    eprintln!(
        "simulation: {} runs passed, {} failed, in {:.1} s\n  totals: {:?}",
        totals.runs,
        failures.len(),
        start.elapsed().as_secs_f64(),
        totals.stats
    );
    assert!(
        failures.is_empty(),
        "failing seeds (replay each with LIOR_SIM_SEED=<seed>): {failures:?}"
    );
}

#[test]
fn sessions_over_a_faulty_network_and_disk_keep_every_promise() {
    if let Some(seed) = env_u64("LIOR_SIM_SEED") {
        match run_seed(seed) {
            Ok(s) => eprintln!("seed {seed} passed: {s:?}"),
            Err(e) => panic!("{e}"),
        }
        return;
    }
    let count = env_u64("LIOR_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("LIOR_SIM_FIRST").unwrap_or(0);
    campaign((first..first + count).map(seed_of));
}

/// Regression (fixed: the duplicate table forgets a message the store refused, and a duplicate
/// is acknowledged only once its first copy is durable). Seed 8709371129588666480: a failed fsync poisons the store at 3675 ms; the next message is refused
/// and its session closed (app error 2), but the duplicate table already holds message #14;
/// the client resends #14 on a new connection, the broker calls it a Duplicate, the server
/// acknowledges it at once, and the store never held it durably.
#[test]
fn fsync_failure_bug_duplicate_of_a_refused_message_is_acknowledged() {
    if let Err(e) = run_seed_with(8_709_371_129_588_666_480, true) {
        panic!("{e}");
    }
}

/// Regression (fixed: an OrderAck waits while any message of its session is not durable).
/// Seed 14577415126664011086: after a failed fsync an OrderAck for transactional message 1
/// went out from the in-memory sequence state while the message was not durable.
#[test]
fn fsync_failure_bug_order_ack_before_durability() {
    if let Err(e) = run_seed_with(14_577_415_126_664_011_086, true) {
        panic!("{e}");
    }
}

/// Regression (fixed: start-up raises each sequence state to the highest transactional message
/// still stored). Seed 12164156034432629684: transactional message 2 of client 1 is appended and its batch
/// submitted when the power fails; the torn batch keeps the message record but not the sequence
/// state record the commit writes behind it. After the restart the state says 1, the resend of
/// 2 is accepted again, and the queue holds 2 twice (exactly-once broken). 6 of 2,000 seeds.
#[test]
fn torn_commit_bug_transactional_duplicate() {
    if let Err(e) = run_seed_with(12_164_156_034_432_629_684, false) {
        panic!("{e}");
    }
}
