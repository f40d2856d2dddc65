//! Where the RSS went (#20): glibc's account read from outside agrees with the process's own
//! `mallinfo2()`, arenas full of freed memory are `retention`, and a plain leak stays a `leak`.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::{path::PathBuf, process::Command};

use leaktrace_tests::{
    Target, Tracer, fixture, have_root, node22, read_report, root, scratch, trace_workload,
    trace_workloads,
};
use serde_json::Value;

/// The `memory` object of the report's only target.
fn memory(report: &Value, pid: u32) -> &Value {
    let target = report["targets"]
        .as_array()
        .expect("targets[]")
        .iter()
        .find(|t| t["pid"] == pid)
        .expect("the fixture is a target");
    &target["memory"]
}

/// `key value key value ...` after the line's first word.
fn numbers(line: &str, key: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == key)
        .unwrap_or_else(|| panic!("{key} in {line:?}"));
    words[at + 1].parse().expect("a number")
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("a number: {v}"))
}

/// `malloc.by_thread` as (threads_are, threads, arenas, free_bytes), checked to cover every
/// arena read exactly once.
fn by_thread(malloc: &Value) -> Vec<(String, u64, u64, u64)> {
    let shares: Vec<(String, u64, u64, u64)> = malloc["by_thread"]
        .as_array()
        .unwrap_or_else(|| panic!("by_thread[]: {malloc}"))
        .iter()
        .map(|s| {
            (
                s["threads_are"].as_str().expect("threads_are").to_owned(),
                u(&s["threads"]),
                u(&s["arenas"]),
                u(&s["free_bytes"]),
            )
        })
        .collect();
    assert_eq!(u(&malloc["arenas_unreadable"]), 0, "{malloc}");
    assert_eq!(
        shares.iter().map(|s| s.2).sum::<u64>(),
        u(&malloc["arenas"]),
        "every arena in one share: {malloc}"
    );
    assert_eq!(
        shares.iter().map(|s| s.3).sum::<u64>(),
        u(&malloc["free_bytes"]),
        "{malloc}"
    );
    shares
}

/// The resident classes of a breakdown sum to its RSS, exactly.
fn assert_classes_sum_to_rss(b: &Value) {
    assert_eq!(
        u(&b["rss"]),
        u(&b["v8_heap"])
            + u(&b["malloc_heaps"])
            + u(&b["thread_stacks"])
            + u(&b["code_and_files"])
            + u(&b["other_anonymous"]),
        "{b}"
    );
}

