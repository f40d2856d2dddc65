//! `leaktrace agent`: one tracing session that lives as long as the agent, into which processes
//! are attached as the rules select them and from which they are dropped after they exit.
//!
//! One task owns the session (the probes, the series, the symbolizer): it scans /proc, samples,
//! and answers report requests. After each sample it publishes a read-only view that the HTTP
//! server reads without ever touching the session, so a slow scrape cannot stall tracing, and
//! nothing a caller sends can start, stop or change it.

pub mod config;
mod discover;
mod http;
mod metrics;
pub mod pods;
pub mod select;
mod tier;
mod view;
mod watch_cost;
mod windows;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use leaktrace_common::Counter;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use self::{
    config::{AgentConfig, AgentMode, KubeMode},
    discover::Seen,
    pods::Pods,
    select::Decision,
    view::{AgentView, KubeView, PlacementView, Published, TargetView},
    windows::Windows,
};
use crate::{
    analyze::growth,
    doctor, preflight,
    process::{Target, cgroup::Placement, stat::thread_cpu_time},
    report::{self, Report, model::Frame},
    session::{Options, Session, StopSignals},
};

/// Points of each target's total live bytes kept for its growth rate.
const TOTAL_POINTS: usize = 64;
/// How long a selected process that cannot be attached to is tried again: long enough for a
/// loader on a loaded machine, short enough that a process that will never do is said soon.
const ATTACH_RETRY: Duration = Duration::from_secs(3);

/// A question from the HTTP server, answered by the task that owns the session.
pub(crate) enum Request {
    /// The JSON report of one target, `None` when it is not (or no longer) traced.
    Report {
        pid: u32,
        top: Option<usize>,
        reply: oneshot::Sender<Option<String>>,
    },
    /// The JSON report of a target's open exact window, else its last; `None` when it has had
    /// none.
    Window {
        pid: u32,
        top: Option<usize>,
        reply: oneshot::Sender<Option<String>>,
    },
}

/// One process the agent traces or has traced.
struct Tracked {
    start_time: u64,
    exe: PathBuf,
    placement: Placement,
    attached_at: Instant,
    /// When it was seen gone; it is forgotten `grace` later.
    exited_at: Option<Instant>,
    capped: bool,
    /// Its total live bytes at recent samples.
    totals: VecDeque<(f64, i64)>,
}

/// Counts of what the agent did, for its own metrics.
#[derive(Default)]
struct Tally {
    scans: u64,
    samples: u64,
    refused_max_targets: u64,
    capped: u64,
    attach_failures: u64,
    failed_samples: u64,
}

