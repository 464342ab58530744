//! Scenario (d): the kernel documentation's example — w0 burns, sleeps, burns; w1 and w2 burn
//! and sleep — queued together on one CPU. With concurrency management w1 starts while w0
//! sleeps; a one-thread pool runs them back to back.

use std::thread;
use std::time::Duration;

use super::{warm_up, TimelineConfig, TimelineRun};
use crate::peer::{Peer, PeerError, RunError};
use crate::sys::{burn_cpu, now_ns, pin_current_thread};
use crate::tracker::Lease;

/// Queues w0, w1, w2 from a thread pinned to `cfg.cpu` and reports when each finished.
/// Sleeps run inside [`Peer::blocking`].
pub fn run<P: Peer>(peer: &P, cfg: &TimelineConfig) -> Result<TimelineRun, RunError> {
    let mut lease = Lease::new(3);
    let t = lease.tracker();
    let (burn, sleep) = (cfg.burn, cfg.sleep);
    let start = thread::scope(|scope| {
        scope
            .spawn(|| -> Result<u64, RunError> {
                pin_current_thread(cfg.cpu)?;
                // From the pinned thread, so a bound queue's pool on that CPU is the one warmed.
                warm_up(peer, 2)?;
                let start = now_ns();
                for i in 0..3 {
                    peer.spawn(move || {
                        burn_cpu(burn);
                        P::blocking(|| thread::sleep(sleep));
                        if i == 0 {
                            burn_cpu(burn);
                        }
                        t.stamp_now(i);
                        t.hit(i);
                    })?;
                }
                Ok(start)
            })
            .join()
            .unwrap_or_else(|_| Err(PeerError("the timeline submitter panicked".into()).into()))
    })?;
    lease.wait(Duration::from_secs(10), Duration::from_micros(200));
    let integrity = lease.verify();
    let finish = |i: usize| match t.stamp(i) {
        0 => f64::NAN,
        s => s.saturating_sub(start) as f64 / 1e6,
    };
    Ok(TimelineRun { finish_ms: [finish(0), finish(1), finish(2)], integrity })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::FixedPool;

    #[test]
    fn one_thread_pool_runs_the_items_back_to_back() {
        let pool = FixedPool::new(1, Some(0)).unwrap();
        let cfg = TimelineConfig { burn: Duration::from_millis(20), sleep: Duration::from_millis(40), cpu: 0 };
        let r = run(&pool, &cfg).unwrap();
        assert!(r.integrity.is_clean());
        let [w0, w1, w2] = r.finish_ms;
        // Strictly serial: each item finishes at least one burn+sleep after the previous one.
        assert!(w0 < w1 && w1 < w2, "{:?}", r.finish_ms);
        assert!(w1 - w0 >= 60.0 && w2 - w1 >= 60.0, "{:?}", r.finish_ms);
    }
}
