//! `duet models costs`: the verifier's cost curve at a prompt's context, and a check that verifying a
//! block gives bit-for-bit the choices of single steps (without which greedy hybrid output would not
//! equal verifier-only output). The tool for picking weight formats and thread counts.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use duet_verifier::TokenId;
use serde::Serialize;

use super::options::ModelArgs;
use crate::costs::{REPEATS, measured_sizes};
use crate::engine::CostCurve;
use crate::engine::MAX_BLOCK_SIZE;

/// Flags of `duet models costs`.
#[derive(Debug, Clone, Args)]
pub struct CostsArgs {
    /// Longest block measured (1 to 256).
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Block sizes to time instead of the default spread up to --block-size (e.g. `1,2,4,8,16,32`;
    /// each 1 to 256; 0, the plain step, is always timed).
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    /// Timed repetitions per block size (the best counts).
    #[arg(long, default_value_t = REPEATS)]
    pub repeats: usize,
    /// Prompt whose context the blocks are verified on [default: scripts/demo-prompt.txt if present,
    /// else a short code prompt].
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Also time the evaluation of a prompt of this many tokens in a fresh session (the prompt's
    /// tokens repeated; 0: skip), as llama-bench's `pp` does.
    #[arg(long, default_value_t = 512)]
    pub prompt_eval: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    model_bytes: u64,
    threads: u32,
    kv_cache: String,
    prompt_tokens: usize,
    curve: CostCurve,
    /// The timed block sizes (drafts per block) and their best times, in seconds.
    measured: Vec<(usize, f64)>,
    batch_invariant: bool,
    checked_block: usize,
    /// Tokens of the timed prompt evaluation (0: not measured).
    prompt_eval_tokens: usize,
    /// Its best time, in seconds.
    prompt_eval_s: f64,
    /// The kernels that ran the quantised products (`avx512`, `avx2`, or `llama.cpp`).
    kernels: String,
}

/// Tokens verified as one block in the invariance check.
const CHECK_BLOCK: usize = 16;

pub fn run(args: CostsArgs) -> anyhow::Result<()> {
    if !(1..=MAX_BLOCK_SIZE).contains(&args.block_size) {
        anyhow::bail!("--block-size must be between 1 and {}, got {}", MAX_BLOCK_SIZE, args.block_size);
    }
    let text = match &args.prompt_file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading --prompt-file {}", f.display()))?,
        None => std::fs::read_to_string("scripts/demo-prompt.txt")
            .unwrap_or_else(|_| "def quicksort(arr):\n    \"\"\"Sort a list.\"\"\"\n".into()),
    };
    let verifier = args.models.load_verifier(1, false)?;
    let info = verifier.info();
    let prompt = verifier.tokenize(&text, true).context("tokenizing the prompt")?;
    let threads = args.models.threads.unwrap_or_else(duet_verifier::config::default_threads);

    let mut session = verifier.open_session()?;
    session.prefill(&prompt).context("evaluating the prompt")?;
    if let Some(bad) = args.sizes.iter().find(|k| !(1..=MAX_BLOCK_SIZE).contains(*k)) {
        anyhow::bail!("--sizes must each be between 1 and {MAX_BLOCK_SIZE}, got {bad}");
    }
    let sizes = if args.sizes.is_empty() {
        measured_sizes(args.block_size)
    } else {
        let mut s: Vec<usize> = std::iter::once(0).chain(args.sizes.iter().copied()).collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    let times = session.measure_verify_times(&sizes, args.repeats.max(1)).context("measuring")?;
    let curve = CostCurve::from_times(&sizes, &times).map_err(anyhow::Error::msg)?;

    // Greedy choices one step at a time, then the same tokens verified as one block.
    let first = session.prefill(&prompt)?;
    let mut single = vec![first.next];
    for _ in 0..CHECK_BLOCK {
        single.push(session.step()?.next);
    }
    session.prefill(&prompt)?;
    let draft: Vec<TokenId> = single[1..].iter().map(|c| c.token).collect();
    let block = session.verify(&draft)?;
    let batch_invariant = block.accepted == draft.len()
        && block.choices.iter().zip(&single[1..]).all(|(a, b)| a.token == b.token && a.margin.to_bits() == b.margin.to_bits());

    drop(session);
    let (prompt_eval_tokens, prompt_eval_s) = if args.prompt_eval > 0 {
        let long: Vec<TokenId> = prompt.iter().copied().cycle().take(args.prompt_eval).collect();
        let mut best = f64::INFINITY;
        for _ in 0..args.repeats.max(1) {
            let mut fresh = verifier.open_session()?;
            let started = std::time::Instant::now();
            fresh.prefill(&long).context("timing the prompt evaluation")?;
            best = best.min(started.elapsed().as_secs_f64());
        }
        (long.len(), best)
    } else {
        (0, 0.0)
    };

    let report = Report {
        model: info.path.display().to_string(),
        model_bytes: std::fs::metadata(&info.path).map_or(0, |m| m.len()),
        threads,
        kv_cache: args.models.kv_cache.to_string(),
        prompt_tokens: prompt.len(),
        curve,
        measured: sizes.iter().copied().zip(times.iter().copied()).collect(),
        batch_invariant,
        checked_block: CHECK_BLOCK,
        prompt_eval_tokens,
        prompt_eval_s,
        kernels: duet_verifier::kernels::selected().map_or("llama.cpp", |p| p.name()).to_string(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "model {} ({} bytes), {} threads, {} KV cache, context {} tokens",
            report.model,
            report.model_bytes,
            threads,
            report.kv_cache,
            prompt.len()
        );
        println!("kernels: {}", report.kernels);
        println!("one step: {:.1} ms", report.curve.step_s * 1e3);
        if prompt_eval_tokens > 0 {
            println!(
                "prompt evaluation: {prompt_eval_tokens} tokens in {:.2} s ({:.1} tok/s)",
                prompt_eval_s,
                prompt_eval_tokens as f64 / prompt_eval_s
            );
        }
        println!("| k | {} |", sizes.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(" | "));
        println!("|---|{}", "---|".repeat(sizes.len()));
        println!("| c(k) | {} |", sizes.iter().map(|&k| format!("{:.2}", report.curve.cost(k))).collect::<Vec<_>>().join(" | "));
        println!(
            "batch-invariant (a block of {CHECK_BLOCK} equals single steps bit for bit): {}",
            if batch_invariant { "yes" } else { "NO: greedy hybrid output would differ from ar" }
        );
    }
    Ok(())
}
