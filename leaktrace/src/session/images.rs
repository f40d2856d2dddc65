//! Allocator objects a target maps after its probes were placed: a C++ runtime loaded by
//! `dlopen`, the C library of an image it exec'd. Each is probed when the session sees it, and
//! what it could not probe, or probed late, is said in the target's report.

use std::path::PathBuf;

use tracing::{debug, info, warn};

use super::Session;
use crate::process::allocator;

impl Session {
    /// Probes allocator libraries the target has mapped since last look: a C++ runtime loaded
    /// by dlopen, or the C library of an image it exec'd. Failing here is warned about, and the
    /// trace goes on. `late`: the process has been running, so what these objects allocated
    /// before is missed (said in its report).
    pub(crate) fn attach_runtimes(&mut self, index: usize, late: bool) {
        if !self.probes.traps() {
            return;
        }
        let traced = &self.traced[index];
        let allocators = self
            .allocators
            .find_all(&traced.target, self.symbolizer.mappings(traced.target.pid));
        for lib in allocators {
            self.attach_runtime(index, &lib, late);
        }
        // A libuv mapped since (dlopen): its thread pool too.
        let pid = self.traced[index].target.pid;
        self.pools
            .probe_new(&mut self.probes, pid, self.symbolizer.mappings(pid), late);
    }

    /// Probes the allocators of the images targets exec'd since last look. A target gone since
    /// waits until the kernel's records of what it mapped are all in (found gone a while ago,
    /// or `flush`: the trace ends), then its report says what could not be probed.
    pub(super) fn probe_new_images(&mut self, flush: bool) {
        if !self.probes.traps() {
            self.new_images.clear();
            return;
        }
        let pids: Vec<u32> = self.new_images.iter().copied().collect();
        for pid in pids {
            let Some(index) = self.traced.iter().position(|t| t.target.pid == pid) else {
                self.new_images.remove(&pid);
                continue;
            };
            let traced = &self.traced[index];
            let settled = flush
                || traced
                    .detached_at
                    .is_some_and(|at| at.elapsed() >= 5 * crate::collect::sideband::SETTLE);
            if settled || traced.target.is_alive() {
                self.new_images.remove(&pid);
                self.probe_new_image(index);
            }
        }
    }

    /// Probes the allocators of the image target `index` just exec'd, from the objects its
    /// loader maps (resolved as for `run`, with its own environment): the exec was seen only
    /// as it happened, so they are probed a few milliseconds late, and said to be.
    fn probe_new_image(&mut self, index: usize) {
        let pid = self.traced[index].target.pid;
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            self.note_unprobed_image(index);
            return;
        };
        let vars = crate::process::environ(pid);
        let root = format!("/proc/{pid}/root");
        // The image as the process names it, reached under its root (a container's own).
        let exe = std::path::Path::new(&root).join(exe.strip_prefix("/").unwrap_or(&exe));
        let closure = crate::process::loader::closure(
            &exe,
            &crate::process::loader::LoaderEnv::from_vars(vars.iter().map(|(k, v)| (k, v))),
            &allocator::wanted_symbols(),
        );
        for lib in self.allocators.find_planned(&closure) {
            self.attach_runtime(index, &lib, true);
        }
    }

    /// Target `index` exec'd and was gone before its new image could be looked at (a test
    /// binary of a millisecond): the allocators among the files the kernel says it mapped that
    /// no probe covered are named in its report, since what it allocated through them is missed.
    fn note_unprobed_image(&mut self, index: usize) {
        let traced = &self.traced[index];
        let pid = traced.target.pid;
        // Its root went with it: the files are read by the paths it mapped them at.
        let mut gone = traced.target.clone();
        gone.root = PathBuf::from("/");
        let missed: Vec<PathBuf> = self
            .allocators
            .find_all(&gone, self.symbolizer.mappings(pid))
            .into_iter()
            .filter(|lib| {
                lib.inode != traced.attachment.allocator.inode
                    && !traced.runtimes.contains(&lib.inode)
                    && !self.probes.covers(lib.inode)
            })
            .map(|lib| lib.path)
            .collect();
        debug!(
            pid,
            mapped = self.symbolizer.mappings(pid).len(),
            ?missed,
            "an image gone before it could be probed"
        );
        if !missed.is_empty() {
            self.traced[index].gone_after_exec = Some(missed);
        }
    }

    /// Probes one more allocator object of target `index`, unless it is probed already.
    pub(super) fn attach_runtime(
        &mut self,
        index: usize,
        lib: &crate::process::Allocator,
        late: bool,
    ) {
        // Watched processes are not probed: what they populate is counted from their faults.
        if !self.probes.traps() {
            return;
        }
        let traced = &mut self.traced[index];
        if lib.inode == traced.attachment.allocator.inode || traced.runtimes.contains(&lib.inode) {
            return;
        }
        traced.runtimes.push(lib.inode);
        // Following, a file's probes serve every process: a child has its parent's.
        if self.probes.covers(lib.inode) {
            return;
        }
        match self.probes.attach_more(&traced.target, lib) {
            Ok(functions) => {
                info!(pid = traced.target.pid, library = %lib.path.display(), late, "probed");
                traced.attachment.functions.extend(functions);
                if late {
                    let at = self.started.elapsed().as_secs_f64();
                    traced.late.push((lib.path.clone(), at));
                }
            }
            Err(err) => {
                warn!(
                    pid = traced.target.pid,
                    library = %lib.path.display(),
                    %err,
                    "cannot probe this allocator library: its allocations are missed"
                );
                // Said in its report too: an exec'd image gone before its probes were in, or
                // an object the kernel would not probe.
                if late && !traced.target.is_alive() {
                    traced
                        .gone_after_exec
                        .get_or_insert_with(Vec::new)
                        .push(lib.path.clone());
                } else {
                    traced.unprobed.push((lib.path.clone(), err.to_string()));
                }
            }
        }
    }
}
