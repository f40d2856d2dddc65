//! The least privileges leaktrace traces with: a non-root user (65534) holding exactly CAP_BPF,
//! CAP_PERFMON and CAP_SYS_PTRACE traces a root process to the same exact numbers as root does,
//! and without any one of them it stops with one line naming what is missing.
//!
//! deploy/ grants the agent exactly this set; preflight.rs checks for it.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use leaktrace_tests::{
    Target, assert_leaky_is_exact, assert_matches_schema, assert_one_line_error, fixture,
    have_root, leaktrace,
};
use serde_json::Value;

/// The capabilities leaktrace needs, as setpriv names them.
const NEEDED: [&str; 3] = ["bpf", "perfmon", "sys_ptrace"];

/// Those and what reading another user's pagemap takes (watch mode's resident pages).
const WATCH_EVERYTHING: [&str; 4] = ["bpf", "perfmon", "sys_ptrace", "dac_read_search"];

/// Their bits in a capability set (capability.h).
const NEEDED_BITS: u64 = (1 << 39) | (1 << 38) | (1 << 19);
const DAC_READ_SEARCH_BIT: u64 = 1 << 2;

const NOBODY: u32 = 65534;
const ROUNDS: i64 = 10;

/// The binary under test, copied where uid 65534 can execute it whatever the permissions of the
/// checkout (target/ may sit under a directory others cannot search). Replaced by a rename, so a
/// copy still running elsewhere is left alone.
fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let source = PathBuf::from(leaktrace().get_program());
        let dir = std::env::temp_dir().join("leaktrace-privileges-test");
        fs::create_dir_all(&dir).expect("creating the directory for the binary");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod 755");
        let staged = dir.join(format!("leaktrace.{}", std::process::id()));
        fs::copy(&source, &staged).unwrap_or_else(|e| panic!("copying {}: {e}", source.display()));
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o755)).expect("chmod 755");
        let binary = dir.join("leaktrace");
        fs::rename(&staged, &binary).expect("moving the binary in place");
        binary
    })
}

/// `leaktrace` run by setpriv as uid and gid 65534, with no supplementary group, holding exactly
/// `caps` (setpriv names, e.g. "bpf"): inheritable, ambient (so they survive the execve of a
/// non-root process) and bounding sets all equal to `caps`.
fn leaktrace_as_nobody(caps: &[&str]) -> Command {
    let set: String = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_string(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
    ])
    .arg(binary())
    .env_remove("LEAKTRACE_LOG")
    .env("RUST_BACKTRACE", "1");
    cmd
}

/// The uid and effective capabilities of a running process.
fn credentials(pid: u32) -> (u32, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("reading its status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .split_whitespace()
            .next()
            .expect("a value")
            .to_string()
    };
    let uid = field("Uid:").parse().expect("a uid");
    let caps = u64::from_str_radix(&field("CapEff:"), 16).expect("a hex capability set");
    (uid, caps)
}

/// Traces the workload in `target` (it waits for `go`, says `done`) as uid 65534 with exactly
/// `caps` and `extra` options, checking the tracer's credentials while it runs; returns the JSON
/// report.
fn trace_as_nobody(target: &mut Target, caps: &[&str], extra: &[&str]) -> Value {
    let mut child = leaktrace_as_nobody(caps)
        .args(["attach", &target.pid().to_string()])
        .args(["--interval", "100ms", "--quiet", "--format", "json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting setpriv");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).expect("reading leaktrace");
        log.push_str(&line);
        if n == 0 || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("leaktrace ended before attaching:\n{log}");
        }
        if line.contains("attached") {
            break;
        }
    }
    // setpriv execs leaktrace: the child is the tracer itself.
    let (uid, held) = credentials(child.id());
    assert_eq!(uid, NOBODY, "the tracer runs as uid {NOBODY}");
    let dac = if caps.contains(&"dac_read_search") {
        DAC_READ_SEARCH_BIT
    } else {
        0
    };
    assert_eq!(
        held,
        NEEDED_BITS | dac,
        "the tracer holds exactly {caps:?}: {held:#x}"
    );

    target.send("go");
    target.expect_line("done");
    // SAFETY: signalling our own child, as Ctrl-C would.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_end(&mut stdout)
        .expect("reading the report");
    stderr.read_to_string(&mut log).expect("reading leaktrace");
    let status = child.wait().expect("waiting for leaktrace");
    assert!(status.success(), "leaktrace failed ({status}):\n{log}");
    let report: Value = serde_json::from_slice(&stdout).expect("the report is JSON");
    assert_matches_schema(&report);
    report
}

