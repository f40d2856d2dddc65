//! The command line.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    parse::{parse_bytes, parse_duration, parse_interval, parse_percent, parse_pid, parse_size},
    probe::{MapLimits, MappingProbes, ProbeMode},
    report::Format,
};

/// Find the native allocations that keep growing in a running process.
///
/// leaktrace attaches eBPF uprobes to a process's allocator, keeps every live block in the
/// kernel, and reports which call stacks hold memory and how it grows. Nothing is written into
/// the target and it need not be restarted.
#[derive(Debug, Parser)]
#[command(name = "leaktrace", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log more (-v info, -vv debug); logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace running processes.
    #[command(after_help = "Examples:\n  leaktrace attach 1234 --duration 60s\n  \
        leaktrace attach 1234 5678 --format json --output leaks.json")]
    Attach {
        /// PIDs of the processes to trace.
        #[arg(required = true, value_parser = parse_pid)]
        pids: Vec<u32>,
        /// Trace the processes they fork from now on (and theirs), each from its first
        /// allocation and reported as its own target. By default children are not traced. The
        /// probes then trap in every process on the host that uses the same allocator library
        /// (the kernel keeps to the traced ones).
        #[arg(long)]
        follow_forks: bool,
        #[command(flatten)]
        trace: TraceArgs,
    },
    /// Render a saved JSON report in another format (a trace taken on a production host can be
    /// examined elsewhere).
    #[command(after_help = "Example:\n  leaktrace report trace.json -o trace.html -o trace.pb.gz")]
    Report {
        /// A report written with `--format json`.
        trace: PathBuf,
        #[command(flatten)]
        outputs: OutputArgs,
    },
    /// Check that this host, and each process given, can be traced safely: one line per check.
    #[command(
        after_help = "Exit status: 0 when no check fails, 1 otherwise.\n\nExample:\n  leaktrace doctor 1234"
    )]
    Doctor {
        /// PIDs of processes to check as targets.
        #[arg(value_parser = parse_pid)]
        pids: Vec<u32>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = crate::doctor::Format::Text)]
        format: crate::doctor::Format,
    },
    /// Run until stopped, tracing every process the rules select as it starts, and serve what
    /// is found over HTTP: Prometheus metrics, the targets, and each one's report.
    #[command(
        after_help = "Examples:\n  leaktrace agent --listen 127.0.0.1:9464 --match-exe 'node*'\n  \
        leaktrace agent --config /etc/leaktrace/agent.toml\n\n\
        A process is traced when every given rule matches it (any pattern of a repeated rule may \
        match). Flags override the config file."
    )]
    Agent(crate::agent::config::AgentArgs),
    /// Start a command and trace it from its first allocation; exits with the command's status.
    #[command(
        after_help = "Example:\n  leaktrace run --format json -o out.json -- ./my-server --port 8080"
    )]
    Run {
        #[command(flatten)]
        trace: TraceArgs,
        /// Trace only the command itself, not the processes it starts. By default every
        /// process it forks (and theirs) is traced from its first allocation, each reported as
        /// its own target; the probes then trap in every process on the host that uses the
        /// same allocator library (the kernel keeps to the traced ones).
        #[arg(long)]
        no_follow: bool,
        /// Do not ask Node.js for perf maps. By default `run` adds `--perf-basic-prof
        /// --interpreted-frames-native-stack` to `NODE_OPTIONS`, so that JavaScript frames are
        /// named, and removes the maps afterwards.
        #[arg(long)]
        no_perf_map: bool,
        #[command(flatten)]
        gate: GateArgs,
        /// The command and its arguments (after `--`).
        #[arg(required = true, last = true)]
        command: Vec<OsString>,
    },
}

