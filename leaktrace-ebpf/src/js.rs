//! Recognising V8's JavaScript frames during the stack walk, from the layout the tracer read out
//! of the target's own node binary (`V8_TARGETS`).
//!
//! Only reads: every value comes through `bpf_probe_read_user`, and anything that does not look
//! exactly like a JSFunction in a JavaScript frame is taken for native code.

use aya_ebpf::helpers::bpf_probe_read_user;
use leaktrace_common::{JsFrame, JsTier, V8Frames};

/// V8 tags pointers to heap objects with binary 01 in the low bits; Smis end in 0.
const HEAP_OBJECT_TAG: u64 = 1;
const TAG_MASK: u64 = 3;

/// The JavaScript frame whose frame pointer is `fp`, if it is one.
///
/// A JavaScript frame holds a context (a heap object) in its context slot, where marker frames
/// hold a small even frame-type marker: checking it first keeps an internal frame, whose function
/// slot holds the function of the frame above, from being counted twice. The function slot must
/// then hold a heap object whose map is a real map (its map is the meta-map, whose own map is
/// itself) of a JSFunction type.
#[inline(always)]
pub fn frame(v8: &V8Frames, fp: u64) -> Option<JsFrame> {
    let context = read(slot(fp, v8.fp_context))?;
    if !is_heap_object(context) {
        return None;
    }
    let function = read(slot(fp, v8.fp_function))?;
    let ty = instance_type(v8, function)?;
    if ty < v8.js_function_first || ty > v8.js_function_last {
        return None;
    }
    let sfi = read(field(function, v8.js_function_shared))?;
    if !is_heap_object(sfi) {
        return None;
    }
    // An interpreted frame has its BytecodeArray and, as a Smi, its bytecode offset; a baseline
    // frame has the array too, but a heap object in the offset slot.
    let bytecode_array = read(slot(fp, v8.fp_bytecode_array)).unwrap_or(0);
    let bytecode_offset = read(slot(fp, v8.fp_bytecode_offset)).unwrap_or(1);
    let interpreted = bytecode_offset & 1 == 0
        && instance_type(v8, bytecode_array) == Some(v8.bytecode_array_type);
    Some(if interpreted {
        JsFrame {
            index: 0,
            tier: JsTier::Interpreted as u32,
            sfi,
            bytecode_array,
            bytecode_offset,
        }
    } else {
        JsFrame {
            index: 0,
            tier: JsTier::Compiled as u32,
            sfi,
            bytecode_array: 0,
            bytecode_offset: 0,
        }
    })
}

/// The instance type of the heap object `object`, if its map checks out as a map.
#[inline(always)]
fn instance_type(v8: &V8Frames, object: u64) -> Option<u16> {
    if !is_heap_object(object) {
        return None;
    }
    let map = read(field(object, v8.heap_object_map))?;
    if !is_heap_object(map) {
        return None;
    }
    let meta = read(field(map, v8.heap_object_map))?;
    if !is_heap_object(meta) || read(field(meta, v8.heap_object_map))? != meta {
        return None;
    }
    // SAFETY: a user-memory read through the helper: a bad address yields an error, not a fault.
    unsafe { bpf_probe_read_user(field(map, v8.map_instance_type) as *const u16) }.ok()
}

#[inline(always)]
fn is_heap_object(value: u64) -> bool {
    value & TAG_MASK == HEAP_OBJECT_TAG && value > 0xffff
}

/// The address of a frame slot.
#[inline(always)]
fn slot(fp: u64, offset: i32) -> u64 {
    fp.wrapping_add_signed(i64::from(offset))
}

/// The address of a field of a tagged heap object.
#[inline(always)]
fn field(object: u64, offset: u32) -> u64 {
    (object - HEAP_OBJECT_TAG).wrapping_add(u64::from(offset))
}

#[inline(always)]
fn read(addr: u64) -> Option<u64> {
    // SAFETY: a user-memory read through the helper: a bad address yields an error, not a fault.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}
