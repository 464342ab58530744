//! The threads of a stress run: producers doing random operations, a
//! destroyer re-creating queues, a watchdog for hangs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use wq_core::{Error, Runtime};

use super::check::{finish, Report};
use super::config::{Config, Rng};
use super::model::{execute_chain, make_ditem, make_item, new_inc, run_once, Counts, Inc, Item, Owner, Shared, Slot};

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

pub(super) fn destroy_inc(sh: &Shared, s: usize, inc: &Inc) {
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
