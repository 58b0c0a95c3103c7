//! Outputs against `ar`: the lossless check (every greedy hybrid output must equal `ar`'s, token for
//! token in process, character for character through the server) and, for the lossy diffusion
//! mode and the peers, how far their outputs stray.

use std::collections::HashMap;

use serde::Serialize;

use super::modes::{BenchMode, Contender, Transport};
use super::sample::{Output, Sample};

/// A greedy output that differs from its reference. Any one fails the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Mismatch {
    /// Suite name.
    pub suite: String,
    /// Prompt id.
    pub prompt: String,
    /// The mode whose output differs.
    pub mode: Contender,
    /// Transport of both generations.
    pub transport: Transport,
    /// Concurrency of the differing generation.
    pub concurrency: usize,
    /// What it was compared with.
    pub reference: String,
    /// First position (token in process, character through the server) where they differ.
    pub first_difference: usize,
    /// Length of the reference output.
    pub reference_len: usize,
    /// Length of the differing output.
    pub len: usize,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = if self.transport == Transport::Server { "character" } else { "token" };
        write!(
            f,
            "{}/{}: {} ({}, concurrency {}) differs from {} at {unit} {} (lengths {} vs {})",
            self.suite,
            self.prompt,
            self.mode.label(),
            self.transport.label(),
            self.concurrency,
            self.reference,
            self.first_difference,
            self.len,
            self.reference_len
        )
    }
}

/// How one output compares with another, position by position.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Similarity {
    /// Whether the outputs are identical.
    pub identical: bool,
    /// First position where they differ (the shorter length if one is a prefix of the other).
    pub first_difference: Option<usize>,
    /// Share of the reference's positions holding the same token (or character) in the other.
    pub positional_agreement: f64,
    /// 1 − edit distance / longer length: 1 for identical outputs, 0 for nothing in common.
    pub edit_similarity: f64,
}

/// Compares `other` with `reference` (tokens or characters).
pub fn similarity<T: PartialEq>(reference: &[T], other: &[T]) -> Similarity {
    let first = reference.iter().zip(other).position(|(a, b)| a != b);
    let first_difference = first.or((reference.len() != other.len()).then(|| reference.len().min(other.len())));
    let same = reference.iter().zip(other).filter(|(a, b)| a == b).count();
    let longest = reference.len().max(other.len());
    Similarity {
        identical: first_difference.is_none(),
        first_difference,
        positional_agreement: if reference.is_empty() { f64::from(u8::from(other.is_empty())) } else { same as f64 / reference.len() as f64 },
        edit_similarity: if longest == 0 { 1.0 } else { 1.0 - levenshtein(reference, other) as f64 / longest as f64 },
    }
}

/// Compares two outputs of the same kind; `None` when one is tokens and the other text.
pub fn compare_outputs(reference: &Output, other: &Output) -> Option<Similarity> {
    match (reference, other) {
        (Output::Tokens(a), Output::Tokens(b)) => Some(similarity(a, b)),
        (Output::Text(a), Output::Text(b)) => {
            let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
            Some(similarity(&a, &b))
        }
        _ => None,
    }
}

/// Compares two samples' outputs: tokens with tokens, text with text, and a peer's text with the
/// text of `reference`'s tokens.
pub fn compare_samples(reference: &Sample, other: &Sample) -> Option<Similarity> {
    match (&reference.output, &other.output) {
        (Output::Tokens(_), Output::Text(_)) => compare_outputs(&Output::Text(reference.text.clone()), &other.output),
        (a, b) => compare_outputs(a, b),
    }
}

fn levenshtein<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let next = (diag + usize::from(x != y)).min(row[j] + 1).min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

type Key<'a> = (&'a str, &'a str, Transport, usize);

/// `ar`'s sample for every (suite, prompt, transport, concurrency).
pub fn ar_references(samples: &[Sample]) -> HashMap<Key<'_>, &Sample> {
    samples
        .iter()
        .filter(|s| s.mode == BenchMode::Ar)
        .map(|s| ((s.suite.as_str(), s.prompt.as_str(), s.transport, s.concurrency), s))
        .collect()
}

/// The `ar` sample `s` is measured against at `concurrency`: `ar`'s on the same prompt and
/// transport; for a peer, Duet's `ar` in process, else through the server.
pub fn reference_of<'a>(refs: &HashMap<Key<'a>, &'a Sample>, s: &'a Sample, concurrency: usize) -> Option<&'a Sample> {
    let key = |t: Transport| (s.suite.as_str(), s.prompt.as_str(), t, concurrency);
    if s.mode.is_peer() {
        refs.get(&key(Transport::InProcess)).or_else(|| refs.get(&key(Transport::Server))).copied()
    } else {
        refs.get(&key(s.transport)).copied()
    }
}

