//! The runtime: pools, the manager that creates workers, the timer, and
//! the registry of workqueues.

pub(crate) mod manager;
mod pools;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

pub(crate) use manager::{spawn_worker, Manager, Periodic};
pub(crate) use pools::Pools;

use crate::delayed::Timer;
use crate::detect::{self, Detector, Resolved};
use crate::monitor::Monitor;
use crate::pool::Pool;
use crate::rescuer::Rescuer;
use crate::stats::{PoolStats, RuntimeStats};
use crate::topology::{Topology, TopologyError};
use crate::trace::{Recorder, Trace};
use crate::workqueue::{Attrs, PwqSet, WqCore, WqShared};
use crate::{sys, Error, Flags, Workqueue, WorkqueueBuilder};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};

/// Called before each worker thread is created; an error fails that creation.
pub type SpawnHook = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// Settings fixed at build time.
/// Workqueue ids, process-wide: "is the calling thread running an item of
/// this queue" compares them, also across runtimes (per-runtime ids made
/// the first queue of every runtime one and the same).
static NEXT_WQ_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) idle_timeout: Duration,
    pub(crate) cpu_hog_threshold: Duration,
    pub(crate) max_workers: usize,
    pub(crate) spawn_hook: Option<SpawnHook>,
    pub(crate) detector: Detector,
    pub(crate) watchdog_threshold: Duration,
    pub(crate) publish: bool,
    /// The scheduler slice a worker parked in a quiet pool asks for
    /// (`worker/slice.rs`); `None`: workers keep the default slice.
    pub(crate) wake_slice: Option<Duration>,
}

/// What pools, the manager and workers share; holds no pool, so it never
/// keeps the runtime's threads alive by itself.
pub(crate) struct RtCore {
    pub(crate) config: Config,
    pub(crate) manager: Arc<Manager>,
    pub(crate) monitor: Arc<Monitor>,
    /// The sleep detector in use, and why.
    pub(crate) detector: Resolved,
    /// Queue names by id, for watchdog reports.
    pub(crate) wq_names: Mutex<HashMap<u64, String>>,
    /// The timeline recorder (off unless `Runtime::start_trace`).
    pub(crate) trace: Recorder,
    /// Live worker threads of all pools. Invariant: `<= config.max_workers`.
    pub(crate) nr_workers: AtomicUsize,
    /// Default unbound pools that `build` counted against `max_workers`
    /// and no queue has made yet (`Pools::unbound` lowers it): workerless
    /// pools the manager must leave room for, though not in its list.
    pub(crate) pools_to_come: AtomicUsize,
    /// Panics the monitor's thread caught and started over from (only grows).
    pub(crate) monitor_panics: AtomicU64,
    /// The nice value of the thread that built the runtime: what "nice 0"
    /// (default priority) means for workers, whichever thread starts them
    /// (the monitor, which runs at -10, or a highpri worker at shutdown).
    pub(crate) base_nice: Option<i32>,
    /// The builder thread's timer slack, which workers take back from the
    /// monitor's 1 ns: a sleeping item should not wake more precisely (and
    /// more often) than on any other thread of the program.
    pub(crate) base_timer_slack: Option<u64>,
    /// The builder thread's policy if it is `SCHED_OTHER` or `SCHED_BATCH`,
    /// which workers take back from the monitor's `SCHED_BATCH`.
    pub(crate) base_policy: Option<crate::sys::FairPolicy>,
    /// `sys::fork_generation` when the runtime was built (see `forked`).
    fork_generation: u64,
}

impl RtCore {
    /// Whether the calling process is a child made by `fork` after the
    /// runtime was built: none of its threads exist here, and a lock one
    /// of them held at the fork stays locked for ever.
    pub(crate) fn forked(&self) -> bool {
        crate::sys::forks() != self.fork_generation
    }

    /// [`Error::Forked`] in a child made by `fork` after the runtime was
    /// built. Checked before any of the runtime's locks is taken.
    pub(crate) fn check_not_forked(&self) -> Result<(), Error> {
        if self.forked() {
            return Err(Error::Forked);
        }
        Ok(())
    }

