//! Naming the addresses of a stack: function, source line, inlined frames, module.
//!
//! Each address is placed in the mapping that held it, as the process's `/proc/PID/maps` showed
//! while it lived, and symbolized by file offset in the file behind that mapping. Every mapped
//! file is opened once while the process lives and kept open, so its symbols stay reachable after
//! the process exits, even when the file lived in a container's file system.

pub mod awaited;
pub mod js;
pub mod perfmap;
pub mod queued;
pub mod v8;

use std::{
    collections::HashMap,
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use blazesym::symbolize::{
    CodeInfo, Input, Symbolized, Symbolizer as Blaze,
    source::{Elf, Source},
};
use tracing::debug;

use self::perfmap::PerfMap;
use crate::{
    process::maps::{self, Mapping},
    report::model::Frame,
};

/// Symbolizes and remembers the frames of every address seen, per process.
pub struct Symbolizer {
    blaze: Blaze,
    frames: HashMap<(u32, u64), Vec<Frame>>,
    /// The last mappings seen of each process.
    mappings: HashMap<u32, Vec<Mapping>>,
    /// Mapped files, opened while their process lived (or as soon as the kernel said it mapped
    /// them), by (pid, path as the process names it); a forked child shares its parent's.
    files: HashMap<(u32, PathBuf), Option<Arc<File>>>,
    /// The process each followed child was forked from: where to open its files once it is gone.
    parents: HashMap<u32, u32>,
    /// Perf maps of JIT runtimes, kept open like mapped files.
    perf_maps: HashMap<u32, (File, PerfMap)>,
    /// Threads that queued work to a thread pool, named for the markers of stitched stacks.
    queuing: queued::QueuingThreads,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether an address is a return address (every frame but the innermost): it points after the
/// call, possibly into the next line or function, so the call itself is at `address - 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddrKind {
    Exact,
    Return,
}

impl Symbolizer {
    pub fn new() -> Self {
        Self {
            blaze: Blaze::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .build(),
            frames: HashMap::new(),
            mappings: HashMap::new(),
            files: HashMap::new(),
            parents: HashMap::new(),
            perf_maps: HashMap::new(),
            queuing: queued::QueuingThreads::default(),
        }
    }

    /// Reads `pid`'s mappings and opens any mapped file not yet open, so its addresses can be
    /// named later, after the process is gone. A process that is gone keeps what was last seen.
    pub fn remember(&mut self, pid: u32) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        if text.is_empty() {
            return;
        }
        let mappings = maps::parse(&text);
        for m in mappings.iter().filter(|m| m.is_executable()) {
            let Some(path) = &m.path else { continue };
            self.files
                .entry((pid, path.clone()))
                .or_insert_with(|| open_mapped(pid, m, path).map(Arc::new));
        }
        self.mappings.insert(pid, mappings);
        self.refresh_perf_map(pid);
    }

    /// Whether `pid`'s mappings are kept: a target, or a child forked by one.
    pub fn tracks(&self, pid: u32) -> bool {
        self.mappings.contains_key(&pid)
    }

    /// Adds a mapping the kernel reported as it was made (see `collect::sideband`), over
    /// whatever it covers, and opens its file at once: the process may be gone in a moment.
    pub fn mapped(&mut self, pid: u32, m: Mapping) {
        if let Some(path) = m.path.clone().filter(|p| p.is_absolute())
            && !self.files.contains_key(&(pid, path.clone()))
        {
            let file = self.open_reported(pid, &m, &path).map(Arc::new);
            self.files.insert((pid, path), file);
        }
        overlay(self.mappings.entry(pid).or_default(), m);
    }

    /// `child` was forked by `parent`: it has its parent's mappings and files until it execs
    /// (what it mapped itself already, reported first from another CPU, stays on top).
    pub fn forked(&mut self, parent: u32, child: u32) {
        self.parents.insert(child, parent);
        let inherited = self.mappings.get(&parent).cloned().unwrap_or_default();
        let own = self.mappings.remove(&child).unwrap_or_default();
        let list = self.mappings.entry(child).or_default();
        *list = inherited;
        for m in own {
            overlay(list, m);
        }
        let files: Vec<(PathBuf, Option<Arc<File>>)> = self
            .files
            .iter()
            .filter(|((p, _), _)| *p == parent)
            .map(|((_, path), file)| (path.clone(), file.clone()))
            .collect();
        for (path, file) in files {
            self.files.entry((child, path)).or_insert(file);
        }
    }

    /// Opens the file of a mapping the kernel reported: the very file mapped while the process
    /// lives, else the path under its root or its parents' (a container's files), else on the
    /// host; a file found by path must be the inode that was mapped.
    fn open_reported(&self, pid: u32, m: &Mapping, path: &Path) -> Option<File> {
        let by_map = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        if let Ok(file) = File::open(&by_map) {
            return Some(file);
        }
        let same =
            |file: &File| m.inode == 0 || file.metadata().is_ok_and(|md| md.ino() == m.inode);
        let mut pids = vec![pid];
        let mut at = pid;
        while let Some(&parent) = self.parents.get(&at) {
            if pids.contains(&parent) {
                break;
            }
            pids.push(parent);
            at = parent;
        }
        pids.iter()
            .filter_map(|&p| crate::process::root::open(p, path).ok())
            .chain(File::open(path).ok())
            .find(same)
    }

    /// Drops everything kept for a process: its names, mappings and open files.
    pub fn forget(&mut self, pid: u32) {
        self.frames.retain(|(p, _), _| *p != pid);
        self.mappings.remove(&pid);
        self.files.retain(|(p, _), _| *p != pid);
        self.parents.remove(&pid);
        self.perf_maps.remove(&pid);
        self.queuing.forget(pid);
    }

    /// Names, while they live, the threads that queued the work of a stack of `pid` whose
    /// addresses are `ips` (see [`queued`]).
    pub fn remember_queuing(&mut self, pid: u32, ips: &[u64]) {
        self.queuing.remember(pid, ips);
    }

    /// The mappings of `pid` last remembered (none if never seen).
    pub fn mappings(&self, pid: u32) -> &[Mapping] {
        self.mappings.get(&pid).map_or(&[], Vec::as_slice)
    }

    /// Whether `pid` has a perf map (checked when its mappings were last remembered).
    pub fn has_perf_map(&self, pid: u32) -> bool {
        self.perf_maps.contains_key(&pid)
    }

    /// Opens `pid`'s perf map once it exists and reads what it gained since last time.
    pub fn refresh_perf_map(&mut self, pid: u32) {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.perf_maps.entry(pid) {
            let Some(file) = open_perf_map(pid) else {
                return;
            };
            slot.insert((file, PerfMap::default()));
        }
        if let Some((file, map)) = self.perf_maps.get_mut(&pid) {
            let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            if let Err(err) = map.refresh(&fd_path) {
                debug!(pid, %err, "reading the perf map failed");
            }
        }
    }

    /// Symbolizes the addresses of `pid` not seen before.
    pub fn resolve(&mut self, pid: u32, addrs: &[(u64, AddrKind)]) {
        let mut by_file: HashMap<PathBuf, Vec<(u64, u64)>> = HashMap::new();
        for &(addr, kind) in addrs {
            if self.frames.contains_key(&(pid, addr)) {
                continue;
            }
            if let Some(marker) = self.queuing.frame(pid, addr) {
                self.frames.insert((pid, addr), vec![marker]);
                continue;
            }
            // A return address points after the call; the call is the instruction before it.
            let lookup = match kind {
                AddrKind::Return => addr.saturating_sub(1),
                AddrKind::Exact => addr,
            };
            let placed = self.mapping(pid, lookup).and_then(|m| {
                let path = m.path.as_ref()?;
                let file = self.files.get(&(pid, path.clone()))?.as_ref()?;
                let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
                Some((fd_path, lookup - m.start + m.offset))
            });
            match placed {
                Some((file, offset)) => by_file.entry(file).or_default().push((addr, offset)),
                None => {
                    let frame = self
                        .jit_frame(pid, addr, lookup)
                        .unwrap_or_else(|| self.unsymbolized(pid, addr));
                    self.frames.insert((pid, addr), vec![frame]);
                }
            }
        }
        for (file, addrs) in by_file {
            self.symbolize_file(pid, &file, &addrs);
        }
    }

    /// Names `(address, file offset)` pairs that all lie in `file`.
    fn symbolize_file(&mut self, pid: u32, file: &Path, addrs: &[(u64, u64)]) {
        let offsets: Vec<u64> = addrs.iter().map(|&(_, offset)| offset).collect();
        let results = self
            .blaze
            .symbolize(&Source::Elf(Elf::new(file)), Input::FileOffset(&offsets))
            .unwrap_or_else(|err| {
                debug!(pid, %err, file = %file.display(), "symbolization failed");
                Vec::new()
            });
        for (i, &(addr, _)) in addrs.iter().enumerate() {
            let module = self
                .mapping(pid, addr)
                .and_then(|m| m.path.as_ref())
                .map(|p| p.display().to_string());
            let frames = match results.get(i) {
                Some(Symbolized::Sym(sym)) => {
                    let mut frames: Vec<Frame> = sym
                        .inlined
                        .iter()
                        .rev()
                        .map(|inl| Frame {
                            function: Some(inl.name.to_string()),
                            inlined: true,
                            ..located(addr, module.clone(), inl.code_info.as_ref())
                        })
                        .collect();
                    frames.push(Frame {
                        function: Some(sym.name.to_string()),
                        ..located(addr, module, sym.code_info.as_deref())
                    });
                    frames
                }
                _ => vec![self.unsymbolized(pid, addr)],
            };
            self.frames.insert((pid, addr), frames);
        }
    }

    /// Names JIT-compiled code from the process's perf map.
    fn jit_frame(&self, pid: u32, addr: u64, lookup: u64) -> Option<Frame> {
        let symbol = self.perf_maps.get(&pid)?.1.lookup(lookup)?;
        Some(match perfmap::parse_js_name(&symbol.name) {
            Some(js) => Frame {
                address: hex(addr),
                kind: "js".into(),
                function: Some(js.function),
                file: js.file,
                line: js.line,
                source: Some("perf-map".into()),
                ..Frame::default()
            },
            None => Frame {
                address: hex(addr),
                kind: "native".into(),
                function: Some(symbol.name.clone()),
                module: Some("[jit]".into()),
                source: Some("perf-map".into()),
                ..Frame::default()
            },
        })
    }

    fn mapping(&self, pid: u32, addr: u64) -> Option<&Mapping> {
        self.mappings
            .get(&pid)?
            .iter()
            .find(|m| (m.start..m.end).contains(&addr))
    }

    /// A frame no symbol covers: placed by module and offset when a file maps it.
    fn unsymbolized(&self, pid: u32, addr: u64) -> Frame {
        let mapping = self.mapping(pid, addr);
        Frame {
            address: hex(addr),
            kind: "native".into(),
            module: mapping
                .and_then(|m| m.path.as_ref())
                .map(|p| p.display().to_string()),
            module_offset: mapping
                .filter(|m| m.path.is_some())
                .map(|m| hex(addr - m.start + m.offset)),
            ..Frame::default()
        }
    }

    /// What stands for the function that holds the instruction at `addr` of `pid` (its module
    /// and its name, and those of the functions inlined there): two addresses in one function
    /// give the same. Code in no file that no perf map names (a JIT's) is all one unnamed
    /// function: the report could tell its addresses apart by nothing else. `None` when `addr`
    /// is in a file but no symbol covers it (its offset in the file still tells).
    pub fn function_id(&mut self, pid: u32, addr: u64) -> Option<u64> {
        use std::hash::{Hash as _, Hasher as _};
        /// No instruction is at address 0.
        const UNNAMED_JIT_CODE: u64 = 0;
        self.resolve(pid, &[(addr, AddrKind::Exact)]);
        let frames = self.frames.get(&(pid, addr))?;
        if frames.iter().any(|f| f.function.is_none()) {
            return frames
                .iter()
                .all(|f| f.module.is_none())
                .then_some(UNNAMED_JIT_CODE);
        }
        let mut id = std::hash::DefaultHasher::new();
        for f in frames {
            (&f.module, &f.function).hash(&mut id);
        }
        Some(id.finish())
    }

    /// The frames of one address (several when functions were inlined there).
    pub fn frames(&self, pid: u32, addr: u64) -> Vec<Frame> {
        self.frames
            .get(&(pid, addr))
            .cloned()
            .unwrap_or_else(|| vec![self.unsymbolized(pid, addr)])
    }
}

