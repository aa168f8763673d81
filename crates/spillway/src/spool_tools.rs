//! `spillway spool inspect|verify|dump DIR`: offline tools for a person
//! looking at a spool directory. Read-only; run them on a spool no process
//! has open.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

/// The tools read files a running relay may be changing: say so.
fn warn_if_in_use(dir: &Path) {
    if spillway_spool::is_locked(dir) {
        eprintln!(
            "warning: {} is in use by a running spillway; what follows may already be stale",
            dir.display()
        );
    }
    if let Some(w) = spillway_spool::fs::exposure(dir) {
        eprintln!("warning: {w}");
    }
}

fn fmt_age(created_ms: u64) -> String {
    let now = crate::units::since_epoch().as_millis() as u64;
    let secs = now.saturating_sub(created_ms) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

/// Prints segments (first seq, size, age), cursor, oldest/newest sequence and
/// depth. Scans only the last segment, so it is fast on any size of spool.
pub fn inspect(dir: &Path) -> anyhow::Result<()> {
    warn_if_in_use(dir);
    let ins = spillway_spool::inspect(dir)
        .with_context(|| format!("inspecting spool {}", dir.display()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "spool {}", ins.dir.display())?;
    writeln!(
        out,
        "segments: {} ({} bytes)",
        ins.segments.len(),
        ins.disk_bytes
    )?;
    for s in &ins.segments {
        let name = s
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let age = s.created_ms.map(fmt_age).unwrap_or_else(|| "-".into());
        match &s.header_problem {
            None => writeln!(
                out,
                "  {name}  first_seq={}  {} bytes  created {age}",
                s.first_seq, s.bytes
            )?,
            Some(p) => writeln!(
                out,
                "  {name}  first_seq={}  {} bytes  BAD HEADER: {p}",
                s.first_seq, s.bytes
            )?,
        }
    }
    match (ins.cursor, ins.cursor_problem) {
        (Some((floor, next)), _) => writeln!(out, "cursor: ack_floor={floor} next_seq={next}")?,
        (None, Some(p)) => writeln!(out, "cursor: damaged ({p})")?,
        (None, None) => writeln!(out, "cursor: none")?,
    }
    match (ins.first_seq, ins.end_seq) {
        (Some(first), Some(end)) if end > first => {
            writeln!(out, "oldest seq: {first}  newest seq: {}", end - 1)?
        }
        _ => writeln!(out, "log: empty")?,
    }
    writeln!(
        out,
        "depth (unacknowledged messages on disk): {}",
        ins.depth
    )?;
    if let Some((offset, bytes)) = ins.torn_tail {
        writeln!(out, "torn tail: {bytes} bytes at offset {offset} of the last segment (the next open truncates it)")?;
    }
    if let Some(p) = &ins.tail_problem {
        writeln!(out, "PROBLEM in the last segment: {p}")?;
    }
    Ok(())
}

/// Checks every record of every segment. Returns `Ok(false)` (and prints the
/// first bad segment and offset) when the spool is damaged. Progress goes to
/// stderr only when it is a terminal.
pub fn verify(dir: &Path) -> anyhow::Result<bool> {
    warn_if_in_use(dir);
    let tty = std::io::stderr().is_terminal();
    let mut last = Instant::now();
    let rep = spillway_spool::verify(dir, |done, total| {
        if tty && (last.elapsed() >= Duration::from_millis(200) || done == total) {
            last = Instant::now();
            let pct = if total == 0 {
                100.0
            } else {
                done as f64 * 100.0 / total as f64
            };
            eprint!("\rverifying: {pct:5.1}% ({done}/{total} bytes)");
        }
    })
    .with_context(|| format!("verifying spool {}", dir.display()))?;
    if tty {
        eprintln!();
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "checked {} segments, {} records, {} messages, {} payload bytes",
        rep.segments, rep.records, rep.messages, rep.bytes
    )?;
    if let (Some(first), Some(end)) = (rep.first_seq, rep.end_seq) {
        writeln!(out, "sequence range: {first}..{end}")?;
    }
    if let Some((seg, offset, bytes)) = &rep.torn_tail {
        writeln!(
            out,
            "torn tail: {} at offset {offset} ({bytes} bytes); expected after a crash, the next open truncates it",
            seg.display()
        )?;
    }
    match &rep.problem {
        None => {
            writeln!(out, "OK")?;
            Ok(true)
        }
        Some(p) => {
            writeln!(
                out,
                "CORRUPT: segment {} offset {}: {}",
                p.segment.display(),
                p.offset,
                p.detail
            )?;
            Ok(false)
        }
    }
}

/// Writes the raw bytes of messages (from `from`, default the cursor's ack
/// floor; at most `limit`) to stdout. A closed pipe (`| head`) ends quietly.
pub fn dump(dir: &Path, from: Option<u64>, limit: Option<u64>) -> anyhow::Result<()> {
    warn_if_in_use(dir);
    to_stdout(dir, from, limit, |out, m| out.write_all(&m.data))
}

/// Writes the dead letters of the spool `dir` (its `dead/` directory) to
/// stdout, one JSON object per line: `seq`, `attempts`, `reason`,
/// `text` (the TERM reason), `group`, `append_ms`, `dead_ms`, and the
/// message as stored: `message` when it is UTF-8, else `message_hex`.
pub fn dump_dead(dir: &Path, limit: Option<u64>) -> anyhow::Result<()> {
    let dead = crate::queue::dead::dir_of(dir);
    if !dead.is_dir() {
        anyhow::bail!(
            "{} has no dead letters ({} does not exist)",
            dir.display(),
            dead.display()
        );
    }
    to_stdout(&dead, None, limit, |out, m| {
        let line = dead_letter_json(m).map_err(std::io::Error::other)?;
        writeln!(out, "{line}")
    })
}

/// Writes each message of the spool `dir` (see [`spillway_spool::dump`])
/// to stdout with `each`; a closed pipe ends quietly.
fn to_stdout(
    dir: &Path,
    from: Option<u64>,
    limit: Option<u64>,
    mut each: impl FnMut(&mut dyn Write, &spillway_spool::Message) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let res = spillway_spool::dump(dir, from, limit, |m| each(&mut out, m));
    let flushed = out.flush();
    match res {
        Ok(_) => {}
        Err(spillway_spool::SpoolError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            return Ok(())
        }
        Err(e) => return Err(e).with_context(|| format!("dumping spool {}", dir.display())),
    }
    match flushed {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn dead_letter_json(m: &spillway_spool::Message) -> Result<String, String> {
    let d =
        crate::queue::dead::decode(&m.data).map_err(|e| format!("dead letter {}: {e}", m.seq))?;
    let mut v = serde_json::json!({
        "seq": d.seq,
        "attempts": d.attempts,
        "reason": d.reason,
        "text": String::from_utf8_lossy(&d.text),
        "group": d.group,
        "append_ms": d.append_ms,
        "dead_ms": d.dead_ms,
    });
    match std::str::from_utf8(&d.message) {
        Ok(s) => v["message"] = serde_json::Value::from(s),
        Err(_) => {
            let hex: String = d.message.iter().map(|b| format!("{b:02x}")).collect();
            v["message_hex"] = serde_json::Value::from(hex);
        }
    }
    Ok(v.to_string())
}

/// Appends the dead letters of the spool `dir` whose original sequence is
/// in `seqs` (all when `None`) to the spool's main queue again, as new
/// messages, and removes them from the dead-letter spool. The relay must
/// be stopped (both spools are locked while open). Returns how many were
/// requeued and how many were kept.
///
/// Order of the steps, so that a crash loses nothing: the requeued
/// messages are appended to the main queue and synced; the dead letters
/// kept are appended again to the dead-letter spool and synced; then the
/// old records are acknowledged there. A crash in between leaves a
/// requeued letter in both (a duplicate), never in neither.
pub fn requeue(dir: &Path, seqs: Option<(u64, u64)>) -> anyhow::Result<(u64, u64)> {
    use spillway_spool::{Durability, Spool, SpoolConfig};
    let dead_dir = crate::queue::dead::dir_of(dir);
    if !dead_dir.is_dir() {
        anyhow::bail!("{} has no dead letters", dir.display());
    }
    let open = |d: &Path| {
        let mut cfg = SpoolConfig::new(d);
        cfg.memory_limit = 0;
        cfg.durability = Durability::Always;
        cfg.max_message = spillway_spool::MAX_MESSAGE_LIMIT;
        Spool::open(cfg)
            .map(|(s, _)| s)
            .with_context(|| format!("opening spool {} (is the relay stopped?)", d.display()))
    };
    let dead = open(&dead_dir)?;
    let main = open(dir)?;
    let end = dead.stats().next_seq;
    let mut from = dead.ack_floor();
    let (mut back, mut keep) = (Vec::new(), Vec::new());
    while from < end {
        let msgs = dead.read(from, 4096, 8 << 20)?;
        let Some(last) = msgs.last() else { break };
        from = last.seq + 1;
        for m in msgs {
            let d = crate::queue::dead::decode(&m.data)
                .map_err(|e| anyhow::anyhow!("dead letter {}: {e}", m.seq))?;
            if seqs.is_none_or(|(a, b)| (a..=b).contains(&d.seq)) {
                back.push(d.message);
            } else {
                keep.push(m.data);
            }
        }
    }
    for chunk in back.chunks(1024) {
        let slices: Vec<&[u8]> = chunk.iter().map(|b| &b[..]).collect();
        main.append(&slices)
            .context("appending to the main queue")?;
    }
    if !back.is_empty() {
        for chunk in keep.chunks(1024) {
            let slices: Vec<&[u8]> = chunk.iter().map(|b| &b[..]).collect();
            dead.append(&slices)
                .context("rewriting the dead letters kept")?;
        }
        dead.ack(end)
            .context("removing the requeued dead letters")?;
    }
    main.close().context("closing the main queue")?;
    dead.close().context("closing the dead-letter spool")?;
    Ok((back.len() as u64, keep.len() as u64))
}