struct Agent {
    config: AgentConfig,
    options: Options,
    session: Session,
    tracked: HashMap<u32, Tracked>,
    /// Processes decided against, by PID, start time and executable (an exec may change the
    /// answer): never looked at again.
    passed_over: HashSet<(u32, u64, PathBuf)>,
    /// What the scans of /proc read of each process, kept from one scan to the next.
    scanner: discover::Scanner,
    /// Matching processes refused for the target cap, counted once each.
    refused: HashSet<(u32, u64)>,
    /// Matching processes that could not be attached to yet, since when: see [`ATTACH_RETRY`].
    retrying: HashMap<(u32, u64), Instant>,
    pods: Option<Pods>,
    /// Tiered mode's exact windows.
    windows: Option<Windows>,
    tally: Tally,
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    preflight::check()?;
    doctor::gate(None, false).map_err(|line| anyhow::anyhow!("refusing to trace: {line}"))?;
    let mut stop = StopSignals::install()?;
    // Listening first: a taken port is an error before anything is attached.
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let pods = match (config.kubernetes, in_cluster()) {
        (KubeMode::Off, _) | (KubeMode::Auto, false) => None,
        (KubeMode::On, _) | (KubeMode::Auto, true) => {
            Some(pods::watch(config.node_name.as_deref()).await?)
        }
    };
    if pods.is_none() && config.selector.needs_pods() {
        anyhow::bail!(
            "the namespace, label and annotation rules need the Kubernetes API: run in a \
             cluster, set KUBECONFIG, or pass --kubernetes on"
        );
    }
    let options = Options {
        duration: None,
        interval: config.interval,
        top: None,
        limits: config.limits,
        mode: match config.mode {
            AgentMode::Exact => crate::probe::ProbeMode::Trace,
            AgentMode::Watch | AgentMode::Tiered => crate::probe::ProbeMode::Watch {
                period: std::num::NonZeroU64::new(config.fault_period)
                    .expect("the configuration checks its period is at least 1"),
                mapping: if config.syscall_tracepoints {
                    crate::probe::MappingProbes::Tracepoints
                } else {
                    crate::probe::MappingProbes::Fentry
                },
            },
        },
        quiet: true,
        sample_bytes: config.sample_bytes,
        max_overhead: None,
        follow: false,
        node_perf_maps: false,
        v8_frames: true,
        resident_trend: config.mode == AgentMode::Tiered,
    };
    let session = Session::new(&options)?;
    let windows = match config.mode {
        AgentMode::Tiered => Some(Windows::new(
            Options {
                mode: crate::probe::ProbeMode::Trace,
                interval: windows::TICK,
                // Windows are short: every allocation in them counts (sampling would not make
                // them cheaper: measured on the bench's service, a window sampled at 64 KiB was
                // charged 0.85 CPU-seconds a second against 0.89 unsampled, nearly all of it
                // the traps, which every call pays sampled or not).
                sample_bytes: None,
                // The trigger reads the watch's trend, not the windows'.
                resident_trend: false,
                ..options.clone()
            },
            tier::Settings {
                window: config.window,
                warm_up: config.warm_up,
                max_overhead: config.max_overhead,
                node_max_overhead: config.node_max_overhead,
            },
            config.max_live_allocs_per_target,
            session.run_time(),
        )?),
        _ => None,
    };
    let (published_tx, published_rx) = watch::channel(Arc::new(Published::default()));
    let (request_tx, mut requests) = mpsc::channel(16);
    let mut server = http::spawn(
        listener,
        config.connection_lifetime,
        published_rx,
        request_tx,
    )?;
    info!(
        listen = %config.listen,
        exe = ?config.selector.exe_patterns(),
        kubernetes = pods.is_some(),
        sample_bytes = config.sample_bytes.unwrap_or(0),
        "agent started"
    );
    let mut agent = Agent {
        config,
        options,
        session,
        tracked: HashMap::new(),
        passed_over: HashSet::new(),
        scanner: discover::Scanner::default(),
        refused: HashSet::new(),
        retrying: HashMap::new(),
        pods,
        windows,
        tally: Tally::default(),
    };
    let mut scan = tokio::time::interval(agent.config.scan_interval);
    let mut sample = tokio::time::interval(agent.config.interval);
    let mut sideband = crate::session::SidebandPace::new();
    let mut window_tick = tokio::time::interval(windows::TICK);
    for timer in [&mut scan, &mut sample, &mut window_tick] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = scan.tick() => agent.scan(),
            () = tokio::time::sleep_until(sideband.at()) => {
                let mut busy = agent.session.apply_sideband(false);
                if let Some(windows) = agent.windows.as_mut() {
                    busy |= windows.apply_sideband();
                }
                sideband.next(busy, agent.session.follows());
            }
            _ = window_tick.tick(), if agent.windows.is_some() => {
                match agent.windows.as_mut().map(Windows::tick) {
                    Some(Ok(true)) => {
                        published_tx.send_replace(Arc::new(agent.publish()));
                    }
                    Some(Err(err)) => {
                        agent.tally.failed_samples += 1;
                        warn!(%err, "sampling the exact windows failed");
                    }
                    _ => {}
                }
            }
            _ = sample.tick() => match agent.sample() {
                Ok(()) => {
                    published_tx.send_replace(Arc::new(agent.publish()));
                }
                // A failed read of the probes' maps is not worth stopping every node's tracing
                // for: the last numbers stay served, the next sample tries again, and the
                // failures are counted.
                Err(err) => {
                    agent.tally.failed_samples += 1;
                    warn!(%err, "sampling the probes' maps failed; the last numbers stay served");
                }
            },
            Some(request) = requests.recv() => agent.answer(request),
            () = stop.recv() => break,
            result = &mut server => {
                match result {
                    Ok(result) => result.context("the HTTP server stopped")?,
                    Err(_) => anyhow::bail!("the HTTP server's thread ended"),
                }
                break;
            }
        }
    }
    info!("agent stopping; detaching from every target");
    let pids: Vec<u32> = agent.tracked.keys().copied().collect();
    for pid in pids {
        agent.session.detach(pid);
    }
    if let Some(windows) = agent.windows.as_mut() {
        windows.detach_all();
    }
    Ok(())
}

