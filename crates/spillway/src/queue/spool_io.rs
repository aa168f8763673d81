//! Producers' appends on threads of their own, so that no tokio worker
//! waits for the disk: a *writer* thread appends batches in the order they
//! come (writes into the page cache; a roll's fsync is not its job), and
//! under `fsync = always` a *commit* thread waits for durability with one
//! fdatasync for every batch written meanwhile (group commit), while the
//! writer goes on with the next ones.
//!
//! The writer never waits for space either: under `when_full = block` at
//! the bound the batch comes back (`Full`) to its producer task, which
//! waits asynchronously for the spool's space notification (or polls, for
//! a full file system, which nobody signals) and offers the same encoded
//! batch again.
//!
//! Acknowledgements and the housekeeping `tick` run on a third thread,
//! *spool-maint*: an ack that deletes segments unlinks files, fsyncs the
//! directory and persists the cursor, and a consumer's task does not wait
//! for that. Acks are gathered: the floor is a shared maximum, and the
//! thread is woken for it at most once per [`GATHER`] (a wake is a
//! context switch; consumers ack thousands of times a second); it looks
//! again [`GATHER`] after the last wake, so an ack that did not wake it
//! waits no longer. Its failures are kept for the route to act on
//! (`take_failure`).
//!
//! The threads end when the handle is dropped (the channels close).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spillway_spool::{AppendOutcome, Batch, Durability, Spool, SpoolError};
use tokio::sync::{oneshot, Notify};

type Reply = oneshot::Sender<(Batch, Result<AppendOutcome, SpoolError>)>;

struct Append {
    batch: Batch,
    past_quota: bool,
    /// Answer once the batch is durable as `fsync` says (an fsync under an
    /// interval too): a producer waits for a confirm.
    durable: bool,
    /// Called on the writer thread as soon as the batch is written (before
    /// its fsync): see `producers.rs`.
    written: Option<Written>,
    reply: Reply,
}

/// What an append calls once its batch is in the log (not yet durable).
pub(super) type Written = Arc<dyn Fn(&AppendOutcome) + Send + Sync>;

struct Commit {
    lsn: u64,
    outcome: AppendOutcome,
    batch: Batch,
    reply: Reply,
}

enum Maint {
    /// The shared ack floor moved.
    Ack,
    /// Answered once every ack sent before it is applied.
    Flush(oneshot::Sender<()>),
}

/// How often `tick` runs.
const TICK: Duration = Duration::from_millis(20);

/// Acks are applied at most this late, and the maintenance thread is
/// woken for them at most this often.
const GATHER: Duration = Duration::from_millis(1);

/// The highest ack floor asked for, and when the maintenance thread was
/// last woken for one.
struct Acks {
    floor: AtomicU64,
    /// Nanoseconds from `epoch` to the last wake (`epoch` is [`GATHER`]
    /// before the start, so the first ack wakes the thread).
    woken: AtomicU64,
    epoch: Instant,
}

impl Acks {
    fn new() -> Self {
        let now = Instant::now();
        Acks {
            floor: AtomicU64::new(0),
            woken: AtomicU64::new(0),
            epoch: now.checked_sub(GATHER).unwrap_or(now),
        }
    }

