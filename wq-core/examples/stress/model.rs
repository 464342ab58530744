//! What the stress test runs on: queue slots whose workqueues are destroyed
//! and re-created, and work items that count their runs and check the
//! limits of their queue while they run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

use wq_core::{Attrs, DelayedWork, Error, Flags, Runtime, Scope, Work, Workqueue};

use super::config::Rng;

/// Accepted queueings, successful cancels and runs of one item.
#[derive(Default)]
pub struct Counts {
    pub(super) accepted: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) runs: AtomicU64,
}

/// One incarnation of a queue slot: a workqueue and what its items observed.
pub struct Inc {
    pub(super) name: String,
    pub(super) slot: usize,
    pub(super) wq: Workqueue,
    pub(super) bound: bool,
    /// `max_active` per CPU for bound queues, for the queue otherwise.
    pub(super) limit: u32,
    pub(super) ncpus: u32,
    /// Items of this queue running now, by CPU (one-shot items of bound queues).
    pub(super) per_cpu: Vec<AtomicU32>,
    /// Items of this queue running now, over all CPUs.
    pub(super) total: AtomicU32,
    /// Highest sequence number started, per producer (ordered queues).
    pub(super) fifo: Vec<AtomicU64>,
    /// `destroy` returned: nothing may run here any more.
    pub(super) destroyed: AtomicBool,
    /// The destroyer is at work: producers arm no more delayed work here.
    pub(super) closing: AtomicBool,
}

/// Marks an item of an [`Inc`] as running; checks the limits on entry and
/// the destroy guarantee on both ends.
struct Active<'a> {
    sh: &'a Shared,
    inc: Arc<Inc>,
    cpu: Option<usize>,
}

impl Inc {
    fn enter<'a>(self: &Arc<Inc>, sh: &'a Shared, per_cpu: bool) -> Active<'a> {
        if self.destroyed.load(SeqCst) {
            sh.violation(format!("an item of {} started after destroy returned", self.name));
        }
        let n = self.total.fetch_add(1, SeqCst) + 1;
        let cap = if self.bound { self.limit * self.ncpus } else { self.limit };
        if n > cap {
            sh.violation(format!("{}: {n} items ran at once, max_active allows {cap}", self.name));
        }
        let mut cpu = None;
        if per_cpu && self.bound {
            let c = current_cpu();
            match self.per_cpu.get(c) {
                Some(count) => {
                    let n = count.fetch_add(1, SeqCst) + 1;
                    if n > self.limit {
                        sh.violation(format!(
                            "{}: {n} items ran at once on CPU {c}, max_active {}",
                            self.name, self.limit
                        ));
                    }
                    cpu = Some(c);
                }
                None => sh.violation(format!("{}: a bound item ran on CPU {c}, outside the runtime", self.name)),
            }
        }
        Active { sh, inc: self.clone(), cpu }
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if self.inc.destroyed.load(SeqCst) {
            self.sh.violation(format!("destroy of {} returned while one of its items ran", self.inc.name));
        }
        if let Some(c) = self.cpu {
            self.inc.per_cpu[c].fetch_sub(1, SeqCst);
        }
        self.inc.total.fetch_sub(1, SeqCst);
    }
}

fn current_cpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).unwrap_or(usize::MAX)
}

/// Whose a work item is, which decides how it may be used and checked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Owner {
    /// Queued only on its slot's queue; counts in that queue's limits; may requeue itself.
    Slot(usize),
    /// Queued on any queue by anyone.
    Roaming,
    /// Used by one producer only, so its state is known exactly after each call.
    Private(usize),
}

/// A reusable work item with its counts.
pub struct Item {
    pub(super) id: u64,
    pub(super) owner: Owner,
    pub(super) counts: Counts,
    /// Instances running now: more than one breaks non-reentrancy.
    pub(super) running: AtomicU32,
    /// How many more times the item may requeue itself.
    pub(super) chain: AtomicU32,
    pub(super) work: OnceLock<Work>,
}

/// A delayed work item with its counts.
pub struct DItem {
    pub(super) id: u64,
    pub(super) slot: usize,
    pub(super) counts: Counts,
    pub(super) running: AtomicU32,
    /// Serialises the harness's calls on this item. `mod_delayed` racing
    /// with `cancel_sync` of the same item returns `Ok(false)` without
    /// queueing (queueing is disabled meanwhile, as in the kernel), which
    /// no caller can tell from "was idle, now queued"; holding this lock
    /// keeps the accounting exact. The timer and the workers still race
    /// with every call.
    pub(super) ops: Mutex<()>,
    pub(super) dwork: OnceLock<DelayedWork>,
}

