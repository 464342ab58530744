//! The pools wq-core is compared with: tokio's blocking pool, rayon, smol's `blocking` and a
//! fixed std-thread pool.

use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender};

use crate::peer::{Peer, PeerError};

/// tokio's `spawn_blocking`, called with a multi-thread runtime's context (what
/// `tokio::task::spawn_blocking` resolves to inside the runtime).
pub struct TokioBlocking {
    handle: tokio::runtime::Handle,
    // Dropping the runtime shuts its blocking pool down and joins the threads, so one run's
    // hundreds of blocking threads do not linger into the next peer's run.
    _rt: tokio::runtime::Runtime,
}

impl TokioBlocking {
    /// A multi-thread runtime with tokio's defaults (one worker per CPU, 512 blocking threads).
    pub fn new() -> Result<TokioBlocking, PeerError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .thread_name("tokio-bench")
            .build()
            .map_err(|e| PeerError::new("building the tokio runtime", e))?;
        Ok(TokioBlocking { handle: rt.handle().clone(), _rt: rt })
    }
}

impl Peer for TokioBlocking {
    fn spawn<F>(&self, f: F) -> Result<(), PeerError>
    where
        F: FnOnce() + Send + 'static,
    {
        // Dropping the JoinHandle detaches the task; it still runs.
        drop(self.handle.spawn_blocking(f));
        Ok(())
    }

    fn thread_prefixes(&self) -> &'static [&'static str] {
        &["tokio-bench"]
    }
}

/// `spawn` on a rayon-core pool of one thread per CPU.
///
/// A dedicated pool rather than the global one behind `rayon_core::spawn` (the same injector
/// path), so each run starts and retires its own threads like the other peers.
pub struct RayonSpawn {
    pool: rayon_core::ThreadPool,
}

impl RayonSpawn {
    /// A pool with rayon's default size (one thread per CPU).
    pub fn new() -> Result<RayonSpawn, PeerError> {
        let pool = rayon_core::ThreadPoolBuilder::new()
            .thread_name(|i| format!("rayon-bench-{i}"))
            .build()
            .map_err(|e| PeerError::new("building the rayon pool", e))?;
        Ok(RayonSpawn { pool })
    }
}

impl Peer for RayonSpawn {
    fn spawn<F>(&self, f: F) -> Result<(), PeerError>
    where
        F: FnOnce() + Send + 'static,
    {
        self.pool.spawn(f);
        Ok(())
    }

    fn thread_prefixes(&self) -> &'static [&'static str] {
        &["rayon-bench"]
    }
}

/// smol's `blocking::unblock` (its process-wide pool that grows to 500 threads and keeps them).
pub struct SmolUnblock;

impl SmolUnblock {
    /// The pool is global; there is nothing to build.
    pub fn new() -> Result<SmolUnblock, PeerError> {
        Ok(SmolUnblock)
    }
}

impl Peer for SmolUnblock {
    fn spawn<F>(&self, f: F) -> Result<(), PeerError>
    where
        F: FnOnce() + Send + 'static,
    {
        // A dropped Task would cancel the item; detach keeps it running.
        smol::unblock(f).detach();
        Ok(())
    }

    fn thread_prefixes(&self) -> &'static [&'static str] {
        // The `blocking` crate names its threads `blocking-N`; they never exit (blocking 1.7
        // retires idle threads only above its thread limit), so later runs reuse them.
        &["blocking-"]
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed pool of std threads fed by one MPMC channel: the hand-written pool many services use.
pub struct FixedPool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl FixedPool {
    /// `threads` workers (at least 1), each pinned to `pin_cpu` if given.
    pub fn new(threads: usize, pin_cpu: Option<usize>) -> Result<FixedPool, PeerError> {
        if threads == 0 {
            return Err(PeerError("a fixed pool needs at least one thread".into()));
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut pool = FixedPool { tx: Some(tx), threads: Vec::with_capacity(threads) };
        for i in 0..threads {
            let rx: Receiver<Job> = rx.clone();
            let h = thread::Builder::new()
                .name(format!("fixed-pool-{i}"))
                .spawn(move || {
                    if let Some(cpu) = pin_cpu {
                        // Unpinned is still a correct pool; the timeline only reads a bit noisier.
                        let _ = crate::sys::pin_current_thread(cpu);
                    }
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
                .map_err(|e| PeerError::new("spawning a pool thread", e))?;
            pool.threads.push(h);
        }
        Ok(pool)
    }
}

impl Peer for FixedPool {
    fn spawn<F>(&self, f: F) -> Result<(), PeerError>
    where
        F: FnOnce() + Send + 'static,
    {
        let tx = self.tx.as_ref().ok_or_else(|| PeerError("pool is shut down".into()))?;
        tx.send(Box::new(f)).map_err(|_| PeerError("all pool threads exited".into()))
    }

    fn thread_prefixes(&self) -> &'static [&'static str] {
        &["fixed-pool-"]
    }
}

impl Drop for FixedPool {
    fn drop(&mut self) {
        // Closing the channel ends each worker's loop once the queue is empty.
        self.tx = None;
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::Lease;
    use std::time::Duration;

    fn runs_all<P: Peer>(p: &P) {
        let mut lease = Lease::new(500);
        let t = lease.tracker();
        for i in 0..500 {
            p.spawn(move || t.hit(i)).unwrap();
        }
        assert!(lease.wait(Duration::from_secs(20), Duration::from_millis(1)));
        assert!(lease.verify().is_clean());
    }

    #[test]
    fn every_peer_runs_every_item_once() {
        runs_all(&TokioBlocking::new().unwrap());
        runs_all(&RayonSpawn::new().unwrap());
        runs_all(&SmolUnblock::new().unwrap());
        runs_all(&FixedPool::new(2, None).unwrap());
    }

    #[test]
    fn fixed_pool_rejects_zero_threads() {
        assert!(FixedPool::new(0, None).is_err());
    }

    #[test]
    fn fixed_pool_drop_finishes_queued_items() {
        let mut lease = Lease::new(100);
        let t = lease.tracker();
        {
            let p = FixedPool::new(1, None).unwrap();
            for i in 0..100 {
                p.spawn(move || t.hit(i)).unwrap();
            }
        }
        assert_eq!(t.completed(), 100);
        assert!(lease.verify().is_clean());
    }
}
