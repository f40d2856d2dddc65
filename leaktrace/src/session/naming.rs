//! A report's names for its sites: each site's frames from its call chain (JavaScript frames
//! from V8's data, the rest by the symbolizer) and what it allocates. What a site allocates is
//! remembered once its naming is final: the symbolizer names each address once, so a site's
//! frames change only while its JavaScript frames are still to be named (a retry). The frames
//! themselves are not remembered: a report names them only for the stacks it keeps.

use std::collections::HashMap;

use leaktrace_common::StackKey;

use crate::{
    collect::StackMap,
    report::{
        build::SiteNamer,
        model::{Frame, Origin},
        origin,
    },
    symbolize::{AddrKind, Symbolizer, awaited, js::JsNamer},
};

/// The session's naming state, borrowed for one report or sample.
pub(super) struct SiteNames<'a> {
    pub(super) origins: &'a mut StackMap<Origin>,
    pub(super) chains: &'a StackMap<Vec<(u64, AddrKind)>>,
    pub(super) symbolizer: &'a mut Symbolizer,
    pub(super) js: &'a JsNamer,
}

impl SiteNamer for SiteNames<'_> {
    fn origin(&mut self, key: &StackKey) -> Origin {
        if let Some(&origin) = self.origins.get(key) {
            return origin;
        }
        let origin = origin::classify(&self.frames(key));
        if key.js_id == 0 || self.js.frames(key.tgid, key.stack, key.js_id).is_some() {
            self.origins.insert(*key, origin);
        }
        origin
    }

    fn frames(&mut self, key: &StackKey) -> Vec<Frame> {
        let chain = self.chains.get(key).map_or(&[][..], Vec::as_slice);
        name_stack(self.symbolizer, self.js, key, chain)
    }
}

/// The frames of one site, innermost first: JavaScript frames named from V8's data where the
/// probes identified them, every other address by the symbolizer (perf map, ELF, DWARF).
fn name_stack(
    symbolizer: &mut Symbolizer,
    js: &JsNamer,
    key: &StackKey,
    chain: &[(u64, AddrKind)],
) -> Vec<Frame> {
    symbolizer.resolve(key.tgid, chain);
    let named = js.frames(key.tgid, key.stack, key.js_id);
    let named = named.as_deref().map_or(&[][..], Vec::as_slice);
    let mut frames: Vec<Frame> = chain
        .iter()
        .enumerate()
        .flat_map(|(i, (addr, _))| {
            let native = || symbolizer.frames(key.tgid, *addr);
            let at = named.iter().filter(|(index, _)| *index == i);
            // The functions that awaited the one resumed here go first: outside it, before
            // the builtin that resumed it.
            let (awaiters, own): (Vec<_>, Vec<_>) = at
                .map(|(_, frames)| frames)
                .partition(|f| awaited::is_chain(f));
            let mut out: Vec<Frame> = awaiters.into_iter().flatten().cloned().collect();
            out.extend(match own.first() {
                Some(frames) if awaited::nameless_builtin(frames) => {
                    let native = native();
                    if native.iter().any(|f| f.function.is_some()) {
                        native
                    } else {
                        (*frames).clone()
                    }
                }
                Some(frames) => (*frames).clone(),
                None => native(),
            });
            out
        })
        .collect();
    awaited::mark(&mut frames);
    frames
}

/// Thread start routines already named, by the object's inode and the routine's offset in
/// its file: naming libuv's `worker` reads the object's dynamic symbols (7 MB for a node
/// binary), which a report a few seconds later need not read again.
pub(super) type StartNames = HashMap<(u64, u64), String>;

/// Names where the threads of each arena share started (see
/// [`crate::process::memory::ThreadShare`]): the function a start routine's address is in, and
/// `libuv thread pool` for libuv's `worker` in an object that has libuv (it exports
/// `uv_queue_work`), whose arenas are what a Node process's `fs`, `zlib`, `crypto` and `dns`
/// work allocated from.
pub(super) fn name_thread_shares(
    symbolizer: &mut Symbolizer,
    named: &mut StartNames,
    pid: u32,
    malloc: &mut crate::process::memory::MallocAccount,
) {
    for share in &mut malloc.by_thread {
        let Some(addr) = share
            .start_routine
            .as_deref()
            .and_then(|hex| u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok())
        else {
            continue;
        };
        let Some(m) = symbolizer
            .mappings(pid)
            .iter()
            .find(|m| (m.start..m.end).contains(&addr))
            .cloned()
        else {
            continue;
        };
        let key = (m.inode, addr - m.start + m.offset);
        if let Some(name) = named.get(&key) {
            share.threads_are.clone_from(name);
            continue;
        }
        symbolizer.resolve(pid, &[(addr, AddrKind::Exact)]);
        let Some(function) = symbolizer
            .frames(pid, addr)
            .pop()
            .and_then(|frame| frame.function)
        else {
            continue;
        };
        let file =
            std::path::PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
        share.threads_are = if function == "worker" && exports_uv_queue_work(&file) {
            format!("{LIBUV_POOL} ({function})")
        } else {
            function
        };
        named.insert(key, share.threads_are.clone());
    }
}

/// What the threads of libuv's pool are called in a report.
pub const LIBUV_POOL: &str = "libuv thread pool";

/// Whether the object `file` exports `uv_queue_work`: libuv is in it.
fn exports_uv_queue_work(file: &std::path::Path) -> bool {
    crate::process::symbols::read(file, false, &["uv_queue_work".to_owned()])
        .is_ok_and(|info| info.defined.contains("uv_queue_work"))
}
