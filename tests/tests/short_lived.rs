//! Programs that live a few milliseconds, as a test gate runs them: under `leaktrace run`, what
//! is live when each process ends must match, stack by stack and with names down to the direct
//! caller, what an LD_PRELOAD reference that sees every call in the process itself says
//! (`tests/fixtures/short/reference.c`, heaptrack's way). The probes are in place before the
//! first instruction (the loader's objects are resolved and probed before the exec), and the
//! mappings that name the stacks come from the kernel's records, not from polling a process that
//! may already be gone. Each program runs several times: a race would show.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::{collections::BTreeMap, path::Path, process::Command};

use leaktrace_tests::{fixture_with, have_root, leaktrace, losses, read_report, scratch};
use serde_json::Value;

/// Runs of each program under the tracer.
const RUNS: usize = 5;

/// Live bytes and blocks by call chain (the allocator's caller first, down to `main`).
type Live = BTreeMap<Vec<String>, (i64, i64)>;

/// What each process held at its end: the program's own first, then its children's.
type ByProcess = Vec<Live>;

/// A function's plain name: `bar()` and `_Z3barv` are both `bar`.
fn plain(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("_Z") {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(len) = digits.parse::<usize>() {
            return rest[digits.len()..].chars().take(len).collect();
        }
    }
    name.split('(').next().unwrap_or(name).to_owned()
}

/// Chains that reach `main`: what the program itself allocated (the C++ runtime's own pool,
/// allocated before `main` by code without frame pointers, is not the program's).
fn through_main(chain: Vec<String>) -> Option<Vec<String>> {
    let main = chain.iter().position(|f| f == "main")?;
    Some(chain[..=main].to_vec())
}

/// What the reference saw: the program run with the reference preloaded.
fn reference(exe: &Path, dir: &Path) -> ByProcess {
    let lib = fixture_with("gcc", "short/reference", &["-shared", "-fPIC"]);
    let log = dir.join("reference.txt");
    let _ = std::fs::remove_file(&log);
    let status = Command::new(exe)
        .env("LD_PRELOAD", &lib)
        .env("LEAKTRACE_REFERENCE", &log)
        .status()
        .expect("running the program under the reference");
    assert!(status.success(), "the program fails under the reference");
    let text = std::fs::read_to_string(&log).expect("the reference's log");
    // pid -> address -> (size, chain), in order of first appearance.
    let mut pids: Vec<String> = Vec::new();
    let mut live: BTreeMap<String, BTreeMap<String, (i64, Vec<String>)>> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let pid = fields[1].to_owned();
        if !pids.contains(&pid) {
            pids.push(pid.clone());
        }
        let blocks = live.entry(pid).or_default();
        match fields[0] {
            "A" => {
                let size = i64::from_str_radix(fields[3], 16).expect("hex size");
                let chain = fields[4].split(';').map(plain).collect();
                blocks.insert(fields[2].to_owned(), (size, chain));
            }
            _ => {
                blocks.remove(fields[2]);
            }
        }
    }
    pids.iter()
        .map(|pid| {
            let mut held = Live::new();
            for (size, chain) in live[pid].values() {
                if let Some(chain) = through_main(chain.clone()) {
                    let entry = held.entry(chain).or_default();
                    entry.0 += size;
                    entry.1 += 1;
                }
            }
            held
        })
        .collect()
}

