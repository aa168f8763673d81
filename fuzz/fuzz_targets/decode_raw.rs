//! `raw`: input = [max, read_size, stream...].
#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway_codec::{Decoded, Decoder, Framing};

fuzz_target!(|data: &[u8]| {
    let [max, read, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*max);
    let mut d = Decoder::new(Framing::Raw, max);
    let limit = d.max_message();
    assert!(limit >= 1);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for chunk in stream.chunks(usize::from(*read).max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match d.decode(&buf) {
                Decoded::Frame(n) => {
                    assert!(n > 0 && n <= limit && n <= buf.len());
                    // Raw takes everything available, up to the limit.
                    assert_eq!(n, buf.len().min(limit));
                    out.extend(buf.drain(..n));
                }
                Decoded::NeedMore => {
                    assert!(buf.is_empty());
                    break;
                }
                Decoded::Invalid(e) => panic!("raw never fails: {e:?}"),
            }
        }
    }
    assert_eq!(out, stream);
    assert_eq!(d.offset(), stream.len() as u64);
    assert_eq!(d.finish(&buf), Ok(()));
});
