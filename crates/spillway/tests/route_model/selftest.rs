//! The checker against small made-up histories: each rule fires on the
//! history it exists for and stays quiet when the history explains itself.
//! (Rules that the current relay never breaks would otherwise be untested.)

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use tracing::Level;

use super::capture::LogEvent;
use super::check::{self, Kind};
use super::peers::{ConsumerEnd, ConsumerResult, MsgId, ProducerEnd, ProducerResult, Receipt};
use super::run::Outcome;
use super::schedule::generate;

fn addr(kind: u8, idx: u32) -> SocketAddr {
    SocketAddr::from(([127, kind, 0, idx as u8], 40000))
}

/// A history: producer p1 sent `sent` messages; the relay says it accepted
/// `accepted` (reason `reason`).
struct Hist {
    out: Outcome,
    t: u64,
}

impl Hist {
    fn new(sent: u32, accepted: u32, reason: &str) -> Hist {
        let mut h = Hist {
            out: Outcome {
                violations: Vec::new(),
                ends: Vec::new(),
                producers: vec![ProducerResult {
                    idx: 1,
                    local: Some(addr(1, 1)),
                    connected_t: 1,
                    end_t: 2,
                    total: sent,
                    sent,
                    end: ProducerEnd::Closed,
                    ack: None,
                }],
                consumers: Vec::new(),
                events: Vec::new(),
                crashes: Vec::new(),
                stops: Vec::new(),
                dirty: Vec::new(),
                final_t: 1_000_000,
                cut_short: false,
                peer_op: HashMap::new(),
                stats: String::new(),
                dead: None,
            },
            t: 10,
        };
        h.line(
            "producer closed",
            &[
                ("producer", addr(1, 1).to_string()),
                ("messages", accepted.to_string()),
                ("reason", reason.to_string()),
            ],
        );
        h
    }

    fn tick(&mut self) -> u64 {
        self.t += 1;
        self.t
    }

