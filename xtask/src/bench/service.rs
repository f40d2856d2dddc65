//! The production benchmark (`--workloads node-service`): a Node HTTP service that leaks slowly
//! and a clean one, each loaded for minutes untraced, under watch mode, and under the agent with
//! its default settings (tiered). What a team leaving the agent on its nodes wants to know: what
//! it costs the service's throughput and tail latency, whether it found the leak and named the
//! function, and that on the clean service it never opened an exact window.
//!
//! Paired runs on one pair. Each round starts two copies of the service, `A` never traced and
//! `B` the one under test, side by side on the same CPUs (see [`placement`]), each loaded by its
//! own `wrk`; then runs every tracing on `B` in turn (rotated from round to round), all on that
//! same pair. A run's ratio is `B`'s rate over `A`'s while both were loaded; its loss is that
//! ratio against the pair's untraced run's. Whatever slows the machine slows both copies alike
//! and cancels in the ratio, and whatever makes one process of a pair a little faster than the
//! other for its whole life (measured here: up to 1.6 %, steady over minutes) cancels against
//! the pair's own untraced ratio. The page-fault event of watch mode counts on every CPU, so `A`
//! pays its faults' share of the event too (the program runs on one sampled fault in the
//! period, and leaves at once for a process that is not a target): the loss is understated by
//! that much, well under 0.1 % here.
//!
//! [`placement`]: super::placement

use std::{
    fs,
    net::TcpListener,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    Bench, Proc, median, parse_word,
    placement::{Cpus, Group, Groups},
};

/// The leaking function of `bench/workloads/service.js`.
const LEAKING_FUNCTION: &str = "keepForAudit";
/// The node binary's name for the run: the agent selects it and no other Node on the machine.
pub(super) const NODE_NAME: &str = "node-bench-service";
/// The untraced reference copy's name, which the agent does not select.
const REFERENCE_NAME: &str = "node-bench-plain";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Leak,
    Clean,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Leak => "leak",
            Server::Clean => "clean",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tracing {
    None,
    Watch,
    Agent,
}

impl Tracing {
    const ALL: [Tracing; 3] = [Tracing::None, Tracing::Watch, Tracing::Agent];

    fn name(self) -> &'static str {
        match self {
            Tracing::None => "none",
            Tracing::Watch => "watch",
            Tracing::Agent => "agent",
        }
    }
}

/// How often the agent's state is sampled while the load runs.
const AGENT_SAMPLE: Duration = Duration::from_secs(10);

/// One loaded run.
struct Run {
    round: usize,
    server: Server,
    tracing: Tracing,
    /// The service under test (`B`).
    rate: f64,
    p99_ms: f64,
    /// `B`'s rate over the untraced reference's, loaded at the same time.
    ratio: f64,
    /// What `B` lost against its own pair's untraced run, in percent: `None` when that run
    /// failed.
    loss_percent: Option<f64>,
    /// Whether the tracer's report named the leaking function in a suspect stack.
    named: Option<bool>,
    /// The agent's exact windows and their average cost, in percent of the service's own CPU
    /// time (what `--max-overhead` bounds).
    windows: Option<u64>,
    overhead_percent: Option<f64>,
    /// The tracer's own CPU time while the load ran, in percent of one CPU: what it took from
    /// `B`, measured apart from the throughput.
    tracer_cpu_percent: Option<f64>,
    /// The kernel's time in the tracer's BPF programs while the load ran, in percent of one
    /// CPU: spent in the service's own threads (its page faults, its allocator calls in an
    /// exact window), where the tracer's CPU time does not show it.
    probes_cpu_percent: Option<f64>,
    /// `B`'s rate over `A`'s in each 5-s step of the load: when in the run a loss happened.
    timeline: Vec<Step>,
}

/// One step of a run's timeline.
struct Step {
    /// Seconds from the start of the load to the end of the step.
    at_s: f64,
    ratio: f64,
}

/// The load that warms a new pair's compilers and heaps before its first run counts.
const WARM_UP_SECONDS: u32 = 20;

