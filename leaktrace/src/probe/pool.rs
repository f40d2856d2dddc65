//! Finding libuv's thread pool in an object (a node binary that links libuv statically, or
//! `libuv.so`), so that work queued to the pool can be stitched to the code that queued it.
//!
//! Four places are probed (see `leaktrace-ebpf`'s `queue`): where work is queued
//! (`uv__work_submit`, a local symbol, and the exported `uv_queue_work`, into which the compiler
//! inlines its submit), inside the pool's `worker`, the indirect call `w->work(w)` and the
//! instruction after it, and inside `uv__work_done`, on the loop thread, the indirect call of
//! the work's callback `w->done(w, err)` and the instruction after it. libuv exports none of
//! these internals: the calls are found by decoding the functions.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic, OpKind, Register};
use tracing::{debug, warn};

use super::placement::{self, Handling, PlacementError};
use crate::process::{
    file_memo::{FileId, FileMemo},
    maps::Mapping,
};

/// File offsets of the probe points of one object's thread pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSites {
    /// `uv__work_submit`'s entry, when its symbol is there.
    pub submit: Option<u64>,
    /// `uv_queue_work`'s entry.
    pub queue_work: u64,
    /// `worker`'s call `w->work(w)`.
    pub begin: u64,
    /// The instruction after that call.
    pub end: u64,
    /// `uv__work_done`'s call `w->done(w, err)` and the instruction after it, when its symbol
    /// is there and the call was recognised.
    pub callback: Option<(u64, u64)>,
}

/// Why an object's pool cannot be probed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The object has no libuv (no `uv_queue_work`).
    #[error("no libuv")]
    NoLibuv,
    /// libuv is there, but neither the symbol of its pool's worker (the object is stripped)
    /// nor code that looks like its call of the work.
    #[error(
        "its libuv has no symbol for the thread pool's worker (stripped), and its call of \
             the work was not found in the code"
    )]
    Stripped,
    /// `worker` is there but its call of the work is not recognised.
    #[error("the thread pool's worker does not call its work the way libuv does ({0})")]
    UnknownWorker(String),
    #[error("reading its symbols: {0}")]
    Elf(String),
}

/// Maps the object at `path` to be read: mostly `node` itself, 100 MB of which finding the pool
/// needs its symbol tables and three functions. Read whole, it cost the agent's first exact
/// window on each `node` binary (and `attach`'s start) 75 ms of copying and 100 MB of memory;
/// read through `object`'s `ReadCache`, a syscall per symbol name, each one traced by that
/// window's own syscall tracepoints (0.64 s of CPU, measured).
fn map(path: &std::path::Path) -> std::io::Result<memmap2::Mmap> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the mapping is only read, and only while `find` runs. The object is an executable
    // or library a live process maps (its `/proc/PID/exe` or `map_files` link): rewriting it in
    // place would break that process too, and packages replace such files by renaming. A file
    // truncated under the read would fault the tracer as it would the target; blazesym maps the
    // same files to symbolize them.
    unsafe { memmap2::Mmap::map(&file) }
}

/// Finds the pool's probe points in the ELF file `elf`.
pub fn find(elf: &[u8]) -> Result<PoolSites, PoolError> {
    let lookup = |name: &str| match placement::function_bytes(elf, name, placement::MAX_SCAN_BYTES)
    {
        Ok(code) => Ok(Some(code)),
        Err(PlacementError::SymbolNotFound(_)) => Ok(None),
        Err(err) => Err(PoolError::Elf(err.to_string())),
    };
    let queue_work = lookup("uv_queue_work")?.ok_or(PoolError::NoLibuv)?;
    let submit = lookup("uv__work_submit")?.map(|code| code.file_offset);
    let (begin, len) = match lookup("worker")? {
        Some(worker) => {
            let (at, len) = work_call(&worker.bytes, worker.address)?;
            (worker.file_offset + (at - worker.address), len)
        }
        None => scan_for_work_call(elf)?,
    };
    // Work runs without its callback stitched rather than not at all.
    let callback =
        lookup("uv__work_done")?.and_then(|done| match work_call(&done.bytes, done.address) {
            Ok((at, len)) => {
                let at = done.file_offset + (at - done.address);
                Some((at, at + len))
            }
            Err(err) => {
                debug!(%err, "uv__work_done's call of the callback not found");
                None
            }
        });
    Ok(PoolSites {
        submit,
        queue_work: queue_work.file_offset,
        begin,
        end: begin + len,
        callback,
    })
}

