//! One tracing session: the loaded probes, the processes attached to them, and everything
//! gathered about their allocations. `trace` drives one to a single report; the agent keeps one
//! running and adds and drops targets as they come and go.

mod changes;
mod images;
mod naming;
mod options;
mod pace;
mod sites;

use naming::SiteNames;
pub use options::Options;
pub(crate) use pace::SidebandPace;

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use leaktrace_common::StackKey;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::oneshot,
};
use tracing::{info, warn};

use crate::{
    analyze::History,
    budget::{self, Budget},
    collect::{
        self, Mappings, Snapshot, StackCache, StackMap,
        sideband::{Change, Sideband},
    },
    probe::{Attachment, Probes},
    process::{Target, allocator},
    report::{
        Report,
        build::{self, SiteNamer as _, TargetSummary},
        live::LiveStatus,
        model::Origin,
    },
    symbolize::{AddrKind, Symbolizer, js::JsNamer, queued},
    unwind::Unwinder,
};

/// Share of the interval a sample may spend naming new JavaScript sites.
const NAMING_SHARE: f64 = 0.4;

/// One process the probes were attached to.
pub(crate) struct Traced {
    pub(crate) target: Target,
    attachment: Attachment,
    pub(crate) exit_code: Option<i32>,
    /// The executable, as last seen while the process lived (it changes at exec).
    exe: Option<PathBuf>,
    /// Allocator objects besides the one serving `malloc` already probed (the C++ runtime), by
    /// inode.
    runtimes: Vec<u64>,
    /// Objects probed only once the process was running (a `dlopen`, an exec the tracer could
    /// not foresee): what they allocated before is missed. With when, in seconds.
    late: Vec<(PathBuf, f64)>,
    /// Allocator objects of an image it exec'd and was gone from before they could be probed:
    /// what it allocated through them is missed.
    gone_after_exec: Option<Vec<PathBuf>>,
    /// Allocator objects whose probes could not be attached, with why: what it allocated
    /// through them is missed.
    unprobed: Vec<(PathBuf, String)>,
    /// When its probes were attached.
    pub(crate) attached_at: Instant,
    /// Traced from its first instruction: `run`'s command, or a child followed from its fork.
    from_start: bool,
    /// When its probes were detached, if they were before the session ended.
    pub(crate) detached_at: Option<Instant>,
    /// Its execs counted by the probes, at the last sample.
    execs: u64,
}

impl Traced {
    /// A target whose probes were attached just now.
    fn new(target: Target, attachment: Attachment, from_start: bool) -> Self {
        Self {
            exe: std::fs::read_link(format!("/proc/{}/exe", target.pid)).ok(),
            target,
            attachment,
            exit_code: None,
            runtimes: Vec::new(),
            late: Vec::new(),
            gone_after_exec: None,
            unprobed: Vec::new(),
            attached_at: Instant::now(),
            from_start,
            detached_at: None,
            execs: 0,
        }
    }
}

