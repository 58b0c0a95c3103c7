//! The `duet` binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    duet_orchestrator::cli::main()
}
