//! `cargo xtask bench`: what tracing costs, measured side by side.
//!
//! Each workload runs untraced and under each tracer configuration. Runs alternate (every round
//! runs each configuration once, the order rotated from round to round), so a noisy neighbour or
//! a slow minute of the machine spreads over all configurations instead of landing on one; each
//! configuration's median over the rounds is what is compared.
//!
//! The workloads follow the tests' protocol (`bench/workloads/workload.h`): they print `ready
//! <pid>` and wait, the tracer is attached, then they are told to go, so every timed operation
//! is traced. They all run with a private copy of the C library (`LD_LIBRARY_PATH`): bpftrace 0.17
//! puts its uprobes into every process that maps the probed file, and probing the system's libc
//! would slow every program on the machine (other people's builds included) while the reference
//! runs. A byte-identical copy behaves the same and only the workloads map it.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::shell::{self, cargo};

mod placement;
mod service;

/// The bytes between samples of the `sampled` configuration.
const SAMPLE_BYTES: &str = "524288";
/// Most live blocks bpftrace tracks (its default is 4096): leaktrace's default, for a fair race.
const REFERENCE_MAP_KEYS: &str = "1048576";
/// bpftrace prints its BEGIN line right after attaching; let the last probes settle.
const REFERENCE_SETTLE: Duration = Duration::from_millis(500);
/// Linux reports CPU times in /proc in USER_HZ, which is 100 on every x86-64 and arm64 system.
const USER_HZ: f64 = 100.0;

/// The program whose allocations are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// C: malloc/free pairs of mixed sizes in 2 threads, ~1 s untraced.
    Churn,
    /// C: 200k blocks of mixed sizes allocated and kept (the tracer's live map only grows).
    Keep,
    /// Node: Buffers of 2-64 KiB allocated and dropped (one calloc each, freed by the GC).
    NodeBuffers,
    /// Node: a trivial HTTP server under `wrk -t1 -c20`; the metric is requests per second.
    NodeHttp,
    /// Node: an HTTP service leaking on every 100th request, and a clean one, loaded for minutes
    /// untraced, under watch mode and under the agent's defaults (see `bench/service.rs`).
    NodeService,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Churn => "churn",
            Workload::Keep => "keep",
            Workload::NodeBuffers => "node-buffers",
            Workload::NodeHttp => "node-http",
            Workload::NodeService => "node-service",
        }
    }
}

/// How the workload is traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    /// Not traced: the baseline.
    None,
    /// leaktrace's probe points with programs that return at once: the cost of the traps alone.
    Floor,
    /// leaktrace, full accounting.
    Exact,
    /// The memleak-style bpftrace script (`bench/memleak-reference.bt`).
    Reference,
    /// leaktrace sampling one allocation per `SAMPLE_BYTES` bytes (if this build has it).
    Sampled,
    /// leaktrace, full accounting, with JavaScript frames left to addresses (`--no-v8-frames`):
    /// on Node workloads, what naming JS frames from V8's data adds is `exact` minus this.
    NativeOnly,
    /// leaktrace's watch mode (`--mode watch`): no uprobe, page faults sampled at its default
    /// period.
    Watch,
}

impl Config {
    const ALL: [Config; 7] = [
        Config::None,
        Config::Floor,
        Config::Exact,
        Config::Reference,
        Config::Sampled,
        Config::NativeOnly,
        Config::Watch,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::None => "none",
            Config::Floor => "floor",
            Config::Exact => "exact",
            Config::Reference => "reference",
            Config::Sampled => "sampled",
            Config::NativeOnly => "native-only",
            Config::Watch => "watch",
        }
    }

    /// Whether leaktrace records every allocation under this configuration: its report must
    /// then have lost nothing, or the run measured less work than it claims.
    fn is_exact(self) -> bool {
        matches!(self, Config::Exact | Config::NativeOnly)
    }

    /// Whether this configuration says anything on `workload`: without V8 there are no
    /// JavaScript frames, and `native-only` would be `exact` again.
    fn applies_to(self, workload: Workload) -> bool {
        self != Config::NativeOnly || matches!(workload, Workload::NodeBuffers | Workload::NodeHttp)
    }
}

/// How the benchmark was asked to run.
pub struct Options {
    pub rounds: Option<usize>,
    pub workloads: Vec<Workload>,
    pub quick: bool,
}

/// Paths and sizes shared by every run.
struct Bench {
    root: PathBuf,
    leaktrace: PathBuf,
    /// The compiled C workloads.
    bin: PathBuf,
    /// Holds the private copy of the C library (see the module comment).
    libc_dir: PathBuf,
    quick: bool,
    /// Where each exact run's report is kept: `bench/results/<started>/`, beside the results.
    reports: PathBuf,
}

/// What the tracer used during one run.
#[derive(Clone, Copy)]
struct TracerUsage {
    /// CPU time from start until attached (loading, compiling, resolving symbols).
    attach_cpu_s: f64,
    /// CPU time while the workload ran.
    run_cpu_s: f64,
    /// Peak resident memory (VmHWM) just before it was stopped.
    peak_rss_mib: f64,
}

