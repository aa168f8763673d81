//! The route-level model test's machinery; see `tests/route_model.rs`.

pub mod capture;
pub mod check;
pub mod check_ack;
pub mod guard;
pub mod peers;
pub mod peers_ack;
pub mod regressions;
pub mod run;
pub mod schedule;
#[cfg(test)]
mod selftest;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use check::{Kind, Violation};
use run::{Outcome, Runner};
use schedule::{cfg_after, Case, Op};

/// Runs one case and checks its history.
pub fn run_case(case: &Case) -> Outcome {
    Runner::new(case).run()
}

/// Whether the schedule keeps its own rules (crashes only under crash-safe
/// settings, failed fsyncs only without a memory tier; confirming
/// producers only in ack cases that have them, with no memory tier ever;
/// acking consumers only in ack cases, plain ones only in plain cases);
/// the shrinker only tries schedules that do.
pub fn valid(case: &Case) -> bool {
    let from_ack = case.ack.as_ref().is_some_and(|a| a.from_ack);
    (!from_ack || case.cfg.memory == 0)
        && case.ops.iter().enumerate().all(|(i, op)| {
            let cfg = cfg_after(case, i);
            match op {
                Op::Crash { .. } => cfg.crash_safe(),
                Op::FailFsync => cfg.memory == 0,
                Op::Reload(c) => !from_ack || c.memory == 0,
                Op::Produce(_) => !from_ack,
                Op::AckProduce(_) => from_ack,
                Op::Consume(_) => case.ack.is_none(),
                Op::AckConsume(a) => case
                    .ack
                    .as_ref()
                    .is_some_and(|c| c.group_numbers().contains(&a.group)),
                _ => true,
            }
        })
}

/// Everything needed to understand a failure: seed, settings, the ops (as
/// Rust), how each incarnation ended, the violations.
pub fn report(case: &Case, out: &Outcome, took: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "route model: seed {}{} — {} violation(s) in {:.1?}",
        case.seed,
        if case.ack.is_some() { " (ack)" } else { "" },
        out.violations.len(),
        took
    );
    let _ = writeln!(
        s,
        "  replay: ROUTE_MODEL_SEED={} {}cargo test -p spillway --test route_model random_schedules -- --nocapture",
        case.seed,
        if case.ack.is_some() { "ROUTE_MODEL_ACK=only " } else { "ROUTE_MODEL_ACK=0 " }
    );
    let _ = writeln!(
        s,
        "  framing {:?}; initial settings {:?}",
        case.frame, case.cfg
    );
    if let Some(a) = &case.ack {
        let _ = writeln!(s, "  ack protocol: {a:?}");
    }
    let _ = writeln!(s, "  {}", out.stats);
    let _ = writeln!(s, "  ops:");
    let mut p = 0;
    let mut c = 0;
    for (i, op) in case.ops.iter().enumerate() {
        let tag = match op {
            Op::Produce(_) | Op::AckProduce(_) => {
                p += 1;
                format!("  // p{p}")
            }
            Op::Consume(_) | Op::AckConsume(_) => {
                c += 1;
                format!("  // c{c}")
            }
            _ => String::new(),
        };
        let _ = writeln!(s, "    /* {i:2} */ {op:?},{tag}");
    }
    let _ = writeln!(s, "  incarnations:");
    for e in &out.ends {
        let snap = match &e.snapshot {
            Ok(v) => format!("{} messages pending in the spool after", v.len()),
            Err(err) => format!("spool unreadable after: {err}"),
        };
        let res = match &e.result {
            Some(Ok(())) => "Ok".to_string(),
            Some(Err(err)) => format!("Err({err})"),
            None => "-".to_string(),
        };
        let _ = writeln!(
            s,
            "    #{} ops {}..{} t={}..{}..{} {:?}: ended {:?}, serve {res}{}; {snap}",
            e.inc,
            e.first_op,
            e.end_op,
            e.start_t,
            e.t,
            e.done_t,
            e.cfg,
            e.kind,
            if e.fsync_fault {
                " (fsync failing)"
            } else {
                ""
            }
        );
        for n in &e.notes {
            let _ = writeln!(s, "      note: {n}");
        }
    }
    let _ = writeln!(s, "  violations:");
    for v in &out.violations {
        let at = v.op.map_or(String::new(), |o| format!(" (op {o})"));
        let _ = writeln!(s, "  - [{:?}]{at} {}", v.kind, v.text);
    }
    s
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The kinds of violation a case produced.
pub fn kinds(v: &[Violation]) -> Vec<Kind> {
    let mut k: Vec<Kind> = v.iter().map(|v| v.kind).collect();
    k.sort();
    k.dedup();
    k
}

