//! Spreading an unbound pool's items over its CPUs.
//!
//! The scheduler balances an unbound pool's workers badly when their items
//! sleep. A sleeping thread's timer fires on the CPU it slept on, and with
//! every CPU of the cache domain busy the wake-up stays there: the search
//! for an idle CPU is skipped when the domain is nearly fully used
//! (`SIS_UTIL`). A CPU that goes idle for a moment pulls nothing either,
//! because a task that ran in the last 0.5 ms is "cache hot"
//! (`sched_migration_cost`) and is not moved to a newly idle CPU. So the
//! workers split into one group per CPU, each item coming back where it
//! slept, and the groups need not be equal: in traces of the mixed
//! workload one CPU held 13 workers and the other 7, and that one idled in
//! 100–500 µs gaps, 50 ms per run, while runnable workers queued on the
//! other (BENCHMARKS.md, session 13).
//!
//! The kernel's own workers have no such problem: an unbound work item
//! runs wherever the scheduler finds room. Here each item that starts
//! counts itself on its CPU until it ends, sleeping or not. An item about
//! to start on a CPU with at least `IMBALANCE` more items in flight than
//! another CPU of the pool moves there first, by pinning the worker to
//! that CPU (which migrates it before the call returns) and widening its
//! affinity again, as a pod's repatriation does. The items in flight on a
//! CPU are the ones that will want it again when they wake, so evening
//! them out evens out the load the scheduler will not.
//!
//! An item compares its CPU with two others picked at random, rather than
//! with all of them: three loads per item on any number of CPUs, where a
//! scan would read a cache line per CPU of the pod. Two random choices
//! still even the counts out (one does not: with every item arriving on
//! one CPU of eight, a single random comparison left the counts 6 apart
//! on average in a simulation, two left them 3 apart), and on two or three
//! CPUs the two are all the others anyway.
//!
//! The counts are a heuristic: relaxed, and the scheduler may still move a
//! worker after its item started. Each item's count goes back to the CPU
//! it was added to (`Placed` remembers it), so they never drift. Tiny items
//! (a worker's stash, `batch.rs`) are not counted: they end before they
//! could sleep, and the shared counters would cost them a cache line each.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crossbeam_utils::CachePadded;

use crate::sys;

/// An item moves to another CPU when its own has this many more items in
/// flight than that one. With 1, two CPUs one item apart would trade items
/// back and forth (and read no better in the mixed workload: 8 pairs,
/// BENCHMARKS.md session 13); 2 still catches a lasting lopsided split.
const IMBALANCE: usize = 2;

/// Items in flight per CPU of one unbound pool.
pub(crate) struct Spread {
    /// The CPUs items are spread over: the pool's pod, or all its CPUs.
    cpus: Vec<usize>,
    /// `counts[i]` is the number of items that started on `cpus[i]` and
    /// have not ended. Each in a cache line of its own: items on
    /// different CPUs change different counts.
    counts: Box<[CachePadded<AtomicUsize>]>,
}

/// An item counted on one CPU of its pool; the count drops with it.
pub(crate) struct Placed<'a> {
    spread: &'a Spread,
    index: usize,
}

impl Drop for Placed<'_> {
    fn drop(&mut self) {
        let prev = self.spread.counts[self.index].fetch_sub(1, Relaxed);
        debug_assert!(prev > 0, "item count of CPU {} underflowed", self.spread.cpus[self.index]);
    }
}

impl Spread {
    /// Counts for items over `cpus`; `None` if there is nothing to spread
    /// over (fewer than two CPUs).
    pub(crate) fn new(cpus: &[usize]) -> Option<Spread> {
        (cpus.len() > 1).then(|| Spread {
            cpus: cpus.to_vec(),
            counts: cpus.iter().map(|_| CachePadded::new(AtomicUsize::new(0))).collect(),
        })
    }

