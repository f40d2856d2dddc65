//! Coverage beyond malloc and free: the aligned allocation functions, failing calls, threads
//! that free each other's blocks, C++ `operator new`/`delete`, the mmap family, and every
//! allocator a process may use (glibc, musl, jemalloc, tcmalloc, mimalloc, one linked into the
//! executable, a prefixed API beside libc), each exact.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::{path::Path, process::Command};

use leaktrace_tests::{
    SiteTotals, Target, fixture_with, frames, have_root, losses, make_root_with, scratch, site,
    stacks_of, start_in_namespace, trace_workload,
};
use serde_json::Value;

/// Rounds every fixture runs: each number below is per round.
const R: u64 = 10;
const RI: i64 = R as i64;

/// The shared libraries of the replacement allocators (Debian: libjemalloc2,
/// libgoogle-perftools4, libmimalloc2.0).
const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
const TCMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4";
const MIMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2";

/// Traces `exe` (a coverage fixture) for `R` rounds, with `preload` as its `LD_PRELOAD`;
/// returns the report and the fixture's PID.
fn trace_exe(exe: &Path, preload: Option<&str>) -> (Value, u32) {
    let name = exe
        .file_name()
        .and_then(|n| n.to_str())
        .expect("fixture name");
    let label = preload
        .and_then(|p| Path::new(p).file_name()?.to_str())
        .unwrap_or("default");
    let out = scratch(&format!("coverage_{name}_{label}")).join("report.json");
    let mut cmd = Command::new(exe);
    cmd.arg(R.to_string());
    if let Some(preload) = preload {
        cmd.env("LD_PRELOAD", preload);
    }
    let mut target = Target::spawn(cmd);
    let pid = target.pid();
    let report = trace_workload(&mut target, pid, &["--interval", "100ms"], &out);
    assert_eq!(
        target.finish(),
        0,
        "the fixture's self-checks passed and it is unharmed"
    );
    (report, pid)
}

/// Traces `exe` for `R` rounds as PID 1 of its own mount and PID namespace, from a root of its
/// own holding copies of the loader, libc and `libraries`; `preload` is its `LD_PRELOAD` (a path
/// inside that root).
fn trace_in_namespace(exe: &Path, libraries: &[&str], preload: Option<&str>) -> (Value, u32) {
    let name = exe
        .file_name()
        .and_then(|n| n.to_str())
        .expect("fixture name");
    let dir = scratch(&format!("coverage_ns_{name}"));
    let root = dir.join("root");
    make_root_with(&root, exe, name, libraries);
    let env: Vec<(&str, &str)> = preload.map(|p| ("LD_PRELOAD", p)).into_iter().collect();
    let (mut unshare, pid) =
        start_in_namespace(&root, &format!("/{name}"), &[&R.to_string()], &env);
    let report = trace_workload(
        &mut unshare,
        pid,
        &["--interval", "100ms"],
        &dir.join("report.json"),
    );
    assert_eq!(unshare.finish(), 0, "the fixture is unharmed");
    assert_eq!(
        report["targets"][0]["ns_pid"], 1,
        "the PID the container sees"
    );
    (report, pid)
}

/// Builds a coverage fixture with `cc` (and `extra` flags) and traces it.
fn trace(cc: &str, name: &str, extra: &[&str], preload: Option<&str>) -> (Value, u32) {
    trace_exe(
        &fixture_with(cc, &format!("coverage/{name}"), extra),
        preload,
    )
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
        "no stack names {function}; PID {pid}'s stacks: {:#?}; its notes: {}; the trace's: {}; \
         losses: {:?}",
        shown_stacks(report, pid),
        report["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["pid"].as_u64() == Some(u64::from(pid)))
            .map_or(&Value::Null, |t| &t["notes"]),
        report["trace"]["notes"],
        losses(report),
    );
    got.stacks = 0;
    assert_eq!(got, expected, "{function}");
}

/// What a failed [`check`] says of `pid`'s stacks: each one's live bytes and frames' names (or
/// addresses).
fn shown_stacks(report: &Value, pid: u32) -> Vec<(i64, Vec<&str>)> {
    stacks_of(report, pid)
        .into_iter()
        .map(|s| {
            let frames = frames(s)
                .iter()
                .map(|f| {
                    f["function"]
                        .as_str()
                        .or(f["address"].as_str())
                        .unwrap_or("?")
                })
                .collect();
            (s["live_bytes"].as_i64().unwrap_or(0), frames)
        })
        .collect()
}

