//! Recognising V8's JavaScript frames during the stack walk, from the layout the tracer read out
//! of the target's own node binary (`V8_TARGETS`).
//!
//! Only reads: every value comes through `bpf_probe_read_user`, and anything that does not look
//! exactly like a JSFunction in a JavaScript frame is taken for native code. Reads are the cost
//! here (each a helper call): a frame's slots come in the one read of its window, and a map is
//! checked with one read of its first 16 bytes against the meta-map seen last.

use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_probe_read_user};
use leaktrace_common::{
    JS_CACHE_TTL_NS, JsFrame, JsFrames, JsTier, MAX_AWAITS, MAX_FRAMES, MAX_JS_FRAMES,
    V8_WINDOW_BELOW_FP, V8Frames,
};

use crate::{
    hash::{FNV_OFFSET, mix},
    maps::{JS_CACHE, JS_CACHE_SCRATCH, JS_STACKS, JsScratch},
};

/// V8 tags pointers to heap objects with binary 01 in the low bits; Smis end in 0.
const HEAP_OBJECT_TAG: u64 = 1;
const TAG_MASK: u64 = 3;

/// A frame's window: the 8 words from `fp - V8_WINDOW_BELOW_FP`; the saved frame pointer and
/// the return address are its last two.
type Window = [u64; 8];

/// [`identify`] as a global BPF function: the kernel verifies it once, apart from the probes
/// that call it (inlined, its loops went through the verifier once for every way the caller's
/// walk and stitching could have gone, past its million instructions). Whether the identity may
/// be new is left in `js.fresh`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn leaktrace_js_identify(
    v8: *mut V8Frames,
    js: *mut JsScratch,
    tgid: u64,
    stack: u64,
) -> u64 {
    // SAFETY: the verifier checks a global function's pointer arguments against their types;
    // both point into map values (the target's layout, this CPU's scratch slot).
    let (Some(v8), Some(js)) = (unsafe { v8.as_mut() }, unsafe { js.as_mut() }) else {
        return 0;
    };
    let (id, new) = identify(v8, js, tgid as u32, stack);
    js.fresh = u64::from(new);
    id
}

/// The JavaScript identity of the stack `stack` of `tgid` whose frame pointers are in `js.fps`
/// (0 when it has no JavaScript frame), and whether it may be new: then its frames are in
/// `js.frames`, to be stored under it.
///
/// A stack seen lately is not walked again: its compiled frames are as they were (the same
/// return addresses are the same code), and only its interpreted frames are read (function and
/// SharedFunctionInfo, and the innermost one's bytecode offset: two or three reads each). If
/// that identity is stored already, that is all; otherwise, and for a stack not seen lately,
/// every frame is examined.
#[inline(always)]
fn identify(v8: &mut V8Frames, js: &mut JsScratch, tgid: u32, stack: u64) -> (u64, bool) {
    let cache_key = mix(stack, u64::from(tgid));
    // SAFETY: a monotonic clock read.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(cached) = JS_CACHE.get_ptr(&cache_key) {
        // SAFETY: the entry stays valid for this program run; another CPU may replace it whole,
        // which at worst makes the identity below miss and the frames be walked.
        let cached = unsafe { &*cached };
        if cached.tgid == tgid && now.wrapping_sub(cached.ts_ns) < JS_CACHE_TTL_NS {
            // A native thread's stack (GC, libuv's pool) has no JavaScript frame to re-read.
            if cached.frames.len == 0 {
                return (0, false);
            }
            if let Some(id) = refresh(v8, js, &cached.frames)
                // SAFETY: a plain lookup.
                && unsafe { JS_STACKS.get(&id) }.is_some()
            {
                return (id, false);
            }
        }
    }
    let id = walk(v8, js);
    if let Some(entry) = JS_CACHE_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch slot, used by one probe at a time.
        let entry = unsafe { &mut *entry };
        entry.tgid = tgid;
        entry.ts_ns = now;
        entry.frames.len = js.frames.len;
        copy_frames(&mut entry.frames, &js.frames);
        // Full, or raced by another CPU: the next capture walks again.
        let _ = JS_CACHE.insert(&cache_key, entry, 0);
    }
    (id, true)
}

