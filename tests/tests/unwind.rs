//! Stacks through code without frame pointers, under `attach` and `run`: a library built
//! `-O2 -fomit-frame-pointer` and glibc's own `strdup` are walked by their `.eh_frame`, so every
//! function from the allocator's caller down to `main` is named, with exact counts per site.
//! With no room for unwind tables the same trace skips those frames: the test tells the two
//! walks apart.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    process::Stdio,
};

use leaktrace_tests::{
    Target, fixture, fixture_with, have_root, leaktrace, losses, read_report, scratch,
    trace_workload,
};
use serde_json::Value;

const ROUNDS: i64 = 10;

/// The fixture, linked against its frameless library (by path: no search path needed).
fn frameless() -> std::path::PathBuf {
    let lib = fixture_with(
        "gcc",
        "frameless/lib",
        &["-shared", "-fPIC", "-O2", "-fomit-frame-pointer"],
    );
    fixture("frameless/main", &[lib.to_str().expect("utf-8 path")])
}

/// Live blocks and bytes of `pid` by call chain, from the allocator's caller down to `main`
/// (sites that reach `main` only: the C library's own allocations before `main` are not the
/// program's).
fn chains(report: &Value, pid: u32) -> BTreeMap<Vec<String>, (i64, i64)> {
    let mut chains = BTreeMap::new();
    for stack in report["stacks"].as_array().expect("stacks[]") {
        if stack["pid"].as_u64() != Some(u64::from(pid)) {
            continue;
        }
        let names: Vec<String> = stack["frames"]
            .as_array()
            .expect("frames[]")
            .iter()
            .skip(1)
            .map(|f| f["function"].as_str().unwrap_or("?").to_owned())
            .collect();
        let Some(main) = names.iter().position(|f| f == "main") else {
            continue;
        };
        let entry: &mut (i64, i64) = chains.entry(names[..=main].to_vec()).or_default();
        entry.0 += stack["live_allocs"].as_i64().expect("live_allocs");
        entry.1 += stack["live_bytes"].as_i64().expect("live_bytes");
    }
    chains
}

fn chain(names: &[&str]) -> Vec<String> {
    names.iter().map(|&n| n.to_owned()).collect()
}

fn trace(test: &str, args: &[&str]) -> (Value, u32) {
    let out = scratch(test).join("report.json");
    let mut target = Target::start(&frameless(), &[&ROUNDS.to_string()]);
    let pid = target.pid();
    let mut all = vec!["--interval", "100ms"];
    all.extend_from_slice(args);
    let report = trace_workload(&mut target, pid, &all, &out);
    assert_eq!(target.finish(), 0, "the target is unharmed");
    (report, pid)
}

/// Asserts that `pid`'s live blocks are exact per site, each named from the allocator's caller
/// down to `main`.
fn assert_whole_chains(report: &Value, pid: u32) {
    let leaf = ["frameless_leaf", "frameless_middle"];
    let want: BTreeMap<Vec<String>, (i64, i64)> = [
        (
            chain(&[leaf[0], leaf[1], "frameless_three", "main"]),
            (3 * ROUNDS, 3 * 48 * ROUNDS),
        ),
        (
            chain(&[leaf[0], leaf[1], "frameless_five", "main"]),
            (5 * ROUNDS, 5 * 48 * ROUNDS),
        ),
        // strdup("leaktrace"): 10 bytes, through glibc's frameless strdup.
        (
            chain(&["strdup", "keep_names", "main"]),
            (2 * ROUNDS, 2 * 10 * ROUNDS),
        ),
    ]
    .into_iter()
    .collect();
    let found: BTreeMap<Vec<String>, (i64, i64)> = chains(report, pid)
        .into_iter()
        .map(|(mut names, n)| {
            // glibc's internal names: `__GI___strdup` is `strdup`.
            for name in &mut names {
                if name.ends_with("strdup") {
                    *name = "strdup".to_owned();
                }
            }
            (names, n)
        })
        .collect();
    assert_eq!(found, want, "live blocks and bytes by chain down to main");
    let losses = losses(report);
    for counter in ["unwind_no_row", "unwind_unsupported", "unwind_bad_frame"] {
        assert_eq!(losses[counter], 0, "{counter}: {losses:?}");
    }
}

#[test]
fn frameless_code_is_walked_by_its_unwind_table() {
    if !have_root("frameless_code_is_walked_by_its_unwind_table") {
        return;
    }
    let (report, pid) = trace("unwind_tables", &[]);
    assert_whole_chains(&report, pid);
}

/// Under `run` the tables come at the first sample after the exec (the addresses are the new
/// image's): the fixture is let go once the tracer says the library's table is loaded.
#[test]
fn under_run_the_frameless_library_is_walked_by_its_table() {
    if !have_root("under_run_the_frameless_library_is_walked_by_its_table") {
        return;
    }
    let out = scratch("unwind_run").join("report.json");
    let mut child = leaktrace()
        .env("LEAKTRACE_LOG", "leaktrace::unwind=info")
        .args(["run", "--interval", "100ms", "--format", "json", "-o"])
        .arg(&out)
        .arg("--")
        .arg(frameless())
        .arg(ROUNDS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting leaktrace run");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let mut read_until = |from: &mut dyn BufRead, what: &[&str]| -> String {
        let mut seen = String::new();
        loop {
            line.clear();
            let n = from.read_line(&mut line).expect("reading leaktrace run");
            seen.push_str(&line);
            assert!(n > 0, "no line with {what:?} in: {seen}");
            if what.iter().all(|w| line.contains(w)) {
                return line.clone();
            }
        }
    };
    let ready = read_until(&mut stdout, &["ready"]);
    let pid: u32 = ready
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .expect("ready PID");
    // The library's rows are loaded, then the process's table mappings given to the probes.
    read_until(&mut stderr, &["unwind table loaded", "frameless-lib"]);
    read_until(&mut stderr, &["unwind tables given to the probes"]);
    stdin.write_all(b"go\n").expect("writing go");
    stdin.flush().expect("flushing go");
    read_until(&mut stdout, &["done"]);
    drop(stdin);
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    let status = child.wait().expect("waiting for leaktrace run");
    assert!(status.success(), "leaktrace run failed: {rest}");
    assert_whole_chains(&read_report(&out), pid);
}

#[test]
fn without_tables_the_frame_pointer_walk_skips_frameless_callers() {
    if !have_root("without_tables_the_frame_pointer_walk_skips_frameless_callers") {
        return;
    }
    // One row of room: no object's table fits, every frame is walked by frame pointer.
    let (report, pid) = trace("unwind_no_tables", &["--max-unwind-rows", "1"]);
    let stacks: Vec<Vec<&str>> = report["stacks"]
        .as_array()
        .expect("stacks[]")
        .iter()
        .filter(|s| s["pid"].as_u64() == Some(u64::from(pid)))
        .map(|s| {
            s["frames"]
                .as_array()
                .expect("frames[]")
                .iter()
                .map(|f| f["function"].as_str().unwrap_or("?"))
                .collect()
        })
        .collect();
    let has = |name: &str| stacks.iter().any(|s| s.contains(&name));
    assert!(has("frameless_leaf") && has("__GI___strdup"), "{stacks:?}");
    assert!(
        !has("frameless_middle") && !has("keep_names"),
        "a frame-pointer walk cannot see these frames: {stacks:?}"
    );
    // And the report says why.
    let notes = report["trace"]["notes"].to_string();
    assert!(
        notes.contains("did not fit the unwind-row array") && notes.contains("--max-unwind-rows"),
        "{notes}"
    );
}
