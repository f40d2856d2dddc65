//! Native memory allocated on libuv's thread pool, named by the JavaScript that queued the work
//! (issue 21): flag-less Node 20 and Node 22, attached while they run (tests/fixtures/node/pool).
//! A leak's top suspect must be a `leak` whose stack goes from the pool thread's frames through
//! the marker `queued by "node" on thread PID` to the fixture's function that queued the work,
//! named from V8's data with its script; the control, which runs the same pool work and frees
//! what it made, must have its stitched stacks traced and none of its stacks a suspect.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use leaktrace_tests::{
    Target, frames, function_names, have_root, leaktrace, node_command, node22, root, scratch,
    stacks_of, top_suspect, trace_workloads,
};
use serde_json::Value;

/// Seconds each fixture runs its workload while traced.
const SECONDS: &str = "8";

/// One trace at a time: three Node processes per trace share two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How a stitched stack marks where the frames of the thread that queued the work begin: the
/// marker's kind and words, and the functions just inside it (the thread that ran the work or
/// its callback) and just outside it (where the queuing thread handed the work to libuv).
struct Marker {
    kind: &'static str,
    says: &'static str,
    inside: &'static str,
    outside: &'static str,
}

/// Work a pool thread ran: the pool's `worker` called it; the JavaScript queued it through
/// `uv_queue_work`.
const QUEUED: Marker = Marker {
    kind: "queued",
    says: "queued by",
    inside: "worker",
    outside: "uv_queue_work",
};

/// The callback of queued work, run on the loop thread by `uv__work_done`; the first work of
/// its chain was queued through `uv__work_submit`.
const CALLBACK: Marker = Marker {
    kind: "callback",
    says: "callback of work queued by",
    inside: "uv__work_done",
    outside: "uv__work_submit",
};

/// A set of fixtures traced together: leaks, each with the function that queued the work whose
/// memory it keeps, and a control that queues the same work and drops what it made.
struct Case {
    leaks: &'static [(&'static str, &'static str)],
    control: (&'static str, &'static str),
    marker: Marker,
    /// Whether the thread inside the marker ran JavaScript of its own (a callback runs node's
    /// `fs` code; a pool thread runs none).
    javascript_inside: bool,
}

/// zlib streams and derived keys made on pool threads.
const POOL_WORK: Case = Case {
    leaks: &[
        ("leak-zlib-streams", "openCompressor"),
        ("leak-derived-keys", "deriveSessionKey"),
    ],
    control: ("control-zlib-streams", "compressAndClose"),
    marker: QUEUED,
    javascript_inside: false,
};

/// Buffers kept in the callbacks of `fs.readFile`'s work, by callback and by `await`, where no
/// frame of the application is on the stack; the control reads the same file and drops them.
const CALLBACKS: Case = Case {
    leaks: &[
        ("leak-read-files", "cacheFileContents"),
        ("leak-read-files-async", "cacheFileAsync"),
    ],
    control: ("control-read-files", "readAndDrop"),
    marker: CALLBACK,
    javascript_inside: true,
};

fn fixture(name: &str) -> PathBuf {
    root().join(format!("tests/fixtures/node/pool/{name}.js"))
}

/// Starts a fixture as a plain `node app.js`: no flag at all.
fn start(node: &Path, name: &str, test: &str) -> Target {
    Target::spawn(node_command(
        node,
        &fixture(name),
        SECONDS,
        &format!("{test}_cwd_{name}"),
    ))
}

/// Where `marker` sits in `stack`, checked: its words name the main thread as the queuer, and
/// the functions on either side of it are the ones it stands between.
fn marker_of(stack: &Value, marker: &Marker, pid: u32, label: &str) -> usize {
    let frames = frames(stack);
    let at = frames
        .iter()
        .position(|f| f["kind"] == marker.kind)
        .unwrap_or_else(|| {
            panic!(
                "{label}: no {} marker on {:?}",
                marker.kind,
                function_names(stack)
            )
        });
    assert_eq!(
        frames[at]["function"].as_str(),
        Some(format!("{} \"node\" on thread {pid}", marker.says).as_str()),
        "{label}: {}",
        frames[at]
    );
    assert_eq!(
        frames[at - 1]["function"],
        marker.inside,
        "{label}: {:?}",
        function_names(stack)
    );
    assert_eq!(
        frames[at + 1]["function"],
        marker.outside,
        "{label}: {:?}",
        function_names(stack)
    );
    at
}