fn no_losses(report: &Value) {
    for (name, value) in losses(report) {
        assert_eq!(value.as_u64(), Some(0), "loss counter {name} is {value}");
    }
}

fn target_totals(report: &Value) -> &Value {
    &report["targets"][0]["totals"]
}

/// Which allocator the report says served `malloc`.
fn allocator(report: &Value) -> &str {
    report["targets"][0]["allocator_name"]
        .as_str()
        .expect("allocator_name")
}

/// `aligned.c`'s numbers (see tests/fixtures/coverage/README.md); `pvalloc` when the fixture
/// calls it.
/// `mappings` made and released besides the fixture's rounds count as calls too (a trace from
/// the first instruction sees musl's start-up page, mapped and unmapped before `main`).
fn expect_aligned_with(report: &Value, pid: u32, pvalloc: bool, mappings: u64) {
    check(
        report,
        pid,
        "keep_posix_memalign",
        totals(3000 * RI, 3 * RI, 3000 * R, 3 * R),
    );
    check(
        report,
        pid,
        "keep_aligned_alloc",
        totals(4096 * RI, 2 * RI, 4096 * R, 2 * R),
    );
    check(
        report,
        pid,
        "keep_memalign",
        totals(5000 * RI, RI, 5000 * R, R),
    );
    check(
        report,
        pid,
        "keep_valloc",
        totals(3000 * RI, RI, 3000 * R, R),
    );
    check(report, pid, "fail_posix_memalign", totals(0, 0, 0, 0));
    check(report, pid, "fail_malloc", totals(0, 0, 0, 0));
    let target = target_totals(report);
    if pvalloc {
        // pvalloc(100) takes a whole page; what was asked for is what counts.
        check(
            report,
            pid,
            "keep_pvalloc",
            totals(100 * RI, RI, 100 * R, R),
        );
        check(
            report,
            pid,
            "free_all_aligned",
            totals(0, 0, 11148 * R, 5 * R),
        );
        assert_eq!(target["live_bytes"].as_i64(), Some(15196 * RI));
        assert_eq!(target["alloc_calls"].as_u64(), Some(13 * R + mappings));
        assert_eq!(target["free_calls"].as_u64(), Some(5 * R + mappings));
    } else {
        check(
            report,
            pid,
            "free_all_aligned",
            totals(0, 0, 11048 * R, 4 * R),
        );
        assert_eq!(target["live_bytes"].as_i64(), Some(15096 * RI));
        assert_eq!(target["alloc_calls"].as_u64(), Some(11 * R + mappings));
        assert_eq!(target["free_calls"].as_u64(), Some(4 * R + mappings));
    }
    assert_eq!(target["failed_allocs"].as_u64(), Some(2 * R));
    no_losses(report);
}

fn expect_aligned(report: &Value, pid: u32, pvalloc: bool) {
    expect_aligned_with(report, pid, pvalloc, 0);
}

/// `threads.c`'s numbers: four threads freeing each other's blocks.
fn expect_threads(report: &Value, pid: u32) {
    check(
        report,
        pid,
        "thread_alloc",
        totals(0, 0, 204_800 * R, 400 * R),
    );
    check(
        report,
        pid,
        "thread_keep",
        totals(10_240 * RI, 40 * RI, 10_240 * R, 40 * R),
    );
    assert_eq!(target_totals(report)["free_calls"].as_u64(), Some(400 * R));
    no_losses(report);
}

/// `cxx_new.cpp`'s numbers: every new expression counted once, every delete once.
fn expect_cxx_new(report: &Value, pid: u32) {
    // Demangled C++ names carry their parameter lists. libstdc++ keeps no frame pointers:
    // these names are on the stacks only because operator new itself is probed; its malloc
    // inside is the same allocation, counted once.
    check(
        report,
        pid,
        "keep_new_object()",
        totals(288 * RI, 3 * RI, 288 * R, 3 * R),
    );
    check(
        report,
        pid,
        "keep_new_array()",
        totals(960 * RI, 2 * RI, 960 * R, 2 * R),
    );
    check(
        report,
        pid,
        "keep_aligned_new()",
        totals(640 * RI, 3 * RI, 640 * R, 3 * R),
    );
    check(
        report,
        pid,
        "keep_nothrow_new()",
        totals(480 * RI, 3 * RI, 480 * R, 3 * R),
    );
    check(
        report,
        pid,
        "new_then_delete()",
        totals(0, 0, 1672 * R, 4 * R),
    );
    let target = target_totals(report);
    assert_eq!(target["live_bytes"].as_i64(), Some(2368 * RI));
    assert_eq!(target["alloc_calls"].as_u64(), Some(15 * R));
    // A replacement allocator's operator delete frees without `free` (jemalloc's sized
    // delete), or jumps into it (its plain one): each delete counts once, none as unknown.
    assert_eq!(target["free_calls"].as_u64(), Some(4 * R));
    no_losses(report);
}