    /// The one place worker threads are created (fault injection hooks in here).
    pub(crate) fn spawn_thread(&self, name: String, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        if let Some(hook) = &self.config.spawn_hook {
            // The hook is user code on the monitor's thread: a panic must
            // fail this creation, not end the thread that makes workers.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook())).unwrap_or_else(|payload| {
                let why = crate::Panicked::new(payload);
                Err(io::Error::other(format!("the spawn hook panicked: {}", why.message())))
            })?;
        }
        std::thread::Builder::new().name(name).spawn(f).map(drop)
    }
}

pub(crate) struct RuntimeShared {
    pub(crate) core: Arc<RtCore>,
    pub(crate) topology: Topology,
    /// CPU slot of each CPU number the runtime manages.
    slot_of_cpu: Vec<Option<usize>>,
    pub(crate) pools: Pools,
    timer: Arc<Timer>,
    pub(crate) workqueues: Mutex<Vec<Weak<WqShared>>>,
    /// Whether freezable queues are frozen; held while (un)freezing,
    /// while creating a queue and while `apply_attrs` replaces its pwqs.
    freeze: Mutex<bool>,
    /// The freeze flag's value, for readers that must not take its lock
    /// (a fork child, where a parent's thread may have held it). Written
    /// with the lock held, so it changes with the flag.
    frozen: AtomicBool,
    /// Publishes counters for the `wq` tool; dropped (stopping it) with the runtime.
    publisher: OnceLock<crate::publish::PublishHandle>,
}

impl Drop for RuntimeShared {
    fn drop(&mut self) {
        if self.core.forked() {
            // In a child made by `fork` there is nothing to stop, locks the
            // parent's threads held may never be released, and the counter
            // file is the parent's (named after its pid): leave it in place.
            if let Some(publisher) = self.publisher.take() {
                std::mem::forget(publisher);
            }
            return;
        }
        // Nobody can thaw a runtime once it is gone: what its frozen pwqs
        // hold would never run. Thawed here, it runs as the pools wind down.
        *self.freeze.lock().unwrap_or_else(|e| e.into_inner()) = false;
        for pool in self.pools() {
            pool.set_freezable_frozen(false);
            pool.shut_down();
        }
        self.core.manager.shut_down();
        self.core.monitor.shut_down();
        self.timer.shutdown();
    }
}

impl RuntimeShared {
    /// Every pool, bound ones first.
    pub(crate) fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools.list()
    }
}

/// A cmwq runtime: per-CPU worker pools, unbound pools, and the threads
/// that manage them. Cloning gives another handle to the same runtime.
///
/// Most programs use the process-wide [`Runtime::global`] through
/// [`Workqueue::builder`]; tests and embedders build isolated ones:
///
/// ```
/// use std::time::Duration;
/// use wq_core::Runtime;
///
/// let rt = Runtime::builder().cpus([0]).idle_timeout(Duration::from_secs(5)).build()?;
/// let wq = rt.workqueue("mine").build()?;
/// assert_eq!(wq.submit(|| "done")?.wait().unwrap(), "done");
/// println!("{}", rt.dump());
/// # Ok::<(), wq_core::Error>(())
/// ```
///
/// # After `fork`
///
/// A child made by `fork` has none of a runtime's threads. Every call of
/// a runtime built before the fork that would queue work, wait for it or
/// create a queue returns [`Error::Forked`] there (the items' own waits,
/// [`Work::flush`](crate::Work::flush) and the like, are not covered), and
/// dropping it leaves the parent's state alone. The child builds its own.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) shared: Arc<RuntimeShared>,
}

static GLOBAL: OnceLock<Runtime> = OnceLock::new();
static GLOBAL_INIT: Mutex<()> = Mutex::new(());

