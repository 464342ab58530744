//! Loom models of the handshakes that span more than one state word:
//! `queue` against `cancel_sync`, the `flush`/`cancel_sync` wait, the pool's
//! `nr_running` wake-up through its inbox, the monitor's parking, a worker's deferred
//! accounting against `flush`, two threads changing a worker's flags, and an
//! unbound queue's queue-wide limit across pods.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p wq-core --lib loom --release`.
//! Models (1) and (2) drive the real [`State`] (its atomics are loom's under
//! `--cfg loom`); the helpers around it follow `WorkShared` in
//! `work/mod.rs` step for step (plus the fences below), because `WorkShared`
//! itself uses `std` locks. Models (3) to (7) restate protocols whose real
//! code uses `std` types throughout (`pool/mod.rs`, `monitor.rs`,
//! `pool/batch.rs`, `worker/mod.rs`, `pool/pwq.rs`); each names the code it follows, and a
//! change to that code must be mirrored here.
//!
//! Loom treats `SeqCst` accesses as `AcqRel` (loom's README, issue #180),
//! which allows the store-buffering outcome that `SeqCst` forbids: both
//! sides of a "write mine, then read yours" handshake reading the old value.
//! The real code relies on `SeqCst` exactly there, so the models restate
//! that order with [`sc_order`], a `SeqCst` fence, which loom does model:
//! for this write-then-read pattern a `SeqCst` fence between the two
//! accesses forbids the same outcome as making both accesses `SeqCst`.
//! Without it loom reports lost wake-ups that cannot happen.
//!
//! Every model runs with a preemption bound of 3 so the whole file checks
//! in about a second; at that bound loom reported each protocol broken on
//! purpose (two steps swapped), and runs with `LOOM_MAX_PREEMPTIONS=5` pass.

use std::collections::VecDeque;

use loom::model::Builder;
use loom::sync::atomic::{fence, AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering::SeqCst};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use crate::work::{gen_of, gen_reached, retired_at_finish, Claim, Ended, NotQueued, State, PENDING, RUNNING, WAITERS};

/// Mask of the state bits that say an instance exists (queued or running).
const BUSY: u64 = PENDING | RUNNING;
/// The disable count's bits, as laid out in `work/state.rs`.
const DISABLE_BITS: u64 = 0xffff << 8;

/// Checks `f` with loom under a preemption bound: the bound keeps each model
/// to seconds, and every interleaving these protocols can get wrong needs
/// fewer preemptions than that. `LOOM_MAX_PREEMPTIONS`, if set, overrides it
/// (read by `Builder::new`) for a deeper run.
fn check(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = Builder::new();
    builder.preemption_bound.get_or_insert(preemptions);
    builder.check(f);
}

/// The order `SeqCst` gives the real code between a thread's write and its
/// next read of another location (see the module doc: loom needs it spelled
/// as a fence).
fn sc_order() {
    fence(SeqCst);
}

/// The waiting half of a work item: `WorkShared` (`work/mod.rs`) without the
/// function and the hand-off slot, over the real [`State`].
struct Item {
    state: State,
    /// Highest generation that finished running or was cancelled, and the
    /// count of finished runs: the real `Ended` word.
    ended: Ended,
    wait_lock: Mutex<()>,
    wait_cv: Condvar,
}

impl Item {
    fn new() -> Item {
        Item { state: State::new(), ended: Ended::new(), wait_lock: Mutex::new(()), wait_cv: Condvar::new() }
    }

    /// `WorkShared::retire`: change what waiters read, then notify.
    fn retire(&self, gen: u64) {
        self.ended.retire(gen);
        sc_order();
        self.notify_if_waited();
    }

    /// `WorkShared::retire_run`: the same for a run that ended.
    fn retire_run(&self, gen: u64) {
        self.ended.retire_run(gen);
        sc_order();
        self.notify_if_waited();
    }

    /// The generation `retired` has reached.
    fn retired(&self) -> u64 {
        Ended::retired_of(self.ended.load())
    }

