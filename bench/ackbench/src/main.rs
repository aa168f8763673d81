//! ackbench: acked delivery through spillway's ack protocol
//! (`spillway-client`) and through NATS JetStream (`async-nats`), with the
//! same harness code on both sides. Run by bench/ack.sh; one phase per
//! invocation, one `result ...` line of key=value pairs on stdout.
//!
//! ```text
//! ackbench spillway publish --pub ADDR --size 64 --count 500000
//! ackbench spillway consume --sub ADDR --size 64 --count 500000
//! ackbench spillway live    --pub ADDR --sub ADDR --size 64 --rate 20000 --secs 5
//! ackbench spillway plain   --sub ADDR --framing lines --count 500000
//! ackbench jetstream publish --nats URL --size 64 --count 500000
//! ackbench jetstream consume --nats URL --count 500000
//! ackbench jetstream live    --nats URL --size 64 --rate 20000 --secs 5
//! ackbench jetstream batch-publish --nats URL[,URL...] --stream S --subject X
//!          --replicas 1 --size 64 --count 2000000 --batch-bytes 262144 --inflight 8
//! ackbench jetstream batch-roundtrip (batch-publish's options) --window 64
//! ackbench jetstream stream-info --nats URL --stream S
//! ackbench jetstream wait-stored --nats URL --stream S --subject X --size 64 --count N
//! ```
//!
//! Message body (ASCII, so a `lines` route carries it): 16 hex digits of
//! the message id, 16 hex digits of its publish time (ns since the
//! process's start; used by `live`, where both ends are in one process),
//! then `x` up to `--size` bytes (at least 32).
//!
//! publish: N messages with confirms, at most `--inflight` unconfirmed
//!   (spillway: `Producer::send`, a `flush()` every 256 messages, at most
//!   inflight/256 flushes outstanding; JetStream: `publish()` and its
//!   PubAck future, at most `--inflight` futures outstanding). Rate = N /
//!   (connect -> last confirm).
//! consume: N messages from the backlog, each acknowledged on its own
//!   (spillway: `Message::ack`, window `--window` messages; JetStream: a
//!   durable pull consumer, AckPolicy::Explicit, max_ack_pending
//!   `--window`, `stream().max_messages_per_batch(--batch)`, plain
//!   `ack()`, i.e. not `double_ack`). Rate = N / (connect -> the last ack
//!   written: spillway `Consumer::close`, JetStream `Client::flush`).
//! live: a producer at `--rate` msgs/s for `--secs` s (with confirms, as
//!   above) while the consumer acks; latency = publish time (taken just
//!   before the send) -> the consumer's ack() call returned.
//! plain: (spillway only) the relay's plain-TCP delivery of the same
//!   backlog: read the stream, split the framing, count ids.
//!
//! batch-publish: (bench/jetstream.sh) the limit of a spillway route on
//!   JetStream: N messages packed into batches exactly as the relay's
//!   publisher packs them (crates/spillway/src/queue/jetstream/batch.rs,
//!   publisher.rs): payload = per message its length (u32 big-endian) and
//!   its bytes, at most `--batch-bytes` payload bytes and 16,384 messages
//!   a batch; headers Nats-Msg-Id `sw1:<route>:<spool id>:<first>-<last>`,
//!   Spillway-Spool-Id, Spillway-First-Seq, Spillway-Count; at most
//!   `--inflight` batches published and not acknowledged, PubAcks taken in
//!   order. The stream is made as the relay makes it (cluster.rs:
//!   WorkQueue, file storage, discard New, no size bound, duplicate window
//!   30 min, `--replicas`). Every batch here is full (the relay cuts what
//!   its spool has); rate = N / (first publish -> last PubAck).
//! batch-roundtrip: batch-publish with a reader at the same time, as the
//!   relay reads: the route's durable pull consumer (MaxAckPending
//!   `--window` batches), each batch split, checked and acked. Rate = N /
//!   (first publish -> last batch acked): JetStream's own cost of the
//!   route's round trip, without the relay.
//! stream-info: the stream's and its consumers' state, one line (batches
//!   stored = last_seq, messages left, consumers' pending counts).
//! wait-stored: waits until the stream holds spillway batches of `--count`
//!   messages in all; prints the wall-clock time it saw that.
//!
//! Every consume/live/plain run counts distinct ids (lost = N - distinct)
//! and duplicates (deliveries beyond the first).

use std::collections::{HashMap, VecDeque};
use std::error::Error;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use spillway_client::{Consumer, ConsumerOptions, Producer, ProducerOptions};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Messages between two spillway flushes in `publish`/`live`.
const FLUSH_EVERY: u64 = 256;
const STREAM: &str = "BENCH";
const SUBJECT: &str = "bench";
const LIVE_STREAM: &str = "LIVE";
const LIVE_SUBJECT: &str = "live";
const DURABLE: &str = "bench";

