//! Unbound queues: affinity scopes, pods, strictness, apply_attrs.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{current_cpu, wait_until};
use wq_core::{Attrs, Error, Flags, Runtime, Scope, Work};

fn per_cpu_queue(rt: &Runtime, strict: bool, max_active: u32) -> wq_core::Workqueue {
    rt.workqueue("per-cpu")
        .flags(Flags::UNBOUND)
        .max_active(max_active)
        .attrs(Attrs { scope: Scope::Cpu, strict, ..Attrs::default() })
        .build()
        .unwrap()
}

#[test]
fn cpu_scope_runs_items_in_the_pod_of_the_queueing_cpu() {
    let rt = Runtime::builder().build().unwrap();
    if rt.cpus().len() < 2 {
        eprintln!("one CPU only: pods cannot differ");
        return;
    }
    for strict in [true, false] {
        let wq = per_cpu_queue(&rt, strict, 0);
        for &cpu in rt.cpus() {
            for _ in 0..20 {
                let seen = Arc::new(AtomicUsize::new(usize::MAX));
                let s = seen.clone();
                let w = Work::new(move || s.store(current_cpu(), SeqCst));
                wq.queue_on(cpu, &w).unwrap();
                w.flush().unwrap();
                assert_eq!(seen.load(SeqCst), cpu, "strict={strict}: an item of CPU {cpu}'s pod ran elsewhere");
            }
        }
        let dump = rt.dump();
        assert!(dump.contains("per-cpu"), "{dump}");
    }
}

#[test]
fn unbound_max_active_limits_the_queue_across_pods() {
    let rt = Runtime::builder().build().unwrap();
    let wq = per_cpu_queue(&rt, true, 2);
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    for i in 0..24 {
        let (now, peak) = (now.clone(), peak.clone());
        let w = Work::new(move || {
            peak.fetch_max(now.fetch_add(1, SeqCst) + 1, SeqCst);
            wq_core::blocking(|| thread::sleep(Duration::from_millis(5)));
            now.fetch_sub(1, SeqCst);
        });
        let cpu = rt.cpus()[i % rt.cpus().len()];
        assert!(wq.queue_on(cpu, &w).unwrap());
    }
    wq.flush().unwrap();
    assert_eq!(peak.load(SeqCst), 2, "max_active 2 over the whole queue, whatever the pods");
    assert_eq!(wq.stats().total, 24);
}

#[test]
fn apply_attrs_moves_new_work_and_loses_none_in_flight() {
    let rt = Runtime::builder().build().unwrap();
    let wq = rt.workqueue("reshaped").flags(Flags::UNBOUND).build().unwrap();
    assert_eq!(wq.attrs(), Some(Attrs::default()));
    let ran = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Arc::new(Mutex::new(rx));
    // Items queued under the old attributes, some still running when they change.
    for _ in 0..20 {
        let (ran, rx) = (ran.clone(), rx.clone());
        wq.execute(move || {
            let _ = wq_core::blocking(|| rx.lock().unwrap().recv_timeout(Duration::from_secs(20)));
            ran.fetch_add(1, SeqCst);
        })
        .unwrap();
    }
    let new = Attrs { scope: Scope::Cpu, strict: true, ..Attrs::default() };
    wq.apply_attrs(new.clone()).unwrap();
    assert_eq!(wq.attrs(), Some(new));
    for _ in 0..20 {
        let ran = ran.clone();
        wq.execute(move || {
            ran.fetch_add(1, SeqCst);
        })
        .unwrap();
    }
    for _ in 0..20 {
        tx.send(()).unwrap();
    }
    // flush covers the replaced pwqs too.
    wq.flush().unwrap();
    assert_eq!(ran.load(SeqCst), 40);
    wait_until("stats count every item", || wq.stats().total == 40);
}

#[test]
fn apply_attrs_refuses_what_it_cannot_do() {
    let rt = Runtime::builder().build().unwrap();
    let bound = rt.workqueue("bound").build().unwrap();
    assert!(matches!(bound.apply_attrs(Attrs::default()), Err(Error::ConflictingFlags(_))));
    assert_eq!(bound.attrs(), None);
    let ordered = rt.workqueue("ordered").ordered().build().unwrap();
    assert!(matches!(ordered.apply_attrs(Attrs::default()), Err(Error::ConflictingFlags(_))));
    let ub = rt.workqueue("ub").flags(Flags::UNBOUND).build().unwrap();
    let bad_nice = ub.apply_attrs(Attrs { nice: 40, ..Attrs::default() }).unwrap_err();
    assert!(bad_nice.to_string().contains("nice 40"), "{bad_nice}");
    assert!(matches!(ub.apply_attrs(Attrs { cpus: Some(vec![]), ..Attrs::default() }), Err(Error::NoCpus)));
    assert!(matches!(
        ub.apply_attrs(Attrs { cpus: Some(vec![4000]), ..Attrs::default() }),
        Err(Error::InvalidCpu { cpu: 4000, .. })
    ));
    assert_eq!(ub.attrs(), Some(Attrs::default()), "a refused change leaves the attributes alone");
    let refused = rt.workqueue("x").attrs(Attrs::default()).build();
    assert!(matches!(refused, Err(Error::ConflictingFlags(_))), "attrs on a bound queue");
}

#[test]
fn queues_with_the_same_attributes_share_unbound_pools() {
    let rt = Runtime::builder().build().unwrap();
    let before = rt.stats().pools.len();
    let attrs = Attrs { scope: Scope::Cpu, strict: true, ..Attrs::default() };
    let a = rt.workqueue("a").flags(Flags::UNBOUND).attrs(attrs.clone()).build().unwrap();
    let grown = rt.stats().pools.len();
    // One pool per pod; with a single CPU the pod is the default unbound pool.
    let new_pods = if rt.cpus().len() > 1 { rt.cpus().len() } else { 0 };
    assert_eq!(grown, before + new_pods, "one pool per pod");
    let b = rt.workqueue("b").flags(Flags::UNBOUND).attrs(attrs).build().unwrap();
    assert_eq!(rt.stats().pools.len(), grown, "the second queue reuses the pools");
    assert_eq!(a.submit(|| 1).unwrap().wait().unwrap() + b.submit(|| 1).unwrap().wait().unwrap(), 2);
}
