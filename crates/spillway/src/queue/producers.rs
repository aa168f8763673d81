//! The names of ack-protocol producers and the highest producer sequence
//! (`pseq`) each had enqueued, so that a producer that resends after a
//! reconnect (or a relay restart) does not enqueue a message twice.
//!
//! Kept in `<spool>/producers`, a log of lines `name pseq seq unix_ms
//! crc` (the crc32c of the line before it, in hex: a damaged line is
//! ignored, since a pseq raised by damage would answer DUP to new
//! messages):
//! the name's messages up to `pseq` are in the spool, the last of them at
//! sequence `seq`. A line is written as soon as its batch is in the log,
//! on the spool's writer thread, before the batch's fsync (so a SIGKILL
//! can hardly fall between the two writes), and it is not synced itself:
//! at open, a line whose `seq` is not in the spool (a power cut lost the
//! log's tail, or the batch never reached it) is ignored, so a line never
//! makes a lost message look enqueued. What can still happen: a crash
//! after a batch's write and before its line's leaves the line out, and
//! the producer's resend of those unconfirmed messages enqueues them again
//! (duplicates, never a loss). At open the log is read (the highest valid
//! pseq per name wins; a torn last line is ignored), names silent for
//! longer than `producer_memory` are forgotten, and the log is rewritten
//! compact. It is compacted again when it holds many more lines than
//! names.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

const FILE: &str = "producers";
const TMP: &str = "producers.tmp";

#[derive(Clone, Copy, Debug)]
struct Entry {
    pseq: u64,
    /// The spool sequence of the name's last message (what `rewrite`
    /// writes; 0 for a name that has enqueued nothing).
    seq: u64,
    last_ms: u64,
    /// A connection of this name is open.
    connected: bool,
}

struct State {
    names: HashMap<String, Entry>,
    log: File,
    lines: usize,
}

pub(super) struct Producers {
    dir: PathBuf,
    memory: Duration,
    state: Mutex<State>,
}

/// Another connection uses this name now.
#[derive(Debug)]
pub(super) struct InUse;

fn now_ms() -> u64 {
    crate::units::since_epoch().as_millis() as u64
}

