//! Worker batches: a busy worker takes tiny items a few at a time, so the
//! queueing thread and the worker stop fighting over the pool lock for
//! every item. The protocol and why it loses nothing are in `README.md`
//! beside this file ("Batches").

use std::collections::VecDeque;
use std::sync::{Arc, MutexGuard};

use super::{Done, Entry, Pool, PoolInner};
use crate::worker::{Charge, WorkerShared};
use crate::workqueue::WqCore;

/// The most entries a worker holds at once: the one it runs plus a stash.
/// Enough to take the pool lock once per two dozen tiny items (16 gave
/// unbound queues 6–17% less throughput: their lock crosses CPUs); few
/// enough that a stash never hides much work from the other workers, and
/// a sleeping worker's stash is taken back anyway.
pub(crate) const MAX_BATCH: usize = 32;

/// What a worker took from its pool's worklist and has not started, and
/// the accounting of finished entries it has not applied yet.
///
/// Who touches it: the owning worker between two items (pushes records
/// and closed windows' charges, pops the next entry), holding only this
/// lock; and, with the pool lock taken first, whoever takes it back: the
/// worker's own locked path, the thread that marks the worker not running
/// (`worker_stopped_running`), and the monitor finding it asleep
/// (`reclaim`), which take everything; accounting readers
/// (`Pool::settle`), which take only the records and charges.
///
/// Invariant: `done` is non-empty only while `stash` is (the owner may
/// break it only while it holds this lock, or on its way to the pool
/// lock), so deferred accounting always has a non-empty stash beside it,
/// which keeps the pool pending and the monitor watching the worker.
#[derive(Default)]
pub(crate) struct Batch {
    /// Entries taken from the front of the worklist, in worklist order.
    stash: VecDeque<Entry>,
    /// Finished entries of this pool whose `Pool::complete` is deferred.
    done: Vec<Done>,
    /// CPU time of closed windows (`worker/meter.rs`), not yet added to
    /// their pwqs. Statistics only: unlike `done` it may outlive the stash,
    /// and whoever applies `done` applies these too.
    charges: Vec<Charge>,
    /// Counted in the pool's `nr_stashes`. Changed only with the pool lock
    /// held, so the count matches the stashes the pool lock has seen.
    counted: bool,
}

/// What applying deferred accounting left to do with the pool unlocked:
/// queues with a flush colour retired or other pods to activate.
#[must_use = "follow-ups must run once the pool is unlocked"]
#[derive(Default)]
pub(crate) struct FollowUps(Vec<(Arc<WqCore>, bool, bool)>);

impl FollowUps {
    /// Notifies flushers and activates other pods. Call with no pool locked:
    /// flushers take pool locks under their flush lock.
    pub(crate) fn run(self) {
        for (wq, retired, other_pods) in self.0 {
            if retired {
                wq.notify_flushers();
            }
            if other_pods {
                wq.activate_pods();
            }
        }
    }

    /// Whether nothing is left to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Pool {
    /// Applies `records` under the pool lock.
    pub(crate) fn apply(&self, inner: &mut PoolInner, records: impl IntoIterator<Item = Done>, out: &mut FollowUps) {
        for d in records {
            let c = self.complete(inner, &d);
            if c.retired || c.other_pods {
                out.0.push((d.link.wq.clone(), c.retired, c.other_pods));
            }
        }
    }

    /// Adds the CPU time of closed windows to their pwqs.
    pub(crate) fn apply_charges(&self, inner: &mut PoolInner, charges: impl IntoIterator<Item = Charge>) {
        for (link, used) in charges {
            debug_assert!(std::ptr::eq(Arc::as_ptr(&link.pool), self), "a charge for another pool's pwq");
            // A charge keeps the link, not the slot: a pwq freed since
            // (its queue gone, its stats retired) takes no more time.
            let pwq = inner.pwqs_slot(link.slot).filter(|p| p.link.as_ref().is_some_and(|l| Arc::ptr_eq(l, &link)));
            if let Some(pwq) = pwq {
                pwq.cpu_time += used;
            }
        }
    }

