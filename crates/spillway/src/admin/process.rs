//! The process-wide metric families: build, readiness, reloads, and the
//! budgets every route shares (spill files, peer memory), read from
//! [`AppState`] at scrape time.

use std::sync::Arc;

use crate::metrics::{Family, Registry, Scrape, Source};
use crate::state::{AppState, ReloadResult};

static BUILD_INFO: Family = Family::gauge("spillway_build_info", "Build information (always 1).");
static READY: Family = Family::gauge(
    "spillway_ready",
    "1 when every configured route is serving and the process is not draining.",
);
static DRAINING: Family = Family::gauge(
    "spillway_draining",
    "1 once shutdown started (SIGTERM/SIGINT).",
);
static CONFIG_RELOADS: Family = Family::counter(
    "spillway_config_reloads",
    "Config reloads (SIGHUP) by result.",
);
static LAST_RELOAD_SUCCESS: Family = Family::gauge(
    "spillway_config_last_reload_success_timestamp_seconds",
    "Unix time of the last successful config load.",
);
static SPILL_BYTES: Family = Family::gauge(
    "spillway_spill_bytes",
    "Bytes in stream-mode spill files, all connections.",
);
static SPILL_LIMIT_BYTES: Family = Family::gauge(
    "spillway_spill_limit_bytes",
    "Bound on spill-file bytes (max_spill_total).",
);
static PEER_MEMORY_BYTES: Family = Family::gauge(
    "spillway_peer_memory_bytes",
    "Bytes queue routes hold for peers: producers' read buffers and partial messages, consumers' windows.",
);
static PEER_MEMORY_LIMIT_BYTES: Family = Family::gauge(
    "spillway_peer_memory_limit_bytes",
    "Bound on peer memory (global peer_memory).",
);
static PEER_MEMORY_REFUSALS: Family = Family::counter(
    "spillway_peer_memory_refusals",
    "Times a connection was refused more peer memory (a producer then waits unread, a consumer takes nothing more until acknowledgements come in).",
);

/// The process-wide families, in `/metrics` order.
pub static PROCESS_FAMILIES: [&Family; 10] = [
    &BUILD_INFO,
    &READY,
    &DRAINING,
    &CONFIG_RELOADS,
    &LAST_RELOAD_SUCCESS,
    &SPILL_BYTES,
    &SPILL_LIMIT_BYTES,
    &PEER_MEMORY_BYTES,
    &PEER_MEMORY_LIMIT_BYTES,
    &PEER_MEMORY_REFUSALS,
];

/// Declares and fills the process-wide families: build, readiness,
/// reloads, the budgets every route shares.
pub fn register(registry: &mut Registry, state: Arc<AppState>) {
    registry.declare(&PROCESS_FAMILIES);
    registry.register(Process { state });
}

struct Process {
    state: Arc<AppState>,
}

impl Source for Process {
    fn collect(&self, s: &mut Scrape) {
        let state = &self.state;
        s.gauge(&BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1);
        s.gauge(&READY, &[], u64::from(state.ready()));
        s.gauge(&DRAINING, &[], u64::from(state.draining()));
        for r in ReloadResult::ALL {
            s.counter(&CONFIG_RELOADS, &[("result", r.as_str())], state.reloads(r));
        }
        s.gauge(&LAST_RELOAD_SUCCESS, &[], state.last_reload_success());
        s.gauge(&SPILL_BYTES, &[], state.spill().used());
        s.gauge(&SPILL_LIMIT_BYTES, &[], state.spill().limit());
        s.gauge(&PEER_MEMORY_BYTES, &[], state.peer_memory().used());
        s.gauge(&PEER_MEMORY_LIMIT_BYTES, &[], state.peer_memory().limit());
        s.counter(&PEER_MEMORY_REFUSALS, &[], state.peer_memory().refused());
    }
}
