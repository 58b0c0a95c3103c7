//! The standalone drafter's data: the corpus as one token stream per split, in drafter ids.
//!
//! A standalone (unconditioned) drafter needs no verifier pass over its data, only tokens, so it can
//! learn from the whole corpus (tens of millions of tokens) where the conditioned drafter's
//! teacher-forced features cost a verifier evaluation per token. The stream is small enough to carry
//! to an accelerator (`scripts/train_drafter_gpu.py` trains on exactly these files).
//!
//! Layout of the folder (little-endian):
//! - `meta.json` — [`StreamMeta`]: the drafter vocabulary (drafter id → verifier id), the `[MASK]`
//!   and UNK ids, token counts and the share of UNK;
//! - `train.u16`, `held_out.u16` — drafter ids; files are separated by the end-of-text id.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use duet_drafter::NO_TOKEN;
use duet_verifier::Verifier;
use serde::{Deserialize, Serialize};

use super::build::HELD_OUT_PERCENT;
use super::corpus;

/// Qwen2.5's `<|endoftext|>`: separates files in the stream.
pub const END_OF_TEXT: u32 = 151_643;
/// Qwen2.5's end-of-turn id: kept in every drafter vocabulary.
const END_OF_TURN: u32 = 151_645;
const META_FILE: &str = "meta.json";
/// Verifier ids of `def`, ` def`, `self`, ` self`: Python's most common words in the corpus.
const PYTHON_WORDS: [u32; 4] = [750, 707, 721, 656];
/// Verifier ids of `fn`, ` fn`, `let`, ` let`, `impl`, ` impl`, `pub`, ` pub`: Rust's.
const RUST_WORDS: [u32; 8] = [8822, 5168, 1149, 1077, 6383, 11605, 9585, 6675];

/// What a token-stream folder holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamMeta {
    /// Version of this layout.
    pub format: u32,
    /// Always `"standalone"`.
    pub kind: String,
    /// Drafter id → verifier id ([`NO_TOKEN`] for `[MASK]` and UNK).
    pub draft_to_verifier: Vec<u32>,
    /// Drafter id of `[MASK]`.
    pub mask_id: u32,
    /// Drafter id of verifier tokens outside the vocabulary.
    pub unk_id: u32,
    /// Tokens in `train.u16`.
    pub train_tokens: usize,
    /// Tokens in `held_out.u16`.
    pub held_out_tokens: usize,
    /// Share of training tokens that fall outside the vocabulary.
    pub unk_share: f64,
    /// Source files per split.
    pub train_files: usize,
    /// Held-out source files.
    pub held_out_files: usize,
}

/// The token streams, loaded.
#[derive(Debug)]
pub struct Streams {
    /// The folder's description.
    pub meta: StreamMeta,
    /// Training stream.
    pub train: Vec<u16>,
    /// Held-out stream.
    pub held_out: Vec<u16>,
}

/// Default folder of the stream.
pub fn default_dir(models_dir: &Path) -> PathBuf {
    models_dir.join("drafter-data").join("standalone")
}

