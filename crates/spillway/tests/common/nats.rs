//! A real nats-server for the JetStream tests: one node, or a cluster of
//! nodes on 127.0.0.1 with JetStream on every node. Each node is a child
//! process in its own process group with its config, store and log under
//! the test's directory (`<dir>/n1/{nats.conf,store,nats.log}`), killed
//! (SIGKILL to the group) when the [`NatsCluster`] is dropped. A test
//! binary that dies without dropping it (Ctrl-C, SIGKILL, abort) leaves no
//! server behind either: a watchdog shell, in a process group of its own,
//! kills the nodes' groups once the test process is gone.
//!
//! Every node runs with `sync_interval: always` (fsync before every
//! acknowledgement), the setting spillway's durability promise relies on;
//! [`NatsCluster::assert_sync_always`] checks the servers really run so.
//!
//! The binary: `SPILLWAY_NATS_SERVER`, else `.deps/bin/nats-server` at the
//! workspace root, which `scripts/install-test-deps.sh` installs.
//!
//! Readiness and leaders come from each node's HTTP monitoring endpoint
//! (`/healthz`, `/jsz`), read over a plain `TcpStream`. [`NatsConn`] speaks
//! just enough of the client protocol (requests with a reply inbox) to
//! create streams, publish and read messages back without any NATS client
//! library: an oracle independent of the code under test.
//!
//! **Ports.** A JetStream cluster refuses to start without configured
//! routes, so every node's ports must be known before the first one starts:
//! they are chosen by binding `127.0.0.1:0` and releasing the sockets just
//! before the servers start. Another process can take one in between; a node
//! that then fails to bind says "address already in use" in its log, and
//! [`NatsCluster::start`] starts the whole cluster again on new ports. A
//! restarted node reuses its ports, so client URLs stay valid; a port taken
//! while it was down makes [`NatsCluster::restart`] panic saying so.
//!
//! **What `/jsz` says** (nats-server 2.15.1, observed):
//! - After a kill -9, the survivors go on naming the dead node as meta and
//!   stream leader for seconds, until they elect another.
//! - A node restarted while the others are down names *itself* leader of
//!   the streams it replicates (stored state), with no quorum behind it.
//!
//!   So a leader is believed only when it is running, names itself, and a
//!   majority of its group's nodes name it ([`NatsCluster::stream_leader`]).
//! - Even then its view lists the dead replicas as `"current": true`.
//! - `config.sync_interval` shows the 2 min default even under
//!   `sync_interval: always`; the setting shows as `config.sync_always`.
//! - A single server has no `meta_cluster`; its streams' `cluster` is just
//!   `{"leader":"n1"}`. With no meta leader, `meta_cluster` has no `leader`
//!   key at all.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long [`NatsCluster::wait_ready`] and the leader waits are usually
/// given: a three-node cluster on loopback is ready in under a second, and
/// elects a new stream leader 3 to 16 s after its leader is killed (seen
/// on a busy 2-core machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one node may take to bind its ports after it is spawned.
const BIND_LIMIT: Duration = Duration::from_secs(20);

/// Starts of the whole cluster when a chosen port was taken meanwhile.
const START_ATTEMPTS: usize = 3;

/// Polling period of every wait; each wait is bounded by its deadline.
const POLL: Duration = Duration::from_millis(50);

/// The nats-server binary the tests run (see the module docs).
pub fn server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SPILLWAY_NATS_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "SPILLWAY_NATS_SERVER={} is not a file",
            p.display()
        );
        return p;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join(".deps/bin/nats-server");
    assert!(
        p.is_file(),
        "no nats-server at {}: run scripts/install-test-deps.sh \
         (or point SPILLWAY_NATS_SERVER at a nats-server >= 2.10)",
        p.display()
    );
    p
}

struct Node {
    /// `server_name`: n1, n2, ...
    name: String,
    client: u16,
    http: u16,
    /// Holds `nats.conf`, `nats.log` and `store/`.
    dir: PathBuf,
    /// `None` once killed (and reaped).
    child: Mutex<Option<Child>>,
}

