//! The client against a real relay (the `spillway` binary: see
//! `common/mod.rs` for how it is found). Every wait is bounded.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{dump_dead, within, Muting, Relay, LIMIT};
use futures_util::StreamExt;
use spillway_client::{
    ClientError, Consumer, ConsumerOptions, Encoding, Message, Producer, ProducerOptions,
};

const SEC: Duration = Duration::from_secs(1);

fn consumer_options(window: u32, encoding: Encoding) -> ConsumerOptions {
    ConsumerOptions {
        window,
        encoding,
        ..ConsumerOptions::default()
    }
}

/// The next message, within 10 s.
async fn next(c: &mut Consumer) -> Message {
    match within(10 * SEC, "the next message", c.recv()).await {
        Some(Ok(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Nothing arrives within `wait`.
async fn quiet(c: &mut Consumer, wait: Duration) {
    if let Ok(got) = tokio::time::timeout(wait, c.recv()).await {
        panic!("expected nothing, got {got:?}");
    }
}

fn text(m: &Message) -> String {
    String::from_utf8(m.body.to_vec()).expect("UTF-8 body")
}

/// Sends `bodies` with confirms (unnamed) and waits for the confirm.
async fn produce(relay: &Relay, bodies: impl IntoIterator<Item = String>) {
    let p = Producer::connect(relay.source(), ProducerOptions::default())
        .await
        .expect("producer");
    let mut n = 0;
    for b in bodies {
        p.send(b).await.expect("send");
        n += 1;
    }
    within(LIMIT, "the confirm", p.flush())
        .await
        .expect("flush");
    assert_eq!(p.confirmed(), n);
    assert_eq!(p.unconfirmed(), 0);
}

/// Consumes until `want` messages came, acknowledging each; their bodies.
async fn drain(relay: &Relay, want: usize) -> Vec<String> {
    let mut c = Consumer::connect(relay.sink(), ConsumerOptions::default())
        .await
        .expect("consumer");
    let mut got = Vec::new();
    while got.len() < want {
        let m = next(&mut c).await;
        got.push(text(&m));
        m.ack().expect("ack");
    }
    quiet(&mut c, Duration::from_millis(300)).await;
    within(LIMIT, "close", c.close()).await;
    got
}

async fn produce_then_consume_in_order(encoding: Encoding) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let relay = Relay::start(&spool, &[]);
    let n = 2000;
    let p = Producer::connect(
        relay.source(),
        ProducerOptions {
            encoding,
            ..ProducerOptions::default()
        },
    )
    .await
    .expect("producer");
    for i in 0..n {
        p.send(format!("m{i}")).await.expect("send");
    }
    within(LIMIT, "the confirm", p.flush())
        .await
        .expect("flush");
    assert_eq!(p.confirmed(), n);
    relay
        .wait_metric("spillway_messages_in_total", &[], |x| x == n as f64)
        .await;

    let mut c = Consumer::connect(relay.sink(), consumer_options(256, encoding))
        .await
        .expect("consumer");
    assert_eq!(c.welcome().max_deliveries, 5);
    let mut last_seq = None;
    for i in 0..n {
        let m = next(&mut c).await;
        assert_eq!((text(&m), m.attempt), (format!("m{i}"), 1));
        assert!(last_seq < Some(m.seq), "seqs increase");
        last_seq = Some(m.seq);
        m.ack().expect("ack");
    }
    // The acks reached the relay: everything delivered, nothing held.
    relay
        .wait_metric("spillway_messages_delivered_total", &[], |x| x == n as f64)
        .await;
    relay
        .wait_metric("spillway_unacked_messages", &[], |x| x == 0.0)
        .await;
    within(LIMIT, "close", c.close()).await;
    // Acknowledged means gone: the next consumer gets nothing.
    let mut c = Consumer::connect(relay.sink(), consumer_options(256, encoding))
        .await
        .expect("consumer");
    quiet(&mut c, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_with_confirms_then_consumed_in_order_binary() {
    produce_then_consume_in_order(Encoding::Binary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_with_confirms_then_consumed_in_order_text() {
    produce_then_consume_in_order(Encoding::Text).await;
}

/// Bodies of any bytes (a length-prefixed route), small ones and ones
/// larger than what the producer copies, both ways, both encodings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_bytes_small_and_large_go_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&dir.path().join("spool"), &["--framing", "len:u32be"]);
    let bodies: Vec<Bytes> = (0..40u32)
        .map(|i| {
            let len = [0, 1, 511, 512, 4096, 200_000][i as usize % 6];
            Bytes::from(
                (0..len)
                    .map(|j| (j as u32 * 31 + i) as u8)
                    .collect::<Vec<u8>>(),
            )
        })
        .collect();
    for encoding in [Encoding::Binary, Encoding::Text] {
        let p = Producer::connect(
            relay.source(),
            ProducerOptions {
                encoding,
                ..ProducerOptions::default()
            },
        )
        .await
        .expect("producer");
        for b in &bodies {
            p.send(b.clone()).await.expect("send");
        }
        within(LIMIT, "the confirm", p.flush())
            .await
            .expect("flush");
        let mut c = Consumer::connect(relay.sink(), consumer_options(8, encoding))
            .await
            .expect("consumer");
        for (i, b) in bodies.iter().enumerate() {
            let m = next(&mut c).await;
            assert!(m.body == *b, "body {i} of {} bytes differs", b.len());
            m.ack().expect("ack");
        }
        within(LIMIT, "close", c.close()).await;
    }
}

/// Acks given out of order, from other tasks while the stream is polled,
/// become exact ranges: every message leaves the queue, none is
/// acknowledged unseen, nothing comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_out_of_order_from_other_tasks_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&dir.path().join("spool"), &[]);
    let n = 500;
    produce(&relay, (0..n).map(|i| format!("m{i}"))).await;
    let mut c = Consumer::connect(relay.sink(), consumer_options(64, Encoding::Binary))
        .await
        .expect("consumer");
    let mut tasks = Vec::new();
    let mut seen = BTreeSet::new();
    for i in 0..n {
        let m = next(&mut c).await;
        assert!(seen.insert(m.seq), "seq {} twice", m.seq);
        assert_eq!(m.attempt, 1);
        // Scrambled: some at once, some after others.
        let delay = Duration::from_millis((i * 7919 % 13) as u64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            m.ack()
        }));
    }
    for t in tasks {
        t.await.expect("ack task").expect("ack");
    }
    relay
        .wait_metric("spillway_messages_delivered_total", &[], |x| x == n as f64)
        .await;
    relay
        .wait_metric("spillway_unacked_messages", &[], |x| x == 0.0)
        .await;
    quiet(&mut c, Duration::from_millis(300)).await;
    drop(c);
    let mut c = Consumer::connect(relay.sink(), ConsumerOptions::default())
        .await
        .expect("consumer");
    quiet(&mut c, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nak_redelivers_after_its_delay_as_attempt_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&dir.path().join("spool"), &[]);
    produce(&relay, ["a", "b"].map(String::from)).await;
    let mut c = Consumer::connect(relay.sink(), consumer_options(1, Encoding::Binary))
        .await
        .expect("consumer");
    let a = next(&mut c).await;
    let (seq, t0) = (a.seq, Instant::now());
    assert_eq!((text(&a), a.attempt), ("a".into(), 1));
    a.nak(Duration::from_millis(400)).expect("nak");
    let b = next(&mut c).await;
    assert_eq!((text(&b), b.attempt), ("b".into(), 1));
    b.ack().expect("ack");
    let again = next(&mut c).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        (text(&again), again.seq, again.attempt),
        ("a".into(), seq, 2)
    );
    again.ack().expect("ack");
    relay
        .wait_metric("spillway_naks_total", &[], |x| x == 1.0)
        .await;
}

/// A message dropped without an ack, NAK or TERM is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_dropped_unsettled_is_given_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&dir.path().join("spool"), &[]);
    produce(&relay, ["x".to_string()]).await;
    let mut c = Consumer::connect(relay.sink(), ConsumerOptions::default())
        .await
        .expect("consumer");
    let m = next(&mut c).await;
    let seq = m.seq;
    drop(m);
    let again = next(&mut c).await;
    assert_eq!((again.seq, again.attempt), (seq, 2));
    again.ack().expect("ack");
}

/// TERM dead-letters at once, with its reason: `spool dump --dead` shows
/// it (JSON lines) once the relay has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn term_dead_letters_the_message_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let mut relay = Relay::start(&spool, &[]);
    produce(&relay, ["bad-json", "good"].map(String::from)).await;
    let mut c = Consumer::connect(relay.sink(), ConsumerOptions::default())
        .await
        .expect("consumer");
    let bad = next(&mut c).await;
    let bad_seq = bad.seq;
    bad.term("cannot parse: line 1\nat 3").expect("term");
    let good = next(&mut c).await;
    assert_eq!(text(&good), "good");
    good.ack().expect("ack");
    relay
        .wait_metric("spillway_dead_letters_total", &[("reason", "term")], |x| {
            x == 1.0
        })
        .await;
    relay
        .wait_metric("spillway_messages_delivered_total", &[], |x| x == 1.0)
        .await;
    within(LIMIT, "close", c.close()).await;
    relay.signal("TERM");
    relay.wait_exit();
    let dead = dump_dead(&spool);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["seq"].as_u64(), Some(bad_seq));
    assert_eq!(dead[0]["reason"], "term");
    assert_eq!(
        dead[0]["text"], "cannot parse: line 1 at 3",
        "newline made a space"
    );
    assert_eq!(dead[0]["attempts"], 1);
    assert_eq!(
        dead[0]["message"], "bad-json\n",
        "as stored, in the route's framing"
    );
}

