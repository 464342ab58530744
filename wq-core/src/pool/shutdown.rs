//! A pool's end: the runtime's shutdown, and work that waits on a dying
//! pool with no worker left (orphans). A dying pool asks the manager for
//! no worker, so whoever finds such work runs it: on a new worker, or, if
//! none can be made, on the calling thread.

use std::sync::Arc;

use super::{emit_quietly, Entry, Pool, PoolInner};
use crate::worker::WorkerShared;

impl Pool {
    /// Starts the runtime's shutdown for this pool: idle workers exit, busy
    /// ones finish the worklist first.
    pub(crate) fn shut_down(self: &Arc<Self>) {
        let mut inner = self.lock();
        inner.dying = true;
        let idle = std::mem::take(&mut inner.idle);
        self.add_waking(&mut inner, idle.len() as isize);
        // Pools start without workers, and a dying pool asks the manager for
        // none: work queued just before the end (a delayed item firing as it
        // drops the last handle) needs a worker of its own.
        let orphaned = self.is_orphaned(&inner);
        drop(inner);
        for w in idle {
            w.mark_woken();
            w.unpark();
        }
        if orphaned {
            self.drain_orphans();
        }
    }

    /// Runs the worklist of a dying pool that has no worker to run it: on a
    /// new worker, or, if none can be made, on the calling thread.
    pub(crate) fn drain_orphans(self: &Arc<Self>) {
        {
            let mut inner = self.lock();
            if inner.draining_orphans {
                return;
            }
            inner.draining_orphans = true;
        }
        let spawned = crate::runtime::spawn_worker(self);
        let Err(err) = spawned else {
            self.lock().draining_orphans = false;
            return;
        };
        emit_quietly(
            || tracing::warn!(target: "wq", pool = %self.label(), %err, "no worker for work left at shutdown; running it here"),
        );
        let me = Arc::new(WorkerShared::new(format!("wq/{}:drain", self.label())));
        // Completing entries activates those waiting under max_active: run
        // until nothing is left.
        loop {
            let entries: Vec<Entry> = {
                let mut inner = self.lock();
                let entries: Vec<Entry> = std::mem::take(&mut inner.worklist).into();
                let _ = self.publish_pending(&inner);
                if entries.is_empty() {
                    inner.draining_orphans = false;
                    return;
                }
                entries
            };
            crate::worker::rescue(self, &me, entries);
        }
    }

    /// Work waits on a dying pool that has no worker to run it: none runs,
    /// is being woken or started, and none idles. A dying pool asks the
    /// manager for none, so whoever finds this brings one (`drain_orphans`).
    /// It happens after the last worker left (an entry another pool's
    /// worker completes, a hand-off, activates the next one here; a first
    /// worker's creation fails), and while every worker left sleeps or
    /// blocks (an item waiting for one queued after it).
    pub(crate) fn is_orphaned(&self, inner: &PoolInner) -> bool {
        // Not `need_more_worker`: an unbound pool wants more than one
        // running, but a dying pool with one at work is not orphaned (it
        // keeps working until the worklist is empty).
        inner.dying
            && !inner.draining_orphans
            && !inner.worklist.is_empty()
            && self.nr_running() <= 0
            && inner.nr_waking == 0
            && inner.idle.is_empty()
            && inner.nr_starting == 0
    }
}
