//! The admin endpoint (`--admin ADDR`, `[admin] listen`): plain HTTP/1.1.
//!
//! - `GET /metrics`: Prometheus / OpenMetrics text ([`crate::metrics`]).
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when every configured route is serving and the
//!   process is not draining; 503 otherwise (load balancers stop sending).
//! - `GET /status`: JSON: routes, listeners, connections, queue depths,
//!   upstreams ([`status`]).
//!
//! It keeps answering while routes drain after SIGTERM (so `/readyz` says
//! 503 and `/metrics` shows the drain), and stops with the process. What a
//! client can hold is bounded (see [`LIMITS`]), and the health probes have
//! a lane of their own, so a stuck or hostile scraper cannot blind them.
//! With `[admin] token_file`, `/metrics` and `/status` need
//! `Authorization: Bearer <token>`; the probes stay open.

mod guard;
mod page;
pub mod process;
pub mod status;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use serde_json::Value;
use spillway_net::limit::ConnLimits;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::logging::RateLimited;
use crate::state::AppState;

/// Limits of the admin endpoint. It must keep answering `/healthz` and
/// `/readyz` (an orchestrator restarts a relay whose liveness probe fails)
/// whatever a scraper or an attacker does on `/metrics` and `/status`, so
/// connections are sorted into two lanes by their first request line
/// (peeked, not read) before any limit applies:
/// - the **probe lane** (`GET`/`HEAD` of `/healthz` or `/readyz`): one
///   request per connection, tiny answers, short timeouts, its own slots;
/// - the **main lane** (everything else): bounded per client address and in
///   total, pipelined requests bounded per connection, and a connection
///   that stops reading its answers or sends nothing is closed.
pub const LIMITS: AdminLimits = AdminLimits {
    probe_slots: 256,
    main_slots: 64,
    main_per_ip: 8,
    first_line_timeout: Duration::from_secs(2),
    header_timeout: Duration::from_secs(5),
    stall_timeout: Duration::from_secs(5),
    idle_timeout: Duration::from_secs(15),
    max_requests: 100,
    max_lifetime: Duration::from_secs(120),
};

/// See [`LIMITS`].
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Probe-lane connections at once (over it: closed at once).
    pub probe_slots: usize,
    /// Main-lane connections at once, and per client address (over it: a
    /// `503` and close).
    pub main_slots: usize,
    pub main_per_ip: usize,
    /// Time to send the start of the request line.
    pub first_line_timeout: Duration,
    /// Time to send a request's headers.
    pub header_timeout: Duration,
    /// A read or write that makes no progress for this long ends the
    /// connection (a client that pipelines requests and never reads).
    pub stall_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Requests per main-lane connection; the last answer says
    /// `Connection: close`.
    pub max_requests: u32,
    /// Whatever it does, a connection lives at most this long.
    pub max_lifetime: Duration,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How the admin endpoint authenticates `/metrics` and `/status`.
#[derive(Clone, Default)]
pub struct Auth {
    /// The bearer token (from `[admin] token_file`); `None`: open.
    token: Option<Arc<[u8]>>,
}

impl Auth {
    pub fn open() -> Self {
        Auth::default()
    }

    pub fn bearer(token: &str) -> Self {
        Auth {
            token: Some(Arc::from(token.as_bytes())),
        }
    }

    pub fn is_open(&self) -> bool {
        self.token.is_none()
    }

    fn allows(&self, req: &Parts) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        // The scheme is case-insensitive (RFC 7235).
        let Some(given) = req
            .headers
            .get(hyper::header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
            .map(|v| &v[7..])
        else {
            return false;
        };
        constant_time_eq(given, token)
    }
}

/// Compares without an early exit, so the time taken does not tell how
/// many leading bytes of a guess were right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Which lane a connection's first request line puts it in.
fn is_probe(start: &[u8]) -> bool {
    [
        "GET /healthz",
        "GET /readyz",
        "HEAD /healthz",
        "HEAD /readyz",
    ]
    .iter()
    .any(|p| {
        start.starts_with(p.as_bytes()) && matches!(start.get(p.len()), Some(b' ' | b'?' | b'/'))
    })
}

