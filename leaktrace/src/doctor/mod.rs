//! `leaktrace doctor`: can this host, and each target, be traced safely? One line per check.
//!
//! `attach` and `run` make the same checks before attaching; a `fail` stops them with the same
//! line, so nothing is attached that could not work or could hurt the target.

mod cost;

use std::{fmt::Write as _, fs, path::Path};

use aya::sys::{UProbeMultiFeature, is_uprobe_multi_supported};
use serde::Serialize;

use crate::{
    preflight,
    probe::{MapLimits, ProbeMode, Probes},
    process::{Target, allocator},
};

/// How `doctor` prints its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One check: what was found and, when it is not ok, what to do.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub status: Status,
    pub check: String,
    pub found: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(check: &str, found: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            check: check.into(),
            found: found.into(),
            fix: None,
        }
    }

    fn warn(check: &str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            check: check.into(),
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(check: &str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Fail,
            check: check.into(),
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    /// The check as one line: `fail  seccomp (pid 42): ... -> fix`.
    pub fn line(&self) -> String {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        };
        let mut line = format!("{status:<4}  {}: {}", self.check, self.found);
        if let Some(fix) = &self.fix {
            let _ = write!(line, " -> {fix}");
        }
        line
    }
}

/// The host's checks: privileges, BPF, BTF, uprobes, lockdown, and the uretprobe/seccomp hazard.
pub fn system() -> Vec<Check> {
    let mut checks = Vec::new();
    let missing = preflight::missing_capabilities(preflight::effective_capabilities());
    let privileged = missing.is_empty();
    checks.push(if privileged {
        Check::ok(
            "privileges",
            "CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE are effective",
        )
    } else {
        Check::fail(
            "privileges",
            format!("missing {}", preflight::describe(&missing)),
            "run leaktrace as root (sudo), or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE",
        )
    });
    checks.push(match preflight::check_kernel(Path::new("/sys")) {
        Ok(()) => Check::ok("kernel features", "BTF and uprobe events are available"),
        Err(err) => Check::fail(
            "kernel features",
            err.to_string(),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF and CONFIG_UPROBE_EVENTS",
        ),
    });
    if privileged {
        checks.push(multi_uprobes());
        checks.push(
            match Probes::load(MapLimits::default(), ProbeMode::Trace, false) {
                Ok(_) => Check::ok("bpf programs", "leaktrace's probes load and verify"),
                Err(err) => Check::fail(
                    "bpf programs",
                    err.to_string(),
                    "check the kernel log (dmesg) for the verifier's reason",
                ),
            },
        );
    }
    if privileged {
        checks.push(watch_mode());
        checks.push(match crate::collect::sideband::Sideband::open() {
            Ok(_) => Check::ok(
                "mapping records",
                "perf side-band events (mmap, fork, exec) open on every CPU",
            ),
            Err(err) => Check::fail(
                "mapping records",
                err.to_string(),
                "use a kernel with CONFIG_PERF_EVENTS, and grant CAP_PERFMON",
            ),
        });
    }
    checks.push(lockdown());
    checks.push(memlock());
    checks.push(match uretprobe_seccomp_hazard(&kernel_release()) {
        Hazard::None => Check::ok(
            "uretprobe and seccomp",
            format!(
                "kernel {} lets uretprobes through seccomp filters",
                kernel_release()
            ),
        ),
        Hazard::Kills => Check::warn(
            "uretprobe and seccomp",
            format!(
                "kernel {} kills a seccomp-filtered process at its first uretprobe",
                kernel_release()
            ),
            "leaktrace refuses such targets here; upgrade to 6.13 or later",
        ),
    });
    checks
}

