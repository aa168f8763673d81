//! `/status`: a JSON snapshot for people and scripts (`curl … | jq`).
//! Metrics are the interface for monitoring; this is for looking.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use spillway_net::breaker::Overflow;
use spillway_net::classify::ErrorClass;

use crate::state::{AppState, LiveKind, LiveRoute, ReloadResult};
use crate::stream::Direction;

/// Peers listed per queue route (the oldest); `peers_total` counts all.
pub const MAX_PEERS_LISTED: usize = 100;

/// A route's closes numbered after `after`.
pub fn closes_after(r: &LiveRoute, after: u64) -> Value {
    match &r.kind {
        LiveKind::Stream(rx) => rx.borrow().stats().recent_closes.render(after),
        LiveKind::Queue(q) => q.stats().recent_closes.render(after),
    }
}

pub fn render(state: &AppState) -> Value {
    let routes: Vec<Value> = state.routes().iter().map(|r| route(r)).collect();
    let last = state.last_reload();
    let reloads = json!({
        "success": state.reloads(ReloadResult::Success),
        "failure": state.reloads(ReloadResult::Failure),
        "last_result": last.map(|(r, _)| r.as_str()),
        "last_at": last.map(|(_, t)| t),
        "last_success_at": Some(state.last_reload_success()).filter(|&t| t > 0),
    });
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ready": state.ready(),
        "draining": state.draining(),
        "config": state.config_path().map(|p| p.display().to_string()),
        "spill_bytes": state.spill().used(),
        "peer_memory_bytes": state.peer_memory().used(),
        "reloads": reloads,
        "routes": routes,
    })
}

fn route(r: &LiveRoute) -> Value {
    let listeners: Vec<Value> = r
        .listeners
        .iter()
        .map(|(role, addr)| json!({"role": role, "address": addr.to_string()}))
        .collect();
    let mut v = json!({
        "name": r.name,
        "mode": r.mode(),
        "state": r.state().as_str(),
        "listeners": listeners,
    });
    let detail = match &r.kind {
        LiveKind::Stream(rx) => {
            let srv = rx.borrow().clone();
            let st = srv.stats();
            let upstreams: Vec<Value> = srv
                .upstreams()
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let load = srv.balancer().load(i);
                    let failures: serde_json::Map<String, Value> = ErrorClass::ALL
                        .iter()
                        .map(|&c| (c.as_str().to_string(), json!(u.connect_failures(c))))
                        .collect();
                    let rejections: serde_json::Map<String, Value> = Overflow::ALL
                        .iter()
                        .map(|&k| (k.as_str().to_string(), json!(u.breaker_rejections(k))))
                        .collect();
                    json!({
                        "address": u.address(),
                        "active": load.map_or(0, |l| l.active()),
                        "picked": load.map_or(0, |l| l.picked()),
                        "healthy": u.is_healthy(),
                        "ejected": u.is_ejected(),
                        "ejections": u.ejections(),
                        "pending_connects": u.pending(),
                        "connect_attempts": u.connect_attempts(),
                        "connect_failures": failures,
                        "breaker_rejections": rejections,
                        "last_check": u.last_check(),
                    })
                })
                .collect();
            json!({
                "balance": srv.route().balance.to_string(),
                "connections_active": st.active.load(Ordering::Relaxed),
                "connections_total": st.accepted.load(Ordering::Relaxed),
                "bytes_in": st.bytes(Direction::ClientToUpstream),
                "bytes_out": st.bytes(Direction::UpstreamToClient),
                "spilled_bytes": st.spilled_bytes.load(Ordering::Relaxed),
                "upstreams": upstreams,
            })
        }
        LiveKind::Queue(q) => {
            let st = q.stats();
            let sp = q.spool().stats();
            let (page, peers_total) = q.peers_page(MAX_PEERS_LISTED);
            let peers: Vec<Value> = page
                .iter()
                .map(|p| {
                    json!({
                        "role": p.role,
                        "address": p.addr.to_string(),
                        "since": p.since,
                        "bytes": p.bytes.load(Ordering::Relaxed),
                        "unacked": p.unacked.load(Ordering::Relaxed),
                    })
                })
                .collect();
            json!({
                "from": q.route().from.to_string(),
                "to": q.route().to.to_string(),
                "spool": q.route().spool.display().to_string(),
                "peers": peers,
                "peers_total": peers_total,
                "groups": q
                    .group_lags()
                    .into_iter()
                    .map(|(name, lag)| json!({ "name": name, "lag": lag }))
                    .collect::<Vec<Value>>(),
                "max_disk": q.route().max_disk,
                "blocked_producers": q.blocked_producers(),
                "no_consumer_since": q.no_consumer_since(),
                "producers": st.producers.load(Ordering::Relaxed),
                "consumers": st.consumers.load(Ordering::Relaxed),
                "messages_in": st.messages_in.load(Ordering::Relaxed),
                "messages_delivered": st.messages_delivered.load(Ordering::Relaxed),
                "depth": {
                    "messages": sp.mem_msgs + sp.disk_msgs,
                    "memory_messages": sp.mem_msgs,
                    "memory_bytes": sp.mem_bytes,
                    "disk_messages": sp.disk_msgs,
                    "disk_bytes": sp.disk_bytes,
                    "segments": sp.segments,
                },
                "oldest_age_seconds": sp.oldest_age.map(|d| d.as_secs_f64()),
                "next_seq": sp.next_seq,
                "ack_floor": sp.ack_floor,
                "poisoned": sp.poisoned,
                "jetstream": q.jetstream_status(),
            })
        }
    };
    if let (Some(obj), Value::Object(d)) = (v.as_object_mut(), detail) {
        obj.extend(d);
    }
    v
}
