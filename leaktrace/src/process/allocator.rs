//! Which mapped objects serve a process's allocations, and what each one is probed for.
//!
//! A process allocates through whichever object the dynamic linker binds `malloc` to: its C
//! library, a replacement allocator (jemalloc, tcmalloc, mimalloc) preloaded or linked before it,
//! or an allocator linked into the executable itself: the first object in the linker's search
//! order that defines it. Only that one is probed for the `malloc` family, since the others are
//! never called. Objects are looked at by the symbols they define, not by their names, so an
//! allocator under any file name is found.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use tracing::debug;

use super::{Target, maps::Mapping, symbols::ObjectInfo};

/// What a mapped object is probed for. One object can have several roles: jemalloc serves
/// `malloc`, `operator new` and `operator delete`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    /// It serves the process's `malloc`, `free` and their family.
    pub malloc: bool,
    /// Its `operator new` family is probed: the C++ runtime's, or a replacement allocator's.
    /// libstdc++ keeps no frame pointers, so a probe at `malloc` alone would lose the caller.
    pub new: bool,
    /// Its own `operator delete` family is probed. A replacement allocator's deletes free
    /// without calling `free` (jemalloc inlines its fast path); the C++ runtime's reach `free`.
    pub delete: bool,
    /// Allocator APIs under a prefix it defines (`mi_malloc`, `je_malloc`): called by name, not
    /// through `malloc`, so probed wherever they are.
    pub prefixes: Vec<&'static str>,
    /// Its `mmap` is probed to name the call sites of mappings (see `leaktrace-ebpf`'s
    /// `mapping`): the first `mmap` in the search order, like `malloc`.
    pub mmap: bool,
}

impl Roles {
    fn any(&self) -> bool {
        self.malloc || self.new || self.delete || self.mmap || !self.prefixes.is_empty()
    }
}

/// A mapped object a process allocates through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocator {
    pub roles: Roles,
    /// Which allocator it is, for reports and `doctor`: `glibc`, `musl`, `jemalloc`, `tcmalloc`,
    /// `mimalloc`, `c++ runtime`, or `allocator` when its symbols do not say.
    pub name: &'static str,
    /// The path as the process names it.
    pub path: PathBuf,
    /// The same file as the host reaches it: `/proc/PID/map_files/<range>`, the very file
    /// mapped (a path in `/proc/PID/maps` is relative to the reader's root, which is not the
    /// container's), else through `/proc/PID/root`.
    pub host_path: PathBuf,
    /// Inode of the file: the same library in several processes is one probe target.
    pub inode: u64,
}

/// Prefixes under which allocators export their API: jemalloc built with `--with-jemalloc-prefix`
/// (`je_`, and `_rjem_` as Rust's tikv-jemallocator links it), mimalloc's own API (`mi_`), and
/// gperftools' (`tc_`).
pub const PREFIXES: &[&str] = &["je_", "_rjem_", "mi_", "tc_"];

/// File names of the C libraries leaktrace knows: glibc and musl (Alpine's loader name, and
/// Debian's `libc.so`, which is musl's loader and libc in one).
fn is_libc(name: &str) -> bool {
    name == "libc.so.6"
        || name == "libc.so"
        || (name.starts_with("libc-") && name.ends_with(".so"))
        || (name.starts_with("ld-musl-") && name.ends_with(".so.1"))
        || name == "libc.musl-x86_64.so.1"
}

/// Whether a mapped path names a C library leaktrace knows.
pub fn is_libc_path(path: Option<&Path>) -> bool {
    path.and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .is_some_and(is_libc)
}

/// File names of the C++ runtimes.
fn is_cxx_runtime(name: &str) -> bool {
    name.starts_with("libstdc++.so") || name.starts_with("libc++.so")
}

/// The symbols of one object that decide its roles.
#[derive(Clone, Debug, Default)]
struct Defines {
    malloc_and_free: bool,
    new: bool,
    delete: bool,
    mmap: bool,
    prefixes: Vec<&'static str>,
    name: Option<&'static str>,
}

/// Finds the allocator objects of processes, reading each file once.
#[derive(Default)]
pub struct Finder {
    objects: HashMap<(u64, PathBuf), (Defines, ObjectInfo)>,
}

/// One executable object a process maps, or will map.
struct Object {
    path: PathBuf,
    name: String,
    is_exe: bool,
    host_path: PathBuf,
    inode: u64,
    defines: Defines,
    info: ObjectInfo,
}

impl Object {
    /// Whether other objects name this one `needed` (by its soname, else its file name).
    fn is(&self, needed: &str) -> bool {
        self.info.soname.as_deref() == Some(needed) || self.name == needed
    }
}

impl Finder {
    /// The object that serves the process's `malloc` and `free`.
    pub fn find(&mut self, target: &Target, mappings: &[Mapping]) -> Option<Allocator> {
        self.find_all(target, mappings)
            .into_iter()
            .find(|a| a.roles.malloc)
    }

