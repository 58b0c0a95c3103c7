//! The `duet` command line. Subcommand names and flags are a contract that scripts and tests rely on.

mod costs;
mod drafter_serve;
mod eval;
mod flags;
mod generate;
mod grpc_common;
mod models;
mod options;
mod orchestrator_serve;
mod serve;
mod train;
mod verifier_serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use generate::GenerateArgs;
pub use serve::ServeArgs;
pub use options::{DiffusionArgs, ModelArgs, default_models_dir};

/// Duet: speculative decoding with a diffusion drafter and a llama.cpp verifier.
#[derive(Debug, Parser)]
#[command(name = "duet", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the default models in the models directory.
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
    /// Generate a completion for one prompt and print it (streamed) or, with --json, one JSON object.
    Generate(GenerateArgs),
    /// Serve the models: an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions,
    /// /v1/models), /health and Prometheus /metrics.
    Serve(ServeArgs),
    /// Build the drafter's training data with the verifier and train the diffusion drafter.
    TrainDrafter(train::TrainArgs),
    /// Measure the diffusion drafter against the real verifier: τ, acceptance by position, speed.
    EvalDrafter(eval::EvalArgs),
    /// Compare every decoding strategy (ar, hybrid with each drafter, diffusion) on the same
    /// verifier and prompts: speed, acceptance, latency; fails if a greedy hybrid output differs
    /// from ar's.
    Bench(crate::bench::BenchArgs),
    /// Many concurrent streaming clients against `duet serve` (started here on a free loopback port
    /// unless --server is given) for a bounded time: checks every greedy answer against its
    /// verifier-only reference and reports throughput, latency percentiles and server memory.
    Loadtest(crate::bench::load::LoadArgs),
    /// The drafter as a gRPC service (`duet drafter serve`).
    Drafter {
        #[command(subcommand)]
        command: drafter_serve::DrafterCommand,
    },
    /// The verifier as a gRPC service (`duet verifier serve`).
    Verifier {
        #[command(subcommand)]
        command: verifier_serve::VerifierCommand,
    },
    /// The speculative engine as a gRPC service over remote drafter and verifiers
    /// (`duet orchestrator serve`).
    Orchestrator {
        #[command(subcommand)]
        command: orchestrator_serve::OrchestratorCommand,
    },
}

/// Parses the command line, runs it, and turns any error (a refused command line too) into one line
/// on stderr and exit code 1.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return flags::usage_error(e),
    };
    init_tracing();
    let result = match cli.command {
        Command::Models { command } => models::run(command),
        Command::Generate(args) => generate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::TrainDrafter(args) => train::run(args),
        Command::EvalDrafter(args) => eval::run(args),
        Command::Bench(args) => crate::bench::run(args),
        Command::Loadtest(args) => crate::bench::load::run(args),
        Command::Drafter { command } => drafter_serve::run(command),
        Command::Verifier { command } => verifier_serve::run(command),
        Command::Orchestrator { command } => orchestrator_serve::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings). llama.cpp's own logs arrive
/// through `tracing` too.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