#[derive(Clone, Debug)]
struct Cfg {
    system: String,
    phase: String,
    pub_addr: String,
    sub_addr: String,
    nats: String,
    size: usize,
    count: u64,
    inflight: u64,
    window: u32,
    batch: usize,
    rate: u64,
    secs: u64,
    framing: String,
    retention: String,
    idle: Duration,
    /// live: write "publish_us latency_us" per message here (investigation).
    dump: Option<String>,
    /// batch-publish, stream-info
    stream: String,
    subject: String,
    replicas: usize,
    batch_bytes: usize,
    route: String,
}

fn parse_args() -> Res<Cfg> {
    let mut args = std::env::args().skip(1);
    let system = args
        .next()
        .ok_or("usage: ackbench spillway|jetstream PHASE [--opt value]...")?;
    let phase = args
        .next()
        .ok_or("missing PHASE: publish|consume|live|plain")?;
    let mut kv: HashMap<String, String> = HashMap::new();
    while let Some(k) = args.next() {
        let k = k
            .strip_prefix("--")
            .ok_or(format!("expected --option, got {k}"))?
            .to_string();
        let v = args.next().ok_or(format!("--{k} needs a value"))?;
        kv.insert(k, v);
    }
    let get = |k: &str, d: &str| kv.get(k).cloned().unwrap_or_else(|| d.to_string());
    let known = [
        "pub",
        "sub",
        "nats",
        "size",
        "count",
        "inflight",
        "window",
        "batch",
        "rate",
        "secs",
        "framing",
        "retention",
        "idle-secs",
        "dump",
        "stream",
        "subject",
        "replicas",
        "batch-bytes",
        "route",
    ];
    if let Some(k) = kv.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("unknown option --{k}").into());
    }
    let cfg = Cfg {
        system,
        phase,
        pub_addr: get("pub", "127.0.0.1:7000"),
        sub_addr: get("sub", "127.0.0.1:7001"),
        nats: get("nats", "127.0.0.1:4222"),
        size: get("size", "64").parse()?,
        count: get("count", "100000").parse()?,
        inflight: get("inflight", "4096").parse()?,
        window: get("window", "4096").parse()?,
        batch: get("batch", "4096").parse()?,
        rate: get("rate", "20000").parse()?,
        secs: get("secs", "5").parse()?,
        framing: get("framing", "lines"),
        retention: get("retention", "workqueue"),
        idle: Duration::from_secs(get("idle-secs", "15").parse()?),
        dump: kv.get("dump").cloned(),
        stream: get("stream", STREAM),
        subject: get("subject", SUBJECT),
        replicas: get("replicas", "1").parse()?,
        batch_bytes: get("batch-bytes", "262144").parse()?,
        route: get("route", "bench"),
    };
    if cfg.size < 32 {
        return Err("--size must be at least 32 (id and timestamp)".into());
    }
    Ok(cfg)
}

// ---------------------------------------------------------------- bodies

fn body(id: u64, t_ns: u64, size: usize) -> Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = BytesMut::with_capacity(size);
    b.resize(size, b'x');
    for (i, v) in [id, t_ns].into_iter().enumerate() {
        for j in 0..16 {
            b[i * 16 + j] = HEX[((v >> (60 - 4 * j)) & 0xf) as usize];
        }
    }
    b.freeze()
}

