//! What watching costs each target, charged to the same budgets as its exact windows: with
//! `--max-overhead 3` all the agent makes a target's threads run over time stays within 3 % of
//! its CPU, not 3 % for its windows on top of what the watch takes. Measured, not estimated: the
//! page-fault programs' run time (the kernel's BPF statistics, spent in the targets' own
//! threads), shared by the faults each target had, and charged to each target and the node; and
//! the agent's own CPU time (sampling, naming, the residency pass, serving: its work for all of
//! them), shared equally and charged to the node, whose budget bounds the agent's process.
//!
//! Looking for new processes and attaching to them are left out: the scan of `/proc` is the
//! node's cost, the same with one target or a hundred, and attaching is a one-time cost per
//! process (its symbols, unwind tables and first naming, a few CPU-seconds for Node) that a
//! long-run average does not see and which, charged to an empty bucket, would hold back a new
//! target's first window for minutes. Opening a window is charged to the node apart, to the
//! target it was opened for (`TargetTier::charge_agent`).

use std::{collections::HashMap, time::Duration};

use crate::process::stat::process_cpu_time;

pub(super) struct WatchCost {
    /// The watch's programs' run time at the last charge.
    run_time: Duration,
    /// The agent's CPU time at the last charge.
    cpu: Duration,
    /// CPU time spent on work left out since the last charge.
    left_out: Duration,
    /// Each target's page faults at the last charge.
    faults: HashMap<u32, u64>,
}

impl WatchCost {
    /// Starts counting now, from the programs' run time so far.
    pub fn new(run_time: Duration) -> Self {
        Self {
            run_time,
            cpu: process_cpu_time(),
            left_out: Duration::ZERO,
            faults: HashMap::new(),
        }
    }

    /// Leaves out CPU time the agent spent scanning for processes or attaching.
    pub fn exclude(&mut self, cpu: Duration) {
        self.left_out += cpu;
    }

    /// The cost of each watched target since the last call, in CPU seconds of the programs and
    /// of the agent, given the programs' run time now and each watched target's page faults so
    /// far.
    pub fn since_last(
        &mut self,
        run_time: Duration,
        faults: &HashMap<u32, u64>,
    ) -> HashMap<u32, (f64, f64)> {
        let programs = run_time.saturating_sub(self.run_time).as_secs_f64();
        self.run_time = run_time;
        let cpu = process_cpu_time();
        let agent = cpu
            .saturating_sub(self.cpu)
            .saturating_sub(std::mem::take(&mut self.left_out))
            .as_secs_f64();
        self.cpu = cpu;
        let new: HashMap<u32, u64> = faults
            .iter()
            .map(|(&pid, &n)| {
                let before = self.faults.get(&pid).copied().unwrap_or(0);
                (pid, n.saturating_sub(before))
            })
            .collect();
        self.faults.clone_from(faults);
        share(programs, agent, &new)
    }
}

/// `programs` seconds shared by the targets' new faults (equally when none had any), and
/// `agent` seconds shared equally.
fn share(programs: f64, agent: f64, new_faults: &HashMap<u32, u64>) -> HashMap<u32, (f64, f64)> {
    let targets = new_faults.len() as f64;
    let all: u64 = new_faults.values().sum();
    new_faults
        .iter()
        .map(|(&pid, &n)| {
            let of_programs = if all == 0 {
                programs / targets
            } else {
                programs * n as f64 / all as f64
            };
            (pid, (of_programs, agent / targets))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_go_by_faults_and_the_agent_equally() {
        let shares = share(1.0, 0.5, &HashMap::from([(1, 300), (2, 100)]));
        assert_eq!(shares[&1], (0.75, 0.25));
        assert_eq!(shares[&2], (0.25, 0.25));
        let quiet = share(1.0, 0.0, &HashMap::from([(1, 0), (2, 0)]));
        assert_eq!(quiet[&1], (0.5, 0.0));
        assert!(share(1.0, 1.0, &HashMap::new()).is_empty());
    }

    #[test]
    fn each_charge_counts_what_came_since_the_last() {
        let mut cost = WatchCost::new(Duration::from_millis(100));
        let first = cost.since_last(Duration::from_millis(300), &HashMap::from([(7, 10)]));
        assert!(first[&7].0 >= 0.2, "{first:?}");
        // Everything the process did meanwhile was attaching: left out.
        cost.exclude(Duration::from_secs(3600));
        let second = cost.since_last(Duration::from_millis(300), &HashMap::from([(7, 10)]));
        assert_eq!(second[&7], (0.0, 0.0));
    }
}
