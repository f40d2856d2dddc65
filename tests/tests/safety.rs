//! Never harm the target: whatever happens to the tracer, the target runs on unchanged and the
//! kernel keeps nothing of the tracer's.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::{fs, process::Command, thread, time::Duration};

use serde_json::Value;

use leaktrace_tests::{
    Target, Tracer, bpf_ids, fixture, have_root, leaktrace, leaktrace_unprivileged, trace_workload,
};

/// The ids of the BPF programs and links a process holds, from its descriptors' fdinfo.
fn bpf_objects(pid: u32) -> (Vec<u64>, Vec<u64>) {
    (bpf_ids(pid, "prog"), bpf_ids(pid, "link"))
}

/// Whether the kernel still has the BPF object (`prog` or `link`) with this id.
fn kernel_has(kind: &str, id: u64) -> bool {
    Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .output()
        .expect("running bpftool (cargo xtask setup installs it)")
        .status
        .success()
}

#[test]
fn sigkill_of_the_tracer_leaves_the_target_running_and_nothing_in_the_kernel() {
    if !have_root("sigkill_of_the_tracer_leaves_the_target_running_and_nothing_in_the_kernel") {
        return;
    }
    // Many rounds with pauses: the target is allocating when the tracer dies.
    let mut target = Target::start(&fixture("leaky", &[]), &["400", "5", "3"]);
    let tracer = Tracer::attach(&[&target.pid().to_string(), "--interval", "100ms"]);
    target.send("go");
    thread::sleep(Duration::from_millis(300));
    let (progs, links) = bpf_objects(tracer.pid());
    assert!(
        !progs.is_empty() && !links.is_empty(),
        "the tracer holds its programs and links"
    );
    for &id in &progs {
        assert!(
            kernel_has("prog", id),
            "program {id} is loaded while tracing"
        );
    }
    tracer.kill();

    // The kernel releases a dead process's objects after an RCU grace period.
    let released = (0..100).any(|_| {
        thread::sleep(Duration::from_millis(50));
        progs.iter().all(|&id| !kernel_has("prog", id))
            && links.iter().all(|&id| !kernel_has("link", id))
    });
    assert!(
        released,
        "programs {progs:?} or links {links:?} outlived the tracer"
    );
    target.expect_line("done");
    assert_eq!(
        target.finish(),
        3,
        "the target ran to its own end with its own status"
    );
}

#[test]
fn a_seccomp_filtered_target_is_checked_then_traced_unharmed() {
    if !have_root("a_seccomp_filtered_target_is_checked_then_traced_unharmed") {
        return;
    }
    let mut target = Target::start(&fixture("seccomp", &[]), &["20"]);
    let pid = target.pid().to_string();
    let doctor = leaktrace()
        .args(["doctor", &pid])
        .output()
        .expect("leaktrace doctor");
    let text = String::from_utf8_lossy(&doctor.stdout);
    // This kernel (6.18) lets the uretprobe syscall through seccomp: the check says so.
    assert!(
        text.contains(&format!("ok    seccomp (pid {pid}): filtered (mode 2)")),
        "{text}"
    );
    assert!(doctor.status.success(), "{text}");

    let out = leaktrace_tests::scratch("seccomp").join("report.json");
    let report = trace_workload(&mut target, pid.parse().expect("pid"), &[], &out);
    assert_eq!(
        target.finish(),
        0,
        "the filtered target survived its return probes"
    );
    let kept = leaktrace_tests::site(&report, pid.parse().expect("pid"), "keep_blocks");
    assert_eq!((kept.live_bytes, kept.alloc_calls), (40_000, 40));
}

