//! What a pool's buffers keep after a burst.
//!
//! The worklist, the inbox (and the vector it swaps with) and each pwq's
//! inactive list are vectors: they grow to the largest backlog they held
//! and keep that capacity, since growing again costs the next burst page
//! faults and copies (a fifth of a first burst's throughput:
//! BENCHMARKS.md, session 15). A burst of a million tiny items leaves
//! about 40 MB per buffer. A pool that has stayed idle for the runtime's
//! idle timeout gives it back: when its last idle worker's timeout passes
//! and no worker of the pool runs, nothing is queued or stashed, it
//! shrinks each buffer to what a busy pool holds anyway. A pool with a
//! worker at work keeps its buffers, however long its reserve has idled.

use super::{Pool, PoolInner};
use crate::DEFAULT_MAX_ACTIVE;

/// Entries each buffer keeps room for: a full worklist at the default
/// `max_active`.
pub(super) const KEEP_ENTRIES: usize = DEFAULT_MAX_ACTIVE as usize;

impl Pool {
    /// If the pool is quiet (every worker idle, nothing queued, admitted
    /// or stashed), shrinks its buffers to [`KEEP_ENTRIES`] each. With the
    /// pool lock held, which comes before the inbox's.
    pub(crate) fn shrink_buffers_if_quiet(&self, inner: &mut PoolInner) {
        let quiet = !inner.work_waits() && self.inbox.is_empty() && inner.idle.len() == self.workers().len();
        if !quiet {
            return;
        }
        inner.worklist.shrink_to(KEEP_ENTRIES);
        inner.admitted.shrink_to(KEEP_ENTRIES);
        for pwq in inner.pwqs.iter_mut().flatten() {
            pwq.inactive.shrink_to(KEEP_ENTRIES);
        }
        self.inbox.shrink_to(KEEP_ENTRIES);
    }

    /// The largest capacity among the pool's buffers, for tests.
    #[cfg(test)]
    fn largest_buffer(&self) -> usize {
        let inner = self.lock();
        let inactive = inner.pwqs.iter().flatten().map(|p| p.inactive.capacity()).max().unwrap_or(0);
        [inner.worklist.capacity(), inner.admitted.capacity(), inactive, self.inbox.capacity()]
            .into_iter()
            .max()
            .unwrap_or(0)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::KEEP_ENTRIES;
    use crate::Runtime;

    /// A backlog far above `KEEP_ENTRIES` grows the buffers. While a worker
    /// is at work they stay, however often the idle reserve times out; once
    /// the whole pool has been idle for the idle timeout they are back to
    /// `KEEP_ENTRIES`.
    #[test]
    fn an_idle_pool_gives_back_what_a_burst_left_in_its_buffers() {
        let rt = Runtime::builder().cpus([0]).idle_timeout(Duration::from_millis(30)).build().unwrap();
        let wq = rt.workqueue("burst").max_active(1).build().unwrap();
        let pool = wq.shared.set().links[0].pool.clone();
        // A gate holds the one active slot, so the burst waits in the inbox
        // and then in the inactive list.
        let (open, gate) = mpsc::channel::<()>();
        let c = wq.submit(move || gate.recv().unwrap()).unwrap();
        let burst = 20 * KEEP_ENTRIES;
        for _ in 0..burst {
            wq.execute(|| {}).unwrap();
        }
        open.send(()).unwrap();
        c.wait().unwrap();
        wq.flush().unwrap();
        assert!(pool.largest_buffer() >= burst / 2, "the burst never grew a buffer");
        let (release, hold) = mpsc::channel::<()>();
        let holder = wq.submit(move || hold.recv().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(pool.largest_buffer() >= burst / 2, "a pool with a worker at work gave back its buffers");
        release.send(()).unwrap();
        holder.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while pool.largest_buffer() > KEEP_ENTRIES {
            assert!(Instant::now() < deadline, "an idle pool kept {} entries' room", pool.largest_buffer());
            std::thread::sleep(Duration::from_millis(5));
        }
        // And it still works.
        assert_eq!(wq.submit(|| 5).unwrap().wait().unwrap(), 5);
    }
}
