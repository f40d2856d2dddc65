//! A function's name and source range from its ScopeInfo.
//!
//! A ScopeInfo is a run of 8-byte slots after its map: flags, parameter count, the count n of
//! context locals, their n names and n infos, then optional parts whose presence the flags tell
//! (bit positions vary by version and are not in the v8dbg data). For a function they were, on
//! Node 20 and 22: the function-name pair (name String, slot index Smi), the inferred name
//! (String or undefined), then the position pair (start, end), then the outer ScopeInfo. So the
//! name is the first String after the locals, and the range is the first Smi pair
//! `0 <= start <= end` that follows a heap object: that skips a pair made of the slot index
//! and the start, which a context-allocated function name (index >= 0) would form.

use super::heap::{Heap, MAX_NAME_UNITS, Memory, Object, is_heap_object, smi};

/// More context locals than this keep their names in a hash table (one slot), not inline
/// (V8's `kScopeInfoMaxInlinedLocalNamesSize`; untested here).
const MAX_INLINED_LOCAL_NAMES: u32 = 75;
/// Context locals beyond any real scope: the count is garbage.
const MAX_CONTEXT_LOCALS: u32 = 1 << 16;
/// Slots examined after the locals: the optional parts before the positions are at most 4.
const WINDOW: usize = 8;

/// What a ScopeInfo tells of its function.
pub(super) struct Found {
    /// "" when anonymous.
    pub(super) name: String,
    /// Source positions (UTF-16 units) of the function's start (its parameter list) and end.
    pub(super) range: Option<(u32, u32)>,
}

/// Reads the name and range of the function whose ScopeInfo is `scope_info`.
pub(super) fn read<M: Memory>(heap: &Heap<M>, scope_info: Object) -> Option<Found> {
    let layout = &heap.layout;
    let slot = |index: u32| u64::from(8 + 8 * index);
    let locals = smi(heap.u64(scope_info.addr + slot(layout.scope_info_context_local_count))?)?;
    let locals = u32::try_from(locals)
        .ok()
        .filter(|&n| n <= MAX_CONTEXT_LOCALS)?;
    let names = if locals > MAX_INLINED_LOCAL_NAMES {
        1
    } else {
        locals
    };
    let first = layout.scope_info_first_vars + names + locals;
    let mut buf = [0u8; 8 * WINDOW];
    heap.bytes(scope_info.addr + slot(first), &mut buf)?;
    let slots: Vec<u64> = buf
        .as_chunks()
        .0
        .iter()
        .map(|b| u64::from_le_bytes(*b))
        .collect();
    let end = range_index(&slots);
    // The first non-empty String: the function's name, else its inferred name. A String that
    // does not read means a corrupt object, not an anonymous function.
    let mut name = String::new();
    for &slot in &slots[..end.unwrap_or(WINDOW)] {
        if name.is_empty() && heap.object(slot).is_some_and(|o| heap.is_string(o)) {
            name = heap.string(slot, MAX_NAME_UNITS)?;
        }
    }
    let range = end.and_then(|i| {
        let start = u32::try_from(smi(slots[i])?).ok()?;
        let end = u32::try_from(smi(slots[i + 1])?).ok()?;
        Some((start, end))
    });
    Some(Found { name, range })
}

/// Index of the position pair in `slots`: two Smis `0 <= start <= end` after a heap object.
fn range_index(slots: &[u64]) -> Option<usize> {
    (1..slots.len().saturating_sub(1)).find(|&i| {
        is_heap_object(slots[i - 1])
            && matches!((smi(slots[i]), smi(slots[i + 1])), (Some(a), Some(b)) if 0 <= a && a <= b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNDEFINED: u64 = 0x3f81_e9f8_04e9;
    const NAME: u64 = 0x1000_0001;

    fn s(v: i32) -> u64 {
        u64::from(v as u32) << 32
    }

    #[test]
    fn range_follows_name_index_and_inferred_name() {
        // As seen for `function grow(n)` on Node 20: name, index -1, undefined, 129, 200.
        let slots = [NAME, s(-1), UNDEFINED, s(129), s(200), NAME, s(0), s(0)];
        assert_eq!(range_index(&slots), Some(3));
    }

    #[test]
    fn a_context_slot_index_is_not_taken_for_the_start() {
        let slots = [NAME, s(2), NAME, s(129), s(200), UNDEFINED, s(0), s(0)];
        assert_eq!(range_index(&slots), Some(3));
    }

    #[test]
    fn no_pair_no_range() {
        assert_eq!(range_index(&[NAME, s(5), s(1), UNDEFINED]), None);
        assert_eq!(range_index(&[]), None);
    }
}
