//! The dead-letter spool of a route whose consumers speak the ack
//! protocol: `<spool>/dead/`, a spool of its own, written with an fsync
//! per batch (dead letters are rare; each must be durable before the main
//! queue's floor passes it).
//!
//! A dead letter holds its group's floor until it is written, and on a
//! full disk only moving the floor frees space: so the dead-letter spool
//! keeps a reserve file (`letters.reserve`, at least 4 MiB and one
//! `max_message`), given up when a write meets a full disk, and made again
//! once a write succeeds.
//!
//! Each record holds one dead letter: a small header (its sequence in the
//! main queue, how often it was delivered, why it died, when), then the
//! message as it was stored (framing included), so that `spillway spool
//! requeue` can append it to the main queue unchanged.
//!
//! Record layout, version 1 (integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `SPDL` |
//! | 4 | 1 | version (1) |
//! | 5 | 8 | seq in the main queue |
//! | 13 | 4 | attempts (deliveries) |
//! | 17 | 8 | append time, ms since the Unix epoch |
//! | 25 | 8 | time of death, ms since the Unix epoch |
//! | 33 | 1 | reason: 1 max_deliveries, 2 term |
//! | 34 | 2 | length G of the group name (empty: the default group) |
//! | 36 | G | group name |
//! | 36+G | 2 | length R of the TERM text |
//! | 38+G | R | TERM text |
//! | 38+G+R | rest | the message, as stored |

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use spillway_spool::fs::Fs;
use spillway_spool::{Durability, Spool, SpoolConfig, SpoolError, WhenFull};
use tracing::{error, warn};

use super::dispatch::{Bury, BuryReason};
use super::spool_io::Acker;

const MAGIC: &[u8; 4] = b"SPDL";
const VERSION: u8 = 1;
/// After a failed write, how long before the same dead letters are tried
/// again (they stay in memory, holding the main queue's floor).
const RETRY: Duration = Duration::from_secs(1);
/// Segments of the dead-letter spool.
const SEGMENT: u64 = 16 << 20;
/// The dead-letter spool's reserve file.
const RESERVE: &str = "letters.reserve";

/// The directory of a route's dead-letter spool.
pub fn dir_of(spool: &Path) -> PathBuf {
    spool.join("dead")
}

/// One dead letter, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub seq: u64,
    pub attempts: u32,
    pub append_ms: u64,
    pub dead_ms: u64,
    /// `max_deliveries` or `term`.
    pub reason: &'static str,
    pub group: String,
    /// The TERM text (empty otherwise).
    pub text: Bytes,
    /// The message as it was stored.
    pub message: Bytes,
}

/// Encodes `b` as a dead-letter record.
pub fn encode(b: &Bury, group: &str, dead_ms: u64) -> Vec<u8> {
    let (kind, text): (u8, &[u8]) = match &b.reason {
        BuryReason::MaxDeliveries => (1, b""),
        BuryReason::Term(t) => (2, t),
    };
    let group = &group.as_bytes()[..group.len().min(u16::MAX as usize)];
    let text = &text[..text.len().min(u16::MAX as usize)];
    let mut out = Vec::with_capacity(38 + group.len() + text.len() + b.msg.data.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&b.msg.seq.to_le_bytes());
    out.extend_from_slice(&b.attempts.to_le_bytes());
    out.extend_from_slice(&b.msg.append_ms.to_le_bytes());
    out.extend_from_slice(&dead_ms.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&(group.len() as u16).to_le_bytes());
    out.extend_from_slice(group);
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text);
    out.extend_from_slice(&b.msg.data);
    out
}

