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
//!
//! One job per file: [`defaults`] (every default the CLI and the file
//! share), [`model`] (the validated types, which the command line builds
//! directly too), `raw` (the serde structs), `convert` (raw → model: the
//! error positions, `[global]`, shared helpers), `route` (one `[[route]]`
//! table), `tls` (the TLS tables), `policy` (health checks, outlier
//! ejection, circuit breakers, backoff), `jetstream` (`[route.jetstream]`;
//! its checks, shared with the command line, are in [`model`]).

mod convert;
pub mod defaults;
mod jetstream;
pub mod model;
mod policy;
mod raw;
mod route;
mod tls;

pub use convert::{load, parse, ConfigError};
pub use model::{
    parse_fsync, parse_when_full, validate_queue, validate_stream, when_full_name, Config, Fsync,
    Global, JetStream, JetStreamAuth, Protocol, QueueRoute, Route, Spill, StreamRoute, Timeouts,
};
pub use tls::EndpointTls;
