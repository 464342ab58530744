//! The state word of a work item: which transitions exist and who makes them.
//!
//! See `README.md` beside this file for the protocol as a whole.
//!
//! ```text
//!  63                 24 23         8  7    4   3       2        1        0
//! +---------------------+------------+-------+-------+--------+--------+---------+
//! |        gen          |  disable   |   -   |WAITERS|HANDOFF |RUNNING | PENDING |
//! +---------------------+------------+-------+-------+--------+--------+---------+
//! ```

use crate::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// Queued and not yet started (the kernel's `WORK_STRUCT_PENDING`).
///
/// Set by whoever queues the item (only if clear and `disable == 0`); cleared
/// by the worker that starts it (so the function may requeue itself) or by a
/// cancel. Invariant: at most one queued instance — the one whose entry
/// carries the current `gen` — can ever be started.
pub(crate) const PENDING: u64 = 1 << 0;
/// A worker is running the function. Set and cleared only by that worker.
pub(crate) const RUNNING: u64 = 1 << 1;
/// Another worker dequeued an instance while this one ran and parked it in
/// the item's hand-off slot. Set and cleared only with the slot lock held;
/// `RUNNING` may not be cleared while it is set.
pub(crate) const HANDOFF: u64 = 1 << 2;
/// Someone sleeps in `flush` or `cancel_sync` on this item; whoever retires a
/// generation or clears `RUNNING` must notify.
pub(crate) const WAITERS: u64 = 1 << 3;
/// One `cancel_sync` in progress; `queue` fails while the count is non-zero.
pub(crate) const DISABLE_ONE: u64 = 1 << 8;
const DISABLE_MASK: u64 = 0xffff << 8;
/// One generation: bumped each time the item becomes pending.
pub(crate) const GEN_ONE: u64 = 1 << 24;
/// A generation is 40 bits, and wraps: after 2^40 queueings of one item,
/// two days of an item requeueing itself as fast as a CPU runs it.
const GEN_MASK: u64 = (1 << 40) - 1;

/// The generation number stored in a state word.
pub(crate) fn gen_of(state: u64) -> u64 {
    state >> 24
}

/// Whether generation `a` is `b` or comes after it. Generations wrap, so
/// they compare as serial numbers (RFC 1982): `a` is at or after `b` when
/// `a - b`, modulo 2^40, is below 2^39. The generations compared are
/// never that far apart: `retired` follows every run's end, and a pending
/// generation is at most one ahead of the newest that ran or was cancelled.
pub(crate) fn gen_reached(a: u64, b: u64) -> bool {
    a.wrapping_sub(b) & GEN_MASK < 1 << 39
}

/// A pending instance that `cancel` took back: the state word just before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cancelled(u64);

impl Cancelled {
    /// The cancelled generation.
    pub(crate) fn gen(self) -> u64 {
        gen_of(self.0)
    }

    /// The generation the canceller retires itself, if any. While a run is
    /// in progress, that run's end retires the cancelled generation
    /// ([`retired_at_finish`]): retiring it now would raise `retired` past
    /// the running generation, and tell a `flush` waiting for that run
    /// that it ended.
    pub(crate) fn to_retire(self) -> Option<u64> {
        (self.0 & RUNNING == 0).then(|| self.gen())
    }
}

/// The generation a run retires up to when it ends with the state word at
/// `s` (the word its `try_finish` cleared `RUNNING` in, or read just before
/// claiming a handed-off instance): every generation below the pending one,
/// or the newest if none is pending. Those are the run's own and newer ones
/// cancelled while it ran, which their cancels left to it; no other can
/// have started, since `RUNNING` was set throughout.
pub(crate) fn retired_at_finish(s: u64) -> u64 {
    gen_of(s).wrapping_sub(s & PENDING) & GEN_MASK
}

/// Why `try_mark_pending` refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NotQueued {
    /// Already pending: the caller's queue is a no-op (`queue` returns false).
    Pending,
    /// A `cancel_sync` is in progress.
    Disabled,
}

