//! Which mapped object serves a process's malloc and free.

use std::path::PathBuf;

use super::{Target, maps::Mapping};

/// The C library a process allocates through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocator {
    /// The path as the process names it.
    pub path: PathBuf,
    /// The same file as the host reaches it (through `/proc/PID/root`).
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

/// The C library among a process's executable mappings.
pub fn find(target: &Target, mappings: &[Mapping]) -> Option<Allocator> {
    mappings.iter().filter(|m| m.is_executable()).find_map(|m| {
        let path = m.path.as_ref()?;
        let name = path.file_name()?.to_str()?;
        is_libc(name).then(|| Allocator {
            path: path.clone(),
            host_path: target.host_path(path),
            inode: m.inode,
        })
    })
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
    }
}
