//! Queue routes on NATS JetStream (`[route.jetstream]`; docs/jetstream.md).
//!
//! ```text
//!  producers ─▶ spool (write-behind, on disk) ─▶ outbox dispatcher ─▶ publisher ─▶ stream
//!  stream ─▶ durable pull consumer ─▶ puller ─▶ inbox (memory) ─▶ dispatchers ─▶ consumers
//!                     ▲ ack once the inbox floor passed the batch   │
//!                     └──────────────────────────────────────────────┘
//! ```
//!
//! The route's spool is where producers' messages go, as with a local
//! queue; it releases them once the cluster stored them (`publisher.rs`).
//! Consumers, plain or ack protocol, are served by the usual dispatchers,
//! over the *inbox*: what this relay pulled from the stream and has not
//! delivered yet (`puller.rs`). Producers never wait for the cluster: while
//! it is away the spool absorbs what they send, up to `max_disk`.

pub(super) mod batch;
mod cluster;
mod order;
mod publisher;
mod puller;
mod seen;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use spillway_spool::fs::Fs;
use spillway_spool::{Spool, SpoolConfig};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::dispatcher::Dispatcher;
use super::spool_io::SpoolIo;
use crate::config::model::JetStream;

/// Counters of a route's JetStream backend.
#[derive(Debug, Default)]
pub struct JsStats {
    /// Batches and messages the cluster acknowledged (stored).
    pub batches_out: AtomicU64,
    pub messages_out: AtomicU64,
    /// Publishes the cluster answered as repeats (stored before).
    pub duplicates: AtomicU64,
    /// Publishes that failed (timeout, lost connection) and were retried.
    pub failures: AtomicU64,
    /// Messages queued from the stream for consumers.
    pub messages_in: AtomicU64,
    /// Batches acknowledged to the stream (all their messages delivered).
    pub batches_in_acked: AtomicU64,
    /// Batches whose messages were all queued already (dropped).
    pub duplicates_in: AtomicU64,
    /// Batches that came behind a later batch of the same spool.
    pub reordered: AtomicU64,
    /// Stream messages that are not spillway batches (terminated).
    pub bad_batches: AtomicU64,
}

/// The route's JetStream side: what the publisher and the puller use.
pub(super) struct Backend {
    pub cfg: JetStream,
    pub spool_id: u64,
    /// The publisher's view of the route's spool.
    pub outbox: Dispatcher,
    /// Where consumers are served from.
    pub inbox: Spool,
    pub inbox_io: SpoolIo,
    pub stats: JsStats,
}

