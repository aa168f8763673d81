//! The config file: TOML deserialized into raw structs (every key known,
//! every value spanned), then converted into validated domain types. Every
//! error names `file:line:col`.
//!
//! ```toml
//! [global]
//! max_spill_total = "4GiB"
//!
//! [[route]]
//! name = "web"
//! mode = "stream"
//! listen = "127.0.0.1:7000"
//! upstreams = ["127.0.0.1:8000", "127.0.0.1:8001"]
//! ```

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use spillway_net::balance::Balance;
use toml::Spanned;

use crate::units::{ByteSize, HumanDuration};

/// A config error with its position in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Defaults shared by the CLI and the config file, in one place.
pub mod defaults {
    use std::time::Duration;
    pub const BUFFER: u64 = 64 << 10;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const CONNECT_TRIES: u32 = 3;
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    pub const HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const MAX_SPILL_PER_CONNECTION: u64 = 1 << 30;
    pub const MAX_SPILL_TOTAL: u64 = 8 << 30;
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub global: Global,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// Bound on the bytes held in stream-mode spill files, all connections together.
    pub max_spill_total: u64,
    /// How long in-flight connections may finish after SIGTERM.
    pub drain_timeout: Duration,
    pub admin: Option<String>,
}

impl Default for Global {
    fn default() -> Self {
        Global {
            max_spill_total: defaults::MAX_SPILL_TOTAL,
            drain_timeout: defaults::DRAIN_TIMEOUT,
            admin: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Stream(StreamRoute),
}

impl Route {
    pub fn name(&self) -> &str {
        match self {
            Route::Stream(r) => &r.name,
        }
    }
}

/// A transparent L4 proxy route.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRoute {
    pub name: String,
    pub listen: String,
    pub upstreams: Vec<String>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// How many distinct upstreams one client connection may try.
    pub connect_tries: u32,
    /// Close a connection after this long with no byte moving either way.
    pub idle_timeout: Duration,
    /// Once one direction has ended, how long the other may still run.
    pub half_close_timeout: Duration,
    pub max_connections: usize,
    /// Per-direction in-memory buffer.
    pub buffer: usize,
    pub spill: Option<Spill>,
}

impl StreamRoute {
    /// A route with every knob at its default.
    pub fn new(name: impl Into<String>, listen: impl Into<String>, upstreams: Vec<String>) -> Self {
        StreamRoute {
            name: name.into(),
            listen: listen.into(),
            upstreams,
            balance: Balance::RoundRobin,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            connect_tries: defaults::CONNECT_TRIES,
            idle_timeout: defaults::IDLE_TIMEOUT,
            half_close_timeout: defaults::HALF_CLOSE_TIMEOUT,
            max_connections: defaults::MAX_CONNECTIONS,
            buffer: defaults::BUFFER as usize,
            spill: None,
        }
    }
}

/// Stream-mode overflow to per-connection temporary files.
#[derive(Debug, Clone, PartialEq)]
pub struct Spill {
    pub dir: PathBuf,
    pub max_per_connection: u64,
}

// ---------------------------------------------------------------- raw ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    global: Option<RawGlobal>,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    max_spill_total: Option<ByteSize>,
    drain_timeout: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
}

type S<T> = Option<Spanned<T>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: S<String>,
    mode: S<String>,
    // stream
    listen: S<String>,
    upstreams: S<Vec<String>>,
    balance: S<String>,
    connect_timeout: S<HumanDuration>,
    connect_tries: S<u32>,
    idle_timeout: S<HumanDuration>,
    half_close_timeout: S<HumanDuration>,
    max_connections: S<u64>,
    buffer: S<ByteSize>,
    spill_dir: S<String>,
    max_spill: S<ByteSize>,
}

// ----------------------------------------------------------- convert ---

struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, col) = line_col(self.text, span.start);
        ConfigError {
            path: self.path.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before
        .get(line_start..)
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: 0,
        col: 0,
        message: format!("cannot read config: {e}"),
    })?;
    parse(path, &text)
}

