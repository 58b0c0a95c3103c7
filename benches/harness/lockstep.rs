//! Lockstep pairing: every mode of a prompt group runs at once, the modes taking turns round by
//! round, each generation timed by its own mode's turns only.
//!
//! The speed of a shared 2-core VM drifts: eight identical greedy generations in a row, nothing
//! else running and no steal time, took 7.0 to 9.2 s for the same prompt's prefill. Modes measured
//! one after another meet different speeds, and the drift reaches the comparison prompt by prompt
//! (best of 3 still left identical prefills 25% apart; at concurrency 4, identical work took 28%
//! longer per decode call in one mode's run than in the next). The drift is slow next to one round
//! (~0.1 s), so modes whose rounds alternate meet the same speed and the ratio of their own times
//! cancels most of it: measured decoding phases then stay within ~4% (sd) of what the cost curve
//! predicts from the rounds each mode ran. A prompt's evaluation, a few one-second chunks of
//! compute, keeps more of the noise (the report prints its spread as the run's noise floor).
//!
//! Only one mode computes at any moment. At concurrency 1 its one generation decodes alone
//! (batches of one session, the numerics of concurrency 1) and the verifier's gather window is zero
//! meanwhile, since waiting for a session that is not computing would only add to every step. At
//! concurrency c a mode's turn is one verifier call from each of its c generations, started
//! together, so their steps and blocks meet in shared decode calls as they do when c requests are
//! served at once; the turn ends when the last of them has its answer, and the time a generation
//! waits for its own group's slower calls counts, as it would in service.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use duet_verifier::{SamplingParams, SparseDist, TokenId, Verdict, VerifierError};

use super::modes::BenchMode;
use super::runner::{Models, PreparedPrompt};
use super::sample::Sample;
use crate::engine::VerifierSession;

/// Whether a lockstep run of groups of `concurrency` prompts in `modes` modes fits the verifier,
/// which holds every one of their sessions at once.
pub fn fits(concurrency: usize, modes: usize) -> bool {
    concurrency * modes <= duet_verifier::config::MAX_SESSIONS as usize
}

/// Whose turn it is among groups of generations (one group per mode).
#[derive(Debug)]
pub struct Turns {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    /// The group whose turn it is.
    current: usize,
    groups: Vec<Group>,
}

#[derive(Debug)]
struct Group {
    /// Members still generating.
    live: usize,
    /// Members done with the current turn.
    arrived: usize,
    /// Turns begun so far.
    turn: u64,
    /// When the group's last turn ended and when its current one began: the others' time between.
    ended: Instant,
    began: Instant,
}

impl Turns {
    /// Turns for groups of these sizes; the first group goes first.
    pub fn new(sizes: &[usize]) -> Self {
        let now = Instant::now();
        let groups = sizes
            .iter()
            .enumerate()
            .map(|(g, &live)| Group { live, arrived: 0, turn: u64::from(g == 0), ended: now, began: now })
            .collect();
        Self { state: Mutex::new(State { current: 0, groups }), changed: Condvar::new() }
    }

    /// A member's place in group `group`'s turns, with the verifier session it is to use (opened
    /// beforehand, or `None` to open its own); it leaves the turns when the seat is dropped.
    pub fn seat(&self, group: usize, session: Option<duet_verifier::Session>) -> Seat<'_> {
        Seat { turns: self, group, seen: std::cell::Cell::new(0), session: std::cell::RefCell::new(session) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until group `g` begins a turn after `seen`; returns that turn and the time the
    /// others held the machine since `g`'s previous turn ended.
    fn wait_for(&self, g: usize, seen: u64) -> (u64, Duration) {
        let mut s = self.lock();
        while !(s.current == g && s.groups[g].turn > seen) {
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        let group = &s.groups[g];
        (group.turn, group.began.saturating_duration_since(group.ended))
    }

    /// Records that a member of `g` is done with this turn (`leaving`: and with every turn), and
    /// hands the turn to the next group with members left once all of `g`'s are done.
    fn arrive(&self, g: usize, leaving: bool) {
        let mut s = self.lock();
        let group = &mut s.groups[g];
        if leaving {
            group.live -= 1;
        } else {
            group.arrived += 1;
        }
        if s.current == g && s.groups[g].arrived >= s.groups[g].live {
            let now = Instant::now();
            let n = s.groups.len();
            s.groups[g].arrived = 0;
            s.groups[g].ended = now;
            let next = (1..=n).map(|i| (g + i) % n).find(|&j| s.groups[j].live > 0).unwrap_or(g);
            s.current = next;
            s.groups[next].turn += 1;
            s.groups[next].began = now;
        }
        drop(s);
        self.changed.notify_all();
    }
}

/// One generation's place in a [`Turns`].
#[derive(Debug)]
pub struct Seat<'a> {
    turns: &'a Turns,
    group: usize,
    /// The last turn this member took part in.
    seen: std::cell::Cell<u64>,
    session: std::cell::RefCell<Option<duet_verifier::Session>>,
}

impl Seat<'_> {
    /// The session opened for this member, once.
    pub fn take_session(&self) -> Option<duet_verifier::Session> {
        self.session.borrow_mut().take()
    }

