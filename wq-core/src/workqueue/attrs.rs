//! Attributes of unbound queues and the pool workqueues built from them.
//!
//! An unbound queue's CPUs are split into *pods* by its affinity scope
//! (`workqueue.rst`, "Affinity Scopes"); each pod gets a worker pool of its
//! own, and an item queued from a CPU runs on the pool of that CPU's pod.
//! `strict` confines the pod's workers to the pod; otherwise they may run on
//! any of the queue's CPUs and are moved back into the pod when an item
//! starts elsewhere (the kernel's non-strict repatriation).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use crate::pool::PwqHandle;
use crate::topology::Scope;
use crate::{Error, Runtime};

/// Attributes of an unbound workqueue (the kernel's `workqueue_attrs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attrs {
    /// Nice value of the workers, -20 (highest priority) to 19.
    pub nice: i32,
    /// CPUs the queue may use; `None`: all of the runtime's.
    pub cpus: Option<Vec<usize>>,
    /// How the CPUs are grouped into pods.
    pub scope: Scope,
    /// Confine each pod's workers to the pod (otherwise they may roam the
    /// queue's CPUs and are brought back when an item starts).
    pub strict: bool,
}

impl Default for Attrs {
    /// Nice 0, all CPUs, scope `Cache`, not strict (the kernel's defaults).
    fn default() -> Attrs {
        Attrs { nice: 0, cpus: None, scope: Scope::Cache, strict: false }
    }
}

impl Attrs {
    /// Checks the attributes against `rt` and returns the queue's CPUs and pods.
    pub(crate) fn pods(&self, rt: &Runtime, ordered: bool) -> Result<(Vec<usize>, Vec<Vec<usize>>), Error> {
        if !(-20..=19).contains(&self.nice) {
            return Err(Error::InvalidAttrs(format!("nice {} is outside -20..=19", self.nice)));
        }
        let topo = match &self.cpus {
            None => rt.topology().clone(),
            Some(cpus) => crate::runtime::restrict(rt.topology(), cpus).map_err(|err| match err {
                // The runtime's own words for these would blame its options.
                Error::NoCpus => Error::InvalidAttrs("an empty CPU set".into()),
                Error::InvalidConfig(what) => Error::InvalidAttrs(what),
                other => other,
            })?,
        };
        let cpus = topo.cpus().to_vec();
        // One pwq keeps an ordered queue's items in order.
        let pods = if ordered { vec![cpus.clone()] } else { topo.pods(self.scope) };
        Ok((cpus, pods))
    }
}

/// The pwqs a queue queues to, and which one serves each CPU slot.
pub(crate) struct PwqSet {
    pub(crate) links: Vec<Arc<PwqHandle>>,
    /// `links` index for each of the runtime's CPU slots.
    pub(crate) by_slot: Vec<usize>,
}

impl PwqSet {
    pub(crate) fn for_slot(&self, slot: usize) -> &Arc<PwqHandle> {
        &self.links[self.by_slot.get(slot).copied().unwrap_or(0)]
    }
}

/// `max_active` of an unbound queue, shared by the pwqs of all its pods
/// (current kernels limit the whole queue, not each pod).
#[derive(Debug)]
pub(crate) struct Limit {
    max: usize,
    /// Invariant: `active <= max`; counts activated, unfinished entries of
    /// all the queue's pwqs.
    active: AtomicUsize,
    /// Entries waiting in inactive lists because of this limit.
    pub(crate) waiting: AtomicUsize,
}

impl Limit {
    pub(crate) fn new(max: usize) -> Limit {
        Limit { max, active: AtomicUsize::new(0), waiting: AtomicUsize::new(0) }
    }

    pub(crate) fn try_acquire(&self) -> bool {
        self.acquire_up_to(1) == 1
    }

    /// Takes as many of `want` slots as are free, in one CAS; returns how
    /// many it took.
    pub(crate) fn acquire_up_to(&self, want: usize) -> usize {
        let mut took = 0;
        let _ = self.active.fetch_update(SeqCst, SeqCst, |a| {
            took = want.min(self.max.saturating_sub(a));
            (took > 0).then_some(a + took)
        });
        took
    }

    /// Whether an entry could be activated now (SeqCst: read after counting
    /// entries in `waiting`, see `PwqState::count_waiting`).
    pub(crate) fn has_room(&self) -> bool {
        self.active.load(SeqCst) < self.max
    }

    pub(crate) fn release(&self, n: usize) {
        let prev = self.active.fetch_sub(n, SeqCst);
        debug_assert!(prev >= n, "unbound max_active underflow");
    }
}
