//! Tiered mode's exact windows: a session of allocator probes of its own, into which a watched
//! target is attached while its tier says so and from which it is dropped (links, kernel map
//! entries and all) when the window closes. What each window found is kept and served until the
//! next one.

use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tracing::{info, warn};

use super::{
    tier::{NodeCredit, Settings, Step, TargetTier},
    view::{TierView, WindowView},
    watch_cost::WatchCost,
};
use crate::{
    budget,
    process::{
        Target,
        stat::{self, thread_cpu_time},
    },
    report::{self, Report},
    session::{Options, Session},
};

/// How often open windows are sampled and charged: their growth verdicts need points, and a
/// costly window must not run long past its budget.
pub const TICK: Duration = Duration::from_secs(1);

/// Stacks besides the suspects kept in a closed window's report.
const CLOSED_TOP: usize = 20;

/// What one window found.
struct Found {
    view: WindowView,
    /// Its JSON report.
    json: String,
}

pub(super) struct Windows {
    session: Session,
    options: Options,
    settings: Settings,
    node: NodeCredit,
    tiers: HashMap<u32, TargetTier>,
    /// Why each target's resident set grows, as of the last watch sample.
    growth: HashMap<u32, Option<String>>,
    /// The last closed window of each target.
    found: HashMap<u32, Found>,
    /// Most live blocks a window may track for one target.
    max_live_allocs: u64,
    /// The programs' run time at the last tick.
    run_time: Duration,
    /// What watching costs each target, charged with its windows.
    watch_cost: WatchCost,
    /// Kernel BPF run-time statistics are on while this is held.
    _stats: OwnedFd,
}

impl Windows {
    /// Loads the allocator probes (no target yet: they cost nothing until a window opens; their
    /// syscall tracepoints, which would fire for every process of the node, are attached only
    /// while a window is open). `watch_run_time` is the watch's programs' run time so far, from
    /// which watching is charged.
    pub fn new(
        options: Options,
        settings: Settings,
        max_live_allocs: u64,
        watch_run_time: Duration,
    ) -> anyhow::Result<Self> {
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics for the exact windows' budget")?;
        let mut session = Session::new(&options)?;
        session.park_syscalls();
        Ok(Self {
            session,
            options,
            settings,
            node: NodeCredit::new(settings.node_max_overhead, Instant::now()),
            tiers: HashMap::new(),
            growth: HashMap::new(),
            found: HashMap::new(),
            max_live_allocs,
            run_time: Duration::ZERO,
            watch_cost: WatchCost::new(watch_run_time),
            _stats: stats,
        })
    }

    /// Starts keeping the tier of a newly watched target.
    pub fn watch(&mut self, pid: u32) {
        let stat = stat::read(pid);
        let tier = TargetTier::new(
            &self.settings,
            Instant::now(),
            stat.map(|s| s.age()),
            stat.map(|s| s.cpu_time()),
        );
        self.tiers.insert(pid, tier);
    }

    /// Leaves `cpu` out of the watch's cost: time spent looking for new processes and
    /// attaching to them.
    pub fn not_watching(&mut self, cpu: Duration) {
        self.watch_cost.exclude(cpu);
    }

    /// Charges what watching cost each target since the last call, from the watch's programs'
    /// run time now and each watched target's page faults so far (see [`WatchCost`]).
    pub fn charge_watch(&mut self, run_time: Duration, faults: &HashMap<u32, u64>) {
        for (pid, (programs, agent)) in self.watch_cost.since_last(run_time, faults) {
            if let Some(tier) = self.tiers.get_mut(&pid) {
                tier.charge_watch(programs, agent, &mut self.node);
            }
        }
    }

    /// Tells why `pid`'s resident set grows (`None`: it does not), from the watch's sample.
    pub fn set_growth(&mut self, pid: u32, growth: Option<String>) {
        self.growth.insert(pid, growth);
    }

    /// Whether any window is open.
    pub fn any_open(&self) -> bool {
        self.tiers.values().any(TargetTier::in_window)
    }

    /// Reads the kernel's records of mappings, as the watch's session does: read between
    /// windows too, the rings do not overflow and a window's report counts no lost record.
    /// Returns whether the read was busy (see `Session::apply_sideband`).
    pub fn apply_sideband(&mut self) -> bool {
        self.session.apply_sideband(false)
    }