/// Drops ops (halves, then single ops) while the case still fails with
/// `kind`. Timing varies between runs, so a step that no longer fails is
/// just not taken.
pub fn shrink(case: &Case, kind: Kind, budget: usize) -> Case {
    let mut best = case.clone();
    let mut tries = 0;
    let mut chunk = best.ops.len().div_ceil(2);
    while chunk >= 1 && tries < budget {
        let mut i = 0;
        let mut progressed = false;
        while i < best.ops.len() && tries < budget {
            let mut cand = best.clone();
            let end = (i + chunk).min(cand.ops.len());
            cand.ops.drain(i..end);
            if cand.ops.is_empty() || !valid(&cand) {
                i += chunk;
                continue;
            }
            tries += 1;
            let out = run_case(&cand);
            if out.violations.iter().any(|v| v.kind == kind) {
                eprintln!(
                    "shrink: {} ops still fail with {kind:?} (try {tries})",
                    cand.ops.len()
                );
                best = cand;
                progressed = true;
            } else {
                i += chunk;
            }
        }
        if !progressed {
            chunk /= 2;
        }
    }
    best
}

/// The randomized run: `ROUTE_MODEL_SEED` replays one case,
/// `ROUTE_MODEL_CASES` sets how many (from a base seed that
/// `ROUTE_MODEL_BASE_SEED` fixes, else the clock). Panics with every
/// failing case's report.
/// The first seed of the default run.
const DEFAULT_BASE_SEED: u64 = 20_261_205;

pub fn random_run(default_cases: u64) {
    let seeds: Vec<u64> = match env_u64("ROUTE_MODEL_SEED") {
        Some(s) => vec![s],
        None => {
            let n = env_u64("ROUTE_MODEL_CASES").unwrap_or(default_cases);
            // A fixed base by default (the suite's schedules are the same
            // on every run; see route_model.rs); `random` draws one.
            let base = match std::env::var("ROUTE_MODEL_BASE_SEED").as_deref() {
                Ok("random") => {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| d.as_nanos() as u64)
                        % 1_000_000_007
                }
                _ => env_u64("ROUTE_MODEL_BASE_SEED").unwrap_or(DEFAULT_BASE_SEED),
            };
            (0..n).map(|i| base.wrapping_add(i)).collect()
        }
    };
    let shrink_on = env_u64("ROUTE_MODEL_SHRINK").unwrap_or(0) > 0;
    // Each seed's plain case, then its ack variant if it has one.
    let (plain, ack) = match std::env::var("ROUTE_MODEL_ACK").as_deref() {
        Ok("only") => (false, true),
        Ok("0" | "no") => (true, false),
        _ => (true, true),
    };
    let mut failures = Vec::new();
    let started = Instant::now();
    let cases = seeds.into_iter().flat_map(|seed| {
        let p = plain.then(|| schedule::generate(seed));
        let a = if ack {
            schedule::generate_ack(seed)
        } else {
            None
        };
        p.into_iter().chain(a)
    });
    for case in cases {
        let seed = case.seed;
        let t = Instant::now();
        let out = run_case(&case);
        let took = t.elapsed();
        eprintln!(
            "route model: seed {seed}{}: {} ops, {:.1?}, {} — {}",
            if case.ack.is_some() { " (ack)" } else { "" },
            case.ops.len(),
            took,
            out.stats,
            if out.violations.is_empty() {
                "ok".to_string()
            } else {
                format!("FAILED {:?}", kinds(&out.violations))
            }
        );
        if !out.violations.is_empty() {
            let mut r = report(&case, &out, took);
            if shrink_on {
                let kind = out.violations[0].kind;
                let small = shrink(&case, kind, 40);
                let _ = writeln!(
                    r,
                    "  shrunk for {kind:?} to {} ops (paste into regressions.rs):",
                    small.ops.len()
                );
                let _ = writeln!(
                    r,
                    "    Case {{\n        seed: {},\n        frame: Frame::{:?},\n        cfg: {:?},\n        ack: {:?},\n        ops: vec![",
                    small.seed, small.frame, small.cfg, small.ack
                );
                for op in &small.ops {
                    let _ = writeln!(r, "            {op:?},");
                }
                let _ = writeln!(r, "        ],\n    }}");
            }
            eprintln!("{r}");
            failures.push(r);
        }
    }
    eprintln!("route model: {:.1?} in all", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} failing case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs an explicit case (a regression) and panics with its report when
/// it violates anything.
pub fn run_regression(name: &str, case: Case) {
    assert!(valid(&case), "{name}: the schedule breaks its own rules");
    let t = Instant::now();
    let out = run_case(&case);
    let took = t.elapsed();
    eprintln!(
        "route model regression {name}: {:.1?}, {} — {}",
        took,
        out.stats,
        if out.violations.is_empty() {
            "ok".into()
        } else {
            format!("FAILED {:?}", kinds(&out.violations))
        }
    );
    assert!(
        out.violations.is_empty(),
        "regression {name}:\n{}",
        report(&case, &out, took)
    );
}