/// Traces `case`'s fixtures under `node`, attached while they run. Each leak's top suspect must
/// be a `leak` whose stack goes from the frames of the thread that ran the work through the
/// marker to the function that queued it, named from V8's data with its script; the control's
/// stitched stacks must be traced, each marked as the leaks' are, and none a suspect. Returns
/// the saved report's path and the fixtures' PIDs.
fn named_under(node: &Path, test: &str, case: &Case) -> (PathBuf, Vec<u32>) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (control, control_function) = case.control;
    let mut all: Vec<&str> = case.leaks.iter().map(|(f, _)| *f).collect();
    all.push(control);
    let mut targets: Vec<Target> = all.iter().map(|f| start(node, f, test)).collect();
    let pids: Vec<u32> = targets.iter().map(Target::pid).collect();
    let out = scratch(test).join("report.json");
    let report = trace_workloads(&mut targets, &pids, &["--interval", "500ms"], &out);
    for target in targets {
        assert_eq!(target.finish(), 0, "the fixture is unharmed");
    }
    for (&(leak, function), &pid) in case.leaks.iter().zip(&pids) {
        let suspect = top_suspect(&report, pid);
        assert_eq!(
            suspect["growth"]["verdict"],
            "leak",
            "{leak}: top suspect {:?} is not a leak: {}",
            function_names(suspect),
            suspect["growth"]
        );
        let marker = marker_of(suspect, &case.marker, pid, leak);
        let frames = frames(suspect);
        let queuer = frames
            .iter()
            .position(|f| f["function"].as_str() == Some(function))
            .unwrap_or_else(|| panic!("{leak}: {function} not on {:?}", function_names(suspect)));
        assert!(queuer > marker, "{leak}: {function} is not past the marker");
        let frame = &frames[queuer];
        assert_eq!(frame["kind"], "js", "{leak}: {frame}");
        assert_eq!(frame["source"], "v8", "{leak}: {frame}");
        assert_eq!(
            frame["file"].as_str(),
            Some(fixture(leak).to_str().expect("utf-8 path")),
            "{leak}: {frame}"
        );
        let inside = &frames[..marker];
        if case.javascript_inside {
            assert!(
                inside
                    .iter()
                    .any(|f| f["kind"] == "js" && f["source"] == "v8"),
                "{leak}: no JavaScript of the callback named: {:?}",
                function_names(suspect)
            );
        } else {
            assert!(
                inside.iter().all(|f| f["kind"] == "native"),
                "{leak}: JavaScript on the pool thread: {:?}",
                function_names(suspect)
            );
        }
    }
    let control_pid = pids[case.leaks.len()];
    let stacks = stacks_of(&report, control_pid);
    let stitched: Vec<&&Value> = stacks
        .iter()
        .filter(|s| {
            function_names(s).contains(&control_function)
                && frames(s).iter().any(|f| f["kind"] == case.marker.kind)
        })
        .collect();
    assert!(
        stitched.iter().any(|s| s["alloc_calls"].as_u64() > Some(0)),
        "{control}: no stitched stack names {control_function} ({} stacks)",
        stacks.len()
    );
    for stack in &stitched {
        marker_of(stack, &case.marker, control_pid, control);
    }
    leaktrace_tests::assert_no_growth(control, stacks);
    for target in report["targets"].as_array().expect("targets[]") {
        let notes = target["notes"].to_string();
        assert!(!notes.contains("thread pool"), "{notes}");
    }
    (out, pids)
}

#[test]
fn flagless_node_20_names_what_a_callback_of_queued_work_allocates() {
    if !have_root("flagless_node_20_names_what_a_callback_of_queued_work_allocates") {
        return;
    }
    named_under(Path::new("/usr/bin/node"), "callback_node20", &CALLBACKS);
}

#[test]
fn flagless_node_22_names_what_a_callback_of_queued_work_allocates() {
    if !have_root("flagless_node_22_names_what_a_callback_of_queued_work_allocates") {
        return;
    }
    named_under(&node22(), "callback_node22", &CALLBACKS);
}

/// Renders the saved report in every other format: each shows the marker of queued work.
fn every_format_shows_the_marker(json: &Path, pid: u32) {
    let dir = json.parent().expect("the report's directory");
    let outputs = [
        "report.txt",
        "report.folded",
        "report.svg",
        "report.html",
        "report.pb.gz",
    ];
    let mut cmd = leaktrace();
    cmd.arg("report").arg(json);
    for name in outputs {
        cmd.arg("-o").arg(dir.join(name));
    }
    let status = cmd.status().expect("running leaktrace report");
    assert!(status.success(), "leaktrace report failed");
    let marker = format!("queued by \"node\" on thread {pid}");
    for name in outputs {
        let bytes = std::fs::read(dir.join(name)).expect("a rendered report");
        let text = if name.ends_with(".gz") {
            let mut text = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
                .expect("gzip");
            text
        } else {
            bytes
        };
        // The SVG and HTML escape the quotes.
        let found = [marker.clone(), marker.replace('"', "&quot;")]
            .iter()
            .any(|m| text.windows(m.len()).any(|w| w == m.as_bytes()));
        assert!(found, "{name} does not show {marker:?}");
    }
}

