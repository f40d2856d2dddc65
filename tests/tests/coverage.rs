//! Coverage beyond malloc and free: the aligned allocation functions, failing calls, and
//! threads that free each other's blocks, exact under glibc.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use leaktrace_tests::{
    SiteTotals, Target, fixture_with, have_root, losses, scratch, site, trace_workload,
};
use serde_json::Value;

/// Traces a coverage fixture (tests/fixtures/coverage) for `rounds` rounds; returns the report
/// and the fixture's PID.
fn trace(cc: &str, name: &str, rounds: u64) -> (Value, u32) {
    let out = scratch(&format!("coverage_{name}_{cc}")).join("report.json");
    let exe = fixture_with(cc, &format!("coverage/{name}"), &[]);
    let mut target = Target::start(&exe, &[&rounds.to_string()]);
    let pid = target.pid();
    let report = trace_workload(&mut target, pid, &["--interval", "100ms"], &out);
    assert_eq!(
        target.finish(),
        0,
        "the fixture's self-checks passed and it is unharmed"
    );
    (report, pid)
}

fn totals(live: i64, blocks: i64, allocated: u64, calls: u64) -> SiteTotals {
    SiteTotals {
        stacks: 0,
        live_bytes: live,
        live_allocs: blocks,
        allocated_bytes: allocated,
        alloc_calls: calls,
    }
}

fn check(report: &Value, pid: u32, function: &str, expected: SiteTotals) {
    let mut got = site(report, pid, function);
    assert!(
        got.stacks > 0 || expected.alloc_calls == 0,
        "no stack names {function}"
    );
    got.stacks = 0;
    assert_eq!(got, expected, "{function}");
}

#[test]
fn aligned_allocations_and_failures_are_exact() {
    if !have_root("aligned_allocations_and_failures_are_exact") {
        return;
    }
    let r = 10;
    let (report, pid) = trace("gcc", "aligned", r);
    let ri = r as i64;
    check(
        &report,
        pid,
        "keep_posix_memalign",
        totals(3000 * ri, 3 * ri, 3000 * r, 3 * r),
    );
    check(
        &report,
        pid,
        "keep_aligned_alloc",
        totals(4096 * ri, 2 * ri, 4096 * r, 2 * r),
    );
    check(
        &report,
        pid,
        "keep_memalign",
        totals(5000 * ri, ri, 5000 * r, r),
    );
    check(
        &report,
        pid,
        "keep_valloc",
        totals(3000 * ri, ri, 3000 * r, r),
    );
    // pvalloc(100) takes a whole page; what was asked for is what counts.
    check(
        &report,
        pid,
        "keep_pvalloc",
        totals(100 * ri, ri, 100 * r, r),
    );
    check(
        &report,
        pid,
        "free_all_aligned",
        totals(0, 0, 11148 * r, 5 * r),
    );
    check(&report, pid, "fail_posix_memalign", totals(0, 0, 0, 0));
    check(&report, pid, "fail_malloc", totals(0, 0, 0, 0));
    let target = &report["targets"][0]["totals"];
    assert_eq!(target["live_bytes"].as_i64(), Some(15196 * ri));
    assert_eq!(target["alloc_calls"].as_u64(), Some(13 * r));
    assert_eq!(target["free_calls"].as_u64(), Some(5 * r));
    assert_eq!(target["failed_allocs"].as_u64(), Some(2 * r));
    for (name, value) in losses(&report) {
        assert_eq!(value.as_u64(), Some(0), "loss counter {name} is {value}");
    }
}

#[test]
fn threads_freeing_each_others_blocks_are_exact() {
    if !have_root("threads_freeing_each_others_blocks_are_exact") {
        return;
    }
    let r = 10;
    let (report, pid) = trace("gcc", "threads", r);
    let ri = r as i64;
    check(
        &report,
        pid,
        "thread_alloc",
        totals(0, 0, 204_800 * r, 400 * r),
    );
    check(
        &report,
        pid,
        "thread_keep",
        totals(10_240 * ri, 40 * ri, 10_240 * r, 40 * r),
    );
    let target = &report["targets"][0]["totals"];
    assert_eq!(target["free_calls"].as_u64(), Some(400 * r));
    for (name, value) in losses(&report) {
        assert_eq!(value.as_u64(), Some(0), "loss counter {name} is {value}");
    }
}

