//! `--max-overhead`: a budget on what the probes cost the targets, in percent of one CPU.
//!
//! Program run time is the kernel's own measure (BPF run-time statistics, enabled while the
//! budget holds their descriptor); the traps around the programs are not measured by anything,
//! so they are counted and priced at [`TRAP_COST`]. Over budget, sampling is raised first (it
//! spares the programs' work); when the traps alone are over, nothing but detaching helps.

use std::{
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use leaktrace_common::{Counter, NUM_COUNTERS};

/// What one trap into a uprobe costs the traced thread, measured on this project's machines
/// where the budget matters most, a busy Node server (the bench's service, `wrk`-saturated on
/// one CPU): 57 k requests a second untraced, 17.8 k under empty programs on malloc, calloc,
/// realloc and free, 31 traps a request (10.3 allocations and their frees): 1.25 µs a trap.
/// A tight C loop of malloc+free pairs (the bench's churn floor) pays 0.6 µs: a large process's
/// traps cost more, and the budget prices them as the dearer.
pub const TRAP_COST: Duration = Duration::from_nanos(1250);
/// The sampling interval the budget starts from, and the largest it goes to.
const FIRST_SAMPLE_BYTES: u64 = 64 << 10;
const MAX_SAMPLE_BYTES: u64 = 128 << 20;
/// Rates over less than this are noise (two ticks can fire back to back).
const MIN_WINDOW: Duration = Duration::from_millis(250);

/// What the budget decided.
#[derive(Debug, PartialEq)]
pub enum Action {
    Keep,
    /// Raise sampling to this interval; the string says why.
    Sample(u64, String),
    /// Nothing left to cut: detach; the string says why.
    Detach(String),
}

/// The budget's state: the last reading, and the sampling it has set.
pub struct Budget {
    percent: f64,
    /// Kernel BPF run-time statistics are on while this is held.
    _stats: Option<OwnedFd>,
    last_run_time: Duration,
    last_traps: u64,
    last_at: Instant,
    sample_bytes: Option<u64>,
}

impl Budget {
    /// A budget of `percent` of one CPU, starting from `sample_bytes`; `stats` keeps the kernel's
    /// run-time statistics on.
    pub fn new(percent: f64, sample_bytes: Option<u64>, stats: Option<OwnedFd>) -> Self {
        Self {
            percent,
            _stats: stats,
            last_run_time: Duration::ZERO,
            last_traps: 0,
            last_at: Instant::now(),
            sample_bytes,
        }
    }

    /// The sampling interval in force (`None`: exact).
    pub fn sample_bytes(&self) -> Option<u64> {
        self.sample_bytes
    }

    /// Judges the programs' total run time and trap count, read now.
    pub fn check(&mut self, run_time: Duration, traps: u64) -> Action {
        let window = self.last_at.elapsed();
        if window < MIN_WINDOW {
            return Action::Keep;
        }
        let traps_s = traps.saturating_sub(self.last_traps) as f64 * TRAP_COST.as_secs_f64();
        let programs_s = run_time.saturating_sub(self.last_run_time).as_secs_f64();
        (self.last_run_time, self.last_traps, self.last_at) = (run_time, traps, Instant::now());
        self.decide(
            traps_s / window.as_secs_f64() * 100.0,
            (traps_s + programs_s) / window.as_secs_f64() * 100.0,
        )
    }

    fn decide(&mut self, traps_pct: f64, total_pct: f64) -> Action {
        let budget = self.percent;
        if total_pct <= budget {
            return Action::Keep;
        }
        if traps_pct > budget {
            return Action::Detach(format!(
                "detached: the uprobe traps alone cost about {traps_pct:.1} % of a CPU, over the \
                 --max-overhead budget of {budget} %; sampling cannot reduce traps"
            ));
        }
        let next = match self.sample_bytes {
            None => FIRST_SAMPLE_BYTES,
            Some(n) if n < MAX_SAMPLE_BYTES => (n * 4).min(MAX_SAMPLE_BYTES),
            Some(_) => {
                return Action::Detach(format!(
                    "detached: the probes cost about {total_pct:.1} % of a CPU at the sparsest \
                     sampling, over the --max-overhead budget of {budget} %"
                ));
            }
        };
        self.sample_bytes = Some(next);
        Action::Sample(
            next,
            format!(
                "the probes cost about {total_pct:.1} % of a CPU, over the --max-overhead budget \
                 of {budget} %: sampling raised to one record per {}",
                crate::report::bytes(next as i64)
            ),
        )
    }
}

/// Uprobe hits counted by a target's counters: an allocation call traps at entry and return,
/// a free once.
pub fn traps(counters: &[u64; NUM_COUNTERS]) -> u64 {
    let calls = counters[Counter::AllocCalls as usize]
        + counters[Counter::FailedAllocs as usize]
        + counters[Counter::NestedCalls as usize];
    2 * calls + counters[Counter::FreeCalls as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_sampling_then_detaches() {
        let mut budget = Budget::new(5.0, None, None);
        assert_eq!(budget.decide(1.0, 4.0), Action::Keep);
        assert!(matches!(budget.decide(1.0, 9.0), Action::Sample(65536, _)));
        assert!(matches!(
            budget.decide(1.0, 9.0),
            Action::Sample(262_144, _)
        ));
        budget.sample_bytes = Some(MAX_SAMPLE_BYTES);
        assert!(matches!(budget.decide(1.0, 9.0), Action::Detach(_)));
    }

    #[test]
    fn traps_over_budget_detach_at_once() {
        let mut budget = Budget::new(5.0, None, None);
        let Action::Detach(why) = budget.decide(6.0, 8.0) else {
            panic!("sampling cannot cut traps");
        };
        assert!(why.contains("traps alone"));
    }

    #[test]
    fn counts_two_traps_per_call_and_one_per_free() {
        let mut c = [0u64; NUM_COUNTERS];
        c[Counter::AllocCalls as usize] = 10;
        c[Counter::FailedAllocs as usize] = 1;
        c[Counter::NestedCalls as usize] = 2;
        c[Counter::FreeCalls as usize] = 7;
        assert_eq!(traps(&c), 2 * 13 + 7);
    }
}