/// The address and length of the one indirect call in `worker` (code at `ip`) that can be
/// `w->work(w)`, or in `uv__work_done` that can be `w->done(w, err)`: through a register, or
/// through memory addressed by a register. Calls through memory addressed by RIP are calls of
/// imported functions (`-fno-plt`), not of the work.
fn work_call(code: &[u8], ip: u64) -> Result<(u64, u64), PoolError> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut found = Vec::new();
    for insn in &mut decoder {
        if insn.is_invalid() || insn.flow_control() != FlowControl::IndirectCall {
            continue;
        }
        let through_work = match insn.op0_kind() {
            OpKind::Register => true,
            OpKind::Memory => !matches!(insn.memory_base(), Register::RIP | Register::None),
            _ => false,
        };
        if through_work {
            found.push(insn);
        }
    }
    let [call] = found[..] else {
        return Err(PoolError::UnknownWorker(format!(
            "{} candidate indirect calls",
            found.len()
        )));
    };
    let offset = (call.ip() - ip) as usize;
    let bytes = &code[offset..offset + call.len()];
    if placement::handling(&call, bytes) == Handling::Rejected {
        return Err(PoolError::UnknownWorker(format!(
            "the kernel cannot probe `{}`",
            placement::render(&call)
        )));
    }
    let after = offset + call.len();
    let mut next = Decoder::with_ip(64, &code[after..], call.next_ip(), DecoderOptions::NONE);
    let following = next.decode();
    let next_bytes = &code[after..(after + following.len()).min(code.len())];
    if following.is_invalid() || placement::handling(&following, next_bytes) == Handling::Rejected {
        return Err(PoolError::UnknownWorker(format!(
            "the kernel cannot probe `{}` after the call",
            placement::render(&following)
        )));
    }
    Ok((call.ip(), call.len() as u64))
}

/// Offset of `wq`, the queue link, in libuv's `struct uv__work { work, done, loop, wq }`: the
/// pool takes `&w->wq` off its queue and calls `w->work(w)` with `w = &wq - 0x18`.
const WQ_OFFSET: i64 = 0x18;

/// The file offset and length of `w->work(w)` in a libuv whose `worker` has no symbol (a
/// stripped `libuv.so`): the one place in its code that loads `rdi` with `q - 0x18` and calls
/// through the word at that same address. Its other indirect calls of the same base (`w->done`,
/// `req->work_cb`) call through another field.
fn scan_for_work_call(elf: &[u8]) -> Result<(u64, u64), PoolError> {
    use object::{Object as _, ObjectSection as _, SectionFlags, elf::SHF_EXECINSTR};
    let file = object::File::parse(elf).map_err(|err| PoolError::Elf(err.to_string()))?;
    let mut found = Vec::new();
    for section in file.sections() {
        let executable = matches!(section.flags(), SectionFlags::Elf { sh_flags }
            if sh_flags & u64::from(SHF_EXECINSTR) != 0);
        let (Some((file_offset, _)), Ok(code)) = (section.file_range(), section.data()) else {
            continue;
        };
        if !executable {
            continue;
        }
        for (ip, len) in work_calls_in(code, section.address()) {
            found.push((file_offset + (ip - section.address()), len));
        }
    }
    match found[..] {
        [call] => Ok(call),
        [] => Err(PoolError::Stripped),
        _ => Err(PoolError::UnknownWorker(format!(
            "{} places look like its call of the work",
            found.len()
        ))),
    }
}

