//! Stress test of the wq-core engine with exact accounting.
//!
//! Many queues with random flags and `max_active`, several producer threads
//! and a destroyer thread run random interleavings of queue / queue_on /
//! execute / submit / cancel / cancel_sync / flush / queue_delayed /
//! mod_delayed / destroy (and re-create) for a fixed time. Every item
//! carries an id and counts its own runs; at the end the program proves
//! that every accepted queueing ran exactly once unless it was cancelled
//! (runs of an item == accepted queueings − successful cancels), that no
//! item ran concurrently with itself, that `max_active` and ordering were
//! never exceeded, that nothing ran on a queue after its `destroy` returned,
//! that nothing ran after `cancel_sync` returned, and that every pool's
//! `running` count went back to 0.
//!
//! ```text
//! cargo run --release -p wq-core --example stress -- --seconds 60 [--seed 7] [--producers 4] [--queues 8]
//! ```
//!
//! It ends with one line,
//! `stress: accepted=… run=… cancelled=… refused=… lost=0 duplicated=0 limit_violations=0`,
//! and exits with status 1 on any violation (2 on bad arguments, 3 on a hang).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

use wq_core::{DelayedWork, Error, Flags, Runtime, Work, Workqueue};

/// What one stress run does.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long producers run.
    pub duration: Duration,
    /// Seed of the operation mix (interleavings still vary from run to run).
    pub seed: u64,
    /// Producer threads.
    pub producers: usize,
    /// Queue slots; each holds one live workqueue, re-created after destroy.
    pub queues: usize,
    /// Reusable work items owned by each queue slot.
    pub works_per_queue: usize,
    /// Delayed work items owned by each queue slot.
    pub dworks_per_queue: usize,
    /// Work items queued on any queue (tests cross-queue non-reentrancy).
    pub roaming: usize,
    /// Per cent of worker creations that fail (fault injection).
    pub spawn_fail_pct: u64,
    /// Give up (exit 3) if no item ran for this long.
    pub hang_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            duration: Duration::from_secs(10),
            seed: 1,
            producers: 3,
            queues: 8,
            works_per_queue: 6,
            dworks_per_queue: 3,
            roaming: 6,
            spawn_fail_pct: 2,
            hang_timeout: Duration::from_secs(60),
        }
    }
}

const USAGE: &str = "usage: stress --seconds N [--seed S] [--producers P] [--queues Q] [--spawn-fail-pct F]";

impl Config {
    /// Parses the command line (without the program name).
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Config, String> {
        let mut cfg = Config::default();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v:?}: {e}"));
            match flag.as_str() {
                "--seconds" => {
                    let s: f64 = value.parse().map_err(|e| format!("--seconds {value:?}: {e}"))?;
                    if !(s.is_finite() && s > 0.0 && s < 1e7) {
                        return Err(format!("--seconds {value}: must be a positive number of seconds"));
                    }
                    cfg.duration = Duration::from_secs_f64(s);
                }
                "--seed" => cfg.seed = num(&value)?,
                "--producers" => cfg.producers = (num(&value)? as usize).clamp(1, 64),
                "--queues" => cfg.queues = (num(&value)? as usize).clamp(1, 64),
                "--spawn-fail-pct" => cfg.spawn_fail_pct = num(&value)?.min(50),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        Ok(cfg)
    }
}

/// A small deterministic generator (SplitMix64): no dependency, and a
/// seed reproduces the operation mix.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `pct` per cent.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// Accepted queueings, successful cancels and runs of one item.
#[derive(Default)]
pub struct Counts {
    accepted: AtomicU64,
    cancelled: AtomicU64,
    runs: AtomicU64,
}

