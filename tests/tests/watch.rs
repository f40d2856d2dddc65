//! Watch mode end to end (`--mode watch`): no uprobe placed, the pages each stack populates
//! counted from page faults, and the ones still resident read back from the process.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::process::Command;

use leaktrace_tests::{
    Target, Tracer, assert_no_growth, bpf_kinds, fixture, function_names, have_root, leaktrace,
    losses, node_addon, node_command, read_report, root, scratch, stacks_of, trace_workload,
};
use serde_json::Value;

const PAGE: u64 = 4096;

/// Watch mode counting every page fault, for the tests that count pages exactly.
const EVERY_FAULT: [&str; 6] = [
    "--mode",
    "watch",
    "--fault-period",
    "1",
    "--interval",
    "250ms",
];

/// The stacks of `pid` with a frame in `function`.
fn stacks_with<'a>(report: &'a Value, pid: u32, function: &str) -> Vec<&'a Value> {
    stacks_of(report, pid)
        .into_iter()
        .filter(|s| function_names(s).contains(&function))
        .collect()
}

/// The one stack of `pid` with a frame in `function`; `why` says what makes it one.
fn the_stack_with<'a>(report: &'a Value, pid: u32, function: &str, why: &str) -> &'a Value {
    let stacks = stacks_with(report, pid, function);
    assert_eq!(stacks.len(), 1, "{why}: {stacks:#?}");
    stacks[0]
}

fn functions(stack: &Value) -> Vec<&str> {
    stack["frames"]
        .as_array()
        .expect("frames[]")
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?"))
        .collect()
}

/// Every page a C program touches first is one page fault, charged to the function that
/// touched it; the pages it keeps stay resident, the ones it unmaps do not.
#[test]
fn watch_counts_every_populated_page_and_what_stays_resident() {
    if !have_root("watch_counts_every_populated_page_and_what_stays_resident") {
        return;
    }
    let (rounds, pages) = (12u64, 256u64);
    let exe = fixture("populate", &[]);
    let mut target = Target::start(&exe, &[&rounds.to_string(), &pages.to_string(), "400", "1"]);
    let pid = target.pid();
    let out = scratch("watch_exact").join("report.json");
    let report = trace_workload(&mut target, pid, &EVERY_FAULT, &out);
    // How many of the fixture's huge-page regions a huge page backed when faulted, and at the
    // end (see below).
    let huge_line = target.expect_line("huge ");
    let [faulted, backed]: [u64; 2] = huge_line
        .split(' ')
        .skip(1)
        .map(|n| n.parse().expect("huge F R"))
        .collect::<Vec<_>>()
        .try_into()
        .expect("huge F R");
    assert_eq!(target.finish(), 0, "the fixture is unharmed");

    assert_eq!(report["trace"]["mode"], "watch");
    assert_eq!(report["trace"]["fault_period"], 1);
    let t = &report["targets"][0];
    assert_eq!(t["functions"], Value::Array(Vec::new()), "no probe placed");
    assert!(
        t["free_probe"]
            .as_str()
            .unwrap_or("")
            .contains("watch mode")
    );

    let populated = rounds * pages;
    let kept = the_stack_with(
        &report,
        pid,
        "touch_kept",
        "one stack touched the kept pages",
    );
    assert_eq!(kept["kind"], "populated");
    assert_eq!(
        kept["alloc_calls"].as_u64(),
        Some(populated),
        "one fault a page"
    );
    assert_eq!(kept["allocated_bytes"].as_u64(), Some(populated * PAGE));
    assert_eq!(
        kept["live_allocs"].as_u64(),
        Some(populated),
        "every kept page resident"
    );
    assert_eq!(kept["live_bytes"].as_u64(), Some(populated * PAGE));
    assert_eq!(
        &functions(kept)[..2],
        ["touch_kept", "main"],
        "the walk starts at the faulting instruction"
    );
    assert!(
        matches!(kept["growth"]["verdict"].as_str(), Some("leak" | "growing")),
        "{}",
        kept["growth"]
    );

    let churn = the_stack_with(&report, pid, "touch_churn", "one stack touched the churn");
    assert_eq!(churn["alloc_calls"].as_u64(), Some(populated));
    assert_eq!(
        churn["live_bytes"].as_u64(),
        Some(0),
        "unmapped pages are not resident"
    );
    assert_no_growth("unmapped pages", vec![churn]);

    // One fault a round maps a whole transparent huge page where the kernel has one to give
    // (THP not off, memory not too fragmented): populated by its size. The fixture says how
    // many it got, and how many are huge at the end (khugepaged collapses the one-page ones in
    // time): resident by their size.
    let huge_bytes = |huge: u64| (huge * 512 + (rounds - huge)) * PAGE;
    let huge = the_stack_with(&report, pid, "touch_huge", "one stack touched huge pages");
    assert_eq!(
        huge["alloc_calls"].as_u64(),
        Some(rounds),
        "one fault a round"
    );
    assert_eq!(huge["allocated_bytes"].as_u64(), Some(huge_bytes(faulted)));
    assert_eq!(
        huge["live_allocs"].as_u64(),
        Some(huge_bytes(backed) / PAGE)
    );

    let totals = &t["totals"];
    let faults = totals["page_faults"].as_u64().expect("page_faults");
    assert!(faults >= 2 * populated + rounds, "{totals}");
    assert_eq!(
        totals["populated_bytes"].as_u64(),
        Some((faults + faulted * 511) * PAGE)
    );
    for (name, value) in losses(&report) {
        assert_eq!(value.as_u64(), Some(0), "loss {name}");
    }
    assert_every_format_says_resident(&report, &out);
}

