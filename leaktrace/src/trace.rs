//! One trace from start to report: attach, sample the probes' totals at each interval, end on
//! the first of duration, signal or the targets' exit, detach, then build the report.

use std::{
    collections::HashMap,
    ffi::OsString,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use leaktrace_common::StackKey;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::oneshot,
};
use tracing::{info, warn};

use crate::{
    analyze::History,
    budget::{self, Budget},
    collect::{self, Snapshot, StackCache},
    doctor, preflight,
    probe::{Attachment, MapLimits, ProbeMode, Probes},
    process::{AllocatorKind, Target, allocator, spawn},
    report::{
        Report,
        build::{self, TargetSummary},
        live::LiveStatus,
        model::Frame,
    },
    symbolize::{AddrKind, Symbolizer},
};

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
}

const LOADER_POLL: Duration = Duration::from_micros(200);
const LOADER_SETTLE: Duration = Duration::from_millis(3);
const LOADER_WAIT_MAX: Duration = Duration::from_millis(500);
const MAPS_WATCH_PERIOD: Duration = Duration::from_millis(5);
const MAPS_WATCH_SPAN: Duration = Duration::from_secs(1);

/// What to trace.
pub enum Start {
    /// Running processes, by PID.
    Attach(Vec<u32>),
    /// A command started by leaktrace and traced from its first instruction.
    Run(Vec<OsString>),
}

/// A finished trace.
pub struct Outcome {
    pub report: Report,
    /// The exit status of the command started by `run`.
    pub exit_code: Option<i32>,
}

struct Traced {
    target: Target,
    attachment: Attachment,
    exit_code: Option<i32>,
    /// The executable, as last seen while the process lived (it changes at exec).
    exe: Option<PathBuf>,
    /// Allocator libraries besides libc already probed (the C++ runtime), by path.
    runtimes: Vec<PathBuf>,
}

struct Session {
    probes: Probes,
    traced: Vec<Traced>,
    history: History,
    stacks: StackCache,
    symbolizer: Symbolizer,
    /// The call chain of every site seen.
    chains: HashMap<StackKey, Vec<(u64, AddrKind)>>,
    last: Snapshot,
    started: Instant,
    /// When the last sample was taken: the end of the traced window.
    detached: Option<Instant>,
    status: LiveStatus,
    budget: Option<Budget>,
    /// What the reader should know about the trace as a whole.
    notes: Vec<String>,
}

/// SIGTERM and SIGINT, caught from before the first probe is attached: a signal that arrives
/// while attaching must end the trace cleanly, not kill the tracer.
struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
        })
    }

    /// Waits for either signal.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Runs one trace to its end.
pub async fn trace(start: Start, options: &Options) -> anyhow::Result<Outcome> {
    preflight::check()?;
    let gated: Vec<Option<u32>> = match &start {
        Start::Attach(pids) => pids.iter().map(|&p| Some(p)).collect(),
        Start::Run(_) => vec![None],
    };
    for pid in gated {
        doctor::gate(pid).map_err(|line| anyhow::anyhow!("refusing to trace: {line}"))?;
    }
    let mut stop = StopSignals::install()?;
    match start {
        Start::Attach(pids) => {
            let mut targets = Vec::new();
            for pid in pids {
                let target = Target::open(pid)?;
                if !target.is_alive() {
                    bail!("process {pid} has exited (it is a zombie waiting for its parent)");
                }
                let allocator = target.allocator()?;
                targets.push((target, allocator));
            }
            let mut session = Session::new(options)?;
            for (target, allocator) in targets {
                session.attach(target, &allocator)?;
            }
            session.announce();
            let (ended_by, _) = session.run(options, &mut stop, None).await?;
            Ok(Outcome {
                report: session.finish(options, ended_by)?,
                exit_code: None,
            })
        }
        Start::Run(argv) => {
            let held = spawn::hold(&argv)?;
            let pid = held.pid;
            let mut session = match Session::new(options) {
                Ok(session) => session,
                Err(err) => {
                    // The child would run untraced: end it before reporting the error.
                    // SAFETY: signalling the child this function forked.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    drop(held);
                    reap(pid);
                    return Err(err);
                }
            };
            // Before exec the child maps leaktrace's own libc: the file most commands use.
            let mut target = Target::open(pid)?;
            let allocator = target.allocator()?;
            target.command = argv
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ");
            session.attach(target, &allocator)?;
            session.announce();
            held.release()?;
            session.follow_loader(pid);
            // The program may be linked against another C library than the tracer's.
            session.attach_runtimes(0);
            let (tx, mut exited) = oneshot::channel();
            tokio::task::spawn_blocking(move || {
                let _ = tx.send(reap(pid));
            });
            let (ended_by, status) = session.run(options, &mut stop, Some(&mut exited)).await?;
            let code = match status {
                Some(code) => code,
                None => {
                    if ended_by == "signal" {
                        // SAFETY: signalling the child this function started.
                        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                    }
                    session.end_trace()?;
                    info!(pid, "tracing ended; waiting for the command to finish");
                    exited.await.unwrap_or(1)
                }
            };
            if let Some(t) = session.traced.first_mut() {
                t.exit_code = Some(code);
            }
            Ok(Outcome {
                report: session.finish(options, ended_by)?,
                exit_code: Some(code),
            })
        }
    }
}

