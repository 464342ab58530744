//! The one error type of the crate: every refusal names its cause.

use std::fmt;
use std::io;

/// Why an operation was refused.
///
/// Every fallible public function of `wq-core` returns this type; the
/// message names the queue, CPU or value at fault.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A workqueue name was empty.
    EmptyName,
    /// A workqueue name was longer than [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes.
    NameTooLong {
        /// The length given.
        len: usize,
    },
    /// A workqueue name contained a NUL byte.
    NameHasNul {
        /// The name given.
        name: String,
    },
    /// A workqueue name contained another control character (a newline,
    /// an escape) or a bidirectional formatting character (an override):
    /// names are printed in dumps, tables and logs, where one would forge
    /// rows, drive the terminal or reorder what follows.
    NameHasControl {
        /// The name given.
        name: String,
    },
    /// Flag bits that name no [`Flags`](crate::Flags) value.
    UnknownFlags {
        /// The unknown bits.
        bits: u32,
    },
    /// `max_active` was above [`MAX_ACTIVE_LIMIT`](crate::MAX_ACTIVE_LIMIT).
    MaxActiveTooLarge {
        /// The value given.
        requested: u32,
    },
    /// Two flags or options that cannot go together.
    ConflictingFlags(&'static str),
    /// A CPU number that the runtime does not manage.
    InvalidCpu {
        /// The CPU asked for.
        cpu: usize,
        /// The CPUs the runtime manages.
        allowed: Vec<usize>,
    },
    /// A runtime was asked to manage no CPU at all.
    NoCpus,
    /// A runtime option with an unusable value.
    InvalidConfig(String),
    /// A workqueue's [`Attrs`](crate::Attrs) with an unusable value (a nice
    /// value out of range, an empty CPU set; a CPU the runtime does not
    /// manage is [`Error::InvalidCpu`]).
    InvalidAttrs(String),
    /// The workqueue was destroyed; it takes no more work.
    Destroyed {
        /// The queue's name.
        queue: String,
    },
    /// The workqueue is draining: only its own work items may queue more.
    Draining {
        /// The queue's name.
        queue: String,
    },
    /// The call would wait for the work item or queue it is running in.
    WouldDeadlock(String),
    /// A delay too long to be represented as a deadline.
    DelayTooLong {
        /// The delay given.
        delay: std::time::Duration,
    },
    /// `destroy` found delayed work still armed on the queue.
    DelayedWorkArmed {
        /// The queue's name.
        queue: String,
        /// Ids ([`DelayedWork::id`](crate::DelayedWork::id)) of the armed items.
        items: Vec<u64>,
    },
    /// The OS refused to create a thread the runtime needs.
    Spawn(io::Error),
    /// `destroy` of a process-wide system queue (`system_wq` and the
    /// others), which all code in the process shares.
    SystemQueue {
        /// The queue's name.
        queue: String,
    },
    /// The runtime was built (or the work item waited for was queued)
    /// before this process was made by `fork`: the runtime's worker,
    /// monitor and timer threads exist only in the parent, so here it
    /// neither runs work nor waits for it. Build a runtime in the child.
    Forked,
}

impl Error {
    /// [`Error::Spawn`] for the thread `what` (its role and name), keeping
    /// the OS error's kind.
    pub(crate) fn spawn(what: &str, err: io::Error) -> Error {
        Error::Spawn(io::Error::new(err.kind(), format!("{what}: {err}")))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::EmptyName => f.write_str("workqueue name is empty"),
            Error::NameTooLong { len } => {
                write!(f, "workqueue name is {len} bytes long; the limit is {}", crate::MAX_NAME_LEN)
            }
            Error::NameHasNul { name } => write!(f, "workqueue name {name:?} contains a NUL byte"),
            Error::NameHasControl { name } => write!(f, "workqueue name {name:?} contains a control character"),
            Error::UnknownFlags { bits } => write!(f, "unknown workqueue flag bits {bits:#x}"),
            Error::MaxActiveTooLarge { requested } => {
                write!(f, "max_active {requested} is above the limit of {}", crate::MAX_ACTIVE_LIMIT)
            }
            Error::ConflictingFlags(what) => write!(f, "conflicting workqueue options: {what}"),
            Error::InvalidCpu { cpu, allowed } => {
                write!(f, "CPU {cpu} is not managed by this runtime (its CPUs: {allowed:?})")
            }
            Error::NoCpus => f.write_str("the runtime was given an empty CPU set"),
            Error::InvalidConfig(what) => write!(f, "invalid runtime option: {what}"),
            Error::InvalidAttrs(what) => write!(f, "invalid workqueue attributes: {what}"),
            Error::Destroyed { queue } => write!(f, "workqueue {queue:?} has been destroyed"),
            Error::Draining { queue } => {
                write!(f, "workqueue {queue:?} is draining: only its own work items may queue more")
            }
            Error::WouldDeadlock(what) => write!(f, "refused, it would deadlock: {what}"),
            Error::DelayTooLong { delay } => write!(f, "delay {delay:?} is too long to be represented as a deadline"),
            Error::DelayedWorkArmed { queue, items } => write!(
                f,
                "cannot destroy workqueue {queue:?}: delayed work items {items:?} are still armed on it \
                 (cancel them first)"
            ),
            Error::Spawn(err) => write!(f, "could not create a thread: {err}"),
            Error::SystemQueue { queue } => {
                write!(f, "the system workqueue {queue:?} is shared by the whole process and cannot be destroyed")
            }
            Error::Forked => f.write_str(
                "this process was made by fork() after the runtime was built (or the item queued), and the \
                 runtime's threads exist only in the parent: build a runtime in this process",
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spawn(err) => Some(err),
            _ => None,
        }
    }
}
