//! When the kernel's mapping records are read: a tracer that wakes often preempts the service
//! it traces, one that wakes rarely lets a busy host's rings fill.

use std::time::Duration;

/// How often the kernel's mapping records are read: often enough that a file is opened while
/// it is still there, and that a busy host's records never fill a ring.
pub(crate) const SIDEBAND_PERIOD: Duration = Duration::from_millis(10);
/// While no record concerns a target, the period doubles up to this: a tracer that wakes 100
/// times a second preempts a busy service on every wake-up (measured: reschedule IPIs and task
/// switches were a quarter of watch mode's own CPU on the bench's service). A record of a target,
/// or a busy read, brings it back to [`SIDEBAND_PERIOD`]; so does following process trees, whose
/// short-lived children need every record at once.
const SIDEBAND_IDLE_PERIOD: Duration = Duration::from_millis(160);
/// Records in one read that make it busy whatever they concern: a quarter of what a ring holds
/// is read before the next slow period could fill it.
pub(crate) const SIDEBAND_BUSY: usize = 256;

/// When the kernel's mapping records are read next: every [`SIDEBAND_PERIOD`] while they
/// concern targets, less often (up to [`SIDEBAND_IDLE_PERIOD`]) while they do not.
pub(crate) struct SidebandPace {
    period: Duration,
    at: tokio::time::Instant,
}

impl SidebandPace {
    pub(crate) fn new() -> Self {
        Self {
            period: SIDEBAND_PERIOD,
            at: tokio::time::Instant::now() + SIDEBAND_PERIOD,
        }
    }

    pub(crate) fn at(&self) -> tokio::time::Instant {
        self.at
    }

    /// After a read: `busy` as [`Session::apply_sideband`](super::Session::apply_sideband) says, `fast` to stay at the
    /// shortest period whatever it says.
    pub(crate) fn next(&mut self, busy: bool, fast: bool) {
        self.period = if busy || fast {
            SIDEBAND_PERIOD
        } else {
            (self.period * 2).min(SIDEBAND_IDLE_PERIOD)
        };
        self.at = tokio::time::Instant::now() + self.period;
    }
}
