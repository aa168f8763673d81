//! Consumer groups: independent cursors over one spool (`groups = [...]`
//! on a queue route). Each group has its own dispatcher (its own floor,
//! read-ahead and consumers, who compete within it). A route without
//! groups has one, the default group, which every consumer is in. A route
//! with groups has only those: every consumer names its group (they all
//! speak the ack protocol), and no implicit group nobody reads can hold
//! the spool.
//!
//! The spool keeps one floor, its cursor: the lowest floor of all groups,
//! so that a segment is deleted only once every group is past it. Each
//! group's own floor is kept in `<spool>/groups`, written (temp file and
//! rename) every few ticks while it changes and at close:
//!
//! ```text
//! spillway-groups 2
//! billing <floor>
//! audit <floor>
//! crc32c <checksum of the lines above, hex>
//! ```
//!
//! A file whose checksum does not match (a torn write, a disk error, a
//! hand edit) is not trusted: every group starts at the cursor (what it
//! delivered since is sent again), because a floor too high would skip
//! messages.
//!
//! At open, a group's floor is what the file says, raised to the spool's
//! cursor (below it nothing is left) and lowered to its end (a power cut
//! can lose a tail the file had seen delivered). A group the file does not
//! name (newly declared, or a spool from before groups existed: the
//! migration) starts at the spool's cursor. A lost or stale file means
//! messages delivered again, never skipped: the file's floors are ones
//! the groups had reached, and the spool's cursor is never above any
//! group's floor.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use spillway_spool::Spool;
use tracing::warn;

use super::spool_io::Acker;

const FILE: &str = "groups";
const TMP: &str = "groups.tmp";
const MAGIC: &str = "spillway-groups 2";

struct State {
    acked: Vec<u64>,
    delivered: Vec<u64>,
    /// The lowest acked floor sent to the spool.
    sent: u64,
    dirty: bool,
}

/// The floors of a route's groups: the named ones, or the default one
/// (named "") on a route without groups.
pub(super) struct Floors {
    names: Vec<String>,
    state: Mutex<State>,
    acker: Acker,
    spool: Spool,
    dir: PathBuf,
}

impl Floors {
    /// The floors of the groups `named` (none: the default group) over
    /// `spool`, from its groups file; returns each group's starting floor
    /// too.
    pub fn open(spool: &Spool, dir: &Path, named: &[String], acker: Acker) -> (Floors, Vec<u64>) {
        let cursor = spool.ack_floor();
        let end = spool.next_seq();
        let names = if named.is_empty() {
            vec![String::new()]
        } else {
            named.to_vec()
        };
        let saved = read(&dir.join(FILE));
        let mut starts = Vec::with_capacity(names.len());
        for name in &names {
            let f = saved
                .iter()
                .find(|(n, _)| n == name)
                .map_or(cursor, |&(_, f)| f);
            starts.push(f.clamp(cursor, end.max(cursor)));
        }
        for (n, _) in &saved {
            if !names.contains(n) {
                warn!(
                    group = %n,
                    "group no longer declared: its floor no longer holds the spool"
                );
            }
        }
        let floors = Floors {
            names,
            state: Mutex::new(State {
                acked: starts.clone(),
                delivered: starts.clone(),
                sent: cursor,
                dirty: true,
            }),
            acker,
            spool: spool.clone(),
            dir: dir.to_path_buf(),
        };
        (floors, starts)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Group `i`'s retention floor moved to `floor`: the spool is
    /// acknowledged the lowest of all.
    pub fn acked(&self, i: usize, floor: u64) {
        let mut s = self.lock();
        if floor <= s.acked[i] {
            return;
        }
        s.acked[i] = floor;
        s.dirty = true;
        let low = s.acked.iter().copied().min().unwrap_or(floor);
        if low > s.sent {
            s.sent = low;
            drop(s);
            self.acker.ack(low);
        }
    }

    /// Group `i` delivered everything below `floor` (for the spool's depth
    /// and age, which count from the slowest group).
    pub fn delivered(&self, i: usize, floor: u64) {
        let mut s = self.lock();
        s.delivered[i] = floor;
        let low = s.delivered.iter().copied().min().unwrap_or(floor);
        self.spool.mark_delivered(low);
    }

    /// Messages group `i` has not had delivered yet (its lag).
    pub fn lag(&self, i: usize) -> u64 {
        let floor = self.lock().delivered[i];
        self.spool.next_seq().saturating_sub(floor)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Writes the groups file if a floor moved since the last write
    /// (blocking: a small file, renamed into place).
    pub fn persist(&self) -> std::io::Result<()> {
        let (floors, dirty) = {
            let mut s = self.lock();
            let d = s.dirty;
            s.dirty = false;
            (s.acked.clone(), d)
        };
        if !dirty {
            return Ok(());
        }
        let mut text = format!("{MAGIC}\n");
        for (name, f) in self.names.iter().zip(&floors) {
            text.push_str(&format!("{name} {f}\n"));
        }
        let sum = crc32c::crc32c(text.as_bytes());
        text.push_str(&format!("crc32c {sum:08x}\n"));
        let tmp = self.dir.join(TMP);
        let r = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_data()?;
            std::fs::rename(&tmp, self.dir.join(FILE))
        })();
        if r.is_err() {
            // Written next time (a full disk: the old file stays, lower
            // floors, so only redeliveries).
            self.lock().dirty = true;
        }
        r
    }
}

/// The floors a groups file holds, or none if it is missing or not one.
fn read(path: &Path) -> Vec<(String, u64)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let checked = text
        .trim_end_matches('\n')
        .rsplit_once('\n')
        .and_then(|(body, last)| {
            let sum = u32::from_str_radix(last.strip_prefix("crc32c ")?, 16).ok()?;
            let body = format!("{body}\n");
            (crc32c::crc32c(body.as_bytes()) == sum).then_some(body)
        });
    let Some(body) = checked else {
        warn!(file = %path.display(), "groups file damaged (checksum); every group starts at the spool's cursor");
        return Vec::new();
    };
    let mut lines = body.lines();
    if lines.next() != Some(MAGIC) {
        warn!(file = %path.display(), "not a groups file (or a newer version); every group starts at the spool's cursor");
        return Vec::new();
    }
    let mut out = Vec::new();
    for l in lines {
        if let Some((name, f)) = l.split_once(' ') {
            if let Ok(f) = f.parse() {
                out.push((name.to_string(), f));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(lines: &str) -> String {
        let text = format!("{MAGIC}\n{lines}");
        format!("{text}crc32c {:08x}\n", crc32c::crc32c(text.as_bytes()))
    }

    #[test]
    fn a_groups_file_is_read_only_when_its_checksum_matches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE);
        std::fs::write(&path, file("billing 120\naudit 7\n")).expect("write");
        assert_eq!(
            read(&path),
            [("billing".to_string(), 120), ("audit".to_string(), 7)]
        );
        // A floor changed by a disk error (or a hand) is not trusted.
        let bad = file("billing 120\naudit 7\n").replace("120", "920");
        std::fs::write(&path, bad).expect("write");
        assert!(read(&path).is_empty());
        // Torn: the checksum line is missing.
        std::fs::write(&path, format!("{MAGIC}\nbilling 120\n")).expect("write");
        assert!(read(&path).is_empty());
        std::fs::write(&path, "").expect("write");
        assert!(read(&path).is_empty());
    }
}