    /// `WorkShared::notify_if_waited` + `notify_waiters`.
    fn notify_if_waited(&self) {
        if self.state.load() & WAITERS != 0 && self.state.take_waiters() {
            let _guard = self.wait_lock.lock().unwrap();
            self.wait_cv.notify_all();
        }
    }

    /// `WorkShared::wait_until`: announce, check, sleep — under the wait lock.
    fn wait_until(&self, done: impl Fn(&Item) -> bool) {
        let mut guard = self.wait_lock.lock().unwrap();
        loop {
            self.state.set_waiters();
            sc_order();
            if done(self) {
                return;
            }
            guard = self.wait_cv.wait(guard).unwrap();
        }
    }

    /// `WorkShared::cancel`: returns the cancelled generation.
    fn cancel(&self) -> Option<u64> {
        let cancelled = self.state.try_clear_pending()?;
        if let Some(gen) = cancelled.to_retire() {
            self.retire(gen);
        }
        Some(cancelled.gen())
    }

    /// `WorkShared::flush`: waits for the pending instance it sees and for
    /// the run in progress, if any.
    fn flush(&self) {
        let s = self.state.load();
        if s & BUSY == 0 {
            return;
        }
        let pending = (s & PENDING != 0).then(|| gen_of(s));
        let runs_before = (s & RUNNING != 0).then(|| Ended::runs_of(self.ended.load()));
        self.wait_until(|w| {
            let ended = w.ended.load();
            pending.is_none_or(|p| Ended::has_retired(ended, p))
                && runs_before.is_none_or(|n| Ended::runs_of(ended) != n || w.state.load() & RUNNING == 0)
        });
    }

    /// `WorkShared::cancel_sync_with` (no timer to disarm). `before_enable`
    /// runs at the point where the real call returns its guarantee: queueing
    /// is still refused, nothing is pending or running.
    fn cancel_sync(&self, before_enable: impl FnOnce(&Item)) -> Option<u64> {
        self.state.disable();
        let cancelled = self.cancel();
        self.wait_until(|w| w.state.load() & RUNNING == 0);
        before_enable(self);
        self.state.enable();
        cancelled
    }

    /// What a worker does with a dequeued entry of generation `gen`
    /// (`worker::run_work` + `take_next_instance`, one worker, so no
    /// hand-off): returns whether the instance ran.
    fn process(&self, gen: u64, on_start: impl FnOnce(u64)) -> bool {
        match self.state.claim(gen) {
            Claim::Run => {
                on_start(gen);
                let ended = self.state.try_finish().expect("nobody parked an instance: HANDOFF stays clear");
                self.retire_run(retired_at_finish(ended));
                true
            }
            Claim::Stale => false,
            Claim::Busy => panic!("one worker at a time: the item cannot be running elsewhere"),
        }
    }
}

/// Drains `list`, processing each entry; returns the generations that ran.
fn drain(item: &Item, list: &Mutex<VecDeque<u64>>, on_start: impl Fn(u64)) -> Vec<u64> {
    let mut ran = Vec::new();
    loop {
        let Some(gen) = list.lock().unwrap().pop_front() else { return ran };
        if item.process(gen, &on_start) {
            ran.push(gen);
        }
    }
}