/// What one run measured.
struct Run {
    workload: Workload,
    config: Config,
    /// Seconds for a timed workload; requests per second for `node-http`.
    metric: f64,
    /// Operations done: malloc+free pairs, kept blocks, Buffers or requests.
    ops: u64,
    /// The workload's own CPU time over the timed part. The probes run in its threads, so this
    /// includes them.
    workload_cpu_s: Option<f64>,
    tracer: Option<TracerUsage>,
    /// The loss counters that were not zero in an exact run's report.
    losses: Vec<(String, u64)>,
}

/// One configuration on one workload: medians over the rounds, and how they compare.
struct ConfigResult {
    config: Config,
    metrics: Vec<f64>,
    median: f64,
    ops: u64,
    /// How many times slower than `none` (for throughput: none's rate over this one).
    slowdown: f64,
    /// Wall time added per operation over `none` (for throughput: per request).
    added_per_op_s: f64,
    /// The workload's CPU time added per operation over `none`.
    added_cpu_per_op_s: Option<f64>,
    tracer: Option<TracerUsage>,
}

pub fn run(options: Options) -> anyhow::Result<()> {
    if !shell::is_root() {
        bail!("the benchmark loads eBPF programs: run it as root (sudo -E cargo xtask bench)");
    }
    let started = Instant::now();
    let started_utc = utc_timestamp(SystemTime::now());
    let bench = prepare(options.quick, &started_utc)?;
    let rounds = options.rounds.unwrap_or(if options.quick { 1 } else { 3 });
    let mut workloads = if options.workloads.is_empty() {
        <Workload as clap::ValueEnum>::value_variants().to_vec()
    } else {
        options.workloads.clone()
    };
    // The service runs for minutes under its own tracers: it has a loop of its own.
    let service = workloads.contains(&Workload::NodeService);
    workloads.retain(|&w| w != Workload::NodeService);
    let unavailable = unavailable_configs(&bench)?;
    let configs: Vec<Config> = Config::ALL
        .into_iter()
        .filter(|c| !unavailable.contains_key(c))
        .collect();
    for (config, why) in &unavailable {
        eprintln!("bench: {}: not available ({why})", config.name());
    }

    let total: usize = rounds
        * workloads
            .iter()
            .map(|&w| configs.iter().filter(|c| c.applies_to(w)).count())
            .sum::<usize>();
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    let mut lossy = Vec::new();
    for round in 0..rounds {
        for &workload in &workloads {
            // Rotated each round, so no configuration always runs first (or right after another).
            let mut order: Vec<Config> = configs
                .iter()
                .copied()
                .filter(|c| c.applies_to(workload))
                .collect();
            let n = order.len();
            order.rotate_left(round % n);
            for config in order {
                let label = format!(
                    "round {}/{rounds} {}/{}",
                    round + 1,
                    workload.name(),
                    config.name()
                );
                let report = format!("{}-{}-{}.json", round + 1, workload.name(), config.name());
                match run_once(&bench, workload, config, &report) {
                    Ok(run) => {
                        eprintln!(
                            "bench: [{}/{total}] {label}: {}",
                            runs.len() + failures.len() + 1,
                            format_metric(workload, run.metric)
                        );
                        if !run.losses.is_empty() {
                            let lost = describe_losses(&run.losses);
                            eprintln!("bench: {label} LOST {lost} (report {report})");
                            lossy.push(format!("{label}: lost {lost}"));
                        }
                        runs.push(run);
                    }
                    Err(err) => {
                        eprintln!("bench: {label} FAILED: {err:#}");
                        failures.push(format!("{label}: {err:#}"));
                    }
                }
            }
        }
    }

    let mut report = Vec::new();
    let mut goals = Value::Null;
    let mut js_goal = Value::Null;
    for &workload in &workloads {
        let results = summarize(workload, &runs);
        print_table(workload, &results, &unavailable, rounds);
        if workload == Workload::Churn {
            goals = print_churn_goals(&results);
        }
        if workload == Workload::NodeBuffers {
            js_goal = print_js_naming_goal(&results);
        }
        report.push(workload_json(workload, &results));
    }
    let programs = if workloads.contains(&Workload::Churn) {
        match program_costs(&bench) {
            Ok(costs) => costs,
            Err(err) => {
                eprintln!("bench: program costs FAILED: {err:#}");
                failures.push(format!("program costs: {err:#}"));
                Value::Null
            }
        }
    } else {
        Value::Null
    };
    let node_service = if service {
        let result = service::run(&bench, rounds)?;
        if let Some(failed) = result["failures"].as_array() {
            failures.extend(failed.iter().filter_map(|f| Some(f.as_str()?.to_owned())));
        }
        result
    } else {
        Value::Null
    };
    let elapsed = started.elapsed();
    // The service's runs: 2 servers under 3 tracings a round.
    let service_runs = if service { rounds * 6 } else { 0 };
    println!("bench: {} runs in {:.0?}", total + service_runs, elapsed);
    // leaktrace changes quickly: record which one was measured.
    let commit = shell::output(
        Command::new("git")
            .arg("-C")
            .arg(&bench.root)
            .args(["describe", "--always", "--dirty"]),
    );
    let json = json!({
        "format": "leaktrace-bench/1",
        "started_utc": started_utc,
        "elapsed_s": elapsed.as_secs_f64(),
        "rounds": rounds,
        "quick": options.quick,
        "machine": machine_json(),
        "commit": commit.map(|c| c.trim().to_string()),
        "unavailable": unavailable.iter().map(|(c, why)| (c.name(), why)).collect::<BTreeMap<_, _>>(),
        "workloads": report,
        "goals": goals,
        "js_naming_goal": js_goal,
        "node_service": node_service,
        "program_costs": programs,
        "failures": failures,
        "losses": lossy,
        "reports": bench.reports.strip_prefix(&bench.root).unwrap_or(&bench.reports),
    });
    let dir = bench.root.join("bench/results");
    write_atomically(&dir.join(format!("{started_utc}.json")), &json)?;
    write_atomically(&dir.join("latest.json"), &json)?;
    println!(
        "bench: results in {}, exact runs' reports in {}",
        dir.join(format!("{started_utc}.json")).display(),
        bench.reports.display()
    );
    if !lossy.is_empty() {
        bail!(
            "{} exact run(s) lost allocations, so they measured less than full tracing:\n{}",
            lossy.len(),
            lossy.join("\n")
        );
    }
    Ok(())
}

