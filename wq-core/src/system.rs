//! The system workqueues, with the kernel's names and meaning.
//!
//! Work items that need no flushing as a group and no special attributes
//! can use these instead of a queue of their own (see `workqueue.rst`,
//! "Guidelines"). They live on [`Runtime::global`](crate::Runtime::global).

use std::sync::OnceLock;

use crate::{Flags, Workqueue};

fn system(cell: &'static OnceLock<Workqueue>, name: &str, flags: Flags, max_active: u32) -> &'static Workqueue {
    cell.get_or_init(|| {
        let wq = Workqueue::builder(name)
            .flags(flags)
            .max_active(max_active)
            .build()
            .unwrap_or_else(|err| panic!("cannot create the system workqueue {name:?}: {err}"));
        // Shared by the whole process: no caller may destroy it for the others.
        wq.shared.core.system.store(true, std::sync::atomic::Ordering::SeqCst);
        wq
    })
}

macro_rules! system_queue {
    ($(#[$doc:meta])* $fn:ident, $name:literal, $flags:expr, $max:expr) => {
        $(#[$doc])*
        ///
        /// # Panics
        /// Only if the global runtime cannot start (the OS refuses threads).
        pub fn $fn() -> &'static Workqueue {
            static CELL: OnceLock<Workqueue> = OnceLock::new();
            system(&CELL, $name, $flags, $max)
        }
    };
}

system_queue!(
    /// `events`: the default bound queue for short, non-blocking-heavy items.
    system_wq, "events", Flags::empty(), 0
);
system_queue!(
    /// `events_highpri`: bound, served by the highpri pools.
    system_highpri_wq, "events_highpri", Flags::HIGHPRI, 0
);
system_queue!(
    /// `events_long`: bound, for items that may run long; flushing it does
    /// not wait behind `system_wq`'s short items.
    system_long_wq, "events_long", Flags::empty(), 0
);
system_queue!(
    /// `events_unbound`: unbound workers, not pinned to the queueing CPU.
    system_unbound_wq, "events_unbound", Flags::UNBOUND, 512
);
system_queue!(
    /// `events_freezable`: bound, stopped by `Runtime::freeze`.
    system_freezable_wq, "events_freezable", Flags::FREEZABLE, 0
);
system_queue!(
    /// `events_power_efficient`: bound unless the system prefers power
    /// efficiency (the kernel's `wq_power_efficient`), which it does not here.
    system_power_efficient_wq, "events_power_efficient", Flags::POWER_EFFICIENT, 0
);
