//! The command line of the stress test and its random numbers.

use std::time::Duration;

/// What one stress run does.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long producers run.
    pub duration: Duration,
    /// Seed of the operation mix (interleavings still vary from run to run).
    pub seed: u64,
    /// Producer threads.
    pub producers: usize,
    /// Queue slots; each holds one live workqueue, re-created after destroy.
    pub queues: usize,
    /// Reusable work items owned by each queue slot.
    pub works_per_queue: usize,
    /// Delayed work items owned by each queue slot.
    pub dworks_per_queue: usize,
    /// Work items queued on any queue (tests cross-queue non-reentrancy).
    pub roaming: usize,
    /// Per cent of worker creations that fail (fault injection).
    pub spawn_fail_pct: u64,
    /// Give up (exit 3) if no item ran for this long.
    pub hang_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            duration: Duration::from_secs(10),
            seed: 1,
            producers: 3,
            queues: 8,
            works_per_queue: 6,
            dworks_per_queue: 3,
            roaming: 6,
            spawn_fail_pct: 2,
            hang_timeout: Duration::from_secs(60),
        }
    }
}

/// The command line, for error messages.
pub(super) const USAGE: &str = "usage: stress --seconds N [--seed S] [--producers P] [--queues Q] [--spawn-fail-pct F]";

impl Config {
    /// Parses the command line (without the program name).
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Config, String> {
        let mut cfg = Config::default();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v:?}: {e}"));
            match flag.as_str() {
                "--seconds" => {
                    let s: f64 = value.parse().map_err(|e| format!("--seconds {value:?}: {e}"))?;
                    if !(s.is_finite() && s > 0.0 && s < 1e7) {
                        return Err(format!("--seconds {value}: must be a positive number of seconds"));
                    }
                    cfg.duration = Duration::from_secs_f64(s);
                }
                "--seed" => cfg.seed = num(&value)?,
                "--producers" => cfg.producers = (num(&value)? as usize).clamp(1, 64),
                "--queues" => cfg.queues = (num(&value)? as usize).clamp(1, 64),
                "--spawn-fail-pct" => cfg.spawn_fail_pct = num(&value)?.min(50),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        Ok(cfg)
    }
}

/// A small deterministic generator (SplitMix64): no dependency, and a
/// seed reproduces the operation mix.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `pct` per cent.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}
