//! The production benchmark (`--workloads node-service`): a Node HTTP service that leaks slowly
//! and a clean one, each loaded for minutes untraced, under watch mode, and under the agent with
//! its default settings (tiered). What a team leaving the agent on its nodes wants to know: what
//! it costs the service's throughput and tail latency, whether it found the leak and named the
//! function, and that on the clean service it never opened an exact window.

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
    rate: f64,
    p99_ms: f64,
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
    let node = bench.bin.join(NODE_NAME);
    let system_node = which("node")?;
    fs::copy(&system_node, &node)
        .with_context(|| format!("copying {} to {}", system_node.display(), node.display()))?;
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
                match run_once(bench, server, tracing, seconds) {
                    Ok(run) => {
                        eprintln!(
                            "bench: {label}: {:.0} req/s, p99 {:.2} ms",
                            run.rate, run.p99_ms
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
    Ok(report(&runs, seconds, failures))
}

fn run_once(bench: &Bench, server: Server, tracing: Tracing, seconds: u32) -> anyhow::Result<Run> {
    let mut cmd = super::workload_command(bench, super::Workload::NodeService);
    cmd.arg(server.name());
    let mut target = Proc::spawn("service", &mut cmd)?;
    let ready = target.wait_for("`ready` line", Duration::from_secs(30), |l| {
        l.starts_with("ready ")
    })?;
    let mut words = ready.split_whitespace().skip(1);
    let pid: u32 = parse_word(words.next(), "pid", &ready)?;
    let port: u16 = parse_word(words.next(), "port", &ready)?;
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
            let mut proc = Proc::spawn("leaktrace attach --mode watch", &mut cmd)?;
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
            let proc = Proc::spawn("leaktrace agent", &mut cmd)?;
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
    let (rate, _, p99_ms) = super::wrk(port, seconds)?;
    let cpu_after = tracer_pid.map(super::cpu_seconds).transpose()?;
    let tracer_cpu_percent = cpu_before
        .zip(cpu_after)
        .map(|(before, after)| (after - before) / started.elapsed().as_secs_f64() * 100.0);
    let mut run = Run {
        server,
        tracing,
        rate,
        p99_ms,
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

/// The medians side by side, the goals, and the JSON of it all.
fn report(runs: &[Run], seconds: u32, failures: Vec<String>) -> Value {
    println!("\nnode-service ({seconds} s of wrk -t1 -c20 per run; medians over rounds)");
    println!(
        "{:<6} {:<6} {:>10} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9}",
        "server", "tracer", "req/s", "loss", "p99 ms", "named", "windows", "cost %", "tracer %"
    );
    let mut rows = Vec::new();
    let mut goals = Vec::new();
    for server in [Server::Leak, Server::Clean] {
        let of = |tracing: Tracing| -> Vec<&Run> {
            runs.iter()
                .filter(|r| r.server == server && r.tracing == tracing)
                .collect()
        };
        let base = median(of(Tracing::None).iter().map(|r| r.rate));
        for tracing in Tracing::ALL {
            let these = of(tracing);
            if these.is_empty() {
                continue;
            }
            let rate = median(these.iter().map(|r| r.rate));
            let p99 = median(these.iter().map(|r| r.p99_ms));
            let loss = (1.0 - rate / base) * 100.0;
            let named = these.iter().all(|r| r.named == Some(true));
            let windows = these.iter().filter_map(|r| r.windows).max();
            let cost = median(these.iter().filter_map(|r| r.overhead_percent));
            let tracer_cpu = median(these.iter().filter_map(|r| r.tracer_cpu_percent));
            println!(
                "{:<6} {:<6} {rate:>10.0} {:>7.1}% {p99:>9.2} {:>8} {:>8} {:>9} {:>9}",
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
    json!({ "seconds": seconds, "rows": rows, "goals": goals, "failures": failures })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_latencies() {
        assert_eq!(milliseconds("812.00us"), Some(0.812));
        assert_eq!(milliseconds("1.23ms"), Some(1.23));
        assert_eq!(milliseconds("2.5s"), Some(2500.0));
        assert_eq!(milliseconds("fast"), None);
    }
}
