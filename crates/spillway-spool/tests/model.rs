//! Model test: random append / read / ack / tick / sync / close+reopen /
//! crash (power cut through SimFs, optionally with garbage appended to the
//! last segment) / a full disk for cursor writes / close on a full disk
//! (the memory tier must reach the disk through its reserve), against a
//! VecDeque model that tracks what a crash may lose. Runs with and without
//! a `max_disk` bound under each `when_full` policy (drop-newest refuses
//! the batch, drop-oldest deletes the oldest segment and moves the floor,
//! block refuses at once with a zero `block_timeout`).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{small_config, SimFs};
use proptest::prelude::*;
use spillway_spool::{Durability, Spool, SpoolConfig, SpoolError, Tier, WhenFull};

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(usize, u8)>),
    Read(usize),
    Ack(usize),
    Tick,
    Sync,
    CloseReopen,
    /// Close with the disk full (SIGTERM on a full disk): the memory tier
    /// goes into its reserve; the cursor may stay stale. Then reopen.
    CloseOnFullDisk,
    Crash {
        keep_pct: u64,
        garbage: Vec<u8>,
    },
    /// Cursor writes fail with ENOSPC (true) or work again (false). Every
    /// operation must still succeed; a stale cursor may redeliver.
    CursorNoSpace(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec((0usize..300, any::<u8>()), 1..8).prop_map(Op::Append),
        3 => (1usize..20).prop_map(Op::Read),
        3 => (0usize..15).prop_map(Op::Ack),
        1 => Just(Op::Tick),
        1 => Just(Op::Sync),
        1 => Just(Op::CloseReopen),
        1 => Just(Op::CloseOnFullDisk),
        2 => (0u64..=100, prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(keep_pct, garbage)| Op::Crash { keep_pct, garbage }),
        1 => any::<bool>().prop_map(Op::CursorNoSpace),
    ]
}

#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    data: Vec<u8>,
    tier: Tier,
    durable: bool,
}

struct Model {
    entries: VecDeque<Entry>,
    /// Every message appended, by seq (overwritten when a seq lost in a
    /// crash is reused), for checking what may reappear after a crash.
    history: BTreeMap<u64, Vec<u8>>,
    floor: u64,
    next_seq: u64,
    pos: u64,
}

fn read_all(s: &Spool) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let got = s.read(pos, 50, 4096).expect("read");
        if got.is_empty() {
            return out;
        }
        for m in got {
            pos = m.seq + 1;
            out.push((m.seq, m.data.to_vec()));
        }
    }
}

fn last_segment(dir: &Path) -> Option<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v.pop()
}

