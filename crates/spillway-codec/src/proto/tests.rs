//! Unit tests of the ack protocol codec: every frame in both encodings, the
//! decoder's refusals, and every handshake error.

use bytes::{Bytes, BytesMut};

use super::*;

const BIG: usize = 1 << 20;

fn enc(frame: &Frame, encoding: Encoding) -> BytesMut {
    let mut out = BytesMut::new();
    encode(frame, encoding, &mut out);
    out
}

/// Decodes `bytes` whole: the frames, then how it stopped (`Ok` with the
/// bytes left over, or the error).
fn decode_all(
    encoding: Encoding,
    max_frame: usize,
    bytes: &[u8],
) -> (Vec<Frame>, Result<usize, ProtoError>) {
    let mut d = FrameDecoder::new(encoding, max_frame);
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        let before = buf.clone();
        match d.decode(&mut buf) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => {
                assert_eq!(buf, before, "need-more takes nothing");
                return (frames, Ok(buf.len()));
            }
            Err(e) => {
                assert_eq!(buf, before, "an error takes nothing");
                return (frames, Err(e));
            }
        }
    }
}

/// The error decoding `bytes` stops at (after any frames before it).
fn error_of(encoding: Encoding, max_frame: usize, bytes: &[u8]) -> ProtoError {
    match decode_all(encoding, max_frame, bytes) {
        (_, Err(e)) => e,
        (frames, Ok(left)) => panic!("no error: {frames:?}, {left} bytes left"),
    }
}

fn assert_400(err: ProtoError, needle: &str) {
    assert_eq!(err.code, 400, "{err}");
    assert!(err.message.contains(needle), "{err:?} lacks {needle:?}");
}

/// One decoded frame that is all of `bytes`.
fn decode_one(encoding: Encoding, bytes: &[u8]) -> Frame {
    match decode_all(encoding, BIG, bytes) {
        (mut frames, Ok(0)) if frames.len() == 1 => frames.remove(0),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
    }
}

/// Every frame with its text and binary encodings, from the spec.
fn every_frame() -> Vec<(Frame, &'static [u8], Vec<u8>)> {
    fn bin(type_code: u8, fields: &[&[u8]]) -> Vec<u8> {
        let rest: Vec<u8> = fields.concat();
        let mut out = ((1 + rest.len()) as u32).to_le_bytes().to_vec();
        out.push(type_code);
        out.extend(rest);
        out
    }
    let le8 = |n: u64| n.to_le_bytes().to_vec();
    vec![
        (
            Frame::Msg {
                seq: 42,
                attempt: 3,
                body: Bytes::from_static(b"a\nb"),
            },
            b"MSG 42 3 3\na\nb\n",
            bin(1, &[&le8(42), &3u32.to_le_bytes(), b"a\nb"]),
        ),
        (
            Frame::Ack { seq: u64::MAX },
            b"ACK 18446744073709551615\n",
            bin(2, &[&le8(u64::MAX)]),
        ),
        (
            Frame::Acks {
                ranges: vec![(1, 5), (9, 9), (3, 4)],
            },
            b"ACKS 1-5,9-9,3-4\n",
            bin(
                3,
                &[
                    &3u16.to_le_bytes(),
                    &le8(1),
                    &le8(5),
                    &le8(9),
                    &le8(9),
                    &le8(3),
                    &le8(4),
                ],
            ),
        ),
        (
            Frame::Nak {
                seq: 7,
                delay_ms: 1500,
            },
            b"NAK 7 1500\n",
            bin(4, &[&le8(7), &le8(1500)]),
        ),
        (
            Frame::Term {
                seq: 8,
                reason: Bytes::from_static(b"bad json: x"),
            },
            b"TERM 8 bad json: x\n",
            bin(5, &[&le8(8), b"bad json: x"]),
        ),
        (
            Frame::Term {
                seq: 8,
                reason: Bytes::new(),
            },
            b"TERM 8\n",
            bin(5, &[&le8(8)]),
        ),
        (Frame::Prog { seq: 0 }, b"PROG 0\n", bin(6, &[&le8(0)])),
        (
            Frame::Win {
                msgs: 65536,
                bytes: 4096,
            },
            b"WIN 65536 4096\n",
            bin(7, &[&65536u32.to_le_bytes(), &le8(4096)]),
        ),
        (Frame::Bye, b"BYE\n", bin(8, &[])),
        (
            Frame::Err {
                code: 409,
                text: "message 5 is not held by this connection".into(),
            },
            b"ERR 409 message 5 is not held by this connection\n",
            bin(
                9,
                &[
                    &409u16.to_le_bytes(),
                    b"message 5 is not held by this connection",
                ],
            ),
        ),
        (
            Frame::Err {
                code: 503,
                text: String::new(),
            },
            b"ERR 503\n",
            bin(9, &[&503u16.to_le_bytes()]),
        ),
        (
            Frame::Pub {
                pseq: None,
                body: Bytes::from_static(b"x y"),
            },
            b"PUB 3\nx y\n",
            bin(16, &[&le8(0), b"x y"]),
        ),
        (
            Frame::Pub {
                pseq: Some(12),
                body: Bytes::new(),
            },
            b"PUB 12 0\n\n",
            bin(16, &[&le8(12)]),
        ),
        (Frame::Conf { n: 500 }, b"CONF 500\n", bin(17, &[&le8(500)])),
        (Frame::Dup { pseq: 1 }, b"DUP 1\n", bin(18, &[&le8(1)])),
    ]
}