    fn line(&mut self, message: &str, fields: &[(&str, String)]) {
        let t = self.tick();
        self.out.events.push(LogEvent {
            t,
            inc: Some(0),
            level: Level::INFO,
            message: message.to_string(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        });
    }

    /// Consumer `idx` receives `seqs` of p1 (in this order), then ends.
    fn consumer(&mut self, idx: u32, seqs: &[u32], end: ConsumerEnd) -> &mut ConsumerResult {
        let connected_t = self.tick();
        let receipts = seqs
            .iter()
            .map(|&seq| Receipt {
                t: self.tick(),
                id: MsgId { conn: 1, seq },
                len: 100,
            })
            .collect();
        let end_t = self.tick();
        let giveback_t = matches!(
            end,
            ConsumerEnd::Left | ConsumerEnd::Reset | ConsumerEnd::FinThenRst
        )
        .then_some(end_t);
        self.out.consumers.push(ConsumerResult {
            idx,
            local: Some(addr(2, idx)),
            connected_t,
            end_t,
            receipts,
            malformed: Vec::new(),
            leftover: 0,
            unread_at_reset: Vec::new(),
            giveback_t,
            end,
            ack: None,
        });
        self.out.consumers.last_mut().expect("just pushed")
    }

    fn relay_closed(&mut self, idx: u32, reason: &str, delivered: u64, requeued: u64) {
        self.line(
            "consumer closed",
            &[
                ("consumer", addr(2, idx).to_string()),
                ("reason", reason.to_string()),
                ("delivered", delivered.to_string()),
                ("requeued", requeued.to_string()),
            ],
        );
    }

    fn kinds(mut self) -> Vec<Kind> {
        let mut case = generate(1);
        case.ack = None;
        check::check(&case, &mut self.out);
        let mut k: Vec<Kind> = self.out.violations.iter().map(|v| v.kind).collect();
        k.sort();
        k.dedup();
        k
    }
}

#[test]
fn clean_history_passes() {
    let mut h = Hist::new(3, 3, "eof");
    h.consumer(1, &[0, 1, 2], ConsumerEnd::Left);
    h.relay_closed(1, "consumer_eof", 3, 0);
    assert_eq!(h.kinds(), vec![]);
}

#[test]
fn a_missing_message_is_lost() {
    let mut h = Hist::new(3, 3, "eof");
    h.consumer(1, &[0, 2], ConsumerEnd::Left);
    assert_eq!(h.kinds(), vec![Kind::Lost]);
}

#[test]
fn unread_at_a_reset_is_excused_only_as_documented() {
    // The relay counted #1 delivered (delivered=2 covers #0 read and #1
    // unread) and ran on after seeing the reset: it owes the copy.
    let mut h = Hist::new(2, 2, "eof");
    h.consumer(1, &[0], ConsumerEnd::Reset).unread_at_reset = vec![MsgId { conn: 1, seq: 1 }];
    h.relay_closed(1, "consumer_reset", 2, 5);
    assert_eq!(h.kinds(), vec![Kind::Lost]);
    // The same after the consumer's own FIN: documented.
    let mut h = Hist::new(2, 2, "eof");
    h.consumer(1, &[0], ConsumerEnd::FinThenRst).unread_at_reset = vec![MsgId { conn: 1, seq: 1 }];
    h.relay_closed(1, "consumer_eof", 2, 0);
    assert_eq!(h.kinds(), vec![]);
    // But not what the relay never counted delivered (delivered=1).
    let mut h = Hist::new(2, 2, "eof");
    h.consumer(1, &[0], ConsumerEnd::FinThenRst).unread_at_reset = vec![MsgId { conn: 1, seq: 1 }];
    h.relay_closed(1, "consumer_eof", 1, 0);
    assert_eq!(h.kinds(), vec![Kind::Lost]);
    // The relay reset a stalled consumer (its window went back, in memory)
    // and then stopped, before the consumer's stall was over: documented
    // (the window is not kept across a restart). The reset is when the
    // relay logged it, not when the consumer found out.
    let mut h = Hist::new(2, 2, "eof");
    h.consumer(1, &[0], ConsumerEnd::RelayReset("reset".into()))
        .unread_at_reset = vec![MsgId { conn: 1, seq: 1 }];
    h.relay_closed(1, "write_stall", 2, 5);
    let stop = h.tick();
    h.out.ends.push(super::run::IncEnd {
        inc: 0,
        cfg: generate(1).cfg,
        first_op: 0,
        end_op: 1,
        kind: super::run::EndKind::Graceful,
        start_t: 1,
        t: stop,
        done_t: stop + 1,
        result: Some(Ok(())),
        fsync_fault: false,
        snapshot: Ok(Vec::new()),
        notes: Vec::new(),
    });
    h.t += 1;
    let found_out = h.tick();
    h.out.consumers[0].end_t = found_out;
    assert_eq!(h.kinds(), vec![]);
}

#[test]
fn out_of_order_first_receipts_break_fifo_unless_someone_gave_back() {
    let mut h = Hist::new(3, 3, "eof");
    h.consumer(1, &[0, 2, 1], ConsumerEnd::Left);
    assert_eq!(h.kinds(), vec![Kind::Fifo]);
    // c1 reset before c2 got #1 after #2: #1 may have come back from c1.
    let mut h = Hist::new(3, 3, "eof");
    h.consumer(1, &[], ConsumerEnd::Reset);
    h.consumer(2, &[0, 2, 1], ConsumerEnd::Left);
    assert_eq!(h.kinds(), vec![]);
}

#[test]
fn a_duplicate_needs_an_abortive_end_or_a_crash() {
    let mut h = Hist::new(1, 1, "eof");
    h.consumer(1, &[0], ConsumerEnd::Left);
    h.relay_closed(1, "consumer_eof", 1, 0);
    h.consumer(2, &[0], ConsumerEnd::Left);
    h.relay_closed(2, "consumer_eof", 1, 0);
    assert_eq!(h.kinds(), vec![Kind::Duplicate]);
    let mut h = Hist::new(1, 1, "eof");
    h.consumer(1, &[0], ConsumerEnd::Reset);
    h.consumer(2, &[0], ConsumerEnd::Left);
    assert_eq!(h.kinds(), vec![]);
    let mut h = Hist::new(1, 1, "eof");
    h.consumer(1, &[0], ConsumerEnd::Left);
    let t = h.tick();
    h.out.crashes.push((t, false));
    h.consumer(2, &[0], ConsumerEnd::Left);
    assert_eq!(h.kinds(), vec![]);
}

#[test]
fn duplicates_are_bounded_per_abortive_end() {
    let n = 40_000u32; // 40,000 x 100 bytes: over 256 KiB + 2.5 MiB + 16 KiB
    let seqs: Vec<u32> = (0..n).collect();
    let mut h = Hist::new(n, n, "eof");
    h.consumer(1, &seqs, ConsumerEnd::Reset);
    h.consumer(2, &seqs, ConsumerEnd::Left);
    assert_eq!(h.kinds(), vec![Kind::DupBound]);
}

#[test]
fn a_partial_message_at_a_clean_end_is_flagged_unless_the_relay_died() {
    let mut h = Hist::new(1, 1, "eof");
    h.consumer(1, &[0], ConsumerEnd::RelayEof).leftover = 7;
    assert_eq!(h.kinds(), vec![Kind::Partial]);
    let mut h = Hist::new(1, 1, "eof");
    let c = h.consumer(1, &[0], ConsumerEnd::RelayEof);
    c.leftover = 7;
    let mid = c.connected_t + 1;
    h.out.crashes.push((mid, false));
    assert_eq!(h.kinds(), vec![]);
}

#[test]
fn damaged_or_unknown_messages_are_flagged() {
    let mut h = Hist::new(1, 1, "eof");
    h.consumer(1, &[0], ConsumerEnd::Left)
        .malformed
        .push("not a whole message".into());
    assert_eq!(h.kinds(), vec![Kind::Malformed]);
    let mut h = Hist::new(1, 1, "eof");
    h.consumer(1, &[0, 5], ConsumerEnd::Left);
    assert_eq!(h.kinds(), vec![Kind::Malformed]);
}

#[test]
fn producer_side_promises() {
    // A batch read and dropped under when_full = block.
    let mut h = Hist::new(3, 1, "refused");
    h.consumer(1, &[0], ConsumerEnd::Left);
    assert_eq!(h.kinds(), vec![Kind::Refused]);
    // EOF read, fewer accepted than sent.
    let mut h = Hist::new(3, 1, "eof");
    h.consumer(1, &[0], ConsumerEnd::Left);
    assert_eq!(h.kinds(), vec![Kind::ShortEof]);
    // A message delivered that the relay says it never accepted.
    let mut h = Hist::new(3, 1, "shutdown");
    h.consumer(1, &[0, 1], ConsumerEnd::Left);
    assert_eq!(h.kinds(), vec![Kind::Accounting]);
}

/// The relay's context is in spans (`spillway::logging::route_span`,
/// `conn_span`), not on its events: the capture must see it, or every
/// `producer closed` line is dropped and the checker judges nothing
/// accepted (it did, unnoticed, from the change to spans until this test).
#[test]
fn the_capture_sees_the_relays_span_fields() {
    use super::capture;
    capture::install();
    let route = "rm-selftest-capture";
    let peer = addr(1, 7);
    {
        let _r = spillway::logging::route_span(route).entered();
        let _c = spillway::logging::conn_span(peer, "producer").entered();
        tracing::info!(messages = 3u64, reason = "eof", "producer closed");
    }
    let events = capture::route_events(route);
    capture::forget(route);
    let line = events
        .iter()
        .find(|e| e.message == "producer closed")
        .expect("the producer closed line is captured");
    assert_eq!(line.get("producer"), Some(peer.to_string().as_str()));
    assert_eq!(line.num("messages"), Some(3));
    assert_eq!(line.get("reason"), Some("eof"));
}

// ------------------------------------------------------- ack protocol ---

mod ack {
    use super::super::capture::LogEvent;
    use super::super::check::{self, Kind};
    use super::super::peers::{ConsumerEnd, ConsumerResult, MsgId, ProducerEnd, ProducerResult};
    use super::super::peers_ack::{AckLog, AckProdConn, AckProdLog, AckReceipt, Sent};
    use super::super::run::{DeadRec, Outcome};
    use super::super::schedule::{generate, AckCfg};
    use super::addr;
    use std::collections::{BTreeMap, HashMap};
    use tracing::Level;

