//! The issues' targets, checked against one `compare` run's medians.
//!
//! `compare` ends with a table of these checks, so a run says by itself which targets it met,
//! instead of a reader working them out from the tables (and each session's notes repeating
//! the arithmetic). A check whose rows were left out (`--peers`, or a scenario not run) is not
//! printed: only what this run measured is judged.
//!
//! The targets are the issues' "What it must show" (issue 3: the harness and wq-core; issue 4:
//! sleep detection; issue 6: wq-tokio-compat). Each names the rows it reads by their table
//! labels, kept here as constants; a test checks that the registry still has every one of them.

use crate::stats::{num, rate, Table};

/// Row labels the checks read.
pub mod rows {
    /// `submit` on a bound queue (latency, throughput).
    pub const SUBMIT_BOUND: &str = "wq-core submit (bound)";
    /// `submit` on an unbound queue (throughput).
    pub const SUBMIT_UNBOUND: &str = "wq-core submit (unbound)";
    /// `queue` of prepared Works (throughput).
    pub const QUEUE_WORK: &str = "wq-core queue(Work) (bound)";
    /// tokio's own `spawn_blocking` (latency, throughput, mixed).
    pub const TOKIO: &str = "tokio spawn_blocking";
    /// wq-tokio-compat's `spawn_blocking` (latency, throughput, mixed with plain sleeps).
    pub const SPAWN_BLOCKING: &str = "wq-tokio-compat spawn_blocking";
    /// rayon (throughput).
    pub const RAYON: &str = "rayon_core spawn";
    /// The park/unpark round trip floor (latency).
    pub const ROUND_TRIP: &str = "floor: park/unpark round trip";
    /// `submit` on an unbound queue, plain sleeps seen by the detector (mixed).
    pub const MIXED_UNBOUND: &str = "wq-core submit (unbound), detector=auto";
    /// The seed timeline's wq row.
    pub const TIMELINE: &str = "wq-core submit (bound), cpus([0])";
    /// The detect scenario's rows.
    pub const DETECT_PERF: &str = "wq-core detector=perf, cpus([0])";
    /// The procfs detector.
    pub const DETECT_PROCFS: &str = "wq-core detector=procfs, cpus([0])";
    /// The default detector.
    pub const DETECT_AUTO: &str = "wq-core detector=auto, cpus([0])";
}

/// One target, judged on this run.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// The issue that sets it.
    pub issue: u32,
    /// What must hold, in the issue's words.
    pub target: String,
    /// What this run measured.
    pub value: String,
    /// Whether it held.
    pub met: bool,
}

/// The checks of one run, in the order the scenarios ran.
#[derive(Debug, Default)]
pub struct Checks(Vec<Check>);

impl Checks {
    /// No checks yet.
    pub fn new() -> Checks {
        Checks::default()
    }

    /// The checks so far.
    pub fn all(&self) -> &[Check] {
        &self.0
    }

    fn push(&mut self, issue: u32, target: impl Into<String>, value: String, met: bool) {
        self.0.push(Check { issue, target: target.into(), value, met });
    }

    /// Wake latency p50s (µs): a bound queue's within 1.5× the round trip and below tokio's
    /// (issue 3); `spawn_blocking`'s below tokio's (issue 6).
    pub fn wake_latency(
        &mut self,
        bound: Option<f64>,
        spawn_blocking: Option<f64>,
        tokio: Option<f64>,
        floor: Option<f64>,
    ) {
        if let (Some(b), Some(f)) = (bound, floor) {
            let value = format!("{} µs, {:.2}× the {} µs round trip", num(b), b / f, num(f));
            self.push(3, "wake p50, bound queue: ≤ 1.5× the park/unpark round trip", value, b <= 1.5 * f);
        }
        if let (Some(b), Some(t)) = (bound, tokio) {
            let value = format!("{} against {} µs", num(b), num(t));
            self.push(3, "wake p50, bound queue: below tokio spawn_blocking's", value, b < t);
        }
        if let (Some(s), Some(t)) = (spawn_blocking, tokio) {
            let value = format!("{} against {} µs", num(s), num(t));
            self.push(6, "wake p50, wq-tokio-compat spawn_blocking: below tokio's", value, s < t);
        }
    }