/// Whether this process runs in a Kubernetes pod, or was given a kubeconfig.
fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("KUBECONFIG").is_some()
}

impl Agent {
    /// Attaches to every new process the rules select. Its CPU time is left out of what
    /// watching costs the targets (see `watch_cost`).
    fn scan(&mut self) {
        let cpu = thread_cpu_time();
        self.discover();
        if let Some(windows) = self.windows.as_mut() {
            windows.not_watching(thread_cpu_time().saturating_sub(cpu));
        }
    }

    fn discover(&mut self) {
        self.tally.scans += 1;
        let pods_known = self.pods.as_ref().is_none_or(Pods::synced);
        let tracked = &self.tracked;
        let passed_over = &self.passed_over;
        let fresh = self.scanner.scan(
            |pid| tracked.contains_key(&pid),
            |pid, start_time, exe| passed_over.contains(&(pid, start_time, exe.to_path_buf())),
        );
        for seen in fresh {
            let key = (seen.pid, seen.start_time, seen.exe.clone());
            let pod = self.pod_of(&seen.cgroup);
            match self.config.selector.decide(
                &seen.exe,
                &seen.cgroup.path,
                pod.as_ref(),
                pods_known,
            ) {
                Decision::Skip => {
                    self.passed_over.insert(key);
                }
                Decision::Undecided => {}
                Decision::Trace => {
                    if !self.try_attach(&seen) {
                        self.passed_over.insert(key);
                    }
                }
            }
        }
        // Processes gone since: their entries would only grow the set.
        if self.passed_over.len() > 4 * 65536 {
            self.passed_over.clear();
        }
        self.retrying
            .retain(|_, since| since.elapsed() < ATTACH_RETRY * 2);
    }