/// Peeks (without consuming) until the start of the request line is in,
/// the client stops, or `limit` passes.
async fn peek_request_line(stream: &tokio::net::TcpStream, limit: Duration) -> Vec<u8> {
    // Long enough for "HEAD /healthz " and "GET /metrics ".
    const WANT: usize = 16;
    let mut buf = vec![0u8; WANT];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        // A short request ("GET / HTTP/1.0") can be whole below WANT bytes.
        let line_end = buf[..n].contains(&b'\n');
        if n == 0 || n >= WANT || line_end || tokio::time::Instant::now() >= deadline {
            buf.truncate(n);
            return buf;
        }
        // Part of the line is in: the rest is on its way (peek would
        // return at once again, so wait a little instead).
        tokio::time::sleep_until(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(10)),
        )
        .await;
    }
}

/// Serves the admin endpoint on `listener` until `shutdown` completes:
/// `/metrics` from `registry` (filled by the components), `/status` and
/// the probes from `state`. Connections in flight when it returns end on
/// their own limits.
pub async fn serve(
    listener: TcpListener,
    registry: crate::metrics::Registry,
    state: Arc<AppState>,
    auth: Auth,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, registry, state, auth, LIMITS, shutdown).await
}

/// [`serve`] with other limits (tests).
pub async fn serve_with(
    listener: TcpListener,
    registry: crate::metrics::Registry,
    state: Arc<AppState>,
    auth: Auth,
    limits: AdminLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut prometheus = Registry::default();
    prometheus.register_collector(Box::new(registry));
    let registry = Arc::new(prometheus);
    let mut shutdown = std::pin::pin!(shutdown);
    let probe_slots = Arc::new(Semaphore::new(limits.probe_slots));
    let main = Arc::new(ConnLimits::new(limits.main_slots, limits.main_per_ip));
    let mut warn_limit = RateLimited::new(Duration::from_secs(10));
    let shed_warn = Arc::new(std::sync::Mutex::new(RateLimited::new(
        Duration::from_secs(10),
    )));
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
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
        let probe_slots = Arc::clone(&probe_slots);
        let main = Arc::clone(&main);
        let auth = auth.clone();
        let shed_warn = Arc::clone(&shed_warn);
        tokio::spawn(async move {
            let stream = stream;
            let start = peek_request_line(&stream, limits.first_line_timeout).await;
            if start.is_empty() {
                return;
            }
            if is_probe(&start) {
                let Ok(_slot) = probe_slots.try_acquire_owned() else {
                    return;
                };
                serve_conn(stream, peer, state, registry, auth, limits, false).await;
                return;
            }
            match main.try_acquire(peer.ip()) {
                Ok(_permit) => serve_conn(stream, peer, state, registry, auth, limits, true).await,
                Err(kind) => {
                    let check = shed_warn.lock().unwrap_or_else(|e| e.into_inner()).check();
                    if let Some(suppressed) = check {
                        warn!(client = %peer, limit = %kind, suppressed,
                              "admin connection refused: too many at once");
                    }
                    // A short answer the socket takes at once, then a
                    // half-close; the request is read (briefly, bounded) so
                    // the close is not a reset that would destroy the answer.
                    let _ = stream.try_write(
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 22\r\n\
                          connection: close\r\n\r\ntoo many connections\r\n",
                    );
                    let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
                    let mut sink = [0u8; 4096];
                    let mut left = 64 << 10;
                    let until = tokio::time::Instant::now() + Duration::from_secs(1);
                    while left > 0 {
                        if tokio::time::timeout_at(until, stream.readable())
                            .await
                            .is_err()
                        {
                            break;
                        }
                        match stream.try_read(&mut sink) {
                            Ok(n) if n > 0 => left -= n.min(left),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            _ => break,
                        }
                    }
                }
            }
        });
    }
}

