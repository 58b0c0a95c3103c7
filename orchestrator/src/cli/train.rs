//! `duet train-drafter`: builds the training data with the verifier, then trains the diffusion
//! drafter on it. Every stage resumes where an earlier run stopped.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::options::{ModelArgs, default_models_dir};
use crate::training::build::{self, BuildOptions};
use crate::training::standalone;
use crate::training::standalone_train::{self, StandaloneOptions};
use crate::training::train::{self as trainer, TrainOptions};

/// Which part of the recipe to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// Only build (or complete) the dataset.
    Data,
    /// Only train (the dataset must exist).
    Train,
    /// Build the dataset, then train.
    All,
}

/// Flags of `duet train-drafter`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Which stages to run.
    #[arg(long, value_enum, default_value_t = Stage::All)]
    pub stage: Stage,
    /// Dataset folder [default: <models dir>/drafter-data/<verifier file stem>].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Tokens per training window.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Windows in the training split.
    #[arg(long, default_value_t = 1200)]
    pub train_windows: usize,
    /// Windows in the held-out split.
    #[arg(long, default_value_t = 48)]
    pub held_out_windows: usize,
    /// At most this many windows from one source file.
    #[arg(long, default_value_t = 2)]
    pub windows_per_file: usize,
    /// Seed of the corpus order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint folder to write (and resume from) [default: drafter/checkpoints/default, the
    /// shipped drafter, with --standalone; drafter/checkpoints/conditioned otherwise].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Minutes of training in this run (training resumes from the checkpoint next time).
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Stop at this optimiser step count (over all runs).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_steps: usize,
    /// Draft positions per training example.
    #[arg(long, default_value_t = 16)]
    pub block: usize,
    /// Examples per optimiser step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Drafter vocabulary: this many most frequent tokens of the data.
    #[arg(long, default_value_t = 8192)]
    pub reduced_vocab: usize,
    /// Decoder layers of a new drafter.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Width of a new drafter (a multiple of 64).
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// Held-out evaluation and checkpoint every this many steps.
    #[arg(long, default_value_t = 200)]
    pub eval_every: usize,
    /// Train the standalone drafter (no verifier features) on the whole corpus as token streams,
    /// instead of the conditioned drafter on verifier-scored windows.
    #[arg(long)]
    pub standalone: bool,
    /// Standalone recipe: longest context in front of a training block.
    #[arg(long, default_value_t = 256)]
    pub context: usize,
    /// Standalone recipe: share of training examples taken from the Python files of the stream
    /// (0 to 1; 0 samples the whole stream evenly, where Python is about a fifth). HumanEval is Python.
    #[arg(long, default_value_t = 0.0)]
    pub python_share: f64,
    #[command(flatten)]
    pub models: ModelArgs,
}

impl TrainArgs {
    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            let stem = self.models.verifier_path().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            default_models_dir().join("drafter-data").join(stem)
        })
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!((16..=512).contains(&args.seq_len), "`--seq-len` must be between 16 and 512, got {}", args.seq_len);
    if std::env::var_os("GGML_CPU_TILED_MM").is_none() {
        // Training data needs no batch invariance, and the tiled kernels evaluate the windows about
        // twice as fast (measured: 27 → 64 tok/s prompt evaluation with the 1.5B on 2 cores).
        // SAFETY: no other thread exists yet; the verifier thread starts below.
        unsafe { std::env::set_var("GGML_CPU_TILED_MM", "1") };
    }
    if args.standalone {
        return run_standalone(&args);
    }
    let verifier = args.models.load_verifier(1, true)?;
    eprintln!("[data] verifier {} loaded in {:.1}s", verifier.info().description, verifier.info().load_s);
    let opts = BuildOptions {
        dir: args.data_dir(),
        seq_len: args.seq_len,
        train_rows: args.train_windows,
        held_out_rows: args.held_out_windows,
        windows_per_file: args.windows_per_file.max(1),
        seed: args.seed,
    };
    if args.stage != Stage::Train {
        build::build(&verifier, &opts)?;
    }
    if args.stage == Stage::Data {
        return Ok(());
    }
    anyhow::ensure!(args.hidden.is_multiple_of(64) && args.hidden >= 128, "`--hidden` must be a multiple of 64, at least 128, got {}", args.hidden);
    anyhow::ensure!((2..=64).contains(&args.block), "`--block` must be between 2 and 64, got {}", args.block);
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(super::options::CONDITIONED_DRAFTER));
    let state = trainer::train(&TrainOptions {
        data_dir: opts.dir,
        out_dir: out.clone(),
        block: args.block,
        batch: args.batch.max(1),
        lr: args.lr,
        minutes: args.minutes,
        max_steps: args.max_steps,
        reduced_vocab: args.reduced_vocab,
        layers: args.layers,
        hidden: args.hidden,
        eval_every: args.eval_every.max(1),
        seed: args.seed,
        verifier_layers: verifier.info().n_layer as usize,
    })?;
    eprintln!(
        "[train] checkpoint {} at step {} ({:.0} min of training in all), held-out loss {:?}, first-position accuracy {:?}",
        out.display(),
        state.step,
        state.train_s / 60.0,
        state.held_out_loss,
        state.held_out_acc1
    );
    Ok(())
}

/// The standalone recipe: tokenise the corpus into token streams, then train on CPU (or hand the
/// streams to `scripts/train_drafter_gpu.py`, which writes the same checkpoint format).
fn run_standalone(args: &TrainArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.clone().unwrap_or_else(|| standalone::default_dir(&default_models_dir()));
    if args.stage != Stage::Train {
        let verifier = args.models.load_verifier(1, false)?;
        standalone::export(&verifier, &dir, args.reduced_vocab)?;
    }
    if args.stage == Stage::Data {
        return Ok(());
    }
    anyhow::ensure!(args.hidden.is_multiple_of(64) && args.hidden >= 128, "`--hidden` must be a multiple of 64, at least 128, got {}", args.hidden);
    anyhow::ensure!((2..=64).contains(&args.block), "`--block` must be between 2 and 64, got {}", args.block);
    anyhow::ensure!((16..=2048).contains(&args.context), "`--context` must be between 16 and 2048, got {}", args.context);
    anyhow::ensure!((0.0..=1.0).contains(&args.python_share), "`--python-share` must be between 0 and 1, got {}", args.python_share);
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(super::options::SHIPPED_DRAFTER));
    let (state, eval) = standalone_train::train(&StandaloneOptions {
        data_dir: dir,
        out_dir: out.clone(),
        block: args.block,
        context: args.context,
        batch: args.batch.max(1),
        lr: args.lr,
        minutes: args.minutes,
        max_steps: args.max_steps,
        layers: args.layers,
        hidden: args.hidden,
        eval_every: args.eval_every.max(1),
        seed: args.seed,
        python_share: args.python_share,
    })?;
    eprintln!(
        "[train] checkpoint {} at step {} ({:.0} min of training in all): held-out loss {:.3}, first-position accuracy {:.3}, matching prefix {:.2}",
        out.display(),
        state.step,
        state.train_s / 60.0,
        eval.loss,
        eval.acc1,
        eval.prefix
    );
    Ok(())
}
