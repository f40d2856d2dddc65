//! Probes on the mapping syscalls of targets: `mmap`, `munmap`, `mremap` and `mprotect`.
//!
//! Mappings are ranges that can be cut, overlaid and moved, which needs interval arithmetic the
//! probes cannot do. They send each change through the `MAP_EVENTS` ring instead, and the tracer
//! keeps the ranges. Removals are sent at syscall entry and insertions at exit, so that the
//! ring's order is the order the address space changed in (once a range is unmapped, another
//! thread may be handed it at once).
//!
//! Attached in the kernel, not at the C library's wrappers: they see mappings made without the
//! C library (raw syscalls, static binaries, runtimes with their own wrappers). Exact tracing
//! attaches them at the syscall tracepoints: raw tracepoints need no tracefs and work on kernels
//! in integrity lockdown, which refuse fentry, but every other syscall of the host then costs
//! one compare (at entry) or one read (at exit). Watch mode, which costs the request path
//! nothing, attaches them by fentry and fexit on the syscalls' own functions (`__x64_sys_*`),
//! which fire for these syscalls only. The C library's `mmap` is also probed
//! ([`crate::alloc::mmap_enter`]) only to name the call site, which its wrapper's frame hides
//! from a walk that starts in the syscall.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::bpf_probe_read_kernel,
    macros::{fentry, fexit, raw_tracepoint},
    programs::{FEntryContext, FExitContext, RawTracePointContext},
};
use leaktrace_common::{AllocKind, AllocOp, Counter, MapEvent, MapOp, StackKey};

use crate::{
    account::{bump, current_target},
    maps::{MAP_EVENTS, PENDING},
    registers, site,
};

const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;

/// Who is making the syscall.
enum Caller {
    /// The program itself (or a runtime), not inside any probed call.
    Program,
    /// The C library's `mmap`, called from the site it names.
    Wrapper(StackKey),
    /// An allocator serving a traced call: its mappings are the blocks it hands out, which the
    /// allocation probes count.
    Allocator,
}

#[inline(always)]
fn caller(pid_tgid: u64) -> Caller {
    match PENDING.get_ptr(&pid_tgid) {
        // SAFETY: the entry belongs to this thread; no other thread writes it.
        Some(call) if unsafe { (*call).depth } > 0 => unsafe {
            if (*call).op == AllocOp::Mmap as u32 && (*call).depth == 1 {
                Caller::Wrapper((*call).site)
            } else {
                Caller::Allocator
            }
        },
        // No entry, or an idle one: not inside an allocation call.
        _ => Caller::Program,
    }
}

/// The calling target thread, its counters and the user registers it made the syscall with
/// (arguments in rdi, rsi, rdx, r10, r8), unless the call is an allocator's.
#[inline(always)]
fn target_call(regs: *const pt_regs) -> Option<(u64, *mut u64, Caller, &'static pt_regs)> {
    let (pid_tgid, counters) = current_target()?;
    let who = caller(pid_tgid);
    if matches!(who, Caller::Allocator) {
        return None;
    }
    Some((pid_tgid, counters, who, registers::read(regs)?))
}

#[inline(always)]
fn send(counters: *mut u64, pid_tgid: u64, op: MapOp, event: MapEvent) {
    let event = MapEvent {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        op: op as u32,
        ..event
    };
    if MAP_EVENTS.output(&event, 0).is_err() {
        bump(counters, Counter::MapEventsLost);
    }
}

const SYS_MMAP: u64 = 9;
const SYS_MPROTECT: u64 = 10;
const SYS_MUNMAP: u64 = 11;
const SYS_MREMAP: u64 = 25;

/// `sys_enter(regs, id)`: removals, before the kernel makes them.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscall_enter(ctx: RawTracePointContext) -> i32 {
    enter(ctx.arg(1), ctx.arg(0))
}

/// `sys_exit(regs, ret)`: insertions and changes, once the kernel has made them.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn syscall_exit(ctx: RawTracePointContext) -> i32 {
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: a kernel-memory read through the helper, checked by it.
    let id = unsafe { bpf_probe_read_kernel(&raw const (*regs).orig_rax) }.unwrap_or(u64::MAX);
    exit(id, regs, ctx.arg(1))
}

/// `munmap`'s entry, for watch mode (see the module's comment).
#[fentry(function = "__x64_sys_munmap")]
pub fn munmap_fentry(ctx: FEntryContext) -> i32 {
    enter(SYS_MUNMAP, ctx.arg(0))
}

