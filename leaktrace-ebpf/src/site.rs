//! Naming the allocation site: a frame-pointer walk of the user stack, stored once per distinct
//! stack under a 64-bit hash of its frames, with the JavaScript frames of a V8 target identified
//! on the way and stored once per distinct sequence under a hash of their identities.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    programs::ProbeContext,
};
use leaktrace_common::{
    AllocKind, Counter, JsFrames, MAX_FRAMES, STORED_SLOTS, StackFrames, StackKey, thread_marker,
};

use crate::{
    account::bump,
    awaits,
    hash::{FNV_OFFSET, mix},
    js,
    maps::{JS_SCRATCH, JS_STACKS, JsScratch, SCRATCH, STACKS, STORED, V8_PRESENT, V8_TARGETS},
    stitch, unwind, walk,
};

const EEXIST: i64 = 17;

/// The site of the allocation call whose entry probe is running.
///
/// At a function's entry the return address is on top of the stack (`caller`) and `rbp` still
/// holds the caller's frame pointer, so the walk is: the probed function, `caller`, then each
/// caller's caller, by its object's unwind table or by frame pointer.
#[inline(always)]
pub fn capture(ctx: &ProbeContext, tgid: u32, caller: u64, counters: *mut u64) -> StackKey {
    // SAFETY: `regs` is the context the kernel handed to this probe.
    let regs = unsafe { &*ctx.regs };
    capture_at(
        Registers {
            ip: regs.rip,
            caller,
            sp: regs.rsp,
            fp: regs.rbp,
        },
        tgid,
        AllocKind::Heap,
        counters,
    )
}

/// Where a stack walk starts.
#[derive(Clone, Copy)]
pub struct Registers {
    pub ip: u64,
    /// At a function's entry, the return address into its caller (the word at `sp`): the walk
    /// goes on from there with `sp + 8`. 0 when `ip` is inside a function's body (a page fault,
    /// an interrupted instruction): the caller is then found by unwinding from `ip`.
    pub caller: u64,
    pub sp: u64,
    pub fp: u64,
}

/// The site whose walk starts at `at`, stored once per distinct stack. Code without frame
/// pointers is stepped by its object's unwind table where the tracer prepared one (see `walk`).
#[inline(always)]
pub fn capture_at(at: Registers, tgid: u32, kind: AllocKind, counters: *mut u64) -> StackKey {
    let mut key = StackKey {
        tgid,
        kind: kind as u32,
        stack: 0,
        js_id: 0,
    };
    let (Some(frames), Some(cur)) = (SCRATCH.get_ptr_mut(0), unwind::cursor()) else {
        bump(counters, Counter::StackCaptureFailed);
        return key;
    };
    // SAFETY: this CPU's scratch slot, used by one probe at a time.
    let frames = unsafe { &mut *frames };
    // A thread running queued work, or its callback: its walk ends at libuv's function that
    // called it (`worker`, `uv__work_done`) and goes on with the frames of the thread that
    // queued the work, whose JavaScript frames name the site. Nothing of it is kept in
    // registers or on the stack across the walk, which would double the states the verifier
    // explores there: the stop in the cursor, the work looked up again after (only this
    // thread's own probes change its entry).
    let queued = stitch::running();
    cur.stop_fp = queued.map_or(0, |q| q.worker_fp);
    // A pool thread runs no JavaScript; a callback does, before the queuer's.
    let own_js = queued.is_none_or(|q| q.callback != 0);
    // One array lookup spares the targets that run no V8 the hash table's.
    let v8 = if own_js && V8_PRESENT.get(0).is_some_and(|&n| n != 0) {
        // SAFETY: the map value stays valid for this program run; the probes only update its
        // meta-map cache, a word any CPU may write.
        V8_TARGETS.get_ptr_mut(&tgid).map(|p| unsafe { &mut *p })
    } else {
        None
    };
    // SAFETY: this CPU's scratch slot, used by one probe at a time. The walk notes frame
    // pointers there only for a V8 target.
    let Some(js) = JS_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p }) else {
        bump(counters, Counter::StackCaptureFailed);
        return key;
    };
    js.fps_len = 0;
    // The frame pointer while frame 0 ran, which the walk writes again when it starts there: a
    // probe's walk starts at the caller, and frame 0 must not keep the last capture's.
    js.fps[0] = at.fp;
    let tables = unwind::process(tgid);
    frames.ips[0] = at.ip;
    cur.pc = at.ip;
    cur.sp = at.sp;
    cur.fp = at.fp;
    cur.len = 1;
    cur.hash = mix(FNV_OFFSET, at.ip);
    if at.caller != 0 {
        frames.ips[1] = at.caller;
        cur.hash = mix(cur.hash, at.caller);
        cur.len = 2;
        cur.pc = at.caller;
        cur.sp = at.sp + 8;
    }
    walk::leaktrace_walk(
        frames,
        cur,
        js,
        u64::from(v8.is_some()),
        tables.map_or(core::ptr::null(), |t| t as *const _),
    );
    cur.count_losses(counters);
    // The walk's results, bounded again: the verifier knows only that the walk wrote them.
    let mut len = (cur.len as usize).min(MAX_FRAMES);
    let mut hash = cur.hash;
    // JavaScript's other threads (Workers, each an isolate of its own) say which thread they
    // are: the same code on two workers is two sites. Stitched stacks say the queuing thread.
    let tid = bpf_get_current_pid_tgid() as u32;
    let queued = stitch::running();
    if queued.is_none() && v8.is_some() && tid != tgid && len < MAX_FRAMES {
        let marker = thread_marker(tid);
        frames.ips[len & (MAX_FRAMES - 1)] = marker;
        hash = mix(hash, marker);
        len += 1;
    }
    frames.len = len as u32;
    let mut queuer_at = MAX_FRAMES;
    if let Some(work) = &queued {
        (hash, queuer_at) = stitch::stitch(frames, work, hash, counters);
        key.js_id = work.js_id;
    }
    // 0 means "no stack".
    let stack = hash | 1;
    key.stack = stack;
    if !store_stack(tgid, stack, frames) {
        bump(counters, Counter::StackCaptureFailed);
        key.stack = 0;
    }
    if let Some(v8) = v8 {
        awaits::leaktrace_js_awaits(v8, js, frames);
        let own = js::leaktrace_js_identify(v8, js, u64::from(tgid), stack);
        let new = js.fresh != 0;
        let stored = own == 0 || !new || store(&JS_STACKS, own, &js.frames);
        if !stored {
            bump(counters, Counter::StackCaptureFailed);
        }
        key.js_id = match &queued {
            // A callback's own frames, then its queuer's.
            Some(work) if own != 0 && stored => join(js, own, new, work.js_id, queuer_at),
            Some(work) => work.js_id,
            None if stored => own,
            None => 0,
        };
        if key.js_id == 0 && own != 0 {
            bump(counters, Counter::StackCaptureFailed);
        }
    }
    key
}