/// Validates config text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let src = Source { path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        src.error(span, e.message().trim().to_string())
    })?;
    let mut global = Global::default();
    if let Some(g) = raw.global {
        if let Some(v) = g.max_spill_total {
            global.max_spill_total = v.bytes();
        }
        if let Some(v) = g.drain_timeout {
            global.drain_timeout = v.0;
        }
    }
    global.admin = raw.admin.map(|a| a.listen);

    let mut routes: Vec<Route> = Vec::new();
    for spanned in raw.route {
        let span = spanned.span();
        let r = spanned.into_inner();
        let name = required(&src, &span, r.name.clone(), "name")?;
        if name.get_ref().is_empty() {
            return Err(src.error(name.span(), "route name must not be empty"));
        }
        if routes.iter().any(|x| x.name() == name.get_ref()) {
            return Err(src.error(
                name.span(),
                format!("duplicate route name '{}'", name.get_ref()),
            ));
        }
        let mode = required(&src, &span, r.mode.clone(), "mode")?;
        let route = match mode.get_ref().as_str() {
            "stream" => Route::Stream(stream_route(&src, &span, name.into_inner(), r)?),
            other => {
                return Err(src.error(
                    mode.span(),
                    format!("unknown mode '{other}': expected \"stream\" or \"queue\""),
                ))
            }
        };
        routes.push(route);
    }
    if routes.is_empty() {
        return Err(src.error(0..0, "no routes: add at least one [[route]] table"));
    }
    Ok(Config { global, routes })
}

fn required<T>(
    src: &Source<'_>,
    table: &Range<usize>,
    v: S<T>,
    key: &str,
) -> Result<Spanned<T>, ConfigError> {
    v.ok_or_else(|| {
        src.error(
            table.clone(),
            format!("route is missing required key '{key}'"),
        )
    })
}

fn host_port(src: &Source<'_>, v: &Spanned<String>, what: &str) -> Result<String, ConfigError> {
    check_host_port(v.get_ref())
        .map(|()| v.get_ref().clone())
        .map_err(|m| src.error(v.span(), format!("invalid {what}: {m}")))
}

/// `HOST:PORT` with a numeric port; IPv6 hosts in brackets.
pub fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' is not HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("'{s}' has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("'{s}' has an invalid port '{port}'"))?;
    Ok(())
}

fn stream_route(
    src: &Source<'_>,
    table: &Range<usize>,
    name: String,
    r: RawRoute,
) -> Result<StreamRoute, ConfigError> {
    let listen = required(src, table, r.listen, "listen")?;
    let listen = host_port(src, &listen, "listen address")?;
    let ups = required(src, table, r.upstreams, "upstreams")?;
    if ups.get_ref().is_empty() {
        return Err(src.error(ups.span(), "a stream route needs at least one upstream"));
    }
    let mut upstreams = Vec::new();
    for u in ups.get_ref() {
        check_host_port(u).map_err(|m| src.error(ups.span(), format!("invalid upstream: {m}")))?;
        upstreams.push(u.clone());
    }
    let mut route = StreamRoute::new(name, listen, upstreams);
    if let Some(b) = r.balance {
        route.balance = b
            .get_ref()
            .parse()
            .map_err(|m: String| src.error(b.span(), m))?;
    }
    if let Some(v) = r.connect_timeout {
        route.connect_timeout = nonzero_duration(src, &v, "connect_timeout")?;
    }
    if let Some(v) = r.connect_tries {
        if *v.get_ref() == 0 {
            return Err(src.error(v.span(), "connect_tries must be at least 1"));
        }
        route.connect_tries = *v.get_ref();
    }
    if let Some(v) = r.idle_timeout {
        route.idle_timeout = nonzero_duration(src, &v, "idle_timeout")?;
    }
    if let Some(v) = r.half_close_timeout {
        route.half_close_timeout = nonzero_duration(src, &v, "half_close_timeout")?;
    }
    if let Some(v) = r.max_connections {
        if *v.get_ref() == 0 {
            return Err(src.error(v.span(), "max_connections must be at least 1"));
        }
        route.max_connections = usize::try_from(*v.get_ref()).unwrap_or(usize::MAX);
    }
    if let Some(v) = r.buffer {
        let b = v.get_ref().bytes();
        if !(4096..=(64 << 20)).contains(&b) {
            return Err(src.error(v.span(), "buffer must be between 4KiB and 64MiB"));
        }
        route.buffer = b as usize;
    }
    match (r.spill_dir, r.max_spill) {
        (Some(dir), max) => {
            route.spill = Some(Spill {
                dir: PathBuf::from(dir.get_ref()),
                max_per_connection: max
                    .map(|m| m.get_ref().bytes())
                    .unwrap_or(defaults::MAX_SPILL_PER_CONNECTION),
            })
        }
        (None, Some(max)) => {
            return Err(src.error(max.span(), "max_spill needs spill_dir"));
        }
        (None, None) => {}
    }
    Ok(route)
}

