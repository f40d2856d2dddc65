//! `cargo xtask fuzz`: every parser of hostile input, fuzzed for a bounded time each.
//!
//! The targets are the ignored `fuzz_<target>` tests of `leaktrace/tests/fuzz.rs`, listed from
//! the test binary so that a new target needs no change here. Each runs in a test process of
//! its own, one after another: a crash or a hang in one ends only that target's run.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::shell::{self, cargo};

/// The test target and the prefix of its fuzzing tests.
const TEST: &str = "fuzz";
const PREFIX: &str = "fuzz_";

/// How one target's run ended.
enum Outcome {
    /// No input panicked.
    Clean,
    /// An input panicked or hung; it is this corpus file.
    Found(String),
    /// The test failed without naming an input (it did not build, or was killed).
    Failed(String),
}

struct Run {
    target: String,
    /// Inputs tried, as the test reports them; `None` when it stopped before saying.
    inputs: Option<u64>,
    outcome: Outcome,
}

pub fn run(seconds: u64, targets: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    // Built first, with cargo's progress shown: the timed runs then start at once.
    shell::run(test_command().arg("--no-run"))?;
    let available = list()?;
    let chosen = if targets.is_empty() {
        available
    } else {
        if let Some(unknown) = targets.iter().find(|t| !available.contains(t)) {
            bail!(
                "no fuzz target named {unknown:?}; the targets are: {}",
                available.join(", ")
            );
        }
        targets.to_vec()
    };
    let mut runs = Vec::new();
    for target in chosen {
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        runs.push(fuzz(&target, seconds)?);
    }

    eprintln!(
        "xtask: fuzzed {} targets for {seconds} s each ({:.0?} in all):",
        runs.len(),
        started.elapsed()
    );
    let width = runs.iter().map(|r| r.target.len()).max().unwrap_or(0);
    for run in &runs {
        let inputs = run.inputs.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let outcome = match &run.outcome {
            Outcome::Clean => "no crash".to_owned(),
            Outcome::Found(path) => format!("CRASH: {path}"),
            Outcome::Failed(why) => format!("FAILED: {why}"),
        };
        eprintln!("  {:width$}  {inputs:>9} inputs  {outcome}", run.target);
    }
    let bad: Vec<&str> = runs
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Clean))
        .map(|r| r.target.as_str())
        .collect();
    if !bad.is_empty() {
        bail!(
            "fuzzing failed for {}; a crashing input stays in the corpus, so `cargo test -p \
             leaktrace --test {TEST}` fails until its parser is fixed",
            bad.join(", ")
        );
    }
    Ok(())
}

/// `cargo test` of the fuzz test target.
fn test_command() -> std::process::Command {
    let mut cmd = cargo();
    cmd.args(["test", "--package", "leaktrace", "--test", TEST]);
    cmd
}

/// The targets, from the names of the ignored tests.
fn list() -> anyhow::Result<Vec<String>> {
    let mut cmd = test_command();
    cmd.args(["--quiet", "--", "--list", "--ignored"]);
    let output = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let targets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_suffix(": test")?.strip_prefix(PREFIX))
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("{cmd:?} lists no {PREFIX}* tests");
    }
    Ok(targets)
}

/// Runs one target's fuzzing test, passing its output through and reading its report from it.
fn fuzz(target: &str, seconds: u64) -> anyhow::Result<Run> {
    let mut cmd = test_command();
    cmd.args(["--quiet", "--", "--ignored", "--nocapture", "--exact"])
        .arg(format!("{PREFIX}{target}"))
        .env("LEAKTRACE_FUZZ_SECONDS", seconds.to_string())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let stderr = child
        .stderr
        .take()
        .with_context(|| format!("no standard error from {cmd:?}"))?;
    // The lines the test writes: `fuzz <target>: N inputs in S s`, and on failure
    // `fuzz <target>: failing input: <path>`.
    let tag = format!("fuzz {target}: ");
    let (mut inputs, mut found) = (None, None);
    for line in BufReader::new(stderr).lines() {
        let line = line.with_context(|| format!("reading the output of {cmd:?}"))?;
        eprintln!("{line}");
        let Some(said) = line.strip_prefix(&tag) else {
            continue;
        };
        if let Some(path) = said.strip_prefix("failing input: ") {
            found = Some(path.to_owned());
        } else if let Some((n, _)) = said.split_once(" inputs in ") {
            inputs = n.parse().ok();
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    let outcome = match found {
        Some(path) => Outcome::Found(path),
        None if status.success() => Outcome::Clean,
        None => Outcome::Failed(format!("{cmd:?} failed ({status})")),
    };
    Ok(Run {
        target: target.to_owned(),
        inputs,
        outcome,
    })
}
