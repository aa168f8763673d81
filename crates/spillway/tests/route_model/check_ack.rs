//! The checker of ack-protocol cases (`Case::ack`): the promises of
//! `docs/protocol.md` against the history.
//!
//! **Accepted.** A confirming producer's messages 0..n where a CONF
//! covered n (its own count, across its connections: it resends what was
//! not confirmed). A plain producer's as in `check.rs`.
//!
//! **Acknowledged.** What a consumer sent is logged frame by frame; which
//! frames the relay had is read from its `consumer closed ... acked=N`
//! line: frames are applied in order and each ACK or ACKS settles all it
//! names at once (the consumer acknowledges only what it holds), so the
//! acknowledgements it had are the frames up to the one where the count
//! of seqs reaches N. A count that falls between two frames is an
//! `Accounting` violation. Without a line (the relay died, or the case
//! was torn down) every frame written whole *may* have been had: the
//! checker then leans each way where it errs safe (counted acknowledged
//! for losses, unacknowledged for duplicates). A consumer that half-closed
//! and read the relay's EOF had everything it sent applied.
//!
//! **Promises checked.**
//! - every accepted message is, in each group, acknowledged by some
//!   consumer of the group or in the dead-letter spool for that group (its
//!   record carries the message: checked byte for byte); none lost;
//! - a seq in a group is delivered again (same seq) only if the delivery
//!   before it was not settled: given back (NAK), held when its
//!   connection ended (reset, FIN, ack timeout, the relay's stop or
//!   crash), or the acknowledgement may not have been had; or the route
//!   restarted in between and found it still in the spool (each group
//!   keeps one floor: a message acknowledged above a lower one still held
//!   is sent again; after a crash, or a spool not cleanly closed, whatever
//!   was acknowledged since the group's last persisted floor is too);
//! - a message is enqueued at two seqs (the same body, one group) only
//!   when its producer sent it twice and may: an unnamed confirming
//!   producer resends whatever was not confirmed, so it may be queued
//!   twice; a named one's resend is a DUP, except when the relay died
//!   (crash, kill, failed fsync, a route that stopped by itself) after it
//!   first had the message and before the resend: the append is durable
//!   before the producer table records the pseq (`producers.rs`), so a
//!   death between the two forgets that the pseq was queued. A plain
//!   producer's message is never queued twice;
//! - within an incarnation and a group, the attempts of a seq's deliveries
//!   are distinct and rise in the order the consumers received them (one
//!   exception: a message read after its consumer's own FIN, from its
//!   kernel, may be read after a later delivery of it elsewhere); no
//!   attempt is over `max_deliveries`; a consumer's first deliveries
//!   (attempt 1) come in seq order;
//! - a seq carries one message, unless a power cut let the log reuse it;
//! - a dead letter names a declared group and holds a message that was
//!   sent; reason `max_deliveries` has attempts = `max_deliveries`;
//!   reason `term` was TERMed by a consumer of its group that had it;
//! - a black hole (holds, never acknowledges) is reset by the relay's ack
//!   timeout;
//! - a dead-letter spool poisoned by a failed fsync is not retried while
//!   the route serves on (read from the relay's log: a second "cannot
//!   write N dead letters" on a poisoned spool in one incarnation), the
//!   dead-letter side of `FsyncIgnored`;
//! - the relay never answers a well-formed peer with ERR (but 409 to a
//!   producer name still connected, and 503 when the spool cannot queue),
//!   nor sends a frame that makes no sense.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use super::check::{ranges, v, Accepted, Ctx, Kind, Violation};
use super::peers::{ConsumerEnd, ConsumerResult, MsgId};
use super::peers_ack::{AckLog, Sent};
use super::run::{EndKind, PeerKey};
use super::schedule::AckCfg;

/// What became of one delivery, as far as the history tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Acknowledged, and the relay had it.
    Acked,
    /// Acknowledged; whether the relay had it is unknown.
    AckedMaybe,
    Termed,
    TermedMaybe,
    /// Given back with NAK.
    Naked,
    /// Held when the connection ended (or the frame never reached the
    /// relay).
    Held,
}

impl Fate {
    fn settled(self) -> bool {
        matches!(self, Fate::Acked | Fate::Termed)
    }
}

