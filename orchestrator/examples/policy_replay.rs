//! Replays a `duet bench` run's verifier-only outputs through the real engine, draft-length policy
//! and drafter, with a verifier that accepts exactly what the recorded output says, and prices each
//! round by a cost curve. What this gives: the speedup the policy would reach on a machine with that
//! curve, per prompt, in seconds instead of a benchmark's hour, and for any curve — the run's own and
//! FACTS.md's (the Intel Xeon) without that machine. On the EPYC host of 2026-11-29 measured decoding
//! times matched such predictions to sd 0.006 (README, "Results"). It is a tool for working on the
//! policy, not a measurement: the outputs are re-tokenised from text, and timing noise is absent.
//!
//! ```sh
//! cargo run --release --example policy_replay -- bench-out/results.json            # n-gram drafter
//! cargo run --release --example policy_replay -- bench-out/results.json diffusion  # shipped checkpoint
//! VERBOSE=1 cargo run --release --example policy_replay -- bench-out/results.json  # every prompt
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use duet_orchestrator::drafters::NgramDrafter;
use duet_orchestrator::drafters::diffusion::{DiffusionDrafter, load_model};
use duet_orchestrator::engine::{self, CostCurve, DraftPolicy, Drafter, GenerateParams, Mode, PolicyMemory, StopReason};
use duet_orchestrator::service::Backend as _;
use duet_orchestrator::service::testing::ScriptedBackend;
use duet_verifier::{TokenId, Verifier, VerifierConfig};
use serde_json::Value;

/// Qwen2.5's `<|im_end|>`, which ends a chat answer.
const END: TokenId = 151_645;

/// One recorded verifier-only generation.
struct Case {
    suite: String,
    id: String,
    prompt: Vec<TokenId>,
    output: Vec<TokenId>,
}

fn cases(results: &Value, verifier: &Verifier) -> anyhow::Result<Vec<Case>> {
    let mut suites = BTreeMap::new();
    for s in results["config"]["suites"].as_array().context("no config.suites")? {
        let (name, path) = (s["name"].as_str().context("suite name")?, s["path"].as_str().context("suite path")?);
        suites.insert(name.to_owned(), duet_orchestrator::suite::load(Path::new(path))?);
    }
    let mut out = Vec::new();
    for s in results["samples"].as_array().context("no samples")? {
        if s["mode"] != "ar" || s["concurrency"] != 1 {
            continue;
        }
        let (suite, id) = (s["suite"].as_str().context("suite")?, s["prompt"].as_str().context("prompt")?);
        if out.iter().any(|c: &Case| c.suite == suite && c.id == id) {
            continue; // a repeat
        }
        let prompt = suites.get(suite).and_then(|p| p.iter().find(|p| p.id == id)).context("prompt not in its suite")?;
        let mut output = verifier.tokenize(s["text"].as_str().context("text")?, false)?;
        if s["stop"] == "eos" {
            output.push(END);
        }
        out.push(Case { suite: suite.to_owned(), id: id.to_owned(), prompt: prompt.tokens(verifier)?, output });
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else { bail!("usage: policy_replay RESULTS.json [ngram|diffusion]") };
    let drafter_kind = args.get(1).map_or("ngram", String::as_str);
    let results: Value = serde_json::from_str(&std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?)?;
    let model = results["config"]["verifier"].as_str().and_then(|v| v.split_once('(')).map(|(_, p)| p.trim_end_matches(')'));
    let verifier = Verifier::load(VerifierConfig::new(model.context("config.verifier names no model file")?))?;
    let cases = cases(&results, &verifier)?;

    let measured = results["cost_curve"].as_array().context("no cost_curve in the results")?;
    let sizes: Vec<usize> = measured.iter().filter_map(|p| p["k"].as_u64()).map(|k| k as usize).collect();
    let times: Vec<f64> = measured.iter().filter_map(|p| p["median_s"].as_f64()).collect();
    let run_curve = CostCurve::from_times(&sizes, &times).map_err(anyhow::Error::msg)?;
    // FACTS.md's curve (Intel Xeon, 2 threads) at this run's step time.
    let step = run_curve.step_s;
    let facts = CostCurve::from_times(&[0, 2, 4, 8], &[step, 1.6 * step, 2.6 * step, 4.4 * step]).map_err(anyhow::Error::msg)?;
    let diffusion = (drafter_kind == "diffusion").then(|| load_model(Path::new("drafter/checkpoints/default"))).transpose()?;

    for (name, curve) in [("this run's curve", run_curve), ("FACTS.md's curve", facts)] {
        println!("{name}: c(1) {:.2}, c(2) {:.2}, c(4) {:.2}, c(8) {:.2}", curve.cost(1), curve.cost(2), curve.cost(4), curve.cost(8));
        let memory = Arc::new(PolicyMemory::new());
        let mut by_suite: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for case in &cases {
            let backend = ScriptedBackend::replaying("recorded", case.output.clone(), END, usize::MAX / 2);
            let mut session = backend.open_session()?;
            let mut drafter: Box<dyn Drafter> = match &diffusion {
                Some(m) => Box::new(DiffusionDrafter::new(m.clone(), Default::default(), Default::default())?),
                None => Box::new(NgramDrafter::default()),
            };
            let params = GenerateParams {
                max_tokens: case.output.len().max(1),
                mode: Mode::Hybrid,
                draft_policy: DraftPolicy::CostAware(curve.clone()),
                policy_memory: Some(memory.clone()),
                ..GenerateParams::default()
            };
            let g = engine::generate(session.as_mut(), Some(drafter.as_mut()), &case.prompt, &params, &|t| t == END, &mut |_| true)?;
            let st = &g.stats;
            let steps: f64 = st.draft_lengths.iter().map(|&k| curve.cost(k)).sum::<f64>() + st.drafter_s / curve.step_s;
            // Plain decoding: one step per token after the prompt's, the end token included.
            let plain = (g.tokens.len() + usize::from(g.stop == StopReason::Eos)).saturating_sub(1) as f64;
            let speedup = if steps > 0.0 { plain / steps } else { 1.0 };
            if std::env::var_os("VERBOSE").is_some() {
                let blocks: Vec<String> = st
                    .draft_lengths
                    .iter()
                    .zip(&st.accepted_lengths)
                    .filter(|&(&k, _)| k > 0)
                    .map(|(k, a)| format!("{a}/{k}"))
                    .collect();
                println!("  {:10} {:24} {speedup:.3}  {} rounds: {}", case.suite, case.id, st.rounds, blocks.join(" "));
            }
            by_suite.entry(&case.suite).or_default().push(speedup);
        }
        for (suite, mut x) in by_suite {
            x.sort_by(f64::total_cmp);
            let geomean = (x.iter().map(|v| v.ln()).sum::<f64>() / x.len() as f64).exp();
            println!(
                "  {suite:10} {drafter_kind}: worst {:.3}  median {:.3}  geomean {geomean:.3}  best {:.3}  ({} prompts)",
                x[0],
                x[x.len() / 2],
                x[x.len() - 1],
                x.len()
            );
        }
    }
    Ok(())
}
