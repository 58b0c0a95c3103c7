//! Training the standalone drafter on CPU from the token streams of [`super::standalone`], and the
//! fixed held-out evaluation that `scripts/train_drafter_gpu.py` computes identically — so a
//! checkpoint trained on an accelerator is checked here, number for number, before it is trusted.
//!
//! Each example is a context of clean corpus tokens followed by a block whose positions are masked
//! (fully, half of the time: what a one-step draft sees; otherwise at a random ratio: the
//! masked-diffusion objective that multi-step denoising needs). The loss covers the masked
//! positions, weighted down along the block because acceptance stops at the first miss.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use duet_drafter::candle_core::{D, DType, Device, Tensor};
use duet_drafter::candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use duet_drafter::{DiffusionModel, DrafterConfig, ForwardMode, TrainBatch, Vocab, seeded_varmap};
use serde::Serialize;

use super::standalone::{self, Streams};
use super::train::{Progress, Rng, STATE_FILE, TrainState, load_weights, save, weighted_cross_entropy};

/// Windows of the fixed held-out evaluation.
pub const EVAL_WINDOWS: usize = 64;
/// Context tokens in front of each evaluated block.
pub const EVAL_CONTEXT: usize = 128;
/// Block positions evaluated (all masked: a one-step draft).
pub const EVAL_BLOCK: usize = 16;

/// How to train the standalone drafter.
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    /// Token-stream folder.
    pub data_dir: PathBuf,
    /// Checkpoint folder (written, and resumed from when it holds a checkpoint).
    pub out_dir: PathBuf,
    /// Block positions per example.
    pub block: usize,
    /// Longest context per example.
    pub context: usize,
    /// Examples per optimiser step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Stop after this many minutes of this run.
    pub minutes: f64,
    /// Stop once the run reaches this step count.
    pub max_steps: usize,
    /// Decoder layers of a new model.
    pub layers: usize,
    /// Width of a new model.
    pub hidden: usize,
    /// Evaluate and save every this many steps.
    pub eval_every: usize,
    /// Seed of initialisation and example sampling.
    pub seed: u64,
    /// Share of examples taken from the stream's Python files (0: uniform over the stream).
    pub python_share: f64,
}

/// Example starts drawn uniformly over the tokens of some files of the stream.
struct Focus {
    files: Vec<Range<usize>>,
    /// Tokens in the files before each one.
    before: Vec<usize>,
    tokens: usize,
}

impl Focus {
    fn new(files: Vec<Range<usize>>) -> Option<Self> {
        let mut before = Vec::with_capacity(files.len());
        let mut tokens = 0;
        for f in &files {
            before.push(tokens);
            tokens += f.len();
        }
        (tokens > 0).then_some(Self { files, before, tokens })
    }

    /// A start inside the files, at most `last`.
    fn start(&self, rng: &mut Rng, last: usize) -> usize {
        let r = rng.below(self.tokens);
        let i = self.before.partition_point(|&b| b <= r) - 1;
        (self.files[i].start + r - self.before[i]).min(last)
    }
}

/// The fixed held-out evaluation: one fully masked block after a clean context, at evenly spaced
/// places of the held-out stream.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Evaluation {
    /// Mean cross-entropy over block positions whose target is in the vocabulary.
    pub loss: f64,
    /// Arg-max accuracy at the first block position.
    pub acc1: f64,
    /// Mean length of the arg-max prefix that matches the text (a one-step draft's accepted
    /// length against the corpus, not the verifier).
    pub prefix: f64,
}