    const MAX: u32 = 3;

    /// An ack history: confirming producer p1 had `confirmed` of `sent`
    /// messages confirmed (named or not), one connection.
    struct AHist {
        out: Outcome,
        t: u64,
    }

    impl AHist {
        fn new(sent: u32, confirmed: u32, named: bool) -> AHist {
            let mut h = AHist {
                out: Outcome {
                    violations: Vec::new(),
                    ends: Vec::new(),
                    producers: Vec::new(),
                    consumers: Vec::new(),
                    events: Vec::new(),
                    crashes: Vec::new(),
                    stops: Vec::new(),
                    dirty: Vec::new(),
                    final_t: 1_000_000,
                    cut_short: false,
                    peer_op: HashMap::new(),
                    stats: String::new(),
                    dead: Some(Ok(Vec::new())),
                },
                t: 10,
            };
            let conn = h.conn(0..sent, confirmed);
            h.out.producers.push(ProducerResult {
                idx: 1,
                local: Some(addr(1, 1)),
                connected_t: 1,
                end_t: 2,
                total: sent,
                sent,
                end: ProducerEnd::Closed,
                ack: Some(AckProdLog {
                    name: named.then(|| "p1".to_string()),
                    conns: vec![conn],
                    confirmed,
                    odd: Vec::new(),
                }),
            });
            h
        }

