//! The monitor runs as `SCHED_BATCH`, so its ticks never preempt a busy
//! worker; the workers it starts take back the policy of the thread that
//! built the runtime (a batch worker's wake-up could not preempt the
//! queueing thread, which a lone item's latency relies on).

use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::Duration;

use wq_core::{Flags, Runtime};

/// The policy of thread `tid` of this process (0: the caller).
fn policy_of(tid: libc::pid_t) -> libc::c_int {
    // SAFETY: `sched_getscheduler` takes a thread id and touches no memory.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    assert!(policy >= 0, "sched_getscheduler({tid}): {}", std::io::Error::last_os_error());
    policy
}

fn set_own_policy(policy: libc::c_int) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is live and only read.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    assert_eq!(rc, 0, "sched_setscheduler({policy}): {}", std::io::Error::last_os_error());
}

/// The tids of this process's threads named `name`.
fn threads_named(name: &str) -> Vec<libc::pid_t> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|e| {
            let e = e.ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim_end() == name).then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

/// Builds a runtime on a new thread running `policy` and reports the
/// policy an item sees on a bound and on an unbound queue, and that of the
/// runtime's monitor, which has started by then (it starts the workers).
fn policies_for_builder(policy: libc::c_int) -> (Vec<libc::c_int>, libc::c_int) {
    // One runtime at a time, so that the new monitor is this runtime's.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        set_own_policy(policy);
        let before: Vec<_> = threads_named("wq/monitor");
        let rt = Runtime::builder().build().unwrap();
        let mut seen = Vec::new();
        for flags in [Flags::empty(), Flags::UNBOUND] {
            let wq = rt.workqueue("policy").flags(flags).build().unwrap();
            let c = wq.submit(|| policy_of(0)).unwrap();
            assert!(c.wait_timeout(Duration::from_secs(30)), "the item did not run");
            seen.push(c.wait().unwrap());
        }
        let ours: Vec<_> = threads_named("wq/monitor").into_iter().filter(|t| !before.contains(t)).collect();
        assert!(!ours.is_empty(), "no new wq/monitor thread");
        let monitor = policy_of(ours[0]);
        drop(rt);
        tx.send((seen, monitor)).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("the builder thread reported")
}

#[test]
fn the_monitor_is_batch_and_workers_keep_the_builders_normal_policy() {
    let (workers, monitor) = policies_for_builder(libc::SCHED_OTHER);
    assert_eq!(monitor, libc::SCHED_BATCH, "the monitor's policy");
    assert_eq!(workers, [libc::SCHED_OTHER; 2], "the workers' policy (bound, unbound)");
}

#[test]
fn a_batch_builder_gets_batch_workers() {
    let (workers, monitor) = policies_for_builder(libc::SCHED_BATCH);
    assert_eq!(monitor, libc::SCHED_BATCH, "the monitor's policy");
    assert_eq!(workers, [libc::SCHED_BATCH; 2], "the workers' policy (bound, unbound)");
}
