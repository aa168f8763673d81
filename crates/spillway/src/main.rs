//! The `spillway` command line. See DESIGN.md "Command line": the flags
//! here are a contract that scripts and tests rely on.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spillway::config::{
    self, defaults, model, Config, Fsync, Global, JetStream, JetStreamAuth, Protocol, QueueRoute,
    Route, Spill, StreamRoute,
};
use spillway::endpoint::Endpoint;
use spillway::logging::{self, LogFormat};
use spillway::units::{ByteSize, HumanDuration};
use spillway_codec::Framing;
use spillway_net::balance::Balance;
use spillway_spool::WhenFull;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "spillway",
    version,
    about = "A TCP relay that never lets a slow reader hurt a fast writer"
)]
struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level or filter (RUST_LOG overrides).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Once every route serves (and after each reload), write the bound
    /// addresses (admin and each route's listeners) to PATH as JSON: start
    /// on port 0 and read the ports from here.
    #[arg(long, global = true, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Stream mode: proxy TCP connections to a pool of upstreams.
    Relay(RelayArgs),
    /// Queue mode: store-and-forward framed messages through a durable spool.
    Queue(QueueArgs),
    /// Offline tools for a spool directory (do not run them on a spool in use).
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Run every route of a TOML config file.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file; exit 1 with file:line:col on error.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Show a running relay's routes as a table (from its admin endpoint).
    Status {
        /// The admin endpoint (`[admin] listen`, `--admin`).
        #[arg(long, default_value = "127.0.0.1:9100")]
        admin: String,
        /// Refresh every second (in place on a terminal).
        #[arg(long)]
        watch: bool,
        /// The admin token (`[admin] token_file`), when one is configured.
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RelayArgs {
    /// Address to accept clients on (HOST:PORT).
    #[arg(long)]
    listen: String,
    /// Upstream address (HOST:PORT); repeat for a pool.
    #[arg(long = "to", required = true)]
    to: Vec<String>,
    #[arg(long, default_value_t = defaults::BALANCE, value_parser = parse_balance)]
    balance: Balance,
    /// Spill the overflow of slow directions to temporary files in DIR.
    #[arg(long)]
    spill_dir: Option<PathBuf>,
    /// Spill bound per connection.
    #[arg(long, default_value_t = ByteSize(defaults::MAX_SPILL_PER_CONNECTION))]
    max_spill: ByteSize,
    /// Spill bound for the whole process.
    #[arg(long, default_value_t = ByteSize(defaults::MAX_SPILL_TOTAL))]
    max_spill_total: ByteSize,
    /// User-space buffer per direction (spill mode and the copy fallback).
    #[arg(long, default_value_t = ByteSize(defaults::BUFFER))]
    buffer: ByteSize,
    /// Kernel pipe per direction in splice mode (used only while bytes are in flight).
    #[arg(long, default_value_t = ByteSize(defaults::PIPE_SIZE))]
    pipe_size: ByteSize,
    #[arg(long, default_value_t = HumanDuration(defaults::CONNECT_TIMEOUT))]
    connect_timeout: HumanDuration,
    /// Distinct upstreams tried per client connection.
    #[arg(long, default_value_t = defaults::CONNECT_TRIES)]
    connect_tries: u32,
    #[arg(long, default_value_t = HumanDuration(defaults::IDLE_TIMEOUT))]
    idle_timeout: HumanDuration,
    #[arg(long, default_value_t = HumanDuration(defaults::HALF_CLOSE_TIMEOUT))]
    half_close_timeout: HumanDuration,
    #[arg(long, default_value_t = defaults::MAX_CONNECTIONS)]
    max_connections: usize,
    #[arg(long, default_value_t = HumanDuration(defaults::DRAIN_TIMEOUT))]
    drain_timeout: HumanDuration,
    /// Serve /metrics, /healthz, /readyz and /status on ADDR (HOST:PORT).
    #[arg(long)]
    admin: Option<String>,
}

fn parse_balance(s: &str) -> Result<Balance, String> {
    s.parse()
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Segments, depth, cursor, oldest/newest sequence.
    Inspect { dir: PathBuf },
    /// Check every record; exit 1 naming the first bad segment and offset.
    Verify { dir: PathBuf },
    /// Write messages to stdout, as stored (framing included).
    Dump {
        dir: PathBuf,
        /// First sequence number to dump (default: the consumer cursor).
        #[arg(long)]
        from: Option<u64>,
        /// Stop after this many messages.
        #[arg(long)]
        limit: Option<u64>,
        /// The dead letters of the spool DIR (DIR/dead) instead, one JSON
        /// object per line (seq, attempts, reason, text, message).
        #[arg(long, conflicts_with = "from")]
        dead: bool,
    },
    /// Put dead letters (DIR/dead) back on the main queue of DIR, as new
    /// messages, and remove them from the dead letters. The relay must be
    /// stopped.
    Requeue {
        dir: PathBuf,
        /// Only the dead letters whose original sequence is in A-B (or A).
        #[arg(long, value_parser = parse_seq_range)]
        seq: Option<(u64, u64)>,
    },
}

fn parse_seq_range(s: &str) -> Result<(u64, u64), String> {
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| format!("invalid sequence '{t}': expected a number"))
    };
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(s)?, num(s)?),
    };
    if a > b {
        return Err(format!("invalid range {s}: {a} is above {b}"));
    }
    Ok((a, b))
}

