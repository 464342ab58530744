//! Records of finished entries: the accounting a worker applies under the
//! pool lock (`Pool::complete`), merged per pwq and colour.

use std::time::Duration;

use super::{Outcome, PwqRef};

/// The accounting of finished (or discarded) entries of one pwq and flush
/// colour, applied under the lock of their pool.
///
/// A worker running a stash of tiny items merges the record of each item
/// into the one before when both name the same pwq and colour
/// ([`Done::push_into`]), so a stash of one queue's items is applied as one
/// record: one `nr_active` release, one colour count, one activation pass,
/// instead of one of each per item.
pub(crate) struct Done {
    pub(crate) link: PwqRef,
    pub(crate) color: u64,
    /// Entries whose user code ran, the panicked ones included.
    pub(super) ran: u32,
    /// Of those, the entries whose user code panicked.
    pub(super) panicked: u32,
    /// Entries discarded without running (cancelled or stale).
    skipped: u32,
    pub(crate) cpu_time: Duration,
}

impl Done {
    /// The record of one entry.
    pub(crate) fn new(link: PwqRef, color: u64, outcome: Outcome, cpu_time: Duration) -> Done {
        let (ran, panicked, skipped) = match outcome {
            Outcome::Ran => (1, 0, 0),
            Outcome::Panicked => (1, 1, 0),
            Outcome::Skipped => (0, 0, 1),
        };
        Done { link, color, ran, panicked, skipped, cpu_time }
    }

    /// How many of its entries ran their user code (panicked or not).
    pub(crate) fn ran(&self) -> u64 {
        u64::from(self.ran)
    }

    /// How many entries the record accounts for.
    pub(crate) fn entries(&self) -> usize {
        self.ran as usize + self.skipped as usize
    }

    /// Appends the record to `records`, merged into the last one if that
    /// names the same pwq and colour.
    pub(crate) fn push_into(self, records: &mut Vec<Done>) {
        match records.last_mut() {
            Some(last) if last.link.same(self.link) && last.color == self.color => {
                if let Err(me) = last.absorb(self) {
                    records.push(me);
                }
            }
            _ => records.push(self),
        }
    }

    /// Adds `other`'s counts to this record, or gives it back if a count
    /// would overflow.
    fn absorb(&mut self, other: Done) -> Result<(), Done> {
        let (Some(ran), Some(panicked), Some(skipped)) = (
            self.ran.checked_add(other.ran),
            self.panicked.checked_add(other.panicked),
            self.skipped.checked_add(other.skipped),
        ) else {
            return Err(other);
        };
        (self.ran, self.panicked, self.skipped) = (ran, panicked, skipped);
        self.cpu_time += other.cpu_time;
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::Runtime;

    #[test]
    fn records_merge_only_within_one_pwq_and_colour() {
        let rt = Runtime::builder().cpus([0]).publish(false).build().unwrap();
        let (a, b) = (rt.workqueue("a").build().unwrap(), rt.workqueue("b").build().unwrap());
        let (sa, sb) = (a.shared.set(), b.shared.set());
        let (la, lb) = (PwqRef::new(sa.links[0].link()), PwqRef::new(sb.links[0].link()));
        let ms = Duration::from_millis;
        let mut records = Vec::new();
        Done::new(la, 1, Outcome::Ran, ms(1)).push_into(&mut records);
        Done::new(la, 1, Outcome::Panicked, ms(2)).push_into(&mut records);
        Done::new(la, 1, Outcome::Skipped, ms(0)).push_into(&mut records);
        Done::new(la, 2, Outcome::Ran, ms(4)).push_into(&mut records);
        Done::new(lb, 2, Outcome::Ran, ms(8)).push_into(&mut records);
        Done::new(la, 2, Outcome::Ran, ms(16)).push_into(&mut records);
        let got: Vec<_> = records.iter().map(|d| (d.color, d.ran, d.panicked, d.skipped, d.cpu_time)).collect();
        assert_eq!(got, [(1, 2, 1, 1, ms(3)), (2, 1, 0, 0, ms(4)), (2, 1, 0, 0, ms(8)), (2, 1, 0, 0, ms(16))]);
        assert_eq!(records.iter().map(Done::entries).sum::<usize>(), 6);
        assert!(records[1].link.same(la) && records[2].link.same(lb) && !la.same(lb));
    }

    #[test]
    fn a_record_that_would_overflow_starts_a_new_one() {
        let rt = Runtime::builder().cpus([0]).publish(false).build().unwrap();
        let a = rt.workqueue("a").build().unwrap();
        let set = a.shared.set();
        let la = PwqRef::new(set.links[0].link());
        let mut full = Done::new(la, 1, Outcome::Ran, Duration::ZERO);
        full.ran = u32::MAX;
        let mut records = vec![full];
        Done::new(la, 1, Outcome::Ran, Duration::ZERO).push_into(&mut records);
        assert_eq!(records.len(), 2);
        assert_eq!((records[0].ran, records[1].ran), (u32::MAX, 1));
    }
}
