//! What the README says of `leaktrace run` and its gate that no other test checks: a failing
//! command keeps its status when it also leaks, `--fail-on growing`, `--no-follow`,
//! `--no-perf-map` and the removal of perf maps, and the listing of a suppression rule that took
//! nothing.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::{
    fs,
    io::Write as _,
    path::Path,
    process::{Output, Stdio},
};

use leaktrace_tests::{fixture, have_root, leaktrace, read_report, scratch, site};
use serde_json::Value;

/// The status `--fail-on` exits with by default.
const LEAK_STATUS: i32 = 23;

/// Runs `leaktrace run ARGS -o DIR/report.json -- COMMAND` with `go` on its stdin; returns its
/// output and the report.
fn run(dir: &Path, args: &[&str], command: &[&str]) -> (Output, Value) {
    let json = dir.join("report.json");
    let mut child = leaktrace()
        .args(["run", "--quiet", "-o"])
        .arg(&json)
        .args(args)
        .arg("--")
        .args(command)
        .env_remove("NODE_OPTIONS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running leaktrace");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(b"go\n").expect("sending go");
    drop(stdin);
    let output = child.wait_with_output().expect("waiting for leaktrace");
    let report = read_report(&json);
    (output, report)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn leaky() -> String {
    fixture("leaky", &[]).display().to_string()
}

/// The verdicts of the stacks of process `pid`.
fn verdicts_of(report: &Value, pid: u64) -> Vec<&str> {
    report["stacks"]
        .as_array()
        .expect("stacks[]")
        .iter()
        .filter(|s| s["pid"].as_u64() == Some(pid))
        .filter_map(|s| s["growth"]["verdict"].as_str())
        .collect()
}

#[test]
fn a_failing_command_keeps_its_status_when_it_also_leaks() {
    if !have_root("a_failing_command_keeps_its_status_when_it_also_leaks") {
        return;
    }
    // 70 rounds 100 ms apart, 3000 bytes a round kept under leak_malloc: a `leak` over 7 s,
    // then exit status 3.
    let dir = scratch("gate-claims-fail-and-leak");
    let (output, report) = run(
        &dir,
        &["--fail-on", "leak", "--interval", "200ms"],
        &[&leaky(), "70", "100", "3"],
    );
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let gate = &report["gate"];
    // The leak was found, and still the command's own failure is what CI sees.
    assert_eq!(gate["failed"], true, "{gate:#}");
    assert_eq!(gate["command_exit_code"], 3);
    assert_eq!(gate["exit_code"], 3);
    let pid = report["targets"][0]["pid"].as_u64().expect("pid");
    assert!(
        verdicts_of(&report, pid).contains(&"leak"),
        "{:?}",
        verdicts_of(&report, pid)
    );
    assert!(
        stderr(&output).contains("the command itself failed (status 3): its status is kept"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn fail_on_growing_fails_a_growth_too_short_for_a_leak() {
    if !have_root("fail_on_growing_fails_a_growth_too_short_for_a_leak") {
        return;
    }
    // 15 rounds 100 ms apart: memory grows for 1.5 s, too short for a `leak` (5 s), `growing`.
    let args = [leaky(), "15".into(), "100".into()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dir = scratch("gate-claims-growing");
    let (output, report) = run(
        &dir,
        &["--fail-on", "growing", "--interval", "100ms"],
        &args,
    );
    assert_eq!(
        output.status.code(),
        Some(LEAK_STATUS),
        "{}",
        stderr(&output)
    );
    let pid = report["targets"][0]["pid"].as_u64().expect("pid");
    let verdicts = verdicts_of(&report, pid);
    assert!(
        verdicts.contains(&"growing") && !verdicts.contains(&"leak"),
        "{verdicts:?}"
    );
    let gate = &report["gate"];
    assert_eq!(gate["fail_on"], "growing");
    assert_eq!(gate["failures"][0]["pid"].as_u64(), Some(pid), "{gate:#}");
    assert!(
        stderr(&output).contains("leaktrace: FAIL (--fail-on growing)"),
        "{}",
        stderr(&output)
    );

    // The same growth passes `--fail-on leak`: growing is the stricter gate.
    let dir = scratch("gate-claims-growing-leak");
    let (output, report) = run(&dir, &["--fail-on", "leak", "--interval", "100ms"], &args);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(report["gate"]["failed"], false);
}

#[test]
fn no_follow_traces_the_command_alone() {
    if !have_root("no_follow_traces_the_command_alone") {
        return;
    }
    // sh forks leaky (a command that is not its last is not exec'd in place), which runs 3
    // rounds at once and exits: named all the same, from the kernel's records of its mappings.
    let script = format!("{} 3 0; true", leaky());
    let command = ["sh", "-c", script.as_str()];
    let leaky = leaky();
    let is_leaky = |t: &&Value| t["command"].as_str().is_some_and(|c| c.starts_with(&leaky));
    let dir = scratch("gate-claims-follow");
    let (output, report) = run(&dir, &[], &command);
    assert!(output.status.success(), "{}", stderr(&output));
    let targets = report["targets"].as_array().expect("targets[]");
    assert_eq!(targets.len(), 2, "sh and leaky: {targets:#?}");
    let child = targets.iter().find(is_leaky).expect("leaky is followed");
    let child = child["pid"].as_u64().expect("pid") as u32;
    assert_eq!(site(&report, child, "leak_malloc").alloc_calls, 9);

    let dir = scratch("gate-claims-no-follow");
    let (output, report) = run(&dir, &["--no-follow"], &command);
    assert!(output.status.success(), "{}", stderr(&output));
    let targets = report["targets"].as_array().expect("targets[]");
    assert_eq!(targets.len(), 1, "sh alone: {targets:#?}");
    assert!(!targets.iter().any(|t| is_leaky(&t)), "{targets:#?}");
    assert!(
        targets[0]["command"]
            .as_str()
            .is_some_and(|c| c.starts_with("sh"))
    );
    let named = report["stacks"]
        .as_array()
        .expect("stacks[]")
        .iter()
        .flat_map(|s| s["frames"].as_array().expect("frames[]"))
        .any(|f| f["function"] == "leak_malloc");
    assert!(!named, "the child's allocations are not traced");
}

/// What a node child says of itself under `run`: its PID, its `NODE_OPTIONS`, and whether its
/// perf map exists while it runs; then, whether that map is left after the run.
fn node_under_run(test: &str, args: &[&str]) -> (Value, bool) {
    const SELF_REPORT: &str = "const fs = require('fs');\
        const map = `/tmp/perf-${process.pid}.map`;\
        const keep = [];\
        for (let i = 0; i < 100; i++) keep.push(Buffer.alloc(4096));\
        setTimeout(() => console.log(JSON.stringify({\
            pid: process.pid, options: process.env.NODE_OPTIONS || '', map: fs.existsSync(map),\
            kept: keep.length })), 300);";
    let dir = scratch(test);
    let (output, report) = run(&dir, args, &["node", "-e", SELF_REPORT]);
    assert!(output.status.success(), "{}", stderr(&output));
    let said: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "node's line ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let pid = said["pid"].as_u64().expect("pid");
    assert_eq!(
        report["targets"][0]["pid"].as_u64(),
        Some(pid),
        "node was traced"
    );
    let left = Path::new(&format!("/tmp/perf-{pid}.map")).exists();
    (said, left)
}

#[test]
fn run_asks_node_for_perf_maps_and_removes_them() {
    if !have_root("run_asks_node_for_perf_maps_and_removes_them") {
        return;
    }
    let (said, left) = node_under_run("gate-claims-perf-map", &[]);
    let options = said["options"].as_str().expect("options");
    assert!(
        options.contains("--perf-basic-prof")
            && options.contains("--interpreted-frames-native-stack"),
        "{said}"
    );
    assert_eq!(said["map"], true, "node wrote its perf map: {said}");
    assert!(!left, "the perf map is removed after the run: {said}");
}

#[test]
fn no_perf_map_leaves_node_options_alone() {
    if !have_root("no_perf_map_leaves_node_options_alone") {
        return;
    }
    let (said, left) = node_under_run("gate-claims-no-perf-map", &["--no-perf-map"]);
    assert_eq!(said["options"], "", "NODE_OPTIONS untouched: {said}");
    assert_eq!(said["map"], false, "no perf map written: {said}");
    assert!(!left, "{said}");
}

#[test]
fn a_suppression_rule_that_took_nothing_is_listed() {
    if !have_root("a_suppression_rule_that_took_nothing_is_listed") {
        return;
    }
    let dir = scratch("gate-claims-stale-rule");
    let rules = dir.join("rules.supp");
    fs::write(
        &rules,
        "leak:leak_calloc\n# nothing calls this any more\nleak:no_such_function_anywhere\n",
    )
    .expect("writing the rules");
    let rules = rules.to_str().expect("utf-8");
    let text = dir.join("report.txt");
    let (output, report) = run(
        &dir,
        &[
            "--fail-on",
            "outstanding",
            "--min-bytes",
            "1MiB",
            "--suppressions",
            rules,
            "-o",
            text.to_str().expect("utf-8"),
        ],
        // Rounds at once: a process of a few milliseconds is named as well as any.
        &[&leaky(), "3", "0"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let taken = |rule: &str| -> &Value {
        report["suppressions"]
            .as_array()
            .expect("suppressions[]")
            .iter()
            .find(|r| r["rule"] == rule)
            .unwrap_or_else(|| panic!("{rule} is not listed: {:#}", report["suppressions"]))
    };
    // leak_calloc's stacks (one per call site gcc made of its loop): 2 x 1000 bytes a round,
    // kept, for 3 rounds.
    let used = taken("leak_calloc");
    assert!(used["stacks"].as_u64() >= Some(1), "{used:#}");
    assert_eq!(
        (&used["live_bytes"], &used["allocated_bytes"]),
        (&Value::from(6000), &Value::from(6000)),
        "{used:#}"
    );
    let stale = taken("no_such_function_anywhere");
    assert_eq!(stale["source"], format!("{rules}:3"));
    assert_eq!(
        (
            &stale["stacks"],
            &stale["live_bytes"],
            &stale["allocated_bytes"]
        ),
        (&Value::from(0), &Value::from(0), &Value::from(0)),
        "{stale:#}"
    );
    let summary = stderr(&output);
    assert!(
        summary.contains(&format!("rules that matched nothing: {rules}:3")),
        "{summary}"
    );
    let text = fs::read_to_string(&text).expect("the text report");
    assert!(
        text.contains(&format!(
            "suppressed by `no_such_function_anywhere` ({rules}:3): 0 stacks, 0 B live, 0 B \
             allocated"
        )),
        "{text}"
    );
}
