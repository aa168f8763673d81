//! The checker: the history of a case against the route's promises.
//!
//! **Accepted.** A producer connection's messages are appended in order,
//! so it had exactly its first `messages` accepted, `messages` being what
//! the relay's `producer closed` line says. A connection whose relay task
//! died in a crash has no such line; then every message up to the last one
//! known to have reached the spool was accepted: the last one found in the
//! spool after the crash, or (kill -9 keeps everything written) the last
//! one any consumer received.
//!
//! **Promises checked.**
//! - every accepted message is received at least once. The one documented
//!   exception in this schedule: a message a consumer's kernel acknowledged
//!   while the relay was watching (the relay counted it delivered) but the
//!   consumer never read, because it reset (it peeks at what it leaves
//!   unread first). It is lost unless the relay sends its
//!   `redeliver_on_reset` copy again, which it owes when it saw the reset
//!   and kept running; not after the consumer's own FIN (the relay may have
//!   finished the clean cut and closed first) nor across a stop or crash
//!   (the copy is in memory);
//! - every received message is whole and exactly as sent; a stream ends
//!   inside a message only when the relay died (crash) during it;
//! - within a consumer connection, first receipts of one producer
//!   connection come in order, unless another consumer may have given
//!   messages back before the out-of-order one arrived (it left, reset or
//!   stalled long enough to be reset, or the relay ended it: a slow reader
//!   can be reset for a write stall at any time);
//! - a message arrives twice only after the earlier receiver ended
//!   abortively or the relay requeued its messages, after one of the two
//!   receivers outlived a stop of its incarnation (it gets what was in
//!   flight to it late), after a crash, after an end that left the spool
//!   not cleanly closed (a failed fsync: the cursor is older than what was
//!   delivered), or after a restart that found it still in the spool (the
//!   spool keeps one ack floor: a message delivered above a lower one still
//!   held is sent again); per connection blamed, at most
//!   `redeliver_on_reset` + the in-flight bound + one message of them;
//! - under `when_full = block` the relay never drops a batch it read
//!   (`reason=refused`), and a producer whose EOF it read had all its
//!   messages accepted.
//!
//! Violations found while running (a route stopping with an error without
//! a failed fsync, a stop that hangs, a spool that cannot be read) come
//! from `run.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use super::capture::LogEvent;
use super::peers::{ConsumerEnd, ConsumerResult, MsgId, ProducerEnd, ProducerResult};
use super::run::{EndKind, Outcome, PeerKey};
use super::schedule::{cfg_after, Case, INFLIGHT_BOUND, MAX_MESSAGE};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An accepted message never arrived.
    Lost,
    /// A message arrived damaged, or one nobody sent.
    Malformed,
    /// A stream ended inside a message without a crash.
    Partial,
    /// First receipts out of order.
    Fifo,
    /// A duplicate with no abortive end or crash before it.
    Duplicate,
    /// More duplicates after one end than the bound allows.
    DupBound,
    /// `serve` returned an error though no fsync failed.
    ServeError,
    /// A failed fsync did not stop the route.
    FsyncIgnored,
    /// A stop, drain or peer that did not finish within its hang guard.
    Hang,
    /// The relay kept serving a consumer the test had ended.
    Held,
    OpenFailed,
    /// A closed spool (its `serve` had returned) changed the directory.
    AfterClose,
    /// The spool could not be read offline between incarnations.
    SpoolDamaged,
    /// The relay dropped a batch it had read (`reason=refused`).
    Refused,
    /// The relay read a producer's EOF but accepted fewer than it sent.
    ShortEof,
    /// The relay's count of accepted messages contradicts what arrived.
    Accounting,
    /// Ack protocol: a message delivered to a group with an attempt number
    /// that does not rise, or over `max_deliveries`.
    Attempts,
    /// Ack protocol: a dead letter that breaks its rules (attempts, reason,
    /// group, a TERM nobody sent).
    DeadLetter,
    /// Ack protocol: the relay refused a well-formed peer (ERR), or sent a
    /// frame that makes no sense (a CONF going back, a DUP of nothing).
    Protocol,
    /// Ack protocol: a consumer held a message far past `ack_timeout` and
    /// was not reset.
    AckTimeout,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub kind: Kind,
    /// The op at (or after) which it was seen.
    pub op: Option<usize>,
    pub text: String,
}

