//! Rescuers: the forward-progress guarantee of `MEM_RECLAIM` queues.
//!
//! A pool makes progress only if it can get a worker. When worker creation
//! fails (EAGAIN, ENOMEM, the runtime's worker cap) while work waits, the
//! kernel's pool timer sends a *mayday* to every `WQ_MEM_RECLAIM` queue
//! with work there, and that queue's rescuer thread — reserved when the
//! queue was created — runs the queue's items itself. Same here: the
//! manager notices failing creation, waits the mayday timeout (10 ms, then
//! every 100 ms while it keeps failing), and calls [`Pool::send_mayday`].
//! The rescuer takes its queue's entries off that pool's worklist and runs
//! them outside concurrency management, until none is left or the pool can
//! create workers again.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::pool::{emit_quietly, Pool};
use crate::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use crate::worker::{self, WorkerShared};
use crate::workqueue::WqCore;
use crate::Error;

/// How long a pool may fail to create a worker before the first mayday.
pub(crate) const MAYDAY_INITIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(10);
/// How often maydays repeat while creation keeps failing.
pub(crate) const MAYDAY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// A `MEM_RECLAIM` queue's hold on its rescuer thread. The queue's handle
/// and each of its pwqs keep one (an `Arc`): a pwq outlives the queue's
/// last handle until its entries have run, and those may still need
/// rescuing. The thread exits when the last hold is dropped, or when a
/// queue that cannot be made drops it.
pub(crate) struct Rescuer {
    thread: Arc<RescuerThread>,
}

/// What the rescuer thread runs on.
struct RescuerThread {
    wq: Arc<WqCore>,
    maydays: Mutex<Vec<Arc<Pool>>>,
    cv: Condvar,
    shutdown: AtomicBool,
}

impl Rescuer {
    /// Reserves the rescuer thread of queue `wq` (named `wq/r:<queue>`).
    pub(crate) fn start(wq: Arc<WqCore>) -> Result<Arc<Rescuer>, Error> {
        let thread = Arc::new(RescuerThread {
            wq,
            maydays: Mutex::new(Vec::new()),
            cv: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let mut name = format!("wq/r:{}", thread.wq.name);
        name.truncate(name.char_indices().nth(15).map_or(name.len(), |(i, _)| i));
        let t = thread.clone();
        let what = format!("the rescuer thread {name}");
        std::thread::Builder::new().name(name).spawn(move || t.run()).map_err(|err| Error::spawn(&what, err))?;
        Ok(Arc::new(Rescuer { thread }))
    }

    /// A pool with this queue's work cannot get a worker.
    pub(crate) fn mayday(&self, pool: Arc<Pool>) {
        let t = &self.thread;
        t.wq.counters.mayday.fetch_add(1, Relaxed);
        let mut list = t.lock();
        if !list.iter().any(|p| Arc::ptr_eq(p, &pool)) {
            list.push(pool);
        }
        drop(list);
        t.cv.notify_one();
    }
}

impl Drop for Rescuer {
    /// Nothing of the queue can need rescuing any more: the thread exits.
    fn drop(&mut self) {
        let t = &self.thread;
        t.shutdown.store(true, SeqCst);
        let _list = t.lock();
        t.cv.notify_one();
    }
}

impl RescuerThread {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Pool>>> {
        self.maydays.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        // Never counted in any pool's nr_running: IDLE stays set for good.
        let me = Arc::new(WorkerShared::new(std::thread::current().name().unwrap_or("wq/r").to_owned()));
        loop {
            let pools = {
                let mut list = self.lock();
                while list.is_empty() && !self.shutdown.load(SeqCst) {
                    list = self.cv.wait(list).unwrap_or_else(|e| e.into_inner());
                }
                if self.shutdown.load(SeqCst) {
                    return;
                }
                std::mem::take(&mut *list)
            };
            for pool in pools {
                self.rescue(&pool, &me);
            }
        }
    }

    /// Runs this queue's entries of `pool` while the pool cannot create workers.
    ///
    /// Entries are picked by the queue they name, not by pwq slot: a slot
    /// the queue gave up (`apply_attrs`) may since serve another queue.
    fn rescue(&self, pool: &Arc<Pool>, me: &Arc<WorkerShared>) {
        loop {
            let mine = pool.take_entries_of(&self.wq);
            if mine.is_empty() {
                return;
            }
            emit_quietly(
                || tracing::info!(target: "wq", queue = %self.wq.name, pool = %pool.label(), items = mine.len(), "rescuer runs work items"),
            );
            // Counted as they ran: a cancelled item's stale entry is taken
            // too, but only accounted.
            let ran = worker::rescue(pool, me, mine);
            self.wq.counters.rescued.fetch_add(ran, Relaxed);
            if !pool.creation_failing.load(SeqCst) {
                return;
            }
        }
    }
}