/// Runs every tracing on each server's pair, `rounds` times in rotated order, and prints the
/// table and the goals; returns them as JSON.
pub(super) fn run(bench: &Bench, rounds: usize) -> anyhow::Result<Value> {
    let system_node = which("node")?;
    for name in [NODE_NAME, REFERENCE_NAME] {
        let node = bench.bin.join(name);
        fs::copy(&system_node, &node)
            .with_context(|| format!("copying {} to {}", system_node.display(), node.display()))?;
    }
    let cpus = Cpus::of_this_process()?;
    let groups = Groups::create(&cpus.services)?;
    let _stats = BpfStats::on()?;
    let seconds: u32 = if bench.quick { 60 } else { 240 };
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for round in 0..rounds {
        for server in [Server::Leak, Server::Clean] {
            let pair_label = format!(
                "round {}/{rounds} node-service/{}",
                round + 1,
                server.name()
            );
            let mut pair = match Pair::start(bench, &cpus, &groups, server) {
                Ok(pair) => pair,
                Err(err) => {
                    eprintln!("bench: {pair_label} FAILED to start: {err:#}");
                    failures.push(format!("{pair_label}: {err:#}"));
                    continue;
                }
            };
            let mut order = Tracing::ALL.to_vec();
            order.rotate_left(round % Tracing::ALL.len());
            let first = runs.len();
            for tracing in order {
                let label = format!("{pair_label}/{}", tracing.name());
                match run_once(
                    bench,
                    &cpus,
                    &groups,
                    &mut pair,
                    tracing,
                    seconds,
                    round + 1,
                ) {
                    Ok(run) => {
                        let lowest = run
                            .timeline
                            .iter()
                            .min_by(|a, b| a.ratio.total_cmp(&b.ratio))
                            .map_or(String::new(), |s| {
                                format!("; lowest 5-s step {:.3} at {:.0} s", s.ratio, s.at_s)
                            });
                        eprintln!(
                            "bench: {label}: {:.0} req/s ({:.4} of the reference's), p99 {:.2} \
                             ms{lowest}",
                            run.rate, run.ratio, run.p99_ms
                        );
                        runs.push(run);
                    }
                    Err(err) => {
                        eprintln!("bench: {label} FAILED: {err:#}");
                        failures.push(format!("{label}: {err:#}"));
                    }
                }
            }
            if let Err(err) = pair.finish() {
                failures.push(format!("{pair_label}: {err:#}"));
            }
            let these = &mut runs[first..];
            if let Some(untraced) = these.iter().find(|r| r.tracing == Tracing::None) {
                let base = untraced.ratio;
                for run in these {
                    run.loss_percent = Some((1.0 - run.ratio / base) * 100.0);
                }
            }
        }
    }
    Ok(report(&runs, seconds, &cpus, failures))
}

/// One copy of the service, running.
struct Service {
    proc: Proc,
    pid: u32,
    port: u16,
}

impl Service {
    /// Starts the copy named `binary` in `group`.
    fn start(
        bench: &Bench,
        groups: &Groups,
        server: Server,
        binary: &str,
        group: Group,
    ) -> anyhow::Result<Self> {
        let mut cmd = super::workload_command(bench, super::Workload::NodeService);
        cmd.arg(server.name());
        let mut proc = Proc::spawn(
            "service",
            &mut groups.placed(group, bench.bin.join(binary).as_os_str(), &cmd),
        )?;
        let ready = proc.wait_for("`ready` line", Duration::from_secs(30), |l| {
            l.starts_with("ready ")
        })?;
        let mut words = ready.split_whitespace().skip(1);
        let pid: u32 = parse_word(words.next(), "pid", &ready)?;
        let port: u16 = parse_word(words.next(), "port", &ready)?;
        Ok(Self { proc, pid, port })
    }
}

/// The untraced reference (`A`) and the copy under test (`B`) of one server, for a round.
struct Pair {
    server: Server,
    reference: Service,
    tested: Service,
}

