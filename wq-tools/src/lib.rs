//! The `wq` command: looks into a running cmwq process from outside it.
//!
//! Every `wq_core` runtime publishes its counters in a small file
//! (`$XDG_RUNTIME_DIR/cmwq/<pid>.<runtime-id>`, else
//! `<temp dir>/cmwq-<uid>/`), rewritten every 100 ms under a seqlock. The
//! `wq` binary reads them, only for processes and files of your own uid:
//!
//! - `wq list`: your processes with published runtimes;
//! - `wq dump PID`: the `wq_dump.py` view (pools, and which pool each
//!   workqueue uses on each CPU);
//! - `wq monitor PID [INTERVAL] [--count N]`: the `wq_monitor.py` view, a
//!   table of workqueues with their counters and per-interval rates,
//!   redrawn like `top` until Ctrl-C.
//!
//! `wq-demo` is a small program with two busy queues to try it on. This
//! library holds the reader side, so the same checks and views are usable
//! from other programs:
//!
//! ```
//! use wq_tools::{published_by, render_monitor, Sample, ToolError};
//!
//! // A runtime of our own publishes itself as soon as it is built.
//! let rt = wq_core::Runtime::builder().cpus([0]).build()?;
//! let wq = rt.workqueue("docs").build()?;
//! wq.submit(|| ())?.wait().unwrap();
//!
//! // The queue shows up at the next publication, within about 100 ms.
//! let mut tries = 0;
//! let table = loop {
//!     let (info, runtimes) = published_by(std::process::id())?;
//!     let sample = Sample { runtimes: runtimes.into_iter().map(|p| p.snapshot).collect() };
//!     let table = render_monitor(info.pid, &info.name, None, &sample);
//!     tries += 1;
//!     if table.lines().any(|line| line.starts_with("docs ")) || tries == 100 {
//!         break table;
//!     }
//!     std::thread::sleep(std::time::Duration::from_millis(20));
//! };
//! assert!(table.lines().any(|line| line.starts_with("docs ")), "{table}");
//!
//! // Processes that do not exist are reported as such.
//! assert!(matches!(published_by(u32::MAX), Err(ToolError::NoSuchProcess { .. })));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cli;
pub mod procfs;
pub mod target;
pub mod view;

pub use target::{list_all, published_by, Listing, Published, ToolError};
pub use view::{render_dump, render_list, render_monitor, Sample};
