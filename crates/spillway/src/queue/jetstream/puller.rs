//! Reading side: batches from the durable consumer into the inbox, the
//! local queue the route's consumers (plain or ack protocol) are served
//! from, and a batch acknowledged to the cluster only once every message
//! of it has been delivered: the inbox's floor, which moves only on what
//! plain consumers' TCP acknowledged or ack-protocol consumers acked,
//! has passed its last message. Until then the relay tells the cluster
//! it is still working on it (`+WPI`, every third of AckWait), from this
//! task's timer, not from the delivery path, so a healthy slow consumer
//! never makes AckWait fire.
//!
//! The inbox is memory first and is emptied at start: what it held was
//! not acknowledged to the cluster, which delivers it again (to this
//! relay, or to another one sharing the durable consumer).
//!
//! Repeats are dropped by the seqs this relay already queued, per
//! producing spool: a batch published twice (a retry past the duplicate
//! window, a batch cut differently after a restart) is queued once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::{AckKind, Acker};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures_util::{FutureExt, StreamExt};
use spillway_spool::Spool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::batch::{self, BatchId};
use super::order::{Offer, Reorder};
use super::seen::Seen;
use super::JsStats;
use crate::queue::spool_io::SpoolIo;

/// How often the inbox floor is looked at while batches are held.
const FLOOR_POLL: Duration = Duration::from_millis(10);
/// How long a pull request waits at the server.
const PULL_EXPIRES: Duration = Duration::from_secs(10);

/// How long a pull request waits at the server: [`PULL_EXPIRES`], or for
/// a relay pinned with this TTL, at most half of what is left of the TTL
/// after 5 s: a request renewed at its expiry, or up to 5 s after it,
/// comes well before the server gives the pin away.
fn pull_expires(pinned: Option<Duration>) -> Duration {
    match pinned {
        Some(ttl) => PULL_EXPIRES
            .min(ttl.saturating_sub(Duration::from_secs(5)) / 2)
            .max(Duration::from_secs(1)),
        None => PULL_EXPIRES,
    }
}
/// How long after the last consumer left the relay stops pulling: past a
/// pull request's expiry, so that nothing is sent to one given up.
const IDLE_RELEASE: Duration = Duration::from_secs(30);
/// How long a consumer must stay connected before the relay pulls for it.
const CONSUMER_SETTLE: Duration = Duration::from_millis(500);
/// How often the consumers are looked at again while one was seen lately
/// (the look scans the route's peers; the loop turns once per batch).
const CONSUMER_RECHECK: Duration = Duration::from_secs(1);
/// How often a pulling relay announces itself to the others reading the
/// durable, and how long one is counted after it was last heard.
const PRESENCE_EVERY: Duration = Duration::from_secs(1);
const PRESENCE_TTL: Duration = Duration::from_secs(5);
/// How soon a gap in stream order is first looked up, and the longest
/// between lookups while it stays ([`Puller::probe`]).
const PROBE_FIRST: Duration = Duration::from_millis(100);
const PROBE_MAX: Duration = Duration::from_secs(5);

/// A batch queued in the inbox, not yet acknowledged to the cluster.
struct Held {
    /// The inbox seq after its last message.
    end: u64,
    stream_seq: u64,
    acker: Acker,
}

pub(crate) struct Puller<'a> {
    pub client: async_nats::Client,
    pub consumer: PullConsumer,
    /// The stream, to look up gaps in stream order.
    pub stream: async_nats::jetstream::stream::Stream<()>,
    pub subject: &'a str,
    /// Where relays reading the same durable announce themselves
    /// ([`presence_subject`]).
    pub presence: String,
    /// Batches are queued in stream order (one reading relay), not as they
    /// come (relays sharing the durable).
    pub ordered: bool,
    /// `pinned = true`: the durable has the pinned-client policy, and this
    /// relay pulls in its priority group; `Some(ttl)`: its pinned TTL.
    /// Only the pinned relay receives batches, so no other relay competes
    /// and nothing is announced or listened for on the presence subject.
    pub pinned: Option<Duration>,
    /// The stream keeps a batch this relay's durable acknowledged until
    /// the other groups' durables did too (Interest retention): a gap is
    /// looked up in the durable's ack floor, not in the stream.
    pub kept_for_others: bool,
    pub inbox: &'a Spool,
    pub inbox_io: &'a SpoolIo,
    pub max_pending: usize,
    pub batch_bytes: usize,
    pub ack_wait: Duration,
    pub stats: &'a JsStats,
    /// How long the longest-connected consumer of the route has been
    /// connected (`None`: no consumer).
    pub consumer_age: &'a (dyn Fn() -> Option<Duration> + Sync),
}