fn hex16(b: &[u8]) -> Option<u64> {
    if b.len() < 16 {
        return None;
    }
    let mut v = 0u64;
    for &c in &b[..16] {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// (id, publish time in ns since start)
fn parse_body(b: &[u8]) -> Option<(u64, u64)> {
    Some((hex16(b)?, hex16(b.get(16..)?)?))
}

// ---------------------------------------------------------------- tallies

/// Distinct ids, duplicates, malformed bodies, and (live) latencies.
struct Tally {
    seen: Vec<bool>,
    distinct: u64,
    dups: u64,
    bad: u64,
    lat_us: Vec<u32>,
    /// (publish time µs, latency µs), for --dump
    trace: Vec<(u64, u32)>,
}

impl Tally {
    fn new(n: u64) -> Tally {
        Tally {
            seen: vec![false; n as usize],
            distinct: 0,
            dups: 0,
            bad: 0,
            lat_us: Vec::new(),
            trace: Vec::new(),
        }
    }

    /// Records one delivery; returns its publish time.
    fn record(&mut self, b: &[u8]) -> Option<u64> {
        match parse_body(b) {
            Some((id, t)) if (id as usize) < self.seen.len() => {
                if self.seen[id as usize] {
                    self.dups += 1;
                } else {
                    self.seen[id as usize] = true;
                    self.distinct += 1;
                }
                Some(t)
            }
            _ => {
                self.bad += 1;
                None
            }
        }
    }

    fn done(&self) -> bool {
        self.distinct as usize == self.seen.len()
    }

    fn fields(&self) -> String {
        format!(
            "distinct={} lost={} dups={} bad={}",
            self.distinct,
            self.seen.len() as u64 - self.distinct,
            self.dups,
            self.bad
        )
    }

    fn latency(&mut self, t_ns: u64, now_ns: u64) {
        let l = (now_ns.saturating_sub(t_ns) / 1000) as u32;
        self.lat_us.push(l);
        self.trace.push((t_ns / 1000, l));
    }

    fn dump(&self, path: &Option<String>) -> Res<()> {
        if let Some(p) = path {
            use std::io::Write;
            let mut f = std::io::BufWriter::new(std::fs::File::create(p)?);
            for (t, l) in &self.trace {
                writeln!(f, "{t} {l}")?;
            }
        }
        Ok(())
    }

    fn latency_fields(&mut self) -> String {
        let v = &mut self.lat_us;
        if v.is_empty() {
            return "p50_us=- p99_us=- p999_us=- max_us=-".into();
        }
        v.sort_unstable();
        let q = |p: f64| v[(((v.len() as f64) * p).ceil() as usize).clamp(1, v.len()) - 1];
        format!(
            "p50_us={} p99_us={} p999_us={} max_us={} lat_n={}",
            q(0.50),
            q(0.99),
            q(0.999),
            v[v.len() - 1],
            v.len()
        )
    }
}

// ---------------------------------------------------------------- pacing

/// Sends ids `0..count`, at `rate` msgs/s if given (then the ids due are
/// sent in a burst each millisecond tick), through `send`. Returns how far
/// the sender fell behind its schedule at worst.
async fn paced<F, Fut>(
    count: u64,
    rate: Option<u64>,
    start: Instant,
    size: usize,
    mut send: F,
) -> Res<Duration>
where
    F: FnMut(u64, Bytes) -> Fut,
    Fut: std::future::Future<Output = Res<()>>,
{
    let mut worst = Duration::ZERO;
    let t0 = Instant::now();
    let mut id = 0u64;
    while id < count {
        let due = match rate {
            None => count,
            Some(r) => {
                let due = ((t0.elapsed().as_secs_f64() * r as f64) as u64 + 1).min(count);
                if due <= id {
                    let next = t0 + Duration::from_secs_f64(id as f64 / r as f64);
                    tokio::time::sleep_until(next.into()).await;
                    continue;
                }
                due
            }
        };
        while id < due {
            if let Some(r) = rate {
                let sched = t0 + Duration::from_secs_f64(id as f64 / r as f64);
                worst = worst.max(Instant::now().saturating_duration_since(sched));
            }
            let t = start.elapsed().as_nanos() as u64;
            send(id, body(id, t, size)).await?;
            id += 1;
        }
    }
    Ok(worst)
}

// ---------------------------------------------------------------- spillway

async fn spillway_produce(cfg: &Cfg, count: u64, rate: Option<u64>, start: Instant) -> Res<String> {
    let t0 = Instant::now();
    let p = Arc::new(Producer::connect(cfg.pub_addr.as_str(), ProducerOptions::default()).await?);
    // At most inflight/FLUSH_EVERY flushes outstanding: one awaited by the
    // waiter, the rest in the channel.
    let slots = (cfg.inflight / FLUSH_EVERY).max(2) as usize - 1;
    let (tx, mut rx) =
        mpsc::channel::<tokio::task::JoinHandle<Result<(), spillway_client::ClientError>>>(slots);
    let waiter = tokio::spawn(async move {
        while let Some(h) = rx.recv().await {
            h.await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    });
    let worst = paced(count, rate, start, cfg.size, |id, b| {
        let p = Arc::clone(&p);
        let tx = tx.clone();
        async move {
            p.send(b).await?;
            if (id + 1) % FLUSH_EVERY == 0 {
                let p2 = Arc::clone(&p);
                tx.send(tokio::spawn(async move { p2.flush().await }))
                    .await
                    .map_err(|_| "waiter gone")?;
            }
            Ok(())
        }
    })
    .await?;
    drop(tx);
    waiter.await??;
    p.flush().await?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(format!(
        "sent={count} confirmed={} msgs_s={:.0} secs={secs:.3} behind_ms={}",
        p.confirmed(),
        count as f64 / secs,
        worst.as_millis()
    ))
}

async fn spillway_consume(cfg: &Cfg, count: u64, start: Option<Instant>) -> Res<(String, Tally)> {
    let mut tally = Tally::new(count);
    let t0 = Instant::now();
    let opts = ConsumerOptions {
        window: cfg.window,
        window_bytes: 1 << 30,
        ..ConsumerOptions::default()
    };
    let mut c = Consumer::connect(cfg.sub_addr.as_str(), opts).await?;
    let mut why = "done";
    while !tally.done() {
        // A message already received is taken without arming the idle
        // timer (its clock read and timer entry cost more per message than
        // the rest of this loop); the same on the JetStream side.
        let next = match c.recv().now_or_never() {
            Some(r) => Ok(r),
            None => tokio::time::timeout(cfg.idle, c.recv()).await,
        };
        match next {
            Ok(Some(Ok(m))) => {
                let t = tally.record(&m.body);
                m.ack()?;
                if let (Some(start), Some(t)) = (start, t) {
                    tally.latency(t, start.elapsed().as_nanos() as u64);
                }
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => {
                why = "stream ended";
                break;
            }
            Err(_) => {
                why = "idle timeout";
                break;
            }
        }
    }
    c.close().await;
    let secs = t0.elapsed().as_secs_f64();
    let got = tally.distinct + tally.dups;
    Ok((
        format!(
            "received={got} msgs_s={:.0} secs={secs:.3} window={} end={}",
            tally.distinct as f64 / secs,
            cfg.window,
            why.replace(' ', "_")
        ),
        tally,
    ))
}

async fn spillway_plain(cfg: &Cfg) -> Res<String> {
    let mut tally = Tally::new(cfg.count);
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(cfg.sub_addr.as_str()).await?;
    let mut buf = BytesMut::with_capacity(1 << 20);
    let len32 = match cfg.framing.as_str() {
        "lines" => false,
        "len32" | "len:u32be" => true,
        f => return Err(format!("unknown --framing {f}").into()),
    };
    let mut why = "done";
    let mut bytes = 0u64;
    let mut t_last = t0;
    'read: while !tally.done() {
        if buf.capacity() - buf.len() < (64 << 10) {
            buf.reserve(1 << 20);
        }
        let n = match tokio::time::timeout(cfg.idle, s.read_buf(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                why = "idle timeout";
                break;
            }
        };
        if n == 0 {
            why = "closed";
            break;
        }
        bytes += n as u64;
        t_last = Instant::now();
        let mut off = 0;
        loop {
            let rest = &buf[off..];
            let (b, used) = if len32 {
                if rest.len() < 4 {
                    break;
                }
                let l = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if rest.len() < 4 + l {
                    break;
                }
                (&rest[4..4 + l], 4 + l)
            } else {
                match rest.iter().position(|&c| c == b'\n') {
                    Some(i) => (&rest[..i], i + 1),
                    None => break,
                }
            };
            tally.record(b);
            off += used;
            if tally.done() {
                break 'read;
            }
        }
        let _ = buf.split_to(off);
    }
    let secs = t_last.duration_since(t0).as_secs_f64();
    Ok(format!(
        "received={} msgs_s={:.0} secs={secs:.3} bytes={bytes} end={} {}",
        tally.distinct + tally.dups,
        tally.distinct as f64 / secs,
        why.replace(' ', "_"),
        tally.fields()
    ))
}

// ---------------------------------------------------------------- jetstream

async fn js_connect(cfg: &Cfg, inflight: usize) -> Res<(async_nats::Client, jetstream::Context)> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(10))
        .connect(cfg.nats.as_str())
        .await?;
    let js = jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_secs(30))
        .max_ack_inflight(inflight + 64)
        .backpressure_on_inflight(true)
        .build(client.clone());
    Ok((client, js))
}

