//! Work queued to libuv's thread pool, stitched to the code that queued it.
//!
//! What a pool thread allocates for queued work (zlib's state, OpenSSL's keys, `fs` buffers) has
//! no JavaScript on its stack: the JavaScript that asked for it ran on another thread. One
//! pointer, the `struct uv__work`, is seen on both sides: where the work is queued
//! (`uv__work_submit`, or the public `uv_queue_work` whose call to it is inlined) and where the
//! pool's `worker` calls `w->work(w)`. The queuing thread's site is kept under that pointer; while
//! a pool thread runs the work, its stack walks stop at `worker` and go on with the queuing
//! thread's frames (see `site::capture_at`). These probes fire once per work item.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid},
    macros::uprobe,
    programs::ProbeContext,
};
use leaktrace_common::{
    AllocKind, Counter, MAX_FRAMES, QueuedKey, QueuedWork, StackFrames, queued_marker,
};

use crate::{
    account::{bump, current_target},
    maps::{POOL_PRESENT, QUEUED, RUNNING, STACKS},
    site,
};

/// Offset of `work_req` (the `struct uv__work`) in libuv's public `uv_work_t`: after the
/// request fields (`data`, `type`, `reserved[6]`), `loop`, `work_cb` and `after_work_cb`. Part of
/// libuv 1.x's stable ABI; checked against `uv_queue_work`'s code in both node binaries here.
const UV_WORK_REQ_OFFSET: u64 = 88;

/// `uv__work_submit(loop, w, kind, work, done)`: fs, dns and random queue through it.
#[uprobe(multi)]
pub fn pool_submit(ctx: ProbeContext) -> u32 {
    let work = ctx.arg::<u64>(1).unwrap_or(0);
    queued(&ctx, work)
}

/// `uv_queue_work(loop, req, work_cb, after_work_cb)`: Node's zlib and crypto queue through it.
#[uprobe(multi)]
pub fn pool_queue_work(ctx: ProbeContext) -> u32 {
    let req = ctx.arg::<u64>(1).unwrap_or(0);
    if req == 0 {
        return 0;
    }
    queued(&ctx, req + UV_WORK_REQ_OFFSET)
}

/// Keeps the site that queues `work`.
#[inline(always)]
fn queued(ctx: &ProbeContext, work: u64) -> u32 {
    if work == 0 {
        return 0;
    }
    let Some((pid_tgid, counters)) = current_target() else {
        return 0;
    };
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: `regs` is the context the kernel handed to this probe.
    let regs = unsafe { &*ctx.regs };
    let site = site::capture_at::<false>(
        site::Registers {
            ip: regs.rip,
            caller: site::return_address(regs.rsp),
            sp: regs.rsp,
            fp: regs.rbp,
        },
        tgid,
        AllocKind::Heap,
        counters,
    );
    if site.stack == 0 {
        return 0;
    }
    let entry = QueuedWork {
        stack: site.stack,
        js_id: site.js_id,
        tid: pid_tgid as u32,
        _pad: 0,
        worker_fp: 0,
        resume: 0,
    };
    // Least-recently-used: a full map drops the oldest work (cancelled, most likely).
    let _ = QUEUED.insert(
        &QueuedKey {
            tgid,
            _pad: 0,
            work,
        },
        &entry,
        0,
    );
    0
}

/// At `worker`'s indirect call `w->work(w)`: the thread starts running `w`. Reads `w` from `rdi`,
/// where the calling convention puts the first argument at every call instruction, so no
/// knowledge of how the compiler addressed `w->work` is needed.
#[uprobe(multi)]
pub fn pool_work_begin(ctx: ProbeContext) -> u32 {
    let Some((pid_tgid, _)) = current_target() else {
        return 0;
    };
    // SAFETY: `regs` is the context the kernel handed to this probe.
    let regs = unsafe { &*ctx.regs };
    let key = QueuedKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        work: regs.rdi,
    };
    // SAFETY: a plain lookup; the value is copied out at once.
    match unsafe { QUEUED.get(&key) } {
        Some(queued) => {
            // The tracer gives the call's length as the probe's cookie.
            // SAFETY: a helper reading this probe's own attachment.
            let call_len = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
            let running = QueuedWork {
                worker_fp: regs.rbp,
                resume: regs.rip + call_len,
                ..*queued
            };
            let _ = RUNNING.insert(&pid_tgid, &running, 0);
            let _ = QUEUED.remove(&key);
        }
        // Queued before the probes were in: its allocations keep the pool thread's own stack.
        None => {
            let _ = RUNNING.remove(&pid_tgid);
        }
    }
    0
}

/// At the instruction after `w->work(w)`: the work is done.
#[uprobe(multi)]
pub fn pool_work_end(_ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let _ = RUNNING.remove(&pid_tgid);
    0
}

/// The queued work this thread runs, when any target's pool is probed: one array lookup for the
/// flag, then one per-thread lookup.
#[inline(always)]
pub fn running() -> Option<QueuedWork> {
    if !POOL_PRESENT.get(0).is_some_and(|&n| n != 0) {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a plain lookup; the value is copied out at once.
    unsafe { RUNNING.get(&pid_tgid) }.copied()
}

/// Appends, after the pool thread's frames (`frames.len` of them, cut at `worker`), the return
/// into `worker` unless the walk ended on it, the marker of the queuing thread and then that
/// thread's frames, up to [`MAX_FRAMES`] in all; returns the hash `hash` continued over what was
/// appended.
#[inline(always)]
pub fn stitch(frames: &mut StackFrames, work: &QueuedWork, hash: u64, counters: *mut u64) -> u64 {
    let mut hash = hash;
    let mut at = frames.len as usize;
    if at == 0 || at >= MAX_FRAMES {
        bump(counters, Counter::StackTruncated);
        return hash;
    }
    if frames.ips[(at - 1) & (MAX_FRAMES - 1)] != work.resume {
        frames.ips[at & (MAX_FRAMES - 1)] = work.resume;
        hash = site::mix(hash, work.resume);
        at += 1;
    }
    if at >= MAX_FRAMES {
        bump(counters, Counter::StackTruncated);
        return hash;
    }
    let marker = queued_marker(work.tid);
    frames.ips[at & (MAX_FRAMES - 1)] = marker;
    hash = site::mix(hash, marker);
    // SAFETY: a plain lookup of frames stored once and never changed.
    let Some(queued) = (unsafe { STACKS.get(&work.stack) }) else {
        frames.len = at as u32 + 1;
        return hash;
    };
    let queued_len = queued.len as usize;
    let mut len = at + 1;
    for j in 0..MAX_FRAMES {
        if j >= queued_len {
            break;
        }
        if len >= MAX_FRAMES {
            bump(counters, Counter::StackTruncated);
            break;
        }
        let ip = queued.ips[j];
        frames.ips[len & (MAX_FRAMES - 1)] = ip;
        hash = site::mix(hash, ip);
        len += 1;
    }
    frames.len = len as u32;
    hash
}
