//! `lines`: input = [max_lo, max_hi, read_size, stream...].
#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway_codec::{Decoded, Decoder, FrameError, Framing};

/// Decodes `stream` arriving in reads of `read` bytes, checking per-frame
/// invariants; returns the frames and how it ended.
fn run(max: usize, stream: &[u8], read: usize) -> (Vec<Vec<u8>>, Result<(), FrameError>) {
    let mut d = Decoder::new(Framing::Lines, max);
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    for chunk in stream.chunks(read.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match d.decode(&buf) {
                Decoded::Frame(n) => {
                    assert!(n > 0 && n <= max && n <= buf.len());
                    let frame: Vec<u8> = buf.drain(..n).collect();
                    assert_eq!(frame.last(), Some(&b'\n'));
                    assert!(!frame[..n - 1].contains(&b'\n'));
                    frames.push(frame);
                }
                Decoded::NeedMore => break,
                Decoded::Invalid(e) => {
                    assert_eq!(e.offset(), Some(d.offset()));
                    assert!(!buf[..buf.len().min(max)].contains(&b'\n'));
                    return (frames, Err(e));
                }
            }
        }
    }
    let consumed: usize = frames.iter().map(Vec::len).sum();
    assert_eq!(consumed + buf.len(), stream.len());
    assert_eq!(d.offset(), consumed as u64);
    let end = d.finish(&buf);
    assert_eq!(end.is_ok(), buf.is_empty());
    (frames, end)
}

fuzz_target!(|data: &[u8]| {
    let [lo, hi, read, stream @ ..] = data else {
        return;
    };
    let max = 1 + usize::from(u16::from_le_bytes([*lo, *hi]) % 1024);
    let split = run(max, stream, usize::from(*read));
    let whole = run(max, stream, stream.len());
    // Read boundaries never change the outcome.
    assert_eq!(split, whole);
    let (frames, _) = split;
    assert!(stream.starts_with(&frames.concat()));
});