#[test]
fn fragmented_arenas_are_retention_and_match_mallinfo2() {
    if !have_root("fragmented_arenas_are_retention_and_match_mallinfo2") {
        return;
    }
    // 6 threads at once: 6 arenas besides the main one; 6 rounds of growing sizes, 900 ms apart:
    // the memory is read once a second, so the verdict has readings enough for a trend.
    let exe = fixture("fragment", &[]);
    let mut target = Target::start(&exe, &["6", "6", "900"]);
    let pid = target.pid();
    let out = scratch("memory-retention").join("report.json");
    let pid_arg = pid.to_string();
    let tracer = Tracer::attach(&[
        &pid_arg,
        "--interval",
        "100ms",
        "--format",
        "json",
        "-o",
        out.to_str().expect("utf-8 path"),
    ]);
    target.send("go");
    let arenas = numbers(&target.expect_line("arenas"), "arenas");
    let main_system = numbers(&target.expect_line("main_arena"), "system");
    let mallinfo = target.expect_line("mallinfo2");
    target.expect_line("done");
    let output = tracer.interrupt();
    assert!(
        output.status.success(),
        "leaktrace failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = read_report(&out);
    let m = memory(&report, pid);
    let malloc = &m["malloc"];
    eprintln!("{}", m["summary"]);
    eprintln!("fixture: arenas {arenas}, {mallinfo}");

    assert_eq!(m["verdict"], "retention", "{}", m["summary"]);
    assert_eq!(malloc["allocator"], "glibc");
    assert_eq!(malloc["readable"], true, "{malloc}");
    assert_eq!(arenas, 7, "each thread allocated in an arena of its own");
    assert_eq!(u(&malloc["arenas"]), arenas, "the arenas malloc_info lists");
    // The process is idle once it printed mallinfo2 (it waits on stdin and allocates nothing),
    // so the last reading sees the same arenas. Blocks in the threads' caches (tcache) count
    // as in use in both accounts, so no tolerance is needed: the sums are equal.
    assert_eq!(u(&malloc["system_bytes"]), numbers(&mallinfo, "arena"));
    assert_eq!(u(&malloc["free_bytes"]), numbers(&mallinfo, "fordblks"));
    assert_eq!(u(&malloc["in_use_bytes"]), numbers(&mallinfo, "uordblks"));
    // The main thread's arena apart: the threads' own arenas keep nearly all the free memory.
    assert_eq!(u(&malloc["main_arena_system_bytes"]), main_system);
    let main_free = u(&malloc["main_arena_free_bytes"]);
    assert!(
        main_free <= u(&malloc["free_bytes"]) / 20,
        "the main arena keeps {main_free} of {}",
        malloc["free_bytes"]
    );
    assert!(
        m["summary"]
            .as_str()
            .expect("summary")
            .contains("of it in other threads' arenas"),
        "{}",
        m["summary"]
    );
    // By thread: the threads were joined, so their 6 arenas have no live thread; the main
    // thread's is the main arena.
    let shares = by_thread(malloc);
    assert_eq!(
        shares,
        vec![
            (
                "no live thread".to_owned(),
                0,
                6,
                u(&malloc["free_bytes"]) - main_free
            ),
            ("main thread".to_owned(), 1, 1, main_free),
        ],
        "{malloc}"
    );
    assert_eq!(
        malloc["mmapped_bytes"].as_u64(),
        Some(numbers(&mallinfo, "hblkhd"))
    );
    assert_eq!(
        malloc["mmapped_blocks"].as_u64(),
        Some(numbers(&mallinfo, "hblks"))
    );

    // The probes saw every block the threads kept: glibc's in-use bytes add each chunk's header
    // and rounding (at most 24 bytes a block), and what the process allocated before the trace
    // or outside the probes' view (the main thread's tcache, the loader's blocks): under 64 KiB.
    let live = report["targets"][0]["totals"]["live_bytes"]
        .as_i64()
        .expect("live bytes");
    let blocks = report["targets"][0]["totals"]["live_allocs"]
        .as_i64()
        .expect("live blocks");
    let glibc_in_use = u(&malloc["in_use_bytes"]) as i64;
    assert!(
        (glibc_in_use - live).abs() <= 24 * blocks + (64 << 10),
        "glibc says {glibc_in_use} in use, the probes {live} live in {blocks} blocks"
    );

    // Free but kept grew by tens of MiB, the RSS with it, while the blocks in use (one in 64
    // kept) grew by a few percent of that.
    let growth = &m["growth"];
    let free = growth["free_bytes"].as_i64().expect("free growth");
    let in_use = growth["in_use_bytes"].as_i64().expect("in-use growth");
    let rss = growth["rss_bytes"].as_i64().expect("rss growth");
    assert!(free > 20 << 20, "free but kept grew by {free}");
    assert!(
        in_use < free / 10,
        "in use grew by {in_use}, free by {free}"
    );
    assert!(rss > free / 2, "RSS grew by {rss}, free by {free}");
    // Judged on the trend of every reading, not on the first and last alone.
    assert_eq!(growth["method"], "mann-kendall+theil-sen", "{growth}");
    assert!(growth["points"].as_u64().expect("points") >= 5, "{growth}");
    let free_rate = growth["free_bytes_per_s"].as_f64().expect("free slope");
    let in_use_rate = growth["in_use_bytes_per_s"].as_f64().expect("in-use slope");
    assert!(
        free_rate > 0.0 && in_use_rate < free_rate / 10.0,
        "{growth}"
    );
    // The arenas' heaps hold the resident memory, and the resident classes sum to the RSS.
    let b = &m["breakdown"];
    assert!(u(&b["malloc_heaps"]) > 60 << 20, "{b}");
    assert_classes_sum_to_rss(b);
    assert!(
        m["advice"]
            .as_array()
            .expect("advice")
            .iter()
            .any(|a| a.as_str().is_some_and(|a| a.contains("MALLOC_ARENA_MAX"))),
        "{}",
        m["advice"]
    );
    assert_eq!(target.finish(), 0);
}

#[test]
fn a_plain_leak_stays_a_leak() {
    if !have_root("a_plain_leak_stays_a_leak") {
        return;
    }
    // 1500 rounds of 6,212 bytes kept each, 1 ms apart: 9.3 MB of live blocks.
    let exe = fixture("leaky", &[]);
    let mut target = Target::start(&exe, &["1500", "1"]);
    let pid = target.pid();
    let out = scratch("memory-leak").join("report.json");
    let report = trace_workload(&mut target, pid, &["--interval", "100ms"], &out);
    let m = memory(&report, pid);
    eprintln!("{}", m["summary"]);
    assert_eq!(m["verdict"], "leak", "{}", m["summary"]);
    let growth = &m["growth"];
    let in_use = growth["in_use_bytes"].as_i64().expect("in-use growth");
    // The probes' own count of live bytes is the independent truth here: glibc's in-use bytes
    // add a chunk header (8 bytes) and rounding to 16 per block, at most 24 bytes on each of
    // the 8 blocks a round keeps.
    let live = report["targets"][0]["totals"]["live_bytes"]
        .as_i64()
        .expect("live bytes");
    assert!(
        in_use <= live + 1500 * 8 * 24 && in_use >= live * 9 / 10,
        "in use grew by {in_use}, the probes saw {live} live"
    );
    assert_eq!(target.finish(), 0);
}

#[test]
fn another_allocators_account_is_said_unread() {
    if !have_root("another_allocators_account_is_said_unread") {
        return;
    }
    const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
    if !std::path::Path::new(JEMALLOC).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{JEMALLOC} is missing (cargo xtask setup installs libjemalloc2)"
        );
        return;
    }
    let mut cmd = std::process::Command::new(fixture("fragment", &[]));
    cmd.args(["2", "2", "50"]).env("LD_PRELOAD", JEMALLOC);
    let mut target = Target::spawn(cmd);
    let pid = target.pid();
    let out = scratch("memory-jemalloc").join("report.json");
    let report = trace_workload(&mut target, pid, &["--interval", "100ms"], &out);
    let m = memory(&report, pid);
    eprintln!("{}", m["summary"]);
    // jemalloc's arenas cannot be found from outside: no verdict, and exactly why, with what to
    // do instead.
    assert_eq!(m["verdict"], "unknown");
    assert_eq!(m["malloc"]["allocator"], "jemalloc");
    assert_eq!(m["malloc"]["readable"], false);
    assert_eq!(
        m["malloc"]["unreadable"],
        "jemalloc's statistics are behind mallctl(), which only the process itself can call, \
         and its library names nothing that leads to its arenas: its account cannot be read \
         from outside (in the process: malloc_stats_print, or MALLOC_CONF=stats_print:true at \
         exit)"
    );
    // The resident set is still broken down, and its classes still sum to it.
    let b = &m["breakdown"];
    assert!(u(&b["rss"]) > 0);
    assert_classes_sum_to_rss(b);
    assert_eq!(target.finish(), 0);
}

