//! An unbound pool spreads its items in flight over its CPUs
//! (`pool/spread.rs`): an item about to start on a CPU that already holds
//! two more of the pool's items than another moves there first, even when
//! the scheduler would keep every worker on one CPU.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::current_cpu;
use wq_core::{Flags, Runtime};

fn pin_current(cpu: usize) {
    // SAFETY: an all-zero `cpu_set_t` is a valid, empty CPU set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` comes from the allowed set, below `CPU_SETSIZE`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is live and only read, and its exact size is passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "sched_setaffinity({cpu}): {}", std::io::Error::last_os_error());
}

#[test]
fn items_in_flight_are_spread_over_an_unbound_pools_cpus() {
    // The CPUs this process may use (a runtime takes all of them by default).
    let cpus = Runtime::builder().build().unwrap().cpus().to_vec();
    if cpus.len() < 2 {
        eprintln!("one CPU allowed: nothing to spread over");
        return;
    }
    let (home, busy) = (cpus[0], cpus[1]);
    // A runtime on two CPUs, `busy` kept busy, so that the scheduler
    // places the pool's new and woken workers on `home`: without
    // spreading, every item would start there.
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = {
        let stop = stop.clone();
        thread::spawn(move || {
            pin_current(busy);
            while !stop.load(SeqCst) {
                std::hint::spin_loop();
            }
        })
    };
    // Built before this thread is pinned: the runtime's CPUs must be ones
    // the building thread may use.
    let rt = Runtime::builder().cpus([home, busy]).build().unwrap();
    pin_current(home);
    // Let the spinner settle on its CPU before any worker exists.
    thread::sleep(Duration::from_millis(50));
    let wq = rt.workqueue("spread").flags(Flags::UNBOUND).build().unwrap();
    const ITEMS: usize = 8;
    let started = Arc::new(Mutex::new(Vec::new()));
    let completions: Vec<_> = (0..ITEMS)
        .map(|_| {
            let started = started.clone();
            wq.submit(move || {
                started.lock().unwrap().push(current_cpu());
                // In flight together: each keeps its count until it ends.
                // The hook starts the next worker at once.
                wq_core::blocking(|| thread::sleep(Duration::from_millis(400)));
            })
            .unwrap()
        })
        .collect();
    for c in &completions {
        assert!(c.wait_timeout(Duration::from_secs(30)), "an item did not finish");
    }
    stop.store(true, SeqCst);
    spinner.join().unwrap();
    let started = started.lock().unwrap().clone();
    assert_eq!(started.len(), ITEMS);
    let on_busy = started.iter().filter(|&&c| c == busy).count();
    let on_home = started.iter().filter(|&&c| c == home).count();
    // Starting one after another on `home`, items go 1-0, 2-0, 2-1, 3-1,
    // 3-2, 4-2, 4-3, 5-3; two workers deciding at once may both stay, so
    // allow one item less.
    assert!(on_busy >= 2 && on_home >= 2, "start CPUs {started:?}: {on_home} on CPU {home}, {on_busy} on CPU {busy}");
}