/// The spool's id for message ids (`batch.rs`): made once, kept in the
/// spool directory.
pub(super) fn spool_id(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join("jetstream.id");
    match std::fs::read_to_string(&path) {
        Ok(s) => u64::from_str_radix(s.trim(), 16)
            .with_context(|| format!("{}: not a spool id", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = fastrand::u64(1..)
                ^ u64::from(std::process::id()).rotate_left(32)
                ^ crate::units::since_epoch().as_nanos() as u64;
            let tmp = dir.join("jetstream.id.tmp");
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(format!("{id:016x}\n").as_bytes())?;
                f.sync_all()
            };
            write()
                .and_then(|()| std::fs::rename(&tmp, &path))
                .and_then(|()| std::fs::File::open(dir)?.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The highest seq an inbox starts at: room for 2^62 messages after it.
const INBOX_SEQ_LIMIT: u64 = 1 << 62;

/// The inbox's directory (emptied at every start).
pub(super) fn inbox_dir(spool: &Path) -> PathBuf {
    spool.join("jetstream-inbox")
}

/// Opens an empty inbox for `route`: memory for `max_pending` batches,
/// disk behind it only if consumers fall that far behind.
pub(super) fn open_inbox(
    spool: &Path,
    cfg: &JetStream,
    max_message: u64,
    fs: Arc<dyn Fs>,
) -> anyhow::Result<Spool> {
    let dir = inbox_dir(spool);
    // The inbox's seqs are what ack-protocol consumers see and acknowledge:
    // a number handed out in an earlier life must not name another message
    // now (a consumer that remembers what it processed by seq would skip
    // it). So numbering starts past what the last life recorded and past
    // 16 per microsecond of the clock (a life that crashed before
    // recording its end handed out fewer than that).
    let recorded = spillway_spool::recorded_next_seq(&*fs, &dir).unwrap_or(0);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot empty {}", dir.display())),
    }
    let clock = u64::try_from(crate::units::since_epoch().as_micros())
        .unwrap_or(u64::MAX / 2)
        .saturating_mul(16);
    spillway_spool::start_empty_at(&*fs, &dir, recorded.max(clock).min(INBOX_SEQ_LIMIT))
        .with_context(|| format!("cannot start the inbox {}", dir.display()))?;
    let mut c = SpoolConfig::new(&dir);
    c.memory_limit = (cfg.max_pending as u64).saturating_mul(cfg.batch_bytes + 4096) + (1 << 20);
    c.max_disk = 0;
    c.durability = spillway_spool::Durability::Never;
    c.max_message = u32::try_from(max_message).unwrap_or(u32::MAX);
    c.block_timeout = Some(Duration::from_secs(1));
    let (inbox, _) = Spool::open_with_fs(c, fs)
        .with_context(|| format!("cannot open the inbox {}", dir.display()))?;
    Ok(inbox)
}

impl Backend {
    /// What `/status` shows of the backend: where the queue lives, the
    /// counters, and the inbox (pulled, not delivered yet).
    pub fn status(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        let inbox = self.inbox.stats();
        serde_json::json!({
            "servers": self.cfg.servers,
            "stream": self.cfg.stream,
            "subject": self.cfg.subject,
            "consumer": self.cfg.durable(),
            "groups": self.cfg.groups,
            "ordered": self.cfg.ordered,
            "pinned": self.cfg.pinned.is_some(),
            "batches_published": s.batches_out.load(Relaxed),
            "messages_published": s.messages_out.load(Relaxed),
            "publish_duplicates": s.duplicates.load(Relaxed),
            "publish_failures": s.failures.load(Relaxed),
            "messages_pulled": s.messages_in.load(Relaxed),
            "batches_acked": s.batches_in_acked.load(Relaxed),
            "duplicate_batches_pulled": s.duplicates_in.load(Relaxed),
            "reordered_batches": s.reordered.load(Relaxed),
            "bad_batches": s.bad_batches.load(Relaxed),
            "inbox": {
                "messages": inbox.mem_msgs + inbox.disk_msgs,
                "bytes": inbox.mem_bytes + inbox.disk_bytes,
            },
        })
    }

    /// Connects, makes or checks the stream and the durable consumer, and
    /// runs the publisher and the puller until `stop`. A stream or
    /// consumer with other settings is an error (the route stops); a
    /// cluster that does not answer is waited for.
    pub async fn run(
        &self,
        route: &str,
        max_disk: u64,
        consumer_age: &(dyn Fn() -> Option<Duration> + Sync),
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let js = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            r = cluster::connect(&self.cfg, route) => r?,
        };
        let mut wait = Duration::from_millis(200);
        let consumer = loop {
            match cluster::ensure(&js, &self.cfg, max_disk).await {
                Ok(c) => break c,
                Err(cluster::Setup::Mismatch(e)) => {
                    return Err(anyhow::Error::new(super::SetupRefused(format!("{e:#}"))))
                }
                Err(cluster::Setup::Unavailable(e)) => {
                    warn!(error = %e, "jetstream not available yet; producers' messages wait in the spool");
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        };
        info!(stream = %self.cfg.stream, consumer = %self.cfg.durable(), subject = %self.cfg.subject, "jetstream ready");
        let publisher = publisher::Publisher {
            js: js.clone(),
            route,
            subject: &self.cfg.subject,
            spool_id: self.spool_id,
            batch_bytes: usize::try_from(self.cfg.batch_bytes).unwrap_or(usize::MAX),
            max_inflight: self.cfg.max_inflight,
            outbox: &self.outbox,
            stats: &self.stats,
        };
        let stream = js
            .get_stream_no_info(&self.cfg.stream)
            .await
            .with_context(|| format!("stream {}", self.cfg.stream))?;
        let puller = puller::Puller {
            client: js.client(),
            consumer,
            stream,
            subject: &self.cfg.subject,
            presence: puller::presence_subject(&self.cfg.stream, &self.cfg.durable()),
            kept_for_others: !self.cfg.groups.is_empty(),
            ordered: self.cfg.ordered,
            pinned: self.cfg.pinned,
            inbox: &self.inbox,
            inbox_io: &self.inbox_io,
            max_pending: self.cfg.max_pending,
            batch_bytes: usize::try_from(self.cfg.batch_bytes).unwrap_or(usize::MAX),
            ack_wait: self.cfg.ack_wait,
            stats: &self.stats,
            consumer_age,
        };
        tokio::join!(publisher.run(stop.clone()), puller.run(stop));
        Ok(())
    }
}
