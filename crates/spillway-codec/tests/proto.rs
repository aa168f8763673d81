//! Property tests of the ack protocol codec: encode → decode gives the same
//! frames however the stream is cut into reads; arbitrary (and mangled)
//! input never panics, never yields a body over the limit, and decodes the
//! same whole or byte by byte; handshakes round-trip.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use spillway_codec::proto::{
    encode, Encoding, Frame, FrameDecoder, Hello, ProtoError, Role, Welcome, MAX_ACK_RANGES,
    MAX_TERM_REASON, MAX_WINDOW,
};

const BIG: usize = 1 << 20;

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Text), Just(Encoding::Binary)]
}

fn body() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => proptest::collection::vec(any::<u8>(), 0..2000),
    ]
    .prop_map(Bytes::from)
}

/// Any number, with the edges and small ones likely.
fn num() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(u64::MAX), 0..1000u64, any::<u64>()]
}

/// A valid frame (one [`Frame::validate`] accepts), ACKS up to the most
/// ranges.
fn frame() -> impl Strategy<Value = Frame> {
    let ranges = prop_oneof![
        9 => proptest::collection::vec((num(), num()), 1..20),
        1 => proptest::collection::vec((num(), num()), 1..=MAX_ACK_RANGES),
    ]
    .prop_map(|r| r.into_iter().map(|(a, b)| (a.min(b), a.max(b))).collect());
    let reason = proptest::collection::vec(
        any::<u8>().prop_filter("no newline", |&b| b != b'\n'),
        0..=MAX_TERM_REASON,
    );
    prop_oneof![
        (num(), 1..=u32::MAX, body()).prop_map(|(seq, attempt, body)| Frame::Msg {
            seq,
            attempt,
            body
        }),
        num().prop_map(|seq| Frame::Ack { seq }),
        ranges.prop_map(|ranges| Frame::Acks { ranges }),
        (num(), num()).prop_map(|(seq, delay_ms)| Frame::Nak { seq, delay_ms }),
        (num(), reason).prop_map(|(seq, r)| Frame::Term {
            seq,
            reason: Bytes::from(r)
        }),
        num().prop_map(|seq| Frame::Prog { seq }),
        (1..=MAX_WINDOW, 1..=u64::MAX).prop_map(|(msgs, bytes)| Frame::Win { msgs, bytes }),
        Just(Frame::Bye),
        (any::<u16>(), "[^\\p{Cc}]{0,50}").prop_map(|(code, text)| Frame::Err { code, text }),
        (proptest::option::of(1..=u64::MAX), body())
            .prop_map(|(pseq, body)| Frame::Pub { pseq, body }),
        num().prop_map(|n| Frame::Conf { n }),
        (1..=u64::MAX).prop_map(|pseq| Frame::Dup { pseq }),
    ]
}

type Outcome = (Vec<Frame>, Result<usize, ProtoError>);

/// The socket loop: `stream` arrives in pieces ending at `cuts`; decode
/// until `Ok(None)`, read again. Ends with the bytes left over, or the
/// error. Checks every frame against the limit on the way.
fn decode_in_reads(encoding: Encoding, max_frame: usize, stream: &[u8], cuts: &[usize]) -> Outcome {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut decoder = FrameDecoder::new(encoding, max_frame);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut start = 0;
    for cut in cuts {
        buf.extend_from_slice(&stream[start..cut]);
        start = cut;
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(buf.len() < before, "a frame takes bytes");
                    check_frame(&frame, max_frame, before - buf.len());
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
    }
    (frames, Ok(buf.len()))
}

/// What every decoded frame promises: valid fields, and a MSG or PUB no
/// larger than the limit (so neither is its body).
fn check_frame(frame: &Frame, max_frame: usize, wire: usize) {
    assert_eq!(frame.validate(), Ok(()), "{frame:?}");
    if let Frame::Msg { body, .. } | Frame::Pub { body, .. } = frame {
        assert!(wire <= max_frame, "{wire} > {max_frame}");
        assert!(body.len() <= max_frame);
    }
}

/// Mangles an encoded stream: flips, inserts, deletes and truncations at
/// positions taken modulo its length, to reach past the first header.
fn mangle(mut stream: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(op, at, byte) in edits {
        let at = at % (stream.len() + 1);
        match op % 4 {
            0 if at < stream.len() => stream[at] ^= byte.max(1),
            1 => stream.insert(at, byte),
            2 if at < stream.len() => {
                stream.remove(at);
            }
            3 => stream.truncate(stream.len().saturating_sub(usize::from(byte % 4))),
            _ => {}
        }
    }
    stream
}

