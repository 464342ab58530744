//! Model (6): two threads changing one worker's flags.

use loom::sync::atomic::{AtomicIsize, AtomicU64, Ordering::SeqCst};
use loom::sync::{Arc, Mutex};
use loom::thread;

use super::check;

/// (6) Two threads changing one worker's flags (`worker/mod.rs`,
/// `WorkerShared::set_flags` / `clr_flags` and their `transition` lock):
/// the worker ends a CPU-intensive item (clears the bit: running again,
/// `nr_running` up) while the monitor marks it a hog (sets the bit: not
/// running, `nr_running` down). A third thread samples the count, as
/// `need_more_worker` and `Pool::insert` do. Checked: no sample is below
/// zero, and at the end the count matches the worker's flags. Without the
/// lock, loom finds the monitor's decrement landing before the worker's
/// increment: a sample of -1.
#[test]
fn loom_flags_transition_keeps_nr_running_non_negative() {
    const NOT_RUNNING: u64 = 1;
    struct Worker {
        flags: AtomicU64,
        transition: Mutex<()>,
        nr_running: AtomicIsize,
    }
    impl Worker {
        fn set(&self) {
            let _t = self.transition.lock().unwrap();
            if self.flags.fetch_or(NOT_RUNNING, SeqCst) & NOT_RUNNING == 0 {
                self.nr_running.fetch_sub(1, SeqCst);
            }
        }
        fn clr(&self) {
            let _t = self.transition.lock().unwrap();
            if self.flags.fetch_and(!NOT_RUNNING, SeqCst) & NOT_RUNNING != 0 {
                self.nr_running.fetch_add(1, SeqCst);
            }
        }
    }
    check(3, || {
        // Running a CPU-intensive item: flagged, not counted.
        let w = Arc::new(Worker {
            flags: AtomicU64::new(NOT_RUNNING),
            transition: Mutex::new(()),
            nr_running: AtomicIsize::new(0),
        });
        let monitor = {
            let w = w.clone();
            thread::spawn(move || w.set())
        };
        let reader = {
            let w = w.clone();
            thread::spawn(move || {
                for _ in 0..2 {
                    assert!(w.nr_running.load(SeqCst) >= 0, "nr_running read below zero");
                }
            })
        };
        w.clr();
        monitor.join().unwrap();
        reader.join().unwrap();
        let running = w.flags.load(SeqCst) & NOT_RUNNING == 0;
        assert_eq!(w.nr_running.load(SeqCst), isize::from(running));
    });
}