fn run(cfg: SpoolConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let fs = SimFs::new();
    let bounded = (cfg.max_disk > 0).then_some(cfg.when_full);
    let always = cfg.durability == Durability::Always;
    let (mut s, _) = Spool::open_with_fs(cfg.clone(), fs.clone()).expect("open");
    // Once a cursor write failed, a close no longer promises the exact ack
    // floor: acknowledged messages may come back (duplicates, never loss).
    let mut cursor_faults = false;
    let mut m = Model {
        entries: VecDeque::new(),
        history: BTreeMap::new(),
        floor: 0,
        next_seq: 0,
        pos: 0,
    };
    for op in ops {
        let full_disk = matches!(op, Op::CloseOnFullDisk);
        match op {
            Op::Append(spec) => {
                let msgs: Vec<Vec<u8>> = spec.iter().map(|&(n, b)| vec![b; n]).collect();
                let refs: Vec<&[u8]> = msgs.iter().map(|v| &v[..]).collect();
                // About half the batches go as the relay offers one with
                // nothing in flight: into the memory tier as they are, if
                // it takes them at once, else appended as usual.
                let copied = (spec[0].1 % 2 == 1)
                    .then(|| s.try_append_memory_copy(&refs))
                    .flatten();
                let o = match copied.map_or_else(|| s.append(&refs), Ok) {
                    Ok(o) => o,
                    // At the bound, `block` with a zero wait refuses the
                    // batch whole; a batch larger than the bound is refused
                    // under every policy.
                    Err(SpoolError::Full { .. }) if bounded == Some(WhenFull::Block) => continue,
                    Err(SpoolError::TooLarge { .. }) if bounded.is_some() => continue,
                    Err(e) => return Err(TestCaseError::fail(format!("append: {e}"))),
                };
                if o.dropped_oldest_msgs > 0 {
                    // The oldest segment went, unread: the floor moved past
                    // exactly that many unacknowledged messages.
                    prop_assert_eq!(bounded, Some(WhenFull::DropOldest));
                    let floor = s.ack_floor();
                    prop_assert!(floor > m.floor);
                    let gone = m.entries.iter().take_while(|e| e.seq < floor).count() as u64;
                    prop_assert_eq!(
                        gone,
                        o.dropped_oldest_msgs,
                        "floor {} -> {}",
                        m.floor,
                        floor
                    );
                    m.entries.drain(..gone as usize);
                    m.floor = floor;
                    m.pos = m.pos.max(floor);
                }
                if o.accepted == 0 {
                    prop_assert_eq!(bounded, Some(WhenFull::DropNewest));
                    prop_assert_eq!(o.dropped_newest, msgs.len());
                    prop_assert_eq!(s.next_seq(), m.next_seq);
                    continue;
                }
                prop_assert_eq!(o.first_seq, m.next_seq);
                prop_assert_eq!(o.accepted, msgs.len());
                let tier = o.tier.expect("accepted batch has a tier");
                for (i, data) in msgs.into_iter().enumerate() {
                    let seq = m.next_seq + i as u64;
                    m.history.insert(seq, data.clone());
                    m.entries.push_back(Entry {
                        seq,
                        data,
                        tier,
                        durable: always && tier == Tier::Disk,
                    });
                }
                m.next_seq += spec.len() as u64;
            }
            Op::Read(n) => {
                let got = s.read(m.pos, n, usize::MAX).expect("read");
                let from = m.pos.max(m.floor);
                let want: Vec<(u64, Vec<u8>)> = m
                    .entries
                    .iter()
                    .filter(|e| e.seq >= from)
                    .take(n)
                    .map(|e| (e.seq, e.data.clone()))
                    .collect();
                let got: Vec<(u64, Vec<u8>)> =
                    got.into_iter().map(|x| (x.seq, x.data.to_vec())).collect();
                prop_assert_eq!(&got, &want);
                if let Some(last) = got.last() {
                    m.pos = last.0 + 1;
                }
            }
            Op::Ack(n) => {
                let upto = (m.floor + n as u64).min(m.next_seq);
                s.ack(upto).expect("ack");
                while m.entries.front().is_some_and(|e| e.seq < upto) {
                    m.entries.pop_front();
                }
                m.floor = m.floor.max(upto);
                prop_assert_eq!(s.ack_floor(), m.floor);
            }
            Op::Tick => s.tick().expect("tick"),
            Op::Sync => {
                s.sync().expect("sync");
                for e in m.entries.iter_mut().filter(|e| e.tier == Tier::Disk) {
                    e.durable = true;
                }
            }
            Op::CloseReopen | Op::CloseOnFullDisk => {
                if full_disk {
                    fs.faults.space_left.store(0, Ordering::SeqCst);
                    cursor_faults = true;
                }
                s.close().expect("close");
                fs.faults.space_left.store(-1, Ordering::SeqCst);
                let (s2, rep) = Spool::open_with_fs(cfg.clone(), fs.clone()).expect("reopen");
                s = s2;
                prop_assert_eq!(rep.truncated_bytes, 0);
                let want: Vec<(u64, Vec<u8>)> =
                    m.entries.iter().map(|e| (e.seq, e.data.clone())).collect();
                let got = read_all(&s);
                if !cursor_faults {
                    prop_assert_eq!(s.next_seq(), m.next_seq);
                    prop_assert_eq!(s.ack_floor(), m.floor);
                    prop_assert_eq!(got, want);
                } else {
                    // A stale cursor: everything unacknowledged is there,
                    // after a contiguous run of acknowledged messages.
                    prop_assert!(s.ack_floor() <= m.floor);
                    let redelivered = got.len() - want.len().min(got.len());
                    prop_assert_eq!(&got[redelivered..], &want[..]);
                    for (i, (seq, data)) in got[..redelivered].iter().enumerate() {
                        prop_assert_eq!(*seq, s.ack_floor() + i as u64);
                        prop_assert!(*seq < m.floor);
                        prop_assert_eq!(m.history.get(seq), Some(data));
                    }
                    if want.is_empty() {
                        // An empty log numbers from the stale cursor.
                        prop_assert!(s.next_seq() <= m.next_seq);
                    } else {
                        prop_assert_eq!(s.next_seq(), m.next_seq);
                    }
                    m.entries = got
                        .iter()
                        .map(|(seq, data)| Entry {
                            seq: *seq,
                            data: data.clone(),
                            tier: Tier::Disk,
                            durable: true,
                        })
                        .collect();
                    m.floor = s.ack_floor();
                    m.next_seq = s.next_seq();
                }
                for e in m.entries.iter_mut() {
                    e.durable = true;
                    e.tier = Tier::Disk;
                }
                m.pos = m.floor;
            }
            Op::CursorNoSpace(on) => {
                fs.faults.cursor_no_space.store(on, Ordering::SeqCst);
                cursor_faults |= on;
            }
            Op::Crash { keep_pct, garbage } => {
                drop(s);
                fs.crash(|unsynced| unsynced * keep_pct / 100);
                if !garbage.is_empty() {
                    if let Some(p) = last_segment(&cfg.dir) {
                        if std::fs::metadata(&p).unwrap().len() >= 32 {
                            use std::io::Write;
                            let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
                            f.write_all(&garbage).unwrap();
                        }
                    }
                }
                let (s2, _rep) = Spool::open_with_fs(cfg.clone(), fs.clone()).expect("recover");
                s = s2;
                let got = read_all(&s);
                // FIFO, and every message is one that was appended with that seq.
                for w in got.windows(2) {
                    prop_assert!(w[0].0 < w[1].0, "order broken: {} then {}", w[0].0, w[1].0);
                }
                for (seq, data) in &got {
                    prop_assert_eq!(
                        m.history.get(seq),
                        Some(data),
                        "seq {} unknown or changed",
                        seq
                    );
                }
                // Nothing durable and unacked may be lost.
                let present: std::collections::HashSet<u64> = got.iter().map(|g| g.0).collect();
                for e in m.entries.iter().filter(|e| e.durable) {
                    prop_assert!(present.contains(&e.seq), "durable seq {} lost", e.seq);
                }
                if let Some(last) = got.last() {
                    prop_assert!(s.next_seq() > last.0);
                }
                m.entries = got
                    .iter()
                    .map(|(seq, data)| Entry {
                        seq: *seq,
                        data: data.clone(),
                        tier: Tier::Disk,
                        durable: true,
                    })
                    .collect();
                // History is kept: an acked message still on disk may come
                // back after a later crash too (its seq is never reused,
                // because it is below the log's end).
                m.history.extend(got);
                m.floor = s.ack_floor();
                m.next_seq = s.next_seq();
                m.pos = m.floor;
                if let Some(first) = m.entries.front() {
                    prop_assert!(m.floor <= first.seq);
                }
            }
        }
    }
    // The offline verifier agrees with the engine at the end of every run.
    s.close().expect("final close");
    let rep = spillway_spool::verify(&cfg.dir, |_, _| {}).expect("verify");
    prop_assert!(rep.ok(), "{:?}", rep.problem);
    let _ = Arc::clone(&fs);
    Ok(())
}

fn config_for(dir: &Path, always: bool, memory: bool, bound: Option<WhenFull>) -> SpoolConfig {
    let mut cfg = small_config(dir);
    cfg.durability = if always {
        Durability::Always
    } else {
        Durability::Never
    };
    cfg.memory_limit = if memory { 600 } else { 0 };
    cfg.cursor_interval = std::time::Duration::ZERO;
    if let Some(w) = bound {
        // Two 4 KiB segments' worth: the bound is reached within a few
        // appends, and drop-oldest has whole segments to delete.
        cfg.max_disk = 8192;
        cfg.when_full = w;
        cfg.block_timeout = Some(std::time::Duration::ZERO);
    }
    cfg
}

fn bound() -> impl Strategy<Value = Option<WhenFull>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(WhenFull::Block)),
        1 => Just(Some(WhenFull::DropNewest)),
        1 => Just(Some(WhenFull::DropOldest)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn spool_matches_model(
        always in any::<bool>(),
        memory in any::<bool>(),
        bound in bound(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        run(config_for(dir.path(), always, memory, bound), ops)?;
    }
}