/// The checks of one target process.
pub fn target(pid: u32) -> Vec<Check> {
    let name = format!("pid {pid}");
    let target = match Target::open(pid) {
        Ok(t) if t.is_alive() => t,
        Ok(_) => {
            return vec![Check::fail(
                &name,
                "the process has exited (a zombie)",
                "pick a live process",
            )];
        }
        Err(err) => {
            return vec![Check::fail(&name, err.to_string(), "check the PID with ps")];
        }
    };
    let mut checks = vec![Check::ok(&name, format!("alive: {}", target.command))];
    let mappings = match target.mappings() {
        Ok(m) => m,
        Err(err) => {
            checks.push(Check::fail(&name, err.to_string(), "run leaktrace as root"));
            return checks;
        }
    };
    let allocators = allocator::Finder::default().find_all(&target, &mappings);
    checks.push(match allocators.iter().find(|a| a.roles.malloc) {
        Some(serving) => Check::ok(
            &format!("allocator ({name})"),
            format!(
                "{}: {} (host path {})",
                serving.name,
                serving.path.display(),
                serving.host_path.display()
            ),
        ),
        None => Check::fail(
            &format!("allocator ({name})"),
            "no mapped object defines malloc and free (a stripped static binary?)",
            "leaktrace needs the allocator's symbols: keep the executable's symbol table",
        ),
    });
    for other in &allocators {
        let roles = &other.roles;
        let mut probed: Vec<String> = Vec::new();
        if roles.new {
            probed.push("operator new".into());
        }
        if roles.delete {
            probed.push("operator delete".into());
        }
        probed.extend(roles.prefixes.iter().map(|p| format!("{p}malloc family")));
        if roles.mmap {
            probed.push("mmap call sites".into());
        }
        if !probed.is_empty() {
            checks.push(Check::ok(
                &format!("probed ({name})"),
                format!(
                    "{} {}: {}",
                    other.name,
                    other.path.display(),
                    probed.join(", ")
                ),
            ));
        }
    }
    checks.push(seccomp(pid, &name));
    checks.push(frame_pointers(&target, &mappings, &name));
    if let Some(check) = node(&target, &name) {
        checks.push(check);
    }
    // Measured only on a target the checks say can be traced safely.
    if checks.iter().all(|c| c.status != Status::Fail) && gate(Some(pid), false).is_ok() {
        checks.push(cost::check(&target, &name));
    }
    checks
}

/// The checks `attach` and `run` make before attaching: a failure stops them with its line.
/// `follow`: the probes will serve every process on the host (see `Probes::load`).
pub fn gate(pid: Option<u32>, follow: bool) -> Result<(), String> {
    let mut checks = vec![multi_uprobes()];
    if let Some(pid) = pid {
        checks.push(seccomp(pid, &format!("pid {pid}")));
    }
    if follow && uretprobe_seccomp_hazard(&kernel_release()) == Hazard::Kills {
        checks.push(Check::fail(
            "following child processes",
            format!(
                "the probes would return through uretprobes in every process on the host, and \
                 kernel {} kills seccomp-filtered ones there",
                kernel_release()
            ),
            "trace only the command itself: add --no-follow",
        ));
    }
    match checks.into_iter().find(|c| c.status == Status::Fail) {
        Some(failed) => Err(failed.line()),
        None => Ok(()),
    }
}

/// leaktrace attaches its probes as multi-uprobe links filtered by process: one link per
/// program, which the kernel tears down in one grace period rather than one per function.
fn multi_uprobes() -> Check {
    let check = "multi-uprobe links";
    match (
        is_uprobe_multi_supported(UProbeMultiFeature::LinkCreation),
        is_uprobe_multi_supported(UProbeMultiFeature::ProcessScopedPidFilter),
    ) {
        (Ok(true), Ok(true)) => Check::ok(check, "supported, filtered per process"),
        (Ok(true), Ok(false)) => Check::fail(
            check,
            "this kernel filters multi-uprobe links by thread, not process: other threads' \
             allocations would be missed",
            "use Linux 6.10 or later",
        ),
        (Ok(false), _) => Check::fail(
            check,
            "not supported by this kernel",
            "use Linux 6.10 or later",
        ),
        (Err(err), _) | (_, Err(err)) => Check::fail(
            check,
            format!("probing the kernel failed: {err}"),
            "run leaktrace as root",
        ),
    }
}

/// Whether `--mode watch` can run: its page-fault program verifies and the `page-faults` event
/// opens on every CPU (system-wide events: CAP_PERFMON, or `perf_event_paranoid` at most 0).
fn watch_mode() -> Check {
    let watch = ProbeMode::Watch {
        period: std::num::NonZeroU64::MIN,
        mapping: crate::probe::MappingProbes::Fentry,
    };
    match Probes::load(MapLimits::default(), watch, false) {
        Ok(_) => Check::ok(
            "watch mode",
            "the page-fault program loads and its event opens on every CPU",
        ),
        Err(err) => Check::fail(
            "watch mode",
            err.to_string(),
            "grant CAP_PERFMON (or set kernel.perf_event_paranoid to 0 or less) and use a kernel \
             with CONFIG_PERF_EVENTS; --mode exact needs neither",
        ),
    }
}