async fn js_stream(
    cfg: &Cfg,
    js: &jetstream::Context,
    name: &str,
    subject: &str,
) -> Res<stream::Stream> {
    let retention = match cfg.retention.as_str() {
        "workqueue" => stream::RetentionPolicy::WorkQueue,
        "limits" => stream::RetentionPolicy::Limits,
        r => return Err(format!("unknown --retention {r}").into()),
    };
    Ok(js
        .get_or_create_stream(stream::Config {
            name: name.to_string(),
            subjects: vec![subject.to_string()],
            storage: stream::StorageType::File,
            retention,
            num_replicas: 1,
            ..Default::default()
        })
        .await?)
}

async fn js_consumer(cfg: &Cfg, s: &stream::Stream) -> Res<consumer::PullConsumer> {
    Ok(s.get_or_create_consumer(
        DURABLE,
        consumer::pull::Config {
            durable_name: Some(DURABLE.to_string()),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: i64::from(cfg.window),
            ..Default::default()
        },
    )
    .await?)
}

async fn js_produce(
    cfg: &Cfg,
    js: &jetstream::Context,
    subject: &'static str,
    count: u64,
    rate: Option<u64>,
    start: Instant,
) -> Res<String> {
    let t0 = Instant::now();
    // At most `inflight` PubAck futures outstanding: one awaited by the
    // waiter, the rest in the channel.
    let (tx, mut rx) =
        mpsc::channel::<jetstream::context::PublishAckFuture>((cfg.inflight as usize).max(2) - 1);
    let waiter = tokio::spawn(async move {
        let (mut n, mut dup) = (0u64, 0u64);
        while let Some(f) = rx.recv().await {
            let ack = f.await.map_err(|e| e.to_string())?;
            n += 1;
            dup += u64::from(ack.duplicate);
        }
        Ok::<(u64, u64), String>((n, dup))
    });
    let worst = paced(count, rate, start, cfg.size, |_, b| {
        let js = js.clone();
        let tx = tx.clone();
        async move {
            let f = js.publish(subject, b).await?;
            tx.send(f).await.map_err(|_| "waiter gone")?;
            Ok(())
        }
    })
    .await?;
    drop(tx);
    let (acked, dup) = waiter.await??;
    let secs = t0.elapsed().as_secs_f64();
    Ok(format!(
        "sent={count} confirmed={acked} pub_dups={dup} msgs_s={:.0} secs={secs:.3} behind_ms={}",
        count as f64 / secs,
        worst.as_millis()
    ))
}

