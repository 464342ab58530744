//! Sleep detection by polling `/proc/self/task/<tid>/stat`, for where perf
//! is refused. The file stays open and each poll re-reads it from offset 0
//! (one `pread`, a few microseconds), as libdispatch does on Linux.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use super::ThreadState;

/// Enough for `pid (comm) S`: the pid has at most 10 digits and the comm at
/// most 64 bytes, and every field after the state is a number.
const READ_LEN: usize = 128;

/// A procfs probe on one thread.
pub(crate) struct ProcfsProbe {
    file: File,
    /// When a poll first saw the current sleep; `None` while not sleeping.
    sleeping_since: Option<Instant>,
}

impl ProcfsProbe {
    /// Opens the calling thread's stat file and checks that it parses.
    pub(crate) fn attach_current() -> io::Result<ProcfsProbe> {
        let path = format!("/proc/self/task/{}/stat", crate::sys::gettid());
        let file = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("cannot open {path}: {e}")))?;
        let probe = ProcfsProbe { file, sleeping_since: None };
        probe.read_state().map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        Ok(probe)
    }

    /// The thread's scheduler state now; a sleep's `since` is the first poll
    /// that saw it, so it is late by up to one poll interval.
    pub(crate) fn poll(&mut self) -> ThreadState {
        match self.read_state() {
            Ok(b'S') | Ok(b'D') => {
                ThreadState::Sleeping { since: *self.sleeping_since.get_or_insert_with(Instant::now) }
            }
            Ok(b'R') => {
                self.sleeping_since = None;
                ThreadState::Running
            }
            // Stopped, traced, zombie (the thread exited) or unreadable: no opinion.
            _ => {
                self.sleeping_since = None;
                ThreadState::Unknown
            }
        }
    }

    /// Drops the remembered start of a sleep: polls stopped for a while
    /// (another probe was authoritative), so it may belong to an old sleep.
    pub(crate) fn forget_sleep(&mut self) {
        self.sleeping_since = None;
    }

    fn read_state(&self) -> io::Result<u8> {
        let mut buf = [0u8; READ_LEN];
        let n = self.file.read_at(&mut buf, 0)?;
        parse_state(&buf[..n])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no state field after the command name"))
    }
}

/// The state letter of a `stat` line: the first non-blank byte after the
/// last `)`, since the command name in parentheses may itself contain `)`,
/// spaces or `(` while no later field can.
pub(crate) fn parse_state(line: &[u8]) -> Option<u8> {
    let close = line.iter().rposition(|&b| b == b')')?;
    line[close + 1..].iter().copied().find(|b| !b.is_ascii_whitespace()).filter(u8::is_ascii_alphabetic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    #[test]
    fn parses_odd_command_names() {
        assert_eq!(parse_state(b"1234 (a) b (c) S 1 2 3 4"), Some(b'S'));
        assert_eq!(parse_state(b"7 (worker) R 1 7 7 0 -1"), Some(b'R'));
        assert_eq!(parse_state(b"7 ()) D 1"), Some(b'D'));
        assert_eq!(parse_state(b"7 (x\ny) Z 0"), Some(b'Z'));
        assert_eq!(parse_state(b"7 (no close paren S 1"), None);
        assert_eq!(parse_state(b"7 (truncated)"), None);
        assert_eq!(parse_state(b"7 (x) 5 1"), None, "a number is not a state");
        assert_eq!(parse_state(b""), None);
    }

    #[test]
    fn reads_own_thread_as_running() {
        let mut probe = ProcfsProbe::attach_current().unwrap();
        assert_eq!(probe.poll(), ThreadState::Running);
    }

    #[test]
    fn sleep_is_seen_then_wake() {
        let done = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let released = Arc::new(AtomicBool::new(false));
        let sleeper = {
            let (done, released) = (done.clone(), released.clone());
            std::thread::spawn(move || {
                tx.send(ProcfsProbe::attach_current().unwrap()).unwrap();
                let spin = |d: Duration| {
                    let end = Instant::now() + d;
                    while Instant::now() < end {
                        std::hint::spin_loop();
                    }
                };
                spin(Duration::from_millis(60));
                let start = Instant::now();
                std::thread::sleep(Duration::from_millis(200));
                let end = Instant::now();
                spin(Duration::from_millis(60));
                done.store(true, Ordering::Release);
                // Stay runnable until the poller has stopped, so thread exit
                // is never observed.
                while !released.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                (start, end)
            })
        };
        let mut probe = rx.recv().unwrap();
        let mut seen: Vec<(ThreadState, Instant)> = Vec::new();
        while !done.load(Ordering::Acquire) {
            let state = probe.poll();
            if seen.last().map(|(s, _)| *s) != Some(state) {
                seen.push((state, Instant::now()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        released.store(true, Ordering::Release);
        let (start, end) = sleeper.join().unwrap();
        let kinds: Vec<&str> = seen
            .iter()
            .map(|(s, _)| match s {
                ThreadState::Running => "R",
                ThreadState::Sleeping { .. } => "S",
                ThreadState::Unknown => "?",
            })
            .collect();
        assert_eq!(kinds, ["R", "S", "R"], "{seen:?}");
        let ThreadState::Sleeping { since } = seen[1].0 else { unreachable!() };
        assert!(start <= since && since <= end && seen[2].1 >= since, "{seen:?}");
    }
}
