//! Stepping one frame of a user stack: by the object's own unwind table where the tracer
//! prepared one (code without frame pointers: glibc's malloc internals, libstdc++, libraries
//! built with `-fomit-frame-pointer`), by the frame pointer everywhere else.
//!
//! The tables come from the tracer (`UNWIND_PROCS`, `UNWIND_ROWS`): one sorted row array per
//! object, searched by bisection. The search's bounds live in per-CPU map memory rather than in
//! registers: a value kept in a register across a bounded loop multiplies the states the
//! verifier explores.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::map, maps::PerCpuArray};
use leaktrace_common::{
    CfaRule, Counter, MAX_UNWIND_MAPPINGS, RbpRule, UNWIND_SEARCH_STEPS, UnwindProcess,
};

use crate::{
    account::bump,
    maps::{UNWIND_PROCS, UNWIND_ROWS},
};

/// Where a walk stands.
#[map]
pub static UNWIND_SCRATCH: PerCpuArray<Cursor> = PerCpuArray::with_max_entries(1, 0);

/// The counters a walk can add to, each once: see [`Cursor::lose`].
const WALK_LOSSES: [Counter; 5] = [
    Counter::StackTruncated,
    Counter::UnwindStepLimit,
    Counter::UnwindNoRow,
    Counter::UnwindUnsupported,
    Counter::UnwindBadFrame,
];

/// Where a walk stands: the frame whose pc is `pc`, with the stack pointer and rbp it had.
#[repr(C)]
pub struct Cursor {
    pub pc: u64,
    pub sp: u64,
    pub fp: u64,
    /// The mapping the pc lies in, by index (`MAX_UNWIND_MAPPINGS`: none). Kept here, not in a
    /// register: the verifier would follow each index's path through the search separately.
    found: u64,
    /// Bisection bounds over `UNWIND_ROWS`.
    lo: u64,
    hi: u64,
    /// The frame pointer of a pool thread's `worker` frame, where its walk stops and the
    /// queuing thread's frames go on (0: none). Kept here for the same reason as `found`.
    pub stop_fp: u64,
    /// Frames walked so far, and their hash: the walk's input and its result.
    pub len: u64,
    pub hash: u64,
    /// One bit per counter the walk's losses add to (bit `Counter as u64`).
    lost: u64,
}

impl Cursor {
    /// Notes a loss of the walk, counted by [`Cursor::count_losses`] once it is over: the walk
    /// runs where the process's counters are out of reach (see `walk`).
    #[inline(always)]
    pub fn lose(&mut self, counter: Counter) {
        self.lost |= 1 << (counter as u64);
    }

    /// Adds the walk's losses to `counters` and forgets them.
    #[inline(always)]
    pub fn count_losses(&mut self, counters: *mut u64) {
        for counter in WALK_LOSSES {
            if self.lost & (1 << (counter as u64)) != 0 {
                bump(counters, counter);
            }
        }
        self.lost = 0;
    }
}

/// The outcome of one step.
pub enum Step {
    /// The caller's return address; the cursor is now in the caller.
    Caller(u64),
    /// The pc lies in no table object: step by frame pointer.
    NoTable,
    /// The walk ends here, for the reason counted (if any).
    Stop,
}

/// The table-unwound mappings of `tgid`, if the tracer prepared any.
#[inline(always)]
pub fn process(tgid: u32) -> Option<&'static UnwindProcess> {
    // SAFETY: a plain lookup; the tracer replaces entries whole.
    unsafe { UNWIND_PROCS.get(&tgid) }
}

/// This CPU's cursor.
#[inline(always)]
pub fn cursor() -> Option<&'static mut Cursor> {
    // SAFETY: this CPU's scratch slot, used by one probe at a time.
    UNWIND_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// What [`leaktrace_unwind_step`] found.
const NO_TABLE: u64 = 0;
const CALLER: u64 = 1;
const END: u64 = 2;
const NO_ROW: u64 = 3;
const UNSUPPORTED: u64 = 4;
const BAD_FRAME: u64 = 5;

