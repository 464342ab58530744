//! Model (7): an unbound queue's queue-wide `max_active` across two pods.

use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use loom::sync::{Arc, Mutex};
use loom::thread;

use super::{check, sc_order};

/// (7) An unbound queue's queue-wide `max_active` across two pods
/// (`pool/pwq.rs`: `try_claim`, `place`, `count_waiting`, `release`,
/// `activate_into`, `others_may_wait`; `pool/mod.rs`: `insert`, `count_parked`, `complete`;
/// `WqCore::activate_pods`). The limit is 1 and pod B's entry holds it.
/// A thread queues an entry in pod A while B's worker completes: B frees
/// the slot, activates its own (none), then looks at the limit and
/// `waiting` to decide whether to activate the other pods; A's claim fails, and A parks the entry, counts it in
/// `waiting`, then reads the limit again and activates if it has room.
/// Checked: once both are done, no entry waits while the limit has room.
/// Without A's second look, loom finds A's claim failing before B's
/// release and B reading `waiting` before A counts it: the entry waits for
/// ever (`a_queue_wide_slot_freed_in_another_pod_while_an_entry_parks_lets_it_in`
/// in `tests/affinity.rs` is the same race on the real code).
#[test]
fn loom_queue_wide_limit_lets_a_parked_entry_in() {
    const MAX: usize = 1;
    #[derive(Default)]
    struct Pod {
        nr_active: usize,
        inactive: usize,
    }
    struct Queue {
        active: AtomicUsize,
        waiting: AtomicUsize,
        pods: [Mutex<Pod>; 2],
    }
    impl Queue {
        /// `Limit::acquire_up_to`.
        fn acquire_up_to(&self, want: usize) -> usize {
            let mut cur = self.active.load(SeqCst);
            loop {
                let took = want.min(MAX - cur);
                if took == 0 {
                    return 0;
                }
                match self.active.compare_exchange(cur, cur + took, SeqCst, SeqCst) {
                    Ok(_) => return took,
                    Err(now) => cur = now,
                }
            }
        }
        fn try_acquire(&self) -> bool {
            self.acquire_up_to(1) == 1
        }
        /// `PwqState::activate_into` with a limit.
        fn activate(&self, pod: &mut Pod) {
            let took = self.acquire_up_to(pod.inactive);
            if took > 0 {
                self.waiting.fetch_sub(took, SeqCst);
                pod.inactive -= took;
                pod.nr_active += took;
            }
        }
    }
    check(3, || {
        let q = Arc::new(Queue {
            active: AtomicUsize::new(1),
            waiting: AtomicUsize::new(0),
            pods: [Mutex::new(Pod::default()), Mutex::new(Pod { nr_active: 1, inactive: 0 })],
        });
        let completer = {
            let q = q.clone();
            thread::spawn(move || {
                // `Pool::complete` on pod B, then `FollowUps::run`.
                let other_pods = {
                    let mut b = q.pods[1].lock().unwrap();
                    b.nr_active -= 1;
                    q.active.fetch_sub(1, SeqCst);
                    q.activate(&mut b);
                    sc_order();
                    // `PwqState::others_may_wait`.
                    q.active.load(SeqCst) < MAX && q.waiting.load(SeqCst) > 0
                };
                if other_pods {
                    for pod in &q.pods {
                        q.activate(&mut pod.lock().unwrap());
                    }
                }
            })
        };
        {
            // `Pool::insert` on pod A.
            let mut a = q.pods[0].lock().unwrap();
            if q.try_acquire() {
                a.nr_active += 1;
            } else {
                a.inactive += 1;
                q.waiting.fetch_add(1, SeqCst);
                sc_order();
                if q.active.load(SeqCst) < MAX {
                    q.activate(&mut a);
                }
            }
        }
        completer.join().unwrap();
        let a = q.pods[0].lock().unwrap();
        assert!(
            a.inactive == 0 || q.active.load(SeqCst) == MAX,
            "an entry waits in pod A while the queue-wide limit has room"
        );
    });
}
