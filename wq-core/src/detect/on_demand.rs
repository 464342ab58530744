//! `Detector::Auto`'s probe: procfs while a worker is seldom watched, perf
//! once watching it by procfs would cost more.
//!
//! A perf context-switch event is not free for the thread it watches: each
//! of its switches writes a record, and on this VM a worker with an event
//! took 2–3 µs longer from being switched in to running its item (a traced
//! wake of an idle pool: BENCHMARKS.md, wake latency). It also turns on the
//! kernel's switch hook for every thread while any such event exists. Yet
//! a worker is polled only while its pool has work pending, and an idle
//! worker woken for one item is usually not polled at all.
//!
//! So a probe starts as an open stat file, costing nothing until polled.
//! Each procfs poll costs the monitor a `pread`; after [`ARM_AFTER_POLLS`]
//! of them the probe arms a perf event on the worker (opened by the
//! monitor with the worker's tid), read from then on by a few loads. The
//! monitor disarms every probe once the runtime has had no pending work
//! for a while (`monitor.rs`, `DISARM_AFTER`), which closes the events.
//!
//! An event armed from another thread has no record until the worker next
//! switches, and cannot say what the worker did before: until then the
//! stat file answers.

use std::io;

use super::perf::PerfProbe;
use super::procfs::ProcfsProbe;
use super::ThreadState;
use crate::pool::emit_quietly;

/// How many procfs polls of one worker arm its perf event: a few ticks of
/// one busy period (~0.3–0.8 ms at the monitor's fine tick), so a worker
/// busy for longer than that is watched by perf.
pub(crate) const ARM_AFTER_POLLS: u32 = 8;

/// Procfs now, perf once armed; see the module docs.
pub(crate) struct OnDemandProbe {
    tid: i32,
    procfs: ProcfsProbe,
    perf: Option<PerfProbe>,
    /// Procfs polls since the probe was made or last disarmed.
    polls: u32,
    /// Arming failed once (fd or locked-memory limits, a thread that
    /// exited): the stat file stays the answer for this thread.
    refused: bool,
}

impl OnDemandProbe {
    /// Opens the calling thread's stat file; perf is armed later.
    pub(crate) fn attach_current() -> io::Result<OnDemandProbe> {
        Ok(OnDemandProbe {
            tid: crate::sys::gettid(),
            procfs: ProcfsProbe::attach_current()?,
            perf: None,
            polls: 0,
            refused: false,
        })
    }

    /// The thread's state; may arm the perf event (two system calls and a
    /// mapping, once per busy period).
    pub(crate) fn poll(&mut self) -> ThreadState {
        if let Some(perf) = &mut self.perf {
            if let Some(state) = perf.poll_recorded() {
                return state;
            }
            return self.procfs.poll();
        }
        let state = self.procfs.poll();
        self.polls = self.polls.saturating_add(1);
        // Only a thread the stat file just saw alive: its tid is still its own.
        if self.polls >= ARM_AFTER_POLLS && !self.refused && state != ThreadState::Unknown {
            self.arm();
        }
        state
    }

    fn arm(&mut self) {
        match PerfProbe::attach(self.tid) {
            Ok(perf) => self.perf = Some(perf),
            Err(err) => {
                self.refused = true;
                emit_quietly(
                    || tracing::debug!(target: "wq", tid = self.tid, %err, "could not arm a perf probe; procfs keeps watching"),
                );
            }
        }
    }

    /// Closes the perf event, if armed; polling starts over on procfs.
    /// Returns whether one was armed.
    pub(crate) fn disarm(&mut self) -> bool {
        self.polls = 0;
        let armed = self.perf.take().is_some();
        if armed {
            self.procfs.forget_sleep();
        }
        armed
    }

    /// Whether the perf event is armed.
    pub(crate) fn is_armed(&self) -> bool {
        self.perf.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    fn perf_allowed() -> bool {
        super::super::perf::paranoid().is_some_and(|p| p <= 2)
    }

    /// Polls until `want` says yes, at most 5 s (1 ms apart).
    fn poll_until(probe: &mut OnDemandProbe, want: impl Fn(ThreadState) -> bool) -> ThreadState {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = probe.poll();
            if want(state) || Instant::now() >= deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_sleeper_armed_mid_sleep_stays_asleep_until_it_wakes() {
        let (probe_tx, probe_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (woke_tx, woke_rx) = mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            probe_tx.send(OnDemandProbe::attach_current().unwrap()).unwrap();
            go_rx.recv().unwrap();
            woke_tx.send(Instant::now()).unwrap();
            // Asleep again, now after a switch the armed event records.
            go_rx.recv().unwrap();
        });
        let mut probe = probe_rx.recv().unwrap();
        let asleep = |s| matches!(s, ThreadState::Sleeping { .. });
        assert!(asleep(poll_until(&mut probe, asleep)), "procfs sees the first sleep");
        for _ in 0..ARM_AFTER_POLLS {
            assert!(asleep(probe.poll()), "arming must not turn a sleeper into a runner");
        }
        assert_eq!(probe.is_armed(), perf_allowed());
        go_tx.send(()).unwrap();
        let woke = woke_rx.recv().unwrap();
        let again = poll_until(&mut probe, |s| matches!(s, ThreadState::Sleeping { since } if since >= woke));
        assert!(matches!(again, ThreadState::Sleeping { since } if since >= woke), "{again:?}");
        go_tx.send(()).unwrap();
        sleeper.join().unwrap();
    }

    #[test]
    fn disarming_closes_the_event_and_starts_over_on_procfs() {
        if !perf_allowed() {
            return;
        }
        let mut probe = OnDemandProbe::attach_current().unwrap();
        for _ in 0..ARM_AFTER_POLLS - 1 {
            assert_eq!(probe.poll(), ThreadState::Running);
        }
        assert!(!probe.is_armed(), "armed before {ARM_AFTER_POLLS} polls");
        assert_eq!(probe.poll(), ThreadState::Running);
        assert!(probe.is_armed());
        assert!(probe.disarm());
        assert!(!probe.is_armed() && !probe.disarm());
        probe.poll();
        assert!(!probe.is_armed(), "the count starts over after a disarm");
    }
}
