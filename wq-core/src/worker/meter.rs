//! Charging CPU time to the items a worker runs.

use std::time::{Duration, Instant};

use crate::sys;

/// Charges CPU time to items without a system call per item.
///
/// Reading a thread's CPU clock is a real system call (~300 ns here; the
/// vDSO does not serve thread clocks), too dear to make twice per tiny
/// item. Items shorter than `SHORT` in wall time are charged their wall
/// time (they had no room to sleep much); a longer item reads the clock
/// once and is charged what the thread used since the last reading, less
/// what short items were charged meanwhile.
///
/// Back-to-back items share one clock read: an item's end is the next
/// one's start (the bookkeeping between them is charged to the next item).
#[derive(Default)]
pub(super) struct CpuMeter {
    /// Thread CPU time at the last reading; `None` until the first long
    /// item of a busy period (reading it at every wake-up would put a
    /// system call on the wake path).
    checkpoint: Option<Duration>,
    charged: Duration,
    last_end: Option<Instant>,
    /// Wall time of the last item of this busy period (`None` before the first).
    last_wall: Option<Duration>,
}

impl CpuMeter {
    const SHORT: Duration = Duration::from_micros(50);
    /// Items shorter than this make the worker take a batch (see `pool/batch.rs`).
    const TINY: Duration = Duration::from_micros(10);

    /// A busy period starts: the idle time before it is nobody's.
    pub(super) fn checkpoint(&mut self) {
        self.checkpoint = None;
        self.charged = Duration::ZERO;
        self.last_end = None;
        self.last_wall = None;
    }

    /// The last item was short enough that the pool lock around it cost
    /// as much as the item: the next ones are worth taking in a batch.
    pub(super) fn last_was_tiny(&self) -> bool {
        self.last_wall.is_some_and(|w| w < Self::TINY)
    }

    pub(super) fn item_start(&mut self) -> Instant {
        self.last_end.take().unwrap_or_else(Instant::now)
    }

    /// The CPU time of an item that started at `start` and just ended.
    pub(super) fn charge(&mut self, start: Instant) -> Duration {
        let end = Instant::now();
        self.last_end = Some(end);
        let wall = end - start;
        self.last_wall = Some(wall);
        if wall < Self::SHORT {
            self.charged += wall;
            return wall;
        }
        let now = sys::thread_cpu_time();
        // The first long item of a busy period has no reading before it:
        // it is charged its wall time, an upper bound.
        let used = match self.checkpoint {
            Some(before) => now.saturating_sub(before).saturating_sub(self.charged).min(wall),
            None => wall,
        };
        self.checkpoint = Some(now);
        self.charged = Duration::ZERO;
        used
    }
}