/// `run` as a test gate.
#[derive(Debug, Args)]
pub struct GateArgs {
    /// When the command has succeeded, exit with --leak-exit-code if a traced process has a
    /// stack with this verdict (`leak`; `growing`: leak or growing), or (`outstanding`) still
    /// holds --min-bytes at exit. A failed command keeps its own status.
    #[arg(long, value_enum)]
    pub fail_on: Option<crate::gate::FailOn>,
    /// With `--fail-on outstanding`: the live bytes at exit a process may keep (`64KiB`).
    #[arg(long, default_value = "1", value_parser = parse_size, requires = "fail_on")]
    pub min_bytes: u64,
    /// The status to exit with when the gate fails.
    #[arg(long, default_value_t = crate::gate::DEFAULT_EXIT_CODE, value_parser = clap::value_parser!(u8).range(1..))]
    pub leak_exit_code: u8,
    /// Rules for stacks that are not leaks, one a line (a function, module or source file:
    /// a word found in a name, or a glob matching a whole one; `#` comments; `leak:` prefixes
    /// as in LeakSanitizer files). The report shows what each rule took.
    #[arg(long, value_name = "FILE")]
    pub suppressions: Vec<PathBuf>,
}

/// Where the report goes, and in which formats.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Report format on stdout, and for an output file whose extension names none.
    #[arg(short, long, value_enum)]
    pub format: Option<Format>,
    /// Write the report to this file instead of stdout, atomically (never half-written). Give it
    /// more than once for several formats from one trace; each file's format follows its
    /// extension: .txt .json .folded .svg .pb.gz (pprof) .html.
    #[arg(short, long)]
    pub output: Vec<PathBuf>,
    /// Stacks to report, largest first, besides every leak suspect (text default: 10; other
    /// formats: 1000, the rest counted in `stacks_omitted` and in the totals).
    #[arg(long)]
    pub top: Option<usize>,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Stop after this long (`30s`, `5m`); default: until Ctrl-C or the targets exit.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How often the probes' totals are sampled into each stack's series [default: 1s; 250ms
    /// for `run`, whose test binaries and test files live seconds; 5s in watch mode, which is
    /// for leaving on].
    #[arg(short, long, value_parser = parse_interval)]
    pub interval: Option<Duration>,
    #[command(flatten)]
    pub outputs: OutputArgs,
    /// What to capture. `exact`: probe the allocator, every call, and report each stack's live
    /// blocks. `watch`: place no probe at all (the target's code runs untouched) and report the
    /// pages each stack populates, from sampled page faults, with the resident set's growth.
    #[arg(long, value_enum, default_value_t = Capture::Exact)]
    pub mode: Capture,
    /// In watch mode, take one page fault in this many (of every process on each CPU, alike):
    /// each sample stands for that many pages. 1 counts every fault, exactly; the default keeps
    /// a faulting Node service's cost within a tenth of a percent of a CPU [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub fault_period: Option<u64>,
    /// Record a sample of allocations, one per this many bytes on average (Poisson sampling by
    /// bytes: `512KiB`, `1MiB` or plain bytes); sizes become unbiased estimates. Cheaper on busy
    /// processes: a passed-over call costs no stack walk and no map update.
    #[arg(long, value_parser = parse_bytes)]
    pub sample_bytes: Option<u64>,
    /// Most CPU the probes may cost the targets, in percent of one CPU (`5` = 5 %): over it,
    /// sampling is raised, and when that cannot help leaktrace detaches and says so.
    #[arg(long, value_parser = parse_percent)]
    pub max_overhead: Option<f64>,
    /// No live status line on stderr while tracing.
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not name JavaScript frames from V8's own data in the node binary and the target's
    /// heap (perf maps still name them): the probes then walk native frames only.
    #[arg(long)]
    pub no_v8_frames: bool,
    /// Most live blocks tracked at once, over all targets.
    #[arg(long, default_value_t = leaktrace_common::DEFAULT_MAX_LIVE_ALLOCS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_live_allocs: u32,
    /// Most distinct allocation sites.
    #[arg(long, default_value_t = leaktrace_common::DEFAULT_MAX_STACKS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_stacks: u32,
    /// Most distinct call stacks stored (each costs about 0.5 KiB of kernel memory once seen).
    #[arg(long, default_value_t = leaktrace_common::DEFAULT_MAX_STACK_TRACES, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_stack_traces: u32,
    /// Watch mode: most populated pages whose stack is kept at once (by the tracer, about
    /// 100 bytes each; each stands for --fault-period pages). Pages beyond it are counted.
    #[arg(long, default_value_t = leaktrace_common::DEFAULT_MAX_PAGES, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pages: u32,
    /// Size of the ring that carries mapping changes (mmap, munmap, mremap, mprotect) to the
    /// tracer, in bytes: a power of two of at least 4096. Events that do not fit are counted.
    #[arg(long, default_value_t = leaktrace_common::DEFAULT_MAP_EVENTS_BYTES, value_parser = parse_ring_bytes)]
    pub map_events_bytes: u32,
    /// Rows of unwind tables the probes hold (8 bytes each, over all objects): code without
    /// frame pointers (glibc's internals, libstdc++) is walked by its `.eh_frame` while they
    /// last. glibc 2.36's C library takes about 28 k.
    #[arg(long, default_value_t = leaktrace_common::DEFAULT_MAX_UNWIND_ROWS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_unwind_rows: u32,
    /// Attach programs that do nothing, at the same places (for `cargo xtask bench`: the cost of
    /// the traps alone).
    #[arg(long, hide = true)]
    pub empty_probes: bool,
    /// Watch mode: probe the mapping syscalls (mmap, munmap, mremap, mprotect) at the raw
    /// syscall tracepoints, as exact tracing does, rather than by fentry, which kernels in
    /// integrity lockdown refuse. Costs every syscall of the host about 50 ns (measured: 80 to
    /// 132 ns a getppid).
    #[arg(long)]
    pub syscall_tracepoints: bool,
}

