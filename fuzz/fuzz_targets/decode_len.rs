//! `len:*`: input = [framing, max_lo, max_hi, read_size, stream...]; the
//! first byte picks the prefix width and byte order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway_codec::{encode, payload, Decoded, Decoder, FrameError, Framing, LenPrefix};

const PREFIXES: [LenPrefix; 7] = [
    LenPrefix::U8,
    LenPrefix::U16_BE,
    LenPrefix::U16_LE,
    LenPrefix::U32_BE,
    LenPrefix::U32_LE,
    LenPrefix::U64_BE,
    LenPrefix::U64_LE,
];

fn run(
    framing: Framing,
    max_requested: usize,
    stream: &[u8],
    read: usize,
) -> (Vec<Vec<u8>>, Result<(), FrameError>) {
    let mut d = Decoder::new(framing, max_requested);
    // A max of 0 is raised to 1 (documented): check against what is in force.
    let max = d.max_message();
    assert_eq!(max, max_requested.max(1));
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    for chunk in stream.chunks(read.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match d.decode(&buf) {
                Decoded::Frame(n) => {
                    assert!(n > 0 && n <= max && n <= buf.len());
                    let frame: Vec<u8> = buf.drain(..n).collect();
                    // The stored message re-encodes to itself.
                    let mut again = Vec::new();
                    encode(framing, payload(framing, &frame), &mut again)
                        .expect("a decoded payload fits its own prefix");
                    assert_eq!(again, frame);
                    frames.push(frame);
                }
                Decoded::NeedMore => break,
                Decoded::Invalid(e) => {
                    assert_eq!(e.offset(), Some(d.offset()));
                    match e {
                        FrameError::TooLarge { size, .. } => assert!(size > max as u64),
                        other => panic!("unexpected decode error {other:?}"),
                    }
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
    let [pick, lo, hi, read, stream @ ..] = data else {
        return;
    };
    let framing = Framing::Len(PREFIXES[usize::from(*pick) % PREFIXES.len()]);
    let max = usize::from(u16::from_le_bytes([*lo, *hi]) % 2048);
    let split = run(framing, max, stream, usize::from(*read));
    let whole = run(framing, max, stream, stream.len());
    assert_eq!(split, whole);
    let (frames, _) = split;
    assert!(stream.starts_with(&frames.concat()));
});