/// (1) `queue` racing `cancel_sync` while a worker runs the item's queue.
///
/// The item starts queued (generation 1). A worker drains the worklist; a
/// producer queues once more; the main thread runs `cancel_sync`. Checked:
/// when `cancel_sync` is about to return, nothing is pending or running (so
/// a `queue` that slipped in while disabled would be caught); no instance
/// starts after that point unless it was queued after `enable`; and in the
/// end every accepted generation either ran once or was cancelled, never
/// both, never neither.
#[test]
fn loom_queue_vs_cancel_sync() {
    check(3, || {
        let item = Arc::new(Item::new());
        let list = Arc::new(Mutex::new(VecDeque::new()));
        let g1 = item.state.try_mark_pending().unwrap();
        list.lock().unwrap().push_back(g1);
        // Generation seen by cancel_sync at its return point, plus one (0: not yet).
        let returned_at = Arc::new(AtomicU64::new(0));

        let worker = {
            let (item, list, returned_at) = (item.clone(), list.clone(), returned_at.clone());
            thread::spawn(move || {
                drain(&item, &list, |gen| {
                    let seen = returned_at.load(SeqCst);
                    assert!(seen == 0 || gen >= seen, "generation {gen} started after cancel_sync returned");
                })
            })
        };
        let producer = {
            let (item, list) = (item.clone(), list.clone());
            thread::spawn(move || match item.state.try_mark_pending() {
                Ok(gen) => {
                    // `Workqueue::queue_work`: mark pending, then insert under the pool lock.
                    list.lock().unwrap().push_back(gen);
                    Some(gen)
                }
                Err(NotQueued::Pending | NotQueued::Disabled) => None,
            })
        };

        let cancelled = item.cancel_sync(|w| {
            let s = w.state.load();
            assert_eq!(s & BUSY, 0, "cancel_sync returns with the item pending or running: {s:#x}");
            returned_at.store(gen_of(s) + 1, SeqCst);
        });

        let mut ran = worker.join().unwrap();
        let queued = producer.join().unwrap();
        // Whatever is still listed is run by some later worker.
        ran.extend(drain(&item, &list, |_| {}));

        let accepted: Vec<u64> = std::iter::once(g1).chain(queued).collect();
        for &gen in &accepted {
            let runs = ran.iter().filter(|&&g| g == gen).count();
            let was_cancelled = usize::from(cancelled == Some(gen));
            assert_eq!(runs + was_cancelled, 1, "generation {gen}: ran {runs} times, cancelled {was_cancelled}");
        }
        let s = item.state.load();
        assert_eq!(s & (BUSY | DISABLE_BITS), 0, "item left busy or disabled: {s:#x}");
        assert!(item.retired() >= *accepted.iter().max().unwrap());
    });
}

/// (2) The waiter handshake of `flush` and `cancel_sync` (`work/README.md`,
/// "Waiting"): a flusher waits for `retired >= gen`, a `cancel_sync` waits
/// for `RUNNING` to clear, and the worker finishing the run clears `RUNNING`,
/// raises `retired`, then takes `WAITERS` and notifies under the wait lock.
/// A lost wake-up leaves a waiter asleep for ever, which loom reports as a
/// deadlock; both waiters must also see the run over when they return.
#[test]
fn loom_flush_and_cancel_sync_wake_up() {
    check(3, || {
        let item = Arc::new(Item::new());
        let gen = item.state.try_mark_pending().unwrap();
        assert_eq!(item.state.claim(gen), Claim::Run);

        let flusher = {
            let item = item.clone();
            thread::spawn(move || {
                item.wait_until(|w| Ended::has_retired(w.ended.load(), gen));
                assert_eq!(item.state.load() & RUNNING, 0, "flush returned while the run it waited for runs");
            })
        };
        let canceller = {
            let item = item.clone();
            thread::spawn(move || {
                let cancelled = item.cancel_sync(|w| assert_eq!(w.state.load() & BUSY, 0));
                assert_eq!(cancelled, None, "the instance had already started");
            })
        };

        // The worker ends the run: `take_next_instance` then `retire_run`.
        let ended = item.state.try_finish().unwrap();
        item.retire_run(retired_at_finish(ended));

        flusher.join().unwrap();
        canceller.join().unwrap();
    });
}

