//! Running a set of routes until shutdown.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::accept::{bind, bind_with};
use crate::config::{Config, Route};
use crate::endpoint::Endpoint;
use crate::queue::QueueServer;
use crate::stream::spill::SpillBudget;
use crate::stream::StreamServer;

enum Ready {
    Stream(Arc<StreamServer>, TcpListener),
    Queue(Arc<QueueServer>, Option<TcpListener>, Option<TcpListener>),
}

async fn bind_endpoint(
    route: &str,
    e: &Endpoint,
    role: &str,
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

/// Opens every route (binds listeners, opens spools: all or nothing), then
/// serves until `shutdown` fires and every route has drained.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let budget = Arc::new(SpillBudget::new(config.global.max_spill_total));
    let mut ready = Vec::new();
    for route in &config.routes {
        match route {
            Route::Stream(r) => {
                let listener = bind(&r.listen).await.with_context(|| {
                    format!("route '{}': cannot listen on {}", r.name, r.listen)
                })?;
                let local = listener.local_addr()?;
                info!(route = %r.name, listen = %local, upstreams = ?r.upstreams, balance = %r.balance,
                      spill = r.spill.is_some(), tls = r.tls.is_some(),
                      upstream_tls = r.upstream_tls.is_some(), "stream route ready");
                let server = Arc::new(
                    StreamServer::new(r.clone(), Arc::clone(&budget))
                        .with_context(|| format!("route '{}': TLS", r.name))?,
                );
                ready.push(Ready::Stream(server, listener));
            }
            Route::Queue(q) => {
                let server = tokio::task::block_in_place(|| {
                    QueueServer::open(q.clone(), &shutdown, config.global.drain_timeout)
                })?;
                let source = bind_endpoint(&q.name, &q.from, "source").await?;
                let sink = bind_endpoint(&q.name, &q.to, "sink").await?;
                info!(route = %q.name, from = %q.from, to = %q.to, framing = %q.framing,
                      spool = %q.spool.display(), "queue route ready");
                ready.push(Ready::Queue(server, source, sink));
            }
        }
    }
    let drain = config.global.drain_timeout;
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    for r in ready {
        match r {
            Ready::Stream(server, listener) => {
                let token = shutdown.clone();
                tasks.spawn(async move {
                    server.serve(listener, token, drain).await;
                    Ok(())
                });
            }
            Ready::Queue(server, source, sink) => {
                tasks.spawn(server.serve(source, sink));
            }
        }
    }
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        let r = r.context("route task panicked").and_then(|r| r);
        if let Err(e) = r {
            // One failed route stops the process: a supervisor restarts it
            // and the spool is recovered from what reached the disk.
            shutdown.cancel();
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