/// The loss counters of a leaktrace JSON report (`totals.losses`) that are not zero, but
/// `unknown_frees`: attached to a running process, the tracer sees frees of blocks allocated
/// before it came (a Node workload makes many), which is no loss of its own; a block it failed to
/// record and then sees freed counts under `live_map_full` first.
fn report_losses(report: &Value) -> anyhow::Result<Vec<(String, u64)>> {
    let losses = report["totals"]["losses"]
        .as_object()
        .context("the report has no totals.losses")?;
    let mut lost = Vec::new();
    for (name, value) in losses {
        let count = value
            .as_u64()
            .with_context(|| format!("losses.{name} is not a count: {value}"))?;
        if count > 0 && name != "unknown_frees" {
            lost.push((name.clone(), count));
        }
    }
    Ok(lost)
}

fn describe_losses(losses: &[(String, u64)]) -> String {
    losses
        .iter()
        .map(|(name, count)| format!("{name}={count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds leaktrace and the C workloads, and copies the C library.
fn prepare(quick: bool, started_utc: &str) -> anyhow::Result<Bench> {
    let root = shell::root();
    let reports = root.join("bench/results").join(started_utc);
    fs::create_dir_all(&reports).with_context(|| format!("creating {}", reports.display()))?;
    shell::run(cargo().args(["build", "--release", "--package", "leaktrace"]))?;
    let bin = root.join("target/bench");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for name in ["churn", "keep"] {
        shell::run(
            Command::new("gcc")
                .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
                .arg(bin.join(name))
                .arg(root.join(format!("bench/workloads/{name}.c"))),
        )?;
    }
    let libc_dir = bin.join("libc");
    private_libc(&libc_dir)?;
    Ok(Bench {
        leaktrace: root.join("target/release/leaktrace"),
        root,
        bin,
        libc_dir,
        quick,
        reports,
    })
}

/// Copies the C library this process uses (the one the workloads would load) into `dir`.
/// Replaced by rename, never rewritten in place: a process may still map the old copy.
fn private_libc(dir: &Path) -> anyhow::Result<()> {
    let maps = fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    let Some(system) = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| Path::new(p).file_name().is_some_and(|n| n == "libc.so.6"))
    else {
        bail!("cannot find libc.so.6 in /proc/self/maps: the workloads need glibc");
    };
    let copy = dir.join("libc.so.6");
    let len = |p: &Path| fs::metadata(p).map(|m| m.len()).ok();
    if len(&copy).is_some() && len(&copy) == len(Path::new(system)) {
        return Ok(());
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join("libc.so.6.tmp");
    fs::copy(system, &tmp).with_context(|| format!("copying {system} to {}", tmp.display()))?;
    fs::rename(&tmp, &copy).with_context(|| format!("renaming {}", tmp.display()))
}

/// Configurations this machine or this leaktrace cannot run, with the reason.
fn unavailable_configs(bench: &Bench) -> anyhow::Result<BTreeMap<Config, String>> {
    let mut unavailable = BTreeMap::new();
    let help = shell::output(Command::new(&bench.leaktrace).args(["attach", "--help"]))
        .with_context(|| format!("running {} attach --help", bench.leaktrace.display()))?;
    if !help.contains("--sample-bytes") {
        unavailable.insert(
            Config::Sampled,
            "this leaktrace has no `attach --sample-bytes`".to_string(),
        );
    }
    if !shell::succeeds(Command::new("bpftrace").arg("--version")) {
        unavailable.insert(
            Config::Reference,
            "bpftrace is not installed: apt-get install bpftrace".to_string(),
        );
    }
    Ok(unavailable)
}

/// Runs `workload` once under `config`: start it, attach, go, wait for its result, stop.
/// An exact run's report is kept as `report` in `bench.reports`.
fn run_once(
    bench: &Bench,
    workload: Workload,
    config: Config,
    report: &str,
) -> anyhow::Result<Run> {
    run_observed(bench, workload, config, report, |_| Ok(()))
}

/// [`run_once`], calling `observe` with the tracer's PID once the workload is done, while the
/// tracer still runs.
fn run_observed(
    bench: &Bench,
    workload: Workload,
    config: Config,
    report: &str,
    mut observe: impl FnMut(u32) -> anyhow::Result<()>,
) -> anyhow::Result<Run> {
    let report = config.is_exact().then(|| bench.reports.join(report));
    let mut target = Proc::spawn("workload", &mut workload_command(bench, workload))?;
    let ready = target.wait_for("`ready` line", Duration::from_secs(30), |l| {
        l.starts_with("ready ")
    })?;
    let mut words = ready.split_whitespace().skip(1);
    let pid: u32 = parse_word(words.next(), "pid", &ready)?;
    let mut tracer = match tracer_command(bench, config, pid, report.as_deref()) {
        Some(mut cmd) => Some(Tracer::attach(config, &mut cmd)?),
        None => None,
    };
    let (metric, ops, workload_cpu_s) = if workload == Workload::NodeHttp {
        let port: u16 = parse_word(words.next(), "port", &ready)?;
        let (rate, requests, _) = wrk(None, port, if bench.quick { 2 } else { 5 })?;
        (rate, requests, None)
    } else {
        target.send_line("go")?;
        let result = target.wait_for("result", Duration::from_secs(1800), |l| {
            l.starts_with("result ")
        })?;
        let seconds = field(&result, "elapsed_ns")? as f64 / 1e9;
        let cpu = field(&result, "cpu_ns")? as f64 / 1e9;
        (seconds, field(&result, "ops")?, Some(cpu))
    };
    let usage = match &mut tracer {
        Some(tracer) => {
            observe(tracer.proc.pid())?;
            Some(tracer.usage()?)
        }
        None => None,
    };
    if let Some(tracer) = tracer {
        tracer.stop()?;
    }
    target.finish()?;
    let losses = match &report {
        Some(path) => {
            let text = fs::read_to_string(path)
                .with_context(|| format!("reading the run's report {}", path.display()))?;
            let json: Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing the run's report {}", path.display()))?;
            report_losses(&json).with_context(|| path.display().to_string())?
        }
        None => Vec::new(),
    };
    Ok(Run {
        workload,
        config,
        metric,
        ops,
        workload_cpu_s,
        tracer: usage,
        losses,
    })
}

/// The workload's command. Sized so that untraced runs take about a second here (keep about
/// half), and runs under the reference (which single-steps every `free`) under a minute;
/// `--quick` runs a fifth or a quarter of it.
fn workload_command(bench: &Bench, workload: Workload) -> Command {
    let q = bench.quick;
    let script = |name: &str| bench.root.join("bench/workloads").join(name);
    let mut cmd = match workload {
        Workload::Churn => {
            let mut cmd = Command::new(bench.bin.join("churn"));
            cmd.args([if q { "400000" } else { "2000000" }, "2", "400"]);
            cmd
        }
        Workload::Keep => {
            let mut cmd = Command::new(bench.bin.join("keep"));
            cmd.args([if q { "50000" } else { "200000" }, "400"]);
            cmd
        }
        Workload::NodeBuffers => {
            let mut cmd = Command::new("node");
            cmd.arg(script("buffers.js"))
                .arg(if q { "50000" } else { "200000" });
            cmd
        }
        Workload::NodeHttp => {
            let mut cmd = Command::new("node");
            cmd.arg(script("server.js"));
            cmd
        }
        // Its `leak` or `clean` argument is the service bench's to add.
        Workload::NodeService => {
            let mut cmd = Command::new(bench.bin.join(service::NODE_NAME));
            cmd.arg(script("service.js"));
            cmd
        }
    };
    cmd.env("LD_LIBRARY_PATH", &bench.libc_dir);
    cmd
}

/// The tracer's command; a leaktrace one writes its JSON report to `report` when given.
fn tracer_command(
    bench: &Bench,
    config: Config,
    pid: u32,
    report: Option<&Path>,
) -> Option<Command> {
    let pid = pid.to_string();
    let leaktrace = |extra: &[&str]| {
        let mut cmd = Command::new(&bench.leaktrace);
        cmd.arg("attach").args(extra).arg(&pid);
        if let Some(report) = report {
            cmd.args(["--format", "json", "-o"]).arg(report);
        }
        cmd.env_remove("LEAKTRACE_LOG");
        Some(cmd)
    };
    match config {
        Config::None => None,
        Config::Floor => leaktrace(&["--empty-probes"]),
        Config::Exact => leaktrace(&[]),
        Config::Sampled => leaktrace(&["--sample-bytes", SAMPLE_BYTES]),
        Config::NativeOnly => leaktrace(&["--no-v8-frames"]),
        Config::Watch => leaktrace(&["--mode", "watch"]),
        Config::Reference => {
            let mut cmd = Command::new("bpftrace");
            cmd.args(["-p", &pid])
                .arg(bench.root.join("bench/memleak-reference.bt"))
                .arg(&pid)
                .env("BPFTRACE_MAP_KEYS_MAX", REFERENCE_MAP_KEYS);
            Some(cmd)
        }
    }
}

/// Loads the server with `wrk -t1 -c20 --latency` for `seconds`, on the CPUs `cpus` when given;
/// returns requests per second, requests, and the 99th percentile latency in milliseconds.
fn wrk(cpus: Option<&str>, port: u16, seconds: u32) -> anyhow::Result<(f64, u64, f64)> {
    let mut cmd = match cpus {
        Some(cpus) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", cpus, "wrk"]);
            cmd
        }
        None => Command::new("wrk"),
    };
    cmd.args(["-t1", "-c20", "--latency", &format!("-d{seconds}s")])
        .arg(format!("http://127.0.0.1:{port}/"));
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (cargo xtask setup installs wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {text}", out.status);
    }
    if let Some(errors) = text.lines().find(|l| l.contains("Socket errors")) {
        eprintln!("bench: wrk: {}", errors.trim());
    }
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no `Requests/sec:` in wrk's output:\n{text}"))?;
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("no `N requests in` in wrk's output:\n{text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| service::milliseconds(v.trim()))
        .with_context(|| format!("no 99% latency in wrk's output:\n{text}"))?;
    Ok((rate, requests, p99))
}

/// A running tracer.
struct Tracer {
    proc: Proc,
    /// CPU seconds it had used when it said it was attached.
    attach_cpu_s: f64,
}

impl Tracer {
    /// Starts `cmd` and waits until its probes are in place.
    fn attach(config: Config, cmd: &mut Command) -> anyhow::Result<Self> {
        let mut proc = Proc::spawn(config.name(), cmd)?;
        let marker = match config {
            Config::Reference => "reference attached to",
            _ => "leaktrace: attached to PID",
        };
        proc.wait_for("attach line", Duration::from_secs(120), |l| {
            l.starts_with(marker)
        })?;
        if config == Config::Reference {
            std::thread::sleep(REFERENCE_SETTLE);
        }
        let attach_cpu_s = cpu_seconds(proc.pid())?;
        Ok(Self { proc, attach_cpu_s })
    }

    /// CPU time and peak memory so far; read while it runs, since /proc forgets an exited
    /// process (and a tracer's report at exit is not part of tracing's cost).
    fn usage(&mut self) -> anyhow::Result<TracerUsage> {
        let pid = self.proc.pid();
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status of {}", self.proc.name))?;
        let hwm_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmHWM in /proc/{pid}/status"))?;
        Ok(TracerUsage {
            attach_cpu_s: self.attach_cpu_s,
            run_cpu_s: cpu_seconds(pid)? - self.attach_cpu_s,
            peak_rss_mib: hwm_kib / 1024.0,
        })
    }

    /// Stops it as Ctrl-C would, and checks that it ended well.
    fn stop(mut self) -> anyhow::Result<()> {
        self.proc.interrupt()
    }
}

/// utime + stime of `pid`, all threads, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces: count fields after its closing parenthesis. There the
    // state is field 3 of proc(5), so utime (14) and stime (15) are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(utime), Some(stime)) => Ok((utime + stime) as f64 / USER_HZ),
        _ => bail!("cannot read utime and stime in /proc/{pid}/stat: {stat}"),
    }
}

/// A child process whose output lines (stdout and stderr) arrive on a channel, read by threads
/// so that a chatty child never blocks on a full pipe. Killed on drop: no path leaves it running.
struct Proc {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// The last lines seen, for error messages.
    log: Vec<String>,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            forward_lines(out, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward_lines(err, tx);
        }
        Ok(Self {
            name,
            stdin: child.stdin.take(),
            child,
            lines,
            log: Vec::new(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads lines until one satisfies `found`, and returns it.
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        found: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    if found(&line) {
                        return Ok(line);
                    }
                    self.log.push(line);
                    if self.log.len() > 40 {
                        self.log.remove(0);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let name = self.name;
                    bail!("{name} printed no {what} in {timeout:?}{}", self.tail())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let name = self.name;
                    bail!("{name} ended before its {what}{}", self.tail())
                }
            }
        }
    }

    fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to {}", self.name))
    }

    /// Closes stdin (the workloads then exit) and checks that it exited well.
    fn finish(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.wait(Duration::from_secs(30))?;
        if !status.success() {
            let name = self.name;
            bail!("{name} ended with {status}{}", self.tail());
        }
        Ok(())
    }

    /// Waits for the process to exit; kills it after `timeout`.
    fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
            if let Some(status) = status {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not exit within {timeout:?}: killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it as Ctrl-C would, and checks that it ended well.
    fn interrupt(&mut self) -> anyhow::Result<()> {
        shell::run(Command::new("kill").args(["-INT", &self.pid().to_string()]))?;
        let status = self.wait(Duration::from_secs(120))?;
        if !status.success() {
            let name = self.name;
            bail!("{name} ended with {status} after Ctrl-C{}", self.tail());
        }
        Ok(())
    }

    /// Every line it printed that no `wait_for` consumed, waiting up to `grace` for the rest
    /// of an exited process's output.
    fn take_lines(&mut self, grace: Duration) -> Vec<String> {
        let deadline = Instant::now() + grace;
        let mut lines = std::mem::take(&mut self.log);
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            lines.push(line);
        }
        lines
    }

    /// The last lines it printed, for an error message.
    fn tail(&mut self) -> String {
        self.log.extend(self.lines.try_iter());
        let start = self.log.len().saturating_sub(20);
        self.log[start..]
            .iter()
            .map(|l| format!("\n  | {l}"))
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn forward_lines(stream: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// The number after `key=` in a workload's result line.
fn field(line: &str, key: &str) -> anyhow::Result<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no number for `{key}` in the result line `{line}`"))
}

fn parse_word<T: std::str::FromStr>(
    word: Option<&str>,
    what: &str,
    line: &str,
) -> anyhow::Result<T> {
    word.and_then(|w| w.parse().ok())
        .with_context(|| format!("no {what} in the line `{line}`"))
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The medians of each configuration that has runs, compared with `none`'s.
fn summarize(workload: Workload, runs: &[Run]) -> Vec<ConfigResult> {
    let throughput = workload == Workload::NodeHttp;
    let mut results = Vec::new();
    let mut baseline: Option<(f64, Option<f64>)> = None;
    for config in Config::ALL {
        let mine: Vec<&Run> = runs
            .iter()
            .filter(|r| r.workload == workload && r.config == config)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let metrics: Vec<f64> = mine.iter().map(|r| r.metric).collect();
        let median_metric = median(metrics.iter().copied());
        let ops = median(mine.iter().map(|r| r.ops as f64)) as u64;
        let cpu: Option<Vec<f64>> = mine.iter().map(|r| r.workload_cpu_s).collect();
        let cpu = cpu.map(median);
        let usages: Option<Vec<TracerUsage>> = mine.iter().map(|r| r.tracer).collect();
        let tracer = usages.map(|u| TracerUsage {
            attach_cpu_s: median(u.iter().map(|u| u.attach_cpu_s)),
            run_cpu_s: median(u.iter().map(|u| u.run_cpu_s)),
            peak_rss_mib: median(u.iter().map(|u| u.peak_rss_mib)),
        });
        if config == Config::None {
            baseline = Some((median_metric, cpu));
        }
        // Without a baseline there is nothing to compare with.
        let Some((base, base_cpu)) = baseline else {
            continue;
        };
        let (slowdown, added_per_op_s) = if throughput {
            (base / median_metric, 1.0 / median_metric - 1.0 / base)
        } else {
            (
                median_metric / base,
                (median_metric - base) / ops.max(1) as f64,
            )
        };
        let added_cpu_per_op_s = match (cpu, base_cpu) {
            (Some(c), Some(b)) => Some((c - b) / ops.max(1) as f64),
            _ => None,
        };
        results.push(ConfigResult {
            config,
            metrics,
            median: median_metric,
            ops,
            slowdown,
            added_per_op_s,
            added_cpu_per_op_s,
            tracer,
        });
    }
    results
}

/// `a`'s added wall time per operation over `b`'s, when both are measurably above zero.
fn cost_ratio(results: &[ConfigResult], a: Config, b: Config) -> Option<f64> {
    ratio_of(results, a, b, |r| Some(r.added_per_op_s))
}

/// `a`'s added CPU time per operation over `b`'s. Less noisy than wall time on a busy machine:
/// waiting for a CPU does not count.
fn cpu_cost_ratio(results: &[ConfigResult], a: Config, b: Config) -> Option<f64> {
    ratio_of(results, a, b, |r| r.added_cpu_per_op_s)
}

fn ratio_of(
    results: &[ConfigResult],
    a: Config,
    b: Config,
    cost: impl Fn(&ConfigResult) -> Option<f64>,
) -> Option<f64> {
    let of = |c: Config| {
        let r = results.iter().find(|r| r.config == c)?;
        cost(r).filter(|&s| s > 0.0)
    };
    Some(of(a)? / of(b)?)
}

fn format_metric(workload: Workload, metric: f64) -> String {
    if workload == Workload::NodeHttp {
        format!("{metric:.0} req/s")
    } else {
        format!("{metric:.3} s")
    }
}

fn op_name(workload: Workload) -> &'static str {
    match workload {
        Workload::Churn => "malloc+free pair",
        Workload::Keep => "kept block",
        Workload::NodeBuffers => "Buffer",
        Workload::NodeHttp | Workload::NodeService => "request",
    }
}

fn format_ratio(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

fn print_table(
    workload: Workload,
    results: &[ConfigResult],
    unavailable: &BTreeMap<Config, String>,
    rounds: usize,
) {
    let runs = match (workload, results.first()) {
        (Workload::NodeHttp, _) => "under wrk -t1 -c20".to_string(),
        (_, Some(r)) => format!("{} x {} per run", r.ops, op_name(workload)),
        (_, None) => String::new(),
    };
    println!(
        "\n{}: {runs}; median of {rounds} round(s); added = over none, per {}",
        workload.name(),
        op_name(workload)
    );
    println!(
        "  {:<10} {:>13} {:>9} {:>11} {:>11} {:>8} {:>8} {:>10} {:>10} {:>8}",
        "config",
        "median",
        "slowdown",
        "added/op",
        "added cpu",
        "x floor",
        "ref/this",
        "cpu s run",
        "cpu attach",
        "RSS MiB"
    );
    for config in Config::ALL.into_iter().filter(|c| c.applies_to(workload)) {
        if let Some(why) = unavailable.get(&config) {
            println!("  {:<10} not available ({why})", config.name());
            continue;
        }
        let Some(r) = results.iter().find(|r| r.config == config) else {
            println!("  {:<10} no successful runs", config.name());
            continue;
        };
        let head = format!(
            "  {:<10} {:>13} {:>8.2}x",
            config.name(),
            format_metric(workload, r.median),
            r.slowdown
        );
        let Some(t) = r.tracer else {
            println!("{head}");
            continue;
        };
        let ns = |s: Option<f64>| s.map_or_else(|| "-".into(), |s| format!("{:.0} ns", s * 1e9));
        println!(
            "{head} {:>11} {:>11} {:>8} {:>8} {:>10.3} {:>10.2} {:>8.1}",
            ns(Some(r.added_per_op_s)),
            ns(r.added_cpu_per_op_s),
            format_ratio(cost_ratio(results, config, Config::Floor)),
            format_ratio(cost_ratio(results, Config::Reference, config)),
            t.run_cpu_s,
            t.attach_cpu_s,
            t.peak_rss_mib
        );
    }
    if let (Some(floor), Some(reference)) = (
        cost_ratio(results, Config::Exact, Config::Floor),
        cost_ratio(results, Config::Reference, Config::Exact),
    ) {
        println!("  exact costs {floor:.2}x the floor; the reference costs {reference:.2}x exact");
    }
}

/// Where the time of leaktrace's programs goes: one more churn run under the floor and one under
/// exact, with the kernel's BPF run-time statistics on, reading each program's runs and time.
/// The statistics add two clock reads to every program run, so these runs are not timed and
/// the floor's empty programs show what the statistics themselves cost.
fn program_costs(bench: &Bench) -> anyhow::Result<Value> {
    let _stats = BpfStats::enable()?;
    println!("\nprograms: churn, kernel BPF run-time statistics on (runs not timed)");
    println!("  config   program                   runs   ns/run");
    let mut configs = Vec::new();
    for config in [Config::Floor, Config::Exact] {
        let mut programs = Vec::new();
        let report = format!("programs-churn-{}.json", config.name());
        let run = run_observed(bench, Workload::Churn, config, &report, |tracer| {
            programs = program_stats(tracer)?;
            Ok(())
        })?;
        let mut total_ns = 0;
        let mut listed = Vec::new();
        for (name, runs, ns) in programs.into_iter().filter(|(_, runs, _)| *runs > 0) {
            println!(
                "  {:<8} {name:<20} {runs:>10} {:>8.0}",
                config.name(),
                ns as f64 / runs as f64
            );
            total_ns += ns;
            listed.push(
                json!({"program": name, "runs": runs, "ns_per_run": ns as f64 / runs as f64}),
            );
        }
        let per_pair = total_ns as f64 / run.ops.max(1) as f64;
        println!(
            "  {:<8} all programs: {per_pair:.0} ns per malloc+free pair",
            config.name()
        );
        configs.push(json!({"config": config.name(), "ns_per_pair": per_pair, "programs": listed}));
    }
    Ok(Value::Array(configs))
}

/// Each BPF program `pid` holds: name, runs and nanoseconds run, as the kernel counts them.
fn program_stats(pid: u32) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u64>().ok()),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    let mut programs = Vec::new();
    for id in ids {
        let text = shell::output(Command::new("bpftool").args([
            "--json",
            "prog",
            "show",
            "id",
            &id.to_string(),
        ]))
        .with_context(|| format!("bpftool cannot show program {id}"))?;
        let info: Value = serde_json::from_str(&text)
            .with_context(|| format!("bpftool's JSON for program {id}"))?;
        programs.push((
            info["name"].as_str().unwrap_or("?").to_owned(),
            info["run_cnt"].as_u64().unwrap_or(0),
            info["run_time_ns"].as_u64().unwrap_or(0),
        ));
    }
    Ok(programs)
}

/// The kernel's BPF run-time statistics (`kernel.bpf_stats_enabled`), on while this lives and
/// set back as they were after.
struct BpfStats {
    before: String,
}

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> anyhow::Result<Self> {
        let before = fs::read_to_string(BPF_STATS_SYSCTL)
            .with_context(|| format!("reading {BPF_STATS_SYSCTL}"))?;
        fs::write(BPF_STATS_SYSCTL, "1").with_context(|| format!("writing {BPF_STATS_SYSCTL}"))?;
        Ok(Self { before })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(err) = fs::write(BPF_STATS_SYSCTL, self.before.trim()) {
            eprintln!("bench: cannot set {BPF_STATS_SYSCTL} back: {err}");
        }
    }
}

