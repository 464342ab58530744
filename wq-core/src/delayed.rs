//! Delayed work: a work item queued when its timer fires.
//!
//! The item is `PENDING` from the moment it is armed (as in the kernel), so
//! `queue_delayed` of an armed item is a no-op. Every change of the timer
//! slot happens under the item's timer lock; the runtime's timer thread
//! holds only a token, and a firing whose token is no longer armed is
//! ignored. Lock order: item timer lock, then the queue's `armed` set, then
//! a pool lock.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::pool::{drop_quietly, emit_quietly};
use crate::work::{gen_of, NotQueued, WorkShared, PENDING, RUNNING};
use crate::{Error, Workqueue};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

/// A work item that is queued after a delay (the kernel's `delayed_work`).
///
/// ```
/// use std::time::Duration;
/// use wq_core::{DelayedWork, Workqueue};
///
/// let wq = Workqueue::builder("later").build()?;
/// let dw = DelayedWork::new(|| println!("50 ms later"));
/// assert!(wq.queue_delayed(&dw, Duration::from_millis(50)));
/// assert!(!wq.queue_delayed(&dw, Duration::from_secs(1)), "already pending");
/// dw.flush()?; // fires it now and waits
/// # Ok::<(), wq_core::Error>(())
/// ```
#[derive(Clone)]
pub struct DelayedWork {
    shared: Arc<DelayedShared>,
}

pub(crate) struct DelayedShared {
    work: Arc<WorkShared>,
    timer: Mutex<TimerSlot>,
    /// Mirror of the armed token (0: not armed), readable by the timer
    /// thread without the slot lock, to drop stale heap entries.
    armed_token: AtomicU64,
}

#[derive(Default)]
struct TimerSlot {
    armed: Option<Armed>,
    next_token: u64,
}

struct Armed {
    wq: Workqueue,
    slot: Option<usize>,
    gen: u64,
    token: u64,
}

