//! Probes on the allocator's public functions: malloc family entries, one shared return probe,
//! and free.
//!
//! An entry probe saves what the call asked for in `PENDING`; the return probe turns the result
//! into live blocks. Only the outermost allocator call of a thread is recorded: glibc calls its own
//! public functions internally (`realloc(NULL, n)` enters `malloc`, `realloc(p, 0)` enters `free`),
//! and counting those again would count the same bytes twice.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_prandom_u32, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use leaktrace_common::{AllocKind, AllocOp, Counter, PendingCall, StackKey, sample_bucket};

use crate::{
    account::{bump, current_target, current_target_fast, record_alloc, record_free},
    maps::{PENDING, SAMPLE_TABLE, SAMPLING},
    site,
};

/// `malloc(size)`, `valloc(size)`, `pvalloc(size)`.
#[uprobe(multi)]
pub fn alloc_size_arg0(ctx: ProbeContext) -> u32 {
    let size = arg(&ctx, 0);
    enter(&ctx, AllocOp::Alloc, size, 0, 0)
}

/// `memalign(align, size)`, `aligned_alloc(align, size)`.
#[uprobe(multi)]
pub fn alloc_size_arg1(ctx: ProbeContext) -> u32 {
    let size = arg(&ctx, 1);
    enter(&ctx, AllocOp::Alloc, size, 0, 0)
}

/// `calloc(n, size)`. An overflowing product makes the call fail; saturating keeps it absurd
/// rather than small.
#[uprobe(multi)]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    let size = array_size(arg(&ctx, 0), arg(&ctx, 1));
    enter(&ctx, AllocOp::Alloc, size, 0, 0)
}

/// `realloc(ptr, size)`.
#[uprobe(multi)]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    let (old, size) = (arg(&ctx, 0), arg(&ctx, 1));
    enter(&ctx, AllocOp::Realloc, size, old, 0)
}

/// `reallocarray(ptr, n, size)`.
#[uprobe(multi)]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    let old = arg(&ctx, 0);
    let size = array_size(arg(&ctx, 1), arg(&ctx, 2));
    enter(&ctx, AllocOp::Realloc, size, old, 0)
}

/// `posix_memalign(&ptr, align, size)`.
#[uprobe(multi)]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    let (out, size) = (arg(&ctx, 0), arg(&ctx, 2));
    enter(&ctx, AllocOp::PosixMemalign, size, 0, out)
}

/// The return of every allocation function above.
#[uretprobe(multi)]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let Some((pid_tgid, counters)) = current_target_fast() else {
        return 0;
    };
    // A call whose entry is not held: it began before the probes were attached, or the map
    // dropped its entry to make room for other threads'. Either way its block goes unrecorded.
    let Some(pending) = PENDING.get_ptr_mut(&pid_tgid) else {
        bump(counters, Counter::PendingMapFull);
        return 0;
    };
    // SAFETY: the entry belongs to this thread; no other thread writes it.
    let call = unsafe {
        match (*pending).depth {
            0 => {
                bump(counters, Counter::PendingMapFull);
                return 0;
            }
            1 => {}
            _ => {
                (*pending).depth -= 1;
                return 0;
            }
        }
        (*pending).depth = 0;
        *pending
    };

    let ret: u64 = ctx.ret();
    let tgid = (pid_tgid >> 32) as u32;
    match call.op {
        // Accounted elsewhere: a mapping by the syscall probes, a guarded free at its entry.
        op if op == AllocOp::Mmap as u32 || op == AllocOp::Free as u32 => {}
        op if op == AllocOp::Realloc as u32 => {
            if ret != 0 {
                if call.old_addr != 0 {
                    record_free(counters, tgid, call.old_addr);
                }
                record_alloc(counters, ret, &call);
            } else if call.size == 0 && call.old_addr != 0 {
                // realloc(p, 0) that returns NULL has freed p (glibc, musl).
                record_free(counters, tgid, call.old_addr);
            } else {
                // A failed realloc leaves the old block where it was.
                bump(counters, Counter::FailedAllocs);
            }
        }
        op if op == AllocOp::PosixMemalign as u32 => {
            // SAFETY: a user-memory read through the helper.
            let block = unsafe { bpf_probe_read_user(call.out_ptr as *const u64) }.unwrap_or(0);
            if ret == 0 && block != 0 {
                record_alloc(counters, block, &call);
            } else {
                bump(counters, Counter::FailedAllocs);
            }
        }
        _ => {
            if ret != 0 {
                record_alloc(counters, ret, &call);
            } else {
                bump(counters, Counter::FailedAllocs);
            }
        }
    }
    0
}