    /// Attaches to one selected process; `false` when it must not be tried again.
    fn try_attach(&mut self, seen: &Seen) -> bool {
        let traced = self
            .tracked
            .values()
            .filter(|t| t.exited_at.is_none() && !t.capped)
            .count();
        if traced >= self.config.max_targets {
            if self.refused.insert((seen.pid, seen.start_time)) {
                self.tally.refused_max_targets += 1;
                warn!(
                    pid = seen.pid,
                    exe = %seen.exe.display(),
                    max_targets = self.config.max_targets,
                    "not traced: --max-targets processes are traced already"
                );
            }
            // Tried again at the next scan: a slot may free up.
            return true;
        }
        let attached = doctor::gate(Some(seen.pid), false)
            .map_err(|line| anyhow::anyhow!(line))
            .and_then(|()| {
                let target = Target::open(seen.pid)?;
                let allocator = target.allocator()?;
                self.session.attach(target, &allocator)
            });
        match attached {
            Ok(()) => {
                self.refused.remove(&(seen.pid, seen.start_time));
                self.retrying.remove(&(seen.pid, seen.start_time));
                info!(
                    pid = seen.pid,
                    exe = %seen.exe.display(),
                    cgroup = %seen.cgroup.path,
                    container_id = seen.cgroup.container_id.as_deref().unwrap_or(""),
                    pod_uid = seen.cgroup.pod_uid.as_deref().unwrap_or(""),
                    "target attached"
                );
                self.tracked.insert(
                    seen.pid,
                    Tracked {
                        start_time: seen.start_time,
                        exe: seen.exe.clone(),
                        placement: seen.cgroup.clone(),
                        attached_at: Instant::now(),
                        exited_at: None,
                        capped: false,
                        totals: VecDeque::new(),
                    },
                );
                if let Some(windows) = self.windows.as_mut() {
                    windows.watch(seen.pid);
                }
                true
            }
            Err(err) => {
                // Found right after its exec, a process has not mapped its C library yet (the
                // loader is still at work): it is tried again at the next scans, for a while.
                let since = *self
                    .retrying
                    .entry((seen.pid, seen.start_time))
                    .or_insert_with(Instant::now);
                if since.elapsed() < ATTACH_RETRY {
                    debug!(pid = seen.pid, error = %format!("{err:#}"), "not attached yet; trying again");
                    return true;
                }
                self.retrying.remove(&(seen.pid, seen.start_time));
                self.tally.attach_failures += 1;
                warn!(pid = seen.pid, exe = %seen.exe.display(), error = %format!("{err:#}"), "cannot trace this process");
                false
            }
        }
    }

    fn pod_of(&self, placement: &Placement) -> Option<pods::PodMeta> {
        self.pods.as_ref()?.get(placement.pod_uid.as_deref()?)
    }

    /// Samples the probes, then handles targets that exited, went over their cap, or whose
    /// grace period is over.
    fn sample(&mut self) -> anyhow::Result<()> {
        self.session.sample()?;
        self.tally.samples += 1;
        let now = Instant::now();
        let at = self.session.seconds_at(now);
        // Heap blocks: what the probes' live-block map holds, and what the cap is about.
        let mut live: HashMap<u32, (i64, i64)> = HashMap::new();
        for (key, stats) in self
            .session
            .last()
            .sites
            .iter()
            .filter(|(k, _)| !k.is_mapping())
        {
            let entry = live.entry(key.tgid).or_default();
            entry.0 += stats.live_bytes;
            entry.1 += stats.live_allocs;
        }
        let mut forget = Vec::new();
        for (&pid, tracked) in &mut self.tracked {
            if let Some(exited) = tracked.exited_at {
                if now.duration_since(exited) >= self.config.grace {
                    forget.push(pid);
                }
                continue;
            }
            let (bytes, allocs) = live.get(&pid).copied().unwrap_or_default();
            let gone = discover::start_time(pid) != Some(tracked.start_time)
                || !self
                    .session
                    .traced
                    .iter()
                    .any(|t| t.target.pid == pid && t.target.is_alive());
            if gone {
                tracked.exited_at = Some(now);
                self.session.detach(pid);
                if let Some(windows) = self.windows.as_mut() {
                    windows.gone(pid);
                }
                info!(pid, exe = %tracked.exe.display(), grace_s = self.config.grace.as_secs(), "target exited");
                continue;
            }
            if let Some(windows) = self.windows.as_mut() {
                windows.set_growth(pid, tier::growth(&self.session.resident_trend(pid)));
            }
            if !tracked.capped {
                tracked.totals.push_back((at, bytes));
                if tracked.totals.len() > TOTAL_POINTS {
                    tracked.totals.pop_front();
                }
                // Watched pages are bounded by the page map, not per target.
                let exact = self.config.mode == AgentMode::Exact;
                if exact && allocs as u64 > self.config.max_live_allocs_per_target {
                    tracked.capped = true;
                    self.tally.capped += 1;
                    self.session.detach(pid);
                    warn!(
                        pid,
                        live_allocs = allocs,
                        cap = self.config.max_live_allocs_per_target,
                        "target over --max-live-allocs-per-target: no longer traced, its last \
                         numbers stay served"
                    );
                }
            }
        }
        for pid in forget {
            self.tracked.remove(&pid);
            self.session.forget(pid);
            if let Some(windows) = self.windows.as_mut() {
                windows.forget(pid);
            }
            info!(pid, "target forgotten: its series are dropped");
        }
        if let Some(windows) = self.windows.as_mut() {
            let counters = &self.session.last().counters;
            let faults: HashMap<u32, u64> = self
                .tracked
                .iter()
                .filter(|(_, t)| t.exited_at.is_none())
                .map(|(&pid, _)| {
                    let n = counters
                        .get(&pid)
                        .map_or(0, |c| c[Counter::PageFaults as usize]);
                    (pid, n)
                })
                .collect();
            windows.charge_watch(self.session.run_time(), &faults);
        }
        Ok(())
    }