/// What the puller holds: batches queued and not acknowledged, what it
/// queued per producing spool, and batches waiting for their turn.
struct State {
    held: VecDeque<Held>,
    seen: Seen,
    highest: HashMap<u64, u64>,
    order: Reorder<(async_nats::Message, Acker)>,
    /// When a gap was last seen held by a batch still in the stream while
    /// other pull requests waited at the server (another relay reading
    /// the durable?), and when that was last said.
    crowded_since: Option<tokio::time::Instant>,
    crowded_warned: Option<tokio::time::Instant>,
    /// Other relays reading the durable, by the id they announce, and
    /// when each was last heard.
    peers: HashMap<u64, tokio::time::Instant>,
    /// The pin this relay was last given (`pinned`: the `Nats-Pin-Id` of
    /// the batches it received), to give it up on the way out.
    pin: Option<String>,
}

impl State {
    /// Whether another relay reads the durable now: it takes batches
    /// this one will never see, so gaps are not waited for.
    fn competing(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        self.peers
            .retain(|_, at| now.duration_since(*at) < PRESENCE_TTL);
        !self.peers.is_empty()
    }
}

/// The subject relays reading `consumer` of `stream` announce themselves
/// on while they pull (core NATS, not stored).
pub(super) fn presence_subject(stream: &str, consumer: &str) -> String {
    format!("_SPILLWAY.readers.{stream}.{consumer}")
}