/// `--max-pages` bounds the pages whose populating stack the tracer keeps: the pages faulted
/// past it still count as populated, never as resident, and every one of them is a counted loss.
#[test]
fn watch_keeps_at_most_max_pages_and_counts_the_rest() {
    if !have_root("watch_keeps_at_most_max_pages_and_counts_the_rest") {
        return;
    }
    let (rounds, pages, max_pages) = (4u64, 64u64, 100u64);
    let exe = fixture("populate", &[]);
    let mut target = Target::start(&exe, &[&rounds.to_string(), &pages.to_string(), "200"]);
    let pid = target.pid();
    let out = scratch("watch_max_pages").join("report.json");
    let report = trace_workload(
        &mut target,
        pid,
        &[&EVERY_FAULT[..], &["--max-pages", &max_pages.to_string()]].concat(),
        &out,
    );
    target.expect_line("huge ");
    assert_eq!(target.finish(), 0, "the fixture is unharmed");

    let populated = rounds * pages;
    let kept = the_stack_with(
        &report,
        pid,
        "touch_kept",
        "one stack touched the kept pages",
    );
    assert_eq!(
        kept["alloc_calls"].as_u64(),
        Some(populated),
        "every fault counted"
    );
    let resident = kept["live_allocs"].as_u64().expect("live_allocs");
    let all_resident: u64 = report["stacks"]
        .as_array()
        .expect("stacks[]")
        .iter()
        .filter_map(|s| s["live_allocs"].as_u64())
        .sum();
    assert!(
        all_resident <= max_pages,
        "{all_resident} resident pages kept"
    );
    let refused = losses(&report)["page_map_full"]
        .as_u64()
        .expect("page_map_full");
    assert!(
        resident + refused >= populated,
        "each kept page is resident or counted lost: {resident} + {refused}"
    );
}