/// Steps `cur` to its caller with the row that covers its pc, if the pc lies in a table object.
/// `return_address`: the pc is a return address, so the call it follows is looked up (pc - 1).
#[inline(always)]
pub fn step(proc_: &UnwindProcess, cur: &mut Cursor, return_address: bool) -> Step {
    let code = leaktrace_unwind_step(proc_, cur, u64::from(return_address));
    let counter = match code {
        NO_TABLE => return Step::NoTable,
        CALLER => return Step::Caller(cur.pc),
        END => return Step::Stop,
        NO_ROW => Counter::UnwindNoRow,
        UNSUPPORTED => Counter::UnwindUnsupported,
        _ => Counter::UnwindBadFrame,
    };
    cur.lose(counter);
    Step::Stop
}

/// One table step, as a global BPF function: the kernel verifies a global function once, apart
/// from its callers, instead of once for every frame of the walk in every program (the search's
/// loops made attaching take seconds longer inlined). Returns one of the codes above.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn leaktrace_unwind_step(
    proc_: *const UnwindProcess,
    cur: *mut Cursor,
    return_address: u64,
) -> u64 {
    // SAFETY: the verifier checks a global function's pointer arguments against their types;
    // both point into map values (the tracer's table and this CPU's scratch slot).
    let (Some(proc_), Some(cur)) = (unsafe { proc_.as_ref() }, unsafe { cur.as_mut() }) else {
        return NO_TABLE;
    };
    let at = cur.pc - return_address;
    cur.found = MAX_UNWIND_MAPPINGS as u64;
    for n in 0..MAX_UNWIND_MAPPINGS {
        if n >= proc_.len as usize {
            break;
        }
        let m = &proc_.mappings[n];
        if at >= m.start && at < m.end {
            cur.found = n as u64;
            break;
        }
    }
    // SAFETY: a field of this CPU's scratch slot, read back as a value the verifier does not
    // know, so that every path above joins.
    let found = unsafe { core::ptr::read_volatile(&cur.found) } as usize;
    let Some(m) = proc_.mappings.get(found) else {
        return NO_TABLE;
    };
    let vaddr = at.wrapping_sub(m.bias);
    let first = u64::from(m.first_row);
    cur.lo = first;
    cur.hi = first + u64::from(m.rows);
    // The last row at or below `vaddr`: `lo` ends one past it.
    for _ in 0..UNWIND_SEARCH_STEPS {
        if cur.lo >= cur.hi {
            break;
        }
        let mid = (cur.lo + cur.hi) / 2;
        let Some(row) = UNWIND_ROWS.get(mid as u32) else {
            break;
        };
        if u64::from(row.pc) <= vaddr {
            cur.lo = mid + 1;
        } else {
            cur.hi = mid;
        }
    }
    if cur.lo <= first {
        return NO_ROW;
    }
    let Some(row) = UNWIND_ROWS.get((cur.lo - 1) as u32) else {
        return NO_ROW;
    };
    let off = u64::from(row.cfa_off);
    let cfa = match row.cfa_rule() {
        r if r == CfaRule::Rsp as u8 => cur.sp + off,
        r if r == CfaRule::Rbp as u8 => cur.fp + off,
        // The entry's `push` of its argument lies at bytes 6..11 (10..) of each 16-byte entry.
        r if r == CfaRule::Plt11 as u8 => cur.sp + 8 + (u64::from((at & 15) >= 11) << 3),
        r if r == CfaRule::Plt10 as u8 => cur.sp + 8 + (u64::from((at & 15) >= 10) << 3),
        // The outermost frame (`_start`, a thread's start): the walk is complete.
        r if r == CfaRule::End as u8 => return END,
        r if r == CfaRule::NoRow as u8 => return NO_ROW,
        _ => return UNSUPPORTED,
    };
    // SAFETY: user-memory reads through the helper: a bad address yields an error.
    let Ok(ra) = (unsafe { bpf_probe_read_user((cfa - 8) as *const u64) }) else {
        return BAD_FRAME;
    };
    if cfa <= cur.sp {
        return BAD_FRAME;
    }
    match row.rbp_rule() {
        r if r == RbpRule::AtCfa as u8 => {
            let at = cfa.wrapping_add((i64::from(row.rbp_off8) * 8) as u64);
            // SAFETY: as above.
            match unsafe { bpf_probe_read_user(at as *const u64) } {
                Ok(fp) => cur.fp = fp,
                Err(_) => return BAD_FRAME,
            }
        }
        // rbp holds data of the callee: no frame-pointer step may follow from it.
        r if r == RbpRule::Unknown as u8 => cur.fp = 0,
        _ => {}
    }
    if ra == 0 {
        return END;
    }
    cur.sp = cfa;
    cur.pc = ra;
    CALLER
}