#[derive(clap::Args)]
struct QueueArgs {
    /// Where producers are: listen:HOST:PORT (they connect) or connect:HOST:PORT (we dial).
    #[arg(long, value_parser = parse_endpoint)]
    from: Endpoint,
    /// Where consumers are: listen:HOST:PORT or connect:HOST:PORT.
    #[arg(long, value_parser = parse_endpoint)]
    to: Endpoint,
    /// Spool directory (created if missing).
    #[arg(long)]
    spool: PathBuf,
    /// lines, raw, len:u8, len:u16be, len:u16le, len:u32be, len:u32le, len:u64be.
    #[arg(long, default_value_t = defaults::FRAMING, value_parser = parse_framing)]
    framing: Framing,
    /// Largest message, framing included [default: 1MiB; 1016KiB with
    /// --jetstream, the most one JetStream message carries].
    #[arg(long)]
    max_message: Option<ByteSize>,
    /// Memory tier size; 0 writes every message to disk first [default:
    /// 64MiB; 0 with --from-protocol ack].
    #[arg(long)]
    memory: Option<ByteSize>,
    /// Bound on the disk tier (0 = unbounded).
    #[arg(long, default_value_t = ByteSize(defaults::MAX_DISK))]
    max_disk: ByteSize,
    #[arg(
        long,
        default_value = config::when_full_name(defaults::WHEN_FULL),
        value_parser = config::parse_when_full
    )]
    when_full: WhenFull,
    /// always, never, or the longest time between fsyncs (e.g. 100ms).
    #[arg(long, default_value_t = Fsync(defaults::FSYNC))]
    fsync: Fsync,
    #[arg(long, default_value_t = ByteSize(defaults::SEGMENT_SIZE))]
    segment_size: ByteSize,
    /// After a consumer reset, re-send this many bytes of recently delivered
    /// messages (duplicates instead of loss).
    #[arg(long, default_value_t = ByteSize(defaults::REDELIVER_ON_RESET))]
    redeliver_on_reset: ByteSize,
    /// What producers speak: plain (bytes in the framing) or ack (the ack
    /// protocol of docs/protocol.md, with confirms).
    #[arg(long, default_value_t = Protocol::Plain)]
    from_protocol: Protocol,
    /// What consumers speak: plain (delivered = TCP-acknowledged) or ack
    /// (delivered = acknowledged by the consumer).
    #[arg(long, default_value_t = Protocol::Plain)]
    to_protocol: Protocol,
    /// Ack protocol: a consumer holding a message this long without an ack
    /// or a PROG is reset, and its messages go to the next one.
    #[arg(long, default_value_t = HumanDuration(defaults::ACK_TIMEOUT))]
    ack_timeout: HumanDuration,
    /// Ack protocol: deliveries after which a message is dead-lettered.
    #[arg(long, default_value_t = defaults::MAX_DELIVERIES)]
    max_deliveries: u32,
    /// Ack protocol: how long a producer name (and its last sequence) is
    /// remembered after its last message, so that a resend is not queued
    /// twice.
    #[arg(long, default_value_t = HumanDuration(defaults::PRODUCER_MEMORY))]
    producer_memory: HumanDuration,
    /// Ack protocol: a consumer group (repeat for more), each an
    /// independent cursor over the queue; consumers name it in their hello.
    #[arg(long = "group", value_name = "NAME")]
    groups: Vec<String>,
    /// Keep the queue in NATS JetStream (the backend is being built: see
    /// docs/jetstream.md): a server, nats://HOST:PORT (or tls://); repeat,
    /// or separate with commas. Needs --jetstream-stream.
    #[arg(
        long = "jetstream",
        value_name = "URL",
        value_delimiter = ',',
        requires = "jetstream_stream"
    )]
    jetstream: Vec<String>,
    /// JetStream: the stream (created if missing).
    #[arg(long, value_name = "NAME", requires = "jetstream")]
    jetstream_stream: Option<String>,
    /// JetStream: the subject published to [default: spillway.queue].
    #[arg(long, value_name = "SUBJECT", requires = "jetstream")]
    jetstream_subject: Option<String>,
    /// JetStream: replicas of the stream, 1 to 5 [default: 3].
    #[arg(long, value_name = "N", requires = "jetstream")]
    jetstream_replicas: Option<u64>,
    /// JetStream: the durable consumer relays read through [default:
    /// spillway-queue].
    #[arg(long, value_name = "NAME", requires = "jetstream")]
    jetstream_consumer: Option<String>,
    /// JetStream: a .creds file (JWT and NKey seed) to authenticate with.
    #[arg(long, value_name = "FILE", requires = "jetstream")]
    jetstream_creds: Option<PathBuf>,
    /// JetStream: queue batches as they come, not in stream order: for
    /// relays that share the durable consumer and may not use the
    /// presence subject to hear each other.
    #[arg(long, requires = "jetstream")]
    jetstream_unordered: bool,
    /// JetStream: strict FIFO with failover: one reading relay at a time
    /// receives batches (JetStream's pinned client), the others wait on
    /// standby and take over within 30 s of its last pull.
    #[arg(long, requires = "jetstream", conflicts_with = "jetstream_unordered")]
    jetstream_pinned: bool,
    /// JetStream: with --jetstream-pinned, how long the server keeps the
    /// pin of a reading relay that stopped pulling (a crashed one), 12s to
    /// 1h [default: 30s]. Every relay of the durable must use the same.
    #[arg(long, value_name = "DURATION", requires = "jetstream_pinned")]
    jetstream_pinned_ttl: Option<HumanDuration>,
    #[arg(long, default_value_t = HumanDuration(defaults::CONNECT_TIMEOUT))]
    connect_timeout: HumanDuration,
    #[arg(long, default_value_t = HumanDuration(defaults::DRAIN_TIMEOUT))]
    drain_timeout: HumanDuration,
    /// Serve /metrics, /healthz, /readyz and /status on ADDR (HOST:PORT).
    #[arg(long)]
    admin: Option<String>,
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    s.parse()
}