/// Async zlib at high concurrency (nodejs/node#8871): every block is freed once the work is
/// done, and the RSS stays where the work took it: retention, in watch mode (no uprobe), with
/// each kind of thread's share of the free memory kept: the main thread's (zlib's state is
/// allocated there), libuv's pool's (its 4 threads, named by the function they started at) and
/// V8's workers'.
#[test]
fn zlib_on_the_thread_pool_is_retention_with_each_threads_share() {
    if !have_root("zlib_on_the_thread_pool_is_retention_with_each_threads_share") {
        return;
    }
    let test = "memory-zlib-retention";
    let nodes = [PathBuf::from("node"), node22()];
    let mut targets: Vec<Target> = nodes
        .iter()
        .map(|node| {
            let mut cmd = Command::new(node);
            cmd.current_dir(scratch(&format!("{test}-cwd")))
                .arg(root().join("tests/fixtures/node/memory/zlib-retention.js"))
                .env("UV_THREADPOOL_SIZE", "4");
            Target::spawn(cmd)
        })
        .collect();
    let pids: Vec<u32> = targets.iter().map(Target::pid).collect();
    let out = scratch(test).join("report.json");
    let report = trace_workloads(
        &mut targets,
        &pids,
        &["--mode", "watch", "--interval", "250ms"],
        &out,
    );
    for (target, (node, pid)) in targets.into_iter().zip(nodes.iter().zip(pids)) {
        let node = node.display();
        assert_eq!(target.finish(), 0, "{node}: the fixture is unharmed");
        let m = memory(&report, pid);
        eprintln!("{node}: {}", m["summary"]);
        assert_eq!(m["verdict"], "retention", "{node}: {}", m["summary"]);
        let growth = &m["growth"];
        let free = growth["free_bytes"].as_i64().expect("free growth");
        assert!(free > 32 << 20, "{node}: free but kept grew by {free}");
        // The verdict says in use did not grow (it rose and fell with each round, and the last
        // outputs may still wait for V8 to collect them: Node 22 collects later than 20).
        assert!(
            growth["free_bytes_per_s"].as_f64().expect("free slope") > 0.0,
            "{node}: {growth}"
        );
        assert!(
            growth["rss_bytes"].as_i64().expect("rss growth") > free / 2,
            "{node}: the RSS stays high: {growth}"
        );

        let malloc = &m["malloc"];
        let shares = by_thread(malloc);
        eprintln!("{node}: {shares:?}");
        let share = |name: &str| {
            shares
                .iter()
                .find(|s| s.0 == name)
                .unwrap_or_else(|| panic!("{node}: no share of {name}: {shares:?}"))
        };
        let main = share("main thread");
        assert_eq!(
            (main.1, main.2, main.3),
            (1, 1, u(&malloc["main_arena_free_bytes"])),
            "{node}"
        );
        // zlib's deflate state is the main thread's: its arena keeps most of what was freed,
        // which MALLOC_ARENA_MAX would not give back: the advice says so.
        assert!(main.3 > u(&malloc["free_bytes"]) / 2, "{node}: {shares:?}");
        let advice = m["advice"].to_string();
        assert!(
            advice.contains("the main thread's arena keeps"),
            "{node}: {advice}"
        );
        let pool = share("libuv thread pool (worker)");
        assert_eq!(
            pool.1, 4,
            "{node}: UV_THREADPOOL_SIZE=4 threads: {shares:?}"
        );
        assert!((1..=4).contains(&pool.2), "{node}: {shares:?}");
    }
}

