//! The NATS test harness itself (`tests/common/nats.rs`) against a real
//! nats-server: a three-node JetStream cluster whose stream leader is
//! killed with SIGKILL and restarted, and a single server killed and
//! restarted. Every message published before, during and after is checked
//! in the stream, in order, once. No timing asserts: every wait is bounded.
//!
//! Needs nats-server (`scripts/install-test-deps.sh`, or
//! `SPILLWAY_NATS_SERVER`).

mod common;

use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use common::nats::{
    base64_decode, decode, Decoded, Frame, NatsCluster, NatsConn, RequestError, READY_TIMEOUT,
};
use serde_json::json;

const STREAM: &str = "H";

fn payload(i: u64) -> Vec<u8> {
    format!("message {i:06} of the harness test").into_bytes()
}

/// Runs `f` until it succeeds, retrying what [`RequestError::is_transient`]
/// calls transient (an election, a publish in flight) until READY_TIMEOUT.
fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T, RequestError>) -> T {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                // Backoff between attempts of a bounded retry loop.
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

fn connect(cluster: &NatsCluster, node: usize) -> NatsConn {
    let url = cluster.url(node);
    retry(&format!("connect {url}"), || NatsConn::connect(&url))
}

/// Publishes message `i` to subject `h.<i>` for every `i` in `range`
/// through node `via`, each with `Nats-Msg-Id: m<i>` so that a retried
/// publish is stored once; the stream is empty before message 1, so message
/// `i` must be acknowledged at sequence `i`.
fn publish(cluster: &NatsCluster, via: usize, range: RangeInclusive<u64>) {
    let mut conn = connect(cluster, via);
    for i in range {
        let (subject, id) = (format!("h.{i}"), format!("m{i}"));
        let ack = retry(&format!("publish {i} via {}", cluster.name(via)), || {
            conn.publish(&subject, Some(&id), &payload(i))
        });
        assert_eq!(ack["stream"], STREAM, "{ack}");
        assert_eq!(ack["seq"], i, "message {i} stored out of place: {ack}");
    }
}

/// The stream, read through node `via`, holds messages 1..=n and nothing
/// else: each at its sequence, on its subject, with its payload.
fn assert_stream_holds(cluster: &NatsCluster, via: usize, n: u64) {
    let mut conn = connect(cluster, via);
    let info = retry("stream info", || conn.stream_info(STREAM));
    let state = &info["state"];
    assert_eq!(state["messages"], n, "{state}");
    assert_eq!(state["first_seq"], 1, "{state}");
    assert_eq!(state["last_seq"], n, "{state}");
    for seq in 1..=n {
        let (subject, data) = retry(&format!("get {seq}"), || conn.stream_msg(STREAM, seq));
        assert_eq!(subject, format!("h.{seq}"));
        assert_eq!(
            data,
            payload(seq),
            "message {seq}: {}",
            String::from_utf8_lossy(&data)
        );
    }
}

/// Waits (bounded) until node `node`'s own replica of the stream holds
/// `n` messages, as its `/jsz` says.
fn wait_replica_holds(cluster: &NatsCluster, node: usize, n: u64) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let state = cluster
            .stream_detail(node, STREAM)
            .map(|d| d["state"].clone());
        if let Some(s) = &state {
            if s["messages"] == n && s["last_seq"] == n {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}'s replica never held {n} messages: {state:?}",
            cluster.name(node)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_nodes_keep_every_message_across_a_leader_kill_and_restart() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = NatsCluster::start(dir.path(), 3);
    cluster.wait_ready(READY_TIMEOUT);
    cluster.assert_sync_always();
    assert!(cluster.meta_leader().is_some());
    assert_eq!(cluster.client_urls().len(), 3);
    eprintln!("cluster ready after {:?}", t0.elapsed());

    let mut conn = connect(&cluster, 0);
    let created = retry("create stream", || {
        conn.create_stream(&json!({
            "name": STREAM, "subjects": ["h.>"], "num_replicas": 3, "storage": "file",
        }))
    });
    assert_eq!(created["config"]["num_replicas"], 3, "{created}");
    let leader = cluster.wait_stream_leader(STREAM, READY_TIMEOUT, |_| true);
    // The monitoring endpoint and the stream API agree on the leader.
    let info = retry("stream info", || conn.stream_info(STREAM));
    assert_eq!(info["cluster"]["leader"], cluster.name(leader), "{info}");

    // Through a follower: the publish is forwarded to the leader.
    publish(&cluster, (leader + 1) % 3, 1..=10);

    // An R1 stream is reported by its one node only; it leads alone.
    let r1 = retry("create R1 stream", || {
        conn.create_stream(&json!({ "name": "R1", "subjects": ["r1"], "num_replicas": 1 }))
    });
    let r1_leader = cluster.wait_stream_leader("R1", READY_TIMEOUT, |_| true);
    assert_eq!(r1["cluster"]["leader"], cluster.name(r1_leader), "{r1}");

    cluster.kill9(leader);
    assert!(!cluster.is_running(leader));
    let killed = Instant::now();
    let new_leader = cluster.wait_stream_leader(STREAM, READY_TIMEOUT, |n| n != leader);
    assert!(cluster.is_running(new_leader));
    eprintln!(
        "{} killed; {} leads after {:?}",
        cluster.name(leader),
        cluster.name(new_leader),
        killed.elapsed()
    );
    publish(&cluster, new_leader, 11..=20);

    cluster.restart(leader);
    assert!(cluster.is_running(leader));
    cluster.wait_ready(READY_TIMEOUT);
    wait_replica_holds(&cluster, leader, 20);
    assert_stream_holds(&cluster, leader, 20);
    cluster.assert_sync_always();
    eprintln!("restarted node caught up; {:?} in all", t0.elapsed());

    // Without a majority nobody leads, although the leader left alone still
    // names itself (until it notices, seconds later).
    let leader = cluster.wait_stream_leader(STREAM, READY_TIMEOUT, |_| true);
    cluster.kill9((leader + 1) % 3);
    cluster.kill9((leader + 2) % 3);
    assert_eq!(cluster.running(), vec![leader]);
    let view = cluster.stream_detail(leader, STREAM).expect("the stream");
    eprintln!("the lone leader's view: {}", view["cluster"]);
    assert_eq!(cluster.stream_leader(STREAM), None);
    assert_eq!(cluster.meta_leader(), None);
}

#[test]
fn one_node_keeps_every_message_across_kill9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = NatsCluster::start(dir.path(), 1);
    cluster.wait_ready(READY_TIMEOUT);
    cluster.assert_sync_always();
    assert_eq!(cluster.meta_leader(), Some(0));

    let mut conn = connect(&cluster, 0);
    retry("create stream", || {
        conn.create_stream(&json!({
            "name": STREAM, "subjects": ["h.>"], "num_replicas": 1, "storage": "file",
        }))
    });
    assert_eq!(
        cluster.wait_stream_leader(STREAM, READY_TIMEOUT, |_| true),
        0
    );
    publish(&cluster, 0, 1..=10);

    cluster.kill9(0);
    assert!(!cluster.is_running(0));
    assert_eq!(cluster.stream_leader(STREAM), None);
    cluster.restart(0);
    cluster.wait_ready(READY_TIMEOUT);
    publish(&cluster, 0, 11..=15);
    assert_stream_holds(&cluster, 0, 15);
}

