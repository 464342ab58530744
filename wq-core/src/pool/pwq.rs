//! Pool workqueues: the link between one workqueue and one worker pool.
//!
//! A pool workqueue (`pwq`) carries the per-(queue, pool) policy: `max_active`
//! with its inactive list, and the in-flight counts by flush colour that
//! `Workqueue::flush` waits on. Its state lives inside the pool, under the
//! pool lock, as in the kernel. The queue holds it through [`PwqHandle`]s;
//! queued entries name it by a [`PwqRef`](super::PwqRef) (`link.rs`).

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use super::{Entry, Pool};
use crate::rescuer::Rescuer;
use crate::workqueue::Limit;
use crate::workqueue::WqCore;

/// What names one pool workqueue: its pool, its slot there, its queue.
/// Shared by the pool's slot (which owns one count until it frees the
/// slot), the queue's handles, and CPU-time charges.
pub(crate) struct PwqLink {
    pub(crate) pool: Arc<Pool>,
    pub(crate) slot: usize,
    pub(crate) wq: Arc<WqCore>,
}

/// The queue's hold on a pwq, kept by its pwq sets. While one exists the
/// slot stays allocated (flush, stats and new entries may use it); when
/// the last drops, the pool frees the slot once nothing of it is in flight.
pub(crate) struct PwqHandle(Arc<PwqLink>);

impl PwqHandle {
    pub(crate) fn new(link: Arc<PwqLink>) -> PwqHandle {
        PwqHandle(link)
    }

    pub(crate) fn link(&self) -> &Arc<PwqLink> {
        &self.0
    }
}

impl Deref for PwqHandle {
    type Target = PwqLink;

    fn deref(&self) -> &PwqLink {
        &self.0
    }
}

impl Drop for PwqHandle {
    fn drop(&mut self) {
        // In a child made by `fork`, the pool's locks may be held for ever.
        if self.0.pool.rt.forked() {
            return;
        }
        self.0.pool.release_pwq(self.0.slot);
    }
}

/// Where `PwqState::place` put an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// On the worklist.
    Active,
    /// On the inactive list, for this pwq's `max_active` or a freeze.
    Inactive,
    /// On the inactive list of a pwq under a queue-wide limit: the caller
    /// must count it in the limit's `waiting` (`PwqState::count_waiting`)
    /// before it unlocks the pool.
    WaitsForLimit,
}

/// Per-(queue, pool) state. Protected by the pool lock.
#[derive(Default)]
pub(crate) struct PwqState {
    /// The pool's count on the pwq's link, which keeps every entry's
    /// `PwqRef` valid until the slot is freed (`None` only in unit tests).
    pub(crate) link: Option<Arc<PwqLink>>,
    /// The queue let go (its last handle dropped): free the slot once
    /// nothing is in flight.
    pub(crate) released: bool,
    /// Entries allowed on the pool's worklist or running at once.
    pub(crate) max_active: usize,
    /// Frozen (a `FREEZABLE` queue during `Runtime::freeze`): nothing is
    /// activated, so nothing new starts.
    pub(crate) frozen: bool,
    /// The queue's rescuer, if it is `MEM_RECLAIM`.
    pub(crate) rescuer: Option<Arc<Rescuer>>,
    /// An unbound queue's `max_active`, shared with its other pods' pwqs.
    pub(crate) limit: Option<Arc<Limit>>,
    /// Invariant: `nr_active <= max_active`, and it counts exactly the
    /// entries of this pwq that are on the worklist, in a worker's batch
    /// (stashed, running, or finished with their accounting deferred), or
    /// parked in a work item's hand-off slot.
    pub(crate) nr_active: usize,
    /// Entries waiting for `nr_active` to drop, oldest first.
    pub(crate) inactive: VecDeque<Entry>,
    /// In-flight entries by flush colour, colours strictly increasing.
    /// Invariant: the counts sum to `nr_in_flight`.
    colors: VecDeque<(u64, usize)>,
    pub(crate) nr_in_flight: usize,
    /// Work items completed through this pwq (the wq_monitor `total`).
    pub(crate) total: u64,
    pub(crate) cpu_time: Duration,
    pub(crate) panics: u64,
}

impl PwqState {
    pub(crate) fn new(
        max_active: usize,
        frozen: bool,
        rescuer: Option<Arc<Rescuer>>,
        limit: Option<Arc<Limit>>,
    ) -> PwqState {
        PwqState { max_active, frozen, rescuer, limit, ..PwqState::default() }
    }

    /// Takes an active slot if `max_active` (and the queue-wide limit of an
    /// unbound queue) allow, and the pwq is not frozen.
    pub(crate) fn try_claim(&mut self) -> bool {
        if self.frozen || self.nr_active >= self.max_active {
            return false;
        }
        if let Some(limit) = &self.limit {
            if !limit.try_acquire() {
                return false;
            }
        }
        self.nr_active += 1;
        true
    }

