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
//! - `proto_msg_{text,binary}_{64B,1KiB}`: the ack protocol's MSG frames
//!   (what a consumer decodes) with 64-byte and 1 KiB bodies, taken off one
//!   `BytesMut` by `proto::FrameDecoder` (bodies split off, not copied).
//!   The buffer is made outside the timing; the bytes figure counts the
//!   whole stream, headers included.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use spillway_codec::proto::{self, Encoding, Frame, FrameDecoder};
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

/// `count` MSG frames with `body_len`-byte bodies, as the relay writes them.
fn msg_stream(encoding: Encoding, body_len: usize, count: usize) -> Vec<u8> {
    let body = Bytes::from(
        (0..body_len)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut out = BytesMut::new();
    for seq in 0..count as u64 {
        let frame = Frame::Msg {
            seq: 1_000_000 + seq,
            attempt: 1,
            body: body.clone(),
        };
        proto::encode(&frame, encoding, &mut out);
    }
    out.to_vec()
}

/// Decodes every frame of `buf`; returns the frame count.
fn decode_proto(encoding: Encoding, mut buf: BytesMut) -> usize {
    let max_frame = DEFAULT_MAX_MESSAGE + proto::FRAME_OVERHEAD;
    let mut decoder = FrameDecoder::new(encoding, max_frame);
    let mut count = 0;
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        black_box(&frame);
        count += 1;
    }
    assert!(buf.is_empty(), "the whole stream decodes");
    count
}

fn bench_proto(c: &mut Criterion) {
    for (encoding, enc_name) in [(Encoding::Text, "text"), (Encoding::Binary, "binary")] {
        for (body_len, size_name, count) in [(64, "64B", 16 * 1024), (1024, "1KiB", 1024)] {
            let data = msg_stream(encoding, body_len, count);
            let name = format!("proto_msg_{enc_name}_{size_name}");
            for (unit, throughput) in [
                ("msgs", Throughput::Elements(count as u64)),
                ("bytes", Throughput::Bytes(data.len() as u64)),
            ] {
                let mut group = c.benchmark_group(&name);
                group.throughput(throughput);
                group.bench_function(unit, |b| {
                    b.iter_batched(
                        || BytesMut::from(&data[..]),
                        |buf| assert_eq!(decode_proto(encoding, buf), count),
                        BatchSize::LargeInput,
                    )
                });
                group.finish();
            }
        }
    }
}

criterion_group!(benches, bench, bench_proto);
criterion_main!(benches);
