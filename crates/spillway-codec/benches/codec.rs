//! Decode throughput.
//!
//! `cargo bench -p spillway-codec --bench codec`
//!
//! Each case is measured twice, once reported as messages/s (`*/msgs`) and
//! once as bytes/s (`*/bytes`); the work is identical.
//! - `lines_64B`: 64-byte lines (63 + '\n') decoded from one 1 MiB buffer.
//! - `len_u32be_1KiB`: 1 KiB payloads behind a 4-byte big-endian prefix.
//! - `lines_64B_reads_16KiB`: the socket-loop pattern — the stream arrives
//!   in 16 KiB reads into a buffer that keeps the partial tail.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spillway_codec::{encode, Decoded, Decoder, Framing, LenPrefix, DEFAULT_MAX_MESSAGE};

fn stream(framing: Framing, payload_len: usize, count: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| b'a' + (i % 26) as u8).collect();
    let mut out = Vec::new();
    for _ in 0..count {
        encode(framing, &payload, &mut out).expect("bench payload is encodable");
    }
    out
}

/// Decodes a whole in-memory stream; returns the message count.
fn decode_all(framing: Framing, buf: &[u8]) -> usize {
    let mut decoder = Decoder::new(framing, DEFAULT_MAX_MESSAGE);
    let mut pos = 0;
    let mut count = 0;
    while let Decoded::Frame(n) = decoder.decode(&buf[pos..]) {
        black_box(&buf[pos..pos + n]);
        pos += n;
        count += 1;
    }
    count
}

/// Feeds `stream` in `read`-sized chunks through a growable buffer, as a
/// socket loop would; returns the message count.
fn decode_chunked(framing: Framing, stream: &[u8], read: usize, buf: &mut Vec<u8>) -> usize {
    let mut decoder = Decoder::new(framing, DEFAULT_MAX_MESSAGE);
    let mut count = 0;
    buf.clear();
    for chunk in stream.chunks(read) {
        buf.extend_from_slice(chunk);
        let mut pos = 0;
        while let Decoded::Frame(n) = decoder.decode(&buf[pos..]) {
            black_box(&buf[pos..pos + n]);
            pos += n;
            count += 1;
        }
        buf.drain(..pos);
    }
    count
}

fn bench(c: &mut Criterion) {
    let lines = stream(Framing::Lines, 63, 16 * 1024);
    let u32be = Framing::Len(LenPrefix::U32_BE);
    let len = stream(u32be, 1024, 1024);
    let cases: [(&str, Framing, &[u8], usize, bool); 3] = [
        ("lines_64B", Framing::Lines, &lines, 16 * 1024, false),
        ("len_u32be_1KiB", u32be, &len, 1024, false),
        (
            "lines_64B_reads_16KiB",
            Framing::Lines,
            &lines,
            16 * 1024,
            true,
        ),
    ];
    let mut scratch = Vec::with_capacity(64 * 1024);
    for (name, framing, data, count, chunked) in cases {
        for (unit, throughput) in [
            ("msgs", Throughput::Elements(count as u64)),
            ("bytes", Throughput::Bytes(data.len() as u64)),
        ] {
            let mut group = c.benchmark_group(name);
            group.throughput(throughput);
            group.bench_function(unit, |b| {
                b.iter(|| {
                    let n = if chunked {
                        decode_chunked(framing, black_box(data), 16 * 1024, &mut scratch)
                    } else {
                        decode_all(framing, black_box(data))
                    };
                    assert_eq!(n, count);
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
