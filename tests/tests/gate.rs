//! `leaktrace run` as a test gate: a `node --test` suite whose leaking test fails the run (its
//! worker process followed from its first allocation and its function named), suppressions,
//! status pass-through, JUnit read by Python's `junitparser`, and `--fail-on outstanding` on a
//! C program.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use leaktrace_tests::{fixture, have_root, leaktrace, read_report, root, scratch};
use serde_json::Value;

/// The status `--fail-on` exits with by default.
const LEAK_STATUS: i32 = 23;

fn suite_dir() -> PathBuf {
    root().join("tests/fixtures/node-gate")
}

/// One Node suite traced at a time: three Node processes traced from their first instruction
/// keep both cores busy, and a second suite beside them would make samples late.
static ONE_SUITE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `leaktrace run ARGS -- node --test FILES` in the suite's folder, with a JSON report and
/// JUnit XML in `dir`.
fn run_suite(dir: &Path, args: &[&str], files: &[&str]) -> (Output, Value, PathBuf) {
    let _alone = ONE_SUITE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let json = dir.join("report.json");
    let xml = dir.join("leaks.xml");
    let output = leaktrace()
        .current_dir(suite_dir())
        .args(["run", "--quiet", "--interval", "200ms", "-o"])
        .arg(&json)
        .arg("-o")
        .arg(&xml)
        .args(args)
        .args(["--", "node", "--test"])
        .args(files)
        .output()
        .expect("running leaktrace");
    let report = read_report(&json);
    (output, report, xml)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The targets of a report, by command.
fn target<'a>(report: &'a Value, command_part: &str) -> &'a Value {
    report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["command"].as_str().unwrap().contains(command_part))
        .unwrap_or_else(|| panic!("no target runs {command_part}: {:#}", report["targets"]))
}

/// `junitparser`'s reading of a JUnit file: (case name, failure message or None) for each case.
fn junit_cases(xml: &Path) -> Vec<(String, Option<String>)> {
    const READ: &str = "import json, sys\n\
        from junitparser import JUnitXml, Failure\n\
        cases = []\n\
        for suite in JUnitXml.fromfile(sys.argv[1]):\n\
        \x20   for case in suite:\n\
        \x20       failure = next((r.message for r in case.result if isinstance(r, Failure)), None)\n\
        \x20       cases.append([case.name, failure])\n\
        print(json.dumps(cases))\n";
    let output = Command::new("python3")
        .args(["-c", READ])
        .arg(xml)
        .output()
        .expect("python3 (cargo xtask setup installs junitparser)");
    assert!(
        output.status.success(),
        "junitparser rejects {}: {}",
        xml.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("parser output")
}

#[test]
fn a_leaking_node_test_fails_the_run_and_is_named() {
    if !have_root("a_leaking_node_test_fails_the_run_and_is_named") {
        return;
    }
    let dir = scratch("gate-leak");
    // No perf map: the test file's JavaScript is named from V8's own data, its call site one
    // site across V8's tiers, and a leak of five seconds is enough (2 s of samples are, with
    // room for a loaded machine that starts Node slowly).
    let (output, report, xml) = run_suite(
        &dir,
        &["--fail-on", "leak", "--no-perf-map"],
        &["leak.test.js", "clean.test.js"],
    );
    assert_eq!(
        output.status.code(),
        Some(LEAK_STATUS),
        "{}",
        stderr(&output)
    );

    // The runner and each test file's own process, followed from their first allocation.
    let runner = target(&report, "--test leak.test.js clean.test.js");
    let leaking = target(&report, "node-gate/leak.test.js");
    let clean = target(&report, "node-gate/clean.test.js");
    for t in [runner, leaking, clean] {
        assert!(t["totals"]["alloc_calls"].as_u64().unwrap() > 1000, "{t:#}");
    }
    let gate = &report["gate"];
    assert_eq!(gate["fail_on"], "leak");
    assert_eq!(gate["exit_code"], LEAK_STATUS);
    assert_eq!(gate["command_exit_code"], 0);
    let failures = gate["failures"].as_array().unwrap();
    assert_eq!(
        failures.len(),
        1,
        "only the leaking test's process fails: {gate:#}"
    );
    assert_eq!(failures[0]["pid"], leaking["pid"]);
    // Its failing stacks name the leaking function and its file.
    let stacks = report["stacks"].as_array().unwrap();
    let named = failures[0]["stacks"].as_array().unwrap().iter().any(|i| {
        stacks[i.as_u64().unwrap() as usize]["frames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| {
                f["function"] == "fillSessionCache"
                    && f["source"] == "v8"
                    && f["file"]
                        .as_str()
                        .is_some_and(|p| p.ends_with("leak.test.js"))
            })
    });
    assert!(
        named,
        "no failing stack names fillSessionCache in leak.test.js from V8's data"
    );
    // Nothing asked Node for a perf map.
    for t in report["targets"].as_array().unwrap() {
        let pid = t["pid"].as_u64().unwrap();
        assert!(!Path::new(&format!("/tmp/perf-{pid}.map")).exists());
    }
    let text = stderr(&output);
    assert!(text.contains("leaktrace: FAIL (--fail-on leak)"), "{text}");
    assert!(text.contains("fillSessionCache"), "{text}");

    // One JUnit case per process; only the leaking one failed, with its function named.
    let cases = junit_cases(&xml);
    assert_eq!(cases.len(), 3, "{cases:?}");
    let failed: Vec<_> = cases.iter().filter(|(_, f)| f.is_some()).collect();
    assert_eq!(failed.len(), 1, "{cases:?}");
    assert!(failed[0].0.contains("leak.test.js"), "{cases:?}");
    assert!(
        failed[0].1.as_deref().unwrap().contains("fillSessionCache"),
        "{cases:?}"
    );
}