#[test]
fn doctor_reports_every_check_in_text_and_json() {
    let output = leaktrace()
        .args(["doctor", "--format", "json"])
        .output()
        .expect("doctor");
    let checks: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("doctor --format json is JSON");
    let checks = checks.as_array().expect("an array of checks");
    for check in checks {
        assert!(
            matches!(check["status"].as_str(), Some("ok" | "warn" | "fail")),
            "{check}"
        );
        assert!(check["check"].as_str().is_some() && check["found"].as_str().is_some());
    }
    let failed = checks.iter().any(|c| c["status"] == "fail");
    assert_eq!(
        output.status.success(),
        !failed,
        "exit status follows the failures"
    );
    if have_root("doctor_reports_every_check_in_text_and_json (root: a clean host)") {
        assert!(!failed, "this host is fit to trace: {checks:#?}");
        for name in ["bpf programs", "watch mode", "mapping records"] {
            assert!(
                checks
                    .iter()
                    .any(|c| c["check"] == name && c["status"] == "ok"),
                "{name}: {checks:#?}"
            );
        }
    }
}

/// `doctor PID` measures what each mode would cost the process: nothing for an idle one; for a
/// Node process allocating without pause, a warning that exact tracing is costly, with watch
/// mode far cheaper. The process runs on unharmed.
#[test]
fn doctor_measures_what_each_mode_would_cost_a_process() {
    if !have_root("doctor_measures_what_each_mode_would_cost_a_process") {
        return;
    }
    let cost = |pid: u32| -> Value {
        let output = leaktrace()
            .args(["doctor", "--format", "json", &pid.to_string()])
            .output()
            .expect("doctor");
        let checks: Value = serde_json::from_slice(&output.stdout).expect("doctor's JSON");
        checks
            .as_array()
            .expect("checks[]")
            .iter()
            .find(|c| c["check"] == format!("cost (pid {pid})"))
            .unwrap_or_else(|| panic!("no cost check: {checks:#}"))
            .clone()
    };
    let number_before = |text: &str, words: &str| -> f64 {
        let head = &text[..text
            .find(words)
            .unwrap_or_else(|| panic!("{words} in {text}"))];
        let word = head.split_whitespace().last().expect("a number");
        word.parse()
            .unwrap_or_else(|_| panic!("{word} before {words} in {text}"))
    };
    // The fixture waits for `go`: it calls no allocator at all.
    let idle = Target::start(&fixture("leaky", &[]), &["1"]);
    let check = cost(idle.pid());
    let found = check["found"].as_str().expect("found");
    assert_eq!(check["status"], "ok", "{check}");
    assert_eq!(number_before(found, "allocator calls/s"), 0.0, "{found}");
    assert!(found.contains("exact ≈ 0.0 % of a CPU"), "{found}");
    // No page of its own faulted: nothing for watch mode, whether the program ran for the host's
    // other faults (then timed) or not at all.
    assert!(found.contains("watch ≈ 0.00 % ("), "{found}");
    drop(idle);

    // Killed on drop, when an assertion fails too: a busy process must not outlive the test.
    let mut node = Command::new("node");
    // Churn, and 16 KiB kept and written each millisecond: a process that only reuses its
    // memory faults no page once warm, and watch mode's program would not run at all.
    node.args([
        "-e",
        "console.log('ready'); const kept = []; \
         setInterval(() => { for (let i = 0; i < 200; i++) Buffer.alloc(4096); \
         kept.push(Buffer.alloc(16384, 1)); }, 1)",
    ]);
    let busy = Target::spawn(node);
    thread::sleep(Duration::from_secs(1));
    let check = cost(busy.pid());
    let found = check["found"].as_str().expect("found");
    assert_eq!(check["status"], "warn", "{check}");
    assert!(
        number_before(found, "allocator calls/s") > 1000.0,
        "{found}"
    );
    let exact = number_before(found, "% of a CPU (traps");
    let watch_text = &found[found.find("watch ≈").expect("watch")..];
    let watch = number_before(watch_text, "% (");
    // Pages written each millisecond: watch mode's program ran, and its time is counted.
    let (_, faults) = watch_text.split_once("% (").expect("watch's figures");
    assert!(number_before(faults, "faults/s at") > 0.0, "{found}");
    assert!(
        watch < exact / 10.0,
        "watch {watch} %, exact {exact} %: {found}"
    );
    assert!(
        check["fix"]
            .as_str()
            .is_some_and(|f| f.contains("--mode watch")),
        "{check}"
    );
    let state = fs::read_to_string(format!("/proc/{}/stat", busy.pid())).expect("node's stat");
    assert!(
        state
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        "node runs on: {state}"
    );
}

