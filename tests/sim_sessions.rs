//! Deterministic simulation of MS-MQQB sessions against the real server glue, broker and store
//! (STYLE.md "Tests" 4): lossy, splitting, resetting network; crashing, tearing disk; an auditor
//! for no ack before durability, no loss, exactly-once-in-order where promised. See `sim/`.
//!
//! - `cargo test --test sim_sessions` runs a fixed batch of seeds.
//! - `LIOR_SIM_SEED=<n>` replays one seed; `LIOR_SIM_TRACE=1` adds its last events on failure.
//! - `LIOR_SIM_SEEDS=<count>` (and optionally `LIOR_SIM_FIRST=<n>`) runs a longer campaign.
//! - `LIOR_SIM_FSYNC_FAILURES=1` also injects failed fsyncs (see [`fsync_failures`]).
//! - Each seed runs one or two shards ([`shards_of`]); `LIOR_SIM_SHARDS=1|2` forces one.
//! - `LIOR_SIM_LOSE_WAKES=1` injects a lost wake (see `World::lose_broker_wakes`): a campaign
//!   then shows which seeds the lost-wake check catches it on.

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

/// How many shards seed `seed` runs: 1 or 2, about half each, from the seed alone (so
/// `LIOR_SIM_SEED` replays it) but not from its fault schedule's random stream (so the rest of
/// a seed's schedule does not depend on it). `LIOR_SIM_SHARDS` overrides.
fn shards_of(seed: u64) -> usize {
    if let Some(n) = env_u64("LIOR_SIM_SHARDS") {
        return n as usize;
    }
    1 + (sim::rng::Rng::new(seed ^ 0x5348_4152_4453).next_u64() >> 63) as usize
}

/// One seed; on failure, a message naming the seed and how to replay it.
fn run_seed(seed: u64) -> Result<Stats, String> {
    run_seed_opts(
        seed,
        fsync_failures(),
        shards_of(seed),
        false,
        std::env::var_os("LIOR_SIM_LOSE_WAKES").is_some(),
    )
}

fn run_seed_with(seed: u64, fsync: bool, shards: usize) -> Result<Stats, String> {
    run_seed_opts(seed, fsync, shards, false, false)
}

/// `strict_wakes`: a lost wake fails the run even while `world::LOST_WAKES_FAIL` is off.
/// `lose_wakes`: the injected bug of [`World::lose_broker_wakes`] (`LIOR_SIM_LOSE_WAKES=1` in
/// a campaign).
fn run_seed_opts(
    seed: u64,
    fsync: bool,
    shards: usize,
    strict_wakes: bool,
    lose_wakes: bool,
) -> Result<Stats, String> {
    let trace = std::env::var_os("LIOR_SIM_TRACE").is_some();
    let mut world = match World::new(seed, fsync, trace, shards) {
        Ok(w) => w,
        Err(e) => return Err(format!("seed {seed}: setup failed: {e}")),
    };
    world.strict_wakes |= strict_wakes;
    if lose_wakes {
        world.lose_broker_wakes();
    }
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
        "simulation seed {seed} ({shards} shard(s)) failed at {} ms (step {}): {why}\n  faults: \
         {:?}\n  replay: LIOR_SIM_SEED={seed} LIOR_SIM_SHARDS={shards} LIOR_SIM_TRACE=1{} cargo \
         test --test sim_sessions -- --nocapture\n{}",
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
        t.two_shard_runs += s.two_shard_runs;
        t.handoffs += s.handoffs;
        t.records_mailed += s.records_mailed;
        t.turns += s.turns;
        t.turns_slept += s.turns_slept;
        t.deadline_turns += s.deadline_turns;
        t.wakes += s.wakes;
        t.links_on_shard_1 += s.links_on_shard_1;
        t.lost_wakes += s.lost_wakes;
        let (a, b) = (&mut t.audit, &s.audit);
        a.session_acks_checked += b.session_acks_checked;
        a.order_acks_checked += b.order_acks_checked;
        a.recoveries_checked += b.recoveries_checked;
        a.consumed += b.consumed;
        a.duplicates_recoverable_after_crash += b.duplicates_recoverable_after_crash;
        a.duplicates_express_after_crash += b.duplicates_express_after_crash;
        a.express_lost_in_crash += b.express_lost_in_crash;
        a.fifo_checked += b.fifo_checked;
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
    // A campaign must exercise both layouts, and with two shards connections on both, wakes
    // between them and duplicates crossing them (not a vacuous pass).
    if totals.runs >= 20 && std::env::var_os("LIOR_SIM_SHARDS").is_none() {
        let t = &totals.stats;
        assert!(
            t.two_shard_runs > 0 && t.two_shard_runs < totals.runs,
            "the campaign ran {} of {} seeds on two shards: not a split",
            t.two_shard_runs,
            totals.runs
        );
        assert!(
            t.links_on_shard_1 > 0 && t.wakes > 0 && t.turns_slept > 0,
            "two-shard runs never used shard 1, never woke a shard or never let one sleep: {t:?}"
        );
        assert!(
            t.handoffs > 0,
            "two-shard runs never handed a message to the shard owning its queue: {t:?}"
        );
        assert!(
            t.records_mailed > 0,
            "two-shard runs never sent a record (an admin acknowledgement) to the shard owning \
             its queue: {t:?}"
        );
    }
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
    if let Err(e) = run_seed_with(8_709_371_129_588_666_480, true, 1) {
        panic!("{e}");
    }
}