/// Every greedy output that differs from its reference: each hybrid mode against `ar` at the same
/// transport and concurrency, and `ar` at a concurrency above 1 against `ar` alone (other sessions
/// running beside it must not change a session's output).
pub fn check_lossless(samples: &[Sample]) -> Vec<Mismatch> {
    let refs = ar_references(samples);
    let mut out = Vec::new();
    for s in samples.iter().filter(|s| s.mode.is_lossless()) {
        let (reference, name) = if s.mode == BenchMode::Ar {
            if s.concurrency == 1 {
                continue;
            }
            (refs.get(&(s.suite.as_str(), s.prompt.as_str(), s.transport, 1)), "ar at concurrency 1".to_string())
        } else {
            (refs.get(&(s.suite.as_str(), s.prompt.as_str(), s.transport, s.concurrency)), "ar".to_string())
        };
        let Some(reference) = reference else { continue };
        if let Some(sim) = compare_outputs(&reference.output, &s.output)
            && let Some(at) = sim.first_difference
        {
            out.push(Mismatch {
                suite: s.suite.clone(),
                prompt: s.prompt.clone(),
                mode: s.mode,
                transport: s.transport,
                concurrency: s.concurrency,
                reference: name,
                first_difference: at,
                reference_len: output_len(&reference.output),
                len: output_len(&s.output),
            });
        }
    }
    out
}

fn output_len(o: &Output) -> usize {
    match o {
        Output::Tokens(t) => t.len(),
        Output::Text(t) => t.chars().count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(prompt: &str, mode: BenchMode, concurrency: usize, tokens: &[u32]) -> Sample {
        super::super::sample::test_sample(prompt, mode, concurrency, tokens, 0.1, 1.0)
    }

    #[test]
    fn identical_hybrid_outputs_pass() {
        let samples = vec![
            sample("p", BenchMode::Ar, 1, &[1, 2, 3]),
            sample("p", BenchMode::HybridNgram, 1, &[1, 2, 3]),
            sample("p", BenchMode::HybridArModel, 1, &[1, 2, 3]),
        ];
        assert!(check_lossless(&samples).is_empty());
    }

    #[test]
    fn a_hybrid_output_that_differs_from_ar_is_a_mismatch() {
        let samples = vec![
            sample("p", BenchMode::Ar, 1, &[1, 2, 3, 4]),
            sample("p", BenchMode::HybridNgram, 1, &[1, 2, 9, 4]),
            sample("q", BenchMode::Ar, 1, &[5, 6]),
            sample("q", BenchMode::HybridDiffusion, 1, &[5, 6, 7]),
        ];
        let m = check_lossless(&samples);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!((m[0].prompt.as_str(), m[0].mode, m[0].first_difference), ("p", Contender::Duet(BenchMode::HybridNgram), 2));
        assert_eq!((m[1].prompt.as_str(), m[1].first_difference, m[1].len), ("q", 2, 3));
    }

    #[test]
    fn the_lossy_diffusion_mode_is_never_a_mismatch() {
        let samples = vec![sample("p", BenchMode::Ar, 1, &[1, 2, 3]), sample("p", BenchMode::Diffusion, 1, &[7, 7])];
        assert!(check_lossless(&samples).is_empty());
    }

    #[test]
    fn hybrid_is_compared_with_ar_at_its_own_concurrency_and_ar_with_ar_alone() {
        let samples = vec![
            sample("p", BenchMode::Ar, 1, &[1, 2, 3]),
            sample("p", BenchMode::Ar, 4, &[1, 2, 8]),
            sample("p", BenchMode::HybridNgram, 4, &[1, 2, 8]),
        ];
        let m = check_lossless(&samples);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!((m[0].mode, m[0].concurrency, m[0].reference.as_str()), (Contender::Duet(BenchMode::Ar), 4, "ar at concurrency 1"));
    }

    #[test]
    fn server_outputs_are_compared_as_text() {
        let mut ar = sample("p", BenchMode::Ar, 1, &[]);
        ar.transport = Transport::Server;
        ar.output = Output::Text("def f(): pass".into());
        let mut hy = ar.clone();
        hy.mode = BenchMode::HybridNgram.into();
        hy.output = Output::Text("def f(): return".into());
        let m = check_lossless(&[ar, hy]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].first_difference, 9);
    }

    #[test]
    fn similarity_measures_agreement_and_edits() {
        let s = similarity(&[1, 2, 3, 4], &[1, 2, 3, 4]);
        assert!(s.identical && s.first_difference.is_none() && s.edit_similarity == 1.0);
        // One token inserted at the front: nothing agrees by position, one edit away.
        let s = similarity(&[1, 2, 3, 4], &[0, 1, 2, 3, 4]);
        assert_eq!(s.first_difference, Some(0));
        assert_eq!(s.positional_agreement, 0.0);
        assert!((s.edit_similarity - 0.8).abs() < 1e-9);
        // A prefix differs at the shorter length.
        assert_eq!(similarity(&[1, 2, 3], &[1, 2]).first_difference, Some(2));
        assert_eq!(similarity::<u32>(&[], &[]).edit_similarity, 1.0);
    }
}
