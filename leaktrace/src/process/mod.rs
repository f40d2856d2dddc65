//! Finding the processes to trace and the allocator each one maps.

pub mod allocator;
pub mod cgroup;
pub mod file_memo;
pub mod loader;
pub mod maps;
pub mod memory;
pub mod pagemap;
pub mod root;
pub mod spawn;
pub mod stat;
pub mod symbols;

use std::{
    ffi::OsString,
    fs, io,
    path::{Path, PathBuf},
};

pub use allocator::{Allocator, Roles};

/// Why a process cannot be traced.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no process with PID {0} (check the PID with `ps -p {0}`)")]
    NoSuchProcess(u32),
    #[error("cannot read /proc/{pid}/{what}: {source} (run leaktrace as root)")]
    Unreadable {
        pid: u32,
        what: &'static str,
        source: io::Error,
    },
    #[error(
        "process {pid} ({command}) maps no object that defines malloc and free (a stripped static \
         binary, or a kernel thread?); leaktrace needs the allocator's symbols"
    )]
    NoAllocator { pid: u32, command: String },
}

/// How [`Target::gone`] names a process it never saw.
const GONE_PREFIX: &str = "(exited before it was seen:";

/// A process being traced, as the host sees it.
#[derive(Clone, Debug)]
pub struct Target {
    /// The PID as the host sees it.
    pub pid: u32,
    /// The PID inside the process's own PID namespace (a container's view); equal to `pid`
    /// outside containers.
    pub ns_pid: u32,
    /// The command line, arguments joined with spaces.
    pub command: String,
    /// `/proc/PID/root`: files the process names are opened under it, so that a process in a
    /// container is traced through its own file system.
    pub root: PathBuf,
}

/// The command line of a process, arguments joined with spaces; `None` once it is gone (or for
/// a kernel thread, which has none).
pub fn command_line(pid: u32) -> Option<String> {
    Some(join_args(
        &read_whole(&format!("/proc/{pid}/cmdline")).ok()?,
    ))
    .filter(|c| !c.is_empty())
}

/// Reads a /proc file whose process may be exiting, in reads of a page: `fs::read` starts with
/// a 32-byte probe read, and a process whose memory goes between that read and the next leaves
/// its command line cut at 32 bytes (a short-lived child seen by CI).
fn read_whole(path: &str) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut file = fs::File::open(path)?;
    let mut out = Vec::new();
    let mut page = [0u8; 4096];
    loop {
        match file.read(&mut page)? {
            0 => return Ok(out),
            n => out.extend_from_slice(&page[..n]),
        }
    }
}

fn join_args(cmdline: &[u8]) -> String {
    String::from_utf8_lossy(cmdline)
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Target {
    /// Looks a process up by PID.
    pub fn open(pid: u32) -> Result<Self, ProcessError> {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if pid == 0 || !proc_dir.exists() {
            return Err(ProcessError::NoSuchProcess(pid));
        }
        let command = join_args(&read(pid, "cmdline")?);
        let command = if command.is_empty() {
            String::from_utf8_lossy(&read(pid, "comm")?)
                .trim()
                .to_string()
        } else {
            command
        };
        Ok(Self {
            pid,
            ns_pid: ns_pid(pid).unwrap_or(pid),
            command,
            root: proc_dir.join("root"),
        })
    }

    /// A process that exited before it could be looked at: known by its PID alone.
    pub fn gone(pid: u32) -> Self {
        Self {
            pid,
            ns_pid: pid,
            command: format!("{GONE_PREFIX} pid {pid})"),
            root: PathBuf::from(format!("/proc/{pid}/root")),
        }
    }

    /// Whether this is [`Target::gone`]'s stand-in, known by its PID alone.
    pub fn is_gone_placeholder(&self) -> bool {
        self.command.starts_with(GONE_PREFIX)
    }

    /// The process's current mappings.
    pub fn mappings(&self) -> Result<Vec<maps::Mapping>, ProcessError> {
        let text = read(self.pid, "maps")?;
        Ok(maps::parse(&String::from_utf8_lossy(&text)))
    }

    /// A path the process names, as the host reaches it.
    pub fn host_path(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Whether the process still exists (a zombie counts as gone: it allocates nothing more).
    pub fn is_alive(&self) -> bool {
        stat::read(self.pid).is_some_and(|s| s.is_alive())
    }

    /// The object that serves this process's `malloc`.
    pub fn allocator(&self) -> Result<Allocator, ProcessError> {
        let mappings = self.mappings()?;
        allocator::Finder::default()
            .find(self, &mappings)
            .ok_or_else(|| ProcessError::NoAllocator {
                pid: self.pid,
                command: self.command.clone(),
            })
    }
}

/// The environment a process was exec'd with (`/proc/PID/environ`), as (name, value) pairs:
/// what its dynamic linker read. Empty once it is gone.
pub fn environ(pid: u32) -> Vec<(OsString, OsString)> {
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    bytes
        .split(|&b| b == 0)
        .filter_map(|var| {
            let at = var.iter().position(|&b| b == b'=')?;
            let os = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_os_string();
            Some((os(&var[..at]), os(&var[at + 1..])))
        })
        .collect()
}

/// The PID inside the process's innermost PID namespace: the last `NStgid` field.
pub fn ns_pid(pid: u32) -> Option<u32> {
    innermost_id(&format!("/proc/{pid}/status"), "NStgid:")
}

/// The ID thread `tid` of process `pid` has in the process's own PID namespace: what the
/// process's own bookkeeping (glibc's thread list) calls it.
pub fn ns_tid(pid: u32, tid: u32) -> Option<u32> {
    innermost_id(&format!("/proc/{pid}/task/{tid}/status"), "NSpid:")
}

/// The last ID of a `status` file's namespaced ID line: the innermost namespace's.
fn innermost_id(path: &str, field: &str) -> Option<u32> {
    let status = fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

fn read(pid: u32, what: &'static str) -> Result<Vec<u8>, ProcessError> {
    read_whole(&format!("/proc/{pid}/{what}")).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ProcessError::NoSuchProcess(pid)
        } else {
            ProcessError::Unreadable { pid, what, source }
        }
    })
}
