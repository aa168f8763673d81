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
use super::schedule::{Case, Cfg, Consumer, Frame, Op, Producer, Stall};

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
/// sorted). A stalls with messages in flight and resets: they go back.
/// B, a slow reader whose socket still takes bytes, takes them behind the
/// higher ones it holds; as B's acknowledgements move, the floor passes
/// them. A reload persists that floor; B resets before it has read that
/// far, so what the relay had in flight to it is gone, and the restarted
/// route starts past A's messages.
pub fn floor_jump() -> Case {
    let c = cfg(0, 16 << 10, 0, Never, 1000);
    Case {
        seed: 1,
        frame: Frame::Lines,
        cfg: c.clone(),
        ops: vec![
            trickle(3000),
            reader(4096, 4096, 1, 800, stall(400, 400), Reset),
            reader(4096, 64, 5, 4000, None, Reset),
            Sleep { ms: 1500 },
            Reload(c),
            reader(8192, 65536, 0, 3000, None, Leave),
            Sleep { ms: 3500 },
        ],
    }
}

/// Defect 4: after a reload, a consumer task of the old route that outlived
/// the drain acknowledges on the closed spool and deletes segments the new
/// route still needs. More than the relay's socket buffer takes is queued
/// for a consumer that stalls across the reload (short drain), so its task
/// outlives the stop with a message half written; then it reads on, and
/// the new route reads from its cursor.
pub fn old_task_acks_closed_spool() -> Case {
    let c = cfg(0, 4096, 0, Always, 1000);
    Case {
        seed: 2,
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
