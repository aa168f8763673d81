//! spillway: a TCP relay that never lets a slow reader hurt a fast writer.
//!
//! The binary (`main.rs`) parses the command line; everything else lives
//! here so integration tests can start routes on `127.0.0.1:0` in-process.

#![forbid(unsafe_code)]

pub mod accept;
pub mod admin;
pub mod app;
pub mod config;
pub mod counters;
pub mod endpoint;
pub mod history;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod queue;
pub mod ready_file;
pub mod route_metrics;
pub mod spool_tools;
pub mod state;
pub mod status_cli;
pub mod stream;
pub mod units;
