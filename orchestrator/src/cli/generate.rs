//! `duet generate`: one prompt, one completion, printed as it is accepted or as one JSON object.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use duet_verifier::{ChatMessage, SamplingParams, TokenId};
use serde::Serialize;

use super::flags::flag_error;
use super::options::{DiffusionArgs, ModelArgs};
use crate::drafters::{ArModelDrafter, DiffusionDrafter, DrafterHealth, DrafterKind, FallbackDrafter, NgramDrafter};
use crate::engine::{self, DraftPolicy, Drafter, GenerateParams, Mode, Stats, StopReason};
use crate::text::Utf8Stream;

/// Flags of `duet generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// The prompt text.
    #[arg(long, required_unless_present = "prompt_file", conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from this file instead.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Send the prompt as a user message through the model's chat template (from the GGUF metadata).
    #[arg(long)]
    pub chat: bool,
    /// `ar`: verifier only; `hybrid`: speculative decoding with the drafter; `diffusion`: the
    /// diffusion drafter alone, unverified (fast, lossy).
    #[arg(long, value_enum, default_value_t = Mode::Hybrid)]
    pub mode: Mode,
    /// Drafter for hybrid mode.
    #[arg(long, value_enum, default_value_t = DrafterKind::Ngram)]
    pub drafter: DrafterKind,
    /// Most tokens to generate (1 to 65536).
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Most draft tokens verified per round (1 to 256); the cost-aware policy sends fewer when
    /// that pays better.
    #[arg(long, default_value_t = 8)]
    pub block_size: usize,
    /// How many drafts a hybrid round sends: `cost-aware` picks the length with the most expected
    /// tokens per unit of time from the verifier's measured cost curve and the drafter's confidence
    /// (none when a plain step pays better); `fixed` sends everything the drafter proposes.
    #[arg(long, value_enum, default_value_t = DraftLength::CostAware)]
    pub draft_length: DraftLength,
    /// Where the measured verify cost curves are cached
    /// [default: $XDG_CACHE_HOME/duet/verify-costs.json or ~/.cache/duet/verify-costs.json].
    #[arg(long, env = "DUET_COST_CACHE")]
    pub cost_cache: Option<PathBuf>,
    /// Measure the verify cost curve again even if the cache has it (and update the cache): after
    /// a measurement taken while the machine was busy.
    #[arg(long)]
    pub measure_costs: bool,
    /// Sampling temperature, 0 to 100; 0 is greedy decoding (token-identical in every mode).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens (0: all); needs --temperature above 0.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample only from the smallest set of tokens holding this much probability, in (0, 1];
    /// needs --temperature above 0.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampling draws: the same seed and flags give the same output.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object (text, token ids, stats) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
}

/// How a hybrid round picks its draft length (`--draft-length`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DraftLength {
    /// From the measured verify cost curve and the drafter's confidence.
    CostAware,
    /// Everything the drafter proposes, up to --block-size.
    Fixed,
}

