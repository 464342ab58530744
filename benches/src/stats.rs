//! Summaries over samples and rounds, and the Markdown tables `compare` prints.

use std::fmt::Write as _;

/// The `p`-th percentile (0.0..=1.0) of sorted samples by nearest rank; `None` when empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 1.0);
    // Nearest rank: the smallest sample with at least p of the samples at or below it.
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Median and range of one metric over the rounds of a scenario.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// Median over rounds (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest round.
    pub min: f64,
    /// Largest round.
    pub max: f64,
}

impl Spread {
    /// Summarises per-round values; `None` when there are none (or any is NaN).
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
        Some(Spread { median, min: v[0], max: v[v.len() - 1] })
    }

    /// `median [min–max]` with values formatted by `fmt`.
    pub fn show(&self, fmt: impl Fn(f64) -> String) -> String {
        if self.min == self.max {
            fmt(self.median)
        } else {
            format!("{} [{}–{}]", fmt(self.median), fmt(self.min), fmt(self.max))
        }
    }
}

/// Formats with a number of decimals suited to the magnitude (3 significant digits or more).
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Formats a rate with a k/M suffix (items per second).
pub fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{} M", num(v / 1e6))
    } else if v >= 1e3 {
        format!("{} k", num(v / 1e3))
    } else {
        num(v)
    }
}

/// A ratio to the reference row, `x.xx×`.
pub fn ratio(v: f64, reference: f64) -> String {
    if reference > 0.0 && v.is_finite() {
        format!("{:.2}×", v / reference)
    } else {
        "–".into()
    }
}

/// A Markdown table with a heading and notes.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Heading, printed as `### title`.
    pub title: String,
    /// Lines printed under the heading (units, what the columns mean).
    pub notes: Vec<String>,
    /// Column headers.
    pub headers: Vec<String>,
    /// Cells, one `Vec` per row, as many as the headers.
    pub rows: Vec<Vec<String>>,
    /// How many leading columns hold text, aligned left (at least the first); the rest hold
    /// numbers, aligned right.
    pub text_columns: usize,
}

impl Table {
    /// A table with these headers and no rows.
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Table {
        Table { title: title.into(), headers: headers.iter().map(|h| h.to_string()).collect(), ..Table::default() }
    }

    /// Adds a note line.
    pub fn note(&mut self, line: impl Into<String>) {
        self.notes.push(line.into());
    }

    /// Adds a row, padding or cutting it to the header count.
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Renders as Markdown with columns aligned for reading in a terminal too.
    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let mut width: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, c) in cells.iter().enumerate().take(cols) {
                let pad = width[i] - c.chars().count();
                if i < self.text_columns.max(1) {
                    let _ = write!(s, " {c}{} |", " ".repeat(pad));
                } else {
                    let _ = write!(s, " {}{c} |", " ".repeat(pad));
                }
            }
            s
        };
        let mut out = format!("### {}\n\n", self.title);
        for n in &self.notes {
            let _ = writeln!(out, "{n}");
        }
        if !self.notes.is_empty() {
            out.push('\n');
        }
        out.push_str(&line(&self.headers));
        out.push('\n');
        let mut rule = String::from("|");
        for (i, w) in width.iter().enumerate() {
            let dashes = "-".repeat((*w).max(3));
            if i < self.text_columns.max(1) {
                let _ = write!(rule, " {dashes} |");
            } else {
                let _ = write!(rule, " {}: |", &dashes[1..]);
            }
        }
        out.push_str(&rule);
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn spread_median_even_and_odd() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 4.0]).unwrap().median, 2.5);
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn table_renders_aligned_markdown() {
        let mut t = Table::new("t", &["peer", "value"]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["longer".into()]);
        let s = t.render();
        assert!(s.starts_with("### t\n\n| peer   | value |\n| ------ | ----: |\n"));
        assert!(s.contains("| a      |     1 |"));
        assert!(s.contains("| longer |       |"));
    }

    #[test]
    fn formatting() {
        assert_eq!(num(12.345), "12.3");
        assert_eq!(rate(2_500_000.0), "2.50 M");
        assert_eq!(ratio(2.0, 1.0), "2.00×");
        assert_eq!(ratio(2.0, 0.0), "–");
    }
}
