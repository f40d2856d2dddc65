//! Finding the host's processes: each one's executable, cgroup and start time, from /proc.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
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

/// How long a start time read by one scan serves the next ones: see [`Scanner`].
const START_TIME_KEPT: Duration = Duration::from_secs(30);

/// Scans /proc for processes the agent does not know yet, keeping what it read of each one.
///
/// A process is named by its PID, its start time and its executable. Reading the start time
/// (`/proc/PID/stat`, which the kernel formats anew at every read, its threads' times summed)
/// was about half of a scan's cost (perf, on a host of 90 processes, 71 of them kernel threads),
/// and a scan reads every process of the host every few seconds. A PID listed by the last scan is taken for the same
/// process for [`START_TIME_KEPT`], its executable still read at every scan (an `exec` keeps
/// the PID and the start time): only a PID freed and given to a new process running the same
/// executable within that time (the kernel hands PIDs out in turn, up to `pid_max`, four
/// million on systemd's hosts) could pass for the old one, and only until its start time is
/// read again.
#[derive(Default)]
pub struct Scanner {
    /// Each PID of the last scan: its start time, and when that was read.
    start_times: HashMap<u32, (u64, Instant)>,
}

impl Scanner {
    /// Every user-space process of the host but this one that `known` (given its PID, start
    /// time and executable: what names one process) does not know already; `tracked` PIDs are
    /// passed over without a read. Kernel threads (no executable) and processes that exit
    /// mid-scan are left out. A known process costs the scan a readlink (and a small read every
    /// [`START_TIME_KEPT`]), not its cgroup's too: the agent scans every few seconds, and a
    /// node's processes are nearly all known.
    pub fn scan(
        &mut self,
        tracked: impl Fn(u32) -> bool,
        known: impl Fn(u32, u64, &Path) -> bool,
    ) -> Vec<Seen> {
        let me = std::process::id();
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut start_times = HashMap::with_capacity(self.start_times.len());
        let seen = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me && !tracked(pid))
            .filter_map(|pid| {
                let kept = self
                    .start_times
                    .get(&pid)
                    .filter(|(_, read)| now.saturating_duration_since(*read) < START_TIME_KEPT);
                let (start_time, read) = match kept {
                    Some(&kept) => kept,
                    None => (start_time(pid)?, now),
                };
                start_times.insert(pid, (start_time, read));
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
            .collect();
        self.start_times = start_times;
        seen
    }
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
        let mut scanner = Scanner::default();
        let seen = scanner.scan(|_| false, |_, _, _| false);
        let me = std::process::id();
        assert!(seen.iter().all(|s| s.pid != me));
        let parent = std::os::unix::process::parent_id();
        let first = seen.iter().find(|s| s.pid == parent).expect("the parent");
        assert_eq!(Some(first.start_time), start_time(parent));
        // What is known is not read again, and a tracked PID is passed over.
        let again = scanner.scan(|_| false, |pid, _, _| pid == parent);
        assert!(again.iter().all(|s| s.pid != parent));
        let tracked = scanner.scan(|pid| pid == parent, |_, _, _| false);
        assert!(tracked.iter().all(|s| s.pid != parent));
        // A PID the last scan listed keeps its start time; one it did not is read afresh.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let new = scanner.scan(|_| false, |_, _, _| false);
        let child_seen = new.iter().find(|s| s.pid == child.id()).expect("the child");
        assert_eq!(Some(child_seen.start_time), start_time(child.id()));
        assert_eq!(
            scanner.start_times.get(&parent).map(|(t, _)| *t),
            Some(first.start_time)
        );
        child.kill().ok();
        child.wait().ok();
    }

    #[test]
    fn own_start_time_is_read() {
        assert!(start_time(std::process::id()).is_some_and(|t| t > 0));
        assert_eq!(start_time(0), None);
    }
}
