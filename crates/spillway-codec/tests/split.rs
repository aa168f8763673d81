//! Property tests: however a stream is cut into reads, decoding yields the
//! same messages and the same error at the same offset as a simple reference
//! decoder over the whole stream.

use proptest::prelude::*;
use spillway_codec::{encode, payload, Decoded, Decoder, FrameError, Framing};

fn all_framings() -> Vec<Framing> {
    Framing::NAMES
        .iter()
        .map(|n| n.parse().expect("listed name parses"))
        .collect()
}

fn framing() -> impl Strategy<Value = Framing> {
    proptest::sample::select(all_framings())
}

fn bounded_framing() -> impl Strategy<Value = Framing> {
    proptest::sample::select(
        all_framings()
            .into_iter()
            .filter(|f| *f != Framing::Raw)
            .collect::<Vec<_>>(),
    )
}

type Outcome = (Vec<Vec<u8>>, Result<(), FrameError>);

/// The socket loop: bytes arrive in `reads`; decode until `NeedMore`, read
/// again; at EOF call `finish`.
fn decode_in_reads(framing: Framing, max: usize, stream: &[u8], cuts: &[usize]) -> Outcome {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut decoder = Decoder::new(framing, max);
    let mut buf = Vec::new();
    let mut messages = Vec::new();
    let mut start = 0;
    for cut in cuts {
        buf.extend_from_slice(&stream[start..cut]);
        start = cut;
        loop {
            match decoder.decode(&buf) {
                Decoded::Frame(n) => {
                    assert!(n > 0 && n <= buf.len() && n <= max.max(1));
                    messages.push(buf.drain(..n).collect());
                }
                Decoded::NeedMore => break,
                Decoded::Invalid(e) => {
                    assert_eq!(e.offset(), Some(decoder.offset()));
                    return (messages, Err(e));
                }
            }
        }
    }
    let consumed: usize = messages.iter().map(Vec::len).sum();
    assert_eq!(decoder.offset(), consumed as u64);
    let end = decoder.finish(&buf);
    (messages, end)
}

/// A deliberately naive decoder of a whole stream, written from the spec.
fn reference(framing: Framing, max: usize, stream: &[u8]) -> Outcome {
    let mut messages = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &stream[pos..];
        let offset = pos as u64;
        let len = match framing {
            Framing::Raw => unreachable!("raw has no reference boundaries"),
            Framing::Lines => match rest.iter().position(|&b| b == b'\n') {
                Some(i) if i < max => i + 1,
                Some(_) => {
                    let e = FrameError::TooLarge {
                        offset,
                        size: max as u64,
                        max: max as u64,
                    };
                    return (messages, Err(e));
                }
                None if rest.len() >= max => {
                    let e = FrameError::TooLarge {
                        offset,
                        size: max as u64,
                        max: max as u64,
                    };
                    return (messages, Err(e));
                }
                None if rest.is_empty() => return (messages, Ok(())),
                None => {
                    let e = FrameError::Truncated {
                        offset,
                        have: rest.len() as u64,
                        need: None,
                    };
                    return (messages, Err(e));
                }
            },
            Framing::Len(p) => {
                let w = usize::from(p.width);
                if rest.is_empty() {
                    return (messages, Ok(()));
                }
                if rest.len() < w {
                    let e = FrameError::Truncated {
                        offset,
                        have: rest.len() as u64,
                        need: None,
                    };
                    return (messages, Err(e));
                }
                let mut bytes = rest[..w].to_vec();
                if !p.big_endian {
                    bytes.reverse();
                }
                let declared = bytes.iter().fold(0u128, |acc, &b| acc << 8 | u128::from(b));
                let total = declared + w as u128;
                let size = u64::try_from(total).unwrap_or(u64::MAX);
                if total > max as u128 {
                    let e = FrameError::TooLarge {
                        offset,
                        size,
                        max: max as u64,
                    };
                    return (messages, Err(e));
                }
                if (rest.len() as u128) < total {
                    let e = FrameError::Truncated {
                        offset,
                        have: rest.len() as u64,
                        need: Some(size),
                    };
                    return (messages, Err(e));
                }
                total as usize
            }
        };
        messages.push(rest[..len].to_vec());
        pos += len;
    }
}

