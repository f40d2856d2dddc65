//! The production benchmark (`--workloads node-service`): a Node HTTP service that leaks slowly
//! and a clean one, each loaded for minutes untraced, under watch mode, and under the agent with
//! its default settings (tiered). What a team leaving the agent on its nodes wants to know: what
//! it costs the service's throughput and tail latency, whether it found the leak and named the
//! function, and that on the clean service it never opened an exact window.
//!
//! Paired runs. This VM's speed drifts by more than the goals between one minute and the next
//! (the untraced service's rate moved ±12 % between 60 s runs), so each run loads two copies of
//! the service at once, each with its own `wrk`, on its own half of the CPUs: `A` is never
//! traced; `B` is the one under test, and the tracer runs on `B`'s CPUs, so all of its CPU time
//! is taken from `B`. Drift slows both alike and cancels in `B`'s rate over `A`'s; the loss is
//! that ratio against the same ratio with neither traced (`A`/`A`: what the halves differ by).
//! The page-fault event of watch mode fires on every CPU, so `A` pays its faults' share of the
//! probes too (about 2 µs per fault, a few hundred faults a second): the loss is understated by
//! about that much, 0.1 % here.

use std::{
    fs,
    net::TcpListener,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{Bench, Proc, median, parse_word};

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

/// One loaded run.
struct Run {
    server: Server,
    tracing: Tracing,
    /// The service under test (`B`).
    rate: f64,
    p99_ms: f64,
    /// `B`'s rate over the untraced reference's, loaded at the same time.
    ratio: f64,
    /// Whether the tracer's report named the leaking function in a suspect stack.
    named: Option<bool>,
    /// The agent's exact windows and their average cost, in percent of one CPU.
    windows: Option<u64>,
    overhead_percent: Option<f64>,
    /// The tracer's own CPU time while the load ran, in percent of one CPU: on a machine whose
    /// cores the service and the load saturate, what the tracer takes from them, measured
    /// apart from the throughput's noise.
    tracer_cpu_percent: Option<f64>,
}

/// Runs every server under every tracing, `rounds` times in rotated order, and prints the table
/// and the goals; returns them as JSON.
pub(super) fn run(bench: &Bench, rounds: usize) -> anyhow::Result<Value> {
    let system_node = which("node")?;
    for name in [NODE_NAME, REFERENCE_NAME] {
        let node = bench.bin.join(name);
        fs::copy(&system_node, &node)
            .with_context(|| format!("copying {} to {}", system_node.display(), node.display()))?;
    }
    let halves = Halves::of_this_process()?;
    let seconds: u32 = if bench.quick { 60 } else { 240 };
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for round in 0..rounds {
        for server in [Server::Leak, Server::Clean] {
            let mut order = Tracing::ALL.to_vec();
            order.rotate_left(round % Tracing::ALL.len());
            for tracing in order {
                let label = format!(
                    "round {}/{rounds} node-service/{}/{}",
                    round + 1,
                    server.name(),
                    tracing.name()
                );
                match run_once(bench, &halves, server, tracing, seconds) {
                    Ok(run) => {
                        eprintln!(
                            "bench: {label}: {:.0} req/s ({:.4} of the reference's), p99 {:.2} ms",
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
        }
    }
    Ok(report(&runs, seconds, &halves, failures))
}

/// The CPUs this process may use, split in two: the reference service and its load on one
/// half, the service under test, its load and its tracer on the other.
struct Halves {
    reference: String,
    tested: String,
}

impl Halves {
    fn of_this_process() -> anyhow::Result<Self> {
        let status =
            fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .context("no Cpus_allowed_list in /proc/self/status")?;
        let cpus =
            cpu_list(list.trim()).with_context(|| format!("cannot read the CPU list {list:?}"))?;
        if cpus.len() < 2 {
            bail!("the paired service bench needs two CPUs; this process may use {list}");
        }
        let join = |half: &[u32]| {
            half.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let (reference, tested) = cpus.split_at(cpus.len() / 2);
        Ok(Self {
            reference: join(reference),
            tested: join(tested),
        })
    }
}

/// A kernel CPU list (`0-3,6`), expanded.
fn cpu_list(list: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u32>().ok()?..=b.parse().ok()?),
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// `cmd` run on `cpus` only (`taskset`, util-linux: its threads and children stay there), as
/// `program` (the service's copies differ only by name).
fn pinned(cpus: &str, program: &std::ffi::OsStr, cmd: &Command) -> Command {
    let mut out = Command::new("taskset");
    out.args(["-c", cpus]).arg(program).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => out.env(key, value),
            None => out.env_remove(key),
        };
    }
    out
}

/// Starts the copy of the service named `binary` on `cpus`; returns it with its PID and port.
fn start_service(
    bench: &Bench,
    server: Server,
    binary: &str,
    cpus: &str,
) -> anyhow::Result<(Proc, u32, u16)> {
    let mut cmd = super::workload_command(bench, super::Workload::NodeService);
    cmd.arg(server.name());
    let mut proc = Proc::spawn(
        "service",
        &mut pinned(cpus, bench.bin.join(binary).as_os_str(), &cmd),
    )?;
    let ready = proc.wait_for("`ready` line", Duration::from_secs(30), |l| {
        l.starts_with("ready ")
    })?;
    let mut words = ready.split_whitespace().skip(1);
    let pid: u32 = parse_word(words.next(), "pid", &ready)?;
    let port: u16 = parse_word(words.next(), "port", &ready)?;
    Ok((proc, pid, port))
}

fn run_once(
    bench: &Bench,
    halves: &Halves,
    server: Server,
    tracing: Tracing,
    seconds: u32,
) -> anyhow::Result<Run> {
    let (reference, _, reference_port) =
        start_service(bench, server, REFERENCE_NAME, &halves.reference)?;
    let (target, pid, port) = start_service(bench, server, NODE_NAME, &halves.tested)?;
    let report = bench
        .reports
        .join(format!("service-{}-{}.json", server.name(), tracing.name()));
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
                &mut pinned(&halves.tested, cmd.get_program(), &cmd),
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
                &mut pinned(&halves.tested, cmd.get_program(), &cmd),
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
    let started = Instant::now();
    // Both loads at once: whatever slows the machine slows both.
    let (reference_load, load) = std::thread::scope(|scope| {
        let reference_load =
            scope.spawn(|| super::wrk(Some(&halves.reference), reference_port, seconds));
        let load = super::wrk(Some(&halves.tested), port, seconds);
        (reference_load.join(), load)
    });
    let (reference_rate, _, _) =
        reference_load.map_err(|_| anyhow::anyhow!("the reference's wrk thread panicked"))??;
    let (rate, _, p99_ms) = load?;
    let cpu_after = tracer_pid.map(super::cpu_seconds).transpose()?;
    let tracer_cpu_percent = cpu_before
        .zip(cpu_after)
        .map(|(before, after)| (after - before) / started.elapsed().as_secs_f64() * 100.0);
    let mut run = Run {
        server,
        tracing,
        rate,
        p99_ms,
        ratio: rate / reference_rate,
        named: None,
        windows: None,
        overhead_percent: None,
        tracer_cpu_percent,
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
                fs::write(
                    &report,
                    serde_json::to_vec_pretty(&json!({
                        "targets": all, "report": watched, "window": window,
                    }))?,
                )
                .with_context(|| format!("writing {}", report.display()))?;
                stop(proc)?;
            }
            None => {
                stop(proc)?;
                let text = fs::read_to_string(&report)
                    .with_context(|| format!("reading {}", report.display()))?;
                run.named = Some(names_leak(&serde_json::from_str(&text)?));
            }
        }
    }
    target.finish()?;
    reference.finish()?;
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

/// Stops a tracer as Ctrl-C would, and checks that it ended well.
fn stop(proc: Proc) -> anyhow::Result<()> {
    super::Tracer {
        proc,
        attach_cpu_s: 0.0,
    }
    .stop()
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

/// The medians side by side, the goals, and the JSON of it all. A configuration's loss is its
/// median ratio to the reference against the untraced median ratio.
fn report(runs: &[Run], seconds: u32, halves: &Halves, failures: Vec<String>) -> Value {
    println!(
        "\nnode-service ({seconds} s of wrk -t1 -c20 per run on CPUs {}, the untraced reference \
         loaded alike on CPUs {} at the same time; medians over rounds)",
        halves.tested, halves.reference
    );
    println!(
        "{:<6} {:<6} {:>10} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9}",
        "server",
        "tracer",
        "req/s",
        "ratio",
        "loss",
        "p99 ms",
        "named",
        "windows",
        "cost %",
        "tracer %"
    );
    let mut rows = Vec::new();
    let mut goals = Vec::new();
    for server in [Server::Leak, Server::Clean] {
        let of = |tracing: Tracing| -> Vec<&Run> {
            runs.iter()
                .filter(|r| r.server == server && r.tracing == tracing)
                .collect()
        };
        let base = median(of(Tracing::None).iter().map(|r| r.ratio));
        for tracing in Tracing::ALL {
            let these = of(tracing);
            if these.is_empty() {
                continue;
            }
            let rate = median(these.iter().map(|r| r.rate));
            let ratio = median(these.iter().map(|r| r.ratio));
            let p99 = median(these.iter().map(|r| r.p99_ms));
            let loss = (1.0 - ratio / base) * 100.0;
            let named = these.iter().all(|r| r.named == Some(true));
            let windows = these.iter().filter_map(|r| r.windows).max();
            let cost = median(these.iter().filter_map(|r| r.overhead_percent));
            let tracer_cpu = median(these.iter().filter_map(|r| r.tracer_cpu_percent));
            println!(
                "{:<6} {:<6} {rate:>10.0} {ratio:>8.4} {:>7.1}% {p99:>9.2} {:>8} {:>8} {:>9} {:>9}",
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
                if tracing == Tracing::None {
                    "-".into()
                } else {
                    format!("{tracer_cpu:.2}")
                },
            );
            rows.push(json!({
                "server": server.name(), "tracer": tracing.name(), "req_per_s": rate,
                "ratio_to_reference": ratio,
                "ratios": these.iter().map(|r| r.ratio).collect::<Vec<_>>(),
                "loss_percent": loss, "p99_ms": p99, "named": named, "windows": windows,
                "agent_average_overhead_percent": (tracing == Tracing::Agent).then_some(cost),
                "tracer_cpu_percent": (tracing != Tracing::None).then_some(tracer_cpu),
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
    json!({
        "seconds": seconds, "method": "paired", "cpus_tested": halves.tested,
        "cpus_reference": halves.reference, "rows": rows, "goals": goals, "failures": failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(cpu_list("0-2,5,7-8"), Some(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(cpu_list("x"), None);
    }

    #[test]
    fn wrk_latencies() {
        assert_eq!(milliseconds("812.00us"), Some(0.812));
        assert_eq!(milliseconds("1.23ms"), Some(1.23));
        assert_eq!(milliseconds("2.5s"), Some(2500.0));
        assert_eq!(milliseconds("fast"), None);
    }
}
