//! A queue route run in-process over the simulated disk (for tests that
//! inject disk faults), with its listeners on ports the kernel chose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use spillway::config::QueueRoute;
use spillway::endpoint::Endpoint;
use spillway::queue::QueueServer;
use spillway_spool::sim::SimFs;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running route and what a test needs of it.
pub struct InProc {
    pub server: Arc<QueueServer>,
    pub serve: JoinHandle<anyhow::Result<()>>,
    pub source: SocketAddr,
    pub sink: SocketAddr,
    /// Cancelled: the route drains and stops.
    pub token: CancellationToken,
}

/// Opens a queue route on `fs` with its spool in `dir`, set up by `set`,
/// and serves it (drain timeout 5 s).
pub async fn start(
    dir: &std::path::Path,
    fs: Arc<SimFs>,
    set: impl FnOnce(&mut QueueRoute),
) -> InProc {
    let src = spillway::accept::bind_with("127.0.0.1:0", None)
        .await
        .expect("bind source");
    let sink = spillway::accept::bind_with("127.0.0.1:0", None)
        .await
        .expect("bind sink");
    let (source, sink_addr) = (
        src.local_addr().expect("source address"),
        sink.local_addr().expect("sink address"),
    );
    let mut route = QueueRoute::new(
        "q",
        Endpoint::Listen(source.to_string()),
        Endpoint::Listen(sink_addr.to_string()),
        dir.join("spool"),
    );
    set(&mut route);
    let token = CancellationToken::new();
    let server = QueueServer::open_on(
        route,
        &token,
        Duration::from_secs(5),
        Default::default(),
        fs,
    )
    .expect("open the route");
    let serve = tokio::spawn(Arc::clone(&server).serve(Some(src), Some(sink)));
    InProc {
        server,
        serve,
        source,
        sink: sink_addr,
        token,
    }
}