impl Runtime {
    /// Starts configuring a new runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The process-wide runtime, built with default settings on first use.
    ///
    /// # Panics
    /// If the OS refuses to create its first threads; use
    /// [`Runtime::try_global`] to get that as an error.
    pub fn global() -> &'static Runtime {
        Runtime::try_global().unwrap_or_else(|err| panic!("cannot start the global wq runtime: {err}"))
    }

    /// The process-wide runtime, or why it could not be built.
    ///
    /// # Errors
    /// [`Error::Spawn`] if its threads could not be created.
    pub fn try_global() -> Result<&'static Runtime, Error> {
        if let Some(rt) = GLOBAL.get() {
            return Ok(rt);
        }
        let _guard = GLOBAL_INIT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = GLOBAL.get() {
            return Ok(rt);
        }
        let rt = Runtime::builder().build()?;
        Ok(GLOBAL.get_or_init(|| rt))
    }

    /// Starts building a workqueue on this runtime.
    pub fn workqueue(&self, name: &str) -> WorkqueueBuilder {
        WorkqueueBuilder::new(Some(self.clone()), name)
    }

    /// The CPUs this runtime manages, ascending.
    pub fn cpus(&self) -> &[usize] {
        self.shared.topology.cpus()
    }

    /// The CPU topology the runtime was built on.
    pub fn topology(&self) -> &Topology {
        &self.shared.topology
    }

    /// Pool and worker counts.
    ///
    /// In a child made by `fork` after the runtime was built (see
    /// [`is_forked`](Runtime::is_forked)) the pools and workers are the
    /// parent's: this reports no worker and no pool, and takes no lock a
    /// parent's thread may have held at the fork.
    pub fn stats(&self) -> RuntimeStats {
        let core = &self.shared.core;
        let monitor_panics = core.monitor_panics.load(SeqCst);
        if core.forked() {
            return RuntimeStats { workers: 0, monitor_panics, pools: Vec::new() };
        }
        let pools: Vec<PoolStats> = self.shared.pools().iter().map(|p| PoolStats::of(p)).collect();
        RuntimeStats { workers: core.nr_workers.load(SeqCst), monitor_panics, pools }
    }

    /// The `wq_dump.py` view: CPUs, pools, and which pool each workqueue
    /// uses on each CPU. In a child made by `fork` after the runtime was
    /// built, one line saying so instead (as for [`stats`](Runtime::stats)).
    pub fn dump(&self) -> String {
        if self.shared.core.forked() {
            return format!(
                "A runtime inherited through fork: its pools and workers are in the parent process (this is pid {}).\n",
                std::process::id()
            );
        }
        crate::stats::dump(self)
    }

    /// The sleep detector in use (never `Auto`) and why it was chosen.
    pub fn detector(&self) -> (Detector, &str) {
        let d = &self.shared.core.detector;
        (d.kind, &d.reason)
    }

    /// Starts recording a timeline of queue, activate, start, end, sleep
    /// and wake events (restarting any recording in progress). Does nothing
    /// in a child made by `fork` after the runtime was built: nothing runs
    /// there to record.
    pub fn start_trace(&self) {
        if !self.shared.core.forked() {
            self.shared.core.trace.start();
        }
    }

    /// Stops recording and returns the timeline; write it with
    /// [`Trace::write_chrome_json`](crate::Trace::write_chrome_json). An
    /// empty one in a child made by `fork` after the runtime was built (the
    /// recording, and the lock it is kept under, are the parent's).
    pub fn stop_trace(&self) -> Trace {
        if self.shared.core.forked() {
            return Trace::default();
        }
        self.shared.core.trace.stop()
    }

    pub(crate) fn timer(&self) -> &Arc<Timer> {
        &self.shared.timer
    }

    /// The CPU slot of the CPU the caller runs on (a CPU outside the
    /// runtime's set maps onto one inside it).
    pub(crate) fn local_slot(&self) -> usize {
        let n = self.shared.pools.bound.len();
        match sys::current_cpu() {
            Some(cpu) => self.shared.slot_of_cpu.get(cpu).copied().flatten().unwrap_or(cpu % n),
            None => 0,
        }
    }

    /// The CPU slot of `cpu`.
    pub(crate) fn slot_of(&self, cpu: usize) -> Result<usize, Error> {
        self.shared
            .slot_of_cpu
            .get(cpu)
            .copied()
            .flatten()
            .ok_or_else(|| Error::InvalidCpu { cpu, allowed: self.cpus().to_vec() })
    }

    /// Live workqueues of this runtime.
    pub(crate) fn workqueues(&self) -> Vec<Workqueue> {
        let mut list = self.shared.workqueues.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).map(|shared| Workqueue { shared }).collect()
    }

    pub(crate) fn create_workqueue(
        &self,
        name: String,
        flags: Flags,
        max_active: u32,
        ordered: bool,
        attrs: Option<Attrs>,
    ) -> Result<Workqueue, Error> {
        self.shared.core.check_not_forked()?;
        let unbound = flags.contains(Flags::UNBOUND);
        let attrs = unbound.then(|| {
            attrs.unwrap_or_else(|| Attrs { nice: pools::nice_of(flags.contains(Flags::HIGHPRI)), ..Attrs::default() })
        });
        let id = NEXT_WQ_ID.fetch_add(1, SeqCst);
        let core = Arc::new(WqCore::new(id, name.clone(), flags, ordered, max_active, unbound));
        let rescuer = if flags.contains(Flags::MEM_RECLAIM) { Some(Rescuer::start(core.clone())?) } else { None };
        // Freezing and creation must not interleave: a freezable queue made
        // during a freeze starts frozen.
        let freeze = self.freeze_state();
        let set = self.pwq_set(&core, attrs.as_ref(), rescuer.as_ref(), *freeze)?;
        core.add_pods(&set);
        self.shared.core.wq_names.lock().unwrap_or_else(|e| e.into_inner()).insert(id, name);
        let shared = Arc::new(WqShared::new(core, self.clone(), set, rescuer, attrs));
        self.shared.workqueues.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&shared));
        drop(freeze);
        Ok(Workqueue { shared })
    }

    /// The pwqs of a queue: one per CPU slot on the bound pools, or one
    /// per pod of `attrs` on unbound pools.
    pub(crate) fn pwq_set(
        &self,
        core: &Arc<WqCore>,
        attrs: Option<&Attrs>,
        rescuer: Option<&Arc<Rescuer>>,
        frozen: bool,
    ) -> Result<PwqSet, Error> {
        let frozen = frozen && core.flags.contains(Flags::FREEZABLE);
        let max_active = core.max_active as usize;
        let link = |pool: Arc<Pool>| pool.alloc_pwq(core, max_active, frozen, rescuer.cloned(), core.limit.clone());
        let set = match attrs {
            None => {
                let hi = usize::from(core.flags.contains(Flags::HIGHPRI));
                let links: Vec<_> = self.shared.pools.bound.iter().map(|p| link(p[hi].clone())).collect();
                PwqSet { by_slot: (0..links.len()).collect(), links }
            }
            Some(attrs) => {
                let (cpus, pods) = attrs.pods(self, core.ordered)?;
                let mut links = Vec::with_capacity(pods.len());
                for pod in &pods {
                    links.push(link(self.shared.pools.unbound(attrs.nice, &cpus, pod, attrs.strict)?));
                }
                // A CPU outside the queue's CPUs queues to some pod of it.
                let by_slot = (0..self.cpus().len())
                    .map(|slot| pods.iter().position(|p| p.contains(&self.cpus()[slot])).unwrap_or(slot % pods.len()))
                    .collect();
                PwqSet { links, by_slot }
            }
        };
        Ok(set)
    }

    /// Freezes the runtime's `FREEZABLE` queues (the kernel's
    /// `freeze_workqueues_begin` + `freeze_workqueues_busy`): their queued
    /// items stop starting, and this returns once the items already
    /// started have finished. Queueing still works; nothing is dropped.
    ///
    /// # Errors
    /// [`Error::WouldDeadlock`] when called from an item of a freezable queue;
    /// [`Error::Forked`].
    pub fn freeze(&self) -> Result<(), Error> {
        // Read from the item itself, not from the live queues: one whose
        // handles are gone still runs, and would be waited for.
        self.shared.core.check_not_forked()?;
        if crate::worker::runs_freezable_item_of(&self.shared.core) {
            return Err(Error::WouldDeadlock("Runtime::freeze called from an item of a freezable queue".into()));
        }
        let mut frozen = self.freeze_state();
        *frozen = true;
        self.shared.frozen.store(true, SeqCst);
        // Every pool, not every live queue's pwqs: a queue whose handles
        // are gone still runs what it queued, and must freeze and thaw too.
        let pools = self.shared.pools.list();
        for pool in &pools {
            pool.set_freezable_frozen(true);
        }
        drop(frozen);
        // Items activated before the freeze still run; wait for them.
        while pools.iter().any(|pool| pool.freezable_active() > 0) {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Thaws what [`freeze`](Runtime::freeze) froze: queued items start
    /// again. Does nothing in a child made by `fork` after the runtime was
    /// built, where no item of it starts anyway.
    pub fn thaw(&self) {
        if self.shared.core.forked() {
            return;
        }
        let mut frozen = self.freeze_state();
        *frozen = false;
        self.shared.frozen.store(false, SeqCst);
        for pool in self.shared.pools.list() {
            pool.set_freezable_frozen(false);
        }
    }

    /// Whether the calling process is a child made by `fork` after the
    /// runtime was built. The runtime's threads exist only in the parent,
    /// so here its queues refuse work with [`Error::Forked`].
    pub fn is_forked(&self) -> bool {
        self.shared.core.forked()
    }

    /// Whether the runtime is frozen.
    pub fn is_frozen(&self) -> bool {
        self.shared.frozen.load(SeqCst)
    }

    /// The freeze flag, locked: `freeze` and `thaw` hold it while they
    /// change every freezable pwq, so whoever builds and installs pwqs
    /// under it builds them in the state the runtime stays in. `destroy`
    /// holds it for its last check, so no pwq set is installed unseen.
    pub(crate) fn freeze_state(&self) -> MutexGuard<'_, bool> {
        self.shared.freeze.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime").field("cpus", &self.cpus()).finish()
    }
}

