//! Completion tracking: every item of a run records that it ran, so a run can prove that no item
//! was lost or run twice.
//!
//! Items capture a `&'static Tracker` rather than an `Arc`: cloning an `Arc` per item would put a
//! shared reference count on every submit and completion, a contended cache line that would
//! distort exactly the throughput being measured. Trackers therefore live for the whole process in
//! a small recycling pool ([`Lease`]); a tracker whose run ended badly (an item missing or run
//! twice) is never reused, because a straggler could still write into it later.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::sys::now_ns;

/// Completion counters are striped so concurrent workers do not fight over one cache line.
const STRIPES: usize = 64;

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

/// Per-item execution counts and start stamps for one run.
pub struct Tracker {
    runs: Box<[AtomicU32]>,
    stamps: Box<[AtomicU64]>,
    done: Box<[CachePadded<AtomicUsize>]>,
    stray: AtomicUsize,
    limit: AtomicUsize,
    /// Items not yet counted down by [`Tracker::hit_and_count_down`]; starts at the run's size.
    countdown: CachePadded<AtomicUsize>,
    /// Who sleeps until the countdown ends ([`Lease::wake_at_last`]).
    waiter: Mutex<Option<Thread>>,
}

impl Tracker {
    fn with_capacity(n: usize) -> Tracker {
        Tracker {
            runs: (0..n).map(|_| AtomicU32::new(0)).collect(),
            stamps: (0..n).map(|_| AtomicU64::new(0)).collect(),
            done: (0..STRIPES).map(|_| CachePadded::new(AtomicUsize::new(0))).collect(),
            stray: AtomicUsize::new(0),
            limit: AtomicUsize::new(n),
            countdown: CachePadded::new(AtomicUsize::new(n)),
            waiter: Mutex::new(None),
        }
    }

    fn capacity(&self) -> usize {
        self.runs.len()
    }

    fn reset(&self, n: usize) {
        for r in &self.runs[..n] {
            r.store(0, Ordering::Relaxed);
        }
        for s in &self.stamps[..n] {
            s.store(0, Ordering::Relaxed);
        }
        for d in self.done.iter() {
            d.store(0, Ordering::Relaxed);
        }
        self.stray.store(0, Ordering::Relaxed);
        self.limit.store(n, Ordering::Relaxed);
        self.countdown.store(n, Ordering::Relaxed);
        *self.waiter.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Records that item `i` ran. Call it last in the item.
    #[inline]
    pub fn hit(&self, i: usize) {
        match self.runs.get(i) {
            Some(r) if i < self.limit.load(Ordering::Relaxed) => {
                r.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.stray.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Release pairs with the Acquire in `completed`, so whoever sees the count also sees
        // the item's stamp and run count.
        STRIPE.with(|&s| self.done[s].fetch_add(1, Ordering::Release));
    }

    /// [`hit`](Tracker::hit), then counts the item down and wakes the run's waiter
    /// ([`Lease::wake_at_last`]) if it was the last. For runs of slow items only: the countdown
    /// is one counter shared by every item, a contended line that would distort a run of tiny
    /// ones.
    pub fn hit_and_count_down(&self, i: usize) {
        self.hit(i);
        // AcqRel chains every item's hit to the last decrement, which the unpark publishes.
        if self.countdown.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(t) = &*self.waiter.lock().unwrap_or_else(|e| e.into_inner()) {
                t.unpark();
            }
        }
    }

    /// Records the current time as item `i`'s stamp (its start or finish, as the scenario says).
    #[inline]
    pub fn stamp_now(&self, i: usize) {
        if let Some(s) = self.stamps.get(i) {
            s.store(now_ns(), Ordering::Relaxed);
        }
    }

    /// Item `i`'s stamp ([`crate::sys::now_ns`] units), 0 if it never stamped.
    pub fn stamp(&self, i: usize) -> u64 {
        self.stamps.get(i).map_or(0, |s| s.load(Ordering::Relaxed))
    }

    /// Executions recorded so far, across all items.
    pub fn completed(&self) -> usize {
        self.done.iter().map(|d| d.load(Ordering::Acquire)).sum()
    }
}

/// Lost and duplicated items of one or more runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Integrity {
    /// Items submitted.
    pub expected: usize,
    /// Items that ran exactly once (an item run twice is neither exact nor lost).
    pub exact: usize,
    /// Items that never ran.
    pub lost: usize,
    /// Extra executions: an item run three times counts two.
    pub duplicated: usize,
}

impl Integrity {
    /// True when every item ran exactly once.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.exact == self.expected
    }