fn nonzero_duration(
    src: &Source<'_>,
    v: &Spanned<HumanDuration>,
    key: &str,
) -> Result<Duration, ConfigError> {
    if v.get_ref().0.is_zero() {
        return Err(src.error(v.span(), format!("{key} must be greater than zero")));
    }
    Ok(v.get_ref().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("t.toml"), text)
    }

    #[test]
    fn minimal_stream_route() {
        let c = p(r#"
[[route]]
name = "web"
mode = "stream"
listen = "127.0.0.1:7000"
upstreams = ["127.0.0.1:8000", "localhost:8001"]
balance = "least-conn"
idle_timeout = "30s"
spill_dir = "/tmp"
max_spill = "1GiB"
"#)
        .expect("valid");
        let Route::Stream(r) = &c.routes[0];
        assert_eq!(r.balance, Balance::LeastConn);
        assert_eq!(r.idle_timeout, Duration::from_secs(30));
        assert_eq!(
            r.spill.as_ref().map(|s| s.max_per_connection),
            Some(1 << 30)
        );
        assert_eq!(r.buffer, 64 << 10);
    }

    #[test]
    fn errors_have_line_and_column() {
        let e = p("[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"x:1\"]\nbufer = \"1MiB\"\n")
            .expect_err("unknown key");
        assert_eq!((e.line, e.col), (6, 1), "{e}");
        assert!(e.message.contains("bufer"), "{e}");

        let e = p("[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"x:1\"]\nbuffer = \"12XB\"\n")
            .expect_err("bad size");
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("unknown unit"), "{e}");

        let e = p("[[route]]\nname = \"a\"\nmode = \"strem\"\n").expect_err("bad mode");
        assert_eq!((e.line, e.col), (3, 8), "{e}");

        let e = p("[[route]\n").expect_err("syntax");
        assert_eq!(e.line, 1, "{e}");
        assert!(e.to_string().starts_with("t.toml:1:"), "{e}");
    }

    #[test]
    fn semantic_errors() {
        let base = "[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\n";
        let e = p(&format!("{base}upstreams = []\n")).expect_err("no upstream");
        assert_eq!(e.line, 5);
        let e = p(&format!("{base}upstreams = [\"nohost\"]\n")).expect_err("no port");
        assert!(e.message.contains("HOST:PORT"));
        let e = p(&format!(
            "{base}upstreams = [\"a:1\"]\nmax_spill = \"1MiB\"\n"
        ))
        .expect_err("spill");
        assert!(e.message.contains("spill_dir"));
        let e = p("").expect_err("empty");
        assert!(e.message.contains("no routes"));
        let dup = format!(
            "{base}upstreams = [\"a:1\"]\n{}",
            base.replace("127.0.0.1:1", "127.0.0.1:2")
        );
        let e = p(&format!("{dup}upstreams = [\"a:1\"]\n")).expect_err("dup");
        assert!(e.message.contains("duplicate"), "{e}");
    }
}
