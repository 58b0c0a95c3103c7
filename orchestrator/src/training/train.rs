//! The training loop of the DFlash-style diffusion drafter on a [`super::dataset`] folder.
//!
//! Each example is one round of speculative decoding replayed on corpus text: the context
//! `t_0 … t_{a-1}` comes as the verifier's hidden states, `t_a` is the verifier's pending token (a
//! known position at the front of the block), and the `block` positions after it are to be drafted.
//! Targets are the verifier's own greedy choices at those positions (teacher-forced), not the
//! corpus text: acceptance is agreement with the verifier, so the drafter learns the verifier
//! (distillation). Most blocks are fully masked — exactly what a one-step draft sees, so one pass is
//! trained to produce what the verifier would (step distillation); the rest have a random mask ratio
//! (the masked-diffusion objective), so multi-step denoising works too. The loss covers masked
//! positions, weighted down along the block because acceptance stops at the first miss.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use duet_drafter::candle_core::{D, DType, Device, Tensor};
use duet_drafter::candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use duet_drafter::{DiffusionModel, DrafterConfig, ForwardMode, TargetConditioning, TrainBatch, Vocab, seeded_varmap};
use serde::{Deserialize, Serialize};

use super::dataset::{Loaded, Split, load};

/// Qwen2.5's end-of-text and end-of-turn ids: always in the drafter's vocabulary.
const ALWAYS_IN_VOCAB: [u32; 2] = [151_643, 151_645];

/// How to train.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Dataset folder.
    pub data_dir: PathBuf,
    /// Checkpoint folder (written, and resumed from when it holds a checkpoint).
    pub out_dir: PathBuf,
    /// Draft positions per example (after the pending token).
    pub block: usize,
    /// Examples per optimiser step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Stop after this many minutes of this run.
    pub minutes: f64,
    /// Stop once the run reaches this step count.
    pub max_steps: usize,
    /// Drafter vocabulary: this many most frequent verifier tokens (plus MASK and UNK).
    pub reduced_vocab: usize,
    /// Decoder layers and width of a new model.
    pub layers: usize,
    /// Width of the residual stream of a new model.
    pub hidden: usize,
    /// Evaluate the held-out loss and save every this many steps.
    pub eval_every: usize,
    /// Seed of initialisation and example sampling.
    pub seed: u64,
    /// Layer count of the verifier: its final hidden state is the feature (recorded in config.json).
    pub verifier_layers: usize,
}

/// Progress saved next to the checkpoint so a later run resumes the schedule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps taken over all runs.
    pub step: usize,
    /// Block positions trained on over all runs.
    pub positions: u64,
    /// Wall time spent training over all runs, in seconds.
    pub train_s: f64,
    /// Last held-out loss.
    pub held_out_loss: Option<f64>,
    /// Last held-out accuracy of the first drafted position.
    pub held_out_acc1: Option<f64>,
}

pub(super) const STATE_FILE: &str = "train_state.json";