fn parse_framing(s: &str) -> Result<Framing, String> {
    s.parse()
        .map_err(|e: spillway_codec::ParseFramingError| e.to_string())
}

impl QueueArgs {
    fn into_config(mut self) -> Result<Config, String> {
        let jetstream = self.jetstream("queue")?;
        let mut q = QueueRoute::new("queue", self.from, self.to, self.spool);
        q.framing = self.framing;
        q.max_message = match (self.max_message, &jetstream) {
            (Some(m), _) => m.bytes(),
            (None, Some(_)) => defaults::JS_MAX_MESSAGE,
            (None, None) => defaults::MAX_MESSAGE,
        };
        q.jetstream = jetstream;
        q.memory = match (self.memory, self.from_protocol) {
            (Some(m), _) => m.bytes(),
            (None, Protocol::Ack) => 0,
            (None, Protocol::Plain) => defaults::QUEUE_MEMORY,
        };
        q.producer_memory = self.producer_memory.0;
        q.groups = self.groups;
        q.max_disk = self.max_disk.bytes();
        q.when_full = self.when_full;
        q.fsync = self.fsync.0;
        q.segment_size = self.segment_size.bytes();
        q.redeliver_on_reset = self.redeliver_on_reset.bytes();
        q.from_protocol = self.from_protocol;
        q.to_protocol = self.to_protocol;
        q.ack_timeout = self.ack_timeout.0;
        q.max_deliveries = self.max_deliveries;
        q.connect_timeout = self.connect_timeout.0;
        config::validate_queue(&q).map_err(|e| format!("--{}", e.replace('_', "-")))?;
        if self.drain_timeout.0.is_zero() {
            return Err("--drain-timeout must be greater than zero".into());
        }
        if let Some(a) = &self.admin {
            spillway::endpoint::check_host_port(a).map_err(|e| format!("--admin: {e}"))?;
        }
        Ok(Config {
            global: Global {
                drain_timeout: self.drain_timeout.0,
                admin: self.admin,
                ..Global::default()
            },
            routes: vec![Route::Queue(q)],
        })
    }
}

