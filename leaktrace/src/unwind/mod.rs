//! Unwind tables for the probes: which code of a target is walked by table, and the rows.
//!
//! Code without frame pointers (glibc's malloc internals, libstdc++, libraries built with
//! `-fomit-frame-pointer`) cannot be walked by the frame-pointer chain: a caller is skipped, or
//! the walk reads data. Each executable file mapping of a target is classified once per object
//! ([`table::Walk`]); the objects walked by table get their `.eh_frame` compacted into rows
//! (`table`), built once for the tracer's life (`process::file_memo`: the agent's exact windows
//! attach sessions of their own) and loaded once into each session's row array, shared by every
//! process that maps them.

pub mod table;

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use leaktrace_common::{MAX_UNWIND_MAPPINGS, UnwindMapping, UnwindProcess};
use object::{Object, ObjectSegment};
use tracing::{debug, info, warn};

use crate::{
    probe::{ProbeError, Probes},
    process::file_memo::FileMemo,
};

/// How long a process's code is trusted to be as last read without a mapping record saying
/// otherwise.
const REREAD_AFTER: Duration = Duration::from_secs(30);

/// An object as prepared for the probes.
#[derive(Clone, Debug)]
enum Prepared {
    /// Its rows are `first_row..` in the probes' array, as many as `tables` has.
    Tables { first_row: u32, tables: Arc<Tables> },
    /// Walked by frame pointer, or without a usable table (said once, in the log).
    NotTables,
}

/// One `PT_LOAD` segment: file bytes `offset..offset + size` at virtual address `vaddr`.
#[derive(Clone, Copy, Debug)]
struct Load {
    offset: u64,
    size: u64,
    vaddr: u64,
}

/// What preparing the tables has cost so far, for the log and the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindStats {
    /// Objects walked by table, and their rows in the probes' array.
    pub objects: u32,
    pub rows: u32,
    /// Capacity of that array.
    pub capacity: u32,
    /// Objects left to the frame-pointer walk because the array was full.
    pub objects_over_capacity: u32,
    /// Table mappings left out because a process had more than the probes search.
    pub mappings_over_limit: u32,
}

impl UnwindStats {
    /// What the report says of the tables: what did not fit (their memory is in the log).
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.objects_over_capacity > 0 {
            notes.push(format!(
                "{} object{} without frame pointers did not fit the unwind-row array: stacks \
                 through them lose frames (raise --max-unwind-rows)",
                self.objects_over_capacity,
                if self.objects_over_capacity == 1 {
                    ""
                } else {
                    "s"
                },
            ));
        }
        if self.mappings_over_limit > 0 {
            notes.push(format!(
                "{} mapping{} of code without frame pointers went past the {} the probes search \
                 per process: stacks through them lose frames",
                self.mappings_over_limit,
                if self.mappings_over_limit == 1 {
                    ""
                } else {
                    "s"
                },
                MAX_UNWIND_MAPPINGS
            ));
        }
        notes
    }
}

/// The objects prepared so far, by inode and path, and the room left in the row array.
#[derive(Debug)]
pub struct Unwinder {
    objects: HashMap<(u64, PathBuf), Prepared>,
    /// What the probes were last told of each process, and when its maps were read for it.
    installed: HashMap<u32, (Instant, Vec<UnwindMapping>)>,
    /// Processes that mapped code since their maps were last read.
    remapped: HashSet<u32>,
    /// The tracer's own executable: `run`'s child is a copy of the tracer until its exec, and
    /// its code is never a target's.
    own_inode: Option<u64>,
    stats: UnwindStats,
}

impl Unwinder {
    /// An unwinder whose row array holds `capacity` rows.
    pub fn new(capacity: u32) -> Self {
        Self {
            objects: HashMap::new(),
            installed: HashMap::new(),
            remapped: HashSet::new(),
            own_inode: std::fs::metadata("/proc/self/exe").ok().map(|m| m.ino()),
            stats: UnwindStats {
                capacity,
                ..UnwindStats::default()
            },
        }
    }

    pub fn stats(&self) -> UnwindStats {
        self.stats
    }

    /// Forgets what `pid` mapped (the probes' entry goes with the process's other state).
    pub fn forget(&mut self, pid: u32) {
        self.installed.remove(&pid);
        self.remapped.remove(&pid);
    }

    /// Says that `pid` mapped code (a `dlopen`, an exec), as the kernel's mapping records tell:
    /// its next [`install`](Self::install) reads its maps again.
    pub fn code_mapped(&mut self, pid: u32) {
        self.remapped.insert(pid);
    }

    /// Tells the probes which of `pid`'s code is walked by table, preparing the objects seen
    /// for the first time. Called when a target is attached and at every sample, so that an
    /// exec or a `dlopen` gets its tables within an interval; a process gone meanwhile is no
    /// error. Its maps are read again only once it mapped code ([`code_mapped`]), or
    /// [`REREAD_AFTER`] since the last read (a mapping record lost to a full ring): reading and
    /// parsing Node's maps at every sample was a few percent of watch mode's CPU time. A read
    /// that failed is tried again at the next call.
    ///
    /// [`code_mapped`]: Self::code_mapped
    pub fn install(&mut self, probes: &mut Probes, pid: u32) -> Result<(), ProbeError> {
        let now = Instant::now();
        if !self.remapped.remove(&pid)
            && self
                .installed
                .get(&pid)
                .is_some_and(|(read, _)| now.duration_since(*read) < REREAD_AFTER)
        {
            return Ok(());
        }
        let installed = self.reinstall(probes, pid, now);
        if installed.is_err() {
            self.remapped.insert(pid);
        }
        installed
    }