/// Tokenises the corpus (CPython's standard library, its tests included, and the Rust sources in
/// Cargo's registry) into `dir`, unless it is already there. The vocabulary is the
/// `reduced_vocab` most frequent training tokens, the end-of-text and end-of-turn ids first.
pub fn export(verifier: &Verifier, dir: &Path, reduced_vocab: usize) -> anyhow::Result<StreamMeta> {
    if let Ok(streams) = load(dir) {
        eprintln!("[data] token streams present in {}: {} training tokens", dir.display(), streams.meta.train_tokens);
        return Ok(streams.meta);
    }
    anyhow::ensure!((256..=65_000).contains(&reduced_vocab), "`--reduced-vocab` must be between 256 and 65000 for the standalone drafter, got {reduced_vocab}");
    let files = corpus::collect_with_tests();
    anyhow::ensure!(!files.is_empty(), "no corpus files found (CPython's stdlib or ~/.cargo/registry/src)");
    let started = Instant::now();
    let (mut train, mut held) = (Vec::<u32>::new(), Vec::<u32>::new());
    let (mut train_files, mut held_files) = (0, 0);
    for (i, f) in files.iter().enumerate() {
        let Ok(text) = std::fs::read_to_string(&f.path) else { continue };
        let tokens = verifier.tokenize(&text, false).with_context(|| format!("tokenizing {}", f.path.display()))?;
        let (stream, count) = if corpus::is_held_out(&f.path, HELD_OUT_PERCENT) {
            (&mut held, &mut held_files)
        } else {
            (&mut train, &mut train_files)
        };
        stream.extend_from_slice(&tokens);
        stream.push(END_OF_TEXT);
        *count += 1;
        if i % 200 == 0 || i + 1 == files.len() {
            let rate = (train.len() + held.len()) as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let eta = (files.len() - i - 1) as f64 / ((i + 1) as f64 / started.elapsed().as_secs_f64().max(1e-9));
            eprint!("\r[data] tokenized {}/{} files, {} tokens, {rate:.0} tok/s, ETA {:.1} min   ", i + 1, files.len(), train.len() + held.len(), eta / 60.0);
        }
    }
    eprintln!();
    let mut counts = std::collections::HashMap::<u32, u64>::new();
    for &t in &train {
        *counts.entry(t).or_default() += 1;
    }
    let mut by_count: Vec<(u32, u64)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut frequent = vec![END_OF_TEXT, END_OF_TURN];
    frequent.extend(by_count.iter().map(|&(t, _)| t).filter(|t| *t != END_OF_TEXT && *t != END_OF_TURN));
    frequent.truncate(reduced_vocab);
    let n = frequent.len() as u32;
    let (mask_id, unk_id) = (n, n + 1);
    let mut to_drafter = std::collections::HashMap::with_capacity(frequent.len());
    for (d, &v) in frequent.iter().enumerate() {
        to_drafter.insert(v, d as u16);
    }
    let map = |s: &[u32]| -> Vec<u16> { s.iter().map(|t| to_drafter.get(t).copied().unwrap_or(unk_id as u16)).collect() };
    let (train_ids, held_ids) = (map(&train), map(&held));
    let unk_share = train_ids.iter().filter(|&&t| u32::from(t) == unk_id).count() as f64 / train_ids.len().max(1) as f64;
    let mut draft_to_verifier = frequent;
    draft_to_verifier.extend([NO_TOKEN, NO_TOKEN]);
    let meta = StreamMeta {
        format: 1,
        kind: "standalone".into(),
        draft_to_verifier,
        mask_id,
        unk_id,
        train_tokens: train_ids.len(),
        held_out_tokens: held_ids.len(),
        unk_share,
        train_files,
        held_out_files: held_files,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, ids) in [("train.u16", &train_ids), ("held_out.u16", &held_ids)] {
        let bytes: Vec<u8> = ids.iter().flat_map(|t| t.to_le_bytes()).collect();
        std::fs::write(dir.join(name), bytes).with_context(|| format!("writing {name}"))?;
    }
    // meta.json last: its presence marks a complete folder.
    std::fs::write(dir.join(META_FILE), serde_json::to_vec(&meta)?)?;
    eprintln!(
        "[data] {} training tokens ({train_files} files), {} held-out tokens ({held_files} files), {:.2}% outside the {}-token vocabulary, {:.0} s",
        meta.train_tokens,
        meta.held_out_tokens,
        100.0 * unk_share,
        reduced_vocab,
        started.elapsed().as_secs_f64()
    );
    Ok(meta)
}

/// The token ranges of the Python files of a stream: files whose Python words outnumber their Rust
/// words. The stream keeps no file names, and the corpus holds only these two languages, so the
/// words tell them apart; `scripts/train_drafter_gpu.py` classifies with the same ids.
pub fn python_files(stream: &[u16], draft_to_verifier: &[u32]) -> Vec<Range<usize>> {
    let draft_id = |v: u32| draft_to_verifier.iter().position(|&x| x == v).map(|d| d as u16);
    let python: Vec<u16> = PYTHON_WORDS.iter().filter_map(|&v| draft_id(v)).collect();
    let rust: Vec<u16> = RUST_WORDS.iter().filter_map(|&v| draft_id(v)).collect();
    let Some(end_of_file) = draft_id(END_OF_TEXT) else { return Vec::new() };
    let (mut files, mut start, mut score) = (Vec::new(), 0, 0i64);
    for (i, t) in stream.iter().enumerate() {
        score += i64::from(python.contains(t)) - i64::from(rust.contains(t));
        if *t == end_of_file {
            if score > 0 {
                files.push(start..i + 1);
            }
            (start, score) = (i + 1, 0);
        }
    }
    files
}

/// Loads a complete stream folder.
pub fn load(dir: &Path) -> anyhow::Result<Streams> {
    let meta: StreamMeta = serde_json::from_slice(&std::fs::read(dir.join(META_FILE)).with_context(|| format!("no token streams in {}", dir.display()))?)
        .context("reading meta.json")?;
    let read = |name: &str, want: usize| -> anyhow::Result<Vec<u16>> {
        let bytes = std::fs::read(dir.join(name)).with_context(|| format!("reading {name}"))?;
        anyhow::ensure!(bytes.len() == 2 * want, "{name} holds {} bytes, meta.json says {want} tokens", bytes.len());
        Ok(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect())
    };
    Ok(Streams { train: read("train.u16", meta.train_tokens)?, held_out: read("held_out.u16", meta.held_out_tokens)?, meta })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_files_are_told_from_rust_files_by_their_words() {
        // Drafter ids: 0 end of text, 1 `def`, 2 ` self`, 3 ` fn`, 4 ` let`, 5 something else.
        let vocab = [END_OF_TEXT, 750, 656, 5168, 1077, 42];
        let stream = [1, 5, 2, 2, 0, /* rust */ 3, 4, 5, 0, /* mixed, rust wins */ 1, 3, 4, 0, /* python */ 5, 1, 0];
        assert_eq!(python_files(&stream, &vocab), vec![0..5, 13..16]);
        // A vocabulary without the end-of-text id has no files to tell apart.
        assert!(python_files(&stream, &vocab[1..]).is_empty());
    }
}
