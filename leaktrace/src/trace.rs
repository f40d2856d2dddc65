//! One trace from start to report: attach, sample the probes' totals at each interval, end on
//! the first of duration, signal or the targets' exit, detach, then build the report.

use std::{ffi::OsString, path::PathBuf};

use anyhow::bail;
use tokio::sync::oneshot;
use tracing::info;

use crate::{
    doctor, preflight,
    process::{Target, allocator, loader, spawn},
    report::Report,
    session::{Session, StopSignals},
};

/// How to trace: the session's options, as the command line chose them.
pub use crate::session::Options;

/// Added to `NODE_OPTIONS` for the commands `run` starts: V8 then writes /tmp/perf-PID.map,
/// which names JIT-compiled and interpreted JavaScript frames. Node accepts both flags in
/// `NODE_OPTIONS`, and children inherit the variable, so a test runner's workers have them too.
pub const NODE_PERF_MAP_OPTIONS: &str = "--perf-basic-prof --interpreted-frames-native-stack";

/// What to trace.
pub enum Start {
    /// Running processes, by PID.
    Attach(Vec<u32>),
    /// A command started by leaktrace and traced from its first instruction.
    Run(Vec<OsString>),
}

/// A finished trace.
pub struct Outcome {
    pub report: Report,
    /// The exit status of the command started by `run`.
    pub exit_code: Option<i32>,
}

/// Runs one trace to its end.
pub async fn trace(start: Start, options: &Options) -> anyhow::Result<Outcome> {
    preflight::check()?;
    let gated: Vec<Option<u32>> = match &start {
        Start::Attach(pids) => pids.iter().map(|&p| Some(p)).collect(),
        Start::Run(_) => vec![None],
    };
    for pid in gated {
        doctor::gate(pid, options.follow)
            .map_err(|line| anyhow::anyhow!("refusing to trace: {line}"))?;
    }
    let mut stop = StopSignals::install()?;
    match start {
        Start::Attach(pids) => {
            let mut targets = Vec::new();
            for pid in pids {
                let target = Target::open(pid)?;
                if !target.is_alive() {
                    bail!("process {pid} has exited (it is a zombie waiting for its parent)");
                }
                let allocator = target.allocator()?;
                targets.push((target, allocator));
            }
            let mut session = Session::new(options)?;
            for (target, allocator) in targets {
                session.attach(target, &allocator)?;
            }
            session.announce();
            let (ended_by, _) = session.run(options, &mut stop, None).await?;
            Ok(Outcome {
                report: session.finish(options, ended_by)?,
                exit_code: None,
            })
        }
        Start::Run(argv) => {
            let env = if options.node_perf_maps {
                let mut node_options = std::env::var_os("NODE_OPTIONS").unwrap_or_default();
                if !node_options.is_empty() {
                    node_options.push(" ");
                }
                node_options.push(NODE_PERF_MAP_OPTIONS);
                vec![(OsString::from("NODE_OPTIONS"), node_options)]
            } else {
                Vec::new()
            };
            let held = spawn::hold(&argv, &env)?;
            let pid = held.pid;
            let mut session = match Session::new(options) {
                Ok(session) => session,
                Err(err) => {
                    // The child would run untraced: end it before reporting the error.
                    // SAFETY: signalling the child this function forked.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    drop(held);
                    reap(pid);
                    return Err(err);
                }
            };
            // The objects the command will load, resolved as its dynamic linker will: probed
            // now, they are armed from its first instruction.
            let child_env: Vec<(OsString, OsString)> = std::env::vars_os()
                .filter(|(k, _)| !env.iter().any(|(name, _)| name == k))
                .chain(env.iter().cloned())
                .collect();
            let closure = loader::closure(
                &held.path,
                &loader::LoaderEnv::from_vars(child_env.iter().map(|(k, v)| (k, v))),
                &allocator::wanted_symbols(),
            );
            let planned = allocator::Finder::default().find_planned(&closure);
            let mut target = Target::open(pid)?;
            target.command = argv
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ");
            if planned.iter().any(|a| a.roles.malloc) {
                session.attach_planned(target, &planned)?;
            } else {
                // Nothing resolvable (the file is not one the loader reads): the probes go
                // where the held child's own C library is, as for any process.
                let allocator = target.allocator()?;
                session.attach_planned(target, &[allocator])?;
            }
            session.announce();
            held.release()?;
            let (tx, mut exited) = oneshot::channel();
            tokio::task::spawn_blocking(move || {
                let _ = tx.send(reap(pid));
            });
            let (ended_by, status) = session.run(options, &mut stop, Some(&mut exited)).await?;
            let code = match status {
                Some(code) => code,
                None => {
                    if ended_by == "signal" {
                        // SAFETY: signalling the child this function started.
                        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                    }
                    session.end_trace()?;
                    info!(pid, "tracing ended; waiting for the command to finish");
                    exited.await.unwrap_or(1)
                }
            };
            if let Some(t) = session.traced.first_mut() {
                t.exit_code = Some(code);
            }
            let report = session.finish(options, ended_by)?;
            if options.node_perf_maps {
                remove_perf_maps(&report);
            }
            Ok(Outcome {
                report,
                exit_code: Some(code),
            })
        }
    }
}

/// Removes the perf maps the processes `run` started wrote because it asked them to: they
/// would pile up in /tmp run after run. Only processes of this run are concerned, and only
/// once they have exited (their maps were read into the report).
fn remove_perf_maps(report: &Report) {
    for target in report.targets.iter().filter(|t| !t.alive_at_end) {
        let path = PathBuf::from(format!("/tmp/perf-{}.map", target.pid));
        if path.exists()
            && let Err(err) = std::fs::remove_file(&path)
        {
            tracing::debug!(%err, path = %path.display(), "cannot remove a perf map");
        }
    }
}

/// Waits for a child and returns its exit status the way a shell reports it.
fn reap(pid: u32) -> i32 {
    let mut status = 0;
    // SAFETY: waiting on a child of this process.
    let r = unsafe { libc::waitpid(pid as i32, &raw mut status, 0) };
    if r < 0 {
        1
    } else if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

/// Why the report could not be written to `path`, checked before tracing so a trace is never
/// taken only to be lost.
pub fn output_path_problem(path: &std::path::Path) -> Option<String> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    if path.is_dir() {
        return Some(format!("{} is a directory", path.display()));
    }
    if !dir.is_dir() {
        return Some(format!("directory {} does not exist", dir.display()));
    }
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str())).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Some(format!("directory {} is not writable", dir.display()));
    }
    None
}