/// The sampling settings of the flags, checked; the error names the flag and its limit.
fn sampling(args: &GenerateArgs) -> anyhow::Result<SamplingParams> {
    let s = SamplingParams { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed };
    s.validate().map_err(|e| flag_error(e, &[("temperature", "--temperature"), ("top_p", "--top-p")]))?;
    if s.is_greedy() && (s.top_k != 0 || s.top_p != 1.0) {
        bail!("--top-k and --top-p only apply when sampling: give --temperature above 0 (it is 0, greedy)");
    }
    if !s.is_greedy() && args.mode == Mode::Diffusion {
        bail!("--temperature applies to the verifier, which diffusion-only mode does not run; use --draft-temperature");
    }
    Ok(s)
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Output<'a> {
    text: String,
    token_ids: &'a [TokenId],
    stop_reason: StopReason,
    mode: Mode,
    drafter: Option<DrafterKind>,
    verifier_model: String,
    stats: &'a Stats,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let prompt_text = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading --prompt-file {}", f.display()))?
        }
        (None, None) => bail!("give a prompt with --prompt or --prompt-file"),
    };
    if prompt_text.trim().is_empty() {
        bail!("the prompt is empty (--prompt / --prompt-file must contain text)");
    }
    let sampling = sampling(&args)?;
    let mut params = GenerateParams {
        max_tokens: args.max_tokens,
        mode: args.mode,
        block_size: args.block_size,
        sampling,
        draft_policy: DraftPolicy::Fixed,
        policy_memory: None,
    };
    params.validate().map_err(|e| flag_error(e, &[("max_tokens", "--max-tokens"), ("block_size", "--block-size")]))?;
    let cost_aware = args.mode == Mode::Hybrid && args.draft_length == DraftLength::CostAware;

    let uses_diffusion = args.mode == Mode::Diffusion || (args.mode == Mode::Hybrid && args.drafter == DrafterKind::Diffusion);
    // Every flag is checked before a model loads.
    let sampler = args.diffusion.sampler()?;
    let diffusion_model = if uses_diffusion { Some(args.diffusion.load_model()?) } else { None };
    let conditioned = diffusion_model.as_ref().is_some_and(|m| m.feature_dim().is_some());
    if args.mode == Mode::Diffusion && conditioned {
        bail!(
            "diffusion-only mode needs a standalone drafter, but {} is conditioned on verifier features \
             (--drafter-checkpoint)",
            args.diffusion.checkpoint_path().display()
        );
    }

    // Diffusion-only mode still uses the verifier's tokenizer and chat template, never its decoder.
    // A cost-aware run may need a second session to measure the cost curve on.
    let verifier = args.models.load_verifier(if cost_aware { 2 } else { 1 }, conditioned)?;
    let info = verifier.info();
    eprintln!("duet: verifier {} ({}) loaded in {:.1}s", info.description, info.path.display(), info.load_s);
    if let Some(m) = &diffusion_model {
        m.vocab().check_verifier(info.n_vocab).with_context(|| {
            format!("pairing drafter {} with verifier {}", args.diffusion.checkpoint_path().display(), info.path.display())
        })?;
    }

    let mut drafter: Option<Box<dyn Drafter>> = match (args.mode, args.drafter, diffusion_model) {
        (Mode::Ar, _, _) => None,
        (Mode::Diffusion, _, Some(model)) | (Mode::Hybrid, DrafterKind::Diffusion, Some(model)) => {
            Some(Box::new(DiffusionDrafter::new(model, sampler, args.diffusion.draft_hints)?))
        }
        (Mode::Hybrid, DrafterKind::Ngram, _) => Some(Box::new(NgramDrafter::default())),
        (Mode::Hybrid, DrafterKind::ArModel, _) => {
            let model = args.models.load_drafter_model(1)?;
            eprintln!("duet: drafting model {} loaded in {:.1}s", model.info().description, model.info().load_s);
            let drafter = ArModelDrafter::new(&model, info, 0.0).context("pairing the drafting model with the verifier")?;
            Some(Box::new(drafter.with_sampling(&sampling)))
        }
        (_, _, None) => bail!("the diffusion drafter did not load"),
    };
    // A hybrid drafter that fails costs speed, not the generation: plain verifier steps with a
    // back-off, one warning per outage.
    if args.mode == Mode::Hybrid {
        let label = crate::grpc::drafter_factory::kind_name(args.drafter);
        drafter = drafter.map(|d| Box::new(FallbackDrafter::new(d, DrafterHealth::new(label), label)) as Box<dyn Drafter>);
    }

    let prompt_text = if args.chat {
        verifier
            .chat_prompt(&[ChatMessage { role: "user".into(), content: prompt_text }])
            .context("applying the chat template")?
    } else {
        prompt_text
    };
    tracing::debug!(prompt = %prompt_text, "prompt text");
    let prompt = verifier.tokenize(&prompt_text, true).context("tokenizing the prompt")?;
    if cost_aware && prompt.len() + args.block_size < info.ctx_size {
        let threads = args.models.threads.unwrap_or_else(duet_verifier::config::default_threads);
        let cache = args.cost_cache.clone().or_else(crate::costs::default_cache_path);
        let (curve, measured) =
            crate::costs::cost_curve(&verifier, &prompt, args.block_size, threads, cache.as_deref(), args.measure_costs)?;
        if measured {
            eprintln!(
                "duet: measured verify costs (step {:.1} ms): c(k) = {}",
                curve.step_s * 1e3,
                curve.costs.iter().map(|c| format!("{c:.2}")).collect::<Vec<_>>().join(" ")
            );
        }
        params.draft_policy = DraftPolicy::CostAware(curve);
    }
    let mut session = verifier.open_session().context("opening a verifier session")?;

    let mut text = Utf8Stream::default();
    let stream = !args.json;
    let mut stdout = std::io::stdout().lock();
    let mut on_tokens = |toks: &[TokenId]| {
        if stream {
            let chunk = text.push(&info.detokenize(toks));
            // A closed stdout (e.g. `| head`) cancels the generation.
            return stdout.write_all(chunk.as_bytes()).and_then(|()| stdout.flush()).is_ok();
        }
        true
    };
    let is_eog = |t: TokenId| info.is_eog(t);
    let generation = match drafter.as_mut() {
        Some(d) if args.mode == Mode::Diffusion => {
            engine::generate_unverified(d.as_mut(), &prompt, &params, info.ctx_size, &is_eog, &mut on_tokens)
        }
        d => engine::generate(
            &mut session,
            d.map(|d| d.as_mut() as &mut dyn Drafter),
            &prompt,
            &params,
            &is_eog,
            &mut on_tokens,
        ),
    }
    .context("generating")?;

    if args.json {
        let out = Output {
            text: String::from_utf8_lossy(&info.detokenize(&generation.tokens)).into_owned(),
            token_ids: &generation.tokens,
            stop_reason: generation.stop,
            mode: args.mode,
            drafter: match args.mode {
                Mode::Ar => None,
                Mode::Hybrid => Some(args.drafter),
                Mode::Diffusion => Some(DrafterKind::Diffusion),
            },
            verifier_model: info.path.display().to_string(),
            stats: &generation.stats,
        };
        serde_json::to_writer(&mut stdout, &out).context("writing JSON")?;
        writeln!(stdout)?;
    } else {
        writeln!(stdout, "{}", text.finish())?;
        let s = &generation.stats;
        eprintln!(
            "duet: {} tokens in {:.2}s ({:.1} tok/s), {} rounds, mean accepted length {:.2}, {}, stop: {:?}",
            s.generated_tokens,
            s.wall_s,
            s.tokens_per_s,
            s.rounds,
            s.mean_accepted_length,
            draft_summary(s),
            generation.stop
        );
    }
    Ok(())
}

/// Drafts sent and offered per round, for the stats line.
fn draft_summary(s: &Stats) -> String {
    let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
    let ar_steps = s.draft_lengths.iter().filter(|&&k| k == 0).count();
    format!(
        "drafts per round {:.2} sent / {:.2} offered, {ar_steps} plain steps",
        mean(&s.draft_lengths),
        mean(&s.offered_lengths)
    )
}
