//! What the kernel's side-band records change in a session: mapped files opened while their
//! process lives, children followed from their fork, execs noticed (a new image's allocators
//! to probe, its V8 to name), exits.

use std::time::{Duration, Instant};

use leaktrace_common::StackKey;
use tracing::info;

use super::{Session, pace::SIDEBAND_BUSY};
use crate::collect::{Snapshot, sideband::Change};

/// How long a record of a process not (yet) known is kept: its fork record may come from
/// another CPU's ring a little later.
const UNKNOWN_KEPT: Duration = Duration::from_millis(200);
/// Most such records kept: the rest of the host's processes map files too.
const UNKNOWN_MAX: usize = 4096;

impl Session {
    /// Takes in what the kernel recorded of mappings, forks and execs since last look (see
    /// `collect::sideband`): each file a process maps is opened as soon as it is reported, so
    /// that its stacks can be named however soon it exits. Children are followed from their
    /// fork record when process trees are. `flush`: the trace ends, take every record read.
    /// Returns whether the read was busy: a record concerned a target, or there were many.
    /// Watch mode's sampled pages are taken in too (they never make the read busy: the ring
    /// holds far more than the longest pause between reads).
    pub(crate) fn apply_sideband(&mut self, flush: bool) -> bool {
        self.residency.drain(&mut self.probes);
        let mut changes = Vec::new();
        self.sideband.drain(flush, |change| changes.push(change));
        let busy = changes.len() >= SIDEBAND_BUSY
            || changes.iter().any(|change| match change {
                Change::Map { pid, .. } | Change::Exec { pid, .. } => self.symbolizer.tracks(*pid),
                Change::Fork { parent, .. } => self.symbolizer.tracks(*parent),
                Change::Exit { .. } => false,
            });
        let follow = self.probes.follows();
        // A followed child is a target from its fork: adopted now, its exec is seen as it
        // happens.
        if follow && !changes.is_empty() {
            self.adopt_children();
        }
        for change in changes {
            self.apply_change(change, follow);
        }
        self.probe_new_images(false);
        let now = Instant::now();
        self.unknown
            .retain(|(seen, _)| now.duration_since(*seen) < UNKNOWN_KEPT && !flush);
        if self.unknown.len() > UNKNOWN_MAX {
            let excess = self.unknown.len() - UNKNOWN_MAX;
            self.unknown.drain(..excess);
        }
        busy
    }

    fn apply_change(&mut self, change: Change, follow: bool) {
        match change {
            Change::Map {
                pid,
                start,
                len,
                pgoff,
                prot,
                inode,
                ref path,
                ..
            } => {
                if !self.symbolizer.tracks(pid) {
                    self.unknown.push((Instant::now(), change));
                    return;
                }
                if path.is_absolute() && self.exe_unknown.remove(&pid) {
                    self.commands.insert(pid, path.display().to_string());
                }
                let exec = prot & libc::PROT_EXEC as u32 != 0;
                // JIT code (anonymous) has no table to walk by.
                if exec && path.is_absolute() {
                    self.unwinder.code_mapped(pid);
                }
                let mapping = crate::process::maps::Mapping {
                    start,
                    end: start.saturating_add(len),
                    perms: [
                        if prot & libc::PROT_READ as u32 != 0 {
                            b'r'
                        } else {
                            b'-'
                        },
                        if prot & libc::PROT_WRITE as u32 != 0 {
                            b'w'
                        } else {
                            b'-'
                        },
                        if exec { b'x' } else { b'-' },
                        b'p',
                    ],
                    offset: pgoff,
                    inode,
                    // Anonymous code (JIT) is `//anon`; labels such as `[vdso]` are kept as
                    // /proc/PID/maps shows them.
                    path: (path.is_absolute() || path.starts_with("[")).then(|| path.clone()),
                };
                self.symbolizer.mapped(pid, mapping);
            }
            Change::Fork { parent, child } => {
                if !follow || !self.symbolizer.tracks(parent) || self.symbolizer.tracks(child) {
                    return;
                }
                self.symbolizer.forked(parent, child);
                if let Some(command) = self.commands.get(&parent).cloned() {
                    self.commands.insert(child, command);
                }
                // Its own records may have come first, from another CPU's ring.
                let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unknown)
                    .into_iter()
                    .partition(|(_, c)| matches!(c, Change::Map { pid, .. } if *pid == child));
                self.unknown = others;
                for (_, change) in mine {
                    self.apply_change(change, follow);
                }
            }
            Change::Exec { pid, comm } => {
                // `run`'s own exec of its command: its command line is the one it was given.
                if self.symbolizer.tracks(pid) && !self.held_for_exec.remove(&pid) {
                    self.exec_commands.insert(pid);
                    match crate::process::command_line(pid) {
                        Some(command) => {
                            self.commands.insert(pid, command);
                        }
                        // Gone already: its name for now, its executable's path once the
                        // kernel's record of mapping it is read (the next one).
                        None => {
                            self.commands.insert(pid, comm);
                            self.exe_unknown.insert(pid);
                        }
                    }
                }
                // Looked at once this batch's records (its new mappings) are in.
                self.new_images.insert(pid);
            }
            Change::Exit { .. } => {}
        }
    }

    /// Notices that target `index` exec'd since last look (the probes count its execs): the
    /// stacks of the old image are named now, from the mappings remembered before the exec,
    /// which the new ones are about to replace. Called before any new mappings are remembered.
    pub(super) fn notice_exec(&mut self, index: usize, snapshot: &Snapshot) {
        let traced = &mut self.traced[index];
        let pid = traced.target.pid;
        let execs = self.probes.execs(pid);
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            return;
        };
        let exec_seen = execs != traced.execs;
        if exec_seen {
            traced.execs = execs;
            for (key, chain) in self.chains.iter().filter(|(k, _)| k.tgid == pid) {
                self.symbolizer.resolve(key.tgid, chain);
            }
            // Said in the report when the old image held memory: its blocks went with the exec
            // and are never freed, so they stay counted as live. The old image's stacks are the
            // ones with a frame outside what the process maps now (its libraries were mapped
            // elsewhere, and the C library too, whatever the new image is).
            // Gone already: nothing to compare with, and nothing said.
            let now = crate::process::Target::open(pid)
                .and_then(|t| t.mappings())
                .unwrap_or_default();
            let mapped_now = |ip: u64| {
                now.iter()
                    .any(|m| m.is_executable() && (m.start..m.end).contains(&ip))
            };
            let live: Vec<StackKey> = snapshot
                .sites
                .iter()
                .filter(|(k, v)| k.tgid == pid && v.live_bytes > 0 && !k.is_mapping())
                .map(|(k, _)| *k)
                .collect();
            let held = !now.is_empty()
                && live.iter().any(|key| {
                    self.stacks
                        .frames(&self.probes, key.stack)
                        .is_ok_and(|ips| ips.iter().any(|&ip| !mapped_now(ip)))
                });
            if held {
                let at = self.started.elapsed().as_secs_f64();
                let was = traced
                    .exe
                    .as_ref()
                    .map_or_else(|| "?".to_string(), |old| old.display().to_string());
                let note = format!(
                    "at {at:.1}s PID {pid} exec'd {} (was {was}): memory the old image held was \
                     released by the exec but stays counted as live",
                    exe.display(),
                );
                info!("{note}");
                self.notes.push(note);
            }
        }
        traced.exe = Some(exe);
        if exec_seen {
            // The new image may run another V8, or none.
            self.name_js_of(pid);
        }
    }
}