#[test]
fn every_frame_encodes_as_the_spec_says_and_decodes_back() {
    for (frame, text, binary) in every_frame() {
        assert_eq!(
            enc(&frame, Encoding::Text),
            text,
            "text of {}",
            frame.verb()
        );
        assert_eq!(
            enc(&frame, Encoding::Binary),
            binary,
            "binary of {}",
            frame.verb()
        );
        assert_eq!(decode_one(Encoding::Text, text), frame);
        assert_eq!(decode_one(Encoding::Binary, &binary), frame);
    }
}

#[test]
fn every_frame_needs_all_its_bytes() {
    for (frame, text, binary) in every_frame() {
        for (encoding, bytes) in [(Encoding::Text, text), (Encoding::Binary, &binary[..])] {
            for cut in 0..bytes.len() {
                let (frames, end) = decode_all(encoding, BIG, &bytes[..cut]);
                assert!(frames.is_empty(), "{frame:?} from {cut} bytes");
                assert_eq!(end, Ok(cut), "{frame:?} cut at {cut}");
            }
        }
    }
}

#[test]
fn frames_follow_each_other_and_leave_the_next_partial_one() {
    for encoding in [Encoding::Text, Encoding::Binary] {
        let mut stream = BytesMut::new();
        let frames: Vec<Frame> = every_frame().into_iter().map(|(f, _, _)| f).collect();
        for f in &frames {
            encode(f, encoding, &mut stream);
        }
        let partial = enc(&frames[0], encoding);
        stream.extend_from_slice(&partial[..partial.len() - 1]);
        let (decoded, end) = decode_all(encoding, BIG, &stream);
        assert_eq!(decoded, frames);
        assert_eq!(end, Ok(partial.len() - 1));
    }
}

#[test]
fn bodies_are_split_off_the_buffer_not_copied() {
    for encoding in [Encoding::Text, Encoding::Binary] {
        let body = vec![7u8; 1000];
        let mut buf = BytesMut::new();
        msg_header(1, 1, body.len(), encoding, &mut buf);
        let header_len = buf.len();
        buf.extend_from_slice(&body);
        buf.extend_from_slice(body_trailer(encoding));
        let base = buf.as_ptr() as usize;
        let mut d = FrameDecoder::new(encoding, BIG);
        let Ok(Some(Frame::Msg { body: got, .. })) = d.decode(&mut buf) else {
            panic!("a MSG");
        };
        assert_eq!(got, body);
        assert_eq!(got.as_ptr() as usize, base + header_len, "{encoding}");
        assert!(buf.is_empty());
    }
}

#[test]
fn headers_and_trailers_are_the_encoded_frame() {
    for encoding in [Encoding::Text, Encoding::Binary] {
        for body in [&b""[..], b"x", b"line\nline\n", &[0xff; 300]] {
            let body = Bytes::copy_from_slice(body);
            let mut vectored = BytesMut::new();
            msg_header(u64::MAX, u32::MAX, body.len(), encoding, &mut vectored);
            vectored.extend_from_slice(&body);
            vectored.extend_from_slice(body_trailer(encoding));
            let frame = Frame::Msg {
                seq: u64::MAX,
                attempt: u32::MAX,
                body: body.clone(),
            };
            assert_eq!(vectored, enc(&frame, encoding));
            // The longest header and its trailer fit the overhead.
            let longest = match encoding {
                Encoding::Text => usize::MAX,
                Encoding::Binary => u32::MAX as usize - 13,
            };
            let mut header = BytesMut::new();
            msg_header(u64::MAX, u32::MAX, longest, encoding, &mut header);
            assert!(header.len() + body_trailer(encoding).len() <= FRAME_OVERHEAD);

            for pseq in [None, Some(1), Some(u64::MAX)] {
                let mut vectored = BytesMut::new();
                pub_header(pseq, body.len(), encoding, &mut vectored);
                vectored.extend_from_slice(&body);
                vectored.extend_from_slice(body_trailer(encoding));
                let frame = Frame::Pub {
                    pseq,
                    body: body.clone(),
                };
                assert_eq!(vectored, enc(&frame, encoding));
            }
        }
    }
}

#[test]
#[should_panic(expected = "does not fit the binary encoding's u32 length")]
fn a_binary_frame_over_4_gib_is_a_programming_error() {
    msg_header(
        1,
        1,
        u32::MAX as usize - 12,
        Encoding::Binary,
        &mut BytesMut::new(),
    );
}

#[test]
fn a_pub_pseq_of_zero_is_written_as_none() {
    for encoding in [Encoding::Text, Encoding::Binary] {
        let frame = Frame::Pub {
            pseq: Some(0),
            body: Bytes::from_static(b"b"),
        };
        let none = Frame::Pub {
            pseq: None,
            body: Bytes::from_static(b"b"),
        };
        assert_eq!(enc(&frame, encoding), enc(&none, encoding));
        assert_eq!(decode_one(encoding, &enc(&frame, encoding)), none);
    }
}