pub(super) fn v(kind: Kind, op: Option<usize>, text: String) -> Violation {
    Violation { kind, op, text }
}

/// Accepted message count of each producer connection, and why.
pub(super) struct Accepted {
    pub count: u32,
    pub basis: String,
}

pub(super) struct Ctx<'a> {
    pub case: &'a Case,
    pub out: &'a Outcome,
    pub producers: HashMap<u32, &'a ProducerResult>,
    pub consumers: HashMap<u32, &'a ConsumerResult>,
    plines: HashMap<String, &'a LogEvent>,
    clines: HashMap<String, &'a LogEvent>,
    /// Incarnations that logged messages read from a producer and lost
    /// because the file system stayed full until the drain ended (the
    /// documented "SIGTERM on a full disk" limit, counted by the relay).
    lost_on_full_disk: std::collections::HashSet<usize>,
    /// Receipts of each message, in clock order: (t, consumer, len).
    receipts: BTreeMap<MsgId, Vec<(u64, u32, usize)>>,
    /// Times the route stopped or died (stop requested, crash).
    ends_t: Vec<u64>,
}

impl Ctx<'_> {
    pub fn pop(&self, p: u32) -> String {
        match self.out.peer_op.get(&PeerKey::P(p)) {
            Some(op) => format!("p{p} (op {op})"),
            None => format!("p{p}"),
        }
    }

    pub fn cop(&self, c: u32) -> String {
        match self.out.peer_op.get(&PeerKey::C(c)) {
            Some(op) => format!("c{c} (op {op})"),
            None => format!("c{c} (final drain)"),
        }
    }

    pub fn cline(&self, c: &ConsumerResult) -> Option<&LogEvent> {
        c.local
            .and_then(|a| self.clines.get(&a.to_string()).copied())
    }

    fn cdesc(&self, c: u32) -> String {
        let Some(r) = self.consumers.get(&c) else {
            return self.cop(c);
        };
        let relay = match self.cline(r) {
            Some(e) => format!(
                "relay: reason={} delivered={} requeued={}",
                e.get("reason").unwrap_or("?"),
                e.get("delivered").unwrap_or("?"),
                e.get("requeued").unwrap_or("?")
            ),
            None => "relay: no close line".into(),
        };
        format!(
            "{} [t={}..{}, ended {:?}; {relay}]",
            self.cop(c),
            r.connected_t,
            r.end_t,
            r.end
        )
    }

    /// A clock value, with the incarnation it fell in.
    pub fn when(&self, t: u64) -> String {
        match self.out.ends.iter().find(|e| e.start_t <= t && t <= e.t) {
            Some(e) => format!("t={t} (incarnation {})", e.inc),
            None => {
                let before = self.out.ends.iter().filter(|e| e.t < t).count();
                format!("t={t} (after {before} incarnation ends)")
            }
        }
    }

    pub fn crash_between(&self, a: u64, b: u64) -> Option<u64> {
        self.out
            .crashes
            .iter()
            .map(|c| c.0)
            .find(|&t| a < t && t < b)
    }

    pub fn end_between(&self, a: u64, b: u64) -> Option<u64> {
        self.ends_t.iter().copied().find(|&t| a < t && t < b)
    }
}

