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
//! Every consume/live/plain run counts distinct ids (lost = N - distinct)
//! and duplicates (deliveries beyond the first).

use std::collections::HashMap;
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::{Bytes, BytesMut};
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
