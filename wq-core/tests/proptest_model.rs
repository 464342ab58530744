//! Property test: random sequences of `Work` / `DelayedWork` calls from one
//! thread, checked against a sequential model of the kernel's work item
//! state machine.
//!
//! The items live on an ordered queue whose first item (the gate) blocks
//! until the test releases it, so nothing runs until the test says so and
//! every answer (`queue` → "was it idle?", `cancel` → "was it pending?",
//! `is_pending`, `mod_delayed` → "was it pending?") is exactly predictable.
//! On release, every pending item must run exactly once, in queueing order
//! (timer-queued items, whose position depends on when the timer fired,
//! are only counted).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use wq_core::{DelayedWork, Runtime, Work, Workqueue};

const WORKS: usize = 3;
const DWORKS: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delay {
    Zero,
    /// Fires in the background while the gate holds the queue.
    Tiny,
    /// Stays armed until the release flushes it.
    Long,
}

impl Delay {
    fn duration(self) -> Duration {
        match self {
            Delay::Zero => Duration::ZERO,
            Delay::Tiny => Duration::from_millis(1),
            Delay::Long => Duration::from_secs(3600),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Queue(usize),
    Cancel(usize),
    CancelSync(usize),
    /// `is_pending` / `is_running`, and `flush` when the item is idle.
    Check(usize),
    QueueDelayed(usize, Delay),
    ModDelayed(usize, Delay),
    CancelDelayed(usize),
    CancelSyncDelayed(usize),
    /// Opens the gate and waits until everything pending ran.
    Release,
}

fn op() -> impl Strategy<Value = Op> {
    let delay = prop_oneof![Just(Delay::Zero), Just(Delay::Tiny), Just(Delay::Long)];
    prop_oneof![
        5 => (0..WORKS).prop_map(Op::Queue),
        2 => (0..WORKS).prop_map(Op::Cancel),
        1 => (0..WORKS).prop_map(Op::CancelSync),
        2 => (0..WORKS).prop_map(Op::Check),
        3 => (0..DWORKS, delay.clone()).prop_map(|(j, d)| Op::QueueDelayed(j, d)),
        3 => (0..DWORKS, delay).prop_map(|(j, d)| Op::ModDelayed(j, d)),
        1 => (0..DWORKS).prop_map(Op::CancelDelayed),
        1 => (0..DWORKS).prop_map(Op::CancelSyncDelayed),
        1 => Just(Op::Release),
    ]
}

/// The reference: the kernel's rules, one call at a time. Items are tagged
/// `0..WORKS` (work) and `WORKS..` (delayed work).
#[derive(Default)]
struct Model {
    pending: [bool; WORKS + DWORKS],
    /// Pending items queued directly, in queue order.
    order: Vec<usize>,
    /// Pending delayed items whose timer was armed (position unknown).
    timed: [bool; WORKS + DWORKS],
    runs: [usize; WORKS + DWORKS],
}

impl Model {
    /// `queue`: true if the item was idle; it becomes pending at the tail.
    fn queue(&mut self, t: usize, timed: bool) -> bool {
        if self.pending[t] {
            return false;
        }
        self.pending[t] = true;
        self.place(t, timed);
        true
    }

    /// `cancel`: true if the item was pending; it no longer is.
    fn cancel(&mut self, t: usize) -> bool {
        let was = self.pending[t];
        self.pending[t] = false;
        self.timed[t] = false;
        self.order.retain(|&x| x != t);
        was
    }

    /// `mod_delayed`: takes the item back if pending and queues it again.
    fn modify(&mut self, t: usize, timed: bool) -> bool {
        let was = self.cancel(t);
        self.pending[t] = true;
        self.place(t, timed);
        was
    }

    fn place(&mut self, t: usize, timed: bool) {
        self.timed[t] = timed;
        if !timed {
            self.order.push(t);
        }
    }
}

struct Harness {
    wq: Workqueue,
    gate: Option<mpsc::Sender<()>>,
    works: Vec<Work>,
    dworks: Vec<DelayedWork>,
    log: Arc<Mutex<Vec<usize>>>,
    runs: Arc<Vec<AtomicUsize>>,
}

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| Runtime::builder().cpus([0]).build().expect("runtime"))
}

