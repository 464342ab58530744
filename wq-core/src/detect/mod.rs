//! Learning that a worker thread went to sleep without its cooperation.
//!
//! The kernel's cmwq hooks the scheduler (`wq_worker_sleeping`); userspace
//! gets the closest equivalent from perf context-switch records
//! ([`perf`]), or, where perf is refused, by polling the thread's
//! `/proc/self/task/<tid>/stat` ([`procfs`]). Either way a [`Probe`] is made
//! on the worker thread itself and then polled, never blocking, by the
//! runtime's monitor. See `README.md` in this directory for the protocol.

use std::fmt;
use std::io;
use std::time::Instant;

#[cfg(target_os = "linux")]
mod on_demand;
#[cfg(target_os = "linux")]
mod perf;
#[cfg(target_os = "linux")]
mod procfs;

/// Which sleep detector a runtime uses to notice that a worker blocked
/// (so another worker can start), chosen with `RuntimeBuilder::detector`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Detector {
    /// Perf if the kernel allows it, else procfs polling, else explicit hooks
    /// only. With perf, a worker's event is armed only once it has been
    /// polled a few times while its pool had work pending (procfs answers
    /// until then), and closed when the runtime has been idle a while: a
    /// perf event slows every wake of the thread it watches.
    #[default]
    Auto,
    /// Context-switch records from `perf_event_open` (Linux; works
    /// unprivileged at `perf_event_paranoid <= 2`).
    Perf,
    /// Polling `/proc/self/task/<tid>/stat` (Linux).
    Procfs,
    /// No automatic detection: only `wq_core::blocking` marks a worker as sleeping.
    ExplicitOnly,
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Detector::Auto => "auto",
            Detector::Perf => "perf",
            Detector::Procfs => "procfs",
            Detector::ExplicitOnly => "explicit-only",
        })
    }
}

/// What a requested [`Detector`] resolved to, and why (for `Runtime::dump()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// Never [`Detector::Auto`].
    pub kind: Detector,
    /// One line saying why this detector is active.
    pub reason: String,
}

/// Picks the detector for a runtime by trying it on the calling thread.
///
/// `Auto` tries perf, then procfs, then settles for explicit hooks (never an
/// error). A forced `Perf` or `Procfs` that cannot work on this thread is an
/// error whose message says why.
pub(crate) fn resolve(requested: Detector) -> io::Result<Resolved> {
    match requested {
        Detector::ExplicitOnly => {
            Ok(Resolved { kind: Detector::ExplicitOnly, reason: "explicit hooks only, as requested".into() })
        }
        Detector::Perf => try_kind(Detector::Perf).map(|detail| Resolved {
            kind: Detector::Perf,
            reason: format!("perf context-switch records, as requested ({detail})"),
        }),
        Detector::Procfs => try_kind(Detector::Procfs).map(|detail| Resolved {
            kind: Detector::Procfs,
            reason: format!("polling /proc/self/task/<tid>/stat, as requested ({detail})"),
        }),
        Detector::Auto => {
            let perf_err = match try_kind(Detector::Perf) {
                Ok(detail) => {
                    return Ok(Resolved {
                        kind: Detector::Perf,
                        reason: format!(
                            "perf context-switch records, armed per worker under load; \
                             procfs polling until then ({detail})"
                        ),
                    })
                }
                Err(e) => e,
            };
            match try_kind(Detector::Procfs) {
                Ok(detail) => Ok(Resolved {
                    kind: Detector::Procfs,
                    reason: format!("polling /proc/self/task/<tid>/stat ({detail}); perf unavailable: {perf_err}"),
                }),
                Err(procfs_err) => Ok(Resolved {
                    kind: Detector::ExplicitOnly,
                    reason: format!(
                        "explicit hooks only: perf unavailable ({perf_err}); procfs unavailable ({procfs_err})"
                    ),
                }),
            }
        }
    }
}

/// Attaches and polls a throwaway probe of `kind` on the calling thread.
fn try_kind(kind: Detector) -> io::Result<String> {
    let mut probe = Probe::attach_current(kind)?;
    match probe.poll() {
        ThreadState::Unknown => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {kind} probe could not read its own thread's state"),
        )),
        _ => Ok(match kind {
            #[cfg(target_os = "linux")]
            Detector::Perf => match perf::paranoid() {
                Some(level) => format!("perf_event_paranoid is {level}"),
                None => "perf_event_paranoid unreadable".into(),
            },
            _ => "probe on the calling thread works".into(),
        }),
    }
}

/// What a probed thread is doing, as far as the newest information says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ThreadState {
    /// On a CPU, or runnable and waiting for one (preempted is not asleep).
    Running,
    /// Blocked in the kernel (sleep, I/O, lock, futex) since about `since`.
    Sleeping {
        /// When the thread blocked (perf: the switch-out time; procfs: the
        /// first poll that saw it blocked).
        since: Instant,
    },
    /// The probe cannot tell (thread gone, stopped, or unreadable records);
    /// callers should neither count it as sleeping nor as woken.
    Unknown,
}

/// One worker thread's sleep probe: made on that thread with
/// [`Probe::attach_current`], then moved to and polled by the monitor.
pub(crate) struct Probe {
    inner: Inner,
}

