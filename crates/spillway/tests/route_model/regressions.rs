//! Named regression cases: schedules that caught a defect, kept as explicit
//! op lists (stable when the generator changes). Each names the defect it
//! caught and the violation it produced. They run like any other case; the
//! schedule makes the defect likely, the timing decides the rest, so each
//! is written to hit its window widely rather than narrowly.

use super::schedule::CEnd::*;
use super::schedule::Fsync::*;
use super::schedule::Op::*;
use super::schedule::PEnd::*;
use super::schedule::Pad::*;
use super::schedule::{
    AEnd, AckCfg, AckConsumer, AckStyle, Case, Cfg, Consumer, Enc, Frame, Op, Producer, Stall,
};

fn cfg(
    memory: u64,
    segment_size: u64,
    max_disk: u64,
    fsync: super::schedule::Fsync,
    drain_ms: u32,
) -> Cfg {
    Cfg {
        memory,
        segment_size,
        max_disk,
        redeliver: 64 << 10,
        fsync,
        drain_ms,
    }
}

fn backlog(msgs: u32) -> Op {
    Produce(Producer {
        msgs,
        burst: 100,
        pause_ms: 1,
        pad: Small,
        end: Close,
    })
}

/// A consumer with an Ethernet MSS (see `Consumer::mss`).
fn reader(
    rcvbuf: u32,
    read_max: u32,
    pause_ms: u32,
    life_ms: u32,
    stall: Option<Stall>,
    end: super::schedule::CEnd,
) -> Op {
    Consume(Consumer {
        rcvbuf,
        mss: 1460,
        read_max,
        pause_ms,
        life_ms,
        stall,
        end,
    })
}

fn trickle(msgs: u32) -> Op {
    Produce(Producer {
        msgs,
        burst: 5,
        pause_ms: 5,
        pad: Small,
        end: Close,
    })
}

fn stall(at_ms: u32, ms: u32) -> Option<Stall> {
    Some(Stall { at_ms, ms })
}

/// Defect 1: the ack floor jumps over messages a consumer still holds
/// after another consumer gave messages back (its in-flight list is not
/// sorted). A stalls with older messages in flight and resets: they go
/// back. B read past them, then stalls while its socket still takes bytes:
/// it takes A's messages behind its newer ones, its kernel acknowledges a
/// few of the newer ones, and the floor passes A's. A reload persists that
/// floor; B resets at the end of its stall without reading, so what the
/// relay had in flight to it is gone, and the restarted route starts past
/// A's messages. Three rounds, for three chances.
///
/// Caught on the base code: `[Lost] 2 accepted messages of p1 (op 0) never
/// arrived (relay: messages=2820 reason=shutdown ...): p1#888..=889: #890
/// (after) went to c2 (op 2) [ended Reset; relay: reason=shutdown
/// delivered=472 requeued=969]; #888 not in the spool after incarnation 0
/// ended at op 4 (Graceful)`.
pub fn floor_jump() -> Case {
    let c = cfg(0, 16 << 10, 0, Never, 1000);
    let mut ops = Vec::new();
    for _ in 0..3 {
        ops.extend([
            trickle(3000),
            reader(4096, 4096, 1, 800, stall(400, 400), Reset),
            reader(4096, 4096, 1, 3700, stall(700, 3000), Reset),
            Sleep { ms: 1500 },
            Reload(c.clone()),
        ]);
    }
    ops.extend([
        reader(8192, 65536, 0, 3000, None, Leave),
        Sleep { ms: 3000 },
    ]);
    Case {
        seed: 1,
        ack: None,
        frame: Frame::Lines,
        cfg: c,
        ops,
    }
}

/// Defect 2: ENOSPC while persisting the cursor is fatal. The disk fills
/// while a consumer works through a backlog; the next cursor persist
/// cannot create its temp file and the route stops with an error.
///
/// Caught on the base code: `[ServeError] ... stopped with an error, with no
/// failed fsync: ... spool tick: spool I/O error: create .../cursor.bg.tmp:
/// No space left on device`.
pub fn enospc_cursor() -> Case {
    // Large segments: none is deleted (which would free space) while the
    // slow consumer moves the floor on the full disk.
    let c = cfg(0, 256 << 10, 0, Never, 1000);
    Case {
        seed: 3,
        ack: None,
        frame: Frame::Len32,
        cfg: c,
        ops: vec![
            backlog(3000),
            reader(4096, 512, 5, 3000, None, Leave),
            Sleep { ms: 300 },
            DiskFull { budget: 0 },
            Sleep { ms: 1500 },
            DiskFree,
            Sleep { ms: 500 },
        ],
    }
}