/// (2c) `flush` of a pending instance against a newer instance queued and
/// cancelled while the first one runs (`Cancelled::to_retire`). The cancel
/// finds the item running and leaves its generation to the run's end;
/// retiring it at once would raise `retired` past the running generation,
/// and the flusher, waiting for `retired >= gen`, would return while the
/// run it waited for is still going.
#[test]
fn loom_flush_outlasts_a_newer_instance_cancelled_during_the_run() {
    check(3, || {
        let item = Arc::new(Item::new());
        let gen = item.state.try_mark_pending().unwrap();
        let run_over = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (item, run_over) = (item.clone(), run_over.clone());
            thread::spawn(move || {
                item.flush();
                // Only the first instance ever runs: nothing may be running now.
                assert!(run_over.load(SeqCst), "flush returned before generation {gen} ran");
                assert_eq!(item.state.load() & RUNNING, 0, "flush returned while the run of generation {gen} went on");
            })
        };
        let worker = {
            let (item, run_over) = (item.clone(), run_over.clone());
            thread::spawn(move || {
                assert!(item.process(gen, |_| run_over.store(true, SeqCst)));
            })
        };
        // Queued (once the worker took the first instance) and cancelled
        // again. The yield lets loom schedule the worker's claim first
        // without spending a preemption on it.
        thread::yield_now();
        if item.state.try_mark_pending().is_ok() {
            assert!(item.cancel().is_some(), "nobody else cancels");
        }
        worker.join().unwrap();
        flusher.join().unwrap();
        assert_eq!(item.state.load() & BUSY, 0);
    });
}

/// (2b) A run ending with an instance handed to its worker
/// (`worker::take_next_instance`), against `cancel_sync` of that
/// instance. The worker retires the ended run before it claims the parked
/// instance (so a `flush` never takes the ended run for the claimed one);
/// if the cancel wins the claim, the worker clears `RUNNING` with no
/// retirement after it, and must still wake the `cancel_sync` waiting for
/// that. Without the wake-up in `take_next_instance`'s `Ok` arm, loom
/// reports the waiter asleep for ever.
#[test]
fn loom_handoff_finish_vs_cancel_sync() {
    check(3, || {
        let item = Arc::new(Item::new());
        let slot = Arc::new(Mutex::new(Vec::new()));
        let g1 = item.state.try_mark_pending().unwrap();
        assert_eq!(item.state.claim(g1), Claim::Run);
        // Queued while g1 runs, dequeued by another worker and parked.
        let g2 = item.state.try_mark_pending().unwrap();
        assert_eq!(item.state.claim(g2), Claim::Busy);
        {
            let mut parked = slot.lock().unwrap();
            assert!(item.state.try_set_handoff());
            parked.push(g2);
        }
        let canceller = {
            let item = item.clone();
            thread::spawn(move || {
                let cancelled = item.cancel_sync(|w| assert_eq!(w.state.load() & RUNNING, 0));
                // Either it cancelled g2, or g2 had been claimed and ran.
                assert!(cancelled.is_none_or(|g| g == g2));
            })
        };
        // The runner of g1: `take_next_instance`, then g2's own end if claimed.
        let mut retired = false;
        let mut gen = g1;
        loop {
            match item.state.try_finish() {
                Ok(ended) => {
                    assert!(gen_reached(retired_at_finish(ended), gen), "a run retires at least its own generation");
                    if retired {
                        item.retire(retired_at_finish(ended));
                    } else {
                        item.retire_run(retired_at_finish(ended));
                    }
                    break;
                }
                Err(_) => {
                    let parked = {
                        let mut parked = slot.lock().unwrap();
                        item.state.clear_handoff();
                        std::mem::take(&mut *parked)
                    };
                    if !retired && parked.iter().any(|&g| item.state.is_live(g)) {
                        item.retire_run(retired_at_finish(item.state.load()));
                        retired = true;
                    }
                    if let Some(next) = parked.into_iter().find(|&g| item.state.claim_parked(g)) {
                        // g2 runs on this worker; its own end follows.
                        gen = next;
                        retired = false;
                    }
                }
            }
        }
        canceller.join().unwrap();
        assert_eq!(item.state.load() & (BUSY | DISABLE_BITS), 0);
    });
}

/// The pool state model (3) reads: `Pool`'s counts and inbox, and the
/// `PoolInner` fields behind its lock.
mod wake {
    use super::*;

    pub(super) struct Inner {
        pub(super) worklist: usize,
        pub(super) idle: usize,
        pub(super) nr_waking: usize,
        pub(super) want_worker: bool,
    }