#[test]
fn a_suppressed_leak_passes_and_is_counted() {
    if !have_root("a_suppressed_leak_passes_and_is_counted") {
        return;
    }
    let dir = scratch("gate-suppressed");
    let rules = suite_dir().join("suppressions.txt");
    let (output, report, xml) = run_suite(
        &dir,
        &[
            "--fail-on",
            "leak",
            "--suppressions",
            rules.to_str().unwrap(),
        ],
        &["leak.test.js"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let rule = report["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "fillSessionCache")
        .expect("the file's rule is reported");
    assert!(
        rule["source"]
            .as_str()
            .unwrap()
            .ends_with("suppressions.txt:2")
    );
    assert!(rule["stacks"].as_u64().unwrap() >= 1);
    // Every buffer the test kept went through fillSessionCache: 4 x 64 KiB per step of 50 ms
    // for 5 s; however slowly a loaded machine runs its timers, more than 4 steps.
    assert!(
        rule["allocated_bytes"].as_u64().unwrap() > (4 * 4 * 64) << 10,
        "{rule:#}"
    );
    assert!(
        !report["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"] == "fillSessionCache")),
        "suppressed stacks leave the report's stacks"
    );
    assert!(stderr(&output).contains("suppressed by `fillSessionCache`"));
    assert!(junit_cases(&xml).iter().all(|(_, f)| f.is_none()));
}

#[test]
fn a_clean_suite_passes_and_a_failing_test_keeps_its_status() {
    if !have_root("a_clean_suite_passes_and_a_failing_test_keeps_its_status") {
        return;
    }
    let dir = scratch("gate-clean");
    let (output, report, _) = run_suite(&dir, &["--fail-on", "leak"], &["clean.test.js"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(report["gate"]["failed"], false);

    let dir = scratch("gate-failing-test");
    let (output, report, _) = run_suite(&dir, &["--fail-on", "leak"], &["fail.test.js"]);
    // node --test's own status for a failed test, not leaktrace's.
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(report["gate"]["command_exit_code"], 1);
    assert_eq!(report["gate"]["failed"], false);
}

#[test]
fn memory_kept_at_exit_fails_a_c_test_binary() {
    if !have_root("memory_kept_at_exit_fails_a_c_test_binary") {
        return;
    }
    let exe = fixture("gate/exit_leak", &[]);
    let dir = scratch("gate-outstanding");
    let json = dir.join("report.json");
    let run = |args: &[&str], program_args: &[&str]| {
        leaktrace()
            .args(["run", "--quiet", "--fail-on", "outstanding", "-o"])
            .arg(&json)
            .args(args)
            .arg("--")
            .arg(&exe)
            .args(program_args)
            .output()
            .expect("running leaktrace")
    };
    let leaking = run(&[], &["leak"]);
    assert_eq!(
        leaking.status.code(),
        Some(LEAK_STATUS),
        "{}",
        stderr(&leaking)
    );
    let report = read_report(&json);
    let failure = &report["gate"]["failures"][0];
    // Exactly the two blocks it forgot.
    assert_eq!(failure["live_bytes"], 4096 + 1000);
    assert!(
        stderr(&leaking).contains("load_config"),
        "{}",
        stderr(&leaking)
    );

    // Under the threshold, and when everything is freed: pass.
    assert_eq!(
        run(&["--min-bytes", "8KiB"], &["leak"]).status.code(),
        Some(0)
    );
    assert_eq!(run(&[], &[]).status.code(), Some(0));
    // Another status, by request.
    assert_eq!(
        run(&["--leak-exit-code", "99"], &["leak"]).status.code(),
        Some(99)
    );
}
