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

/// (fixture, the function that queues the pool work whose memory leaks)
const LEAKS: &[(&str, &str)] = &[
    ("leak-zlib-streams", "openCompressor"),
    ("leak-derived-keys", "deriveSessionKey"),
];
const CONTROL: &str = "control-zlib-streams";
/// The control's function that queues the same zlib work.
const CONTROL_FUNCTION: &str = "compressAndClose";

/// (fixture, the function whose `fs.readFile` makes the Buffers kept) for leaks made in the
/// callbacks of queued work, by callback and by `await`, and their control, which reads the
/// same file and drops the Buffers.
const CALLBACK_LEAKS: &[(&str, &str)] = &[
    ("leak-read-files", "cacheFileContents"),
    ("leak-read-files-async", "cacheFileAsync"),
];
const CALLBACK_CONTROL: (&str, &str) = ("control-read-files", "readAndDrop");

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

/// Where the marker of queued work sits in `stack`, checked: the pool's `worker` just inside it,
/// the function that queued the work just outside, and the queuing thread the main one.
fn marker_of(stack: &Value, pid: u32, label: &str) -> usize {
    let frames = frames(stack);
    let at = frames
        .iter()
        .position(|f| f["kind"] == "queued")
        .unwrap_or_else(|| {
            panic!(
                "{label}: no queued-work marker on {:?}",
                function_names(stack)
            )
        });
    assert_eq!(
        frames[at]["function"].as_str(),
        Some(format!("queued by \"node\" on thread {pid}").as_str()),
        "{label}: {}",
        frames[at]
    );
    assert_eq!(
        frames[at - 1]["function"],
        "worker",
        "{label}: {:?}",
        function_names(stack)
    );
    assert_eq!(
        frames[at + 1]["function"],
        "uv_queue_work",
        "{label}: {:?}",
        function_names(stack)
    );
    at
}

fn pool_work_is_named_under(node: &Path, test: &str) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut all: Vec<&str> = LEAKS.iter().map(|(f, _)| *f).collect();
    all.push(CONTROL);
    let mut targets: Vec<Target> = all.iter().map(|f| start(node, f, test)).collect();
    let pids: Vec<u32> = targets.iter().map(Target::pid).collect();
    let out = scratch(test).join("report.json");
    let report = trace_workloads(&mut targets, &pids, &["--interval", "500ms"], &out);
    for target in targets {
        assert_eq!(target.finish(), 0, "the fixture is unharmed");
    }
    for (&(name, function), &pid) in LEAKS.iter().zip(&pids) {
        let suspect = top_suspect(&report, pid);
        assert_eq!(
            suspect["growth"]["verdict"],
            "leak",
            "{name}: top suspect {:?} is not a leak: {}",
            function_names(suspect),
            suspect["growth"]
        );
        let marker = marker_of(suspect, pid, name);
        let frames = frames(suspect);
        let queuer = frames
            .iter()
            .position(|f| f["function"].as_str() == Some(function))
            .unwrap_or_else(|| panic!("{name}: {function} not on {:?}", function_names(suspect)));
        assert!(queuer > marker, "{name}: {function} is not past the marker");
        let frame = &frames[queuer];
        assert_eq!(frame["kind"], "js", "{name}: {frame}");
        assert_eq!(frame["source"], "v8", "{name}: {frame}");
        assert_eq!(
            frame["file"].as_str(),
            Some(fixture(name).to_str().expect("utf-8 path")),
            "{name}: {frame}"
        );
        // No JavaScript ran on the pool thread: every JavaScript frame is the queuer's.
        assert!(
            frames[..marker].iter().all(|f| f["kind"] == "native"),
            "{name}: {:?}",
            function_names(suspect)
        );
    }
    let control = pids[LEAKS.len()];
    let stacks = stacks_of(&report, control);
    let stitched: Vec<&&Value> = stacks
        .iter()
        .filter(|s| {
            function_names(s).contains(&CONTROL_FUNCTION)
                && frames(s).iter().any(|f| f["kind"] == "queued")
        })
        .collect();
    assert!(
        stitched.iter().any(|s| s["alloc_calls"].as_u64() > Some(0)),
        "{CONTROL}: no stitched stack names {CONTROL_FUNCTION} ({} stacks)",
        stacks.len()
    );
    for stack in &stitched {
        marker_of(stack, control, CONTROL);
    }
    leaktrace_tests::assert_no_growth(CONTROL, stacks);
    for target in report["targets"].as_array().expect("targets[]") {
        let notes = target["notes"].to_string();
        assert!(!notes.contains("thread pool"), "{notes}");
    }
    every_format_shows_the_marker(&out, pids[0]);
}