impl Harness {
    fn new(case: usize) -> Harness {
        let wq = runtime().workqueue(&format!("model-{case}")).ordered().build().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let runs = Arc::new((0..WORKS + DWORKS).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
        let recorder = |t: usize| {
            let (log, runs) = (log.clone(), runs.clone());
            move || {
                runs[t].fetch_add(1, SeqCst);
                log.lock().unwrap().push(t);
            }
        };
        let works = (0..WORKS).map(|t| Work::new(recorder(t))).collect();
        let dworks = (0..DWORKS).map(|j| DelayedWork::new(recorder(WORKS + j))).collect();
        let mut h = Harness { wq, gate: None, works, dworks, log, runs };
        h.close_gate();
        h
    }

    fn close_gate(&mut self) {
        let (tx, rx) = mpsc::channel::<()>();
        self.wq
            .execute(move || {
                let _ = rx.recv();
            })
            .unwrap();
        self.gate = Some(tx);
    }

    /// Lets everything pending run and checks it against the model.
    fn release(&mut self, m: &mut Model) -> Result<(), TestCaseError> {
        drop(self.gate.take());
        self.wq.flush().unwrap();
        for d in &self.dworks {
            // Fires timers still armed and waits for their run.
            d.flush().unwrap();
        }
        let log = std::mem::take(&mut *self.log.lock().unwrap());
        let ordered: Vec<usize> = log.iter().copied().filter(|&t| !m.timed[t]).collect();
        prop_assert_eq!(&ordered, &m.order, "run order (full log {:?})", log);
        for t in 0..WORKS + DWORKS {
            if m.pending[t] {
                m.runs[t] += 1;
            }
            prop_assert_eq!(self.runs[t].load(SeqCst), m.runs[t], "runs of item {}", t);
        }
        m.pending = Default::default();
        m.timed = Default::default();
        m.order.clear();
        self.close_gate();
        Ok(())
    }

    fn apply(&mut self, op: &Op, m: &mut Model) -> Result<(), TestCaseError> {
        match *op {
            Op::Queue(i) => prop_assert_eq!(self.wq.queue(&self.works[i]), m.queue(i, false), "queue({})", i),
            Op::Cancel(i) => prop_assert_eq!(self.works[i].cancel(), m.cancel(i), "cancel({})", i),
            Op::CancelSync(i) => {
                // Nothing runs behind the gate, so this never waits.
                prop_assert_eq!(self.works[i].cancel_sync().unwrap(), m.cancel(i), "cancel_sync({})", i)
            }
            Op::Check(i) => {
                let w = &self.works[i];
                prop_assert_eq!(w.is_pending(), m.pending[i], "is_pending({})", i);
                prop_assert!(!w.is_running(), "item {} runs behind the gate", i);
                if !m.pending[i] {
                    prop_assert!(!w.flush().unwrap(), "flush of idle item {} had something to wait for", i);
                }
            }
            Op::QueueDelayed(j, d) => {
                let got = self.wq.try_queue_delayed(&self.dworks[j], d.duration()).unwrap();
                prop_assert_eq!(got, m.queue(WORKS + j, d != Delay::Zero), "queue_delayed({}, {:?})", j, d);
            }
            Op::ModDelayed(j, d) => {
                let got = self.wq.mod_delayed(&self.dworks[j], d.duration()).unwrap();
                prop_assert_eq!(got, m.modify(WORKS + j, d != Delay::Zero), "mod_delayed({}, {:?})", j, d);
            }
            Op::CancelDelayed(j) => {
                prop_assert_eq!(self.dworks[j].cancel(), m.cancel(WORKS + j), "cancel delayed({})", j)
            }
            Op::CancelSyncDelayed(j) => {
                let got = self.dworks[j].cancel_sync().unwrap();
                prop_assert_eq!(got, m.cancel(WORKS + j), "cancel_sync delayed({})", j)
            }
            Op::Release => self.release(m)?,
        }
        // Delayed items are pending from arming to start, wherever they are.
        for (j, d) in self.dworks.iter().enumerate() {
            prop_assert_eq!(d.is_pending(), m.pending[WORKS + j], "is_pending of delayed {} after {:?}", j, op);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn work_items_follow_the_kernel_state_machine(ops in proptest::collection::vec(op(), 1..40)) {
        static CASE: AtomicUsize = AtomicUsize::new(0);
        let mut h = Harness::new(CASE.fetch_add(1, SeqCst));
        let mut m = Model::default();
        for op in &ops {
            h.apply(op, &mut m)?;
        }
        h.release(&mut m)?;
        drop(h.gate.take());
        h.wq.destroy().unwrap();
    }
}
