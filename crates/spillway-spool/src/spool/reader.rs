//! Reads: messages from the memory tier or the log, from a seek point of
//! the sparse index.

use super::*;

impl Inner {
    pub(super) fn read(
        &self,
        from: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, SpoolError> {
        Ok(self
            .read_with(from, max_msgs, max_bytes, false)?
            .unwrap_or_default())
    }

    /// `cached`: only from memory and the page cache; None when a file
    /// read would wait for the disk (nothing is returned then, not even
    /// what was read before it).
    pub(super) fn read_with(
        &self,
        from: u64,
        max_msgs: usize,
        max_bytes: usize,
        cached: bool,
    ) -> Result<Option<Vec<Message>>, SpoolError> {
        let mut out: Vec<Message> = Vec::new();
        let mut bytes = 0usize;
        let mut pos = from;
        let full = |out: &Vec<Message>, bytes: usize| {
            out.len() >= max_msgs || (!out.is_empty() && bytes >= max_bytes)
        };
        if max_msgs == 0 {
            return Ok(Some(out));
        }
        loop {
            // Plan under the lock; do the disk I/O outside it.
            let plan = {
                let mut core = lock(&self.core);
                if core.closed {
                    return Err(SpoolError::Closed);
                }
                pos = pos.max(core.floor);
                if pos >= core.next_seq {
                    break;
                }
                if core.mem.holds(pos) {
                    // Room for what this read may take (bounded: a byte
                    // limit may end it much earlier).
                    let held = core.mem.end() - pos;
                    let want = max_msgs.saturating_sub(out.len()).min(1024);
                    out.reserve(want.min(usize::try_from(held).unwrap_or(usize::MAX)));
                    core.mem.read(pos, |m| {
                        if full(&out, bytes) {
                            return false;
                        }
                        bytes += m.data.len();
                        out.push(m);
                        pos += 1;
                        true
                    });
                    if full(&out, bytes) {
                        break;
                    }
                    continue;
                }
                let Some(front) = core.segs.front() else {
                    break;
                };
                if pos < front.first_seq {
                    // Only reachable if seqs between the floor and the log
                    // are gone (lost memory tier after a crash is handled at
                    // open); skip to what exists.
                    pos = front.first_seq;
                }
                if pos >= core.disk_end {
                    break;
                }
                let idx = core.segs.partition_point(|s| s.first_seq <= pos) - 1;
                // The rest of the record the last read stopped inside: no
                // I/O, no checksum again.
                let seg_first = core.segs[idx].first_seq;
                if let Some(t) = core
                    .read_tail
                    .take_if(|t| t.seg_first == seg_first && (t.first..t.end()).contains(&pos))
                {
                    let (took, at, _) = take_from(
                        &t.rest,
                        t.count,
                        t.first,
                        pos,
                        t.append_ms,
                        &mut out,
                        &mut bytes,
                        &full,
                    );
                    if took < t.count {
                        core.read_tail = Some(ReadTail {
                            first: t.first + u64::from(took),
                            count: t.count - took,
                            rest: t.rest.slice(at..),
                            ..t
                        });
                        break;
                    }
                    pos = t.end();
                    core.read_hint = Some((t.seg_first, t.next));
                    continue;
                }
                let next_first = core.segs.get(idx + 1).map(|s| s.first_seq);
                let seg_end_seq = next_first.unwrap_or(core.disk_end);
                let hint = core.read_hint;
                let seg = &mut core.segs[idx];
                let file = match &seg.file {
                    Some(f) => f.clone(),
                    // Opening may wait for the disk too.
                    None if cached => return Ok(None),
                    None => {
                        let f = self
                            .fs
                            .open(&seg.path, false)
                            .map_err(|e| SpoolError::io("open", &seg.path, e))?;
                        seg.file = Some(f.clone());
                        f
                    }
                };
                let mut start = IndexEntry {
                    seq: seg.first_seq,
                    offset: SEGMENT_HEADER_LEN,
                    ms: 0,
                };
                let i = seg.index.partition_point(|e| e.seq <= pos);
                if let Some(e) = i.checked_sub(1).and_then(|i| seg.index.get(i)) {
                    start = *e;
                }
                if let Some((hs, h)) = hint {
                    if hs == seg.first_seq && h.seq <= pos && h.seq >= start.seq {
                        start = h;
                    }
                }
                (
                    file,
                    seg.path.clone(),
                    seg.first_seq,
                    start,
                    seg.len,
                    seg_end_seq,
                    next_first,
                )
            };
            let (file, path, seg_first, start, end_off, seg_end_seq, next_first) = plan;
            // Read about what was asked for, not a fixed large chunk: the
            // messages returned are slices of what was read.
            let mut sc = SegmentReader::new(&*file, start.offset, end_off, start.seq)
                .with_chunk(max_bytes.saturating_add(READ_SLACK))
                .cached_only(cached);
            let first_out = out.len();
            let mut resume = start;
            let mut tail = None;
            let corrupt = |offset: u64, detail: String| SpoolError::Corrupt {
                segment: path.clone(),
                offset,
                detail,
            };
            loop {
                if full(&out, bytes) {
                    break;
                }
                let next = match sc.next_record() {
                    Err(e) if cached && e.kind() == std::io::ErrorKind::WouldBlock => {
                        return Ok(None);
                    }
                    r => r.map_err(|e| SpoolError::io("read", &path, e))?,
                };
                match next {
                    Scan::Gap {
                        offset,
                        expected,
                        found,
                    } => return Err(corrupt(offset, gap_detail(expected, found))),
                    Scan::Record {
                        offset,
                        header,
                        payload,
                    } => {
                        let expect = header.end_seq();
                        if expect > pos {
                            let append_ms = header.append_ms;
                            let (took, at, seq) = take_from(
                                &payload,
                                header.count,
                                header.first_seq,
                                pos,
                                append_ms,
                                &mut out,
                                &mut bytes,
                                &full,
                            );
                            pos = pos.max(seq);
                            if took < header.count {
                                tail = Some(ReadTail {
                                    seg_first: 0,
                                    first: seq,
                                    count: header.count - took,
                                    rest: payload.slice(at..),
                                    append_ms,
                                    next: IndexEntry {
                                        seq: expect,
                                        offset: sc.pos,
                                        ms: append_ms,
                                    },
                                });
                            }
                        }
                        resume = if pos >= expect {
                            IndexEntry {
                                seq: expect,
                                offset: sc.pos,
                                ms: header.append_ms,
                            }
                        } else {
                            // Stopped inside this record: resume at its start.
                            IndexEntry {
                                seq: header.first_seq,
                                offset,
                                ms: header.append_ms,
                            }
                        };
                    }
                    Scan::End => {
                        let expect = sc.next_seq;
                        if expect != seg_end_seq {
                            let detail = match next_first {
                                Some(n) => format!(
                                    "segment ends at seq {expect} but the next segment starts at {n} (missing or truncated segment)"
                                ),
                                None => format!(
                                    "segment ends at seq {expect}, the log should end at {seg_end_seq}"
                                ),
                            };
                            return Err(corrupt(end_off, detail));
                        }
                        pos = pos.max(expect);
                        break;
                    }
                    Scan::Bad { offset, check } => {
                        return Err(corrupt(offset, format!("bad record: {check:?}")));
                    }
                }
            }
            // A message keeps the whole buffer it was sliced from alive for
            // as long as a consumer holds it (in flight, in its redelivery
            // window). When much more was read than is returned (a small
            // take, a large record), the messages get a buffer of their own.
            let taken: u64 = out[first_out..].iter().map(|m| m.data.len() as u64).sum();
            if sc.bytes_read > 2 * taken + 4096 {
                compact(&mut out[first_out..]);
            }
            self.st
                .bytes_read
                .fetch_add(sc.bytes_read, Ordering::Relaxed);
            {
                let mut core = lock(&self.core);
                core.read_hint = Some((seg_first, resume));
                core.read_tail = tail.map(|t| ReadTail { seg_first, ..t });
            }
            if full(&out, bytes) {
                break;
            }
        }
        Ok(Some(out))
    }
}

/// Takes the messages of a record's payload (`count` of them, from seq
/// `first`) at `pos` or later into `out` until `full`. Returns how many it
/// went through (those before `pos` included), the payload offset after
/// them, and the seq it stopped at.
#[allow(clippy::too_many_arguments)]
fn take_from(
    payload: &Bytes,
    count: u32,
    first: u64,
    pos: u64,
    append_ms: u64,
    out: &mut Vec<Message>,
    bytes: &mut usize,
    full: &impl Fn(&Vec<Message>, usize) -> bool,
) -> (u32, usize, u64) {
    let mut seq = first;
    let (took, at) = split_payload_while(payload, count, |data| {
        if seq < pos {
            seq += 1;
            return true;
        }
        if full(out, *bytes) {
            return false;
        }
        *bytes += data.len();
        out.push(Message {
            seq,
            data,
            append_ms,
        });
        seq += 1;
        true
    });
    (took, at, seq)
}

/// Bytes read past what a read asked for (a record that straddles the
/// end, the next record's header).
const READ_SLACK: usize = 64 << 10;

/// Copies `msgs` into one allocation of exactly their size.
fn compact(msgs: &mut [Message]) {
    let total: usize = msgs.iter().map(|m| m.data.len()).sum();
    let mut block = bytes::BytesMut::with_capacity(total);
    for m in msgs.iter() {
        block.extend_from_slice(&m.data);
    }
    let block = block.freeze();
    let mut at = 0;
    for m in msgs.iter_mut() {
        let n = m.data.len();
        m.data = block.slice(at..at + n);
        at += n;
    }
}