#[test]
fn musl_is_traced_exactly() {
    if !have_root("musl_is_traced_exactly") {
        return;
    }
    let r = 10;
    let ri = r as i64;
    let (report, pid) = trace("musl-gcc", "aligned", r);
    assert!(
        report["targets"][0]["allocator"]
            .as_str()
            .is_some_and(|a| a.contains("musl")),
        "{}",
        report["targets"][0]["allocator"]
    );
    check(
        &report,
        pid,
        "keep_posix_memalign",
        totals(3000 * ri, 3 * ri, 3000 * r, 3 * r),
    );
    check(
        &report,
        pid,
        "keep_memalign",
        totals(5000 * ri, ri, 5000 * r, r),
    );
    check(
        &report,
        pid,
        "keep_valloc",
        totals(3000 * ri, ri, 3000 * r, r),
    );
    // musl has no pvalloc: four frees per round, not five.
    check(
        &report,
        pid,
        "free_all_aligned",
        totals(0, 0, 11048 * r, 4 * r),
    );
    let target = &report["targets"][0]["totals"];
    assert_eq!(target["live_bytes"].as_i64(), Some(15096 * ri));
    assert_eq!(target["failed_allocs"].as_u64(), Some(2 * r));
    let (report, pid) = trace("musl-gcc", "threads", r);
    check(
        &report,
        pid,
        "thread_alloc",
        totals(0, 0, 204_800 * r, 400 * r),
    );
    check(
        &report,
        pid,
        "thread_keep",
        totals(10_240 * ri, 40 * ri, 10_240 * r, 40 * r),
    );
    for (name, value) in losses(&report) {
        assert_eq!(value.as_u64(), Some(0), "loss counter {name} is {value}");
    }
}

#[test]
fn cxx_operator_new_is_attributed_to_its_caller_once() {
    if !have_root("cxx_operator_new_is_attributed_to_its_caller_once") {
        return;
    }
    let r = 10;
    let ri = r as i64;
    let (report, pid) = trace("g++", "cxx_new", r);
    // Demangled C++ names carry their parameter lists. libstdc++ keeps no frame pointers: these names are on the stacks only because operator new
    // itself is probed; its malloc inside is the same allocation, counted once.
    check(
        &report,
        pid,
        "keep_new_object()",
        totals(288 * ri, 3 * ri, 288 * r, 3 * r),
    );
    check(
        &report,
        pid,
        "keep_new_array()",
        totals(960 * ri, 2 * ri, 960 * r, 2 * r),
    );
    check(
        &report,
        pid,
        "keep_aligned_new()",
        totals(640 * ri, 3 * ri, 640 * r, 3 * r),
    );
    check(
        &report,
        pid,
        "keep_nothrow_new()",
        totals(480 * ri, 3 * ri, 480 * r, 3 * r),
    );
    check(
        &report,
        pid,
        "new_then_delete()",
        totals(0, 0, 1672 * r, 4 * r),
    );
    let target = &report["targets"][0]["totals"];
    assert_eq!(target["live_bytes"].as_i64(), Some(2368 * ri));
    assert_eq!(target["alloc_calls"].as_u64(), Some(15 * r));
    assert_eq!(target["free_calls"].as_u64(), Some(4 * r));
    for (name, value) in losses(&report) {
        assert_eq!(value.as_u64(), Some(0), "loss counter {name} is {value}");
    }
}

#[test]
fn run_follows_a_command_into_another_c_library() {
    if !have_root("run_follows_a_command_into_another_c_library") {
        return;
    }
    use std::io::{BufRead as _, BufReader, Write as _};
    // leaktrace is linked against glibc; this command, against musl. Its probes are placed
    // once the loader has mapped musl, right after exec.
    let out = scratch("run_musl").join("report.json");
    let mut child = leaktrace_tests::leaktrace()
        .args([
            "run",
            "--quiet",
            "--interval",
            "100ms",
            "--format",
            "json",
            "-o",
        ])
        .arg(&out)
        .arg("--")
        .arg(fixture_with("musl-gcc", "coverage/aligned", &[]))
        .arg("10")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("leaktrace run");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("ready line");
    assert!(line.starts_with("ready"), "{line}");
    // The late attach runs beside the command's start: leave it time before the workload.
    std::thread::sleep(std::time::Duration::from_millis(300));
    stdin.write_all(b"go\n").expect("go");
    line.clear();
    stdout.read_line(&mut line).expect("done line");
    assert!(line.starts_with("done"), "{line}");
    drop(stdin);
    assert!(child.wait().expect("leaktrace").success());
    let report = leaktrace_tests::read_report(&out);
    let pid = report["targets"][0]["pid"].as_u64().expect("pid") as u32;
    let functions = report["targets"][0]["functions"].to_string();
    assert!(
        functions.matches("\"malloc\"").count() == 2,
        "glibc's and musl's: {functions}"
    );
    check(
        &report,
        pid,
        "keep_memalign",
        totals(50_000, 10, 50_000, 10),
    );
    check(&report, pid, "free_all_aligned", totals(0, 0, 110_480, 40));
}
