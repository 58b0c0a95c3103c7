//! The `duet` binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    pin_candle_threads();
    duet_orchestrator::cli::main()
}

/// candle asks for its thread count on every matrix product and, unless `RAYON_NUM_THREADS` is
/// set, works it out again by reading `/proc/cpuinfo`: measured at ~6% of a diffusion drafting call
/// on the 2-core machine. Setting the variable to candle's own answer, once, keeps the same
/// thread count (and so the same drafts) without the reads.
fn pin_candle_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = duet_drafter::candle_core::utils::get_num_threads();
        // SAFETY: the first thing main does; no other thread exists yet to read the environment.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}