// The raw client's decoder and base64: pure functions over bytes.

#[test]
fn decoder_frames_need_more_and_invalid() {
    let msg = b"MSG _R.1 1 11\r\nhello world\r\n";
    let want = Frame::Msg {
        subject: "_R.1".into(),
        status: None,
        payload: b"hello world".to_vec(),
    };
    assert_eq!(decode(msg), Decoded::Frame(want, msg.len()));
    for cut in 0..msg.len() {
        assert_eq!(decode(&msg[..cut]), Decoded::NeedMore, "cut at {cut}");
    }
    // No responders: a 503 status line and no payload.
    let hmsg = b"HMSG _R.2 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\nPING\r\n";
    match decode(hmsg) {
        Decoded::Frame(
            Frame::Msg {
                status, payload, ..
            },
            n,
        ) => {
            assert_eq!((status, payload.len(), n), (Some(503), 0, hmsg.len() - 6));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(decode(b"PING\r\n"), Decoded::Frame(Frame::Ping, 6));
    assert_eq!(decode(b"PONG\r\n"), Decoded::Frame(Frame::Pong, 6));
    assert!(matches!(decode(b"BOGUS x\r\n"), Decoded::Invalid(_)));
    assert!(matches!(decode(b"MSG a 1 x\r\n"), Decoded::Invalid(_)));
    assert!(matches!(decode(b"MSG a 1 2\r\nabXY"), Decoded::Invalid(_)));
}

#[test]
fn base64_decodes_padded_and_refuses_other_characters() {
    assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
    assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
    assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
    assert_eq!(base64_decode("+/8=").as_deref(), Some(&[0xfb, 0xff][..]));
    assert_eq!(base64_decode("a-b_"), None);
}
