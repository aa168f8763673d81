//! Criterion benches: append throughput (64 B, 1 KiB, 64 KiB messages under
//! Never, Interval(100ms), Always; 64 KiB of messages per append), appends
//! to the memory tier, read-back throughput, and recovery (open) time. Kept short: `cargo bench -p
//! spillway-spool`. For the one-screen summary with the 4 GiB recovery and 64
//! concurrent writers, run the `spool_bench` example.

#![allow(clippy::unwrap_used)] // a benchmark: panic = report

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use spillway_spool::{Durability, Spool, SpoolConfig};

fn cfg(dir: &std::path::Path, d: Durability) -> SpoolConfig {
    let mut c = SpoolConfig::new(dir);
    c.memory_limit = 0;
    c.durability = d;
    c.segment_size = 64 << 20;
    c
}

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var("SPOOL_BENCH_DIR").unwrap_or_else(|_| "/work".into());
    tempfile::Builder::new()
        .prefix("spool-criterion-")
        .tempdir_in(base)
        .unwrap()
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300))
        .sample_size(10);
    for (name, d) in [
        ("never", Durability::Never),
        (
            "interval100ms",
            Durability::Interval(Duration::from_millis(100)),
        ),
        ("always", Durability::Always),
    ] {
        for size in [64usize, 1024, 64 * 1024] {
            let per = (64 * 1024 / size).max(1);
            let dir = bench_dir();
            let (s, _) = Spool::open(cfg(dir.path(), d)).unwrap();
            let msgs: Vec<Vec<u8>> = (0..per).map(|i| vec![i as u8; size]).collect();
            let refs: Vec<&[u8]> = msgs.iter().map(|v| &v[..]).collect();
            g.throughput(Throughput::Bytes((per * size) as u64));
            g.bench_function(format!("{name}/{size}B"), |b| {
                b.iter(|| {
                    s.append(&refs).unwrap();
                    // Keep the disk tier bounded: consume as we go.
                    let n = s.next_seq();
                    s.ack(n).unwrap();
                })
            });
            s.close().unwrap();
        }
    }
    g.finish();
}

/// The memory tier's hot path: append (admission check, copy into the
/// tier) and ack (pop) with the disk tier empty.
fn append_memory(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_memory");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300))
        .sample_size(10);
    for size in [64usize, 1024] {
        let per = 64 * 1024 / size;
        let dir = bench_dir();
        let mut config = cfg(dir.path(), Durability::Never);
        config.memory_limit = 64 << 20;
        let (s, _) = Spool::open(config).unwrap();
        let msgs: Vec<Vec<u8>> = (0..per).map(|i| vec![i as u8; size]).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(|v| &v[..]).collect();
        g.throughput(Throughput::Bytes((per * size) as u64));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                s.append(&refs).unwrap();
                let n = s.next_seq();
                s.ack(n).unwrap();
            })
        });
        s.close().unwrap();
    }
    g.finish();
}

fn read_back(c: &mut Criterion) {
    let dir = bench_dir();
    let (s, _) = Spool::open(cfg(dir.path(), Durability::Never)).unwrap();
    let msgs: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 1024]).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(|v| &v[..]).collect();
    for _ in 0..4096 {
        s.append(&refs).unwrap();
    }
    let total = s.next_seq();
    let mut g = c.benchmark_group("read");
    g.measurement_time(Duration::from_secs(2)).sample_size(10);
    g.throughput(Throughput::Bytes(total * 1024));
    g.bench_function("256MiB_of_1KiB_msgs", |b| {
        b.iter(|| {
            let mut pos = 0;
            loop {
                let got = s.read(pos, 4096, 4 << 20).unwrap();
                let Some(last) = got.last() else { break };
                pos = last.seq + 1;
            }
        })
    });
    g.finish();
    s.close().unwrap();
}

fn recovery(c: &mut Criterion) {
    let dir = bench_dir();
    let (s, _) = Spool::open(cfg(dir.path(), Durability::Never)).unwrap();
    let m = vec![7u8; 64 * 1024];
    let refs: Vec<&[u8]> = (0..16).map(|_| &m[..]).collect();
    // 512 MiB in 64 MiB segments, last one ~half full.
    for _ in 0..(512 + 32) {
        s.append(&refs).unwrap();
    }
    s.close().unwrap();
    let mut g = c.benchmark_group("recovery");
    g.measurement_time(Duration::from_secs(2)).sample_size(10);
    g.bench_function("open_544MiB_spool", |b| {
        b.iter_batched(
            || (),
            |_| {
                let (s, _) = Spool::open(cfg(dir.path(), Durability::Never)).unwrap();
                drop(s);
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, append, append_memory, read_back, recovery);
criterion_main!(benches);
