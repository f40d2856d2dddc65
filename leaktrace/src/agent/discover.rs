//! Finding the host's processes: each one's executable, cgroup and start time, from /proc.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::process::cgroup::{self, Placement};

/// One process as a scan of /proc sees it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub pid: u32,
    /// Start time in clock ticks since boot: with the PID, it names one process even after
    /// the PID is reused.
    pub start_time: u64,
    /// The executable as /proc/PID/exe names it: by its path from the host's root when that
    /// reaches it, else by its path in the process's own mount namespace.
    pub exe: PathBuf,
    pub cgroup: Placement,
}

/// Every user-space process of the host but this one that `known` (given its PID, start time
/// and executable: what names one process) does not know already. Kernel threads (no
/// executable) and processes that exit mid-scan are left out. A known process costs the scan
/// two small reads, not its cgroup's too: the agent scans every few seconds, and a node's
/// processes are nearly all known.
pub fn scan(known: impl Fn(u32, u64, &Path) -> bool) -> Vec<Seen> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let start_time = start_time(pid)?;
            let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            if known(pid, start_time, &exe) {
                return None;
            }
            let cgroup = cgroup::read(pid).ok()?;
            Some(Seen {
                pid,
                start_time,
                exe,
                cgroup,
            })
        })
        .collect()
}

/// The start time of a process (field 22 of /proc/PID/stat), or `None` once it is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    crate::process::stat::read(pid).map(|s| s.start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_this_test_s_parent_not_itself() {
        let seen = scan(|_, _, _| false);
        let me = std::process::id();
        assert!(seen.iter().all(|s| s.pid != me));
        let parent = std::os::unix::process::parent_id();
        assert!(seen.iter().any(|s| s.pid == parent && s.start_time > 0));
        // What is known is not read again.
        let again = scan(|pid, _, _| pid == parent);
        assert!(again.iter().all(|s| s.pid != parent));
    }

    #[test]
    fn own_start_time_is_read() {
        assert!(start_time(std::process::id()).is_some_and(|t| t > 0));
        assert_eq!(start_time(0), None);
    }
}