fn lockdown() -> Check {
    match fs::read_to_string("/sys/kernel/security/lockdown") {
        Err(_) => Check::ok("kernel lockdown", "not enabled (no lockdown LSM)"),
        Ok(text) if text.contains("[none]") => Check::ok("kernel lockdown", "none"),
        Ok(text) if text.contains("[integrity]") => {
            Check::ok("kernel lockdown", "integrity: BPF tracing is allowed")
        }
        Ok(_) => Check::fail(
            "kernel lockdown",
            "confidentiality: BPF may not read memory",
            "boot with lockdown=integrity or none to trace",
        ),
    }
}

fn memlock() -> Check {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut limit) };
    let found = if limit.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        format!("{} KiB", limit.rlim_cur / 1024)
    };
    // Since 5.11 BPF memory is charged to the memory cgroup, not to RLIMIT_MEMLOCK.
    Check::ok(
        "memlock limit",
        format!("{found} (BPF maps are charged to the memory cgroup on this kernel)"),
    )
}

/// Whether this kernel kills a seccomp-filtered process at a uretprobe's return.
#[derive(Debug, PartialEq, Eq)]
enum Hazard {
    None,
    Kills,
}

/// Linux 6.11 added the `uretprobe` syscall, which the return trampoline calls; until seccomp let
/// it through (6.13, and backported to late 6.12 releases), a filter that denies unknown syscalls
/// (Docker's and Kubernetes' defaults) killed the target. Early 6.12s count as dangerous.
fn uretprobe_seccomp_hazard(release: &str) -> Hazard {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    match (major, minor) {
        (6, 11) => Hazard::Kills,
        (6, 12) if patch < 9 => Hazard::Kills,
        _ => Hazard::None,
    }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A seccomp-filtered target on a kernel that kills it at a uretprobe must not be traced.
fn seccomp(pid: u32, name: &str) -> Check {
    let check = format!("seccomp ({name})");
    let mode = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    match (mode.as_str(), uretprobe_seccomp_hazard(&kernel_release())) {
        ("2", Hazard::Kills) => Check::fail(
            &check,
            "filtered (mode 2), and this kernel kills it at the first uretprobe",
            "do not trace this process on this kernel; upgrade to 6.13 or later",
        ),
        ("2", Hazard::None) => Check::ok(&check, "filtered (mode 2); uretprobes are safe here"),
        ("1", _) => Check::ok(&check, "strict mode"),
        _ => Check::ok(&check, "none"),
    }
}

/// Whether the target's own code keeps frame pointers: stacks are walked through them.
fn frame_pointers(
    target: &Target,
    mappings: &[crate::process::maps::Mapping],
    name: &str,
) -> Check {
    let check = format!("frame pointers ({name})");
    let Some(exe) = mappings
        .iter()
        .find(|m| m.is_executable() && m.path.is_some())
        .and_then(|m| m.path.as_ref())
    else {
        return Check::warn(&check, "no executable mapping found", "none");
    };
    let Ok(data) = crate::process::root::open(target.pid, exe).and_then(read_capped) else {
        return Check::warn(
            &check,
            format!("cannot read {}", target.host_path(exe).display()),
            "run as root",
        );
    };
    match frame_pointer_share(&data) {
        Some((with, total)) if with * 2 >= total => Check::ok(
            &check,
            format!(
                "{with} of {total} sampled functions in {} set up rbp",
                exe.display()
            ),
        ),
        Some((with, total)) => Check::warn(
            &check,
            format!(
                "only {with} of {total} sampled functions in {} set up rbp",
                exe.display()
            ),
            "stacks through this code may be cut short: build with -fno-omit-frame-pointer",
        ),
        None => Check::warn(
            &check,
            format!("{} has no function symbols to sample", exe.display()),
            "none",
        ),
    }
}

/// Reads at most 512 MiB of a file the target controls.
fn read_capped(file: fs::File) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut data = Vec::new();
    file.take(512 << 20).read_to_end(&mut data)?;
    Ok(data)
}

/// Of up to 200 function symbols, how many begin with `push rbp; mov rbp, rsp` (after an
/// optional `endbr64`).
fn frame_pointer_share(elf: &[u8]) -> Option<(usize, usize)> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let file = object::File::parse(elf).ok()?;
    let (mut with, mut total) = (0, 0);
    for symbol in file.symbols().chain(file.dynamic_symbols()) {
        if total == 200 {
            break;
        }
        if symbol.kind() != object::SymbolKind::Text || symbol.size() < 8 {
            continue;
        }
        let Some(section) = symbol
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
        else {
            continue;
        };
        let Ok(data) = section.data() else { continue };
        let Some(start) = symbol.address().checked_sub(section.address()) else {
            continue;
        };
        let Some(code) = data.get(start as usize..).map(|c| &c[..c.len().min(8)]) else {
            continue;
        };
        let code = code.strip_prefix(&[0xf3, 0x0f, 0x1e, 0xfa]).unwrap_or(code);
        total += 1;
        if code.starts_with(&[0x55, 0x48, 0x89, 0xe5]) {
            with += 1;
        }
    }
    (total > 0).then_some((with, total))
}