/// One admin connection: hyper over a stream that fails a read or write
/// stalled for `stall_timeout` (or idle for `idle_timeout`), with at most
/// `max_requests` requests (`keep_alive` false: one) and `max_lifetime`.
async fn serve_conn(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    state: Arc<AppState>,
    registry: Arc<Registry>,
    auth: Auth,
    limits: AdminLimits,
    keep_alive: bool,
) {
    let served = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let n = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let (parts, _body) = req.into_parts();
        let (state, registry, auth) = (Arc::clone(&state), Arc::clone(&registry), auth.clone());
        async move {
            // The answers built from every route (/metrics, /status, the
            // history) are built on a blocking thread, one at a time, so
            // that readers flooding them cannot take the workers that move
            // the relay's bytes: they wait for each other instead.
            let heavy = matches!(parts.uri.path(), "/metrics" | "/status" | "/status/history");
            let mut r = if heavy {
                let _one = render_slot().acquire().await;
                tokio::task::spawn_blocking(move || respond(&parts, &state, &registry, &auth))
                    .await
                    .unwrap_or_else(|_| {
                        text(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n")
                    })
            } else {
                respond(&parts, &state, &registry, &auth)
            };
            if !keep_alive || n >= limits.max_requests {
                r.headers_mut()
                    .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(r)
        }
    });
    let io = guard::Guarded::new(stream, limits.stall_timeout, limits.idle_timeout);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(keep_alive)
        .max_buf_size(64 << 10)
        .serve_connection(TokioIo::new(io), service);
    match tokio::time::timeout(limits.max_lifetime, conn).await {
        Ok(Err(e)) => debug!(peer = %peer, error = %e, "admin connection ended with an error"),
        Err(_) => debug!(peer = %peer, "admin connection reached its lifetime"),
        Ok(Ok(())) => {}
    }
}

/// One answer built from every route at a time (see `serve_conn`).
fn render_slot() -> &'static tokio::sync::Semaphore {
    static SLOT: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOT.get_or_init(|| tokio::sync::Semaphore::new(1))
}

fn respond(
    req: &Parts,
    state: &AppState,
    registry: &Registry,
    auth: &Auth,
) -> Response<Full<Bytes>> {
    if req.method != Method::GET && req.method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    let path = req.uri.path();
    if matches!(path, "/metrics" | "/status" | "/status/history") && !auth.allows(req) {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs Authorization: Bearer <token> ([admin] token_file)\n",
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"spillway\""),
        );
        return r;
    }
    match path {
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
            } else if let Some(route) = state.first_down() {
                with_type(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: route '{route}' is not running (see the log)\n"),
                    "text/plain; charset=utf-8",
                )
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
        "/status/history" => {
            let query = req.uri.query().unwrap_or("");
            let route = query_param(query, "route");
            let since = match query_param(query, "since").map(|s| s.parse::<u64>()) {
                None => 0,
                Some(Ok(t)) => t,
                Some(Err(_)) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "since must be unix seconds (an integer)\n",
                    )
                }
            };
            if let Some(r) = &route {
                if !state.routes().iter().any(|l| &l.name == r) {
                    return with_type(
                        StatusCode::NOT_FOUND,
                        format!("no route '{r}'\n"),
                        "text/plain; charset=utf-8",
                    );
                }
            }
            let closes_after = match query_param(query, "closes_after").map(|s| s.parse::<u64>()) {
                None => 0,
                Some(Ok(id)) => id,
                Some(Err(_)) => {
                    return text(StatusCode::BAD_REQUEST, "closes_after must be an integer\n")
                }
            };
            let mut doc = state.history().render(route.as_deref(), since);
            // Each route's connection closes after `closes_after`, with its
            // samples: the page asks for the new ones only.
            if let Some(routes) = doc["routes"].as_object_mut() {
                for r in state.routes() {
                    if let Some(Value::Object(cols)) = routes.get_mut(&r.name) {
                        cols.insert("closes".into(), status::closes_after(&r, closes_after));
                    }
                }
            }
            with_type(StatusCode::OK, doc.to_string() + "\n", "application/json")
        }
        // The page holds no data (it fetches /status and /status/history,
        // with the token when one is configured), so it is served to anyone.
        "/" => with_type(
            StatusCode::OK,
            page::PAGE.to_string(),
            "text/html; charset=utf-8",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /, /metrics, /healthz, /readyz, /status or /status/history\n",
        ),
    }
}