/// The address and length of each `call [R - 0x18]` in `code` (at `ip`) right after
/// `lea rdi, [R - 0x18]`: `w->work(w)`.
fn work_calls_in(code: &[u8], ip: u64) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    let mut lea_rdi: Option<(Register, i64)> = None;
    for insn in Decoder::with_ip(64, code, ip, DecoderOptions::NONE) {
        let memory = (insn.memory_base(), insn.memory_displacement64() as i64);
        if insn.flow_control() == FlowControl::IndirectCall
            && insn.op0_kind() == OpKind::Memory
            && insn.memory_index() == Register::None
            && memory.1 == -WQ_OFFSET
            && lea_rdi == Some(memory)
        {
            found.push((insn.ip(), insn.len() as u64));
        }
        lea_rdi = (insn.mnemonic() == Mnemonic::Lea
            && insn.op0_register() == Register::RDI
            && insn.memory_index() == Register::None
            && insn.memory_base() != Register::RIP)
            .then_some(memory);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_call_is_the_register_addressed_one() {
        // lea rdi,[rbx-0x18]; call [rbx-0x18]; mov rax,[rbx-8]; call [rip+0x10] (an import)
        let code = [
            0x48, 0x8d, 0x7b, 0xe8, 0xff, 0x53, 0xe8, 0x48, 0x8b, 0x43, 0xf8, 0xff, 0x15, 0x10, 0,
            0, 0,
        ];
        assert_eq!(work_call(&code, 0x1000), Ok((0x1004, 3)));
    }

    #[test]
    fn two_candidate_calls_are_refused() {
        // call rax; call [rbx]; nop
        let code = [0xff, 0xd0, 0xff, 0x13, 0x90];
        assert!(matches!(
            work_call(&code, 0x1000),
            Err(PoolError::UnknownWorker(_))
        ));
    }

    #[test]
    fn a_stripped_libuv_is_found_by_its_call_of_the_work() {
        // lea rdi,[rbx-0x18]; call [rbx-0x18]; lea rdi,[rbx-0x18]; call [rbx-0x10] (w->done)
        let code = [
            0x48, 0x8d, 0x7b, 0xe8, 0xff, 0x53, 0xe8, 0x48, 0x8d, 0x7b, 0xe8, 0xff, 0x53, 0xf0,
        ];
        assert_eq!(work_calls_in(&code, 0x1000), [(0x1004, 3)]);
        let elf = std::fs::read("/usr/lib/x86_64-linux-gnu/libuv.so.1")
            .expect("libuv1 is installed here (cargo xtask setup)");
        let sites = find(&elf).expect("the stripped libuv's pool");
        assert_eq!(sites.submit, None);
        assert_eq!(sites.callback, None);
        assert!(sites.end > sites.begin);
    }

    #[test]
    fn node_links_libuv_with_its_pool_symbols() {
        let elf = std::fs::read("/usr/bin/node").expect("Node 20 is /usr/bin/node here");
        let sites = find(&elf).expect("node's pool");
        assert!(sites.submit.is_some());
        assert!(sites.end > sites.begin);
        // `call [rax-0x10]`: three bytes.
        let (call, after) = sites
            .callback
            .expect("uv__work_done's call of the callback");
        assert_eq!(after - call, 3);
    }
}

/// What a pool probed in part leaves unstitched, for the target's notes.
fn partly(sites: &PoolSites, object: &std::path::Path) -> Option<String> {
    let mut missing = Vec::new();
    if sites.submit.is_none() {
        missing.push(
            "its internal uv__work_submit has no symbol, so work queued through uv_queue_work \
             is shown with the code that queued it, fs and dns work without",
        );
    }
    if sites.callback.is_none() {
        missing.push(
            "its internal uv__work_done has no symbol, so what the callbacks of queued work \
             allocate (fs.readFile's buffers) is shown without the code that queued the work",
        );
    }
    (!missing.is_empty()).then(|| {
        format!(
            "libuv in {} is stripped: {}",
            object.display(),
            missing.join("; ")
        )
    })
}

/// What [`find`] said of each object: read once, whichever session asks.
static FOUND: FileMemo<Result<PoolSites, PoolError>> = FileMemo::new(64);