impl Node {
    fn conf(&self) -> PathBuf {
        self.dir.join("nats.conf")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("nats.log")
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Kills the node's process group and reaps it; no-op if not running.
    fn kill(&self) {
        if let Some(mut c) = self.child().take() {
            kill_group(&mut c);
        }
    }
}

/// SIGKILLs the process group led by `c` (spawned with `process_group(0)`,
/// so its pgid is its pid) and reaps `c`.
fn kill_group(c: &mut Child) {
    let group = format!("-{}", c.id());
    let killed = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !killed {
        let _ = c.kill();
    }
    let _ = c.wait();
}

/// Polls (every second) whether process `$1`, the test, is alive; once it
/// is not, SIGKILLs every process group listed in file `$2`. (No `--`:
/// dash's builtin kill takes `-PGID` right after the signal, and refuses
/// `--`.)
const WATCHDOG: &str = r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done
for g in $(cat "$2" 2>/dev/null); do kill -KILL "-$g" 2>/dev/null; done"#;

/// One nats-server, or a cluster of them (see the module docs).
pub struct NatsCluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    /// The pgids of the running nodes, one a line, for the watchdog.
    pgids: PathBuf,
    watchdog: Child,
}

/// `n` ports on 127.0.0.1 no one listens on right now, all different.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