#[test]
fn flagless_node_20_names_what_queued_pool_work() {
    if !have_root("flagless_node_20_names_what_queued_pool_work") {
        return;
    }
    let (report, pids) = named_under(Path::new("/usr/bin/node"), "pool_node20", &POOL_WORK);
    every_format_shows_the_marker(&report, pids[0]);
}

#[test]
fn flagless_node_22_names_what_queued_pool_work() {
    if !have_root("flagless_node_22_names_what_queued_pool_work") {
        return;
    }
    let (report, pids) = named_under(&node22(), "pool_node22", &POOL_WORK);
    every_format_shows_the_marker(&report, pids[0]);
}

/// Work items the C fixture queues; each keeps one block of `WORK_BYTES` made on a pool thread.
const JOBS: u64 = 48;
const WORK_BYTES: u64 = 12345;

/// A C program queues work through Debian's shared, stripped libuv: the pool's call of the work
/// is found in its code, and every block the work made is counted, exactly, under a stack that
/// goes from `work_cb` through the marker to `queue_jobs`, which called `uv_queue_work`. libuv's
/// internal submit and callback caller have no symbol there: the report says so, once.
#[test]
fn a_shared_libuvs_work_is_named_by_the_function_that_queued_it() {
    if !have_root("a_shared_libuvs_work_is_named_by_the_function_that_queued_it") {
        return;
    }
    let exe = leaktrace_tests::fixture("pool_work", &["-luv"]);
    let mut cmd = Command::new(exe);
    cmd.arg(JOBS.to_string());
    let mut target = Target::spawn(cmd);
    let pid = target.pid();
    let out = scratch("pool_shared_libuv").join("report.json");
    let report = leaktrace_tests::trace_workload(&mut target, pid, &["--interval", "250ms"], &out);
    assert_eq!(target.finish(), 0, "the fixture is unharmed");
    assert_stitched_to_queue_jobs(&report, pid, "pool_work-luv", &[]);
}

/// The same program loading libuv by `dlopen` after the attach: the new mapping is seen, its
/// pool probed then, and the work queued afterwards is stitched alike; the report says the pool
/// was probed late, once.
#[test]
fn a_libuv_loaded_after_the_attach_has_its_pool_probed_then() {
    if !have_root("a_libuv_loaded_after_the_attach_has_its_pool_probed_then") {
        return;
    }
    let exe = leaktrace_tests::fixture("pool_work", &["-DLATE"]);
    let mut cmd = Command::new(exe);
    cmd.arg(JOBS.to_string());
    let mut target = Target::spawn(cmd);
    let pid = target.pid();
    let out = scratch("pool_late_libuv").join("report.json");
    let tracer = leaktrace_tests::Tracer::attach(&[
        &pid.to_string(),
        "--interval",
        "100ms",
        "--format",
        "json",
        "-o",
        out.to_str().expect("utf-8 path"),
    ]);
    target.send("go");
    target.expect_line("loaded");
    // The kernel's record of the new mapping is read within 10 ms, the pool probed at the next
    // sample.
    std::thread::sleep(std::time::Duration::from_millis(500));
    target.send("go");
    target.expect_line("done");
    let output = tracer.interrupt();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = leaktrace_tests::read_report(&out);
    assert_eq!(target.finish(), 0, "the fixture is unharmed");
    // dlopen's own allocations are walked through the dynamic linker's frameless code, deeper
    // than the unwinder's table steps go: counted as such, and not the pool's concern.
    assert_stitched_to_queue_jobs(&report, pid, "pool_work-DLATE", &["unwind_step_limit"]);
    let late: Vec<&str> = report["targets"][0]["notes"]
        .as_array()
        .expect("notes[]")
        .iter()
        .filter_map(Value::as_str)
        .filter(|n| n.contains("mapped after the attach"))
        .collect();
    assert_eq!(late.len(), 1, "{late:?}");
    assert!(late[0].contains("libuv.so.1"), "{}", late[0]);
}