/// Copies the frames in use, one at a time: a whole-struct copy would be one large memcpy,
/// which the BPF target cannot call.
#[inline(always)]
fn copy_frames(to: &mut JsFrames, from: &JsFrames) {
    for n in 0..MAX_JS_FRAMES {
        if n >= from.len as usize {
            break;
        }
        to.frames[n] = from.frames[n];
    }
}

/// The identity of a stack whose JavaScript frames were `cached`, its interpreted frames read
/// anew, and the promise chains of its resumed async functions followed anew (the same code
/// may have been awaited by other functions since); `None` when a frame does not read back as
/// a function.
#[inline(always)]
fn refresh(v8: &V8Frames, js: &mut JsScratch, cached: &JsFrames) -> Option<u64> {
    let mut hash = FNV_OFFSET;
    // The index of the resume closure whose chain was followed last.
    let mut followed = u32::MAX;
    for n in 0..MAX_JS_FRAMES {
        if n >= cached.len as usize {
            break;
        }
        let frame = &cached.frames[n];
        if frame.tier == JsTier::Awaited as u32 {
            if frame.index != followed {
                followed = frame.index;
                hash = awaited(js, frame.index, hash, false);
            }
            continue;
        }
        let (sfi, site) = if frame.tier == JsTier::Interpreted as u32 {
            let fp = js.fps[frame.index as usize & (MAX_FRAMES - 1)];
            let function = read(frame_slot(fp, v8.fp_function))?;
            if !is_heap_object(function) {
                return None;
            }
            let sfi = read(field(function, v8.js_function_shared))?;
            // As `push` keeps it: the innermost frame's offset only.
            let site = if n == 0 {
                read(frame_slot(fp, v8.fp_bytecode_offset))?
            } else {
                0
            };
            (sfi, site)
        } else {
            (frame.sfi, frame.code)
        };
        hash = identity(hash, sfi, site, frame.index);
    }
    Some(hash | 1)
}

/// Examines every frame of the stack; returns its identity (0 without JavaScript frames).
#[inline(always)]
fn walk(v8: &mut V8Frames, js: &mut JsScratch) -> u64 {
    js.frames.len = 0;
    js.frames.placed = 0;
    let mut hash = FNV_OFFSET;
    for i in 0..MAX_FRAMES {
        if i as u64 >= js.fps_len {
            break;
        }
        // Frame 0 is the code that was running: for a probe the allocator, entered but not
        // yet with a frame of its own; for a page fault whatever wrote the page, compiled
        // JavaScript among it. It is a frame of its own only where it pushed one: its frame
        // pointer is not its caller's.
        if i == 0 && (js.fps_len < 2 || js.fps[0] == js.fps[1]) {
            continue;
        }
        let Some(w) = window(js.fps[i]) else {
            // Code built without frame pointers may hold any value in rbp at frame 0: an
            // unreadable one says nothing of the frames the walk found above it.
            if i == 0 {
                continue;
            }
            break;
        };
        if let Some(frame) = frame(v8, &w) {
            hash = push(&mut js.frames, frame, i as u32, hash);
        }
        // The frame of a builtin closure that resumed an async function: the functions that
        // awaited it go here, where its logical callers would be (0: none was).
        if i > 0 && i as u64 == js.await_index {
            hash = awaited(js, i as u32, hash, true);
        }
    }
    if js.frames.len > 0 { hash | 1 } else { 0 }
}

/// Returns the identity with the functions that awaited the one resumed at `index` and where
/// their chain ends, as `awaits` found them for this capture; with `keep`, also appends them
/// to `js.frames` as [`JsTier::Awaited`] frames at `index` (as `push` does, which stops adding
/// to the identity when the frames are full: a refreshed identity then differs, and the stack
/// is walked).
#[inline(always)]
fn awaited(js: &mut JsScratch, index: u32, mut hash: u64, keep: bool) -> u64 {
    for n in 0..=MAX_AWAITS {
        let last = n as u64 >= js.awaited_len;
        let frame = JsFrame {
            index,
            tier: JsTier::Awaited as u32,
            sfi: if last {
                0
            } else {
                js.awaited[n & (MAX_AWAITS - 1)]
            },
            bytecode_array: 0,
            bytecode_offset: if last { js.awaited_end } else { 0 },
            code: 0,
        };
        hash = if keep {
            push(&mut js.frames, frame, index, hash)
        } else {
            identity(hash, frame.sfi, frame.bytecode_offset, index)
        };
        if last {
            break;
        }
    }
    hash
}

