//! Cost of one drafting call of the block-diffusion drafter at the proposed shipped size
//! (`DrafterConfig::proposed(8192)`: 4 layers of width 256, reduced vocabulary of 8,192 tokens,
//! conditioned on three Qwen2.5-Coder-1.5B layers), with a context of 300 tokens already cached.
//!
//! Budget: under 15% of one Qwen2.5-Coder-1.5B decode step on the project's 2-core CPU
//! (28 ms → about 4 ms per block). Also measured: the per-round cache update (8 accepted tokens),
//! and the standalone variant of the same size, whose context runs through the layers.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-drafter cargo bench -p duet-drafter`. candle multiplies on
//! every core by default; `RAYON_NUM_THREADS=1` measures one core, which was the faster setting
//! for these small products whenever the machine was shared with another job.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use duet_drafter::{DiffusionModel, DraftCache, DrafterConfig, SamplerConfig};

const REDUCED_VOCAB: usize = 8192;
const CONTEXT: usize = 300;

fn context_tokens(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 7919) % REDUCED_VOCAB as u32).collect()
}

fn features(rows: usize, dim: usize) -> Vec<f32> {
    (0..rows * dim).map(|i| ((i * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0).collect()
}

/// A conditioned cache as in a running session: every context token but the newest has features.
fn conditioned_session(model: &DiffusionModel) -> DraftCache {
    let dim = model.feature_dim().expect("the proposed config is conditioned");
    let mut cache = model.new_cache().expect("cache");
    cache.extend(model, &context_tokens(CONTEXT), Some(&features(CONTEXT - 1, dim))).expect("prefill");
    cache
}

fn drafting(c: &mut Criterion) {
    let model = DiffusionModel::random(&DrafterConfig::proposed(REDUCED_VOCAB), 1).expect("model");
    let mut cache = conditioned_session(&model);
    let mut group = c.benchmark_group("drafter_block");
    for block in [4usize, 8, 16] {
        for steps in [1usize, 2, 4] {
            let sampler = SamplerConfig { steps, ..SamplerConfig::default() };
            let init = vec![None; block];
            group.bench_with_input(BenchmarkId::new(format!("B{block}"), format!("T{steps}")), &init, |b, init| {
                b.iter(|| black_box(model.draft(&mut cache, init, &sampler).expect("draft")))
            });
        }
    }
    let sampled = SamplerConfig { steps: 1, temperature: 1.0, top_k: 4, seed: 7, ..SamplerConfig::default() };
    group.bench_function("B16/T1-temperature-top4", |b| {
        b.iter(|| black_box(model.draft(&mut cache, &[None; 16], &sampled).expect("draft")))
    });
    group.finish();
}

fn round_overheads(c: &mut Criterion) {
    let conditioned = DiffusionModel::random(&DrafterConfig::proposed(REDUCED_VOCAB), 1).expect("model");
    let standalone = DiffusionModel::random(&DrafterConfig::proposed_standalone(REDUCED_VOCAB), 1).expect("model");
    let mut group = c.benchmark_group("drafter_round");

    // Eight accepted tokens and a correction enter the cache, then the rejected tail is cut back.
    let dim = conditioned.feature_dim().expect("conditioned");
    let mut cache = conditioned_session(&conditioned);
    let round_features = features(9, dim);
    group.bench_function("conditioned-extend-9", |b| {
        b.iter(|| {
            cache.extend(&conditioned, &context_tokens(9), Some(&round_features)).expect("extend");
            cache.truncate(CONTEXT);
        })
    });

    let mut cache = standalone.new_cache().expect("cache");
    cache.extend(&standalone, &context_tokens(CONTEXT), None).expect("prefill");
    group.bench_function("standalone-extend-9", |b| {
        b.iter(|| {
            cache.extend(&standalone, &context_tokens(9), None).expect("extend");
            cache.truncate(CONTEXT);
        })
    });
    let greedy = SamplerConfig::default();
    group.bench_function("standalone-draft-B16/T1", |b| {
        b.iter(|| black_box(standalone.draft(&mut cache, &[None; 16], &greedy).expect("draft")))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = drafting, round_overheads
}
criterion_main!(benches);