    /// An item starts on the calling worker: moves the worker to the less
    /// busy of two other CPUs of the spread, picked at random, if its own
    /// is `IMBALANCE` items ahead of it, then counts the item where it
    /// runs. `widen` is the worker's whole affinity, restored after the
    /// move. `None` if the worker runs outside the spread CPUs (a pod's
    /// worker that repatriation could not move).
    pub(crate) fn place(&self, widen: &[usize]) -> Option<Placed<'_>> {
        let here = self.cpus.iter().position(|&c| Some(c) == sys::current_cpu())?;
        let index = self.choose(here, self.two_others(here));
        if index != here && sys::move_current(&[self.cpus[index]], widen).is_err() {
            return Some(self.count(here));
        }
        Some(self.count(index))
    }

    /// Two indices other than `here`, at random; distinct when there are
    /// two to pick.
    fn two_others(&self, here: usize) -> [usize; 2] {
        let n = self.cpus.len();
        // Offsets from `here` in 1..n: never `here` itself.
        let a = 1 + next_random() % (n - 1);
        let b = if n > 2 { 1 + (a + next_random() % (n - 2)) % (n - 1) } else { a };
        [(here + a) % n, (here + b) % n]
    }

    /// Where an item that would start on `cpus[here]` should start: on the
    /// less busy of `others` if that has `IMBALANCE` fewer items in flight,
    /// else here.
    fn choose(&self, here: usize, others: [usize; 2]) -> usize {
        let [a, b] = others.map(|i| (self.counts[i].load(Relaxed), i));
        let (fewest, other) = a.min(b);
        if self.counts[here].load(Relaxed) >= fewest + IMBALANCE {
            other
        } else {
            here
        }
    }

    fn count(&self, index: usize) -> Placed<'_> {
        self.counts[index].fetch_add(1, Relaxed);
        Placed { spread: self, index }
    }

    /// Items in flight per CPU, for tests.
    #[cfg(test)]
    fn in_flight(&self) -> Vec<usize> {
        self.counts.iter().map(|c| c.load(Relaxed)).collect()
    }
}

/// A per-thread xorshift: which other CPU an item compares with needs no
/// quality, only no shared state.
fn next_random() -> usize {
    thread_local! {
        static STATE: Cell<u32> = Cell::new(sys::gettid().unsigned_abs() | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        s.set(x);
        x as usize
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cpu_is_nothing_to_spread() {
        assert!(Spread::new(&[3]).is_none());
        assert!(Spread::new(&[]).is_none());
    }

    #[test]
    fn an_item_moves_only_when_its_cpu_is_two_ahead_of_the_other() {
        let s = Spread::new(&[0, 1, 2]).unwrap();
        let a = s.count(0);
        assert_eq!(s.choose(0, [1, 1]), 0, "one ahead stays");
        let b = s.count(0);
        assert_eq!(s.choose(0, [1, 1]), 1, "two ahead moves");
        assert_eq!(s.choose(1, [0, 0]), 1, "the less busy CPU keeps its items");
        let c = s.count(1);
        assert_eq!(s.choose(0, [1, 2]), 2, "two ahead of the less busy of the two moves there");
        let d = s.count(2);
        assert_eq!(s.in_flight(), vec![2, 1, 1]);
        assert_eq!(s.choose(0, [1, 2]), 0, "one ahead of both stays");
        drop((a, c));
        assert_eq!(s.in_flight(), vec![1, 0, 1]);
        drop((b, d));
        assert_eq!(s.in_flight(), vec![0, 0, 0], "every count goes back with its item");
    }

    #[test]
    fn sequential_starts_on_one_cpu_end_up_spread() {
        // Every item starts on CPU 0 and compares with CPU 1, as place()
        // does on two CPUs.
        let s = Spread::new(&[0, 1]).unwrap();
        assert_eq!(s.two_others(0), [1, 1]);
        let placed: Vec<Placed<'_>> = (0..8).map(|_| s.count(s.choose(0, s.two_others(0)))).collect();
        let n = s.in_flight();
        assert!(n[0].abs_diff(n[1]) <= IMBALANCE, "{n:?}");
        assert!(n[1] >= 3, "{n:?}");
        drop(placed);
        assert_eq!(s.in_flight(), vec![0, 0]);
    }

    #[test]
    fn two_random_choices_even_out_many_cpus() {
        // 64 items all arriving on CPU 0 of eight. In 100,000 simulated
        // runs the counts ended at most 8 apart (3 in most); without
        // moving they would be 64 apart.
        let s = Spread::new(&[0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
        let placed: Vec<Placed<'_>> = (0..64).map(|_| s.count(s.choose(0, s.two_others(0)))).collect();
        let n = s.in_flight();
        let (min, max) = (*n.iter().min().unwrap(), *n.iter().max().unwrap());
        assert!(max - min <= 10, "{n:?}");
        drop(placed);
    }

    #[test]
    fn the_two_others_are_never_this_one() {
        for cpus in 2..7 {
            let s = Spread::new(&(0..cpus).collect::<Vec<_>>()).unwrap();
            for here in 0..cpus {
                for _ in 0..100 {
                    let [a, b] = s.two_others(here);
                    assert!(a != here && b != here && a < cpus && b < cpus, "{cpus} CPUs, here {here}: {a}, {b}");
                    assert!(cpus == 2 || a != b, "{cpus} CPUs: {a} twice");
                }
            }
        }
    }
}