/// A consumer dropped while the application holds its messages: they go
/// back, and the next consumer gets them as attempt 2, in order. The
/// dropped consumer's messages can no longer be acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_consumers_messages_go_to_the_next_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&dir.path().join("spool"), &[]);
    produce(&relay, (0..6).map(|i| format!("m{i}"))).await;
    let mut a = Consumer::connect(relay.sink(), consumer_options(5, Encoding::Binary))
        .await
        .expect("consumer");
    let first = next(&mut a).await;
    first.ack().expect("ack");
    let held: Vec<Message> = [next(&mut a).await, next(&mut a).await, next(&mut a).await].into();
    assert_eq!(
        held.iter().map(text).collect::<Vec<_>>(),
        ["m1", "m2", "m3"]
    );
    // m4 and m5 arrive too (window 5), and are never taken from the
    // stream.
    relay
        .wait_metric("spillway_unacked_messages", &[], |x| x == 5.0)
        .await;
    drop(a);
    // Everything it held went back (the ones still in its buffer may be
    // given back by a NAK its task sends as it drops them, or by the
    // close: either way nothing stays with it).
    relay
        .wait_metric("spillway_unacked_messages", &[], |x| x == 0.0)
        .await;
    let mut b = Consumer::connect(relay.sink(), consumer_options(5, Encoding::Text))
        .await
        .expect("consumer");
    for want in ["m1", "m2", "m3", "m4", "m5"] {
        let m = next(&mut b).await;
        assert_eq!((text(&m).as_str(), m.attempt), (want, 2));
        m.ack().expect("ack");
    }
    for m in held {
        assert!(matches!(m.ack(), Err(ClientError::Closed)));
    }
    relay
        .wait_metric("spillway_messages_delivered_total", &[], |x| x == 6.0)
        .await;
}