/// Trains (or continues training) and leaves the checkpoint in `out_dir`.
pub fn train(opts: &TrainOptions) -> anyhow::Result<TrainState> {
    let device = Device::Cpu;
    let train = load(&opts.data_dir, Split::Train).context("loading the training split")?;
    let held = load(&opts.data_dir, Split::HeldOut).context("loading the held-out split")?;
    anyhow::ensure!(train.rows() > 0, "the training split in {} is empty", opts.data_dir.display());
    anyhow::ensure!(train.seq_len > opts.block + 8, "windows of {} tokens are too short for blocks of {}", train.seq_len, opts.block);

    let resume = opts.out_dir.join(duet_drafter::CONFIG_FILE).is_file();
    let (config, vocab) = if resume {
        let m = DiffusionModel::load(&opts.out_dir).context("loading the checkpoint to resume")?;
        (m.config().clone(), m.vocab().clone())
    } else {
        new_config(opts, &train)?
    };
    let varmap: VarMap = seeded_varmap(&config, opts.seed, &device)?;
    if resume {
        load_weights(&varmap, &opts.out_dir.join(duet_drafter::WEIGHTS_FILE)).context("loading weights to resume")?;
    }
    let model = DiffusionModel::new(&config, vocab, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let mut state: TrainState = std::fs::read(opts.out_dir.join(STATE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    eprintln!(
        "[train] {} model: {} layers × {} wide, vocabulary {} ({}), {} training windows, from step {}",
        if resume { "resumed" } else { "new" },
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
        model.vocab().describe(),
        train.rows(),
        state.step
    );

    let params = ParamsAdamW { lr: opts.lr, weight_decay: 0.01, ..ParamsAdamW::default() };
    let mut opt = AdamW::new(varmap.all_vars(), params)?;
    let mut rng = Rng::new(opts.seed ^ (state.step as u64).wrapping_mul(0x9e37_79b9));
    let started = Instant::now();
    let earlier_s = state.train_s;
    let mut progress = Progress::new(started, state.step, opts.minutes);
    while state.step < opts.max_steps && started.elapsed().as_secs_f64() < opts.minutes * 60.0 {
        let warm = ((state.step + 1) as f64 / 200.0).min(1.0);
        opt.set_learning_rate(opts.lr * warm);
        let ex = sample(&train, &model, opts, &mut rng, &device)?;
        let loss = loss(&model, &ex, ForwardMode::Training)?;
        opt.backward_step(&loss)?;
        state.step += 1;
        state.positions += ex.positions as u64;
        progress.record(state.step, loss.to_scalar::<f32>()?, ex.positions);
        if state.step.is_multiple_of(opts.eval_every) {
            evaluate_and_save(&model, &held, opts, &mut state, earlier_s + started.elapsed().as_secs_f64(), &device)?;
        }
    }
    eprintln!();
    evaluate_and_save(&model, &held, opts, &mut state, earlier_s + started.elapsed().as_secs_f64(), &device)?;
    Ok(state)
}

fn new_config(opts: &TrainOptions, train: &Loaded) -> anyhow::Result<(DrafterConfig, Vocab)> {
    // Most frequent verifier choices first: those are what the drafter must be able to say.
    let mut counts = std::collections::HashMap::<u32, u64>::new();
    for &t in train.greedy.iter().chain(&train.tokens) {
        *counts.entry(t).or_default() += 1;
    }
    let mut by_count: Vec<(u32, u64)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut frequent: Vec<u32> = ALWAYS_IN_VOCAB.to_vec();
    frequent.extend(by_count.iter().map(|&(t, _)| t).filter(|t| !ALWAYS_IN_VOCAB.contains(t)));
    frequent.truncate(opts.reduced_vocab);
    let mut config = DrafterConfig::proposed(frequent.len());
    config.num_hidden_layers = opts.layers;
    if opts.hidden != config.hidden_size {
        config.hidden_size = opts.hidden;
        config.intermediate_size = opts.hidden * 3;
        config.num_attention_heads = opts.hidden / 64;
        config.num_key_value_heads = (opts.hidden / 128).max(1);
    }
    // llama.cpp exposes only the final hidden state for Qwen2 models (its per-layer inputs are not
    // wired up for that architecture), so that is the one feature layer.
    config.target = Some(TargetConditioning {
        verifier_hidden_size: train.n_embd,
        verifier_layer_ids: vec![opts.verifier_layers],
        add_token_embeddings: Some(true),
    });
    let vocab = Vocab::reduced(&config, Vocab::reduced_map_from_frequent(&frequent))?;
    Ok((config, vocab))
}

/// One batch of examples.
struct Example {
    batch: TrainBatch,
    /// (batch, block + 1) drafter ids of the targets; position 0 is the pending token.
    targets: Tensor,
    /// (batch, block + 1) loss weights: 0 where the position is given or the target is UNK.
    weights: Tensor,
    positions: usize,
}

fn sample(data: &Loaded, model: &DiffusionModel, opts: &TrainOptions, rng: &mut Rng, device: &Device) -> anyhow::Result<Example> {
    let (b, block, seq, dim) = (opts.batch, opts.block, data.seq_len, data.n_embd);
    // Context length: the tokens with features before the pending token.
    let a = 1 + rng.below(seq - block - 2);
    let vocab = model.vocab();
    let mask = vocab.mask_id();
    let unk = vocab.unk_id();
    let mut tokens = Vec::with_capacity(b * (a + 1 + block));
    let mut targets = Vec::with_capacity(b * (block + 1));
    let mut weights = Vec::with_capacity(b * (block + 1));
    let mut features = Vec::with_capacity(b * a * dim);
    let mut positions = 0;
    for _ in 0..b {
        let row = rng.below(data.rows());
        let base = row * seq;
        let to_d = |t: u32| vocab.to_drafter(t).unwrap_or(unk.unwrap_or(mask));
        tokens.extend(data.tokens[base..base + a].iter().map(|&t| to_d(t)));
        features.extend(data.features[(base * dim)..((base + a) * dim)].iter().map(|x| x.to_f32()));
        // Position 0 of the block: the pending token, given. Then the verifier's greedy choices.
        let pending = to_d(data.tokens[base + a]);
        tokens.push(pending);
        targets.push(pending);
        weights.push(0.0f32);
        // Half the blocks fully masked (one-step drafting); the rest with a random mask ratio.
        let ratio = if rng.below(2) == 0 { 1.0 } else { (rng.below(1000) as f32 + 1.0) / 1000.0 };
        let mut any = false;
        for j in 1..=block {
            let target = to_d(data.greedy[base + a + j - 1]);
            let masked = j == block && !any || (rng.below(1_000_000) as f32) < ratio * 1_000_000.0;
            any |= masked;
            tokens.push(if masked { mask } else { target });
            targets.push(target);
            let useful = masked && Some(target) != unk;
            weights.push(if useful { 0.9f32.powi(j as i32 - 1) } else { 0.0 });
            positions += usize::from(useful);
        }
    }
    let len = a + 1 + block;
    Ok(Example {
        batch: TrainBatch {
            tokens: Tensor::from_vec(tokens, (b, len), device)?,
            context_len: a,
            features: Some(Tensor::from_vec(features, (b, a, dim), device)?),
        },
        targets: Tensor::from_vec(targets, (b, block + 1), device)?,
        weights: Tensor::from_vec(weights, (b, block + 1), device)?,
        positions,
    })
}

/// Weighted cross-entropy over the masked positions.
fn loss(model: &DiffusionModel, ex: &Example, mode: ForwardMode) -> anyhow::Result<Tensor> {
    let logits = model.forward_train(&ex.batch, mode)?; // (b, block + 1, vocab)
    weighted_cross_entropy(&logits, &ex.targets, &ex.weights)
}

/// The one-line progress report of a training run: mean loss of the last 10 steps, speed, time left.
pub(super) struct Progress {
    started: Instant,
    start_step: usize,
    minutes: f64,
    recent: Vec<f32>,
    positions: usize,
}

impl Progress {
    pub(super) fn new(started: Instant, start_step: usize, minutes: f64) -> Self {
        Self { started, start_step, minutes, recent: Vec::new(), positions: 0 }
    }

    /// Records one step's loss and trained positions; prints every 10 steps.
    pub(super) fn record(&mut self, step: usize, loss: f32, positions: usize) {
        self.recent.push(loss);
        self.positions += positions;
        if !step.is_multiple_of(10) {
            return;
        }
        let mean = self.recent.iter().sum::<f32>() / self.recent.len() as f32;
        let per_step = self.positions as f64 / self.recent.len() as f64;
        self.recent.clear();
        self.positions = 0;
        let el = self.started.elapsed().as_secs_f64();
        let rate = (step - self.start_step) as f64 / el;
        let left = ((self.minutes * 60.0 - el) / 60.0).max(0.0);
        eprint!("\r[train] step {step} loss {mean:.3}, {rate:.2} steps/s ({:.0} positions/s), {left:.0} min left   ", rate * per_step);
    }
}

/// Loads a checkpoint's weights into training variables, converting their dtype: a checkpoint may
/// store f16 (the accelerator recipe ships f16 weights) while training runs in f32.
pub(super) fn load_weights(varmap: &VarMap, path: &Path) -> anyhow::Result<()> {
    let tensors = duet_drafter::candle_core::safetensors::load(path, &Device::Cpu)?;
    let vars = varmap.data().lock().map_err(|_| anyhow::anyhow!("the variable map's lock is poisoned"))?;
    for (name, var) in vars.iter() {
        let t = tensors.get(name).with_context(|| format!("{} has no tensor `{name}`", path.display()))?;
        var.set(&t.to_dtype(var.dtype())?).with_context(|| format!("setting `{name}`"))?;
    }
    Ok(())
}

/// Cross-entropy of `logits` (b, n, vocab) against `targets` (b, n), weighted by `weights` (b, n)
/// and normalised by the weights' sum.
pub(super) fn weighted_cross_entropy(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> anyhow::Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_p = shifted.broadcast_sub(&log_z)?;
    let picked = log_p.gather(&targets.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?.squeeze(D::Minus1)?;
    let total = weights.sum_all()?.to_scalar::<f32>()?.max(1e-6);
    Ok((picked.mul(weights)?.sum_all()?.neg()? / f64::from(total))?)
}

fn evaluate_and_save(
    model: &DiffusionModel,
    held: &Loaded,
    opts: &TrainOptions,
    state: &mut TrainState,
    train_s: f64,
    device: &Device,
) -> anyhow::Result<()> {
    if held.rows() > 0 {
        let mut rng = Rng::new(12345);
        let (mut loss_sum, mut hits, mut n) = (0.0, 0usize, 0usize);
        for _ in 0..8 {
            let ex = sample(held, model, opts, &mut rng, device)?;
            loss_sum += f64::from(loss(model, &ex, ForwardMode::Training)?.to_scalar::<f32>()?);
            // First drafted position, fully masked blocks or not: does the arg-max match?
            let logits = model.forward_train(&ex.batch, ForwardMode::Training)?.narrow(1, 1, 1)?.squeeze(1)?;
            let guess = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let want = ex.targets.narrow(1, 1, 1)?.squeeze(1)?.to_vec1::<u32>()?;
            hits += guess.iter().zip(&want).filter(|(g, w)| g == w).count();
            n += want.len();
        }
        state.held_out_loss = Some(loss_sum / 8.0);
        state.held_out_acc1 = Some(hits as f64 / n.max(1) as f64);
        eprintln!(
            "\n[train] step {}: held-out loss {:.3}, first-position accuracy {:.3}",
            state.step,
            loss_sum / 8.0,
            hits as f64 / n.max(1) as f64
        );
    }
    state.train_s = train_s;
    save(model, &opts.out_dir, state)
}

pub(super) fn save(model: &DiffusionModel, dir: &Path, state: &TrainState) -> anyhow::Result<()> {
    // Write beside, then swap: an interrupted save never leaves a half checkpoint.
    let tmp = dir.with_extension("saving");
    let _ = std::fs::remove_dir_all(&tmp);
    model.save(&tmp).with_context(|| format!("saving to {}", tmp.display()))?;
    std::fs::write(tmp.join(STATE_FILE), serde_json::to_vec_pretty(state)?)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).with_context(|| format!("moving the checkpoint to {}", dir.display()))?;
    Ok(())
}

/// A small seeded generator (xorshift64*), enough for sampling examples.
pub(super) struct Rng(u64);

impl Rng {
    /// Seeds through splitmix64: xorshift never leaves the all-zero state, so seed 0 must not map
    /// to it.
    pub(super) fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as usize % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::dataset::{Meta, Writer, open_meta};

    /// A dataset where the verifier's next token is a fixed function of the current one, and the
    /// feature of a position encodes its token: learnable by a tiny drafter in a few steps.
    fn synthetic(dir: &Path) {
        let meta = Meta { format: 1, verifier: "synthetic".into(), n_embd: 8, seq_len: 40 };
        open_meta(dir, &meta).expect("meta");
        for split in [Split::Train, Split::HeldOut] {
            let mut w = Writer::open(dir, &meta, split).expect("writer");
            for row in 0..6u32 {
                let tokens: Vec<u32> = (0..40u32).map(|i| 100 + (row * 7 + i * 3) % 13).collect();
                let greedy: Vec<u32> = tokens.iter().map(|&t| 100 + ((t - 100) + 3) % 13).collect();
                let features: Vec<f32> = tokens.iter().flat_map(|&t| (0..8).map(move |k| ((t + k) % 5) as f32 - 2.0)).collect();
                w.push(&tokens, &greedy, &features).expect("row");
            }
        }
    }

    #[test]
    fn example_sampling_varies_for_every_seed() {
        for seed in [0, 1, 42] {
            let mut r = Rng::new(seed);
            let draws: std::collections::HashSet<usize> = (0..50).map(|_| r.below(1000)).collect();
            assert!(draws.len() > 40, "seed {seed}: {} distinct draws of 50", draws.len());
        }
    }

    #[test]
    fn training_lowers_the_loss_and_resumes_from_its_checkpoint() {
        let root = std::env::temp_dir().join(format!("duet-train-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let data = root.join("data");
        synthetic(&data);
        let mut opts = TrainOptions {
            data_dir: data,
            out_dir: root.join("ckpt"),
            block: 4,
            batch: 8,
            lr: 3e-3,
            minutes: 5.0,
            max_steps: 60,
            reduced_vocab: 64,
            layers: 1,
            hidden: 128,
            eval_every: 30,
            seed: 0,
            verifier_layers: 2,
        };
        let first = train(&opts).expect("train");
        assert_eq!(first.step, 60);
        let model = DiffusionModel::load(&opts.out_dir).expect("checkpoint loads");
        assert_eq!(model.config().target.as_ref().map(|t| t.verifier_layer_ids.clone()), Some(vec![2]));
        let early = first.held_out_loss.expect("held-out loss");
        opts.max_steps = 160;
        let second = train(&opts).expect("resume");
        assert_eq!(second.step, 160);
        let late = second.held_out_loss.expect("held-out loss");
        assert!(late < early, "held-out loss should fall: {early} -> {late}");
        let _ = std::fs::remove_dir_all(root);
    }
}
