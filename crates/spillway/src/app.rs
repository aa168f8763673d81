//! Running the routes of a configuration until shutdown, and reloading it.
//!
//! The supervisor owns one task per route. On start every route is bound
//! and opened, all or nothing. On reload (SIGHUP) the new file is parsed and
//! validated first (an invalid file changes nothing), then compared with
//! the running routes by name:
//! - **unchanged**: left alone; its connections never notice.
//! - **changed stream route, same listener**: a new [`StreamServer`] is
//!   swapped in; new connections use it, connections in flight finish on
//!   the old one. Counters carry over.
//! - **changed queue route, or a stream route with a new listener**: the old
//!   route drains (like SIGTERM, for that route only) and the new one starts
//!   once the old one has released its listeners and spool.
//! - **removed**: drains. **added**: starts (after any route it collides
//!   with, by address or spool directory, has let go).
//!
//! It keeps [`AppState`] (`state.rs`) up to date: the live routes,
//! whether the process is ready, and the reload counters; and it builds
//! the metrics registry the admin endpoint serves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use spillway_net::limit::ConnLimits;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::accept::{bind, bind_with};
use crate::config::{self, Config, QueueRoute, Route, StreamRoute};
use crate::endpoint::Endpoint;
use crate::metrics::{Family, Registry, Scrape, Source};
use crate::notify;
use crate::queue::QueueServer;
use crate::state::{AppState, LiveKind, LiveRoute, ReloadResult, RouteState};
use crate::stream::spill::SpillBudget;
use crate::stream::StreamServer;

static ROUTE_INFO: Family = Family::gauge(
    "spillway_route_info",
    "Live routes (1 each), with their mode and state.",
);

/// Declares the families of the live routes (each route kind declares
/// its own) and fills them at each scrape from the routes `state` holds
/// then: routes come and go with reloads. Here, where the routes are
/// started, so that neither the state nor the admin endpoint imports the
/// route kinds' metrics.
fn register_route_metrics(registry: &mut Registry, state: Arc<AppState>) {
    registry.declare(&[&ROUTE_INFO]);
    crate::stream::metrics::declare(registry);
    crate::queue::metrics::declare(registry);
    registry.register(Routes { state });
}

struct Routes {
    state: Arc<AppState>,
}

impl Source for Routes {
    fn collect(&self, s: &mut Scrape) {
        let routes = self.state.routes();
        for r in &routes {
            let labels = [
                ("route", r.name.as_str()),
                ("mode", r.mode()),
                ("state", r.state().as_str()),
            ];
            s.gauge(&ROUTE_INFO, &labels, 1);
        }
        // Stream routes, then queue routes, in start order.
        for r in &routes {
            if let LiveKind::Stream(rx) = &r.kind {
                let srv = Arc::clone(&*rx.borrow());
                crate::stream::metrics::collect(s, &r.name, &srv);
            }
        }
        for r in &routes {
            if let LiveKind::Queue(q) = &r.kind {
                crate::queue::metrics::collect(s, &r.name, q);
            }
        }
    }
}

/// How the process was started, for reloads and the admin endpoint.
pub struct Options {
    /// The config file, when there is one to reload on SIGHUP.
    pub config_path: Option<PathBuf>,
    /// A reload request per message (SIGHUP).
    pub reload: mpsc::UnboundedReceiver<()>,
    /// Where to write the bound addresses once ready (`--ready-file`).
    pub ready_file: Option<PathBuf>,
}

type RouteFuture = Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// A route the supervisor runs.
struct Running {
    route: Route,
    generation: u64,
    stop: CancellationToken,
    /// Fires when the route's listeners are closed.
    unbound: CancellationToken,
    /// Fires when the route's task has finished (spool closed).
    done: CancellationToken,
    live: Option<Arc<LiveRoute>>,
    /// Stream routes: swaps in a new server.
    swap: Option<watch::Sender<Arc<StreamServer>>>,
    /// Started by a reload (not at start-up): a setup the cluster refuses
    /// leaves it down instead of stopping the process.
    by_reload: bool,
}

