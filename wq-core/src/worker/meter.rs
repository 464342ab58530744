//! Charging CPU time to the items a worker runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pool::{PwqLink, PwqRef};
use crate::sys;

/// CPU time owed to a pwq for a window of items (see `CpuMeter`), applied
/// to its `cpu_time` with the pool locked (if the pwq still exists: the
/// link outlives the item's entry, but does not keep the pwq's slot).
pub(crate) type Charge = (Arc<PwqLink>, Duration);

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
/// The pool lock's bookkeeping (applying a batch's records, taking the next
/// stash) is charged to no item: the first item after it reads the clock.
///
/// **Windows.** Even one wall-clock read per item (33 ns here) is a tenth
/// of a tiny item's whole cost. While a worker runs a stash
/// (`pool/batch.rs`), consecutive items of one pwq form a *window*: they
/// read no clock, and the window's time is read once when it closes (the
/// next item belongs to another pwq, or the worker returns to its pool
/// lock) and charged to that pwq as a whole, as a `Charge` beside the
/// items' records. Only the pwq's sum is kept (`WorkqueueStats::cpu_time`),
/// so nothing visible is approximated; the sum lags by the open window.
#[derive(Default)]
pub(super) struct CpuMeter {
    /// Thread CPU time at the last reading; `None` until the first long
    /// item of a busy period (reading it at every wake-up would put a
    /// system call on the wake path) unless the worker parked before it.
    checkpoint: Option<Duration>,
    /// Thread CPU time when the worker last went idle (`parking`): an idle
    /// thread uses next to none, so it stands for the next busy period's
    /// start. Read off the wake path, after the worker left its pool lock.
    parked: Option<Duration>,
    charged: Duration,
    last_end: Option<Instant>,
    /// Wall time of the last item of this busy period (`None` before the first).
    last_wall: Option<Duration>,
    /// Whether timed items may open a window (the worker runs a stash).
    windows: bool,
    window: Option<Window>,
}

/// Items of one pwq run since `start` without reading the clock.
struct Window {
    link: Arc<PwqLink>,
    start: Instant,
    /// Items run inside the window; the one that opened it is not counted
    /// (it was timed and charged on its own).
    items: u32,
}

/// How an item started: timed from an instant, or inside the open window.
pub(super) enum Start {
    Timed(Instant),
    Windowed,
}

impl CpuMeter {
    const SHORT: Duration = Duration::from_micros(50);
    /// Items shorter than this make the worker take a batch (see `pool/batch.rs`).
    const TINY: Duration = Duration::from_micros(10);

    /// The worker goes idle (or starts): reads the thread's CPU clock.
    pub(super) fn parking(&mut self) {
        self.parked = Some(sys::thread_cpu_time());
    }

    /// A busy period starts: the idle time before it is nobody's.
    pub(super) fn checkpoint(&mut self) {
        debug_assert!(self.window.is_none(), "a window left open over an idle period");
        self.checkpoint = self.parked.take();
        self.charged = Duration::ZERO;
        self.last_end = None;
        self.last_wall = None;
    }

    /// The last item was short enough that the pool lock around it cost
    /// as much as the item: the next ones are worth taking in a batch.
    pub(super) fn last_was_tiny(&self) -> bool {
        self.last_wall.is_some_and(|w| w < Self::TINY)
    }

    /// The worker leaves its pool lock for the next items: the time since
    /// the last reading was the pool's bookkeeping, not an item's, so the
    /// next item reads the clock when it starts.
    pub(super) fn leave_lock(&mut self) {
        self.last_end = None;
    }

    /// Lets timed items open windows: the worker starts running a stash.
    pub(super) fn open_windows(&mut self) {
        self.windows = true;
    }

    /// The worker goes back to its pool lock: no more windows, and the
    /// open one closes (its charge is returned).
    pub(super) fn close_windows(&mut self) -> Option<Charge> {
        self.windows = false;
        self.close_window()
    }

    /// An item of `link` starts. Inside the open window if it is of the
    /// window's pwq; otherwise the window closes (its charge is returned)
    /// and its closing read is this item's start.
    pub(super) fn item_start(&mut self, link: PwqRef) -> (Start, Option<Charge>) {
        if self.window.as_ref().is_some_and(|w| link.is(&w.link)) {
            return (Start::Windowed, None);
        }
        let closed = self.close_window();
        (Start::Timed(self.last_end.take().unwrap_or_else(Instant::now)), closed)
    }

    /// The CPU time to put on the record of an item of `link` that began
    /// with `start` and just ended: none inside a window (the window's
    /// charge carries it). A timed item may open a window if windows are
    /// on and `may_open` (an item of this worker's own pool).
    pub(super) fn item_end(&mut self, start: Start, link: PwqRef, may_open: bool) -> Duration {
        let start = match start {
            Start::Windowed => {
                if let Some(w) = self.window.as_mut() {
                    w.items += 1;
                }
                return Duration::ZERO;
            }
            Start::Timed(start) => start,
        };
        let end = Instant::now();
        self.last_end = Some(end);
        let used = self.charge_wall(end - start);
        if self.windows && may_open {
            self.window = Some(Window { link: link.to_arc(), start: end, items: 0 });
        }
        used
    }

    /// Reads the clock for the open window, if it ran any item.
    fn close_window(&mut self) -> Option<Charge> {
        let w = self.window.take()?;
        if w.items == 0 {
            return None;
        }
        let end = Instant::now();
        self.last_end = Some(end);
        let wall = end - w.start;
        let used = self.charge_wall(wall);
        // The tiny-item test looks at one item: the window's average.
        self.last_wall = Some(wall / w.items);
        Some((w.link, used))
    }

    /// The CPU time of a stretch of `wall` that just ended (an item, or a window).
    fn charge_wall(&mut self, wall: Duration) -> Duration {
        self.last_wall = Some(wall);
        if wall < Self::SHORT {
            self.charged += wall;
            return wall;
        }
        let now = sys::thread_cpu_time();
        // The first long item of a busy period with no reading before it
        // (none is taken unless the worker went idle or started) is
        // charged its wall time, an upper bound.
        let used = match self.checkpoint {
            Some(before) => now.saturating_sub(before).saturating_sub(self.charged).min(wall),
            None => wall,
        };
        self.checkpoint = Some(now);
        self.charged = Duration::ZERO;
        used
    }
}
