//! Timelines: an opt-in recorder of what the pools did, written as Chrome
//! trace-event JSON (opens in Perfetto and `chrome://tracing`).
//!
//! While recording, the engine logs the kernel tracepoints' events —
//! `queue_work`, `activate_work`, `execute_start`, `execute_end` — and the
//! sleeps and wake-ups concurrency management acts on. Off (the default),
//! each hook costs one relaxed load.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceKind {
    /// An item was queued (on the queueing thread's track).
    Queue,
    /// An inactive item was activated (it had waited for `max_active`).
    Activate,
    /// A worker started an item.
    Start,
    /// A worker finished an item.
    End,
    /// A worker running an item went to sleep (hook or detector).
    Sleep,
    /// It woke up.
    Wake,
}

/// One recorded event.
#[derive(Clone, Debug)]
pub struct TraceEvent {
    /// What happened.
    pub kind: TraceKind,
    /// When, from the start of the recording.
    pub at: std::time::Duration,
    /// The OS thread id of the thread it happened on.
    pub tid: i32,
    /// That thread's name, when known (worker threads).
    pub thread: Option<Arc<str>>,
    /// The workqueue concerned, when known.
    pub queue: Option<Arc<str>>,
}

/// A finished recording; see [`Runtime::stop_trace`](crate::Runtime::stop_trace).
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// The events, in the order they were recorded.
    pub events: Vec<TraceEvent>,
}

impl Trace {
    /// The recording as Chrome trace-event JSON: one track per thread, a
    /// begin/end pair per item, instant events for the rest.
    pub fn to_chrome_json(&self) -> String {
        let pid = std::process::id();
        let mut out = String::from("{\"traceEvents\":[\n");
        let mut first = true;
        let mut sep = |out: &mut String| {
            if !std::mem::take(&mut first) {
                out.push_str(",\n");
            }
        };
        let mut named = std::collections::BTreeMap::new();
        for e in &self.events {
            if let Some(t) = &e.thread {
                named.entry(e.tid).or_insert_with(|| t.clone());
            }
        }
        for (tid, name) in &named {
            sep(&mut out);
            let _ = write!(
                out,
                r#"{{"name":"thread_name","ph":"M","pid":{pid},"tid":{tid},"args":{{"name":{}}}}}"#,
                json_string(name)
            );
        }
        for e in &self.events {
            let ts = e.at.as_secs_f64() * 1e6;
            let queue = e.queue.as_deref().unwrap_or("?");
            let (ph, name) = match e.kind {
                TraceKind::Start => ("B", queue.to_owned()),
                TraceKind::End => ("E", queue.to_owned()),
                TraceKind::Queue => ("i", format!("queue_work {queue}")),
                TraceKind::Activate => ("i", format!("activate_work {queue}")),
                TraceKind::Sleep => ("i", "sleep".to_owned()),
                TraceKind::Wake => ("i", "wake".to_owned()),
            };
            sep(&mut out);
            let scope = if ph == "i" { r#","s":"t""# } else { "" };
            let _ = write!(
                out,
                r#"{{"name":{},"cat":"wq","ph":"{ph}","ts":{ts:.3},"pid":{pid},"tid":{}{scope}}}"#,
                json_string(&name),
                e.tid
            );
        }
        out.push_str("\n]}\n");
        out
    }

    /// Writes [`to_chrome_json`](Trace::to_chrome_json) to `path`.
    ///
    /// # Errors
    /// The I/O error of writing the file.
    pub fn write_chrome_json(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.to_chrome_json())
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The runtime's recorder.
#[derive(Default)]
pub(crate) struct Recorder {
    enabled: AtomicBool,
    log: Mutex<Option<(Instant, Vec<TraceEvent>)>>,
}

impl Recorder {
    pub(crate) fn on(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    pub(crate) fn start(&self) {
        *self.log.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), Vec::new()));
        self.enabled.store(true, Relaxed);
    }

    pub(crate) fn stop(&self) -> Trace {
        self.enabled.store(false, Relaxed);
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner()).take();
        Trace { events: log.map(|(_, events)| events).unwrap_or_default() }
    }

    /// Records an event (callers check [`Recorder::on`] first, so the
    /// arguments are only built while recording).
    pub(crate) fn record(&self, kind: TraceKind, tid: i32, thread: Option<&str>, queue: Option<&str>) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t0, events)) = log.as_mut() {
            events.push(TraceEvent {
                kind,
                at: t0.elapsed(),
                tid,
                thread: thread.map(Arc::from),
                queue: queue.map(Arc::from),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }
}
