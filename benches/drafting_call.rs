//! Cost of one drafting call through the engine's `Drafter` trait, as a round pays it: the n-gram
//! prompt lookup on a long copy-heavy context, and the shipped block-diffusion drafter
//! (`drafter/checkpoints/default`, conditioned on verifier hidden states, fed synthetic ones here)
//! for blocks of 4, 8 and 16 with its context already cached. `benches/drafter_block.rs` measures
//! the diffusion model itself at the proposed size with random weights; this one includes the
//! adapter (cache sync, vocabulary mapping) and the real checkpoint.
//!
//! Run: `cargo bench -p duet-orchestrator --bench drafting_call` (`RAYON_NUM_THREADS` sets candle's
//! threads).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use duet_orchestrator::drafters::{DiffusionDrafter, HintPolicy, NgramDrafter, diffusion};
use duet_orchestrator::engine::{DraftRequest, Drafter, Features};

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

fn diffusion_shipped(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../drafter/checkpoints/default");
    let model = match diffusion::load_model(&dir) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("drafting_call: cannot load {}: {e}; diffusion not measured", dir.display());
            return;
        }
    };
    // The shipped checkpoint keeps to tokens of its reduced vocabulary; use those for the context.
    let ids: Vec<u32> = model.vocab().draft_to_verifier().iter().copied().filter(|&t| t != u32::MAX).take(500).collect();
    let ctx: Vec<u32> = (0..CONTEXT).map(|i| ids[(i * 7) % ids.len()]).collect();
    let dim = model.feature_dim();
    let feats: Vec<f32> = (0..(CONTEXT - 1) * dim.unwrap_or(0)).map(|i| ((i * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0).collect();
    let features = dim.map(|dim| Features { data: &feats, dim });
    let mut d = DiffusionDrafter::new(model, Default::default(), HintPolicy::None).expect("drafter");
    let mut group = c.benchmark_group("drafting_call/diffusion-shipped");
    for block in [4usize, 8, 16] {
        let req = DraftRequest { context: &ctx, previous: None, max_len: block, features };
        // The first call fills the drafter's context cache; the timed calls find it in place.
        d.propose(&req).expect("draft");
        group.bench_with_input(BenchmarkId::from_parameter(block), &req, |b, req| b.iter(|| black_box(d.propose(req).expect("draft"))));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = ngram, diffusion_shipped
}
criterion_main!(benches);