enum Inner {
    #[cfg(target_os = "linux")]
    Perf(perf::PerfProbe),
    #[cfg(target_os = "linux")]
    Procfs(procfs::ProcfsProbe),
    #[cfg(target_os = "linux")]
    OnDemand(on_demand::OnDemandProbe),
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe").field("kind", &self.kind()).finish()
    }
}

impl Probe {
    /// Starts watching the calling thread with detector `kind`, which must be
    /// `Perf` or `Procfs` (resolve `Auto` first; `ExplicitOnly` needs no probe).
    ///
    /// A probe describes the thread it was made on for as long as that thread
    /// lives; drop it when the thread exits.
    pub fn attach_current(kind: Detector) -> io::Result<Probe> {
        let inner = match kind {
            #[cfg(target_os = "linux")]
            Detector::Perf => Inner::Perf(perf::PerfProbe::attach_current()?),
            #[cfg(target_os = "linux")]
            Detector::Procfs => Inner::Procfs(procfs::ProcfsProbe::attach_current()?),
            #[cfg(not(target_os = "linux"))]
            Detector::Perf | Detector::Procfs => {
                return Err(io::Error::new(io::ErrorKind::Unsupported, format!("the {kind} detector needs Linux")))
            }
            Detector::Auto | Detector::ExplicitOnly => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("no probe exists for the {kind} detector (resolve Auto first; explicit-only needs none)"),
                ))
            }
        };
        Ok(Probe { inner })
    }

    /// Starts watching the calling thread for `Auto`'s perf: procfs until
    /// polls arm a perf event (`on_demand.rs`).
    pub fn attach_on_demand() -> io::Result<Probe> {
        #[cfg(target_os = "linux")]
        return Ok(Probe { inner: Inner::OnDemand(on_demand::OnDemandProbe::attach_current()?) });
        #[cfg(not(target_os = "linux"))]
        Err(io::Error::new(io::ErrorKind::Unsupported, "sleep probes need Linux"))
    }

    /// What the thread is doing now; never blocks (perf: a few loads from
    /// shared memory; procfs: one `pread` of a few microseconds; an
    /// on-demand probe's arming poll: opening and mapping a perf event).
    pub fn poll(&mut self) -> ThreadState {
        match &mut self.inner {
            #[cfg(target_os = "linux")]
            Inner::Perf(p) => p.poll(),
            #[cfg(target_os = "linux")]
            Inner::Procfs(p) => p.poll(),
            #[cfg(target_os = "linux")]
            Inner::OnDemand(p) => p.poll(),
        }
    }

    /// Closes an on-demand probe's perf event (other probes have none to
    /// close). Returns whether one was armed.
    pub fn disarm(&mut self) -> bool {
        match &mut self.inner {
            #[cfg(target_os = "linux")]
            Inner::OnDemand(p) => p.disarm(),
            #[cfg(target_os = "linux")]
            Inner::Perf(_) | Inner::Procfs(_) => false,
        }
    }

    /// The detector answering now (`Perf` or `Procfs`; an on-demand probe
    /// is `Perf` while armed).
    pub fn kind(&self) -> Detector {
        match &self.inner {
            #[cfg(target_os = "linux")]
            Inner::Perf(_) => Detector::Perf,
            #[cfg(target_os = "linux")]
            Inner::Procfs(_) => Detector::Procfs,
            #[cfg(target_os = "linux")]
            Inner::OnDemand(p) if p.is_armed() => Detector::Perf,
            #[cfg(target_os = "linux")]
            Inner::OnDemand(_) => Detector::Procfs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn probes_are_send() {
        assert_send::<Probe>();
    }

    #[test]
    fn auto_resolves_to_perf_here() {
        let resolved = resolve(Detector::Auto).unwrap();
        // This machine (and any Linux with perf_event_paranoid <= 2 and no
        // seccomp filter on perf_event_open) must get perf.
        if perf::paranoid().is_some_and(|p| p <= 2) {
            assert_eq!(resolved.kind, Detector::Perf, "{}", resolved.reason);
            assert!(resolved.reason.contains("perf_event_paranoid is"), "{}", resolved.reason);
        } else {
            assert_eq!(resolved.kind, Detector::Procfs, "{}", resolved.reason);
        }
    }

    #[test]
    fn forced_choices_resolve_or_explain() {
        assert_eq!(resolve(Detector::Procfs).unwrap().kind, Detector::Procfs);
        assert_eq!(resolve(Detector::ExplicitOnly).unwrap().kind, Detector::ExplicitOnly);
        match resolve(Detector::Perf) {
            Ok(r) => assert_eq!(r.kind, Detector::Perf),
            Err(e) => assert!(e.to_string().contains("perf_event_open"), "{e}"),
        }
    }

    #[test]
    fn no_probe_for_auto_or_explicit() {
        for kind in [Detector::Auto, Detector::ExplicitOnly] {
            let err = Probe::attach_current(kind).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains(&kind.to_string()), "{err}");
        }
    }

    #[test]
    fn probe_reports_its_kind() {
        for kind in [Detector::Perf, Detector::Procfs] {
            let mut probe = Probe::attach_current(kind).unwrap();
            assert_eq!(probe.kind(), kind);
            assert_eq!(probe.poll(), ThreadState::Running, "the calling thread is running");
        }
    }
}
