//! Checks made before loading anything, so that a missing privilege or kernel feature gets one
//! clear line instead of a verifier or perf error.

use std::{fs, path::Path};

/// A reason leaktrace cannot trace on this host.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "leaktrace needs root (or CAP_BPF with CAP_PERFMON, or CAP_SYS_ADMIN) to load eBPF \
         programs; run it with sudo"
    )]
    NotPrivileged,
    #[error(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): build it with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error(
        "this kernel has no uprobes (/sys/bus/event_source/devices/uprobe is missing): build it with CONFIG_UPROBE_EVENTS=y"
    )]
    NoUprobes,
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Checks privileges and the kernel features the probes need.
pub fn check() -> Result<(), PreflightError> {
    check_privileges(effective_capabilities())?;
    check_kernel(Path::new("/sys"))
}

pub(crate) fn check_privileges(caps: u64) -> Result<(), PreflightError> {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(PreflightError::NotPrivileged)
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
    fn privileges_need_sys_admin_or_bpf_with_perfmon() {
        assert!(check_privileges(1 << CAP_SYS_ADMIN).is_ok());
        assert!(check_privileges((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
        assert!(matches!(
            check_privileges(1 << CAP_BPF),
            Err(PreflightError::NotPrivileged)
        ));
        assert!(matches!(
            check_privileges(0),
            Err(PreflightError::NotPrivileged)
        ));
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