/// One delivery of a message to an acking consumer.
#[derive(Clone, Copy, Debug)]
struct Delivery {
    t: u64,
    consumer: u32,
    group: usize,
    inc: Option<usize>,
    seq: u64,
    attempt: u32,
    fate: Fate,
    /// Read after the consumer's own FIN or RST (from its kernel).
    after_giveback: bool,
}

/// How far the relay had a consumer's frames.
struct Had {
    /// Frames `0..sure` were applied.
    sure: usize,
    /// Frames `sure..maybe` may have been.
    maybe: usize,
}

fn had(ctx: &Ctx<'_>, c: &ConsumerResult, log: &AckLog, found: &mut Vec<Violation>) -> Had {
    let written = log.written;
    let clean = c.end == ConsumerEnd::Left;
    let Some(line) = ctx.cline(c) else {
        return Had {
            sure: if clean { written } else { 0 },
            maybe: written,
        };
    };
    let n = line.num("acked").unwrap_or(0);
    let mut sum = 0u64;
    let mut sure = None;
    if n == 0 {
        sure = Some(0);
    }
    for (i, (_, f)) in log.sent[..written].iter().enumerate() {
        if let Sent::Ack { seqs, .. } = f {
            sum += seqs.len() as u64;
            if sum == n {
                sure = Some(i + 1);
                break;
            }
        }
    }
    let total: u64 = log.sent[..written]
        .iter()
        .map(|(_, f)| match f {
            Sent::Ack { seqs, .. } => seqs.len() as u64,
            _ => 0,
        })
        .sum();
    match sure {
        Some(s) if !clean || n == total => Had {
            sure: if clean { written } else { s },
            maybe: written,
        },
        _ => {
            found.push(v(
                Kind::Accounting,
                ctx.out.peer_op.get(&PeerKey::C(c.idx)).copied(),
                format!(
                    "{}: the relay says it settled acked={n} messages of this consumer, which acknowledged {total} in {} frames written whole ({}): no prefix of its ACK frames adds up to it{}",
                    ctx.cop(c.idx),
                    written,
                    ack_sums(log, written),
                    if clean { " (it half-closed and read the relay's EOF: every frame was read)" } else { "" }
                ),
            ));
            Had {
                sure: 0,
                maybe: written,
            }
        }
    }
}

fn ack_sums(log: &AckLog, written: usize) -> String {
    let mut sum = 0;
    let mut out = Vec::new();
    for (_, f) in &log.sent[..written] {
        if let Sent::Ack { seqs, .. } = f {
            sum += seqs.len();
            out.push(sum.to_string());
        }
    }
    if out.len() > 12 {
        let n = out.len();
        out.drain(6..n - 6);
        out.insert(6, "…".into());
    }
    format!("running sums {}", out.join(" "))
}

/// The fate of the delivery at receipt `r` (index into `log.receipts`).
fn fate(log: &AckLog, r: usize, h: &Had) -> Fate {
    let rec = &log.receipts[r];
    // The next receipt of the same seq on this connection bounds the
    // search (a NAKed message can come back to the same consumer).
    let next_same = log.receipts[r + 1..]
        .iter()
        .find(|x| x.seq == rec.seq)
        .map_or(u64::MAX, |x| x.t);
    for (i, (t, f)) in log.sent.iter().enumerate() {
        if *t < rec.t || *t > next_same {
            continue;
        }
        let named = match f {
            Sent::Ack { seqs, .. } => seqs.contains(&rec.seq),
            Sent::Nak(s) | Sent::Term(s) => *s == rec.seq,
            _ => false,
        };
        if !named {
            continue;
        }
        let sure = i < h.sure;
        let maybe = i < h.maybe;
        return match (f, sure, maybe) {
            (Sent::Ack { .. }, true, _) => Fate::Acked,
            (Sent::Ack { .. }, false, true) => Fate::AckedMaybe,
            (Sent::Term(_), true, _) => Fate::Termed,
            (Sent::Term(_), false, true) => Fate::TermedMaybe,
            // A NAK gives it back whether or not the relay had it: a NAK
            // it never read leaves it held until the connection ends.
            (Sent::Nak(_), _, _) => Fate::Naked,
            _ => Fate::Held,
        };
    }
    Fate::Held
}