impl Pair {
    /// Starts both copies and warms them up under load.
    fn start(bench: &Bench, cpus: &Cpus, groups: &Groups, server: Server) -> anyhow::Result<Self> {
        let reference = Service::start(bench, groups, server, REFERENCE_NAME, Group::Reference)?;
        let tested = Service::start(bench, groups, server, NODE_NAME, Group::Tested)?;
        let pair = Self {
            server,
            reference,
            tested,
        };
        pair.load(cpus, WARM_UP_SECONDS)?;
        Ok(pair)
    }

    /// Both loads at once: whatever slows the machine slows both. Returns `A`'s rate and
    /// `B`'s rate and p99 latency.
    fn load(&self, cpus: &Cpus, seconds: u32) -> anyhow::Result<(f64, f64, f64)> {
        let (reference_port, tested_port) = (self.reference.port, self.tested.port);
        let (reference, tested) = std::thread::scope(|scope| {
            let reference = scope.spawn(|| super::wrk(Some(&cpus.load), reference_port, seconds));
            let tested = super::wrk(Some(&cpus.load), tested_port, seconds);
            (reference.join(), tested)
        });
        let (reference_rate, _, _) =
            reference.map_err(|_| anyhow::anyhow!("the reference's wrk thread panicked"))??;
        let (rate, _, p99_ms) = tested?;
        Ok((reference_rate, rate, p99_ms))
    }

    fn finish(self) -> anyhow::Result<()> {
        self.tested.proc.finish()?;
        self.reference.proc.finish()
    }
}

