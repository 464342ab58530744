//! The end of a stress run: settle everything, then prove the counts.

use std::sync::atomic::Ordering::SeqCst;
use std::thread;
use std::time::{Duration, Instant};

use super::driver::destroy_inc;
use super::model::{Counts, Shared};

/// The outcome of a stress run.
#[derive(Debug, Default)]
pub struct Report {
    /// Accepted queueings (each owes one run unless cancelled).
    pub accepted: u64,
    /// Runs counted inside items.
    pub run: u64,
    /// Successful cancels.
    pub cancelled: u64,
    /// Refused queueings (destroyed or draining queues).
    pub refused: u64,
    /// Owed runs that never happened.
    pub lost: u64,
    /// Runs beyond those owed.
    pub duplicated: u64,
    /// Broken limits and guarantees (max_active, order, reentrancy, destroy, cancel_sync, stats).
    pub limit_violations: u64,
    /// The first violations, for the report.
    pub messages: Vec<String>,
}

impl Report {
    /// Whether the run proved every property.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.limit_violations == 0
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "stress: accepted={} run={} cancelled={} refused={} lost={} duplicated={} limit_violations={}",
            self.accepted, self.run, self.cancelled, self.refused, self.lost, self.duplicated, self.limit_violations
        )
    }
}

/// Lets everything settle, then checks the counts of every item and the pools.
pub(super) fn finish(sh: &Shared) -> Report {
    for (s, slot) in sh.slots.iter().enumerate() {
        for it in &slot.dworks {
            // Fires armed timers now, so their runs happen before the count.
            if let Err(e) = it.dwork.get().expect("set").flush() {
                sh.violation(format!("final flush of delayed {}: {e}", it.id));
            }
        }
        destroy_inc(sh, s, &slot.current());
    }
    for it in sh.all_items() {
        if let Err(e) = it.work.get().expect("set").flush() {
            sh.violation(format!("final flush of {}: {e}", it.id));
        }
    }
    let mut r = Report::default();
    let mut mismatches = Vec::new();
    let mut tally = |c: &Counts, what: String| {
        let (acc, can, runs) = (c.accepted.load(SeqCst), c.cancelled.load(SeqCst), c.runs.load(SeqCst));
        r.accepted += acc;
        r.cancelled += can;
        r.run += runs;
        let owed = acc.saturating_sub(can);
        if (runs != owed || can > acc) && mismatches.len() < 20 {
            let msg = format!("{what}: accepted {acc}, cancelled {can}, ran {runs}");
            eprintln!("stress: MISMATCH: {msg}");
            mismatches.push(msg);
        }
        r.lost += owed.saturating_sub(runs);
        r.duplicated += runs.saturating_sub(owed) + can.saturating_sub(acc);
    };
    for it in sh.all_items() {
        tally(&it.counts, format!("work item {} ({:?})", it.id, it.owner));
    }
    for it in sh.slots.iter().flat_map(|s| &s.dworks) {
        tally(&it.counts, format!("delayed work item {}", it.id));
    }
    tally(&sh.once, "one-shot closures".into());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = sh.rt.stats();
        let busy: Vec<_> = stats.pools.iter().filter(|p| p.running != 0 || p.pending != 0).collect();
        if busy.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            sh.violation(format!("pools still running after the end: {busy:?}"));
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    r.limit_violations = sh.violations.load(SeqCst);
    r.refused = sh.refused.load(SeqCst);
    r.messages = sh.messages.lock().unwrap_or_else(|e| e.into_inner()).clone();
    r.messages.extend(mismatches);
    r
}