#[test]
fn text_fields_are_made_safe_when_encoded() {
    for encoding in [Encoding::Text, Encoding::Binary] {
        let term = Frame::Term {
            seq: 1,
            reason: Bytes::from(format!("a\nACK 99{}", "x".repeat(300))),
        };
        let Frame::Term { reason, .. } = decode_one(encoding, &enc(&term, encoding)) else {
            panic!("a TERM");
        };
        assert_eq!(reason.len(), MAX_TERM_REASON);
        assert!(reason.starts_with(b"a ACK 99x"));
        let err = Frame::Err {
            code: 400,
            text: format!("a\nb{}", "é".repeat(200)),
        };
        let Frame::Err { text, .. } = decode_one(encoding, &enc(&err, encoding)) else {
            panic!("an ERR");
        };
        assert!(text.starts_with("a?bé") && text.len() <= MAX_ERR_TEXT);
    }
}

#[test]
fn error_frames_carry_a_proto_error() {
    let err = ProtoError::not_held(5);
    assert_eq!(
        Frame::error(&err),
        Frame::Err {
            code: 409,
            text: "message 5 is not held by this connection".into()
        }
    );
    // The handshake's ERR line and the text ERR frame are the same bytes.
    assert_eq!(
        enc(&Frame::error(&err), Encoding::Text),
        err.to_line().as_bytes()
    );
}

// ---- text: refusals ----

#[test]
fn text_body_must_be_followed_by_a_newline() {
    let e = error_of(Encoding::Text, BIG, b"MSG 1 1 3\nabcX");
    assert_400(e, "missing newline after a body of 3 bytes");
    let e = error_of(Encoding::Text, BIG, b"PUB 2\nab\r\n");
    assert_400(e, "missing newline after a body of 2 bytes");
    // Not decided before the byte is there.
    assert_eq!(
        decode_all(Encoding::Text, BIG, b"MSG 1 1 3\nabc"),
        (vec![], Ok(13))
    );
}

#[test]
fn text_frames_over_the_limit_are_refused_from_the_header() {
    // "PUB 100\n" + 100 + "\n" = 109 bytes.
    let e = error_of(Encoding::Text, 108, b"PUB 100\n");
    assert_eq!(e.code, 413);
    assert_eq!(e.message, "frame of 109 bytes is over the limit of 108");
    let (frames, end) = decode_all(Encoding::Text, 109, b"PUB 100\n");
    assert!(frames.is_empty() && end == Ok(8));
    // A length near u64::MAX does not overflow the arithmetic.
    let e = error_of(Encoding::Text, BIG, b"MSG 1 1 18446744073709551615\n");
    assert_eq!(e.code, 413);
    assert!(e.message.contains("frame of 18446744073709551615 bytes"));
}

#[test]
fn text_control_frames_do_not_depend_on_max_frame() {
    let line = b"ACKS 1-2,3-4,5-6\nTERM 1 a reason\n";
    let (frames, end) = decode_all(Encoding::Text, 0, line);
    assert_eq!(frames.len(), 2);
    assert_eq!(end, Ok(0));
}

#[test]
fn text_lines_are_at_most_1024_bytes() {
    // A 1,024-byte line (with its '\n') is fine.
    let mut ok = b"TERM 1 ".to_vec();
    ok.resize(MAX_LINE - 1, b'x');
    ok.push(b'\n');
    assert_400(
        error_of(Encoding::Text, BIG, &ok),
        "TERM reason of 1016 bytes",
    );
    let mut acks = b"ACKS 0-0".to_vec();
    while acks.len() + 4 < MAX_LINE {
        acks.extend_from_slice(b",0-0");
    }
    acks.push(b'\n');
    assert!(acks.len() <= MAX_LINE);
    assert_eq!(decode_all(Encoding::Text, BIG, &acks).0.len(), 1);
    // 1,024 bytes without a newline: refused without waiting for more.
    let e = error_of(Encoding::Text, BIG, &[b'A'; MAX_LINE]);
    assert_400(e, "no newline within 1024 bytes");
    assert_eq!(
        decode_all(Encoding::Text, BIG, &[b'A'; MAX_LINE - 1]),
        (vec![], Ok(MAX_LINE - 1))
    );
}

