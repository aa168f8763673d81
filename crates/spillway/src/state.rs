//! What the admin endpoint reads about the running process: the live
//! routes (serving or draining), routes not serving yet, whether it is
//! draining, and the reload counters. The supervisor ([`crate::app`])
//! keeps it up to date; the admin endpoint only reads it, so neither
//! imports the other.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use spillway_net::limit::ConnLimits;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::counters::{label, EnumCounters};
use crate::history::{History, Reading, Sample};
use crate::queue::{MemoryBudget, QueueServer};
use crate::stream::spill::SpillBudget;
use crate::stream::{Direction, StreamServer};
use crate::units::since_epoch;

/// Lifecycle of a live route, as `/status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteState {
    Serving,
    /// Stopping: no new connections; those in flight finish.
    Draining,
}

impl RouteState {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteState::Serving => "serving",
            RouteState::Draining => "draining",
        }
    }
}

/// Outcome of a reload, a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    Success,
    /// The new file was rejected (the old configuration keeps running), or
    /// a route of it could not start.
    Failure,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 2] = [ReloadResult::Success, ReloadResult::Failure];

    /// Position in [`ReloadResult::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        }
    }
}

label!(ReloadResult);

/// A route's server, for metrics and status.
#[derive(Clone)]
pub enum LiveKind {
    /// The server new connections currently get.
    Stream(watch::Receiver<Arc<StreamServer>>),
    Queue(Arc<QueueServer>),
}

/// A route that is serving or draining.
pub struct LiveRoute {
    pub name: String,
    pub kind: LiveKind,
    /// Bound listeners: (role, address).
    pub listeners: Vec<(&'static str, SocketAddr)>,
    state: AtomicU8,
}

impl LiveRoute {
    /// A route that starts serving.
    pub fn new(name: String, kind: LiveKind, listeners: Vec<(&'static str, SocketAddr)>) -> Self {
        LiveRoute {
            name,
            kind,
            listeners,
            state: AtomicU8::new(0),
        }
    }

    pub fn state(&self) -> RouteState {
        match self.state.load(Ordering::Relaxed) {
            0 => RouteState::Serving,
            _ => RouteState::Draining,
        }
    }

    pub(crate) fn set_draining(&self) {
        self.state.store(1, Ordering::Relaxed);
    }

    pub fn mode(&self) -> &'static str {
        match self.kind {
            LiveKind::Stream(_) => "stream",
            LiveKind::Queue(_) => "queue",
        }
    }

    /// The route's counters now, for its history (`t`: unix seconds):
    /// bytes in and out of a stream route, messages in and delivered of a
    /// queue route.
    pub fn reading(&self, t: u64) -> Reading {
        let mut sample = Sample {
            t,
            ..Sample::default()
        };
        let (input, output) = match &self.kind {
            LiveKind::Stream(rx) => {
                let srv = rx.borrow().clone();
                let st = srv.stats();
                sample.connections =
                    u32::try_from(st.active.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
                (
                    st.bytes(Direction::ClientToUpstream),
                    st.bytes(Direction::UpstreamToClient),
                )
            }
            LiveKind::Queue(q) => {
                let st = q.stats();
                let sp = q.spool().stats();
                sample.depth_memory = sp.mem_msgs;
                sample.depth_disk = sp.disk_msgs;
                sample.disk_bytes = sp.disk_bytes;
                sample.oldest_age = sp.oldest_age.map_or(0.0, |d| d.as_secs_f32());
                let peers =
                    st.producers.load(Ordering::Relaxed) + st.consumers.load(Ordering::Relaxed);
                sample.connections = u32::try_from(peers).unwrap_or(u32::MAX);
                (
                    st.messages_in.load(Ordering::Relaxed),
                    st.messages_delivered.load(Ordering::Relaxed),
                )
            }
        };
        Reading {
            input,
            output,
            sample,
        }
    }
}

/// What the admin endpoint reads.
pub struct AppState {
    pub(crate) routes: Mutex<Vec<Arc<LiveRoute>>>,
    /// Routes of the configuration that are not serving yet (starting, or
    /// waiting for an old route to let go of an address or spool).
    pub(crate) pending: AtomicUsize,
    /// Routes of the configuration that failed to start at a reload (their
    /// address or spool is taken, a file is missing): not ready until a
    /// later reload starts or removes them.
    pub(crate) down: Mutex<BTreeSet<String>>,
    /// The process-wide shutdown token: draining (and not ready) from the
    /// moment a signal cancels it.
    pub(crate) shutdown: CancellationToken,
    /// Set once the supervisor has marked the routes draining and told
    /// systemd (`begin_drain` runs once).
    pub(crate) drain_started: AtomicBool,
    pub(crate) reloads: EnumCounters<ReloadResult>,
    pub(crate) last_reload_success: AtomicU64,
    /// The last reload's result and when it was handled (unix seconds).
    pub(crate) last_reload: Mutex<Option<(ReloadResult, u64)>>,
    pub(crate) spill: Arc<SpillBudget>,
    /// `global.max_connections`, shared by every route's listeners.
    pub(crate) conn_limits: Option<Arc<ConnLimits>>,
    /// `global.peer_memory`, shared by every queue route.
    pub(crate) peer_memory: Arc<MemoryBudget>,
    pub(crate) config_path: Option<PathBuf>,
    /// The last 15 minutes of each route (sampled while the admin
    /// endpoint runs).
    pub(crate) history: Arc<History>,
}

impl AppState {
    pub(crate) fn new(
        spill: Arc<SpillBudget>,
        config_path: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> Self {
        AppState {
            routes: Mutex::new(Vec::new()),
            pending: AtomicUsize::new(0),
            down: Mutex::new(BTreeSet::new()),
            drain_started: AtomicBool::new(false),
            shutdown,
            reloads: Default::default(),
            last_reload_success: AtomicU64::new(0),
            last_reload: Mutex::new(None),
            spill,
            conn_limits: None,
            peer_memory: Arc::new(MemoryBudget::new(crate::config::defaults::PEER_MEMORY)),
            config_path,
            history: Arc::default(),
        }
    }

    /// A state with no routes, for tests of the admin endpoint.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        AppState::new(
            Arc::new(SpillBudget::new(0)),
            None,
            CancellationToken::new(),
        )
    }

