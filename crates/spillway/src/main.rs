//! The `spillway` command line. See DESIGN.md "Command line": the flags
//! here are a contract that scripts and tests rely on.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use spillway::config::{self, Config, Global, QueueRoute, Route, Spill, StreamRoute};
use spillway::endpoint::Endpoint;
use spillway::logging::{self, LogFormat};
use spillway::units::{parse_duration, ByteSize};
use spillway_codec::Framing;
use spillway_net::balance::Balance;
use spillway_spool::{Durability, WhenFull};
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
}

#[derive(clap::Args)]
struct RelayArgs {
    /// Address to accept clients on (HOST:PORT).
    #[arg(long)]
    listen: String,
    /// Upstream address (HOST:PORT); repeat for a pool.
    #[arg(long = "to", required = true)]
    to: Vec<String>,
    #[arg(long, default_value = "round-robin", value_parser = parse_balance)]
    balance: Balance,
    /// Spill the overflow of slow directions to temporary files in DIR.
    #[arg(long)]
    spill_dir: Option<PathBuf>,
    /// Spill bound per connection.
    #[arg(long, default_value = "1GiB")]
    max_spill: ByteSize,
    /// Spill bound for the whole process.
    #[arg(long, default_value = "8GiB")]
    max_spill_total: ByteSize,
    /// User-space buffer per direction (spill mode and the copy fallback).
    #[arg(long, default_value = "64KiB")]
    buffer: ByteSize,
    /// Kernel pipe per direction in splice mode (used only while bytes are in flight).
    #[arg(long, default_value = "1MiB")]
    pipe_size: ByteSize,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Distinct upstreams tried per client connection.
    #[arg(long, default_value_t = config::defaults::CONNECT_TRIES)]
    connect_tries: u32,
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    idle_timeout: Duration,
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    half_close_timeout: Duration,
    #[arg(long, default_value_t = config::defaults::MAX_CONNECTIONS)]
    max_connections: usize,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
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
    },
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
    #[arg(long, default_value = "lines", value_parser = parse_framing)]
    framing: Framing,
    /// Largest message, framing included.
    #[arg(long, default_value = "1MiB")]
    max_message: ByteSize,
    /// Memory tier size; 0 writes every message to disk first.
    #[arg(long, default_value = "64MiB")]
    memory: ByteSize,
    /// Bound on the disk tier (0 = unbounded).
    #[arg(long, default_value = "0")]
    max_disk: ByteSize,
    #[arg(long, default_value = "block", value_parser = config::parse_when_full)]
    when_full: WhenFull,
    /// always, never, or the longest time between fsyncs (e.g. 100ms).
    #[arg(long, default_value = "100ms", value_parser = config::parse_fsync)]
    fsync: Durability,
    #[arg(long, default_value = "64MiB")]
    segment_size: ByteSize,
    /// After a consumer reset, re-send this many bytes of recently delivered
    /// messages (duplicates instead of loss).
    #[arg(long, default_value = "256KiB")]
    redeliver_on_reset: ByteSize,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
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
    fn into_config(self) -> Result<Config, String> {
        let mut q = QueueRoute::new("queue", self.from, self.to, self.spool);
        q.framing = self.framing;
        q.max_message = self.max_message.bytes();
        q.memory = self.memory.bytes();
        q.max_disk = self.max_disk.bytes();
        q.when_full = self.when_full;
        q.fsync = self.fsync;
        q.segment_size = self.segment_size.bytes();
        q.redeliver_on_reset = self.redeliver_on_reset.bytes();
        q.connect_timeout = self.connect_timeout;
        config::validate_queue(&q).map_err(|e| format!("--{}", e.replace('_', "-")))?;
        if self.drain_timeout.is_zero() {
            return Err("--drain-timeout must be greater than zero".into());
        }
        if let Some(a) = &self.admin {
            config::check_host_port(a).map_err(|e| format!("--admin: {e}"))?;
        }
        Ok(Config {
            global: Global {
                drain_timeout: self.drain_timeout,
                admin: self.admin,
                ..Global::default()
            },
            routes: vec![Route::Queue(q)],
        })
    }
}

impl RelayArgs {
    fn into_config(self) -> Result<Config, String> {
        config::check_host_port(&self.listen).map_err(|e| format!("--listen: {e}"))?;
        for t in &self.to {
            config::check_host_port(t).map_err(|e| format!("--to: {e}"))?;
        }
        if let Some(a) = &self.admin {
            config::check_host_port(a).map_err(|e| format!("--admin: {e}"))?;
        }
        let mut route = StreamRoute::new("relay", self.listen, self.to);
        route.balance = self.balance;
        route.connect_timeout = self.connect_timeout;
        route.connect_tries = self.connect_tries;
        route.idle_timeout = self.idle_timeout;
        route.half_close_timeout = self.half_close_timeout;
        route.max_connections = self.max_connections;
        route.buffer = usize::try_from(self.buffer.bytes()).map_err(|_| "--buffer too large")?;
        route.pipe_size =
            usize::try_from(self.pipe_size.bytes()).map_err(|_| "--pipe-size too large")?;
        route.spill = self.spill_dir.map(|dir| Spill {
            dir,
            max_per_connection: self.max_spill.bytes(),
        });
        config::validate_stream(&route).map_err(|e| format!("--{}", e.replace('_', "-")))?;
        if self.drain_timeout.is_zero() {
            return Err("--drain-timeout must be greater than zero".into());
        }
        Ok(Config {
            global: Global {
                max_spill_total: self.max_spill_total.bytes(),
                drain_timeout: self.drain_timeout,
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
        Command::Spool { command } => {
            let r = match command {
                SpoolCommand::Inspect { dir } => {
                    spillway::spool_tools::inspect(&dir).map(|()| true)
                }
                SpoolCommand::Verify { dir } => spillway::spool_tools::verify(&dir),
                SpoolCommand::Dump { dir, from, limit } => {
                    spillway::spool_tools::dump(&dir, from, limit).map(|()| true)
                }
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