/// A Node process whose JavaScript heap grows: the pages V8 maps for it are told apart from the
/// rest of the anonymous memory by the stack of the `mmap` that made them, and they account for
/// most of what V8 itself says its heap grew by, never more than V8 says it holds. Each reading
/// of the series is broken down the same way (the HTML report stacks them).
#[test]
fn v8s_heap_is_known_by_the_calls_that_mapped_it() {
    if !have_root("v8s_heap_is_known_by_the_calls_that_mapped_it") {
        return;
    }
    v8_heap_told_apart("memory-v8-heap", &[]);
}

/// The same in watch mode, no uprobe placed: with the mapping syscalls probed at the raw
/// syscall tracepoints (this machine's kernel, in lockdown, refuses watch mode's default
/// fentry), V8's heap is still known by its mappings' stacks.
#[test]
fn watch_mode_knows_v8s_heap_by_the_calls_that_mapped_it() {
    if !have_root("watch_mode_knows_v8s_heap_by_the_calls_that_mapped_it") {
        return;
    }
    let report = v8_heap_told_apart(
        "memory-v8-heap-watch",
        &["--mode", "watch", "--syscall-tracepoints"],
    );
    let notes = report["trace"]["notes"].to_string();
    assert!(!notes.contains("no mapping events"), "{notes}");
    assert_eq!(report["trace"]["mode"], "watch");
    // The objects are made by compiled JavaScript, which writes V8's young pages itself
    // (inline allocation, no call out): the pages it populates are charged to that function,
    // named as the innermost frame.
    let filled: u64 = report["stacks"]
        .as_array()
        .expect("stacks[]")
        .iter()
        .filter(|s| s["kind"] == "populated")
        .filter(|s| s["frames"][0]["kind"] == "js" && s["frames"][0]["function"] == "growTheJsHeap")
        .map(|s| u(&s["allocated_bytes"]))
        .sum();
    assert!(
        filled >= 24 << 20,
        "growTheJsHeap populated {filled} B as the innermost frame"
    );
}