        fn tick(&mut self) -> u64 {
            self.t += 1;
            self.t
        }

        fn conn(&mut self, ks: std::ops::Range<u32>, conf: u32) -> AckProdConn {
            let connected_t = self.tick();
            let sent = ks.map(|k| (k, self.tick())).collect();
            AckProdConn {
                local: Some(addr(1, 1)),
                connected_t,
                inc: Some(0),
                sent,
                conf: u64::from(conf),
                end: "Closed".into(),
                end_t: self.tick(),
                ..AckProdConn::default()
            }
        }

        /// p1 sends messages `ks` again on a new connection.
        fn resend(&mut self, ks: std::ops::Range<u32>) {
            let c = self.conn(ks, 0);
            let p = self.out.producers[0].ack.as_mut().expect("ack producer");
            p.conns.push(c);
        }

        /// Consumer `idx` receives (seq, message number of p1, attempt),
        /// then sends `frames` (all written whole), then ends; the relay's
        /// line says `acked` (None: no line).
        fn consumer(
            &mut self,
            idx: u32,
            got: &[(u64, u32, u32)],
            frames: Vec<Sent>,
            end: ConsumerEnd,
            acked: Option<u64>,
        ) -> &mut ConsumerResult {
            let mut evs: Vec<Ev> = got.iter().map(|&g| Ev::Got(g)).collect();
            evs.extend(frames.into_iter().map(Ev::Send));
            self.consumer_ev(idx, evs, end, acked)
        }