/// Decodes a dead-letter record (what [`encode`] wrote).
pub fn decode(rec: &Bytes) -> Result<DeadLetter, String> {
    fn take<'a>(b: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], String> {
        let s = b
            .get(*at..*at + n)
            .ok_or_else(|| format!("dead-letter record truncated at byte {at}"))?;
        *at += n;
        Ok(s)
    }
    fn int<const N: usize>(b: &[u8], at: &mut usize) -> Result<[u8; N], String> {
        let s = take(b, at, N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    let b = &rec[..];
    let mut at = 0;
    if take(b, &mut at, 4)? != MAGIC {
        return Err("not a dead-letter record (bad magic)".into());
    }
    let v = int::<1>(b, &mut at)?[0];
    if v != VERSION {
        return Err(format!("unsupported dead-letter record version {v}"));
    }
    let seq = u64::from_le_bytes(int(b, &mut at)?);
    let attempts = u32::from_le_bytes(int(b, &mut at)?);
    let append_ms = u64::from_le_bytes(int(b, &mut at)?);
    let dead_ms = u64::from_le_bytes(int(b, &mut at)?);
    let reason = match int::<1>(b, &mut at)?[0] {
        1 => "max_deliveries",
        2 => "term",
        k => return Err(format!("unknown dead-letter reason {k}")),
    };
    let g = u16::from_le_bytes(int(b, &mut at)?) as usize;
    let group = String::from_utf8_lossy(take(b, &mut at, g)?).into_owned();
    let r = u16::from_le_bytes(int(b, &mut at)?) as usize;
    let text_at = at;
    take(b, &mut at, r)?;
    Ok(DeadLetter {
        seq,
        attempts,
        append_ms,
        dead_ms,
        reason,
        group,
        text: rec.slice(text_at..text_at + r),
        message: rec.slice(at..),
    })
}

/// Called with the sequences of a batch once it is in the dead-letter
/// spool.
pub(super) type Written = Box<dyn FnOnce(Vec<u64>) + Send>;

/// A batch of dead letters of one group.
struct Job {
    group: String,
    burials: Vec<Bury>,
    written: Written,
}

/// The writer of a route's dead letters: a thread that appends what it is
/// sent and reports each batch written.
pub(super) struct DeadLetters {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    spool: Spool,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl DeadLetters {
    /// Opens (or creates) `<spool>/dead` on `fs` and starts the writer; a
    /// write that fails for good (an I/O error, a failed fsync) is
    /// reported to the route through `acker`, which stops it.
    pub fn start(
        main: &Path,
        max_message: u32,
        fs: Arc<dyn Fs>,
        route: &str,
        acker: Acker,
    ) -> anyhow::Result<DeadLetters> {
        let mut cfg = SpoolConfig::new(dir_of(main));
        cfg.memory_limit = 0;
        cfg.durability = Durability::Always;
        cfg.when_full = WhenFull::Block;
        cfg.block_timeout = Some(RETRY);
        cfg.segment_size = SEGMENT;
        // The header and the TERM text travel with the message.
        cfg.max_message = max_message.saturating_add(64 + 2 * u16::MAX as u32);
        let (spool, _) = Spool::open_with_fs(cfg, Arc::clone(&fs))?;
        let reserve = Reserve {
            fs,
            path: dir_of(main).join(RESERVE),
            len: (u64::from(max_message) + (64 << 10)).max(4 << 20),
            held: false,
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let sp = spool.clone();
        let name = route.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("spool-dead:{route}"))
            .spawn(move || write_loop(&sp, &rx, &name, &st, reserve, &acker))?;
        Ok(DeadLetters {
            tx: Mutex::new(Some(tx)),
            spool,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Writes what was queued (unless writes keep failing: what is not
    /// written stays below the main queue's floor, delivered again after a
    /// restart), then closes the dead-letter spool.
    pub fn close(&self) -> Result<(), SpoolError> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            self.stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
        self.spool.clone().close()
    }

    /// Queues `burials` of `group` for the dead-letter spool; `written` is
    /// called once they are durable there.
    pub fn send(&self, group: &str, burials: Vec<Bury>, written: Written) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let (false, Some(tx)) = (burials.is_empty(), tx.as_ref()) {
            // Refused only once closed: what it held stays below the main
            // queue's floor, delivered again after a restart.
            let _ = tx.send(Job {
                group: group.to_string(),
                burials,
                written,
            });
        }
    }

    /// Messages in the dead-letter spool.
    pub fn depth(&self) -> u64 {
        let st = self.spool.stats();
        st.next_seq.saturating_sub(st.ack_floor)
    }
}

impl Drop for DeadLetters {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The dead-letter spool's reserve file.
struct Reserve {
    fs: Arc<dyn Fs>,
    path: PathBuf,
    len: u64,
    held: bool,
}

impl Reserve {
    /// Makes the reserve, if it is not held (best effort: a full disk
    /// leaves it for the next try).
    fn make(&mut self) {
        if self.held {
            return;
        }
        let file = match self.fs.create(&self.path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.fs.open(&self.path, true)
            }
            Err(e) => Err(e),
        };
        self.held = file.and_then(|f| f.allocate(self.len)).is_ok();
        if !self.held {
            let _ = self.fs.remove(&self.path);
        }
    }

    /// Gives the space back; whether there was any to give.
    fn release(&mut self) -> bool {
        let had = self.held;
        self.held = false;
        had && self.fs.remove(&self.path).is_ok()
    }
}

fn write_loop(
    spool: &Spool,
    rx: &mpsc::Receiver<Job>,
    route: &str,
    stop: &AtomicBool,
    mut reserve: Reserve,
    acker: &Acker,
) {
    reserve.make();
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(more) = rx.try_recv() {
            jobs.push(more);
        }
        let dead_ms = crate::units::since_epoch().as_millis() as u64;
        let recs: Vec<Vec<u8>> = jobs
            .iter()
            .flat_map(|j| j.burials.iter().map(|b| encode(b, &j.group, dead_ms)))
            .collect();
        let count = recs.len();
        let slices: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
        loop {
            match spool.append(&slices) {
                Ok(_) => break,
                Err(SpoolError::Closed) => return,
                Err(SpoolError::Full { .. }) => {
                    if reserve.release() {
                        warn!(route, "disk full: the dead-letter reserve is given up for {count} dead letters");
                        continue;
                    }
                    warn!(route, "dead-letter spool full; {count} dead letters wait");
                }
                Err(e) => {
                    // A failed fsync poisons the spool: retrying would
                    // hold the dead letters (and their group's floor)
                    // forever, telling no one. The route stops instead,
                    // and a restart delivers them again.
                    error!(route, error = %e, "cannot write {count} dead letters; stopping the route");
                    acker.fail("dead-letter append", e);
                    return;
                }
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
        for j in jobs {
            (j.written)(j.burials.iter().map(|b| b.msg.seq).collect());
        }
        reserve.make();
    }
}

#[cfg(test)]
mod tests {
    use spillway_spool::Message;

    use super::*;

    fn letter(reason: BuryReason) -> Bury {
        Bury {
            msg: Message {
                seq: 42,
                data: Bytes::from_static(b"body\n"),
                append_ms: 7,
            },
            attempts: 3,
            reason,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let rec = Bytes::from(encode(
            &letter(BuryReason::Term(Bytes::from_static(b"bad"))),
            "g1",
            9,
        ));
        let d = decode(&rec).expect("decode");
        assert_eq!(
            (
                d.seq,
                d.attempts,
                d.append_ms,
                d.dead_ms,
                d.reason,
                d.group.as_str()
            ),
            (42, 3, 7, 9, "term", "g1")
        );
        assert_eq!((&d.text[..], &d.message[..]), (&b"bad"[..], &b"body\n"[..]));
        let rec = Bytes::from(encode(&letter(BuryReason::MaxDeliveries), "", 9));
        let d = decode(&rec).expect("decode");
        assert_eq!(
            (d.reason, d.group.as_str(), d.text.len()),
            ("max_deliveries", "", 0)
        );
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let rec = encode(
            &letter(BuryReason::Term(Bytes::from_static(b"bad"))),
            "g1",
            9,
        );
        for cut in 0..38 {
            let e = decode(&Bytes::copy_from_slice(&rec[..cut])).expect_err("truncated");
            assert!(!e.is_empty());
        }
        let mut bad = rec.clone();
        bad[0] = b'X';
        assert!(decode(&Bytes::from(bad))
            .expect_err("magic")
            .contains("magic"));
        let mut bad = rec.clone();
        bad[4] = 2;
        assert!(decode(&Bytes::from(bad))
            .expect_err("version")
            .contains("version 2"));
        let mut bad = rec;
        bad[33] = 9;
        assert!(decode(&Bytes::from(bad))
            .expect_err("reason")
            .contains("reason 9"));
    }
}