/// The text, HTML and pprof renderings of a watch report say what its bytes are: resident pages
/// populated by page faults, not live blocks; `go tool pprof` reads the resident total.
fn assert_every_format_says_resident(report: &Value, json: &std::path::Path) {
    let dir = json.parent().expect("scratch dir");
    let status = leaktrace()
        .arg("report")
        .arg(json)
        .args(["-o", "r.txt", "-o", "r.html", "-o", "r.pb.gz"])
        .current_dir(dir)
        .status()
        .expect("leaktrace report");
    assert!(status.success());
    let text = std::fs::read_to_string(dir.join("r.txt")).expect("text report");
    assert!(text.contains("watch mode: no probe placed"), "{text}");
    assert!(text.contains("resident in 3072 pages"), "{text}");
    let html = std::fs::read_to_string(dir.join("r.html")).expect("html report");
    assert!(html.contains("Resident bytes over time"));
    let resident: i64 = report["stacks"]
        .as_array()
        .expect("stacks[]")
        .iter()
        .map(|s| s["live_bytes"].as_i64().unwrap_or(0))
        .sum();
    let output = Command::new("go")
        .args([
            "tool",
            "pprof",
            "-top",
            "-unit=B",
            "-sample_index=resident_space",
        ])
        .arg(dir.join("r.pb.gz"))
        .env("HOME", dir)
        .output()
        .expect("running go tool pprof (cargo xtask setup installs golang-go)");
    let top = String::from_utf8_lossy(&output.stdout);
    assert!(
        top.contains(&format!("Total samples = {resident}B")) && top.contains("touch_kept"),
        "go tool pprof: {top}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn start_node(fixture: &str, seconds: &str) -> Target {
    let script = root().join(format!("tests/fixtures/node/{fixture}.js"));
    let mut cmd = node_command(
        std::path::Path::new("node"),
        &script,
        seconds,
        &format!("watch_cwd_{fixture}"),
    );
    cmd.env("LEAKY_ADDON", node_addon());
    Target::spawn(cmd)
}

/// Flag-less Nodes leaking Buffers (into a global array, an unbounded cache, listeners never
/// removed) and a native addon leaking `malloc`ed blocks: without a single uprobe, each one's
/// fastest growing stack names its leaking function from the pages it fills (the addon's
/// through glibc's frameless malloc internals, walked by their unwind table); a control that churns the same Buffers,
/// attached to once warm as a service would be, is watched and has no growing stack.
#[test]
fn watch_names_node_leaks_by_the_pages_they_fill() {
    if !have_root("watch_names_node_leaks_by_the_pages_they_fill") {
        return;
    }
    let leaks = [
        ("leak-global-array", "leakIntoGlobalArray"),
        ("leak-unbounded-cache", "cacheResponse"),
        ("leak-event-listener", "handleRequestAddingListener"),
        ("leak-addon", "leaky_addon_retain"),
    ];
    // The leaks outlast the control (started 4 s before them): a leak that stops while the
    // trace goes on has a flat tail, and a flat tail is no leak. They end the trace.
    let mut targets: Vec<Target> = leaks.iter().map(|(f, _)| start_node(f, "13")).collect();
    let mut control = start_node("control-gc-buffers", "15");
    control.send("go");
    // Its allocator's heap reaches its working size in the first seconds (a warm-up, not
    // growth); the control is watched after that.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let pids: Vec<String> = targets
        .iter()
        .chain([&control])
        .map(|t| t.pid().to_string())
        .collect();
    let out = scratch("watch_node").join("report.json");
    let mut args: Vec<&str> = pids.iter().map(String::as_str).collect();
    args.extend([
        "--mode",
        "watch",
        "--interval",
        "1s",
        "--format",
        "json",
        "-o",
    ]);
    args.push(out.to_str().expect("utf-8 path"));
    let tracer = Tracer::attach(&args);
    for target in &mut targets {
        target.send("go");
    }
    control.expect_line("done");
    for target in &mut targets {
        target.expect_line("done");
    }
    assert_no_uprobe(tracer.pid());
    let output = tracer.interrupt();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = read_report(&out);
    assert!(
        report["trace"]["fault_period"].as_u64() > Some(1),
        "the default samples faults: {}",
        report["trace"]
    );
    let control_pid = control.pid();
    for target in targets.into_iter().chain([control]) {
        assert_eq!(target.finish(), 0, "the fixture is unharmed");
    }
    for ((fixture, function), pid) in leaks.iter().zip(&pids) {
        let pid: u32 = pid.parse().expect("a PID");
        let top = stacks_of(&report, pid)
            .into_iter()
            .filter(|s| s["growth"]["verdict"] == "leak")
            .max_by(|a, b| {
                let rate = |s: &Value| s["growth"]["bytes_per_s"].as_f64().unwrap_or(0.0);
                rate(a).total_cmp(&rate(b))
            })
            .unwrap_or_else(|| {
                let verdicts: Vec<(Vec<&str>, &Value)> = stacks_of(&report, pid)
                    .into_iter()
                    .map(|s| (functions(s), &s["growth"]))
                    .take(5)
                    .collect();
                panic!("{fixture}: no leak in the leaking process: {verdicts:?}")
            });
        assert_eq!(top["kind"], "populated", "{fixture}");
        assert!(
            functions(top).contains(function),
            "{fixture}: top suspect: {:?}",
            functions(top)
        );
        assert_one_site_per_faulting_function(fixture, stacks_of(&report, pid));
    }
    let control = stacks_of(&report, control_pid);
    assert!(
        control
            .iter()
            .any(|s| s["alloc_calls"].as_u64().unwrap_or(0) > 0),
        "the control was watched"
    );
    assert_no_growth("control-gc-buffers in watch mode", control);
}

/// A page faults at whichever instruction writes it first (a `memcpy` has dozens, JIT code as
/// many as it has allocation sites): stacks that differ only there, within one named function or
/// in JIT code nothing names, are one site. Stacks with a JavaScript frame not read back are left
/// out (their functions' identities are the probes').
fn assert_one_site_per_faulting_function(fixture: &str, stacks: Vec<&Value>) {
    let mut sites = std::collections::HashMap::new();
    for stack in stacks {
        let frames = stack["frames"].as_array().expect("frames[]");
        if frames
            .iter()
            .any(|f| f["kind"] == "js" && !f["function"].is_string())
        {
            continue;
        }
        let first = &frames[0]["address"];
        let (innermost, outer): (Vec<&Value>, Vec<&Value>) =
            frames.iter().partition(|f| &f["address"] == first);
        let innermost: Vec<String> = innermost
            .iter()
            .map(|f| match (f["function"].as_str(), f["module"].as_str()) {
                (Some(function), _) => function.to_string(),
                (None, None) => "JIT code".to_string(),
                (None, Some(_)) => f["address"].to_string(),
            })
            .collect();
        // JavaScript frames by name (interpreted ones share the interpreter's address), the
        // rest by address (once for all the frames inlined at it).
        let outer: Vec<String> = outer
            .iter()
            .enumerate()
            .filter(|&(i, f)| {
                f["kind"] == "js" || i == 0 || outer[i - 1]["address"] != f["address"]
            })
            .map(|(_, f)| match f["kind"].as_str() {
                Some("js") => format!("{} {}", f["function"], f["file"]),
                _ => f["address"].to_string(),
            })
            .collect();
        let site = (innermost, outer);
        if let Some(other) = sites.insert(site, stack) {
            panic!("{fixture}: one site shown as two stacks: {other:#} and {stack:#}");
        }
    }
}

/// A process with hundreds of threads, half of them born after the attach, all faulting at once:
/// watch mode opens its events per CPU, not per thread, so every thread's pages are counted,
/// exactly, on one stack, with nothing lost.
#[test]
fn watch_counts_the_pages_of_hundreds_of_threads() {
    if !have_root("watch_counts_the_pages_of_hundreds_of_threads") {
        return;
    }
    let (threads, pages) = (400u64, 16u64);
    let exe = fixture("populate_threads", &[]);
    let mut target = Target::start(&exe, &[&threads.to_string(), &pages.to_string()]);
    let pid = target.pid();
    let out = scratch("watch_threads").join("report.json");
    let report = trace_workload(&mut target, pid, &EVERY_FAULT, &out);
    assert_eq!(target.finish(), 0, "the fixture is unharmed");
    let stack = the_stack_with(
        &report,
        pid,
        "touch_on_thread",
        "one stack for every thread",
    );
    let touched = threads * pages;
    assert_eq!(
        stack["alloc_calls"].as_u64(),
        Some(touched),
        "one fault a page, on every thread"
    );
    assert_eq!(stack["live_bytes"].as_u64(), Some(touched * PAGE));
    assert_eq!(&functions(stack)[..2], ["touch_on_thread", "thread_main"]);
    for (name, value) in losses(&report) {
        assert_eq!(value.as_u64(), Some(0), "loss {name}");
    }
}

/// Options that only mean something for allocator probes are refused in watch mode, in one
/// line, before anything is attached.
#[test]
fn watch_mode_refuses_probe_options_in_one_line() {
    // Watch mode refuses the probes' options, and exact tracing (the default) watch mode's.
    let refused: [(&[&str], &str); 4] = [
        (
            &["--mode", "watch", "--sample-bytes", "1MiB"],
            "--sample-bytes",
        ),
        (
            &["--mode", "watch", "--max-overhead", "5"],
            "--max-overhead",
        ),
        (&["--syscall-tracepoints"], "--syscall-tracepoints"),
        (&["--fault-period", "1"], "--fault-period"),
    ];
    for (args, flag) in refused {
        let output = leaktrace()
            .args(["attach", "1"])
            .args(args)
            .output()
            .expect("running leaktrace");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(flag), "{stderr}");
    }
}

/// Asserts that the tracer `pid` holds BPF programs and links, none of them a uprobe's: the
/// page-fault program (`perf_event`), no `kprobe`-type program (what uprobe programs are), no
/// `uprobe_multi` link.
fn assert_no_uprobe(pid: u32) {
    let progs = bpf_kinds(pid, "prog");
    let links = bpf_kinds(pid, "link");
    assert!(
        !progs.is_empty() && !links.is_empty(),
        "the tracer holds its programs and links"
    );
    assert!(
        progs.iter().all(|k| k != "kprobe") && progs.iter().any(|k| k == "perf_event"),
        "programs: {progs:?}"
    );
    assert!(
        links.iter().all(|k| k != "uprobe_multi"),
        "links: {links:?}"
    );
}