        /// [`AHist::consumer`] with receipts and frames interleaved.
        fn consumer_ev(
            &mut self,
            idx: u32,
            evs: Vec<Ev>,
            end: ConsumerEnd,
            acked: Option<u64>,
        ) -> &mut ConsumerResult {
            let connected_t = self.tick();
            let mut receipts = Vec::new();
            let mut sent: Vec<(u64, Sent)> = Vec::new();
            for e in evs {
                let t = self.tick();
                match e {
                    Ev::Got((seq, k, attempt)) => receipts.push(AckReceipt {
                        t,
                        id: MsgId { conn: 1, seq: k },
                        seq,
                        attempt,
                        len: 10,
                    }),
                    Ev::Send(f) => sent.push((t, f)),
                }
            }
            let end_t = self.tick();
            if let Some(n) = acked {
                let t = self.tick();
                self.out.events.push(LogEvent {
                    t,
                    inc: Some(0),
                    level: Level::INFO,
                    message: "consumer closed".into(),
                    fields: [
                        ("consumer".to_string(), addr(2, idx).to_string()),
                        ("acked".to_string(), n.to_string()),
                        ("reason".to_string(), "consumer_eof".to_string()),
                    ]
                    .into_iter()
                    .collect::<BTreeMap<_, _>>(),
                });
            }
            self.out.consumers.push(ConsumerResult {
                idx,
                local: Some(addr(2, idx)),
                connected_t,
                end_t,
                receipts: Vec::new(),
                malformed: Vec::new(),
                leftover: 0,
                unread_at_reset: Vec::new(),
                giveback_t: Some(end_t),
                end,
                ack: Some(AckLog {
                    group: String::new(),
                    inc: Some(0),
                    ok_t: connected_t,
                    receipts,
                    written: sent.len(),
                    sent,
                    ..AckLog::default()
                }),
            });
            self.out.consumers.last_mut().expect("just pushed")
        }

        fn dead(&mut self, seq: u64, k: u32, attempts: u32, reason: &str) {
            if let Some(Ok(d)) = &mut self.out.dead {
                d.push(DeadRec {
                    seq,
                    attempts,
                    reason: reason.into(),
                    group: String::new(),
                    id: Ok(MsgId { conn: 1, seq: k }),
                });
            }
        }

        fn kinds(mut self) -> Vec<Kind> {
            let mut case = generate(1);
            case.ack = Some(AckCfg {
                from_ack: true,
                groups: 0,
                ack_timeout_ms: 300,
                max_deliveries: MAX,
            });
            check::check(&case, &mut self.out);
            let mut k: Vec<Kind> = self.out.violations.iter().map(|v| v.kind).collect();
            k.sort();
            k.dedup();
            k
        }
    }

    /// A receipt (seq, message number of p1, attempt) or a frame sent.
    enum Ev {
        Got((u64, u32, u32)),
        Send(Sent),
    }

    fn ack(seqs: &[u64]) -> Sent {
        Sent::Ack {
            seqs: seqs.to_vec(),
            cumulative: true,
        }
    }

    #[test]
    fn acknowledged_or_dead_passes() {
        let mut h = AHist::new(3, 3, true);
        h.consumer(
            1,
            &[(0, 0, 1), (1, 1, 1), (2, 2, 1)],
            vec![ack(&[0, 1]), Sent::Term(2)],
            ConsumerEnd::Left,
            Some(2),
        );
        h.dead(2, 2, 1, "term");
        assert_eq!(h.kinds(), vec![]);
    }

    #[test]
    fn a_confirmed_message_neither_acknowledged_nor_dead_is_lost() {
        let mut h = AHist::new(3, 3, true);
        h.consumer(
            1,
            &[(0, 0, 1), (1, 1, 1)],
            vec![ack(&[0, 1])],
            ConsumerEnd::Left,
            Some(2),
        );
        assert_eq!(h.kinds(), vec![Kind::Lost]);
        // Unconfirmed: not judged.
        let mut h = AHist::new(3, 2, true);
        h.consumer(
            1,
            &[(0, 0, 1), (1, 1, 1)],
            vec![ack(&[0, 1])],
            ConsumerEnd::Left,
            Some(2),
        );
        assert_eq!(h.kinds(), vec![]);
        // Received, but held when its consumer reset.
        let mut h = AHist::new(2, 2, true);
        h.consumer(
            1,
            &[(0, 0, 1), (1, 1, 1)],
            vec![ack(&[0])],
            ConsumerEnd::Reset,
            Some(1),
        );
        assert_eq!(h.kinds(), vec![Kind::Lost]);
    }