    /// Samples and charges the open windows, then opens and closes windows as the tiers say.
    /// Returns whether any window opened or closed.
    pub fn tick(&mut self) -> anyhow::Result<bool> {
        let now = Instant::now();
        self.node.refill(now);
        let mut over_cap = Vec::new();
        // A failed read is reported once the tiers have stepped: windows still close on time.
        let mut sampled = Ok(());
        if self.any_open() {
            sampled = self.session.sample();
        }
        if self.any_open() && sampled.is_ok() {
            let run_time = self.session.run_time();
            let programs = run_time.saturating_sub(self.run_time).as_secs_f64();
            self.run_time = run_time;
            let last = self.session.last();
            let traps: HashMap<u32, u64> = last
                .counters
                .iter()
                .map(|(&pid, counters)| (pid, budget::traps(counters)))
                .collect();
            let mut live: HashMap<u32, i64> = HashMap::new();
            for (key, stats) in last.sites.iter().filter(|(k, _)| !k.is_mapping()) {
                *live.entry(key.tgid).or_default() += stats.live_allocs;
            }
            // The programs' time is the kernel's for all of them: shared out by traps.
            let all = traps.values().sum::<u64>().max(1) as f64;
            for (&pid, tier) in self.tiers.iter_mut().filter(|(_, t)| t.in_window()) {
                let count = traps.get(&pid).copied().unwrap_or(0);
                let share = programs * count as f64 / all;
                tier.charge(count, share, &mut self.node);
                if live.get(&pid).copied().unwrap_or(0) as u64 > self.max_live_allocs {
                    over_cap.push(pid);
                }
            }
        }
        let mut steps = Vec::new();
        for (&pid, tier) in &mut self.tiers {
            let growth = self.growth.get(&pid).cloned().flatten();
            let session = &self.session;
            let step = if over_cap.contains(&pid)
                || (sampled.is_ok()
                    && tier.found_leak(now, &self.settings, || session.has_leak(pid)))
            {
                Step::Close
            } else {
                let cpu = stat::read(pid).map(|s| s.cpu_time());
                tier.step(now, cpu, growth.as_deref(), &self.node, &self.settings)
            };
            if step != Step::Keep {
                steps.push((pid, step));
            }
        }
        let changed = !steps.is_empty();
        for (pid, step) in steps {
            match step {
                Step::Open => self.open(pid, now),
                Step::Close => {
                    let why = over_cap.contains(&pid).then(|| {
                        format!(
                            "watched: the last exact window closed over \
                             --max-live-allocs-per-target ({} live blocks)",
                            self.max_live_allocs
                        )
                    });
                    self.close(pid, now, why);
                }
                Step::Keep => {}
            }
        }
        sampled.map(|()| changed)
    }

    fn open(&mut self, pid: u32, now: Instant) {
        let cpu = thread_cpu_time();
        let attached = Target::open(pid)
            .and_then(|target| Ok((target.allocator()?, target)))
            .map_err(anyhow::Error::from)
            .and_then(|(allocator, target)| self.session.attach(target, &allocator));
        // Opening is the agent's work for this target: charged to the node's budget as its
        // own, and left out of the watch's cost, which shares the agent's time among targets.
        let attaching = thread_cpu_time().saturating_sub(cpu);
        self.watch_cost.exclude(attaching);
        let Some(tier) = self.tiers.get_mut(&pid) else {
            return;
        };
        tier.charge_agent(attaching.as_secs_f64(), &mut self.node);
        match attached {
            Ok(()) => info!(
                pid,
                why = %tier.why,
                attach_cpu_seconds = attaching.as_secs_f64(),
                "exact window opened"
            ),
            Err(err) => {
                let why = format!("watched: an exact window could not open: {err:#}");
                warn!(pid, "{why}");
                tier.closed(now, &self.settings, Some(why));
                self.session.forget(pid);
            }
        }
    }

