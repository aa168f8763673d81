//! A producer's batches into the spool, and the one pushback the source
//! ever applies: under `when_full = block` at the disk bound the producer
//! is not read until consumers free space (woken by the spool, not
//! polled); at shutdown a batch already read is written past the bound.

use std::sync::atomic::Ordering;

use spillway_spool::{AppendOutcome, SpoolError};
use tracing::warn;

use super::QueueServer;

impl QueueServer {
    /// Appends one batch; under `when_full = block` at the disk bound, waits
    /// (the producer is not read meanwhile: the only pushback the source
    /// ever sees), saying so every few seconds, until consumers free space
    /// or the relay shuts down.
    ///
    /// At shutdown the batch is already read from the socket, so TCP
    /// acknowledged it to the producer: it is written past `max_disk` (a
    /// policy, not a physical limit). On a physically full disk it is
    /// retried until the drain timeout; only then does it fail.
    ///
    /// `durable`: answer once the batch is durable as `fsync` says (under
    /// an interval, by an fsync now, shared with every batch waiting for
    /// one: a confirming producer's batch). `written`: called once the
    /// batch is in the log, before its fsync.
    pub(super) async fn append_waiting(
        &self,
        batch: spillway_spool::Batch,
        durable: bool,
        written: Option<super::spool_io::Written>,
    ) -> Result<AppendOutcome, SpoolError> {
        let started = std::time::Instant::now();
        let mut give_up: Option<std::time::Instant> = None;
        let mut batch = batch;
        let mut waiting: Option<SpaceWait<'_>> = None;
        loop {
            let stopping = self.stop.is_cancelled();
            // Registered before the attempt: a free in between is not missed.
            let freed = self.io.space.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let (back, r) = self
                .io
                .append(batch, stopping, durable, written.clone())
                .await;
            let Some(back) = back else {
                return r;
            };
            batch = back;
            match r {
                Err(e) if e.is_full() && stopping => {
                    let deadline = *give_up.get_or_insert_with(|| {
                        self.drain_deadline(super::Role::Producer).into_std()
                    });
                    if std::time::Instant::now() >= deadline {
                        return Err(e);
                    }
                    // No one signals freed space on a full file system.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) if e.is_full() => {
                    waiting.get_or_insert_with(|| SpaceWait::new(&self.waiting_for_space));
                    let suppressed = self
                        .blocked_warning
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .check();
                    if let Some(suppressed) = suppressed {
                        warn!(waited_ms = started.elapsed().as_millis() as u64,
                              suppressed, reason = %e,
                              "disk tier full: not reading producers until consumers free space (when_full = block)");
                    }
                    // Woken when consumers free space; a full file system
                    // is polled; every second the warning and the stop
                    // are looked at again.
                    let poll = match e {
                        SpoolError::Full {
                            reason: spillway_spool::FullReason::NoSpace,
                        } => std::time::Duration::from_millis(50),
                        _ => std::time::Duration::from_secs(1),
                    };
                    tokio::select! {
                        _ = &mut freed => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = self.stop.cancelled() => {}
                    }
                }
                r => return r,
            }
        }
    }
}

/// Counts a producer waiting for space while it lives (the owner then
/// releases redelivery windows: see `QueueServer::watch_space`).
struct SpaceWait<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> SpaceWait<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        SpaceWait(n)
    }
}

impl Drop for SpaceWait<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
