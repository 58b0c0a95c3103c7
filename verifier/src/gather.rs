//! Gathering verifications of several sessions into one decode call.
//!
//! Decoding on a CPU is bound by reading the weights: evaluating the blocks of four sessions in one
//! llama.cpp batch costs little more than evaluating one. Sessions run on their own generation
//! threads and reach the verifier thread one command at a time, so after taking a verification the
//! thread looks for more: those already queued, and — while other open sessions have none queued yet
//! — those arriving within a short window (a session whose drafter is cheap sends its next block a
//! fraction of a millisecond after its last reply). A command that cannot join (another kind, a
//! session already in the group, a block that would overflow the batch) ends the group and is served
//! next, so every session's commands still run in the order it sent them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

/// The gather window, shared between the verifier thread and its handles so that a caller can
/// change it while the model stays loaded (the bench's lockstep runs, whose sessions never send at
/// the same time, set it to zero: waiting for them would only add to every step).
#[derive(Debug, Clone)]
pub(crate) struct GatherWindow(Arc<AtomicU64>);

impl GatherWindow {
    pub fn new(window: Duration) -> Self {
        let w = Self(Arc::new(AtomicU64::new(0)));
        w.set(window);
        w
    }

    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, window: Duration) {
        self.0.store(u64::try_from(window.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl From<Duration> for GatherWindow {
    fn from(window: Duration) -> Self {
        Self::new(window)
    }
}

/// What the gatherer needs to know of a command.
pub(crate) trait Joinable {
    /// The session and the number of tokens it would add to a shared batch, for a command that may
    /// join a group; `None` for any other.
    fn joins(&self) -> Option<(i32, usize)>;
}

/// Pulls commands from the channel, grouping joinable ones.
pub(crate) struct Gatherer<C> {
    rx: Receiver<C>,
    /// A command taken from the channel that could not join the last group.
    held: Option<C>,
    /// How long to wait for other open sessions' commands.
    window: GatherWindow,
}

/// What to serve next.
pub(crate) enum Next<C> {
    /// A command served on its own.
    One(C),
    /// Joinable commands of distinct sessions whose tokens fit one batch, in arrival order.
    Group(Vec<C>),
}

impl<C: Joinable> Gatherer<C> {
    pub fn new(rx: Receiver<C>, window: impl Into<GatherWindow>) -> Self {
        Self { rx, held: None, window: window.into() }
    }

    /// The next thing to serve, or `None` once every sender is gone. `open` is the number of open
    /// sessions (the most a group can hold) and `budget` the tokens one batch may hold.
    pub fn next(&mut self, open: usize, budget: usize) -> Option<Next<C>> {
        let first = match self.held.take() {
            Some(c) => c,
            None => self.rx.recv().ok()?,
        };
        let Some((seq, tokens)) = first.joins() else { return Some(Next::One(first)) };
        let mut seqs = vec![seq];
        let mut used = tokens;
        let mut group = vec![first];
        let deadline = Instant::now() + self.window.get();
        while seqs.len() < open && used < budget {
            let now = Instant::now();
            let next = if now < deadline {
                self.rx.recv_timeout(deadline - now).map_err(|e| matches!(e, RecvTimeoutError::Disconnected))
            } else {
                self.rx.try_recv().map_err(|e| matches!(e, TryRecvError::Disconnected))
            };
            let cmd = match next {
                Ok(c) => c,
                // Timed out, or every sender is gone: serve what was gathered.
                Err(_) => break,
            };
            match cmd.joins() {
                Some((s, n)) if !seqs.contains(&s) && used + n <= budget => {
                    seqs.push(s);
                    used += n;
                    group.push(cmd);
                }
                _ => {
                    self.held = Some(cmd);
                    break;
                }
            }
        }
        Some(if group.len() == 1 { Next::One(group.pop()?) } else { Next::Group(group) })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::mpsc::channel;

    use super::*;

    #[derive(Debug, PartialEq)]
    enum Cmd {
        Verify(i32, usize),
        Other,
    }

    impl Joinable for Cmd {
        fn joins(&self) -> Option<(i32, usize)> {
            match self {
                Cmd::Verify(s, n) => Some((*s, *n)),
                Cmd::Other => None,
            }
        }
    }

    fn group(next: Option<Next<Cmd>>) -> Vec<Cmd> {
        match next {
            Some(Next::Group(g)) => g,
            Some(Next::One(c)) => vec![c],
            None => Vec::new(),
        }
    }

    #[test]
    fn queued_verifications_of_distinct_sessions_share_a_batch() {
        let (tx, rx) = channel();
        for s in 0..3 {
            tx.send(Cmd::Verify(s, 5)).unwrap();
        }
        let mut g = Gatherer::new(rx, Duration::ZERO);
        assert_eq!(group(g.next(3, 512)), vec![Cmd::Verify(0, 5), Cmd::Verify(1, 5), Cmd::Verify(2, 5)]);
    }

    #[test]
    fn a_session_never_appears_twice_in_a_group_and_keeps_its_order() {
        let (tx, rx) = channel();
        tx.send(Cmd::Verify(0, 1)).unwrap();
        tx.send(Cmd::Verify(0, 2)).unwrap();
        tx.send(Cmd::Verify(1, 1)).unwrap();
        let mut g = Gatherer::new(rx, Duration::ZERO);
        assert_eq!(group(g.next(2, 512)), vec![Cmd::Verify(0, 1)]);
        assert_eq!(group(g.next(2, 512)), vec![Cmd::Verify(0, 2), Cmd::Verify(1, 1)]);
    }

    #[test]
    fn another_kind_of_command_ends_the_group_and_is_served_next() {
        let (tx, rx) = channel();
        tx.send(Cmd::Verify(0, 1)).unwrap();
        tx.send(Cmd::Other).unwrap();
        tx.send(Cmd::Verify(1, 1)).unwrap();
        let mut g = Gatherer::new(rx, Duration::ZERO);
        assert_eq!(group(g.next(2, 512)), vec![Cmd::Verify(0, 1)]);
        assert_eq!(group(g.next(2, 512)), vec![Cmd::Other]);
        assert_eq!(group(g.next(2, 512)), vec![Cmd::Verify(1, 1)]);
    }

    #[test]
    fn a_group_never_overflows_the_batch() {
        let (tx, rx) = channel();
        tx.send(Cmd::Verify(0, 300)).unwrap();
        tx.send(Cmd::Verify(1, 300)).unwrap();
        let mut g = Gatherer::new(rx, Duration::ZERO);
        assert_eq!(group(g.next(2, 512)), vec![Cmd::Verify(0, 300)]);
        assert_eq!(group(g.next(2, 512)), vec![Cmd::Verify(1, 300)]);
    }

    #[test]
    fn a_lone_session_is_served_without_waiting() {
        let (tx, rx) = channel();
        tx.send(Cmd::Verify(0, 1)).unwrap();
        let mut g = Gatherer::new(rx, Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(group(g.next(1, 512)), vec![Cmd::Verify(0, 1)]);
        // With one open session there is nobody to wait for; a minute's window would show.
        assert!(t.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn the_window_waits_for_a_late_session() {
        let (tx, rx) = channel();
        tx.send(Cmd::Verify(0, 1)).unwrap();
        let late = tx.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            late.send(Cmd::Verify(1, 1)).unwrap();
        });
        let mut g = Gatherer::new(rx, Duration::from_secs(30));
        assert_eq!(group(g.next(2, 512)), vec![Cmd::Verify(0, 1), Cmd::Verify(1, 1)]);
        sender.join().unwrap();
    }

    #[test]
    fn a_window_changed_through_a_shared_handle_applies_to_the_next_block() {
        let (tx, rx) = channel();
        let window = GatherWindow::new(Duration::from_secs(60));
        let mut g = Gatherer::new(rx, window.clone());
        window.set(Duration::ZERO);
        tx.send(Cmd::Verify(0, 1)).unwrap();
        let t = Instant::now();
        // Two sessions open but only one sends: the old minute would show, zero serves at once.
        assert_eq!(group(g.next(2, 512)), vec![Cmd::Verify(0, 1)]);
        assert!(t.elapsed() < Duration::from_secs(30));
        assert_eq!(window.get(), Duration::ZERO);
    }

    #[test]
    fn the_gatherer_ends_when_every_sender_is_gone() {
        let (tx, rx) = channel::<Cmd>();
        drop(tx);
        let mut g = Gatherer::new(rx, Duration::ZERO);
        assert!(g.next(1, 512).is_none());
    }
}