/// The custom slices Linux accepts for a fair-class thread (100 µs to 100 ms).
const WAKE_SLICE_RANGE: (Duration, Duration) = (Duration::from_micros(100), Duration::from_millis(100));

/// Configures a [`Runtime`].
#[derive(Clone)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct RuntimeBuilder {
    cpus: Option<Vec<usize>>,
    config: Config,
}

impl Default for RuntimeBuilder {
    fn default() -> RuntimeBuilder {
        RuntimeBuilder {
            cpus: None,
            config: Config {
                idle_timeout: Duration::from_secs(300),
                cpu_hog_threshold: Duration::from_millis(10),
                max_workers: 4096,
                spawn_hook: None,
                detector: Detector::Auto,
                publish: true,
                watchdog_threshold: Duration::from_secs(30),
                wake_slice: Some(WAKE_SLICE_RANGE.0),
            },
        }
    }
}

impl RuntimeBuilder {
    /// The CPUs to run bound pools on (default: every CPU the process may
    /// use). Each must be allowed to the process.
    pub fn cpus(mut self, cpus: impl IntoIterator<Item = usize>) -> Self {
        // A list longer than the CPUs there can be holds a duplicate or a
        // CPU beyond the maximum, which `build` refuses: collecting the rest
        // of an endless iterator would only exhaust memory first.
        self.cpus = Some(cpus.into_iter().take(crate::topology::MAX_CPU + 1).collect());
        self
    }