    #[test]
    fn the_relays_count_says_which_acks_it_had() {
        // acked=1 falls inside the one frame of two seqs.
        let mut h = AHist::new(2, 2, true);
        h.consumer(
            1,
            &[(0, 0, 1), (1, 1, 1)],
            vec![ack(&[0, 1])],
            ConsumerEnd::Reset,
            Some(1),
        );
        assert!(h.kinds().contains(&Kind::Accounting));
        // The relay had the first frame only; the message of the second
        // was delivered again: not a duplicate.
        let mut h = AHist::new(2, 2, true);
        h.consumer(
            1,
            &[(0, 0, 1), (1, 1, 1)],
            vec![ack(&[0]), ack(&[1])],
            ConsumerEnd::Reset,
            Some(1),
        );
        h.consumer(2, &[(1, 1, 2)], vec![ack(&[1])], ConsumerEnd::Left, Some(1));
        assert_eq!(h.kinds(), vec![]);
    }

    #[test]
    fn a_settled_message_comes_back_only_after_a_restart_or_crash() {
        let mut h = AHist::new(1, 1, true);
        h.consumer(1, &[(0, 0, 1)], vec![ack(&[0])], ConsumerEnd::Left, Some(1));
        h.consumer(2, &[(0, 0, 2)], vec![ack(&[0])], ConsumerEnd::Left, Some(1));
        assert_eq!(h.kinds(), vec![Kind::Duplicate]);
        let mut h = AHist::new(1, 1, true);
        h.consumer(1, &[(0, 0, 1)], vec![ack(&[0])], ConsumerEnd::Left, Some(1));
        let t = h.tick();
        h.out.crashes.push((t, false));
        h.consumer(2, &[(0, 0, 1)], vec![ack(&[0])], ConsumerEnd::Left, Some(1))
            .ack
            .as_mut()
            .expect("ack")
            .inc = Some(1);
        assert_eq!(h.kinds(), vec![]);
        // Given back (NAK): fine.
        let mut h = AHist::new(1, 1, true);
        h.consumer_ev(
            1,
            vec![
                Ev::Got((0, 0, 1)),
                Ev::Send(Sent::Nak(0)),
                Ev::Got((0, 0, 2)),
                Ev::Send(ack(&[0])),
            ],
            ConsumerEnd::Left,
            Some(1),
        );
        assert_eq!(h.kinds(), vec![]);
    }

    #[test]
    fn attempts_rise_and_stay_within_max_deliveries() {
        let mut h = AHist::new(1, 1, true);
        h.consumer(1, &[(0, 0, 2)], vec![], ConsumerEnd::Reset, Some(0));
        h.consumer(2, &[(0, 0, 1)], vec![ack(&[0])], ConsumerEnd::Left, Some(1));
        assert_eq!(h.kinds(), vec![Kind::Attempts]);
        let mut h = AHist::new(1, 1, true);
        h.consumer(
            1,
            &[(0, 0, MAX + 1)],
            vec![ack(&[0])],
            ConsumerEnd::Left,
            Some(1),
        );
        assert_eq!(h.kinds(), vec![Kind::Attempts]);
    }