/// Prints the two goals for churn, per malloc+free pair; returns them for the JSON.
/// Judged on wall time, as the issue states them; the CPU-time ratio is printed beside it.
/// A measurement, not a test: a missed goal is reported, never an error.
fn print_churn_goals(results: &[ConfigResult]) -> Value {
    let per_pair: Vec<String> = results
        .iter()
        .filter(|r| r.config != Config::None)
        .map(|r| {
            let cpu = r.added_cpu_per_op_s.unwrap_or(f64::NAN);
            format!(
                "{} {:.0}/{:.0}",
                r.config.name(),
                r.added_per_op_s * 1e9,
                cpu * 1e9
            )
        })
        .collect();
    println!(
        "  ns per malloc+free pair over none (wall/cpu): {}",
        per_pair.join(", ")
    );
    let goal = |name: &str, (a, b): (Config, Config), limit: f64, at_most: bool| {
        let value = cost_ratio(results, a, b);
        let met = value.map(|v| if at_most { v <= limit } else { v >= limit });
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        let sign = if at_most { "<=" } else { ">=" };
        let cpu = cpu_cost_ratio(results, a, b);
        println!(
            "  goal {name} per pair {sign} {limit}: {} ({verdict}); by cpu time {}",
            format_ratio(value),
            format_ratio(cpu)
        );
        json!({ "value": value, "cpu_value": cpu, "goal": format!("{sign} {limit}"), "met": met })
    };
    json!({
        "exact_vs_floor_per_pair": goal("exact/floor", (Config::Exact, Config::Floor), 1.3, true),
        "reference_vs_exact_per_pair": goal("reference/exact", (Config::Reference, Config::Exact), 5.0, false),
    })
}