    /// How long a worker beyond a pool's idle reserve may stay idle before
    /// it exits (default 300 s, as the kernel's `IDLE_WORKER_TIMEOUT`).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// How long a work item may run without sleeping before it is treated
    /// as CPU-intensive (default 10 ms, the kernel's `wq_cpu_intensive_thresh_us`).
    pub fn cpu_hog_threshold(mut self, threshold: Duration) -> Self {
        self.config.cpu_hog_threshold = threshold;
        self
    }

    /// The most worker threads the runtime may have at once (default 4096;
    /// at least one for each of the runtime's pools). A pool keeps an idle
    /// worker in reserve, for its next wake-up, only while the cap leaves
    /// room for the first worker of every pool that has none, and when the
    /// cap refuses a pool its first worker, an idle worker of another pool
    /// (one that keeps another idle) leaves at once. Workers that are busy,
    /// or blocked, keep their place: items that wait for other items beyond
    /// the cap wait for ever, as with any fixed number of threads. A queue
    /// with attributes of its own may need a pool of its own: it is refused
    /// with [`Error::InvalidConfig`] when the cap leaves no worker for that
    /// pool.
    pub fn max_workers(mut self, max: usize) -> Self {
        self.config.max_workers = max;
        self
    }

    /// How the runtime learns that a worker sleeps without being told
    /// through [`blocking`](crate::blocking): [`Detector::Auto`] (default:
    /// perf context-switch records, else `/proc` polling, else explicit
    /// hooks only), or one of them forced.
    pub fn detector(mut self, detector: Detector) -> Self {
        self.config.detector = detector;
        self
    }

