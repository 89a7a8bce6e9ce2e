//! Engine throughput: MB/s on tag-free prose, on call-dense text, and the same texts fed one
//! character at a time and four at a time (about a token: what a real stream costs). The
//! consumer reads every event, as a client would. Targets (issue 4): >= 1 GB/s on
//! tag-free text; per-character feeding no more than 10x slower than one piece.
//!
//! `cargo bench -p blockops-toolcalls --bench engine`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

#[path = "support/workloads.rs"]
mod workloads;
use workloads::{call_dense, pieces, prose, run_pieces, run_whole};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    for (name, text) in [
        ("tag-free prose", prose(1 << 20)),
        ("call-dense", call_dense(1 << 20)),
    ] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::new("one piece", name), &text, |b, t| {
            b.iter(|| run_whole(black_box(t)))
        });
        for (label, n) in [("per character", 1), ("per 4 characters", 4)] {
            let pieces = pieces(&text, n);
            group.bench_with_input(BenchmarkId::new(label, name), &pieces, |b, p| {
                b.iter(|| run_pieces(black_box(p)))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