/// Defect 3: the memory tier is lost at shutdown when the disk is full.
/// Messages wait in the memory tier (no consumer), the disk fills, a
/// reload closes the spool: writing the memory tier fails.
///
/// Caught on the base code: `[ServeError] ... spool close failed: spool I/O
/// error: create .../00000000000000000000.seg.tmp: No space left on
/// device` and `[Lost] ... accepted messages of p1 ... never arrived`.
pub fn memory_tier_full_disk() -> Case {
    let c = cfg(256 << 10, 16 << 10, 0, EveryMs(50), 1000);
    Case {
        seed: 4,
        ack: None,
        frame: Frame::Lines,
        cfg: c.clone(),
        ops: vec![
            backlog(1500),
            Sleep { ms: 500 },
            DiskFull { budget: 0 },
            Reload(c),
            Sleep { ms: 300 },
        ],
    }
}

/// Defect 5: a batch read from a producer is dropped at shutdown while
/// `when_full = block` waits. No consumer, a small disk bound: the
/// producer blocks; a reload stops the route.
///
/// Caught on the base code: `[Refused] the relay closed p1 (op 0) with
/// reason=refused after accepting N of the 3000 messages it sent`.
pub fn blocked_batch_at_shutdown() -> Case {
    let c = cfg(0, 16 << 10, 96 << 10, Never, 1000);
    Case {
        seed: 5,
        ack: None,
        frame: Frame::Len32,
        cfg: c.clone(),
        ops: vec![
            backlog(3000),
            Sleep { ms: 1500 },
            Reload(c),
            Sleep { ms: 300 },
        ],
    }
}

/// Defect 6: a consumer that sends RST after its FIN keeps its messages
/// held for the whole drain time (30 s here). The consumer stops reading
/// while the relay's socket still takes bytes (so the relay has written
/// all it took, with some of it unacknowledged), half-closes, and resets:
/// the relay waits for acknowledgements that will never come.
///
/// Caught on the base code: `[Held] 10s after the test ended them, the
/// relay still serves (and holds the messages of): consumer c1 (..., op 1)
/// which ended FinThenRst; drain_timeout is 30000 ms`.
pub fn rst_after_fin() -> Case {
    let c = cfg(0, 16 << 10, 0, Never, 30_000);
    Case {
        seed: 6,
        ack: None,
        frame: Frame::Lines,
        cfg: c,
        ops: vec![
            trickle(3000),
            reader(4096, 4096, 1, 800, stall(500, 300), FinThenRst),
            Sleep { ms: 1000 },
        ],
    }
}

/// Defect 4: after a reload, a consumer task of the old route that outlived
/// the drain acknowledges on the closed spool and deletes segments the new
/// route still needs. More than the relay's socket buffer takes is queued
/// for a consumer that stalls across the reload (short drain), so its task
/// outlives the stop with a message half written; then it reads on, and
/// the new route reads from its cursor.
///
/// Caught on the base code: `[ServeError] incarnation 1 ... stopped with an
/// error, with no failed fsync: route 'rm2-1': read: spool I/O error: open
/// .../00000000000000000000.seg: No such file or directory`.
pub fn old_task_acks_closed_spool() -> Case {
    let c = cfg(0, 4096, 0, Always, 1000);
    Case {
        seed: 2,
        ack: None,
        frame: Frame::Lines,
        cfg: c.clone(),
        ops: vec![
            Produce(Producer {
                msgs: 600,
                burst: 20,
                pause_ms: 1,
                pad: Large,
                end: Close,
            }),
            reader(4096, 512, 5, 6000, stall(300, 3500), Leave),
            Sleep { ms: 700 },
            Reload(c),
            Sleep { ms: 3500 },
            reader(8192, 65536, 0, 1500, None, Leave),
            Sleep { ms: 2000 },
        ],
    }
}