#[test]
fn text_acks_lines_hold_as_many_ranges_as_binary() {
    let widest = Frame::Acks {
        ranges: vec![(u64::MAX - 1, u64::MAX); MAX_ACK_RANGES],
    };
    let line = enc(&widest, Encoding::Text);
    assert_eq!(line.len(), MAX_ACKS_LINE);
    assert_eq!(decode_one(Encoding::Text, &line), widest);
    let (frames, end) = decode_in_steps(Encoding::Text, &line, 1);
    assert_eq!((frames, end), (vec![widest], Ok(0)));
    // One range more is refused while parsing.
    let mut over = b"ACKS 0-0".to_vec();
    over.extend(b",1-1".repeat(MAX_ACK_RANGES));
    over.push(b'\n');
    assert_400(
        error_of(Encoding::Text, BIG, &over),
        "ACKS of more than 1024 ranges",
    );
    // Its bound, then an error without waiting for a newline.
    let mut long = b"ACKS ".to_vec();
    long.resize(MAX_ACKS_LINE - 1, b'1');
    assert_eq!(
        decode_all(Encoding::Text, BIG, &long),
        (vec![], Ok(MAX_ACKS_LINE - 1))
    );
    long.push(b'1');
    assert_400(
        error_of(Encoding::Text, BIG, &long),
        "no newline within 43013 bytes (an ACKS line is at most 43013 bytes)",
    );
    // Only ACKS: another verb's line is refused at MAX_LINE, the same
    // whether its first bytes arrived alone or not.
    for prefix in [&b"ACK "[..], b"ACKSX", b"TERM 1 "] {
        let mut line = prefix.to_vec();
        line.resize(MAX_LINE, b'1');
        assert_400(
            error_of(Encoding::Text, BIG, &line),
            "no newline within 1024 bytes (a line is at most 1024 bytes)",
        );
        let (_, end) = decode_in_steps(Encoding::Text, &line, 1);
        assert_eq!(
            end.map_err(|e| e.message),
            Err(error_of(Encoding::Text, BIG, &line).message)
        );
    }
}

/// Decodes `bytes` arriving `step` bytes at a time.
fn decode_in_steps(
    encoding: Encoding,
    bytes: &[u8],
    step: usize,
) -> (Vec<Frame>, Result<usize, ProtoError>) {
    let mut d = FrameDecoder::new(encoding, BIG);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in bytes.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
    }
    (frames, Ok(buf.len()))
}

#[test]
fn text_numbers_are_plain_decimal() {
    for bad in [
        &b"ACK +1\n"[..],
        b"ACK -1\n",
        b"ACK 01\n",
        b"ACK 1a\n",
        b"ACK 0x10\n",
        b"ACK 1\r\n",
        b"ACK \xd9\xa1\n",
        b"ACK 18446744073709551616\n",
    ] {
        let e = error_of(Encoding::Text, BIG, bad);
        assert_400(e, "bad seq '");
    }
    assert_400(
        error_of(Encoding::Text, BIG, b"MSG 1 4294967296 0\n\n"),
        "bad attempt '4294967296' in MSG (expected a decimal number from 1 to 4294967295)",
    );
    assert_400(
        error_of(Encoding::Text, BIG, b"MSG 1 0 0\n\n"),
        "bad attempt '0'",
    );
    assert_400(
        error_of(Encoding::Text, BIG, b"ERR 65536 x\n"),
        "bad code '65536'",
    );
    assert_eq!(
        decode_one(Encoding::Text, b"ACK 0\n"),
        Frame::Ack { seq: 0 }
    );
}

#[test]
fn text_fields_are_separated_by_single_spaces() {
    for bad in [
        &b"ACK  1\n"[..],
        b"ACK 1 \n",
        b"ACK\n",
        b"ACK 1 2\n",
        b"NAK 1\n",
        b"NAK 1  2\n",
        b"MSG 1 1\n",
        b"WIN 1\n",
        b"BYE \n",
        b"TERM\n",
        b"TERM \n",
        b"TERM  x\n",
        b"PUB\n",
        b"PUB \n",
        b"PUB 1 2 3\n",
        b"PUB 1  2\n",
        b"CONF\n",
        b"DUP 1 1\n",
        b"ERR\n",
        b"ACKS\n",
    ] {
        let e = error_of(Encoding::Text, BIG, bad);
        assert_400(e, "malformed line: expected '");
    }
    assert_400(
        error_of(Encoding::Text, BIG, b"\n"),
        "malformed line: no frame verb",
    );
    assert_400(
        error_of(Encoding::Text, BIG, b" ACK 1\n"),
        "malformed line: no frame verb",
    );
}

#[test]
fn text_unknown_verbs_are_named_printably() {
    assert_400(
        error_of(Encoding::Text, BIG, b"ACKZ 1\n"),
        "unknown frame 'ACKZ'",
    );
    assert_400(
        error_of(Encoding::Text, BIG, b"ack 1\n"),
        "unknown frame 'ack'",
    );
    let e = error_of(Encoding::Text, BIG, b"\x1b[2J\x07\xff\n");
    assert_eq!(e.message, "unknown frame '\\x1b[2J\\x07\\xff'");
    let mut long = vec![b'V'; 100];
    long.push(b'\n');
    let e = error_of(Encoding::Text, BIG, &long);
    assert!(e.message.ends_with("VVV...'"), "{e}");
    assert!(e.message.len() < 60, "{e}");
}

#[test]
fn text_acks_ranges() {
    assert_400(
        error_of(Encoding::Text, BIG, b"ACKS 5-3\n"),
        "bad ACKS range 5-3",
    );
    for bad in [
        &b"ACKS 1\n"[..],
        b"ACKS 1-\n",
        b"ACKS -1\n",
        b"ACKS 1-2,\n",
        b"ACKS ,1-2\n",
        b"ACKS 1-2-3\n",
        b"ACKS 1 - 2\n",
        b"ACKS 01-2\n",
    ] {
        let e = error_of(Encoding::Text, BIG, bad);
        assert_eq!(e.code, 400, "{e}");
        assert!(
            e.message.contains("bad ACKS range") || e.message.contains("malformed line"),
            "{e}"
        );
    }
}

