//! How a session traces: what the command line (or the agent's configuration) chose.

use std::time::Duration;

use crate::probe::{MapLimits, ProbeMode};

/// How to trace, from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub top: Option<usize>,
    pub limits: MapLimits,
    pub mode: ProbeMode,
    /// No live status line on stderr.
    pub quiet: bool,
    /// Poisson sampling by bytes with this mean interval; `None` records every allocation.
    pub sample_bytes: Option<u64>,
    /// Most CPU the probes may cost the targets, in percent of one CPU; over it, sampling is
    /// raised, and when that cannot help the probes are detached.
    pub max_overhead: Option<f64>,
    /// Trace every process the targets fork, from its first allocation (see
    /// `Probes::load`): `run` does, to see a test runner's workers.
    pub follow: bool,
    /// Ask the Node.js processes `run` starts for perf maps (see [`NODE_PERF_MAP_OPTIONS`](crate::trace::NODE_PERF_MAP_OPTIONS)),
    /// and remove the maps once the report is built.
    pub node_perf_maps: bool,
    /// Name JavaScript frames from V8's own data (see `symbolize::js`).
    pub v8_frames: bool,
    /// A light reading of each target's resident set at every sample however long the trace
    /// runs (see `analyze::memory::Watch::trend`): the tiered agent opens its windows on the
    /// last ones. Full readings thin out past the first minute either way.
    pub resident_trend: bool,
}
