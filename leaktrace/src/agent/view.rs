//! What the agent publishes after each sample: every target's numbers and its own health, as
//! `/metrics` and `/api/v1/targets` serve them.

use serde::Serialize;

use crate::report::model::Totals;

/// The agent's state at its last sample, shared read-only with the HTTP server.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Published {
    pub agent: AgentView,
    pub targets: Vec<TargetView>,
}

/// One traced process.
#[derive(Clone, Debug, Serialize)]
pub struct TargetView {
    /// The PID as the host sees it.
    pub pid: u32,
    /// The PID inside its own PID namespace (a container's view).
    pub ns_pid: u32,
    pub command: String,
    pub exe: String,
    /// `traced`, `exited` (served until the grace period ends) or `capped` (over
    /// `--max-live-allocs-per-target`: no longer traced, its last numbers served).
    pub state: &'static str,
    /// Seconds since its probes were attached.
    pub traced_s: f64,
    pub placement: PlacementView,
    /// As the report's target totals, at the same level of the JSON object.
    #[serde(flatten)]
    pub totals: Totals,
    /// Theil-Sen slope of the process's live bytes over the last minutes.
    pub growth_bytes_per_s: f64,
    /// Stacks whose verdict is `leak` or `growing`.
    pub leak_suspects: usize,
    /// The fastest-growing suspect's slope (0 without suspects).
    pub top_suspect_bytes_per_s: f64,
    /// The innermost named frame of that suspect, for a human glancing at the list.
    pub top_suspect: Option<String>,
    /// The thread its JavaScript ran on: `main`, a worker's `on thread TID "NAME"`, or `queued
    /// by … on thread TID` for work a pool thread ran for it.
    pub top_suspect_thread: Option<String>,
    /// Where its resident memory is and what its allocator keeps, at the last sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<crate::analyze::memory::MemoryReport>,
    /// Tiered mode: its tier, and what its exact windows found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<TierView>,
}

/// A target's tier (`--mode tiered`).
#[derive(Clone, Debug, Serialize)]
pub struct TierView {
    /// `watch` (page faults only) or `window` (its allocator probed now).
    pub tier: &'static str,
    /// Why, in words.
    pub why: String,
    /// Exact windows opened so far.
    pub windows: u32,
    /// What the agent made its own threads run, in CPU seconds: its windows (traps priced as
    /// measured, and the programs' time) and watching it (its page faults' programs).
    pub overhead_cpu_seconds: f64,
    /// The part of that watching cost.
    pub watch_cpu_seconds: f64,
    /// Its share of the agent's own CPU time (sampling, naming, serving) and what opening its
    /// windows cost the agent: charged to the node's budget, not to its own.
    pub agent_cpu_seconds: f64,
    /// `overhead_cpu_seconds` in percent of the CPU time it used while watched (at least a
    /// tenth of a CPU): what `--max-overhead` bounds.
    pub average_overhead_percent: f64,
    pub max_overhead_percent: f64,
    /// The open window, else the last one.
    pub window: Option<WindowView>,
}

/// What an exact window found (its report: `/api/v1/targets/{pid}/window`).
#[derive(Clone, Debug, Serialize)]
pub struct WindowView {
    pub open: bool,
    /// Its length so far, or in all.
    pub seconds: f64,
    /// Why it closed.
    pub ended: Option<String>,
    /// Bytes and blocks allocated in it and not freed.
    pub live_bytes: i64,
    pub live_allocs: i64,
    /// Its stacks judged `leak` or `growing`, and the fastest-growing one.
    pub leak_suspects: usize,
    pub top_suspect: Option<String>,
    pub top_suspect_thread: Option<String>,
    pub top_suspect_bytes_per_s: f64,
}

/// Where a process runs: container and pod, as far as they are known.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PlacementView {
    pub cgroup: String,
    pub runtime: Option<&'static str>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    /// From the Kubernetes API, when the agent reads it.
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub container: Option<String>,
}

/// The agent's own health.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentView {
    pub version: &'static str,
    /// `tiered`, `exact` or `watch`.
    pub mode: &'static str,
    /// Tiered mode: exact windows open now, what was charged to the node's budget in CPU seconds
    /// (every target's windows and watching, the agent's own work), and that budget in percent
    /// of one CPU.
    pub windows_open: usize,
    pub overhead_cpu_seconds: f64,
    pub node_max_overhead_percent: f64,
    /// 0 when every allocation is recorded.
    pub sample_bytes: u64,
    pub interval_s: f64,
    pub max_targets: usize,
    /// Targets currently traced (not exited or capped).
    pub traced: usize,
    pub scans: u64,
    pub samples: u64,
    /// Matching processes not traced because `--max-targets` were already traced (each counted
    /// once).
    pub refused_max_targets: u64,
    /// Targets that went over `--max-live-allocs-per-target`.
    pub capped: u64,
    /// Matching processes leaktrace could not attach to.
    pub attach_failures: u64,
    /// Samples whose map reads failed (the numbers before them stayed served).
    pub failed_samples: u64,
    pub resident_bytes: u64,
    /// `None` when the agent does not read the Kubernetes API.
    pub kubernetes: Option<KubeView>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct KubeView {
    pub synced: bool,
    pub pods: usize,
    pub watch_errors: u64,
}
