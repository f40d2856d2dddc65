//! `cargo xtask soak`: leaktrace on a churning and leaking workload for minutes, printing the
//! tracer's resident memory, CPU time and live-block map fill as it goes. Memory must follow the
//! live blocks and distinct stacks, and stay flat while only calls go on; the goal is at most
//! 100 MiB of tracer RSS with a million live blocks tracked, and the soak says where it stands.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::shell::{self, cargo};

/// The goal: tracer RSS with a million live blocks tracked.
const GOAL_RSS_MIB: f64 = 100.0;
const GOAL_BLOCKS: u64 = 1_000_000;

/// Capacity of the probes' live-block map (leaktrace's default), for the fill ratio.
const LIVE_MAP_CAPACITY: u64 = 1 << 20;

/// How often a line is printed.
const EVERY: Duration = Duration::from_secs(10);

pub struct Options {
    pub minutes: u64,
    pub keep: u64,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    if !shell::is_root() {
        bail!("the soak loads eBPF programs: run it as root");
    }
    let root = shell::root();
    shell::run(cargo().args(["build", "--release", "--package", "leaktrace"]))?;
    let bin = root.join("target/bench");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let workload = bin.join("soak");
    shell::run(
        Command::new("gcc")
            .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
            .arg(&workload)
            .arg(root.join("bench/workloads/soak.c")),
    )?;
    let seconds = options.minutes * 60;
    let mut target = Command::new(&workload)
        .args([seconds.to_string(), options.keep.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the soak workload")?;
    let mut target_out = BufReader::new(target.stdout.take().context("workload stdout")?);
    let mut line = String::new();
    target_out.read_line(&mut line)?;
    let pid: u32 = line
        .strip_prefix("ready ")
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("the workload said {line:?}, not ready"))?;

    let report = root.join("target/bench/soak-report.json");
    let mut tracer = Command::new(root.join("target/release/leaktrace"))
        .args(["attach", &pid.to_string(), "--format", "json", "-o"])
        .arg(&report)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("starting leaktrace")?;
    let tracer_pid = tracer.id();
    // The tracer's status lines (every 5 s on a pipe) say how many blocks it tracks.
    let (tx, status) = mpsc::channel::<String>();
    let stderr = tracer.stderr.take().context("leaktrace stderr")?;
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_for_attach(&status)?;
    let mut stdin = target.stdin.take().context("workload stdin")?;
    writeln!(stdin, "go")?;

    println!(
        "soak: {} min, the workload keeps {} blocks from 64 stacks by 60 % of the run while two \
         threads churn",
        options.minutes, options.keep
    );
    println!(
        "{:>6}  {:>12}  {:>12}  {:>12}  {:>10}  {:>10}",
        "time", "tracer RSS", "tracer CPU", "kernel maps", "blocks", "map fill"
    );
    let started = Instant::now();
    let (mut blocks, mut peak_rss, mut rss_at_goal) = (0u64, 0.0f64, None);
    let end = Duration::from_secs(seconds);
    while started.elapsed() < end {
        thread::sleep(EVERY.min(end.saturating_sub(started.elapsed())));
        while let Ok(line) = status.try_recv() {
            if let Some(n) = blocks_in(&line) {
                blocks = n;
            }
        }
        let rss = rss_mib(tracer_pid)?;
        peak_rss = peak_rss.max(rss);
        if blocks >= GOAL_BLOCKS.min(options.keep) {
            rss_at_goal = Some(rss_at_goal.map_or(rss, |r: f64| r.max(rss)));
        }
        println!(
            "{:>5.0}s  {:>8.1} MiB  {:>10.1} s  {:>8.1} MiB  {:>10}  {:>9.1}%",
            started.elapsed().as_secs_f64(),
            rss,
            crate::bench::cpu_seconds(tracer_pid)?,
            map_memory_mib(tracer_pid),
            blocks,
            blocks as f64 * 100.0 / LIVE_MAP_CAPACITY as f64
        );
    }
    shell::run(Command::new("kill").args(["-INT", &tracer_pid.to_string()]))?;
    let status = tracer.wait().context("waiting for leaktrace")?;
    drop(stdin);
    let _ = target.wait();
    if !status.success() {
        bail!("leaktrace failed: {status}");
    }
    println!(
        "\npeak tracer RSS {peak_rss:.1} MiB; report in {}",
        shown(&report)
    );
    match rss_at_goal {
        Some(rss) if options.keep >= GOAL_BLOCKS => println!(
            "goal: at most {GOAL_RSS_MIB} MiB with {GOAL_BLOCKS} live blocks: {rss:.1} MiB, {}",
            if rss <= GOAL_RSS_MIB {
                "met"
            } else {
                "NOT met"
            }
        ),
        _ => println!(
            "goal: at most {GOAL_RSS_MIB} MiB with {GOAL_BLOCKS} live blocks: not reached in this \
             run (keep {} blocks for longer)",
            options.keep
        ),
    }
    Ok(())
}

fn wait_for_attach(status: &mpsc::Receiver<String>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match status.recv_timeout(Duration::from_secs(1)) {
            Ok(line) if line.contains("attached") => return Ok(()),
            Ok(line) if line.contains("error") => bail!("leaktrace: {line}"),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("leaktrace ended before attaching"),
        }
    }
    bail!("leaktrace did not attach within a minute")
}

/// The block count of a status line: `... live 12.3 MiB in 45678 blocks, ...`.
fn blocks_in(line: &str) -> Option<u64> {
    let (before, _) = line.split_once(" blocks")?;
    before.rsplit(' ').next()?.parse().ok()
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS line")?;
    Ok(kib / 1024.0)
}

/// Kernel memory charged for the tracer's BPF maps: the `memlock` of each map descriptor it
/// holds (the live blocks live there, not in the tracer's RSS).
fn map_memory_mib(pid: u32) -> f64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0.0;
    };
    let bytes: u64 = dir
        .flatten()
        .filter_map(|entry| fs::read_to_string(entry.path()).ok())
        .filter(|info| info.contains("map_type:"))
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum();
    bytes as f64 / (1024.0 * 1024.0)
}

fn shown(path: &Path) -> String {
    path.strip_prefix(shell::root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_block_count_of_a_status_line() {
        let line = "leaktrace: 12s, 1 target, live 30.5 MiB in 456789 blocks, 2000 allocs/s, \
                    fastest growing: none";
        assert_eq!(super::blocks_in(line), Some(456_789));
        assert_eq!(super::blocks_in("leaktrace: attached"), None);
    }
}
