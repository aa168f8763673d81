//! A queue route's life: serve until shutdown (housekeeping on a timer:
//! failures from the spool threads, space watching, the full-disk watch),
//! then the two-phase drain, and the spool's close.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn, Instrument};

use super::{QueueServer, Role};
use crate::logging::{route_span, RateLimited};

impl QueueServer {
    /// Redelivery windows hold the spool's floor only while no append waits
    /// for space: a full spool releases them at once (they stay in memory),
    /// and they hold it again after five seconds without pressure.
    fn watch_space(&self, windows: &mut Windows) {
        let wanted =
            self.spool.space_wanted() || self.waiting_for_space.load(Ordering::Relaxed) > 0;
        match (*windows, wanted) {
            (Windows::Pinned, true) => {
                *windows = Windows::Released { quiet_since: None };
                self.dispatchers().for_each(|d| d.release_windows());
            }
            (Windows::Released { .. }, true) => *windows = Windows::Released { quiet_since: None },
            (Windows::Released { quiet_since: None }, false) => {
                *windows = Windows::Released {
                    quiet_since: Some(Instant::now()),
                }
            }
            (
                Windows::Released {
                    quiet_since: Some(t),
                },
                false,
            ) if t.elapsed() >= Duration::from_secs(5) => {
                self.dispatchers().for_each(|d| d.pin_windows());
                *windows = Windows::Pinned;
            }
            _ => {}
        }
    }

    /// Writes the groups' floors (see `groups.rs`); a failure is logged
    /// (the file keeps older floors: redeliveries, not loss).
    async fn persist_floors(&self) {
        if self.route().groups.is_empty() {
            return;
        }
        let floors = Arc::clone(&self.floors);
        match tokio::task::spawn_blocking(move || floors.persist()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let mut w = self
                    .blocked_warning
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if let Some(suppressed) = w.check() {
                    warn!(error = %e, suppressed, "cannot write the groups' floors; retrying");
                }
            }
            Err(_) => {}
        }
    }

    /// Serves until shutdown, then drains: sources stop reading, consumers
    /// are closed at a message boundary, the memory tier goes to disk.
    /// `source` / `sink` are the bound listeners of `listen:` endpoints.
    pub async fn serve(
        self: Arc<Self>,
        source: Option<TcpListener>,
        sink: Option<TcpListener>,
    ) -> anyhow::Result<()> {
        let span = route_span(&self.route().name);
        self.serve_in_span(source, sink).instrument(span).await
    }

    async fn serve_in_span(
        self: Arc<Self>,
        source: Option<TcpListener>,
        sink: Option<TcpListener>,
    ) -> anyhow::Result<()> {
        let drain = self.drain;
        let name = self.route().name.clone();
        let producers = TaskTracker::new();
        let consumers = TaskTracker::new();
        let stop = self.stop.clone();

        let from = self.route().from.clone();
        let to = self.route().to.clone();
        self.spawn_side(&producers, &from, source, Role::Producer)?;
        self.spawn_side(&consumers, &to, sink, Role::Consumer)?;
        // The JetStream backend stops with the route: what the publisher
        // had in flight is published again after a restart (same message
        // ids), what the puller held is delivered again by the cluster.
        let backend = self.jetstream.is_some().then(|| {
            let me = Arc::clone(&self);
            let stop = self.stop.clone();
            tokio::spawn(async move {
                let Some(b) = &me.jetstream else { return };
                let max_disk = me.route().max_disk;
                let name = me.route().name.clone();
                let consumer_age = || me.oldest_consumer_age();
                if let Err(e) = b.run(&name, max_disk, &consumer_age, stop).await {
                    if e.downcast_ref::<super::SetupRefused>().is_some() {
                        me.setup_refused.store(true, Ordering::Relaxed);
                    }
                    me.fail_with("jetstream", &format!("{e:#}"));
                }
            })
        });

        // Housekeeping: interval fsync, cursor persistence.
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut full = FullDiskWatch::new();
        let mut ticks = 0u32;
        let mut windows = Windows::Pinned;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // The spool's own tick runs on its maintenance thread.
                    if let Some((what, e)) = self.io.take_failure() {
                        self.fail(what, &e);
                    }
                    self.watch_space(&mut windows);
                    ticks = ticks.wrapping_add(1);
                    if !self.route().groups.is_empty() && ticks.is_multiple_of(5) {
                        self.persist_floors().await;
                    }
                    if ticks.is_multiple_of(50) {
                        // What the memory tier may hold now (a reload
                        // may have changed it).
                        let wanted = self.spool.tunables().memory_limit;
                        full.check(&name, &self.spool.stats(), wanted);
                    }
                }
                _ = stop.cancelled() => break,
            }
        }

        // The drain, in two phases. First the producers: no new ones, and
        // each stores what it already read (TCP acknowledged it) while the
        // consumers keep delivering, which frees the space a blocked
        // append may be waiting for. Then the consumers are cut at a
        // message boundary.
        let stopped_at = *self.stopped_at.get_or_init(Instant::now);
        // How many messages were queued when the drain began: what the
        // producers' final reads add is the difference.
        let queued_before = self.stats.messages_in.load(Ordering::Relaxed);
        info!(messages_in = queued_before, "draining queue route");
        producers.close();
        let phase1_end = stopped_at + drain / 2 + Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = producers.wait() => break,
                _ = tokio::time::sleep_until(phase1_end) => break,
                _ = tick.tick() => {
                    if let Some((what, e)) = self.io.take_failure() {
                        self.fail(what, &e);
                    }
                }
            }
        }
        self.cut.cancel();
        consumers.close();
        let all_end = (stopped_at + drain).max(Instant::now() + Duration::from_secs(2))
            + Duration::from_secs(1);
        let both = async {
            producers.wait().await;
            consumers.wait().await;
        };
        if tokio::time::timeout_at(all_end, both).await.is_err() {
            warn!(
                producers = producers.len(),
                consumers = consumers.len(),
                "drain timeout: ending the connections that did not finish"
            );
            self.kill.cancel();
            // They end at their next await point; a spool call in progress
            // finishes first (a blocked append gives up within a second).
            let both = async {
                producers.wait().await;
                consumers.wait().await;
            };
            if tokio::time::timeout(Duration::from_secs(10), both)
                .await
                .is_err()
            {
                error!(
                    producers = producers.len(),
                    consumers = consumers.len(),
                    "connections still running after being ended; closing the spool anyway"
                );
            }
        }
        // Dead letters still being written hold the floor: they are
        // delivered again after a restart if this close stops them. Closed
        // first, so that the floor they free is in the acks flushed below.
        if let Some(dead) = self.dead.clone() {
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || dead.close()).await {
                // Reported like the main spool's close: the route fails.
                self.fail("dead-letter spool close", &e);
            }
        }
        // Every acknowledgement sent is in the spool before it closes (its
        // cursor has them), and a failure among them is reported.
        self.io.flush().await;
        if let Some((what, e)) = self.io.take_failure() {
            self.fail(what, &e);
        }
        self.persist_floors().await;
        if let Some(task) = backend {
            let _ = task.await;
        }
        if let Some(b) = &self.jetstream {
            // What it holds is not acknowledged to the cluster: emptied at
            // the next start.
            let inbox = b.inbox.clone();
            let _ = tokio::task::spawn_blocking(move || inbox.close()).await;
        }
        let spool = self.spool.clone();
        let closed = tokio::task::spawn_blocking(move || spool.close())
            .await
            .context("spool close task")?;
        if let Err(e) = closed {
            error!(error = %e, "spool close failed");
            return Err(anyhow::anyhow!("route '{name}': spool close failed: {e}"));
        }
        let st = self.spool.stats();
        info!(
            queued = st.next_seq.saturating_sub(st.ack_floor),
            disk_bytes = st.disk_bytes,
            "queue route stopped; spool closed"
        );
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match failure {
            Some(f) if self.setup_refused.load(Ordering::Relaxed) => Err(anyhow::Error::new(
                super::SetupRefused(format!("route '{name}': {f}")),
            )),
            Some(f) => Err(anyhow::anyhow!("route '{name}': {f}")),
            None => Ok(()),
        }
    }
}