#[test]
fn text_term_reason_is_the_rest_of_the_line() {
    assert_eq!(
        decode_one(Encoding::Text, b"TERM 3  two  spaces \n"),
        Frame::Term {
            seq: 3,
            reason: Bytes::from_static(b" two  spaces "),
        }
    );
    // A space and nothing: an empty reason, as without the space.
    assert_eq!(
        decode_one(Encoding::Text, b"TERM 3 \n"),
        Frame::Term {
            seq: 3,
            reason: Bytes::new(),
        }
    );
    let mut long = b"TERM 3 ".to_vec();
    long.extend([b'r'; MAX_TERM_REASON]);
    long.push(b'\n');
    assert!(
        matches!(decode_one(Encoding::Text, &long), Frame::Term { reason, .. } if reason.len() == MAX_TERM_REASON)
    );
    long.insert(8, b'r');
    assert_400(
        error_of(Encoding::Text, BIG, &long),
        "TERM reason of 201 bytes (at most 200)",
    );
}

#[test]
fn text_pub_with_a_zero_pseq_is_refused() {
    assert_400(
        error_of(Encoding::Text, BIG, b"PUB 0 1\nx\n"),
        "bad pseq '0' in PUB",
    );
    assert_400(
        error_of(Encoding::Text, BIG, b"DUP 0\n"),
        "bad pseq '0' in DUP",
    );
}

#[test]
fn text_win_and_err_limits() {
    assert_400(error_of(Encoding::Text, BIG, b"WIN 0 1\n"), "bad msgs '0'");
    assert_400(
        error_of(Encoding::Text, BIG, b"WIN 65537 1\n"),
        "bad msgs '65537' in WIN (expected a decimal number from 1 to 65536)",
    );
    assert_400(error_of(Encoding::Text, BIG, b"WIN 1 0\n"), "bad bytes '0'");
    assert_400(
        error_of(Encoding::Text, BIG, b"ERR 400 \xff\n"),
        "ERR text is not UTF-8",
    );
    assert_400(
        error_of(Encoding::Text, BIG, b"ERR 400 a\x1bb\n"),
        "control character",
    );
    let mut long = b"ERR 400 ".to_vec();
    long.extend([b'e'; MAX_ERR_TEXT + 1]);
    long.push(b'\n');
    assert_400(
        error_of(Encoding::Text, BIG, &long),
        "ERR text of 201 bytes",
    );
}

#[test]
fn text_search_survives_a_broken_contract() {
    // A partial line searched, then a shorter buffer: no panic, no skip.
    let mut d = FrameDecoder::new(Encoding::Text, BIG);
    let mut buf = BytesMut::from(&b"PROG 12345"[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    let mut other = BytesMut::from(&b"ACK 1\n"[..]);
    assert_eq!(d.decode(&mut other), Ok(Some(Frame::Ack { seq: 1 })));
}

// ---- binary: refusals ----

fn bin_raw(len: u32, type_code: u8, rest: &[u8]) -> Vec<u8> {
    let mut out = len.to_le_bytes().to_vec();
    out.push(type_code);
    out.extend_from_slice(rest);
    out
}

#[test]
fn binary_length_zero_and_unknown_types() {
    assert_400(
        error_of(Encoding::Binary, BIG, &[0, 0, 0, 0]),
        "frame of length 0",
    );
    for t in [0u8, 10, 15, 19, 255] {
        let e = error_of(Encoding::Binary, BIG, &bin_raw(9, t, &[]));
        assert_eq!(e.message, format!("unknown frame type {t}"));
    }
}

#[test]
fn binary_lengths_are_checked_against_the_type_before_the_bytes_arrive() {
    // Fixed-size frames: exactly their size.
    for (t, n) in [
        (2u8, 9u32),
        (4, 17),
        (6, 9),
        (7, 13),
        (8, 1),
        (17, 9),
        (18, 9),
    ] {
        for wrong in [n - 1, n + 1, u32::MAX] {
            if wrong == 0 {
                continue;
            }
            let e = error_of(Encoding::Binary, BIG, &bin_raw(wrong, t, &[]));
            assert_400(e, &format!("frame of length {wrong} (expected {n})"));
        }
    }
    // Ranges.
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(8, 5, &[])),
        "TERM frame of length 8 (expected 9 to 209)",
    );
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(210, 5, &[])),
        "TERM frame of length 210",
    );
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(2, 9, &[])),
        "ERR frame of length 2 (expected 3 to 203)",
    );
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(204, 9, &[])),
        "ERR frame of length 204",
    );
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(3, 3, &[])),
        "ACKS frame of length 3 (expected 19 to 16387)",
    );
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(16388, 3, &[])),
        "ACKS frame of length 16388",
    );
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(20, 3, &[])),
        "ACKS frame of length 20 (expected 3 + 16 per range)",
    );
    // Below the minimum of a body frame.
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(12, 1, &[])),
        "MSG frame of length 12 (expected at least 13)",
    );
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(8, 16, &[])),
        "PUB frame of length 8 (expected at least 9)",
    );
}

