//! Node.js end to end: plain `node --perf-basic-prof` programs with the native-memory leaks
//! people hit, and controls that churn the same memory without leaking (tests/fixtures/node).
//! Each leak's top suspect must be a `leak` naming the JavaScript function (or the addon's C
//! function) that allocates; each control must be traced (its churning function named) and none
//! of its stacks may be a `leak` or `growing`.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::process::Command;

use leaktrace_tests::{
    Target, function_names, have_root, node_addon, root, scratch, stacks_of, top_suspect,
    trace_workloads,
};
use serde_json::Value;

/// Seconds each fixture runs its workload while traced.
const SECONDS: &str = "15";

fn start(fixture: &str) -> Target {
    let mut cmd = Command::new("node");
    // Node writes profiler logs into its working directory: keep them out of the repository.
    cmd.current_dir(scratch(&format!("node_cwd_{fixture}")))
        .arg("--perf-basic-prof")
        .arg(root().join(format!("tests/fixtures/node/{fixture}.js")))
        .arg(SECONDS)
        .env("LEAKY_ADDON", node_addon());
    Target::spawn(cmd)
}

/// Traces the fixtures together for their whole workload; returns the report and their PIDs.
fn trace(test: &str, fixtures: &[&str]) -> (Value, Vec<u32>) {
    let out = scratch(test).join("report.json");
    let mut targets: Vec<Target> = fixtures.iter().map(|f| start(f)).collect();
    let pids: Vec<u32> = targets.iter().map(Target::pid).collect();
    let report = trace_workloads(&mut targets, &pids, &["--interval", "500ms"], &out);
    for target in targets {
        assert_eq!(target.finish(), 0, "the fixture is unharmed");
    }
    (report, pids)
}

/// Bytes per second from a stack's first sampled point with live bytes to its last.
fn average_rise(stack: &Value) -> f64 {
    let points: Vec<(f64, f64)> = stack["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|p| (p[0].as_f64().expect("t"), p[1].as_f64().expect("bytes")))
        .filter(|&(_, bytes)| bytes > 0.0)
        .collect();
    let (first, last) = (
        points.first().expect("points"),
        points.last().expect("points"),
    );
    assert!(last.0 > first.0, "a series over time: {points:?}");
    (last.1 - first.1) / (last.0 - first.0)
}

/// Asserts that `pid`, a control, was traced (it allocated, and `function`, which allocates its
/// churned memory, is on its stacks) and that none of its stacks is a `leak` or `growing`.
fn assert_traced_control(report: &Value, fixture: &str, pid: u32, function: &str) {
    let target = report["targets"]
        .as_array()
        .expect("targets[]")
        .iter()
        .find(|t| t["pid"].as_u64() == Some(u64::from(pid)))
        .unwrap_or_else(|| panic!("{fixture}: not a target"));
    let calls = target["totals"]["alloc_calls"]
        .as_u64()
        .expect("alloc_calls");
    assert!(calls > 0, "{fixture}: no allocation traced");
    let stacks = stacks_of(report, pid);
    let churned: u64 = stacks
        .iter()
        .filter(|s| function_names(s).contains(&function))
        .map(|s| s["alloc_calls"].as_u64().expect("alloc_calls"))
        .sum();
    assert!(
        churned > 0,
        "{fixture}: no stack names {function} ({} stacks)",
        stacks.len()
    );
    leaktrace_tests::assert_no_growth(fixture, stacks);
}

#[test]
fn each_leak_pattern_is_found_and_named() {
    if !have_root("each_leak_pattern_is_found_and_named") {
        return;
    }
    // (fixture, the function that must be on the top suspect's stack, its frame kind)
    let leaks = [
        ("leak-global-array", "leakIntoGlobalArray", "js"),
        ("leak-timer-closure", "scheduleLeakyTimer", "js"),
        ("leak-event-listener", "handleRequestAddingListener", "js"),
        ("leak-unbounded-cache", "cacheResponse", "js"),
        ("leak-addon", "leaky_addon_retain", "native"),
    ];
    let fixtures: Vec<&str> = leaks.iter().map(|(f, _, _)| *f).collect();
    let (report, pids) = trace("node_leaks", &fixtures);
    for ((fixture, function, kind), pid) in leaks.iter().zip(pids) {
        let suspect = top_suspect(&report, pid);
        assert_eq!(
            suspect["growth"]["verdict"],
            "leak",
            "{fixture}: top suspect {:?} is not a leak: {}",
            function_names(suspect),
            suspect["growth"]
        );
        let frame = suspect["frames"]
            .as_array()
            .expect("frames[]")
            .iter()
            .find(|f| f["function"].as_str() == Some(function))
            .unwrap_or_else(|| {
                panic!("{fixture}: {function} not on {:?}", function_names(suspect))
            });
        assert_eq!(frame["kind"], *kind, "{fixture}: {frame}");
        if *kind == "js" {
            assert!(
                frame["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with(&format!("{fixture}.js"))),
                "{fixture}: {frame}"
            );
            assert!(frame["line"].as_u64().is_some_and(|l| l > 0), "{frame}");
            assert_eq!(suspect["origin"], "buffer", "{fixture}");
        } else {
            assert_eq!(suspect["origin"], "native-addon", "{fixture}");
        }
        // The rate is the stack's own: its robust slope agrees with the average rise of its
        // series (a ratio, whatever pace a loaded machine lets the fixture keep).
        let rate = suspect["growth"]["bytes_per_s"].as_f64().expect("rate");
        let average = average_rise(suspect);
        assert!(
            (0.5..2.0).contains(&(rate / average)),
            "{fixture}: slope {rate} B/s against an average rise of {average} B/s"
        );
    }
}

#[test]
fn controls_yield_no_leak_or_growth() {
    if !have_root("controls_yield_no_leak_or_growth") {
        return;
    }
    // (fixture, the function that allocates the memory it churns)
    let controls = [
        ("control-gc-buffers", "churnShortLivedBuffers"),
        ("control-bounded-cache", "cacheResponseBounded"),
        ("control-listeners-removed", "handleRequestWithCleanup"),
        ("control-addon", "leaky_addon_retain"),
    ];
    let fixtures: Vec<&str> = controls.iter().map(|(f, _)| *f).collect();
    let (report, pids) = trace("node_controls", &fixtures);
    for (&(fixture, function), &pid) in controls.iter().zip(&pids) {
        assert_traced_control(&report, fixture, pid, function);
    }
}

/// Without a perf map, and with V8's own data turned off, nothing names JavaScript frames.
#[test]
fn without_a_perf_map_the_report_says_how_to_get_one() {
    if !have_root("without_a_perf_map_the_report_says_how_to_get_one") {
        return;
    }
    let mut cmd = Command::new("node");
    cmd.current_dir(scratch("node_cwd_plain"))
        .arg(root().join("tests/fixtures/node/leak-global-array.js"))
        .arg("2");
    let mut target = Target::spawn(cmd);
    let pid = target.pid();
    let out = scratch("node_plain").join("report.json");
    let report = leaktrace_tests::trace_workload(&mut target, pid, &["--no-v8-frames"], &out);
    assert_eq!(target.finish(), 0);
    let notes = report["targets"][0]["notes"].to_string();
    assert!(notes.contains("--perf-basic-prof"), "{notes}");
}