    /// Empty items/s from `submitters` threads: `submit` at least 5 M/s and above rayon, `queue`
    /// of Works at least 10 M/s (issue 3); `spawn_blocking` at least 20× tokio's (issue 6).
    pub fn throughput(&mut self, submitters: usize, t: &Throughput) {
        let from = if submitters == 1 { "1 submitter".to_owned() } else { format!("{submitters} submitters") };
        for (queue, v) in [("bound", t.submit_bound), ("unbound", t.submit_unbound)] {
            let Some(v) = v else { continue };
            let target = format!("`submit`, {queue} queue, {from}: ≥ 5 M/s and above rayon");
            let (value, above) = match t.rayon {
                Some(r) => (format!("{} against rayon's {}", rate(v), rate(r)), v > r),
                None => (rate(v), true),
            };
            self.push(3, target, value, v >= 5e6 && above);
        }
        if let Some(v) = t.queue_work {
            self.push(3, format!("`queue` of Works, bound queue, {from}: ≥ 10 M/s"), rate(v), v >= 10e6);
        }
        if let (Some(s), Some(k)) = (t.spawn_blocking, t.tokio) {
            let value = format!("{:.0}× ({} against {})", s / k, rate(s), rate(k));
            self.push(6, format!("spawn_blocking, {from}: ≥ 20× tokio's"), value, s >= 20.0 * k);
        }
    }

    /// The mixed workload with plain sleeps: within 1.10× ideal with at most 24 threads (issue
    /// 4 for the detector's `submit` row, issue 6 for `spawn_blocking`).
    pub fn mixed(&mut self, issue: u32, row: &str, times_ideal: Option<f64>, threads: Option<f64>) {
        let (Some(x), Some(n)) = (times_ideal, threads) else { return };
        let value = format!("{x:.3}× ideal, {} threads", num(n));
        let target = format!("mixed, plain sleeps, {row}: ≤ 1.10× ideal with ≤ 24 threads");
        self.push(issue, target, value, x <= 1.10 && n <= 24.0);
    }

    /// The seed timeline's finish times (ms): about 40 / 40 / 50, read as within 10% of each.
    pub fn timeline(&mut self, finish_ms: Option<[f64; 3]>) {
        let Some(f) = finish_ms else { return };
        let met = f.iter().zip([40.0, 40.0, 50.0]).all(|(v, want)| (v - want).abs() <= 0.1 * want);
        let value = format!("{:.1} / {:.1} / {:.1} ms", f[0], f[1], f[2]);
        self.push(3, "seed timeline w0 / w1 / w2: about 40 / 40 / 50 ms (within 10%)", value, met);
    }

    /// Sleep detection (issue 4): perf p50 < 200 µs and p99 < 1 ms; procfs p50 < 2 ms; each
    /// detector's throughput at least 0.95× explicit-only's.
    pub fn detect(&mut self, d: &Detect) {
        if let Some((p50, p99)) = d.perf {
            let value = format!("{} / {} µs", num(p50), num(p99));
            self.push(4, "detection, perf: p50 < 200 µs, p99 < 1 ms", value, p50 < 200.0 && p99 < 1000.0);
        }
        if let Some(p50) = d.procfs {
            self.push(4, "detection, procfs: p50 < 2 ms", format!("{} µs", num(p50)), p50 < 2000.0);
        }
        for (name, ratio) in &d.throughput_ratios {
            let target = format!("detection, {name}: throughput ≥ 0.95× explicit-only's");
            self.push(4, target, format!("{ratio:.2}×"), *ratio >= 0.95);
        }
    }

    /// The checks as a table, with a count of those met in its note.
    pub fn table(&self) -> Table {
        let mut t = Table::new("Targets in this run", &["issue", "target", "this run (medians)", "met"]);
        t.text_columns = 4;
        let met = self.0.iter().filter(|c| c.met).count();
        t.note(format!(
            "The issues' targets, judged on this run's medians: {met} of {} met. Rows left out of \
             the run (`--peers`, or a scenario not run) are not judged.",
            self.0.len()
        ));
        for c in &self.0 {
            t.row(vec![
                format!("#{}", c.issue),
                c.target.clone(),
                c.value.clone(),
                if c.met { "yes" } else { "no" }.into(),
            ]);
        }
        t
    }
}

/// The throughput medians (items/s) one submitter count's checks read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Throughput {
    /// `submit` on a bound queue.
    pub submit_bound: Option<f64>,
    /// `submit` on an unbound queue.
    pub submit_unbound: Option<f64>,
    /// `queue` of prepared Works.
    pub queue_work: Option<f64>,
    /// wq-tokio-compat's `spawn_blocking`.
    pub spawn_blocking: Option<f64>,
    /// tokio's `spawn_blocking`.
    pub tokio: Option<f64>,
    /// `rayon_core::spawn`.
    pub rayon: Option<f64>,
}