    /// Moves up to `MAX_BATCH - 1` more entries from the worklist into
    /// `me`'s stash, after the entry it is about to run; says whether it
    /// moved any. An unbound pool's other running workers keep a fair
    /// share: at most `len / target`.
    pub(crate) fn stash_more(&self, inner: &mut PoolInner, me: &WorkerShared) -> bool {
        let len = inner.worklist.len();
        let n = (len / self.target).min(MAX_BATCH - 1);
        if n == 0 {
            return false;
        }
        let mut b = me.batch();
        debug_assert!(b.stash.is_empty() && b.done.is_empty(), "stashing over an unreturned batch");
        b.stash.extend(inner.worklist.drain(..n));
        if !b.counted {
            b.counted = true;
            inner.nr_stashes += 1;
        }
        true
    }

    /// Takes `w`'s batch back: its stash returns to the front of the
    /// worklist in order, and its deferred accounting is applied. Safe at
    /// any time: the owner finds an empty stash and goes to the pool lock.
    pub(crate) fn reclaim(&self, inner: &mut PoolInner, w: &WorkerShared, out: &mut FollowUps) {
        // Drained under the batch lock (pool, then batch: the lock order)
        // rather than taken, so the batch keeps its capacity and a busy
        // worker's next stash and records do not allocate.
        let mut b = w.batch();
        if b.counted {
            b.counted = false;
            inner.nr_stashes -= 1;
        }
        for e in b.stash.drain(..).rev() {
            inner.worklist.push_front(e);
        }
        self.apply_charges(inner, b.charges.drain(..));
        self.apply(inner, b.done.drain(..), out);
        drop(b);
        self.sync_pending(inner);
    }

    /// Applies every worker's deferred accounting, for a reader that needs
    /// exact counts (flush, drain, freeze, stats). Stashes stay where they are.
    pub(crate) fn settle(&self) {
        let mut out = FollowUps::default();
        {
            let mut inner = self.lock();
            // `workers` is a leaf lock: copy the list rather than lock
            // batches under it.
            let workers = self.workers().clone();
            for w in &workers {
                let mut b = w.batch();
                self.apply_charges(&mut inner, b.charges.drain(..));
                self.apply(&mut inner, b.done.drain(..), &mut out);
            }
        }
        out.run();
    }

    /// Locks the pool and applies settled records, for readers.
    pub(crate) fn lock_settled(&self) -> MutexGuard<'_, PoolInner> {
        self.settle();
        self.lock()
    }
}

impl WorkerShared {
    /// Whether the worker holds stashed entries.
    pub(crate) fn has_stash(&self) -> bool {
        !self.batch().stash.is_empty()
    }

    /// Leaves the CPU time of a closed window for the next apply.
    pub(crate) fn push_charge(&self, charge: Charge) {
        self.batch().charges.push(charge);
    }

    /// Between two items: defers the accounting in `done` to the batch and
    /// takes the next stashed entry. `None` sends the worker to its locked
    /// path instead: the stash holds at most one entry (the last one runs
    /// with no deferred accounting, see `Batch`), a flusher waits on one of
    /// the records, or more workers run than the pool wants.
    pub(crate) fn next_stashed(&self, pool: &Pool, done: &mut Vec<Done>) -> Option<Entry> {
        let mut b = self.batch();
        if b.stash.len() < 2 {
            return None;
        }
        // Read after the push and under the batch lock: a flusher raises
        // `flushers` before it settles (locking this batch), so either it
        // finds these records or this sees it and applies them now.
        let mut flushing = false;
        for d in done.drain(..) {
            let link = d.link;
            d.push_into(&mut b.done);
            flushing |= link.wq.has_flushers();
        }
        if flushing || pool.nr_running() > pool.target as isize {
            return None;
        }
        let next = b.stash.pop_front();
        debug_assert!(!b.stash.is_empty(), "deferred records left without a stash beside them");
        next
    }
}