    /// Every object the process allocates through, each once, with what it is probed for.
    pub fn find_all(&mut self, target: &Target, mappings: &[Mapping]) -> Vec<Allocator> {
        let exe_inode = fs::metadata(format!("/proc/{}/exe", target.pid))
            .map(|m| m.ino())
            .ok();
        let mut objects: Vec<Object> = Vec::new();
        for m in mappings.iter().filter(|m| m.is_executable()) {
            let Some(path) = m.path.as_deref() else {
                continue;
            };
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if objects.iter().any(|o| o.path == path) {
                continue;
            }
            let is_exe = exe_inode == Some(m.inode);
            let host_path = host_path(target, m, path);
            let (defines, info) = self
                .objects
                .entry((m.inode, path.to_path_buf()))
                .or_insert_with(|| read_object(&host_path, is_exe))
                .clone();
            objects.push(Object {
                path: path.to_path_buf(),
                name: name.to_owned(),
                is_exe,
                host_path,
                inode: m.inode,
                defines,
                info,
            });
        }
        roles(&objects, &preloads(target))
    }

    /// Every object a program about to be exec'd will allocate through, from the objects the
    /// dynamic linker will load for it (see [`super::loader::closure`]): its probes can be in
    /// place before its first instruction.
    pub fn find_planned(&mut self, closure: &[super::loader::LoadedObject]) -> Vec<Allocator> {
        let preloads: Vec<PathBuf> = closure
            .iter()
            .filter(|o| o.preloaded)
            .map(|o| o.path.clone())
            .collect();
        let objects: Vec<Object> = closure
            .iter()
            .filter_map(|o| {
                let inode = fs::metadata(&o.path).ok()?.ino();
                let name = o.path.file_name()?.to_str()?.to_owned();
                let defines = defines_from(|n| o.info.defined.contains(n));
                self.objects
                    .insert((inode, o.path.clone()), (defines.clone(), o.info.clone()));
                Some(Object {
                    path: o.path.clone(),
                    name,
                    is_exe: o.is_exe,
                    host_path: o.path.clone(),
                    inode,
                    defines,
                    info: o.info.clone(),
                })
            })
            .collect();
        roles(&objects, &preloads)
    }
}

/// What each object is probed for, in the dynamic linker's search order.
fn roles(objects: &[Object], preloads: &[PathBuf]) -> Vec<Allocator> {
    let order = search_order(objects, preloads);
    let pick =
        |wanted: &dyn Fn(&Object) -> bool| order.iter().copied().find(|&i| wanted(&objects[i]));
    let malloc = pick(&|o| o.defines.malloc_and_free);
    let new = pick(&|o| o.defines.new);
    // The `mmap` the program calls: the C library's wrapper, or one that interposes on it
    // (tcmalloc defines its own, to see the program's mappings).
    let mmap = pick(&|o| o.defines.mmap);
    order
        .iter()
        .map(|&i| {
            let o = &objects[i];
            let roles = Roles {
                malloc: malloc == Some(i),
                new: new == Some(i),
                // An allocator's own deletes free without `free` (a C library has none).
                delete: malloc == Some(i) && o.defines.delete && o.defines.new,
                prefixes: o.defines.prefixes.clone(),
                mmap: mmap == Some(i),
            };
            Allocator {
                roles,
                name: name_of(o),
                path: o.path.clone(),
                host_path: o.host_path.clone(),
                inode: o.inode,
            }
        })
        .filter(|a| a.roles.any())
        .collect()
}

/// The dynamic linker's search order, as indices into `objects`: the executable, the preloaded
/// objects, then the breadth-first walk of `DT_NEEDED` from those; objects it never reaches
/// (loaded by `dlopen`) come last, in mapping order.
fn search_order(objects: &[Object], preloads: &[PathBuf]) -> Vec<usize> {
    let mut order: Vec<usize> = Vec::new();
    let add = |i: usize, order: &mut Vec<usize>| {
        let new = !order.contains(&i);
        if new {
            order.push(i);
        }
        new
    };
    if let Some(exe) = objects.iter().position(|o| o.is_exe) {
        add(exe, &mut order);
    }
    for preload in preloads {
        let file = preload.file_name().and_then(|n| n.to_str());
        let found = objects
            .iter()
            .position(|o| o.path == *preload || file.is_some_and(|f| o.is(f)));
        if let Some(i) = found {
            add(i, &mut order);
        }
    }
    let mut queue: std::collections::VecDeque<usize> = order.iter().copied().collect();
    while let Some(i) = queue.pop_front() {
        for needed in &objects[i].info.needed {
            if let Some(dep) = objects.iter().position(|o| o.is(needed))
                && add(dep, &mut order)
            {
                queue.push_back(dep);
            }
        }
    }
    for i in 0..objects.len() {
        add(i, &mut order);
    }
    order
}

fn name_of(o: &Object) -> &'static str {
    if is_libc(&o.name) {
        if o.name == "libc.so.6" || o.name.starts_with("libc-") {
            "glibc"
        } else {
            "musl"
        }
    } else if let Some(name) = o.defines.name {
        name
    } else if is_cxx_runtime(&o.name) {
        "c++ runtime"
    } else {
        "allocator"
    }
}

