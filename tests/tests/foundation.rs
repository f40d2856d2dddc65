//! The foundation tracer end to end: exact numbers for named allocation sites, under `run` and
//! `attach`, and one clear line for every kind of bad input.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::Stdio,
};

use leaktrace_tests::{
    Target, assert_leaky_is_exact, assert_one_line_error, fixture, have_root, leaktrace,
    leaktrace_unprivileged, read_report, scratch, site, trace_workload, trace_workloads,
};
use serde_json::Value;

const ROUNDS: i64 = 10;

/// `leaktrace run [args] -- leaky ROUNDS 0 EXIT_CODE`, driven through the fixture's handshake:
/// `go` once it is ready, stdin closed once it is done.
fn run_leaky(args: &[&str], exit_code: &str) -> std::process::Output {
    let mut child = leaktrace()
        .args(["run", "--interval", "100ms"])
        .args(args)
        .arg("--")
        .arg(fixture("leaky", &[]))
        .args([&ROUNDS.to_string(), "0", exit_code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting leaktrace run");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    let mut line = String::new();
    for (expect, reply) in [("ready", Some("go\n")), ("done", None)] {
        loop {
            line.clear();
            let n = stdout.read_line(&mut line).expect("reading the fixture");
            assert!(n > 0, "no {expect:?} from the fixture; output: {seen}");
            seen.push_str(&line);
            if line.starts_with(expect) {
                break;
            }
        }
        if let Some(reply) = reply {
            stdin
                .write_all(reply.as_bytes())
                .expect("writing to the fixture");
        }
    }
    drop(stdin);
    let mut output = child.wait_with_output().expect("leaktrace run");
    // Put back what was read, so the caller sees the whole standard output.
    let mut all = seen.into_bytes();
    std::io::Read::read_to_end(&mut stdout, &mut all).expect("reading leaktrace");
    all.extend_from_slice(&output.stdout);
    output.stdout = all;
    output
}

/// Every frame carries the documented fields.
fn assert_frames_documented(report: &Value) {
    let stacks = report["stacks"].as_array().expect("stacks[]");
    assert!(!stacks.is_empty());
    for stack in stacks {
        // Traced from exec, the loader's own mappings are there too.
        assert!(
            stack["kind"] == "heap" || stack["kind"] == "mmap",
            "{}",
            stack["kind"]
        );
        for frame in stack["frames"].as_array().expect("frames[]") {
            for field in ["address", "function", "file", "line", "module"] {
                assert!(frame.get(field).is_some(), "frame lacks {field}: {frame}");
            }
            assert!(
                frame["address"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("0x"))
            );
        }
    }
    assert_eq!(report["format_version"], 1);
}

#[test]
fn run_traces_a_command_exactly_and_passes_its_exit_status() {
    if !have_root("run_traces_a_command_exactly_and_passes_its_exit_status") {
        return;
    }
    let out = scratch("run_exact").join("report.json");
    let output = run_leaky(
        &["--format", "json", "--output", out.to_str().expect("utf-8")],
        "7",
    );
    assert_eq!(
        output.status.code(),
        Some(7),
        "the command's exit status passes through; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = read_report(&out);
    let target = &report["targets"][0];
    let pid = target["pid"].as_u64().expect("pid") as u32;
    assert_eq!(target["exit_code"], 7);
    assert_eq!(target["alive_at_end"], false);
    assert!(
        target["command"]
            .as_str()
            .is_some_and(|c| c.contains("leaky"))
    );
    // Symbols resolve although the command exited before the report was built.
    assert_leaky_is_exact(&report, pid, ROUNDS);
    assert_frames_documented(&report);
}

#[test]
fn attach_traces_running_processes_exactly() {
    if !have_root("attach_traces_running_processes_exactly") {
        return;
    }
    let out = scratch("attach_exact").join("report.json");
    let exe = fixture("leaky", &[]);
    let mut targets = [
        Target::start(&exe, &[&ROUNDS.to_string()]),
        Target::start(&exe, &[&ROUNDS.to_string()]),
    ];
    let pids = [targets[0].pid(), targets[1].pid()];
    let report = trace_workloads(&mut targets, &pids, &["--interval", "100ms"], &out);
    assert_eq!(report["trace"]["ended_by"], "signal");
    assert_eq!(report["targets"].as_array().map(Vec::len), Some(2));
    for target in targets {
        assert_leaky_is_exact(&report, target.pid(), ROUNDS);
        assert_eq!(target.finish(), 0, "the target is unharmed");
    }
    assert!(
        report["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .all(|t| t["alive_at_end"] == true)
    );
}

#[test]
fn text_report_lists_stacks_and_every_loss_counter() {
    if !have_root("text_report_lists_stacks_and_every_loss_counter") {
        return;
    }
    let output = run_leaky(&[], "0");
    let text = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Seconds since the session began, which loading the probes on a busy machine delays.
    assert!(
        stderr.lines().any(|l| l.starts_with("leaktrace: ")
            && l.split_once("s, 1 target, live ")
                .is_some_and(|(t, _)| t["leaktrace: ".len()..].parse::<u64>().is_ok())),
        "a live status line on stderr: {stderr}"
    );
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("stacks by live bytes"), "{text}");
    assert!(text.contains("leak_malloc"), "{text}");
    assert!(text.contains("losses: 0 unknown frees"), "{text}");
    assert!(text.contains("0 missed returns"), "{text}");
}

/// A PID that belonged to a process that has exited and been reaped.
fn dead_pid() -> String {
    let mut child = std::process::Command::new("true").spawn().expect("true");
    let pid = child.id();
    child.wait().expect("wait");
    pid.to_string()
}

#[test]
fn bad_options_get_one_clear_line() {
    let dir = scratch("bad_options");
    let missing_dir = dir.join("no/such/dir.json").display().to_string();
    let as_dir = dir.display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["attach", "soon"], "not a process id"),
        (&["attach", "0"], "not a process id"),
        (&["attach", "1", "--duration", "soon"], "not a duration"),
        (&["attach", "1", "--interval", "1ms"], "too short"),
        (&["attach", "1", "--format", "xml"], "invalid value"),
        (&["run"], "required"),
        (&["attach", "1", "-o", &missing_dir], "does not exist"),
        (&["attach", "1", "-o", &as_dir], "is a directory"),
    ];
    for (args, expect) in cases {
        let output = leaktrace().args(*args).output().expect("leaktrace");
        assert_one_line_error(&output, expect);
    }
}

#[test]
fn missing_processes_and_commands_get_one_clear_line() {
    if !have_root("missing_processes_and_commands_get_one_clear_line") {
        return;
    }
    let dead = dead_pid();
    let output = leaktrace()
        .args(["attach", &dead])
        .output()
        .expect("leaktrace");
    assert_one_line_error(&output, &format!("no process with PID {dead}"));
    let output = leaktrace()
        .args(["run", "--", "/no/such/program"])
        .output()
        .expect("leaktrace");
    assert_one_line_error(&output, "command not found");
}

#[test]
fn unusable_targets_get_one_clear_line() {
    if !have_root("unusable_targets_get_one_clear_line") {
        return;
    }
    // A zombie: its PID exists, but the process has exited.
    let parent = Target::start(&fixture("zombie", &[]), &[]);
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", parent.pid()))
        .expect("reading the fixture's children");
    let zombie = children.split_whitespace().next().expect("a zombie child");
    let output = leaktrace()
        .args(["attach", zombie])
        .output()
        .expect("leaktrace");
    assert_one_line_error(&output, "has exited");

    // A stripped static program: its allocator is in it, but nothing names it. (With its
    // symbols it is traced: see coverage.rs.)
    let static_target = Target::start(&fixture("leaky", &["-static", "-s"]), &["1"]);
    let output = leaktrace()
        .args(["attach", &static_target.pid().to_string()])
        .output()
        .expect("leaktrace");
    assert_one_line_error(&output, "maps no object that defines malloc and free");
}

#[test]
fn without_privileges_it_says_what_to_do() {
    if !have_root("without_privileges_it_says_what_to_do") {
        return;
    }
    let target = Target::start(&fixture("leaky", &[]), &["1"]);
    let output = leaktrace_unprivileged()
        .args(["attach", &target.pid().to_string()])
        .output()
        .expect("setpriv");
    assert_one_line_error(&output, "needs root");
}

#[test]
fn sampled_mode_estimates_without_bias() {
    if !have_root("sampled_mode_estimates_without_bias") {
        return;
    }
    let rounds: i64 = 10_000;
    let out = scratch("sampled").join("report.json");
    let mut target = Target::start(&fixture("leaky", &[]), &[&rounds.to_string()]);
    let pid = target.pid();
    let report = trace_workload(&mut target, pid, &["--sample-bytes", "64KiB"], &out);
    assert_eq!(target.finish(), 0);
    assert_eq!(report["trace"]["sample_bytes"], 65536);
    // Every call is still counted; only what is recorded is sampled.
    assert_eq!(
        report["targets"][0]["totals"]["alloc_calls"].as_i64(),
        Some(15 * rounds)
    );
    // 30,000 blocks of 1000 bytes: the estimate's standard deviation is about
    // sqrt(30,000 x 1000 x 65,536) = 1.4 MB, 4.7 %; allow five of them.
    let leak = site(&report, pid, "leak_malloc");
    let truth = 3000 * rounds;
    let error = (leak.live_bytes - truth).abs() as f64 / truth as f64;
    assert!(error < 0.25, "estimate {} vs {truth}", leak.live_bytes);
    // Freed blocks leave nothing behind, sampled or not: their weights come off exactly.
    assert_eq!(site(&report, pid, "no_leak").live_bytes, 0);
}
