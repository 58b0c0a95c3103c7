//! Per-generation statistics, as `duet generate --json` prints them.

use serde::Serialize;

/// What one generation did and how long it took.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens emitted (end-of-generation token not counted).
    pub generated_tokens: usize,
    /// Verifier calls after the prompt: one per AR step or verified block.
    pub rounds: usize,
    /// Draft tokens sent to the verifier.
    pub drafted: usize,
    /// Draft tokens the verifier accepted.
    pub accepted: usize,
    /// Tokens gained per round, the verifier's own token included (τ); 1.0 for plain decoding.
    pub mean_accepted_length: f64,
    /// Wall time from the prompt to the last token, in seconds.
    pub wall_s: f64,
    /// Generated tokens per second of wall time.
    pub tokens_per_s: f64,
    /// Time to the first token (prompt evaluation), in seconds.
    pub ttft_s: f64,
    /// Time spent in the drafter, in seconds.
    pub drafter_s: f64,
    /// Time spent in the verifier, prompt included, in seconds.
    pub verifier_s: f64,
    /// Draft lengths the engine chose, one per round (0 for an AR step).
    pub draft_lengths: Vec<usize>,
    /// Draft lengths the drafter offered, one per round (0 when it found nothing or was not asked);
    /// the cost-aware policy sends a prefix of each.
    pub offered_lengths: Vec<usize>,
    /// The verifier's cost curve c(k) the cost-aware policy started from (empty with a fixed block).
    pub cost_curve: Vec<f64>,
    /// The factor the generation's own verify calls put on a block's excess over a plain step,
    /// c'(k) = 1 + s (c(k) − 1), by the end (`None` without the cost-aware policy): above 1 when
    /// blocks cost more than `cost_curve` says.
    pub cost_scale: Option<f64>,
    /// Verifier time of each round, in seconds.
    pub round_s: Vec<f64>,
    /// Draft tokens accepted, one per round.
    pub accepted_lengths: Vec<usize>,
    /// Drafter failures that fell back to an AR step.
    pub drafter_failures: usize,
    /// Sessions' blocks in the verifier calls that served the rounds, summed over rounds: equal to
    /// `rounds` alone, up to `rounds` × sessions when concurrent generations shared every call.
    pub batch_blocks: usize,
}

impl Stats {
    /// Fills the derived fields once the generation is over.
    pub(crate) fn finish(&mut self, wall_s: f64, generated_tokens: usize) {
        self.wall_s = wall_s;
        self.generated_tokens = generated_tokens;
        self.tokens_per_s = if wall_s > 0.0 { generated_tokens as f64 / wall_s } else { 0.0 };
        // The first token comes from the prompt pass, not from a round.
        let from_rounds = self.rounds + self.accepted;
        self.mean_accepted_length = if self.rounds > 0 { from_rounds as f64 / self.rounds as f64 } else { 0.0 };
    }
}

impl Stats {
    /// For each block position i: of the rounds whose draft reached position i, the share whose
    /// accepted prefix covered it.
    pub fn acceptance_by_position(&self) -> Vec<f64> {
        let longest = self.draft_lengths.iter().copied().max().unwrap_or(0);
        (0..longest)
            .map(|i| {
                let (mut drafted, mut accepted) = (0usize, 0usize);
                for (&d, &a) in self.draft_lengths.iter().zip(&self.accepted_lengths) {
                    if d > i {
                        drafted += 1;
                        accepted += usize::from(a > i);
                    }
                }
                accepted as f64 / drafted.max(1) as f64
            })
            .collect()
    }
}