/// The thread pools of targets, each object's read once.
#[derive(Default)]
pub struct Pools {
    /// Per target: the objects looked at since its attach or exec (its executable as `None`,
    /// each libuv by its path), so that a look at every sample for a libuv mapped since
    /// (`dlopen`) reads nothing twice.
    looked: std::collections::HashMap<u32, std::collections::HashSet<Option<std::path::PathBuf>>>,
    /// Per target: what its report should say of its pools (not probed, probed in part, late).
    notes: std::collections::HashMap<u32, Vec<String>>,
}

impl Pools {
    /// Probes the thread pool of `pid`'s executable and of any libuv it maps, as at its attach
    /// or exec: what was probed for an earlier image is forgotten. A pool that cannot be probed
    /// is said once in the target's notes, and tracing goes on without it.
    pub fn probe(&mut self, probes: &mut super::Probes, pid: u32, mappings: &[Mapping]) {
        self.forget(pid);
        self.probe_new(probes, pid, mappings, false);
    }

    /// Probes the pool of each libuv `pid` mapped since the last look (`late`: after the
    /// attach, so work queued before is not stitched, and its report says so).
    pub fn probe_new(
        &mut self,
        probes: &mut super::Probes,
        pid: u32,
        mappings: &[Mapping],
        late: bool,
    ) {
        let looked = self.looked.entry(pid).or_default();
        let mut objects = Vec::new();
        if looked.insert(None) {
            objects.push((std::path::PathBuf::from(format!("/proc/{pid}/exe")), false));
        }
        for m in mappings.iter().filter(|m| m.is_executable()) {
            let is_libuv = m
                .path
                .as_ref()
                .and_then(|p| p.file_name())
                .is_some_and(|n| n.to_string_lossy().starts_with("libuv."));
            if is_libuv && looked.insert(m.path.clone()) {
                objects.push((
                    format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end).into(),
                    late,
                ));
            }
        }
        // Most samples: nothing new to look at.
        if objects.is_empty() {
            return;
        }
        // `run`'s command is a copy of the tracer until it execs: no libuv to find in it.
        let tracer = FileId::of(std::path::Path::new("/proc/self/exe")).ok();
        for (object, late) in objects {
            let Ok(id) = FileId::of(&object) else {
                continue;
            };
            if tracer == Some(id) {
                continue;
            }
            let found = FOUND.get_or_insert_with(id, || match map(&object) {
                Ok(elf) => find(&elf),
                Err(err) => Err(PoolError::Elf(err.to_string())),
            });
            let shown = std::fs::read_link(&object).unwrap_or_else(|_| object.clone());
            let attached = match found {
                Ok(sites) => probes
                    .attach_pool(pid, &object, id.ino(), &sites)
                    .map(|()| partly(&sites, &shown))
                    .map_err(|err| err.to_string()),
                Err(PoolError::NoLibuv) => continue,
                Err(err) => Err(err.to_string()),
            };
            let notes = self.notes.entry(pid).or_default();
            match attached {
                Ok(part) => {
                    debug!(pid, object = %shown.display(), late, "thread pool probed");
                    notes.extend(part);
                    if late {
                        notes.push(format!(
                            "libuv in {} was mapped after the attach and its thread pool probed \
                             then: work queued before is shown without the code that queued it",
                            shown.display()
                        ));
                    }
                }
                Err(why) => {
                    warn!(pid, object = %shown.display(), %why, "thread pool not probed");
                    notes.push(format!(
                        "libuv's thread pool in {} is not probed ({why}): what its threads \
                         allocate for queued work is shown without the code that queued it",
                        shown.display()
                    ));
                }
            }
        }
    }

    /// What the report of `pid` should say about its thread pools.
    pub fn notes(&self, pid: u32) -> &[String] {
        self.notes.get(&pid).map_or(&[], Vec::as_slice)
    }

    pub fn forget(&mut self, pid: u32) {
        self.notes.remove(&pid);
        self.looked.remove(&pid);
    }
}
