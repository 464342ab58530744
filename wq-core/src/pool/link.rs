//! How a queued entry names its pwq without a reference count.
//!
//! Entries used to hold an `Arc<PwqLink>` each: a count raised by the
//! queueing thread and dropped by the worker, so one cache line crossed
//! between their CPUs twice per item, and under the inbox lock at that:
//! on an unbound pool, a third of a tiny item's queueing cost.
//!
//! An entry holds a [`PwqRef`] instead, a plain pointer that the *pool*
//! keeps valid:
//!
//! 1. The pwq's slot owns an `Arc<PwqLink>` (`PwqState::link`) from
//!    `alloc_pwq` until the slot is freed.
//! 2. A slot is freed only under the pool lock, in `Pool::free_pwqs`, and
//!    only once (a) the queue let go of it (its last [`PwqHandle`](super::PwqHandle)
//!    dropped) and (b) nothing of it is in flight, counted after the inbox
//!    was admitted. The order matters: `admit` takes the list of released
//!    slots *before* it reads the inbox. A handle drops after the pushes
//!    made through it, and both the push and the release go through a
//!    lock (the inbox's, then the release list's) that the admitting
//!    thread takes in the same order, so an inbox read after the release
//!    was seen holds every entry pushed before it. (Read the other way
//!    round, a push and release landing between the two reads would
//!    leave an entry in the inbox of a freed slot.)
//! 3. A `PwqRef` is made only from a live handle (`Workqueue::queue_with`,
//!    which holds the queue's pwq set while it pushes), and lives only in
//!    an entry and what it becomes: a worker's batch, the current item, a
//!    parked instance, a `Done` record. An entry counts in flight from its
//!    admission until its record is applied, and before admission it sits
//!    in the inbox, which (b) admits first; a record's pointer is not used
//!    after it was applied, and a slot that `complete` empties is freed
//!    only at the next `admit`, not during that lock hold.
//!
//! So while a `PwqRef` exists, (b) fails for its slot and the pool's
//! `Arc<PwqLink>` keeps the link alive.

use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;

use super::PwqLink;

/// A pointer to the `PwqLink` of an in-flight entry's pwq (see the module
/// doc for what keeps it valid).
#[derive(Clone, Copy)]
pub(crate) struct PwqRef(NonNull<PwqLink>);

// SAFETY: a `PwqRef` stands for a shared `&PwqLink` (see `Deref`), and
// `PwqLink` is `Sync` (an `Arc<Pool>`, a `usize`, an `Arc<WqCore>`), so
// moving or sharing the pointer across threads is as sound as doing so
// with the reference.
unsafe impl Send for PwqRef {}
// SAFETY: as for `Send`: only shared access is ever given out.
unsafe impl Sync for PwqRef {}

impl PwqRef {
    /// Points at `link`, which the caller reaches through a live handle.
    pub(crate) fn new(link: &Arc<PwqLink>) -> PwqRef {
        PwqRef(NonNull::from(&**link))
    }

    /// A counted reference, for what may outlive the entry (a worker's
    /// CPU-time charge).
    pub(crate) fn to_arc(self) -> Arc<PwqLink> {
        let ptr = self.0.as_ptr().cast_const();
        // SAFETY: `ptr` came from `Arc::as_ptr`-equivalent `&**arc` of an
        // `Arc<PwqLink>`, and the pool's own `Arc` keeps that allocation
        // alive while this entry is in flight (module doc), so the strong
        // count is at least 1 and may be raised; `from_raw` then takes
        // ownership of exactly the count just added.
        unsafe {
            Arc::increment_strong_count(ptr);
            Arc::from_raw(ptr)
        }
    }

    /// Whether `self` and `other` name the same pwq.
    pub(crate) fn same(self, other: PwqRef) -> bool {
        self.0 == other.0
    }

    /// Whether `self` and `link` name the same pwq.
    pub(crate) fn is(self, link: &Arc<PwqLink>) -> bool {
        std::ptr::eq(self.0.as_ptr().cast_const(), Arc::as_ptr(link))
    }
}

impl Deref for PwqRef {
    type Target = PwqLink;

    fn deref(&self) -> &PwqLink {
        // SAFETY: the pool's `Arc<PwqLink>` outlives every `PwqRef` to it
        // (module doc, points 1 to 3), and nothing mutates a `PwqLink`
        // after construction, so a shared reference is valid here.
        unsafe { self.0.as_ref() }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::{mpsc, Arc};
    use std::time::{Duration, Instant};

    use crate::Runtime;

    /// Point 2 of the module doc: a queue dropped with an item in flight
    /// keeps its pwq (and the link that item's `PwqRef` points to) until
    /// the item completed, and then frees it.
    #[test]
    fn a_released_pwq_lives_until_its_last_entry_completes() {
        let rt = Runtime::builder().cpus([0]).build().unwrap();
        let wq = rt.workqueue("dropped").build().unwrap();
        let (pool, slot, link) = {
            let set = wq.shared.set();
            let h = &set.links[0];
            (h.pool.clone(), h.slot, Arc::downgrade(h.link()))
        };
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        wq.execute(move || {
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        })
        .unwrap();
        started_rx.recv().unwrap();
        drop(wq);
        // Released, in flight: the slot and the link stay.
        assert!(pool.lock().pwqs_slot(slot).is_some(), "a pwq freed under its running item");
        assert!(link.upgrade().is_some());
        release_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while pool.lock().pwqs_slot(slot).is_some() || link.upgrade().is_some() {
            assert!(Instant::now() < deadline, "the released pwq was never freed");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
