//! Which mapped object serves a process's malloc and free.

use std::path::PathBuf;

use super::{Target, maps::Mapping};

/// Which allocation interface a library provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocatorKind {
    /// The C library: malloc and its family, and free.
    Libc,
    /// The C++ runtime: the `operator new` family (deletes reach `free`, probed in libc).
    Cxx,
}

/// A library a process allocates through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocator {
    pub kind: AllocatorKind,
    /// The path as the process names it.
    pub path: PathBuf,
    /// The same file as the host reaches it: `/proc/PID/map_files/<range>`, the very file
    /// mapped (a path in `/proc/PID/maps` is relative to the reader's root, which is not the
    /// container's), else through `/proc/PID/root`.
    pub host_path: PathBuf,
    /// Inode of the file: the same library in several processes is one probe target.
    pub inode: u64,
}

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
pub fn is_libc_path(path: Option<&std::path::Path>) -> bool {
    path.and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .is_some_and(is_libc)
}

/// File names of the C++ runtimes whose `operator new` is probed.
fn is_cxx_runtime(name: &str) -> bool {
    name.starts_with("libstdc++.so") || name.starts_with("libc++.so")
}

/// The C library among a process's executable mappings.
pub fn find(target: &Target, mappings: &[Mapping]) -> Option<Allocator> {
    find_all(target, mappings)
        .into_iter()
        .find(|a| a.kind == AllocatorKind::Libc)
}

/// Every allocator library among a process's executable mappings, each once.
pub fn find_all(target: &Target, mappings: &[Mapping]) -> Vec<Allocator> {
    let mut found: Vec<Allocator> = Vec::new();
    for m in mappings.iter().filter(|m| m.is_executable()) {
        let Some(path) = m.path.as_ref() else {
            continue;
        };
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let kind = if is_libc(name) {
            AllocatorKind::Libc
        } else if is_cxx_runtime(name) {
            AllocatorKind::Cxx
        } else {
            continue;
        };
        if found.iter().all(|a| a.path != *path) {
            let by_map = PathBuf::from(format!(
                "/proc/{}/map_files/{:x}-{:x}",
                target.pid, m.start, m.end
            ));
            found.push(Allocator {
                kind,
                path: path.clone(),
                host_path: if by_map.exists() {
                    by_map
                } else {
                    target.host_path(path)
                },
                inode: m.inode,
            });
        }
    }
    found
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
}
