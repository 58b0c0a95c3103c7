//! One measured generation, and the clock that times token deliveries the way a streaming client
//! sees them.

use std::time::{Duration, Instant};

use duet_verifier::TokenId;
use serde::Serialize;

use super::modes::{Contender, Transport};
use crate::engine::Stats;

/// What a generation produced: token ids in process, text through the server (the OpenAI API does
/// not return ids).
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Generated token ids.
    Tokens(Vec<TokenId>),
    /// Generated text.
    Text(String),
}

/// One generation of one prompt in one mode.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Suite name (file stem).
    pub suite: String,
    /// Prompt id within the suite.
    pub prompt: String,
    /// Decoding strategy: a Duet mode or a peer.
    pub mode: Contender,
    /// In process or through the server.
    pub transport: Transport,
    /// Generations running at once while this one ran.
    pub concurrency: usize,
    /// Tokens generated (end-of-generation token not counted).
    pub generated_tokens: usize,
    /// Why it stopped (`eos`, `max_tokens`, `context_full`; the server's `finish_reason`).
    pub stop: String,
    /// Time to first token: from the request to the first delivered token, seconds.
    pub ttft_s: f64,
    /// End-to-end latency: from the request to the last token, seconds.
    pub e2e_s: f64,
    /// `generated_tokens / e2e_s`.
    pub tokens_per_s: f64,
    /// Times tokens were delivered (one per round in hybrid mode, one per SSE event).
    pub deliveries: usize,
    /// Gaps between successive deliveries, seconds (not in the JSON file: the summaries pool them).
    #[serde(skip)]
    pub itl_s: Vec<f64>,
    /// The engine's counters (in process only).
    pub stats: Option<Stats>,
    /// Draft tokens the verifier accepted, as the server reports them.
    pub accepted_prediction_tokens: Option<usize>,
    /// Draft tokens the verifier rejected, as the server reports them.
    pub rejected_prediction_tokens: Option<usize>,
    /// The generated text.
    pub text: String,
    /// What is compared with `ar`.
    #[serde(skip)]
    pub output: Output,
}

/// Times deliveries of tokens to the caller. A generation that takes turns with others (the
/// lockstep pairing) leaves out the time the others held the machine, so every time it reports is
/// its own.
#[derive(Debug)]
pub struct DeliveryClock {
    start: Instant,
    /// Time left out so far.
    paused: Duration,
    first: Option<f64>,
    last: Option<f64>,
    gaps: Vec<f64>,
}

/// What a [`DeliveryClock`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Deliveries {
    /// Seconds to the first delivery (the end, when nothing was delivered).
    pub ttft_s: f64,
    /// Seconds to the end.
    pub e2e_s: f64,
    /// Gaps between successive deliveries, seconds.
    pub gaps_s: Vec<f64>,
    /// Number of deliveries.
    pub count: usize,
}

impl DeliveryClock {
    /// Starts timing now (the moment the request is made).
    pub fn start() -> Self {
        Self { start: Instant::now(), paused: Duration::ZERO, first: None, last: None, gaps: Vec::new() }
    }

    /// Seconds since the start, less the pauses.
    fn own_s(&self) -> f64 {
        (self.start.elapsed().as_secs_f64() - self.paused_s()).max(0.0)
    }

    /// Records that tokens arrived now.
    pub fn delivered(&mut self) {
        let now = self.own_s();
        match self.last {
            None => self.first = Some(now),
            Some(last) => self.gaps.push(now - last),
        }
        self.last = Some(now);
    }

    /// Leaves `d` out of every time measured from now on: the time others held the machine.
    pub fn exclude(&mut self, d: Duration) {
        self.paused += d;
    }

    /// Seconds left out so far.
    pub fn paused_s(&self) -> f64 {
        self.paused.as_secs_f64()
    }

    /// Stops the clock.
    pub fn finish(self) -> Deliveries {
        let e2e_s = self.own_s();
        Deliveries { ttft_s: self.first.unwrap_or(e2e_s), e2e_s, count: self.gaps.len() + usize::from(self.first.is_some()), gaps_s: self.gaps }
    }
}

/// Tokens per second, 0 for an empty or instantaneous generation.
pub fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 }
}

/// A sample with the given identity, output and times, everything else empty: for tests.
#[cfg(test)]
pub fn test_sample(prompt: &str, mode: super::modes::BenchMode, concurrency: usize, tokens: &[TokenId], ttft_s: f64, e2e_s: f64) -> Sample {
    Sample {
        suite: "s".into(),
        prompt: prompt.into(),
        mode: mode.into(),
        transport: Transport::InProcess,
        concurrency,
        generated_tokens: tokens.len(),
        stop: "max_tokens".into(),
        ttft_s,
        e2e_s,
        tokens_per_s: tokens.len() as f64,
        deliveries: 1,
        itl_s: Vec::new(),
        stats: None,
        accepted_prediction_tokens: None,
        rejected_prediction_tokens: None,
        text: String::new(),
        output: Output::Tokens(tokens.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_leaves_the_time_others_held_out_of_every_time() {
        let mut clock = DeliveryClock::start();
        std::thread::sleep(Duration::from_millis(5));
        clock.delivered();
        let away = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        clock.exclude(away.elapsed());
        std::thread::sleep(Duration::from_millis(5));
        clock.delivered();
        let d = clock.finish();
        assert_eq!(d.count, 2);
        assert!(d.ttft_s >= 0.005 && d.ttft_s < 0.2, "ttft {}", d.ttft_s);
        assert!(d.gaps_s[0] >= 0.005 && d.gaps_s[0] < 0.2, "gap {}", d.gaps_s[0]);
        assert!(d.e2e_s >= 0.01 && d.e2e_s < 0.25, "e2e {}", d.e2e_s);
    }
}