/// Prints #10's goal on the Node Buffer workload: naming JavaScript frames from V8's data (the
/// probes recognising JS frames, the tracer reading the heap) costs at most 1.5x the native-only
/// capture per traced allocation. A measurement, not a test.
fn print_js_naming_goal(results: &[ConfigResult]) -> Value {
    let value = cost_ratio(results, Config::Exact, Config::NativeOnly);
    let cpu = cpu_cost_ratio(results, Config::Exact, Config::NativeOnly);
    let met = value.map(|v| v <= 1.5);
    println!(
        "  goal JS naming: exact/native-only per Buffer <= 1.5: {} ({}); by cpu time {}",
        format_ratio(value),
        match met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        },
        format_ratio(cpu)
    );
    json!({ "value": value, "cpu_value": cpu, "goal": "<= 1.5", "met": met })
}

fn workload_json(workload: Workload, results: &[ConfigResult]) -> Value {
    let configs: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "config": r.config.name(),
                "metrics": r.metrics,
                "median": r.median,
                "ops": r.ops,
                "slowdown": r.slowdown,
                "added_ns_per_op": r.added_per_op_s * 1e9,
                "added_cpu_ns_per_op": r.added_cpu_per_op_s.map(|s| s * 1e9),
                "cost_vs_floor": cost_ratio(results, r.config, Config::Floor),
                "reference_cost_vs_this": cost_ratio(results, Config::Reference, r.config),
                "tracer": r.tracer.map(|t| json!({
                    "attach_cpu_s": t.attach_cpu_s,
                    "run_cpu_s": t.run_cpu_s,
                    "peak_rss_mib": t.peak_rss_mib,
                })),
            })
        })
        .collect();
    let (metric, better) = if workload == Workload::NodeHttp {
        ("requests_per_second", "higher")
    } else {
        ("seconds", "lower")
    };
    json!({
        "workload": workload.name(),
        "metric": metric,
        "better": better,
        "op": op_name(workload),
        "configs": configs,
    })
}

