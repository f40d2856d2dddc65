//! JavaScript frames named from V8's own data, in Node processes started without any flag and
//! attached to while they run: the machine's Node 20 and the official Node 22 build. The top
//! suspect of each leak must name the JavaScript function that allocates, its script and a line
//! of that function, each frame saying it was named by `v8`, a function the optimizing compiler
//! inlined into its caller included; the control must be traced and yield no `leak` or
//! `growing`; and where a perf map names the same frames, both must agree.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use leaktrace_tests::{
    Target, frames, function_names, have_root, node_command, node22, root, scratch, top_suspect,
    trace_workloads,
};
use serde_json::Value;

/// Seconds each fixture runs its workload while traced.
const SECONDS: &str = "15";

/// One trace at a time: six Node processes per trace already share two cores, and a starved
/// process tiers its functions up late (each tier is a new stack), leaving the newest stack too
/// few samples for a verdict.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// (fixture, the function that allocates the leaking bytes, whether the optimizing compiler
/// inlines it into its caller within the first seconds)
const LEAKS: &[(&str, &str, bool)] = &[
    ("leak-global-array", "leakIntoGlobalArray", false),
    ("leak-unbounded-cache", "cacheResponse", false),
    ("leak-timer-closure", "scheduleLeakyTimer", false),
    // ICU objects behind Intl formatters kept in a cache: native memory that is not a Buffer.
    ("leak-intl-cache", "formatterFor", false),
    ("leak-inlined", "makeRecord", true),
];
const CONTROL: &str = "control-gc-buffers";
/// The control's function that allocates the Buffers it churns.
const CONTROL_FUNCTION: &str = "churnShortLivedBuffers";

fn fixture(name: &str) -> PathBuf {
    root_fixture_dir().join(format!("{name}.js"))
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

/// The fastest-growing stack of those `wanted` picks.
fn fastest(report: &Value, wanted: impl Fn(&Value) -> bool) -> Option<&Value> {
    report["stacks"]
        .as_array()
        .expect("stacks[]")
        .iter()
        .filter(|s| wanted(s))
        .max_by(|a, b| {
            let rate = |s: &Value| s["growth"]["bytes_per_s"].as_f64().unwrap_or(0.0);
            rate(a).total_cmp(&rate(b))
        })
}

/// The 1-based lines of `fixture`'s source that hold `function`'s body, from its declaration
/// to its closing brace: a frame of it must carry one of these.
fn lines_of(fixture_path: &Path, function: &str) -> std::ops::RangeInclusive<u64> {
    let source = std::fs::read_to_string(fixture_path).expect("reading the fixture");
    let lines: Vec<&str> = source.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains(&format!("function {function}(")))
        .unwrap_or_else(|| panic!("{function} is not declared in {}", fixture_path.display()));
    let end = lines[start..]
        .iter()
        .position(|l| *l == "}")
        .map_or(lines.len(), |n| start + n);
    (start as u64 + 1)..=(end as u64 + 1)
}

/// Traces the leaks and the control under `node` and checks every verdict and name.
fn leaks_are_named_under(node: &Path, test: &str) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut all: Vec<&str> = LEAKS.iter().map(|(f, _, _)| *f).collect();
    all.push(CONTROL);
    let mut targets: Vec<Target> = all.iter().map(|f| start(node, f, test)).collect();
    let pids: Vec<u32> = targets.iter().map(Target::pid).collect();
    let out = scratch(test).join("report.json");
    let report = trace_workloads(&mut targets, &pids, &["--interval", "500ms"], &out);
    for target in targets {
        assert_eq!(target.finish(), 0, "the fixture is unharmed");
    }
    for (&(fixture_name, function, inlined), &pid) in LEAKS.iter().zip(&pids) {
        let suspect = top_suspect(&report, pid);
        assert_eq!(
            suspect["growth"]["verdict"],
            "leak",
            "{fixture_name}: top suspect {:?} is not a leak: {}",
            function_names(suspect),
            suspect["growth"]
        );
        let frame = frames(suspect)
            .iter()
            .find(|f| f["function"].as_str() == Some(function))
            .unwrap_or_else(|| {
                panic!(
                    "{fixture_name}: {function} not on {:?}",
                    function_names(suspect)
                )
            });
        assert_eq!(frame["kind"], "js", "{fixture_name}: {frame}");
        assert_eq!(frame["source"], "v8", "{fixture_name}: {frame}");
        assert_eq!(frame["inlined"], inlined, "{fixture_name}: {frame}");
        let path = fixture(fixture_name);
        assert_eq!(
            frame["file"].as_str(),
            Some(path.to_str().expect("utf-8 path")),
            "{fixture_name}: {frame}"
        );
        let line = frame["line"].as_u64().expect("a line");
        let body = lines_of(&path, function);
        assert!(
            body.contains(&line),
            "{fixture_name}: line {line} is not in {function} ({body:?}): {frame}"
        );
    }
    // The control was traced (it allocated, and its churning function is named from V8's
    // data), and none of its stacks is a suspect.
    let control = pids[LEAKS.len()];
    let target = report["targets"]
        .as_array()
        .expect("targets[]")
        .iter()
        .find(|t| t["pid"].as_u64() == Some(u64::from(control)))
        .expect("the control is a target");
    assert!(
        target["totals"]["alloc_calls"]
            .as_u64()
            .expect("alloc_calls")
            > 0,
        "{CONTROL}: no allocation traced"
    );
    let stacks: Vec<&Value> = report["stacks"]
        .as_array()
        .expect("stacks[]")
        .iter()
        .filter(|s| s["pid"].as_u64() == Some(u64::from(control)))
        .collect();
    assert!(
        stacks
            .iter()
            .any(|s| function_names(s).contains(&CONTROL_FUNCTION)
                && s["alloc_calls"].as_u64() > Some(0)),
        "{CONTROL}: no stack names {CONTROL_FUNCTION} ({} stacks)",
        stacks.len()
    );
    leaktrace_tests::assert_no_growth(CONTROL, stacks);
    for target in report["targets"].as_array().expect("targets[]") {
        let notes = target["notes"].to_string();
        assert!(!notes.contains("unnamed"), "{notes}");
    }
}