    pub(super) struct Pool {
        pub(super) nr_running: AtomicIsize,
        /// `Pool::nr_waking`, the lock-free mirror of `Inner::nr_waking`.
        nr_waking: AtomicUsize,
        /// `Inbox`: its entries (a count) and its `full` flag.
        inbox: Mutex<usize>,
        full: AtomicBool,
        pub(super) inner: Mutex<Inner>,
    }

    impl Pool {
        pub(super) fn new(nr_running: isize, idle: usize) -> Pool {
            Pool {
                nr_running: AtomicIsize::new(nr_running),
                nr_waking: AtomicUsize::new(0),
                inbox: Mutex::new(0),
                full: AtomicBool::new(false),
                inner: Mutex::new(Inner { worklist: 0, idle, nr_waking: 0, want_worker: false }),
            }
        }

        /// `Pool::lock` with its `admit`.
        pub(super) fn lock(&self) -> loom::sync::MutexGuard<'_, Inner> {
            let mut inner = self.inner.lock().unwrap();
            self.admit(&mut inner);
            inner
        }

        /// `Pool::admit` over `Inbox::is_empty` / `Inbox::take`.
        pub(super) fn admit(&self, inner: &mut Inner) {
            if !self.full.load(SeqCst) {
                return;
            }
            let mut entries = self.inbox.lock().unwrap();
            self.full.store(false, SeqCst);
            inner.worklist += std::mem::take(&mut *entries);
        }

        fn need_more_worker(&self, inner: &Inner) -> bool {
            inner.worklist > 0 && (self.nr_running.load(SeqCst).max(0) as usize) + inner.nr_waking < 1
        }

        /// `Pool::kick` with a bound pool's target of 1.
        pub(super) fn kick(&self, inner: &mut Inner) {
            if !self.need_more_worker(inner) {
                return;
            }
            if inner.idle > 0 {
                inner.idle -= 1;
                inner.nr_waking += 1;
                self.nr_waking.store(inner.nr_waking, SeqCst);
            } else {
                inner.want_worker = true;
            }
        }

        /// `Workqueue::queue_with`'s unlocked path: `Inbox::push`, then
        /// `Pool::kick_for_inbox` if the inbox was empty.
        pub(super) fn queue(&self) {
            let first = {
                let mut entries = self.inbox.lock().unwrap();
                *entries += 1;
                if *entries == 1 {
                    self.full.store(true, SeqCst);
                }
                *entries == 1
            };
            if !first {
                return;
            }
            sc_order();
            let running = self.nr_running.load(SeqCst).max(0) as usize;
            if running + self.nr_waking.load(SeqCst) < 1 {
                let mut inner = self.lock();
                self.kick(&mut inner);
            }
        }

        /// Work waits (admitted or not) and somebody will take it: a
        /// worker runs or is waking (both admit before they stop), or the
        /// manager has a creation request.
        pub(super) fn assert_served(&self, queued: usize) {
            let inner = self.inner.lock().unwrap();
            let inbox = *self.inbox.lock().unwrap();
            assert_eq!(inner.worklist + inbox, queued, "an entry vanished");
            let served = self.nr_running.load(SeqCst) > 0 || inner.nr_waking > 0 || inner.want_worker;
            assert!(served, "work pending, nobody running, nobody woken, no worker requested");
        }
    }
}