    /// How long a pool may have pending work without finishing any item
    /// before the watchdog reports it (default 30 s, as the kernel's
    /// `workqueue.watchdog_thresh`). Reports go to `tracing` at warn level
    /// and count in [`PoolStats::stalls`](crate::PoolStats::stalls).
    pub fn watchdog_threshold(mut self, threshold: Duration) -> Self {
        self.config.watchdog_threshold = threshold;
        self
    }

    /// Fault injection: `hook` runs before each worker thread is created,
    /// and an error it returns fails that creation as the OS would (the
    /// pool retries with backoff; queued work waits, never lost). It runs
    /// on the monitor's thread (at shutdown, on the thread that drops the
    /// runtime), so it should return quickly: sleep detection waits for it.
    /// A panic in `hook` fails the creation like an error, with the panic
    /// message in the logged reason.
    pub fn spawn_hook(mut self, hook: impl Fn() -> io::Result<()> + Send + Sync + 'static) -> Self {
        self.config.spawn_hook = Some(Arc::new(hook));
        self
    }

    /// The scheduler slice a worker asks for while it waits in a pool with
    /// nothing running or queued (default 100 µs, the shortest Linux
    /// takes); `None` keeps every worker on the default slice. With it, the
    /// wake-up for a lone item preempts the queueing thread on its CPU, so
    /// the item starts at once instead of when that thread blocks. A worker
    /// that finds more work queued behind its item goes back to the default
    /// slice, so bursts still batch and a busy pool shares CPUs as before.
    /// Linux 6.12 and later honour it (EEVDF's custom slices); earlier
    /// kernels ignore it.
    pub fn wake_slice(mut self, slice: Option<Duration>) -> Self {
        self.config.wake_slice = slice;
        self
    }

    /// Whether the runtime publishes its counters for the `wq` tool
    /// (`wq dump PID`, `wq monitor PID`) in a small file under
    /// `$XDG_RUNTIME_DIR/cmwq` or the temp dir (default `true`). A failure
    /// to publish is logged, never fatal.
    pub fn publish(mut self, enabled: bool) -> Self {
        self.config.publish = enabled;
        self
    }