/// Appends `frame`, found at `index`, to a stack's JavaScript frames (when there is room);
/// returns the identity with it.
#[inline(always)]
fn push(frames: &mut JsFrames, mut frame: JsFrame, index: u32, hash: u64) -> u64 {
    // The count lives in map memory, not in a register: a count the verifier tracks exactly
    // would make every iteration's state distinct (one per count so far) and the walk too large
    // to verify.
    // SAFETY: a field of this CPU's scratch slot.
    let n = unsafe { core::ptr::read_volatile(&frames.len) } as usize;
    if n >= MAX_JS_FRAMES {
        return hash;
    }
    frame.index = index;
    frames.frames[n] = frame;
    // Only the innermost interpreted frame keeps where in its function it is: an interpreted
    // frame's return address is the interpreter's, so every bytecode offset of every outer frame
    // would multiply a process's sites (a Node process's startup alone would fill the site map).
    // Outer interpreted frames are named by their function's line. (Cleared in map memory: a
    // changed copy on the BPF stack would not fit.)
    let mut site = frame.bytecode_offset | frame.code;
    if n > 0 && frame.tier == JsTier::Interpreted as u32 {
        frames.frames[n].bytecode_array = 0;
        frames.frames[n].bytecode_offset = 0;
        site = 0;
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&mut frames.len, n as u32 + 1) };
    identity(hash, frame.sfi, site, index)
}

/// One frame's part of a stack's JavaScript identity: its function, where in it (the bytecode
/// offset of an interpreted frame, the code of a compiled one, whose inlined functions depend
/// on it), and its position, by which names are placed (one JavaScript sequence can sit at
/// different depths of different stacks).
#[inline(always)]
fn identity(hash: u64, sfi: u64, site: u64, index: u32) -> u64 {
    mix(mix(mix(hash, sfi), site), u64::from(index))
}

/// Reads the window of the frame at `fp`.
#[inline(always)]
fn window(fp: u64) -> Option<Window> {
    let start = fp.checked_sub(V8_WINDOW_BELOW_FP as u64)?;
    // SAFETY: a user-memory read through the helper: a bad address yields an error, not a fault.
    unsafe { bpf_probe_read_user(start as *const Window) }.ok()
}

/// The JavaScript frame whose window is `w`, if it is one.
///
/// A JavaScript frame holds a context (a heap object) in its context slot, where marker frames
/// hold a small even frame-type marker: checking it first keeps an internal frame, whose function
/// slot holds the function of the frame above, from being counted twice. The function slot must
/// then hold a heap object whose map is a real map of a JSFunction type.
#[inline(always)]
fn frame(v8: &mut V8Frames, w: &Window) -> Option<JsFrame> {
    if !is_heap_object(w[slot(v8.fp_context)]) {
        return None;
    }
    let function = w[slot(v8.fp_function)];
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
    let bytecode_array = w[slot(v8.fp_bytecode_array)];
    let bytecode_offset = w[slot(v8.fp_bytecode_offset)];
    let interpreted = bytecode_offset & 1 == 0
        && instance_type(v8, bytecode_array) == Some(v8.bytecode_array_type);
    Some(if interpreted {
        JsFrame {
            index: 0,
            tier: JsTier::Interpreted as u32,
            sfi,
            bytecode_array,
            bytecode_offset,
            code: 0,
        }
    } else {
        // The code of an optimized frame names the functions inlined into it.
        JsFrame {
            index: 0,
            tier: JsTier::Compiled as u32,
            sfi,
            bytecode_array: 0,
            bytecode_offset: 0,
            code: read(field(function, v8.js_function_code)).unwrap_or(0),
        }
    })
}

