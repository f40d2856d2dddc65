//! Work queued to libuv's thread pool, stitched to the code that queued it.
//!
//! What a pool thread allocates for queued work (zlib's state, OpenSSL's keys, `fs` buffers) has
//! no JavaScript on its stack: the JavaScript that asked for it ran on another thread. One
//! pointer, the `struct uv__work`, is seen on both sides: where the work is queued
//! (`uv__work_submit`, or the public `uv_queue_work` whose call to it is inlined) and where the
//! pool's `worker` calls `w->work(w)`. The queuing thread's site is kept under that pointer; while
//! a pool thread runs the work, its stack walks stop at `worker` and go on with the queuing
//! thread's frames (see `site::capture_at` and `stitch`).
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
use leaktrace_common::{AllocKind, QueuedKey, QueuedWork};

use crate::{
    account::current_target,
    maps::{QUEUED, RUNNING},
    site,
    stitch::running,
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
