//! A report's names for its sites: each site's frames from its call chain (JavaScript frames
//! from V8's data, the rest by the symbolizer) and what it allocates. What a site allocates is
//! remembered once its naming is final: the symbolizer names each address once, so a site's
//! frames change only while its JavaScript frames are still to be named (a retry). The frames
//! themselves are not remembered: a report names them only for the stacks it keeps.

use std::collections::HashMap;

use leaktrace_common::StackKey;

use crate::{
    report::{
        build::SiteNamer,
        model::Frame,
        origin::{self, Origin},
    },
    symbolize::{AddrKind, Symbolizer, awaited, js::JsNamer},
};

/// The session's naming state, borrowed for one report or sample.
pub(super) struct SiteNames<'a> {
    pub(super) origins: &'a mut HashMap<StackKey, Origin>,
    pub(super) chains: &'a HashMap<StackKey, Vec<(u64, AddrKind)>>,
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
            match named.iter().find(|(index, _)| *index == i) {
                Some((_, frames)) if awaited::nameless_builtin(frames) => {
                    let native = native();
                    if native.iter().any(|f| f.function.is_some()) {
                        native
                    } else {
                        frames.clone()
                    }
                }
                Some((_, frames)) => frames.clone(),
                None => native(),
            }
        })
        .collect();
    awaited::mark(&mut frames);
    frames
}