/// Runs the fixed evaluation of `model` on a held-out stream.
pub fn evaluate(model: &DiffusionModel, held_out: &[u16]) -> anyhow::Result<Evaluation> {
    let span = EVAL_CONTEXT + EVAL_BLOCK;
    anyhow::ensure!(held_out.len() > span * 2, "the held-out stream is too short ({} tokens)", held_out.len());
    let stride = (held_out.len() - span) / EVAL_WINDOWS;
    let mask = model.vocab().mask_id();
    let unk = model.vocab().unk_id();
    let device = model.device().clone();
    let (mut loss_sum, mut counted, mut hits1, mut prefix_sum) = (0.0f64, 0usize, 0usize, 0usize);
    for w in 0..EVAL_WINDOWS {
        let start = w * stride;
        let mut tokens: Vec<u32> = held_out[start..start + EVAL_CONTEXT].iter().map(|&t| u32::from(t)).collect();
        tokens.extend(std::iter::repeat_n(mask, EVAL_BLOCK));
        let targets: Vec<u32> = held_out[start + EVAL_CONTEXT..start + span].iter().map(|&t| u32::from(t)).collect();
        let batch = TrainBatch { tokens: Tensor::from_vec(tokens, (1, span), &device)?, context_len: EVAL_CONTEXT, features: None };
        let logits = model.forward_train(&batch, ForwardMode::Inference)?.squeeze(0)?; // (block, vocab)
        let log_p = duet_drafter::candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
        let guess = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        for (j, &t) in targets.iter().enumerate() {
            if Some(t) != unk {
                loss_sum -= f64::from(log_p[j][t as usize]);
                counted += 1;
            }
        }
        hits1 += usize::from(guess[0] == targets[0]);
        prefix_sum += guess.iter().zip(&targets).take_while(|(g, t)| g == t).count();
    }
    Ok(Evaluation {
        loss: loss_sum / counted.max(1) as f64,
        acc1: hits1 as f64 / EVAL_WINDOWS as f64,
        prefix: prefix_sum as f64 / EVAL_WINDOWS as f64,
    })
}

/// Builds a new standalone config and vocabulary for the stream's vocabulary.
fn new_model_config(streams: &Streams, opts: &StandaloneOptions) -> anyhow::Result<(DrafterConfig, Vocab)> {
    let n = streams.meta.draft_to_verifier.len() - 2;
    let mut config = DrafterConfig::proposed_standalone(n);
    config.num_hidden_layers = opts.layers;
    if opts.hidden != config.hidden_size {
        config.hidden_size = opts.hidden;
        config.intermediate_size = opts.hidden * 8 / 3 / 64 * 64;
        config.num_attention_heads = opts.hidden / 64;
        config.num_key_value_heads = 2;
    }
    anyhow::ensure!(config.mask_token_id == streams.meta.mask_id, "the stream's [MASK] id disagrees with the drafter layout");
    let vocab = Vocab::reduced(&config, streams.meta.draft_to_verifier.clone())?;
    Ok((config, vocab))
}