pub fn check(case: &Case, out: &mut Outcome) {
    let mut found = Vec::new();
    let stats;
    {
        let mut ctx = Ctx {
            case,
            out,
            producers: out.producers.iter().map(|p| (p.idx, p)).collect(),
            consumers: out.consumers.iter().map(|c| (c.idx, c)).collect(),
            plines: HashMap::new(),
            lost_on_full_disk: Default::default(),
            clines: HashMap::new(),
            receipts: BTreeMap::new(),
            ends_t: out
                .stops
                .iter()
                .copied()
                .chain(out.crashes.iter().map(|c| c.0))
                .collect(),
        };
        // A crash (or a kill) ends every incarnation up to the one that
        // died; nothing they log afterwards happened in a real process.
        let deaths: Vec<(usize, u64)> = out
            .ends
            .iter()
            .filter(|e| matches!(e.kind, EndKind::Crash { .. } | EndKind::Killed))
            .map(|e| (e.inc, e.t))
            .collect();
        let alive = |e: &LogEvent| {
            !deaths
                .iter()
                .any(|&(inc, t)| e.t > t && e.inc.is_some_and(|i| i <= inc))
        };
        for e in out.events.iter().filter(|e| alive(e)) {
            match e.message.as_str() {
                "producer closed" => {
                    if let Some(p) = e.get("producer") {
                        ctx.plines.entry(p.to_string()).or_insert(e);
                    }
                }
                "consumer closed" => {
                    if let Some(c) = e.get("consumer") {
                        ctx.clines.entry(c.to_string()).or_insert(e);
                    }
                }
                "messages read from a producer could not be queued and are lost" => {
                    if let (Some(inc), Some(err)) = (e.inc, e.get("error")) {
                        if err.contains("out of space") {
                            ctx.lost_on_full_disk.insert(inc);
                        }
                    }
                }
                _ => {}
            }
        }
        for c in &out.consumers {
            for r in &c.receipts {
                ctx.receipts
                    .entry(r.id)
                    .or_default()
                    .push((r.t, c.idx, r.len));
            }
            // An acking consumer's MSGs count as received for what the
            // relay says it accepted of plain producers.
            for r in c.ack.iter().flat_map(|a| &a.receipts) {
                ctx.receipts
                    .entry(r.id)
                    .or_default()
                    .push((r.t, c.idx, r.len));
            }
        }
        for list in ctx.receipts.values_mut() {
            list.sort();
        }
        let accepted = accepted(&ctx, &mut found);
        if case.ack.is_some() {
            // The ack protocol's own promises (check_ack.rs); the plain
            // consumers' rules (TCP delivery, redelivery windows, FIFO
            // across a stream) do not apply to acking consumers.
            stats = super::check_ack::check(&ctx, &accepted, &mut found);
        } else {
            let excused = lost(&ctx, &accepted, &mut found);
            stats = stats_line(&ctx, &accepted, excused);
            integrity(&ctx, &mut found);
            fifo(&ctx, &mut found);
            duplicates(&ctx, &mut found);
        }
    }
    out.violations.extend(found);
    out.stats = stats;
}