/// Opens `pid`'s perf map: under the process's root (links resolved inside it), named with the
/// PID the process has in its own namespace (the last `NStgid` field).
fn open_perf_map(pid: u32) -> Option<File> {
    let ns_pid = crate::process::ns_pid(pid).unwrap_or(pid);
    crate::process::root::open(pid, Path::new(&format!("/tmp/perf-{ns_pid}.map"))).ok()
}

/// Opens the file behind a mapping: through `map_files` (the very file mapped, even if deleted
/// or replaced since), else through the process's root (right inside a container).
fn open_mapped(pid: u32, m: &Mapping, path: &Path) -> Option<File> {
    let by_map = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    File::open(&by_map)
        .or_else(|_| crate::process::root::open(pid, path))
        .inspect_err(|err| debug!(pid, path = %path.display(), %err, "cannot open mapped file"))
        .ok()
}

/// Puts `m` into a process's mappings (kept in address order), cutting away what it covers of
/// the older ones: a new mapping replaces whatever was at its addresses.
fn overlay(list: &mut Vec<Mapping>, m: Mapping) {
    let mut kept = Vec::with_capacity(list.len() + 2);
    for old in list.drain(..) {
        if old.end <= m.start || old.start >= m.end {
            kept.push(old);
            continue;
        }
        if old.start < m.start {
            kept.push(Mapping {
                end: m.start,
                ..old.clone()
            });
        }
        if old.end > m.end {
            let cut = m.end - old.start;
            kept.push(Mapping {
                start: m.end,
                offset: old.offset + cut,
                ..old
            });
        }
    }
    kept.push(m);
    kept.sort_by_key(|m| m.start);
    *list = kept;
}