/// The pool work of the C fixture (`comm`, its thread's name): one stack, every block counted
/// exactly, from `work_cb` through the marker to `queue_jobs`; the stripped libuv said once; no
/// loss but the `excused` counters.
fn assert_stitched_to_queue_jobs(report: &Value, pid: u32, comm: &str, excused: &[&str]) {
    let stacks: Vec<&Value> = stacks_of(report, pid)
        .into_iter()
        .filter(|s| function_names(s).contains(&"work_cb"))
        .collect();
    assert_eq!(
        stacks.len(),
        1,
        "{:?}",
        stacks.iter().map(|s| function_names(s)).collect::<Vec<_>>()
    );
    let stack = stacks[0];
    assert_eq!(stack["live_allocs"], JOBS, "{stack}");
    assert_eq!(stack["live_bytes"], JOBS * WORK_BYTES, "{stack}");
    assert_eq!(stack["alloc_calls"], JOBS, "{stack}");
    let frames = frames(stack);
    let marker = frames
        .iter()
        .position(|f| f["kind"] == "queued")
        .unwrap_or_else(|| panic!("no queued-work marker on {:?}", function_names(stack)));
    // The main thread is named after the executable.
    let function = format!("queued by \"{comm}\" on thread {pid}");
    assert_eq!(frames[marker]["function"].as_str(), Some(function.as_str()));
    let after: Vec<&str> = frames[marker + 1..]
        .iter()
        .filter_map(|f| f["function"].as_str())
        .take(3)
        .collect();
    assert_eq!(
        after,
        ["uv_queue_work", "queue_jobs", "main"],
        "{:?}",
        function_names(stack)
    );
    let notes: Vec<&str> = report["targets"][0]["notes"]
        .as_array()
        .expect("notes[]")
        .iter()
        .filter_map(Value::as_str)
        .filter(|n| n.contains("uv__work_submit"))
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("libuv.so.1"), "{}", notes[0]);
    assert!(notes[0].contains("uv__work_done"), "{}", notes[0]);
    assert_eq!(
        leaktrace_tests::losses(report)
            .iter()
            .filter(|(name, v)| v.as_u64() != Some(0) && !excused.contains(&name.as_str()))
            .count(),
        0,
        "{}",
        report["totals"]["losses"]
    );
}

/// A `worker_threads` Worker that keeps the Buffers it allocates: its top suspect is a `leak`
/// named by the worker's function, from V8's data, and ends with the thread it ran on (not the
/// main thread).
fn worker_leak_is_named_under(node: &Path, test: &str) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let script = root().join("tests/fixtures/node/threads/leak-worker-buffers.js");
    let mut cmd = Command::new(node);
    cmd.current_dir(scratch(&format!("{test}_cwd")))
        .arg(&script)
        .arg(SECONDS);
    let mut target = Target::spawn(cmd);
    let pid = target.pid();
    let out = scratch(test).join("report.json");
    let report = leaktrace_tests::trace_workload(&mut target, pid, &["--interval", "500ms"], &out);
    assert_eq!(target.finish(), 0, "the fixture is unharmed");
    let suspect = top_suspect(&report, pid);
    assert_eq!(
        suspect["growth"]["verdict"], "leak",
        "{}",
        suspect["growth"]
    );
    let frames = frames(suspect);
    let frame = frames
        .iter()
        .find(|f| f["function"] == "retainInWorker")
        .unwrap_or_else(|| panic!("retainInWorker not on {:?}", function_names(suspect)));
    assert_eq!(frame["kind"], "js", "{frame}");
    assert_eq!(frame["source"], "v8", "{frame}");
    assert_eq!(frame["file"].as_str(), script.to_str(), "{frame}");
    let last = frames.last().expect("frames");
    assert_eq!(last["kind"], "thread", "{:?}", function_names(suspect));
    let function = last["function"]
        .as_str()
        .expect("the thread's frame is named");
    let tid: u32 = function
        .strip_prefix("on thread ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|tid| tid.parse().ok())
        .unwrap_or_else(|| panic!("{function}"));
    assert_ne!(tid, pid, "the worker is not the main thread");
    assert_eq!(
        frames.iter().filter(|f| f["kind"] == "thread").count(),
        1,
        "{:?}",
        function_names(suspect)
    );
}

#[test]
fn flagless_node_20_names_a_workers_leak_and_its_thread() {
    if !have_root("flagless_node_20_names_a_workers_leak_and_its_thread") {
        return;
    }
    worker_leak_is_named_under(Path::new("/usr/bin/node"), "worker_node20");
}

#[test]
fn flagless_node_22_names_a_workers_leak_and_its_thread() {
    if !have_root("flagless_node_22_names_a_workers_leak_and_its_thread") {
        return;
    }
    worker_leak_is_named_under(&node22(), "worker_node22");
}
