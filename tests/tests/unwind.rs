//! Stacks through code without frame pointers. A page fault inside glibc's `malloc` (frameless,
//! as distro builds are) is walked by its `.eh_frame` back through a library built `-O2
//! -fomit-frame-pointer` to `main`, so the pages are charged to the function that called
//! `malloc`; an allocator call made from that library, or from glibc's own `strdup`, is named
//! by every caller under exact tracing, block for block. With no room for unwind tables the
//! same traces lose those frames: the tests tell the two walks apart.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use leaktrace_tests::{Target, fixture, fixture_with, have_root, losses, scratch, trace_workload};
use serde_json::Value;

/// Rounds of the fixture: 8 blocks of 48 bytes each, about 500 heap pages in all, each first
/// written by `malloc` itself (the header of the chunk it splits off the top).
const ROUNDS: u64 = 4000;

/// The fixture, linked against its frameless library (by path: no search path needed).
fn frameless() -> std::path::PathBuf {
    let lib = fixture_with(
        "gcc",
        "frameless/lib",
        &["-shared", "-fPIC", "-O2", "-fomit-frame-pointer"],
    );
    fixture("frameless/main", &[lib.to_str().expect("utf-8 path")])
}

/// Watch mode on the fixture with `args`: its report and the populated stacks of the fixture,
/// each as function names with its resident pages.
fn trace(test: &str, args: &[&str]) -> (Value, Vec<(Vec<String>, u64)>) {
    // Every fault: each is walked, and each walk is checked.
    let mut all = vec!["--mode", "watch", "--fault-period", "1"];
    all.extend_from_slice(args);
    trace_in(test, &all)
}

/// The fixture traced with `args`: its report and its stacks, each as function names with its
/// live blocks (resident pages in watch mode).
fn trace_in(test: &str, args: &[&str]) -> (Value, Vec<(Vec<String>, u64)>) {
    let out = scratch(test).join("report.json");
    let mut target = Target::start(&frameless(), &[&ROUNDS.to_string()]);
    let pid = target.pid();
    let mut all = vec!["--interval", "100ms"];
    all.extend_from_slice(args);
    let report = trace_workload(&mut target, pid, &all, &out);
    assert_eq!(target.finish(), 0, "the target is unharmed");
    let stacks = report["stacks"]
        .as_array()
        .expect("stacks[]")
        .iter()
        .filter(|s| s["pid"].as_u64() == Some(u64::from(pid)))
        .map(|s| {
            let names = s["frames"]
                .as_array()
                .expect("frames[]")
                .iter()
                .map(|f| f["function"].as_str().unwrap_or("?").to_owned())
                .collect();
            (names, s["live_allocs"].as_u64().expect("live_allocs"))
        })
        .collect();
    (report, stacks)
}

/// The stacks that fault inside the C library's allocator under the fixture's leaf.
fn in_malloc(stacks: &[(Vec<String>, u64)]) -> Vec<&(Vec<String>, u64)> {
    stacks
        .iter()
        .filter(|(names, _)| names.first().is_some_and(|f| f.contains("malloc")))
        .filter(|(names, _)| names.iter().any(|f| f == "frameless_leaf"))
        .collect()
}

#[test]
fn a_fault_inside_malloc_is_charged_to_the_function_that_called_it() {
    if !have_root("a_fault_inside_malloc_is_charged_to_the_function_that_called_it") {
        return;
    }
    let (report, stacks) = trace("unwind_tables", &[]);
    let faulted = in_malloc(&stacks);
    let pages = |entry: &str| -> u64 {
        faulted
            .iter()
            .filter(|(names, _)| names.iter().any(|f| f == entry))
            .map(|(_, n)| n)
            .sum()
    };
    // Every such fault is walked whole: from malloc's internals through the frameless library
    // to main, by the entry point that asked (3 blocks a round, and 5).
    for (names, _) in &faulted {
        let leaf = names
            .iter()
            .position(|f| f == "frameless_leaf")
            .expect("leaf");
        let rest: Vec<&str> = names[leaf..].iter().map(String::as_str).collect();
        assert!(
            rest.starts_with(&["frameless_leaf", "frameless_middle"])
                && (rest[2] == "frameless_three" || rest[2] == "frameless_five")
                && rest[3] == "main",
            "{names:?}"
        );
    }
    let (three, five) = (pages("frameless_three"), pages("frameless_five"));
    // ROUNDS * 8 * 64 bytes of heap: the pages split as the blocks do, 3 to 5, but for the
    // page boundaries (one page each way a round at most would be far off: a few in all).
    let heap_pages = ROUNDS * 8 * 64 / 4096;
    assert!(
        three + five >= heap_pages * 9 / 10,
        "{three} + {five} pages of {heap_pages}: {stacks:?}"
    );
    assert!(
        three * 5 * 10 >= five * 3 * 9 && three * 5 * 9 <= five * 3 * 10,
        "3:5 within 10 %: {three}, {five}"
    );
    let losses = losses(&report);
    for counter in ["unwind_no_row", "unwind_unsupported", "unwind_bad_frame"] {
        assert_eq!(losses[counter], 0, "{counter}: {losses:?}");
    }
}

