//! The adapter crates as peers: `wq_tokio_compat::spawn_blocking`'s queue and `wq-futures`
//! tasks, so they appear in the same tables as tokio's `spawn_blocking`.
//!
//! Each peer builds a fresh runtime so its threads count toward its own run only; the queue is
//! built by `wq_tokio_compat::blocking_queue_on`, with exactly the settings `spawn_blocking`
//! uses on the global runtime.

use wq_core::{Runtime, Workqueue};
use wq_futures::WorkqueueExt;

use crate::peer::{Peer, PeerError, PeerSpec, GENERAL};

/// `wq_tokio_compat::spawn_blocking_on` the spawn_blocking queue, handle dropped (detached),
/// as `drop(spawn_blocking(f))` would do.
pub struct WqSpawnBlocking {
    wq: Workqueue,
    // Dropped after the queue: the runtime lives exactly as long as the peer.
    _rt: Runtime,
}

impl WqSpawnBlocking {
    /// A fresh runtime on all CPUs and a spawn_blocking queue on it.
    pub fn new() -> Result<WqSpawnBlocking, PeerError> {
        let rt = Runtime::builder().build().map_err(|e| PeerError::new("building the wq runtime", e))?;
        let wq = wq_tokio_compat::blocking_queue_on(&rt)
            .map_err(|e| PeerError::new("building the spawn_blocking queue", e))?;
        Ok(WqSpawnBlocking { wq, _rt: rt })
    }
}

impl Peer for WqSpawnBlocking {
    fn thread_prefixes(&self) -> &'static [&'static str] {
        super::wq::WQ_THREADS
    }

    fn spawn<F>(&self, f: F) -> Result<(), PeerError>
    where
        F: FnOnce() + Send + 'static,
    {
        drop(wq_tokio_compat::spawn_blocking_on(&self.wq, f));
        Ok(())
    }

    fn blocking<R>(f: impl FnOnce() -> R) -> R {
        wq_tokio_compat::block_in_place(f)
    }
}

impl Drop for WqSpawnBlocking {
    fn drop(&mut self) {
        // Runs are complete when a peer is dropped; destroy only makes the teardown explicit.
        let _ = self.wq.destroy();
    }
}

/// A `wq-futures` task per item (`wq.spawn(async move { f() })`, handle dropped): what an
/// async-task allocation and a poll-as-work-item cost over a plain `submit`.
pub struct WqFuturesSpawn {
    wq: Workqueue,
    _rt: Runtime,
}

impl WqFuturesSpawn {
    /// A fresh runtime on all CPUs and a bound queue on it.
    pub fn new() -> Result<WqFuturesSpawn, PeerError> {
        let rt = Runtime::builder().build().map_err(|e| PeerError::new("building the wq runtime", e))?;
        let wq = rt.workqueue("bench-futures").build().map_err(|e| PeerError::new("building the workqueue", e))?;
        Ok(WqFuturesSpawn { wq, _rt: rt })
    }
}

impl Peer for WqFuturesSpawn {
    fn thread_prefixes(&self) -> &'static [&'static str] {
        super::wq::WQ_THREADS
    }

    fn spawn<F>(&self, f: F) -> Result<(), PeerError>
    where
        F: FnOnce() + Send + 'static,
    {
        self.wq.try_spawn(async move { f() }).map(drop).map_err(|e| PeerError::new("wq-futures spawn", e))
    }

    fn blocking<R>(f: impl FnOnce() -> R) -> R {
        wq_core::blocking(f)
    }
}

impl Drop for WqFuturesSpawn {
    fn drop(&mut self) {
        let _ = self.wq.destroy();
    }
}

/// The adapter rows of the tables; listed right after tokio's `spawn_blocking` row.
pub fn specs() -> Vec<PeerSpec> {
    vec![
        PeerSpec::new("wq-tokio-compat spawn_blocking", GENERAL, WqSpawnBlocking::new).with_blocking_hook(),
        PeerSpec::new("wq-futures spawn (bound)", GENERAL, WqFuturesSpawn::new).with_blocking_hook(),
    ]
}
