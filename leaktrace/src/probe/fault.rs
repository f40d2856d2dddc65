//! Watch mode's capture path: the `page-faults` software event on every CPU, each sample running
//! the probes' `page_fault` program, which keeps to the targets.
//!
//! One event per CPU, system-wide, rather than one per thread of each target: a target's threads
//! come and go (and would each need their own descriptor, opened before they fault), while the
//! CPUs are fixed; the program's first step is the same target-table lookup every probe makes.
//! The event counts every fault of a CPU, so a period of `n` samples every process's faults
//! alike, one in `n`, and each sample stands for `n` faults.

use std::num::NonZeroU64;

use aya::{
    Ebpf,
    programs::{
        PerfEvent,
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
    },
    util::online_cpus,
};

use super::ProbeError;

/// Page faults per sample in watch mode: one in 8. The program walks the whole stack of each
/// fault it samples, JavaScript frames named: measured on the bench's Node service, 2.9 µs a
/// run on average and ~5 µs for a fault of the service itself (its other runs are other
/// processes' faults, left at once); a leak populates a few thousand pages a second
/// (PLATFORM.md), which at every fault would be 1-2 % of a CPU, and is 0.1-0.3 % at one in 8.
/// A leaking stack still gets hundreds of samples a minute. `--fault-period 1` counts every
/// page exactly (the end-to-end tests that count pages use it).
pub const DEFAULT_FAULT_PERIOD: u64 = 8;

/// The program that serves the event.
pub(super) const FAULT_PROGRAM: &str = "page_fault";

/// The page-fault events opened on every online CPU; dropping them (with the loaded object)
/// closes them.
pub(super) struct FaultEvents {
    links: Vec<PerfEventLinkId>,
}

impl FaultEvents {
    /// Loads the program and opens one `page-faults` event per online CPU sampled every
    /// `period` faults. Nothing stays open when any of them fails.
    pub(super) fn open(ebpf: &mut Ebpf, period: NonZeroU64) -> Result<Self, ProbeError> {
        let program: &mut PerfEvent = ebpf
            .program_mut(FAULT_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(ProbeError::Missing(FAULT_PROGRAM))?;
        program.load().map_err(|source| ProbeError::Program {
            name: FAULT_PROGRAM,
            source: Box::new(source),
        })?;
        let cpus = online_cpus().map_err(|(_, e)| ProbeError::Cpus(e.to_string()))?;
        let mut links = Vec::with_capacity(cpus.len());
        for cpu in cpus {
            let opened = program.attach(
                PerfEventConfig::Software(SoftwareEvent::PageFaults),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Period(period.get()),
                false,
            );
            match opened {
                Ok(link) => links.push(link),
                Err(source) => {
                    for link in links {
                        let _ = program.detach(link);
                    }
                    return Err(ProbeError::FaultEvent {
                        cpu,
                        source: Box::new(source),
                    });
                }
            }
        }
        Ok(Self { links })
    }

    /// Closes every event: the targets' faults cost nothing more.
    pub(super) fn close(self, ebpf: &mut Ebpf) {
        let Some(program) = ebpf
            .program_mut(FAULT_PROGRAM)
            .and_then(|p| <&mut PerfEvent>::try_from(p).ok())
        else {
            return;
        };
        for link in self.links {
            let _ = program.detach(link);
        }
    }
}