/// What `leaktrace run ARGS -- exe` reports live at each process's end, heap blocks only.
fn traced(exe: &Path, dir: &Path, args: &[&str]) -> (ByProcess, Value) {
    let out = dir.join("report.json");
    let output = leaktrace()
        .args(["run", "--quiet", "-o"])
        .arg(&out)
        .args(args)
        .arg("--")
        .arg(exe)
        .output()
        .expect("running leaktrace");
    assert!(
        output.status.success(),
        "leaktrace run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = read_report(&out);
    for (name, value) in losses(&report) {
        assert_eq!(value.as_u64(), Some(0), "loss counter {name} is {value}");
    }
    let stacks = report["stacks"].as_array().expect("stacks[]");
    let by_process = report["targets"]
        .as_array()
        .expect("targets[]")
        .iter()
        .map(|target| {
            let mut held = Live::new();
            for stack in stacks.iter().filter(|s| {
                s["pid"] == target["pid"]
                    && s["kind"] == "heap"
                    && s["live_allocs"].as_i64() > Some(0)
            }) {
                let frames = stack["frames"].as_array().expect("frames[]");
                // Frame 0 is the allocator's function; functions inlined into a caller have no
                // frame of their own for the reference to see.
                let chain: Vec<String> = frames[1..]
                    .iter()
                    .filter(|f| f["inlined"] != true)
                    .map(|f| plain(f["function"].as_str().unwrap_or("?")))
                    .collect();
                if let Some(chain) = through_main(chain) {
                    let entry = held.entry(chain).or_default();
                    entry.0 += stack["live_bytes"].as_i64().expect("live_bytes");
                    entry.1 += stack["live_allocs"].as_i64().expect("live_allocs");
                }
            }
            held
        })
        .collect();
    (by_process, report)
}

fn chain(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// The program's stacks as the reference sees them, checked once against the fixture's own
/// comments, so that an empty or wrong reference cannot pass.
fn check_reference_knows(reference: &ByProcess, expected: &[(Vec<String>, (i64, i64))]) {
    for (chain, held) in expected {
        assert_eq!(
            reference[0].get(chain),
            Some(held),
            "the reference: {chain:?} in {reference:#?}"
        );
    }
}

#[test]
fn a_c_program_of_a_few_milliseconds_matches_the_reference_stack_by_stack() {
    if !have_root("a_c_program_of_a_few_milliseconds_matches_the_reference_stack_by_stack") {
        return;
    }
    let dir = scratch("short_lived_c");
    let exe = fixture_with("gcc", "short/callgraph", &["-O2", "-rdynamic"]);
    let expected = reference(&exe, &dir);
    check_reference_knows(
        &expected,
        &[
            (
                chain(&[
                    "leaf_alloc",
                    "recurse",
                    "recurse",
                    "recurse",
                    "recurse",
                    "main",
                ]),
                (100, 1),
            ),
            (chain(&["leaf_alloc", "recurse", "main"]), (103, 1)),
            (chain(&["chain_top", "main"]), (5 * 202, 5)),
        ],
    );
    assert_eq!(
        expected.len(),
        2,
        "the program and its child: {expected:#?}"
    );
    assert_eq!(
        expected[1],
        Live::from([(chain(&["leaf_alloc", "child_work", "main"]), (777, 1))])
    );
    for run in 0..RUNS {
        let (got, report) = traced(&exe, &dir, &[]);
        assert_eq!(got, expected, "run {run}: {report:#}");
        // The functions inlined into chain_top are named too.
        let inlined = report["stacks"].as_array().unwrap().iter().any(|s| {
            let names: Vec<&str> = s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|f| f["function"].as_str())
                .collect();
            names
                .windows(3)
                .any(|w| w == ["inner3", "inner2", "chain_top"])
        });
        assert!(
            inlined,
            "run {run}: inner3 and inner2 inlined into chain_top"
        );
        // The child, gone within a millisecond of its fork, has its parent's command line.
        let child = &report["targets"][1];
        assert!(
            child["command"].as_str().unwrap().contains("callgraph"),
            "{child:#}"
        );
    }
    // Without following, the child is not traced; the program's own stacks are the same.
    let (got, _) = traced(&exe, &dir, &["--no-follow"]);
    assert_eq!(got, expected[..1].to_vec());
}

#[test]
fn a_cxx_program_names_the_caller_of_new_through_a_frameless_runtime() {
    if !have_root("a_cxx_program_names_the_caller_of_new_through_a_frameless_runtime") {
        return;
    }
    let dir = scratch("short_lived_cxx");
    let exe = fixture_with("g++", "short/newarray", &["-O2", "-rdynamic"]);
    let expected = reference(&exe, &dir);
    check_reference_knows(
        &expected,
        &[
            (
                chain(&["bar", "recurse", "recurse", "recurse", "main"]),
                (123, 1),
            ),
            (chain(&["bar", "main"]), (123, 1)),
            (chain(&["make_record", "main"]), (32, 1)),
        ],
    );
    for run in 0..RUNS {
        let (got, report) = traced(&exe, &dir, &[]);
        assert_eq!(got, expected, "run {run}: {report:#}");
    }
}

#[test]
fn a_followed_child_that_execs_a_new_image_says_what_was_probed_late() {
    if !have_root("a_followed_child_that_execs_a_new_image_says_what_was_probed_late") {
        return;
    }
    // A shell forks a child that execs a C++ program the shell never loaded: its C++ runtime
    // can only be probed once the exec is seen, a few milliseconds late, and the program is done
    // in two. Whatever the timing, the report says it.
    let dir = scratch("short_lived_exec");
    let exe = fixture_with("g++", "short/newarray", &["-O2", "-rdynamic"]);
    let out = dir.join("report.json");
    let output = leaktrace()
        .args(["run", "--quiet", "-o"])
        .arg(&out)
        .args(["--", "sh", "-c"])
        .arg(format!("true; {}", exe.display()))
        .output()
        .expect("running leaktrace");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = read_report(&out);
    let child = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            t["command"]
                .as_str()
                .unwrap()
                .starts_with(exe.to_str().unwrap())
        })
        .unwrap_or_else(|| panic!("the exec'd child is a target: {:#}", report["targets"]));
    // Either way the report names the C++ runtime, and nothing else: the C library the shell
    // had is probed for the child already.
    let notes = child["notes"].to_string();
    assert!(
        notes.contains("before that image's allocators could be probed")
            || notes.contains("was probed only at"),
        "{child:#}"
    );
    assert!(notes.contains("libstdc++"), "{child:#}");
    assert!(!notes.contains("libc.so"), "{child:#}");
    // The shell's own image was probed before it ran: nothing is said of it.
    let shell = &report["targets"][0];
    assert_eq!(shell["notes"], serde_json::json!([]), "{shell:#}");
}