/// The identity of a callback's JavaScript frames (`own`: in `js.frames` when `new`, else
/// stored) followed by those of the code that queued its work (`queuer`), whose frames start at
/// `queuer_at` in the stitched stack; stored once; 0 when they could not be.
#[inline(always)]
fn join(js: &mut JsScratch, own: u64, new: bool, queuer: u64, queuer_at: usize) -> u64 {
    let own_frames = if new {
        core::ptr::null()
    } else {
        // SAFETY: a plain lookup of frames stored once and never changed.
        match unsafe { JS_STACKS.get(&own) } {
            Some(frames) => frames as *const JsFrames,
            None => return 0,
        }
    };
    let queuer_frames = match queuer {
        0 => core::ptr::null(),
        // SAFETY: as above.
        _ => unsafe { JS_STACKS.get(&queuer) }.map_or(core::ptr::null(), |f| f as *const _),
    };
    js::leaktrace_js_join(&mut js.frames, own_frames, queuer_frames, queuer_at as u64);
    let id = mix(mix(mix(FNV_OFFSET, own), queuer), queuer_at as u64) | 1;
    if store(&JS_STACKS, id, &js.frames) {
        id
    } else {
        0
    }
}

/// Stores the frames of `stack` unless this CPU stored them lately; false when the map is full.
#[inline(always)]
fn store_stack(tgid: u32, stack: u64, frames: &StackFrames) -> bool {
    let slot = STORED.get_ptr_mut((stack as u32) & (STORED_SLOTS - 1));
    // SAFETY: this CPU's slot, used by one probe at a time.
    if let Some(slot) = slot.map(|p| unsafe { &mut *p }) {
        if slot.stack == stack && slot.tgid == tgid {
            return true;
        }
        if !store(&STACKS, stack, frames) {
            return false;
        }
        slot.tgid = tgid;
        slot.stack = stack;
        return true;
    }
    store(&STACKS, stack, frames)
}

/// Stores `value` under `key` unless it is there already; false when the map is full.
#[inline(always)]
fn store<V>(map: &aya_ebpf::maps::HashMap<u64, V>, key: u64, value: &V) -> bool {
    match map.insert(&key, value, u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        Err(err) => i64::from(err) == -EEXIST,
    }
}

/// The return address on top of the stack at a function's entry (0 if unreadable).
#[inline(always)]
pub fn return_address(sp: u64) -> u64 {
    // SAFETY: a user-memory read through the helper: a bad address yields an error, not a fault.
    unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0)
}

/// The stack pointer at the probe, used to tell a nested call from a stale one.
#[inline(always)]
pub fn stack_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: `regs` is the context the kernel handed to this probe.
    unsafe { (*ctx.regs).rsp }
}