    #[test]
    fn dead_letters_keep_their_rules() {
        // max_deliveries with fewer attempts.
        let mut h = AHist::new(1, 1, true);
        h.consumer(1, &[(0, 0, 1)], vec![], ConsumerEnd::Reset, Some(0));
        h.dead(0, 0, MAX - 1, "max_deliveries");
        assert_eq!(h.kinds(), vec![Kind::DeadLetter]);
        // TERM that nobody sent.
        let mut h = AHist::new(1, 1, true);
        h.consumer(1, &[(0, 0, 1)], vec![], ConsumerEnd::Reset, Some(0));
        h.dead(0, 0, 1, "term");
        assert_eq!(h.kinds(), vec![Kind::DeadLetter]);
        // A TERMed seq whose dead letter holds another message.
        let mut h = AHist::new(2, 2, true);
        h.consumer(
            1,
            &[(0, 0, 1), (1, 1, 1)],
            vec![Sent::Term(0), ack(&[1])],
            ConsumerEnd::Left,
            Some(1),
        );
        h.dead(0, 1, 1, "term");
        assert!(h.kinds().contains(&Kind::DeadLetter));
    }

    #[test]
    fn a_named_producers_resend_is_never_queued_twice_unless_the_relay_died() {
        let mut h = AHist::new(1, 1, true);
        h.resend(0..1);
        h.consumer(
            1,
            &[(0, 0, 1), (5, 0, 1)],
            vec![ack(&[0, 5])],
            ConsumerEnd::Left,
            Some(2),
        );
        assert_eq!(h.kinds(), vec![Kind::Duplicate]);
        // Unnamed: a resend is a new message.
        let mut h = AHist::new(1, 1, false);
        h.resend(0..1);
        h.consumer(
            1,
            &[(0, 0, 1), (5, 0, 1)],
            vec![ack(&[0, 5])],
            ConsumerEnd::Left,
            Some(2),
        );
        assert_eq!(h.kinds(), vec![]);
        // Named, with a crash between the two sends.
        let mut h = AHist::new(1, 1, true);
        let t = h.tick();
        h.out.crashes.push((t, false));
        h.resend(0..1);
        h.consumer(
            1,
            &[(0, 0, 1), (5, 0, 1)],
            vec![ack(&[0, 5])],
            ConsumerEnd::Left,
            Some(2),
        );
        assert_eq!(h.kinds(), vec![]);
    }

    #[test]
    fn a_poisoned_dead_letter_spool_must_not_be_retried() {
        let poisoned = |h: &mut AHist| {
            let t = h.tick();
            h.out.events.push(LogEvent {
                t,
                inc: None,
                level: Level::ERROR,
                message: "cannot write 1 dead letters; retrying".into(),
                fields: [
                    ("route".to_string(), "rm".to_string()),
                    (
                        "error".to_string(),
                        "spool poisoned by an earlier failure: fsync dead/0.seg: EIO".to_string(),
                    ),
                ]
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
            });
        };
        let mut h = AHist::new(1, 1, true);
        h.consumer(1, &[(0, 0, 1)], vec![ack(&[0])], ConsumerEnd::Left, Some(1));
        poisoned(&mut h);
        assert_eq!(h.kinds(), vec![], "once: the route may be failing");
        let mut h = AHist::new(1, 1, true);
        h.consumer(1, &[(0, 0, 1)], vec![ack(&[0])], ConsumerEnd::Left, Some(1));
        poisoned(&mut h);
        poisoned(&mut h);
        assert_eq!(h.kinds(), vec![Kind::FsyncIgnored]);
    }

    #[test]
    fn a_black_hole_must_be_reset_and_errors_are_reported() {
        let mut h = AHist::new(1, 1, true);
        h.consumer(1, &[(0, 0, 1)], vec![], ConsumerEnd::Left, Some(0))
            .ack
            .as_mut()
            .expect("ack")
            .unreset_ms = Some(9000);
        h.consumer(2, &[(0, 0, 2)], vec![ack(&[0])], ConsumerEnd::Left, Some(1));
        assert_eq!(h.kinds(), vec![Kind::AckTimeout]);
        let mut h = AHist::new(1, 1, true);
        h.consumer(1, &[(0, 0, 1)], vec![ack(&[0])], ConsumerEnd::Left, Some(1))
            .ack
            .as_mut()
            .expect("ack")
            .err = Some("ERR 409 NAK 3: no such message".into());
        assert_eq!(h.kinds(), vec![Kind::Protocol]);
    }
}