/// What the relay accepted of each plain producer connection (confirming
/// producers are judged by their CONFs, in check_ack.rs).
fn accepted(ctx: &Ctx<'_>, found: &mut Vec<Violation>) -> BTreeMap<u32, Accepted> {
    let mut acc = BTreeMap::new();
    for p in ctx.out.producers.iter().filter(|p| p.ack.is_none()) {
        let op = ctx.out.peer_op.get(&PeerKey::P(p.idx)).copied();
        let Some(addr) = p.local else {
            acc.insert(
                p.idx,
                Accepted {
                    count: 0,
                    basis: "never connected".into(),
                },
            );
            continue;
        };
        let received_max = (0..p.total).rev().find(|&s| {
            ctx.receipts.contains_key(&MsgId {
                conn: p.idx,
                seq: s,
            })
        });
        if let Some(line) = ctx.plines.get(&addr.to_string()) {
            let n = line.num("messages").unwrap_or(0) as u32;
            let reason = line.get("reason").unwrap_or("?");
            // Refused at a stop on a file system that stayed full past the
            // drain: the documented limit (logged and counted), not a
            // batch dropped by when_full = block.
            let full_disk = line.inc.is_some_and(|i| ctx.lost_on_full_disk.contains(&i));
            if reason == "refused" && !full_disk {
                found.push(v(
                    Kind::Refused,
                    op,
                    format!(
                        "the relay closed {} with reason=refused after accepting {n} of the {} messages it sent: a batch it had read from the socket was dropped, which when_full = block must never do\n      relay: {}",
                        ctx.pop(p.idx),
                        p.sent,
                        line.line()
                    ),
                ));
            }
            if reason == "eof" && n != p.sent {
                found.push(v(
                    Kind::ShortEof,
                    op,
                    format!(
                        "the relay read {}'s EOF but accepted {n} messages; it had sent {} whole messages ({:?})",
                        ctx.pop(p.idx),
                        p.sent,
                        p.end
                    ),
                ));
            }
            // After a failed fsync a batch whose append failed may still
            // be on disk and delivered: more than the relay counted.
            let dirty = ctx.out.dirty.iter().any(|&t| t > p.connected_t);
            if let Some(m) = received_max.filter(|&m| m >= n && !dirty) {
                found.push(v(
                    Kind::Accounting,
                    op,
                    format!(
                        "a consumer received {} but the relay says it accepted only {n} messages of {}",
                        MsgId { conn: p.idx, seq: m },
                        ctx.pop(p.idx)
                    ),
                ));
            }
            acc.insert(
                p.idx,
                Accepted {
                    count: n,
                    basis: format!("relay: messages={n} reason={reason}"),
                },
            );
            continue;
        }
        // No line: the relay's task for it died in a crash, or the relay
        // never accepted the connection.
        let crash = ctx
            .out
            .crashes
            .iter()
            .find(|c| c.0 > p.connected_t)
            .copied();
        let Some((crash_t, power_cut)) = crash else {
            acc.insert(
                p.idx,
                Accepted {
                    count: 0,
                    basis: format!("no relay line and no crash ({:?})", p.end),
                },
            );
            continue;
        };
        let mut count = 0u32;
        let mut basis = Vec::new();
        if let Some(end) = ctx.out.ends.iter().find(|e| e.t == crash_t) {
            if let Ok(snap) = &end.snapshot {
                if let Some(m) = snap
                    .iter()
                    .filter(|id| id.conn == p.idx)
                    .map(|id| id.seq)
                    .max()
                {
                    count = count.max(m + 1);
                    basis.push(format!("seq {m} in the spool after the crash"));
                }
            }
        }
        let received = ctx
            .receipts
            .iter()
            .filter(|(id, rs)| id.conn == p.idx && (!power_cut || rs.iter().any(|r| r.0 > crash_t)))
            .map(|(id, _)| id.seq)
            .max();
        if let Some(m) = received {
            count = count.max(m + 1);
            basis.push(format!("seq {m} received"));
        }
        acc.insert(
            p.idx,
            Accepted {
                count,
                basis: format!(
                    "relay task died in a {} ({})",
                    if power_cut { "power cut" } else { "kill -9" },
                    if basis.is_empty() {
                        "nothing known".to_string()
                    } else {
                        basis.join(", ")
                    }
                ),
            },
        );
    }
    acc
}

