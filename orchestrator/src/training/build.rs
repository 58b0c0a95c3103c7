//! Builds a drafter training dataset: corpus windows scored by the verifier (teacher forcing), with
//! its hidden state and greedy choice at every position. Long work: it prints progress and resumes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use duet_verifier::Verifier;

use super::corpus::{self, SourceFile};
use super::dataset::{self, Meta, Split, Writer};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Dataset folder.
    pub dir: PathBuf,
    /// Tokens per window.
    pub seq_len: usize,
    /// Windows to put in the training split.
    pub train_rows: usize,
    /// Windows to put in the held-out split.
    pub held_out_rows: usize,
    /// At most this many windows from one file, for variety.
    pub windows_per_file: usize,
    /// Order in which files are visited.
    pub seed: u64,
}

/// Percent of corpus files kept out of training.
pub const HELD_OUT_PERCENT: u64 = 3;

/// Builds (or completes) the dataset. The verifier must return features.
pub fn build(verifier: &Verifier, opts: &BuildOptions) -> anyhow::Result<()> {
    let info = verifier.info();
    let meta = Meta { format: 1, verifier: info.path.display().to_string(), n_embd: info.n_embd as usize, seq_len: opts.seq_len };
    dataset::open_meta(&opts.dir, &meta)?;
    let mut files = corpus::collect();
    anyhow::ensure!(!files.is_empty(), "no corpus files found (CPython's stdlib or ~/.cargo/registry/src)");
    corpus::shuffle(&mut files, opts.seed);
    let (held, train): (Vec<SourceFile>, Vec<SourceFile>) =
        files.into_iter().partition(|f| corpus::is_held_out(&f.path, HELD_OUT_PERCENT));
    eprintln!("[data] corpus: {} training files, {} held-out files", train.len(), held.len());
    let mut session = verifier.open_session().context("opening a verifier session")?;
    for (split, files, want) in [(Split::HeldOut, held, opts.held_out_rows), (Split::Train, train, opts.train_rows)] {
        let have = dataset::rows(&opts.dir, &meta, split);
        if have >= want {
            eprintln!("[data] {split:?}: {have} rows present");
            continue;
        }
        let mut writer = Writer::open(&opts.dir, &meta, split)?;
        let started = Instant::now();
        // Windows come in a fixed order, so the first `have` are the ones already written.
        let mut index = 0usize;
        let mut written = have;
        'files: for f in &files {
            let Ok(text) = std::fs::read_to_string(&f.path) else { continue };
            let tokens = verifier.tokenize(&text, false).with_context(|| format!("tokenizing {}", f.path.display()))?;
            for w in tokens.chunks_exact(opts.seq_len).take(opts.windows_per_file) {
                index += 1;
                if index <= have {
                    continue;
                }
                let (choices, features) = session.score(w).context("scoring a window")?;
                let greedy: Vec<u32> = choices.iter().map(|c| c.token).collect();
                writer.push(w, &greedy, &features)?;
                written += 1;
                let done = written - have;
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                let eta = (want - written) as f64 / rate.max(1e-9);
                eprint!(
                    "\r[data] {split:?}: {written}/{want} windows, {:.0} tok/s, ETA {:.0} min   ",
                    rate * opts.seq_len as f64,
                    eta / 60.0
                );
                if written >= want {
                    break 'files;
                }
            }
        }
        eprintln!();
        if written < want {
            eprintln!("[data] {split:?}: the corpus ran out at {written} windows");
        }
    }
    Ok(())
}