#[test]
fn flagless_node_20_names_the_leaking_functions() {
    if !have_root("flagless_node_20_names_the_leaking_functions") {
        return;
    }
    leaks_are_named_under(Path::new("/usr/bin/node"), "v8_node20");
}

#[test]
fn flagless_node_22_names_the_leaking_functions() {
    if !have_root("flagless_node_22_names_the_leaking_functions") {
        return;
    }
    leaks_are_named_under(&node22(), "v8_node22");
}

/// An async function that keeps what it allocates after an `await`: its fixture, the
/// function, the functions that awaited it (innermost first), and what the marker between them
/// says.
struct AfterAwait {
    fixture: &'static str,
    function: &'static str,
    awaiters: &'static [&'static str],
    marker: &'static str,
}

const AFTER_AWAIT: [AfterAwait; 2] = [
    AfterAwait {
        fixture: "leak-after-await",
        function: "storeAfterAwait",
        awaiters: &["loadProfile", "handleRequest"],
        marker: "resumed after await, awaited by the 2 functions below (the outermost not awaited)",
    },
    // Through `Promise.all`, whose element closure holds no async function.
    AfterAwait {
        fixture: "leak-after-promise-all",
        function: "storeAfterAwait",
        awaiters: &[],
        marker: "resumed after await (handed to a promise handler (then, Promise.all and kin): \
                 not followed)",
    },
];