fn run_once(
    bench: &Bench,
    cpus: &Cpus,
    groups: &Groups,
    pair: &mut Pair,
    tracing: Tracing,
    seconds: u32,
    round: usize,
) -> anyhow::Result<Run> {
    let server = pair.server;
    let pid = pair.tested.pid;
    // What the pair printed before this run: its steps are not this run's.
    pair.tested.proc.take_lines(Duration::ZERO);
    pair.reference.proc.take_lines(Duration::ZERO);
    let report = bench.reports.join(format!(
        "service-{}-{}-r{round}.json",
        server.name(),
        tracing.name()
    ));
    let mut tracer = match tracing {
        Tracing::None => None,
        Tracing::Watch => {
            let mut cmd = Command::new(&bench.leaktrace);
            cmd.args([
                "attach", "--mode", "watch", "--quiet", "--format", "json", "-o",
            ])
            .arg(&report)
            .arg(pid.to_string());
            let mut proc = Proc::spawn(
                "leaktrace attach --mode watch",
                &mut groups.placed(Group::Tested, cmd.get_program(), &cmd),
            )?;
            proc.wait_for("attach line", Duration::from_secs(120), |l| {
                l.starts_with("leaktrace: attached to PID")
            })?;
            Some((proc, None))
        }
        Tracing::Agent => {
            let listen = free_address()?;
            let mut cmd = Command::new(&bench.leaktrace);
            cmd.args(["agent", "--kubernetes", "off", "--match-exe", NODE_NAME])
                .args(["--listen", &listen]);
            let proc = Proc::spawn(
                "leaktrace agent",
                &mut groups.placed(Group::Tested, cmd.get_program(), &cmd),
            )?;
            let deadline = Instant::now() + Duration::from_secs(120);
            // Watched once /api/v1/targets lists it.
            while !targets(&listen)
                .is_ok_and(|t| target_of(&t, pid).is_some_and(|t| !t["tier"].is_null()))
            {
                if Instant::now() > deadline {
                    bail!("the agent did not watch the service within 120 s");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Some((proc, Some(listen)))
        }
    };
    let tracer_pid = tracer.as_ref().map(|(proc, _)| proc.pid());
    let cpu_before = tracer_pid.map(super::cpu_seconds).transpose()?;
    let probes_before = tracer_pid.map(programs_seconds).transpose()?;
    let started = Instant::now();
    let started_ms = unix_ms();
    let listen = tracer.as_ref().and_then(|(_, listen)| listen.clone());
    let loaded = AtomicBool::new(true);
    let (load, agent_samples) = std::thread::scope(|scope| {
        let samples = scope.spawn(|| match (&listen, tracer_pid) {
            (Some(listen), Some(agent)) => sample_agent(listen, pid, agent, &loaded),
            _ => Vec::new(),
        });
        let load = pair.load(cpus, seconds);
        loaded.store(false, Ordering::Relaxed);
        (load, samples.join().unwrap_or_default())
    });
    let ended_ms = unix_ms();
    let (reference_rate, rate, p99_ms) = load?;
    let cpu_after = tracer_pid.map(super::cpu_seconds).transpose()?;
    let probes_after = tracer_pid.map(programs_seconds).transpose()?;
    let percent =
        |(before, after): (f64, f64)| (after - before) / started.elapsed().as_secs_f64() * 100.0;
    let tracer_cpu_percent = cpu_before.zip(cpu_after).map(percent);
    let probes_cpu_percent = probes_before.zip(probes_after).map(percent);
    let mut run = Run {
        server,
        tracing,
        rate,
        p99_ms,
        ratio: rate / reference_rate,
        loss_percent: None,
        named: None,
        windows: None,
        overhead_percent: None,
        tracer_cpu_percent,
        probes_cpu_percent,
        timeline: timeline(
            &served(&pair.tested.proc.take_lines(Duration::ZERO)),
            &served(&pair.reference.proc.take_lines(Duration::ZERO)),
            started_ms,
            ended_ms,
        ),
        round,
    };
    if let Some((proc, listen)) = tracer.take() {
        match listen {
            Some(listen) => {
                let all = targets(&listen)?;
                let tier = &target_of(&all, pid).context("the service is not served")?["tier"];
                run.windows = tier["windows"].as_u64();
                run.overhead_percent = tier["average_overhead_percent"].as_f64();
                let watched = get(&listen, &format!("/api/v1/targets/{pid}/report"))?;
                let window = get(&listen, &format!("/api/v1/targets/{pid}/window")).ok();
                run.named = Some(names_leak(&watched) || window.as_ref().is_some_and(names_leak));
                let log = stop(proc)?;
                fs::write(
                    &report,
                    serde_json::to_vec_pretty(&json!({
                        "targets": all, "report": watched, "window": window,
                        "samples": agent_samples,
                        "timeline": steps_json(&run.timeline),
                        "log": log,
                    }))?,
                )
                .with_context(|| format!("writing {}", report.display()))?;
            }
            None => {
                stop(proc)?;
                let text = fs::read_to_string(&report)
                    .with_context(|| format!("reading {}", report.display()))?;
                run.named = Some(names_leak(&serde_json::from_str(&text)?));
            }
        }
    }
    Ok(run)
}

/// Whether a suspect stack of a report names the leaking function.
fn names_leak(report: &Value) -> bool {
    report["stacks"].as_array().is_some_and(|stacks| {
        stacks.iter().any(|s| {
            matches!(s["growth"]["verdict"].as_str(), Some("leak" | "growing"))
                && s["frames"]
                    .as_array()
                    .is_some_and(|frames| frames.iter().any(|f| f["function"] == LEAKING_FUNCTION))
        })
    })
}

/// Stops a tracer as Ctrl-C would, checks that it ended well, and returns what it printed.
fn stop(mut proc: Proc) -> anyhow::Result<Vec<String>> {
    proc.interrupt()?;
    Ok(proc.take_lines(Duration::from_secs(2)))
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The agent's view of the service, its CPU time, and the kinds of BPF links it holds, every
/// [`AGENT_SAMPLE`] while `loaded`: which tier the service was in when, and whether any
/// allocator probe stayed attached after a window closed.
fn sample_agent(listen: &str, pid: u32, agent: u32, loaded: &AtomicBool) -> Vec<Value> {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next = Instant::now();
    while loaded.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        next += AGENT_SAMPLE;
        let tier = targets(listen)
            .ok()
            .and_then(|t| target_of(&t, pid).map(|t| t["tier"].clone()));
        samples.push(json!({
            "at_s": started.elapsed().as_secs_f64(),
            "tier": tier,
            "links": link_kinds(agent),
            "cpu_s": super::cpu_seconds(agent).ok(),
        }));
    }
    samples
}

/// BPF run-time statistics on (`kernel.bpf_stats_enabled`) while held; the setting it found is
/// put back when dropped. The agent turns them on itself for its budget; on for every run, the
/// few nanoseconds they add to each program run are paid alike.
struct BpfStats {
    was: String,
}

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn on() -> anyhow::Result<Self> {
        let was =
            fs::read_to_string(Self::PATH).with_context(|| format!("reading {}", Self::PATH))?;
        fs::write(Self::PATH, "1").with_context(|| format!("writing {}", Self::PATH))?;
        Ok(Self { was })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(err) = fs::write(Self::PATH, self.was.trim()) {
            eprintln!("bench: cannot put {} back: {err}", Self::PATH);
        }
    }
}

/// The `fdinfo` of each file descriptor `pid` holds: the kernel describes a BPF program's or
/// link's there (its id, a link's type, a program's run time). `bpftool`'s `pids` field needs
/// a BPF iterator this kernel's lockdown refuses.
fn fdinfo(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|entry| fs::read_to_string(entry.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A `key:\tvalue` line's value in one `fdinfo`.
fn fdinfo_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// The kernel's time in the BPF programs `pid` holds so far, in seconds (`run_time_ns`, each
/// program once however many descriptors name it).
fn programs_seconds(pid: u32) -> anyhow::Result<f64> {
    let mut programs = std::collections::HashMap::new();
    for info in fdinfo(pid) {
        if let (Some(id), Some(ns)) = (
            fdinfo_field(&info, "prog_id"),
            fdinfo_field(&info, "run_time_ns").and_then(|n| n.parse::<u64>().ok()),
        ) {
            programs.insert(id.to_owned(), ns);
        }
    }
    Ok(programs.values().sum::<u64>() as f64 / 1e9)
}

/// How many BPF links of each type `pid` holds.
fn link_kinds(pid: u32) -> Value {
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    let mut seen = std::collections::HashSet::new();
    for info in fdinfo(pid) {
        if let (Some(kind), Some(id)) = (
            fdinfo_field(&info, "link_type"),
            fdinfo_field(&info, "link_id"),
        ) && seen.insert(id.to_owned())
        {
            *kinds.entry(kind.to_owned()).or_default() += 1;
        }
    }
    json!(kinds)
}

/// A service's `served <unix ms> <requests>` lines: its count of requests over time.
fn served(lines: &[String]) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut words = l.strip_prefix("served ")?.split_whitespace();
            Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
        })
        .collect()
}