/// Watch mode by default probes the mapping syscalls by fentry: either the kernel allows it and
/// mmap'd memory has its stacks, or the report says why there are none and what to do.
#[test]
fn watch_mode_sees_mappings_or_says_why_not() {
    if !have_root("watch_mode_sees_mappings_or_says_why_not") {
        return;
    }
    let mut target = Target::start(&fixture("populate", &[]), &["4", "16", "50"]);
    let pid = target.pid();
    let out = scratch("memory-watch-mappings").join("report.json");
    let report = trace_workload(
        &mut target,
        pid,
        &["--mode", "watch", "--interval", "250ms"],
        &out,
    );
    assert_eq!(target.finish(), 0, "the fixture is unharmed");
    let mapped = report["stacks"]
        .as_array()
        .expect("stacks[]")
        .iter()
        .any(|s| s["kind"] == "mmap");
    let notes = report["trace"]["notes"].to_string();
    let said = notes.contains("no mapping events") && notes.contains("--syscall-tracepoints");
    assert!(mapped != said, "mmap stacks: {mapped}; notes: {notes}");
}

/// The V8 heap fixture's `heap BEFORE USED TOTAL PHYSICAL` line, in bytes.
fn heap_line(line: &str) -> [u64; 4] {
    line.split_whitespace()
        .skip(1)
        .map(|n| n.parse().expect("heap BEFORE USED TOTAL PHYSICAL"))
        .collect::<Vec<_>>()
        .try_into()
        .expect("heap BEFORE USED TOTAL PHYSICAL")
}