/// Async functions that keep what they allocate after an `await`, flag-less, on Node 20 and 22
/// in one trace: the top suspect names the function from V8's data; just outside it the report
/// marks the spot where V8 resumed it and names, from the promise chain the probes followed,
/// the async functions that awaited it, in order (`v8-await`: not on the stack), saying where
/// the chain ends: the outermost not awaited, or `Promise.all`, which is not followed; then the
/// builtin closure that resumed it, named by the node binary's symbols (V8's data calls it
/// `(anonymous)`).
#[test]
fn flagless_nodes_name_who_awaited_a_leak() {
    if !have_root("flagless_nodes_name_who_awaited_a_leak") {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let nodes = [PathBuf::from("/usr/bin/node"), node22()];
    let runs: Vec<(&PathBuf, &AfterAwait)> = AFTER_AWAIT
        .iter()
        .flat_map(|case| nodes.iter().map(move |node| (node, case)))
        .collect();
    let mut targets: Vec<Target> = runs
        .iter()
        .enumerate()
        .map(|(i, (node, case))| start(node, case.fixture, &format!("v8_await_{i}")))
        .collect();
    let pids: Vec<u32> = targets.iter().map(Target::pid).collect();
    let out = scratch("v8_await").join("report.json");
    let report = trace_workloads(&mut targets, &pids, &["--interval", "500ms"], &out);
    for target in targets {
        assert_eq!(target.finish(), 0, "the fixture is unharmed");
    }
    for ((node, case), &pid) in runs.iter().zip(&pids) {
        let label = format!("{} under {}", case.fixture, node.display());
        let script = fixture(case.fixture);
        let script = script.to_str().expect("utf-8 path");
        let suspect = top_suspect(&report, pid);
        let names = function_names(suspect);
        assert_eq!(
            suspect["growth"]["verdict"], "leak",
            "{label}: top suspect {names:?} is not a leak: {}",
            suspect["growth"]
        );
        let frames = frames(suspect);
        let at = frames
            .iter()
            .position(|f| f["function"].as_str() == Some(case.function))
            .unwrap_or_else(|| panic!("{label}: {} not on {names:?}", case.function));
        let frame = &frames[at];
        assert_eq!(frame["kind"], "js", "{label}: {frame}");
        assert_eq!(frame["source"], "v8", "{label}: {frame}");
        assert_eq!(frame["file"].as_str(), Some(script), "{label}: {frame}");
        let marker = &frames[at + 1];
        assert_eq!(marker["kind"], "async", "{label}: {names:?}");
        assert_eq!(marker["function"], case.marker, "{label}: {marker}");
        for (n, awaiter) in case.awaiters.iter().enumerate() {
            let frame = &frames[at + 2 + n];
            assert_eq!(frame["function"], *awaiter, "{label}: {names:?}");
            assert_eq!(frame["kind"], "js", "{label}: {frame}");
            assert_eq!(frame["source"], "v8-await", "{label}: {frame}");
            assert_eq!(frame["file"].as_str(), Some(script), "{label}: {frame}");
        }
        assert_eq!(
            frames[at + 2 + case.awaiters.len()]["function"],
            "Builtins_AsyncFunctionAwaitResolveClosure",
            "{label}: {names:?}"
        );
        assert!(
            frames.iter().all(|f| f["function"] != "(anonymous)"),
            "{label}: {names:?}"
        );
    }
}

/// The JIT-compiled JavaScript functions of a perf map, by address range.
fn perf_map_functions(pid: u32) -> Vec<(u64, u64, String)> {
    let text = std::fs::read_to_string(format!("/tmp/perf-{pid}.map")).expect("the perf map");
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let start = u64::from_str_radix(parts.next()?, 16).ok()?;
            let size = u64::from_str_radix(parts.next()?, 16).ok()?;
            // `JS:*name file:line:column` (Node 20 and 22), `*` optimized, `^` baseline, `~`
            // interpreted; builtins and stubs are not JavaScript functions.
            let name = parts.next()?.strip_prefix("JS:")?;
            let name = name.trim_start_matches(['*', '^', '~', '+']);
            let function = name.split(' ').next()?.to_owned();
            Some((start, start + size, function))
        })
        .collect()
}

#[test]
fn v8_names_agree_with_the_perf_map() {
    if !have_root("v8_names_agree_with_the_perf_map") {
        return;
    }
    let mut cmd = Command::new("/usr/bin/node");
    cmd.current_dir(scratch("v8_perf_map_cwd"))
        .arg("--perf-basic-prof")
        .arg(fixture("leak-inlined"))
        .arg(SECONDS);
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut target = Target::spawn(cmd);
    let pid = target.pid();
    let out = scratch("v8_perf_map").join("report.json");
    let report = trace_workloads(
        std::slice::from_mut(&mut target),
        &[pid],
        &["--interval", "500ms"],
        &out,
    );
    // Read while the process lives: its perf map is complete then.
    let perf_map = perf_map_functions(pid);
    assert_eq!(target.finish(), 0);
    // makeRecord was inlined: the perf map has no optimized code of its own for it, and only
    // V8's data names it, inlined into the optimized ingestBatch.
    let optimized = std::fs::read_to_string(format!("/tmp/perf-{pid}.map")).expect("perf map");
    assert!(
        optimized.lines().any(|l| l.contains("JS:*ingestBatch")),
        "ingestBatch was not optimized"
    );
    assert!(
        !optimized.lines().any(|l| l.contains("JS:*makeRecord")),
        "makeRecord has optimized code of its own: it was not (only) inlined"
    );
    let suspect = fastest(&report, |s| s["growth"]["verdict"] == "leak").expect("a leak");
    let names: Vec<(&str, bool)> = frames(suspect)
        .iter()
        .filter(|f| f["kind"] == "js")
        .filter_map(|f| Some((f["function"].as_str()?, f["inlined"].as_bool()?)))
        .collect();
    let at = names
        .iter()
        .position(|n| *n == ("makeRecord", true))
        .unwrap_or_else(|| panic!("makeRecord is not an inlined frame: {names:?}"));
    assert_eq!(
        names.get(at + 1),
        Some(&("ingestBatch", false)),
        "{names:?}"
    );
    let mut compared: HashMap<String, usize> = HashMap::new();
    for stack in report["stacks"].as_array().expect("stacks[]") {
        // A perf map names the code at an address: the function the inlined ones are in.
        for frame in frames(stack)
            .iter()
            .filter(|f| f["source"] == "v8" && f["inlined"] == false)
        {
            let address = frame["address"].as_str().expect("address");
            let address = u64::from_str_radix(address.trim_start_matches("0x"), 16).expect("hex");
            // A return address belongs to the call before it.
            let Some((_, _, name)) = perf_map
                .iter()
                .find(|(start, end, _)| (*start..*end).contains(&(address - 1)))
            else {
                continue;
            };
            let v8 = frame["function"].as_str().expect("a name");
            let perf = if name.is_empty() {
                "(anonymous)"
            } else {
                name.as_str()
            };
            assert_eq!(v8, perf, "V8's data and the perf map disagree at {frame}");
            *compared.entry(v8.to_owned()).or_default() += 1;
        }
    }
    assert!(
        compared.contains_key("ingestBatch"),
        "no frame of ingestBatch was named by both: {compared:?}"
    );
}