/// (3a) The pool's "no lost wake-up" (`pool/README.md`, "The inbox" and
/// "No lost wake-up"): a worker running an item goes to sleep while two
/// producers queue without the pool lock.
///
/// Follows `WorkerShared::set_flags` (lower `nr_running`, SeqCst, no lock)
/// then `Pool::worker_stopped_running` (lock, which admits, then `kick`)
/// on the sleeper's side, and `Pool::push_inbox` + `Pool::kick_for_inbox`
/// on the producers'. Checked once all are done: every entry is admitted
/// or in the inbox, and has a worker running, one woken, or a creation
/// request at the manager; a burst wakes exactly one idle worker.
#[test]
fn loom_nr_running_wake_up() {
    check(3, || {
        // One worker runs an item; one more sleeps on the idle list.
        let pool = Arc::new(wake::Pool::new(1, 1));
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                thread::spawn(move || pool.queue())
            })
            .collect();

        // The running worker blocks (`BlockingGuard::enter` or the monitor's
        // `check_worker`): count first, look at the work second.
        let prev = pool.nr_running.fetch_sub(1, SeqCst);
        assert_eq!(prev, 1);
        sc_order();
        {
            let mut inner = pool.lock();
            pool.kick(&mut inner);
        }

        for p in producers {
            p.join().unwrap();
        }
        pool.assert_served(2);
        assert_eq!(pool.inner.lock().unwrap().nr_waking, 1, "a burst of queueing wakes exactly one idle worker");
    });
}

/// (3b) The same handshake with the worker going idle rather than to
/// sleep (`worker::run`: `set_flags(IDLE)` with the pool locked, then the
/// loop's `admit` and `need_more_worker`): if it finds nothing it joins
/// the idle list, and a producer that saw it counted as running must not
/// leave its entry there unseen.
#[test]
fn loom_worker_going_idle_sees_the_inbox() {
    check(3, || {
        let pool = Arc::new(wake::Pool::new(1, 0));
        let producer = {
            let pool = pool.clone();
            thread::spawn(move || pool.queue())
        };

        {
            let mut inner = pool.lock();
            // `set_flags(IDLE)`, holding the lock.
            pool.nr_running.fetch_sub(1, SeqCst);
            sc_order();
            pool.admit(&mut inner);
            if inner.worklist > 0 {
                // `need_more_worker` holds: it runs again (`clr_flags(IDLE)`).
                pool.nr_running.fetch_add(1, SeqCst);
            } else {
                // `idle_wait`: on the idle list until kicked.
                inner.idle += 1;
            }
        }

        producer.join().unwrap();
        pool.assert_served(1);
    });
}

/// (4) The monitor's parking (`monitor.rs`, `Monitor::park` and
/// `Monitor::poke`, with `Pool::publish_pending`): the monitor sets `parked`
/// then re-checks `nr_pending`; a producer raises `nr_pending` then clears
/// `parked` and unparks. Pending work must never wait on a parked monitor:
/// the monitor either sees the work before parking or is woken, which loom
/// checks by reporting a monitor parked for ever as a deadlock.
#[test]
fn loom_monitor_park_and_poke() {
    check(3, || {
        let parked = Arc::new(AtomicBool::new(false));
        let nr_pending = Arc::new(AtomicUsize::new(0));
        let monitor = thread::current();

        let producer = {
            let (parked, nr_pending) = (parked.clone(), nr_pending.clone());
            thread::spawn(move || {
                // `publish_pending`: the empty -> non-empty edge pokes.
                let was_empty = nr_pending.swap(1, SeqCst) == 0;
                sc_order();
                if was_empty && parked.load(SeqCst) && parked.swap(false, SeqCst) {
                    monitor.unpark();
                }
            })
        };

        // The monitor found nothing pending and lingered: it parks.
        parked.store(true, SeqCst);
        sc_order();
        if nr_pending.load(SeqCst) > 0 {
            parked.store(false, SeqCst);
        } else {
            while parked.load(SeqCst) {
                thread::park();
            }
        }
        // Back in its loop, the monitor's next tick finds the work.
        assert_eq!(nr_pending.load(SeqCst), 1, "the monitor left its park without the pending work");
        producer.join().unwrap();
    });
}

