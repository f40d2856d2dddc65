//! Naming the allocation site: a frame-pointer walk of the user stack, stored once per distinct
//! stack under a 64-bit hash of its frames, with the JavaScript frames of a V8 target identified
//! on the way and stored once per distinct sequence under a hash of their identities.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    programs::ProbeContext,
};
use leaktrace_common::{
    AllocKind, Counter, MAX_FRAMES, MAX_TABLE_FRAMES, STORED_SLOTS, StackFrames, StackKey,
    thread_marker,
};

use crate::{
    account::bump,
    js,
    maps::{JS_SCRATCH, JS_STACKS, SCRATCH, STACKS, STORED, V8_PRESENT, V8_TARGETS},
    queue, unwind,
};

const EEXIST: i64 = 17;

/// The site of the allocation call whose entry probe is running.
///
/// At a function's entry the return address is on top of the stack (`caller`) and `rbp` still
/// holds the caller's frame pointer, so the walk is: the probed function, `caller`, then the
/// return address above each saved frame pointer (no unwind tables: see [`capture_at`]).
#[inline(always)]
pub fn capture(ctx: &ProbeContext, tgid: u32, caller: u64, counters: *mut u64) -> StackKey {
    // SAFETY: `regs` is the context the kernel handed to this probe.
    let regs = unsafe { &*ctx.regs };
    capture_at::<false>(
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

/// The site whose walk starts at `at`, stored once per distinct stack. With `TABLES`, code
/// without frame pointers is stepped by its object's unwind table where the tracer prepared one
/// (only the page-fault program: with them, the verifier gives up on the allocator probes,
/// whose walks also stitch queued work).
#[inline(always)]
pub fn capture_at<const TABLES: bool>(
    at: Registers,
    tgid: u32,
    kind: AllocKind,
    counters: *mut u64,
) -> StackKey {
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
    // A pool thread running queued work: its walk ends at the pool's `worker` and goes on with
    // the frames of the thread that queued the work, whose JavaScript frames name the site.
    // Nothing of it is kept in registers or on the stack across the walk, which would double
    // the states the verifier explores there: the stop in the cursor, the work looked up again
    // after (only this thread's own probes change its entry).
    let queued = queue::running();
    cur.stop_fp = queued.map_or(0, |q| q.worker_fp);
    // One array lookup spares the targets that run no V8 the hash table's.
    let v8 = if queued.is_none() && V8_PRESENT.get(0).is_some_and(|&n| n != 0) {
        // SAFETY: the map value stays valid for this program run; the probes only update its
        // meta-map cache, a word any CPU may write.
        V8_TARGETS.get_ptr_mut(&tgid).map(|p| unsafe { &mut *p })
    } else {
        None
    };
    let mut js = match v8 {
        // SAFETY: this CPU's scratch slot, used by one probe at a time.
        Some(_) => JS_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p }),
        None => None,
    };
    if let Some(js) = js.as_deref_mut() {
        js.fps_len = 0;
    }
    let tables = if TABLES { unwind::process(tgid) } else { None };
    frames.ips[0] = at.ip;
    cur.pc = at.ip;
    cur.sp = at.sp;
    cur.fp = at.fp;
    let mut len = 1;
    let mut hash = mix(FNV_OFFSET, at.ip);
    if at.caller != 0 {
        frames.ips[1] = at.caller;
        hash = mix(hash, at.caller);
        len = 2;
        cur.pc = at.caller;
        cur.sp = at.sp + 8;
    }
    for i in 1..MAX_FRAMES {
        if i < len {
            continue;
        }
        // `cur` is the frame of `ips[i - 1]`; its rbp is kept for the JavaScript frames,
        // identified once the stack is known.
        let fp = cur.fp;
        // The frame at `fp` is `worker`'s: what lies above it is the pool thread's start.
        if cur.stop_fp != 0 && fp == cur.stop_fp {
            break;
        }
        let step = match tables {
            // Bounded (see MAX_TABLE_FRAMES); `i` is a constant to the verifier, which drops
            // the table code from the later iterations.
            Some(tables) if i <= MAX_TABLE_FRAMES => unwind::step(tables, cur, i > 1, counters),
            _ => unwind::Step::NoTable,
        };
        let next = match step {
            unwind::Step::Caller(ra) => {
                if i == MAX_TABLE_FRAMES {
                    bump(counters, Counter::UnwindStepLimit);
                }
                ra
            }
            unwind::Step::Stop => break,
            unwind::Step::NoTable => {
                // [fp] is the next frame pointer, [fp + 8] the return address into that
                // frame's function.
                let Ok(pair) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
                    break;
                };
                if pair[1] != 0 {
                    cur.pc = pair[1];
                    cur.sp = fp + 16;
                    cur.fp = pair[0];
                }
                if let Some(js) = js.as_deref_mut() {
                    js.fps[i - 1] = fp;
                    js.fps_len = i as u64;
                }
                if pair[1] == 0 {
                    break;
                }
                frames.ips[i] = pair[1];
                hash = mix(hash, pair[1]);
                len = i + 1;
                // Frames lie ever higher on the stack; anything else is not a frame pointer.
                if pair[0] <= fp {
                    break;
                }
                if i == MAX_FRAMES - 1 {
                    bump(counters, Counter::StackTruncated);
                }
                continue;
            }
        };
        if let Some(js) = js.as_deref_mut() {
            js.fps[i - 1] = fp;
            js.fps_len = i as u64;
        }
        frames.ips[i] = next;
        hash = mix(hash, next);
        len = i + 1;
        if i == MAX_FRAMES - 1 {
            bump(counters, Counter::StackTruncated);
        }
    }
    // JavaScript's other threads (Workers, each an isolate of its own) say which thread they
    // are: the same code on two workers is two sites. Stitched stacks say the queuing thread.
    let tid = bpf_get_current_pid_tgid() as u32;
    // Queued work names no JavaScript of its own (see `v8` above).
    let queued = if v8.is_none() { queue::running() } else { None };
    if queued.is_none() && v8.is_some() && tid != tgid && len < MAX_FRAMES {
        let marker = thread_marker(tid);
        frames.ips[len & (MAX_FRAMES - 1)] = marker;
        hash = mix(hash, marker);
        len += 1;
    }
    frames.len = len as u32;
    if let Some(work) = &queued {
        hash = queue::stitch(frames, work, hash, counters);
        key.js_id = work.js_id;
    }
    // 0 means "no stack".
    let stack = hash | 1;
    key.stack = stack;
    if !store_stack(tgid, stack, frames) {
        bump(counters, Counter::StackCaptureFailed);
        key.stack = 0;
    }
    if let (Some(v8), Some(js)) = (v8, js) {
        let (js_id, new) = js::identify(v8, js, tgid, stack);
        key.js_id = js_id;
        if js_id != 0 && new && !store(&JS_STACKS, js_id, &js.frames) {
            bump(counters, Counter::StackCaptureFailed);
            key.js_id = 0;
        }
    }
    key
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

/// Where every hash of a stack starts.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One step of an FNV-1a style hash over whole 64-bit words, with a fold so that high bits of
/// each address reach the low bits of the hash.
#[inline(always)]
pub fn mix(hash: u64, word: u64) -> u64 {
    let h = (hash ^ word).wrapping_mul(FNV_PRIME);
    h ^ (h >> 29)
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