/// The supervisor's view of the process.
struct Supervisor {
    state: Arc<AppState>,
    shutdown: CancellationToken,
    drain: Duration,
    config: Config,
    running: HashMap<String, Running>,
    /// Routes draining after a reload removed or replaced them.
    retiring: Vec<Running>,
    tasks: JoinSet<(String, u64, anyhow::Result<()>)>,
    next_generation: u64,
    first_error: Option<anyhow::Error>,
    /// `--ready-file`, and the admin endpoint's bound address it names.
    ready_file: Option<PathBuf>,
    admin: Option<SocketAddr>,
    /// Reloads handled (applied or rejected), for the ready file.
    reloads: u64,
}

/// The admin token: the file's content without surrounding whitespace.
fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("admin: cannot read token_file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("admin: token_file {} is empty", path.display());
    }
    if token.bytes().any(|b| !b.is_ascii_graphic()) {
        anyhow::bail!(
            "admin: token_file {} holds spaces or control characters inside the token",
            path.display()
        );
    }
    Ok(token.to_string())
}

/// Opens every route (binds listeners, opens spools: all or nothing), then
/// serves until `shutdown` fires and every route has drained, reloading the
/// config file on each request in `options.reload`.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    options: Options,
) -> anyhow::Result<()> {
    if let Some(path) = &options.ready_file {
        crate::ready_file::check(path)
            .with_context(|| format!("--ready-file {}: cannot write it", path.display()))?;
    }
    let budget = Arc::new(SpillBudget::new(config.global.max_spill_total));
    let mut state = AppState::new(budget, options.config_path.clone(), shutdown.clone());
    state.conn_limits = config
        .global
        .max_connections
        .map(|n| Arc::new(ConnLimits::new(n, usize::MAX)));
    state.peer_memory = Arc::new(crate::queue::MemoryBudget::new(config.global.peer_memory));
    // Not ready until every route of the file serves: the admin endpoint
    // answers from before the first route starts.
    state.pending.store(config.routes.len(), Ordering::Relaxed);
    let state = Arc::new(state);
    let mut admin = None;
    // The admin endpoint answers through the drain, and stops when this
    // function returns, however it returns.
    let admin_stop = CancellationToken::new();
    let _stop_admin = admin_stop.clone().drop_guard();
    if let Some(addr) = &config.global.admin {
        let listener = bind(addr)
            .await
            .with_context(|| format!("admin: cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        admin = Some(local);
        let auth = match &config.global.admin_token_file {
            Some(path) => crate::admin::Auth::bearer(&read_token(path)?),
            None => crate::admin::Auth::open(),
        };
        if auth.is_open() && !local.ip().is_loopback() {
            warn!(listen = %local,
                  "the admin endpoint listens beyond this host without a token: anyone who \
                   can reach it reads /metrics and /status (set [admin] token_file, or bind it \
                   to 127.0.0.1)");
        }
        info!(listen = %local, token = !auth.is_open(), "admin ready");
        let mut registry = Registry::default();
        crate::admin::process::register(&mut registry, Arc::clone(&state));
        register_route_metrics(&mut registry, Arc::clone(&state));
        tokio::spawn(crate::admin::serve(
            listener,
            registry,
            Arc::clone(&state),
            auth,
            admin_stop.clone().cancelled_owned(),
        ));
        tokio::spawn(sample_history(
            Arc::clone(&state),
            admin_stop.clone().cancelled_owned(),
        ));
    }
    let mut sup = Supervisor {
        state,
        shutdown: shutdown.clone(),
        drain: config.global.drain_timeout,
        config: config.clone(),
        running: HashMap::new(),
        retiring: Vec::new(),
        tasks: JoinSet::new(),
        next_generation: 0,
        first_error: None,
        ready_file: options.ready_file.clone(),
        admin,
        reloads: 0,
    };
    // All or nothing: a route that cannot start stops the others.
    let mut started = Vec::new();
    for route in &config.routes {
        let stop = shutdown.child_token();
        match start(route, &stop, &sup.state, sup.drain).await {
            Ok(s) => started.push((route.clone(), stop, s)),
            Err(e) => {
                shutdown.cancel();
                return Err(e);
            }
        }
    }
    for (route, stop, s) in started {
        sup.launch(route, stop, s, false);
    }
    sup.state
        .pending
        .fetch_sub(config.routes.len(), Ordering::Relaxed);
    sup.state.mark_loaded();
    sup.ready();
    let ready_file = sup.ready_file.clone();
    let result = sup.run(options.reload).await;
    // Stopped: the addresses in the file are no longer served.
    if let Some(path) = ready_file {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Samples every live route's history once a second (for the status page
/// and `/status/history`) until `stop` completes.
async fn sample_history(state: Arc<AppState>, stop: impl std::future::Future<Output = ()>) {
    let mut tick = tokio::time::interval(crate::history::INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                state.sample_history(std::time::Instant::now(), crate::units::since_epoch().as_secs());
            }
            _ = &mut stop => return,
        }
    }
}

/// A started route: bound and open, not yet serving.
struct Started {
    live: Arc<LiveRoute>,
    unbound: CancellationToken,
    future: RouteFuture,
    swap: Option<watch::Sender<Arc<StreamServer>>>,
}

async fn start(
    route: &Route,
    stop: &CancellationToken,
    state: &AppState,
    drain: Duration,
) -> anyhow::Result<Started> {
    match route {
        Route::Stream(r) => start_stream(r, stop, state, drain).await,
        Route::Queue(q) => start_queue(q, stop, state, drain).await,
    }
}

async fn start_stream(
    r: &StreamRoute,
    stop: &CancellationToken,
    state: &AppState,
    drain: Duration,
) -> anyhow::Result<Started> {
    let listener = bind(&r.listen)
        .await
        .with_context(|| format!("route '{}': cannot listen on {}", r.name, r.listen))?;
    let local = listener.local_addr()?;
    let server = Arc::new(
        StreamServer::new(r.clone(), Arc::clone(&state.spill))
            .with_context(|| format!("route '{}': TLS", r.name))?
            .with_global_limits(state.conn_limits.clone()),
    );
    info!(route = %r.name, listen = %local, upstreams = %r.upstreams.join(","), balance = %r.balance,
          spill = r.spill.is_some(), tls = r.tls.is_some(),
          upstream_tls = r.upstream_tls.is_some(), "stream route ready");
    let (tx, rx) = watch::channel(server);
    let unbound = CancellationToken::new();
    let future =
        StreamServer::serve_current(rx.clone(), listener, stop.clone(), drain, unbound.clone());
    Ok(Started {
        live: Arc::new(LiveRoute::new(
            r.name.clone(),
            LiveKind::Stream(rx),
            vec![("client", local)],
        )),
        unbound,
        future: Box::pin(async move {
            future.await;
            Ok(())
        }),
        swap: Some(tx),
    })
}

async fn bind_endpoint(
    route: &str,
    e: &Endpoint,
    role: &'static str,
) -> anyhow::Result<Option<TcpListener>> {
    match e {
        Endpoint::Listen(addr) => {
            // Producers get a deep receive buffer: it absorbs bursts while the
            // relay is briefly starved of CPU, so a fragile producer never sees
            // a full send buffer.
            let rcvbuf = (role == "source").then_some(crate::queue::PRODUCER_RCVBUF);
            let l = bind_with(addr, rcvbuf)
                .await
                .with_context(|| format!("route '{route}': cannot listen on {addr} ({role})"))?;
            info!(route, role, listen = %l.local_addr()?, "queue {role} ready");
            Ok(Some(l))
        }
        Endpoint::Connect(_) => Ok(None),
    }
}

async fn start_queue(
    q: &QueueRoute,
    stop: &CancellationToken,
    state: &AppState,
    drain: Duration,
) -> anyhow::Result<Started> {
    // Listeners first: if one cannot bind, the spool was never opened (and
    // its lock never taken).
    let source = bind_endpoint(&q.name, &q.from, "source").await?;
    let sink = bind_endpoint(&q.name, &q.to, "sink").await?;
    let mut listeners = Vec::new();
    for (role, l) in [("source", &source), ("sink", &sink)] {
        if let Some(l) = l {
            listeners.push((role, l.local_addr()?));
        }
    }
    // Opening recovers the spool (reads its files): on a blocking thread,
    // not a tokio worker.
    let shared = crate::queue::Shared {
        connections: state.conn_limits.clone(),
        memory: Arc::clone(&state.peer_memory),
    };
    let (route, stop) = (q.clone(), stop.clone());
    let server = tokio::task::spawn_blocking(move || {
        QueueServer::open_with_limits(route, &stop, drain, shared)
    })
    .await
    .context("spool open task")??;
    info!(route = %q.name, from = %q.from, to = %q.to, framing = %q.framing,
          spool = %q.spool.display(), from_tls = q.from_tls.is_some(),
          to_tls = q.to_tls.is_some(), "queue route ready");
    Ok(Started {
        live: Arc::new(LiveRoute::new(
            q.name.clone(),
            LiveKind::Queue(Arc::clone(&server)),
            listeners,
        )),
        // A queue route's listeners close when its task ends.
        unbound: CancellationToken::new(),
        future: Box::pin(server.serve(source, sink)),
        swap: None,
    })
}

/// One spelling per spool directory (`./spool/`, `spool` and a symlink to
/// it are the same directory): the real path when it exists, else the path
/// with `.` and repeated or trailing separators removed.
fn spool_key(p: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(p) {
        return real;
    }
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| p.to_path_buf(), |d| d.join(p))
    };
    abs.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// Addresses a route listens on and the spool it owns: what a new route
/// must not take while an old one still holds it.
fn claims(route: &Route) -> Vec<String> {
    match route {
        Route::Stream(r) => vec![format!("listen {}", r.listen)],
        Route::Queue(q) => {
            let mut v = vec![format!("spool {}", spool_key(&q.spool).display())];
            for e in [&q.from, &q.to] {
                if let Endpoint::Listen(a) = e {
                    v.push(format!("listen {a}"));
                }
            }
            v
        }
    }
}

impl Supervisor {
    /// Registers a started route and spawns its task.
    fn launch(&mut self, route: Route, stop: CancellationToken, s: Started, by_reload: bool) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let name = route.name().to_string();
        let done = CancellationToken::new();
        let unbound = s.unbound.clone();
        let (d, u, n) = (done.clone(), unbound.clone(), name.clone());
        let future = s.future;
        self.tasks.spawn(async move {
            let r = future.await;
            u.cancel();
            d.cancel();
            (n, generation, r)
        });
        self.state.lock().push(Arc::clone(&s.live));
        self.running.insert(
            name,
            Running {
                route,
                generation,
                stop,
                unbound,
                done,
                live: Some(s.live),
                swap: s.swap,
                by_reload,
            },
        );
    }

    async fn run(mut self, mut reload: mpsc::UnboundedReceiver<()>) -> anyhow::Result<()> {
        let mut reload_open = true;
        loop {
            if self.shutdown.is_cancelled() {
                self.begin_drain();
                if self.tasks.is_empty() {
                    break;
                }
            }
            tokio::select! {
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.on_exit(joined);
                }
                msg = reload.recv(), if reload_open && !self.shutdown.is_cancelled() => {
                    match msg {
                        Some(()) => self.reload().await,
                        None => reload_open = false,
                    }
                }
                _ = self.shutdown.cancelled(), if !self.state.drain_started.load(Ordering::Relaxed) => self.begin_drain(),
            }
        }
        match self.first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Shutdown started: readiness goes false, systemd hears STOPPING=1.
    fn begin_drain(&self) {
        if self.state.drain_started.swap(true, Ordering::Relaxed) {
            return;
        }
        notify::stopping();
        for r in self.state.routes() {
            r.set_draining();
        }
    }

    fn on_exit(
        &mut self,
        joined: Result<(String, u64, anyhow::Result<()>), tokio::task::JoinError>,
    ) {
        let (name, generation, result) = match joined {
            Ok(x) => x,
            Err(e) => (
                String::new(),
                u64::MAX,
                Err(anyhow::anyhow!("route task panicked: {e}")),
            ),
        };
        let mut finished = None;
        if self
            .running
            .get(&name)
            .is_some_and(|r| r.generation == generation)
        {
            finished = self.running.remove(&name);
        } else if let Some(i) = self
            .retiring
            .iter()
            .position(|r| r.route.name() == name && r.generation == generation)
        {
            finished = Some(self.retiring.swap_remove(i));
        }
        let by_reload = finished.as_ref().is_some_and(|r| r.by_reload);
        if let Some(live) = finished.and_then(|r| r.live) {
            self.state.lock().retain(|l| !Arc::ptr_eq(l, &live));
        }
        if let Err(e) = &result {
            if by_reload && e.downcast_ref::<crate::queue::SetupRefused>().is_some() {
                // A reload's new settings that the cluster refuses (a
                // stream or consumer made otherwise): that route is down,
                // /readyz names it, the others go on; the next reload
                // with settings that fit starts it again.
                error!(route = %name, "{e:#}; the route is not running (fix its settings and reload)");
                self.state.down_lock().insert(name);
                self.ready();
                return;
            }
        }
        if let Err(e) = result {
            // One failed route stops the process: a supervisor restarts it
            // and the spool is recovered from what reached the disk.
            error!(route = %name, "{e:#}");
            self.shutdown.cancel();
            self.first_error.get_or_insert(e);
        }
    }

    /// Re-reads the config file and applies the difference.
    async fn reload(&mut self) {
        let Some(path) = self.state.config_path.clone() else {
            warn!("SIGHUP: no config file to reload (started from flags); ignored");
            return;
        };
        notify::reloading();
        info!(config = %path.display(), "reloading configuration");
        let new = match config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "reload rejected; the running configuration is unchanged");
                self.state.count_reload(ReloadResult::Failure);
                self.reloads += 1;
                self.ready();
                return;
            }
        };
        self.warn_global_changes(&new);
        self.drain = new.global.drain_timeout;
        let result = self.apply(&new).await;
        self.config = new;
        self.state.count_reload(result);
        self.reloads += 1;
        self.ready();
    }

    /// Serving: tells systemd, and writes the ready file if asked to.
    fn ready(&self) {
        notify::ready();
        if let Some(path) = &self.ready_file {
            let routes = self.state.routes();
            let serving = routes
                .iter()
                .filter(|r| r.state() == RouteState::Serving)
                .map(|r| crate::ready_file::Bound {
                    route: &r.name,
                    listeners: &r.listeners,
                });
            if let Err(e) = crate::ready_file::write(path, self.admin, self.reloads, serving) {
                error!(path = %path.display(), error = %e, "cannot write the ready file");
            }
        }
    }

    fn warn_global_changes(&self, new: &Config) {
        let old = &self.config.global;
        let g = &new.global;
        if old.admin != g.admin {
            warn!("admin listen address changed: takes effect on restart");
        }
        if old.max_spill_total != g.max_spill_total {
            warn!("max_spill_total changed: takes effect on restart");
        }
        if old.max_connections != g.max_connections {
            warn!("global max_connections changed: takes effect on restart");
        }
        if old.peer_memory != g.peer_memory {
            // Applies at once: connections over it shrink as they drain.
            self.state.peer_memory.set_limit(g.peer_memory);
            info!(peer_memory = g.peer_memory, "global peer_memory changed");
        }
    }

    async fn apply(&mut self, new: &Config) -> ReloadResult {
        let mut result = ReloadResult::Success;
        let wanted: HashMap<&str, &Route> = new.routes.iter().map(|r| (r.name(), r)).collect();
        let (mut added, mut removed, mut changed, mut swapped, mut unchanged) = (0, 0, 0, 0, 0);

        // 1. Routes gone from the file drain.
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !wanted.contains_key(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            removed += 1;
            info!(route = %name, "route removed; draining");
            self.state.down_lock().remove(&name);
            self.retire(&name);
        }

        // 2. Changed routes: swap in place, or retire and restart.
        let mut to_start: Vec<Route> = Vec::new();
        for route in &new.routes {
            let Some(running) = self.running.get(route.name()) else {
                added += 1;
                to_start.push(route.clone());
                continue;
            };
            if running.route == *route {
                unchanged += 1;
                // Same settings; certificate files may still have been
                // renewed: re-read them for new connections.
                if let Some(swap) = &running.swap {
                    if let Err(e) = swap.borrow().reload_tls() {
                        error!(route = %route.name(), error = %e,
                               "TLS files not reloaded; the ones in use stay in use");
                        result = ReloadResult::Failure;
                    }
                }
                if let Some(LiveKind::Queue(q)) = running.live.as_ref().map(|l| &l.kind) {
                    if let Err(e) = q.reload_tls() {
                        error!(route = %route.name(), error = %e,
                               "TLS files not reloaded; the ones in use stay in use");
                        result = ReloadResult::Failure;
                    }
                }
                continue;
            }
            match (&running.route, route, &running.swap) {
                (Route::Stream(old), Route::Stream(r), Some(swap)) if old.listen == r.listen => {
                    swapped += 1;
                    let stats = Arc::clone(swap.borrow().stats());
                    let server = match StreamServer::with_stats(
                        r.clone(),
                        Arc::clone(&self.state.spill),
                        stats,
                    ) {
                        Ok(s) => Arc::new(s.with_global_limits(self.state.conn_limits.clone())),
                        Err(e) => {
                            error!(route = %r.name, error = %e,
                                   "route not changed: its TLS files cannot be loaded");
                            result = ReloadResult::Failure;
                            continue;
                        }
                    };
                    let old_server = swap.send_replace(server);
                    old_server.retire();
                    info!(route = %r.name, upstreams = %r.upstreams.join(","), "route settings changed; new connections use them");
                    if let Some(running) = self.running.get_mut(route.name()) {
                        running.route = route.clone();
                    }
                }
                (Route::Queue(_), Route::Queue(q), None)
                    if running.live.as_ref().is_some_and(
                        |l| matches!(&l.kind, LiveKind::Queue(s) if s.can_reconfigure(q)),
                    ) =>
                {
                    // Only tunables changed: apply them to the running route,
                    // whose connections and spool stay as they are.
                    let Some(LiveKind::Queue(server)) = running.live.as_ref().map(|l| &l.kind)
                    else {
                        continue;
                    };
                    let server = Arc::clone(server);
                    // (It may write the memory tier to disk: a blocking thread.)
                    let (sv, nq) = (Arc::clone(&server), q.clone());
                    let applied = tokio::task::spawn_blocking(move || sv.reconfigure(nq))
                        .await
                        .unwrap_or_else(|e| {
                            Err(spillway_spool::SpoolError::Config(format!(
                                "reconfigure task: {e}"
                            )))
                        });
                    match applied {
                        Ok(()) => {
                            swapped += 1;
                            info!(route = %q.name, memory = q.memory, max_disk = q.max_disk,
                                  fsync = ?q.fsync, segment_size = q.segment_size,
                                  "queue route settings changed in place");
                            if let Some(running) = self.running.get_mut(route.name()) {
                                running.route = route.clone();
                            }
                        }
                        Err(e) => {
                            error!(route = %q.name, error = %e, "queue route settings not changed");
                            result = ReloadResult::Failure;
                        }
                    }
                }
                _ => {
                    changed += 1;
                    info!(route = %route.name(), "route changed; draining the old one and starting the new one");
                    self.retire(route.name());
                    to_start.push(route.clone());
                }
            }
        }

        // 3. New routes start once nothing retiring holds what they need.
        for route in to_start {
            let mine = claims(&route);
            let waits: Vec<(CancellationToken, bool)> = self
                .retiring
                .iter()
                .filter(|r| claims(&r.route).iter().any(|c| mine.contains(c)))
                .map(|r| {
                    // A spool is free only when the old route finished.
                    let spool = matches!(r.route, Route::Queue(_));
                    (
                        if spool {
                            r.done.clone()
                        } else {
                            r.unbound.clone()
                        },
                        spool,
                    )
                })
                .collect();
            for (token, spool) in waits {
                self.state.pending.fetch_add(1, Ordering::Relaxed);
                if spool {
                    info!(route = %route.name(), "waiting for the old route to close its spool");
                }
                // Bounded: the old route's drain has its own timeout. Exits of
                // other routes are picked up by the main loop afterwards.
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = self.shutdown.cancelled() => {}
                }
                self.state.pending.fetch_sub(1, Ordering::Relaxed);
            }
            if self.shutdown.is_cancelled() {
                break;
            }
            let stop = self.shutdown.child_token();
            match start(&route, &stop, &self.state, self.drain).await {
                Ok(s) => {
                    self.state.down_lock().remove(route.name());
                    self.launch(route, stop, s, true);
                }
                Err(e) => {
                    error!(route = %route.name(), "{e:#}; the route is not running");
                    self.state.down_lock().insert(route.name().to_string());
                    result = ReloadResult::Failure;
                }
            }
        }
        info!(
            added,
            removed,
            changed,
            swapped,
            unchanged,
            result = result.as_str(),
            "configuration reloaded"
        );
        result
    }

    /// Stops a running route: it drains in the background.
    fn retire(&mut self, name: &str) {
        if let Some(r) = self.running.remove(name) {
            if let Some(live) = &r.live {
                live.set_draining();
            }
            r.stop.cancel();
            self.retiring.push(r);
        }
    }
}