/// Whether redelivery windows hold the spool's floor (see
/// `QueueServer::watch_space`).
#[derive(Clone, Copy)]
enum Windows {
    Pinned,
    /// Released under pressure; since when no append waited for space.
    Released {
        quiet_since: Option<Instant>,
    },
}

/// Says (rate-limited) when the disk is too full for the spool's cursor
/// or its memory-tier reserve. Neither stops the route: a stale cursor only
/// means a few more redeliveries after a crash, a smaller reserve a smaller
/// memory tier.
struct FullDiskWatch {
    cursor_failures: u64,
    reserve_short: bool,
    limit: RateLimited,
}

impl FullDiskWatch {
    fn new() -> Self {
        FullDiskWatch {
            cursor_failures: 0,
            reserve_short: false,
            limit: RateLimited::new(Duration::from_secs(30)),
        }
    }

    fn check(&mut self, route: &str, st: &spillway_spool::SpoolStats, wanted: u64) {
        if st.cursor_write_failures > self.cursor_failures {
            let failed = st.cursor_write_failures - self.cursor_failures;
            self.cursor_failures = st.cursor_write_failures;
            if let Some(suppressed) = self.limit.check() {
                warn!(
                    route,
                    failed,
                    total = st.cursor_write_failures,
                    suppressed,
                    "disk full: the consumer position could not be saved; the last saved one \
                       is kept and the write retried (after a crash, a few more messages would be \
                       delivered again)"
                );
            }
        }
        // Short for lack of space: a larger `memory` from a reload is
        // only reserved once the disk tier has drained, which is no reason
        // to say the disk is full.
        let short = st.mem_reserve_short && st.mem_reserved < wanted;
        if short != self.reserve_short {
            self.reserve_short = short;
            if short {
                warn!(
                    route,
                    reserved = st.mem_reserved,
                    wanted,
                    "disk full: the memory tier is limited to the disk space reserved for it"
                );
            } else {
                info!(
                    route,
                    reserved = st.mem_reserved,
                    "memory tier reserve complete again"
                );
            }
        }
    }
}