#[test]
fn nobody_with_bpf_perfmon_and_sys_ptrace_traces_a_root_process_exactly() {
    if !have_root("nobody_with_bpf_perfmon_and_sys_ptrace_traces_a_root_process_exactly") {
        return;
    }
    // The fixture runs as root: another user than the tracer's.
    let mut target = Target::start(&fixture("leaky", &[]), &[&ROUNDS.to_string()]);
    let pid = target.pid();
    let report = trace_as_nobody(&mut target, &NEEDED, &[]);
    assert_eq!(report["trace"]["ended_by"], "signal");
    assert_leaky_is_exact(&report, pid, ROUNDS);
    assert_eq!(target.finish(), 0, "the target is unharmed");
}

/// Watch mode as another user: the same set counts every page the root fixture populates, but
/// the fixture's pagemap is its owner's alone (mode 0400), so which pages stay resident cannot be
/// read, and the report says so; with CAP_DAC_READ_SEARCH added, they are counted exactly.
#[test]
fn nobody_watches_a_root_process_and_says_what_it_cannot_read() {
    if !have_root("nobody_watches_a_root_process_and_says_what_it_cannot_read") {
        return;
    }
    let (rounds, pages) = (4u64, 64u64);
    for (caps, resident) in [(&NEEDED[..], false), (&WATCH_EVERYTHING[..], true)] {
        let mut target = Target::start(
            &fixture("populate", &[]),
            &[&rounds.to_string(), &pages.to_string(), "0"],
        );
        let pid = target.pid();
        // Every fault: the pages are counted exactly.
        let report = trace_as_nobody(
            &mut target,
            caps,
            &["--mode", "watch", "--fault-period", "1"],
        );
        assert_eq!(target.finish(), 0, "the target is unharmed");
        assert_eq!(report["trace"]["mode"], "watch");
        let kept: Vec<&Value> = report["stacks"]
            .as_array()
            .expect("stacks[]")
            .iter()
            .filter(|s| s["pid"].as_u64() == Some(u64::from(pid)))
            .filter(|s| s["frames"][0]["function"] == "touch_kept")
            .collect();
        assert_eq!(kept.len(), 1, "{kept:#?}");
        assert_eq!(kept[0]["alloc_calls"].as_u64(), Some(rounds * pages));
        let notes = report["targets"][0]["notes"].to_string();
        let said = notes.contains("cannot be read") && notes.contains("CAP_DAC_READ_SEARCH");
        if resident {
            assert_eq!(kept[0]["live_bytes"].as_u64(), Some(rounds * pages * 4096));
            assert!(!said, "{notes}");
        } else {
            assert_eq!(kept[0]["live_bytes"].as_u64(), Some(0));
            assert!(said, "nothing unread goes unsaid: {notes}");
        }
    }
}

/// In every mode (watch mode needs the same three: a perf event per CPU is CAP_PERFMON's, its
/// program CAP_BPF's, another user's smaps CAP_SYS_PTRACE's), one line names what is missing and
/// nothing is attached.
#[test]
fn without_any_one_needed_capability_it_names_that_one() {
    if !have_root("without_any_one_needed_capability_it_names_that_one") {
        return;
    }
    let target = Target::start(&fixture("leaky", &[]), &["1"]);
    for mode in ["exact", "watch"] {
        for dropped in NEEDED {
            let kept: Vec<&str> = NEEDED.into_iter().filter(|c| *c != dropped).collect();
            let output: Output = leaktrace_as_nobody(&kept)
                .args(["attach", &target.pid().to_string(), "--duration", "2s"])
                .args(["--mode", mode])
                .output()
                .expect("running setpriv");
            assert_one_line_error(
                &output,
                &format!("missing CAP_{} (needed to", dropped.to_uppercase()),
            );
            let stderr = String::from_utf8_lossy(&output.stderr);
            for other in &kept {
                assert!(
                    !stderr.contains(&format!("CAP_{} (needed", other.to_uppercase())),
                    "{mode}: only the dropped capability is named as missing: {stderr}"
                );
            }
        }
    }
}

#[test]
fn doctor_passes_nobody_with_exactly_that_set() {
    if !have_root("doctor_passes_nobody_with_exactly_that_set") {
        return;
    }
    let target = Target::start(&fixture("leaky", &[]), &["1"]);
    let output = leaktrace_as_nobody(&NEEDED)
        .args(["doctor", &target.pid().to_string()])
        .output()
        .expect("running setpriv");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "doctor failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.lines().any(|l| l.starts_with("ok    privileges:")),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("fail")), "{text}");

    // And it names what one capability less would miss.
    let output = leaktrace_as_nobody(&["bpf", "perfmon"])
        .arg("doctor")
        .output()
        .expect("running setpriv");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        text.lines()
            .any(|l| l.starts_with("fail  privileges: missing CAP_SYS_PTRACE (needed to")),
        "{text}"
    );
}