/// `free(ptr)`. Attached past the function's first instruction where that instruction would be
/// single-stepped (see PLATFORM.md); it only reads the pointer register, which no emulated
/// instruction before it changes.
#[uprobe(multi)]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let addr = arg(&ctx, 0);
    if addr == 0 {
        return 0;
    }
    let Some((pid_tgid, counters)) = current_target_fast() else {
        return 0;
    };
    if in_call(pid_tgid) {
        // A free made by the allocator inside a traced call: that call accounts for it.
        bump(counters, Counter::NestedCalls);
        return 0;
    }
    record_free(counters, (pid_tgid >> 32) as u32, addr);
    0
}

/// An allocator's release function that can reach another probed one: jemalloc's `operator
/// delete` jumps to `free`, its sized deletes to `sdallocx`. The block is released here, at
/// entry, before the allocator can hand the address out again; the call stays pending until it
/// returns, so the nested release is not counted a second time (nor as an unknown free).
#[uprobe(multi)]
pub fn free_guarded(ctx: ProbeContext) -> u32 {
    let addr = arg(&ctx, 0);
    let Some((pid_tgid, counters)) = current_target() else {
        return 0;
    };
    let Some(Outermost { sp, caller, entry }) = outermost(&ctx, pid_tgid, counters) else {
        return 0;
    };
    if addr != 0 {
        record_free(counters, (pid_tgid >> 32) as u32, addr);
    }
    pend(
        pid_tgid,
        counters,
        entry,
        &PendingCall {
            old_addr: addr,
            entry_sp: sp,
            caller,
            op: AllocOp::Free as u32,
            depth: 1,
            ..PendingCall::default()
        },
    );
    0
}

/// The C library's `mmap`, probed only for its call site: the syscall probes account for the
/// mapping itself (they also see mappings made without the C library), and take the site from
/// this pending call. An `mmap` inside an allocation call is the allocator's own, already
/// counted as the blocks it serves.
#[uprobe(multi)]
pub fn mmap_enter(ctx: ProbeContext) -> u32 {
    let Some((pid_tgid, counters)) = current_target() else {
        return 0;
    };
    let Some(Outermost { sp, caller, entry }) = outermost(&ctx, pid_tgid, counters) else {
        return 0;
    };
    // SAFETY: `regs` is the context the kernel handed to this probe.
    let regs = unsafe { &*ctx.regs };
    let site = site::capture_at(
        site::Registers {
            ip: regs.rip,
            caller,
            sp: regs.rsp,
            fp: regs.rbp,
        },
        (pid_tgid >> 32) as u32,
        AllocKind::Mmap,
        counters,
    );
    pend(
        pid_tgid,
        counters,
        entry,
        &PendingCall {
            site,
            size: arg(&ctx, 1),
            entry_sp: sp,
            caller,
            op: AllocOp::Mmap as u32,
            depth: 1,
            sampled: 1,
            ..PendingCall::default()
        },
    );
    0
}

/// Saves the state of an allocation call at its entry.
#[inline(always)]
fn enter(ctx: &ProbeContext, op: AllocOp, size: u64, old_addr: u64, out_ptr: u64) -> u32 {
    let Some((pid_tgid, counters)) = current_target() else {
        return 0;
    };
    let Some(Outermost { sp, caller, entry }) = outermost(ctx, pid_tgid, counters) else {
        return 0;
    };
    // Passed-over calls still get an entry: calls nested inside them must not be sampled again.
    let (sampled, p32) = sample(size);
    let site = if sampled {
        site::capture(ctx, (pid_tgid >> 32) as u32, caller, counters)
    } else {
        StackKey::default()
    };
    pend(
        pid_tgid,
        counters,
        entry,
        &PendingCall {
            site,
            size,
            old_addr,
            out_ptr,
            entry_sp: sp,
            caller,
            op: op as u32,
            depth: 1,
            p32,
            sampled: u32::from(sampled),
        },
    );
    0
}