/// The detect scenario's medians the checks read.
#[derive(Clone, Debug, Default)]
pub struct Detect {
    /// The perf detector's latency p50 and p99 (µs).
    pub perf: Option<(f64, f64)>,
    /// The procfs detector's latency p50 (µs).
    pub procfs: Option<f64>,
    /// Each detector row's throughput against explicit-only's.
    pub throughput_ratios: Vec<(String, f64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{registry, Scenario};

    #[test]
    fn every_row_a_check_reads_is_in_the_registry() {
        let specs = registry();
        let has = |name: &str, s: Scenario| specs.iter().any(|p| p.name == name && p.runs(s));
        for name in
            [rows::SUBMIT_BOUND, rows::SUBMIT_UNBOUND, rows::QUEUE_WORK, rows::TOKIO, rows::SPAWN_BLOCKING, rows::RAYON]
        {
            assert!(has(name, Scenario::Throughput), "{name} runs no throughput");
        }
        for name in [rows::SUBMIT_BOUND, rows::TOKIO, rows::SPAWN_BLOCKING] {
            assert!(has(name, Scenario::Latency), "{name} runs no latency");
        }
        for name in [rows::MIXED_UNBOUND, rows::SPAWN_BLOCKING] {
            assert!(has(name, Scenario::Mixed), "{name} runs no mixed");
        }
        assert!(has(rows::TIMELINE, Scenario::Timeline));
        for name in [rows::DETECT_PERF, rows::DETECT_PROCFS, rows::DETECT_AUTO] {
            assert!(has(name, Scenario::Detect), "{name} runs no detect");
        }
    }

    #[test]
    fn checks_judge_each_bound_of_each_target() {
        let mut c = Checks::new();
        c.wake_latency(Some(7.5), Some(9.0), Some(9.0), Some(5.0));
        let met: Vec<bool> = c.all().iter().map(|c| c.met).collect();
        assert_eq!(met, [true, true, false], "1.5× is within; equal to tokio is not below");

        let mut c = Checks::new();
        let t = Throughput {
            submit_bound: Some(5.0e6),
            submit_unbound: Some(6.0e6),
            queue_work: Some(9.99e6),
            spawn_blocking: Some(2.0e6),
            tokio: Some(0.1e6),
            rayon: Some(5.5e6),
        };
        c.throughput(1, &t);
        let met: Vec<bool> = c.all().iter().map(|c| c.met).collect();
        assert_eq!(met, [false, true, false, true], "below rayon; above both; under 10 M; exactly 20×");

        let mut c = Checks::new();
        c.mixed(6, "x", Some(1.10), Some(24.0));
        c.mixed(6, "y", Some(1.101), Some(20.0));
        c.mixed(6, "z", Some(1.05), Some(25.0));
        c.mixed(6, "left out", None, Some(20.0));
        let met: Vec<bool> = c.all().iter().map(|c| c.met).collect();
        assert_eq!(met, [true, false, false]);

        let mut c = Checks::new();
        c.timeline(Some([40.3, 40.4, 52.1]));
        c.timeline(Some([40.2, 70.4, 100.6]));
        let met: Vec<bool> = c.all().iter().map(|c| c.met).collect();
        assert_eq!(met, [true, false], "a one-thread pool's 40 / 70 / 100 fails");

        let mut c = Checks::new();
        let d = Detect {
            perf: Some((199.0, 1000.0)),
            procfs: Some(150.0),
            throughput_ratios: vec![("auto".into(), 0.95), ("perf".into(), 0.94)],
        };
        c.detect(&d);
        let met: Vec<bool> = c.all().iter().map(|c| c.met).collect();
        assert_eq!(met, [false, true, true, false], "p99 must be under 1 ms; 0.95× is enough");
    }

    #[test]
    fn the_table_counts_what_was_met() {
        let mut c = Checks::new();
        c.mixed(6, "a", Some(1.2), Some(10.0));
        c.timeline(Some([40.0, 40.0, 50.0]));
        let text = c.table().render();
        assert!(text.contains("1 of 2 met"), "{text}");
        assert!(text.contains("| #6 ") && text.contains("| #3 "), "{text}");
    }
}
