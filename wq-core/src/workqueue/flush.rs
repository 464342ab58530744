//! Flush colours: how `flush` and `drain` wait for a whole queue.
//!
//! Every entry carries the queue's colour at the time its pool admitted it
//! from the inbox (read under the pool lock, so colours arrive at each pwq
//! in order). `flush` first locks each pool, admitting every entry queued
//! before the call with the current colour, then bumps the colour and waits
//! until no pwq has an entry of an older colour in flight.
//! A flusher registers in `flushers` before checking; a completer that
//! retires a pwq's oldest colour checks `flushers` after unlocking the pool
//! and notifies under `flush_lock` — the flusher holds that lock from its
//! check until it sleeps, so the wake-up cannot fall between the two.

use super::Workqueue;
use std::sync::atomic::Ordering::SeqCst;

impl Workqueue {
    /// Waits until every entry queued before the call completed.
    pub(super) fn flush_colors(&self) {
        let core = &self.shared.core;
        let links = self.links();
        // Entries still in an inbox get their colour when admitted: admit
        // them before the colour moves on, so they are waited for.
        for l in &links {
            drop(l.pool.lock());
        }
        let color = core.color.fetch_add(1, SeqCst);
        core.flushers.fetch_add(1, SeqCst);
        // Workers defer the accounting of tiny items (`pool/batch.rs`):
        // apply what they hold, now that they see `flushers` and apply the rest.
        for l in &links {
            l.pool.settle();
        }
        let mut guard = core.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
        while !links.iter().all(|l| l.pool.pwq_flushed(l.slot, color)) {
            guard = core.flush_cv.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        drop(guard);
        core.flushers.fetch_sub(1, SeqCst);
    }

    /// Flushes until nothing is in flight, refusing non-chained queueing meanwhile.
    pub(super) fn drain_inner(&self) {
        let core = &self.shared.core;
        core.draining.fetch_add(1, SeqCst);
        // A `mod_delayed` that passed its check before `draining` rose
        // finishes its re-arm first (`WqCore::rearming`).
        drop(core.rearming.write().unwrap_or_else(|e| e.into_inner()));
        let mut rounds = 0u64;
        loop {
            // A queueing thread that passed its check before `draining`
            // rose may not have pushed yet: wait for it, then flush.
            self.fence_queueing();
            self.flush_colors();
            if self.in_flight() == 0 {
                break;
            }
            rounds += 1;
            if rounds.is_power_of_two() && rounds >= 16 {
                tracing::warn!(target: "wq", queue = %core.name, rounds, "drain is taking long: work items keep chaining");
            }
        }
        core.draining.fetch_sub(1, SeqCst);
    }

    /// Waits until every thread that passed its refusal check for this
    /// queue has pushed its entry (`Inbox::barrier` on each pool).
    pub(super) fn fence_queueing(&self) {
        for l in self.links() {
            l.pool.inbox_barrier();
        }
    }

    /// Entries queued and not yet completed, over all pwqs.
    pub(crate) fn in_flight(&self) -> usize {
        self.links().iter().map(|l| l.pool.pwq_stats(l.slot).1).sum()
    }
}