pub(crate) struct Session {
    probes: Probes,
    pub(crate) traced: Vec<Traced>,
    history: History,
    stacks: StackCache,
    symbolizer: Symbolizer,
    /// Names the JavaScript frames of targets running V8, from V8's own data.
    js: JsNamer,
    /// Which code of each target the probes walk by unwind table.
    unwinder: Unwinder,
    /// Whether [`Session::js`] is used at all (`--no-v8-frames`).
    v8_frames: bool,
    /// Targets' libuv thread pools, whose work is stitched to the code that queued it.
    pools: crate::probe::pool::Pools,
    /// Which objects serve each target's allocations, each file's symbols read once.
    allocators: allocator::Finder,
    /// The anonymous mappings of every target, from the mapping events.
    mappings: Mappings,
    /// The kernel's records of what processes map, fork and exec.
    sideband: Sideband,
    /// Records of processes not known yet, with when they were read.
    unknown: Vec<(Instant, Change)>,
    /// Command lines of followed processes, as learnt at fork and exec: a child that exits
    /// within a millisecond is still reported with its command.
    commands: HashMap<u32, String>,
    /// Processes that exec'd and were gone before their command line could be read: the next
    /// file the kernel says each mapped is its executable.
    exe_unknown: std::collections::HashSet<u32>,
    /// Processes whose command was last learnt from an exec record: once they are gone, that
    /// is newer than what was read while they lived (a child seen between its fork and exec).
    exec_commands: std::collections::HashSet<u32>,
    /// `run`'s command, held before its exec: that exec is the one it was started for.
    held_for_exec: std::collections::HashSet<u32>,
    /// Targets that exec'd, whose new image's allocators are to be probed.
    new_images: std::collections::HashSet<u32>,
    /// The call chain of every site seen.
    chains: StackMap<Vec<(u64, AddrKind)>>,
    /// What each site allocates, once its naming is final (see [`SiteNames`]).
    origins: StackMap<Origin>,
    /// Where the threads sharing each arena started, named once (see `naming`).
    start_names: naming::StartNames,
    /// Each site the probes count under, as the tracer counts it: one site per JavaScript call
    /// site, whatever tier ran it and wherever a collection moved its functions (see
    /// [`JsNamer::name`]).
    sites: StackMap<StackKey>,
    /// The probes' site whose frames show each merged site.
    shown_by: StackMap<StackKey>,
    /// Time a sample may spend naming new JavaScript sites.
    naming_budget: Duration,
    last: Snapshot,
    /// Time zero of every series.
    started: Instant,
    /// Samples taken so far.
    samples: u64,
    /// When the last sample was taken: the end of the traced window.
    detached: Option<Instant>,
    status: LiveStatus,
    budget: Option<Budget>,
    /// What the reader should know about the trace as a whole.
    notes: Vec<String>,
    /// Each live target's resident set and allocator account, read at most once a second.
    memory: crate::analyze::memory::Watch,
    /// The last sample is being taken: every reading is made.
    ending: bool,
    /// Watch mode's page-fault period; `None` when the allocator is probed.
    fault_period: Option<u64>,
    /// Watch mode: which recorded pages are resident, and in huge pages.
    residency: collect::pages::Residency,
}

/// SIGTERM and SIGINT, caught from before the first probe is attached: a signal that arrives
/// while attaching must end the trace cleanly, not kill the tracer.
pub(crate) struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    pub(crate) fn install() -> anyhow::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
        })
    }

    /// Waits for either signal.
    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

