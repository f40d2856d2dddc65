//! Work queued to libuv's thread pool, stitched to the code that queued it.
//!
//! What a pool thread allocates for queued work (zlib's state, OpenSSL's keys, `fs` buffers) has
//! no JavaScript on its stack: the JavaScript that asked for it ran on another thread. One
//! pointer, the `struct uv__work`, is seen on both sides: where the work is queued
//! (`uv__work_submit`, or the public `uv_queue_work` whose call to it is inlined) and where the
//! pool's `worker` calls `w->work(w)`. The queuing thread's site is kept under that pointer; while
//! a pool thread runs the work, its stack walks stop at `worker` and go on with the queuing
//! thread's frames (see `site::capture_at`).
//!
//! The same pointer comes back once more, on the loop thread, where `uv__work_done` calls the
//! work's callback `w->done(w, err)`: what the callback allocates (`fs.readFile`'s buffer, made
//! once the pool has said how large the file is) is stitched the same way, after its own frames,
//! and work the callback queues in turn (the next step of `fs.readFile`) keeps the first
//! queuer's site. These probes fire once per work item.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid},
    macros::uprobe,
    programs::ProbeContext,
};
use leaktrace_common::{
    AllocKind, Counter, MAX_FRAMES, QueuedKey, QueuedWork, StackFrames, callback_marker,
    queued_marker,
};

use crate::{
    account::{bump, current_target},
    hash,
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
    let entry = match running() {
        // Queued by the callback of earlier work: it goes on with what that work's queuer
        // asked for, and keeps that site (stitching the callback's own would add a hop to the
        // stack at every step: `fs.readFile` takes four).
        Some(asked) if asked.callback != 0 => QueuedWork {
            callback: 0,
            worker_fp: 0,
            resume: 0,
            ..asked
        },
        _ => {
            // SAFETY: `regs` is the context the kernel handed to this probe.
            let regs = unsafe { &*ctx.regs };
            let site = site::capture_at(
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
            QueuedWork {
                stack: site.stack,
                js_id: site.js_id,
                tid: pid_tgid as u32,
                callback: 0,
                worker_fp: 0,
                resume: 0,
            }
        }
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
    begin(&ctx, false)
}

/// At `uv__work_done`'s indirect call `w->done(w, err)`: the loop thread starts running the
/// callback of `w`, which is done with then.
#[uprobe(multi)]
pub fn pool_callback_begin(ctx: ProbeContext) -> u32 {
    begin(&ctx, true)
}

/// The calling thread runs `w` (in `rdi`) or its callback, from the site that queued it.
#[inline(always)]
fn begin(ctx: &ProbeContext, callback: bool) -> u32 {
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
                callback: u32::from(callback),
                ..*queued
            };
            let _ = RUNNING.insert(&pid_tgid, &running, 0);
            // Kept for the callback while the work runs.
            if callback {
                let _ = QUEUED.remove(&key);
            }
        }
        // Queued before the probes were in: its allocations keep the thread's own stack.
        None => {
            let _ = RUNNING.remove(&pid_tgid);
        }
    }
    0
}

/// At the instruction after `w->work(w)` or `w->done(w, err)`: the work, or its callback, is
/// done.
#[uprobe(multi)]
pub fn pool_work_end(_ctx: ProbeContext) -> u32 {
    done()
}

/// The same probe after `w->done(w, err)`: a program of its own, so that following a tree of
/// processes attaches each program once per file.
#[uprobe(multi)]
pub fn pool_callback_end(_ctx: ProbeContext) -> u32 {
    done()
}

#[inline(always)]
fn done() -> u32 {
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