fn hello() -> impl Strategy<Value = Hello> {
    let name = "[A-Za-z0-9._-]{1,64}";
    let consumer = (
        encoding(),
        proptest::option::of(name),
        1..=MAX_WINDOW,
        1..=u64::MAX,
    )
        .prop_map(|(encoding, group, window, window_bytes)| Hello {
            group,
            window,
            window_bytes,
            ..Hello::consumer(encoding)
        });
    let producer = (encoding(), any::<bool>(), proptest::option::of(name)).prop_map(
        |(encoding, confirms, name)| Hello {
            confirms,
            name,
            ..Hello::producer(encoding)
        },
    );
    prop_oneof![consumer, producer]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frames_survive_any_split(
        frames in proptest::collection::vec(frame(), 1..8),
        encoding in encoding(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut stream = BytesMut::new();
        for f in &frames {
            encode(f, encoding, &mut stream);
        }
        let (decoded, end) = decode_in_reads(encoding, BIG, &stream, &cuts);
        prop_assert_eq!(end, Ok(0));
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn byte_by_byte_is_the_same_as_whole(
        frames in proptest::collection::vec(frame(), 1..4),
        encoding in encoding(),
    ) {
        let mut stream = BytesMut::new();
        for f in &frames {
            encode(f, encoding, &mut stream);
        }
        let every: Vec<usize> = (0..stream.len()).collect();
        prop_assert_eq!(
            decode_in_reads(encoding, BIG, &stream, &every),
            (frames, Ok(0))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_split_the_same(
        stream in proptest::collection::vec(any::<u8>(), 0..600),
        encoding in encoding(),
        max_frame in 0..700usize,
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = decode_in_reads(encoding, max_frame, &stream, &[]);
        let split = decode_in_reads(encoding, max_frame, &stream, &cuts);
        prop_assert_eq!(&split, &whole);
        for frame in whole.0 {
            let mut again = BytesMut::new();
            encode(&frame, encoding, &mut again);
            prop_assert_eq!(decode_in_reads(encoding, BIG, &again, &[]), (vec![frame], Ok(0)));
        }
    }

    #[test]
    fn mangled_streams_never_panic_and_split_the_same(
        frames in proptest::collection::vec(frame(), 1..6),
        encoding in encoding(),
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..4),
        max_frame in prop_oneof![Just(BIG), 0..3000usize],
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut stream = BytesMut::new();
        for f in &frames {
            encode(f, encoding, &mut stream);
        }
        let stream = mangle(stream.to_vec(), &edits);
        let whole = decode_in_reads(encoding, max_frame, &stream, &[]);
        let split = decode_in_reads(encoding, max_frame, &stream, &cuts);
        prop_assert_eq!(&split, &whole);
        for frame in whole.0 {
            let mut again = BytesMut::new();
            encode(&frame, encoding, &mut again);
            prop_assert_eq!(decode_in_reads(encoding, BIG, &again, &[]), (vec![frame], Ok(0)));
        }
    }

    #[test]
    fn hello_round_trips(hello in hello()) {
        let line = hello.to_line();
        prop_assert_eq!(Hello::parse(line.as_bytes()), Ok(hello));
    }

    #[test]
    fn hello_parse_never_panics(line in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut with_magic = b"SPILLWAY 1 ".to_vec();
        with_magic.extend_from_slice(&line);
        for l in [&line, &with_magic] {
            if let Err(e) = Hello::parse(l) {
                prop_assert!(matches!(e.code, 400 | 401));
                prop_assert!(!e.message.chars().any(char::is_control), "{:?}", e.message);
            }
        }
    }

    #[test]
    fn welcome_round_trips(
        session in "[A-Za-z0-9._-]{1,64}",
        max_message in any::<u64>(),
        ack_timeout_ms in any::<u64>(),
        max_deliveries in any::<u32>(),
    ) {
        let w = Welcome { session, max_message, ack_timeout_ms, max_deliveries };
        prop_assert_eq!(Welcome::parse(w.to_line().as_bytes()), Ok(w));
    }
}

#[test]
fn roles_and_encodings_are_written_as_the_handshake_says() {
    assert_eq!(Role::Consumer.to_string(), "consumer");
    assert_eq!(Role::Producer.as_str(), "producer");
    assert_eq!(Role::Consumer.other(), Role::Producer);
    assert_eq!(Encoding::Text.to_string(), "text");
    assert_eq!(Encoding::Binary.as_str(), "binary");
}