/// The instance type of the heap object `object`, if its map checks out as a map: the map's own
/// map must be the meta-map, whose map is itself. The meta-map last validated is kept in the
/// layout, so a known one costs no third read (each isolate, a worker thread's too, has one).
#[inline(always)]
pub(crate) fn instance_type(v8: &mut V8Frames, object: u64) -> Option<u16> {
    if !is_heap_object(object) {
        return None;
    }
    // `fits_probes` holds: the map is the object's first word, the type within the map's first
    // 16 bytes.
    let map = read(object - HEAP_OBJECT_TAG)?;
    if !is_heap_object(map) {
        return None;
    }
    // SAFETY: a user-memory read through the helper: a bad address yields an error, not a fault.
    let head = unsafe { bpf_probe_read_user((map - HEAP_OBJECT_TAG) as *const [u64; 2]) }.ok()?;
    let meta = head[0];
    if meta != v8.meta_map {
        if !is_heap_object(meta) || read(meta - HEAP_OBJECT_TAG)? != meta {
            return None;
        }
        v8.meta_map = meta;
    }
    let shift = (v8.map_instance_type.wrapping_sub(8) & 7) * 8;
    Some((head[1] >> shift) as u16)
}

#[inline(always)]
pub(crate) fn is_heap_object(value: u64) -> bool {
    value & TAG_MASK == HEAP_OBJECT_TAG && value > 0xffff
}

/// The index in a window of the frame slot at `offset` from the frame pointer.
#[inline(always)]
fn slot(offset: i32) -> usize {
    ((offset + V8_WINDOW_BELOW_FP) as u32 >> 3) as usize & 7
}

/// The address of the frame slot at `offset` from the frame pointer `fp`.
#[inline(always)]
fn frame_slot(fp: u64, offset: i32) -> u64 {
    fp.wrapping_add_signed(i64::from(offset))
}

/// The address of a field of a tagged heap object.
#[inline(always)]
pub(crate) fn field(object: u64, offset: u32) -> u64 {
    (object - HEAP_OBJECT_TAG).wrapping_add(u64::from(offset))
}

#[inline(always)]
pub(crate) fn read(addr: u64) -> Option<u64> {
    // SAFETY: a user-memory read through the helper: a bad address yields an error, not a fault.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// Joins the JavaScript frames of a callback of queued work with those of the code that queued
/// it into `out`, as one sequence whose indices are places in the stitched stack (`placed`):
/// `own`, the callback's own frames (null: they are in `out` already), then `queuer`'s (null:
/// none), each `shift` further down the stack, as far as the stack and the sequence hold them.
/// A global BPF function, verified once (see `walk`). Returns 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn leaktrace_js_join(
    out: *mut JsFrames,
    own: *const JsFrames,
    queuer: *const JsFrames,
    shift: u64,
) -> u64 {
    // SAFETY: the verifier checks a global function's pointer arguments against their types;
    // all point into map values (this CPU's scratch slot, stored sequences), or are null.
    let Some(out) = (unsafe { out.as_mut() }) else {
        return 0;
    };
    // SAFETY: as above.
    if let Some(own) = unsafe { own.as_ref() } {
        out.len = own.len.min(MAX_JS_FRAMES as u32);
        copy_frames(out, own);
    }
    out.placed = 1;
    // SAFETY: as above.
    let Some(queuer) = (unsafe { queuer.as_ref() }) else {
        return 0;
    };
    for n in 0..MAX_JS_FRAMES {
        if n >= queuer.len as usize {
            break;
        }
        let mut frame = queuer.frames[n];
        let index = u64::from(frame.index) + shift;
        if index >= MAX_FRAMES as u64 {
            break;
        }
        // SAFETY: a field of map memory (see `push`).
        let len = unsafe { core::ptr::read_volatile(&out.len) } as usize;
        if len >= MAX_JS_FRAMES {
            break;
        }
        frame.index = index as u32;
        out.frames[len] = frame;
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&mut out.len, len as u32 + 1) };
    }
    0
}
