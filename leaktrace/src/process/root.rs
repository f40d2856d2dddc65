//! Opening a file as a target names it, under the target's root and never outside it.
//!
//! A path joined to `/proc/PID/root` is walked by the kernel from the container's root, but an
//! absolute symbolic link met on the way restarts from the *tracer's* root: a container could
//! point leaktrace, which runs as root, at any file of the host. `openat2` with
//! `RESOLVE_IN_ROOT` resolves every link inside the target's root instead, and a link loop
//! ends in `ELOOP` rather than a hang.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// Opens `path` (absolute, as process `pid` names it) read-only, resolved inside its root.
pub fn open(pid: u32, path: &Path) -> io::Result<File> {
    open_under(Path::new(&format!("/proc/{pid}/root")), path)
}

/// Opens `path` read-only, resolved as if `root` were `/`.
pub fn open_under(root: &Path, path: &Path) -> io::Result<File> {
    let root = File::open(root)?;
    let relative = path.strip_prefix("/").unwrap_or(path);
    let name = CString::new(relative.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    // SAFETY: plain data; all zeroes is a valid `open_how` (libc marks it non-exhaustive).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid descriptor, NUL-terminated path and a correctly sized `open_how`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            name.as_ptr(),
            &raw const how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just opened for us, owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use std::{fs, io::Read as _, os::unix::fs::symlink};

    use super::*;

    #[test]
    fn links_resolve_inside_the_root_and_loops_end() {
        let dir = std::env::temp_dir().join(format!("leaktrace-root-{}", std::process::id()));
        let root = dir.join("root");
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::write(root.join("secret"), b"the container's own").unwrap();
        // An absolute link: inside the root it names the root's /secret, not the host's.
        symlink("/secret", root.join("tmp/link")).unwrap();
        let mut text = String::new();
        open_under(&root, Path::new("/tmp/link"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "the container's own");
        // `..` cannot climb out either.
        symlink("../../../../../../etc/hostname", root.join("tmp/up")).unwrap();
        assert!(open_under(&root, Path::new("/tmp/up")).is_err());
        // A loop is an error, not a hang.
        symlink("/tmp/b", root.join("tmp/a")).unwrap();
        symlink("/tmp/a", root.join("tmp/b")).unwrap();
        let err = open_under(&root, Path::new("/tmp/a")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        fs::remove_dir_all(&dir).unwrap();
    }
}