    /// Blocks until this generation's group has its (next) turn.
    pub fn wait(&self) {
        let (turn, _) = self.turns.wait_for(self.group, self.seen.get());
        self.seen.set(turn);
    }

    /// Ends this generation's part of the turn and blocks until its group's next one; returns the
    /// time the other groups held the machine meanwhile (not the time it waited for its own group).
    pub fn take_turns(&self) -> Duration {
        self.turns.arrive(self.group, false);
        let (turn, away) = self.turns.wait_for(self.group, self.seen.get());
        self.seen.set(turn);
        away
    }
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        self.turns.arrive(self.group, true);
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

/// Generates every prompt of `group` in every mode of `modes` in lockstep, the modes taking turns;
/// returns, per mode in order, one sample per prompt in order.
pub fn run(models: &Models, modes: &[BenchMode], group: &[&PreparedPrompt], block_size: usize) -> anyhow::Result<Vec<Vec<Sample>>> {
    let _window = (group.len() == 1).then(|| {
        let old = models.verifier.gather_window();
        models.verifier.set_gather_window(Duration::ZERO);
        WindowGuard { verifier: &models.verifier, old }
    });
    let turns = Turns::new(&vec![group.len(); modes.len()]);
    let turns = &turns;
    let concurrency = group.len();
    // Sessions opened here, mode by mode and prompt by prompt, so that every mode's prompts get
    // sequence ids in the same order: llama.cpp puts only consecutive ids in one micro-batch, and
    // ids left in thread order made one mode's calls split where another's did not.
    let mut sessions = (0..modes.len() * group.len())
        .map(|_| models.verifier.open_session().context("opening a verifier session"))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter();
    let results: Vec<Vec<anyhow::Result<Sample>>> = std::thread::scope(|scope| {
        let handles: Vec<Vec<_>> = modes
            .iter()
            .enumerate()
            .map(|(m, &mode)| {
                group
                    .iter()
                    .map(|&prompt| {
                        let session = sessions.next();
                        scope.spawn(move || {
                            let seat = turns.seat(m, session);
                            models.sample(mode, prompt, block_size, concurrency, Some(&seat))
                        })
                    })
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|hs| hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a generation thread panicked")))).collect())
            .collect()
    });
    results.into_iter().map(|r| r.into_iter().collect()).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;

    #[test]
    fn generations_in_lockstep_alternate_and_the_rest_go_on_when_one_ends() {
        let turns = Turns::new(&[1, 1, 1]);
        let log = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|scope| {
            for (me, rounds) in [(0usize, 3usize), (1, 1), (2, 2)] {
                let (turns, log) = (&turns, log.clone());
                scope.spawn(move || {
                    let seat = turns.seat(me, None);
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

    #[test]
    fn a_group_takes_its_turn_together_and_counts_only_the_other_groups_time() {
        // Group 0: a member that finishes its part at once and one that takes 200 ms; group 1: two
        // members that take 20 ms. Each member runs two rounds.
        let turns = Turns::new(&[2, 2]);
        let log = Arc::new(Mutex::new(Vec::new()));
        let aways = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|scope| {
            for (group, member, work_ms) in [(0usize, 0usize, 0u64), (0, 1, 200), (1, 0, 20), (1, 1, 20)] {
                let (turns, log, aways) = (&turns, log.clone(), aways.clone());
                scope.spawn(move || {
                    let seat = turns.seat(group, None);
                    seat.wait();
                    for round in 0..2 {
                        log.lock().unwrap().push((round, group));
                        std::thread::sleep(Duration::from_millis(work_ms));
                        if round == 0 {
                            let away = seat.take_turns();
                            aways.lock().unwrap().push((group, member, away));
                        }
                    }
                });
            }
        });
        // Both members of a group run in each of its turns, before the other group's.
        let log = log.lock().unwrap().clone();
        assert_eq!(log, vec![(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0), (1, 1), (1, 1)]);
        for &(group, member, away) in aways.lock().unwrap().iter() {
            if group == 0 {
                // Group 1's 20 ms count as away; the 200 ms group 0 spent on its slow member do not.
                assert!(away >= Duration::from_millis(20) && away < Duration::from_millis(200), "member {member}: {away:?}");
            } else {
                // Group 0's second turn ends when its slow member's 200 ms are over.
                assert!(away >= Duration::from_millis(200), "group 1 member {member}: {away:?}");
            }
        }
    }
}
