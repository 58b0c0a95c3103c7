//! `duet eval-drafter`: the diffusion drafter against the real verifier on held-out prompts. Reports,
//! per block size, the mean accepted length τ (tokens gained per verification round, the verifier's
//! own token included), the acceptance rate at each block position and the drafter's time per block.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use duet_verifier::TokenId;
use serde::Serialize;

use super::options::{DiffusionArgs, ModelArgs};
use crate::drafters::DiffusionDrafter;
use crate::engine::{self, GenerateParams, Mode};
use crate::suite;

/// Flags of `duet eval-drafter`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Prompt suite (JSONL) [default: benches/data/humaneval.jsonl, from scripts/fetch-data.sh].
    #[arg(long)]
    pub suite: Option<PathBuf>,
    /// Use the first N prompts of the suite.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Block sizes to evaluate.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16")]
    pub blocks: Vec<usize>,
    /// Tokens generated per prompt.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
}

/// Results for one block size.
#[derive(Debug, Serialize)]
struct BlockResult {
    block: usize,
    prompts: usize,
    rounds: usize,
    drafted: usize,
    accepted: usize,
    /// Mean accepted length: (accepted + rounds) / rounds.
    tau: f64,
    acceptance_by_position: Vec<f64>,
    drafter_ms_per_block: f64,
    verifier_ms_per_round: f64,
    tokens_per_s: f64,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let suite_path = args.suite.clone().unwrap_or_else(|| PathBuf::from("benches/data/humaneval.jsonl"));
    let prompts = suite::load(&suite_path).context("run scripts/fetch-data.sh for the default suite")?;
    let prompts = &prompts[..args.limit.min(prompts.len())];
    let model = args.diffusion.load_model()?;
    let conditioned = model.feature_dim().is_some();
    let verifier = args.models.load_verifier(1, conditioned)?;
    let info = verifier.info();
    model.vocab().check_verifier(info.n_vocab)?;
    let sampler = args.diffusion.sampler()?;
    eprintln!(
        "[eval] drafter {} ({} layers × {}), verifier {}, {} prompts of {}",
        args.diffusion.checkpoint_path().display(),
        model.config().num_hidden_layers,
        model.config().hidden_size,
        info.description,
        prompts.len(),
        suite_path.display()
    );
    let is_eog = |t: TokenId| info.is_eog(t);
    let mut results = Vec::new();
    for &block in &args.blocks {
        let mut stats = engine::Stats::default();
        let (mut wall, mut tokens, mut draft_rounds) = (0.0, 0usize, 0usize);
        for (i, p) in prompts.iter().enumerate() {
            eprint!("\r[eval] block {block}: prompt {}/{}   ", i + 1, prompts.len());
            let prompt = p.tokens(&verifier)?;
            let mut session = verifier.open_session()?;
            let mut drafter = DiffusionDrafter::new(model.clone(), sampler.clone(), args.diffusion.draft_hints)?;
            let params =
                GenerateParams { max_tokens: args.max_tokens, mode: Mode::Hybrid, block_size: block, ..GenerateParams::default() };
            let g = engine::generate(&mut session, Some(&mut drafter), &prompt, &params, &is_eog, &mut |_| true)
                .with_context(|| format!("prompt {}", p.id))?;
            let s = g.stats;
            stats.rounds += s.rounds;
            stats.drafted += s.drafted;
            stats.accepted += s.accepted;
            stats.drafter_s += s.drafter_s;
            stats.verifier_s += s.verifier_s - s.ttft_s;
            stats.draft_lengths.extend(&s.draft_lengths);
            stats.accepted_lengths.extend(&s.accepted_lengths);
            draft_rounds += s.draft_lengths.iter().filter(|&&d| d > 0).count();
            wall += s.wall_s - s.ttft_s;
            tokens += s.generated_tokens.saturating_sub(1);
        }
        eprintln!();
        results.push(BlockResult {
            block,
            prompts: prompts.len(),
            rounds: stats.rounds,
            drafted: stats.drafted,
            accepted: stats.accepted,
            tau: (stats.accepted + stats.rounds) as f64 / stats.rounds.max(1) as f64,
            acceptance_by_position: stats.acceptance_by_position(),
            drafter_ms_per_block: 1000.0 * stats.drafter_s / draft_rounds.max(1) as f64,
            verifier_ms_per_round: 1000.0 * stats.verifier_s / stats.rounds.max(1) as f64,
            tokens_per_s: tokens as f64 / wall.max(1e-9),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string(&results)?);
    } else {
        println!("| block | τ (mean accepted length) | accepted / drafted | drafter ms/block | verifier ms/round | tok/s | acceptance by position |");
        println!("|---|---|---|---|---|---|---|");
        for r in &results {
            let by_pos: Vec<String> = r.acceptance_by_position.iter().map(|a| format!("{a:.2}")).collect();
            println!(
                "| {} | {:.2} | {}/{} | {:.1} | {:.1} | {:.1} | {} |",
                r.block, r.tau, r.accepted, r.drafted, r.drafter_ms_per_block, r.verifier_ms_per_round, r.tokens_per_s, by_pos.join(" ")
            );
        }
    }
    Ok(())
}
