//! The zero-trap capture path: page faults, not allocator calls.
//!
//! A perf software event counts the page faults of every CPU; each `sample_period`-th runs this
//! program, which keeps to the targets and charges the pages the sample stands for to the stack
//! that touched them. Memory a process writes for the first time faults once per page, so the
//! stacks that populate new memory are the ones that grow the resident set, found without a
//! single uprobe on the request path.

use aya_ebpf::{
    bindings::{bpf_perf_event_data, pt_regs},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_task_pt_regs,
    },
    macros::perf_event,
    programs::PerfEventContext,
};
use leaktrace_common::{AllocKind, Counter, PAGE_BYTES, PageFault, PageKey, PageRecord};

use crate::{
    account::{add_u64, bump, bump_by, site_stats, table_counters},
    maps::PAGE_EVENTS,
    registers, site,
};

/// Ring 3 in the low bits of the code segment: the registers are the user's.
const USER_MODE: u64 = 3;

/// One sampled page fault of any process; only targets' are counted.
#[perf_event]
pub fn page_fault(ctx: PerfEventContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(counters) = table_counters(tgid) else {
        return 0;
    };
    // SAFETY: `ctx` is the context the kernel handed to this program.
    let data = unsafe { &*ctx.ctx };
    let period = data.sample_period.max(1);
    bump_by(counters, Counter::PageFaults, period);
    let Some(user) = user_registers(data) else {
        bump(counters, Counter::StackCaptureFailed);
        return 0;
    };
    // Mid-function: the caller is found by unwinding from the faulting instruction, by its
    // object's unwind table where the tracer prepared one (glibc's malloc internals keep no
    // frame pointer), else by the frame pointer.
    let key = site::capture_at(
        site::Registers {
            ip: user.rip,
            caller: 0,
            sp: user.rsp,
            fp: user.rbp,
        },
        tgid,
        AllocKind::Populated,
        counters,
    );
    let Some(stats) = site_stats(&key) else {
        bump(counters, Counter::StackMapFull);
        return 0;
    };
    // Populated bytes are never given back by this count; what is still resident is the
    // tracer's to read, from the pages it is sent.
    add_u64(
        unsafe { &raw mut (*stats).alloc_bytes },
        period * PAGE_BYTES,
    );
    add_u64(unsafe { &raw mut (*stats).alloc_calls }, period);
    let record = PageRecord {
        page: PageKey {
            tgid,
            _pad: 0,
            page: data.addr & !(PAGE_BYTES - 1),
        },
        fault: PageFault {
            site: key,
            // SAFETY: a helper without arguments.
            at_ns: unsafe { bpf_ktime_get_ns() },
        },
    };
    if record.page.page != 0 && PAGE_EVENTS.output(&record, 0).is_err() {
        bump(counters, Counter::PageMapFull);
    }
    0
}

/// The user registers of the faulting thread: the event's own for a fault in user mode, the
/// ones saved at kernel entry for a fault the kernel took on the user's behalf (a `read` into a
/// fresh buffer), whose instruction pointer is then the return from that system call. Only
/// `rip`, `rsp` and `rbp` are meant to be read.
#[inline(always)]
fn user_registers(data: &bpf_perf_event_data) -> Option<&'static pt_regs> {
    if data.regs.cs & USER_MODE == USER_MODE {
        let slot = registers::slot()?;
        // SAFETY: this CPU's slot, used by one program at a time.
        unsafe {
            (*slot).rip = data.regs.rip;
            (*slot).rsp = data.regs.rsp;
            (*slot).rbp = data.regs.rbp;
            return Some(&*slot);
        }
    }
    // SAFETY: a helper on the current task; the registers are read by `registers::read`.
    let task = unsafe { bpf_get_current_task_btf() };
    registers::read(unsafe { bpf_task_pt_regs(task) } as *const pt_regs)
}