    /// Raises the floor; whether the thread should be woken for it (not
    /// within [`GATHER`] of the last wake: it looks again by then anyway,
    /// [`Acks::look_again`]).
    fn raise(&self, floor: u64) -> bool {
        if self.floor.fetch_max(floor, Ordering::AcqRel) >= floor {
            return false;
        }
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let last = self.woken.load(Ordering::Relaxed);
        now.saturating_sub(last) >= GATHER.as_nanos() as u64
            && self
                .woken
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// When the thread must look at the floor again without a wake:
    /// [`GATHER`] after the last wake, if that is still to come.
    fn look_again(&self) -> Option<Instant> {
        let at = self.epoch + Duration::from_nanos(self.woken.load(Ordering::Relaxed)) + GATHER;
        (at > Instant::now()).then_some(at)
    }
}

pub(super) struct SpoolIo {
    writer: mpsc::Sender<Append>,
    maint: Acker,
    /// Notified (`notify_waiters`) when the spool may have freed space.
    pub space: Arc<Notify>,
}

/// The first failure of the route's spool threads, until the route
/// takes it.
type Failure = Arc<Mutex<Option<(&'static str, SpoolError)>>>;

/// Sends acknowledgements to the maintenance thread, and reports the
/// failures of the other spool threads (the reader's) where the route
/// looks for them.
#[derive(Clone)]
pub(super) struct Acker {
    maint: mpsc::Sender<Maint>,
    acks: Arc<Acks>,
    failure: Failure,
}

impl Acker {
    /// Acknowledges everything below `floor` (on the maintenance thread,
    /// within [`GATHER`]).
    pub fn ack(&self, floor: u64) {
        if self.acks.raise(floor) {
            let _ = self.maint.send(Maint::Ack);
        }
    }

    /// Keeps the first failure for the route (it stops at its next tick).
    pub fn fail(&self, what: &'static str, e: SpoolError) {
        record(&self.failure, what, e);
    }
}

fn record(failure: &Failure, what: &'static str, e: SpoolError) {
    let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
    if f.is_none() {
        *f = Some((what, e));
    }
}

impl SpoolIo {
    pub fn start(spool: &Spool, route: &str) -> std::io::Result<SpoolIo> {
        let space = Arc::new(Notify::new());
        let s = Arc::clone(&space);
        spool.set_space_notify(Box::new(move || s.notify_waiters()));
        let (writer, appends) = mpsc::channel::<Append>();
        let (committer, commits) = mpsc::channel::<Commit>();
        let sp = spool.clone();
        std::thread::Builder::new()
            .name(format!("spool-commit:{route}"))
            .spawn(move || commit_loop(&sp, &commits))?;
        let sp = spool.clone();
        std::thread::Builder::new()
            .name(format!("spool-write:{route}"))
            .spawn(move || write_loop(&sp, &appends, &committer))?;
        let (maint, jobs) = mpsc::channel::<Maint>();
        let maint = Acker {
            maint,
            acks: Arc::new(Acks::new()),
            failure: Arc::new(Mutex::new(None)),
        };
        // (The thread keeps the failure slot, not a sender: it ends when
        // the last sender is dropped.)
        let (sp, a, f) = (
            spool.clone(),
            Arc::clone(&maint.acks),
            Arc::clone(&maint.failure),
        );
        std::thread::Builder::new()
            .name(format!("spool-maint:{route}"))
            .spawn(move || maint_loop(&sp, &jobs, &a, &f))?;
        Ok(SpoolIo {
            writer,
            maint,
            space,
        })
    }

    /// A handle that acknowledges (for the dispatcher).
    pub fn acker(&self) -> Acker {
        self.maint.clone()
    }

    /// Returns once every ack sent before is applied (before `close`, so
    /// the cursor it persists has them).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.maint.maint.send(Maint::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// The first failure of an ack, a tick or a read since the last call.
    pub fn take_failure(&self) -> Option<(&'static str, SpoolError)> {
        self.maint
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Appends `batch` (returned, spent or not, with the result): accepted,
    /// dropped by policy, `Full` (offer it again later), or an error. Under
    /// `fsync = always` it returns once the batch is durable.
    pub async fn append(
        &self,
        batch: Batch,
        past_quota: bool,
        durable: bool,
        written: Option<Written>,
    ) -> (Option<Batch>, Result<AppendOutcome, SpoolError>) {
        let (reply, answer) = oneshot::channel();
        let job = Append {
            batch,
            past_quota,
            durable,
            written,
            reply,
        };
        if let Err(mpsc::SendError(job)) = self.writer.send(job) {
            return (Some(job.batch), Err(SpoolError::Closed));
        }
        match answer.await {
            Ok((batch, r)) => (Some(batch), r),
            // The thread ended without answering (it panicked): what
            // happened to the batch is unknown.
            Err(_) => (None, Err(SpoolError::Closed)),
        }
    }
}

fn write_loop(spool: &Spool, appends: &mpsc::Receiver<Append>, committer: &mpsc::Sender<Commit>) {
    while let Ok(mut job) = appends.recv() {
        let wait = |durable: bool| match spool.tunables().durability {
            Durability::Always => true,
            Durability::Interval(_) => durable,
            Durability::Never => false,
        };
        let r = spool.try_append_batch(&mut job.batch, job.past_quota);
        if let (Ok((outcome, _)), Some(w)) = (&r, &job.written) {
            w(outcome);
        }
        match r {
            Ok((outcome, Some(lsn))) if wait(job.durable) => {
                let c = Commit {
                    lsn,
                    outcome,
                    batch: job.batch,
                    reply: job.reply,
                };
                if let Err(mpsc::SendError(c)) = committer.send(c) {
                    let _ = c.reply.send((c.batch, Err(SpoolError::Closed)));
                }
            }
            Ok((outcome, _)) => {
                let _ = job.reply.send((job.batch, Ok(outcome)));
            }
            Err(e) => {
                let _ = job.reply.send((job.batch, Err(e)));
            }
        }
    }
}

fn commit_loop(spool: &Spool, commits: &mpsc::Receiver<Commit>) {
    while let Ok(first) = commits.recv() {
        let mut jobs = vec![first];
        while let Ok(c) = commits.try_recv() {
            jobs.push(c);
        }
        let upto = jobs.iter().map(|c| c.lsn).max().unwrap_or(0);
        let all = spool.wait_durable(upto);
        for c in jobs {
            let r = match &all {
                Ok(()) => Ok(c.outcome),
                // Poisoned: each gets the error (at once).
                Err(_) => spool.wait_durable(c.lsn).map(|()| c.outcome),
            };
            let _ = c.reply.send((c.batch, r));
        }
    }
}

fn maint_loop(spool: &Spool, jobs: &mpsc::Receiver<Maint>, acks: &Acks, failure: &Failure) {
    let fail = |what: &'static str, e: SpoolError| record(failure, what, e);
    let mut next_tick = Instant::now() + TICK;
    let mut closed = false;
    let mut applied = 0u64;
    // Acks raised within GATHER of the last wake did not wake the thread.
    let mut look_again: Option<Instant> = None;
    loop {
        let until = look_again.map_or(next_tick, |l| l.min(next_tick));
        let wait = until.saturating_duration_since(Instant::now());
        let first = match jobs.recv_timeout(wait) {
            Ok(j) => Some(j),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Everything queued now; the floor is applied once.
        let mut flushes = Vec::new();
        for job in first
            .into_iter()
            .chain(std::iter::from_fn(|| jobs.try_recv().ok()))
        {
            if let Maint::Flush(done) = job {
                flushes.push(done);
            }
        }
        look_again = acks.look_again();
        let floor = acks.floor.load(Ordering::Acquire);
        if floor > applied {
            applied = floor;
            if let Err(e) = spool.ack(floor) {
                fail("ack", e);
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + TICK;
            if !closed {
                match spool.tick() {
                    Ok(()) => {}
                    Err(SpoolError::Closed) => closed = true,
                    Err(e) => fail("spool tick", e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_ack_wakes_the_thread_and_a_lower_one_never_does() {
        let acks = Acks::new();
        // At once after the start: no earlier wake to gather it with.
        assert!(acks.raise(10), "the first ack did not wake the thread");
        // Looked at again by GATHER after that wake at the latest.
        assert!(acks
            .look_again()
            .is_none_or(|at| at <= Instant::now() + GATHER));
        assert!(!acks.raise(5), "a lower floor woke the thread");
        assert!(!acks.raise(10), "the same floor woke the thread");
        assert_eq!(acks.floor.load(Ordering::Acquire), 10);
    }
}