/// PROG keeps a message held past a 1 s ack timeout; the connection
/// stays up and takes the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_keeps_a_message_past_the_ack_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&dir.path().join("spool"), &["--ack-timeout", "1s"]);
    produce(&relay, ["slow".to_string()]).await;
    let mut c = Consumer::connect(relay.sink(), ConsumerOptions::default())
        .await
        .expect("consumer");
    assert_eq!(c.welcome().ack_timeout_ms, 1000);
    let m = next(&mut c).await;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(2500) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        m.progress().expect("progress");
    }
    m.ack().expect("ack");
    relay
        .wait_metric("spillway_messages_delivered_total", &[], |x| x == 1.0)
        .await;
    assert_eq!(relay.metric("spillway_ack_timeouts_total", &[]), Some(0.0));
    produce(&relay, ["next".to_string()]).await;
    let m = next(&mut c).await;
    assert_eq!((text(&m), m.attempt), ("next".into(), 1), "same connection");
    m.ack().expect("ack");
}

/// SIGTERM: the relay says BYE; the stream ends only once the messages
/// held are settled, and those acks count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bye_ends_the_stream_once_nothing_is_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let mut relay = Relay::start(&spool, &["--drain-timeout", "15s"]);
    produce(&relay, (0..4).map(|i| format!("m{i}"))).await;
    let mut c = Consumer::connect(relay.sink(), consumer_options(3, Encoding::Binary))
        .await
        .expect("consumer");
    let held = [next(&mut c).await, next(&mut c).await, next(&mut c).await];
    relay.signal("TERM");
    // Held: the stream does not end.
    quiet(&mut c, Duration::from_millis(500)).await;
    let [m0, m1, m2] = held;
    m0.ack().expect("ack");
    m1.ack().expect("ack");
    quiet(&mut c, Duration::from_millis(200)).await;
    m2.ack().expect("ack");
    let end = within(10 * SEC, "the end of the stream", c.next()).await;
    assert!(end.is_none(), "{end:?}");
    relay.wait_exit();
    let relay = Relay::start(&spool, &[]);
    assert_eq!(
        drain(&relay, 1).await,
        ["m3"],
        "only the unsent one is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handshake_is_a_protocol_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&dir.path().join("spool"), &[]);
    let undeclared = ConsumerOptions {
        group: Some("billing".into()),
        ..ConsumerOptions::default()
    };
    match Consumer::connect(relay.sink(), undeclared).await {
        Err(ClientError::Protocol { code: 403, text }) => {
            assert!(text.contains("billing"), "{text}")
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    match Consumer::connect(relay.source(), ConsumerOptions::default()).await {
        Err(e) => assert_eq!(e.code(), Some(403), "{e}"),
        Ok(_) => panic!("a consumer on the producer side"),
    }
    match Producer::connect(relay.sink(), ProducerOptions::default()).await {
        Err(e) => assert_eq!(e.code(), Some(403), "{e}"),
        Ok(_) => panic!("a producer on the consumer side"),
    }
    // One connection per producer name.
    let named = ProducerOptions {
        name: Some("app-1".into()),
        ..ProducerOptions::default()
    };
    let _p = Producer::connect(relay.source(), named.clone())
        .await
        .expect("producer");
    match Producer::connect(relay.source(), named).await {
        Err(e) => assert_eq!(e.code(), Some(409), "{e}"),
        Ok(_) => panic!("the same name twice"),
    }
}

/// A named producer whose relay is SIGKILLed after storing messages whose
/// confirms the producer never got (a proxy drops them), and restarted on
/// the same spool on another port: `reconnect_to` resends them, the relay
/// answers DUP, and every message is in the queue exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_producer_resends_after_a_sigkill_and_each_message_is_queued_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let mut relay = Relay::start(&spool, &[]);
    let proxy = Muting::start(relay.source()).await;
    let p = Producer::connect(
        proxy.addr,
        ProducerOptions {
            name: Some("app-7".into()),
            ..ProducerOptions::default()
        },
    )
    .await
    .expect("producer");
    for i in 1..=300 {
        p.send(format!("m{i}")).await.expect("send");
    }
    within(LIMIT, "the confirm", p.flush())
        .await
        .expect("flush");
    proxy.mute();
    for i in 301..=600 {
        p.send(format!("m{i}")).await.expect("send");
    }
    relay
        .wait_metric("spillway_messages_in_total", &[], |x| x == 600.0)
        .await;
    // The relay records the producer's sequence just after counting the
    // messages in, before it confirms them; give it that moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.signal("KILL");
    relay.wait_exit();
    let e = within(LIMIT, "flush", p.flush())
        .await
        .expect_err("the relay is gone");
    assert!(e.is_retryable(), "{e}");
    assert_eq!(p.confirmed(), 300, "the confirms of 301..600 were dropped");
    assert_eq!(p.unconfirmed(), 300);
    assert!(p.send("refused").await.is_err(), "not queued while down");

    let relay = Relay::start(&spool, &[]);
    within(LIMIT, "reconnect", p.reconnect_to(relay.source()))
        .await
        .expect("reconnect");
    for i in 601..=700 {
        p.send(format!("m{i}")).await.expect("send");
    }
    within(LIMIT, "the confirm", p.flush())
        .await
        .expect("flush");
    assert_eq!(p.confirmed(), 700);
    assert_eq!(p.duplicates(), 300, "every resend recognised");
    let got = drain(&relay, 700).await;
    assert_eq!(got, (1..=700).map(|i| format!("m{i}")).collect::<Vec<_>>());
}

/// A reconnect that the relay refuses with 409 (the name still connected)
/// is retried until the name is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_refused_409_is_retried_until_the_name_is_free() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Relay::start(&dir.path().join("a"), &[]);
    let b = Relay::start(&dir.path().join("b"), &[]);
    let named = ProducerOptions {
        name: Some("app-9".into()),
        ..ProducerOptions::default()
    };
    let p = Producer::connect(a.source(), named.clone())
        .await
        .expect("producer");
    for i in 1..=10 {
        p.send(format!("m{i}")).await.expect("send");
    }
    within(LIMIT, "the confirm", p.flush())
        .await
        .expect("flush");
    // b has the name connected already, for 600 ms.
    let holder = Producer::connect(b.source(), named).await.expect("holder");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        drop(holder);
    });
    let t0 = Instant::now();
    within(LIMIT, "reconnect", p.reconnect_to(b.source()))
        .await
        .expect("reconnect after 409s");
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    release.await.expect("release");
    assert!(
        b.log_text().contains("is connected already"),
        "{}",
        b.log_text()
    );
    for i in 11..=20 {
        p.send(format!("m{i}")).await.expect("send");
    }
    within(LIMIT, "the confirm", p.flush())
        .await
        .expect("flush");
    let got = drain(&b, 10).await;
    assert_eq!(got, (11..=20).map(|i| format!("m{i}")).collect::<Vec<_>>());
}