    /// Whether the pwq belongs to a `FREEZABLE` queue (`Runtime::freeze`).
    pub(crate) fn is_freezable(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.wq.flags.contains(crate::Flags::FREEZABLE))
    }

    /// Gives back `n` active slots (to the queue-wide limit too).
    pub(crate) fn release(&mut self, n: usize) {
        debug_assert!(self.nr_active >= n, "nr_active underflow");
        self.nr_active -= n;
        if let Some(limit) = &self.limit {
            limit.release(n);
        }
    }

    /// After a release and this pwq's own activation: whether entries of
    /// another pod may wait for a queue-wide slot still free. Read after
    /// the activation, not before: a record of several entries can free
    /// more slots than this pwq's inactive entries take (`README.md`, "The
    /// queue-wide limit").
    pub(crate) fn others_may_wait(&self) -> bool {
        self.limit
            .as_ref()
            .is_some_and(|limit| limit.has_room() && limit.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0)
    }

    /// Puts `entry` on the worklist if it may be activated now and nothing
    /// of this pwq waits before it, else on the inactive list.
    pub(crate) fn place(&mut self, entry: Entry, worklist: &mut VecDeque<Entry>) -> Placement {
        if self.inactive.is_empty() && self.try_claim() {
            worklist.push_back(entry);
            return Placement::Active;
        }
        self.inactive.push_back(entry);
        if self.limit.is_some() {
            Placement::WaitsForLimit
        } else {
            Placement::Inactive
        }
    }

    /// Counts `n` entries just parked for the queue-wide limit in its
    /// `waiting`, then reads the limit again. Returns true if it has room:
    /// a slot freed in another pod after the failed claims, and its
    /// releaser may have read `waiting` before these were counted, so the
    /// caller must activate (`README.md`, "The queue-wide limit").
    #[must_use]
    pub(crate) fn count_waiting(&self, n: usize) -> bool {
        let Some(limit) = &self.limit else { return false };
        // SeqCst, counted then read: the releaser frees then reads
        // `waiting`, so one of the two sees the other.
        limit.waiting.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        limit.has_room()
    }

    /// Moves to the back of `worklist`, oldest first, every inactive entry
    /// that may be activated now; returns how many. One bulk move of as
    /// many as `max_active` leaves room for and, for an unbound queue, as
    /// many slots of its queue-wide limit as one CAS gets.
    pub(crate) fn activate_into(&mut self, worklist: &mut VecDeque<Entry>) -> usize {
        if self.frozen {
            return 0;
        }
        let room = self.inactive.len().min(self.max_active.saturating_sub(self.nr_active));
        let n = match &self.limit {
            Some(limit) if room > 0 => {
                let n = limit.acquire_up_to(room);
                if n > 0 {
                    limit.waiting.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
                }
                n
            }
            _ => room,
        };
        self.nr_active += n;
        worklist.extend(self.inactive.drain(..n));
        n
    }

    /// Counts a new entry of `color`. Colours arrive in order because they
    /// are read under the pool lock (when the entry is admitted) and only
    /// ever grow.
    pub(crate) fn add_in_flight(&mut self, color: u64) {
        self.nr_in_flight += 1;
        match self.colors.back_mut() {
            Some((c, n)) if *c == color => *n += 1,
            back => {
                debug_assert!(back.is_none_or(|(c, _)| *c < color), "flush colours out of order");
                self.colors.push_back((color, 1));
            }
        }
    }

    /// Uncounts `n` completed entries of `color`. Returns true if the oldest
    /// colour retired (a flusher may be waiting for it).
    pub(crate) fn dec_in_flight(&mut self, color: u64, n: usize) -> bool {
        debug_assert!(self.nr_in_flight >= n, "in-flight underflow");
        self.nr_in_flight -= n;
        let idx =
            self.colors.iter().position(|(c, _)| *c == color).expect("completed entry's flush colour is not in flight");
        debug_assert!(self.colors[idx].1 >= n, "more entries of a colour completed than were in flight");
        self.colors[idx].1 -= n;
        if self.colors[idx].1 == 0 {
            self.colors.remove(idx);
            return idx == 0;
        }
        false
    }

    /// Whether every entry of colour `<= color` has completed.
    pub(crate) fn flushed(&self, color: u64) -> bool {
        self.colors.front().is_none_or(|(c, _)| *c > color)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn colours_retire_oldest_first() {
        let mut p = PwqState::new(4, false, None, None);
        p.add_in_flight(1);
        p.add_in_flight(1);
        p.add_in_flight(2);
        assert!(!p.flushed(1));
        assert!(!p.dec_in_flight(2, 1), "a younger colour retiring does not unblock flushers");
        assert!(!p.dec_in_flight(1, 1));
        assert!(p.dec_in_flight(1, 1));
        assert!(p.flushed(2));
        assert_eq!(p.nr_in_flight, 0);
    }
}