fn located(addr: u64, module: Option<String>, code: Option<&CodeInfo<'_>>) -> Frame {
    Frame {
        source: Some(if code.is_some() { "dwarf" } else { "symtab" }.into()),
        address: hex(addr),
        kind: "native".into(),
        function: None,
        file: code.map(|c| c.to_path().display().to_string()),
        line: code.and_then(|c| c.line),
        module,
        module_offset: None,
        inlined: false,
    }
}

/// An address as the report writes it.
pub fn hex(addr: u64) -> String {
    format!("{addr:#x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(start: u64, end: u64, offset: u64, path: &str) -> Mapping {
        Mapping {
            start,
            end,
            perms: *b"r-xp",
            offset,
            inode: 1,
            path: Some(PathBuf::from(path)),
        }
    }

    #[test]
    fn a_new_mapping_replaces_what_it_covers() {
        let mut list = vec![mapping(0x1000, 0x5000, 0, "/old")];
        overlay(&mut list, mapping(0x2000, 0x3000, 0, "/new"));
        assert_eq!(
            list,
            vec![
                mapping(0x1000, 0x2000, 0, "/old"),
                mapping(0x2000, 0x3000, 0, "/new"),
                mapping(0x3000, 0x5000, 0x2000, "/old"),
            ]
        );
        overlay(&mut list, mapping(0x0, 0x6000, 0, "/all"));
        assert_eq!(list, vec![mapping(0x0, 0x6000, 0, "/all")]);
        overlay(&mut list, mapping(0x8000, 0x9000, 0, "/apart"));
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn a_forked_child_has_its_parents_mappings_under_its_own() {
        let mut symbolizer = Symbolizer::new();
        symbolizer.mapped(7, mapping(0x1000, 0x2000, 0, "[vdso]"));
        symbolizer.mapped(8, mapping(0x1800, 0x1900, 0, "[child]"));
        symbolizer.forked(7, 8);
        assert!(symbolizer.tracks(8));
        let child = symbolizer.mappings(8);
        assert_eq!(child.len(), 3, "{child:?}");
        assert_eq!(child[1].path.as_deref(), Some(Path::new("[child]")));
    }
}
