//! Drafter training data on disk: fixed-length token windows with, for every position, the
//! verifier's greedy choice of the next token and its hidden state.
//!
//! Layout of a dataset folder (all little-endian, one row per window):
//! - `meta.json` — [`Meta`]: verifier, widths, row counts;
//! - `{split}.tokens` — `seq_len` u32 token ids;
//! - `{split}.greedy` — `seq_len` u32: the verifier's greedy choice after each position;
//! - `{split}.features` — `seq_len × n_embd` f16: the verifier's final hidden state at each position.
//!
//! `split` is `train` or `held_out`. Rows are appended, so an interrupted build resumes at the
//! first missing row; a row counts once all three files hold it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use half::f16;
use serde::{Deserialize, Serialize};

/// What a dataset folder holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Version of this layout.
    pub format: u32,
    /// The verifier GGUF the features come from.
    pub verifier: String,
    /// Width of a hidden state.
    pub n_embd: usize,
    /// Tokens per window.
    pub seq_len: usize,
}

/// The two splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Trained on.
    Train,
    /// Never trained on: for the held-out loss and evaluation.
    HeldOut,
}

impl Split {
    fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::HeldOut => "held_out",
        }
    }
}

fn path(dir: &Path, split: Split, ext: &str) -> PathBuf {
    dir.join(format!("{}.{ext}", split.name()))
}

/// Reads `meta.json`, or writes `meta` there if the folder is new; refuses a folder built for
/// another verifier or window length.
pub fn open_meta(dir: &Path, meta: &Meta) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("meta.json");
    if file.is_file() {
        let old: Meta = serde_json::from_slice(&std::fs::read(&file)?).with_context(|| format!("reading {}", file.display()))?;
        if old != *meta {
            bail!("{} was built with {:?}, not {:?}; use another --data-dir", dir.display(), old, meta);
        }
        return Ok(());
    }
    std::fs::write(&file, serde_json::to_vec_pretty(meta)?).with_context(|| format!("writing {}", file.display()))
}

/// Reads `meta.json`.
pub fn read_meta(dir: &Path) -> anyhow::Result<Meta> {
    let file = dir.join("meta.json");
    serde_json::from_slice(&std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?)
        .with_context(|| format!("parsing {}", file.display()))
}

/// Complete rows of a split already on disk.
pub fn rows(dir: &Path, meta: &Meta, split: Split) -> usize {
    let len = |ext: &str, row_bytes: usize| {
        std::fs::metadata(path(dir, split, ext)).map(|m| m.len() as usize / row_bytes).unwrap_or(0)
    };
    let t = meta.seq_len * 4;
    len("tokens", t).min(len("greedy", t)).min(len("features", meta.seq_len * meta.n_embd * 2))
}

/// Appends rows to a split.
pub struct Writer {
    tokens: BufWriter<File>,
    greedy: BufWriter<File>,
    features: BufWriter<File>,
    meta: Meta,
}

impl Writer {
    /// Opens a split for appending, first cutting every file back to the last complete row.
    pub fn open(dir: &Path, meta: &Meta, split: Split) -> anyhow::Result<Self> {
        let n = rows(dir, meta, split);
        let open = |ext: &str, row_bytes: usize| -> anyhow::Result<BufWriter<File>> {
            let p = path(dir, split, ext);
            let f = OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("opening {}", p.display()))?;
            f.set_len((n * row_bytes) as u64)?;
            Ok(BufWriter::new(f))
        };
        Ok(Self {
            tokens: open("tokens", meta.seq_len * 4)?,
            greedy: open("greedy", meta.seq_len * 4)?,
            features: open("features", meta.seq_len * meta.n_embd * 2)?,
            meta: meta.clone(),
        })
    }

    /// Appends one window and flushes it.
    pub fn push(&mut self, tokens: &[u32], greedy: &[u32], features: &[f32]) -> anyhow::Result<()> {
        let m = &self.meta;
        if tokens.len() != m.seq_len || greedy.len() != m.seq_len || features.len() != m.seq_len * m.n_embd {
            bail!("a row needs {} tokens and {} features", m.seq_len, m.seq_len * m.n_embd);
        }
        // Features first: a row counts only once the tokens are there too.
        for &x in features {
            self.features.write_all(&f16::from_f32(x).to_le_bytes())?;
        }
        for &t in greedy {
            self.greedy.write_all(&t.to_le_bytes())?;
        }
        for &t in tokens {
            self.tokens.write_all(&t.to_le_bytes())?;
        }
        self.features.flush()?;
        self.greedy.flush()?;
        self.tokens.flush()?;
        Ok(())
    }
}

/// A split loaded into memory.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Tokens per window.
    pub seq_len: usize,
    /// Width of a hidden state.
    pub n_embd: usize,
    /// `rows × seq_len` token ids.
    pub tokens: Vec<u32>,
    /// `rows × seq_len` greedy choices.
    pub greedy: Vec<u32>,
    /// `rows × seq_len × n_embd` hidden states.
    pub features: Vec<f16>,
}

impl Loaded {
    /// Number of windows.
    pub fn rows(&self) -> usize {
        self.tokens.len() / self.seq_len.max(1)
    }
}

/// Loads the complete rows of a split.
pub fn load(dir: &Path, split: Split) -> anyhow::Result<Loaded> {
    let meta = read_meta(dir)?;
    let n = rows(dir, &meta, split);
    let read = |ext: &str, bytes: usize| -> anyhow::Result<Vec<u8>> {
        let p = path(dir, split, ext);
        let mut buf = vec![0u8; bytes];
        File::open(&p).with_context(|| format!("opening {}", p.display()))?.read_exact(&mut buf)?;
        Ok(buf)
    };
    let u32s = |b: Vec<u8>| b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>();
    let tokens = u32s(read("tokens", n * meta.seq_len * 4)?);
    let greedy = u32s(read("greedy", n * meta.seq_len * 4)?);
    let features = read("features", n * meta.seq_len * meta.n_embd * 2)?
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]))
        .collect();
    Ok(Loaded { seq_len: meta.seq_len, n_embd: meta.n_embd, tokens, greedy, features })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_a_torn_row_is_dropped_on_resume() {
        let dir = std::env::temp_dir().join(format!("duet-dataset-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let meta = Meta { format: 1, verifier: "v.gguf".into(), n_embd: 2, seq_len: 3 };
        open_meta(&dir, &meta).expect("meta");
        let mut w = Writer::open(&dir, &meta, Split::Train).expect("writer");
        w.push(&[1, 2, 3], &[2, 3, 4], &[0.5, 1.0, 1.5, 2.0, 2.5, 3.0]).expect("row");
        w.push(&[4, 5, 6], &[5, 6, 7], &[0.0; 6]).expect("row");
        drop(w);
        // A torn write: half a row of tokens.
        OpenOptions::new().append(true).open(path(&dir, Split::Train, "tokens")).expect("open").write_all(&[1, 0, 0, 0]).expect("write");
        assert_eq!(rows(&dir, &meta, Split::Train), 2);
        let mut w = Writer::open(&dir, &meta, Split::Train).expect("writer");
        w.push(&[7, 8, 9], &[8, 9, 10], &[1.0; 6]).expect("row");
        drop(w);
        let l = load(&dir, Split::Train).expect("load");
        assert_eq!(l.rows(), 3);
        assert_eq!(l.tokens, vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(l.features[1].to_f32(), 1.0);
        assert!(open_meta(&dir, &Meta { seq_len: 4, ..meta }).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
