//! Queue mode end to end, with real processes on 127.0.0.1: the `spillway`
//! binary between the C peers of `tests/peers/` (a fragile non-blocking
//! producer that gives up on EAGAIN, a slow consumer that leaves and comes
//! back) or small blocking Rust peers written below. No timing asserts: every
//! wait is bounded, and every assertion is about what arrived.
//!
//! The peers are compiled once per test binary with `cc` (see `peers()`).
//! Seeds: the kill/restart test draws its kill points from
//! `SPILLWAY_TEST_SEED` (or the clock) and prints the seed it used.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

// ----------------------------------------------------------------- peers ---

struct PeerBins {
    producer: PathBuf,
    consumer: PathBuf,
}

/// Compiles `tests/peers/*.c` once per test binary. Each binary is built
/// under a per-process name and renamed into place, so concurrent test runs
/// never execute a half-written file.
fn peers() -> &'static PeerBins {
    static BINS: OnceLock<PeerBins> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("queue-peers");
        std::fs::create_dir_all(&dir).expect("peer dir");
        let compile = |name: &str| -> PathBuf {
            let src = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/peers")
                .join(format!("{name}.c"));
            let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
            let out = Command::new("cc")
                .args(["-O2", "-Wall", "-o"])
                .arg(&tmp)
                .arg(&src)
                .output()
                .expect("run cc (gcc is needed for the queue tests)");
            assert!(
                out.status.success(),
                "cc {} failed:\n{}",
                src.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let bin = dir.join(name);
            std::fs::rename(&tmp, &bin).expect("rename peer binary");
            bin
        };
        PeerBins {
            producer: compile("producer"),
            consumer: compile("consumer"),
        }
    })
}

/// A peer child process whose stdout lines are collected (and streamed to
/// the test through a channel) and whose stderr is collected; killed on drop.
struct Peer {
    name: String,
    child: Child,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

struct Finished {
    code: Option<i32>,
    /// The last stdout line (the peers' summary).
    summary: String,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn get(&self, key: &str) -> u64 {
        field(&self.summary, key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric {key}= in {:?}", self.summary))
    }
    fn str(&self, key: &str) -> &str {
        field(&self.summary, key).unwrap_or("")
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Peer {
    fn spawn(name: &str, bin: &Path, args: &[String]) -> Peer {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = channel();
        let out_pipe = child.stdout.take().expect("stdout piped");
        let err_pipe = child.stderr.take().expect("stderr piped");
        let out_buf = Arc::clone(&stdout);
        let err_buf = Arc::clone(&stderr);
        let readers = vec![
            std::thread::spawn(move || {
                for line in BufReader::new(out_pipe).lines().map_while(Result::ok) {
                    out_buf.lock().expect("lock").push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            }),
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = BufReader::new(err_pipe).read_to_string(&mut s);
                err_buf.lock().expect("lock").push_str(&s);
            }),
        ];
        Peer {
            name: name.to_string(),
            child,
            lines,
            stdout,
            stderr,
            readers,
        }
    }

    fn producer(args: &[String]) -> Peer {
        Peer::spawn("producer", &peers().producer, args)
    }

    fn consumer(args: &[String]) -> Peer {
        Peer::spawn("consumer", &peers().consumer, args)
    }

    /// The next stdout line starting with `prefix` (bounded).
    fn wait_line(&self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "{} printed no line starting with {prefix:?}:\n{}{}",
                    self.name,
                    self.stdout.lock().expect("lock"),
                    self.stderr.lock().expect("lock")
                ),
            }
        }
    }

