//! The manager: the one thread that creates workers for pools that asked,
//! and runs the runtime's periodic job (publishing counters for the `wq`
//! tool) in between, so that job costs no thread of its own.
//!
//! Pools ask when their idle reserve is gone or when work waits and no
//! worker can take it. Creating threads off the queueing path keeps
//! `queue` cheap; the idle reserve keeps wakes from waiting for creation.
//! A failed creation (EAGAIN, the worker cap, an injected fault) is retried
//! with exponential backoff; the pool's work stays queued meanwhile, and
//! after the mayday timeout the rescuers of its `MEM_RECLAIM` queues are
//! called (see `rescuer.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::RtCore;
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
    cv: Condvar,
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

impl Manager {
    pub(crate) fn new() -> Arc<Manager> {
        Arc::new(Manager { queue: Mutex::new(Requests::default()), cv: Condvar::new() })
    }

    fn lock(&self) -> MutexGuard<'_, Requests> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called with the pool lock held (lock order: pool, then manager).
    pub(crate) fn request(&self, pool: Arc<Pool>) {
        self.lock().pools.push(pool);
        self.cv.notify_one();
    }

    /// Adds a periodic job; its first run is `every` from now.
    pub(crate) fn add_periodic(&self, periodic: Periodic) {
        self.lock().periodic.push((Instant::now() + periodic.every, periodic));
        self.cv.notify_one();
    }

    pub(crate) fn shut_down(&self) {
        self.lock().shutdown = true;
        self.cv.notify_one();
    }

    pub(crate) fn start(core: &Arc<RtCore>) -> Result<(), Error> {
        let core2 = core.clone();
        std::thread::Builder::new().name("wq/manager".into()).spawn(move || run(&core2)).map(drop).map_err(Error::Spawn)
    }
}

fn run(core: &RtCore) {
    let manager = &core.manager;
    let mut retry: Vec<Arc<Pool>> = Vec::new();
    // Pools whose creation keeps failing: when it started, when the last
    // mayday went out.
    let mut failing: HashMap<usize, (Instant, Option<Instant>)> = HashMap::new();
    let mut backoff = BACKOFF_MIN;
    let mut retry_at: Option<Instant> = None;
    loop {
        let (mut pools, periodic) = {
            let mut q = manager.lock();
            loop {
                if q.shutdown {
                    return;
                }
                let job_at = q.periodic.iter().map(|(t, _)| *t).min();
                let now = Instant::now();
                let due = |t: Option<Instant>| t.is_some_and(|t| now >= t);
                if !q.pools.is_empty() || due(retry_at) || due(job_at) {
                    break;
                }
                q = match retry_at.into_iter().chain(job_at).min() {
                    Some(t) => {
                        manager
                            .cv
                            .wait_timeout(q, t.saturating_duration_since(now))
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    None => manager.cv.wait(q).unwrap_or_else(|e| e.into_inner()),
                };
            }
            let now = Instant::now();
            let (due, later) = std::mem::take(&mut q.periodic).into_iter().partition(|(t, _)| now >= *t);
            q.periodic = later;
            (std::mem::take(&mut q.pools), due)
        };
        run_periodic(manager, periodic);
        if retry_at.is_some_and(|t| Instant::now() >= t) {
            pools.append(&mut retry);
            retry_at = None;
        }
        for pool in pools {
            if retry.iter().any(|p| Arc::ptr_eq(p, &pool)) {
                continue;
            }
            match maybe_create_worker(&pool) {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    failing.remove(&pool.id);
                    pool.creation_failing.store(false, SeqCst);
                }
                Err(err) => {
                    tracing::warn!(target: "wq", pool = %pool.label(), %err, retry_in = ?backoff, "worker creation failed");
                    pool.creation_failing.store(true, SeqCst);
                    let (since, last_mayday) = failing.entry(pool.id).or_insert((Instant::now(), None));
                    let now = Instant::now();
                    if now - *since >= MAYDAY_INITIAL_TIMEOUT && last_mayday.is_none_or(|t| now - t >= MAYDAY_INTERVAL)
                    {
                        *last_mayday = Some(now);
                        pool.send_mayday();
                    }
                    retry.push(pool);
                }
            }
        }
        if !retry.is_empty() && retry_at.is_none() {
            retry_at = Some(Instant::now() + backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Runs the due periodic jobs with no lock held (pool locks come before the
/// manager's) and puts back those that go on.
fn run_periodic(manager: &Manager, due: Vec<(Instant, Periodic)>) {
    for (_, mut p) in due {
        if (p.job)() {
            manager.lock().periodic.push((Instant::now() + p.every, p));
        }
    }
}

/// Creates a worker if the pool still wants one.
fn maybe_create_worker(pool: &Arc<Pool>) -> Result<(), Error> {
    {
        let mut inner = pool.lock();
        if !pool.wants_worker(&inner) {
            inner.want_worker = false;
            return Ok(());
        }
    }
    spawn_worker(pool)
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
            format!("the runtime's worker cap of {max} is reached"),
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
            drop(inner);
            rt.nr_workers.fetch_sub(1, SeqCst);
            Err(Error::Spawn(err))
        }
    }
}