/// Waits for a child and returns its exit status the way a shell reports it.
fn reap(pid: u32) -> i32 {
    let mut status = 0;
    // SAFETY: waiting on a child of this process.
    let r = unsafe { libc::waitpid(pid as i32, &raw mut status, 0) };
    if r < 0 {
        1
    } else if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

impl Session {
    fn new(options: &Options) -> anyhow::Result<Self> {
        let mut probes = Probes::load(options.limits, options.mode)?;
        if let Some(n) = options.sample_bytes {
            probes.set_sampling(n)?;
        }
        let quiet = options.quiet;
        Ok(Self {
            probes,
            traced: Vec::new(),
            history: History::default(),
            stacks: StackCache::default(),
            symbolizer: Symbolizer::new(),
            chains: HashMap::new(),
            last: Snapshot::default(),
            started: Instant::now(),
            detached: None,
            status: LiveStatus::new(quiet),
            budget: match options.max_overhead {
                Some(percent) => Some(Budget::new(
                    percent,
                    options.sample_bytes,
                    Some(
                        aya::sys::enable_stats(aya::sys::Stats::RunTime)
                            .context("enabling BPF run-time statistics for --max-overhead")?,
                    ),
                )),
                None => None,
            },
            notes: Vec::new(),
        })
    }

    fn attach(
        &mut self,
        target: Target,
        allocator: &crate::process::Allocator,
    ) -> anyhow::Result<()> {
        let attachment = match self.probes.attach(&target, allocator) {
            Ok(a) => a,
            Err(err) if !target.is_alive() => {
                return Err(err).context(format!(
                    "process {} exited while leaktrace was attaching",
                    target.pid
                ));
            }
            Err(err) => return Err(err.into()),
        };
        info!(
            pid = target.pid,
            allocator = %allocator.host_path.display(),
            free_probe = attachment.free.note,
            "attached"
        );
        self.symbolizer.remember(target.pid);
        let index = self.traced.len();
        self.traced.push(Traced {
            exe: std::fs::read_link(format!("/proc/{}/exe", target.pid)).ok(),
            target,
            attachment,
            exit_code: None,
            runtimes: Vec::new(),
        });
        self.attach_runtimes(index);
        self.started = Instant::now();
        Ok(())
    }

    /// Probes allocator libraries the target has mapped since last look: a C++ runtime loaded
    /// after exec or by dlopen, or the C library of a command that exec'd into a program linked
    /// against another libc than the tracer's. Failing here is warned about, and the trace goes
    /// on.
    fn attach_runtimes(&mut self, index: usize) {
        let traced = &mut self.traced[index];
        // The mappings the symbolizer just remembered: /proc/PID/maps is read once a sample.
        let allocators =
            allocator::find_all(&traced.target, self.symbolizer.mappings(traced.target.pid));
        for lib in allocators {
            if lib.path == traced.attachment.allocator.path || traced.runtimes.contains(&lib.path) {
                continue;
            }
            traced.runtimes.push(lib.path.clone());
            let attached = match lib.kind {
                AllocatorKind::Cxx => self.probes.attach_cxx(&traced.target, &lib),
                AllocatorKind::Libc => self
                    .probes
                    .attach_libc(&traced.target, &lib)
                    .map(|a| a.functions),
            };
            match attached {
                Ok(functions) => {
                    info!(pid = traced.target.pid, library = %lib.path.display(), "probed");
                    traced.attachment.functions.extend(functions);
                }
                Err(err) => warn!(
                    pid = traced.target.pid,
                    library = %lib.path.display(),
                    %err,
                    "cannot probe this allocator library: its allocations are missed"
                ),
            }
        }
    }

    /// Says on stderr that the probes are in place: from here on, every allocation counts.
    fn announce(&self) {
        let pids: Vec<String> = self
            .traced
            .iter()
            .map(|t| t.target.pid.to_string())
            .collect();
        eprintln!(
            "leaktrace: attached to PID {}; Ctrl-C ends the trace",
            pids.join(", ")
        );
    }

    /// Samples until the trace ends; returns why it ended, and the exit status of `child` if
    /// that is what ended it.
    async fn run(
        &mut self,
        options: &Options,
        stop: &mut StopSignals,
        mut child: Option<&mut oneshot::Receiver<i32>>,
    ) -> anyhow::Result<(&'static str, Option<i32>)> {
        let mut interval = tokio::time::interval(options.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watch_targets = child.is_none();
        // A short-lived command can map its libraries, allocate and exit between two samples;
        // its mappings must be remembered before it exits, or its stacks cannot be named. So
        // for the first second mapping changes are polled far more often than samples are taken.
        let mut maps_watch = tokio::time::interval(MAPS_WATCH_PERIOD);
        let maps_watch_until = tokio::time::Instant::now() + MAPS_WATCH_SPAN;
        let mut seen_maps: HashMap<u32, u64> = HashMap::new();
        let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
        let child_exited = async {
            match child.as_mut() {
                Some(rx) => (&mut **rx).await.unwrap_or(1),
                None => std::future::pending().await,
            }
        };
        tokio::pin!(child_exited);
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    let calls_before = total_alloc_calls(&self.last);
                    self.sample()?;
                    self.show_status(options, calls_before);
                    if self.enforce_budget()? {
                        return Ok(("overhead-budget", None));
                    }
                    if watch_targets && self.traced.iter().all(|t| !t.target.is_alive()) {
                        return Ok(("targets-exited", None));
                    }
                }
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => return Ok(("duration", None)),
                _ = maps_watch.tick(), if tokio::time::Instant::now() < maps_watch_until => {
                    self.remember_changed_mappings(&mut seen_maps);
                }
                () = stop.recv() => return Ok(("signal", None)),
                code = &mut child_exited => return Ok(("targets-exited", Some(code))),
            }
        }
    }

    /// Remembers a just-exec'd command's mappings as the kernel and the dynamic loader create
    /// them.
    ///
    /// A command can map its libraries, allocate and exit within milliseconds; its stacks can
    /// only be named from mappings seen while it lived. The exec has replaced the address space
    /// when this runs, but the program and its libraries appear over the next milliseconds: the
    /// mappings are polled every `LOADER_POLL` until a C library (mapped by the loader) is there
    /// and nothing has changed for `LOADER_SETTLE`.
    fn follow_loader(&mut self, pid: u32) {
        let started = Instant::now();
        let mut last: Option<String> = None;
        let mut still_since = Instant::now();
        while started.elapsed() < LOADER_WAIT_MAX {
            let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
                return;
            };
            if maps.is_empty() {
                return;
            }
            if last.as_ref() != Some(&maps) {
                self.symbolizer.remember(pid);
                last = Some(maps);
                still_since = Instant::now();
            } else if still_since.elapsed() >= LOADER_SETTLE && maps_a_libc(&maps) {
                return;
            }
            std::thread::sleep(LOADER_POLL);
        }
    }

    /// Remembers the mappings of every target whose `/proc/PID/maps` changed since last seen.
    fn remember_changed_mappings(&mut self, seen: &mut HashMap<u32, u64>) {
        let pids: Vec<u32> = self.traced.iter().map(|t| t.target.pid).collect();
        for pid in pids {
            let Ok(maps) = std::fs::read(format!("/proc/{pid}/maps")) else {
                continue;
            };
            let mut hasher = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&maps, &mut hasher);
            let hash = std::hash::Hasher::finish(&hasher);
            if seen.insert(pid, hash) != Some(hash) {
                self.symbolizer.remember(pid);
            }
        }
    }

    /// Estimates what the probes cost the targets since the last look, and acts when it is over
    /// `--max-overhead`: sampling first (it spares the probes' work), detaching when the traps
    /// alone are over (sampling cannot spare those). Returns whether the trace must end.
    fn enforce_budget(&mut self) -> anyhow::Result<bool> {
        let Some(budget) = self.budget.as_mut() else {
            return Ok(false);
        };
        let traps = self.last.counters.values().map(budget::traps).sum();
        let at = self.started.elapsed().as_secs_f64();
        match budget.check(self.probes.run_time(), traps) {
            budget::Action::Keep => Ok(false),
            budget::Action::Sample(n, why) => {
                self.probes.set_sampling(n)?;
                warn!("{why}");
                self.notes.push(format!("at {at:.1}s {why}"));
                Ok(false)
            }
            budget::Action::Detach(why) => {
                warn!("{why}");
                self.notes.push(format!("at {at:.1}s {why}"));
                Ok(true)
            }
        }
    }

    /// Redraws the live status: elapsed time, targets, live bytes, call rate, fastest grower.
    fn show_status(&mut self, options: &Options, calls_before: u64) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let calls = total_alloc_calls(&self.last).saturating_sub(calls_before);
        let rate = calls as f64 / options.interval.as_secs_f64();
        let live: i64 = self.last.sites.values().map(|s| s.live_bytes).sum();
        let top = self.fastest_grower().map(|(key, rate)| {
            let chain = self.chains.get(&key).cloned().unwrap_or_default();
            self.symbolizer.resolve(key.tgid, &chain);
            let frames: Vec<Frame> = chain
                .iter()
                .flat_map(|(addr, _)| self.symbolizer.frames(key.tgid, *addr))
                .collect();
            // The first JavaScript frame says most; else the allocation function's caller.
            let frame = frames
                .iter()
                .find(|f| f.kind == "js")
                .or_else(|| frames.get(1))
                .or_else(|| frames.first());
            let name = frame.map_or_else(|| "?".to_string(), crate::report::folded::label);
            format!("{name} {}/s", crate::report::bytes(rate as i64))
        });
        let duration = options
            .duration
            .map_or_else(String::new, |d| format!("/{:.0}s", d.as_secs_f64()));
        let targets = self.traced.len();
        self.status.update(|| {
            format!(
                "leaktrace: {elapsed:.0}s{duration}, {targets} target{}, live {}, {:.0} allocs/s, \
                 fastest growing: {}",
                if targets == 1 { "" } else { "s" },
                crate::report::bytes(live),
                rate,
                top.as_deref().unwrap_or("none")
            )
        });
    }

    /// The site whose live bytes grew fastest over the last few samples, with its rate.
    fn fastest_grower(&self) -> Option<(StackKey, f64)> {
        const WINDOW: usize = 10;
        self.last
            .sites
            .keys()
            .filter_map(|key| {
                let series = self.history.series(key);
                let recent = &series[series.len().saturating_sub(WINDOW)..];
                let (first, last) = (recent.first()?, recent.last()?);
                let span = last.0 - first.0;
                (span > 0.0 && last.1 > first.1).then(|| (*key, (last.1 - first.1) as f64 / span))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Reads the probes' totals, extends the series and names any new stack.
    fn sample(&mut self) -> anyhow::Result<()> {
        let snapshot = collect::snapshot(&self.probes)?;
        let at = self.started.elapsed().as_secs_f64();
        self.history.record(at, &snapshot);
        for traced in &mut self.traced {
            // Mappings change (dlopen, exec): keep the latest for symbolizing after exit. A
            // process that is gone leaves the last ones in place.
            self.symbolizer.remember(traced.target.pid);
            if let Ok(exe) = std::fs::read_link(format!("/proc/{}/exe", traced.target.pid)) {
                traced.exe = Some(exe);
            }
        }
        for index in 0..self.traced.len() {
            if self.traced[index].target.is_alive() && self.detached.is_none() {
                self.attach_runtimes(index);
            }
        }
        self.read_new_stacks(&snapshot)?;
        self.last = snapshot;
        Ok(())
    }

    /// What the reader of the report should know about one target.
    fn notes(&self, traced: &Traced) -> Vec<String> {
        let is_node = traced
            .exe
            .as_ref()
            .and_then(|e| e.file_name())
            .is_some_and(|n| n.to_string_lossy().starts_with("node"));
        let mut notes = Vec::new();
        if is_node && !self.symbolizer.has_perf_map(traced.target.pid) {
            notes.push(format!(
                "Node.js without a perf map (/tmp/perf-{}.map): JavaScript frames are unnamed. \
                 Start node with --perf-basic-prof (and --interpreted-frames-native-stack for \
                 interpreted functions) to name them.",
                traced.target.pid
            ));
        }
        notes
    }

    /// Reads the frames of any stack not seen before. They are named only when the report is
    /// built, and only for the stacks it shows: the files they need are kept open meanwhile.
    fn read_new_stacks(&mut self, snapshot: &Snapshot) -> anyhow::Result<()> {
        for key in snapshot.sites.keys() {
            if let std::collections::hash_map::Entry::Vacant(slot) = self.chains.entry(*key) {
                slot.insert(call_chain(self.stacks.frames(&self.probes, key.stack)?));
            }
        }
        Ok(())
    }

    /// Ends the traced window: takes the last sample, then detaches. Sampling first keeps the
    /// window exact; detaching can take a while (the kernel waits out a grace period per probe).
    fn end_trace(&mut self) -> anyhow::Result<()> {
        self.status.finish();
        if self.detached.is_none() {
            self.sample()?;
            self.detached = Some(Instant::now());
            self.probes.detach_all();
        }
        Ok(())
    }

    /// Ends the trace (if not yet ended) and builds the report.
    fn finish(mut self, options: &Options, ended_by: &'static str) -> anyhow::Result<Report> {
        self.end_trace()?;
        let targets = self
            .traced
            .iter()
            .map(|t| TargetSummary {
                pid: t.target.pid,
                ns_pid: t.target.ns_pid,
                command: t.target.command.clone(),
                allocator: t.attachment.allocator.path.display().to_string(),
                functions: t
                    .attachment
                    .functions
                    .iter()
                    .map(|f| f.to_string())
                    .collect(),
                free_probe: t.attachment.free.note.clone(),
                alive_at_end: t.target.is_alive(),
                exit_code: t.exit_code,
                notes: self.notes(t),
            })
            .collect();
        let (chains, symbolizer) = (&self.chains, &mut self.symbolizer);
        let mut name = |key: &StackKey| -> Vec<Frame> {
            let chain = chains.get(key).map_or(&[][..], Vec::as_slice);
            symbolizer.resolve(key.tgid, chain);
            chain
                .iter()
                .flat_map(|(addr, _)| symbolizer.frames(key.tgid, *addr))
                .collect()
        };
        Ok(build::build(build::Inputs {
            targets,
            last: &self.last,
            history: &self.history,
            frames: &mut name,
            duration_s: self
                .detached
                .map_or_else(|| self.started.elapsed(), |d| d - self.started)
                .as_secs_f64(),
            interval_s: options.interval.as_secs_f64(),
            sample_bytes: self
                .budget
                .as_ref()
                .map_or(options.sample_bytes, Budget::sample_bytes)
                .unwrap_or(0),
            notes: self.notes.clone(),
            ended_by,
            top: options.top,
        }))
    }
}

/// Whether `/proc/PID/maps` text shows a C library mapped executable.
fn maps_a_libc(maps: &str) -> bool {
    crate::process::maps::parse(maps)
        .iter()
        .any(|m| m.is_executable() && crate::process::allocator::is_libc_path(m.path.as_deref()))
}

/// Allocation calls of every target so far.
fn total_alloc_calls(snapshot: &Snapshot) -> u64 {
    snapshot
        .counters
        .values()
        .map(|c| c[leaktrace_common::Counter::AllocCalls as usize])
        .sum()
}

/// The addresses of one allocation, innermost first: the allocation function itself (an exact
/// address), then return addresses.
fn call_chain(ips: &[u64]) -> Vec<(u64, AddrKind)> {
    ips.iter()
        .enumerate()
        .map(|(i, &ip)| {
            (
                ip,
                if i == 0 {
                    AddrKind::Exact
                } else {
                    AddrKind::Return
                },
            )
        })
        .collect()
}

/// Why the report could not be written to `path`, checked before tracing so a trace is never
/// taken only to be lost.
pub fn output_path_problem(path: &std::path::Path) -> Option<String> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    if path.is_dir() {
        return Some(format!("{} is a directory", path.display()));
    }
    if !dir.is_dir() {
        return Some(format!("directory {} does not exist", dir.display()));
    }
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str())).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Some(format!("directory {} is not writable", dir.display()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_chain_marks_return_addresses() {
        assert_eq!(
            call_chain(&[0x10, 0x20, 0x30]),
            vec![
                (0x10, AddrKind::Exact),
                (0x20, AddrKind::Return),
                (0x30, AddrKind::Return)
            ]
        );
        assert_eq!(call_chain(&[]), vec![]);
    }
}