    /// Each route's last 15 minutes.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Samples every live route once (the sampler calls it every second),
    /// in the configuration's order (past the history's route cap, the
    /// first routes keep theirs). A route replaced by a reload has two live
    /// entries for a while: the serving one is sampled.
    pub fn sample_history(&self, now: std::time::Instant, t: u64) {
        let routes = self.routes();
        let mut chosen: Vec<&Arc<LiveRoute>> = Vec::with_capacity(routes.len());
        for r in &routes {
            match chosen.iter_mut().find(|c| c.name == r.name) {
                Some(c) if r.state() == RouteState::Serving => *c = r,
                Some(_) => {}
                None => chosen.push(r),
            }
        }
        let readings: Vec<(String, Reading)> = chosen
            .into_iter()
            .map(|r| (r.name.clone(), r.reading(t)))
            .collect();
        self.history.sample(&readings, now);
    }

    /// A snapshot of the live routes (serving and draining), in start order.
    pub fn routes(&self) -> Vec<Arc<LiveRoute>> {
        self.lock().clone()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<Arc<LiveRoute>>> {
        // The vector is replaced or pushed whole; a panic cannot leave it torn.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ready: every configured route is serving, and not shutting down.
    pub fn ready(&self) -> bool {
        !self.draining() && self.pending.load(Ordering::Relaxed) == 0 && self.down_lock().is_empty()
    }

    /// A configured route that is not running, if any (for `/readyz`).
    pub fn first_down(&self) -> Option<String> {
        self.down_lock().iter().next().cloned()
    }

    pub(crate) fn down_lock(&self) -> MutexGuard<'_, BTreeSet<String>> {
        // Single inserts and removes: a panic cannot tear the set.
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn draining(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    pub fn reloads(&self, r: ReloadResult) -> u64 {
        self.reloads.get(r)
    }

    /// Unix time of the last successful load (start or reload), seconds.
    /// The last reload's result and when it was handled, if any.
    pub fn last_reload(&self) -> Option<(ReloadResult, u64)> {
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn last_reload_success(&self) -> u64 {
        self.last_reload_success.load(Ordering::Relaxed)
    }

    pub fn spill(&self) -> &SpillBudget {
        &self.spill
    }

    pub fn peer_memory(&self) -> &MemoryBudget {
        &self.peer_memory
    }

    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    pub(crate) fn count_reload(&self, r: ReloadResult) {
        self.reloads.add(r);
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((r, since_epoch().as_secs()));
        if r == ReloadResult::Success {
            self.mark_loaded();
        }
    }

    pub(crate) fn mark_loaded(&self) {
        self.last_reload_success
            .store(since_epoch().as_secs(), Ordering::Relaxed);
    }
}