#[test]
fn binary_frames_over_the_limit_are_refused_after_five_bytes() {
    let e = error_of(Encoding::Binary, 1000, &bin_raw(u32::MAX, 1, &[]));
    assert_eq!(e.code, 413);
    assert_eq!(
        e.message,
        "frame of 4294967299 bytes is over the limit of 1000"
    );
    // The limit counts the whole frame: 4 + 996 = 1000 is fine.
    let (frames, end) = decode_all(Encoding::Binary, 1000, &bin_raw(996, 16, &[]));
    assert!(frames.is_empty() && end == Ok(5));
    let e = error_of(Encoding::Binary, 1000, &bin_raw(997, 16, &[]));
    assert_eq!(e, ProtoError::too_large(1001, 1000));
    // Control frames are not bounded by max_frame.
    let acks = Frame::Acks {
        ranges: vec![(1, 2); MAX_ACK_RANGES],
    };
    let (frames, end) = decode_all(Encoding::Binary, 0, &enc(&acks, Encoding::Binary));
    assert_eq!((frames, end), (vec![acks], Ok(0)));
}

#[test]
fn binary_acks_count_and_ranges() {
    let mut body = 2u16.to_le_bytes().to_vec();
    body.extend([0u8; 16]);
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(19, 3, &body)),
        "ACKS count 2 in a frame of 1 ranges",
    );
    let mut body = 1u16.to_le_bytes().to_vec();
    body.extend(9u64.to_le_bytes());
    body.extend(8u64.to_le_bytes());
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(19, 3, &body)),
        "bad ACKS range 9-8",
    );
}

#[test]
fn binary_field_rules_are_the_texts() {
    let mut msg = 1u64.to_le_bytes().to_vec();
    msg.extend(0u32.to_le_bytes());
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(13, 1, &msg)),
        "bad attempt 0 in MSG",
    );
    let mut win = 0u32.to_le_bytes().to_vec();
    win.extend(1u64.to_le_bytes());
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(13, 7, &win)),
        "bad msgs 0 in WIN",
    );
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(9, 18, &[0; 8])),
        "bad pseq 0 in DUP",
    );
    let mut term = 1u64.to_le_bytes().to_vec();
    term.extend(b"a\nb");
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(12, 5, &term)),
        "TERM reason holds a newline",
    );
    let mut err = 400u16.to_le_bytes().to_vec();
    err.extend(b"\xc3");
    assert_400(
        error_of(Encoding::Binary, BIG, &bin_raw(4, 9, &err)),
        "ERR text is not UTF-8",
    );
    // PUB's pseq 0 means none.
    assert_eq!(
        decode_one(
            Encoding::Binary,
            &bin_raw(10, 16, &[0, 0, 0, 0, 0, 0, 0, 0, b'z'])
        ),
        Frame::Pub {
            pseq: None,
            body: Bytes::from_static(b"z")
        }
    );
}

// ---- handshake ----

fn hello_err(line: &str) -> ProtoError {
    Hello::parse(line.as_bytes()).expect_err(line)
}

#[test]
fn hello_parses_the_specs_examples() {
    let c = Hello::parse(
        b"SPILLWAY 1 role=consumer encoding=text group=billing window=256 window_bytes=1048576",
    )
    .expect("valid");
    assert_eq!(
        c,
        Hello {
            group: Some("billing".into()),
            ..Hello::consumer(Encoding::Text)
        }
    );
    let p = Hello::parse(b"SPILLWAY 1 role=producer encoding=binary confirms=on name=app-7\r\n")
        .expect("valid");
    assert_eq!(
        p,
        Hello {
            name: Some("app-7".into()),
            ..Hello::producer(Encoding::Binary)
        }
    );
    // Defaults, options in any order.
    let p = Hello::parse(b"SPILLWAY 1 encoding=text confirms=off role=producer").expect("valid");
    assert!(!p.confirms && p.role == Role::Producer && p.name.is_none());
    let c = Hello::parse(b"SPILLWAY 1 role=consumer encoding=binary").expect("valid");
    assert_eq!(c, Hello::consumer(Encoding::Binary));
    assert_eq!((c.window, c.window_bytes), (256, 1 << 20));
}

#[test]
fn hello_to_line_round_trips() {
    let hellos = [
        Hello::consumer(Encoding::Text),
        Hello {
            group: Some("a.b_c-D9".into()),
            window: 1,
            window_bytes: u64::MAX,
            ..Hello::consumer(Encoding::Binary)
        },
        Hello::producer(Encoding::Text),
        Hello {
            confirms: false,
            name: Some("x".repeat(64)),
            ..Hello::producer(Encoding::Binary)
        },
    ];
    for h in hellos {
        let line = h.to_line();
        assert!(line.ends_with('\n') && line.len() <= MAX_LINE);
        assert_eq!(Hello::parse(line.as_bytes()), Ok(h));
    }
}