/// The kinds and reserved bytes of the stacks that name `function`.
fn kinds_and_reserved(report: &Value, pid: u32, function: &str) -> (Vec<String>, u64) {
    let mut kinds = Vec::new();
    let mut reserved = 0;
    for stack in report["stacks"].as_array().expect("stacks[]") {
        let names_it = stack["frames"]
            .as_array()
            .expect("frames[]")
            .iter()
            .any(|f| f["function"].as_str() == Some(function));
        if stack["pid"].as_u64() == Some(u64::from(pid)) && names_it {
            kinds.push(stack["kind"].as_str().expect("kind").to_owned());
            reserved += stack["reserved_bytes"].as_u64().unwrap_or(0);
        }
    }
    kinds.sort();
    kinds.dedup();
    (kinds, reserved)
}

/// `mmaps.c`'s numbers: mappings as address ranges, reservations apart, file mappings left out,
/// the allocator's own mmap counted once, as the heap block it serves.
fn expect_mmaps(report: &Value, pid: u32) {
    const K: i64 = 1024;
    let mapped = |function: &str, live: i64, count: i64, allocated: i64, calls: i64| {
        check(
            report,
            pid,
            function,
            totals(
                live * RI,
                count * RI,
                (allocated * RI) as u64,
                (calls * RI) as u64,
            ),
        );
        let (kinds, _) = kinds_and_reserved(report, pid, function);
        assert_eq!(kinds, ["mmap"], "{function} is a mapping");
    };
    mapped("map_keep", 192 * K, 3, 192 * K, 3);
    mapped("map_partial_unmap", 192 * K, 1, 256 * K, 1);
    mapped("fixed_base_128k", 64 * K, 1, 128 * K, 1);
    mapped("fixed_overlay_64k", 64 * K, 1, 64 * K, 1);
    mapped("map_remap_grow", 192 * K, 1, 192 * K, 1);
    mapped("map_unmap_all", 0, 0, 256 * K, 1);
    // A PROT_NONE reservation is address space, not memory: only what mprotect made
    // accessible is live, the rest is reserved.
    mapped("map_reserve", 64 * K, 1, 1024 * K, 1);
    let (_, reserved) = kinds_and_reserved(report, pid, "map_reserve");
    assert_eq!(reserved, 960 * 1024 * R);
    // File mappings are left out.
    check(report, pid, "map_file", totals(0, 0, 0, 0));
    // glibc serves 1 MiB with its own mmap, inside malloc: one heap block, not also a mapping.
    check(
        report,
        pid,
        "big_malloc",
        totals(1024 * K * RI, RI, (1024 * K * RI) as u64, R),
    );
    assert_eq!(kinds_and_reserved(report, pid, "big_malloc").0, ["heap"]);
    no_losses(report);
}

#[test]
fn aligned_allocations_and_failures_are_exact() {
    if !have_root("aligned_allocations_and_failures_are_exact") {
        return;
    }
    let (report, pid) = trace("gcc", "aligned", &[], None);
    assert_eq!(allocator(&report), "glibc");
    expect_aligned(&report, pid, true);
}

#[test]
fn threads_freeing_each_others_blocks_are_exact() {
    if !have_root("threads_freeing_each_others_blocks_are_exact") {
        return;
    }
    let (report, pid) = trace("gcc", "threads", &[], None);
    expect_threads(&report, pid);
}

#[test]
fn mappings_are_exact_ranges() {
    if !have_root("mappings_are_exact_ranges") {
        return;
    }
    let (report, pid) = trace("gcc", "mmaps", &[], None);
    expect_mmaps(&report, pid);
}