impl NatsCluster {
    /// Starts `nodes` servers (1: a single JetStream server; more: a
    /// JetStream cluster whose every node routes to all) with their files
    /// under `dir` (`n1/`, `n2/`, ..., and the watchdog's `nats-pgids`),
    /// and returns once each has bound its ports. Then call
    /// [`NatsCluster::wait_ready`].
    pub fn start(dir: &Path, nodes: usize) -> NatsCluster {
        assert!(nodes >= 1, "a cluster needs a node");
        let bin = server_bin();
        std::fs::create_dir_all(dir).expect("nats dir");
        let pgids = dir.join("nats-pgids");
        for attempt in 1..=START_ATTEMPTS {
            let ports = free_ports(3 * nodes);
            std::fs::write(&pgids, "").expect("write nats-pgids");
            let watchdog = Command::new("sh")
                .args(["-c", WATCHDOG, "nats-watchdog"])
                .arg(std::process::id().to_string())
                .arg(&pgids)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Out of the terminal's group: Ctrl-C must not stop it.
                .process_group(0)
                .spawn()
                .expect("spawn the nats watchdog (sh)");
            let cluster = NatsCluster {
                bin: bin.clone(),
                pgids: pgids.clone(),
                watchdog,
                nodes: (0..nodes)
                    .map(|i| Node {
                        name: format!("n{}", i + 1),
                        client: ports[3 * i],
                        http: ports[3 * i + 1],
                        dir: dir.join(format!("n{}", i + 1)),
                        child: Mutex::new(None),
                    })
                    .collect(),
            };
            let routes: Vec<u16> = (0..nodes).map(|i| ports[3 * i + 2]).collect();
            for (i, node) in cluster.nodes.iter().enumerate() {
                // A fresh store each attempt: an aborted attempt's state
                // belongs to a cluster that no longer exists.
                let _ = std::fs::remove_dir_all(&node.dir);
                std::fs::create_dir_all(&node.dir).expect("node dir");
                let conf = config(node, &routes, i);
                std::fs::write(node.conf(), conf).expect("write nats.conf");
            }
            let mut taken = None;
            for i in 0..nodes {
                if let Err(log) = cluster.launch(i) {
                    taken = Some((i, log));
                    break;
                }
            }
            match taken {
                None => return cluster,
                Some((i, log)) if attempt == START_ATTEMPTS => panic!(
                    "nats-server n{} could not bind its ports in {START_ATTEMPTS} attempts:\n{log}",
                    i + 1
                ),
                Some((i, _)) => {
                    eprintln!(
                        "nats-server n{}: a chosen port was taken; starting again",
                        i + 1
                    );
                    drop(cluster);
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Spawns node `i` with its config and waits (bounded) until it has
    /// bound every port. `Err(log)` if a port was taken; panics on any
    /// other failure.
    fn launch(&self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        let log = node.log();
        // Restarts append to the same log; only this run's part counts.
        let from = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open nats.log");
        let out = file.try_clone().expect("clone log handle");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(node.conf())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(file))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        *node.child() = Some(child);
        self.write_pgids();
        // Each line is logged once its listener is bound (they show the
        // bound address). "Server is ready" is not enough: it comes before
        // the route listener.
        let mut needles = vec![
            "Starting http monitor on",
            "Listening for client connections on",
        ];
        if self.nodes.len() > 1 {
            needles.push("Listening for route connections on");
        }
        let deadline = Instant::now() + BIND_LIMIT;
        loop {
            let text = self.log_since(i, from);
            let text = text.as_str();
            if needles.iter().all(|n| text.contains(n)) {
                return Ok(());
            }
            if !self.is_running(i) {
                let _ = node.child().take();
                self.write_pgids();
                if text.contains("address already in use") {
                    return Err(text.to_string());
                }
                panic!("nats-server {} exited while starting:\n{text}", node.name);
            }
            if Instant::now() > deadline {
                panic!(
                    "nats-server {} did not bind its ports within {BIND_LIMIT:?}:\n{text}",
                    node.name
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Number of nodes, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `node`'s `server_name` (n1 for node 0).
    pub fn name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    /// `nats://127.0.0.1:PORT` of node `node`'s client listener.
    pub fn url(&self, node: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[node].client)
    }

    /// Every node's client URL, node 0 first.
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// Node `node`'s client listener.
    pub fn client_addr(&self, node: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[node].client))
    }

    /// Node `node`'s log so far (every run of it).
    pub fn log_text(&self, node: usize) -> String {
        self.log_since(node, 0)
    }

    /// Node `node`'s log from byte `from` on.
    fn log_since(&self, node: usize, from: usize) -> String {
        let bytes = std::fs::read(self.nodes[node].log()).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(from..).unwrap_or_default()).into_owned()
    }

    /// Whether node `node`'s process is alive (started, not killed, not
    /// exited).
    pub fn is_running(&self, node: usize) -> bool {
        let mut child = self.nodes[node].child();
        match child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs node `node` (its process group) and reaps it: no shutdown,
    /// no flush. Panics if it is not running.
    pub fn kill9(&self, node: usize) {
        assert!(
            self.is_running(node),
            "kill9: {} is not running",
            self.nodes[node].name
        );
        self.nodes[node].kill();
        self.write_pgids();
    }

    /// Tells the watchdog which groups to kill: the started nodes', and no
    /// stale pid that the system could have given to someone else.
    fn write_pgids(&self) {
        let mut list = String::new();
        for node in &self.nodes {
            if let Some(c) = node.child().as_ref() {
                list.push_str(&format!("{}\n", c.id()));
            }
        }
        // Replaced by a rename, so the watchdog never reads half a list.
        let tmp = self.pgids.with_extension("tmp");
        std::fs::write(&tmp, list).expect("write nats-pgids");
        std::fs::rename(&tmp, &self.pgids).expect("rename nats-pgids");
    }

    /// Starts node `node` again with the same config, ports and store, and
    /// returns once it has bound its ports. Panics if it is running, or if
    /// a port it had was taken while it was down.
    pub fn restart(&self, node: usize) {
        let name = &self.nodes[node].name;
        assert!(!self.is_running(node), "restart: {name} is running");
        if let Err(log) = self.launch(node) {
            panic!("restart: a port of {name} was taken while it was down:\n{log}");
        }
    }

    /// Waits until every running node's `/healthz` is ok (for JetStream:
    /// it is current with the meta leader and its streams) and, for a
    /// cluster, a meta leader is agreed ([`NatsCluster::meta_leader`]).
    /// Polls; panics with what is missing and the logs after `timeout`, or
    /// at once if a node that should run has died or none runs.
    pub fn wait_ready(&self, timeout: Duration) {
        assert!(!self.running().is_empty(), "wait_ready: no node runs");
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_alive();
            let missing = self.unready();
            if missing.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "nats not ready within {timeout:?}: {}\n{}",
                    missing.join("; "),
                    self.log_tails()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// What stands between the cluster and ready; empty when ready.
    fn unready(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for i in self.running() {
            let name = &self.nodes[i].name;
            match http_get(self.nodes[i].http, "/healthz") {
                Ok((200, body)) if health_ok(&body) => {}
                Ok((code, body)) => missing.push(format!("{name} /healthz {code} {body}")),
                Err(e) => missing.push(format!("{name} /healthz: {e}")),
            }
        }
        if missing.is_empty() && self.nodes.len() > 1 && self.meta_leader().is_none() {
            missing.push("no agreed meta leader".to_string());
        }
        missing
    }

    /// Panics with its log if a node that was started has exited on its own.
    fn assert_alive(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            let exited = node
                .child()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "nats-server {} exited ({status}):\n{}",
                    node.name,
                    self.log_text(i)
                );
            }
        }
    }

    /// Indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.is_running(i))
            .collect()
    }

    /// Node `node`'s `/jsz` with `query` (e.g. `"?streams=true"`).
    pub fn jsz(&self, node: usize, query: &str) -> Value {
        self.try_jsz(node, query)
            .unwrap_or_else(|e| panic!("{} /jsz{query}: {e}", self.nodes[node].name))
    }

    fn try_jsz(&self, node: usize, query: &str) -> Result<Value, String> {
        match http_get(self.nodes[node].http, &format!("/jsz{query}"))? {
            (200, body) => serde_json::from_str(&body).map_err(|e| format!("{e}: {body}")),
            (code, body) => Err(format!("HTTP {code}: {body}")),
        }
    }

    /// Node `node`'s view of `stream` (its `stream_detail` entry in
    /// `/jsz?streams=true`: `cluster`, `state`, ...); `None` if that node
    /// does not report it. Searches every account.
    pub fn stream_detail(&self, node: usize, stream: &str) -> Option<Value> {
        self.stream_detail_with(node, stream, "?streams=true")
    }

    /// [`NatsCluster::stream_detail`] from `/jsz{query}`, e.g.
    /// `"?consumers=true"` for its `consumer_detail` too.
    pub fn stream_detail_with(&self, node: usize, stream: &str, query: &str) -> Option<Value> {
        stream_detail_in(&self.try_jsz(node, query).ok()?, stream).cloned()
    }

    /// The node that leads `stream`, if its replicas agree on one: it is
    /// running, names itself, and a majority of the stream's replicas (as
    /// its own view lists them) name it; see the module docs for why less
    /// is not believed. `None` during an election, without quorum, or if
    /// no node has the stream.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        self.agreed_leader("?streams=true", |jsz| {
            let cluster = &stream_detail_in(jsz, stream)?["cluster"];
            // `replicas` lists the other peers (absent for R1 and on a
            // single server).
            let peers = cluster["replicas"].as_array().map_or(0, Vec::len);
            Some((cluster["leader"].as_str()?, 1 + peers))
        })
    }

    /// The JetStream meta leader, by the same rule as
    /// [`NatsCluster::stream_leader`]; a single running server leads itself.
    pub fn meta_leader(&self) -> Option<usize> {
        if self.nodes.len() == 1 {
            return self.is_running(0).then_some(0);
        }
        let nodes = self.nodes.len();
        self.agreed_leader("", |jsz| {
            Some((jsz["meta_cluster"]["leader"].as_str()?, nodes))
        })
    }

    /// The running node that names itself leader in its `/jsz{query}`,
    /// where `leader_in` reads (leader, size of the raft group), and that a
    /// majority of that group's size of running nodes name too.
    fn agreed_leader(
        &self,
        query: &str,
        leader_in: impl Fn(&Value) -> Option<(&str, usize)>,
    ) -> Option<usize> {
        let views: Vec<(usize, Option<(String, usize)>)> = self
            .running()
            .into_iter()
            .map(|i| {
                let jsz = self.try_jsz(i, query).ok();
                let view = jsz.as_ref().and_then(&leader_in);
                (i, view.map(|(l, size)| (l.to_string(), size)))
            })
            .collect();
        views.iter().find_map(|(i, view)| {
            let (leader, size) = view.as_ref()?;
            if *leader != self.nodes[*i].name {
                return None;
            }
            let votes = views
                .iter()
                .filter(|(_, v)| v.as_ref().is_some_and(|(l, _)| l == leader))
                .count();
            (votes > size / 2).then_some(*i)
        })
    }

    /// Waits (bounded) until [`NatsCluster::stream_leader`] names a node
    /// that `accept` takes (e.g. `|n| n != killed`), and returns it.
    pub fn wait_stream_leader(
        &self,
        stream: &str,
        timeout: Duration,
        accept: impl Fn(usize) -> bool,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_alive();
            let leader = self.stream_leader(stream);
            if let Some(n) = leader.filter(|&n| accept(n)) {
                return n;
            }
            if Instant::now() > deadline {
                let views: Vec<String> = self
                    .running()
                    .into_iter()
                    .map(|i| {
                        let c = self.stream_detail(i, stream).map(|d| d["cluster"].clone());
                        format!("{}: {c:?}", self.nodes[i].name)
                    })
                    .collect();
                panic!(
                    "stream {stream:?}: no accepted leader within {timeout:?} (agreed: {leader:?}; \
                     views: {})\n{}",
                    views.join(", "),
                    self.log_tails()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Panics unless every running node's `/jsz` shows
    /// `config.sync_always: true` (`sync_interval: always` took effect).
    pub fn assert_sync_always(&self) {
        let running = self.running();
        assert!(!running.is_empty(), "no nats-server is running");
        for i in running {
            let jsz = self.jsz(i, "");
            assert_eq!(
                jsz["config"]["sync_always"],
                Value::Bool(true),
                "{} does not fsync every write; /jsz config: {}",
                self.nodes[i].name,
                jsz["config"]
            );
        }
    }

    /// The last lines of every node's log, for failure messages.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let text = self.log_text(i);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            out.push_str(&format!("--- {} ({}):\n", node.name, node.log().display()));
            for l in tail {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        kill_group(&mut self.watchdog);
        for node in &self.nodes {
            node.kill();
        }
    }
}

/// Node `i`'s nats.conf; `routes` are every node's cluster ports.
fn config(node: &Node, routes: &[u16], i: usize) -> String {
    let store = node.dir.join("store");
    let store = store.to_str().expect("UTF-8 store path");
    assert!(!store.contains('"'), "store path {store:?} has a quote");
    let mut c = format!(
        "server_name: {name}\n\
         listen: 127.0.0.1:{client}\n\
         http: 127.0.0.1:{http}\n\
         jetstream {{\n\
         \x20 store_dir: \"{store}\"\n\
         \x20 sync_interval: always\n\
         \x20 max_memory_store: 64MB\n\
         \x20 max_file_store: 1GB\n\
         }}\n",
        name = node.name,
        client = node.client,
        http = node.http,
    );
    if routes.len() > 1 {
        // Listing itself in routes is fine: the server drops the duplicate.
        c.push_str(&format!(
            "cluster {{\n  name: spillway-test\n  listen: 127.0.0.1:{}\n  routes: [\n",
            routes[i]
        ));
        for p in routes {
            c.push_str(&format!("    nats-route://127.0.0.1:{p}\n"));
        }
        c.push_str("  ]\n}\n");
    }
    c
}

fn health_ok(body: &str) -> bool {
    serde_json::from_str::<Value>(body).is_ok_and(|v| v["status"] == "ok")
}

/// `account_details[].stream_detail[]` named `stream` in a `/jsz?streams=true`.
fn stream_detail_in<'a>(jsz: &'a Value, stream: &str) -> Option<&'a Value> {
    jsz["account_details"]
        .as_array()?
        .iter()
        .filter_map(|a| a["stream_detail"].as_array())
        .flatten()
        .find(|s| s["name"] == stream)
}

