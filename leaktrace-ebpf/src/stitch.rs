//! A pool thread's stack, continued with the stack of the thread that queued its work.
//!
//! While a pool thread runs queued work (see `queue`), the walk of each of its stacks stops at
//! the pool's `worker` (or, for a callback, `uv__work_done`) and goes on here: the return into
//! that function, a marker naming the queuing thread, then the frames the queuing thread's
//! site kept. Apart from `queue`, whose probes capture sites: `site` calls in here.

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use leaktrace_common::{
    Counter, MAX_FRAMES, MAX_TARGETS, QueuedWork, StackFrames, callback_marker, queued_marker,
};

use crate::{
    account::bump,
    hash,
    maps::{POOL_SLOTS, RUNNING, STACKS},
};

/// The queued work this thread runs, when its process's pool is probed: array lookups for the
/// flag (inlined by the kernel), then one per-thread lookup.
#[inline(always)]
pub fn running() -> Option<QueuedWork> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let slot = ((pid_tgid >> 32) as u32) % MAX_TARGETS;
    let probed = |slot| POOL_SLOTS.get(slot).is_some_and(|&n| n != 0);
    if !probed(slot) && !probed(MAX_TARGETS) {
        return None;
    }
    // SAFETY: a plain lookup; the value is copied out at once.
    unsafe { RUNNING.get(&pid_tgid) }.copied()
}

/// Appends, after the running thread's frames (`frames.len` of them, cut at `worker` or
/// `uv__work_done`), the return into that function unless the walk ended on it, the marker of
/// the queuing thread and then that thread's frames, up to [`MAX_FRAMES`] in all; returns the
/// hash `hash` continued over what was appended, and where the queuing thread's frames start
/// (`MAX_FRAMES` when none fit).
#[inline(always)]
pub fn stitch(
    frames: &mut StackFrames,
    work: &QueuedWork,
    hash: u64,
    counters: *mut u64,
) -> (u64, usize) {
    let mut hash = hash;
    let mut at = frames.len as usize;
    if at == 0 || at >= MAX_FRAMES {
        bump(counters, Counter::StackTruncated);
        return (hash, MAX_FRAMES);
    }
    if frames.ips[(at - 1) & (MAX_FRAMES - 1)] != work.resume {
        frames.ips[at & (MAX_FRAMES - 1)] = work.resume;
        hash = hash::mix(hash, work.resume);
        at += 1;
    }
    if at >= MAX_FRAMES {
        bump(counters, Counter::StackTruncated);
        return (hash, MAX_FRAMES);
    }
    let marker = if work.callback != 0 {
        callback_marker(work.tid)
    } else {
        queued_marker(work.tid)
    };
    frames.ips[at & (MAX_FRAMES - 1)] = marker;
    hash = hash::mix(hash, marker);
    frames.len = at as u32 + 1;
    // SAFETY: a plain lookup of frames stored once and never changed.
    let Some(queued) = (unsafe { STACKS.get(&work.stack) }) else {
        return (hash, MAX_FRAMES);
    };
    let queued_len = queued.len as usize;
    for j in 0..MAX_FRAMES {
        if j >= queued_len {
            break;
        }
        // SAFETY: a field of this CPU's scratch slot. The length goes through memory on every
        // frame: kept in a register, the compiler turns the copy into a moving pointer whose
        // bounds the verifier cannot follow.
        let len = unsafe { core::ptr::read_volatile(&frames.len) } as usize;
        if len >= MAX_FRAMES {
            bump(counters, Counter::StackTruncated);
            break;
        }
        let ip = queued.ips[j];
        frames.ips[len] = ip;
        hash = hash::mix(hash, ip);
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&mut frames.len, len as u32 + 1) };
    }
    (hash, at + 1)
}
