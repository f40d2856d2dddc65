//! Following processes through fork and exec: a child forked by a target is made a target in
//! the kernel before it runs its first instruction, so its very first allocation counts
//! (`leaktrace run` traces a test runner's workers this way); each exec of a target is counted,
//! so the tracer knows its image changed.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use leaktrace_common::{Counter, MapEvent, MapOp, TargetCounters};

const EEXIST: i32 = 17;

use crate::{
    account::{add_u64, bump, table_counters},
    maps::{EXECS, FORKS_MISSED, MAP_EVENTS, TARGETS},
};

/// Byte offsets of `pid` and `tgid` in this kernel's `struct task_struct`, read from its BTF by
/// the tracer at load time (the layout differs between kernel builds).
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: u32 = 0;

/// `sched_process_fork(parent, child)`, run in the parent. A new process (not a thread) whose
/// parent is a target becomes one, with zeroed counters.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn follow_fork(ctx: RawTracePointContext) -> i32 {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    if table_counters(parent).is_none() {
        return 0;
    }
    let child: *const u8 = ctx.arg(1);
    // SAFETY: reading globals the loader set; volatile so the compiler keeps the loads.
    let (pid_at, tgid_at) = unsafe {
        (
            core::ptr::read_volatile(&TASK_PID_OFFSET),
            core::ptr::read_volatile(&TASK_TGID_OFFSET),
        )
    };
    if pid_at == 0 || tgid_at == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a failed read gives no target.
    let read = |at: u32| unsafe {
        bpf_probe_read_kernel(child.wrapping_add(at as usize) as *const i32).unwrap_or(0)
    };
    let (pid, tgid) = (read(pid_at), read(tgid_at));
    // A thread shares its process's entry; only a new process gets its own.
    if pid > 0
        && pid == tgid
        && let Err(err) = TARGETS.insert(
            &(tgid as u32),
            &TargetCounters::default(),
            BPF_NOEXIST as u64,
        )
        // Already a target (a PID reused within the trace) is not a loss; a full table is, and
        // is counted, so that the report says how many went untraced.
        && err != -EEXIST
        && let Some(missed) = FORKS_MISSED.get_ptr_mut(0)
    {
        add_u64(missed, 1);
    }
    0
}

/// `sched_process_exec`, run in the process after its new image is in place.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn count_exec(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(counters) = table_counters(tgid) else {
        return 0;
    };
    // The old address space is gone: said in order with the mapping changes.
    let event = MapEvent {
        tgid,
        tid: pid_tgid as u32,
        op: MapOp::Exec as u32,
        ..MapEvent::default()
    };
    if MAP_EVENTS.output(&event, 0).is_err() {
        bump(counters, Counter::MapEventsLost);
    }
    match EXECS.get_ptr_mut(&tgid) {
        // SAFETY: a live map value; only this process's exec writes it, one at a time.
        Some(count) => unsafe { *count += 1 },
        None => {
            let _ = EXECS.insert(&tgid, &1, 0);
        }
    }
    0
}
