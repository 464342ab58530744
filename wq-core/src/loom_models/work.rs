//! Models (1), (2), (2b) and (2c): a work item's state word, `queue` against
//! `cancel_sync`, and the waits of `flush` and `cancel_sync`.

use std::collections::VecDeque;

use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use crate::work::{gen_of, gen_reached, retired_at_finish, Claim, Ended, NotQueued, State, PENDING, RUNNING, WAITERS};

use super::{check, sc_order};

/// Mask of the state bits that say an instance exists (queued or running).
const BUSY: u64 = PENDING | RUNNING;
/// The disable count's bits, as laid out in `work/state.rs`.
const DISABLE_BITS: u64 = 0xffff << 8;

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
