//! The runtime's worker pools: the bound ones (normal and highpri per CPU)
//! made at start, the unbound ones made on demand, one per distinct set of
//! attributes (nice, pod, strictness), shared by every queue that asks for
//! the same — as the kernel shares unbound pools by `workqueue_attrs`.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};

use super::RtCore;
use crate::pool::{Pool, PoolAttrs};
use crate::{Error, Scope, Topology};

pub(crate) struct Pools {
    /// `bound[slot] = [normal, highpri]`.
    pub(crate) bound: Vec<[Arc<Pool>; 2]>,
    /// Unbound pools, each with attributes no other one has.
    unbound: Mutex<Vec<Arc<Pool>>>,
    /// Every pool, in creation order; the monitor walks this list.
    pub(crate) all: Arc<Mutex<Vec<Arc<Pool>>>>,
    /// The attributes of the default unbound pools (normal and highpri,
    /// one per cache pod), which `build` counted against `max_workers`
    /// whether or not a queue ever makes them.
    counted: Vec<PoolAttrs>,
    next_id: AtomicUsize,
    core: Arc<RtCore>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pools {
    /// Makes the bound pools of `cpus`. A pool starts without workers: the
    /// first item queued to it asks the manager for one, so a runtime costs
    /// threads only for the pools its queues use.
    pub(crate) fn new(core: Arc<RtCore>, topology: &Topology) -> Pools {
        let cpus = topology.cpus();
        let counted = [nice_of(false), nice_of(true)]
            .into_iter()
            .flat_map(|nice| topology.pods(Scope::Cache).into_iter().map(move |pod| (nice, pod)))
            .map(|(nice, pod)| unbound_attrs(nice, cpus, &pod, false))
            .collect::<Vec<_>>();
        core.pools_to_come.store(counted.len(), SeqCst);
        let next_id = AtomicUsize::new(0);
        let mut all = Vec::new();
        let bound = cpus
            .iter()
            .map(|&cpu| {
                [false, true].map(|highpri| {
                    let attrs =
                        PoolAttrs { cpu: Some(cpu), highpri, nice: nice_of(highpri), cpus: vec![cpu], pod: None };
                    let pool = Pool::new(core.clone(), next_id.fetch_add(1, SeqCst), attrs);
                    all.push(pool.clone());
                    pool
                })
            })
            .collect();
        Pools { bound, unbound: Mutex::new(Vec::new()), all: Arc::new(Mutex::new(all)), counted, next_id, core }
    }

    /// The pools `max_workers` must leave a worker for: the ones `build`
    /// counted, and the unbound pools made since with other attributes.
    fn nr_pools(&self, unbound: &[Arc<Pool>]) -> usize {
        let extra = unbound.iter().filter(|p| !self.counted.contains(&p.attrs)).count();
        2 * self.bound.len() + self.counted.len() + extra
    }

    /// Every pool, bound ones first.
    pub(crate) fn list(&self) -> Vec<Arc<Pool>> {
        lock(&self.all).clone()
    }

    /// The unbound pool for `pod` of a queue whose CPUs are `cpus`, made
    /// (without workers, like the bound ones) if no queue asked for it before.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the pool would be new, and one more than
    /// `max_workers` leaves a worker for: every pool keeps its first worker,
    /// so this one would never get any, and its items would never run.
    pub(crate) fn unbound(&self, nice: i32, cpus: &[usize], pod: &[usize], strict: bool) -> Result<Arc<Pool>, Error> {
        let attrs = unbound_attrs(nice, cpus, pod, strict);
        let mut unbound = lock(&self.unbound);
        if let Some(p) = unbound.iter().find(|p| p.attrs == attrs) {
            return Ok(p.clone());
        }
        let needed = self.nr_pools(&unbound) + usize::from(!self.counted.contains(&attrs));
        let max = self.core.config.max_workers;
        if needed > max {
            return Err(Error::InvalidConfig(format!(
                "max_workers {max} leaves no worker for a new pool (nice {nice}, CPUs {:?}): \
                 {needed} pools would need one each",
                attrs.cpus
            )));
        }
        if self.counted.contains(&attrs) {
            self.core.pools_to_come.fetch_sub(1, SeqCst);
        }
        let pool = Pool::new(self.core.clone(), self.next_id.fetch_add(1, SeqCst), attrs);
        unbound.push(pool.clone());
        lock(&self.all).push(pool.clone());
        Ok(pool)
    }
}

/// The attributes of the unbound pool for `pod` of a queue whose CPUs are `cpus`.
fn unbound_attrs(nice: i32, cpus: &[usize], pod: &[usize], strict: bool) -> PoolAttrs {
    PoolAttrs {
        cpu: None,
        highpri: nice < 0,
        nice,
        // Strict pods confine their workers; the others may roam the
        // queue's CPUs and are brought back at item start.
        cpus: if strict { pod.to_vec() } else { cpus.to_vec() },
        pod: (!strict && pod.len() < cpus.len()).then(|| pod.to_vec()),
    }
}

/// The nice value of a pool's workers: highpri pools ask for the highest.
pub(crate) fn nice_of(highpri: bool) -> i32 {
    if highpri {
        -20
    } else {
        0
    }
}
