//! A real relay for the client's tests: the `spillway` binary as a child
//! process, on port 0, its addresses read from its `--ready-file`.
//!
//! The binary is not built by this crate (a test cannot depend on another
//! package's binary). It is, in order:
//! 1. `$SPILLWAY_BIN`, if set;
//! 2. `$CARGO_TARGET_DIR/debug/spillway`, if `CARGO_TARGET_DIR` is set;
//! 3. `spillway` beside this test's own `deps/` directory (the target
//!    directory this test was built in).
//!
//! Build it first: `cargo build -p spillway --bin spillway` (with the same
//! `CARGO_TARGET_DIR`). `cargo test --workspace` builds it along with
//! everything else. A missing binary fails the test, naming the paths
//! tried: a test that cannot run must not pass.
#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `spillway` binary (see the module documentation).
pub fn spillway_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let mut tried = Vec::new();
        if let Some(p) = std::env::var_os("SPILLWAY_BIN") {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "SPILLWAY_BIN is {}, which is not a file",
                p.display()
            );
            return p;
        }
        if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
            tried.push(PathBuf::from(dir).join("debug").join("spillway"));
        }
        // This test is target/debug/deps/relay-<hash>.
        if let Some(debug) = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        {
            tried.push(debug.join("spillway"));
        }
        tried
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "the spillway binary is not built: tried {tried:?}. Build it with \
                 `cargo build -p spillway --bin spillway` (same CARGO_TARGET_DIR), \
                 or point SPILLWAY_BIN at one"
                )
            })
    })
    .clone()
}

/// Awaits `f` for at most `limit`; panics naming `what` after that.
pub async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

/// How long a relay may take to start, to exit, or a metric to change.
pub const LIMIT: Duration = Duration::from_secs(20);

/// A relay with one queue route, `queue`, both sides speaking the ack
/// protocol; killed on drop.
pub struct Relay {
    child: Child,
    log: PathBuf,
    ready_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// Starts `spillway queue` on `spool` (ack producers and consumers,
    /// everything on 127.0.0.1:0) with `extra` arguments, and waits
    /// (bounded) until it serves.
    pub fn start(spool: &Path, extra: &[&str]) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("relay.log");
        let ready_file = dir.path().join("ready.json");
        let child = Command::new(spillway_bin())
            .arg("--ready-file")
            .arg(&ready_file)
            .args(["queue", "--from", "listen:127.0.0.1:0"])
            .args(["--to", "listen:127.0.0.1:0"])
            .args(["--from-protocol", "ack", "--to-protocol", "ack"])
            .args(["--admin", "127.0.0.1:0", "--spool"])
            .arg(spool)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", spillway_bin().display()));
        let mut relay = Relay {
            child,
            log,
            ready_file,
            _dir: dir,
        };
        let deadline = Instant::now() + LIMIT;
        while relay.ready().is_none() {
            if let Ok(Some(status)) = relay.child.try_wait() {
                panic!("spillway exited ({status}) at start:\n{}", relay.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "spillway not ready within {LIMIT:?}:\n{}",
                relay.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        relay
    }

    fn ready(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(&self.ready_file).ok()?;
        Some(serde_json::from_str(&text).expect("the ready file is JSON"))
    }

    fn addr(&self, pointer: &str) -> SocketAddr {
        let doc = self.ready().expect("ready");
        doc.pointer(pointer)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no {pointer} in the ready file: {doc}"))
            .parse()
            .expect("an address")
    }

    /// Where producers connect.
    pub fn source(&self) -> SocketAddr {
        self.addr("/routes/queue/source")
    }

    /// Where consumers connect.
    pub fn sink(&self) -> SocketAddr {
        self.addr("/routes/queue/sink")
    }

    pub fn admin(&self) -> SocketAddr {
        self.addr("/admin")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` ("TERM", "KILL") to the relay.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits (bounded, blocking) until the relay has exited.
    pub fn wait_exit(&mut self) {
        let deadline = Instant::now() + LIMIT;
        while self.child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "spillway did not exit within {LIMIT:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The sum of the samples of metric `name` (its exposed name) whose
    /// labels include `route="queue"` and every pair of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut s = TcpStream::connect(self.admin()).expect("admin endpoint");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: relay\r\n\r\n")
            .expect("scrape");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("scrape");
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
            if have.contains(&("route", "queue")) && labels.iter().all(|l| have.contains(l)) {
                *sum.get_or_insert(0.0) += value.parse::<f64>().expect("a sample value");
            }
        }
        sum
    }

    /// Waits (bounded) until metric `name` satisfies `cond`; returns it.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        cond: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + LIMIT;
        loop {
            let v = self.metric(name, labels);
            if let Some(v) = v.filter(|&v| cond(v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} is {v:?} after {LIMIT:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `spillway spool dump --dead SPOOL`: one JSON object per dead letter.
pub fn dump_dead(spool: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(spillway_bin())
        .args(["spool", "dump", "--dead"])
        .arg(spool)
        .output()
        .expect("run spillway spool dump --dead");
    assert!(
        out.status.success(),
        "spool dump --dead: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A TCP proxy to `upstream` that can stop passing the relay's answers
/// on ([`Muting::mute`]): what the client sends still reaches the relay,
/// what the relay sends back is read and dropped. When the relay's side
/// ends, the client's connection is closed.
pub struct Muting {
    pub addr: SocketAddr,
    muted: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Muting {
    pub async fn start(upstream: SocketAddr) -> Muting {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let muted = std::sync::Arc::new(AtomicBool::new(false));
        let m = muted.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(relay) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut rr, mut rw) = relay.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut rw).await;
                });
                let m = m.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 << 10];
                    loop {
                        match rr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) if !m.load(Ordering::SeqCst) => {
                                if cw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                    let _ = cw.shutdown().await;
                });
            }
        });
        Muting { addr, muted }
    }

    /// From now on, the relay's bytes are dropped.
    pub fn mute(&self) {
        self.muted.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
