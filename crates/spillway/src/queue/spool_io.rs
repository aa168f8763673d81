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
//! The threads end when the handle is dropped (the channels close).

use std::sync::mpsc;
use std::sync::Arc;

use spillway_spool::{AppendOutcome, Batch, Spool, SpoolError};
use tokio::sync::{oneshot, Notify};

type Reply = oneshot::Sender<(Batch, Result<AppendOutcome, SpoolError>)>;

struct Append {
    batch: Batch,
    past_quota: bool,
    reply: Reply,
}

struct Commit {
    lsn: u64,
    outcome: AppendOutcome,
    batch: Batch,
    reply: Reply,
}

pub(super) struct SpoolIo {
    writer: mpsc::Sender<Append>,
    /// Notified (`notify_waiters`) when the spool may have freed space.
    pub space: Arc<Notify>,
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
        Ok(SpoolIo { writer, space })
    }

    /// Appends `batch` (returned, spent or not, with the result): accepted,
    /// dropped by policy, `Full` (offer it again later), or an error. Under
    /// `fsync = always` it returns once the batch is durable.
    pub async fn append(
        &self,
        batch: Batch,
        past_quota: bool,
    ) -> (Option<Batch>, Result<AppendOutcome, SpoolError>) {
        let (reply, answer) = oneshot::channel();
        let job = Append {
            batch,
            past_quota,
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
        match spool.try_append_batch(&mut job.batch, job.past_quota) {
            Ok((outcome, Some(lsn))) => {
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
            Ok((outcome, None)) => {
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