pub(super) fn ranges(seqs: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some(r) if r.1 + 1 == s => r.1 = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// Reports accepted messages that never arrived; returns how many more are
/// missing within the documented window (for the stats line).
fn lost(ctx: &Ctx<'_>, acc: &BTreeMap<u32, Accepted>, found: &mut Vec<Violation>) -> usize {
    // A case that ended early (reported as a hang or a held consumer)
    // never drained; losses prove nothing more.
    if ctx.out.cut_short {
        return 0;
    }
    // Unread in a consumer's kernel when it reset: documented as lost when
    // the relay had counted it delivered (its kernel acknowledged it while
    // the relay was watching), unless the relay saw the reset and kept
    // running: then its `redeliver_on_reset` copy must go out again. (After
    // the consumer's own FIN the relay may have finished the clean cut and
    // closed before the RST; a stop or crash drops the in-memory copy.)
    // The relay's `delivered=N` counts the head of the connection's stream,
    // which is what the consumer read, then what it left unread, in order.
    // What reached the consumer's kernel only after the relay let go of
    // the socket was never counted delivered: the relay still owes it.
    let mut excused: HashMap<MsgId, u32> = HashMap::new();
    for c in ctx.out.consumers.iter() {
        if c.unread_at_reset.is_empty() {
            continue;
        }
        let line = ctx.cline(c);
        let delivered = match line {
            Some(e) => e.num("delivered").unwrap_or(0),
            // The relay task died in a crash: its count is gone; the
            // cursor it persisted is older than anything it counted.
            None if ctx.crash_between(c.connected_t, ctx.out.final_t).is_some() => u64::MAX,
            None => 0,
        };
        // The relay saw the reset, or made it (a write stall): either way
        // it put the consumer's window back in the queue.
        let saw_reset = line.is_some_and(|e| {
            matches!(
                e.get("reason"),
                Some("consumer_reset" | "write_stall" | "peer_timeout")
            )
        });
        // An end (not the final stop) completed after the reset: the copy
        // went to an incarnation that stopped or died before sending it,
        // including one that was already stopping when the reset came.
        // The reset is when the relay logged the close (it requeues
        // first), if that came before the consumer's thread ended: a
        // consumer the relay reset for a write stall finds out only when
        // its stall is over, possibly after a restart.
        let reset_t = line.map_or(c.end_t, |e| e.t.min(c.end_t));
        let later_end = ctx
            .out
            .ends
            .iter()
            .any(|e| e.done_t > reset_t && e.t < ctx.out.final_t);
        if saw_reset && !later_end {
            continue;
        }
        let read = c.receipts.len() as u64;
        for (i, id) in c.unread_at_reset.iter().enumerate() {
            if read + (i as u64) < delivered {
                excused.insert(*id, c.idx);
            }
        }
    }
    let mut excused_n = 0usize;
    for (&p, a) in acc {
        let mut missing = Vec::new();
        for seq in 0..a.count {
            let id = MsgId { conn: p, seq };
            if ctx.receipts.contains_key(&id) {
                continue;
            }
            if excused.contains_key(&id) {
                excused_n += 1;
                continue;
            }
            missing.push(seq);
        }
        if missing.is_empty() {
            continue;
        }
        let pr = ctx.producers.get(&p);
        let mut text = format!(
            "{} accepted messages of {} never arrived ({}; the producer sent {}, ended {:?}):",
            missing.len(),
            ctx.pop(p),
            a.basis,
            pr.map_or(0, |r| r.sent),
            pr.map(|r| &r.end)
        );
        let rs = ranges(&missing);
        for &(lo, hi) in rs.iter().take(4) {
            let _ = write!(text, "\n      {p}#{lo}..={hi}:", p = format_args!("p{p}"));
            // Who got the neighbours.
            for (what, seq) in [("before", lo.checked_sub(1)), ("after", hi.checked_add(1))] {
                let Some(seq) = seq else { continue };
                if let Some(list) = ctx.receipts.get(&MsgId { conn: p, seq }) {
                    let who: Vec<String> = list.iter().map(|r| ctx.cdesc(r.1)).collect();
                    let _ = write!(text, "\n        #{seq} ({what}) went to {}", who.join(", "));
                }
            }
            // The spool between incarnations.
            let id = MsgId { conn: p, seq: lo };
            for e in &ctx.out.ends {
                if pr.is_some_and(|r| e.t < r.connected_t) {
                    continue;
                }
                let state = match &e.snapshot {
                    Ok(s) if s.contains(&id) => "in the spool",
                    Ok(_) => "not in the spool",
                    Err(_) => "spool unreadable",
                };
                let _ = write!(
                    text,
                    "\n        #{lo} {state} after incarnation {} ended at op {} ({:?})",
                    e.inc, e.end_op, e.kind
                );
            }
            for c in ctx.out.consumers.iter() {
                if let Some(i) = c.unread_at_reset.iter().position(|u| *u == id) {
                    let _ = write!(
                        text,
                        "\n        #{lo} was unread in {}'s kernel when it reset, at position {} of its stream (it read {}, left {} unread); the relay had not counted it delivered, or saw the reset and ran on (then its redeliver_on_reset copy is owed)",
                        ctx.cdesc(c.idx),
                        c.receipts.len() + i,
                        c.receipts.len(),
                        c.unread_at_reset.len()
                    );
                }
            }
        }
        if rs.len() > 4 {
            let _ = write!(text, "\n      … and {} more ranges", rs.len() - 4);
        }
        let op = ctx.out.peer_op.get(&PeerKey::P(p)).copied();
        found.push(v(Kind::Lost, op, text));
    }
    excused_n
}

fn integrity(ctx: &Ctx<'_>, found: &mut Vec<Violation>) {
    for c in ctx.out.consumers.iter() {
        let op = ctx.out.peer_op.get(&PeerKey::C(c.idx)).copied();
        if !c.malformed.is_empty() {
            found.push(v(
                Kind::Malformed,
                op,
                format!(
                    "{} received {} damaged messages, first: {}",
                    ctx.cdesc(c.idx),
                    c.malformed.len(),
                    c.malformed[0]
                ),
            ));
        }
        for r in &c.receipts {
            let known = ctx
                .producers
                .get(&r.id.conn)
                .is_some_and(|p| r.id.seq < p.total);
            if !known {
                found.push(v(
                    Kind::Malformed,
                    op,
                    format!("{} received {}, which nobody sent", ctx.cdesc(c.idx), r.id),
                ));
                break;
            }
        }
        let died = ctx
            .crash_between(c.connected_t, c.end_t.max(c.connected_t) + 1)
            .is_some();
        if c.leftover > 0 && !died && !c.end.abortive() && c.end != ConsumerEnd::NeverConnected {
            found.push(v(
                Kind::Partial,
                op,
                format!(
                    "{}'s stream ended inside a message ({} bytes of it) with no crash",
                    ctx.cdesc(c.idx),
                    c.leftover
                ),
            ));
        }
        if let ConsumerEnd::LeftNoEof(e) = &c.end {
            if !died {
                found.push(v(
                    Kind::Hang,
                    op,
                    format!(
                        "{} half-closed and never got the relay's EOF: {e}",
                        ctx.cdesc(c.idx)
                    ),
                ));
            }
        }
    }
}

fn fifo(ctx: &Ctx<'_>, found: &mut Vec<Violation>) {
    // The earliest moment each consumer may have given messages back: our
    // FIN or RST, or a long stall; when the relay ended the connection on
    // its own (a write stall comes from a slow reader too, not only from a
    // stall), any time it was connected.
    let gives: Vec<(u32, u64)> = ctx
        .out
        .consumers
        .iter()
        .filter_map(|c| {
            let relay_ended = matches!(
                c.end,
                ConsumerEnd::RelayEof | ConsumerEnd::RelayReset(_) | ConsumerEnd::Torn
            ) || ctx.cline(c).is_some_and(|e| {
                matches!(
                    e.get("reason"),
                    Some("write_stall" | "peer_timeout" | "spool_failed")
                )
            });
            if relay_ended {
                Some((c.idx, c.connected_t))
            } else {
                c.giveback_t.map(|t| (c.idx, t))
            }
        })
        .collect();
    for c in ctx.out.consumers.iter() {
        let mut last: HashMap<u32, (u32, u64)> = HashMap::new();
        let mut reported: HashSet<u32> = HashSet::new();
        for r in &c.receipts {
            let first = ctx.receipts.get(&r.id).and_then(|l| l.first()).map(|f| f.0);
            if first != Some(r.t) {
                continue; // a redelivery: judged by `duplicates`
            }
            match last.get(&r.id.conn) {
                Some(&(prev, _)) if prev > r.id.seq => {
                    let explained = gives.iter().any(|&(d, t)| d != c.idx && t < r.t);
                    if !explained && reported.insert(r.id.conn) {
                        found.push(v(
                            Kind::Fifo,
                            ctx.out.peer_op.get(&PeerKey::C(c.idx)).copied(),
                            format!(
                                "{} received p{}#{} after p{}#{prev} (both first receipts), and no other consumer had left, reset or stalled before",
                                ctx.cdesc(c.idx),
                                r.id.conn,
                                r.id.seq,
                                r.id.conn
                            ),
                        ));
                    }
                }
                _ => {
                    last.insert(r.id.conn, (r.id.seq, r.t));
                }
            }
        }
    }
}

fn duplicates(ctx: &Ctx<'_>, found: &mut Vec<Violation>) {
    let redeliver = ctx
        .case
        .ops
        .iter()
        .enumerate()
        .map(|(i, _)| cfg_after(ctx.case, i + 1).redeliver)
        .chain([ctx.case.cfg.redeliver])
        .max()
        .unwrap_or(0);
    let budget = redeliver + INFLIGHT_BOUND + MAX_MESSAGE;
    // What each end left in the spool from its ack floor: a restart sends
    // it again, delivered or not (one floor per spool: a message delivered
    // above a lower one still held is sent again after a restart).
    let pending: Vec<(u64, HashSet<MsgId>)> = ctx
        .out
        .ends
        .iter()
        .filter_map(|e| {
            let s = e.snapshot.as_ref().ok()?;
            Some((e.done_t, s.iter().copied().collect()))
        })
        .collect();
    let mut charged: HashMap<u32, u64> = HashMap::new();
    let mut unexplained: Vec<String> = Vec::new();
    for (id, list) in &ctx.receipts {
        for w in list.windows(2) {
            let (prev, cur) = (w[0], w[1]);
            if prev.1 == cur.1 {
                unexplained.push(format!(
                    "{id} twice on the same connection {}",
                    ctx.cdesc(cur.1)
                ));
                continue;
            }
            if ctx.crash_between(prev.0, cur.0).is_some()
                || ctx.out.dirty.iter().any(|&t| prev.0 < t && t < cur.0)
                || pending
                    .iter()
                    .any(|(t, ids)| prev.0 < *t && *t < cur.0 && ids.contains(id))
            {
                continue;
            }
            let (Some(pc), Some(cc)) = (ctx.consumers.get(&prev.1), ctx.consumers.get(&cur.1))
            else {
                continue;
            };
            let relay_requeued = |c: &ConsumerResult| {
                ctx.cline(c).is_some_and(|e| {
                    e.num("requeued").unwrap_or(0) > 0
                        || matches!(
                            e.get("reason"),
                            Some("consumer_reset" | "write_stall" | "peer_timeout")
                        )
                })
            };
            let spanned = |c: &ConsumerResult| {
                ctx.end_between(c.connected_t, c.end_t.max(c.connected_t) + 1)
                    .is_some()
            };
            // The earlier receiver gave it back, or was still open when its
            // incarnation stopped (a connection that outlived the drain gets
            // what was in flight to it late).
            // Or the later receiver was reset by the relay after it had been
            // sent the message: it reads what its kernel held after the RST.
            let blame = if pc.end.abortive() || relay_requeued(pc) || spanned(pc) {
                Some(prev.1)
            } else if cc.end.abortive() || relay_requeued(cc) || spanned(cc) {
                Some(cur.1)
            } else {
                None
            };
            if let Some(c) = blame {
                *charged.entry(c).or_default() += prev.2 as u64;
                continue;
            }
            unexplained.push(format!(
                "{id}: first to {} at {}, again to {} at {}, with no abortive end, stop or crash in between",
                ctx.cdesc(prev.1),
                ctx.when(prev.0),
                ctx.cdesc(cur.1),
                ctx.when(cur.0)
            ));
        }
    }
    if !unexplained.is_empty() {
        let n = unexplained.len();
        let mut text = format!("{n} duplicates with nothing to explain them:");
        for u in unexplained.iter().take(5) {
            let _ = write!(text, "\n      {u}");
        }
        found.push(v(Kind::Duplicate, None, text));
    }
    for (c, bytes) in charged {
        if bytes > budget {
            found.push(v(
                Kind::DupBound,
                ctx.out.peer_op.get(&PeerKey::C(c)).copied(),
                format!(
                    "{} bytes of messages first received by {} arrived again, over the bound of {budget} (redeliver_on_reset {redeliver} + in-flight {INFLIGHT_BOUND} + one message)",
                    bytes,
                    ctx.cdesc(c)
                ),
            ));
        }
    }
}

fn stats_line(ctx: &Ctx<'_>, acc: &BTreeMap<u32, Accepted>, excused: usize) -> String {
    let accepted: u64 = acc.values().map(|a| u64::from(a.count)).sum();
    let receipts: usize = ctx.receipts.values().map(Vec::len).sum();
    let distinct = ctx.receipts.len();
    let crashes = ctx.out.crashes.len();
    let ends = ctx.out.ends.len();
    let producers = ctx.out.producers.len();
    let consumers = ctx.out.consumers.len();
    let unread: usize = ctx
        .out
        .consumers
        .iter()
        .map(|c| c.unread_at_reset.len())
        .sum();
    let cut = ctx
        .out
        .producers
        .iter()
        .filter(|p| matches!(p.end, ProducerEnd::Broken(_)))
        .count();
    format!(
        "{producers} producers ({cut} cut by the relay), {consumers} consumers, {accepted} messages accepted, {distinct} distinct received, {} duplicates, {ends} incarnations ({crashes} crashes), {unread} messages unread at consumer resets ({excused} of them lost as documented)",
        receipts - distinct
    )
}