/// How a trace captures memory, see [`TraceArgs::mode`].
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    #[default]
    Exact,
    Watch,
}

/// A ring buffer size: the kernel wants a power of two and a multiple of the page size.
fn parse_ring_bytes(text: &str) -> Result<u32, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of bytes"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two of at least 4096"));
    }
    Ok(n)
}

impl TraceArgs {
    /// The probes' mode; watch mode refuses the options that only mean something for probes.
    pub fn mode(&self) -> Result<ProbeMode, String> {
        match self.mode {
            Capture::Exact if self.syscall_tracepoints => Err(
                "--syscall-tracepoints applies to `--mode watch`; exact tracing probes the \
                 syscall tracepoints always"
                    .into(),
            ),
            Capture::Exact if self.fault_period.is_some() => Err(
                "--fault-period applies to the page faults of `--mode watch`; exact tracing \
                 probes the allocator"
                    .into(),
            ),
            Capture::Exact if self.empty_probes => Ok(ProbeMode::Empty),
            Capture::Exact => Ok(ProbeMode::Trace),
            Capture::Watch => {
                let probe_only = [
                    (self.sample_bytes.is_some(), "--sample-bytes"),
                    (self.max_overhead.is_some(), "--max-overhead"),
                    (self.empty_probes, "--empty-probes"),
                ];
                if let Some((_, flag)) = probe_only.iter().find(|(given, _)| *given) {
                    return Err(format!(
                        "{flag} applies to allocator probes; `--mode watch` places none"
                    ));
                }
                Ok(ProbeMode::Watch {
                    period: std::num::NonZeroU64::new(
                        self.fault_period
                            .unwrap_or(crate::probe::fault::DEFAULT_FAULT_PERIOD),
                    )
                    .ok_or("--fault-period must be at least 1")?,
                    mapping: if self.syscall_tracepoints {
                        MappingProbes::Tracepoints
                    } else {
                        MappingProbes::Fentry
                    },
                })
            }
        }
    }

    pub fn limits(&self) -> MapLimits {
        MapLimits {
            live_allocs: self.max_live_allocs,
            stacks: self.max_stacks,
            stack_traces: self.max_stack_traces,
            pages: self.max_pages,
            map_events_bytes: self.map_events_bytes,
            unwind_rows: self.max_unwind_rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