#[test]
fn musl_is_traced_exactly() {
    if !have_root("musl_is_traced_exactly") {
        return;
    }
    let (report, pid) = trace("musl-gcc", "aligned", &[], None);
    assert_eq!(allocator(&report), "musl");
    // musl has no pvalloc.
    expect_aligned(&report, pid, false);
    let (report, pid) = trace("musl-gcc", "threads", &[], None);
    expect_threads(&report, pid);
    let (report, pid) = trace("musl-gcc", "mmaps", &[], None);
    expect_mmaps(&report, pid);
}

#[test]
fn cxx_operator_new_is_attributed_to_its_caller_once() {
    if !have_root("cxx_operator_new_is_attributed_to_its_caller_once") {
        return;
    }
    let (report, pid) = trace("g++", "cxx_new", &[], None);
    expect_cxx_new(&report, pid);
}

/// Every fixture under a replacement allocator loaded with `LD_PRELOAD`: it is found as the one
/// that serves the program, and every number is the same as under glibc.
fn replacement_allocator_is_exact(library: &str, name: &str) {
    // jemalloc and mimalloc have no pvalloc; glibc's would hand their free a block it never
    // allocated.
    let (report, pid) = trace("gcc", "aligned", &["-DFIXTURE_NO_PVALLOC"], Some(library));
    assert_eq!(allocator(&report), name);
    expect_aligned(&report, pid, false);
    let (report, pid) = trace("gcc", "threads", &[], Some(library));
    expect_threads(&report, pid);
    let (report, pid) = trace("g++", "cxx_new", &[], Some(library));
    expect_cxx_new(&report, pid);
    let (report, pid) = trace("gcc", "mmaps", &[], Some(library));
    expect_mmaps(&report, pid);
}

#[test]
fn jemalloc_is_found_and_traced_exactly() {
    if !have_root("jemalloc_is_found_and_traced_exactly") {
        return;
    }
    replacement_allocator_is_exact(JEMALLOC, "jemalloc");
}

#[test]
fn tcmalloc_is_found_and_traced_exactly() {
    if !have_root("tcmalloc_is_found_and_traced_exactly") {
        return;
    }
    replacement_allocator_is_exact(TCMALLOC, "tcmalloc");
}

#[test]
fn mimalloc_is_found_and_traced_exactly() {
    if !have_root("mimalloc_is_found_and_traced_exactly") {
        return;
    }
    replacement_allocator_is_exact(MIMALLOC, "mimalloc");
}

#[test]
fn an_allocator_linked_into_the_executable_is_found() {
    if !have_root("an_allocator_linked_into_the_executable_is_found") {
        return;
    }
    // jemalloc's static library in a program that still maps glibc: the executable's malloc
    // comes first in the search order.
    let exe = fixture_with(
        "gcc",
        "coverage/aligned",
        &[
            "-DFIXTURE_NO_PVALLOC",
            "-Wl,-Bstatic",
            "-ljemalloc_pic",
            "-Wl,-Bdynamic",
            "-lm",
            "-ldl",
            "-lstdc++",
        ],
    );
    let (report, pid) = trace_exe(&exe, None);
    assert_eq!(allocator(&report), "jemalloc");
    expect_aligned(&report, pid, false);
    // A fully static program: glibc's allocator is in the executable, found by its symbols.
    let (report, pid) = trace("gcc", "aligned", &["-DFIXTURE_NO_PVALLOC", "-static"], None);
    assert_eq!(allocator(&report), "glibc");
    assert!(
        report["targets"][0]["allocator"]
            .as_str()
            .is_some_and(|p| p.contains("aligned")),
        "{}",
        report["targets"][0]
    );
    expect_aligned(&report, pid, false);
}

#[test]
fn a_prefixed_allocator_beside_libc_is_traced_too() {
    if !have_root("a_prefixed_allocator_beside_libc_is_traced_too") {
        return;
    }
    // libc first in the search order serves malloc; mimalloc serves the mi_* calls.
    let (report, pid) = trace("gcc", "prefixed", &["-lc", "-l:libmimalloc.so.2"], None);
    assert_eq!(allocator(&report), "glibc");
    check(
        &report,
        pid,
        "keep_mi_malloc",
        totals(1000 * RI, RI, 1000 * R, R),
    );
    check(
        &report,
        pid,
        "keep_mi_zalloc",
        totals(2000 * RI, RI, 2000 * R, R),
    );
    check(
        &report,
        pid,
        "keep_mi_calloc",
        totals(3000 * RI, RI, 3000 * R, R),
    );
    check(
        &report,
        pid,
        "grow_mi_realloc",
        totals(5000 * RI, RI, 5100 * R, 2 * R),
    );
    check(&report, pid, "free_mi", totals(0, 0, 4000 * R, R));
    check(
        &report,
        pid,
        "keep_libc_malloc",
        totals(700 * RI, RI, 700 * R, R),
    );
    let target = target_totals(&report);
    assert_eq!(target["live_bytes"].as_i64(), Some(11_700 * RI));
    assert_eq!(target["alloc_calls"].as_u64(), Some(7 * R));
    assert_eq!(target["free_calls"].as_u64(), Some(2 * R));
    no_losses(&report);
}

