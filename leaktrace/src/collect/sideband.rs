//! The kernel's own record of what processes map, fork and exec, as it happens.
//!
//! A stack can only be named from the files its process mapped, and a test binary can map its
//! libraries, allocate and exit within a millisecond: long before anyone could read its
//! `/proc/PID/maps`. perf's side-band records are written by the kernel at the moment of each
//! executable `mmap` (`PERF_RECORD_MMAP2`: address, length, offset, inode and path), fork,
//! exec (`PERF_RECORD_COMM` with the exec flag) and exit, and they wait in a ring until read. One
//! dummy software event per CPU (it counts nothing; it only carries the side-band) sees every
//! process, so children, threads that existed before the trace, and processes that have already
//! exited are all covered; which of them matter is the session's business.
//!
//! Records from different CPUs come from different rings, so they are read into one list and
//! put in time order (each carries a `CLOCK_MONOTONIC` timestamp). A record is handed out only
//! once it is older than [`SETTLE`]: by then every record before it, from any CPU, is in its
//! ring.

use std::{ffi::OsStr, io, os::unix::ffi::OsStrExt as _, path::PathBuf, time::Duration};

use perf_event::{Builder, Clock, SampleFlag, Sampler, data::Record, events::Software};

/// How long a record is held back for records of other CPUs that came before it.
pub const SETTLE: Duration = Duration::from_millis(20);

/// Bytes of each CPU's ring: a process's start writes a few dozen records of ~100 bytes; a busy
/// host's other processes write theirs too.
const RING_BYTES: usize = 256 << 10;

/// What the kernel said one process did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An executable mapping: file-backed (`path` is the file as the process names it, with its
    /// device and inode), or anonymous (JIT code; `path` is a label such as `//anon`).
    Map {
        pid: u32,
        start: u64,
        len: u64,
        pgoff: u64,
        prot: u32,
        dev: (u32, u32),
        inode: u64,
        path: PathBuf,
    },
    /// A new process (not a thread): it shares its parent's mappings until it execs.
    Fork { parent: u32, child: u32 },
    /// The process exec'd; `comm` is the new image's name.
    Exec { pid: u32, comm: String },
    /// The process exited.
    Exit { pid: u32 },
}

/// Why the side-band cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SidebandError {
    #[error(
        "opening the kernel's mapping records on CPU {cpu} (perf_event_open) failed: {source} \
         (leaktrace needs CAP_PERFMON or CAP_SYS_ADMIN, and a kernel with perf events)"
    )]
    Open {
        cpu: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot list the online CPUs: {0}")]
    Cpus(String),
}

/// The side-band rings, one per online CPU, and what was read but not yet handed out.
pub struct Sideband {
    rings: Vec<Sampler>,
    /// Records read, by timestamp, not yet handed out.
    pending: Vec<(u64, Change)>,
    /// Records the kernel could not write: a ring was full.
    lost: u64,
}

impl Sideband {
    /// Opens one ring per online CPU.
    pub fn open() -> Result<Self, SidebandError> {
        let cpus = aya::util::online_cpus().map_err(|(_, e)| SidebandError::Cpus(e.to_string()))?;
        let rings = cpus
            .into_iter()
            .map(|cpu| {
                Builder::new(Software::DUMMY)
                    .any_pid()
                    .one_cpu(cpu as usize)
                    .mmap(true)
                    .mmap2(true)
                    .comm(true)
                    .comm_exec(true)
                    .task(true)
                    .sample_id_all(true)
                    .sample(SampleFlag::TIME)
                    .clockid(Clock::MONOTONIC)
                    .enabled(true)
                    .build()
                    .and_then(|counter| counter.sampled(RING_BYTES))
                    .map_err(|source| SidebandError::Open { cpu, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            rings,
            pending: Vec::new(),
            lost: 0,
        })
    }

    /// Records the kernel dropped because a ring was full.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Reads every ring and hands out, in time order, each change older than [`SETTLE`] (every
    /// change when `flush`: the trace is ending).
    pub fn drain(&mut self, flush: bool, mut each: impl FnMut(Change)) {
        for ring in &mut self.rings {
            while let Some(record) = ring.next_record() {
                let bytes = record.to_contiguous();
                // sample_id_all with TIME alone: every record ends with its timestamp.
                let time = bytes
                    .len()
                    .checked_sub(8)
                    .and_then(|at| bytes.get(at..))
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_ne_bytes);
                let exec = record.misc() & COMM_EXEC != 0;
                match record.parse_record() {
                    Ok(Record::Lost(lost)) => self.lost += lost.lost,
                    Ok(parsed) => {
                        if let Some(change) = change_of(parsed, exec) {
                            self.pending.push((time, change));
                        }
                    }
                    Err(_) => {}
                }
            }
        }
        let ready_before = if flush {
            u64::MAX
        } else {
            monotonic_ns().saturating_sub(SETTLE.as_nanos() as u64)
        };
        // Stable: records of one CPU with equal stamps keep their ring order.
        self.pending.sort_by_key(|(time, _)| *time);
        let ready = self
            .pending
            .partition_point(|(time, _)| *time < ready_before);
        for (_, change) in self.pending.drain(..ready) {
            each(change);
        }
    }
}

/// `PERF_RECORD_MISC_COMM_EXEC`: this COMM record is an exec, not a rename.
const COMM_EXEC: u16 = 1 << 13;

/// The change a record says, if it is one the tracer uses; `exec` is the COMM record's flag.
fn change_of(record: Record<'_>, exec: bool) -> Option<Change> {
    match record {
        Record::Mmap2(m) => {
            let dev = (m.maj().unwrap_or(0), m.min().unwrap_or(0));
            let inode = m.ino().unwrap_or(0);
            Some(Change::Map {
                pid: m.pid,
                start: m.addr,
                len: m.len,
                pgoff: m.pgoff,
                prot: m.prot,
                dev,
                inode,
                path: PathBuf::from(OsStr::from_bytes(&m.filename)),
            })
        }
        // A thread's fork and exit share its process's pid.
        Record::Fork(f) if f.pid != f.ppid => Some(Change::Fork {
            parent: f.ppid,
            child: f.pid,
        }),
        Record::Exit(e) if e.pid == e.tid => Some(Change::Exit { pid: e.pid }),
        Record::Comm(c) if exec => Some(Change::Exec {
            pid: c.pid,
            comm: String::from_utf8_lossy(&c.comm).into_owned(),
        }),
        _ => None,
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock the records are stamped with.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
