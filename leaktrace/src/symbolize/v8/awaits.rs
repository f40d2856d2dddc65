//! What the probes need of V8's layout to follow an async function's promise chain to the
//! functions that awaited it (see the probes' `awaits`).
//!
//! The v8dbg data gives the instance types, `JSFunction::context`, where a JSObject's own
//! fields start and how many slots every context begins with. The fields of the objects on
//! the chain are not exported; they follow from V8's class definitions (`js-generator.tq`,
//! `js-promise.tq`, `promise-misc.tq`), unchanged from V8 10 to 12:
//! - `JSGeneratorObject extends JSObject { function, context, receiver, input_or_debug_pos,
//!   resume_mode, continuation, parameters_and_registers }`, and `JSAsyncFunctionObject`
//!   adds `promise`;
//! - `JSPromise extends JSObjectWithEmbedderSlots { reactions_or_result, flags }`, its
//!   embedder fields after them;
//! - `PromiseReaction extends Struct { next, reject_handler, fulfill_handler, ... }`, led by
//!   `continuation_preserved_embedder_data` in a V8 12 built with it (which has the builtins
//!   that get and set it: Node 22's `[map, undefined, 0, reject, fulfill, ...]` measured), and
//!   with it last before (Node 20's `[map, 0, reject, fulfill, undefined, undefined]`);
//! - an await closure's context holds the generator in its extension slot, the first after
//!   the slots every context has (`AsyncBuiltinsAssembler::Await`).
//!
//! The probes check every object's type before reading a field of it, so a V8 whose classes
//! differ ends each chain as unreadable (said in the report) instead of naming garbage.

use leaktrace_common::{MAX_RESUMERS, V8Awaits};

use super::values::{CODE_SYMBOLS, Values};
use crate::process::maps::Mapping;

/// What following awaiters takes, as read from a node binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwaitLayout {
    /// The builtin closures that resume an async function ([`CODE_SYMBOLS`]): file offset and
    /// size each.
    pub resumers: [(u64, u64); 2],
    /// The probes' part, but where the closures lie in a process (see [`Self::for_process`]).
    pub probes: V8Awaits,
}

/// `JSGeneratorObject`'s own fields before `JSAsyncFunctionObject::promise`.
const GENERATOR_FIELDS: u32 = 7;

impl AwaitLayout {
    /// The layout, or `None` when the binary lacks a value it takes (the builtins' symbols
    /// stripped, an older V8's data).
    pub(super) fn from_values(v: &Values) -> Option<AwaitLayout> {
        let resumers = [v.code(CODE_SYMBOLS[0])?, v.code(CODE_SYMBOLS[1])?];
        let embedder_data_first = u32::from(v.code(CODE_SYMBOLS[2]).is_some());
        let header = v.tagged_field("JSObject::internal_fields").ok()?;
        let slots = v.tagged_field("FixedArray::data").ok()?;
        let extension = v.small("context_min_slots", 1..=8).ok()?;
        Some(AwaitLayout {
            resumers,
            probes: V8Awaits {
                context_generator: slots + 8 * extension,
                function_context: v.tagged_field("JSFunction::context").ok()?,
                generator_function: header,
                generator_promise: header + 8 * GENERATOR_FIELDS,
                promise_reactions: header,
                // A Struct's fields follow its map.
                reaction_next: 8 + 8 * embedder_data_first,
                reaction_fulfill: 24 + 8 * embedder_data_first,
                async_function_object_type: v
                    .instance_type("type_JSAsyncFunctionObject__JS_ASYNC_FUNCTION_OBJECT_TYPE")
                    .ok()?,
                promise_type: v.instance_type("type_JSPromise__JS_PROMISE_TYPE").ok()?,
                promise_reaction_type: v
                    .instance_type("type_PromiseReaction__PROMISE_REACTION_TYPE")
                    .ok()?,
                ..V8Awaits::default()
            },
        })
    }

    /// The probes' part for a process that maps the binary (inode `inode`) as `mappings`:
    /// where the resume closures lie in it, in each executable mapping of the binary that
    /// holds them (Node's official builds map part of their text twice). `None` when no
    /// mapping holds them.
    pub fn for_process(&self, mappings: &[Mapping], inode: u64) -> Option<V8Awaits> {
        let mut resumers = [[0; 2]; MAX_RESUMERS];
        let mut found = 0;
        for &(offset, size) in &self.resumers {
            let holding = mappings
                .iter()
                .filter(|m| m.inode == inode && m.is_executable())
                .filter(|m| offset >= m.offset && offset + size <= m.offset + (m.end - m.start));
            for m in holding.take(MAX_RESUMERS / self.resumers.len()) {
                let start = m.start + (offset - m.offset);
                resumers[found] = [start, start + size];
                found += 1;
            }
        }
        if found == 0 {
            return None;
        }
        Some(V8Awaits {
            resumers,
            ..self.probes
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn layout() -> AwaitLayout {
        AwaitLayout {
            resumers: [(0x19aa980, 0xa8), (0x19aa8c0, 0xac)],
            probes: V8Awaits {
                context_generator: 32,
                function_context: 40,
                generator_function: 24,
                generator_promise: 80,
                promise_reactions: 24,
                reaction_next: 16,
                reaction_fulfill: 32,
                async_function_object_type: 2108,
                promise_type: 2063,
                promise_reaction_type: 163,
                ..V8Awaits::default()
            },
        }
    }

    fn mapping(start: u64, end: u64, offset: u64, inode: u64, perms: &[u8; 4]) -> Mapping {
        Mapping {
            start,
            end,
            perms: *perms,
            offset,
            inode,
            path: Some(PathBuf::from("/node")),
        }
    }

    #[test]
    fn closures_are_found_in_every_mapping_of_the_binarys_text() {
        // Node 22's official build: its text, and part of it mapped again on large pages.
        let maps = [
            mapping(0x400000, 0xe31000, 0, 7, b"r--p"),
            mapping(0xe31000, 0x3319000, 0xa31000, 7, b"r-xp"),
            mapping(0x7f81_66dc_0000, 0x7f81_66f9_f000, 0x195e000, 7, b"r-xp"),
            mapping(0x7f81_7000_0000, 0x7f81_7000_1000, 0, 8, b"r-xp"),
        ];
        let awaits = layout().for_process(&maps, 7).expect("found");
        let resolve = 0x19aa980 - 0xa31000 + 0xe31000;
        let remapped = 0x7f81_66dc_0000 + (0x19aa980 - 0x195e000);
        assert_eq!(awaits.resumers[0], [resolve, resolve + 0xa8]);
        assert_eq!(awaits.resumers[1], [remapped, remapped + 0xa8]);
        assert_eq!(awaits.resumers[2][0], 0x19aa8c0 - 0xa31000 + 0xe31000);
        assert!(awaits.resumes(remapped + 0x43));
        assert!(!awaits.resumes(remapped + 0xa8));
        assert_eq!((awaits.reaction_next, awaits.reaction_fulfill), (16, 32));
        // Not mapped executable, or another file: nothing to look for.
        assert!(layout().for_process(&maps[..1], 7).is_none());
        assert!(layout().for_process(&maps, 8).is_none());
    }
}