/// `GET path` on 127.0.0.1:`port`: (status, body). HTTP/1.0, so the body is
/// never chunked and ends at EOF.
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let io = |e: std::io::Error| format!("{addr}{path}: {e}");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}{path}: no header end: {text}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}{path}: no status code: {head}"))?;
    Ok((code, body.to_string()))
}

// --------------------------------------------------- a raw NATS client ---

/// Why a [`NatsConn`] request got no usable answer.
#[derive(Debug)]
pub enum RequestError {
    /// No reply before the deadline. The request may still take effect
    /// (a publish may be stored): retry with the same `Nats-Msg-Id`.
    Timeout,
    /// Nobody subscribes to the subject (no stream takes it, or JetStream
    /// is not up on the node).
    NoResponders,
    /// A JetStream API error (`{"error":{...}}`), e.g. 503/10008 while
    /// there is no meta leader, 409/10158 for a retry of a publish still
    /// being proposed.
    Api {
        code: u64,
        err_code: u64,
        description: String,
    },
    /// The connection failed or the server sent `-ERR`; reconnect.
    Broken(String),
}

impl RequestError {
    /// Whether the same request, repeated later, may succeed: the cluster
    /// is electing, or a publish is still in flight.
    pub fn is_transient(&self) -> bool {
        match self {
            RequestError::Timeout | RequestError::NoResponders => true,
            RequestError::Api { code, err_code, .. } => *code == 503 || *err_code == 10158,
            RequestError::Broken(_) => false,
        }
    }
}