fn machine_json() -> Value {
    let read = |p: &str| fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    json!({
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "load_average_at_end": read("/proc/loadavg"),
    })
}

/// Writes `value` to `path` through a `.tmp` file renamed into place: never half-written.
fn write_atomically(path: &Path, value: &Value) -> anyhow::Result<()> {
    let dir = path.parent().context("results path has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let text = serde_json::to_string_pretty(value).context("encoding results")?;
    fs::write(&tmp, text + "\n").with_context(|| format!("writing {}", tmp.to_string_lossy()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

/// `time` as `YYYYMMDDTHHMMSSZ` (UTC), for result file names that sort by time.
fn utc_timestamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date, in 400-year eras that start on March 1st (so the
    // leap day is the last day of a year).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "19700101T000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723); // 2000-02-29 01:02:03
        assert_eq!(utc_timestamp(leap), "20000229T010203Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_798_761_599); // 2026-12-31 23:59:59
        assert_eq!(utc_timestamp(later), "20261231T235959Z");
    }

    #[test]
    fn losses_of_a_report() {
        let report = |losses: Value| json!({"totals": {"losses": losses}});
        let clean = report(json!({"unknown_frees": 0, "live_map_full": 0, "missed_returns": 0}));
        assert_eq!(report_losses(&clean).unwrap(), vec![]);
        // Frees of blocks from before the attach are not the tracer's losses.
        let attached = report(json!({"unknown_frees": 12, "live_map_full": 0}));
        assert_eq!(report_losses(&attached).unwrap(), vec![]);
        let lossy = report(
            json!({"unknown_frees": 3, "live_map_full": 7, "stack_map_full": 0,
                                  "map_events_lost": 1}),
        );
        assert_eq!(
            report_losses(&lossy).unwrap(),
            vec![
                ("live_map_full".to_owned(), 7),
                ("map_events_lost".to_owned(), 1)
            ]
        );
        assert_eq!(
            describe_losses(&report_losses(&lossy).unwrap()),
            "live_map_full=7, map_events_lost=1"
        );
        assert!(report_losses(&json!({"totals": {}})).is_err());
        assert!(report_losses(&report(json!({"live_map_full": "many"}))).is_err());
    }

    #[test]
    fn result_fields() {
        let line = "result elapsed_ns=123 ops=4 cpu_ns=5";
        assert_eq!(field(line, "elapsed_ns").ok(), Some(123));
        assert_eq!(field(line, "ops").ok(), Some(4));
        assert!(field(line, "missing").is_err());
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
