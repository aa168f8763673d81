//! The admin endpoint (`--admin ADDR`, `[admin] listen`): plain HTTP/1.1.
//!
//! - `GET /metrics`: Prometheus / OpenMetrics text ([`metrics`]).
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when every configured route is serving and the
//!   process is not draining; 503 otherwise (load balancers stop sending).
//! - `GET /status`: JSON: routes, listeners, connections, queue depths,
//!   upstreams ([`status`]).
//!
//! It keeps answering while routes drain after SIGTERM (so `/readyz` says
//! 503 and `/metrics` shows the drain), and stops with the process. Admin
//! connections are few and short: their number and header read time are
//! bounded so a stuck scraper cannot pile them up.

pub mod metrics;
pub mod status;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::app::AppState;
use crate::logging::RateLimited;

/// Admin connections served at once; more wait in the accept queue.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// A client must send its request headers within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the admin endpoint on `listener` until the process exits.
pub async fn serve(listener: TcpListener, state: Arc<AppState>) {
    let mut registry = Registry::default();
    metrics::register(&mut registry, Arc::clone(&state));
    let registry = Arc::new(registry);
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let mut warn_limit = RateLimited::new(Duration::from_secs(10));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                if let Some(suppressed) = warn_limit.check() {
                    warn!(error = %e, suppressed, "admin accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let r = respond(&req, &state, &registry);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(peer = %peer, error = %e, "admin connection ended with an error");
            }
            drop(permit);
        });
    }
}

fn respond(
    req: &Request<Incoming>,
    state: &AppState,
    registry: &Registry,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::with_capacity(16 << 10);
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => with_type(StatusCode::OK, body, OPENMETRICS),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "metrics encoding failed\n",
                ),
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if state.ready() {
                text(StatusCode::OK, "ready\n")
            } else if state.draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: routes starting\n",
                )
            }
        }
        "/status" => with_type(
            StatusCode::OK,
            status::render(state).to_string() + "\n",
            "application/json",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /readyz or /status\n",
        ),
    }
}

fn text(code: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(code, body.to_string(), "text/plain; charset=utf-8")
}

fn with_type(code: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