pub(super) fn check(
    ctx: &Ctx<'_>,
    acc_plain: &BTreeMap<u32, Accepted>,
    found: &mut Vec<Violation>,
) -> String {
    let ack: &AckCfg = ctx.case.ack.as_ref().expect("an ack case");
    let groups = ack.group_names();
    let gi = |name: &str| groups.iter().position(|g| g == name);
    let out = ctx.out;

    // Dead letters.
    let dead = match &out.dead {
        Some(Ok(d)) => d.clone(),
        Some(Err(e)) => {
            found.push(v(
                Kind::SpoolDamaged,
                None,
                format!("the dead-letter spool cannot be read: {e}"),
            ));
            Vec::new()
        }
        None => Vec::new(),
    };

    // Deliveries.
    let mut deliveries: Vec<Delivery> = Vec::new();
    let mut term_sent: HashMap<(usize, u64), Vec<(MsgId, u32)>> = HashMap::new();
    let mut acked_n = vec![0usize; groups.len()];
    for c in &out.consumers {
        let Some(log) = &c.ack else { continue };
        let op = out.peer_op.get(&PeerKey::C(c.idx)).copied();
        let Some(g) = gi(&log.group) else { continue };
        let h = had(ctx, c, log, found);
        for (i, r) in log.receipts.iter().enumerate() {
            let f = fate(log, i, &h);
            if f.settled() || f == Fate::AckedMaybe {
                acked_n[g] += 1;
            }
            if matches!(f, Fate::Termed | Fate::TermedMaybe) {
                term_sent.entry((g, r.seq)).or_default().push((r.id, c.idx));
            }
            deliveries.push(Delivery {
                t: r.t,
                consumer: c.idx,
                group: g,
                inc: log.inc,
                seq: r.seq,
                attempt: r.attempt,
                fate: f,
                after_giveback: c.giveback_t.is_some_and(|gt| r.t > gt),
            });
        }
        // Integrity and the relay's manners.
        if !log.malformed.is_empty() {
            found.push(v(
                Kind::Malformed,
                op,
                format!(
                    "{} got {} bad frames or bodies, first: {}",
                    ctx.cop(c.idx),
                    log.malformed.len(),
                    log.malformed[0]
                ),
            ));
        }
        for r in &log.receipts {
            let known = ctx
                .producers
                .get(&r.id.conn)
                .is_some_and(|p| r.id.seq < p.total);
            if !known {
                found.push(v(
                    Kind::Malformed,
                    op,
                    format!(
                        "{} received {} (seq {}), which nobody sent",
                        ctx.cop(c.idx),
                        r.id,
                        r.seq
                    ),
                ));
                break;
            }
        }
        if let Some(e) = &log.err {
            found.push(v(
                Kind::Protocol,
                op,
                format!("the relay answered {} with {e}", ctx.cop(c.idx)),
            ));
        }
        if let Some(ms) = log.unreset_ms {
            found.push(v(
                Kind::AckTimeout,
                op,
                format!(
                    "{} held a message {ms} ms without acknowledging it (ack_timeout {} ms) and the relay did not reset it (a black hole)",
                    ctx.cop(c.idx),
                    ack.ack_timeout_ms
                ),
            ));
        }
        if let ConsumerEnd::LeftNoEof(e) = &c.end {
            if ctx
                .crash_between(c.connected_t, c.end_t.max(c.connected_t) + 1)
                .is_none()
            {
                found.push(v(
                    Kind::Hang,
                    op,
                    format!(
                        "{} half-closed and never got the relay's EOF: {e}",
                        ctx.cop(c.idx)
                    ),
                ));
            }
        }
        // First deliveries in seq order.
        let mut last1: Option<u64> = None;
        for r in log.receipts.iter().filter(|r| r.attempt == 1) {
            if last1.is_some_and(|l| r.seq <= l) {
                found.push(v(
                    Kind::Fifo,
                    op,
                    format!(
                        "{} got seq {} as a first delivery (attempt 1) after seq {}",
                        ctx.cop(c.idx),
                        r.seq,
                        last1.unwrap_or(0)
                    ),
                ));
                break;
            }
            last1 = Some(r.seq);
        }
    }
    // A failed fsync poisons a spool for good: the dead-letter spool's too.
    // Its writer must not retry a poisoned spool while the route serves on
    // (the dead letters it holds pin their group's floor forever); a
    // second retry in one incarnation means it did.
    let mut poisoned: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for e in &out.events {
        let dead_write = e.level == tracing::Level::ERROR
            && e.message.starts_with("cannot write")
            && e.message.contains("dead letters")
            && e.get("error").is_some_and(|x| x.contains("poisoned"));
        if !dead_write {
            continue;
        }
        let inc = out
            .ends
            .iter()
            .rev()
            .find(|x| x.start_t <= e.t)
            .map_or(usize::MAX, |x| x.inc);
        poisoned.entry(inc).or_default().push(e.line());
    }
    for (inc, lines) in poisoned {
        if lines.len() < 2 {
            continue;
        }
        found.push(v(
            Kind::FsyncIgnored,
            None,
            format!(
                "incarnation {inc}: the dead-letter spool was poisoned by a failed fsync and its writer retried it {} times while the route served on:\n      relay: {}",
                lines.len(),
                lines[0]
            ),
        ));
    }

    // Producers' manners.
    for p in &out.producers {
        let Some(log) = &p.ack else { continue };
        let op = out.peer_op.get(&PeerKey::P(p.idx)).copied();
        for o in log.odd.iter().take(1) {
            found.push(v(Kind::Protocol, op, format!("{}: {o}", ctx.pop(p.idx))));
        }
        for c in &log.conns {
            if let Some(e) = &c.err {
                if !e.starts_with("ERR 409") && !e.starts_with("ERR 503") {
                    found.push(v(
                        Kind::Protocol,
                        op,
                        format!("the relay answered {} with {e}", ctx.pop(p.idx)),
                    ));
                }
            }
        }
    }

    // Which body each receipt was, by (consumer, seq): for dead letters.
    let mut id_at: HashMap<(u32, u64), MsgId> = HashMap::new();
    let mut by_id: BTreeMap<(MsgId, usize), Vec<Delivery>> = BTreeMap::new();
    let mut by_seq: BTreeMap<u64, Vec<(u64, MsgId)>> = BTreeMap::new();
    for c in &out.consumers {
        let Some(log) = &c.ack else { continue };
        for r in &log.receipts {
            id_at.insert((c.idx, r.seq), r.id);
            by_seq.entry(r.seq).or_default().push((r.t, r.id));
        }
    }
    {
        let mut at = 0usize;
        for c in &out.consumers {
            let Some(log) = &c.ack else { continue };
            if gi(&log.group).is_none() {
                continue;
            }
            for r in &log.receipts {
                let d = deliveries[at];
                at += 1;
                by_id.entry((r.id, d.group)).or_default().push(d);
            }
        }
    }
    for list in by_id.values_mut() {
        list.sort_by_key(|d| d.t);
    }

    // The spool's contents after each end (for redeliveries after a
    // restart).
    let pending: Vec<(u64, HashSet<MsgId>)> = out
        .ends
        .iter()
        .filter_map(|e| {
            let s = e.snapshot.as_ref().ok()?;
            Some((e.done_t, s.iter().copied().collect()))
        })
        .collect();
    let power_cuts: Vec<u64> = out.crashes.iter().filter(|c| c.1).map(|c| c.0).collect();
    // Ends after which the relay may have forgotten what it had: crashes,
    // kills, spools not cleanly closed (a failed fsync, a route that
    // stopped by itself).
    let mut deaths: Vec<u64> = out.crashes.iter().map(|c| c.0).collect();
    deaths.extend(out.dirty.iter().copied());
    deaths.extend(
        out.ends
            .iter()
            .filter(|e| !matches!(e.kind, EndKind::Graceful))
            .map(|e| e.t),
    );
    let death_between = |a: u64, b: u64| deaths.iter().any(|&t| a < t && t < b);

    // Dead letters: their rules, and what they hold.
    let mut dead_ids: HashSet<(MsgId, usize)> = HashSet::new();
    let mut dead_term = 0;
    let mut dead_max = 0;
    let mut bad_dead: Vec<String> = Vec::new();
    for d in &dead {
        let g = gi(&d.group);
        let id = match &d.id {
            Ok(id) => *id,
            Err(e) => {
                bad_dead.push(format!("seq {} ({}): {e}", d.seq, d.reason));
                continue;
            }
        };
        let Some(g) = g else {
            bad_dead.push(format!(
                "seq {} ({id}) in group '{}', which is not declared",
                d.seq, d.group
            ));
            continue;
        };
        let sent = ctx.producers.get(&id.conn).map(|p| p.total);
        if sent.is_none_or(|total| id.seq >= total) {
            bad_dead.push(format!("seq {}: {id}, which nobody sent", d.seq));
        }
        match d.reason.as_str() {
            "max_deliveries" => {
                dead_max += 1;
                if d.attempts != ack.max_deliveries {
                    bad_dead.push(format!(
                        "seq {} ({id}, group '{}') died of max_deliveries after {} attempts; max_deliveries is {}",
                        d.seq, d.group, d.attempts, ack.max_deliveries
                    ));
                }
            }
            "term" => {
                dead_term += 1;
                let termed = term_sent
                    .get(&(g, d.seq))
                    .is_some_and(|l| l.iter().any(|(tid, _)| *tid == id));
                if !termed {
                    bad_dead.push(format!(
                        "seq {} ({id}, group '{}') is dead by TERM, but no consumer of the group TERMed that message at that seq{}",
                        d.seq,
                        d.group,
                        match term_sent.get(&(g, d.seq)) {
                            Some(l) => format!(" (TERMed there: {:?})", l),
                            None => String::new(),
                        }
                    ));
                }
            }
            other => bad_dead.push(format!("seq {}: unknown reason {other}", d.seq)),
        }
        dead_ids.insert((id, g));
    }
    if !bad_dead.is_empty() {
        let mut text = format!("{} dead letters break their rules:", bad_dead.len());
        for b in bad_dead.iter().take(6) {
            let _ = write!(text, "\n      {b}");
        }
        found.push(v(Kind::DeadLetter, None, text));
    }

    // Accepted messages.
    let mut accepted: Vec<(u32, u32, String)> = Vec::new(); // (producer, count, basis)
    for p in &out.producers {
        match &p.ack {
            Some(log) => accepted.push((
                p.idx,
                log.confirmed,
                format!(
                    "confirmed by CONF over {} connection(s), ended {:?}",
                    log.conns.len(),
                    p.end
                ),
            )),
            None => {
                if let Some(a) = acc_plain.get(&p.idx) {
                    accepted.push((p.idx, a.count, a.basis.clone()));
                }
            }
        }
    }
    let accepted_n: u64 = accepted.iter().map(|a| u64::from(a.1)).sum();

    // Lost: accepted, and in some group neither acknowledged nor dead.
    if !out.cut_short {
        for (p, count, basis) in &accepted {
            for (g, gname) in groups.iter().enumerate() {
                let mut missing = Vec::new();
                for seq in 0..*count {
                    let id = MsgId { conn: *p, seq };
                    let acked = by_id.get(&(id, g)).is_some_and(|l| {
                        l.iter()
                            .any(|d| matches!(d.fate, Fate::Acked | Fate::AckedMaybe))
                    });
                    if !acked && !dead_ids.contains(&(id, g)) {
                        missing.push(seq);
                    }
                }
                if missing.is_empty() {
                    continue;
                }
                let mut text = format!(
                    "{} accepted messages of {} were neither acknowledged in group '{gname}' nor dead-lettered there ({basis}):",
                    missing.len(),
                    ctx.pop(*p),
                );
                let rs = ranges(&missing);
                for &(lo, hi) in rs.iter().take(3) {
                    let _ = write!(text, "\n      p{p}#{lo}..={hi}:");
                    let id = MsgId { conn: *p, seq: lo };
                    match by_id.get(&(id, g)) {
                        Some(list) => {
                            for d in list.iter().take(6) {
                                let _ = write!(
                                    text,
                                    "\n        #{lo} seq {} attempt {} to {} at {}: {:?}",
                                    d.seq,
                                    d.attempt,
                                    ctx.cop(d.consumer),
                                    ctx.when(d.t),
                                    d.fate
                                );
                            }
                        }
                        None => {
                            let _ = write!(text, "\n        #{lo} never delivered to the group");
                        }
                    }
                    for e in &out.ends {
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
                }
                if rs.len() > 3 {
                    let _ = write!(text, "\n      … and {} more ranges", rs.len() - 3);
                }
                found.push(v(
                    Kind::Lost,
                    out.peer_op.get(&PeerKey::P(*p)).copied(),
                    text,
                ));
            }
        }
    }

    // Redeliveries of a seq, re-enqueues of a body.
    let mut unexplained: Vec<String> = Vec::new();
    let mut requeued: Vec<String> = Vec::new();
    let mut redeliveries = 0usize;
    for ((id, g), list) in &by_id {
        let mut seqs: BTreeMap<u64, Vec<&Delivery>> = BTreeMap::new();
        for d in list {
            seqs.entry(d.seq).or_default().push(d);
        }
        for same in seqs.values() {
            for w in same.windows(2) {
                let (a, b) = (w[0], w[1]);
                redeliveries += 1;
                if !a.fate.settled() {
                    continue;
                }
                if death_between(a.t, b.t)
                    || pending
                        .iter()
                        .any(|(t, ids)| a.t < *t && *t < b.t && ids.contains(id))
                {
                    continue;
                }
                unexplained.push(format!(
                    "{id} (seq {}) in group '{}': {:?} by {} at {}, delivered again (attempt {}) to {} at {}, with no restart that found it in the spool and no crash in between",
                    a.seq,
                    groups[*g],
                    a.fate,
                    ctx.cop(a.consumer),
                    ctx.when(a.t),
                    b.attempt,
                    ctx.cop(b.consumer),
                    ctx.when(b.t)
                ));
            }
        }
        if seqs.len() > 1 {
            if let Some(why) = twice_not_allowed(ctx, *id, &death_between) {
                requeued.push(format!(
                    "{id} in group '{}' at seqs {:?}: {why}",
                    groups[*g],
                    seqs.keys().collect::<Vec<_>>()
                ));
            }
        }
    }
    if !unexplained.is_empty() {
        let n = unexplained.len();
        let mut text = format!("{n} deliveries again of a settled message:");
        for u in unexplained.iter().take(5) {
            let _ = write!(text, "\n      {u}");
        }
        found.push(v(Kind::Duplicate, None, text));
    }
    if !requeued.is_empty() {
        let n = requeued.len();
        let mut text = format!("{n} messages queued twice:");
        for u in requeued.iter().take(5) {
            let _ = write!(text, "\n      {u}");
        }
        found.push(v(Kind::Duplicate, None, text));
    }

    // Attempts.
    let mut bad_attempts: Vec<String> = Vec::new();
    let mut per: BTreeMap<(Option<usize>, usize, u64), Vec<Delivery>> = BTreeMap::new();
    for d in &deliveries {
        if d.attempt == 0 || d.attempt > ack.max_deliveries {
            bad_attempts.push(format!(
                "seq {} delivered to {} with attempt {} (max_deliveries {})",
                d.seq,
                ctx.cop(d.consumer),
                d.attempt,
                ack.max_deliveries
            ));
        }
        per.entry((d.inc, d.group, d.seq)).or_default().push(*d);
    }
    for ((inc, g, seq), mut list) in per {
        list.sort_by_key(|d| d.t);
        let mut seen = HashSet::new();
        for d in &list {
            if !seen.insert(d.attempt) {
                bad_attempts.push(format!(
                    "seq {seq} in group '{}' (incarnation {inc:?}) delivered twice as attempt {} (last to {})",
                    groups[g],
                    d.attempt,
                    ctx.cop(d.consumer)
                ));
                break;
            }
        }
        for w in list.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b.attempt <= a.attempt && !b.after_giveback {
                bad_attempts.push(format!(
                    "seq {seq} in group '{}' (incarnation {inc:?}): attempt {} to {} at {}, then attempt {} to {} at {}",
                    groups[g],
                    a.attempt,
                    ctx.cop(a.consumer),
                    ctx.when(a.t),
                    b.attempt,
                    ctx.cop(b.consumer),
                    ctx.when(b.t)
                ));
                break;
            }
        }
    }
    if !bad_attempts.is_empty() {
        let mut text = format!("{} attempt numbers break the rules:", bad_attempts.len());
        for b in bad_attempts.iter().take(6) {
            let _ = write!(text, "\n      {b}");
        }
        found.push(v(Kind::Attempts, None, text));
    }

    // A seq carries one message (unless a power cut reused it).
    for (seq, mut list) in by_seq {
        list.sort();
        for w in list.windows(2) {
            if w[0].1 != w[1].1 && !power_cuts.iter().any(|&t| w[0].0 < t && t < w[1].0) {
                found.push(v(
                    Kind::Malformed,
                    None,
                    format!(
                        "seq {seq} carried {} at {}, then {} at {}, with no power cut in between",
                        w[0].1,
                        ctx.when(w[0].0),
                        w[1].1,
                        ctx.when(w[1].0)
                    ),
                ));
                break;
            }
        }
    }

    if super::run::verbose() {
        for c in &out.consumers {
            let Some(log) = &c.ack else { continue };
            let line = ctx.cline(c).map_or("no line".to_string(), |e| e.line());
            eprintln!(
                "  {}: group '{}' inc {:?}, {} MSGs, {} frames sent ({} whole), held at end {}, crashed on {:?}, ended {:?}; relay: {line}",
                ctx.cop(c.idx),
                log.group,
                log.inc,
                log.receipts.len(),
                log.sent.len(),
                log.written,
                log.held_at_end.len(),
                log.crashed_on,
                c.end
            );
        }
        for p in &out.producers {
            let Some(log) = &p.ack else { continue };
            for c in &log.conns {
                eprintln!(
                    "  {}: conn inc {:?}, {} PUBs from #{}, CONF {}, {} DUPs, err {:?}, ended {}",
                    ctx.pop(p.idx),
                    c.inc,
                    c.sent.len(),
                    c.sent.first().map_or(0, |s| s.0),
                    c.conf,
                    c.dups.len(),
                    c.err,
                    c.end
                );
            }
        }
    }

    // Stats.
    let ack_timeouts = out
        .consumers
        .iter()
        .filter(|c| c.ack.is_some())
        .filter_map(|c| ctx.cline(c))
        .filter(|e| e.get("reason") == Some("ack_timeout"))
        .count();
    let confirms: usize = out
        .producers
        .iter()
        .filter_map(|p| p.ack.as_ref())
        .map(|l| l.conns.len())
        .sum();
    let dups: usize = out
        .producers
        .iter()
        .filter_map(|p| p.ack.as_ref())
        .flat_map(|l| &l.conns)
        .map(|c| c.dups.len())
        .sum();
    format!(
        "ack[{} groups, timeout {} ms, max {}, {}]: {} producers ({} connections, {} DUPs), {} consumers ({} reset for ack timeouts), {accepted_n} messages accepted, {} deliveries ({} again), acknowledged per group {:?}, {} dead letters ({dead_term} term, {dead_max} max_deliveries), {} incarnations ({} crashes)",
        groups.len(),
        ack.ack_timeout_ms,
        ack.max_deliveries,
        if ack.from_ack { "confirming producers" } else { "plain producers" },
        out.producers.len(),
        confirms,
        dups,
        out.consumers.len(),
        ack_timeouts,
        deliveries.len(),
        redeliveries,
        acked_n,
        dead.len(),
        out.ends.len(),
        out.crashes.len()
    )
}

/// Why `id` may not be queued at two seqs (None: it may).
fn twice_not_allowed(
    ctx: &Ctx<'_>,
    id: MsgId,
    death_between: &dyn Fn(u64, u64) -> bool,
) -> Option<String> {
    let Some(p) = ctx.producers.get(&id.conn) else {
        return Some("nobody sent it".into());
    };
    let Some(log) = &p.ack else {
        return Some("a plain producer sends each message once".into());
    };
    let sends: Vec<u64> = log
        .conns
        .iter()
        .flat_map(|c| c.sent.iter().filter(|s| s.0 == id.seq).map(|s| s.1))
        .collect();
    if sends.len() < 2 {
        return Some(format!("its producer sent it {} time(s)", sends.len()));
    }
    // An unnamed producer's resend is a new message.
    log.name.as_ref()?;
    let first = sends.iter().copied().min().unwrap_or(0);
    let last = sends.iter().copied().max().unwrap_or(0);
    if death_between(first, last) {
        None
    } else {
        Some(format!(
            "named producer {} resent it ({} sends) with no relay death between its first send and its last: a resend must be a DUP",
            ctx.pop(id.conn),
            sends.len()
        ))
    }
}