/// Found by this test, not among the known defects: recovery trusts every
/// segment but the last as fsynced when it was sealed, and continues the
/// last one only while it has room. When a process dies with a full last
/// segment that was never synced, the restarted route starts a new segment
/// behind it and never syncs it. A later power cut, under `fsync = always`
/// and `memory = 0`, tears it in the middle of the log, and the route
/// refuses to start ("corruption in the middle is never skipped"): every
/// message from there on is out of reach.
///
/// Here the death is a failed fsync while sealing a segment under
/// `fsync = never` (each batch, 100 lines or about 11 KiB, is larger than a
/// 4 KiB segment, so every append seals one); after a reload to
/// `fsync = always`, a power cut. A kill -9 between a record's write and
/// its fsync under `fsync = always` leaves the same state (a window of
/// about a millisecond per batch here, so not used).
///
/// Caught on the base code and on main: `[SpoolDamaged] reading the spool
/// offline after incarnation 2 ended (Crash { power_cut: true, keep_pct: 0
/// }) failed: spool corrupt: .../000000000000000NNNNN.seg ...` and then
/// `[ServeError] ... read: spool corrupt: ...`. Random seed 818 found it.
pub fn unsynced_segment_trusted_after_failed_fsync() -> Case {
    let never = cfg(0, 4096, 0, Never, 1000);
    let always = cfg(0, 4096, 0, Always, 1000);
    let steady = |msgs| {
        Produce(Producer {
            msgs,
            burst: 100,
            pause_ms: 10,
            pad: Small,
            end: Close,
        })
    };
    Case {
        seed: 7,
        ack: None,
        frame: Frame::Lines,
        cfg: never,
        ops: vec![
            steady(3000),
            Sleep { ms: 100 },
            FailFsync,
            steady(1000),
            Sleep { ms: 200 },
            Reload(always),
            Crash {
                power_cut: true,
                keep_pct: 0,
            },
            Sleep { ms: 300 },
        ],
    }
}

/// Found by this test (the ack variant of random seed 6509584, shrunk from
/// 22 ops to 7, then a consumer that gives everything back during the
/// fault in place of the shrunk case's first one, gone by then): a failed
/// fdatasync of the dead-letter spool is only logged. Messages wait in the
/// spool; the disk fills (budget 0: the main spool writes nothing, so it
/// attempts no fdatasync); an acking consumer NAKs everything
/// (max_deliveries buries it) and TERMs poison; fdatasync fails. The
/// dead-letter writer gives up its reserve, writes, and its fdatasync
/// fails: the dead-letter spool is poisoned for good, and dead.rs
/// `write_loop` logs "cannot write 1 dead letters; retrying" every second
/// and tells no one. The route serves on, the dead letters pinning their
/// group's floor (the queue can only grow), until the test stops it; and
/// at a stop, serve.rs only logs "dead-letter spool close failed" and
/// returns Ok if nothing else failed.
///
/// Caught on the base of the ack model (9263f44, before the dead-letter
/// reserve): `[FsyncIgnored] (op 7) incarnation 2 returned Ok although an
/// fdatasync failed while it ran` (the close half: there the full disk
/// kept the writer from writing at all). On main with the reserve (65f6855):
/// `[FsyncIgnored] incarnation 1: the dead-letter spool was poisoned by a
/// failed fsync and its writer retried it 2 times while the route served
/// on` (relay: `ERROR cannot write 1 dead letters; retrying error=spool
/// poisoned by an earlier failure: fsync .../spool/dead/00000000000000000000.seg:
/// Input/output error`). Fixed by 297b58c: a dead-letter append that fails
/// for good stops the route (a restart buries the letters again, still
/// below the floor), and a failed close of the dead-letter spool fails it.
pub fn dead_letter_fsync_failure_ignored() -> Case {
    let c = cfg(0, 4096, 96 << 10, Always, 1000);
    Case {
        seed: 6509584,
        frame: Frame::Lines,
        cfg: cfg(256 << 10, 4096, 96 << 10, Always, 1000),
        ack: Some(AckCfg {
            from_ack: false,
            groups: 0,
            ack_timeout_ms: 300,
            max_deliveries: 3,
        }),
        ops: vec![
            Reload(c),
            Produce(Producer {
                msgs: 1500,
                burst: 90,
                pause_ms: 18,
                pad: Small,
                end: Close,
            }),
            AckConsume(AckConsumer {
                enc: Enc::Binary,
                group: 0,
                window: 64,
                rcvbuf: 0,
                life_ms: 473,
                style: AckStyle::Mixed,
                every: 15,
                work_ms: 0,
                prog: false,
                nak_pct: 32,
                nak_ms: 19,
                crasher: false,
                black_hole: false,
                win: None,
                end: AEnd::Crash,
            }),
            Sleep { ms: 527 },
            DiskFull { budget: 0 },
            // Acknowledges nothing while fdatasync fails (so the main
            // spool's floor, and its files, stay put): gives everything
            // back, until max_deliveries buries it, and TERMs poison.
            AckConsume(AckConsumer {
                enc: Enc::Text,
                group: 0,
                window: 4,
                rcvbuf: 0,
                life_ms: 4000,
                style: AckStyle::Cumulative,
                every: 4,
                work_ms: 0,
                prog: false,
                nak_pct: 100,
                nak_ms: 0,
                crasher: false,
                black_hole: false,
                win: None,
                end: AEnd::Settle,
            }),
            FailFsync,
            FailFsync,
        ],
    }
}