async fn js_consume(
    cfg: &Cfg,
    client: &async_nats::Client,
    c: &consumer::PullConsumer,
    count: u64,
    start: Option<Instant>,
) -> Res<(String, Tally)> {
    let mut tally = Tally::new(count);
    let t0 = Instant::now();
    let mut msgs = c
        .stream()
        .max_messages_per_batch(cfg.batch)
        .messages()
        .await?;
    let mut why = "done";
    while !tally.done() {
        let next = match msgs.next().now_or_never() {
            Some(r) => Ok(r),
            None => tokio::time::timeout(cfg.idle, msgs.next()).await,
        };
        match next {
            Ok(Some(Ok(m))) => {
                let t = tally.record(&m.payload);
                m.ack().await?;
                if let (Some(start), Some(t)) = (start, t) {
                    tally.latency(t, start.elapsed().as_nanos() as u64);
                }
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => {
                why = "stream ended";
                break;
            }
            Err(_) => {
                why = "idle timeout";
                break;
            }
        }
    }
    client.flush().await?;
    let secs = t0.elapsed().as_secs_f64();
    drop(msgs);
    Ok((
        format!(
            "received={} msgs_s={:.0} secs={secs:.3} max_ack_pending={} batch={} end={}",
            tally.distinct + tally.dups,
            tally.distinct as f64 / secs,
            cfg.window,
            cfg.batch,
            why.replace(' ', "_")
        ),
        tally,
    ))
}

/// After a consume: the server's view (bounded wait for the acks to land).
async fn js_server_state(s: &mut stream::Stream, c: &mut consumer::PullConsumer) -> Res<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ci = c.info().await?.clone();
        let si = s.info().await?.clone();
        if ci.num_ack_pending == 0 || Instant::now() > deadline {
            return Ok(format!(
                "server_ack_pending={} server_pending={} server_stream_msgs={} server_redelivered={}",
                ci.num_ack_pending, ci.num_pending, si.state.messages, ci.num_redelivered
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------- jetstream batches

/// Headers of a spillway batch (crates/spillway/src/queue/jetstream/batch.rs).
const HDR_SPOOL: &str = "Spillway-Spool-Id";
const HDR_FIRST: &str = "Spillway-First-Seq";
const HDR_COUNT: &str = "Spillway-Count";
/// Most messages in one batch, as the relay's publisher (publisher.rs).
const BATCH_MSGS: u64 = 16_384;

/// Connects as the relay does (cluster.rs): every server of the list
/// (comma-separated), a 10 s request timeout, the client's default
/// PubAck bound.
async fn js_connect_servers(cfg: &Cfg) -> Res<(async_nats::Client, jetstream::Context)> {
    let servers = cfg
        .nats
        .split(',')
        .map(|s| s.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()?;
    let client = async_nats::ConnectOptions::new()
        .name("ackbench/batch-publish")
        .connection_timeout(Duration::from_secs(10))
        .connect(servers)
        .await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client.clone());
    Ok((client, js))
}

type AckFut = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
            > + Send,
    >,
>;

/// The stream the relay makes for a route (cluster.rs `stream_config` with
/// max_disk 0 and the default duplicate_window).
async fn js_route_stream(cfg: &Cfg, js: &jetstream::Context) -> Res<stream::Stream> {
    Ok(js
        .get_or_create_stream(stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![cfg.subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            num_replicas: cfg.replicas,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            max_bytes: -1,
            duplicate_window: Duration::from_secs(30 * 60),
            ..Default::default()
        })
        .await?)
}

/// What `publish_batches` did.
struct Published {
    acked: u64,
    batches: u64,
    dups: u64,
    payload_bytes: u64,
}

/// Publishes `--count` messages in full batches (see the module docs).
async fn publish_batches(cfg: &Cfg, js: &jetstream::Context) -> Res<Published> {
    let spool = (std::process::id() as u64).rotate_left(32)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64;
    let spool_hex = format!("{spool:016x}");
    let template = body(0, 0, cfg.size);
    let cost = 4 + cfg.size;
    let inflight = (cfg.inflight as usize).max(1);
    let mut flights: VecDeque<(u32, AckFut)> = VecDeque::with_capacity(inflight);
    let mut p = Published {
        acked: 0,
        batches: 0,
        dups: 0,
        payload_bytes: 0,
    };
    let mut next = 0u64;
    while p.acked < cfg.count {
        while flights.len() < inflight && next < cfg.count {
            let first = next;
            let mut b = BytesMut::with_capacity(cfg.batch_bytes.max(cost));
            // At least one message; then while the next one fits (a larger
            // message travels alone, as in the relay).
            while next < cfg.count
                && next - first < BATCH_MSGS
                && (next == first || b.len() + cost <= cfg.batch_bytes)
            {
                b.put_u32(cfg.size as u32);
                let at = b.len();
                b.put_slice(&template);
                write_hex16(&mut b[at..at + 16], next);
                next += 1;
            }
            let count = (next - first) as u32;
            p.payload_bytes += b.len() as u64;
            // The relay's `BatchId::msg_id` and `Publisher::publish`.
            let msg = jetstream::message::PublishMessage::build()
                .payload(b.freeze())
                .message_id(format!(
                    "sw1:{}:{spool_hex}:{first}-{}",
                    cfg.route,
                    next - 1
                ))
                .header(HDR_SPOOL, spool_hex.as_str())
                .header(HDR_FIRST, first.to_string().as_str())
                .header(HDR_COUNT, count.to_string().as_str());
            let fut = js.send_publish(cfg.subject.clone(), msg).await?;
            flights.push_back((count, fut.into_future()));
            p.batches += 1;
        }
        let Some((count, fut)) = flights.pop_front() else {
            break;
        };
        let ack = fut.await?;
        p.dups += u64::from(ack.duplicate);
        p.acked += u64::from(count);
    }
    Ok(p)
}

async fn js_batch_publish(cfg: &Cfg) -> Res<String> {
    let (_client, js) = js_connect_servers(cfg).await?;
    js_route_stream(cfg, &js).await?;
    let t0 = Instant::now();
    let p = publish_batches(cfg, &js).await?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(format!(
        "sent={} confirmed={} batches={} pub_dups={} payload_bytes={} msgs_per_batch={:.1} msgs_s={:.0} MB_s={:.1} secs={secs:.3} inflight={} batch_bytes={}",
        cfg.count,
        p.acked,
        p.batches,
        p.dups,
        p.payload_bytes,
        p.acked as f64 / p.batches.max(1) as f64,
        p.acked as f64 / secs,
        p.payload_bytes as f64 / secs / 1e6,
        cfg.inflight,
        cfg.batch_bytes
    ))
}

/// batch-publish with a reader at once, as the relay reads (puller.rs): the
/// route's durable pull consumer (explicit acks, MaxAckPending `--window`
/// batches), pulls of `--window` batches, each batch split into its
/// messages, checked (count, order of first seqs) and acked (the stream
/// deletes it). Rate = N / (first publish -> the last batch acked).
async fn js_batch_roundtrip(cfg: &Cfg) -> Res<String> {
    let (client, js) = js_connect_servers(cfg).await?;
    let s = js_route_stream(cfg, &js).await?;
    let durable = format!("spillway-{}", cfg.route);
    let c: consumer::PullConsumer = s
        .get_or_create_consumer(
            &durable,
            consumer::pull::Config {
                durable_name: Some(durable.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_deliver: -1,
                filter_subject: cfg.subject.clone(),
                max_ack_pending: i64::from(cfg.window),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await?;
    let window = cfg.window as usize;
    let mut msgs = c
        .stream()
        .max_messages_per_batch(window)
        .max_bytes_per_batch(window.saturating_mul(cfg.batch_bytes + 4096))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    let (count, idle) = (cfg.count, cfg.idle);
    let reader = tokio::spawn(async move {
        let (mut got, mut batches, mut disorder, mut bad) = (0u64, 0u64, 0u64, 0u64);
        let mut expect_first: Option<u64> = None;
        while got < count {
            let m = match tokio::time::timeout(idle, msgs.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(None) | Err(_) => break,
            };
            let h = |k: &str| -> Option<u64> {
                m.headers.as_ref()?.get(k)?.as_str().trim().parse().ok()
            };
            let (Some(first), Some(n)) = (h(HDR_FIRST), h(HDR_COUNT)) else {
                bad += 1;
                continue;
            };
            // The relay's `batch::split`: per message a u32be length.
            let p = &m.payload;
            let (mut at, mut k) = (0usize, 0u64);
            while at + 4 <= p.len() {
                let l = u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]) as usize;
                at += 4 + l;
                k += 1;
            }
            if at != p.len() || k != n {
                bad += 1;
            }
            if expect_first.is_some_and(|e| e != first) {
                disorder += 1;
            }
            expect_first = Some(first + n);
            got += n;
            batches += 1;
            m.ack().await.map_err(|e| e.to_string())?;
        }
        Ok::<_, String>((got, batches, disorder, bad))
    });
    let t0 = Instant::now();
    let p = publish_batches(cfg, &js).await?;
    let pub_secs = t0.elapsed().as_secs_f64();
    let (got, batches_in, disorder, bad) = reader.await??;
    client.flush().await?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(format!(
        "sent={} confirmed={} batches={} pub_dups={} received={got} batches_in={batches_in} disorder={disorder} bad={bad} lost={} msgs_s={:.0} secs={secs:.3} pub_msgs_s={:.0} window={} inflight={} batch_bytes={}",
        cfg.count,
        p.acked,
        p.batches,
        p.dups,
        cfg.count.saturating_sub(got),
        got as f64 / secs,
        p.acked as f64 / pub_secs,
        cfg.window,
        cfg.inflight,
        cfg.batch_bytes
    ))
}

fn write_hex16(out: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (j, o) in out.iter_mut().enumerate().take(16) {
        *o = HEX[((v >> (60 - 4 * j)) & 0xf) as usize];
    }
}

/// The stream's state and its consumers', one line.
async fn js_stream_info(cfg: &Cfg) -> Res<String> {
    let (_client, js) = js_connect_servers(cfg).await?;
    let mut s = js.get_stream(&cfg.stream).await?;
    let si = s.info().await?.clone();
    let mut line = format!(
        "stream={} replicas={} stored_batches={} left_msgs={} left_bytes={} leader={}",
        si.config.name,
        si.config.num_replicas,
        si.state.last_sequence,
        si.state.messages,
        si.state.bytes,
        si.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .unwrap_or_else(|| "-".into())
    );
    let mut consumers = s.consumers();
    while let Some(c) = consumers.next().await {
        let c = c?;
        line.push_str(&format!(
            " consumer={} delivered={} ack_floor={} ack_pending={} pending={} redelivered={}",
            c.name,
            c.delivered.stream_sequence,
            c.ack_floor.stream_sequence,
            c.num_ack_pending,
            c.num_pending,
            c.num_redelivered
        ));
    }
    Ok(line)
}

/// Waits until the stream holds spillway batches for `--count` messages
/// (`--size` bytes each) and prints the wall-clock time it saw that
/// (`stored_unix_ns`; bench/jetstream.sh maps it to CLOCK_MONOTONIC):
/// the stream's size is polled every 10 ms (cheap); once it could hold
/// them all, the last batch's headers are read until it ends the run.
async fn js_wait_stored(cfg: &Cfg) -> Res<String> {
    let (_client, js) = js_connect_servers(cfg).await?;
    let deadline = Instant::now() + cfg.idle;
    let mut s = loop {
        match js.get_stream(&cfg.stream).await {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let need_bytes = cfg.count * (4 + cfg.size as u64);
    let hdr = |m: &jetstream::message::StreamMessage, k: &str| -> Option<u64> {
        m.headers.get(k)?.as_str().trim().parse().ok()
    };
    let mut first: Option<u64> = None;
    let mut polls = 0u64;
    loop {
        if Instant::now() > deadline {
            return Err(format!("not stored within {:?}", cfg.idle).into());
        }
        polls += 1;
        let st = s.info().await?.state.clone();
        if st.bytes >= need_bytes {
            if first.is_none() {
                let m = s.get_raw_message(st.first_sequence).await?;
                first = hdr(&m, HDR_FIRST);
            }
            let m = s.get_last_raw_message_by_subject(&cfg.subject).await?;
            if let (Some(f), Some(a), Some(c)) = (first, hdr(&m, HDR_FIRST), hdr(&m, HDR_COUNT)) {
                if a + c - f >= cfg.count {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
                    return Ok(format!(
                        "stored_unix_ns={} stored_batches={} stored_msgs={} polls={polls}",
                        now.as_nanos(),
                        st.last_sequence,
                        a + c - f
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// This process's user+system CPU seconds (/proc/self/stat; 0 elsewhere).
fn cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name;
    // 100 ticks a second on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

// ---------------------------------------------------------------- main

async fn run(cfg: Cfg) -> Res<String> {
    let start = Instant::now();
    let live_count = cfg.rate * cfg.secs;
    match (cfg.system.as_str(), cfg.phase.as_str()) {
        ("spillway", "publish") => spillway_produce(&cfg, cfg.count, None, start).await,
        ("spillway", "consume") => {
            let (line, t) = spillway_consume(&cfg, cfg.count, None).await?;
            Ok(format!("{line} {}", t.fields()))
        }
        ("spillway", "live") => {
            let c = tokio::spawn({
                let cfg = cfg.clone();
                async move { spillway_consume(&cfg, live_count, Some(start)).await }
            });
            // Let the consumer connect before the first message.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let p = spillway_produce(&cfg, live_count, Some(cfg.rate), start).await?;
            let (line, mut t) = c.await??;
            t.dump(&cfg.dump)?;
            Ok(format!(
                "rate={} secs_planned={} pub[{p}] sub[{line}] {} {}",
                cfg.rate,
                cfg.secs,
                t.fields(),
                t.latency_fields()
            ))
        }
        ("spillway", "plain") => spillway_plain(&cfg).await,
        ("jetstream", "publish") => {
            let (_client, js) = js_connect(&cfg, cfg.inflight as usize).await?;
            js_stream(&cfg, &js, STREAM, SUBJECT).await?;
            js_produce(&cfg, &js, SUBJECT, cfg.count, None, start).await
        }
        ("jetstream", "consume") => {
            let (client, js) = js_connect(&cfg, cfg.inflight as usize).await?;
            let mut s = js.get_stream(STREAM).await?;
            let mut c = js_consumer(&cfg, &s).await?;
            let (line, t) = js_consume(&cfg, &client, &c, cfg.count, None).await?;
            let server = js_server_state(&mut s, &mut c).await?;
            Ok(format!("{line} {} {server}", t.fields()))
        }
        ("jetstream", "live") => {
            let (client, js) = js_connect(&cfg, cfg.inflight as usize).await?;
            let mut s = js_stream(&cfg, &js, LIVE_STREAM, LIVE_SUBJECT).await?;
            let mut c = js_consumer(&cfg, &s).await?;
            let h = tokio::spawn({
                let (cfg, client, c) = (cfg.clone(), client.clone(), c.clone());
                async move { js_consume(&cfg, &client, &c, live_count, Some(start)).await }
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            let p = js_produce(&cfg, &js, LIVE_SUBJECT, live_count, Some(cfg.rate), start).await?;
            let (line, mut t) = h.await??;
            t.dump(&cfg.dump)?;
            let server = js_server_state(&mut s, &mut c).await?;
            Ok(format!(
                "rate={} secs_planned={} pub[{p}] sub[{line}] {} {} {server}",
                cfg.rate,
                cfg.secs,
                t.fields(),
                t.latency_fields()
            ))
        }
        ("jetstream", "batch-publish") => js_batch_publish(&cfg).await,
        ("jetstream", "batch-roundtrip") => js_batch_roundtrip(&cfg).await,
        ("jetstream", "stream-info") => js_stream_info(&cfg).await,
        ("jetstream", "wait-stored") => js_wait_stored(&cfg).await,
        (s, p) => Err(format!("unknown system/phase {s} {p}").into()),
    }
}

fn main() {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ackbench: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let head = format!(
        "system={} phase={} size={}",
        cfg.system, cfg.phase, cfg.size
    );
    let c0 = cpu_s();
    match rt.block_on(run(cfg)) {
        Ok(line) => println!(
            "result {head} status=ok {line} client_cpu_s={:.2}",
            cpu_s() - c0
        ),
        Err(e) => {
            println!("result {head} status=error error={:?}", e.to_string());
            std::process::exit(1);
        }
    }
}
