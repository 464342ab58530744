//! Scenario (a): submit-to-start latency of an idle pool, and the two physical floors a pool's
//! wake-up cannot beat on this machine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::{finish, warm_up, LatencyConfig, LatencyRun};
use crate::peer::{Peer, RunError};
use crate::stats::percentile;
use crate::sys::now_ns;
use crate::tracker::{Integrity, Lease};

/// Submits one item every `cfg.interval` (the pool goes idle in between) and measures from just
/// before the submit call to the first instruction of the item.
pub fn run<P: Peer>(peer: &P, cfg: &LatencyConfig) -> Result<LatencyRun, RunError> {
    warm_up(peer, cfg.warmup)?;
    let mut lease = Lease::new(cfg.samples);
    let t = lease.tracker();
    let mut submitted = Vec::with_capacity(cfg.samples);
    for i in 0..cfg.samples {
        submitted.push(now_ns());
        peer.spawn(move || {
            t.stamp_now(i);
            t.hit(i);
        })?;
        thread::sleep(cfg.interval);
    }
    let integrity = finish(&mut lease, Duration::from_secs(10), Duration::from_millis(1));
    let lat: Vec<u64> = submitted
        .iter()
        .enumerate()
        .filter_map(|(i, &at)| match t.stamp(i) {
            0 => None,
            s => Some(s.saturating_sub(at)),
        })
        .collect();
    Ok(summarise(lat, integrity))
}

fn summarise(mut ns: Vec<u64>, integrity: Integrity) -> LatencyRun {
    ns.sort_unstable();
    let us = |p: f64| percentile(&ns, p).map_or(f64::NAN, |v| v as f64 / 1_000.0);
    LatencyRun { p50_us: us(0.50), p99_us: us(0.99), max_us: us(1.0), integrity }
}

/// State shared by the two threads of a floor measurement.
struct PingPong {
    /// Sequence number of the latest request (0 = none yet).
    go: AtomicU64,
    /// When the requester sent it.
    sent: AtomicU64,
    /// When the responder saw it.
    seen: AtomicU64,
    /// Sequence number the responder answered last.
    ack: AtomicU64,
    stop: AtomicBool,
}

impl PingPong {
    fn new() -> Arc<PingPong> {
        Arc::new(PingPong {
            go: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            ack: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }
}

/// The futex floor: a parked thread is unparked, stamps, and unparks the requester.
/// Returns (one-way wake latency, full round trip), both in the same units as [`run`].
pub fn park_floor(cfg: &LatencyConfig) -> Result<(LatencyRun, LatencyRun), RunError> {
    let pp = PingPong::new();
    let requester = thread::current();
    let pp2 = pp.clone();
    let responder = thread::Builder::new().name("floor-park".into()).spawn(move || {
        let mut last = 0;
        while !pp2.stop.load(Ordering::Acquire) {
            let g = pp2.go.load(Ordering::Acquire);
            if g == last {
                thread::park();
                continue;
            }
            pp2.seen.store(now_ns(), Ordering::Relaxed);
            last = g;
            pp2.ack.store(g, Ordering::Release);
            requester.unpark();
        }
    })?;
    let mut one_way = Vec::with_capacity(cfg.samples);
    let mut round_trip = Vec::with_capacity(cfg.samples);
    let mut answered = 0;
    for i in 1..=(cfg.warmup + cfg.samples) as u64 {
        let sent = now_ns();
        pp.sent.store(sent, Ordering::Relaxed);
        pp.go.store(i, Ordering::Release);
        responder.thread().unpark();
        let mut ok = false;
        for _ in 0..1_000 {
            if pp.ack.load(Ordering::Acquire) == i {
                ok = true;
                break;
            }
            // A spurious or early unpark only costs another loop; the timeout bounds a hang.
            thread::park_timeout(Duration::from_millis(10));
        }
        let back = now_ns();
        if ok {
            answered += 1;
            if i > cfg.warmup as u64 {
                one_way.push(pp.seen.load(Ordering::Relaxed).saturating_sub(sent));
                round_trip.push(back.saturating_sub(sent));
            }
        }
        thread::sleep(cfg.interval);
    }
    pp.stop.store(true, Ordering::Release);
    responder.thread().unpark();
    responder.join().map_err(|_| RunError::Harness("park floor thread panicked".into()))?;
    let integrity = floor_integrity(cfg, answered);
    Ok((summarise(one_way, integrity), summarise(round_trip, integrity)))
}

/// The cache floor: a thread spinning on an atomic sees a new value. No pool that parks its
/// idle threads can beat this; pools that spin pay for it in CPU time instead.
pub fn spin_floor(cfg: &LatencyConfig) -> Result<LatencyRun, RunError> {
    let pp = PingPong::new();
    let pp2 = pp.clone();
    let responder = thread::Builder::new().name("floor-spin".into()).spawn(move || {
        let mut last = 0;
        while !pp2.stop.load(Ordering::Relaxed) {
            let g = pp2.go.load(Ordering::Acquire);
            if g == last {
                std::hint::spin_loop();
                continue;
            }
            pp2.seen.store(now_ns(), Ordering::Relaxed);
            last = g;
            pp2.ack.store(g, Ordering::Release);
        }
    })?;
    let mut one_way = Vec::with_capacity(cfg.samples);
    let mut answered = 0;
    for i in 1..=(cfg.warmup + cfg.samples) as u64 {
        let sent = now_ns();
        pp.sent.store(sent, Ordering::Relaxed);
        pp.go.store(i, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(5);
        let ok = loop {
            if pp.ack.load(Ordering::Acquire) == i {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            // On a busy 2-CPU machine the spinner may be descheduled; yield rather than spin.
            thread::yield_now();
        };
        if ok {
            answered += 1;
            if i > cfg.warmup as u64 {
                one_way.push(pp.seen.load(Ordering::Relaxed).saturating_sub(sent));
            }
        }
        thread::sleep(cfg.interval);
    }
    pp.stop.store(true, Ordering::Release);
    responder.join().map_err(|_| RunError::Harness("spin floor thread panicked".into()))?;
    Ok(summarise(one_way, floor_integrity(cfg, answered)))
}

fn floor_integrity(cfg: &LatencyConfig, answered: usize) -> Integrity {
    let expected = cfg.warmup + cfg.samples;
    Integrity { expected, exact: answered, lost: expected - answered, duplicated: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::FixedPool;

    fn small() -> LatencyConfig {
        LatencyConfig { samples: 50, interval: Duration::from_micros(200), warmup: 2 }
    }

    #[test]
    fn pool_latency_is_measured_for_every_item() {
        let pool = FixedPool::new(1, None).unwrap();
        let r = run(&pool, &small()).unwrap();
        assert!(r.integrity.is_clean(), "{:?}", r.integrity);
        assert!(r.p50_us > 0.0 && r.p50_us <= r.p99_us && r.p99_us <= r.max_us);
    }

    #[test]
    fn floors_answer_every_request() {
        let (one, rt) = park_floor(&small()).unwrap();
        assert!(one.integrity.is_clean());
        // The round trip contains the one-way trip.
        assert!(rt.p50_us >= one.p50_us);
        let spin = spin_floor(&small()).unwrap();
        assert!(spin.integrity.is_clean());
    }
}