impl Producers {
    /// Reads (and compacts) the table of the spool directory `dir` whose
    /// log ends before `next_seq`, forgetting names silent for longer than
    /// `memory`.
    pub fn open(dir: &Path, memory: Duration, next_seq: u64) -> io::Result<Producers> {
        let mut names = HashMap::new();
        match std::fs::read(dir.join(FILE)) {
            Ok(text) => {
                for line in text.split(|&b| b == b'\n') {
                    let Some((name, pseq, seq, ms)) = parse(line) else {
                        continue;
                    };
                    // Its batch is not in the log: not enqueued.
                    if seq < next_seq {
                        let e = names.entry(name).or_insert(Entry {
                            pseq,
                            seq,
                            last_ms: ms,
                            connected: false,
                        });
                        if pseq >= e.pseq {
                            e.seq = seq;
                        }
                        e.pseq = e.pseq.max(pseq);
                        e.last_ms = e.last_ms.max(ms);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let horizon = now_ms().saturating_sub(memory.as_millis() as u64);
        names.retain(|_, e: &mut Entry| e.last_ms >= horizon);
        let log = rewrite(dir, &names)?;
        let lines = names.len();
        Ok(Producers {
            dir: dir.to_path_buf(),
            memory,
            state: Mutex::new(State { names, log, lines }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `name` for a connection; returns the highest pseq it had
    /// enqueued (0: none). Refused while another connection holds it.
    pub fn claim(&self, name: &str) -> Result<u64, InUse> {
        let mut s = self.lock();
        let e = s.names.entry(name.to_string()).or_insert(Entry {
            pseq: 0,
            seq: 0,
            last_ms: now_ms(),
            connected: false,
        });
        if e.connected {
            return Err(InUse);
        }
        e.connected = true;
        Ok(e.pseq)
    }

    /// The connection of `name` ended.
    pub fn release(&self, name: &str) {
        if let Some(e) = self.lock().names.get_mut(name) {
            e.connected = false;
        }
    }

    /// `name`'s messages up to `pseq` are in the spool's log, the last at
    /// sequence `seq` (called on the writer thread, as soon as the batch
    /// is written; a write, no fsync: see the module docs).
    pub fn record(&self, name: &str, pseq: u64, seq: u64) -> io::Result<()> {
        let mut s = self.lock();
        let ms = now_ms();
        if let Some(e) = s.names.get_mut(name) {
            if pseq >= e.pseq {
                e.seq = seq;
            }
            e.pseq = e.pseq.max(pseq);
            e.last_ms = ms;
        }
        s.log.write_all(line(name, pseq, seq, ms).as_bytes())?;
        s.lines += 1;
        if s.lines > 4 * s.names.len() + 10_000 {
            let horizon = ms.saturating_sub(self.memory.as_millis() as u64);
            s.names
                .retain(|_, e: &mut Entry| e.connected || e.last_ms >= horizon);
            let log = rewrite(&self.dir, &s.names)?;
            s.log = log;
            s.lines = s.names.len();
        }
        Ok(())
    }
}

/// A line of the log, `\n` included.
fn line(name: &str, pseq: u64, seq: u64, ms: u64) -> String {
    let text = format!("{name} {pseq} {seq} {ms}");
    format!("{text} {:08x}\n", crc32c::crc32c(text.as_bytes()))
}

/// `name pseq seq ms crc`, or None for a torn, damaged or foreign line.
fn parse(line: &[u8]) -> Option<(String, u64, u64, u64)> {
    let text = std::str::from_utf8(line).ok()?;
    let (body, sum) = text.rsplit_once(' ')?;
    if u32::from_str_radix(sum, 16).ok()? != crc32c::crc32c(body.as_bytes()) {
        return None;
    }
    let mut f = body.split(' ');
    let name = f.next()?;
    let pseq = f.next()?.parse().ok()?;
    let seq = f.next()?.parse().ok()?;
    let ms = f.next()?.parse().ok()?;
    if f.next().is_some() || !spillway_codec::proto::is_valid_name(name.as_bytes()) {
        return None;
    }
    Some((name.to_string(), pseq, seq, ms))
}

/// Writes the table as a fresh log (temp file, fsync, rename, directory
/// fsync) and opens it for appending.
fn rewrite(dir: &Path, names: &HashMap<String, Entry>) -> io::Result<File> {
    let tmp = dir.join(TMP);
    let mut f = File::create(&tmp)?;
    let mut text = String::new();
    for (name, e) in names {
        if e.pseq > 0 {
            text.push_str(&line(name, e.pseq, e.seq, e.last_ms));
        }
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(FILE))?;
    File::open(dir)?.sync_all()?;
    OpenOptions::new().append(true).open(dir.join(FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_survive_a_reopen_and_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hour = Duration::from_secs(3600);
        let p = Producers::open(dir.path(), hour, 0).expect("open");
        assert_eq!(p.claim("app-1").expect("free"), 0);
        assert!(p.claim("app-1").is_err(), "in use");
        p.record("app-1", 7, 100).expect("record");
        p.record("app-1", 9, 102).expect("record");
        p.release("app-1");
        drop(p);
        // A torn last line is ignored.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .expect("log");
        f.write_all(b"app-1 99 200").expect("torn");
        // A damaged one too (its checksum does not match).
        f.write_all(b"\napp-1 99 100 5 00000000\n")
            .expect("damaged");
        drop(f);
        let p = Producers::open(dir.path(), hour, 103).expect("reopen");
        assert_eq!(p.claim("app-1").expect("free"), 9);
        drop(p);
        let p = Producers::open(dir.path(), Duration::ZERO, 103).expect("reopen");
        std::thread::sleep(Duration::from_millis(5));
        drop(p);
        let p = Producers::open(dir.path(), Duration::ZERO, 103).expect("reopen");
        assert_eq!(p.claim("app-1").expect("free"), 0, "forgotten");
    }

    /// A line whose batch is not in the spool (a power cut lost the log's
    /// tail) does not make those messages look enqueued.
    #[test]
    fn a_line_past_the_spools_end_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hour = Duration::from_secs(3600);
        let p = Producers::open(dir.path(), hour, 0).expect("open");
        p.claim("app").expect("free");
        p.record("app", 10, 49).expect("record");
        p.record("app", 20, 59).expect("record");
        drop(p);
        // The log ends at 55: the second batch was lost.
        let p = Producers::open(dir.path(), hour, 55).expect("reopen");
        assert_eq!(p.claim("app").expect("free"), 10);
    }
}
