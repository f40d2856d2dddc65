//! Checks made before loading anything, so that a missing privilege or kernel feature gets one
//! clear line instead of a verifier or perf error.

use std::{fs, path::Path};

/// A reason leaktrace cannot trace on this host.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "missing {}: leaktrace needs root, or CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE; run it \
         with sudo",
        describe(.0)
    )]
    MissingCapabilities(Vec<&'static Capability>),
    #[error(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): build it with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error(
        "this kernel has no uprobes (/sys/bus/event_source/devices/uprobe is missing): build it with CONFIG_UPROBE_EVENTS=y"
    )]
    NoUprobes,
}

const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// A capability leaktrace cannot trace without, and what it is for.
#[derive(Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    bit: u32,
    /// The kernel also accepts CAP_SYS_ADMIN for it (`bpf_capable()`, `perfmon_capable()`).
    or_sys_admin: bool,
    pub needed_to: &'static str,
}

/// Exactly what a non-root leaktrace needs to trace another user's process, found by dropping
/// each in turn (tests/tests/privileges.rs checks that they are enough): nothing else is needed on
/// a kernel that charges BPF memory to the memory cgroup (5.11 and later), and a process whose
/// mapped files were deleted is still traced (its own frames are then unnamed unless
/// CAP_CHECKPOINT_RESTORE and CAP_DAC_READ_SEARCH let leaktrace open them through
/// /proc/PID/map_files).
pub const NEEDED: [Capability; 3] = [
    Capability {
        name: "CAP_BPF",
        bit: CAP_BPF,
        or_sys_admin: true,
        needed_to: "load eBPF programs and create their maps",
    },
    Capability {
        name: "CAP_PERFMON",
        bit: CAP_PERFMON,
        or_sys_admin: true,
        needed_to: "load tracing programs and attach uprobes",
    },
    Capability {
        name: "CAP_SYS_PTRACE",
        bit: CAP_SYS_PTRACE,
        or_sys_admin: false,
        needed_to: "open other users' files through /proc/PID/root",
    },
];

/// `CAP_X (needed to ...)`, joined with commas and a final "and".
pub(crate) fn describe(missing: &[&Capability]) -> String {
    let parts: Vec<String> = missing
        .iter()
        .map(|c| format!("{} (needed to {})", c.name, c.needed_to))
        .collect();
    match parts.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Checks privileges and the kernel features the probes need.
pub fn check() -> Result<(), PreflightError> {
    check_privileges(effective_capabilities())?;
    check_kernel(Path::new("/sys"))
}

/// The needed capabilities missing from the effective set `caps`.
pub(crate) fn missing_capabilities(caps: u64) -> Vec<&'static Capability> {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    NEEDED
        .iter()
        .filter(|c| !(has(c.bit) || (c.or_sys_admin && has(CAP_SYS_ADMIN))))
        .collect()
}

pub(crate) fn check_privileges(caps: u64) -> Result<(), PreflightError> {
    let missing = missing_capabilities(caps);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::MissingCapabilities(missing))
    }
}

/// The kernel features, as `sysfs` (mounted at `sys`) shows them.
pub(crate) fn check_kernel(sys: &Path) -> Result<(), PreflightError> {
    if !sys.join("kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf);
    }
    if !sys.join("bus/event_source/devices/uprobe").exists() {
        return Err(PreflightError::NoUprobes);
    }
    Ok(())
}

/// The effective capability set of this process (0 when it cannot be read).
pub(crate) fn effective_capabilities() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(parse_cap_eff)
        .unwrap_or(0)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_effective_capabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn privileges_need_bpf_perfmon_and_sys_ptrace() {
        let (bpf, perfmon, ptrace, admin) = (
            1u64 << CAP_BPF,
            1u64 << CAP_PERFMON,
            1u64 << CAP_SYS_PTRACE,
            1u64 << CAP_SYS_ADMIN,
        );
        let missing = |caps: u64| -> Vec<&str> {
            missing_capabilities(caps).iter().map(|c| c.name).collect()
        };
        assert!(check_privileges(bpf | perfmon | ptrace).is_ok());
        assert!(check_privileges(u64::MAX).is_ok());
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as in the kernel, not for
        // CAP_SYS_PTRACE.
        assert!(check_privileges(admin | ptrace).is_ok());
        assert_eq!(missing(admin), ["CAP_SYS_PTRACE"]);
        assert_eq!(missing(bpf | perfmon), ["CAP_SYS_PTRACE"]);
        assert_eq!(missing(perfmon | ptrace), ["CAP_BPF"]);
        assert_eq!(missing(bpf | ptrace), ["CAP_PERFMON"]);
        assert_eq!(missing(0), ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"]);
    }

    #[test]
    fn missing_capabilities_are_named_on_one_line() {
        let one = check_privileges((1 << CAP_BPF) | (1 << CAP_PERFMON))
            .unwrap_err()
            .to_string();
        assert!(
            one.starts_with(
                "missing CAP_SYS_PTRACE (needed to open other users' files through \
                 /proc/PID/root): leaktrace needs root"
            ),
            "{one}"
        );
        let all = check_privileges(0).unwrap_err().to_string();
        assert!(
            all.starts_with("missing CAP_BPF (needed to load eBPF programs and create their maps), CAP_PERFMON (")
                && all.contains(") and CAP_SYS_PTRACE ("),
            "{all}"
        );
        assert!(!all.contains('\n'));
    }

    #[test]
    fn kernel_without_btf_or_uprobes_is_named() {
        let sys = std::env::temp_dir().join(format!("leaktrace-sysfs-{}", std::process::id()));
        let btf = sys.join("kernel/btf");
        let uprobe = sys.join("bus/event_source/devices/uprobe");
        fs::create_dir_all(&btf).unwrap();
        assert!(matches!(check_kernel(&sys), Err(PreflightError::NoBtf)));
        fs::write(btf.join("vmlinux"), b"").unwrap();
        assert!(matches!(check_kernel(&sys), Err(PreflightError::NoUprobes)));
        fs::create_dir_all(&uprobe).unwrap();
        assert!(check_kernel(&sys).is_ok());
        fs::remove_dir_all(&sys).unwrap();
    }
}