impl Puller<'_> {
    pub async fn run(self, stop: CancellationToken) {
        let mut st = State {
            held: VecDeque::new(),
            seen: Seen::default(),
            highest: HashMap::new(),
            order: Reorder::new(),
            crowded_since: None,
            crowded_warned: None,
            peers: HashMap::new(),
            pin: None,
        };
        // This relay's id on the presence subject, and what it hears
        // there: only an ordered relay listens (nothing, if the subject
        // may not be used: then other readers are not seen, and
        // `ordered = false` says it).
        let me = fastrand::u64(1..);
        let mut presence = if self.ordered && self.pinned.is_none() {
            match self.client.subscribe(self.presence.clone()).await {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!(error = %e, subject = %self.presence, "cannot listen for other relays reading this durable");
                    None
                }
            }
        } else {
            None
        };
        let mut announce = tokio::time::interval(PRESENCE_EVERY);
        announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress =
            tokio::time::interval((self.ack_wait / 3).max(Duration::from_millis(100)));
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(FLOOR_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::from_millis(100);
        let mut retry_at = tokio::time::Instant::now();
        // Where stream order starts: every batch up to the ack floor was
        // acknowledged. Batches a relay held when it died come again after
        // AckWait, behind newer ones; the order puts them first.
        let mut consumer = self.consumer.clone();
        if let Ok(i) = consumer.info().await {
            st.order.start_at(i.ack_floor.stream_sequence + 1);
            if i.num_ack_pending > 0 {
                info!(
                    batches = i.num_ack_pending,
                    ordered = self.ordered,
                    "batches held by a relay that stopped uncleanly come again after ack_wait"
                );
            }
        }
        let mut probe_at = tokio::time::Instant::now();
        let mut probe_every = PROBE_FIRST;
        // The gap the probes are about (its first waiting stream seq).
        let mut probing: Option<u64> = None;
        let mut messages: Option<async_nats::jetstream::consumer::pull::Stream> = None;
        // When a consumer was last seen here (none yet: no pull).
        let mut last_consumer: Option<tokio::time::Instant> = None;
        loop {
            // Pull only while consumers are connected here: batches pulled
            // by a relay nobody reads from would wait for its consumers
            // while other relays' consumers could have them. A consumer
            // counts once it has stayed CONSUMER_SETTLE (one connection,
            // not several in a row): a connection that leaves at once (a
            // port check) must not make the relay pull
            // and hold batches no one reads. A pull is given up only after
            // consumers have been gone a while: its request stays at the
            // server until it expires, and what the server sends it
            // meanwhile would come back only after AckWait, behind newer
            // batches.
            let now = tokio::time::Instant::now();
            if last_consumer.is_none_or(|t| now.duration_since(t) >= CONSUMER_RECHECK)
                && (self.consumer_age)().is_some_and(|age| age >= CONSUMER_SETTLE)
            {
                last_consumer = Some(now);
            }
            let wanted = last_consumer.is_some_and(|t| now.duration_since(t) < IDLE_RELEASE);
            if !wanted {
                if let Some(mut m) = messages.take() {
                    // Its consumers are gone: what it holds goes back to
                    // the stream, for the relays that have consumers (or
                    // for this one's when they come back), and a standby
                    // relay may have the pin now rather than after its TTL.
                    // What the pull received and did not hand over yet
                    // goes back too.
                    let mut unread = Vec::new();
                    while let Some(Some(Ok(msg))) = m.next().now_or_never() {
                        unread.push(msg.split().1);
                    }
                    drop(m);
                    self.give_back(&mut st, unread).await;
                    self.give_up_pin(&mut st).await;
                }
            } else if messages.is_none() && now >= retry_at {
                let expires = pull_expires(self.pinned);
                let mut pull = self
                    .consumer
                    .stream()
                    .max_messages_per_batch(self.max_pending)
                    .max_bytes_per_batch(self.max_pending.saturating_mul(self.batch_bytes + 4096))
                    .heartbeat((expires / 2).min(Duration::from_secs(5)))
                    .expires(expires);
                if self.pinned.is_some() {
                    pull = pull.group(super::cluster::PIN_GROUP);
                }
                match pull.messages().await {
                    Ok(m) => messages = Some(m),
                    Err(e) => {
                        debug!(error = %e, "jetstream pull failed; retrying");
                        retry_at = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            let gap = st.order.gap().map(|g| g.1);
            if gap != probing {
                probing = gap;
                probe_every = PROBE_FIRST;
                probe_at = tokio::time::Instant::now() + PROBE_FIRST;
            }
            tokio::select! {
                () = stop.cancelled() => {
                    // What was delivered is acknowledged; the rest is given
                    // back at once, in order, so that the next puller (this
                    // relay restarted, or another) gets it before anything
                    // newer instead of after AckWait.
                    // The pull goes first (its subscription is dropped and
                    // the server told), so that nothing given back is sent
                    // to it again on the way out.
                    // What waited for its turn, and what the pull had
                    // received and not handed over yet, are given back
                    // too, after the held batches (they came after them).
                    let mut unread = Vec::new();
                    if let Some(mut m) = messages.take() {
                        while let Some(Some(Ok(msg))) = m.next().now_or_never() {
                            unread.push(msg.split().1);
                        }
                    }
                    let _ = self.client.flush().await;
                    self.ack_delivered(&mut st.held).await;
                    let waiting: Vec<Acker> = st.order.drain().map(|(_, a)| a).collect();
                    for a in st.held.iter().map(|h| &h.acker).chain(&waiting).chain(&unread) {
                        let _ = a.ack_with(AckKind::Nak(None)).await;
                    }
                    let _ = self.client.flush().await;
                    // With the pin given up, a standby relay takes what
                    // was given back now rather than after the pinned TTL.
                    self.give_up_pin(&mut st).await;
                    return;
                }
                _ = poll.tick() => self.ack_delivered(&mut st.held).await,
                // Every pulling relay announces itself (an unordered one
                // too: the ordered ones must not wait for its batches);
                // pinned relays never compete.
                _ = announce.tick(), if messages.is_some() && self.pinned.is_none() => {
                    let _ = self.client.publish(self.presence.clone(), me.to_string().into()).await;
                }
                m = async { presence.as_mut().expect("guarded").next().await }, if presence.is_some() => {
                    let Some(m) = m else {
                        presence = None;
                        continue;
                    };
                    let id = std::str::from_utf8(&m.payload).ok().and_then(|s| s.trim().parse::<u64>().ok());
                    if let Some(id) = id.filter(|&id| id != me) {
                        if st.peers.insert(id, tokio::time::Instant::now()).is_none() {
                            info!("another relay reads this durable: batches are queued as they come");
                        }
                        if !self.release(&mut st, &stop).await {
                            return;
                        }
                    }
                }
                _ = progress.tick(), if !st.held.is_empty() || !st.order.is_empty() => {
                    let waiting = st.order.items().map(|(_, a)| a);
                    for a in st.held.iter().map(|h| &h.acker).chain(waiting) {
                        let _ = a.ack_with(AckKind::Progress).await;
                    }
                }
                () = tokio::time::sleep_until(probe_at), if gap.is_some() => {
                    self.probe(&mut st).await;
                    probe_at = tokio::time::Instant::now() + probe_every;
                    probe_every = (probe_every * 2).min(PROBE_MAX);
                    if !self.release(&mut st, &stop).await {
                        return;
                    }
                }
                m = async { messages.as_mut().expect("guarded").next().await }, if messages.is_some() => {
                    let m = match m {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            debug!(error = %e, "jetstream pull error");
                            continue;
                        }
                        None => {
                            messages = None;
                            continue;
                        }
                    };
                    backoff = Duration::from_millis(100);
                    if self.pinned.is_some() {
                        let pin = m.headers.as_ref().and_then(|h| h.get_last(async_nats::header::NATS_PIN_ID));
                        if let Some(pin) = pin.filter(|p| st.pin.as_deref() != Some(p.as_str())) {
                            info!(pin = %pin.as_str(), "this relay is the durable's pinned reader");
                            st.pin = Some(pin.as_str().to_string());
                        }
                    }
                    let stream_seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                    let (msg, acker) = m.split();
                    if st.held.iter().any(|h| h.stream_seq == stream_seq) {
                        // Delivered again while still held here: the held
                        // copy is acknowledged once delivered.
                        continue;
                    }
                    if !self.ordered || stream_seq == 0 {
                        if !self.take(&mut st, stream_seq, &msg, acker, &stop).await {
                            return;
                        }
                        continue;
                    }
                    match st.order.offer(stream_seq, (msg, acker), tokio::time::Instant::now()) {
                        Offer::Behind((msg, acker)) => {
                            if !self.take(&mut st, stream_seq, &msg, acker, &stop).await {
                                return;
                            }
                        }
                        Offer::Repeat(_) => {}
                        Offer::Kept => {
                            if !self.release(&mut st, &stop).await {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Queues the batches whose turn it is, and past gaps while another
    /// relay reads the durable; `false` at shutdown or if the inbox
    /// failed.
    async fn release(&self, st: &mut State, stop: &CancellationToken) -> bool {
        loop {
            while let Some((seq, (msg, acker))) = st.order.pop_ready() {
                if !self.take(st, seq, &msg, acker, stop).await {
                    return false;
                }
            }
            match st.order.gap() {
                Some((_, first, _)) if st.competing() => st.order.skip_to(first),
                _ => return true,
            }
        }
    }

    /// Asks the stream about the gap the first waiting batch waits for:
    /// stream seqs that are not in the stream any more (acknowledged)
    /// will not come. A gap waited for past the hold limit is given up
    /// (the batch in it, if it ever comes, is counted as reordered).
    async fn probe(&self, st: &mut State) {
        let order = &mut st.order;
        let Some((next, first, since)) = order.gap() else {
            return;
        };
        let mut consumer = self.consumer.clone();
        let Some(next) = next else {
            match consumer.info().await {
                Ok(i) => order.start_at(i.ack_floor.stream_sequence + 1),
                Err(e) => debug!(error = %e, "jetstream consumer info failed"),
            }
            return;
        };
        let limit = self.ack_wait * 2 + PULL_EXPIRES;
        if since.elapsed() >= limit {
            let why = if self.pinned.is_some() {
                "a relay that lost the pin still holds them? they are delivered when it \
                 gives them back, counted as reordered"
            } else {
                "another relay reading this durable holds them? then set ordered = false"
            };
            warn!(
                from = next,
                to = first - 1,
                waited = ?limit,
                "stream batches did not come back; delivering what came after them ({why})"
            );
            order.skip_to(first);
            return;
        }
        let mut next = next;
        if self.kept_for_others {
            // What this durable acknowledged stays in the stream for the
            // other groups: below its ack floor nothing comes again. Above
            // it, the lookup below says whether any of the gap is ours.
            match consumer.info().await {
                Ok(i) => {
                    let floor = i.ack_floor.stream_sequence;
                    if floor + 1 >= first {
                        order.skip_to(first);
                        return;
                    }
                    if floor + 1 > next {
                        order.skip_to(floor + 1);
                        next = floor + 1;
                    }
                }
                Err(e) => {
                    debug!(error = %e, "jetstream consumer info failed");
                    return;
                }
            }
        }
        match self
            .stream
            .get_first_raw_message_by_subject(&self.subject, next)
            .await
        {
            Ok(m) if m.sequence < first => {
                order.skip_to(m.sequence);
                // A batch out there, not here. A relay that shares the
                // durable (its pull requests wait at the server beside
                // this one's) may hold it for long: say so, once a
                // minute, past the time a pull of this relay's own could
                // still wait there.
                if self.pinned.is_some() {
                    // Standby relays' pull requests wait beside this one's.
                    return;
                }
                let now = tokio::time::Instant::now();
                let crowded = consumer.info().await.is_ok_and(|i| i.num_waiting > 1);
                if !crowded {
                    st.crowded_since = None;
                    return;
                }
                let since = *st.crowded_since.get_or_insert(now);
                if now.duration_since(since) > PULL_EXPIRES
                    && st
                        .crowded_warned
                        .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
                {
                    st.crowded_warned = Some(now);
                    warn!(
                        waiting_for = m.sequence,
                        presence = %self.presence,
                        "a stream batch is held elsewhere while other pull requests wait on \
                         the durable, and no other relay announced itself (may relays use the \
                         presence subject?): if several relays read it, set ordered = false on \
                         each (each waits for the batches the others hold)"
                    );
                }
            }
            Ok(_) => order.skip_to(first),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => order.skip_to(first),
            Err(e) => debug!(error = %e, "jetstream message lookup failed"),
        }
    }

    /// Gives every batch this relay holds back to the stream (NAK, in
    /// stream order) and stops holding it. For a relay whose consumers
    /// left: held here, they would keep every other relay's consumers
    /// waiting (behind them in stream order, or for `max_pending` to free
    /// up). What a consumer took of them before it left comes again:
    /// duplicates, never loss.
    async fn give_back(&self, st: &mut State, unread: Vec<Acker>) {
        let held: Vec<Held> = st.held.drain(..).collect();
        let waiting: Vec<(u64, Acker)> = st
            .order
            .drain_with_seqs()
            .map(|(seq, (_, acker))| (seq, acker))
            .collect();
        if held.is_empty() && waiting.is_empty() && unread.is_empty() {
            return;
        }
        // The inbox keeps its copies: below these batches it may hold a
        // reset consumer's redelivery window of batches acknowledged to
        // the stream already, which only this relay still has. So if its
        // consumers come back, they may get these batches too (also
        // delivered by other relays): duplicates, never loss. Their seqs
        // stay queued here, so a copy sent back to this relay is dropped
        // as a repeat (and acknowledged).
        let lowest = held
            .iter()
            .map(|h| h.stream_seq)
            .chain(waiting.iter().map(|&(s, _)| s))
            .filter(|&s| s > 0)
            .min();
        for a in held
            .iter()
            .map(|h| &h.acker)
            .chain(waiting.iter().map(|(_, a)| a))
            .chain(&unread)
        {
            let _ = a.ack_with(AckKind::Nak(None)).await;
        }
        let _ = self.client.flush().await;
        if let Some(seq) = lowest {
            st.order.rewind_to(seq);
        }
        st.highest.clear();
        info!(
            batches = held.len() + waiting.len() + unread.len(),
            "no consumer here for a while: gave the batches held for them back to the stream"
        );
    }

    /// Releases the durable's pin if this relay holds it, so that a
    /// standby relay is pinned at once (not after the pinned TTL). Only
    /// its own pin: another relay's would move the queue under it.
    async fn give_up_pin(&self, st: &mut State) {
        let Some(pin) = st.pin.take() else {
            return;
        };
        // At shutdown with the cluster away, not the API's 10 s twice.
        let give_up = self.unpin_if_ours(&pin);
        if tokio::time::timeout(Duration::from_secs(3), give_up)
            .await
            .is_err()
        {
            debug!("jetstream unpin timed out; the pin expires by itself");
        }
    }

    async fn unpin_if_ours(&self, pin: &str) {
        let mut consumer = self.consumer.clone();
        let ours = match consumer.info().await {
            Ok(i) => i.priority_groups.iter().any(|g| {
                g.group == super::cluster::PIN_GROUP && g.pinned_client_id.as_deref() == Some(pin)
            }),
            Err(e) => {
                debug!(error = %e, "jetstream consumer info failed; the pin expires by itself");
                false
            }
        };
        if !ours {
            return;
        }
        let name = consumer.cached_info().name.clone();
        match self
            .stream
            .unpin_consumer(&name, super::cluster::PIN_GROUP)
            .await
        {
            Ok(()) => info!("gave up the durable's pin: a standby relay takes over"),
            Err(e) => debug!(error = %e, "jetstream unpin failed; the pin expires by itself"),
        }
    }

    /// Queues one stream message's batch into the inbox (what was not
    /// queued already) and holds it until delivered; `false` at shutdown
    /// or if the inbox failed.
    async fn take(
        &self,
        st: &mut State,
        stream_seq: u64,
        msg: &async_nats::Message,
        acker: Acker,
        stop: &CancellationToken,
    ) -> bool {
        let get = |k: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(k))
                .map(|v| v.as_str().to_string())
        };
        let parsed = BatchId::from_headers(get)
            .ok_or_else(|| batch::BadBatch("missing spillway headers".into()))
            .and_then(|id| Ok((id, batch::split(&msg.payload, id.count)?)));
        let (id, msgs) = match parsed {
            Ok(p) => p,
            Err(e) => {
                warn!(stream_seq, error = %e, "not a spillway batch; terminated");
                self.stats.bad_batches.fetch_add(1, Ordering::Relaxed);
                let _ = acker.ack_with(AckKind::Term).await;
                return true;
            }
        };
        let parts = st.seen.unseen(&id);
        if parts.is_empty() {
            self.stats.duplicates_in.fetch_add(1, Ordering::Relaxed);
            let _ = acker.ack().await;
            return true;
        }
        let top = st.highest.entry(id.spool).or_insert(0);
        if id.first < *top {
            self.stats.reordered.fetch_add(1, Ordering::Relaxed);
        }
        *top = (*top).max(id.end());
        let slices: Vec<&[u8]> = parts
            .iter()
            .flat_map(|&(a, b)| msgs[a..b].iter().map(|m| &m[..]))
            .collect();
        let Some(end) = self.queue(&slices, stop).await else {
            return false;
        };
        for &(a, b) in &parts {
            st.seen
                .add(id.spool, id.first + a as u64, id.first + b as u64);
        }
        self.stats
            .messages_in
            .fetch_add(slices.len() as u64, Ordering::Relaxed);
        st.held.push_back(Held {
            end,
            stream_seq,
            acker,
        });
        true
    }

    /// Acknowledges the held batches every message of which was delivered
    /// (the inbox's delivered floor passed them). Not its retention floor:
    /// that also waits for each plain consumer's redelivery window
    /// (`redeliver_on_reset`), kept in this relay's memory as on a local
    /// route; waiting for it held the last batches unacknowledged for as
    /// long as the consumer stayed connected (found by
    /// tests/jetstream_kill.rs: a trickle stopped after `max_pending`
    /// batches).
    async fn ack_delivered(&self, held: &mut VecDeque<Held>) {
        let floor = self.inbox.delivered_floor().max(self.inbox.ack_floor());
        while held.front().is_some_and(|h| h.end <= floor) {
            let h = held.pop_front().expect("front");
            // A lost ack comes back as a redelivery, whose seqs were
            // queued: acknowledged then.
            if let Err(e) = h.acker.ack().await {
                debug!(error = %e, "jetstream ack failed");
            }
            self.stats.batches_in_acked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends to the inbox; returns the inbox seq after the batch, or
    /// `None` at shutdown or if the inbox failed.
    async fn queue(&self, msgs: &[&[u8]], stop: &CancellationToken) -> Option<u64> {
        let mut batch = match self.inbox.encode(msgs) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot queue a batch from the stream");
                return None;
            }
        };
        loop {
            let (back, r) = self.inbox_io.append(batch, false, false, None).await;
            match r {
                // The puller is the inbox's only writer.
                Ok(o) if o.accepted > 0 => return Some(self.inbox.next_seq()),
                Ok(_) | Err(spillway_spool::SpoolError::Full { .. }) => {
                    batch = back?;
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
                Err(e) => {
                    warn!(error = %e, "the inbox failed");
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::JS_PINNED_TTL_RANGE;

    #[test]
    fn a_pinned_relay_renews_its_pull_well_within_the_ttl() {
        assert_eq!(pull_expires(None), PULL_EXPIRES);
        let (low, high) = (*JS_PINNED_TTL_RANGE.start(), *JS_PINNED_TTL_RANGE.end());
        let mut ttl = low;
        while ttl <= high {
            let e = pull_expires(Some(ttl));
            assert!(e <= PULL_EXPIRES, "{ttl:?}: {e:?}");
            // Renewed at the latest 5 s after the expiry, with as much
            // again to spare before the pin goes.
            assert!(
                (e + Duration::from_secs(5)) * 2 <= ttl + Duration::from_secs(5),
                "{ttl:?}: {e:?}"
            );
            ttl += Duration::from_millis(500);
        }
        assert_eq!(pull_expires(Some(low)), Duration::from_millis(3500));
        assert_eq!(pull_expires(Some(high)), PULL_EXPIRES);
    }
}
