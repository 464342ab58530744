//! Models (3a), (3b), (4) and (5): the pool's wake-up through its inbox, the
//! monitor's parking, and a worker's deferred accounting against `flush`.

use loom::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering::SeqCst};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use super::{check, sc_order};

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