impl DItem {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A queue slot: the live incarnation and the items it owns.
pub struct Slot {
    pub(super) current: Mutex<Arc<Inc>>,
    pub(super) works: Vec<Arc<Item>>,
    pub(super) dworks: Vec<Arc<DItem>>,
}

impl Slot {
    pub(super) fn current(&self) -> Arc<Inc> {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Everything the threads and the items share.
pub struct Shared {
    pub(super) rt: Runtime,
    pub(super) slots: Vec<Slot>,
    pub(super) roaming: Vec<Arc<Item>>,
    pub(super) private: Vec<Vec<Arc<Item>>>,
    /// Recently destroyed incarnations, for producers to check refusals.
    pub(super) stale: Mutex<VecDeque<Arc<Inc>>>,
    pub(super) once: Counts,
    pub(super) refused: AtomicU64,
    pub(super) violations: AtomicU64,
    pub(super) messages: Mutex<Vec<String>>,
    pub(super) next_inc: AtomicU64,
    pub(super) stop: AtomicBool,
}

impl Shared {
    pub(super) fn violation(&self, msg: String) {
        self.violations.fetch_add(1, SeqCst);
        let mut m = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() < 40 {
            eprintln!("stress: VIOLATION: {msg}");
            m.push(msg);
        }
    }

    pub(super) fn total_runs(&self) -> u64 {
        let items = self.all_items().map(|i| i.counts.runs.load(SeqCst)).sum::<u64>();
        let d = self.slots.iter().flat_map(|s| &s.dworks).map(|d| d.counts.runs.load(SeqCst)).sum::<u64>();
        items + d + self.once.runs.load(SeqCst)
    }

    pub(super) fn all_items(&self) -> impl Iterator<Item = &Arc<Item>> {
        self.slots.iter().flat_map(|s| &s.works).chain(&self.roaming).chain(self.private.iter().flatten())
    }

    pub(super) fn new_inc(&self, slot: usize, rng: &mut Rng, producers: usize) -> Arc<Inc> {
        let n = self.next_inc.fetch_add(1, SeqCst);
        new_inc(&self.rt, slot, n, rng, producers)
    }
}

pub(super) fn new_inc(rt: &Runtime, slot: usize, n: u64, rng: &mut Rng, producers: usize) -> Arc<Inc> {
    let name = format!("stress-{slot}.{n}");
    let mut flags = Flags::empty();
    for (f, pct) in [(Flags::HIGHPRI, 30), (Flags::CPU_INTENSIVE, 25), (Flags::UNBOUND, 35)] {
        if rng.pct(pct) {
            flags |= f;
        }
    }
    let ordered = rng.pct(20);
    let mut b = rt.workqueue(&name);
    if ordered {
        flags.remove(Flags::CPU_INTENSIVE);
        b = b.ordered();
    } else {
        b = b.max_active([0, 1, 1, 2, 2, 3, 4, 8][rng.below(8) as usize]);
        // One pod per CPU: the queue-wide `max_active` spans several
        // pools' locks (pool/README.md, "The queue-wide limit").
        if flags.contains(Flags::UNBOUND) && rng.pct(50) {
            b = b.attrs(Attrs { scope: Scope::Cpu, ..Attrs::default() });
        }
    }
    let wq = b.flags(flags).build().unwrap_or_else(|e| panic!("creating {name}: {e}"));
    let max_cpu = rt.cpus().iter().max().copied().unwrap_or(0);
    Arc::new(Inc {
        slot,
        bound: !wq.flags().contains(Flags::UNBOUND),
        limit: wq.max_active(),
        ncpus: rt.cpus().len() as u32,
        per_cpu: (0..=max_cpu).map(|_| AtomicU32::new(0)).collect(),
        total: AtomicU32::new(0),
        fifo: (0..producers).map(|_| AtomicU64::new(0)).collect(),
        destroyed: AtomicBool::new(false),
        closing: AtomicBool::new(false),
        name,
        wq,
    })
}

/// What the body of an item does, picked from a hash of its id and run.
fn body(h: u64) {
    match h % 100 {
        0..=69 => {}
        70..=84 => {
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(20) {
                std::hint::spin_loop();
            }
        }
        85..=95 => wq_core::blocking(|| thread::sleep(Duration::from_micros(200))),
        _ => thread::sleep(Duration::from_micros(200)),
    }
}

fn mix(a: u64, b: u64) -> u64 {
    Rng::new(a.wrapping_mul(0x1000_0001) ^ b).next_u64()
}

pub(super) fn make_item(sh: &Weak<Shared>, id: u64, owner: Owner) -> Arc<Item> {
    let item = Arc::new(Item {
        id,
        owner,
        counts: Counts::default(),
        running: AtomicU32::new(0),
        chain: AtomicU32::new(0),
        work: OnceLock::new(),
    });
    let (sh, me) = (sh.clone(), Arc::downgrade(&item));
    let work = Work::new(move || {
        let (Some(sh), Some(me)) = (sh.upgrade(), me.upgrade()) else { return };
        let run = me.counts.runs.fetch_add(1, SeqCst);
        if me.running.fetch_add(1, SeqCst) != 0 {
            sh.violation(format!("work item {} ran concurrently with itself", me.id));
        }
        let active = match me.owner {
            Owner::Slot(s) => Some(sh.slots[s].current().enter(&sh, false)),
            _ => None,
        };
        body(mix(me.id, run));
        // Chaining: an item may requeue itself, also while its queue drains.
        if let Some(a) = &active {
            if me.chain.load(SeqCst) > 0 {
                me.chain.fetch_sub(1, SeqCst);
                match a.inc.wq.try_queue(me.work.get().expect("set at creation")) {
                    Ok(true) => {
                        me.counts.accepted.fetch_add(1, SeqCst);
                    }
                    Ok(false) => {}
                    Err(Error::Destroyed { .. }) => {
                        sh.refused.fetch_add(1, SeqCst);
                    }
                    Err(e) => sh.violation(format!("self-requeue of work item {} refused: {e}", me.id)),
                }
            }
        }
        drop(active);
        me.running.fetch_sub(1, SeqCst);
    });
    item.work.set(work).unwrap_or_else(|_| unreachable!());
    item
}

pub(super) fn make_ditem(sh: &Weak<Shared>, id: u64, slot: usize) -> Arc<DItem> {
    let item = Arc::new(DItem {
        id,
        slot,
        counts: Counts::default(),
        running: AtomicU32::new(0),
        ops: Mutex::new(()),
        dwork: OnceLock::new(),
    });
    let (sh, me) = (sh.clone(), Arc::downgrade(&item));
    let dwork = DelayedWork::new(move || {
        let (Some(sh), Some(me)) = (sh.upgrade(), me.upgrade()) else { return };
        let run = me.counts.runs.fetch_add(1, SeqCst);
        if me.running.fetch_add(1, SeqCst) != 0 {
            sh.violation(format!("delayed work item {} ran concurrently with itself", me.id));
        }
        let active = sh.slots[me.slot].current().enter(&sh, false);
        body(mix(me.id, run));
        drop(active);
        me.running.fetch_sub(1, SeqCst);
    });
    item.dwork.set(dwork).unwrap_or_else(|_| unreachable!());
    item
}

/// A one-shot closure's check-in: counts the run, checks the queue's limits
/// and, on ordered queues, the order of one producer's items.
pub(super) fn run_once(sh: &Shared, inc: &Arc<Inc>, producer: Option<usize>, seq: u64) {
    sh.once.runs.fetch_add(1, SeqCst);
    let active = inc.enter(sh, true);
    if let (Some(p), true) = (producer, inc.wq.is_ordered()) {
        let prev = inc.fifo[p].fetch_max(seq, SeqCst);
        if prev > seq {
            sh.violation(format!("{}: producer {p}'s item {seq} ran after its item {prev}", inc.name));
        }
    }
    body(mix(seq, producer.map_or(7, |p| p as u64)));
    drop(active);
}

pub(super) fn execute_chain(sh: &Arc<Shared>, inc: &Arc<Inc>, left: u32) -> Result<(), Error> {
    let (sh2, inc2) = (sh.clone(), inc.clone());
    inc.wq.execute(move || {
        run_once(&sh2, &inc2, None, 0);
        if left > 0 {
            match execute_chain(&sh2, &inc2, left - 1) {
                Ok(()) => {
                    sh2.once.accepted.fetch_add(1, SeqCst);
                }
                Err(Error::Destroyed { .. }) => {
                    sh2.refused.fetch_add(1, SeqCst);
                }
                Err(e) => sh2.violation(format!("chained execute on {} refused: {e}", inc2.name)),
            }
        }
    })
}