impl DelayedWork {
    /// A delayed work item that runs `f` each time it executes.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> DelayedWork {
        DelayedWork {
            shared: Arc::new(DelayedShared {
                work: Arc::new(WorkShared::new(Box::new(f))),
                timer: Mutex::new(TimerSlot::default()),
                armed_token: AtomicU64::new(0),
            }),
        }
    }

    /// A process-unique id, as named by [`Error::DelayedWorkArmed`].
    pub fn id(&self) -> u64 {
        self.shared.work.id
    }

    /// Whether the item is armed or queued and has not started yet.
    pub fn is_pending(&self) -> bool {
        self.shared.work.state.load() & PENDING != 0
    }

    /// Whether a worker runs the item's function right now.
    pub fn is_running(&self) -> bool {
        self.shared.work.state.load() & RUNNING != 0
    }

    /// Disarms the timer or takes the item off its queue. Returns whether it
    /// was pending. A running instance is not waited for.
    pub fn cancel(&self) -> bool {
        let mut slot = self.shared.lock();
        self.shared.disarm(&mut slot) || self.shared.work.cancel()
    }

    /// Cancels like [`cancel`](DelayedWork::cancel) and waits for a running
    /// instance to finish; queueing fails meanwhile. Returns whether it was pending.
    ///
    /// # Errors
    /// [`Error::WouldDeadlock`] when called from inside this item;
    /// [`Error::Forked`] in a child made by `fork` while the item was
    /// armed, pending or running (that instance is the parent's).
    pub fn cancel_sync(&self) -> Result<bool, Error> {
        let shared = &self.shared;
        shared.work.cancel_sync_with("DelayedWork", || {
            let mut slot = shared.lock();
            shared.disarm(&mut slot)
        })
    }

    /// Fires an armed timer now, then waits until the item finished
    /// running. Returns whether there was anything to wait for.
    ///
    /// # Errors
    /// [`Error::WouldDeadlock`] when called from inside this item;
    /// [`Error::Forked`] in a child made by `fork` while the item was
    /// armed, pending or running (that instance is the parent's).
    pub fn flush(&self) -> Result<bool, Error> {
        // Refused before anything changes: a refused call fires no timer
        // (and takes no lock the parent's timer may have held at a fork).
        self.shared.work.check_not_current("DelayedWork", "flush")?;
        self.shared.work.check_not_forked()?;
        let mut slot = self.shared.lock();
        let fired = match slot.armed.as_ref() {
            Some(armed) => {
                let token = armed.token;
                self.shared.fire(&mut slot, token);
                true
            }
            None => false,
        };
        // Read with the timer locked, so the target is the instance just
        // fired (or the one pending or running): the item cannot re-arm
        // itself meanwhile (arming takes this lock), and a periodic item
        // that re-arms as it runs does not make this wait a whole period.
        let target = self.shared.work.flush_target();
        drop(slot);
        if let Some(target) = target {
            self.shared.work.wait_flushed(target);
        }
        // The fired instance may finish before the target is read: it still counts.
        Ok(target.is_some() || fired)
    }

    /// `queue_delayed` (`modify == false`) and `mod_delayed` (`true`).
    pub(crate) fn queue_on_wq(
        &self,
        wq: &Workqueue,
        cpu_slot: Option<usize>,
        delay: Duration,
        modify: bool,
    ) -> Result<bool, Error> {
        wq.check_not_forked()?;
        let shared = &self.shared;
        // Computed once: a second `now() + delay` could overflow where this
        // check passed.
        let deadline = Instant::now().checked_add(delay).ok_or(Error::DelayTooLong { delay })?;
        if !delay.is_zero() {
            wq.runtime().timer().ensure_running()?;
        }
        // Re-arming takes the old instance back first; a queue that refuses
        // must leave it alone, so refusal is decided once, before anything
        // changes, and a drain beginning later waits for the re-arm
        // (`WqCore::rearming`).
        let _rearming = modify.then(|| wq.shared.core.rearming.read().unwrap_or_else(|e| e.into_inner()));
        let mut slot = shared.lock();
        if modify {
            if let Some(err) = wq.refusal_for_arming(false) {
                wq.shared.core.counters.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(err);
            }
        }
        let was_pending = modify && (shared.disarm(&mut slot) || shared.work.cancel());
        if delay.is_zero() {
            // Marked pending under the pool lock, after the refusal check.
            let queued = wq.queue_now(&shared.work, cpu_slot, modify)?;
            return Ok(if modify { was_pending } else { queued });
        }
        // Arming and `destroy` both decide under the queue's `armed` lock;
        // the item becomes pending only once the queue accepted it.
        let mut armed_set = wq.shared.armed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(err) = wq.refusal_for_arming(modify) {
            drop(armed_set);
            wq.shared.core.counters.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(err);
        }
        let gen = match shared.work.mark_pending() {
            Ok(gen) => gen,
            Err(NotQueued::Pending | NotQueued::Disabled) => return Ok(was_pending),
        };
        armed_set.insert(self.id());
        drop(armed_set);
        slot.next_token += 1;
        let token = slot.next_token;
        slot.armed = Some(Armed { wq: wq.clone(), slot: cpu_slot, gen, token });
        shared.armed_token.store(token, SeqCst);
        drop(slot);
        wq.runtime().timer().add(deadline, shared.clone(), token);
        Ok(!modify || was_pending)
    }
}

impl DelayedShared {
    fn lock(&self) -> MutexGuard<'_, TimerSlot> {
        self.timer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Disarms the timer; true if it was armed (the item is then no longer pending).
    fn disarm(&self, slot: &mut TimerSlot) -> bool {
        let Some(armed) = slot.armed.take() else { return false };
        self.armed_token.store(0, SeqCst);
        let mut set = armed.wq.shared.armed.lock().unwrap_or_else(|e| e.into_inner());
        set.remove(&self.work.id);
        drop(set);
        self.work.cancel();
        true
    }

    /// The timer of `token` fired: queue the item, if that timer is still armed.
    fn fire(&self, slot: &mut TimerSlot, token: u64) {
        if slot.armed.as_ref().is_none_or(|a| a.token != token) {
            return;
        }
        let armed = slot.armed.take().expect("checked above");
        self.armed_token.store(0, SeqCst);
        let mut set = armed.wq.shared.armed.lock().unwrap_or_else(|e| e.into_inner());
        let live = gen_of(self.work.state.load()) == armed.gen;
        if live {
            // A queue with armed work cannot be destroyed (checked under the
            // `armed` lock held here) and timer firings pass a drain, so this
            // cannot be refused.
            if let Err(err) = armed.wq.queue_pending(&self.work, armed.gen, armed.slot) {
                emit_quietly(
                    || tracing::error!(target: "wq", queue = %armed.wq.name(), %err, "delayed work refused at expiry"),
                );
                self.work.cancel();
            }
        }
        set.remove(&self.work.id);
    }
}