#[test]
fn doctor_names_missing_privileges() {
    if !have_root("doctor_names_missing_privileges") {
        return;
    }
    let output = leaktrace_unprivileged()
        .arg("doctor")
        .output()
        .expect("setpriv");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        text.lines().any(|l| l.starts_with("fail  privileges:")),
        "{text}"
    );
}

#[test]
fn tiny_maps_count_exactly_what_they_could_not_record() {
    if !have_root("tiny_maps_count_exactly_what_they_could_not_record") {
        return;
    }
    // leaky.c makes 15 allocations per round; 8 live blocks fit.
    let out = leaktrace_tests::scratch("tiny_maps").join("report.json");
    let mut target = Target::start(&fixture("leaky", &[]), &["10"]);
    let pid = target.pid();
    let report = trace_workload(&mut target, pid, &["--max-live-allocs", "8"], &out);
    assert_eq!(target.finish(), 0);
    let totals = &report["targets"][0]["totals"];
    let count = |field: &str| totals[field].as_u64().unwrap_or_else(|| panic!("{field}"));
    let lost = |field: &str| {
        totals["losses"][field]
            .as_u64()
            .unwrap_or_else(|| panic!("losses.{field}"))
    };
    let full = lost("live_map_full");
    let unknown = lost("unknown_frees");
    let live = totals["live_allocs"].as_u64().expect("live_allocs");
    assert!(full > 0, "the map filled up: {totals}");
    assert!(live <= 8, "no more than the map holds: {totals}");
    // Every call and every free is still counted: 15 calls and 8 frees a round.
    assert_eq!((count("alloc_calls"), count("free_calls")), (150, 80));
    // Each call's block was either recorded or counted as dropped, and each recorded block is
    // either still live or was freed as known; every other free is of a dropped block (leaky.c
    // frees nothing allocated before the trace). So: calls = stored + dropped, exactly.
    assert_eq!(
        count("alloc_calls"),
        live + (count("free_calls") - unknown) + full,
        "calls = live + known frees + live_map_full: {totals}"
    );
    assert!(
        unknown > 0 && unknown <= full,
        "only dropped blocks are unknown when freed: {totals}"
    );
    let recorded: u64 = report["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .map(|s| s["alloc_calls"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        recorded, 150,
        "per-site call counts are kept even when blocks are not"
    );
    for (name, value) in leaktrace_tests::losses(&report) {
        if name != "live_map_full" && name != "unknown_frees" {
            assert_eq!(value.as_u64(), Some(0), "loss counter {name} is {value}");
        }
    }
}

