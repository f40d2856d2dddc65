//! The bookkeeping every probe shares: counters, live blocks, per-site totals.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_get_current_pid_tgid,
};
use leaktrace_common::{
    Counter, LiveAlloc, LiveKey, MAX_TARGETS, PendingCall, StackKey, StackStats,
};

use crate::maps::{LIVE, SLOT_COUNTERS, STACK_STATS, TARGET_SLOTS, TARGETS};

/// The calling thread's pid_tgid and its process's counters in the target table, or `None`
/// when the process is not a target. Every target has an entry there.
#[inline(always)]
pub fn current_target() -> Option<(u64, *mut u64)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let counters = table_counters((pid_tgid >> 32) as u32)?;
    Some((pid_tgid, counters))
}

/// The same, by the fast path where the target has a slot (see `TARGET_SLOTS`): an array lookup
/// the kernel inlines instead of a hash lookup. Only for the programs without loops (the return
/// and `free` probes, which run on every call): in a program with loops, a pointer that may come
/// from either of two maps doubles the states the verifier explores (measured: attaching took
/// 1.9 s longer with it in every program).
#[inline(always)]
pub fn current_target_fast() -> Option<(u64, *mut u64)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let slot = tgid % MAX_TARGETS;
    if tgid == 0 || TARGET_SLOTS.get(slot).is_none_or(|&owner| owner != tgid) {
        return current_target();
    }
    let counters = SLOT_COUNTERS.get_ptr_mut(slot)?;
    // SAFETY: the value lives in this CPU's slot of a per-CPU map while the program runs.
    Some((pid_tgid, unsafe { (*counters).values.as_mut_ptr() }))
}

/// The counters of process `tgid` in the target table, `None` when it is not a target.
#[inline(always)]
pub fn table_counters(tgid: u32) -> Option<*mut u64> {
    let counters = TARGETS.get_ptr_mut(&tgid)?;
    // SAFETY: the value lives in this CPU's slot of a per-CPU map while the program runs.
    Some(unsafe { (*counters).values.as_mut_ptr() })
}

/// Adds one to a per-CPU counter. Per-CPU slots need no atomics: a probe runs to completion on
/// its CPU.
#[inline(always)]
pub fn bump(counters: *mut u64, counter: Counter) {
    // SAFETY: every `Counter` is below `NUM_COUNTERS`, the length of the array behind `counters`.
    unsafe { *counters.add(counter as usize) += 1 };
}

/// Adds `n` to a per-CPU counter.
#[inline(always)]
pub fn bump_by(counters: *mut u64, counter: Counter, n: u64) {
    // SAFETY: as for `bump`.
    unsafe { *counters.add(counter as usize) += n };
}

/// Records a block returned by the allocation call `call` (if sampling picked it).
#[inline(always)]
pub fn record_alloc(counters: *mut u64, addr: u64, call: &PendingCall) {
    bump(counters, Counter::AllocCalls);
    if call.sampled == 0 {
        return;
    }
    // What the block stands for: itself, or, sampled with probability p, 1/p of its kind.
    let (size, count) = match core::num::NonZeroU64::new(u64::from(call.p32)) {
        None => (call.size, 1),
        Some(p) => ((call.size << 32) / p, ((1u64 << 32) + p.get() / 2) / p),
    };
    let site = &call.site;
    let Some(stats) = site_stats(site) else {
        bump(counters, Counter::StackMapFull);
        return;
    };
    add_u64(unsafe { &raw mut (*stats).alloc_bytes }, size);
    add_u64(unsafe { &raw mut (*stats).alloc_calls }, count);

    let key = LiveKey {
        tgid: site.tgid,
        _pad: 0,
        addr,
    };
    let block = LiveAlloc {
        size,
        count,
        site: *site,
    };
    if LIVE.insert(&key, &block, u64::from(BPF_NOEXIST)).is_err() {
        // Either the address is still recorded (its free was missed: take the old block off its
        // site) or the map is full.
        match unsafe { LIVE.get(&key) } {
            Some(old) => {
                let old = *old;
                bump(counters, Counter::MissedFrees);
                release(&old);
                if LIVE.insert(&key, &block, u64::from(BPF_ANY)).is_err() {
                    bump(counters, Counter::LiveMapFull);
                    return;
                }
            }
            None => {
                bump(counters, Counter::LiveMapFull);
                return;
            }
        }
    }
    add_i64(unsafe { &raw mut (*stats).live_bytes }, size as i64);
    add_i64(unsafe { &raw mut (*stats).live_allocs }, count as i64);
}

/// Records the release of a block (free, or the old block of a successful realloc).
#[inline(always)]
pub fn record_free(counters: *mut u64, tgid: u32, addr: u64) {
    bump(counters, Counter::FreeCalls);
    let key = LiveKey {
        tgid,
        _pad: 0,
        addr,
    };
    let Some(block) = (unsafe { LIVE.get(&key) }).copied() else {
        bump(counters, Counter::UnknownFrees);
        return;
    };
    // Only the thread that removes the entry accounts for it, so a racing double free in the
    // target cannot subtract twice.
    if LIVE.remove(&key).is_ok() {
        release(&block);
    }
}

#[inline(always)]
fn release(block: &LiveAlloc) {
    if let Some(stats) = STACK_STATS.get_ptr_mut(&block.site) {
        add_i64(
            unsafe { &raw mut (*stats).live_bytes },
            -(block.size as i64),
        );
        add_i64(unsafe { &raw mut (*stats).live_allocs }, -1);
    }
}

/// The totals of `site`, created on first use.
#[inline(always)]
pub fn site_stats(site: &StackKey) -> Option<*mut StackStats> {
    if let Some(stats) = STACK_STATS.get_ptr_mut(site) {
        return Some(stats);
    }
    // Another CPU may create it between the lookup and the insert: NOEXIST keeps its counts.
    let _ = STACK_STATS.insert(site, &StackStats::default(), u64::from(BPF_NOEXIST));
    STACK_STATS.get_ptr_mut(site)
}

/// Atomic add on a shared map value. The BPF target has no compare-and-swap, so `core`'s atomic
/// types offer no `fetch_add`; the intrinsic compiles to the BPF atomic add instruction.
#[inline(always)]
fn add_i64(ptr: *mut i64, delta: i64) {
    // SAFETY: `ptr` points into a live map value; map values are 8-byte aligned.
    unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(ptr, delta) };
}

#[inline(always)]
pub fn add_u64(ptr: *mut u64, delta: u64) {
    // SAFETY: as for `add_i64`.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(ptr, delta) };
}
