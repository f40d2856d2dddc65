//! Where the service bench's processes run: the loads on one half of the CPUs; both copies of
//! the service, and the tracer, on the other half, sharing it through two CPU cgroups of equal
//! weight.
//!
//! Why share. Given a CPU each, two copies of the same service drifted apart by 3 to 10 % from
//! one 5-s step to the next and by ±5 % between minutes (this VM's vCPUs are slowed by the host
//! each on its own), which no number of rounds here could bring under a 1 % goal. Sharing the
//! same CPUs in two groups that the kernel's fair scheduler serves alike, both copies are slowed
//! alike at the scheduler's granularity: measured here, their rates' ratio moved by 0.2 to 0.3 %
//! from one 5-s step to the next and held within 0.1 % over minutes. The tracer joins the tested
//! copy's group, so all of its CPU time is taken from that copy, as on a node whose CPUs the
//! service saturates: the tested copy has half of the CPUs it shares, so the tracer's CPU time
//! weighs twice what it would against a service that had them all.

use std::{
    ffi::OsStr,
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The CPUs this process may use, in two halves.
pub(super) struct Cpus {
    /// Where both `wrk` loads run.
    pub(super) load: String,
    /// Where both copies of the service and the tracer run.
    pub(super) services: String,
}

impl Cpus {
    pub(super) fn of_this_process() -> anyhow::Result<Self> {
        let status =
            fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .context("no Cpus_allowed_list in /proc/self/status")?;
        let cpus =
            cpu_list(list.trim()).with_context(|| format!("cannot read the CPU list {list:?}"))?;
        if cpus.len() < 2 {
            bail!("the service bench needs two CPUs; this process may use {list}");
        }
        let join = |half: &[u32]| {
            half.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let (load, services) = cpus.split_at(cpus.len() / 2);
        Ok(Self {
            load: join(load),
            services: join(services),
        })
    }
}

/// A kernel CPU list (`0-3,6`), expanded.
fn cpu_list(list: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u32>().ok()?..=b.parse().ok()?),
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// One of the two groups.
#[derive(Clone, Copy)]
pub(super) enum Group {
    /// The untraced copy's.
    Reference,
    /// The traced copy's and the tracer's.
    Tested,
}

/// The two CPU cgroups, made with equal weights, and the CPUs their processes run on; removed
/// when dropped (their processes must have exited by then).
pub(super) struct Groups {
    reference: PathBuf,
    tested: PathBuf,
    /// A CPU list, as `taskset -c` takes it.
    cpus: String,
}

impl Groups {
    /// The groups, whose processes will run on `cpus` only.
    pub(super) fn create(cpus: &str) -> anyhow::Result<Self> {
        // cgroup v1 mounts the controller on its own; v2 has one hierarchy whose root must
        // hand the controller down to its children.
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = Path::new("/sys/fs/cgroup");
        let (root, weight_file, weight) = if v1.join("cpu.shares").exists() {
            (v1, "cpu.shares", "1024")
        } else if fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
        {
            fs::write(v2.join("cgroup.subtree_control"), "+cpu")
                .context("enabling the cpu controller for /sys/fs/cgroup's children")?;
            (v2, "cpu.weight", "100")
        } else {
            bail!("the service bench needs the cpu cgroup controller (v1 or v2); found neither");
        };
        let make = |name: &str| -> anyhow::Result<PathBuf> {
            let dir = root.join(name);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                // Left by a bench that was killed: empty once its processes are gone.
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(err).with_context(|| format!("creating {}", dir.display())),
            }
            fs::write(dir.join(weight_file), weight)
                .with_context(|| format!("setting {}/{weight_file}", dir.display()))?;
            Ok(dir)
        };
        Ok(Self {
            reference: make("leaktrace-bench-reference")?,
            tested: make("leaktrace-bench-tested")?,
            cpus: cpus.to_owned(),
        })
    }

    fn dir(&self, group: Group) -> &Path {
        match group {
            Group::Reference => &self.reference,
            Group::Tested => &self.tested,
        }
    }

    /// `cmd` run as `program` (the service's copies differ only by name) in `group`, on the
    /// groups' CPUs only. A shell joins the group and then becomes the program, so every thread
    /// and child it makes starts in the group and the PID is the program's.
    pub(super) fn placed(&self, group: Group, program: &OsStr, cmd: &Command) -> Command {
        let mut out = Command::new("sh");
        out.args(["-c", r#"echo $$ > "$0" && exec "$@""#])
            .arg(self.dir(group).join("cgroup.procs"))
            .args(["taskset", "-c", &self.cpus])
            .arg(program)
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => out.env(key, value),
                None => out.env_remove(key),
            };
        }
        out
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        for dir in [&self.reference, &self.tested] {
            if let Err(err) = fs::remove_dir(dir) {
                eprintln!(
                    "bench: cannot remove the CPU group {}: {err}",
                    dir.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(cpu_list("0-2,5,7-8"), Some(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(cpu_list("x"), None);
    }
}
