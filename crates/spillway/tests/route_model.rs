//! Route-level model test of queue mode: seeded random schedules of
//! producers, misbehaving consumers, reloads, crashes, a full disk and a
//! failing fsync, run against a whole queue route in-process, and a checker
//! of the history (VOPR / FoundationDB simulation / Jepsen-checker style).
//!
//! How to run:
//!
//! ```text
//! cargo test -p spillway --test route_model                    # default: about a minute
//! ROUTE_MODEL_SEED=123 cargo test -p spillway --test route_model random_schedules -- --nocapture
//! ROUTE_MODEL_CASES=1000 cargo test --release -p spillway --test route_model random_schedules -- --nocapture
//! ROUTE_MODEL_SHRINK=1 ...   # shrink a failing case (drop ops while it still fails)
//! ROUTE_MODEL_LOG=1 ...      # print the relay's log
//! ```
//!
//! `ROUTE_MODEL_BASE_SEED` fixes the first seed of a multi-case run (else
//! the clock picks it; every case prints its seed). 100x the default run is
//! `ROUTE_MODEL_CASES=1000` (about 100 minutes in a release build on this
//! 2-core machine).
//!
//! See `route_model/run.rs` for how a case runs, `route_model/check.rs`
//! for what is checked and `route_model/regressions.rs` for the committed
//! failing schedules.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[path = "route_model/mod.rs"]
mod model;

use std::sync::Mutex;

/// One case at a time: each one runs a relay and a dozen peer threads, on a
/// shared 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Random cases in a default run: with the regressions, about a minute on
/// a 2-core machine in a debug build once the known defects are fixed.
const DEFAULT_CASES: u64 = 5;

#[test]
fn random_schedules() {
    let _g = serial();
    model::random_run(DEFAULT_CASES);
}

/// Defects found by this test, kept as explicit schedules (see
/// `route_model/regressions.rs` for what each caught and how).
macro_rules! regression {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let _g = serial();
            model::run_regression(stringify!($name), model::regressions::$name());
        }
    )*};
}

regression!(
    floor_jump,
    enospc_cursor,
    memory_tier_full_disk,
    old_task_acks_closed_spool,
    blocked_batch_at_shutdown,
    rst_after_fin,
    unsynced_segment_trusted_after_failed_fsync,
);
