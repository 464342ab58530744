//! The queue's policy applies to polls: ordered queues and `max_active`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use wq_core::{Runtime, Workqueue};
use wq_futures::{block_on, WorkqueueExt};

/// Counts polls running at once; remembers the highest count seen.
#[derive(Default)]
struct Overlap {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Overlap {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A future whose every poll is recorded in `overlap`, lasts a little while
/// (so overlapping polls would be seen), and that completes after `polls`
/// polls.
struct Tracked {
    overlap: Arc<Overlap>,
    polls: u32,
    work: Duration,
}

impl Future for Tracked {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.overlap.enter();
        std::thread::sleep(self.work);
        self.overlap.leave();
        self.polls -= 1;
        if self.polls == 0 {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[test]
fn ordered_queue_polls_one_task_at_a_time_in_spawn_order() {
    let wq = Workqueue::builder("t_ordered_polls").ordered().build().unwrap();
    let overlap = Arc::new(Overlap::default());
    let order = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..200usize)
        .map(|i| {
            let overlap = Arc::clone(&overlap);
            let order = Arc::clone(&order);
            wq.spawn(async move {
                Tracked { overlap, polls: 1, work: Duration::from_micros(200) }.await;
                order.lock().unwrap().push(i);
            })
        })
        .collect();
    for h in handles {
        block_on(h).unwrap();
    }
    assert_eq!(overlap.max.load(Ordering::SeqCst), 1, "two polls overlapped");
    let order = order.lock().unwrap();
    assert_eq!(*order, (0..200).collect::<Vec<_>>(), "not completed in spawn order");
}

#[test]
fn ordered_queue_never_overlaps_multi_poll_tasks() {
    let wq = Workqueue::builder("t_ordered_multi").ordered().build().unwrap();
    let overlap = Arc::new(Overlap::default());
    let handles: Vec<_> = (0..50)
        .map(|_| wq.spawn(Tracked { overlap: Arc::clone(&overlap), polls: 5, work: Duration::from_micros(300) }))
        .collect();
    for h in handles {
        block_on(h).unwrap();
    }
    assert_eq!(overlap.max.load(Ordering::SeqCst), 1);
}

/// The CPU this thread runs on; bound workers are pinned, so it is stable
/// for the length of a poll.
fn current_cpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions; it returns -1 on error.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).expect("sched_getcpu failed")
}

#[test]
fn max_active_one_on_a_bound_queue_serializes_polls_per_cpu() {
    let rt = Runtime::builder().build().expect("runtime on all CPUs");
    let wq = rt.workqueue("t_max_active_1").max_active(1).build().unwrap();
    let per_cpu: Arc<Mutex<HashMap<usize, Arc<Overlap>>>> = Arc::default();
    let polls = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..40)
        .map(|_| {
            let per_cpu = Arc::clone(&per_cpu);
            let polls = Arc::clone(&polls);
            wq.spawn(async move {
                for _ in 0..3 {
                    let overlap = {
                        let mut map = per_cpu.lock().unwrap();
                        Arc::clone(map.entry(current_cpu()).or_default())
                    };
                    overlap.enter();
                    // Declared sleep: the pool would start another worker
                    // for pending work, and only max_active stops it.
                    wq_core::blocking(|| std::thread::sleep(Duration::from_millis(2)));
                    overlap.leave();
                    polls.fetch_add(1, Ordering::SeqCst);
                    futures_lite::future::yield_now().await;
                }
            })
        })
        .collect();
    for h in handles {
        block_on(h).unwrap();
    }
    assert_eq!(polls.load(Ordering::SeqCst), 120);
    let map = per_cpu.lock().unwrap();
    assert!(!map.is_empty());
    for (cpu, overlap) in map.iter() {
        assert_eq!(overlap.max.load(Ordering::SeqCst), 1, "two polls ran at once on CPU {cpu}");
    }
}