#[test]
fn without_tables_a_fault_in_malloc_loses_its_callers() {
    if !have_root("without_tables_a_fault_in_malloc_loses_its_callers") {
        return;
    }
    // One row of room: no object's table fits, every frame is walked by frame pointer.
    let (report, stacks) = trace("unwind_no_tables", &["--max-unwind-rows", "1"]);
    let malloc_pages: u64 = stacks
        .iter()
        .filter(|(names, _)| names.first().is_some_and(|f| f.contains("malloc")))
        .map(|(_, n)| n)
        .sum();
    assert!(
        malloc_pages >= ROUNDS * 8 * 64 / 4096 * 9 / 10,
        "the faults are still in malloc: {stacks:?}"
    );
    assert!(
        in_malloc(&stacks).is_empty(),
        "a frame-pointer walk from malloc's internals cannot reach its caller: {stacks:?}"
    );
    // And the report says why.
    let notes = report["trace"]["notes"].to_string();
    assert!(
        notes.contains("did not fit the unwind-row array") && notes.contains("--max-unwind-rows"),
        "{notes}"
    );
}

/// Live blocks of the fixture's stacks that pass through `function`, each stack's names cut at
/// the allocator: `(names from the allocator's caller on, blocks)`.
fn blocks_through<'a>(
    stacks: &'a [(Vec<String>, u64)],
    function: &str,
) -> Vec<(&'a [String], u64)> {
    stacks
        .iter()
        .filter(|(names, _)| names.iter().any(|f| f == function))
        .map(|(names, n)| (&names[1..], *n))
        .collect()
}

#[test]
fn an_allocation_in_frameless_code_is_named_by_every_caller() {
    if !have_root("an_allocation_in_frameless_code_is_named_by_every_caller") {
        return;
    }
    let (report, stacks) = trace_in("unwind_exact", &[]);
    // Each entry point's blocks, exactly, on the whole chain from the leaf to main.
    for (entry, per_round) in [("frameless_three", 3), ("frameless_five", 5)] {
        let found = blocks_through(&stacks, entry);
        for (names, _) in &found {
            assert!(
                names.starts_with(&[
                    "frameless_leaf".to_owned(),
                    "frameless_middle".to_owned(),
                    entry.to_owned(),
                    "main".to_owned()
                ]),
                "{entry}: {names:?}"
            );
        }
        let blocks: u64 = found.iter().map(|(_, n)| n).sum();
        assert_eq!(blocks, ROUNDS * per_round, "{entry}: {stacks:?}");
    }
    // glibc's strdup keeps no frame pointer either: its caller is named past it.
    let names = blocks_through(&stacks, "keep_names");
    for (frames, _) in &names {
        assert!(
            frames.len() >= 3
                && frames[0].contains("strdup")
                && frames[1] == "keep_names"
                && frames[2] == "main",
            "{frames:?}"
        );
    }
    assert_eq!(
        names.iter().map(|(_, n)| n).sum::<u64>(),
        ROUNDS * 2,
        "{stacks:?}"
    );
    let losses = losses(&report);
    for counter in ["unwind_no_row", "unwind_unsupported", "unwind_bad_frame"] {
        assert_eq!(losses[counter], 0, "{counter}: {losses:?}");
    }
}

#[test]
fn without_tables_an_allocation_in_frameless_code_loses_its_callers() {
    if !have_root("without_tables_an_allocation_in_frameless_code_loses_its_callers") {
        return;
    }
    let (_, stacks) = trace_in("unwind_exact_no_tables", &["--max-unwind-rows", "1"]);
    // A frame-pointer walk from malloc's entry goes from the leaf to main's caller: the two
    // entry points, and strdup's caller, are gone, though every block is still counted.
    let leaf: u64 = blocks_through(&stacks, "frameless_leaf")
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(leaf, ROUNDS * 8, "{stacks:?}");
    for lost in [
        "frameless_middle",
        "frameless_three",
        "frameless_five",
        "keep_names",
    ] {
        assert!(
            blocks_through(&stacks, lost).is_empty(),
            "{lost}: {stacks:?}"
        );
    }
}