/// (5) Deferred accounting against `flush` (`pool/batch.rs`): a worker
/// defers a finished item's record to its batch, then reads the queue's
/// `flushers` under the batch lock (`WorkerShared::next_stashed`); a
/// flusher raises `flushers`, settles every batch under the pool lock
/// (`Pool::settle`), then waits for the record (`flush_colors`). The
/// worker may never come back for its record (it blocks on the flusher),
/// so the flusher must get it either from its settle or from the worker
/// applying it at once; a flusher waiting for ever is a loom deadlock.
#[test]
fn loom_deferred_accounting_meets_flush() {
    struct Shared {
        flushers: AtomicUsize,
        /// `Batch::done`: records not yet applied.
        batch: Mutex<usize>,
        /// The pwq's applied records, under the pool lock.
        pool: Mutex<usize>,
        flush_lock: Mutex<()>,
        flush_cv: Condvar,
    }
    impl Shared {
        /// `Pool::settle` (and the worker's own locked path), then
        /// `FollowUps::run`'s `notify_flushers`.
        fn settle(&self) {
            let retired = {
                let mut applied = self.pool.lock().unwrap();
                let n = std::mem::take(&mut *self.batch.lock().unwrap());
                *applied += n;
                n > 0
            };
            if retired && self.flushers.load(SeqCst) > 0 {
                let _guard = self.flush_lock.lock().unwrap();
                self.flush_cv.notify_all();
            }
        }
    }

    check(3, || {
        let s = Arc::new(Shared {
            flushers: AtomicUsize::new(0),
            batch: Mutex::new(0),
            pool: Mutex::new(0),
            flush_lock: Mutex::new(()),
            flush_cv: Condvar::new(),
        });
        let worker = {
            let s = s.clone();
            thread::spawn(move || {
                let flushing = {
                    let mut batch = s.batch.lock().unwrap();
                    *batch += 1;
                    s.flushers.load(SeqCst) > 0
                };
                if flushing {
                    s.settle();
                }
                // Otherwise it runs its next stashed item, which here blocks
                // on the flusher: the record stays in the batch.
            })
        };

        s.flushers.fetch_add(1, SeqCst);
        s.settle();
        let mut guard = s.flush_lock.lock().unwrap();
        while *s.pool.lock().unwrap() < 1 {
            guard = s.flush_cv.wait(guard).unwrap();
        }
        drop(guard);
        s.flushers.fetch_sub(1, SeqCst);
        worker.join().unwrap();
    });
}

/// (6) Two threads changing one worker's flags (`worker/mod.rs`,
/// `WorkerShared::set_flags` / `clr_flags` and their `transition` lock):
/// the worker ends a CPU-intensive item (clears the bit: running again,
/// `nr_running` up) while the monitor marks it a hog (sets the bit: not
/// running, `nr_running` down). A third thread samples the count, as
/// `need_more_worker` and `Pool::insert` do. Checked: no sample is below
/// zero, and at the end the count matches the worker's flags. Without the
/// lock, loom finds the monitor's decrement landing before the worker's
/// increment: a sample of -1.
#[test]
fn loom_flags_transition_keeps_nr_running_non_negative() {
    const NOT_RUNNING: u64 = 1;
    struct Worker {
        flags: AtomicU64,
        transition: Mutex<()>,
        nr_running: AtomicIsize,
    }
    impl Worker {
        fn set(&self) {
            let _t = self.transition.lock().unwrap();
            if self.flags.fetch_or(NOT_RUNNING, SeqCst) & NOT_RUNNING == 0 {
                self.nr_running.fetch_sub(1, SeqCst);
            }
        }
        fn clr(&self) {
            let _t = self.transition.lock().unwrap();
            if self.flags.fetch_and(!NOT_RUNNING, SeqCst) & NOT_RUNNING != 0 {
                self.nr_running.fetch_add(1, SeqCst);
            }
        }
    }
    check(3, || {
        // Running a CPU-intensive item: flagged, not counted.
        let w = Arc::new(Worker {
            flags: AtomicU64::new(NOT_RUNNING),
            transition: Mutex::new(()),
            nr_running: AtomicIsize::new(0),
        });
        let monitor = {
            let w = w.clone();
            thread::spawn(move || w.set())
        };
        let reader = {
            let w = w.clone();
            thread::spawn(move || {
                for _ in 0..2 {
                    assert!(w.nr_running.load(SeqCst) >= 0, "nr_running read below zero");
                }
            })
        };
        w.clr();
        monitor.join().unwrap();
        reader.join().unwrap();
        let running = w.flags.load(SeqCst) & NOT_RUNNING == 0;
        assert_eq!(w.nr_running.load(SeqCst), isize::from(running));
    });
}

