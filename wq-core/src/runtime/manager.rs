//! The manager: creates workers for pools that asked, and runs the
//! runtime's periodic job (publishing counters for the `wq` tool) in
//! between. It is a role of the monitor's thread, not a thread of its own
//! (the kernel likewise has no manager thread: an idle worker takes the
//! role): one thread less per runtime, and no hand-off between a monitor
//! that sees a sleep and a manager that starts the worker it needs.
//!
//! Pools ask when their idle reserve is gone or when work waits and no
//! worker can take it. Creating threads off the queueing path keeps
//! `queue` cheap; the idle reserve keeps wakes from waiting for creation.
//! A failed creation (EAGAIN, the worker cap, an injected fault) is retried
//! with exponential backoff; the pool's work stays queued meanwhile, and
//! after the mayday timeout the rescuers of its `MEM_RECLAIM` queues are
//! called (see `rescuer.rs`).
//!
//! Requests unpark the monitor's thread. It services them at the top of
//! each tick and on each wake-up while parked, and folds the next retry or
//! periodic job into how long it sleeps (`Manager::service`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::pool::Pool;
use crate::rescuer::{MAYDAY_INITIAL_TIMEOUT, MAYDAY_INTERVAL};
use crate::worker::{self, WorkerShared};
use crate::Error;
use std::sync::atomic::Ordering::SeqCst;

const BACKOFF_MIN: Duration = Duration::from_millis(1);
/// Retries run at least this often, so maydays keep their 100 ms cadence.
const BACKOFF_MAX: Duration = Duration::from_millis(50);

pub(crate) struct Manager {
    queue: Mutex<Requests>,
    /// The thread that services requests (the monitor's), unparked for each.
    servicer: OnceLock<Thread>,
}

#[derive(Default)]
struct Requests {
    pools: Vec<Arc<Pool>>,
    shutdown: bool,
    /// Periodic jobs and when each is next due; taken out while they run.
    periodic: Vec<(Instant, Periodic)>,
}

/// A job the manager runs every `every` until it returns `false`. It runs
/// with no lock held, between worker creations.
pub(crate) struct Periodic {
    pub(crate) every: Duration,
    pub(crate) job: Box<dyn FnMut() -> bool + Send>,
}

/// What the servicing thread remembers between calls: creations to retry.
pub(crate) struct Retries {
    pools: Vec<Arc<Pool>>,
    /// Pools whose creation keeps failing: when it started, when the last
    /// mayday went out.
    failing: HashMap<usize, (Instant, Option<Instant>)>,
    /// The next retry's delay: `BACKOFF_MIN` doubling to `BACKOFF_MAX`.
    backoff: Duration,
    at: Option<Instant>,
}

impl Default for Retries {
    fn default() -> Retries {
        Retries { pools: Vec::new(), failing: HashMap::new(), backoff: BACKOFF_MIN, at: None }
    }
}

impl Manager {
    pub(crate) fn new() -> Arc<Manager> {
        Arc::new(Manager { queue: Mutex::new(Requests::default()), servicer: OnceLock::new() })
    }

    fn lock(&self) -> MutexGuard<'_, Requests> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        if let Some(t) = self.servicer.get() {
            t.unpark();
        }
    }

    /// Called with the pool lock held (lock order: pool, then manager).
    pub(crate) fn request(&self, pool: Arc<Pool>) {
        self.lock().pools.push(pool);
        self.wake();
    }

    /// Adds a periodic job; its first run is `every` from now.
    pub(crate) fn add_periodic(&self, periodic: Periodic) {
        self.lock().periodic.push((Instant::now() + periodic.every, periodic));
        self.wake();
    }

    /// Stops servicing: requests made from now on are dropped with the runtime.
    pub(crate) fn shut_down(&self) {
        self.lock().shutdown = true;
    }

    /// Makes the calling thread the one requests wake. Call before the
    /// first `service`, so no request goes unseen.
    pub(crate) fn serve_on_current_thread(&self) {
        let _ = self.servicer.set(std::thread::current());
    }

    /// Creates the workers asked for, runs due periodic jobs and due
    /// retries. Returns when it next has something due (a retry or a
    /// periodic job), if ever; new requests wake the servicing thread.
    pub(crate) fn service(&self, retries: &mut Retries, all: &Mutex<Vec<Arc<Pool>>>) -> Option<Instant> {
        let (mut pools, due) = {
            let mut q = self.lock();
            if q.shutdown {
                return None;
            }
            let now = Instant::now();
            let (due, later) = std::mem::take(&mut q.periodic).into_iter().partition(|(t, _)| now >= *t);
            q.periodic = later;
            // Drained rather than taken: the request list keeps its
            // capacity, so a request (made on the queueing path) does not
            // allocate; the copy is made here, on the servicing thread.
            (q.pools.drain(..).collect::<Vec<_>>(), due)
        };
        self.run_periodic(due);
        if retries.at.is_some_and(|t| Instant::now() >= t) {
            pools.append(&mut retries.pools);
            retries.at = None;
        }
        for pool in pools {
            if retries.pools.iter().any(|p| Arc::ptr_eq(p, &pool)) {
                continue;
            }
            match maybe_create_worker(&pool, all) {
                Ok(()) => {
                    retries.backoff = BACKOFF_MIN;
                    retries.failing.remove(&pool.id);
                    pool.creation_failing.store(false, SeqCst);
                }
                Err(err) => {
                    if matches!(&err, Error::Spawn(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
                        make_room_for(&pool, all);
                    }
                    creation_failed(retries, pool, &err)
                }
            }
        }
        if !retries.pools.is_empty() && retries.at.is_none() {
            retries.at = Some(Instant::now() + retries.backoff);
            retries.backoff = (retries.backoff * 2).min(BACKOFF_MAX);
        }
        let next_job = self.lock().periodic.iter().map(|(t, _)| *t).min();
        retries.at.into_iter().chain(next_job).min()
    }

    /// Runs the due periodic jobs with no lock held (pool locks come before
    /// the manager's) and puts back those that go on.
    fn run_periodic(&self, due: Vec<(Instant, Periodic)>) {
        for (_, mut p) in due {
            if (p.job)() {
                self.lock().periodic.push((Instant::now() + p.every, p));
            }
        }
    }
}