#[test]
fn attaching_and_detaching_fifty_times_leaves_the_target_unchanged() {
    if !have_root("attaching_and_detaching_fifty_times_leaves_the_target_unchanged") {
        return;
    }
    // Four threads freeing each other's blocks, for long enough to see every attach.
    let mut target = Target::start(&fixture("coverage/threads", &[]), &["2000"]);
    let pid = target.pid().to_string();
    target.send("go");
    for round in 0..50 {
        let status = leaktrace()
            .args([
                "attach",
                &pid,
                "--duration",
                "50ms",
                "--interval",
                "20ms",
                "--quiet",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("leaktrace");
        // The target waits for stdin to close after its workload, so every attach has a live
        // process to trace, early or late: each round must succeed.
        assert!(status.success(), "attach {round} failed with {status}");
    }
    target.expect_line("done");
    assert_eq!(
        target.finish(),
        0,
        "the target's self-checks passed: nothing was disturbed"
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    if !have_root("output_into_a_closed_pipe_ends_quietly") {
        return;
    }
    use std::{io::Write as _, os::unix::process::ExitStatusExt as _, process::Stdio};
    // The report goes to stdout, a pipe whose reader is gone before the report is written (as
    // with `| head` once head has exited). The command's own output goes elsewhere, so that
    // leaktrace's status is the command's (0) unless leaktrace itself fails or dies of SIGPIPE.
    let mut child = leaktrace()
        .args(["run", "--quiet", "--", "sh", "-c"])
        .arg(format!(
            "exec {} 3 > /dev/null",
            fixture("leaky", &[]).display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("leaktrace");
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(b"go\n").expect("sending go");
    drop(stdin);
    let output = child.wait_with_output().expect("waiting for leaktrace");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.signal(),
        None,
        "leaktrace died of a signal: {stderr}"
    );
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains("error") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn a_full_disk_leaves_no_half_written_report() {
    if !have_root("a_full_disk_leaves_no_half_written_report") {
        return;
    }
    let dir = leaktrace_tests::scratch("full_disk").join("tiny");
    fs::create_dir_all(&dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8k", "tmpfs"])
        .arg(&dir)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mounting a tiny tmpfs");
    let report = dir.join("report.json");
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo go | {} run --quiet -o {} -- {} 20",
            leaktrace().get_program().to_string_lossy(),
            report.display(),
            fixture("leaky", &[]).display()
        ))
        .output()
        .expect("leaktrace");
    let listing: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let _ = Command::new("umount").arg(&dir).status();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a report that did not fit is an error"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("writing the report to") && l.contains("No space")),
        "{stderr}"
    );
    assert!(
        listing.is_empty(),
        "nothing half-written is left: {listing:?}"
    );
}

/// Traces `tests/fixtures/paced.c` making `pairs_per_s` malloc+free pairs a second from
/// `depth` nested calls, under `--max-overhead PERCENT` and `extra`; returns the JSON report.
///
/// The budget prices each trap at a fixed cost (`budget::TRAP_COST`, 1.25 µs; three traps a
/// pair), so the traps' share of a CPU is set by the pace alone, not by this machine's speed:
/// 1000 pairs a second are 0.375 %. Only the programs' own time is measured.
fn trace_paced(test: &str, pairs_per_s: u32, depth: u32, percent: &str, extra: &[&str]) -> Value {
    let mut target = Target::start(
        &fixture("paced", &[]),
        &[&pairs_per_s.to_string(), "5", &depth.to_string()],
    );
    let pid = target.pid();
    let out = leaktrace_tests::scratch(test).join("report.json");
    let mut args = vec![
        pid.to_string(),
        "--max-overhead".into(),
        percent.into(),
        "--interval".into(),
        "300ms".into(),
        "--format".into(),
        "json".into(),
        "-o".into(),
        out.to_str().expect("utf-8").into(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let tracer = Tracer::attach(&args.iter().map(String::as_str).collect::<Vec<_>>());
    target.send("go");
    // The tracer ends by itself: by the budget, or by `--duration` in `extra`.
    let output = tracer.wait();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    target.expect_line("done");
    assert_eq!(target.finish(), 0, "the target ran to its own end");
    leaktrace_tests::read_report(&out)
}

fn notes(report: &Value) -> Vec<String> {
    report["trace"]["notes"]
        .as_array()
        .expect("trace.notes")
        .iter()
        .map(|n| n.as_str().expect("a note").to_owned())
        .collect()
}

#[test]
fn an_overhead_budget_detaches_rather_than_slow_a_busy_target() {
    if !have_root("an_overhead_budget_detaches_rather_than_slow_a_busy_target") {
        return;
    }
    // 8000 pairs a second: the traps alone are 3 % of a CPU, three times the budget of 1 %.
    let report = trace_paced("budget", 8000, 0, "1", &["--duration", "30s"]);
    assert_eq!(report["trace"]["ended_by"], "overhead-budget");
    // The first window may start before the target's first pair (its share then looks smaller,
    // and sampling may be raised once); the end is a detach for the traps alone.
    let notes = notes(&report);
    let (last, earlier) = notes.split_last().expect("a note");
    assert!(
        last.contains("detached")
            && last.contains("traps alone")
            && last.contains("--max-overhead budget of 1 %"),
        "{notes:?}"
    );
    assert!(
        earlier.iter().all(|n| n.contains("sampling raised")),
        "{notes:?}"
    );
}

#[test]
fn an_overhead_budget_raises_sampling_before_it_detaches() {
    if !have_root("an_overhead_budget_raises_sampling_before_it_detaches") {
        return;
    }
    // 2000 pairs a second: the traps are 0.75 % of a CPU, under the budget of 1 %; the exact
    // programs' walk of a 50-frame stack adds more than the 0.25 % left (1.25 µs a pair; the
    // bench measures about 1.8 µs a pair on a shallow stack). Sampling spares the programs.
    let report = trace_paced("budget_sampling", 2000, 50, "1", &["--duration", "3s"]);
    let notes = notes(&report);
    assert!(
        notes.first().is_some_and(|n| n.contains(
            "over the --max-overhead budget of 1 %: sampling raised to one record per 64.0 KiB"
        )),
        "the first step is sampling: {notes:?}"
    );
    assert!(
        !notes.iter().any(|n| n.contains("traps alone")),
        "the traps were under budget: {notes:?}"
    );
    // It may go on raising, and detach only once the sparsest sampling is still over.
    for note in &notes[1..] {
        assert!(
            note.contains("sampling raised") || note.contains("at the sparsest sampling"),
            "{notes:?}"
        );
    }
    let sample_bytes = report["trace"]["sample_bytes"]
        .as_u64()
        .expect("sample_bytes");
    assert!(
        sample_bytes >= 64 << 10,
        "the report is sampled: {sample_bytes}"
    );
    // Blocks passed over by sampling are freed unseen: unknown frees, counted.
    let totals = &report["targets"][0]["totals"];
    let unknown = totals["losses"]["unknown_frees"].as_u64().expect("count");
    assert!(unknown > 0, "{totals}");
}

#[test]
fn sampled_mode_counts_frees_of_skipped_blocks_and_states_its_error() {
    if !have_root("sampled_mode_counts_frees_of_skipped_blocks_and_states_its_error") {
        return;
    }
    let rounds: u64 = 1000;
    let dir = leaktrace_tests::scratch("sampled");
    let (json, text) = (dir.join("report.json"), dir.join("report.txt"));
    let mut target = Target::start(&fixture("leaky", &[]), &[&rounds.to_string()]);
    let pid = target.pid();
    let tracer = Tracer::attach(&[
        &pid.to_string(),
        "--sample-bytes",
        "64KiB",
        "--interval",
        "100ms",
        "-o",
        json.to_str().expect("utf-8"),
        "-o",
        text.to_str().expect("utf-8"),
    ]);
    target.send("go");
    target.expect_line("done");
    let output = tracer.interrupt();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(target.finish(), 0);
    let report = leaktrace_tests::read_report(&json);
    assert_eq!(report["trace"]["sample_bytes"], 64 << 10);
    let totals = &report["targets"][0]["totals"];
    // Calls and frees are counted whether sampled or not: 15 calls and 8 frees a round.
    assert_eq!(
        totals["alloc_calls"].as_u64(),
        Some(15 * rounds),
        "{totals}"
    );
    let frees = totals["free_calls"].as_u64().expect("free_calls");
    assert_eq!(frees, 8 * rounds, "{totals}");
    // Of the 8 frees a round, only a 4096-byte block's is of a block sampled with any odds
    // (1 - exp(-4096/65536) = 6 %): about 96 % of frees are of skipped blocks, and a few of the
    // 5000 sampled 4096-byte blocks are freed as known.
    let unknown = totals["losses"]["unknown_frees"].as_u64().expect("count");
    assert!(
        unknown >= frees / 2 && unknown < frees,
        "{unknown} unknown of {frees} frees"
    );
    // The live estimate is unbiased, with the error the report states: one standard deviation
    // is sqrt(64 KiB x the live bytes); allow four (a false failure once in 15,000 runs).
    let truth = 6212.0 * rounds as f64;
    let estimate = totals["live_bytes"].as_f64().expect("live_bytes");
    let sd = (65536.0 * truth).sqrt();
    assert!(
        (estimate - truth).abs() <= 4.0 * sd,
        "estimated {estimate} live bytes for {truth}"
    );
    let text = fs::read_to_string(&text).expect("the text report");
    assert!(
        text.contains(
            "sampled: one record per 64.0 KiB on average (Poisson by bytes); byte and block \
             counts are unbiased estimates, each within about ±2·sqrt(64.0 KiB x its bytes) at 95 %"
        ),
        "{text}"
    );
}

#[test]
fn an_exec_is_said_and_the_new_image_is_traced() {
    if !have_root("an_exec_is_said_and_the_new_image_is_traced") {
        return;
    }
    let mut target = Target::start(&fixture("exec_after", &[]), &[]);
    let pid = target.pid();
    let out = std::env::temp_dir().join(format!("leaktrace-exec-{pid}.json"));
    let tracer = Tracer::attach(&[
        &pid.to_string(),
        "--interval",
        "100ms",
        "--format",
        "json",
        "-o",
        out.to_str().unwrap(),
    ]);
    target.send("go");
    target.expect_line("done");
    target.expect_line("exec'd");
    // Two samples of the new image.
    thread::sleep(Duration::from_millis(300));
    let output = tracer.interrupt();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = leaktrace_tests::read_report(&out);
    let _ = std::fs::remove_file(&out);
    assert_eq!(target.finish(), 0);
    let notes: Vec<&str> = report["trace"]["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&format!("PID {pid} exec'd"))),
        "{notes:?}"
    );
    // The old image's blocks stay counted, named from its own mappings, and the new image's are
    // traced as well. The new image's stdin buffer (4 KiB, at its first fgets) is live too.
    let before = leaktrace_tests::site(&report, pid, "keep_before_exec");
    assert_eq!((before.live_bytes, before.live_allocs), (3000, 3));
    let totals = &report["targets"][0]["totals"];
    assert_eq!(totals["live_bytes"], 3000 + 1000 + 4096);
    assert_eq!(totals["live_allocs"], 3 + 2 + 1);
    let after = leaktrace_tests::site(&report, pid, "keep_after_exec");
    assert_eq!((after.live_bytes, after.live_allocs), (1000, 2));
}

/// README: "Objects probed only later (a `dlopen`, …) are named in the report, with when."
#[test]
fn an_allocator_loaded_by_dlopen_is_probed_and_said_late() {
    if !have_root("an_allocator_loaded_by_dlopen_is_probed_and_said_late") {
        return;
    }
    let mut target = Target::start(&fixture("dlopen_after", &[]), &[]);
    let pid = target.pid();
    let out = std::env::temp_dir().join(format!("leaktrace-dlopen-{pid}.json"));
    let tracer = Tracer::attach(&[
        &pid.to_string(),
        "--interval",
        "100ms",
        "--format",
        "json",
        "-o",
        out.to_str().unwrap(),
    ]);
    target.send("go");
    target.expect_line("loaded");
    // The kernel's record of the new mapping is read within 10 ms, and the runtime probed then.
    thread::sleep(Duration::from_millis(500));
    target.send("go");
    target.expect_line("done");
    thread::sleep(Duration::from_millis(300));
    let output = tracer.interrupt();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = leaktrace_tests::read_report(&out);
    let _ = std::fs::remove_file(&out);
    assert_eq!(target.finish(), 0);
    let notes = report["targets"][0]["notes"].to_string();
    assert!(
        notes.contains("libstdc++") && notes.contains("was probed only at"),
        "{notes}"
    );
    // Its `operator new` is probed itself: the caller is the fixture's function, each block
    // counted once.
    let kept = leaktrace_tests::site(&report, pid, "keep_through_new");
    assert_eq!((kept.live_bytes, kept.live_allocs), (4000, 4));
}

#[test]
fn threads_by_the_thousand_are_traced_exactly_and_unharmed() {
    if !have_root("threads_by_the_thousand_are_traced_exactly_and_unharmed") {
        return;
    }
    let rounds = 3;
    let exe = leaktrace_tests::fixture_with("gcc", "coverage/many_threads", &[]);
    let mut target = Target::start(&exe, &[&rounds.to_string()]);
    let pid = target.pid();
    let out = leaktrace_tests::scratch("many_threads").join("report.json");
    let report = trace_workload(&mut target, pid, &["--interval", "100ms"], &out);
    assert_eq!(target.finish(), 0, "every thread started and joined");
    let threads = 1000 * rounds;
    let keep = leaktrace_tests::site(&report, pid, "keep_in_thread");
    assert_eq!(
        (keep.live_bytes, keep.live_allocs, keep.alloc_calls),
        (64 * threads as i64, threads as i64, threads)
    );
    let churn = leaktrace_tests::site(&report, pid, "churn_in_thread");
    assert_eq!(
        (churn.live_bytes, churn.allocated_bytes, churn.alloc_calls),
        (0, 128 * threads, threads)
    );
    for (name, value) in leaktrace_tests::losses(&report) {
        // glibc gives each thread a cache, allocated inside its first malloc (the allocator's
        // own, not a call of the program's) and released with `free` when the thread ends: at
        // most two such frees of blocks never seen allocated per thread, on glibc 2.36.
        let allowed = if name == "unknown_frees" {
            2 * threads
        } else {
            0
        };
        let value = value.as_u64().expect("a count");
        assert!(value <= allowed, "loss counter {name} is {value}");
    }
}

#[test]
fn sigterm_while_many_threads_allocate_ends_with_a_whole_report() {
    if !have_root("sigterm_while_many_threads_allocate_ends_with_a_whole_report") {
        return;
    }
    // Long enough to be mid-run when the signal comes: tens of thousands of threads.
    let exe = leaktrace_tests::fixture_with("gcc", "coverage/many_threads", &[]);
    let mut target = Target::start(&exe, &["40"]);
    let pid = target.pid();
    let out = leaktrace_tests::scratch("sigterm_threads").join("report.json");
    let tracer = Tracer::attach(&[
        &pid.to_string(),
        "--interval",
        "100ms",
        "--format",
        "json",
        "-o",
        out.to_str().expect("utf-8"),
    ]);
    target.send("go");
    // Mid-run at a known count: one round of 1000 threads is over, 39 are to come.
    target.expect_line("round");
    let output = tracer.terminate();
    assert!(
        output.status.success(),
        "leaktrace: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The target runs on to its own end, unharmed, after the tracer detached mid-run.
    target.expect_line("done");
    assert_eq!(target.finish(), 0);
    let report = leaktrace_tests::read_report(&out);
    assert_eq!(report["trace"]["ended_by"], "signal");
    // At least the round finished before the signal was traced, and never more than the run
    // makes.
    let keep = leaktrace_tests::site(&report, pid, "keep_in_thread");
    assert!(
        (1000..=40_000).contains(&keep.alloc_calls),
        "the traced part of the run: {keep:?}"
    );
    // Whatever was traced is consistent: each kept block is live, and each churned one freed
    // but those the signal caught between their malloc and free (one per running thread).
    assert_eq!(keep.live_allocs as u64, keep.alloc_calls);
    let churn = leaktrace_tests::site(&report, pid, "churn_in_thread");
    assert!((0..=250).contains(&churn.live_allocs), "{churn:?}");
    // Each thread keeps its block before it churns one: at most the threads running at the
    // signal (250) have kept without churning yet. The final totals are read site after site
    // while those threads run on, so a site read later can count up to as many more (one CI
    // run read keep_in_thread at 1005 calls, then churn_in_thread at 1008).
    assert!(
        keep.alloc_calls.abs_diff(churn.alloc_calls) <= 250,
        "{keep:?} {churn:?}"
    );
}

#[test]
fn ten_times_more_calls_do_not_grow_the_tracer() {
    if !have_root("ten_times_more_calls_do_not_grow_the_tracer") {
        return;
    }
    let exe = leaktrace_tests::fixture_with("gcc", "coverage/churn", &[]);
    let peak = |rounds: u64| {
        let mut target = Target::start(&exe, &[&rounds.to_string()]);
        let pid = target.pid();
        let out = leaktrace_tests::scratch(&format!("churn_{rounds}")).join("report.json");
        let tracer = Tracer::attach(&[
            &pid.to_string(),
            "--interval",
            "100ms",
            "--quiet",
            "--format",
            "json",
            "-o",
            out.to_str().expect("utf-8"),
        ]);
        target.send("go");
        target.expect_line("done");
        // Two more samples, so that the last calls are read.
        thread::sleep(Duration::from_millis(300));
        let (output, peak) = tracer.interrupt_measured();
        assert!(output.status.success());
        assert_eq!(target.finish(), 0);
        let report = leaktrace_tests::read_report(&out);
        let calls = report["targets"][0]["totals"]["alloc_calls"]
            .as_u64()
            .expect("alloc_calls");
        assert_eq!(calls, 10_000 * rounds, "every call was seen");
        peak
    };
    let few = peak(10);
    let many = peak(100);
    // Same sites, same (no) live blocks: ten times the calls may cost the tracer at most a few
    // MiB more (allocator noise), never in proportion. The peak is over the tracer's whole life,
    // its report included.
    assert!(
        many <= few + 8 * 1024,
        "peak tracer memory went from {few} KiB to {many} KiB with ten times the calls"
    );
}

#[test]
fn a_full_mapping_event_ring_is_counted() {
    if !have_root("a_full_mapping_event_ring_is_counted") {
        return;
    }
    // mmaps.c makes 15 mapping changes a round, 9 of them new anonymous mappings; a one-page
    // ring read once a second holds a few dozen.
    let rounds: u64 = 300;
    let out = leaktrace_tests::scratch("tiny_ring").join("report.json");
    let exe = leaktrace_tests::fixture_with("gcc", "coverage/mmaps", &[]);
    let mut target = Target::start(&exe, &[&rounds.to_string()]);
    let pid = target.pid();
    let report = trace_workload(
        &mut target,
        pid,
        &["--map-events-bytes", "4096", "--interval", "1s"],
        &out,
    );
    assert_eq!(target.finish(), 0, "the target is unharmed");
    let lost = report["targets"][0]["totals"]["losses"]["map_events_lost"]
        .as_u64()
        .expect("map_events_lost");
    let mapped: u64 = report["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .filter(|s| s["kind"] == "mmap")
        .map(|s| s["alloc_calls"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        lost > 0 && mapped < 9 * rounds,
        "the ring overflowed: {lost} lost"
    );
    // Every new mapping was either received or counted lost (and the lost count covers the
    // other changes too): between the 9 new mappings and the 15 changes of each round.
    assert!(
        (9 * rounds..=15 * rounds).contains(&(mapped + lost)),
        "{mapped} received + {lost} lost"
    );
}

#[test]
fn doctor_names_a_target_without_an_allocator_it_can_probe() {
    if !have_root("doctor_names_a_target_without_an_allocator_it_can_probe") {
        return;
    }
    // A stripped static program: its malloc is in it, but nothing names it.
    let target = Target::start(&fixture("leaky", &["-static", "-s"]), &["1"]);
    let output = leaktrace()
        .args(["doctor", &target.pid().to_string()])
        .output()
        .expect("leaktrace doctor");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "a failed check fails doctor:\n{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("fail  allocator"))
        .unwrap_or_else(|| panic!("no allocator failure:\n{text}"));
    assert!(line.contains("defines malloc and free"), "{line}");
    // The same program with its symbols is fine: its own allocator is found.
    let with_symbols = Target::start(&fixture("leaky", &["-static"]), &["1"]);
    let output = leaktrace()
        .args(["doctor", &with_symbols.pid().to_string()])
        .output()
        .expect("leaktrace doctor");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok    allocator") && l.contains("glibc")),
        "{text}"
    );
}
