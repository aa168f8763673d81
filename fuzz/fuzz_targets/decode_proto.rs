//! The ack protocol's frames: input = [mode, stream...]. Bit 0 of `mode`
//! picks the encoding (0 text, 1 binary), the other bits a `max_frame`.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use spillway_codec::proto::{encode, Encoding, Frame, FrameDecoder, ProtoError};

/// Limits around the interesting sizes: none at all, below and at the
/// smallest MSG/PUB, a route's `max_message + 64` for small messages.
const MAX_FRAMES: [usize; 16] = [
    0,
    1,
    12,
    13,
    14,
    17,
    18,
    30,
    64,
    100,
    255,
    256,
    1000,
    1088,
    4096,
    1 << 20,
];

/// Each frame with the bytes it was decoded from; then how it ended (the
/// bytes left over, or the error).
type Outcome = (Vec<(Frame, Vec<u8>)>, Result<usize, ProtoError>);

/// Decodes `stream` arriving in reads of `read` bytes, checking per-frame
/// invariants.
fn run(encoding: Encoding, max_frame: usize, stream: &[u8], read: usize) -> Outcome {
    let mut decoder = FrameDecoder::new(encoding, max_frame);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut consumed = 0;
    for chunk in stream.chunks(read.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let n = before.len() - buf.len();
                    assert!(n > 0);
                    assert_eq!(frame.validate(), Ok(()));
                    if let Frame::Msg { body, .. } | Frame::Pub { body, .. } = &frame {
                        assert!(n <= max_frame && body.len() <= max_frame);
                    }
                    frames.push((frame, before[..n].to_vec()));
                    consumed += n;
                }
                Ok(None) => {
                    assert_eq!(buf, before);
                    break;
                }
                Err(e) => {
                    assert_eq!(buf, before);
                    assert!(!e.message.chars().any(char::is_control));
                    return (frames, Err(e));
                }
            }
        }
    }
    assert_eq!(consumed + buf.len(), stream.len());
    (frames, Ok(buf.len()))
}

fuzz_target!(|data: &[u8]| {
    let [mode, stream @ ..] = data else {
        return;
    };
    let encoding = if mode & 1 == 0 {
        Encoding::Text
    } else {
        Encoding::Binary
    };
    let max_frame = MAX_FRAMES[usize::from(mode >> 1) % MAX_FRAMES.len()];
    let whole = run(encoding, max_frame, stream, stream.len());
    let bytewise = run(encoding, max_frame, stream, 1);
    // Read boundaries never change the frames or the error.
    assert_eq!(whole, bytewise);
    for (frame, wire) in whole.0 {
        let mut again = BytesMut::new();
        encode(&frame, encoding, &mut again);
        // The decoded form is the canonical one, except that a text TERM
        // or ERR may end in a space before an empty reason or text.
        let empty_tail = matches!(&frame, Frame::Term { reason, .. } if reason.is_empty())
            || matches!(&frame, Frame::Err { text, .. } if text.is_empty());
        if !(encoding == Encoding::Text && empty_tail) {
            assert_eq!(&again[..], &wire[..], "{frame:?}");
        }
        let (decoded, end) = run(encoding, usize::MAX, &again, again.len());
        assert_eq!(end, Ok(0));
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].0, frame);
    }
});