    /// The view the HTTP server serves until the next sample.
    fn publish(&mut self) -> Published {
        let now = Instant::now();
        let mut options = self.options.clone();
        // Suspects are always kept; no other stack need be named for the numbers.
        options.top = Some(0);
        let mut pids: Vec<u32> = self.tracked.keys().copied().collect();
        pids.sort_unstable();
        let mut targets = Vec::with_capacity(pids.len());
        for pid in pids {
            let report = self.session.report(&options, Some(pid), "running");
            let pod = self.pod_of(&self.tracked[&pid].placement);
            let mut view = target_view(&self.tracked[&pid], &report, pod, now);
            view.tier = self.windows.as_mut().and_then(|w| w.view(pid));
            targets.push(view);
        }
        let (overhead_cpu_seconds, node_max_overhead_percent, windows_open) = self
            .windows
            .as_ref()
            .map_or((0.0, 0.0, 0), Windows::node_view);
        Published {
            agent: AgentView {
                version: env!("CARGO_PKG_VERSION"),
                mode: match self.config.mode {
                    AgentMode::Tiered => "tiered",
                    AgentMode::Exact => "exact",
                    AgentMode::Watch => "watch",
                },
                windows_open,
                overhead_cpu_seconds,
                node_max_overhead_percent,
                sample_bytes: self.config.sample_bytes.unwrap_or(0),
                interval_s: self.config.interval.as_secs_f64(),
                max_targets: self.config.max_targets,
                traced: self
                    .tracked
                    .values()
                    .filter(|t| t.exited_at.is_none() && !t.capped)
                    .count(),
                scans: self.tally.scans,
                samples: self.tally.samples,
                refused_max_targets: self.tally.refused_max_targets,
                capped: self.tally.capped,
                attach_failures: self.tally.attach_failures,
                failed_samples: self.tally.failed_samples,
                resident_bytes: crate::process::memory::resident::rss_bytes(std::process::id())
                    .unwrap_or(0),
                kubernetes: self.pods.as_ref().map(|p| KubeView {
                    synced: p.synced(),
                    pods: p.count(),
                    watch_errors: p.errors(),
                }),
            },
            targets,
        }
    }

    fn answer(&mut self, request: Request) {
        match request {
            Request::Report { pid, top, reply } => {
                let report = self.tracked.contains_key(&pid).then(|| {
                    let mut options = self.options.clone();
                    options.top = top;
                    let report = self.session.report(&options, Some(pid), "running");
                    String::from_utf8_lossy(&report::render(&report, report::Format::Json, top))
                        .into_owned()
                });
                // A client that went away no longer wants it.
                let _ = reply.send(report);
            }
            Request::Window { pid, top, reply } => {
                let report = self.windows.as_mut().and_then(|w| w.report(pid, top));
                let _ = reply.send(report);
            }
        }
    }
}