/// A Node process attached to after its heap was built, Node 20 and 22 in one trace, in watch
/// mode: no mapping event ever names V8's regions (this kernel refuses watch mode's fentry, and
/// the heap predates the attach anyway), so V8's heap is known by its pages' own headers. Its
/// resident bytes match what V8 says it holds in RAM (`total_physical_size`, committed pages:
/// resident up to the pages V8 committed and never touched), and little anonymous memory is
/// left unexplained.
#[test]
fn v8s_heap_from_before_the_attach_is_known_by_its_page_headers() {
    if !have_root("v8s_heap_from_before_the_attach_is_known_by_its_page_headers") {
        return;
    }
    let script = root().join("tests/fixtures/node/memory/v8-heap-objects.js");
    let mut targets: Vec<Target> = [PathBuf::from("node"), node22()]
        .iter()
        .map(|node| {
            let mut cmd = Command::new(node);
            cmd.current_dir(scratch("memory-v8-headers-cwd"))
                .arg(&script)
                .args(["96", "before"]);
            Target::spawn(cmd)
        })
        .collect();
    let pids: Vec<u32> = targets.iter().map(Target::pid).collect();
    let out = scratch("memory-v8-headers").join("report.json");
    let report = trace_workloads(
        &mut targets,
        &pids,
        &["--mode", "watch", "--interval", "250ms"],
        &out,
    );
    for (mut target, &pid) in targets.into_iter().zip(&pids) {
        let [_, used, _, physical] = heap_line(&target.expect_line("heap "));
        assert_eq!(target.finish(), 0, "the fixture is unharmed");
        let m = memory(&report, pid);
        eprintln!("{pid}: {}", m["summary"]);
        let b = &m["breakdown"];
        assert_classes_sum_to_rss(b);
        let v8 = u(&b["v8_heap"]);
        assert!(used > 64 << 20, "the fixture built its heap: {used}");
        assert!(
            v8 >= physical / 10 * 9 && v8 <= physical + (1 << 20),
            "V8 heap {v8} B; V8 says {physical} B of its heap are in RAM"
        );
        assert!(
            u(&b["other_anonymous"]) < 16 << 20,
            "V8's heap is not left in other anonymous: {b}"
        );
    }
}

/// Runs the fixture under `args` and checks its breakdown; returns the report.
fn v8_heap_told_apart(test: &str, args: &[&str]) -> Value {
    let script = root().join("tests/fixtures/node/memory/v8-heap-objects.js");
    let mut cmd = Command::new("node");
    cmd.current_dir(scratch(&format!("{test}-cwd")))
        .arg(&script)
        .arg("96");
    let mut target = Target::spawn(cmd);
    let pid = target.pid();
    let out = scratch(test).join("report.json");
    let mut all = vec!["--interval", "250ms"];
    all.extend_from_slice(args);
    let report = trace_workload(&mut target, pid, &all, &out);
    let heap = target.expect_line("heap ");
    let [before, used, total, _physical] = heap_line(&heap);
    assert_eq!(target.finish(), 0, "the fixture is unharmed");
    let m = memory(&report, pid);
    eprintln!("{}", m["summary"]);
    let b = &m["breakdown"];
    assert_classes_sum_to_rss(b);
    let v8 = u(&b["v8_heap"]);
    let grown = used.saturating_sub(before);
    assert!(grown > 64 << 20, "the fixture grew its heap: {heap}");
    assert!(
        v8 >= grown / 2 && v8 <= total,
        "V8 heap {v8} B: V8 says its heap grew by {grown} B to {used} B used of {total} B"
    );
    assert!(
        m["summary"]
            .as_str()
            .is_some_and(|s| s.contains(" = V8 heap ")),
        "{}",
        m["summary"]
    );
    // What grew is JavaScript objects, not the allocator's memory: the verdict says so.
    assert_eq!(m["verdict"], "v8_heap", "{}", m["summary"]);
    assert!(
        u(&m["growth"]["v8_heap_bytes"]) >= grown / 2,
        "{}",
        m["growth"]
    );
    let series = m["series"].as_array().expect("series[]");
    for point in series {
        assert_eq!(
            u(&point["rss_bytes"]),
            [
                "v8_heap",
                "malloc_heaps",
                "thread_stacks",
                "code_and_files",
                "other_anonymous"
            ]
            .iter()
            .map(|c| u(&point[*c]))
            .sum::<u64>(),
            "{point}"
        );
    }
    let last = series.last().expect("read at least once");
    assert_eq!(
        u(&last["v8_heap"]),
        v8,
        "the last reading is the breakdown's"
    );
    report
}
