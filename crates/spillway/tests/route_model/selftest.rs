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
        let case = generate(1);
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