#[test]
fn hello_refuses_what_is_not_a_handshake() {
    for line in [
        "",
        "GET / HTTP/1.1",
        "spillway 1 role=consumer encoding=text",
        "SPILLWAY1 role=consumer",
        " SPILLWAY 1 role=consumer encoding=text",
    ] {
        assert_400(hello_err(line), "not a spillway handshake");
    }
    let e = hello_err("\x1b[2JSPILLWAY");
    assert!(!e.message.contains('\x1b'), "{e}");
    for line in [
        "SPILLWAY",
        "SPILLWAY ",
        "SPILLWAY x role=consumer",
        "SPILLWAY -1",
        "SPILLWAY  1 role=consumer",
    ] {
        assert_400(hello_err(line), "malformed version");
    }
    for line in [
        "SPILLWAY 1 role=consumer  encoding=text",
        "SPILLWAY 1 role=consumer encoding=text ",
    ] {
        assert_400(hello_err(line), "empty field");
    }
    assert_400(
        hello_err("SPILLWAY 1 role=consumer encoding=text window"),
        "malformed option 'window' (expected key=value)",
    );
}

#[test]
fn hello_other_versions_are_401_whatever_the_options() {
    for (line, shown) in [
        ("SPILLWAY 2 role=consumer encoding=text", "2"),
        ("SPILLWAY 0 role=consumer encoding=text", "0"),
        ("SPILLWAY 2 role=consumer color=blue", "2"),
        ("SPILLWAY 01 role=consumer encoding=text", "01"),
        (
            "SPILLWAY 99999999999999999999999",
            "99999999999999999999999",
        ),
    ] {
        let e = hello_err(line);
        assert_eq!(e.code, 401, "{line}");
        assert_eq!(
            e.message,
            format!("unsupported version {shown} (this relay speaks 1)")
        );
    }
}

#[test]
fn hello_unknown_and_duplicate_options() {
    assert_eq!(
        hello_err("SPILLWAY 1 role=consumer encoding=text windw=5"),
        ProtoError::malformed("unknown option 'windw'")
    );
    assert_400(
        hello_err("SPILLWAY 1 role=consumer encoding=text =5"),
        "unknown option ''",
    );
    assert_400(
        hello_err("SPILLWAY 1 role=consumer encoding=text Window=5"),
        "unknown option 'Window'",
    );
    assert_eq!(
        hello_err("SPILLWAY 1 role=consumer encoding=text window=5 window=6"),
        ProtoError::malformed("duplicate option 'window'")
    );
    assert_400(
        hello_err("SPILLWAY 1 role=consumer role=consumer encoding=text"),
        "duplicate option 'role'",
    );
}

#[test]
fn hello_bad_values_name_the_option_and_its_range() {
    let cases = [
        (
            "role=admin encoding=text",
            "bad role 'admin' (expected consumer or producer)",
        ),
        (
            "role=consumer encoding=json",
            "bad encoding 'json' (expected text or binary)",
        ),
        (
            "role=consumer encoding=text window=0",
            "bad window '0' (expected 1 to 65536)",
        ),
        (
            "role=consumer encoding=text window=65537",
            "bad window '65537' (expected 1 to 65536)",
        ),
        (
            "role=consumer encoding=text window=",
            "bad window '' (expected 1 to 65536)",
        ),
        ("role=consumer encoding=text window=+5", "bad window '+5'"),
        (
            "role=consumer encoding=text window=99999999999999999999",
            "bad window '99999999999999999999'",
        ),
        (
            "role=consumer encoding=text window_bytes=0",
            "bad window_bytes '0' (expected 1 to 18446744073709551615)",
        ),
        (
            "role=consumer encoding=text window_bytes=18446744073709551616",
            "bad window_bytes",
        ),
        (
            "role=consumer encoding=text group=",
            "bad group '' (expected 1 to 64 bytes of A-Z a-z 0-9 . _ -)",
        ),
        ("role=consumer encoding=text group=a/b", "bad group 'a/b'"),
        (
            "role=producer encoding=text confirms=yes",
            "bad confirms 'yes' (expected on or off)",
        ),
        (
            "role=producer encoding=text name=",
            "bad name '' (expected 1 to 64 bytes of A-Z a-z 0-9 . _ -)",
        ),
        ("role=producer encoding=text name=a=b", "bad name 'a=b'"),
        (
            "role=producer encoding=text name=caf\u{e9}",
            "bad name 'caf\\xc3\\xa9'",
        ),
    ];
    for (options, message) in cases {
        let e = hello_err(&format!("SPILLWAY 1 {options}"));
        assert_400(e, message);
    }
    let long = format!(
        "SPILLWAY 1 role=producer encoding=text name={}",
        "n".repeat(65)
    );
    assert_400(hello_err(&long), "bad name 'nnn");
    let ok = format!(
        "SPILLWAY 1 role=producer encoding=text name={}",
        "n".repeat(64)
    );
    assert!(Hello::parse(ok.as_bytes()).is_ok());
    assert!(Hello::parse(b"SPILLWAY 1 role=consumer encoding=text window=65536").is_ok());
}

#[test]
fn hello_options_of_the_other_role_are_refused() {
    for (options, message) in [
        (
            "role=producer encoding=text window=5",
            "option 'window' is for consumers, not producers",
        ),
        (
            "role=producer encoding=text window_bytes=5",
            "option 'window_bytes' is for consumers",
        ),
        (
            "group=g encoding=text role=producer",
            "option 'group' is for consumers",
        ),
        (
            "role=consumer encoding=text confirms=on",
            "option 'confirms' is for producers, not consumers",
        ),
        (
            "role=consumer encoding=text name=app",
            "option 'name' is for producers",
        ),
    ] {
        assert_400(hello_err(&format!("SPILLWAY 1 {options}")), message);
    }
}