/// The count at `t`, linearly between the points around it.
fn count_at(points: &[(f64, f64)], t: f64) -> Option<f64> {
    let after = points.iter().position(|&(at, _)| at >= t)?;
    let (t1, c1) = points[after];
    if after == 0 {
        return (t1 == t).then_some(c1);
    }
    let (t0, c0) = points[after - 1];
    Some(c0 + (c1 - c0) * (t - t0) / (t1 - t0))
}

/// `tested`'s rate over `reference`'s in each of `tested`'s steps that lie wholly within the
/// load (`from_ms` to `to_ms`).
fn timeline(
    tested: &[(f64, f64)],
    reference: &[(f64, f64)],
    from_ms: f64,
    to_ms: f64,
) -> Vec<Step> {
    tested
        .windows(2)
        .filter(|w| w[0].0 >= from_ms && w[1].0 <= to_ms)
        .filter_map(|w| {
            let ((t0, c0), (t1, c1)) = (w[0], w[1]);
            let reference = count_at(reference, t1)? - count_at(reference, t0)?;
            (reference > 0.0).then(|| Step {
                at_s: (t1 - from_ms) / 1000.0,
                ratio: (c1 - c0) / reference,
            })
        })
        .collect()
}

fn steps_json(steps: &[Step]) -> Value {
    steps
        .iter()
        .map(|s| {
            json!([
                (s.at_s * 10.0).round() / 10.0,
                (s.ratio * 1e4).round() / 1e4
            ])
        })
        .collect()
}