/// What a worker that dequeued an entry must do with it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Run it: `PENDING` was cleared and `RUNNING` set by this worker.
    Run,
    /// The entry was cancelled or superseded: complete it without running.
    Stale,
    /// It runs on another worker right now: park the entry in the hand-off slot.
    Busy,
}

/// The atomic state word of one work item.
#[derive(Debug)]
pub(crate) struct State(AtomicU64);

impl State {
    pub(crate) fn new() -> State {
        State(AtomicU64::new(0))
    }

    pub(crate) fn load(&self) -> u64 {
        self.0.load(SeqCst)
    }

    /// `queue`: PENDING 0 -> 1 and a new generation. Returns that generation.
    pub(crate) fn try_mark_pending(&self) -> Result<u64, NotQueued> {
        let mut cur = self.load();
        loop {
            if cur & PENDING != 0 {
                return Err(NotQueued::Pending);
            }
            if cur & DISABLE_MASK != 0 {
                return Err(NotQueued::Disabled);
            }
            let next = (cur | PENDING).wrapping_add(GEN_ONE);
            match self.0.compare_exchange_weak(cur, next, SeqCst, SeqCst) {
                Ok(_) => return Ok(gen_of(next)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// A worker dequeued the entry of generation `gen`: start it if it is
    /// still the live instance and nobody else runs the item.
    pub(crate) fn claim(&self, gen: u64) -> Claim {
        let mut cur = self.load();
        loop {
            if cur & PENDING == 0 || gen_of(cur) != gen {
                return Claim::Stale;
            }
            if cur & RUNNING != 0 {
                return Claim::Busy;
            }
            let next = (cur & !PENDING) | RUNNING;
            match self.0.compare_exchange_weak(cur, next, SeqCst, SeqCst) {
                Ok(_) => return Claim::Run,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Slot lock held: mark that an entry is being parked for the runner.
    /// Fails (returns false) if the runner already finished.
    pub(crate) fn try_set_handoff(&self) -> bool {
        let mut cur = self.load();
        loop {
            if cur & RUNNING == 0 {
                return false;
            }
            match self.0.compare_exchange_weak(cur, cur | HANDOFF, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Slot lock held, slot emptied: the runner took every parked entry.
    pub(crate) fn clear_handoff(&self) {
        self.0.fetch_and(!HANDOFF, SeqCst);
    }

    /// The runner finished one execution. Returns `Err(state)` when
    /// `HANDOFF` is set (the runner must empty the slot first), otherwise
    /// clears `RUNNING` and returns the state before.
    pub(crate) fn try_finish(&self) -> Result<u64, u64> {
        let mut cur = self.load();
        loop {
            debug_assert!(cur & RUNNING != 0, "finishing a work item that is not running");
            if cur & HANDOFF != 0 {
                return Err(cur);
            }
            match self.0.compare_exchange_weak(cur, cur & !RUNNING, SeqCst, SeqCst) {
                Ok(_) => return Ok(cur),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Whether generation `gen` is the pending instance: the one a claim
    /// would start. Once false for a `gen`, it stays false (`gen` only
    /// grows, and `PENDING` of a generation never comes back).
    pub(crate) fn is_live(&self, gen: u64) -> bool {
        let s = self.load();
        s & PENDING != 0 && gen_of(s) == gen
    }

    /// The runner took a parked entry of generation `gen`: rerun it in place
    /// (PENDING -> 0, RUNNING stays) if it is the live instance.
    pub(crate) fn claim_parked(&self, gen: u64) -> bool {
        let mut cur = self.load();
        loop {
            if cur & PENDING == 0 || gen_of(cur) != gen {
                return false;
            }
            match self.0.compare_exchange_weak(cur, cur & !PENDING, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// `cancel`: PENDING 1 -> 0. Returns the state word before, whose
    /// generation is the cancelled one (see [`Cancelled`]).
    pub(crate) fn try_clear_pending(&self) -> Option<Cancelled> {
        let mut cur = self.load();
        loop {
            if cur & PENDING == 0 {
                return None;
            }
            match self.0.compare_exchange_weak(cur, cur & !PENDING, SeqCst, SeqCst) {
                Ok(_) => return Some(Cancelled(cur)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// `cancel_sync` begins: queueing fails until [`State::enable`].
    pub(crate) fn disable(&self) {
        let prev = self.0.fetch_add(DISABLE_ONE, SeqCst);
        debug_assert!(prev & DISABLE_MASK != DISABLE_MASK, "disable count overflow");
    }

    /// `cancel_sync` ends.
    pub(crate) fn enable(&self) {
        let prev = self.0.fetch_sub(DISABLE_ONE, SeqCst);
        debug_assert!(prev & DISABLE_MASK != 0, "enable without disable");
    }

    /// A waiter announces itself before checking its condition.
    pub(crate) fn set_waiters(&self) -> u64 {
        self.0.fetch_or(WAITERS, SeqCst) | WAITERS
    }

    /// The notifier takes the waiters flag; returns whether it was set.
    pub(crate) fn take_waiters(&self) -> bool {
        self.0.fetch_and(!WAITERS, SeqCst) & WAITERS != 0
    }
}

#[cfg(all(test, not(loom)))]
impl State {
    /// An idle item whose last instance was generation `gen`, for tests of
    /// the wrap.
    pub(crate) fn idle_at(gen: u64) -> State {
        State(AtomicU64::new(gen << 24))
    }
}

/// Bits of [`Ended`] that count finished runs.
const RUNS_MASK: u64 = (1 << 24) - 1;

/// How far a work item's instances have got, in one word so that a worker
/// ends a run with one atomic step instead of two:
///
/// ```text
///  63                                24 23                 0
/// +-------------------------------------+--------------------+
/// |              retired                |  runs (mod 2^24)   |
/// +-------------------------------------+--------------------+
/// ```
///
/// - `retired`: the highest generation that finished running or was
///   cancelled, raised only once every generation up to it has: a cancel
///   made while a run is in progress is left to that run's end
///   ([`Cancelled::to_retire`]). Only moves forward; `flush` of generation
///   `g` waits for `retired` to reach `g` ([`gen_reached`]: generations
///   wrap). A generation is 40 bits (the state word's `gen`), so it fits.
/// - `runs`: runs that finished, counted modulo 2^24. Only ever stepped by
///   one; a `flush` that saw the item running waits for it to change (or
///   for `RUNNING` to clear). A waiter that slept through exactly 2^24 runs
///   would see no change and wait for the next run to end, which a run in
///   progress always does: a wrap delays that `flush`, never hangs it.
#[derive(Debug)]
pub(crate) struct Ended(AtomicU64);

impl Ended {
    pub(crate) fn new() -> Ended {
        Ended(AtomicU64::new(0))
    }

    /// The word as it is now; read it with [`Ended::retired_of`] and
    /// [`Ended::runs_of`].
    pub(crate) fn load(&self) -> u64 {
        self.0.load(SeqCst)
    }

    pub(crate) fn retired_of(word: u64) -> u64 {
        word >> 24
    }

    /// Generation `gen` and all before it over, for tests of the wrap.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn retired_at(gen: u64) -> Ended {
        Ended(AtomicU64::new(gen << 24))
    }

    pub(crate) fn runs_of(word: u64) -> u64 {
        word & RUNS_MASK
    }

    /// Whether generation `gen` is over in the word `word`.
    pub(crate) fn has_retired(word: u64, gen: u64) -> bool {
        gen_reached(Ended::retired_of(word), gen)
    }

    /// Generation `gen` was cancelled: raise `retired` to it.
    pub(crate) fn retire(&self, gen: u64) {
        debug_assert!(gen <= GEN_MASK, "generation {gen} does not fit");
        let raise = |w: u64| (!gen_reached(Ended::retired_of(w), gen)).then_some(gen << 24 | w & RUNS_MASK);
        let _ = self.0.fetch_update(SeqCst, SeqCst, raise);
    }

    /// A run of generation `gen` ended: count it and raise `retired` to it.
    pub(crate) fn retire_run(&self, gen: u64) {
        debug_assert!(gen <= GEN_MASK, "generation {gen} does not fit");
        let step = |w: u64| {
            let retired = Ended::retired_of(w);
            let retired = if gen_reached(retired, gen) { retired } else { gen };
            Some(retired << 24 | (w + 1) & RUNS_MASK)
        };
        let _ = self.0.fetch_update(SeqCst, SeqCst, step);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn ended_keeps_the_highest_generation_and_counts_runs() {
        let e = Ended::new();
        e.retire_run(3);
        e.retire(2);
        assert_eq!((Ended::retired_of(e.load()), Ended::runs_of(e.load())), (3, 1));
        e.retire(5);
        e.retire_run(4);
        assert_eq!((Ended::retired_of(e.load()), Ended::runs_of(e.load())), (5, 2));
        let top = GEN_MASK;
        let e = Ended::retired_at(top - 10);
        e.retire(top);
        assert_eq!(Ended::retired_of(e.load()), top, "a 40-bit generation fits");
        e.retire_run(0);
        assert_eq!(Ended::retired_of(e.load()), 0, "generation 0 follows the last one");
        e.retire(top);
        assert_eq!(Ended::retired_of(e.load()), 0, "and stays ahead of it");
        assert!(gen_reached(0, top) && !gen_reached(top, 0) && gen_reached(top, top));
    }

    #[test]
    fn ended_runs_wrap_without_touching_retired() {
        let e = Ended::new();
        e.retire(7);
        e.0.store(7 << 24 | RUNS_MASK, SeqCst);
        e.retire_run(6);
        assert_eq!((Ended::retired_of(e.load()), Ended::runs_of(e.load())), (7, 0));
    }

    #[test]
    fn queue_is_refused_while_pending_and_while_disabled() {
        let s = State::new();
        assert_eq!(s.try_mark_pending(), Ok(1));
        assert_eq!(s.try_mark_pending(), Err(NotQueued::Pending));
        assert_eq!(s.try_clear_pending().map(Cancelled::gen), Some(1));
        s.disable();
        assert_eq!(s.try_mark_pending(), Err(NotQueued::Disabled));
        s.enable();
        assert_eq!(s.try_mark_pending(), Ok(2));
    }

    #[test]
    fn generations_run_and_retire_across_the_wrap() {
        let last = (1 << 40) - 1;
        let (s, e) = (State::idle_at(last - 1), Ended::retired_at(last - 1));
        for _ in 0..4 {
            let g = s.try_mark_pending().unwrap();
            assert!(!Ended::has_retired(e.load(), g), "generation {g} retired before it ran");
            assert_eq!(s.claim(g), Claim::Run);
            // Queued again and cancelled while it runs: left to the run's end.
            let newer = s.try_mark_pending().unwrap();
            assert_eq!(s.try_clear_pending().unwrap().to_retire(), None);
            let ended = s.try_finish().unwrap();
            e.retire_run(retired_at_finish(ended));
            assert!(Ended::has_retired(e.load(), newer), "generation {newer} not retired after the run");
        }
        assert!(gen_of(s.load()) < 8, "the generations wrapped");
    }

    #[test]
    fn a_cancel_during_a_run_is_retired_by_the_runs_end() {
        let s = State::new();
        let g1 = s.try_mark_pending().unwrap();
        let idle = s.try_clear_pending().unwrap();
        assert_eq!(idle.to_retire(), Some(g1), "nothing runs: the canceller retires");
        let g2 = s.try_mark_pending().unwrap();
        assert_eq!(s.claim(g2), Claim::Run);
        let g3 = s.try_mark_pending().unwrap();
        let during = s.try_clear_pending().unwrap();
        assert_eq!((during.gen(), during.to_retire()), (g3, None), "g2 still runs");
        let g4 = s.try_mark_pending().unwrap();
        assert_eq!(retired_at_finish(s.load()), g3, "g4 is pending: up to the one below it");
        assert_eq!(s.try_clear_pending().unwrap().to_retire(), None);
        let ended = s.try_finish().unwrap();
        assert_eq!(retired_at_finish(ended), g4, "nothing pending: up to the newest");
    }

    #[test]
    fn only_the_live_generation_can_be_claimed() {
        let s = State::new();
        let g1 = s.try_mark_pending().unwrap();
        s.try_clear_pending();
        let g2 = s.try_mark_pending().unwrap();
        assert_eq!(s.claim(g1), Claim::Stale);
        assert_eq!(s.claim(g2), Claim::Run);
        // Requeued while running: a second worker must hand it off.
        let g3 = s.try_mark_pending().unwrap();
        assert_eq!(s.claim(g3), Claim::Busy);
        assert!(s.try_set_handoff());
        assert!(s.try_finish().is_err(), "RUNNING must stay while HANDOFF is set");
        s.clear_handoff();
        assert!(s.claim_parked(g3));
        assert!(s.try_finish().is_ok());
        assert_eq!(s.load() & (RUNNING | PENDING | HANDOFF), 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Two workers race to claim one queued instance while it is requeued:
    /// it never runs on both at once, and the live generation runs exactly once.
    #[test]
    fn loom_claim_is_exclusive() {
        loom::model(|| {
            let s = Arc::new(State::new());
            let g = s.try_mark_pending().unwrap();
            let s2 = s.clone();
            let t = thread::spawn(move || s2.claim(g) == Claim::Run);
            let mine = s.claim(g) == Claim::Run;
            let theirs = t.join().unwrap();
            assert!(mine ^ theirs, "exactly one worker starts the instance");
        });
    }

    /// `cancel` racing a worker's claim: the instance either runs or is
    /// cancelled, never both, never neither.
    #[test]
    fn loom_cancel_vs_claim() {
        loom::model(|| {
            let s = Arc::new(State::new());
            let g = s.try_mark_pending().unwrap();
            let s2 = s.clone();
            let t = thread::spawn(move || s2.try_clear_pending().is_some());
            let ran = s.claim(g) == Claim::Run;
            let cancelled = t.join().unwrap();
            assert!(ran ^ cancelled);
        });
    }

    /// The hand-off handshake: a parked entry is never stranded — either the
    /// dequeuer sees the runner finished (and runs it itself) or the runner
    /// sees HANDOFF and reruns it.
    #[test]
    fn loom_handoff_is_never_lost() {
        loom::model(|| {
            let s = Arc::new(State::new());
            let g1 = s.try_mark_pending().unwrap();
            assert_eq!(s.claim(g1), Claim::Run);
            let g2 = s.try_mark_pending().unwrap();
            let slot = Arc::new(loom::sync::Mutex::new(false));
            let (s2, slot2) = (s.clone(), slot.clone());
            // Dequeuer of g2.
            let t = thread::spawn(move || loop {
                match s2.claim(g2) {
                    Claim::Run => return 1,
                    Claim::Stale => return 0,
                    Claim::Busy => {
                        let mut parked = slot2.lock().unwrap();
                        if s2.try_set_handoff() {
                            *parked = true;
                            return 0;
                        }
                    }
                }
            });
            // Runner of g1 finishing.
            let mut reruns = 0;
            loop {
                match s.try_finish() {
                    Ok(_) => break,
                    Err(_) => {
                        let mut parked = slot.lock().unwrap();
                        assert!(std::mem::take(&mut *parked));
                        s.clear_handoff();
                        drop(parked);
                        if s.claim_parked(g2) {
                            reruns += 1;
                        }
                    }
                }
            }
            let dequeuer_ran = t.join().unwrap();
            if dequeuer_ran == 1 {
                assert!(s.try_finish().is_ok());
            }
            assert_eq!(reruns + dequeuer_ran, 1, "g2 runs exactly once");
        });
    }
}