/// One incarnation of a queue slot: a workqueue and what its items observed.
pub struct Inc {
    name: String,
    slot: usize,
    wq: Workqueue,
    bound: bool,
    /// `max_active` per CPU for bound queues, for the queue otherwise.
    limit: u32,
    ncpus: u32,
    /// Items of this queue running now, by CPU (one-shot items of bound queues).
    per_cpu: Vec<AtomicU32>,
    /// Items of this queue running now, over all CPUs.
    total: AtomicU32,
    /// Highest sequence number started, per producer (ordered queues).
    fifo: Vec<AtomicU64>,
    /// `destroy` returned: nothing may run here any more.
    destroyed: AtomicBool,
    /// The destroyer is at work: producers arm no more delayed work here.
    closing: AtomicBool,
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
enum Owner {
    /// Queued only on its slot's queue; counts in that queue's limits; may requeue itself.
    Slot(usize),
    /// Queued on any queue by anyone.
    Roaming,
    /// Used by one producer only, so its state is known exactly after each call.
    Private(usize),
}

/// A reusable work item with its counts.
pub struct Item {
    id: u64,
    owner: Owner,
    counts: Counts,
    /// Instances running now: more than one breaks non-reentrancy.
    running: AtomicU32,
    /// How many more times the item may requeue itself.
    chain: AtomicU32,
    work: OnceLock<Work>,
}

/// A delayed work item with its counts.
pub struct DItem {
    id: u64,
    slot: usize,
    counts: Counts,
    running: AtomicU32,
    /// Serialises the harness's calls on this item. `mod_delayed` racing
    /// with `cancel_sync` of the same item returns `Ok(false)` without
    /// queueing (queueing is disabled meanwhile, as in the kernel), which
    /// no caller can tell from "was idle, now queued"; holding this lock
    /// keeps the accounting exact. The timer and the workers still race
    /// with every call.
    ops: Mutex<()>,
    dwork: OnceLock<DelayedWork>,
}

impl DItem {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A queue slot: the live incarnation and the items it owns.
pub struct Slot {
    current: Mutex<Arc<Inc>>,
    works: Vec<Arc<Item>>,
    dworks: Vec<Arc<DItem>>,
}

impl Slot {
    fn current(&self) -> Arc<Inc> {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Everything the threads and the items share.
pub struct Shared {
    rt: Runtime,
    slots: Vec<Slot>,
    roaming: Vec<Arc<Item>>,
    private: Vec<Vec<Arc<Item>>>,
    /// Recently destroyed incarnations, for producers to check refusals.
    stale: Mutex<VecDeque<Arc<Inc>>>,
    once: Counts,
    refused: AtomicU64,
    violations: AtomicU64,
    messages: Mutex<Vec<String>>,
    next_inc: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn violation(&self, msg: String) {
        self.violations.fetch_add(1, SeqCst);
        let mut m = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() < 40 {
            eprintln!("stress: VIOLATION: {msg}");
            m.push(msg);
        }
    }

    fn total_runs(&self) -> u64 {
        let items = self.all_items().map(|i| i.counts.runs.load(SeqCst)).sum::<u64>();
        let d = self.slots.iter().flat_map(|s| &s.dworks).map(|d| d.counts.runs.load(SeqCst)).sum::<u64>();
        items + d + self.once.runs.load(SeqCst)
    }

    fn all_items(&self) -> impl Iterator<Item = &Arc<Item>> {
        self.slots.iter().flat_map(|s| &s.works).chain(&self.roaming).chain(self.private.iter().flatten())
    }

    fn new_inc(&self, slot: usize, rng: &mut Rng, producers: usize) -> Arc<Inc> {
        let n = self.next_inc.fetch_add(1, SeqCst);
        new_inc(&self.rt, slot, n, rng, producers)
    }
}

fn new_inc(rt: &Runtime, slot: usize, n: u64, rng: &mut Rng, producers: usize) -> Arc<Inc> {
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

fn make_item(sh: &Weak<Shared>, id: u64, owner: Owner) -> Arc<Item> {
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

fn make_ditem(sh: &Weak<Shared>, id: u64, slot: usize) -> Arc<DItem> {
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
fn run_once(sh: &Shared, inc: &Arc<Inc>, producer: Option<usize>, seq: u64) {
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

fn execute_chain(sh: &Arc<Shared>, inc: &Arc<Inc>, left: u32) -> Result<(), Error> {
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

/// Counts the outcome of one queueing attempt.
fn account(sh: &Shared, counts: &Counts, r: Result<bool, Error>, what: &str) {
    match r {
        Ok(true) => {
            counts.accepted.fetch_add(1, SeqCst);
        }
        Ok(false) => {}
        Err(Error::Destroyed { .. } | Error::Draining { .. }) => {
            sh.refused.fetch_add(1, SeqCst);
        }
        Err(e) => sh.violation(format!("{what}: unexpected error {e}")),
    }
}

/// What a producer knows about one of its private items.
#[derive(Default)]
struct Model {
    /// The queue its last accepted instance went to.
    last: Option<Arc<Inc>>,
    /// Runs when `cancel_sync` last returned, if nothing was queued since.
    frozen: Option<u64>,
}

fn expected(c: &Counts) -> u64 {
    c.accepted.load(SeqCst).saturating_sub(c.cancelled.load(SeqCst))
}

fn producer(sh: Arc<Shared>, p: usize, mut rng: Rng) {
    let cpus = sh.rt.cpus().to_vec();
    let mut models: Vec<Model> = sh.private[p].iter().map(|_| Model::default()).collect();
    let mut seq = 0u64;
    while !sh.stop.load(SeqCst) {
        let s = rng.below(sh.slots.len() as u64) as usize;
        let slot = &sh.slots[s];
        let inc = slot.current();
        let op = rng.below(100);
        match op {
            0..=19 => {
                let it = &slot.works[rng.below(slot.works.len() as u64) as usize];
                if rng.pct(10) {
                    it.chain.store(rng.below(4) as u32, SeqCst);
                }
                let w = it.work.get().expect("set");
                let r = if rng.pct(30) {
                    inc.wq.queue_on(cpus[rng.below(cpus.len() as u64) as usize], w)
                } else {
                    inc.wq.try_queue(w)
                };
                account(&sh, &it.counts, r, "queue");
            }
            20..=24 => {
                let it = &sh.roaming[rng.below(sh.roaming.len() as u64) as usize];
                account(&sh, &it.counts, inc.wq.try_queue(it.work.get().expect("set")), "queue roaming");
            }
            25..=31 => {
                let pool: &[Arc<Item>] = if rng.pct(50) { &slot.works } else { &sh.roaming };
                let it = &pool[rng.below(pool.len() as u64) as usize];
                let w = it.work.get().expect("set");
                let cancelled = if rng.pct(20) {
                    w.cancel_sync().unwrap_or_else(|e| {
                        sh.violation(format!("cancel_sync of {}: {e}", it.id));
                        false
                    })
                } else {
                    w.cancel()
                };
                if cancelled {
                    it.counts.cancelled.fetch_add(1, SeqCst);
                }
            }
            32..=51 => {
                seq += 1;
                let (sh2, inc2, q) = (sh.clone(), inc.clone(), seq);
                let r = if rng.pct(10) {
                    execute_chain(&sh, &inc, rng.below(4) as u32)
                } else {
                    inc.wq.execute(move || run_once(&sh2, &inc2, Some(p), q))
                };
                account(&sh, &sh.once, r.map(|()| true), "execute");
            }
            52..=64 => {
                seq += 1;
                let (sh2, inc2, q) = (sh.clone(), inc.clone(), seq);
                match inc.wq.submit(move || {
                    run_once(&sh2, &inc2, Some(p), q);
                    q
                }) {
                    Ok(c) => {
                        sh.once.accepted.fetch_add(1, SeqCst);
                        match rng.below(10) {
                            0..=2 => {
                                if c.cancel().is_ok() {
                                    sh.once.cancelled.fetch_add(1, SeqCst);
                                }
                            }
                            3 => match c.wait() {
                                Ok(v) if v == q => {}
                                other => sh.violation(format!("submit {q} on {} gave {other:?}", inc.name)),
                            },
                            _ => drop(c),
                        }
                    }
                    Err(e) => account(&sh, &sh.once, Err(e), "submit"),
                }
            }
            65..=76 => delayed_op(&sh, slot, &inc, &mut rng),
            77..=80 => {
                let it = &slot.works[rng.below(slot.works.len() as u64) as usize];
                if let Err(e) = it.work.get().expect("set").flush() {
                    sh.violation(format!("flush of work item {}: {e}", it.id));
                }
            }
            81..=82 => {
                if let Err(e) = inc.wq.flush() {
                    sh.violation(format!("flush of {}: {e}", inc.name));
                }
            }
            83..=96 => {
                let i = rng.below(models.len() as u64) as usize;
                private_op(&sh, &sh.private[p][i], &mut models[i], &inc, &cpus, &mut rng);
            }
            _ => stale_op(&sh, &mut rng),
        }
    }
}

fn delayed_op(sh: &Shared, slot: &Slot, inc: &Arc<Inc>, rng: &mut Rng) {
    let it = &slot.dworks[rng.below(slot.dworks.len() as u64) as usize];
    let d = it.dwork.get().expect("set");
    let _serial = it.lock();
    let delay = match rng.below(4) {
        0 => Duration::ZERO,
        1 => Duration::from_micros(rng.below(500)),
        _ => Duration::from_micros(rng.below(5_000)),
    };
    match rng.below(10) {
        0..=3 if !inc.closing.load(SeqCst) => {
            account(sh, &it.counts, inc.wq.try_queue_delayed(d, delay), "queue_delayed")
        }
        4..=6 if !inc.closing.load(SeqCst) => match inc.wq.mod_delayed(d, delay) {
            // It was pending and is re-armed: still one run owed.
            Ok(true) => {}
            r => account(sh, &it.counts, r.map(|_| true), "mod_delayed"),
        },
        7 | 8 => {
            if d.cancel() {
                it.counts.cancelled.fetch_add(1, SeqCst);
            }
        }
        9 => match d.cancel_sync() {
            Ok(true) => {
                it.counts.cancelled.fetch_add(1, SeqCst);
            }
            Ok(false) => {}
            Err(e) => sh.violation(format!("cancel_sync of delayed {}: {e}", it.id)),
        },
        _ => {
            if let Err(e) = d.flush() {
                sh.violation(format!("flush of delayed {}: {e}", it.id));
            }
        }
    }
}

/// An operation on a producer's private item, whose state is exact after
/// each call because nobody else touches it.
fn private_op(sh: &Shared, it: &Item, m: &mut Model, inc: &Arc<Inc>, cpus: &[usize], rng: &mut Rng) {
    let w = it.work.get().expect("set");
    let runs = it.counts.runs.load(SeqCst);
    if let Some(frozen) = m.frozen {
        if runs != frozen {
            sh.violation(format!("private item {} ran after cancel_sync returned ({frozen} -> {runs})", it.id));
        }
    }
    match rng.below(6) {
        0 | 1 => {
            let r = if rng.pct(50) {
                inc.wq.try_queue(w)
            } else {
                inc.wq.queue_on(cpus[rng.below(cpus.len() as u64) as usize], w)
            };
            if let Ok(true) = r {
                m.last = Some(inc.clone());
                m.frozen = None;
            }
            account(sh, &it.counts, r, "queue private");
        }
        2 => {
            if w.cancel() {
                it.counts.cancelled.fetch_add(1, SeqCst);
                // An earlier instance may still run on another queue than
                // `last`, which a flush of `last` rightly does not wait for.
                m.last = None;
            }
        }
        3 => {
            match w.cancel_sync() {
                Ok(true) => {
                    it.counts.cancelled.fetch_add(1, SeqCst);
                }
                Ok(false) => {}
                Err(e) => sh.violation(format!("cancel_sync of private {}: {e}", it.id)),
            }
            if w.is_pending() || w.is_running() {
                sh.violation(format!("private item {} still pending/running after cancel_sync returned", it.id));
            }
            let runs = it.counts.runs.load(SeqCst);
            if runs != expected(&it.counts) {
                sh.violation(format!(
                    "private item {}: {runs} runs after cancel_sync, {} owed",
                    it.id,
                    expected(&it.counts)
                ));
            }
            m.frozen = Some(runs);
        }
        4 => {
            if let Err(e) = w.flush() {
                sh.violation(format!("flush of private {}: {e}", it.id));
            }
            check_settled(sh, it, "Work::flush");
        }
        _ => {
            if let Some(last) = &m.last {
                if let Err(e) = last.wq.flush() {
                    sh.violation(format!("flush of {}: {e}", last.name));
                }
                check_settled(sh, it, "Workqueue::flush");
            }
        }
    }
}

/// After a flush, every accepted instance of a private item has run.
fn check_settled(sh: &Shared, it: &Item, after: &str) {
    let (runs, owed) = (it.counts.runs.load(SeqCst), expected(&it.counts));
    if runs != owed {
        sh.violation(format!("private item {}: {runs} runs after {after} returned, {owed} owed", it.id));
    }
}

/// Queueing on a destroyed queue must be refused visibly.
fn stale_op(sh: &Shared, rng: &mut Rng) {
    let Some(inc) = ({
        let stale = sh.stale.lock().unwrap_or_else(|e| e.into_inner());
        (!stale.is_empty()).then(|| stale[rng.below(stale.len() as u64) as usize].clone())
    }) else {
        return;
    };
    let sh_ok = |r: Result<(), Error>, what: &str| match r {
        Err(Error::Destroyed { .. }) => {
            sh.refused.fetch_add(1, SeqCst);
        }
        other => sh.violation(format!("{what} on destroyed {} gave {other:?}", inc.name)),
    };
    match rng.below(3) {
        0 => sh_ok(inc.wq.execute(|| {}), "execute"),
        1 => sh_ok(inc.wq.submit(|| ()).map(drop), "submit"),
        _ => {
            let s = inc.slot;
            let it = &sh.slots[s].works[rng.below(sh.slots[s].works.len() as u64) as usize];
            match inc.wq.try_queue(it.work.get().expect("set")) {
                // Already pending elsewhere: queueing is a no-op before the refusal check.
                Ok(false) => {}
                r => sh_ok(r.map(drop), "queue"),
            }
        }
    }
}

/// Destroys and re-creates queues while producers run.
fn destroyer(sh: Arc<Shared>, mut rng: Rng, producers: usize) {
    while !sh.stop.load(SeqCst) {
        thread::sleep(Duration::from_millis(20 + rng.below(80)));
        let s = rng.below(sh.slots.len() as u64) as usize;
        let inc = sh.slots[s].current();
        destroy_inc(&sh, s, &inc);
        let fresh = sh.new_inc(s, &mut rng, producers);
        *sh.slots[s].current.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        let mut stale = sh.stale.lock().unwrap_or_else(|e| e.into_inner());
        stale.push_back(inc);
        if stale.len() > 4 {
            stale.pop_front();
        }
    }
}

fn destroy_inc(sh: &Shared, s: usize, inc: &Inc) {
    inc.closing.store(true, SeqCst);
    for attempt in 0.. {
        match inc.wq.destroy() {
            Ok(()) => break,
            Err(Error::DelayedWorkArmed { .. }) if attempt < 1000 => {
                for it in &sh.slots[s].dworks {
                    let _serial = it.lock();
                    if it.dwork.get().expect("set").cancel() {
                        it.counts.cancelled.fetch_add(1, SeqCst);
                    }
                }
            }
            Err(e) => {
                sh.violation(format!("destroy of {}: {e}", inc.name));
                return;
            }
        }
    }
    inc.destroyed.store(true, SeqCst);
    if inc.total.load(SeqCst) != 0 {
        sh.violation(format!("destroy of {} returned with items running", inc.name));
    }
}

/// The outcome of a stress run.
#[derive(Debug, Default)]
pub struct Report {
    /// Accepted queueings (each owes one run unless cancelled).
    pub accepted: u64,
    /// Runs counted inside items.
    pub run: u64,
    /// Successful cancels.
    pub cancelled: u64,
    /// Refused queueings (destroyed or draining queues).
    pub refused: u64,
    /// Owed runs that never happened.
    pub lost: u64,
    /// Runs beyond those owed.
    pub duplicated: u64,
    /// Broken limits and guarantees (max_active, order, reentrancy, destroy, cancel_sync, stats).
    pub limit_violations: u64,
    /// The first violations, for the report.
    pub messages: Vec<String>,
}

impl Report {
    /// Whether the run proved every property.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.limit_violations == 0
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "stress: accepted={} run={} cancelled={} refused={} lost={} duplicated={} limit_violations={}",
            self.accepted, self.run, self.cancelled, self.refused, self.lost, self.duplicated, self.limit_violations
        )
    }
}

/// Exits the process if no item runs for `cfg.hang_timeout` (a hang cannot be reported otherwise).
fn watchdog(sh: Weak<Shared>, timeout: Duration, done: Arc<AtomicBool>) {
    let mut last = (0, Instant::now());
    while !done.load(SeqCst) {
        thread::sleep(Duration::from_millis(200));
        let Some(sh) = sh.upgrade() else { return };
        let runs = sh.total_runs();
        if runs != last.0 {
            last = (runs, Instant::now());
        } else if last.1.elapsed() > timeout && !done.load(SeqCst) {
            eprintln!("stress: HANG: no item ran for {timeout:?}\n{}", sh.rt.dump());
            std::process::exit(3);
        }
    }
}

/// Runs the stress test described by `cfg`.
pub fn run(cfg: &Config) -> Report {
    let mut rng = Rng::new(cfg.seed);
    let fail_seed = AtomicU64::new(cfg.seed);
    let fail_pct = cfg.spawn_fail_pct;
    let rt = Runtime::builder()
        .idle_timeout(Duration::from_millis(30))
        .spawn_hook(move || {
            let r = Rng::new(fail_seed.fetch_add(1, SeqCst)).below(100);
            if r < fail_pct {
                return Err(std::io::Error::from_raw_os_error(libc::EAGAIN));
            }
            Ok(())
        })
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let mut ids = 0u64;
    let mut next_id = || {
        ids += 1;
        ids
    };
    let incs: Vec<_> = (0..cfg.queues).map(|s| new_inc(&rt, s, 0, &mut rng, cfg.producers)).collect();
    let sh = Arc::new_cyclic(|weak: &Weak<Shared>| Shared {
        rt: rt.clone(),
        slots: incs
            .into_iter()
            .enumerate()
            .map(|(s, inc)| Slot {
                current: Mutex::new(inc),
                works: (0..cfg.works_per_queue).map(|_| make_item(weak, next_id(), Owner::Slot(s))).collect(),
                dworks: (0..cfg.dworks_per_queue).map(|_| make_ditem(weak, next_id(), s)).collect(),
            })
            .collect(),
        roaming: (0..cfg.roaming).map(|_| make_item(weak, next_id(), Owner::Roaming)).collect(),
        private: (0..cfg.producers)
            .map(|p| (0..2).map(|_| make_item(weak, next_id(), Owner::Private(p))).collect())
            .collect(),
        stale: Mutex::new(VecDeque::new()),
        once: Counts::default(),
        refused: AtomicU64::new(0),
        violations: AtomicU64::new(0),
        messages: Mutex::new(Vec::new()),
        next_inc: AtomicU64::new(1),
        stop: AtomicBool::new(false),
    });
    let done = Arc::new(AtomicBool::new(false));
    let wd = {
        let (w, d, t) = (Arc::downgrade(&sh), done.clone(), cfg.hang_timeout);
        thread::spawn(move || watchdog(w, t, d))
    };
    let mut threads: Vec<_> = (0..cfg.producers)
        .map(|p| {
            let (sh, r) = (sh.clone(), Rng::new(rng.next_u64()));
            thread::Builder::new().name(format!("producer-{p}")).spawn(move || producer(sh, p, r)).expect("spawn")
        })
        .collect();
    let (sh2, r, np) = (sh.clone(), Rng::new(rng.next_u64()), cfg.producers);
    threads.push(thread::Builder::new().name("destroyer".into()).spawn(move || destroyer(sh2, r, np)).expect("spawn"));
    thread::sleep(cfg.duration);
    sh.stop.store(true, SeqCst);
    for t in threads {
        if t.join().is_err() {
            sh.violation("a producer thread panicked".into());
        }
    }
    let report = finish(&sh);
    done.store(true, SeqCst);
    let _ = wd.join();
    report
}

/// Lets everything settle, then checks the counts of every item and the pools.
fn finish(sh: &Shared) -> Report {
    for (s, slot) in sh.slots.iter().enumerate() {
        for it in &slot.dworks {
            // Fires armed timers now, so their runs happen before the count.
            if let Err(e) = it.dwork.get().expect("set").flush() {
                sh.violation(format!("final flush of delayed {}: {e}", it.id));
            }
        }
        destroy_inc(sh, s, &slot.current());
    }
    for it in sh.all_items() {
        if let Err(e) = it.work.get().expect("set").flush() {
            sh.violation(format!("final flush of {}: {e}", it.id));
        }
    }
    let mut r = Report::default();
    let mut mismatches = Vec::new();
    let mut tally = |c: &Counts, what: String| {
        let (acc, can, runs) = (c.accepted.load(SeqCst), c.cancelled.load(SeqCst), c.runs.load(SeqCst));
        r.accepted += acc;
        r.cancelled += can;
        r.run += runs;
        let owed = acc.saturating_sub(can);
        if (runs != owed || can > acc) && mismatches.len() < 20 {
            let msg = format!("{what}: accepted {acc}, cancelled {can}, ran {runs}");
            eprintln!("stress: MISMATCH: {msg}");
            mismatches.push(msg);
        }
        r.lost += owed.saturating_sub(runs);
        r.duplicated += runs.saturating_sub(owed) + can.saturating_sub(acc);
    };
    for it in sh.all_items() {
        tally(&it.counts, format!("work item {} ({:?})", it.id, it.owner));
    }
    for it in sh.slots.iter().flat_map(|s| &s.dworks) {
        tally(&it.counts, format!("delayed work item {}", it.id));
    }
    tally(&sh.once, "one-shot closures".into());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = sh.rt.stats();
        let busy: Vec<_> = stats.pools.iter().filter(|p| p.running != 0 || p.pending != 0).collect();
        if busy.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            sh.violation(format!("pools still running after the end: {busy:?}"));
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    r.limit_violations = sh.violations.load(SeqCst);
    r.refused = sh.refused.load(SeqCst);
    r.messages = sh.messages.lock().unwrap_or_else(|e| e.into_inner()).clone();
    r.messages.extend(mismatches);
    r
}

#[allow(dead_code)]
fn main() {
    let cfg = match Config::from_args(std::env::args().skip(1)) {
        Ok(cfg) => cfg,
        Err(msg) => {
            eprintln!("stress: {msg}\n{USAGE}");
            std::process::exit(2);
        }
    };
    eprintln!("stress: {cfg:?}");
    let report = run(&cfg);
    println!("{}", report.summary());
    if !report.ok() {
        for m in &report.messages {
            eprintln!("  {m}");
        }
        std::process::exit(1);
    }
}
