//! A task that blocks inside `poll` must not stall the other tasks of its
//! pool: on a one-CPU runtime, 100 ready tasks finish while it sleeps.
//!
//! Two variants: the sleep is found by the runtime's automatic sleep
//! detector (the property tokio lacks), or declared with the explicit
//! `wq_core::blocking` hook.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use wq_core::Runtime;
use wq_futures::{block_on, WorkqueueExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Fast,
    SleeperWoke,
}

fn run(sleep: fn(Duration)) -> Vec<Event> {
    let rt = Runtime::builder().cpus([0]).build().expect("one-CPU runtime");
    let wq = rt.workqueue("t_block_in_poll").build().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let (started_tx, started_rx) = mpsc::channel();
    let sleeper = {
        let events = Arc::clone(&events);
        wq.spawn(async move {
            started_tx.send(()).unwrap();
            sleep(Duration::from_millis(300));
            events.lock().unwrap().push(Event::SleeperWoke);
        })
    };
    // The sleeper is inside its poll before the others are queued.
    started_rx.recv().unwrap();
    let fast: Vec<_> = (0..100)
        .map(|_| {
            let events = Arc::clone(&events);
            wq.spawn(async move { events.lock().unwrap().push(Event::Fast) })
        })
        .collect();
    for h in fast {
        block_on(h).unwrap();
    }
    block_on(sleeper).unwrap();
    let events = events.lock().unwrap().clone();
    events
}

fn assert_fast_first(events: &[Event]) {
    assert_eq!(events.len(), 101);
    assert_eq!(
        events.last(),
        Some(&Event::SleeperWoke),
        "ready tasks waited for the blocked poll: {} of 100 finished before it woke",
        events.iter().position(|e| *e == Event::SleeperWoke).unwrap()
    );
}

#[test]
fn detector_lets_ready_tasks_run_while_a_poll_sleeps() {
    let events = run(std::thread::sleep);
    assert_fast_first(&events);
}

#[test]
fn explicit_hook_lets_ready_tasks_run_while_a_poll_sleeps() {
    let events = run(|d| wq_core::blocking(|| std::thread::sleep(d)));
    assert_fast_first(&events);
}