/// What the decoder found at the start of a buffer.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// INFO, +OK: nothing to do.
    Skip,
    Ping,
    Pong,
    Err(String),
    Msg {
        subject: String,
        /// From a `NATS/1.0 503` header line (no responders).
        status: Option<u16>,
        payload: Vec<u8>,
    },
}

#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// A frame and the bytes it took.
    Frame(Frame, usize),
    NeedMore,
    Invalid(String),
}

/// Decodes the first server-to-client frame in `buf`.
pub fn decode(buf: &[u8]) -> Decoded {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Decoded::NeedMore;
    };
    let line = String::from_utf8_lossy(&buf[..eol]);
    let mut words = line.split_whitespace();
    let op = words.next().unwrap_or_default().to_ascii_uppercase();
    let args: Vec<&str> = words.collect();
    let taken = eol + 2;
    match op.as_str() {
        "INFO" | "+OK" => Decoded::Frame(Frame::Skip, taken),
        "PING" => Decoded::Frame(Frame::Ping, taken),
        "PONG" => Decoded::Frame(Frame::Pong, taken),
        "-ERR" => Decoded::Frame(Frame::Err(args.join(" ")), taken),
        // MSG <subject> <sid> [reply] <len>
        // HMSG <subject> <sid> [reply] <header len> <total len>
        "MSG" | "HMSG" => {
            let headers = op == "HMSG";
            let (min, max) = if headers { (4, 5) } else { (3, 4) };
            if args.len() < min || args.len() > max {
                return Decoded::Invalid(format!("bad {op} line: {line}"));
            }
            let sizes: Option<Vec<usize>> = args[args.len() - if headers { 2 } else { 1 }..]
                .iter()
                .map(|s| s.parse().ok())
                .collect();
            let Some(sizes) = sizes else {
                return Decoded::Invalid(format!("bad size in: {line}"));
            };
            let (hlen, total) = if headers {
                (sizes[0], sizes[1])
            } else {
                (0, sizes[0])
            };
            if hlen > total {
                return Decoded::Invalid(format!("header longer than message: {line}"));
            }
            if buf.len() < taken + total + 2 {
                return Decoded::NeedMore;
            }
            if &buf[taken + total..taken + total + 2] != b"\r\n" {
                return Decoded::Invalid(format!("no CRLF after the payload of: {line}"));
            }
            let head = String::from_utf8_lossy(&buf[taken..taken + hlen]);
            let status = head
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("NATS/1.0"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|code| code.parse().ok());
            Decoded::Frame(
                Frame::Msg {
                    subject: args[0].to_string(),
                    status,
                    payload: buf[taken + hlen..taken + total].to_vec(),
                },
                taken + total + 2,
            )
        }
        _ => Decoded::Invalid(format!("unknown operation: {line}")),
    }
}