/// A free local address: bound, read, released; the agent binds it a moment later.
fn free_address() -> anyhow::Result<String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

/// A GET on the agent, with curl (`cargo xtask setup` installs it): the one HTTP request the
/// bench makes is not worth an HTTP client crate in xtask.
fn get(listen: &str, path: &str) -> anyhow::Result<Value> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "60"])
        .arg(format!("http://{listen}{path}"))
        .output()
        .context("running curl (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!("GET {path}: curl ended with {}", out.status);
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("GET {path}: not JSON"))
}

fn targets(listen: &str) -> anyhow::Result<Value> {
    get(listen, "/api/v1/targets")
}

fn target_of(targets: &Value, pid: u32) -> Option<&Value> {
    targets["targets"]
        .as_array()?
        .iter()
        .find(|t| t["pid"] == pid)
}

fn which(program: &str) -> anyhow::Result<std::path::PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .with_context(|| format!("looking for {program}"))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if path.is_empty() {
        bail!("no {program} on PATH (cargo xtask setup installs it)");
    }
    fs::canonicalize(&path).with_context(|| format!("resolving {path}"))
}

/// wrk's latency (`812.00us`, `1.23ms`, `2.01s`) in milliseconds.
pub(super) fn milliseconds(text: &str) -> Option<f64> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// The medians side by side, the goals, and the JSON of it all. A configuration's loss is the
/// median over rounds of each round's loss against its own pair's untraced run.
fn report(runs: &[Run], seconds: u32, cpus: &Cpus, failures: Vec<String>) -> Value {
    println!(
        "\nnode-service ({seconds} s per run; the service under test and its untraced reference \
         share CPUs {} in two CPU groups of equal weight, the tracer in the tested one's; each \
         loaded by wrk -t1 -c20 on CPUs {}; losses against the same pair's untraced run, medians \
         over rounds)",
        cpus.services, cpus.load
    );
    println!(
        "{:<6} {:<6} {:>10} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "server",
        "tracer",
        "req/s",
        "ratio",
        "loss",
        "p99 ms",
        "named",
        "windows",
        "cost %",
        "tracer %",
        "probes %"
    );
    let mut rows = Vec::new();
    let mut goals = Vec::new();
    for server in [Server::Leak, Server::Clean] {
        let of = |tracing: Tracing| -> Vec<&Run> {
            runs.iter()
                .filter(|r| r.server == server && r.tracing == tracing)
                .collect()
        };
        for tracing in Tracing::ALL {
            let these = of(tracing);
            if these.is_empty() {
                continue;
            }
            let rate = median(these.iter().map(|r| r.rate));
            let ratio = median(these.iter().map(|r| r.ratio));
            let p99 = median(these.iter().map(|r| r.p99_ms));
            let loss = median(these.iter().filter_map(|r| r.loss_percent));
            let named = these.iter().all(|r| r.named == Some(true));
            let windows = these.iter().filter_map(|r| r.windows).max();
            let cost = median(these.iter().filter_map(|r| r.overhead_percent));
            let tracer_cpu = median(these.iter().filter_map(|r| r.tracer_cpu_percent));
            let probes_cpu = median(these.iter().filter_map(|r| r.probes_cpu_percent));
            let traced = |value: f64| {
                if tracing == Tracing::None {
                    "-".into()
                } else {
                    format!("{value:.2}")
                }
            };
            println!(
                "{:<6} {:<6} {rate:>10.0} {ratio:>8.4} {:>7.1}% {p99:>9.2} {:>8} {:>8} {:>9} {:>9} \
                 {:>9}",
                server.name(),
                tracing.name(),
                if tracing == Tracing::None { 0.0 } else { loss },
                match tracing {
                    Tracing::None => "-",
                    _ if named => "yes",
                    _ => "no",
                },
                windows.map_or("-".into(), |w| w.to_string()),
                if tracing == Tracing::Agent {
                    format!("{cost:.2}")
                } else {
                    "-".into()
                },
                traced(tracer_cpu),
                traced(probes_cpu),
            );
            rows.push(json!({
                "server": server.name(), "tracer": tracing.name(), "req_per_s": rate,
                "ratio_to_reference": ratio,
                "ratios": these.iter().map(|r| r.ratio).collect::<Vec<_>>(),
                "losses_percent": these.iter().map(|r| r.loss_percent).collect::<Vec<_>>(),
                "loss_percent": loss, "p99_ms": p99, "named": named, "windows": windows,
                "agent_average_overhead_percent": (tracing == Tracing::Agent).then_some(cost),
                "tracer_cpu_percent": (tracing != Tracing::None).then_some(tracer_cpu),
                "probes_cpu_percent": (tracing != Tracing::None).then_some(probes_cpu),
            }));
            let goal = |name: &str, met: bool, what: String| {
                println!(
                    "goal: {name}: {} ({what})",
                    if met { "met" } else { "NOT met" }
                );
                json!({"goal": name, "met": met, "measured": what})
            };
            match (server, tracing) {
                (_, Tracing::Watch) => goals.push(goal(
                    &format!(
                        "watch mode on the {} service loses at most 1 %",
                        server.name()
                    ),
                    loss <= 1.0,
                    format!("{loss:.1} %"),
                )),
                (Server::Leak, Tracing::Agent) => goals.push(goal(
                    "the agent's default loses at most 3 % on the leaking service and names the \
                     leak",
                    loss <= 3.0 && named,
                    format!("{loss:.1} %, named: {named}"),
                )),
                (Server::Clean, Tracing::Agent) => goals.push(goal(
                    "on the clean service the agent opens no window and loses at most 1 %",
                    loss <= 1.0 && windows == Some(0),
                    format!("{loss:.1} %, windows: {windows:?}"),
                )),
                _ => {}
            }
        }
    }
    let runs: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "round": r.round, "server": r.server.name(), "tracer": r.tracing.name(),
                "req_per_s": r.rate, "ratio_to_reference": r.ratio,
                "loss_percent": r.loss_percent, "tracer_cpu_percent": r.tracer_cpu_percent,
                "probes_cpu_percent": r.probes_cpu_percent, "timeline": steps_json(&r.timeline),
            })
        })
        .collect();
    json!({
        "seconds": seconds, "method": "one pair per round, sharing CPUs in two CPU groups",
        "cpus_services": cpus.services, "cpus_load": cpus.load, "rows": rows, "goals": goals, "failures": failures,
        "runs": runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timelines_pair_each_step_with_the_reference_at_the_same_times() {
        let tested = [
            (1000.0, 0.0),
            (6000.0, 500.0),
            (11000.0, 900.0),
            (16000.0, 1000.0),
        ];
        // The reference's points fall between the tested's: counts are interpolated.
        let reference = [(0.0, 0.0), (8500.0, 850.0), (20000.0, 2000.0)];
        let steps = timeline(&tested, &reference, 1000.0, 12000.0);
        let got: Vec<(f64, f64)> = steps.iter().map(|s| (s.at_s, s.ratio)).collect();
        // The last step ends after the load: left out.
        assert_eq!(got, vec![(5.0, 1.0), (10.0, 0.8)]);
        assert_eq!(count_at(&reference, 25000.0), None);
        assert_eq!(
            served(&["served 5 7".into(), "ready 1 2".into()]),
            vec![(5.0, 7.0)]
        );
    }

    #[test]
    fn fdinfo_fields() {
        let info = "pos:\t0\nlink_type:\tperf\nlink_id:\t12\nprog_id:\t5\n";
        assert_eq!(fdinfo_field(info, "link_type"), Some("perf"));
        assert_eq!(fdinfo_field(info, "prog_id"), Some("5"));
        assert_eq!(fdinfo_field(info, "run_time_ns"), None);
    }

    #[test]
    fn wrk_latencies() {
        assert_eq!(milliseconds("812.00us"), Some(0.812));
        assert_eq!(milliseconds("1.23ms"), Some(1.23));
        assert_eq!(milliseconds("2.5s"), Some(2500.0));
        assert_eq!(milliseconds("fast"), None);
    }
}
