//! Building a workqueue: validation of name, flags and `max_active`.

use super::{Attrs, Flags, Workqueue, DEFAULT_MAX_ACTIVE, MAX_ACTIVE_LIMIT, MAX_NAME_LEN};
use crate::runtime::Runtime;
use crate::Error;

/// Configures a new [`Workqueue`]; made by [`Workqueue::builder`] or
/// [`Runtime::workqueue`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct WorkqueueBuilder {
    rt: Option<Runtime>,
    name: String,
    flags: Flags,
    max_active: u32,
    ordered: bool,
    attrs: Option<Attrs>,
}

impl WorkqueueBuilder {
    pub(crate) fn new(rt: Option<Runtime>, name: &str) -> WorkqueueBuilder {
        WorkqueueBuilder {
            rt,
            name: name.to_owned(),
            flags: Flags::empty(),
            max_active: 0,
            ordered: false,
            attrs: None,
        }
    }

    /// Sets the queue's flags (replacing earlier ones).
    pub fn flags(mut self, flags: Flags) -> Self {
        self.flags = flags;
        self
    }

    /// How many of the queue's items may run at once: per CPU for bound
    /// queues, in total for unbound ones. 0 means the default (1024); more
    /// than 2048 is refused by [`build`](WorkqueueBuilder::build).
    pub fn max_active(mut self, max_active: u32) -> Self {
        self.max_active = max_active;
        self
    }

    /// Makes an ordered queue (the kernel's `alloc_ordered_workqueue`):
    /// unbound, one item at a time, in queueing order.
    pub fn ordered(mut self) -> Self {
        self.ordered = true;
        self
    }

    /// Attributes of an unbound queue: nice value, CPUs, affinity scope,
    /// strictness (default: nice 0 — -20 with `HIGHPRI` —, all CPUs, scope
    /// `Cache`, not strict). Requires `UNBOUND` (or `ordered`).
    pub fn attrs(mut self, attrs: Attrs) -> Self {
        self.attrs = Some(attrs);
        self
    }

    /// Creates the queue.
    ///
    /// # Errors
    /// [`Error::EmptyName`], [`Error::NameTooLong`], [`Error::NameHasNul`], [`Error::NameHasControl`],
    /// [`Error::UnknownFlags`],
    /// [`Error::MaxActiveTooLarge`], [`Error::ConflictingFlags`] (ordered
    /// with `max_active` above 1, or with `CPU_INTENSIVE`),
    /// [`Error::InvalidAttrs`] or [`Error::InvalidCpu`] for bad
    /// [`attrs`](WorkqueueBuilder::attrs),
    /// [`Error::InvalidConfig`] for attributes that need a pool the
    /// runtime's `max_workers` leaves no worker for, [`Error::Forked`] for a
    /// runtime built before this process was forked, and
    /// [`Error::Spawn`] if the global runtime or a `MEM_RECLAIM` queue's
    /// rescuer thread cannot start.
    pub fn build(self) -> Result<Workqueue, Error> {
        if self.name.is_empty() {
            return Err(Error::EmptyName);
        }
        if self.name.len() > MAX_NAME_LEN {
            return Err(Error::NameTooLong { len: self.name.len() });
        }
        if self.name.contains('\0') {
            return Err(Error::NameHasNul { name: self.name });
        }
        if self.name.chars().any(|c| c.is_control() || is_bidi_control(c)) {
            return Err(Error::NameHasControl { name: self.name });
        }
        let unknown = self.flags.bits() & !Flags::all().bits();
        if unknown != 0 {
            return Err(Error::UnknownFlags { bits: unknown });
        }
        if self.max_active > MAX_ACTIVE_LIMIT {
            return Err(Error::MaxActiveTooLarge { requested: self.max_active });
        }
        let mut flags = self.flags;
        let mut max_active = if self.max_active == 0 { DEFAULT_MAX_ACTIVE } else { self.max_active };
        if self.ordered {
            if self.max_active > 1 {
                return Err(Error::ConflictingFlags("an ordered queue runs one item at a time (max_active 1)"));
            }
            if flags.contains(Flags::CPU_INTENSIVE) {
                return Err(Error::ConflictingFlags("ordered and CPU_INTENSIVE"));
            }
            flags |= Flags::UNBOUND;
            max_active = 1;
        }
        if self.attrs.is_some() && !flags.contains(Flags::UNBOUND) {
            return Err(Error::ConflictingFlags("attributes apply to unbound queues only"));
        }
        let rt = match self.rt {
            Some(rt) => rt,
            None => Runtime::try_global()?.clone(),
        };
        rt.create_workqueue(self.name, flags, max_active, self.ordered, self.attrs)
    }
}

/// The Unicode bidirectional formatting characters (marks, embeddings,
/// overrides, isolates): not control characters to `char::is_control`,
/// but in a name printed in a table they reorder the rest of the row.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}