    /// Keeps what the window found and drops the target from the windows' session: its probes
    /// detached, its kernel map entries removed.
    fn close(&mut self, pid: u32, now: Instant, why: Option<String>) {
        let Some(tier) = self.tiers.get_mut(&pid) else {
            return;
        };
        let cpu = thread_cpu_time();
        let age = tier.window_age(now).unwrap_or_default();
        let spent = tier.window_spent().unwrap_or_default();
        tier.closed(now, &self.settings, why);
        let why = tier.why.clone();
        // Detached before the report is made: naming its stacks takes a while, and the target
        // would trap all that time.
        self.session.detach(pid);
        let report = self.report_of(pid, "window closed", Some(CLOSED_TOP));
        let view = window_view(&report, age, false, &why);
        let json = String::from_utf8_lossy(&report::render(&report, report::Format::Json, None))
            .into_owned();
        self.session.forget(pid);
        info!(
            pid,
            seconds = age.as_secs(),
            cpu_seconds = spent,
            close_cpu_seconds = thread_cpu_time().saturating_sub(cpu).as_secs_f64(),
            leak_suspects = view.leak_suspects,
            top_suspect = view.top_suspect.as_deref().unwrap_or(""),
            why = %why,
            "exact window closed"
        );
        self.found.insert(pid, Found { view, json });
    }

    /// A window's report, with its suspects and `top` stacks more.
    fn report_of(&mut self, pid: u32, ended_by: &'static str, top: Option<usize>) -> Report {
        let mut options = self.options.clone();
        options.top = top;
        self.session.report(&options, Some(pid), ended_by)
    }

    /// The target exited: its open window, if any, is dropped (what it found is kept).
    pub fn gone(&mut self, pid: u32) {
        if self.tiers.get(&pid).is_some_and(TargetTier::in_window) {
            self.close(
                pid,
                Instant::now(),
                Some("exited during an exact window".into()),
            );
        }
    }

    /// The target is forgotten: everything about it goes.
    pub fn forget(&mut self, pid: u32) {
        self.gone(pid);
        self.tiers.remove(&pid);
        self.growth.remove(&pid);
        self.found.remove(&pid);
    }

    /// Detaches every open window (the agent stops).
    pub fn detach_all(&mut self) {
        let open: Vec<u32> = self
            .tiers
            .iter()
            .filter(|(_, t)| t.in_window())
            .map(|(&pid, _)| pid)
            .collect();
        for pid in open {
            self.session.detach(pid);
        }
    }

    /// The tier of one target, for the published view.
    pub fn view(&mut self, pid: u32) -> Option<TierView> {
        let now = Instant::now();
        let tier = self.tiers.get(&pid)?;
        let (age, why, windows, spent, watch, agent, average) = (
            tier.window_age(now),
            tier.why.clone(),
            tier.windows,
            tier.spent,
            tier.watch_spent,
            tier.agent_spent,
            tier.average_percent(),
        );
        let window = match age {
            Some(age) => Some(window_view(
                &self.report_of(pid, "running", Some(0)),
                age,
                true,
                &why,
            )),
            None => self.found.get(&pid).map(|f| f.view.clone()),
        };
        Some(TierView {
            tier: if age.is_some() { "window" } else { "watch" },
            why,
            windows,
            overhead_cpu_seconds: spent,
            watch_cpu_seconds: watch,
            agent_cpu_seconds: agent,
            average_overhead_percent: average,
            max_overhead_percent: self.settings.max_overhead,
            window,
        })
    }

    /// The JSON report of the open window of `pid`, else of its last one.
    pub fn report(&mut self, pid: u32, top: Option<usize>) -> Option<String> {
        if self.tiers.get(&pid).is_some_and(TargetTier::in_window) {
            let report = self.report_of(pid, "running", top);
            return Some(
                String::from_utf8_lossy(&report::render(&report, report::Format::Json, top))
                    .into_owned(),
            );
        }
        self.found.get(&pid).map(|f| f.json.clone())
    }

    /// CPU seconds charged to the node's budget (every target's windows and watching, the
    /// agent's own work), the budget, and the windows open.
    pub fn node_view(&self) -> (f64, f64, usize) {
        (
            self.tiers.values().map(|t| t.spent + t.agent_spent).sum(),
            self.settings.node_max_overhead,
            self.tiers.values().filter(|t| t.in_window()).count(),
        )
    }
}

fn window_view(report: &Report, age: Duration, open: bool, why: &str) -> WindowView {
    let suspects = super::suspects(report);
    let totals = report
        .targets
        .first()
        .map(|t| t.totals.clone())
        .unwrap_or_default();
    WindowView {
        open,
        seconds: age.as_secs_f64(),
        ended: (!open).then(|| why.to_owned()),
        live_bytes: totals.live_bytes,
        live_allocs: totals.live_allocs,
        leak_suspects: suspects.count,
        top_suspect: suspects.top,
        top_suspect_thread: suspects.thread,
        top_suspect_bytes_per_s: suspects.bytes_per_s,
    }
}