/// A relay that dies fails the producer's flush (with an error worth a
/// retry), and `send` refuses rather than queue while it is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_to_a_dead_relay_fails_its_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = Relay::start(&dir.path().join("spool"), &[]);
    let p = Producer::connect(relay.source(), ProducerOptions::default())
        .await
        .expect("producer");
    // Stopped first, so that "x" is never confirmed (a relay that runs
    // can confirm it before the kill lands).
    relay.signal("STOP");
    p.send("x").await.expect("send");
    relay.signal("KILL");
    relay.wait_exit();
    let e = within(LIMIT, "flush", p.flush())
        .await
        .expect_err("dead relay");
    assert!(e.is_retryable(), "{e}");
    assert!(p.send("y").await.is_err());
    let e = within(LIMIT, "reconnect", p.reconnect())
        .await
        .expect_err("nothing listens");
    assert!(matches!(e, ClientError::Io(_)), "{e}");
    assert_eq!(p.unconfirmed(), 1, "kept for the next reconnect");
}

/// A named producer streaming when its relay is SIGKILLed, at a different
/// moment each trial; after a restart it reconnects and flushes. Every
/// confirmed message must be in the queue, and none twice.
///
/// Ignored because it is slow (20 trials, about 100 s): run it with
/// `--ignored`. It failed on the relay as of 08ec028 in about one trial
/// of 16 (the batch's pseq was recorded only after the batch's fsync; a
/// kill in between queued the resend again: 3,000 bodies twice, no DUP).
/// Since the relay records the pseq right after the batch's write, with
/// the spool sequence it ends at (see the relay's `queue/producers.rs`),
/// it passed 5 runs of 20 trials in a row. A kill between those two
/// writes can still duplicate a batch: the window is a syscall wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: 20 SIGKILL trials, about 100 s"]
async fn a_sigkill_mid_stream_never_queues_a_named_producers_message_twice() {
    for trial in 0..20u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("spool");
        let mut relay = Relay::start(&spool, &[]);
        let p = Producer::connect(
            relay.source(),
            ProducerOptions {
                name: Some("streamer".into()),
                ..ProducerOptions::default()
            },
        )
        .await
        .expect("producer");
        let sender = async {
            for i in 1..=400_000 {
                if p.send(format!("m{i}")).await.is_err() {
                    break;
                }
            }
        };
        let killer = async {
            tokio::time::sleep(Duration::from_millis(40 + trial * 23)).await;
            relay.signal("KILL");
        };
        tokio::join!(sender, killer);
        relay.wait_exit();
        let confirmed_before = p.confirmed();
        let relay = Relay::start(&spool, &[]);
        within(LIMIT, "reconnect", p.reconnect_to(relay.source()))
            .await
            .expect("reconnect");
        within(LIMIT, "flush", p.flush()).await.expect("flush");
        let remembered = relay
            .log_text()
            .lines()
            .find(|l| l.contains("ack producer connected"))
            .unwrap_or_default()
            .to_string();
        let confirmed = p.confirmed();
        let mut c = Consumer::connect(relay.sink(), consumer_options(4096, Encoding::Binary))
            .await
            .expect("consumer");
        let mut got: Vec<u64> = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(700), c.recv()).await {
            let m = m.expect("message");
            got.push(text(&m)[1..].parse().expect("m<i>"));
            m.ack().expect("ack");
        }
        let mut seen = BTreeSet::new();
        let twice: Vec<u64> = got.iter().copied().filter(|&i| !seen.insert(i)).collect();
        assert!(
            twice.is_empty(),
            "trial {trial}: {} messages queued twice (m{} to m{}); confirmed before the \
             kill: {confirmed_before}; DUPs on the resend: {}; the restarted relay: {remembered}",
            twice.len(),
            twice[0],
            twice[twice.len() - 1],
            p.duplicates()
        );
        assert_eq!(got, (1..=confirmed).collect::<Vec<_>>(), "trial {trial}");
    }
}