impl fmt::Debug for DelayedWork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelayedWork")
            .field("id", &self.id())
            .field("pending", &self.is_pending())
            .field("running", &self.is_running())
            .finish()
    }
}

/// One armed timer in the heap.
struct TimerEntry {
    deadline: Instant,
    seq: u64,
    dwork: Arc<DelayedShared>,
    token: u64,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest deadline goes first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

/// The runtime's timer thread for delayed work. The thread starts with the
/// first delayed item armed: a runtime that never delays work has none.
pub(crate) struct Timer {
    name: String,
    /// The CPUs and nice value of the thread that built the runtime: the
    /// timer thread starts on whichever thread arms the first delayed item
    /// (often a pinned, highpri worker) and must not keep its attributes.
    affinity: Option<Vec<usize>>,
    nice: Option<i32>,
    heap: Mutex<TimerHeap>,
    cv: Condvar,
    shutdown: AtomicBool,
    /// The thread runs. Set once, under `starting`, after the spawn worked.
    running: AtomicBool,
    starting: Mutex<()>,
}

#[derive(Default)]
struct TimerHeap {
    entries: BinaryHeap<TimerEntry>,
    seq: u64,
}

impl Timer {
    /// A timer whose thread is named `name` once it starts. Call on the
    /// thread that builds the runtime: the timer thread runs on its CPUs.
    pub(crate) fn new(name: String) -> Arc<Timer> {
        Arc::new(Timer {
            name,
            affinity: crate::sys::allowed_cpus().ok(),
            nice: crate::sys::current_nice(),
            heap: Mutex::new(TimerHeap::default()),
            cv: Condvar::new(),
            shutdown: AtomicBool::new(false),
            running: AtomicBool::new(false),
            starting: Mutex::new(()),
        })
    }

    /// Starts the thread unless it runs. Called before a delayed item
    /// changes any state, so a failed spawn refuses the arming cleanly.
    pub(crate) fn ensure_running(self: &Arc<Self>) -> Result<(), Error> {
        if self.running.load(SeqCst) {
            return Ok(());
        }
        let _starting = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        if self.running.load(SeqCst) {
            return Ok(());
        }
        let t = self.clone();
        let start = move || {
            // The builder's CPUs and priority, not the arming thread's (best
            // effort: raising a priority may be refused).
            if let Some(cpus) = &t.affinity {
                let _ = crate::sys::set_current_affinity(cpus);
            }
            if let Some(nice) = t.nice {
                let _ = crate::sys::set_current_nice(nice);
            }
            t.run();
        };
        let what = format!("the timer thread {}", self.name);
        thread::Builder::new().name(self.name.clone()).spawn(start).map_err(|err| Error::spawn(&what, err))?;
        self.running.store(true, SeqCst);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, TimerHeap> {
        self.heap.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, deadline: Instant, dwork: Arc<DelayedShared>, token: u64) {
        let mut heap = self.lock();
        heap.seq += 1;
        let seq = heap.seq;
        let earliest = heap.entries.peek().is_none_or(|e| deadline < e.deadline);
        heap.entries.push(TimerEntry { deadline, seq, dwork, token });
        // Re-arming in a loop (debouncing) leaves superseded entries behind;
        // drop them before they outnumber the live ones.
        if heap.entries.len() >= 64 && heap.entries.len().is_power_of_two() {
            heap.entries.retain(|e| e.dwork.armed_token.load(SeqCst) == e.token);
        }
        drop(heap);
        if earliest {
            self.cv.notify_one();
        }
    }

    pub(crate) fn shutdown(&self) {
        self.shutdown.store(true, SeqCst);
        let _heap = self.lock();
        self.cv.notify_one();
    }

    fn run(&self) {
        let mut heap = self.lock();
        while !self.shutdown.load(SeqCst) {
            let now = Instant::now();
            match heap.entries.peek() {
                Some(e) if e.deadline <= now => {
                    let entry = heap.entries.pop().expect("peeked");
                    drop(heap);
                    let mut slot = entry.dwork.lock();
                    entry.dwork.fire(&mut slot, entry.token);
                    drop(slot);
                    // A cancelled item whose handles are gone ends here, and
                    // its captures' `Drop` is user code: a panic in it must
                    // not end the thread every delayed item waits on.
                    drop_quietly(entry);
                    heap = self.lock();
                }
                Some(e) => {
                    let wait = e.deadline - now;
                    heap = self.cv.wait_timeout(heap, wait).unwrap_or_else(|e| e.into_inner()).0;
                }
                None => heap = self.cv.wait(heap).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}