impl QueueArgs {
    /// The `--jetstream*` flags of route `route`, each checked as the
    /// config file checks its key.
    fn jetstream(&mut self, route: &str) -> Result<Option<JetStream>, String> {
        // clap makes --jetstream and --jetstream-stream come together, and
        // the other --jetstream-* flags need them.
        let Some(stream) = self.jetstream_stream.take() else {
            return Ok(None);
        };
        for s in &self.jetstream {
            model::check_jetstream_server("--jetstream", s)?;
        }
        model::check_jetstream_name("--jetstream-stream", &stream)?;
        let mut js = JetStream::new(route, std::mem::take(&mut self.jetstream), stream);
        if let Some(v) = self.jetstream_subject.take() {
            model::check_jetstream_subject("--jetstream-subject", &v)?;
            js.subject = v;
        }
        if let Some(v) = self.jetstream_replicas {
            js.replicas =
                model::check_jetstream_count("--jetstream-replicas", v, model::JS_REPLICAS_RANGE)?;
        }
        if let Some(v) = self.jetstream_consumer.take() {
            model::check_jetstream_name("--jetstream-consumer", &v)?;
            js.consumer = v;
        }
        if let Some(v) = self.jetstream_creds.take() {
            js.auth = JetStreamAuth::Credentials(v);
        }
        js.ordered = !self.jetstream_unordered;
        if self.jetstream_pinned {
            let ttl = self
                .jetstream_pinned_ttl
                .map_or(defaults::JS_PINNED_TTL, |d| d.0);
            model::check_jetstream_pinned_ttl("--jetstream-pinned-ttl", ttl)?;
            js.pinned = Some(ttl);
        }
        Ok(Some(js))
    }
}

impl RelayArgs {
    fn into_config(self) -> Result<Config, String> {
        spillway::endpoint::check_host_port(&self.listen).map_err(|e| format!("--listen: {e}"))?;
        for t in &self.to {
            spillway::endpoint::check_host_port(t).map_err(|e| format!("--to: {e}"))?;
        }
        if let Some(a) = &self.admin {
            spillway::endpoint::check_host_port(a).map_err(|e| format!("--admin: {e}"))?;
        }
        let mut route = StreamRoute::new("relay", self.listen, self.to);
        route.balance = self.balance;
        route.connect_timeout = self.connect_timeout.0;
        route.connect_tries = self.connect_tries;
        route.idle_timeout = self.idle_timeout.0;
        route.half_close_timeout = self.half_close_timeout.0;
        route.max_connections = self.max_connections;
        route.buffer = usize::try_from(self.buffer.bytes()).map_err(|_| "--buffer too large")?;
        route.pipe_size =
            usize::try_from(self.pipe_size.bytes()).map_err(|_| "--pipe-size too large")?;
        route.spill = self.spill_dir.map(|dir| Spill {
            dir,
            max_per_connection: self.max_spill.bytes(),
        });
        config::validate_stream(&route).map_err(|e| format!("--{}", e.replace('_', "-")))?;
        if self.drain_timeout.0.is_zero() {
            return Err("--drain-timeout must be greater than zero".into());
        }
        Ok(Config {
            global: Global {
                max_spill_total: self.max_spill_total.bytes(),
                drain_timeout: self.drain_timeout.0,
                admin: self.admin,
                ..Global::default()
            },
            routes: vec![Route::Stream(route)],
        })
    }
}

