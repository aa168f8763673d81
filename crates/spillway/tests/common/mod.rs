//! Helpers shared by the integration tests: a spillway child process with
//! its log captured and its bound addresses read from `--ready-file`, and
//! small socket utilities.
//!
//! No test picks a port for the relay: every address the relay listens on
//! is `127.0.0.1:0`, and the test reads the port the kernel chose from the
//! ready file ([`Relay::addr`], [`Relay::admin`]). A port chosen by binding
//! and releasing it could be taken by a test running in parallel before
//! the relay binds it.
#![allow(dead_code)]

pub mod fds;
pub mod inproc;
pub mod lines;
pub mod nats;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test: this build's, or `SPILLWAY_TEST_BIN` (to show
/// that a regression test fails on an older build). [`Relay`] passes
/// `--ready-file`, so that build must know the flag (680ad68 and later).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("SPILLWAY_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_spillway").to_string())
    })
}

/// An address where nothing listens, that stays so while the returned
/// socket lives: a connection to it is refused. The socket is bound (not
/// listening, and without `SO_REUSEADDR`), so no other test can take the
/// port in the meantime, as it could take a port that was merely released.
pub fn refused_addr() -> (socket2::Socket, SocketAddr) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind :0");
    let a = s
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet address");
    (s, a)
}

/// A spillway child process; killed on drop. Its stderr goes to a file the
/// test can read; it writes its bound addresses to a ready file
/// (`--ready-file`) in the same temporary directory.
pub struct Relay {
    pub child: Child,
    pub log: PathBuf,
    /// The `--ready-file` the relay was started with.
    pub ready_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// How long a test waits for the relay to be ready or to handle a reload.
const READY_LIMIT: Duration = Duration::from_secs(20);

impl Relay {
    /// Starts spillway with `args` (after `--ready-file`) and returns at
    /// once: for a relay that is expected to fail, or a test that waits
    /// for something else first. See [`Relay::start_ready`].
    pub fn start(args: &[&str]) -> Relay {
        Relay::start_with_env(args, &[])
    }

    /// Starts spillway with `args` and waits (bounded) until every route
    /// serves, as the ready file says; then [`Relay::addr`] and
    /// [`Relay::admin`] name the bound addresses.
    pub fn start_ready(args: &[&str]) -> Relay {
        Relay::start_ready_with_env(args, &[])
    }

    /// Like [`Relay::start_ready`], with extra environment variables.
    pub fn start_ready_with_env(args: &[&str], env: &[(&str, &str)]) -> Relay {
        let mut relay = Relay::start_with_env(args, env);
        relay.wait_ready();
        relay
    }