    /// For a peer started with `--listen 0`: the port it listens on.
    fn listening_port(&self) -> u16 {
        let l = self.wait_line("listening port=", Duration::from_secs(10));
        field(&l, "port")
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    /// Waits (bounded) for the exit; panics, after killing it, on timeout.
    fn finish(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let code = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                panic!(
                    "{} did not exit within {limit:?}:\n{}{}",
                    self.name,
                    self.stdout.lock().expect("lock"),
                    self.stderr.lock().expect("lock")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let stdout = self.stdout.lock().expect("lock").clone();
        let stderr = self.stderr.lock().expect("lock").clone();
        let summary = stdout
            .lines()
            .rfind(|l| !l.starts_with("progress ") && !l.starts_with("listening "))
            .unwrap_or("")
            .to_string();
        Finished {
            code,
            summary,
            stdout,
            stderr,
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

// ------------------------------------------------------------- the relay ---

/// `spillway queue` with the given endpoints and spool plus extra flags.
fn queue_args(from: &str, to: &str, spool: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = s(&["queue", "--from", from, "--to", to, "--spool"]);
    a.push(spool.display().to_string());
    a.extend(extra.iter().map(|e| e.to_string()));
    a
}

/// Starts the relay and waits until it serves.
fn start_relay(args: &[String]) -> Relay {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Relay::start_ready(&refs)
}

/// A relay with `--from listen:` and `--to listen:` on ports it chose,
/// started and serving. Returns (relay, producer address, consumer address,
/// the arguments that start it again on the same two addresses).
///
/// Restarting on the same addresses re-binds ports this relay had (the C
/// consumer reconnects to the address it was given, across restarts): in
/// the moment between the old relay's exit and the new one's bind, another
/// process could take them. It is the only way to restart "the same" relay
/// under a peer that knows one address; the tests that do it say so.
fn listen_listen(spool: &Path, extra: &[&str]) -> (Relay, SocketAddr, SocketAddr, Vec<String>) {
    let args = queue_args("listen:127.0.0.1:0", "listen:127.0.0.1:0", spool, extra);
    let relay = start_relay(&args);
    let (pp, cp) = (relay.addr("queue", "source"), relay.addr("queue", "sink"));
    let again = queue_args(
        &format!("listen:{pp}"),
        &format!("listen:{cp}"),
        spool,
        extra,
    );
    (relay, pp, cp, again)
}

/// Waits until the relay logged `producer closed` for `producers`
/// connections and returns the sum of their `messages=`.
fn appended(relay: &Relay, producers: usize, limit: Duration) -> u64 {
    relay
        .wait_log_lines("producer closed", producers, limit)
        .iter()
        .map(|l| {
            field(l, "messages")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

// ------------------------------------------------------- Rust-side peers ---

/// The bytes of line `n` as producer.c formats it (`--prefix`, `--size`).
/// Fills the queue: a blocking producer sends `fmt` (`n` lines) to the
/// source port `pp`; returns (the producer's report) once the relay logged
/// all of them appended.
fn fill(relay: &Relay, pp: SocketAddr, fmt: &[String], n: u64) -> Finished {
    let mut pargs = s(&[
        "--connect",
        &pp.to_string(),
        "--on-eagain",
        "block",
        "--timeout",
        "60",
    ]);
    pargs.extend(fmt.iter().cloned());
    let p = Peer::producer(&pargs).finish(Duration::from_secs(70));
    assert_eq!(p.code, Some(0), "{p}");
    assert_eq!(appended(relay, 1, Duration::from_secs(30)), n);
    p
}

/// A slow consumer of the sink port `cp` that leaves and comes back now
/// and then, and prints a progress line every 1000 messages.
fn progress_consumer(cp: SocketAddr, fmt: Vec<String>, extra: &[&str]) -> Peer {
    let mut cargs = s(&["--connect", &cp.to_string()]);
    cargs.extend(s(extra));
    cargs.extend(s(&[
        "--progress",
        "1000",
        "--read",
        "300:10240",
        "--sleep-us",
        "500:2000",
        "--leave",
        "1000000:4000000",
        "--timeout",
        "100",
    ]));
    cargs.extend(fmt);
    Peer::consumer(&cargs)
}

fn format_line(prefix: &str, n: u64, size: usize) -> Vec<u8> {
    let mut l = format!("{prefix}{n}").into_bytes();
    if size == 0 {
        l.push(b'\n');
        return l;
    }
    l.push(b' ');
    let len = size.max(l.len() + 2);
    while l.len() < len - 1 {
        l.push(b'a' + ((n as usize + l.len()) % 26) as u8);
    }
    l.push(b'\n');
    l
}

/// Connects to the relay's consumer port, reads until `want` complete lines
/// arrived, then leaves gracefully (half-close, read to EOF) and returns
/// every byte received.
fn consume_lines(relay: &Relay, addr: SocketAddr, want: usize, limit: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect consumer");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 64 << 10];
    let mut lines = 0;
    while lines < want {
        assert!(
            Instant::now() < deadline,
            "only {lines} of {want} lines within {limit:?}: ...{:?}\nrelay log:\n{}",
            String::from_utf8_lossy(&got[got.len().saturating_sub(300)..]),
            relay.log_text()
        );
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "relay closed the consumer early after {lines} lines: ...{:?}\nrelay log:\n{}",
                String::from_utf8_lossy(&got[got.len().saturating_sub(300)..]),
                relay.log_text()
            ),
            Ok(n) => {
                lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
                got.extend_from_slice(&buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("consumer read: {e}"),
        }
    }
    // The clean cut: whatever is still in flight is finished, then EOF.
    s.shutdown(Shutdown::Write).expect("half-close");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.read_to_end(&mut got)
        .expect("read to EOF after half-close");
    got
}

// ----------------------------------------------------------------- tests ---

/// The scenario, shared by producer and consumer: a million
/// numbered lines, padded to 24 bytes (24 MB) so that the consumer's
/// sessions are long enough to leave and return many times.
const SCENARIO: [&str; 4] = ["--count", "1000000", "--size", "24"];
/// Lines per second of the fragile producer (4.8 MB/s): more than twice what
/// the slow consumer reads, modest enough that a debug build of the relay
/// reads it at line rate on a busy two-core machine. (At 300000, two copies
/// of this test binary run at once made the producer give up once: a relay
/// starved of CPU for longer than the socket buffers last.)
const RATE: &str = "200000";
/// The slow consumer: 300 B .. 10 KiB per read, 1 .. 4 ms between reads
/// (about 2 MB/s), with a 64 KiB receive buffer (consumer.c's default).
const SLOW_READ: [&str; 4] = ["--read", "300:10240", "--sleep-us", "1000:4000"];

#[test]
fn producer_gives_up_without_spillway() {
    let _serial = heavy();
    let mut pargs = s(&SCENARIO);
    pargs.extend(s(&["--listen", "0", "--rate", RATE, "--timeout", "60"]));
    let producer = Peer::producer(&pargs);
    let port = producer.listening_port();
    let mut cargs = s(&SCENARIO);
    cargs.extend(s(&[
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--no-reconnect",
        "--timeout",
        "60",
    ]));
    cargs.extend(s(&SLOW_READ));
    let consumer = Peer::consumer(&cargs);
    let p = producer.finish(Duration::from_secs(70));
    let c = consumer.finish(Duration::from_secs(70));
    eprintln!("producer: {}\nconsumer: {}", p.summary, c.summary);
    assert_eq!(p.code, Some(3), "the producer must give up on EAGAIN:\n{p}");
    assert!(p.get("gave_up_at") < 1_000_000, "{p}");
    assert_ne!(c.code, Some(0), "the consumer cannot have everything:\n{c}");
    assert!(c.get("unique") < 1_000_000, "{c}");
}

#[test]
fn slow_consumer_gets_every_line_once_in_order() {
    let _serial = heavy();
    let spool = tempfile::tempdir().expect("spool");
    let mut pargs = s(&SCENARIO);
    pargs.extend(s(&["--listen", "0", "--rate", RATE, "--timeout", "90"]));
    let producer = Peer::producer(&pargs);
    let pport = producer.listening_port();
    let args = queue_args(
        &format!("connect:127.0.0.1:{pport}"),
        "listen:127.0.0.1:0",
        spool.path(),
        &["--framing", "lines", "--memory", "1MiB"],
    );
    let relay = start_relay(&args);
    let cport = relay.addr("queue", "sink");
    // 24 MB in all. A session delivers its quota plus whatever the relay
    // had already written into its socket when the consumer half-closed (the
    // kernel's send buffer, which autotunes to MBs), so the quota is small.
    let mut cargs = s(&SCENARIO);
    cargs.extend(s(&[
        "--connect",
        &cport.to_string(),
        "--leave",
        "50000:250000",
        "--away-ms",
        "10:300",
        "--timeout",
        "100",
    ]));
    cargs.extend(s(&SLOW_READ));
    let consumer = Peer::consumer(&cargs);

    let p = producer.finish(Duration::from_secs(100));
    eprintln!("producer: {}", p.summary);
    assert_eq!(
        p.code,
        Some(0),
        "the producer must not see a stalled send buffer:\n{p}\nrelay log:\n{}",
        relay.log_text()
    );
    assert_eq!(p.get("sent"), 1_000_000, "{p}");
    assert_eq!(appended(&relay, 1, Duration::from_secs(20)), 1_000_000);

    let c = consumer.finish(Duration::from_secs(110));
    eprintln!("consumer: {}", c.summary);
    assert_eq!(
        c.code,
        Some(0),
        "consumer:\n{c}\nrelay log:\n{}",
        relay.log_text()
    );
    assert_eq!(c.get("unique"), 1_000_000);
    assert_eq!(
        (
            c.get("dups"),
            c.get("gaps"),
            c.get("reordered"),
            c.get("torn")
        ),
        (0, 0, 0, 0),
        "{c}"
    );
    assert!(
        c.get("sessions") >= 5,
        "the consumer must leave and return many times: {c}"
    );
    assert_eq!(
        c.str("fnv"),
        p.str("fnv"),
        "byte stream differs from what was sent"
    );
}

#[test]
fn len_u32be_random_sizes_checksum() {
    let _serial = heavy();
    // 300 frames, log-uniform sizes up to 1 MiB with every 50th at exactly
    // 1 MiB (framing included): about 26 MB. The producer blocks (poll) on a
    // full send buffer: a 1 MiB message cannot be written into a 64 KiB send
    // buffer without waiting, whatever the reader; the give-up behaviour is
    // what the line tests cover.
    // This one has the other endpoint kinds: the consumer is a server that
    // the relay dials (--to connect:), and redials after each session.
    let fmt = s(&[
        "--framing",
        "len32",
        "--count",
        "300",
        "--seed",
        "4242",
        "--max-size",
        "1048576",
    ]);
    let mut cargs = s(&[
        "--listen",
        "0",
        "--read",
        "300:65536",
        "--sleep-us",
        "200:1000",
        "--leave",
        "2000000:6000000",
        "--away-ms",
        "10:100",
        "--timeout",
        "90",
    ]);
    cargs.extend(fmt.clone());
    let consumer = Peer::consumer(&cargs);
    let cp = consumer.listening_port();
    let spool = tempfile::tempdir().expect("spool");
    let relay = start_relay(&queue_args(
        "listen:127.0.0.1:0",
        &format!("connect:127.0.0.1:{cp}"),
        spool.path(),
        &[
            "--framing",
            "len:u32be",
            "--max-message",
            "1MiB",
            "--memory",
            "4MiB",
        ],
    ));
    let pp = relay.addr("queue", "source");
    let fmt = s(&[
        "--framing",
        "len32",
        "--count",
        "300",
        "--seed",
        "4242",
        "--max-size",
        "1048576",
    ]);
    let mut pargs = s(&[
        "--connect",
        &pp.to_string(),
        "--on-eagain",
        "block",
        "--timeout",
        "90",
    ]);
    pargs.extend(fmt);
    let producer = Peer::producer(&pargs);
    let p = producer.finish(Duration::from_secs(100));
    assert_eq!(p.code, Some(0), "{p}");
    assert_eq!(appended(&relay, 1, Duration::from_secs(20)), 300);
    let c = consumer.finish(Duration::from_secs(100));
    eprintln!("producer: {}\nconsumer: {}", p.summary, c.summary);
    assert_eq!(
        c.code,
        Some(0),
        "consumer:\n{c}\nrelay log:\n{}",
        relay.log_text()
    );
    assert_eq!(c.get("unique"), 300);
    assert_eq!(
        c.str("fnv"),
        p.str("fnv"),
        "checksum of the delivered frames"
    );
    assert_eq!(c.get("bytes"), p.get("bytes"), "no duplicate bytes either");
}

#[test]
fn kill_minus_9_repeatedly_loses_nothing_durable() {
    let _serial = heavy();
    const N: u64 = 200_000;
    let seed = std::env::var("SPILLWAY_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("kill points seed: SPILLWAY_TEST_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let spool = tempfile::tempdir().expect("spool");
    let (mut relay, pp, cp, args) = listen_listen(
        spool.path(),
        &["--framing", "lines", "--memory", "0", "--fsync", "always"],
    );
    let fmt = s(&["--count", &N.to_string(), "--size", "64"]);
    // Under --fsync always, "producer closed" means all of it is durable.
    fill(&relay, pp, &fmt, N);
    let consumer = progress_consumer(cp, fmt, &["--crash-ok"]);
    // Five kill points, at least 8% of N apart, between 5% and 90% of N.
    let mut points: Vec<u64> = Vec::new();
    while points.len() < 5 {
        let x = rng.u64(N / 20..N * 9 / 10);
        if points.iter().all(|&q| q.abs_diff(x) >= N * 8 / 100) {
            points.push(x);
        }
    }
    points.sort_unstable();
    eprintln!("kill -9 when the consumer has {points:?} distinct lines");
    let mut kills = 0;
    for &at in &points {
        loop {
            let l = consumer.wait_line("progress ", Duration::from_secs(60));
            if field(&l, "unique")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                >= at
            {
                break;
            }
        }
        relay.signal("KILL");
        relay.wait_exit(Duration::from_secs(10));
        kills += 1;
        // The consumer reconnects to `cp`: the new relay re-binds it.
        relay = start_relay(&args);
    }
    let c = consumer.finish(Duration::from_secs(110));
    eprintln!("consumer after {kills} kills: {}", c.summary);
    assert_eq!(kills, 5);
    assert_eq!(
        c.code,
        Some(0),
        "consumer:\n{c}\nlast relay log:\n{}",
        relay.log_text()
    );
    assert_eq!(c.get("unique"), N);
    assert_eq!(
        (c.get("gaps"), c.get("reordered"), c.get("bad")),
        (0, 0, 0),
        "{c}"
    );
    eprintln!(
        "duplicates after {kills} kills: {} (torn session tails: {})",
        c.get("dups"),
        c.get("torn")
    );
    relay.signal("TERM");
    assert_eq!(
        relay.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        relay.log_text()
    );
}

#[test]
fn sigterm_then_restart_resumes_exactly() {
    let _serial = heavy();
    const N: u64 = 200_000;
    let spool = tempfile::tempdir().expect("spool");
    let extra = ["--framing", "lines", "--memory", "1MiB"];
    let (mut relay, pp, cp, args) = listen_listen(spool.path(), &extra);
    let fmt = s(&["--count", &N.to_string(), "--size", "64"]);
    let p = fill(&relay, pp, &fmt, N);
    // The consumer is connected and reading when each SIGTERM comes.
    let consumer = progress_consumer(cp, fmt, &[]);
    for at in [N / 3, 2 * N / 3] {
        loop {
            let l = consumer.wait_line("progress ", Duration::from_secs(60));
            if field(&l, "unique")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                >= at
            {
                break;
            }
        }
        relay.signal("TERM");
        assert_eq!(
            relay.wait_exit(Duration::from_secs(40)),
            Some(0),
            "SIGTERM must exit 0:\n{}",
            relay.log_text()
        );
        // The consumer reconnects to `cp`: the new relay re-binds it.
        relay = start_relay(&args);
    }
    let c = consumer.finish(Duration::from_secs(110));
    eprintln!("consumer: {}", c.summary);
    assert_eq!(
        c.code,
        Some(0),
        "consumer:\n{c}\nlast relay log:\n{}",
        relay.log_text()
    );
    assert_eq!(c.get("unique"), N);
    assert_eq!(
        (
            c.get("dups"),
            c.get("torn"),
            c.get("gaps"),
            c.get("reordered")
        ),
        (0, 0, 0, 0),
        "{c}"
    );
    assert_eq!(c.str("fnv"), p.str("fnv"));
}

#[test]
fn several_producers_interleave_at_message_boundaries() {
    let _serial = heavy();
    const PRODUCERS: u64 = 4;
    const N: u64 = 50_000;
    const SIZE: usize = 40;
    let spool = tempfile::tempdir().expect("spool");
    let (relay, pp, cp, _) =
        listen_listen(spool.path(), &["--framing", "lines", "--memory", "1MiB"]);
    let producers: Vec<Peer> = (0..PRODUCERS)
        .map(|k| {
            Peer::producer(&s(&[
                "--connect",
                &pp.to_string(),
                "--count",
                &N.to_string(),
                "--size",
                &SIZE.to_string(),
                "--prefix",
                &format!("p{k}-"),
                "--on-eagain",
                "block",
                "--timeout",
                "60",
            ]))
        })
        .collect();
    let got = consume_lines(
        &relay,
        cp,
        (PRODUCERS * N) as usize,
        Duration::from_secs(90),
    );
    for p in producers {
        let f = p.finish(Duration::from_secs(30));
        assert_eq!(f.code, Some(0), "{f}");
    }
    assert_eq!(
        appended(&relay, PRODUCERS as usize, Duration::from_secs(20)),
        PRODUCERS * N
    );
    let mut next = [0u64; PRODUCERS as usize];
    for (i, line) in got.split_inclusive(|&b| b == b'\n').enumerate() {
        let text = String::from_utf8_lossy(line);
        let parsed = text
            .strip_prefix('p')
            .and_then(|r| r.split_once('-'))
            .and_then(|(k, r)| {
                let n = r.split(|c: char| !c.is_ascii_digit()).next()?;
                Some((k.parse::<usize>().ok()?, n.parse::<u64>().ok()?))
            });
        let Some((k, n)) = parsed.filter(|&(k, _)| k < PRODUCERS as usize) else {
            panic!("line {i} is not a whole producer line: {text:?}");
        };
        assert_eq!(
            line,
            format_line(&format!("p{k}-"), n, SIZE),
            "line {i} is cut or mixed: {text:?}"
        );
        assert_eq!(
            n, next[k],
            "producer {k}: line {n} where {} was due (line {i})",
            next[k]
        );
        next[k] += 1;
    }
    assert_eq!(
        next, [N; PRODUCERS as usize],
        "every producer's lines, each once"
    );
}

#[test]
fn several_consumers_share_the_work() {
    let _serial = heavy();
    const N: usize = 60_000;
    let spool = tempfile::tempdir().expect("spool");
    let (relay, pp, cp, _) =
        listen_listen(spool.path(), &["--framing", "lines", "--memory", "256KiB"]);
    let total = Arc::new(AtomicUsize::new(0));
    // Three slow consumers with small receive windows, so that none of them
    // can take the whole queue.
    let consumers: Vec<JoinHandle<Vec<u64>>> = (0..3)
        .map(|i| {
            let total = Arc::clone(&total);
            std::thread::spawn(move || share_consumer(i, cp, N, SIZE_SHARE, &total))
        })
        .collect();
    let p = Peer::producer(&s(&[
        "--connect",
        &pp.to_string(),
        "--count",
        &N.to_string(),
        "--size",
        &SIZE_SHARE.to_string(),
        "--rate",
        "30000",
        "--on-eagain",
        "block",
        "--timeout",
        "60",
    ]))
    .finish(Duration::from_secs(70));
    assert_eq!(p.code, Some(0), "{p}");
    all_shared(consumers, N);
    drop(relay); // kept running until every consumer was done
}

/// A backlog already queued (on disk, in the page cache), then three slow
/// consumers at once: takes read it for themselves (no reader thread in
/// between), and what one take read beyond its own share must reach the
/// others (nothing else wakes them: no append, no reader supply).
#[test]
fn several_consumers_share_a_backlog_in_the_page_cache() {
    let _serial = heavy();
    // 1 KiB lines: a read of the backlog brings a few hundred, few enough
    // that the takes go on reading it for themselves.
    const N: usize = 20_000;
    const SIZE: usize = 1024;
    let spool = tempfile::tempdir().expect("spool");
    let (relay, pp, cp, _) = listen_listen(spool.path(), &["--framing", "lines", "--memory", "0"]);
    fill(
        &relay,
        pp,
        &s(&["--count", &N.to_string(), "--size", &SIZE.to_string()]),
        N as u64,
    );
    let total = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<JoinHandle<Vec<u64>>> = (0..3)
        .map(|i| {
            let total = Arc::clone(&total);
            std::thread::spawn(move || share_consumer(i, cp, N, SIZE, &total))
        })
        .collect();
    all_shared(consumers, N);
    drop(relay);
}

/// Joins the work-sharing consumers: each got some, in order, and together
/// every one of lines `0..n` once.
fn all_shared(consumers: Vec<JoinHandle<Vec<u64>>>, n: usize) {
    let got: Vec<Vec<u64>> = consumers
        .into_iter()
        .map(|h| h.join().expect("consumer thread"))
        .collect();
    let counts: Vec<usize> = got.iter().map(Vec::len).collect();
    eprintln!("messages per consumer: {counts:?}");
    for (i, g) in got.iter().enumerate() {
        assert!(
            g.windows(2).all(|w| w[0] < w[1]),
            "consumer {i} got its messages out of order"
        );
        assert!(!g.is_empty(), "consumer {i} got nothing: {counts:?}");
    }
    let all: HashSet<u64> = got.iter().flatten().copied().collect();
    assert_eq!(
        counts.iter().sum::<usize>(),
        n,
        "no message twice ({counts:?})"
    );
    assert_eq!(all.len(), n, "every message once");
    assert!(all.iter().all(|&v| v < n as u64));
}

/// Line size in `several_consumers_share_the_work`.
const SIZE_SHARE: usize = 32;

/// One of the work-sharing consumers: reads slowly, records the numbers of
/// whole lines of `size` bytes (each checked byte for byte), and once all
/// consumers together have `n` lines, leaves gracefully and reads to EOF.
fn share_consumer(
    id: usize,
    addr: SocketAddr,
    n: usize,
    size: usize,
    total: &AtomicUsize,
) -> Vec<u64> {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(16 << 10).expect("rcvbuf");
    sock.connect(&addr.into()).expect("connect consumer");
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut rng = fastrand::Rng::with_seed(id as u64);
    let (mut nums, mut partial, mut buf) = (Vec::new(), Vec::new(), vec![0u8; 4096]);
    let take = |data: &[u8], nums: &mut Vec<u64>, partial: &mut Vec<u8>| {
        for &b in data {
            partial.push(b);
            if b == b'\n' {
                let text = String::from_utf8_lossy(partial).to_string();
                let num = text.split(' ').next().and_then(|v| v.parse::<u64>().ok());
                let Some(num) = num.filter(|&v| *partial == format_line("", v, size)) else {
                    panic!("consumer {id}: malformed line {text:?}");
                };
                nums.push(num);
                total.fetch_add(1, Ordering::SeqCst);
                partial.clear();
            }
        }
    };
    while total.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "consumer {id}: all consumers together got only {} of {n}",
            total.load(Ordering::SeqCst)
        );
        match s.read(&mut buf[..rng.usize(200..4096)]) {
            Ok(0) => panic!("consumer {id}: relay closed early"),
            Ok(k) => take(&buf[..k], &mut nums, &mut partial),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("consumer {id}: {e}"),
        }
        std::thread::sleep(Duration::from_micros(rng.u64(100..600)));
    }
    s.shutdown(Shutdown::Write).expect("half-close");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("read to EOF");
    take(&rest, &mut nums, &mut partial);
    assert!(
        partial.is_empty(),
        "consumer {id}: the clean cut left a partial line {partial:?}"
    );
    nums
}

#[test]
fn oversized_frame_closes_producer_keeps_prior_messages() {
    let _serial = heavy();
    let spool = tempfile::tempdir().expect("spool");
    let (relay, pp, cp, _) = listen_listen(
        spool.path(),
        &["--framing", "lines", "--max-message", "100"],
    );
    let good: Vec<u8> = (0..10)
        .flat_map(|i| format!("good line {i}\n").into_bytes())
        .collect();
    let mut bad = vec![b'x'; 999];
    bad.push(b'\n');
    let mut p = TcpStream::connect(pp).expect("connect producer");
    let peer = p.local_addr().expect("local addr").to_string();
    p.write_all(&good).expect("good lines");
    // The relay may close while we write: what matters is what it kept.
    let _ = p.write_all(&bad);
    let _ = p.write_all(b"after the bad frame\n");
    let _ = p.shutdown(Shutdown::Write);
    let log_lines = relay.wait_log_lines("producer closed", 1, Duration::from_secs(20));
    let got = consume_lines(&relay, cp, 10, Duration::from_secs(20));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&good),
        "exactly the 10 good lines"
    );
    let log = relay.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(&peer) && l.contains("offset=") && l != log_lines[0]),
        "a log line must name the producer {peer} and the offset:\n{log}"
    );
    // The offset is where the oversized line starts (or a byte inside it),
    // never before it.
    let bad_line = log
        .lines()
        .find(|l| l.contains(&peer) && l.contains("offset="))
        .unwrap_or_default();
    let offset: u64 = field(bad_line, "offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        (good.len() as u64..=(good.len() + bad.len()) as u64).contains(&offset),
        "offset {offset} is not inside the oversized line: {bad_line}"
    );
    assert_eq!(
        field(&log_lines[0], "messages"),
        Some("10"),
        "`producer closed` must count the 10 messages appended from this producer:\n{log}"
    );
}

#[test]
fn partial_message_at_eof_is_not_delivered() {
    let _serial = heavy();
    let spool = tempfile::tempdir().expect("spool");
    let (relay, pp, cp, _) = listen_listen(spool.path(), &["--framing", "lines"]);
    let mut p = TcpStream::connect(pp).expect("connect producer");
    p.write_all(b"one\ntwo\nthree\nfour without its newline")
        .expect("write");
    drop(p);
    let log_lines = relay.wait_log_lines("producer closed", 1, Duration::from_secs(20));
    assert_eq!(
        field(&log_lines[0], "messages"),
        Some("3"),
        "{}",
        relay.log_text()
    );
    let log = relay.log_text();
    assert!(
        log.to_lowercase().contains("partial") || log.to_lowercase().contains("truncated"),
        "the log must mention the partial message:\n{log}"
    );
    let got = consume_lines(&relay, cp, 3, Duration::from_secs(20));
    assert_eq!(got, b"one\ntwo\nthree\n");
}