/// For Node.js: whether JavaScript frames will be named.
fn node(target: &Target, name: &str) -> Option<Check> {
    let exe = fs::read_link(format!("/proc/{}/exe", target.pid)).ok()?;
    let is_node = exe
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("node"));
    if !is_node {
        return None;
    }
    let check = format!("node.js ({name})");
    let layout =
        crate::symbolize::v8::Layout::read(Path::new(&format!("/proc/{}/exe", target.pid)));
    let map = Path::new(&format!("/tmp/perf-{}.map", target.ns_pid)).to_path_buf();
    let perf_map = crate::process::root::open(target.pid, &map).is_ok();
    Some(match (layout, perf_map) {
        (Ok(_), _) => Check::ok(
            &check,
            format!(
                "{}; V8 data read from the binary: JS frames are named, no flag needed",
                exe.display()
            ),
        ),
        (Err(_), true) => Check::ok(
            &check,
            format!("{}; perf map present: JS frames are named", exe.display()),
        ),
        (Err(err), false) => Check::warn(
            &check,
            format!(
                "{}; V8 data unusable ({err}) and no perf map: JavaScript frames will be unnamed",
                exe.display()
            ),
            "start node with --perf-basic-prof (and --interpreted-frames-native-stack)",
        ),
    })
}

/// Renders checks as text, one line each.
pub fn render_text(checks: &[Check]) -> String {
    checks.iter().map(|c| c.line() + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uretprobe_hazard_by_kernel_release() {
        assert_eq!(uretprobe_seccomp_hazard("6.11.0-generic"), Hazard::Kills);
        assert_eq!(uretprobe_seccomp_hazard("6.12.1"), Hazard::Kills);
        assert_eq!(uretprobe_seccomp_hazard("6.12.30"), Hazard::None);
        assert_eq!(uretprobe_seccomp_hazard("6.18.44-fc-v657"), Hazard::None);
        assert_eq!(uretprobe_seccomp_hazard("6.10.3"), Hazard::None);
        assert_eq!(uretprobe_seccomp_hazard("5.15.0"), Hazard::None);
        assert_eq!(uretprobe_seccomp_hazard(""), Hazard::None);
    }

    #[test]
    fn lines_say_what_and_how_to_fix() {
        let line = Check::fail("seccomp (pid 1)", "filtered", "upgrade").line();
        assert_eq!(line, "fail  seccomp (pid 1): filtered -> upgrade");
        assert_eq!(Check::ok("x", "fine").line(), "ok    x: fine");
    }

    /// An object file of `n` functions of more than 8 bytes each, compiled by gcc with `flag`.
    fn functions_compiled(n: usize, flag: &str) -> Vec<u8> {
        let dir =
            std::env::temp_dir().join(format!("leaktrace-fp-{}-{n}{flag}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut source = String::from("void sink(int);\n");
        for i in 0..n {
            source.push_str(&format!("void f{i}(void) {{ sink({i}); sink({i}); }}\n"));
        }
        fs::write(dir.join("f.c"), source).unwrap();
        let status = std::process::Command::new("gcc")
            .args(["-O1", flag, "-c", "-o"])
            .arg(dir.join("f.o"))
            .arg(dir.join("f.c"))
            .status()
            .expect("running gcc (cargo xtask setup installs it)");
        assert!(status.success(), "gcc {flag}");
        let object = fs::read(dir.join("f.o")).unwrap();
        let _ = fs::remove_dir_all(&dir);
        object
    }

    #[test]
    fn frame_pointer_heuristic_reads_real_binaries() {
        // Every function counted, each with or without the prologue as compiled, up to 200.
        let kept = functions_compiled(10, "-fno-omit-frame-pointer");
        assert_eq!(frame_pointer_share(&kept), Some((10, 10)));
        let omitted = functions_compiled(10, "-fomit-frame-pointer");
        assert_eq!(frame_pointer_share(&omitted), Some((0, 10)));
        let many = functions_compiled(250, "-fno-omit-frame-pointer");
        assert_eq!(frame_pointer_share(&many), Some((200, 200)));
        assert_eq!(frame_pointer_share(b"not an elf"), None);
    }
}