/// Payloads that `framing` can encode: no '\n' for lines, fits the prefix.
fn encodable(framing: Framing, mut p: Vec<u8>) -> Vec<u8> {
    match framing {
        Framing::Lines => p
            .iter_mut()
            .filter(|b| **b == b'\n')
            .for_each(|b| *b = b'.'),
        Framing::Len(prefix) => p.truncate(prefix.max_payload().min(usize::MAX as u64) as usize),
        Framing::Raw => {}
    }
    p
}

/// Streams that are mostly well-formed (so decoding gets somewhere) with
/// some garbage, a truncation or an oversized message thrown in.
fn stream_for(framing: Framing) -> impl Strategy<Value = Vec<u8>> {
    let payloads = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20);
    let garbage = prop::collection::vec(any::<u8>(), 0..40);
    (
        payloads,
        garbage,
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(move |(payloads, garbage, truncate, cut)| {
            let mut out = Vec::new();
            for p in payloads {
                encode(framing, &encodable(framing, p), &mut out).expect("encodable");
            }
            if truncate && !out.is_empty() {
                out.truncate(cut.index(out.len()));
            }
            out.extend_from_slice(&garbage);
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Well-formed streams: every split yields exactly the encoded messages.
    #[test]
    fn any_split_yields_the_encoded_messages(
        framing in framing(),
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..30),
        cuts in prop::collection::vec(any::<usize>(), 0..30),
    ) {
        let payloads: Vec<Vec<u8>> = payloads.into_iter().map(|p| encodable(framing, p)).collect();
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for p in &payloads {
            let mut one = Vec::new();
            encode(framing, p, &mut one).expect("encodable");
            stream.extend_from_slice(&one);
            expected.push(one);
        }
        let max = 300 + framing.overhead();
        let (messages, end) = decode_in_reads(framing, max, &stream, &cuts);
        prop_assert_eq!(end, Ok(()));
        if framing == Framing::Raw {
            prop_assert_eq!(messages.concat(), stream);
        } else {
            let decoded: Vec<&[u8]> = messages.iter().map(|m| payload(framing, m)).collect();
            let sent: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(decoded, sent);
            prop_assert_eq!(messages, expected);
        }
    }

    /// Arbitrary (often malformed) streams and small limits: every split
    /// agrees with the reference on messages, error kind and offset.
    #[test]
    fn any_split_agrees_with_the_reference(
        (framing, stream) in bounded_framing().prop_flat_map(|f| (Just(f), stream_for(f))),
        max in 1usize..400,
        cuts in prop::collection::vec(any::<usize>(), 0..30),
    ) {
        let expected = reference(framing, max, &stream);
        prop_assert_eq!(decode_in_reads(framing, max, &stream, &[]), expected.clone());
        prop_assert_eq!(decode_in_reads(framing, max, &stream, &cuts), expected);
    }

    /// Random bytes, not just encoded streams.
    #[test]
    fn random_bytes_agree_with_the_reference(
        framing in bounded_framing(),
        stream in prop::collection::vec(any::<u8>(), 0..600),
        max in 1usize..100,
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let expected = reference(framing, max, &stream);
        prop_assert_eq!(decode_in_reads(framing, max, &stream, &cuts), expected);
    }

    /// Raw: frames are non-empty, within max, and concatenate to the input.
    #[test]
    fn raw_chunks_respect_max(
        stream in prop::collection::vec(any::<u8>(), 0..2000),
        max in 1usize..300,
        cuts in prop::collection::vec(any::<usize>(), 0..30),
    ) {
        let (messages, end) = decode_in_reads(Framing::Raw, max, &stream, &cuts);
        prop_assert_eq!(end, Ok(()));
        prop_assert!(messages.iter().all(|m| !m.is_empty() && m.len() <= max));
        prop_assert_eq!(messages.concat(), stream);
    }
}

#[test]
fn byte_at_a_time_long_line() {
    // A 1 MiB line fed one byte per read; the decoder searches each byte
    // once, so this stays fast (it would be ~5e11 byte compares otherwise).
    let max = 1 << 20;
    let mut decoder = Decoder::new(Framing::Lines, max + 1);
    let mut buf = Vec::with_capacity(max + 1);
    for _ in 0..max {
        buf.push(b'x');
        assert_eq!(decoder.decode(&buf), Decoded::NeedMore);
    }
    buf.push(b'\n');
    assert_eq!(decoder.decode(&buf), Decoded::Frame(max + 1));
}