/// The file a mapping shows, as the host reaches it.
fn host_path(target: &Target, m: &Mapping, path: &Path) -> PathBuf {
    let by_map = PathBuf::from(format!(
        "/proc/{}/map_files/{:x}-{:x}",
        target.pid, m.start, m.end
    ));
    if by_map.exists() {
        by_map
    } else {
        target.host_path(path)
    }
}

/// The objects in the process's `LD_PRELOAD` (its environment at exec, which is what the
/// dynamic linker read), in order, each as named and, when that is a link, as its target (a
/// mapping shows the file it resolved to).
fn preloads(target: &Target) -> Vec<PathBuf> {
    let Some((_, list)) = super::environ(target.pid)
        .into_iter()
        .find(|(name, _)| name == "LD_PRELOAD")
    else {
        return Vec::new();
    };
    let mut paths = Vec::new();
    for entry in list
        .to_string_lossy()
        .split([' ', ':'])
        .filter(|p| !p.is_empty())
    {
        let path = PathBuf::from(entry);
        let resolved = fs::read_link(target.host_path(&path))
            .ok()
            .map(|link| path.parent().map_or(link.clone(), |dir| dir.join(link)));
        paths.push(path);
        paths.extend(resolved);
    }
    paths
}

/// Reads which allocator symbols an object defines, and what it needs. An unreadable or
/// malformed file defines nothing (logged): it is then not probed, and the rest of the process
/// still is.
fn read_object(path: &Path, is_exe: bool) -> (Defines, ObjectInfo) {
    match super::symbols::read(path, is_exe, &wanted_symbols()) {
        Ok(info) => (defines_from(|name| info.defined.contains(name)), info),
        Err(err) => {
            debug!(path = %path.display(), %err, "cannot read the symbols of a mapped object");
            (Defines::default(), ObjectInfo::default())
        }
    }
}

fn defines_from(has: impl Fn(&str) -> bool) -> Defines {
    let name = if has("mallocx") || has("je_mallocx") || has("_rjem_mallocx") {
        Some("jemalloc")
    } else if has("tc_malloc") {
        Some("tcmalloc")
    } else if has("mi_malloc") {
        Some("mimalloc")
    } else if has("__libc_malloc") {
        // glibc linked into a static executable.
        Some("glibc")
    } else {
        None
    };
    Defines {
        malloc_and_free: has("malloc") && has("free"),
        new: has("_Znwm"),
        delete: has("_ZdlPv"),
        mmap: has("mmap"),
        prefixes: PREFIXES
            .iter()
            .copied()
            .filter(|p| has(&format!("{p}malloc")) && has(&format!("{p}free")))
            .collect(),
        name,
    }
}

/// The symbol names [`Finder`] asks objects about.
pub fn wanted_symbols() -> Vec<String> {
    let mut names: Vec<String> = [
        "malloc",
        "free",
        "_Znwm",
        "_ZdlPv",
        "mmap",
        "mallocx",
        "tc_malloc",
        "__libc_malloc",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for p in PREFIXES {
        names.extend(["malloc", "free", "mallocx"].map(|f| format!("{p}{f}")));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_glibc_and_musl_names() {
        for name in [
            "libc.so.6",
            "libc-2.31.so",
            "ld-musl-x86_64.so.1",
            "libc.musl-x86_64.so.1",
            "libc.so",
        ] {
            assert!(is_libc(name), "{name}");
        }
        for name in ["libcrypto.so.3", "libc++.so.1", "libcap.so.2", "node"] {
            assert!(!is_libc(name), "{name}");
        }
        assert!(is_cxx_runtime("libstdc++.so.6"));
        assert!(is_cxx_runtime("libc++.so.1"));
        assert!(!is_cxx_runtime("libc.so.6"));
    }

    #[test]
    fn allocators_are_named_by_their_symbols() {
        let of = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
            defines_from(|n| names.iter().any(|m| m == n))
        };
        let jemalloc = of(&["malloc", "free", "mallocx", "_Znwm", "_ZdlPv"]);
        assert_eq!(jemalloc.name, Some("jemalloc"));
        assert!(jemalloc.malloc_and_free && jemalloc.new && jemalloc.delete);
        let prefixed = of(&["je_malloc", "je_free", "je_mallocx"]);
        assert_eq!(prefixed.name, Some("jemalloc"));
        assert!(!prefixed.malloc_and_free);
        assert_eq!(prefixed.prefixes, vec!["je_"]);
        let mimalloc = of(&["malloc", "free", "mi_malloc", "mi_free"]);
        assert_eq!(mimalloc.name, Some("mimalloc"));
        assert_eq!(mimalloc.prefixes, vec!["mi_"]);
        assert_eq!(of(&["malloc", "free", "tc_malloc"]).name, Some("tcmalloc"));
        assert_eq!(
            of(&["malloc", "free", "__libc_malloc", "mmap"]).name,
            Some("glibc")
        );
        let stdcxx = of(&["_Znwm", "_ZdlPv"]);
        assert!(stdcxx.new && !stdcxx.malloc_and_free);
    }
}