/// One target's line in the published view.
fn target_view(
    tracked: &Tracked,
    report: &Report,
    pod: Option<pods::PodMeta>,
    now: Instant,
) -> TargetView {
    let target = report.targets.first();
    let totals = target.map(|t| t.totals.clone()).unwrap_or_default();
    let suspects = suspects(report);
    let points: Vec<(f64, i64)> = tracked.totals.iter().copied().collect();
    let placement = &tracked.placement;
    let container = pod.as_ref().and_then(|p| {
        let id = placement.container_id.as_deref()?;
        p.containers.get(id).cloned()
    });
    TargetView {
        pid: target.map_or(0, |t| t.pid),
        ns_pid: target.map_or(0, |t| t.ns_pid),
        command: target.map(|t| t.command.clone()).unwrap_or_default(),
        exe: tracked.exe.display().to_string(),
        state: if tracked.exited_at.is_some() {
            "exited"
        } else if tracked.capped {
            "capped"
        } else {
            "traced"
        },
        traced_s: tracked
            .exited_at
            .unwrap_or(now)
            .duration_since(tracked.attached_at)
            .as_secs_f64(),
        placement: PlacementView {
            cgroup: placement.path.clone(),
            runtime: placement.runtime,
            container_id: placement.container_id.clone(),
            pod_uid: placement.pod_uid.clone(),
            pod: pod.as_ref().map(|p| p.name.clone()),
            namespace: pod.as_ref().map(|p| p.namespace.clone()),
            container,
        },
        totals,
        growth_bytes_per_s: growth::theil_sen(&points).unwrap_or(0.0),
        leak_suspects: suspects.count,
        memory: target.and_then(|t| t.memory.clone()).map(|mut m| {
            // The series is the report's; the view serves the last reading.
            m.series.clear();
            m
        }),
        top_suspect_bytes_per_s: suspects.bytes_per_s,
        top_suspect: suspects.top,
        top_suspect_thread: suspects.thread,
        tier: None,
    }
}

/// A report's leak suspects (stacks judged `leak` or `growing`) and the fastest-growing one.
pub(crate) struct Suspects {
    pub count: usize,
    /// The top suspect's culprit (see [`crate::report::model::StackReport::culprit_frame`]), for a
    /// human glancing at a list: in a Node process its JavaScript function, not the allocator
    /// or the C++ under it.
    pub top: Option<String>,
    /// The thread its JavaScript ran on ([`thread_of`]).
    pub thread: Option<String>,
    pub bytes_per_s: f64,
}

pub(crate) fn suspects(report: &Report) -> Suspects {
    let suspects: Vec<_> = report
        .stacks
        .iter()
        .filter(|s| s.growth.verdict.is_suspect())
        .collect();
    let top = suspects
        .iter()
        .max_by(|a, b| a.growth.bytes_per_s.total_cmp(&b.growth.bytes_per_s));
    Suspects {
        count: suspects.len(),
        top: top
            .and_then(|s| s.culprit_frame())
            .filter(|f| f.function.is_some())
            .map(report::folded::label),
        thread: top.and_then(|s| thread_of(&s.frames)),
        bytes_per_s: top.map_or(0.0, |s| s.growth.bytes_per_s),
    }
}

/// Which thread a stack's JavaScript ran on, as its marker frame says (see
/// `symbolize::queued`): `on thread TID "NAME"` for a worker's, `queued by … on thread TID` for
/// work a pool thread ran for another thread; `main` for JavaScript without a marker. `None` for
/// a stack with no JavaScript, whose thread the probes do not mark.
pub(crate) fn thread_of(frames: &[Frame]) -> Option<String> {
    use crate::symbolize::queued::{KIND, THREAD_KIND};
    let marker = frames
        .iter()
        .find(|f| f.kind == THREAD_KIND || f.kind == KIND);
    match marker {
        Some(f) => f.function.clone(),
        None if frames.iter().any(|f| f.kind == "js") => Some("main".to_owned()),
        None => None,
    }
}

/// How long the agent waits for the session's task to answer a report request.
pub(crate) const REPORT_TIMEOUT: Duration = Duration::from_secs(30);
