//! A pool's inbox: where queueing threads leave entries without taking the
//! pool lock. Whoever next locks the pool admits them (`Pool::admit`); the
//! protocol that keeps an entry from waiting unseen is in `README.md`
//! beside this file ("The inbox"). The pool's side of it (push, admit,
//! fence, the first push's wake-up decision) is here too.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Entry, Pool, PoolInner};

/// Entries queued to a pool and not yet admitted to its pwqs.
///
/// Its lock is a leaf held for a push or a swap, never across other work,
/// so a queueing thread waits at most for one of those, not for a worker's
/// accounting under the pool lock.
#[derive(Default)]
pub(crate) struct Inbox {
    entries: Mutex<Vec<Entry>>,
    /// Whether `entries` is non-empty. Changed only under `entries`' lock:
    /// set (SeqCst) by the push that finds it empty, cleared by `take`. Read
    /// without the lock by whoever must not miss an entry after lowering
    /// a count (a worker going idle or to sleep) and by the monitor.
    full: AtomicBool,
}

impl Inbox {
    fn entries(&self) -> MutexGuard<'_, Vec<Entry>> {
        // Nothing panics while holding it: poisoning is ignored.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `make` under the inbox lock and appends the entry it gives.
    /// Returns `None` if it gave none, else whether the inbox was empty,
    /// which makes the caller the one who must see that a worker will
    /// admit it.
    ///
    /// The lock doubles as the queueing side of `drain`'s fence
    /// (`barrier`): `make` runs the queue's refusal check, so a check that
    /// passed has pushed before any later `barrier` returns.
    pub(crate) fn push_with<E>(&self, make: impl FnOnce() -> Result<Option<Entry>, E>) -> Result<Option<bool>, E> {
        let mut entries = self.entries();
        let Some(entry) = make()? else { return Ok(None) };
        let was_empty = entries.is_empty();
        entries.push(entry);
        if was_empty {
            self.full.store(true, SeqCst);
        }
        Ok(Some(was_empty))
    }

    /// Waits until no thread is inside `push_with`: a queueing thread that
    /// passed its refusal check before the caller raised `draining` has
    /// pushed once this returns; a later one sees `draining`.
    pub(crate) fn barrier(&self) {
        drop(self.entries());
    }

    /// Whether an entry waits. SeqCst: read after lowering `nr_running` or
    /// `nr_waking`, it pairs with the pusher's store-then-read of those.
    pub(crate) fn is_empty(&self) -> bool {
        !self.full.load(SeqCst)
    }

    /// Shrinks the vector's capacity to `keep` entries (or its length).
    pub(crate) fn shrink_to(&self, keep: usize) {
        self.entries().shrink_to(keep);
    }

    /// The vector's capacity, for tests.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.entries().capacity()
    }

    /// Moves every waiting entry, oldest first, into `out` (which must be
    /// empty): a swap, so both vectors keep their capacity.
    pub(crate) fn take(&self, out: &mut Vec<Entry>) {
        debug_assert!(out.is_empty(), "taking the inbox into a non-empty vector");
        let mut entries = self.entries();
        self.full.store(false, SeqCst);
        std::mem::swap(&mut *entries, out);
    }
}

impl Pool {
    /// Admits the inbox's entries (`Pool::admit`).
    pub(super) fn admit_inbox(&self, inner: &mut PoolInner) {
        let mut entries = std::mem::take(&mut inner.admitted);
        self.inbox.take(&mut entries);
        // Entries parked for a queue-wide limit are counted once per run of
        // one pwq's entries rather than one by one: only this lock's holder
        // activates them, and it reads the limit again after counting.
        let mut parked: Option<(usize, usize)> = None;
        for mut entry in entries.drain(..) {
            entry.color = entry.pwq.wq.color.load(SeqCst);
            let slot = entry.pwq.slot;
            if !self.insert(inner, entry) {
                continue;
            }
            match &mut parked {
                Some((s, n)) if *s == slot => *n += 1,
                _ => {
                    if let Some((s, n)) = parked.replace((slot, 1)) {
                        self.count_parked(inner, s, n);
                    }
                }
            }
        }
        if let Some((s, n)) = parked {
            self.count_parked(inner, s, n);
        }
        inner.admitted = entries;
        let _ = self.publish_pending(inner);
    }

    /// Queues the entry `make` gives without the pool lock (`make` runs
    /// under the inbox's leaf lock: see `Inbox::push_with`). `Ok(Some(true))`
    /// if the inbox was empty: the caller must then call `kick_for_inbox`.
    pub(crate) fn push_inbox<E>(&self, make: impl FnOnce() -> Result<Option<Entry>, E>) -> Result<Option<bool>, E> {
        self.inbox.push_with(make)
    }

    /// Waits until every queueing thread that passed its refusal check has
    /// pushed (`Inbox::barrier`).
    pub(crate) fn inbox_barrier(&self) {
        self.inbox.barrier();
    }

    /// After the first entry went into an empty inbox: decides whether the
    /// pool needs another worker, as `kick` would under the lock. Later
    /// entries find it decided (README.md, "The inbox").
    pub(crate) fn kick_for_inbox(self: &Arc<Self>) {
        if self.need_more_worker_unlocked() {
            self.kick_and_unlock(self.lock());
        } else if self.nr_running() > 0 && self.rt.monitor.is_parked() {
            // Work waiting behind a running worker needs the monitor (the
            // worker may sleep unannounced). The inbox's `full` was raised
            // first: see the parking protocol in monitor.rs. Work for a
            // worker still waking does not: that worker pokes when it takes
            // an item and leaves more (`sync_pending`), and a monitor
            // ticking earlier could take the sleep it woke from for a
            // sleep in the item.
            self.rt.monitor.poke();
        }
    }
}