    /// Like [`Relay::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("relay.log");
        let ready_file = dir.path().join("ready.json");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin())
            .arg("--ready-file")
            .arg(&ready_file)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn spillway");
        Relay {
            child,
            log,
            ready_file,
            _dir: dir,
        }
    }

    /// The ready file's content, if it has been written (it is replaced
    /// atomically, so it is never seen half-written).
    pub fn ready_doc(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(&self.ready_file).ok()?;
        Some(serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("ready file is not JSON ({e}): {text}");
        }))
    }

    /// Waits (bounded) until the ready file shows a document `done` accepts;
    /// panics with the log if the relay exits first.
    fn wait_doc(&mut self, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Some(doc) = self.ready_doc() {
                if done(&doc) {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "spillway exited ({status}) before {what}:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "spillway not {what} within {READY_LIMIT:?}; ready file: {:?}\n{}",
                    self.ready_doc(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until every route serves (the ready file exists).
    pub fn wait_ready(&mut self) {
        self.wait_doc("ready", |_| true);
    }

    /// Waits (bounded) until the relay has handled at least `n` reloads
    /// (applied or rejected), as the ready file counts them.
    pub fn wait_reloads(&mut self, n: u64) {
        self.wait_doc(&format!("done with reload {n}"), |doc| {
            doc["reloads"].as_u64().expect("reloads") >= n
        });
    }

    /// The address route `route` listens on for `role` ("client" for a
    /// stream route, "source" or "sink" for a queue route), from the ready
    /// file as it is now.
    pub fn addr(&self, route: &str, role: &str) -> SocketAddr {
        let doc = self.ready_doc().expect("the relay is not ready yet");
        let a = doc["routes"][route][role].as_str().unwrap_or_else(|| {
            panic!("route {route:?} has no {role:?} listener in the ready file: {doc}")
        });
        a.parse().expect("listener address")
    }

    /// The address the admin endpoint listens on, from the ready file.
    pub fn admin(&self) -> SocketAddr {
        let doc = self.ready_doc().expect("the relay is not ready yet");
        let a = doc["admin"]
            .as_str()
            .unwrap_or_else(|| panic!("no admin endpoint in the ready file: {doc}"));
        a.parse().expect("admin address")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            if Instant::now() > deadline {
                panic!("log never contained {needle:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident set size of the child, from /proc.
    pub fn vm_hwm_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits (bounded) for the child to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                panic!(
                    "spillway did not exit within {limit:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("status field")
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a, enough to compare 200 MiB without holding it twice.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf29ce484222325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).expect("read_to_end");
    v
}

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("spillway.toml");
    let mut f = std::fs::File::create(&p).expect("config");
    f.write_all(text.as_bytes()).expect("write config");
    p
}

// ------------------------------------------------ queue-mode helpers ---

impl Relay {
    /// Waits (bounded by `limit`) until at least `count` log lines contain
    /// `needle`; returns those lines.
    pub fn wait_log_lines(&self, needle: &str, count: usize, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.log_text();
            let hits: Vec<String> = text
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_string)
                .collect();
            if hits.len() >= count {
                return hits;
            }
            if Instant::now() > deadline {
                panic!(
                    "log had {} of {count} lines containing {needle:?} after {limit:?}:\n{text}",
                    hits.len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The value of `key=` in a line of space-separated `key=value` fields
/// (tracing's format and the test peers' summaries); quotes are stripped.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .map(|v| v.trim_matches('"'))
}

/// Serializes CPU-heavy end-to-end tests within one test binary: on a
/// 2-core machine, several relays plus their peers at once can starve a
/// relay long enough for a deliberately fragile producer (one that gives up
/// on the first EAGAIN) to give up, which would test the machine, not the
/// relay.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

// ------------------------------------------------------ admin helpers ---

/// `GET path` on the admin endpoint: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: spillway\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let text = String::from_utf8(read_to_end(&mut s)).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

/// The sum of the samples named `name` (as exposed: a counter's name ends
/// in `_total`) whose labels include every pair of `labels`, in an
/// OpenMetrics text exposition; `None` when no sample matches.
pub fn metric_in(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            continue;
        }
        let have: Vec<(&str, &str)> = rest
            .trim_end_matches('}')
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if labels.iter().all(|l| have.contains(l)) {
            let v: f64 = value.parse().expect("sample value");
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// [`metric_in`] on a scrape of the admin endpoint at `admin`.
pub fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (code, body) = http_get(admin, "/metrics");
    assert_eq!(code, 200, "{body}");
    metric_in(&body, name, labels)
}

impl Relay {
    /// Waits (bounded) until the metric `name` with `labels` (summed, see
    /// [`metric_in`]) satisfies `cond`, scraping the relay's admin
    /// endpoint; returns the value. Panics with the log if the relay exits.
    pub fn wait_metric(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        cond: impl Fn(f64) -> bool,
    ) -> f64 {
        let admin = self.admin();
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("spillway exited ({status}):\n{}", self.log_text());
            }
            let last = metric(admin, name, labels);
            if let Some(v) = last.filter(|v| cond(*v)) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name}{labels:?} is {last:?} after {READY_LIMIT:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An upstream that sends `id` then echoes everything back, one thread per
/// connection, until the test ends.
pub fn tagged_echo(id: &'static str) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let a = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                if !id.is_empty() && s.write_all(id.as_bytes()).is_err() {
                    return;
                }
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = s.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    a
}
