//! Lockstep pairing: every mode of a prompt runs at once, the generations taking turns round by
//! round, each timed by its own turns only.
//!
//! The speed of a shared 2-core VM drifts: eight identical greedy generations in a row, nothing
//! else running and no steal time, took 7.0 to 9.2 s for the same prompt's prefill. Modes measured
//! one after another meet different speeds, and the drift reaches the comparison prompt by prompt
//! (best of 3 still left identical prefills 25% apart). The drift is slow next to one round
//! (~0.1 s), so modes whose rounds alternate meet the same speed and the ratio of their own times
//! cancels most of it: measured decoding phases then stay within ~4% (sd) of what the cost curve
//! predicts from the rounds each mode ran. A prompt's evaluation, a few one-second chunks of
//! compute, keeps more of the noise (the report prints its spread as the run's noise floor).
//!
//! Only one generation computes at any moment: the others wait for their turn with their clocks
//! paused, so each still decodes alone (batches of one session, the numerics of concurrency 1),
//! and the verifier's gather window is zero meanwhile, since waiting for a session that is not
//! computing would only add to every step.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use duet_verifier::{SamplingParams, SparseDist, TokenId, Verdict, VerifierError};

use super::modes::BenchMode;
use super::runner::{Models, PreparedPrompt};
use super::sample::Sample;
use crate::engine::VerifierSession;

/// Whose turn it is among a group of generations.
#[derive(Debug)]
pub struct Turns {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    current: usize,
    /// Generations that ended and take no more turns.
    done: Vec<bool>,
}

impl Turns {
    /// Turns for `n` generations; the first goes first.
    pub fn new(n: usize) -> Self {
        Self { state: Mutex::new(State { current: 0, done: vec![false; n] }), changed: Condvar::new() }
    }

    /// Generation `me`'s place in the turns; it leaves them when the seat is dropped.
    pub fn seat(&self, me: usize) -> Seat<'_> {
        Seat { turns: self, me }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_for(&self, me: usize) {
        let mut s = self.lock();
        while s.current != me {
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Gives the turn to the next generation after `me` that has not ended (back to `me` if none).
    fn pass(&self, me: usize, leaving: bool) {
        let mut s = self.lock();
        if leaving {
            s.done[me] = true;
        }
        if s.current == me {
            let n = s.done.len();
            s.current = (1..=n).map(|i| (me + i) % n).find(|&j| !s.done[j]).unwrap_or(me);
        }
        drop(s);
        self.changed.notify_all();
    }
}

/// One generation's place in a [`Turns`].
#[derive(Debug)]
pub struct Seat<'a> {
    turns: &'a Turns,
    me: usize,
}

impl Seat<'_> {
    /// Blocks until it is this generation's turn.
    pub fn wait(&self) {
        self.turns.wait_for(self.me);
    }

    /// Ends this generation's turn and blocks until its next one.
    pub fn take_turns(&self) {
        self.turns.pass(self.me, false);
        self.wait();
    }
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        self.turns.pass(self.me, true);
    }
}

/// Tokens of the prompt evaluated per turn. A prompt of a few hundred tokens takes seconds in one
/// call, long enough for the machine's speed to drift; chunks of 64 take ~1 s on the 1.5B here.
pub const PREFILL_CHUNK: usize = 64;

/// A verifier session that evaluates the prompt [`PREFILL_CHUNK`] tokens at a time, calling
/// `between` (which takes a turn) between chunks. The verifier keeps the cached prefix of each
/// evaluation, so the chunks add up to one evaluation of the prompt; every mode of a lockstep run
/// evaluates its prompt the same way.
pub struct ChunkedPrefill<'s> {
    inner: &'s mut duet_verifier::Session,
    between: &'s dyn Fn() -> f64,
    paused_s: f64,
}

impl<'s> ChunkedPrefill<'s> {
    /// Wraps `inner`; `between` takes a turn and returns the seconds it waited.
    pub fn new(inner: &'s mut duet_verifier::Session, between: &'s dyn Fn() -> f64) -> Self {
        Self { inner, between, paused_s: 0.0 }
    }

    /// Seconds waited between chunks.
    pub fn paused_s(&self) -> f64 {
        self.paused_s
    }
}

impl VerifierSession for ChunkedPrefill<'_> {
    fn prefill(&mut self, prompt: &[TokenId]) -> Result<Verdict, VerifierError> {
        let mut features = Vec::new();
        let mut end = 0;
        loop {
            end = (end + PREFILL_CHUNK).min(prompt.len());
            let verdict = self.inner.prefill(&prompt[..end])?;
            features.extend_from_slice(&verdict.features);
            if end == prompt.len() {
                return Ok(Verdict { features, ..verdict });
            }
            self.paused_s += (self.between)();
        }
    }
    fn step(&mut self) -> Result<Verdict, VerifierError> {
        self.inner.step()
    }
    fn verify(&mut self, draft: &[TokenId]) -> Result<Verdict, VerifierError> {
        self.inner.verify(draft)
    }
    fn room(&self) -> usize {
        self.inner.room()
    }
    fn set_sampling(&mut self, sampling: &SamplingParams) -> Result<(), VerifierError> {
        VerifierSession::set_sampling(self.inner, sampling)
    }
    fn verify_with(&mut self, draft: &[TokenId], q: &[SparseDist]) -> Result<Verdict, VerifierError> {
        self.inner.verify_with(draft, q)
    }
}

/// Sets the verifier's gather window for as long as it lives, then restores it.
struct WindowGuard<'a> {
    verifier: &'a duet_verifier::Verifier,
    old: Duration,
}

impl Drop for WindowGuard<'_> {
    fn drop(&mut self) {
        self.verifier.set_gather_window(self.old);
    }
}

/// Generates `prompt` in every mode of `modes` in lockstep; returns one sample per mode, in order.
pub fn run(models: &Models, modes: &[BenchMode], prompt: &PreparedPrompt, block_size: usize) -> anyhow::Result<Vec<Sample>> {
    let _window = {
        let old = models.verifier.gather_window();
        models.verifier.set_gather_window(Duration::ZERO);
        WindowGuard { verifier: &models.verifier, old }
    };
    let turns = Turns::new(modes.len());
    let turns = &turns;
    let results: Vec<anyhow::Result<Sample>> = std::thread::scope(|scope| {
        let handles: Vec<_> = modes
            .iter()
            .enumerate()
            .map(|(m, &mode)| {
                scope.spawn(move || {
                    let seat = turns.seat(m);
                    models.sample(mode, prompt, block_size, 1, Some(&seat))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a generation thread panicked"))))
            .collect()
    });
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;

    #[test]
    fn generations_in_lockstep_alternate_and_the_rest_go_on_when_one_ends() {
        let turns = Turns::new(3);
        let log = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|scope| {
            for (me, rounds) in [(0usize, 3usize), (1, 1), (2, 2)] {
                let (turns, log) = (&turns, log.clone());
                scope.spawn(move || {
                    let seat = turns.seat(me);
                    seat.wait();
                    for r in 0..rounds {
                        log.lock().unwrap().push(me);
                        if r + 1 < rounds {
                            seat.take_turns();
                        }
                    }
                });
            }
        });
        // Round robin while all run; 1 ends after its first round, 2 after its second, 0 goes on alone.
        assert_eq!(*log.lock().unwrap(), vec![0, 1, 2, 0, 2, 0]);
    }
}
