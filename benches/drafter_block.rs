//! Cost of one drafting call of the shipped block-diffusion drafter (`drafter/checkpoints/default`:
//! 6 layers of width 384, a reduced vocabulary of 8,194 ids, standalone), as a generation round
//! pays it: a context of 300 tokens already cached, then per call the tokens the verifier accepted
//! plus its own (1 to 9 new context tokens, cycling) enter the cache and a block of B = 4, 8 or 16
//! masked positions is drafted in T = 1, 2 or 4 denoising passes.
//!
//! Budget (issue 3): drafting a block costs under 15% of one decode step of the
//! Qwen2.5-Coder-1.5B verifier on the project's 2-core CPU (~77 ms → about 11.5 ms per call).
//!
//! `drafter_parts` splits a call into its pieces, to see where the time goes: new context tokens
//! entering the cache on their own, one pass over a block with nothing pending, and a whole draft
//! call after the context is in place (the pass plus the output layer's post-processing).
//!
//! `linear_ab` compares, in one process and at the drafter's shapes (rows × in → out), candle's
//! matmul against weights stored transposed (how the drafter multiplied before) with the
//! drafter's own [`PackedLinear`] kernel: the same-process comparison is fair on a busy machine
//! where call timings from separate runs are not.
//!
//! Run: `cargo bench -p duet-drafter --bench drafter_block`. candle multiplies on every physical
//! core by default; `RAYON_NUM_THREADS=1` measures one core.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use duet_drafter::candle_core::{Device, Tensor};
use duet_drafter::{DiffusionModel, DraftCache, PackedLinear, SamplerConfig};

/// Context tokens cached before the timed calls.
const CONTEXT: usize = 300;
/// Most context tokens a round adds: a fully accepted block of 8 plus the verifier's own token.
const MAX_NEW: usize = 9;

fn shipped() -> DiffusionModel {
    // As the `duet` binary does: candle otherwise reads /proc/cpuinfo on every matrix product to
    // find its thread count (the same count it gets here).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = duet_drafter::candle_core::utils::get_num_threads();
        // SAFETY: runs before the model exists, while the bench has no other thread.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("checkpoints/default");
    DiffusionModel::load(&dir).unwrap_or_else(|e| panic!("cannot load {}: {e}", dir.display()))
}

/// Verifier ids the checkpoint's reduced vocabulary knows, in a fixed pseudo-random order: the
/// drafter sees a context of real embeddings, not UNKs.
fn context_tokens(model: &DiffusionModel, n: usize, salt: usize) -> Vec<u32> {
    let ids: Vec<u32> = model.vocab().draft_to_verifier().iter().copied().filter(|&t| t != u32::MAX).collect();
    (0..n).map(|i| ids[((i + salt) * 7919) % ids.len()]).collect()
}

fn session(model: &DiffusionModel) -> DraftCache {
    let mut cache = model.new_cache().expect("cache");
    cache.extend(model, &context_tokens(model, CONTEXT, 0), None).expect("prefill");
    cache
}

/// One round as the engine's adapter runs it: the rejected tail is cut off, the new context
/// tokens go in (deferred: the drafting pass caches them with the block), a block is drafted.
fn round(model: &DiffusionModel, cache: &mut DraftCache, new: &[u32], init: &[Option<u32>], sampler: &SamplerConfig) {
    cache.truncate(CONTEXT);
    cache.extend_deferred(model, new).expect("extend");
    black_box(model.draft(cache, init, sampler).expect("draft"));
}

fn drafter_call(c: &mut Criterion) {
    let model = shipped();
    let mut cache = session(&model);
    let news: Vec<Vec<u32>> = (1..=MAX_NEW).map(|n| context_tokens(&model, n, CONTEXT + n)).collect();
    let mut group = c.benchmark_group("drafter_call");
    for block in [4usize, 8, 16] {
        for steps in [1usize, 2, 4] {
            let sampler = SamplerConfig { steps, ..SamplerConfig::default() };
            let init = vec![None; block];
            let mut call = 0usize;
            group.bench_function(BenchmarkId::new(format!("B{block}"), format!("T{steps}")), |b| {
                b.iter(|| {
                    call += 1;
                    round(&model, &mut cache, &news[call % MAX_NEW], &init, &sampler);
                })
            });
        }
    }
    group.finish();
}

fn drafter_parts(c: &mut Criterion) {
    let model = shipped();
    let mut cache = session(&model);
    let mut group = c.benchmark_group("drafter_parts");
    for n in [1usize, MAX_NEW] {
        let new = context_tokens(&model, n, CONTEXT);
        group.bench_function(format!("extend-{n}"), |b| {
            b.iter(|| {
                cache.truncate(CONTEXT);
                cache.extend(&model, &new, None).expect("extend");
            })
        });
    }
    cache.truncate(CONTEXT);
    group.bench_function("block-pass-B8", |b| {
        b.iter(|| black_box(model.block_logits(&mut cache, &[None; 8]).expect("logits")))
    });
    let greedy = SamplerConfig::default();
    group.bench_function("draft-B8-T1-context-in-place", |b| {
        b.iter(|| black_box(model.draft(&mut cache, &[None; 8], &greedy).expect("draft")))
    });
    group.finish();
}

/// Input → output widths of the shipped drafter's products: q, k/v, and o projections, MLP gate/up
/// and down, the output layer, and the fused q+k+v and gate+up products the drafter runs.
const LINEAR_SHAPES: [(usize, usize); 7] =
    [(384, 384), (384, 128), (384, 1024), (1024, 384), (384, 8194), (384, 640), (384, 2048)];

fn linear_ab(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear_ab");
    group.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    for (inputs, outputs) in LINEAR_SHAPES {
        let w = Tensor::randn(0f32, 0.05, (outputs, inputs), &Device::Cpu).expect("weights");
        let transposed = w.t().and_then(|t| t.contiguous()).expect("transposed");
        let packed = PackedLinear::new(&w, None).expect("pack");
        // 9–17 rows: a drafting pass; 64 and 256: long runs of context tokens (a prompt enters in
        // chunks of 256).
        for rows in [9usize, 13, 17, 64, 256] {
            let x = Tensor::randn(0f32, 1.0, (rows, inputs), &Device::Cpu).expect("x");
            let shape = format!("{rows}x{inputs}->{outputs}");
            group.bench_function(BenchmarkId::new("candle", &shape), |b| {
                b.iter(|| black_box(x.matmul(&transposed).expect("matmul")))
            });
            group.bench_function(BenchmarkId::new("packed", &shape), |b| {
                b.iter(|| black_box(packed.forward(&x).expect("packed")))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = linear_ab, drafter_call, drafter_parts
}
criterion_main!(benches);