/// Trains (or continues training) the standalone drafter on CPU.
pub fn train(opts: &StandaloneOptions) -> anyhow::Result<(TrainState, Evaluation)> {
    let device = Device::Cpu;
    let streams = standalone::load(&opts.data_dir)?;
    let resume = opts.out_dir.join(duet_drafter::CONFIG_FILE).is_file();
    let (config, vocab) = if resume {
        let m = DiffusionModel::load(&opts.out_dir).context("loading the checkpoint to resume")?;
        anyhow::ensure!(m.config().target.is_none(), "{} holds a conditioned drafter; the standalone recipe needs its own --out", opts.out_dir.display());
        anyhow::ensure!(m.vocab().draft_to_verifier() == streams.meta.draft_to_verifier.as_slice(), "the checkpoint's vocabulary differs from the token streams'");
        (m.config().clone(), m.vocab().clone())
    } else {
        new_model_config(&streams, opts)?
    };
    let varmap: VarMap = seeded_varmap(&config, opts.seed, &device)?;
    if resume {
        load_weights(&varmap, &opts.out_dir.join(duet_drafter::WEIGHTS_FILE)).context("loading weights to resume")?;
    }
    let model = DiffusionModel::new(&config, vocab, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let mut state: TrainState = std::fs::read(opts.out_dir.join(STATE_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    eprintln!(
        "[train] {} standalone drafter: {} layers × {} wide, vocabulary {}, {} training tokens, from step {}",
        if resume { "resumed" } else { "new" },
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
        streams.train.len(),
        state.step
    );
    let params = ParamsAdamW { lr: opts.lr, weight_decay: 0.01, ..ParamsAdamW::default() };
    let mut opt = AdamW::new(varmap.all_vars(), params)?;
    let mut rng = Rng::new(opts.seed ^ (state.step as u64).wrapping_mul(0x9e37_79b9));
    let started = Instant::now();
    let (start_step, earlier_s) = (state.step, state.train_s);
    let mut progress = Progress::new(started, start_step, opts.minutes);
    anyhow::ensure!((0.0..=1.0).contains(&opts.python_share), "`--python-share` must be between 0 and 1, got {}", opts.python_share);
    let focus = if opts.python_share > 0.0 {
        let files = standalone::python_files(&streams.train, &streams.meta.draft_to_verifier);
        let focus = Focus::new(files).context("`--python-share`: the stream holds no Python files")?;
        eprintln!(
            "[train] {} Python files, {} tokens ({:.1}% of the stream); {:.0}% of the examples start in them",
            focus.files.len(),
            focus.tokens,
            100.0 * focus.tokens as f64 / streams.train.len() as f64,
            100.0 * opts.python_share
        );
        Some(focus)
    } else {
        None
    };
    let mut last = evaluate(&model, &streams.held_out)?;
    while state.step < opts.max_steps && started.elapsed().as_secs_f64() < opts.minutes * 60.0 {
        opt.set_learning_rate(opts.lr * ((state.step + 1) as f64 / 200.0).min(1.0));
        let (batch, targets, weights, positions) = sample(&streams, focus.as_ref(), &model, opts, &mut rng, &device)?;
        let logits = model.forward_train(&batch, ForwardMode::Training)?;
        let loss = weighted_cross_entropy(&logits, &targets, &weights)?;
        opt.backward_step(&loss)?;
        state.step += 1;
        state.positions += positions as u64;
        progress.record(state.step, loss.to_scalar::<f32>()?, positions);
        if state.step.is_multiple_of(opts.eval_every) {
            last = checkpoint(&model, &streams, &opts.out_dir, &mut state, earlier_s + started.elapsed().as_secs_f64())?;
        }
    }
    eprintln!();
    last = if state.step > start_step { checkpoint(&model, &streams, &opts.out_dir, &mut state, earlier_s + started.elapsed().as_secs_f64())? } else { last };
    Ok((state, last))
}

fn checkpoint(model: &DiffusionModel, streams: &Streams, dir: &Path, state: &mut TrainState, train_s: f64) -> anyhow::Result<Evaluation> {
    let eval = evaluate(model, &streams.held_out)?;
    eprintln!("\n[train] step {}: held-out loss {:.3}, first-position accuracy {:.3}, matching prefix {:.2}", state.step, eval.loss, eval.acc1, eval.prefix);
    state.held_out_loss = Some(eval.loss);
    state.held_out_acc1 = Some(eval.acc1);
    state.train_s = train_s;
    save(model, dir, state)?;
    Ok(eval)
}

/// One batch: (tokens, targets, weights, positions with loss).
fn sample(
    streams: &Streams,
    focus: Option<&Focus>,
    model: &DiffusionModel,
    opts: &StandaloneOptions,
    rng: &mut Rng,
    device: &Device,
) -> anyhow::Result<(TrainBatch, Tensor, Tensor, usize)> {
    let (b, block) = (opts.batch, opts.block);
    let context = 8 + rng.below(opts.context.saturating_sub(8).max(1));
    let len = context + block;
    let mask = model.vocab().mask_id();
    let unk = model.vocab().unk_id();
    let (mut tokens, mut targets, mut weights, mut positions) = (Vec::with_capacity(b * len), Vec::with_capacity(b * block), Vec::with_capacity(b * block), 0);
    for _ in 0..b {
        let last = streams.train.len() - len - 1;
        let start = match focus {
            Some(f) if (rng.below(1_000_000) as f64) < opts.python_share * 1e6 => f.start(rng, last),
            _ => rng.below(streams.train.len() - len),
        };
        let window = &streams.train[start..start + len];
        tokens.extend(window[..context].iter().map(|&t| u32::from(t)));
        let ratio = if rng.below(2) == 0 { 1.0 } else { (rng.below(1000) as f32 + 1.0) / 1000.0 };
        let mut any = false;
        for (j, &t) in window[context..].iter().enumerate() {
            let t = u32::from(t);
            let masked = (j + 1 == block && !any) || (rng.below(1_000_000) as f32) < ratio * 1_000_000.0;
            any |= masked;
            tokens.push(if masked { mask } else { t });
            targets.push(t);
            let useful = masked && Some(t) != unk;
            weights.push(if useful { 0.9f32.powi(j as i32) } else { 0.0 });
            positions += usize::from(useful);
        }
    }
    Ok((
        TrainBatch { tokens: Tensor::from_vec(tokens, (b, len), device)?, context_len: context, features: None },
        Tensor::from_vec(targets, (b, block), device)?,
        Tensor::from_vec(weights, (b, block), device)?,
        positions,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::standalone::StreamMeta;

    /// A stream where each token follows from the one before (t → t + 3 mod 50): a tiny drafter
    /// learns it in a few dozen steps.
    fn synthetic(dir: &Path) {
        std::fs::create_dir_all(dir).expect("dir");
        let n = 50u32;
        let stream = |len: usize, start: u16| -> Vec<u8> {
            (0..len).map(|i| ((start as usize + 3 * i) % n as usize) as u16).flat_map(|t| t.to_le_bytes()).collect()
        };
        std::fs::write(dir.join("train.u16"), stream(20_000, 1)).expect("train");
        std::fs::write(dir.join("held_out.u16"), stream(2_000, 7)).expect("held out");
        let mut draft_to_verifier: Vec<u32> = (100..100 + n).collect();
        draft_to_verifier.extend([duet_drafter::NO_TOKEN, duet_drafter::NO_TOKEN]);
        let meta = StreamMeta {
            format: 1,
            kind: "standalone".into(),
            draft_to_verifier,
            mask_id: n,
            unk_id: n + 1,
            train_tokens: 20_000,
            held_out_tokens: 2_000,
            unk_share: 0.0,
            train_files: 1,
            held_out_files: 1,
        };
        std::fs::write(dir.join("meta.json"), serde_json::to_vec(&meta).expect("json")).expect("meta");
    }

    #[test]
    fn standalone_training_learns_the_stream_and_resumes() {
        let root = std::env::temp_dir().join(format!("duet-standalone-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        synthetic(&root.join("data"));
        let mut opts = StandaloneOptions {
            data_dir: root.join("data"),
            out_dir: root.join("ckpt"),
            block: 4,
            // As long as the evaluation's context, so the held-out figure measures what was trained.
            context: 136,
            batch: 8,
            lr: 5e-3,
            minutes: 5.0,
            max_steps: 60,
            layers: 1,
            hidden: 128,
            eval_every: 1000,
            seed: 0,
            python_share: 0.0,
        };
        let (first, early) = train(&opts).expect("train");
        assert_eq!(first.step, 60);
        opts.max_steps = 240;
        let (second, late) = train(&opts).expect("resume");
        assert_eq!(second.step, 240);
        assert!(late.loss < early.loss, "held-out loss should fall: {} -> {}", early.loss, late.loss);
        // The checkpoint on disk evaluates to what training reported.
        let model = DiffusionModel::load(&opts.out_dir).expect("checkpoint loads");
        let streams = standalone::load(&opts.data_dir).expect("streams");
        let again = evaluate(&model, &streams.held_out).expect("evaluate");
        assert!((again.loss - late.loss).abs() < 1e-3, "{} vs {}", again.loss, late.loss);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn focused_examples_start_inside_the_focus_files_and_never_past_the_last_start() {
        let focus = Focus::new(vec![10..20, 50..55]).expect("tokens");
        let mut rng = Rng::new(7);
        let mut seen = [false; 2];
        for _ in 0..500 {
            let s = focus.start(&mut rng, 1000);
            assert!((10..20).contains(&s) || (50..55).contains(&s), "{s}");
            seen[usize::from(s >= 50)] = true;
        }
        assert_eq!(seen, [true, true], "both files are drawn");
        assert_eq!(focus.start(&mut rng, 3), 3);
        assert!(Focus::new(Vec::new()).is_none());
    }

    #[test]
    fn a_truncated_stream_is_refused_with_its_name() {
        let root = std::env::temp_dir().join(format!("duet-standalone-trunc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        synthetic(&root);
        std::fs::write(root.join("held_out.u16"), [0u8; 10]).expect("truncate");
        let err = standalone::load(&root).expect_err("truncated").to_string();
        assert!(err.contains("held_out.u16"), "{err}");
        let _ = std::fs::remove_dir_all(root);
    }
}