/// (7) An unbound queue's queue-wide `max_active` across two pods
/// (`pool/pwq.rs`: `try_claim`, `place`, `count_waiting`, `release`,
/// `activate_into`, `others_may_wait`; `pool/mod.rs`: `insert`, `count_parked`, `complete`;
/// `WqCore::activate_pods`). The limit is 1 and pod B's entry holds it.
/// A thread queues an entry in pod A while B's worker completes: B frees
/// the slot, activates its own (none), then looks at the limit and
/// `waiting` to decide whether to activate the other pods; A's claim fails, and A parks the entry, counts it in
/// `waiting`, then reads the limit again and activates if it has room.
/// Checked: once both are done, no entry waits while the limit has room.
/// Without A's second look, loom finds A's claim failing before B's
/// release and B reading `waiting` before A counts it: the entry waits for
/// ever (`a_queue_wide_slot_freed_in_another_pod_while_an_entry_parks_lets_it_in`
/// in `tests/affinity.rs` is the same race on the real code).
#[test]
fn loom_queue_wide_limit_lets_a_parked_entry_in() {
    const MAX: usize = 1;
    #[derive(Default)]
    struct Pod {
        nr_active: usize,
        inactive: usize,
    }
    struct Queue {
        active: AtomicUsize,
        waiting: AtomicUsize,
        pods: [Mutex<Pod>; 2],
    }
    impl Queue {
        /// `Limit::acquire_up_to`.
        fn acquire_up_to(&self, want: usize) -> usize {
            let mut cur = self.active.load(SeqCst);
            loop {
                let took = want.min(MAX - cur);
                if took == 0 {
                    return 0;
                }
                match self.active.compare_exchange(cur, cur + took, SeqCst, SeqCst) {
                    Ok(_) => return took,
                    Err(now) => cur = now,
                }
            }
        }
        fn try_acquire(&self) -> bool {
            self.acquire_up_to(1) == 1
        }
        /// `PwqState::activate_into` with a limit.
        fn activate(&self, pod: &mut Pod) {
            let took = self.acquire_up_to(pod.inactive);
            if took > 0 {
                self.waiting.fetch_sub(took, SeqCst);
                pod.inactive -= took;
                pod.nr_active += took;
            }
        }
    }
    check(3, || {
        let q = Arc::new(Queue {
            active: AtomicUsize::new(1),
            waiting: AtomicUsize::new(0),
            pods: [Mutex::new(Pod::default()), Mutex::new(Pod { nr_active: 1, inactive: 0 })],
        });
        let completer = {
            let q = q.clone();
            thread::spawn(move || {
                // `Pool::complete` on pod B, then `FollowUps::run`.
                let other_pods = {
                    let mut b = q.pods[1].lock().unwrap();
                    b.nr_active -= 1;
                    q.active.fetch_sub(1, SeqCst);
                    q.activate(&mut b);
                    sc_order();
                    // `PwqState::others_may_wait`.
                    q.active.load(SeqCst) < MAX && q.waiting.load(SeqCst) > 0
                };
                if other_pods {
                    for pod in &q.pods {
                        q.activate(&mut pod.lock().unwrap());
                    }
                }
            })
        };
        {
            // `Pool::insert` on pod A.
            let mut a = q.pods[0].lock().unwrap();
            if q.try_acquire() {
                a.nr_active += 1;
            } else {
                a.inactive += 1;
                q.waiting.fetch_add(1, SeqCst);
                sc_order();
                if q.active.load(SeqCst) < MAX {
                    q.activate(&mut a);
                }
            }
        }
        completer.join().unwrap();
        let a = q.pods[0].lock().unwrap();
        assert!(
            a.inactive == 0 || q.active.load(SeqCst) == MAX,
            "an entry waits in pod A while the queue-wide limit has room"
        );
    });
}