fn main() -> ExitCode {
    let Cli {
        log_format,
        log_level,
        ready_file,
        command,
    } = Cli::parse();
    let log = (log_format, log_level.as_str());
    match command {
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} route{})",
                    config.display(),
                    c.routes.len(),
                    if c.routes.len() == 1 { "" } else { "s" }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let parsed = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            logging::init(log_format, &log_level);
            serve(parsed, Some(config), ready_file)
        }
        Command::Status {
            admin,
            watch,
            token_file,
        } => {
            let token = match token_file.map(std::fs::read_to_string).transpose() {
                Ok(t) => t.map(|t| t.trim().to_string()),
                Err(e) => {
                    eprintln!("error: cannot read the token file: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let target = spillway::status_cli::Target { admin, token };
            match spillway::status_cli::run(&target, watch) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Spool { command } => {
            let r = match command {
                SpoolCommand::Inspect { dir } => {
                    spillway::spool_tools::inspect(&dir).map(|()| true)
                }
                SpoolCommand::Verify { dir } => spillway::spool_tools::verify(&dir),
                SpoolCommand::Dump {
                    dir,
                    limit,
                    dead: true,
                    ..
                } => spillway::spool_tools::dump_dead(&dir, limit).map(|()| true),
                SpoolCommand::Dump {
                    dir, from, limit, ..
                } => spillway::spool_tools::dump(&dir, from, limit).map(|()| true),
                SpoolCommand::Requeue { dir, seq } => spillway::spool_tools::requeue(&dir, seq)
                    .map(|(back, kept)| {
                        eprintln!("requeued {back} dead letters; {kept} kept");
                        true
                    }),
            };
            match r {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Queue(args) => start(args.into_config(), log, ready_file),
        Command::Relay(args) => start(args.into_config(), log, ready_file),
    }
}

/// Runs a configuration built from flags; a flag error exits 2 (usage).
fn start(
    config: Result<Config, String>,
    (format, level): (LogFormat, &str),
    ready_file: Option<PathBuf>,
) -> ExitCode {
    match config {
        Ok(c) => {
            logging::init(format, level);
            serve(c, None, ready_file)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(config: Config, config_path: Option<PathBuf>, ready_file: Option<PathBuf>) -> ExitCode {
    match spillway_net::sys::raise_nofile_limit(1 << 20) {
        Ok(n) => tracing::debug!(nofile = n, "open file limit"),
        Err(e) => warn!(error = %e, "cannot raise the open file limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let (reload_tx, reload) = tokio::sync::mpsc::unbounded_channel();
        match watch_signals(shutdown.clone(), reload_tx) {
            Ok(watch) => {
                tokio::spawn(watch);
            }
            Err(e) => {
                error!(error = %e, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        }
        let options = spillway::app::Options {
            config_path,
            reload,
            ready_file,
        };
        match spillway::app::run(config, shutdown, options).await {
            Ok(()) => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!("{e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once.
/// SIGHUP: reload the config file. The handlers are installed before any
/// route starts (a SIGHUP before that would kill the process by default).
fn watch_signals(
    shutdown: CancellationToken,
    reload: tokio::sync::mpsc::UnboundedSender<()>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        let mut seen = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    info!(signal = "SIGHUP", "reload requested");
                    let _ = reload.send(());
                    continue;
                }
            };
            seen += 1;
            if seen == 1 {
                info!(signal = name, "shutting down: no new connections, draining");
                shutdown.cancel();
            } else {
                warn!(signal = name, "second signal: exiting now");
                std::process::exit(130);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use spillway_spool::Durability;

    use super::*;

    fn from_flags(args: &[&str]) -> Config {
        let cli = Cli::try_parse_from(args).expect("flags");
        match cli.command {
            Command::Queue(a) => a.into_config(),
            Command::Relay(a) => a.into_config(),
            _ => Err("not a route command".into()),
        }
        .expect("valid flags")
    }

    /// A flag left out and a key left out mean the same thing: both front
    /// ends take their defaults from `config::defaults`.
    #[test]
    fn flags_and_file_have_the_same_defaults() {
        let flags = from_flags(&[
            "spillway",
            "queue",
            "--from",
            "listen:127.0.0.1:1",
            "--to",
            "connect:127.0.0.1:2",
            "--spool",
            "/tmp/q",
        ]);
        let file = config::parse(
            Path::new("t.toml"),
            "[[route]]\nname = \"queue\"\nmode = \"queue\"\nfrom = \"listen:127.0.0.1:1\"\nto = \"connect:127.0.0.1:2\"\nspool = \"/tmp/q\"\n",
        )
        .expect("valid file");
        assert_eq!(flags, file);

        let flags = from_flags(&[
            "spillway",
            "relay",
            "--listen",
            "127.0.0.1:1",
            "--to",
            "127.0.0.1:2",
        ]);
        let file = config::parse(
            Path::new("t.toml"),
            "[[route]]\nname = \"relay\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"127.0.0.1:2\"]\n",
        )
        .expect("valid file");
        assert_eq!(flags, file);
    }

    /// The `--jetstream*` flags build what the same `[route.jetstream]`
    /// keys build, `max_message` default included.
    #[test]
    fn jetstream_flags_and_file_agree() {
        let queue = [
            "spillway",
            "queue",
            "--from",
            "listen:127.0.0.1:1",
            "--to",
            "connect:127.0.0.1:2",
            "--spool",
            "/tmp/q",
        ];
        let file = "[[route]]\nname = \"queue\"\nmode = \"queue\"\nfrom = \"listen:127.0.0.1:1\"\nto = \"connect:127.0.0.1:2\"\nspool = \"/tmp/q\"\n";
        let flags = from_flags(
            &[
                &queue[..],
                &[
                    "--jetstream",
                    "nats://a:4222,tls://b:4222",
                    "--jetstream",
                    "nats://c:4222",
                    "--jetstream-stream",
                    "EVENTS",
                ],
            ]
            .concat(),
        );
        let from_file = config::parse(
            Path::new("t.toml"),
            &format!("{file}[route.jetstream]\nservers = [\"nats://a:4222\", \"tls://b:4222\", \"nats://c:4222\"]\nstream = \"EVENTS\"\n"),
        )
        .expect("valid file");
        assert_eq!(flags, from_file);
        let Route::Queue(q) = &flags.routes[0] else {
            panic!("queue route")
        };
        assert_eq!(q.max_message, defaults::JS_MAX_MESSAGE);

        let flags = from_flags(
            &[
                &queue[..],
                &[
                    "--jetstream",
                    "nats://a:4222",
                    "--jetstream-stream",
                    "EVENTS",
                    "--jetstream-subject",
                    "acme.events",
                    "--jetstream-replicas",
                    "1",
                    "--jetstream-consumer",
                    "relays",
                    "--jetstream-creds",
                    "/etc/nats.creds",
                    "--max-message",
                    "64KiB",
                ],
            ]
            .concat(),
        );
        let from_file = config::parse(
            Path::new("t.toml"),
            &format!("{file}max_message = \"64KiB\"\n[route.jetstream]\nservers = [\"nats://a:4222\"]\nstream = \"EVENTS\"\nsubject = \"acme.events\"\nreplicas = 1\nconsumer = \"relays\"\ncredentials = \"/etc/nats.creds\"\n"),
        )
        .expect("valid file");
        assert_eq!(flags, from_file);

        // Pinned, with the default TTL and with another one.
        let js = [
            "--jetstream",
            "nats://a:4222",
            "--jetstream-stream",
            "EVENTS",
        ];
        let section = "[route.jetstream]\nservers = [\"nats://a:4222\"]\nstream = \"EVENTS\"\npinned = true\n";
        for (ttl_flag, ttl_key) in [
            (&[][..], ""),
            (
                &["--jetstream-pinned-ttl", "2m"][..],
                "pinned_ttl = \"2m\"\n",
            ),
        ] {
            let flags = from_flags(&[&queue[..], &js, &["--jetstream-pinned"], ttl_flag].concat());
            let from_file =
                config::parse(Path::new("t.toml"), &format!("{file}{section}{ttl_key}"))
                    .expect("valid file");
            assert_eq!(flags, from_file, "{ttl_flag:?}");
        }
    }

    /// Each refusal names the flag, with the file's reason.
    #[test]
    fn jetstream_flags_are_checked_like_the_keys() {
        let queue = [
            "spillway",
            "queue",
            "--from",
            "listen:127.0.0.1:1",
            "--to",
            "listen:127.0.0.1:2",
            "--spool",
            "/tmp/q",
            "--jetstream",
            "nats://a:4222",
            "--jetstream-stream",
            "EVENTS",
        ];
        for (extra, says) in [
            (
                &["--jetstream", "http://b:1"][..],
                "--jetstream 'http://b:1': scheme",
            ),
            (
                &["--jetstream", "nats://b"],
                "--jetstream 'nats://b' needs HOST:PORT",
            ),
            (
                &["--jetstream-subject", "a.*"],
                "--jetstream-subject 'a.*' is not a valid subject",
            ),
            (
                &["--jetstream-replicas", "7"],
                "--jetstream-replicas must be between 1 and 5",
            ),
            (
                &["--jetstream-consumer", "a.b"],
                "--jetstream-consumer 'a.b' is not a valid JetStream name",
            ),
            (
                &["--max-message", "1MiB"],
                "--max-message must be at most 1016KiB on a jetstream route",
            ),
            (
                &["--to-protocol", "ack", "--group", "billing"],
                "--groups on a jetstream route are the stream's consumer groups",
            ),
            (
                &["--jetstream-pinned", "--jetstream-pinned-ttl", "5s"],
                "--jetstream-pinned-ttl must be between 12s and 3600s",
            ),
        ] {
            let cli = Cli::try_parse_from([&queue[..], extra].concat()).expect("flags parse");
            let Command::Queue(a) = cli.command else {
                panic!("queue")
            };
            let e = a.into_config().expect_err(says);
            assert!(e.contains(says), "{extra:?}: {e}");
        }
        let mut stream_name = queue;
        stream_name[11] = "a b";
        let Command::Queue(a) = Cli::try_parse_from(stream_name).expect("parse").command else {
            panic!("queue")
        };
        let e = a.into_config().expect_err("name");
        assert!(
            e.contains("--jetstream-stream 'a b' is not a valid JetStream name"),
            "{e}"
        );
        // Each of --jetstream and --jetstream-stream needs the other; the
        // other --jetstream-* flags need them.
        for (without, named) in [
            (&queue[..10], "--jetstream-stream"),
            (
                &[&queue[..8], &queue[10..]].concat()[..],
                "--jetstream <URL>",
            ),
            (
                &[&queue[..8], &["--jetstream-replicas", "1"]].concat()[..],
                "--jetstream <URL>",
            ),
            (
                &[&queue[..], &["--jetstream-pinned-ttl", "1m"]].concat()[..],
                "--jetstream-pinned",
            ),
        ] {
            let e = Cli::try_parse_from(without).err().expect("refused by clap");
            assert!(e.to_string().contains(named), "{without:?}: {e}");
        }
    }

    /// What `--help` shows as a default parses back to the default.
    #[test]
    fn fsync_and_when_full_defaults_print_as_they_parse() {
        for d in [Durability::Always, Durability::Never, defaults::FSYNC] {
            assert_eq!(Fsync(d).to_string().parse::<Fsync>(), Ok(Fsync(d)));
        }
        assert_eq!(Fsync(defaults::FSYNC).to_string(), "100ms");
        for w in [WhenFull::Block, WhenFull::DropOldest, WhenFull::DropNewest] {
            assert_eq!(config::parse_when_full(config::when_full_name(w)), Ok(w));
        }
    }
}