    /// Adds another run's counts to these.
    pub fn absorb(&mut self, other: Integrity) {
        self.expected += other.expected;
        self.exact += other.exact;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
    }
}

static POOL: Mutex<Vec<&'static Tracker>> = Mutex::new(Vec::new());

/// Trackers of runs that ended clean, kept from `POOL` until [`audit_ended`] counts them again.
/// A run is verified as soon as it counted `n` completions, while its peer still lives: an item
/// the peer runs a second time may land after that, and would go unseen, or be counted against a
/// later run (another peer's) that reused the tracker.
static ENDED: Mutex<Vec<(&'static Tracker, usize)>> = Mutex::new(Vec::new());

/// Counts again the items of every run that ended since the last call, and returns the extra
/// executions found: items that ran again after their run was verified, and hits outside any
/// run's range. Call it once the peer whose runs they were is gone, so nothing more can land.
/// Clean trackers go back to the pool; the others are never reused.
pub fn audit_ended() -> usize {
    let ended = std::mem::take(&mut *ENDED.lock().unwrap_or_else(|e| e.into_inner()));
    let mut late = 0;
    for (tracker, n) in ended {
        let extra =
            tracker.runs[..n].iter().map(|r| r.load(Ordering::Acquire).saturating_sub(1) as usize).sum::<usize>()
                + tracker.stray.load(Ordering::Relaxed);
        if extra == 0 {
            POOL.lock().unwrap_or_else(|e| e.into_inner()).push(tracker);
        }
        late += extra;
    }
    late
}

/// Exclusive use of a process-lifetime [`Tracker`] for one run of `n` items.
pub struct Lease {
    tracker: &'static Tracker,
    n: usize,
    reusable: bool,
}

impl Lease {
    /// Leases a tracker for items `0..n`, all counters zero.
    pub fn new(n: usize) -> Lease {
        let recycled = {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            pool.iter().position(|t| t.capacity() >= n).map(|i| pool.swap_remove(i))
        };
        // Leaking is deliberate: items hold `&'static Tracker` (see the module docs); trackers are
        // recycled through POOL, so the process keeps only as many as runs ever overlapped.
        let tracker = recycled.unwrap_or_else(|| Box::leak(Box::new(Tracker::with_capacity(n))));
        tracker.reset(n);
        Lease { tracker, n, reusable: true }
    }

    /// The tracker, to be captured by items.
    pub fn tracker(&self) -> &'static Tracker {
        self.tracker
    }

    /// Number of items in this run.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True for a run of zero items.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Waits until `n` executions were recorded or `timeout` passed; true if they were.
    ///
    /// Checks every `poll`, parked in between: the waiting thread must not burn a CPU the peer
    /// could use. After [`Lease::wake_at_last`] the last item also ends the wait.
    pub fn wait(&self, timeout: Duration, poll: Duration) -> bool {
        self.wait_or(timeout, poll, || false)
    }

    /// Makes the calling thread the one [`Tracker::hit_and_count_down`] wakes at the last item;
    /// call it before any item can run, then [`Lease::wait`] on the same thread with a long
    /// `poll`: it sleeps until the last item, so a waiting harness takes no CPU time from the
    /// items. (Polling every 200 µs cost 10–12 ms of CPU per mixed run, about 10 µs per wake-up
    /// on this VM.) An item run twice ends the countdown early and a lost one never ends it; the
    /// wait then falls back to its polls, and `verify` reports them.
    pub fn wake_at_last(&self) {
        *self.tracker.waiter.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread::current());
    }

    /// As [`Lease::wait`], but also stops early once `give_up()` returns true (a submitter
    /// failed, so the missing items will never come).
    pub fn wait_or(&self, timeout: Duration, poll: Duration, give_up: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.tracker.completed() >= self.n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || give_up() {
                return false;
            }
            // Parked rather than asleep, so that a countdown's last item ends the wait at once.
            thread::park_timeout((deadline - now).min(poll));
        }
    }

    /// Counts lost and duplicated items. A dirty result retires the tracker for good.
    pub fn verify(&mut self) -> Integrity {
        let mut out = Integrity { expected: self.n, ..Integrity::default() };
        for r in &self.tracker.runs[..self.n] {
            match r.load(Ordering::Acquire) {
                0 => out.lost += 1,
                1 => out.exact += 1,
                k => out.duplicated += k as usize - 1,
            }
        }
        out.duplicated += self.tracker.stray.load(Ordering::Relaxed);
        if !out.is_clean() {
            self.reusable = false;
        }
        out
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // An incomplete run may still have items in flight that will write into this tracker; a
        // complete one (or one with extra runs since it was verified) waits for `audit_ended`.
        if self.reusable && self.tracker.completed() >= self.n {
            ENDED.lock().unwrap_or_else(|e| e.into_inner()).push((self.tracker, self.n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_run_is_clean() {
        let mut l = Lease::new(100);
        let t = l.tracker();
        for i in 0..100 {
            t.hit(i);
        }
        assert!(l.wait(Duration::from_secs(1), Duration::from_micros(50)));
        let v = l.verify();
        assert!(v.is_clean(), "{v:?}");
        assert_eq!(v.exact, 100);
    }

    #[test]
    fn lost_and_duplicated_items_are_counted() {
        let mut l = Lease::new(10);
        let t = l.tracker();
        for i in 0..9 {
            t.hit(i);
        }
        t.hit(3);
        t.hit(3);
        let v = l.verify();
        assert_eq!(v.lost, 1);
        assert_eq!(v.duplicated, 2);
        assert!(!v.is_clean());
    }

    #[test]
    fn the_last_item_wakes_the_waiter() {
        let l = Lease::new(3);
        l.wake_at_last();
        let t = l.tracker();
        let h = thread::spawn(move || {
            for i in 0..3 {
                thread::sleep(Duration::from_millis(20));
                t.hit_and_count_down(i);
            }
        });
        let start = Instant::now();
        // A recheck longer than the timeout: only the last item's unpark can end this in time.
        assert!(l.wait(Duration::from_secs(20), Duration::from_secs(60)));
        assert!(start.elapsed() < Duration::from_secs(10), "woken by the timeout, not the last item");
        h.join().unwrap();
        assert_eq!(l.tracker().completed(), 3);
    }

    #[test]
    fn a_missing_item_times_out_of_the_countdown_wait() {
        let l = Lease::new(2);
        l.wake_at_last();
        l.tracker().hit_and_count_down(0);
        assert!(!l.wait(Duration::from_millis(30), Duration::from_millis(5)));
    }

    #[test]
    fn a_missing_item_times_out() {
        let l = Lease::new(2);
        l.tracker().hit(0);
        assert!(!l.wait(Duration::from_millis(20), Duration::from_millis(1)));
    }

    #[test]
    fn out_of_range_hits_count_as_duplicates() {
        let mut l = Lease::new(1);
        let t = l.tracker();
        t.hit(0);
        t.hit(usize::MAX);
        let v = l.verify();
        assert_eq!(v.duplicated, 1);
    }

    #[test]
    fn a_duplicate_landing_after_the_run_was_verified_is_found_by_the_audit() {
        audit_ended();
        {
            let mut l = Lease::new(3);
            for i in 0..3 {
                l.tracker().hit(i);
            }
            assert!(l.verify().is_clean());
            // The peer runs item 1 again after the run was counted, before the lease goes.
            l.tracker().hit(1);
        }
        assert_eq!(audit_ended(), 1);
        {
            let mut l = Lease::new(2);
            l.tracker().hit(0);
            l.tracker().hit(1);
            assert!(l.verify().is_clean());
            let late = l.tracker();
            drop(l);
            late.hit(1);
        }
        assert_eq!(audit_ended(), 1, "the late duplicate is found once the peer is gone");
    }

    #[test]
    fn recycled_tracker_starts_from_zero() {
        {
            let mut l = Lease::new(4);
            for i in 0..4 {
                l.tracker().hit(i);
                l.tracker().stamp_now(i);
            }
            assert!(l.verify().is_clean());
        }
        assert_eq!(audit_ended(), 0);
        let l = Lease::new(4);
        assert_eq!(l.tracker().completed(), 0);
        assert_eq!(l.tracker().stamp(2), 0);
    }
}