/// The value of `key` in a query string, percent-decoded (`+` is a space).
fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    async fn get_with(
        addr: std::net::SocketAddr,
        path: &str,
        header: &str,
    ) -> std::io::Result<String> {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\n{header}connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// The page holds no data and is served to anyone; its data, the
    /// history, needs the token like /status; bad queries get a clear 4xx.
    #[tokio::test]
    async fn the_page_is_open_and_its_data_behind_the_token() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(AppState::for_tests());
        let registry = crate::metrics::Registry::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            registry,
            state,
            Auth::bearer("s3cret"),
            async {
                let _ = stopped.await;
            },
        ));
        let page = get(addr, "/").await.expect("page");
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(
            page.contains("text/html") && page.contains("<script>"),
            "{page}"
        );
        for path in ["/status/history", "/status/history?route=x", "/status"] {
            let r = get(addr, path).await.expect("history");
            assert!(r.starts_with("HTTP/1.1 401"), "{path}: {r}");
        }
        let lower = get_with(addr, "/status/history", "authorization: bearer s3cret\r\n")
            .await
            .expect("history");
        assert!(
            lower.starts_with("HTTP/1.1 200"),
            "the scheme is case-insensitive: {lower}"
        );
        let auth = "authorization: Bearer s3cret\r\n";
        let r = get_with(addr, "/status/history", auth)
            .await
            .expect("history");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("\"samples_kept\":900"), "{r}");
        let r = get_with(addr, "/status/history?since=yesterday", auth)
            .await
            .expect("bad since");
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let r = get_with(addr, "/status/history?route=no%20such", auth)
            .await
            .expect("unknown route");
        assert!(
            r.starts_with("HTTP/1.1 404") && r.contains("no route 'no such'"),
            "{r}"
        );
        stop.send(()).expect("server still running");
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }

    #[test]
    fn query_parameters_are_percent_decoded() {
        assert_eq!(
            query_param("route=a%2Fb+c&since=5", "route").as_deref(),
            Some("a/b c")
        );
        assert_eq!(
            query_param("route=a%2Fb+c&since=5", "since").as_deref(),
            Some("5")
        );
        assert_eq!(query_param("route=%zz%", "route").as_deref(), Some("%zz%"));
        assert_eq!(query_param("", "route"), None);
    }

    /// CONVENTIONS 4: started on a bound `127.0.0.1:0` listener, it serves
    /// what the registry's sources write, and it stops when the shutdown
    /// future completes.
    #[tokio::test]
    async fn serves_the_registry_until_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(AppState::for_tests());
        let mut registry = crate::metrics::Registry::default();
        process::register(&mut registry, Arc::clone(&state));
        crate::stream::metrics::declare(&mut registry);
        crate::queue::metrics::declare(&mut registry);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, registry, state, Auth::open(), async {
            let _ = stopped.await;
        }));

        let body = get(addr, "/metrics").await.expect("scrape");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("spillway_build_info{version="), "{body}");
        // Families of a route kind with no live route keep their descriptor.
        assert!(
            body.contains("# TYPE spillway_frame_errors counter"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE spillway_connections counter"),
            "{body}"
        );

        stop.send(()).expect("server still running");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns on shutdown")
            .expect("serve did not panic");
        assert!(get(addr, "/healthz").await.is_err(), "listener closed");
    }
}
