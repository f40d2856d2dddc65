//! Naming the allocation site: the user stack plus the direct caller.

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::bpf_probe_read_user,
    programs::{ProbeContext, tracing::StackIdContext as _},
};
use leaktrace_common::{AllocKind, Counter, StackKey};

use crate::{account::bump, maps::STACK_TRACES};

const EEXIST: i32 = 17;

/// The site of the allocation call whose entry probe is running.
///
/// The kernel's walk at a function-entry uprobe omits the direct caller, so `caller`, the return
/// address on top of the stack, is kept beside the stack id.
#[inline(always)]
pub fn capture(ctx: &ProbeContext, tgid: u32, caller: u64, counters: *mut u64) -> StackKey {
    let stack_id = match ctx.get_stackid(&STACK_TRACES, u64::from(BPF_F_USER_STACK)) {
        Ok(id) => id as i32,
        Err(err) => {
            bump(
                counters,
                if err == -EEXIST {
                    Counter::StackCollision
                } else {
                    Counter::StackCaptureFailed
                },
            );
            err
        }
    };
    StackKey {
        tgid,
        stack_id,
        caller,
        js_id: 0,
        kind: AllocKind::Heap as u32,
        _pad: 0,
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