#[test]
fn a_containerized_node_is_named_from_its_own_binary() {
    if !have_root("a_containerized_node_is_named_from_its_own_binary") {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A root of its own with Node 22 and the fixture: the host has another Node (20), so the
    // layout must come from the container's binary.
    let dir = scratch("v8_container");
    let root = dir.join("root");
    leaktrace_tests::make_root_with(
        &root,
        &node22(),
        "node",
        &[
            "libdl.so.2",
            "libstdc++.so.6",
            "libm.so.6",
            "libgcc_s.so.1",
            "libpthread.so.0",
        ],
    );
    std::fs::create_dir_all(root.join("app")).expect("the app directory");
    for file in ["leak-global-array.js", "_harness.js"] {
        std::fs::copy(root_fixture_dir().join(file), root.join("app").join(file))
            .expect("copying the fixture");
    }
    let (mut unshare, pid) = leaktrace_tests::start_in_namespace(
        &root,
        "/node",
        &["/app/leak-global-array.js", "8"],
        &[],
    );
    let report = leaktrace_tests::trace_workload(
        &mut unshare,
        pid,
        &["--interval", "500ms"],
        &dir.join("report.json"),
    );
    assert_eq!(unshare.finish(), 0);
    assert_eq!(report["targets"][0]["ns_pid"], 1, "{}", report["targets"]);
    let suspect = top_suspect(&report, pid);
    let frame = frames(suspect)
        .iter()
        .find(|f| f["function"] == "leakIntoGlobalArray")
        .unwrap_or_else(|| panic!("leakIntoGlobalArray not on {:?}", function_names(suspect)));
    assert_eq!(frame["source"], "v8", "{frame}");
    // The script path as the container sees it.
    assert_eq!(frame["file"], "/app/leak-global-array.js", "{frame}");
}

fn root_fixture_dir() -> PathBuf {
    root().join("tests/fixtures/node")
}

/// A copy of `node` whose `v8dbg_off_fp_function` (the frame slot of the function) says 4096:
/// a V8 whose data is not what leaktrace expects.
fn node_with_bad_v8_data(dir: &Path) -> PathBuf {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let mut bytes = std::fs::read("/usr/bin/node").expect("reading node");
    let (offset, size) = {
        let elf = object::File::parse(&*bytes).expect("node is an ELF file");
        let symbol = elf
            .symbols()
            .find(|s| s.name() == Ok("v8dbg_off_fp_function"))
            .expect("node has v8dbg_off_fp_function");
        let section = elf
            .section_by_index(symbol.section_index().expect("a defined symbol"))
            .expect("its section");
        let (file_offset, _) = section.file_range().expect("stored in the file");
        (
            (file_offset + symbol.address() - section.address()) as usize,
            symbol.size() as usize,
        )
    };
    assert_eq!(size, 4, "v8dbg values are ints");
    bytes[offset..offset + 4].copy_from_slice(&4096i32.to_le_bytes());
    let path = dir.join("node-bad-v8");
    std::fs::write(&path, &bytes).expect("writing the copy");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("making the copy executable");
    path
}

#[test]
fn unexpected_v8_data_is_said_and_frames_stay_addresses() {
    if !have_root("unexpected_v8_data_is_said_and_frames_stay_addresses") {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("v8_bad_data");
    let node = node_with_bad_v8_data(&dir);
    let mut target = start(&node, "leak-global-array", "v8_bad_data");
    let pid = target.pid();
    let report = trace_workloads(
        std::slice::from_mut(&mut target),
        &[pid],
        &["--interval", "500ms"],
        &dir.join("report.json"),
    );
    assert_eq!(target.finish(), 0, "the target is unharmed");
    let notes = report["targets"][0]["notes"].to_string();
    assert!(notes.contains("V8 data unusable"), "{notes}");
    // The trace itself is whole: the leak is found, its JavaScript frames are addresses.
    let suspect = top_suspect(&report, pid);
    assert!(
        frames(suspect).iter().all(|f| f["source"] != "v8"),
        "{:?}",
        function_names(suspect)
    );
}
