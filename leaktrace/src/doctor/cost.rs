//! `doctor PID`: what each mode would cost the process now, measured on it rather than guessed.
//!
//! Watch mode places no uprobe, so it is measured as it would run: its page-fault program
//! loaded for [`SAMPLE`], the target's faults read from `/proc/PID/stat`. An allocator call rate
//! cannot be read from outside the process (no kernel counter sees `malloc`), so the allocator
//! probes are attached for [`SAMPLE`] to count the calls, and the check says so: one second of
//! exact tracing, detached when it is over. The traps are priced at [`TRAP_COST`], the cost the
//! bench measures with programs that do nothing; the programs' own time is the kernel's count,
//! where run-time statistics can be enabled (CAP_SYS_ADMIN).

use std::{
    num::NonZeroU64,
    os::fd::OwnedFd,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use leaktrace_common::Counter;

use super::Check;
use crate::{
    budget::{self, TRAP_COST},
    collect,
    probe::{MapLimits, ProbeMode, Probes, fault::DEFAULT_FAULT_PERIOD},
    process::Target,
};

/// How long each mode is measured.
const SAMPLE: Duration = Duration::from_secs(1);
/// Over this share of one CPU, exact tracing is worth a warning.
const EXACT_WARN_PERCENT: f64 = 5.0;
/// Small maps: the sample counts calls, it keeps little (what it cannot keep is counted).
const LIMITS: MapLimits = MapLimits {
    live_allocs: 65_536,
    stacks: 4096,
    stack_traces: 4096,
    pages: 4096,
    map_events_bytes: 1 << 16,
    unwind_rows: 1024,
};

/// What one second of each mode showed.
struct Measured {
    calls_per_s: f64,
    traps_per_s: f64,
    /// The allocator probes' own run time, in CPU seconds per second (`None`: no statistics).
    programs: Option<f64>,
    faults_per_s: f64,
    /// The page-fault program's mean run time, and its runs per second over the host.
    fault_run: Option<(Duration, f64)>,
}

/// The cost check of one target; a warning, never a failure, when it cannot be measured.
pub(super) fn check(target: &Target, name: &str) -> Check {
    let check = format!("cost ({name})");
    match measure(target) {
        Ok(m) => m.check(&check),
        Err(err) => Check::warn(
            &check,
            format!("not measured: {err:#}"),
            "run doctor as root (or with the capabilities `attach` needs) to measure it",
        ),
    }
}

fn measure(target: &Target) -> anyhow::Result<Measured> {
    let pid = target.pid;
    let allocator = target.allocator()?;
    let _stats: Option<OwnedFd> = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();

    let mut watch = Probes::load(
        LIMITS,
        ProbeMode::Watch {
            period: NonZeroU64::MIN,
            mapping: crate::probe::MappingProbes::Fentry,
        },
        false,
    )?;
    watch.attach(target, &allocator)?;
    let (faults_before, at) = (faults(pid)?, Instant::now());
    let before = watch.program_stats();
    thread::sleep(SAMPLE);
    let after = watch.program_stats();
    let faults_per_s = faults(pid)?.saturating_sub(faults_before) as f64 / secs(at);
    let runs = after.1.saturating_sub(before.1);
    let fault_run = (runs > 0 && !after.0.is_zero()).then(|| {
        (
            after.0.saturating_sub(before.0) / u32::try_from(runs).unwrap_or(u32::MAX),
            runs as f64 / secs(at),
        )
    });
    drop(watch);

    let mut exact = Probes::load(LIMITS, ProbeMode::Trace, false)?;
    exact.attach(target, &allocator)?;
    let (at, before) = (Instant::now(), exact.run_time());
    thread::sleep(SAMPLE);
    let snapshot = collect::snapshot(&exact).context("reading the probes' counters")?;
    let seconds = secs(at);
    let programs = exact.run_time().saturating_sub(before);
    // Detached here, before anything is printed.
    drop(exact);
    let counters = snapshot.counters.get(&pid).copied().unwrap_or_default();
    let calls = counters[Counter::AllocCalls as usize] + counters[Counter::FreeCalls as usize];
    Ok(Measured {
        calls_per_s: calls as f64 / seconds,
        traps_per_s: budget::traps(&counters) as f64 / seconds,
        programs: (!programs.is_zero() || calls == 0).then(|| programs.as_secs_f64() / seconds),
        faults_per_s,
        fault_run,
    })
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64().max(1e-3)
}

/// Page faults of the whole process so far: minflt + majflt of `/proc/PID/stat` (its threads'
/// included).
fn faults(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // After the command's closing parenthesis, the state is field 3 of proc(5): minflt (10) and
    // majflt (12) are the 8th and 10th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {}", i + 3))
    };
    Ok(field(7)? + field(9)?)
}

impl Measured {
    fn check(&self, check: &str) -> Check {
        let percent = |cpu_s_per_s: f64| cpu_s_per_s * 100.0;
        let traps = percent(self.traps_per_s * TRAP_COST.as_secs_f64());
        let exact = traps + self.programs.map_or(0.0, percent);
        let programs = match self.programs {
            Some(p) => format!("programs {:.1} %", percent(p)),
            None => "programs not counted: run-time statistics need CAP_SYS_ADMIN".into(),
        };
        let watch = match self.fault_run {
            // Measured at every fault; watch mode's default runs the program on one in
            // `DEFAULT_FAULT_PERIOD`.
            Some((run, host_runs)) => format!(
                "watch ≈ {:.2} % ({:.0} faults/s at {} ns each, one in {DEFAULT_FAULT_PERIOD} \
                 sampled; over the host it would run {:.0} times/s: {:.2} % there)",
                percent(self.faults_per_s * run.as_secs_f64() / DEFAULT_FAULT_PERIOD as f64),
                self.faults_per_s,
                run.as_nanos(),
                host_runs / DEFAULT_FAULT_PERIOD as f64,
                percent(host_runs * run.as_secs_f64() / DEFAULT_FAULT_PERIOD as f64)
            ),
            // A process that faulted no page in that second (one reusing its memory) costs
            // watch mode nothing: its program never ran, so it has no run time to show.
            None if self.faults_per_s == 0.0 => {
                "watch ≈ 0.00 % (no page fault in that second: the program did not run)".into()
            }
            None => format!(
                "watch: {:.0} faults/s (the program's time not counted)",
                self.faults_per_s
            ),
        };
        let found = format!(
            "measured over 1 s each (the allocator probes attached for that second, then \
             detached): {:.0} allocator calls/s; exact ≈ {exact:.1} % of a CPU (traps {traps:.1} \
             %, {programs}); --sample-bytes ≥ {traps:.1} % (sampling spares the programs, not \
             the traps); {watch}; the agent's tiered default: watch, plus windows held to \
             --max-overhead (2 %) averaged",
            self.calls_per_s
        );
        if exact > EXACT_WARN_PERCENT {
            Check::warn(
                check,
                found,
                format!(
                    "exact tracing would slow this process by about {exact:.0} % of a CPU: use \
                     `attach --mode watch`, or the agent's tiered mode, or trace it briefly"
                ),
            )
        } else {
            Check::ok(check, found)
        }
    }
}