#[test]
fn run_follows_a_command_into_another_c_library() {
    if !have_root("run_follows_a_command_into_another_c_library") {
        return;
    }
    use std::io::{BufRead as _, BufReader, Write as _};
    // leaktrace is linked against glibc; this command, against musl. The objects its loader
    // will map are resolved before it execs, so musl is probed before its first instruction:
    // the workload starts at once, with nothing to wait for.
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
    stdin.write_all(b"go\n").expect("go");
    line.clear();
    stdout.read_line(&mut line).expect("done line");
    assert!(line.starts_with("done"), "{line}");
    drop(stdin);
    assert!(child.wait().expect("leaktrace").success());
    let report = leaktrace_tests::read_report(&out);
    assert_eq!(allocator(&report), "musl");
    let functions = report["targets"][0]["functions"].to_string();
    assert_eq!(
        functions.matches("\"malloc\"").count(),
        1,
        "musl's alone: the tracer's own C library is not the command's: {functions}"
    );
    // Exact and named, site by site (musl has no pvalloc), from the first instruction: musl's
    // loader reserves one page at start-up, which a later attach never saw.
    let pid = report["targets"][0]["pid"].as_u64().expect("pid") as u32;
    expect_aligned_with(&report, pid, false, 1);
}

#[test]
fn inside_a_namespace_mappings_and_a_preloaded_allocator_are_exact() {
    if !have_root("inside_a_namespace_mappings_and_a_preloaded_allocator_are_exact") {
        return;
    }
    let (report, pid) = trace_in_namespace(&fixture_with("gcc", "coverage/mmaps", &[]), &[], None);
    expect_mmaps(&report, pid);
    // The container's own jemalloc, preloaded there: found through the container's root.
    let (report, pid) = trace_in_namespace(
        &fixture_with("gcc", "coverage/aligned", &["-DFIXTURE_NO_PVALLOC"]),
        &[
            "libjemalloc.so.2",
            "libm.so.6",
            "libstdc++.so.6",
            "libgcc_s.so.1",
        ],
        Some("/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    );
    assert_eq!(allocator(&report), "jemalloc");
    assert!(
        report["targets"][0]["allocator"]
            .as_str()
            .is_some_and(|p| p.contains("coverage_ns_")),
        "the container's copy: {}",
        report["targets"][0]["allocator"]
    );
    expect_aligned(&report, pid, false);
}

#[test]
fn forked_children_are_followed_when_asked_and_ignored_otherwise() {
    if !have_root("forked_children_are_followed_when_asked_and_ignored_otherwise") {
        return;
    }
    let exe = fixture_with("gcc", "coverage/forks", &[]);
    for follow in [true, false] {
        let out = scratch(&format!("coverage_forks_{follow}")).join("report.json");
        let mut target = Target::start(&exe, &[&R.to_string()]);
        let pid = target.pid();
        let mut args = vec!["--interval", "100ms"];
        if follow {
            args.push("--follow-forks");
        }
        let report = trace_workload(&mut target, pid, &args, &out);
        assert_eq!(target.finish(), 0, "the fixture is unharmed");
        check(
            &report,
            pid,
            "keep_in_parent",
            totals(2000 * RI, 2 * RI, 2000 * R, 2 * R),
        );
        let targets = report["targets"].as_array().expect("targets[]");
        let children: Vec<u32> = targets
            .iter()
            .filter_map(|t| t["pid"].as_u64())
            .map(|p| p as u32)
            .filter(|&p| p != pid)
            .collect();
        if !follow {
            assert!(children.is_empty(), "children are not traced: {children:?}");
            continue;
        }
        assert_eq!(children.len() as u64, R, "one target per child");
        for child in children {
            // Each child's own allocations, named; what it inherited is the parent's.
            check(&report, child, "keep_in_child", totals(1500, 3, 1500, 3));
        }
    }
}