    /// Reads `pid`'s maps and tells the probes what changed since they were last told.
    fn reinstall(&mut self, probes: &mut Probes, pid: u32, now: Instant) -> Result<(), ProbeError> {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return Ok(());
        };
        let mut mappings: Vec<UnwindMapping> = Vec::new();
        for m in crate::process::maps::parse(&text) {
            let Some(path) = m.path.clone().filter(|_| m.is_executable()) else {
                continue;
            };
            if Some(m.inode) == self.own_inode {
                continue;
            }
            let key = (m.inode, path);
            if !self.objects.contains_key(&key) {
                let host = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
                let prepared = self.prepare(probes, &host, &key.1)?;
                self.objects.insert(key.clone(), prepared);
            }
            let Some(Prepared::Tables { first_row, tables }) = self.objects.get(&key) else {
                continue;
            };
            // The segment this mapping's file offset lies in gives its address in the object.
            let Some(load) = tables
                .loads
                .iter()
                .find(|l| (l.offset..l.offset + l.size.max(1)).contains(&m.offset))
            else {
                continue;
            };
            let vaddr = load.vaddr + (m.offset - load.offset);
            mappings.push(UnwindMapping {
                start: m.start,
                end: m.end,
                bias: m.start.wrapping_sub(vaddr),
                first_row: *first_row,
                rows: tables.rows.len() as u32,
            });
        }
        mappings.sort_by_key(|m| m.start);
        if mappings.len() > MAX_UNWIND_MAPPINGS {
            let over = mappings.len() - MAX_UNWIND_MAPPINGS;
            warn!(
                pid,
                over,
                "more code without frame pointers than the probes search: left to frame pointers"
            );
            self.stats.mappings_over_limit += over as u32;
            mappings.truncate(MAX_UNWIND_MAPPINGS);
        }
        if let Some((read, installed)) = self.installed.get_mut(&pid)
            && *installed == mappings
        {
            *read = now;
            return Ok(());
        }
        let mut entry = UnwindProcess {
            len: mappings.len() as u32,
            ..UnwindProcess::default()
        };
        entry.mappings[..mappings.len()].copy_from_slice(&mappings);
        probes.set_unwind(pid, (!mappings.is_empty()).then_some(&entry))?;
        info!(
            pid,
            mappings = mappings.len(),
            "unwind tables given to the probes"
        );
        self.installed.insert(pid, (now, mappings));
        Ok(())
    }

    /// Classifies the object at `host` (named `path` in the process) and loads its rows.
    fn prepare(
        &mut self,
        probes: &mut Probes,
        host: &str,
        path: &std::path::Path,
    ) -> Result<Prepared, ProbeError> {
        let started = Instant::now();
        let tables = TABLES.get_or_read(std::path::Path::new(host), || {
            read_tables(host, path).map(Arc::new)
        });
        let Some(tables) = tables else {
            return Ok(Prepared::NotTables);
        };
        let count = tables.rows.len() as u32;
        let first_row = self.stats.rows;
        if first_row.saturating_add(count) > self.stats.capacity {
            warn!(
                path = %path.display(),
                rows = count,
                "the unwind-row array is full: this object's code without frame pointers loses frames"
            );
            self.stats.objects_over_capacity += 1;
            return Ok(Prepared::NotTables);
        }
        probes.load_unwind_rows(first_row, &tables.rows)?;
        self.stats.rows += count;
        self.stats.objects += 1;
        info!(
            path = %path.display(),
            rows = count,
            bytes = count as usize * std::mem::size_of::<leaktrace_common::UnwindRow>(),
            ms = started.elapsed().as_millis() as u64,
            "unwind table loaded"
        );
        Ok(Prepared::Tables { first_row, tables })
    }
}

/// An object's rows, built from its `.eh_frame`, and its loaded segments (`loads` maps file
/// offsets to addresses).
#[derive(Debug)]
struct Tables {
    rows: Vec<leaktrace_common::UnwindRow>,
    loads: Vec<Load>,
}

/// Each object's tables, built once whichever session asks (`None`: walked by frame pointer).
/// The rows stay in the tracer's memory too, about 0.3 MB for each of glibc and libstdc++: a
/// node whose containers each bring their own libraries keeps at most this many objects' worth.
static TABLES: FileMemo<Option<Arc<Tables>>> = FileMemo::new(64);

/// Reads the object at `host` (named `path` in the process) and builds its rows, if it is to be
/// walked by table (why not is said once, in the log).
fn read_tables(host: &str, path: &std::path::Path) -> Option<Tables> {
    let data = match std::fs::read(host) {
        Ok(data) => data,
        Err(err) => {
            debug!(path = %path.display(), %err, "cannot read: walked by frame pointers");
            return None;
        }
    };
    let (walk, rows) = match table::build(&data) {
        Ok(built) => built,
        Err(err) => {
            debug!(path = %path.display(), %err, "no unwind table: walked by frame pointers");
            return None;
        }
    };
    if walk == table::Walk::FramePointers {
        debug!(path = %path.display(), "keeps frame pointers: walked by them");
        return None;
    }
    let loads = object::File::parse(&*data)
        .map(|file| {
            file.segments()
                .filter_map(|s| {
                    let (offset, size) = s.file_range();
                    (size > 0).then(|| Load {
                        offset,
                        size,
                        vaddr: s.address(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Tables { rows, loads })
}
