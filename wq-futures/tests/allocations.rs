//! `spawn_blocking` costs one allocation per call: the call's closure,
//! result slot and waker share one `Arc`, queued as its own work item
//! (`Workqueue::execute_shared`), and detached calls on unbound queues
//! reuse earlier calls' allocations. Waking a task queues its next poll
//! without allocating (`Workqueue::execute_runnable`). Counted by a global
//! allocator, on the calling thread only, so alone in its test binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use wq_core::{Flags, Workqueue};
use wq_futures::{block_on, WorkqueueExt};

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, counting each thread's allocations.
struct Counting;

// SAFETY: every call is forwarded unchanged to `System`, which upholds
// `GlobalAlloc`'s contract; the counter is a const-initialised thread
// local without a destructor, so touching it never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's `layout` obligations are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this `layout` (above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn spawn_blocking_allocates_once_per_call() {
    let wq = Workqueue::builder("one_allocation").flags(Flags::UNBOUND).build().unwrap();
    // Warm up: workers, worklist capacity, thread locals.
    for i in 0..200u64 {
        assert_eq!(block_on(wq.spawn_blocking(move || i)).unwrap(), i);
    }
    let mut per_call = Vec::with_capacity(100);
    for i in 0..100u64 {
        let before = allocations();
        let handle = wq.spawn_blocking(move || i * 2);
        per_call.push(allocations() - before);
        assert_eq!(block_on(handle).unwrap(), i * 2);
    }
    // Now and then a call may also grow a shared structure (a worker
    // request, the worklist); the typical call must allocate exactly once.
    per_call.sort_unstable();
    assert_eq!(per_call[0], 1, "{per_call:?}");
    assert_eq!(per_call[per_call.len() * 9 / 10], 1, "{per_call:?}");
}

/// A detached call on an unbound queue runs on another CPU, whose worker
/// hands its allocation back (`wq_core::recycle`): queueing such calls
/// reuses the allocations of earlier ones instead of allocating.
#[test]
fn detached_calls_on_an_unbound_queue_reuse_their_allocations() {
    let wq = Workqueue::builder("recycled_calls").flags(Flags::UNBOUND).build().unwrap();
    let calls = 2_000;
    for round in 0..3 {
        let before = allocations();
        for i in 0..calls {
            drop(wq.spawn_blocking(move || i * round));
        }
        let allocated = allocations() - before;
        wq.flush().unwrap();
        if round > 0 {
            // At least the magazines (32 calls each) the depot kept from
            // the round before are reused; more are when workers hand
            // back during the round.
            assert!(allocated <= calls - 64, "{allocated} allocations for {calls} detached calls");
        }
    }
}

/// A task woken from this thread has its next poll queued right here, by
/// the task's schedule function: that must not allocate (it used to box a
/// closure around the task's `Runnable` for every poll).
#[test]
fn waking_a_task_queues_its_poll_without_allocating() {
    let wq = Workqueue::builder("poll_without_allocating").build().unwrap();
    let wakes = 300;
    let signals = Arc::new(AtomicUsize::new(0));
    let parked: Arc<Mutex<Option<Waker>>> = Arc::default();
    let (s, p) = (signals.clone(), parked.clone());
    let task = wq.spawn(async move {
        let mut seen = 0;
        poll_fn(|cx| {
            seen = s.load(SeqCst);
            if seen == wakes {
                return Poll::Ready(seen);
            }
            *p.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    });
    let mut per_wake = Vec::with_capacity(wakes);
    for _ in 0..wakes {
        // The task parks its waker once per poll; each wake-up queues one poll.
        let waker = loop {
            if let Some(w) = parked.lock().unwrap().take() {
                break w;
            }
            std::thread::yield_now();
        };
        signals.fetch_add(1, SeqCst);
        let before = allocations();
        waker.wake();
        per_wake.push(allocations() - before);
    }
    assert_eq!(block_on(task).unwrap(), wakes);
    // Now and then a wake-up may grow a shared structure (the inbox, a
    // worker request); the typical one must not allocate.
    per_wake.sort_unstable();
    assert_eq!(per_wake[per_wake.len() * 9 / 10], 0, "{per_wake:?}");
}