/// A thread's outermost allocator call, as its entry probe found it.
struct Outermost {
    sp: u64,
    /// The return address into the caller.
    caller: u64,
    /// The thread's entry in `PENDING`, to be rewritten in place; `None` at its first call.
    entry: Option<*mut PendingCall>,
}

/// The call whose entry probe is running, unless it is nested in the pending one (then it is
/// counted, and left to the outer call).
#[inline(always)]
fn outermost(ctx: &ProbeContext, pid_tgid: u64, counters: *mut u64) -> Option<Outermost> {
    let sp = site::stack_pointer(ctx);
    let caller = site::return_address(sp);
    let entry = PENDING.get_ptr_mut(&pid_tgid);
    if let Some(pending) = entry {
        // SAFETY: the entry belongs to this thread; no other thread writes it.
        unsafe {
            if (*pending).depth > 0 {
                if is_nested(sp, caller, &*pending) {
                    (*pending).depth += 1;
                    bump(counters, Counter::NestedCalls);
                    return None;
                }
                // The recorded call never returned through its probe (a longjmp, or a return
                // probe the kernel could not place): start afresh rather than swallow every
                // later call.
                bump(counters, Counter::MissedReturns);
            }
        }
    }
    Some(Outermost { sp, caller, entry })
}

/// Makes `call` the thread's pending call.
#[inline(always)]
fn pend(pid_tgid: u64, counters: *mut u64, entry: Option<*mut PendingCall>, call: &PendingCall) {
    match entry {
        // SAFETY: the entry belongs to this thread; no other thread writes it.
        Some(pending) => unsafe { *pending = *call },
        // Least-recently-used: an insert fails only when the kernel cannot free an entry.
        None => {
            if PENDING.insert(&pid_tgid, call, u64::from(BPF_ANY)).is_err() {
                bump(counters, Counter::PendingMapFull);
            }
        }
    }
}

/// Whether the thread is inside an allocation call.
#[inline(always)]
fn in_call(pid_tgid: u64) -> bool {
    // SAFETY: the entry belongs to this thread; no other thread writes it.
    PENDING
        .get_ptr(&pid_tgid)
        .is_some_and(|pending| unsafe { (*pending).depth > 0 })
}

/// Whether to record an allocation of `size` bytes, and the probability it had (scaled by 2^32;
/// 0 = certain). Poisson sampling by bytes: 1 - exp(-size/N), from the tracer's table.
#[inline(always)]
fn sample(size: u64) -> (bool, u32) {
    let n = SAMPLING.get(0).map_or(0, |s| s.sample_bytes);
    let Some(bucket) = sample_bucket(size, n) else {
        return (true, 0);
    };
    let p32 = SAMPLE_TABLE.get(bucket).copied().unwrap_or(0);
    if p32 == 0 {
        return (true, 0);
    }
    // SAFETY: a helper call without arguments.
    (unsafe { bpf_get_prandom_u32() } < p32, p32)
}

/// Whether a call entered at `sp` with return address `caller` runs inside the pending call.
///
/// Deeper in the stack is nested. At the same depth it is a tail call from inside the pending
/// call (glibc's `reallocarray` jumps to `realloc`) when its return address differs from the
/// pending call's: the return probe has already replaced that one with its trampoline. The same
/// depth and the same return address is a new call from the same place: the pending call's return
/// was missed.
#[inline(always)]
fn is_nested(sp: u64, caller: u64, pending: &PendingCall) -> bool {
    sp < pending.entry_sp || (sp == pending.entry_sp && caller != pending.caller)
}

/// `n * size`, saturated on overflow (the call then fails). The overflow check is written so
/// LLVM cannot turn it into a 128-bit multiply, which BPF lacks.
#[inline(always)]
fn array_size(n: u64, size: u64) -> u64 {
    if (n | size) >> 32 == 0 {
        return n * size;
    }
    let product = core::hint::black_box(n.wrapping_mul(size));
    if n != 0 && product / n != size {
        u64::MAX
    } else {
        product
    }
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// Does nothing, attached where the entry and free probes go: `cargo xtask bench` measures the
/// cost of the traps alone with it (`leaktrace --empty-probes`).
#[uprobe(multi)]
pub fn empty_enter(_ctx: ProbeContext) -> u32 {
    0
}

/// Does nothing, attached where the return probe goes; see [`empty_enter`].
#[uretprobe(multi)]
pub fn empty_return(_ctx: RetProbeContext) -> u32 {
    0
}