    /// Builds the runtime and starts its manager and monitor threads (the
    /// timer thread starts with the first delayed item).
    /// Pools start without workers: the first item queued to a pool asks
    /// the manager for one (and an idle reserve after it), so an unused
    /// pool costs no thread.
    ///
    /// # Errors
    /// [`Error::NoCpus`] or [`Error::InvalidCpu`] for a bad CPU set,
    /// [`Error::InvalidConfig`] for a zero timeout, a worker cap below
    /// the number of pools or a `wake_slice` outside 100 µs..=100 ms, [`Error::Spawn`] if the runtime's own threads
    /// cannot be created (a worker that cannot be created delays its pool's
    /// items, retried with backoff: see [`spawn_hook`](Self::spawn_hook)).
    pub fn build(self) -> Result<Runtime, Error> {
        let detected = Topology::detect();
        let topology = match &self.cpus {
            None => detected,
            Some(cpus) => restrict(&detected, cpus)?,
        };
        let config = self.config;
        if config.idle_timeout.is_zero() {
            return Err(Error::InvalidConfig("idle_timeout must be above zero".into()));
        }
        if config.watchdog_threshold.is_zero() {
            return Err(Error::InvalidConfig("watchdog_threshold must be above zero".into()));
        }
        if config.cpu_hog_threshold.is_zero() {
            return Err(Error::InvalidConfig("cpu_hog_threshold must be above zero".into()));
        }
        let (shortest, longest) = WAKE_SLICE_RANGE;
        if let Some(slice) = config.wake_slice.filter(|s| !(shortest..=longest).contains(s)) {
            return Err(Error::InvalidConfig(format!(
                "wake_slice {slice:?} is outside {shortest:?}..={longest:?}, the slices Linux accepts"
            )));
        }
        let nr_pools = 2 * topology.cpus().len() + 2 * topology.pods(crate::Scope::Cache).len();
        if config.max_workers < nr_pools {
            return Err(Error::InvalidConfig(format!(
                "max_workers {} is below {nr_pools}, one worker for each of the runtime's pools",
                config.max_workers
            )));
        }
        let detector = detect::resolve(config.detector)
            .map_err(|err| Error::InvalidConfig(format!("the {} detector cannot work here: {err}", config.detector)))?;
        let core = Arc::new(RtCore {
            config,
            manager: Manager::new(),
            monitor: Monitor::new(),
            detector,
            wq_names: Mutex::new(HashMap::new()),
            trace: Recorder::default(),
            nr_workers: AtomicUsize::new(0),
            // Set by `Pools::new`, which knows the default pools.
            pools_to_come: AtomicUsize::new(0),
            monitor_panics: AtomicU64::new(0),
            base_nice: crate::sys::current_nice(),
            base_timer_slack: crate::sys::current_timer_slack(),
            base_policy: crate::sys::current_fair_policy(),
            fork_generation: crate::sys::fork_generation(),
        });
        let cpus = topology.cpus().to_vec();
        let pools = Pools::new(core.clone(), &topology);
        let max_cpu = cpus.iter().max().copied().unwrap_or(0);
        let mut slot_of_cpu = vec![None; max_cpu + 1];
        for (slot, &cpu) in cpus.iter().enumerate() {
            slot_of_cpu[cpu] = Some(slot);
        }
        let timer = Timer::new("wq/timer".into());
        let shared = Arc::new(RuntimeShared {
            core: core.clone(),
            topology,
            slot_of_cpu,
            pools,
            timer,
            workqueues: Mutex::new(Vec::new()),
            publisher: OnceLock::new(),
            freeze: Mutex::new(false),
            frozen: AtomicBool::new(false),
        });
        // From here on a failure drops `shared`, which stops what started.
        core.monitor.start(shared.pools.all.clone(), core.clone())?;
        let rt = Runtime { shared };
        if rt.shared.core.config.publish {
            match crate::publish::start(&rt) {
                Ok(handle) => {
                    let _ = rt.shared.publisher.set(handle);
                }
                Err(err) => tracing::warn!(target: "wq", %err, "runtime counters not published for the wq tool"),
            }
        }
        Ok(rt)
    }
}

/// `topology` narrowed to `cpus`, each of which must be in it.
pub(crate) fn restrict(topology: &Topology, cpus: &[usize]) -> Result<Topology, Error> {
    if cpus.is_empty() {
        return Err(Error::NoCpus);
    }
    if let Some(&cpu) = cpus.iter().find(|c| !topology.cpus().contains(c)) {
        return Err(Error::InvalidCpu { cpu, allowed: topology.cpus().to_vec() });
    }
    topology.restrict(cpus).map_err(|err| match err {
        TopologyError::EmptyCpuSet => Error::NoCpus,
        TopologyError::CpusNotAllowed { missing, allowed } => Error::InvalidCpu { cpu: missing[0], allowed },
        other => Error::InvalidConfig(other.to_string()),
    })
}

impl fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("cpus", &self.cpus)
            .field("idle_timeout", &self.config.idle_timeout)
            .field("cpu_hog_threshold", &self.config.cpu_hog_threshold)
            .field("max_workers", &self.config.max_workers)
            .field("wake_slice", &self.config.wake_slice)
            .finish()
    }
}
