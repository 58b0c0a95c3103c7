//! Cost of one n-gram prompt-lookup drafting call through the engine's `Drafter` trait, on a long
//! copy-heavy context. The shipped diffusion drafter's calls are measured in the drafter crate
//! (`benches/drafter_block.rs`), which builds without llama.cpp; its adapter adds only a prefix
//! comparison and a vocabulary lookup per call.
//!
//! Run: `cargo bench -p duet-orchestrator --bench drafting_call`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use duet_orchestrator::drafters::NgramDrafter;
use duet_orchestrator::engine::{DraftRequest, Drafter};

const CONTEXT: usize = 600;

/// A context that repeats itself with variations, like code being edited.
fn context() -> Vec<u32> {
    (0..CONTEXT as u32).map(|i| 1000 + (i % 97) * 13 + u32::from(i % 211 == 0)).collect()
}

fn ngram(c: &mut Criterion) {
    let ctx = context();
    let mut d = NgramDrafter::default();
    let mut group = c.benchmark_group("drafting_call/ngram");
    for block in [8usize, 16] {
        group.bench_with_input(BenchmarkId::from_parameter(block), &block, |b, &block| {
            b.iter(|| black_box(d.propose(&DraftRequest { context: &ctx, previous: None, max_len: block, features: None })))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = ngram
}
criterion_main!(benches);