impl Session {
    pub(crate) fn new(options: &Options) -> anyhow::Result<Self> {
        let mut probes = Probes::load(options.limits, options.mode, options.follow)?;
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
            js: JsNamer::default(),
            unwinder: Unwinder::new(options.limits.unwind_rows),
            v8_frames: options.v8_frames,
            pools: crate::probe::pool::Pools::default(),
            allocators: allocator::Finder::default(),
            mappings: Mappings::default(),
            sideband: Sideband::open()?,
            unknown: Vec::new(),
            commands: HashMap::new(),
            exe_unknown: std::collections::HashSet::new(),
            new_images: std::collections::HashSet::new(),
            exec_commands: std::collections::HashSet::new(),
            held_for_exec: std::collections::HashSet::new(),
            chains: StackMap::default(),
            origins: StackMap::default(),
            start_names: naming::StartNames::new(),
            sites: StackMap::default(),
            shown_by: StackMap::default(),
            naming_budget: options.interval.mul_f64(NAMING_SHARE),
            last: Snapshot::default(),
            started: Instant::now(),
            samples: 0,
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
            memory: crate::analyze::memory::Watch::new(options.resident_trend),
            ending: false,
            fault_period: match options.mode {
                crate::probe::ProbeMode::Watch { period, .. } => Some(period.get()),
                _ => None,
            },
            residency: collect::pages::Residency::new(options.limits.pages),
        })
    }

    pub(crate) fn attach(
        &mut self,
        target: Target,
        allocator: &crate::process::Allocator,
    ) -> anyhow::Result<()> {
        let pid = target.pid;
        let index = self.attach_to(target, allocator)?;
        self.attach_runtimes(index, false);
        // A process held before its exec (`run`) gets its tables at the first sample, from the
        // image it exec'd.
        self.walk_tables_of(pid);
        Ok(())
    }

    /// Attaches to a process held before it execs (`run`), on every object the dynamic linker
    /// will load for it (`planned`, see `process::loader`): uprobes live on files, so they are
    /// armed the moment the program maps them, before its first instruction.
    pub(crate) fn attach_planned(
        &mut self,
        target: Target,
        planned: &[crate::process::Allocator],
    ) -> anyhow::Result<()> {
        let malloc = planned.iter().find(|a| a.roles.malloc).ok_or_else(|| {
            crate::process::ProcessError::NoAllocator {
                pid: target.pid,
                command: target.command.clone(),
            }
        })?;
        let pid = target.pid;
        let index = self.attach_to(target, malloc)?;
        self.traced[index].from_start = true;
        self.held_for_exec.insert(pid);
        for lib in planned.iter().filter(|a| !a.roles.malloc) {
            self.attach_runtime(index, lib, false);
        }
        Ok(())
    }

    /// Attaches the probes to `target`'s allocator and starts keeping what it does.
    fn attach_to(
        &mut self,
        target: Target,
        allocator: &crate::process::Allocator,
    ) -> anyhow::Result<usize> {
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
        self.commands.insert(target.pid, target.command.clone());
        self.name_js_of(target.pid);
        let index = self.traced.len();
        self.traced.push(Traced::new(target, attachment, false));
        // The window starts once the first targets are attached; after the first sample, time
        // runs on for every series alike.
        if self.samples == 0 {
            self.started = Instant::now();
        }
        Ok(index)
    }

    /// Makes every process the probes adopted since last look (children of targets, when
    /// following process trees) a target of its own, and remembers its mappings at once: a
    /// short-lived child's stacks can only be named from mappings seen while it lived.
    pub(crate) fn adopt_children(&mut self) {
        if !self.probes.follows() {
            return;
        }
        let Some(attachment) = self.traced.first().map(|t| t.attachment.clone()) else {
            return;
        };
        for pid in self.probes.registered() {
            if self.traced.iter().any(|t| t.target.pid == pid) {
                continue;
            }
            // A child gone before it was seen is still reported, with the command the kernel's
            // records gave it (its parent's, or its image's at exec).
            let target = Target::open(pid).unwrap_or_else(|_| {
                let mut gone = Target::gone(pid);
                if let Some(command) = self.commands.get(&pid) {
                    gone.command.clone_from(command);
                }
                gone
            });
            info!(pid, command = %target.command, "following a child process");
            // Its mappings came with the kernel's records, from its fork on.
            if !self.symbolizer.tracks(pid) {
                self.symbolizer.remember(pid);
            }
            self.name_js_of(pid);
            self.walk_tables_of(pid);
            // Made a target by the fork probe before it ran.
            self.traced
                .push(Traced::new(target, attachment.clone(), true));
        }
    }

    /// Probes `pid`'s libuv thread pool, and starts naming its JavaScript frames from V8's data
    /// when its executable has it, and tells the probes so (or that it no longer has, after an
    /// exec).
    fn name_js_of(&mut self, pid: u32) {
        // Watch mode places no uprobe: its page faults have no queued work to stitch.
        if self.probes.traps() {
            self.pools
                .probe(&mut self.probes, pid, self.symbolizer.mappings(pid));
        }
        if !self.v8_frames {
            return;
        }
        let layout = self.js.attach(pid);
        if let Err(err) = self.probes.set_v8(pid, layout) {
            warn!(pid, %err, "cannot give the probes V8's layout: JavaScript frames stay addresses");
        }
    }

    /// Tells the probes which of `pid`'s code to walk by its unwind table (see `unwind`).
    fn walk_tables_of(&mut self, pid: u32) {
        if let Err(err) = self.unwinder.install(&mut self.probes, pid) {
            warn!(pid, %err, "cannot give the probes unwind tables: frames without a frame pointer are lost");
        }
    }

    /// Says on stderr that the probes are in place: from here on, every allocation counts.
    pub(crate) fn announce(&self) {
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
    pub(crate) async fn run(
        &mut self,
        options: &Options,
        stop: &mut StopSignals,
        mut child: Option<&mut oneshot::Receiver<i32>>,
    ) -> anyhow::Result<(&'static str, Option<i32>)> {
        let mut interval = tokio::time::interval(options.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watch_targets = child.is_none();
        let mut sideband = SidebandPace::new();
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
                // In this order: the first sample (the interval's first tick is at once) is
                // taken, and its status line shown, even when the command is done already.
                biased;
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
                () = tokio::time::sleep_until(sideband.at()) => {
                    let busy = self.apply_sideband(false);
                    // `run`'s command and followed trees: short-lived processes.
                    sideband.next(busy, self.probes.follows() || !watch_targets);
                }
                () = stop.recv() => return Ok(("signal", None)),
                code = &mut child_exited => {
                    // The interval's first tick waits for a turn of tokio's timer driver, which
                    // a command of a few milliseconds can beat: it still gets its first sample
                    // and status line.
                    if self.samples == 0 {
                        let calls_before = total_alloc_calls(&self.last);
                        self.sample()?;
                        self.show_status(options, calls_before);
                    }
                    return Ok(("targets-exited", Some(code)));
                }
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
        // Naming the fastest grower symbolizes its stack: not for a line nobody sees (`--quiet`
        // in production, where it was a fifth of the tracer's CPU in watch mode).
        if !self.status.due() {
            return;
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let calls = total_alloc_calls(&self.last).saturating_sub(calls_before);
        let rate = calls as f64 / options.interval.as_secs_f64();
        let live: i64 = self.last.sites.values().map(|s| s.live_bytes).sum();
        // Blocks the probes hold an entry for (mappings are kept here, not in a map).
        let blocks: i64 = self
            .last
            .sites
            .iter()
            .filter(|(k, _)| !k.is_mapping())
            .map(|(_, s)| s.live_allocs)
            .sum();
        let top = self.fastest_grower().map(|(key, rate)| {
            let frames = self.site_names().frames(&key);
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
                "leaktrace: {elapsed:.0}s{duration}, {targets} target{}, live {} in {blocks} \
                 blocks, {:.0} allocs/s, fastest growing: {}",
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
    pub(crate) fn sample(&mut self) -> anyhow::Result<()> {
        self.apply_sideband(false);
        self.adopt_children();
        self.probe_new_images(self.detached.is_some());
        // Who is gone is settled before the maps are read, so that the snapshot holds every
        // gone target's final values. A target's series ends with its last sample alive: what
        // a runtime frees while exiting (Node's teardown frees every buffer) is not part of its
        // growth. Its final values still make the report's live bytes.
        for traced in &mut self.traced {
            if traced.detached_at.is_none() && !traced.target.is_alive() {
                // Its probes are left as they are: in follow mode they serve its relatives.
                traced.detached_at = Some(Instant::now());
            }
        }
        let mut snapshot = collect::snapshot(&self.probes)?;
        if let Some(period) = self.fault_period {
            self.residency
                .apply(&mut self.probes, &mut snapshot, period, self.ending)?;
        }
        self.merge_sites(&mut snapshot)?;
        self.probes
            .drain_map_events(|event| self.mappings.apply(&event));
        snapshot.add_mappings(&self.mappings);
        let at = self.started.elapsed().as_secs_f64();
        let over: std::collections::HashSet<u32> = self
            .traced
            .iter()
            .filter(|t| t.detached_at.is_some())
            .map(|t| t.target.pid)
            .collect();
        self.history
            .record_where(at, &snapshot, |key| !over.contains(&key.tgid));
        self.samples += 1;
        let ended = self.detached.is_some();
        let mut reads = Vec::new();
        for index in 0..self.traced.len() {
            let traced = &mut self.traced[index];
            if traced.detached_at.is_some() {
                // Gone now, or detached earlier; a target found gone just now still has its
                // mappings remembered from its last look.
                continue;
            }
            // An exec changes the command line (a shell becomes the program it runs).
            if let Some(command) = crate::process::command_line(traced.target.pid) {
                traced.target.command = command;
            } else if let Some(command) = self.commands.get(&traced.target.pid) {
                traced.target.command.clone_from(command);
            }
            let pid = traced.target.pid;
            let alive = traced.target.is_alive();
            self.notice_exec(index, &snapshot);
            // Mappings come from the kernel's records; a JIT's perf map grows on its own.
            self.symbolizer.refresh_perf_map(pid);
            // `run`'s command, until its exec is read from the kernel's records, is a copy of
            // the tracer: its mappings are the tracer's, not the command's.
            if alive && !ended && !self.held_for_exec.contains(&pid) {
                self.attach_runtimes(index, true);
                self.walk_tables_of(pid);
            }
            if alive {
                reads.push((pid, self.traced[index].attachment.allocator.name));
            }
        }
        self.read_new_stacks(&snapshot)?;
        // After the new stacks are read: a region's site is named by its stack.
        for (pid, allocator) in reads {
            let mut names = SiteNames {
                origins: &mut self.origins,
                chains: &self.chains,
                symbolizer: &mut self.symbolizer,
                js: &self.js,
            };
            let mappings = &self.mappings;
            self.memory.sample(pid, allocator, at, self.ending, || {
                mappings
                    .accessible(pid)
                    .filter(|(_, _, key)| names.origin(key) == Origin::V8Heap)
                    .map(|(start, end, _)| (start, end))
                    .collect()
            });
        }
        self.last = snapshot;
        Ok(())
    }

    /// Whether process trees are followed (their short-lived children need every record of
    /// the kernel's at once).
    pub(crate) fn follows(&self) -> bool {
        self.probes.follows()
    }

    /// The probes' totals at the last sample.
    pub(crate) fn last(&self) -> &Snapshot {
        &self.last
    }

    /// The last light readings of one target's resident set (see `Options::resident_trend`).
    pub(crate) fn resident_trend(&self, pid: u32) -> Vec<crate::analyze::memory::MemoryPoint> {
        self.memory.trend(pid)
    }

    /// Whether one of `pid`'s stacks has a `leak` verdict on its series so far.
    pub(crate) fn has_leak(&self, pid: u32) -> bool {
        self.history
            .series_of(pid)
            .any(crate::analyze::growth::is_leak)
    }

    /// Holds the probes' syscall tracepoints only while a target is attached (see
    /// [`crate::probe::Probes::park_syscalls`]).
    pub(crate) fn park_syscalls(&mut self) {
        self.probes.park_syscalls();
    }

    /// Time the kernel has spent running the probes' programs, while BPF run-time statistics
    /// are enabled.
    pub(crate) fn run_time(&self) -> Duration {
        self.probes.run_time()
    }

    /// Seconds from time zero of the series to `at`.
    pub(crate) fn seconds_at(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64()
    }

    /// Detaches the probes from one target, keeping what was gathered about it: the process
    /// exited, or the agent stops tracing it.
    pub(crate) fn detach(&mut self, pid: u32) {
        self.probes.detach(pid);
        if let Some(traced) = self.traced.iter_mut().find(|t| t.target.pid == pid)
            && traced.detached_at.is_none()
        {
            traced.detached_at = Some(Instant::now());
        }
    }

    /// Detaches from one target and drops everything known about it, in the kernel's maps and
    /// here, so that a long-running agent holds nothing for processes long gone.
    pub(crate) fn forget(&mut self, pid: u32) {
        self.detach(pid);
        self.traced.retain(|t| t.target.pid != pid);
        self.pools.forget(pid);
        // The probes' keys of mapping sites: those sites never pass through `merge_sites`.
        let mapping_sites: Vec<StackKey> = self
            .last
            .sites
            .keys()
            .filter(|k| k.is_mapping())
            .copied()
            .collect();
        self.sites.retain(|k, _| k.tgid != pid);
        self.shown_by.retain(|k, _| k.tgid != pid);
        match self.probes.forget(pid, &mapping_sites) {
            Ok(orphans) => self.stacks.forget(&orphans.stacks, &orphans.js_ids),
            Err(err) => warn!(pid, %err, "cannot drop this target's entries from the probes' maps"),
        }
        self.chains.retain(|k, _| k.tgid != pid);
        self.origins.retain(|k, _| k.tgid != pid);
        self.last.sites.retain(|k, _| k.tgid != pid);
        self.last.counters.remove(&pid);
        self.history.forget(pid);
        self.symbolizer.forget(pid);
        self.js.forget(pid);
        self.unwinder.forget(pid);
        self.mappings.forget(pid);
        self.memory.forget(pid);
        self.residency.forget(pid);
        self.commands.remove(&pid);
        self.exec_commands.remove(&pid);
        self.exe_unknown.remove(&pid);
        self.new_images.remove(&pid);
        self.held_for_exec.remove(&pid);
    }

    /// What the reader should know about the trace as a whole, losses of whole processes
    /// included.
    fn trace_notes(&self) -> Vec<String> {
        let mut notes = self.notes.clone();
        let lost = self.sideband.lost();
        if lost > 0 {
            notes.push(format!(
                "{lost} of the kernel's mapping records were lost (a ring was full): frames in \
                 files mapped then may be unnamed"
            ));
        }
        let missed = self.probes.forks_missed();
        if missed > 0 {
            notes.push(format!(
                "{missed} child process{} of the traced ones went untraced: the target table \
                 ({} processes) was full",
                if missed == 1 { "" } else { "es" },
                leaktrace_common::MAX_TARGETS
            ));
        }
        notes.extend(self.unwinder.stats().notes());
        notes.extend(self.probes.mapping_note());
        notes
    }

    /// A target's command line: as last read while it lived, or, for a child gone before it
    /// could be looked at, as the kernel's records gave it (its parent's, or its image's).
    fn command_of(&self, traced: &Traced) -> String {
        let pid = traced.target.pid;
        let learnt = traced.target.is_gone_placeholder()
            || (self.exec_commands.contains(&pid) && !traced.target.is_alive());
        match self.commands.get(&pid) {
            Some(command) if learnt => command.clone(),
            _ => traced.target.command.clone(),
        }
    }

    /// What the reader of the report should know about one target.
    fn notes(&self, traced: &Traced) -> Vec<String> {
        let is_node = traced
            .exe
            .as_ref()
            .and_then(|e| e.file_name())
            .is_some_and(|n| n.to_string_lossy().starts_with("node"));
        let pid = traced.target.pid;
        let mut notes = self.js.notes(pid);
        notes.extend(self.pools.notes(pid).iter().cloned());
        notes.extend(self.residency.problem(pid).map(|why| {
            format!(
                "which of its populated pages stay resident cannot be read ({why}): its stacks' \
                 resident bytes are 0, their populated pages and faults are exact; run leaktrace \
                 as root, or add CAP_DAC_READ_SEARCH (its /proc/PID/pagemap is its owner's \
                 alone)"
            )
        }));
        if let Some(missed) = &traced.gone_after_exec {
            let missed: Vec<String> = missed.iter().map(|p| p.display().to_string()).collect();
            notes.push(format!(
                "it exec'd a new image and exited before that image's allocators could be \
                 probed: what it allocated through {} is missed",
                missed.join(", ")
            ));
        }
        for (path, why) in &traced.unprobed {
            notes.push(format!(
                "{} could not be probed ({why}): what it allocated through it is missed",
                path.display()
            ));
        }
        for (path, at) in &traced.late {
            notes.push(format!(
                "{} was probed only at {at:.1}s, once the process had loaded it (dlopen, or an \
                 exec leaktrace could not foresee): what it allocated before is missed",
                path.display()
            ));
        }
        if is_node && !self.js.names(pid) && !self.symbolizer.has_perf_map(pid) {
            notes.push(format!(
                "Node.js without a perf map (/tmp/perf-{pid}.map) or usable V8 data: JavaScript \
                 frames are unnamed. Start node with --perf-basic-prof (and \
                 --interpreted-frames-native-stack for interpreted functions) to name them."
            ));
        }
        notes
    }

    /// Reads the frames of any stack not seen before. They are named only when the report is
    /// built, and only for the stacks it shows: the files they need are kept open meanwhile.
    fn read_new_stacks(&mut self, snapshot: &Snapshot) -> anyhow::Result<()> {
        for key in snapshot.sites.keys() {
            if let std::collections::hash_map::Entry::Vacant(slot) = self.chains.entry(*key) {
                // A merged site is shown by one of the probes' stacks.
                let raw = self.shown_by.get(key).copied().unwrap_or(*key);
                let ips = self.stacks.frames(&self.probes, raw.stack)?.to_vec();
                self.symbolizer.remember_queuing(raw.tgid, &ips);
                // Mapping sites come from the mapping events, not through `merge_sites`: their
                // JavaScript frames are named here, at once too.
                if raw.is_mapping()
                    && raw.js_id != 0
                    && self.js.names(raw.tgid)
                    && self.js.frames(raw.tgid, raw.stack, raw.js_id).is_none()
                {
                    let js =
                        queued::place_js(self.stacks.js_frames(&self.probes, raw.js_id)?, &ips);
                    self.js
                        .name(raw.tgid, raw.stack, raw.js_id, &js, &ips, &ips);
                }
                slot.insert(call_chain(&ips));
            }
        }
        Ok(())
    }

    /// Ends the traced window: takes the last sample, then detaches. Sampling first keeps the
    /// window exact; detaching can take a while (the kernel waits out a grace period per probe).
    pub(crate) fn end_trace(&mut self) -> anyhow::Result<()> {
        self.status.finish();
        if self.detached.is_none() {
            self.ending = true;
            self.apply_sideband(true);
            self.probe_new_images(true);
            self.sample()?;
            self.detached = Some(Instant::now());
            self.probes.detach_all();
        }
        Ok(())
    }

    /// Ends the trace (if not yet ended) and builds the report.
    pub(crate) fn finish(
        mut self,
        options: &Options,
        ended_by: &'static str,
    ) -> anyhow::Result<Report> {
        self.end_trace()?;
        Ok(self.report(options, None, ended_by))
    }

    /// The session's site names, borrowed for one use.
    fn site_names(&mut self) -> SiteNames<'_> {
        SiteNames {
            origins: &mut self.origins,
            chains: &self.chains,
            symbolizer: &mut self.symbolizer,
            js: &self.js,
        }
    }

    /// The report so far, of every target or of one: the session goes on.
    pub(crate) fn report(
        &mut self,
        options: &Options,
        only: Option<u32>,
        ended_by: &'static str,
    ) -> Report {
        let now = Instant::now();
        let chosen: Vec<&Traced> = self
            .traced
            .iter()
            .filter(|t| only.is_none_or(|pid| t.target.pid == pid))
            .collect();
        let mut memory: HashMap<u32, _> = HashMap::new();
        for t in &chosen {
            let pid = t.target.pid;
            if let Some(mut m) = self.memory.report(pid) {
                naming::name_thread_shares(
                    &mut self.symbolizer,
                    &mut self.start_names,
                    pid,
                    &mut m.malloc,
                );
                memory.insert(pid, m);
            }
        }
        let targets = chosen
            .iter()
            .map(|t| TargetSummary {
                pid: t.target.pid,
                ns_pid: t.target.ns_pid,
                command: self.command_of(t),
                allocator: t.attachment.allocator.path.display().to_string(),
                allocator_name: t.attachment.allocator.name.to_owned(),
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
                from_start: t.from_start,
                memory: memory.remove(&t.target.pid),
                exited_at_s: t
                    .detached_at
                    .filter(|_| !t.target.is_alive())
                    .map(|at| self.seconds_at(at)),
            })
            .collect();
        // The traced window: the whole session's, or one target's from attach to detach.
        let end = self.detached.unwrap_or(now);
        let (from, to) = match (only, chosen.first()) {
            (Some(_), Some(t)) => (
                t.attached_at.max(self.started),
                t.detached_at.unwrap_or(end),
            ),
            _ => (self.started, end),
        };
        let last = match only {
            Some(pid) => self.last.only(pid),
            None => self.last.clone(),
        };
        let notes = self.trace_notes();
        let mut names = SiteNames {
            origins: &mut self.origins,
            chains: &self.chains,
            symbolizer: &mut self.symbolizer,
            js: &self.js,
        };
        build::build(build::Inputs {
            targets,
            last: &last,
            history: &self.history,
            time_zero_s: from.saturating_duration_since(self.started).as_secs_f64(),
            names: &mut names,
            duration_s: to.saturating_duration_since(from).as_secs_f64(),
            interval_s: options.interval.as_secs_f64(),
            sample_bytes: self
                .budget
                .as_ref()
                .map_or(options.sample_bytes, Budget::sample_bytes)
                .unwrap_or(0),
            notes,
            ended_by,
            top: options.top,
            fault_period: self.fault_period,
        })
    }
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
/// address), then return addresses. Past the marker of queued work (or of its callback), the
/// queuing function is an exact address too: the probe that queued the work was at its entry.
fn call_chain(ips: &[u64]) -> Vec<(u64, AddrKind)> {
    ips.iter()
        .enumerate()
        .map(|(i, &ip)| {
            let after_marker = i > 0 && leaktrace_common::stitched_tid(ips[i - 1]).is_some();
            (
                ip,
                if i == 0 || after_marker {
                    AddrKind::Exact
                } else {
                    AddrKind::Return
                },
            )
        })
        .collect()
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
        let marker = leaktrace_common::queued_marker(7);
        assert_eq!(
            call_chain(&[0x10, marker, 0x30, 0x40])[2..],
            [(0x30, AddrKind::Exact), (0x40, AddrKind::Return)]
        );
    }
}