/// `mmap`'s entry: a `MAP_FIXED` mapping's removal.
#[fentry(function = "__x64_sys_mmap")]
pub fn mmap_fentry(ctx: FEntryContext) -> i32 {
    enter(SYS_MMAP, ctx.arg(0))
}

/// `mremap`'s entry: the old range's removal.
#[fentry(function = "__x64_sys_mremap")]
pub fn mremap_fentry(ctx: FEntryContext) -> i32 {
    enter(SYS_MREMAP, ctx.arg(0))
}

/// `mmap`'s return: the new mapping.
#[fexit(function = "__x64_sys_mmap")]
pub fn mmap_fexit(ctx: FExitContext) -> i32 {
    exit(SYS_MMAP, ctx.arg(0), ctx.arg(1))
}

/// `mremap`'s return: the range where it is now.
#[fexit(function = "__x64_sys_mremap")]
pub fn mremap_fexit(ctx: FExitContext) -> i32 {
    exit(SYS_MREMAP, ctx.arg(0), ctx.arg(1))
}

/// `mprotect`'s return: the range's new access.
#[fexit(function = "__x64_sys_mprotect")]
pub fn mprotect_fexit(ctx: FExitContext) -> i32 {
    exit(SYS_MPROTECT, ctx.arg(0), ctx.arg(1))
}

/// Syscall `id`'s entry, made with the user registers at `regs`: removals, before the kernel
/// makes them.
#[inline(always)]
fn enter(id: u64, regs: *const pt_regs) -> i32 {
    let op = match id {
        SYS_MUNMAP => MapOp::Unmap,
        SYS_MMAP => MapOp::FixedBegin,
        SYS_MREMAP => MapOp::RemapBegin,
        _ => return 0,
    };
    let Some((pid_tgid, counters, _, regs)) = target_call(regs) else {
        return 0;
    };
    if id == SYS_MMAP && regs.r10 & MAP_FIXED == 0 {
        return 0;
    }
    let event = MapEvent {
        addr: regs.rdi,
        len: regs.rsi,
        ..MapEvent::default()
    };
    send(counters, pid_tgid, op, event);
    0
}

/// Syscall `id`'s return with `ret`: insertions and changes, once the kernel has made them.
#[inline(always)]
fn exit(id: u64, regs: *const pt_regs, ret: i64) -> i32 {
    if id != SYS_MMAP && id != SYS_MREMAP && id != SYS_MPROTECT {
        return 0;
    }
    let Some((pid_tgid, counters, who, regs)) = target_call(regs) else {
        return 0;
    };
    match id {
        SYS_MMAP => mmap_exit(pid_tgid, counters, who, regs, ret),
        SYS_MREMAP => {
            let event = MapEvent {
                addr: regs.rdi,
                len: regs.rsi,
                new_len: regs.rdx,
                flags: regs.r10 as u32,
                ret,
                ..MapEvent::default()
            };
            send(counters, pid_tgid, MapOp::Remap, event);
        }
        _ if ret == 0 => {
            let event = MapEvent {
                addr: regs.rdi,
                len: regs.rsi,
                prot: regs.rdx as u32,
                ..MapEvent::default()
            };
            send(counters, pid_tgid, MapOp::Protect, event);
        }
        _ => {}
    }
    0
}

#[inline(always)]
fn mmap_exit(pid_tgid: u64, counters: *mut u64, who: Caller, regs: &pt_regs, ret: i64) {
    let (flags, fixed) = (regs.r10, regs.r10 & MAP_FIXED != 0);
    // A file mapping is left out, unless it ends a MAP_FIXED whose removal is pending.
    if flags & MAP_ANONYMOUS == 0 && !fixed {
        return;
    }
    let site = match who {
        Caller::Wrapper(site) => site,
        _ if ret < 0 || flags & MAP_ANONYMOUS == 0 => StackKey::default(),
        // A raw syscall: the walk starts where it was made, with the return address on top of
        // the stack as in a wrapper without a frame.
        _ => site::capture_at(
            site::Registers {
                ip: regs.rip,
                caller: site::return_address(regs.rsp),
                sp: regs.rsp,
                fp: regs.rbp,
            },
            (pid_tgid >> 32) as u32,
            AllocKind::Mmap,
            counters,
        ),
    };
    let event = MapEvent {
        addr: regs.rdi,
        len: regs.rsi,
        prot: regs.rdx as u32,
        flags: flags as u32,
        ret,
        site,
        ..MapEvent::default()
    };
    send(counters, pid_tgid, MapOp::Map, event);
}
