//! Running a set of routes until shutdown.

use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::accept::bind;
use crate::config::{Config, Route};
use crate::stream::spill::SpillBudget;
use crate::stream::StreamServer;

/// Binds every route's listener (all or nothing), then serves until
/// `shutdown` fires and every route has drained.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let budget = Arc::new(SpillBudget::new(config.global.max_spill_total));
    let mut bound = Vec::new();
    for route in &config.routes {
        match route {
            Route::Stream(r) => {
                let listener = bind(&r.listen).await.with_context(|| {
                    format!("route '{}': cannot listen on {}", r.name, r.listen)
                })?;
                let local = listener.local_addr()?;
                info!(route = %r.name, listen = %local, upstreams = ?r.upstreams, balance = %r.balance,
                      spill = r.spill.is_some(), "stream route ready");
                bound.push((r.clone(), listener));
            }
        }
    }
    let mut tasks = JoinSet::new();
    for (route, listener) in bound {
        let server = Arc::new(StreamServer::new(route, Arc::clone(&budget)));
        tasks.spawn(server.serve(listener, shutdown.clone(), config.global.drain_timeout));
    }
    while let Some(r) = tasks.join_next().await {
        r.context("route task failed")?;
    }
    Ok(())
}