/// Where the marker of a callback of queued work sits in `stack`, checked: libuv's
/// `uv__work_done`, which called the callback, just inside it, `uv__work_submit`, where the
/// first work was queued, just outside, and the queuing thread the main one.
fn callback_marker_of(stack: &Value, pid: u32, label: &str) -> usize {
    let frames = frames(stack);
    let at = frames
        .iter()
        .position(|f| f["kind"] == "callback")
        .unwrap_or_else(|| panic!("{label}: no callback marker on {:?}", function_names(stack)));
    assert_eq!(
        frames[at]["function"].as_str(),
        Some(format!("callback of work queued by \"node\" on thread {pid}").as_str()),
        "{label}: {}",
        frames[at]
    );
    assert_eq!(
        frames[at - 1]["function"],
        "uv__work_done",
        "{label}: {:?}",
        function_names(stack)
    );
    assert_eq!(
        frames[at + 1]["function"],
        "uv__work_submit",
        "{label}: {:?}",
        function_names(stack)
    );
    at
}

/// `fs.readFile` loops, attached while they run: the leaks' Buffers are made on the main thread
/// in the callbacks of the work `fs.readFile` queued (or in the continuations of `await`s that
/// V8 runs from them), where no frame of the application is on the stack. Each top suspect must
/// be a `leak` whose stack goes from the callback's own frames (node's `fs` code, named from
/// V8's data) through the callback marker to the function that called `fs.readFile`; the
/// control's stitched stacks must be traced and none a suspect.
fn callbacks_are_named_under(node: &Path, test: &str) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (control, control_function) = CALLBACK_CONTROL;
    let mut all: Vec<&str> = CALLBACK_LEAKS.iter().map(|(f, _)| *f).collect();
    all.push(control);
    let mut targets: Vec<Target> = all.iter().map(|f| start(node, f, test)).collect();
    let pids: Vec<u32> = targets.iter().map(Target::pid).collect();
    let out = scratch(test).join("report.json");
    let report = trace_workloads(&mut targets, &pids, &["--interval", "500ms"], &out);
    for target in targets {
        assert_eq!(target.finish(), 0, "the fixture is unharmed");
    }
    for (&(leak, function), &pid) in CALLBACK_LEAKS.iter().zip(&pids) {
        let suspect = top_suspect(&report, pid);
        assert_eq!(
            suspect["growth"]["verdict"],
            "leak",
            "{leak}: top suspect {:?} is not a leak: {}",
            function_names(suspect),
            suspect["growth"]
        );
        let marker = callback_marker_of(suspect, pid, leak);
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
        // The callback ran JavaScript of its own before the marker: node's, named from V8's
        // data.
        assert!(
            frames[..marker]
                .iter()
                .any(|f| f["kind"] == "js" && f["source"] == "v8"),
            "{leak}: {:?}",
            function_names(suspect)
        );
    }
    let control_pid = pids[CALLBACK_LEAKS.len()];
    let stacks = stacks_of(&report, control_pid);
    let stitched: Vec<&&Value> = stacks
        .iter()
        .filter(|s| {
            function_names(s).contains(&control_function) && frames_of_kind(s, "callback") == 1
        })
        .collect();
    assert!(
        stitched.iter().any(|s| s["alloc_calls"].as_u64() > Some(0)),
        "{control}: no stitched stack names {control_function} ({} stacks)",
        stacks.len()
    );
    for stack in &stitched {
        callback_marker_of(stack, control_pid, control);
    }
    leaktrace_tests::assert_no_growth(control, stacks);
}

fn frames_of_kind(stack: &Value, kind: &str) -> usize {
    frames(stack).iter().filter(|f| f["kind"] == kind).count()
}

#[test]
fn flagless_node_20_names_what_a_callback_of_queued_work_allocates() {
    if !have_root("flagless_node_20_names_what_a_callback_of_queued_work_allocates") {
        return;
    }
    callbacks_are_named_under(Path::new("/usr/bin/node"), "callback_node20");
}

#[test]
fn flagless_node_22_names_what_a_callback_of_queued_work_allocates() {
    if !have_root("flagless_node_22_names_what_a_callback_of_queued_work_allocates") {
        return;
    }
    callbacks_are_named_under(&node22(), "callback_node22");
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
    pool_work_is_named_under(Path::new("/usr/bin/node"), "pool_node20");
}

#[test]
fn flagless_node_22_names_what_queued_pool_work() {
    if !have_root("flagless_node_22_names_what_queued_pool_work") {
        return;
    }
    pool_work_is_named_under(&node22(), "pool_node22");
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
    let stacks: Vec<&Value> = stacks_of(&report, pid)
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
    // The main thread is named after the executable (the fixture built with -luv).
    let function = format!("queued by \"pool_work-luv\" on thread {pid}");
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
        leaktrace_tests::losses(&report)
            .values()
            .filter(|v| v.as_u64() != Some(0))
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