/// Regression (fixed: an OrderAck waits while any message of its session is not durable).
/// Seed 14577415126664011086: after a failed fsync an OrderAck for transactional message 1
/// went out from the in-memory sequence state while the message was not durable.
#[test]
fn fsync_failure_bug_order_ack_before_durability() {
    if let Err(e) = run_seed_with(14_577_415_126_664_011_086, true, 1) {
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
    if let Err(e) = run_seed_with(12_164_156_034_432_629_684, false, 1) {
        panic!("{e}");
    }
}

/// The lost-wake check catches a lost durable-interest wake of today's code. History: the
/// simulation found (seed 7774064181399508077, two shards) that `wake_durable_interest`'s
/// `swap(0)` cleared the interest bit of the shard calling it, which then waited on a partition
/// it had just committed and was never woken; fixed by clearing only the bits it wakes. That
/// seed no longer reaches the bug: since S5 a shard commits only the partitions it runs, so the
/// caller's own bit is never set and the old `swap(0)` behaves like the fix (checked: with
/// `swap(0)` put back, that seed and 120 two-shard seeds pass). What the check
/// must still catch is the wake itself going missing: a shard that took the owner's answer to a
/// hand-off watches the owner's partition (`note_durable_interest`) and sleeps; the owner's
/// commit moves the mark and wakes it (`wake_durable_interest`). Here that wake is lost
/// ([`sim::world::World::lose_broker_wakes`], an injected bug: the waker drops every wake the
/// broker sends): the seed must fail with "lost wake" (the waiting shard acknowledges in a turn
/// run only for its own timer, at 1029 ms), and pass without it. 7 of 30 two-shard seeds fail
/// so; with the lost-wake check turned off this test fails.
/// Replay the failing run: `LIOR_SIM_SEED=285548580 LIOR_SIM_SHARDS=2 LIOR_SIM_LOSE_WAKES=1
/// LIOR_SIM_TRACE=1 cargo test --test sim_sessions -- --nocapture`.
#[test]
fn lost_wake_of_a_shard_waiting_for_another_shards_durability_is_caught() {
    const SEED: u64 = 285_548_580;
    if let Err(e) = run_seed_opts(SEED, false, 2, true, false) {
        panic!("{e}");
    }
    match run_seed_opts(SEED, false, 2, true, true) {
        Ok(s) => panic!(
            "seed {SEED} passed with every durable-interest wake lost: the lost-wake check no \
             longer sees a shard that slept through another shard's commit ({s:?})"
        ),
        Err(e) => assert!(e.contains("lost wake"), "seed {SEED} failed otherwise: {e}"),
    }
}

/// Found by the simulation with two shards joined by the mesh (issue 10, S5): a shard takes the
/// owner's answer to a hand-off (where the message was stored) while it polls the session,
/// which the engine does after `end_of_turn`, the only place the shard used to register its
/// interest in another shard's partition. So the ticket was awaited but nobody would wake the
/// shard when it became durable: the session's SessionAck waited for the shard's next expiry
/// scan (up to 5 s). Fixed: `take_placements` watches the partition (interest bit, then the
/// mark read again) as soon as it learns the ticket. Without it the default campaign fails on
/// many two-shard seeds (10 of the 120 since the simulation runs the engine's own turn,
/// `engine/turn.rs`; that change redrew every schedule, so the seed pinned here moved from
/// 12036054880597043458, which no longer reaches the race, to one that does: without the fix it
/// fails at 1010 ms). Replay: `LIOR_SIM_SEED=2784038555440156458 LIOR_SIM_SHARDS=2
/// LIOR_SIM_STRICT_WAKES=1 LIOR_SIM_TRACE=1 cargo test --test sim_sessions -- --nocapture`.
#[test]
fn lost_wake_bug_handoff_answer_taken_after_end_of_turn() {
    if let Err(e) = run_seed_opts(2_784_038_555_440_156_458, false, 2, true, false) {
        panic!("{e}");
    }
}
