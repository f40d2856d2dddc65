//! Starting a command held just before `exec`, so the probes are in place for its first call.
//!
//! `std::process::Command` cannot do this: its `spawn` waits until the child has exec'd, so a
//! child that waits for the tracer would deadlock it. This module forks by hand; between fork and
//! exec the child only makes async-signal-safe calls (read, execve, write, _exit).

use std::{
    ffi::{CString, OsString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("no command given after `--`")]
    Empty,
    #[error("command not found: {0} (not a path, and not in PATH)")]
    NotFound(String),
    #[error("argument contains a NUL byte: {0:?}")]
    Nul(OsString),
    #[error("cannot start {command}: {source}")]
    Exec {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("fork failed: {0}")]
    Fork(#[source] io::Error),
}

/// A forked child waiting for [`Held::release`] before it execs the command.
pub struct Held {
    pub pid: u32,
    /// The file it will exec, found as `execvp` finds it.
    pub path: PathBuf,
    program: String,
    go: OwnedFd,
    exec_error: OwnedFd,
}

/// Forks a child that will exec `argv` once released, with this process's environment and
/// `env` set over it.
pub fn hold(argv: &[OsString], env: &[(OsString, OsString)]) -> Result<Held, SpawnError> {
    let first = argv.first().ok_or(SpawnError::Empty)?;
    let program = resolve(Path::new(first))
        .ok_or_else(|| SpawnError::NotFound(first.to_string_lossy().into_owned()))?;
    let path = cstring(program.as_os_str().to_owned())?;
    let args = argv
        .iter()
        .map(|a| cstring(a.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !env.iter().any(|(name, _)| name == k))
        .collect();
    vars.extend(env.iter().cloned());
    let envs = vars
        .into_iter()
        .map(|(k, v)| {
            let mut pair = k;
            pair.push("=");
            pair.push(v);
            cstring(pair)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut env_ptrs: Vec<*const libc::c_char> = envs.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());

    let (go_read, go_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    // SAFETY: the child runs only async-signal-safe calls on memory prepared before the fork.
    match unsafe { libc::fork() } {
        -1 => Err(SpawnError::Fork(io::Error::last_os_error())),
        0 => unsafe {
            drop_in_child(&go_write, &err_read);
            let mut byte = 0u8;
            // Wait for the tracer; EOF (the tracer died) also releases the child, which then
            // runs untraced rather than hanging.
            while libc::read(go_read.as_raw_fd(), (&raw mut byte).cast(), 1) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            libc::execve(path.as_ptr(), arg_ptrs.as_ptr(), env_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(err_write.as_raw_fd(), (&raw const errno).cast(), 4);
            libc::_exit(127)
        },
        pid => Ok(Held {
            pid: pid as u32,
            path: program.clone(),
            program: first.to_string_lossy().into_owned(),
            go: go_write,
            exec_error: err_read,
        }),
    }
}

impl Held {
    /// Lets the child exec, and reports whether the exec succeeded.
    pub fn release(self) -> Result<(), SpawnError> {
        // SAFETY: plain reads and writes on pipe ends this value owns.
        unsafe {
            libc::write(self.go.as_raw_fd(), [1u8].as_ptr().cast(), 1);
            drop(self.go);
            let mut errno = 0i32;
            let n = loop {
                let n = libc::read(self.exec_error.as_raw_fd(), (&raw mut errno).cast(), 4);
                if n >= 0 || *libc::__errno_location() != libc::EINTR {
                    break n;
                }
            };
            if n == 4 {
                let mut status = 0;
                libc::waitpid(self.pid as i32, &raw mut status, 0);
                return Err(SpawnError::Exec {
                    command: self.program,
                    source: io::Error::from_raw_os_error(errno),
                });
            }
        }
        Ok(())
    }
}

/// Closes, in the child, the pipe ends that belong to the parent.
unsafe fn drop_in_child(go_write: &OwnedFd, err_read: &OwnedFd) {
    // SAFETY: closing descriptors the child inherited and will not use.
    unsafe {
        libc::close(go_write.as_raw_fd());
        libc::close(err_read.as_raw_fd());
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SpawnError::Fork(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn cstring(s: OsString) -> Result<CString, SpawnError> {
    CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul(s))
}

/// The file `execvp` would run: a name with a slash as is, anything else searched in PATH.
fn resolve(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.as_os_str().as_bytes().contains(&b'/') {
        return executable(program).then(|| program.to_path_buf());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_execvp() {
        assert_eq!(
            resolve(Path::new("sh")).map(|p| p.is_absolute()),
            Some(true)
        );
        assert_eq!(
            resolve(Path::new("/bin/sh")),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(resolve(Path::new("no-such-command-leaktrace")), None);
        assert_eq!(resolve(Path::new("./no/such")), None);
    }
}