/// A blocking NATS client connection that does requests only: each one
/// goes out with its own reply subject, and replies to earlier requests
/// that timed out are dropped when they arrive late.
pub struct NatsConn {
    sock: TcpStream,
    buf: Vec<u8>,
    /// `_R.<pid>.<connection>`: subjects are global, so each connection
    /// needs inboxes of its own, or it takes another's replies for its own.
    inbox: String,
    requests: u64,
}

impl NatsConn {
    /// Connects to `url` (`nats://127.0.0.1:PORT` or `127.0.0.1:PORT`).
    pub fn connect(url: &str) -> Result<NatsConn, RequestError> {
        let broken = |e: std::io::Error| RequestError::Broken(format!("{url}: {e}"));
        let addr: SocketAddr = url
            .trim_start_matches("nats://")
            .parse()
            .map_err(|e| RequestError::Broken(format!("bad URL {url:?}: {e}")))?;
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(broken)?;
        sock.set_nodelay(true).map_err(broken)?;
        static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
        let inbox = format!(
            "_R.{}.{}",
            std::process::id(),
            CONNECTIONS.fetch_add(1, Ordering::Relaxed)
        );
        let mut c = NatsConn {
            sock,
            buf: Vec::new(),
            inbox,
            requests: 0,
        };
        let hello = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\
             \"no_responders\":true,\"protocol\":1,\"name\":\"spillway-test\"}}\r\n\
             SUB {}.> 1\r\nPING\r\n",
            c.inbox
        );
        c.sock.write_all(hello.as_bytes()).map_err(broken)?;
        // The PONG to that PING (the only one this client asks for): the
        // server has taken CONNECT and SUB.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.next_frame(deadline)? {
                Frame::Err(e) => return Err(RequestError::Broken(format!("{url}: -ERR {e}"))),
                Frame::Pong => return Ok(c),
                _ => {}
            }
        }
    }

    /// Sends `payload` to `subject` with `headers` and waits (bounded by
    /// `timeout`) for the reply's payload.
    pub fn request(
        &mut self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, RequestError> {
        self.requests += 1;
        let inbox = format!("{}.{}", self.inbox, self.requests);
        let mut out = Vec::with_capacity(payload.len() + 128);
        if headers.is_empty() {
            out.extend_from_slice(
                format!("PUB {subject} {inbox} {}\r\n", payload.len()).as_bytes(),
            );
        } else {
            let mut h = String::from("NATS/1.0\r\n");
            for (k, v) in headers {
                h.push_str(&format!("{k}: {v}\r\n"));
            }
            h.push_str("\r\n");
            out.extend_from_slice(
                format!(
                    "HPUB {subject} {inbox} {} {}\r\n{h}",
                    h.len(),
                    h.len() + payload.len()
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.sock
            .write_all(&out)
            .map_err(|e| RequestError::Broken(format!("write: {e}")))?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_frame(deadline)? {
                Frame::Msg {
                    subject,
                    status,
                    payload,
                } if subject == inbox => {
                    return match status {
                        Some(503) => Err(RequestError::NoResponders),
                        _ => Ok(payload),
                    };
                }
                Frame::Err(e) => return Err(RequestError::Broken(format!("-ERR {e}"))),
                _ => {}
            }
        }
    }

    /// A JetStream API request with a JSON body; the reply's JSON, or its
    /// `error` as [`RequestError::Api`].
    pub fn js(
        &mut self,
        subject: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Value, RequestError> {
        let reply = self.request(subject, headers, body, Duration::from_secs(5))?;
        let v: Value = serde_json::from_slice(&reply).map_err(|e| {
            RequestError::Broken(format!(
                "reply to {subject} is not JSON ({e}): {}",
                String::from_utf8_lossy(&reply)
            ))
        })?;
        if let Some(err) = v.get("error") {
            return Err(RequestError::Api {
                code: err["code"].as_u64().unwrap_or_default(),
                err_code: err["err_code"].as_u64().unwrap_or_default(),
                description: err["description"].as_str().unwrap_or_default().to_string(),
            });
        }
        Ok(v)
    }

    /// `$JS.API.STREAM.CREATE.<name>` with `config` (which names it).
    pub fn create_stream(&mut self, config: &Value) -> Result<Value, RequestError> {
        let name = config["name"].as_str().expect("stream config has a name");
        self.js(
            &format!("$JS.API.STREAM.CREATE.{name}"),
            &[],
            config.to_string().as_bytes(),
        )
    }

    /// `$JS.API.STREAM.INFO.<name>`: `config`, `state`, `cluster`.
    pub fn stream_info(&mut self, name: &str) -> Result<Value, RequestError> {
        self.js(&format!("$JS.API.STREAM.INFO.{name}"), &[], b"")
    }

    /// Publishes to a stream's subject and returns the ack
    /// (`{"stream","seq"[,"duplicate":true]}`). With `msg_id`, the stream
    /// stores a retry once (within its duplicate window).
    pub fn publish(
        &mut self,
        subject: &str,
        msg_id: Option<&str>,
        payload: &[u8],
    ) -> Result<Value, RequestError> {
        match msg_id {
            Some(id) => self.js(subject, &[("Nats-Msg-Id", id)], payload),
            None => self.js(subject, &[], payload),
        }
    }

    /// Message `seq` of stream `name`: (subject, data).
    pub fn stream_msg(&mut self, name: &str, seq: u64) -> Result<(String, Vec<u8>), RequestError> {
        let v = self.js(
            &format!("$JS.API.STREAM.MSG.GET.{name}"),
            &[],
            json!({ "seq": seq }).to_string().as_bytes(),
        )?;
        let m = &v["message"];
        let data = base64_decode(m["data"].as_str().unwrap_or_default()).ok_or_else(|| {
            RequestError::Broken(format!("message {seq} data is not base64: {v}"))
        })?;
        Ok((m["subject"].as_str().unwrap_or_default().to_string(), data))
    }

    /// The next frame, reading as needed until `deadline`; answers PINGs.
    fn next_frame(&mut self, deadline: Instant) -> Result<Frame, RequestError> {
        loop {
            match decode(&self.buf) {
                Decoded::Frame(frame, n) => {
                    self.buf.drain(..n);
                    if frame == Frame::Ping {
                        self.sock
                            .write_all(b"PONG\r\n")
                            .map_err(|e| RequestError::Broken(format!("write: {e}")))?;
                    }
                    return Ok(frame);
                }
                Decoded::Invalid(e) => return Err(RequestError::Broken(e)),
                Decoded::NeedMore => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RequestError::Timeout);
            }
            self.sock
                .set_read_timeout(Some(left))
                .map_err(|e| RequestError::Broken(e.to_string()))?;
            let mut chunk = [0u8; 64 << 10];
            match self.sock.read(&mut chunk) {
                Ok(0) => return Err(RequestError::Broken("connection closed".into())),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(RequestError::Timeout)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(RequestError::Broken(format!("read: {e}"))),
            }
        }
    }
}

/// Standard base64 (with or without padding), as JetStream returns stored
/// message data; `None` on a character outside the alphabet.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