/// Notes a failed creation: retry later, and mayday once it has failed
/// for the mayday timeout.
fn creation_failed(retries: &mut Retries, pool: Arc<Pool>, err: &Error) {
    let retry_in = retries.backoff;
    tracing::warn!(target: "wq", pool = %pool.label(), %err, ?retry_in, "worker creation failed");
    pool.creation_failing.store(true, SeqCst);
    let (since, last_mayday) = retries.failing.entry(pool.id).or_insert((Instant::now(), None));
    let now = Instant::now();
    if now - *since >= MAYDAY_INITIAL_TIMEOUT && last_mayday.is_none_or(|t| now - t >= MAYDAY_INTERVAL) {
        *last_mayday = Some(now);
        pool.send_mayday();
    }
    retries.pools.push(pool);
}

/// Creates a worker if the pool still wants one. A worker no item waits
/// for (an idle reserve) must leave the runtime's cap room for the first
/// worker of every pool that has none: those in `all`, and the default
/// unbound pools `build` counted that no queue has made yet
/// (`RtCore::pools_to_come`). `max_workers` may be as low as one worker
/// per pool, and reserves taking it all left a pool whose first item came
/// later with no worker until a reserve timed out.
fn maybe_create_worker(pool: &Arc<Pool>, all: &Mutex<Vec<Arc<Pool>>>) -> Result<(), Error> {
    // Counted (every pool's worker list) only for a pool that has a worker,
    // the only kind that can ask for a reserve; a pool that gained its
    // first worker since then is refused a reserve, which it can ask for again.
    // (The bool first, on its own: a temporary guard of this pool's worker
    // list in the same statement would be held while the count locks it again.)
    let staffed = !pool.workers().is_empty();
    let unstaffed = staffed.then(|| {
        let listed = all.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|p| p.workers().is_empty()).count();
        listed + pool.rt.pools_to_come.load(SeqCst)
    });
    let cap_left = pool.rt.config.max_workers.saturating_sub(pool.rt.nr_workers.load(SeqCst));
    {
        // Decided under the pool lock, as a kick decides to ask: work that
        // arrives after this asks again, work that came before is seen.
        let mut inner = pool.lock();
        let reserve = !pool.workers().is_empty() && !pool.has_pending();
        if !pool.wants_reserve(&inner) || (reserve && unstaffed.is_none_or(|n| cap_left <= n)) {
            inner.want_worker = false;
            return Ok(());
        }
    }
    spawn_worker(pool)
}

/// The runtime's worker cap refused `pool` a worker. If that was to be the
/// pool's first, an idle worker of another pool that keeps one more idle
/// leaves now (`reap_now`), so the retry finds room: otherwise a burst that
/// left one pool with idle workers held the cap until their idle timeout
/// (5 minutes by default) while another pool's first item waited.
fn make_room_for(pool: &Arc<Pool>, all: &Mutex<Vec<Arc<Pool>>>) {
    if !pool.workers().is_empty() {
        return;
    }
    let pools = all.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for other in pools.iter().filter(|p| !Arc::ptr_eq(p, pool)) {
        // The oldest idle worker: the one its own timeout would reap first.
        let victim = {
            let inner = other.lock();
            (inner.idle.len() > 1).then(|| inner.idle[0].clone())
        };
        if let Some(w) = victim {
            w.reap_now();
            return;
        }
    }
}

/// Creates one worker thread for `pool`; it starts idle (or takes pending
/// work at once).
pub(crate) fn spawn_worker(pool: &Arc<Pool>) -> Result<(), Error> {
    let rt = &pool.rt;
    let max = rt.config.max_workers;
    if rt.nr_workers.fetch_add(1, SeqCst) >= max {
        rt.nr_workers.fetch_sub(1, SeqCst);
        return Err(Error::Spawn(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!("a worker: the runtime's worker cap of {max} is reached"),
        )));
    }
    let me = {
        let mut inner = pool.lock();
        let id = inner.next_worker_id;
        inner.next_worker_id += 1;
        let name = match (pool.attrs.cpu, pool.attrs.highpri) {
            (Some(cpu), false) => format!("wq/{cpu}:{id}"),
            (Some(cpu), true) => format!("wq/{cpu}:{id}H"),
            (None, _) => format!("wq/u{}:{id}", pool.id),
        };
        let me = Arc::new(WorkerShared::new(name));
        // The request is answered now, under the same lock that counts the
        // new worker: any kick from here on asks again. (Clearing it after
        // the spawn returned lost the requests the new worker made.)
        inner.want_worker = false;
        inner.nr_starting += 1;
        pool.workers().push(me.clone());
        me
    };
    let (pool2, me2) = (pool.clone(), me.clone());
    match rt.spawn_thread(me.name.clone(), move || worker::run(pool2, me2)) {
        Ok(()) => Ok(()),
        Err(err) => {
            let mut inner = pool.lock();
            inner.nr_starting -= 1;
            pool.remove_worker(&me);
            // A dying pool is retried by nobody: its work runs now.
            let orphaned = pool.is_orphaned(&inner);
            drop(inner);
            rt.nr_workers.fetch_sub(1, SeqCst);
            if orphaned {
                pool.drain_orphans();
            }
            Err(Error::spawn(&format!("worker {}", me.name), err))
        }
    }
}