#[test]
fn hello_role_and_encoding_are_required() {
    assert_400(
        hello_err("SPILLWAY 1 encoding=text"),
        "missing option 'role' (consumer or producer)",
    );
    assert_400(hello_err("SPILLWAY 1"), "missing option 'role'");
    assert_400(
        hello_err("SPILLWAY 1 role=producer"),
        "missing option 'encoding' (text or binary)",
    );
}

#[test]
fn hello_line_finds_a_line_of_at_most_1024_bytes() {
    assert_eq!(hello_line(b""), Ok(None));
    assert_eq!(hello_line(b"SPILLWAY 1"), Ok(None));
    assert_eq!(hello_line(b"SPILLWAY 1\nACK 1\n"), Ok(Some(11)));
    let mut line = vec![b'x'; MAX_LINE - 1];
    line.push(b'\n');
    assert_eq!(hello_line(&line), Ok(Some(MAX_LINE)));
    assert_eq!(hello_line(&line[..MAX_LINE - 1]), Ok(None));
    let e = hello_line(&[b'x'; MAX_LINE]).expect_err("too long");
    assert_400(e, "no newline within 1024 bytes");
    let mut long = vec![b'x'; MAX_LINE];
    long.push(b'\n');
    assert!(hello_line(&long).is_err());
}

#[test]
fn welcome_round_trips_and_ignores_unknown_keys() {
    let w = Welcome {
        session: "7f3a9c02".into(),
        max_message: 1_048_576,
        ack_timeout_ms: 30_000,
        max_deliveries: 5,
    };
    let line = w.to_line();
    assert_eq!(
        line,
        "OK 1 session=7f3a9c02 max_message=1048576 ack_timeout_ms=30000 max_deliveries=5\n"
    );
    assert_eq!(Welcome::parse(line.as_bytes()), Ok(w.clone()));
    assert_eq!(Reply::parse(line.as_bytes()), Ok(Reply::Welcome(w.clone())));
    let later = b"OK 1 compress=zstd max_deliveries=5 session=7f3a9c02 ack_timeout_ms=30000 \
                  max_message=1048576 x= nak_max_ms=60000\r\n";
    assert_eq!(Welcome::parse(later), Ok(w.clone()));
    assert_eq!(Reply::Welcome(w.clone()).to_line(), line);
}

#[test]
fn welcome_refusals() {
    let base = "session=s max_message=1 ack_timeout_ms=2 max_deliveries=3";
    assert_eq!(
        Welcome::parse(format!("OK 2 {base}").as_bytes()).map_err(|e| e.code),
        Err(401)
    );
    for (line, needle) in [
        ("HELLO".to_owned(), "not an OK line"),
        ("OK".to_owned(), "malformed version '' in OK"),
        ("OK x session=s".to_owned(), "malformed version 'x' in OK"),
        (format!("OK 1 {base} session=t"), "duplicate key 'session'"),
        (format!("OK 1 {base} junk"), "malformed field 'junk'"),
        (format!("OK 1 {base} =x"), "malformed field '=x'"),
        (format!("OK 1 {base}  "), "malformed field ''"),
        (
            "OK 1 max_message=1 ack_timeout_ms=2 max_deliveries=3".to_owned(),
            "without 'session'",
        ),
        (
            "OK 1 session=s ack_timeout_ms=2 max_deliveries=3".to_owned(),
            "without 'max_message'",
        ),
        (
            "OK 1 session=s/t max_message=1 ack_timeout_ms=2 max_deliveries=3".to_owned(),
            "bad session 's/t'",
        ),
        (
            "OK 1 session=s max_message=x ack_timeout_ms=2 max_deliveries=3".to_owned(),
            "bad max_message 'x'",
        ),
        (
            "OK 1 session=s max_message=1 ack_timeout_ms=2 max_deliveries=4294967296".to_owned(),
            "bad max_deliveries '4294967296'",
        ),
    ] {
        let e = Welcome::parse(line.as_bytes()).expect_err(&line);
        assert_400(e, needle);
    }
}

#[test]
fn replies_carry_a_refusal() {
    let e = ProtoError::malformed("unknown option 'windw'");
    assert_eq!(
        Reply::parse(e.to_line().as_bytes()),
        Ok(Reply::Refused(e.clone()))
    );
    assert_eq!(Reply::Refused(e.clone()).to_line(), e.to_line());
    assert_eq!(
        Reply::parse(b"ERR 408"),
        Ok(Reply::Refused(ProtoError::new(408, "")))
    );
    assert_eq!(
        Reply::parse(b"ERR 403 undeclared group 'x'\r\n"),
        Ok(Reply::Refused(ProtoError::forbidden(
            "undeclared group 'x'"
        )))
    );
    for bad in [&b"ERR"[..], b"ERR x", b"ERR 400 \x1b", b"ERR  400", b"NOPE"] {
        assert_eq!(Reply::parse(bad).map_err(|e| e.code), Err(400), "{bad:?}");
    }
}
