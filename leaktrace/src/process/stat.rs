//! `/proc/PID/stat`: whether a process still runs, when it started (which, with the PID, tells
//! a process from a later one that reused its PID), and the CPU time it has used.

use std::{fs, time::Duration};

/// The fields of `/proc/PID/stat` leaktrace reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Clock ticks after boot at which the process started.
    pub start_time: u64,
    /// Clock ticks its threads, living and exited, ran in user and kernel mode.
    pub cpu_ticks: u64,
}

impl Stat {
    /// Whether the process can still allocate: a zombie cannot.
    pub fn is_alive(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }

    /// The CPU time its threads used.
    pub fn cpu_time(&self) -> Duration {
        ticks(self.cpu_ticks)
    }

    /// How long ago it started: its start time against the boot-time clock, which the kernel
    /// counts it from (suspended time included).
    pub fn age(&self) -> Duration {
        clock_time(libc::CLOCK_BOOTTIME).saturating_sub(ticks(self.start_time))
    }
}

/// A count of clock ticks as time.
fn ticks(n: u64) -> Duration {
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100);
    Duration::from_nanos(n.saturating_mul(1_000_000_000 / hz))
}

/// The stat of `pid`, or `None` once it is gone.
pub fn read(pid: u32) -> Option<Stat> {
    parse(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses a stat line. The command (field 2) is in parentheses and may itself hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse(stat: &str) -> Option<Stat> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // Fields 3.. follow: the state is the first of them, user and system time (14, 15) the 12th
    // and 13th, the start time (22) the 20th.
    let state = fields.next()?.chars().next()?;
    let utime: u64 = fields.nth(10)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let start_time = fields.nth(6)?.parse().ok()?;
    Some(Stat {
        state,
        start_time,
        cpu_ticks: utime + stime,
    })
}

/// CPU time the calling thread has used: what a piece of the tracer's own work costs, whether
/// or not the thread was descheduled meanwhile (a loaded machine stretches wall time, not this).
pub fn thread_cpu_time() -> Duration {
    clock_time(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time the whole process has used, every thread: what the tracer costs the machine.
pub fn process_cpu_time() -> Duration {
    clock_time(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// The time of one of the kernel's clocks; zero if it cannot be read.
fn clock_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant the kernel knows.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse(stat),
            Some(Stat {
                state: 'S',
                start_time: 987_654,
                cpu_ticks: 3,
            })
        );
        assert_eq!(parse("42 (x) S 1"), None);
        assert_eq!(parse("garbage"), None);
        let zombie = "7 (z) Z 1 7 7 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0";
        assert!(!parse(zombie).unwrap().is_alive());
    }

    #[test]
    fn a_new_process_is_younger_than_its_parent() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let young = read(child.id()).expect("the child's stat").age();
        let old = read(std::process::id()).expect("our own stat").age();
        child.kill().ok();
        child.wait().ok();
        assert!(young <= old, "{young:?} {old:?}");
        assert!(young < Duration::from_secs(2), "{young:?}");
        assert!(old < clock_time(libc::CLOCK_BOOTTIME), "{old:?}");
    }
}
