//! Every map the probes share with the tracer, declared in one place (the unwinder's per-CPU
//! cursor, which only the walk sees, is declared with it in `unwind`).
//!
//! Capacities here are defaults: the tracer resizes the maps at load time from its options.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, pt_regs},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use leaktrace_common::{
    DEFAULT_MAP_EVENTS_BYTES, DEFAULT_MAX_LIVE_ALLOCS, DEFAULT_MAX_STACK_TRACES,
    DEFAULT_MAX_STACKS, DEFAULT_MAX_UNWIND_ROWS, JsCached, JsFrames, LiveAlloc, LiveKey,
    MAX_AWAITS, MAX_FRAMES, MAX_PENDING_CALLS, MAX_QUEUED_WORK, MAX_TARGETS, PAGE_EVENTS_BYTES,
    PendingCall, QueuedKey, QueuedWork, SAMPLE_BUCKETS, STORED_SLOTS, Sampling, StackFrames,
    StackKey, StackStats, StoredStack, TargetCounters, UnwindProcess, UnwindRow, V8Frames,
};

/// Processes being traced (by tgid), each with its counters. A probe that fires for any other
/// process returns at once: a uprobe attached for one PID can still run for others that share the
/// file offset with a system-wide consumer.
#[map]
pub static TARGETS: PerCpuHashMap<u32, TargetCounters> =
    PerCpuHashMap::with_max_entries(MAX_TARGETS, 0);

/// The fast path to a target's counters: slot `tgid % MAX_TARGETS` names the target whose
/// counters are in [`SLOT_COUNTERS`] at the same index (0: free). Every probe looks its process
/// up; an array lookup is inlined by the kernel, a hash lookup is a helper call that hashes the
/// key (about 80 ns a call here). The tracer gives a slot to each target it attaches while the
/// slot is free, besides its entry in [`TARGETS`]; the return and `free` probes count in the
/// slot, and the tracer sums both.
#[map]
pub static TARGET_SLOTS: Array<u32> = Array::with_max_entries(MAX_TARGETS, 0);

/// Counters of the targets in [`TARGET_SLOTS`], by slot.
#[map]
pub static SLOT_COUNTERS: PerCpuArray<TargetCounters> =
    PerCpuArray::with_max_entries(MAX_TARGETS, 0);

/// Execs of each target (by tgid) since it was registered: the tracer tells a new image by the
/// count, which a re-exec of the same file changes too.
#[map]
pub static EXECS: HashMap<u32, u64> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Children of targets that could not become targets: the target table was full. One slot.
#[map]
pub static FORKS_MISSED: Array<u64> = Array::with_max_entries(1, 0);

/// Each thread's allocation call, keyed by full pid_tgid; `depth == 0` marks a thread outside
/// every allocation function. An entry is created at a thread's first call and then rewritten in
/// place: an insert and a delete per call (each taking a bucket lock) cost more than the rest of
/// the bookkeeping of a free. Least-recently-used, so the entries of exited threads make room
/// for new ones; a thread inside a call has just used its entry and is the last to go.
#[map]
pub static PENDING: LruHashMap<u64, PendingCall> =
    LruHashMap::with_max_entries(MAX_PENDING_CALLS, 0);

/// Every live block of every target. Not preallocated: memory follows what the target holds.
#[map]
pub static LIVE: HashMap<LiveKey, LiveAlloc> =
    HashMap::with_max_entries(DEFAULT_MAX_LIVE_ALLOCS, BPF_F_NO_PREALLOC);

/// Totals per allocation site.
#[map]
pub static STACK_STATS: HashMap<StackKey, StackStats> =
    HashMap::with_max_entries(DEFAULT_MAX_STACKS, BPF_F_NO_PREALLOC);

/// Every distinct call stack, by the hash of its frames. Not preallocated.
#[map]
pub static STACKS: HashMap<u64, StackFrames> =
    HashMap::with_max_entries(DEFAULT_MAX_STACK_TRACES, BPF_F_NO_PREALLOC);

/// Which stacks this CPU stored lately, by the low bits of their hash (see [`StoredStack`]).
#[map]
pub static STORED: PerCpuArray<StoredStack> = PerCpuArray::with_max_entries(STORED_SLOTS, 0);

/// Slot 0 is non-zero while any target runs V8: the other targets' stacks skip the
/// [`V8_TARGETS`] lookup. Written by the tracer.
#[map]
pub static V8_PRESENT: Array<u32> = Array::with_max_entries(1, 0);

/// V8's frame layout for each target (by tgid) that runs V8: its stacks' JavaScript frames are
/// recognised and identified. Written by the tracer, which read it from the target's binary.
#[map]
pub static V8_TARGETS: HashMap<u32, V8Frames> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// The JavaScript frames of stacks, by [`leaktrace_common::StackKey::js_id`]. Not preallocated.
#[map]
pub static JS_STACKS: HashMap<u64, JsFrames> =
    HashMap::with_max_entries(DEFAULT_MAX_STACK_TRACES, BPF_F_NO_PREALLOC);

/// Room to collect a stack's JavaScript frames in.
#[map]
pub static JS_SCRATCH: PerCpuArray<JsScratch> = PerCpuArray::with_max_entries(1, 0);

/// The JavaScript frames of stacks identified lately, by stack and process (see
/// [`leaktrace_common::JsCached`]). Not preallocated.
#[map]
pub static JS_CACHE: HashMap<u64, JsCached> =
    HashMap::with_max_entries(DEFAULT_MAX_STACK_TRACES, BPF_F_NO_PREALLOC);

/// Room to build a [`JS_CACHE`] entry in (too large for the BPF stack).
#[map]
pub static JS_CACHE_SCRATCH: PerCpuArray<JsCached> = PerCpuArray::with_max_entries(1, 0);

/// A stack's JavaScript frames while they are identified, and the frame pointer of each frame.
#[repr(C)]
pub struct JsScratch {
    pub frames: JsFrames,
    /// `fps[i]` is the frame pointer of the frame `ips[i]` returns into.
    pub fps: [u64; MAX_FRAMES],
    /// Entries of `fps` written.
    pub fps_len: u64,
    /// 1 when the identity found may be new: `frames` holds it, to be stored.
    pub fresh: u64,
    /// Where `awaits` found a closure that resumed an async function (its index in the stack;
    /// 0: none), the functions that awaited that one (SharedFunctionInfos, innermost first),
    /// how many, and why the chain ends (an [`leaktrace_common::AwaitEnd`]).
    pub await_index: u64,
    pub awaited: [u64; MAX_AWAITS],
    pub awaited_len: u64,
    pub awaited_end: u64,
}

/// The user registers a syscall or page-fault program starts its walk from. A copy on the
/// program's own stack (168 bytes) plus the walk's global functions, which run on the same
/// 512 bytes, was refused by a 6.18 verifier (`combined stack size of 2 calls is 560`).
#[map]
pub static USER_REGS: PerCpuArray<pt_regs> = PerCpuArray::with_max_entries(1, 0);

/// Room to walk a stack in: too large for the 512-byte BPF stack.
#[map]
pub static SCRATCH: PerCpuArray<StackFrames> = PerCpuArray::with_max_entries(1, 0);

/// The mappings of each target (by tgid) whose code is unwound by table, with where their
/// object's rows are. Written by the tracer; a target without an entry is walked by frame
/// pointers alone.
#[map]
pub static UNWIND_PROCS: HashMap<u32, UnwindProcess> =
    HashMap::with_max_entries(MAX_TARGETS, BPF_F_NO_PREALLOC);

/// The unwind rows of every prepared object, each object at its own offset, sorted by pc.
/// Written by the tracer, which sizes it.
#[map]
pub static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(DEFAULT_MAX_UNWIND_ROWS, 0);

/// Sampling settings, written by the tracer (index 0); all zero means exact.
#[map]
pub static SAMPLING: Array<Sampling> = Array::with_max_entries(1, 0);

/// Probability of recording an allocation, by `leaktrace_common::sample_bucket`, scaled by 2^32:
/// 1 - exp(-s/N) at the bucket's middle size, computed by the tracer (no floating point here).
#[map]
pub static SAMPLE_TABLE: Array<u32> = Array::with_max_entries(SAMPLE_BUCKETS, 0);

/// Mapping changes of targets, in the order they happened (see `mapping`). Sized by the tracer.
#[map]
pub static MAP_EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_MAP_EVENTS_BYTES, 0);

/// Watch mode: each sampled page fault of a target, with the page and the stack that populated
/// it, in the order they happened. The tracer keeps the pages and reads which of them are still
/// resident (`/proc/PID/pagemap`); reading only what is new costs it nothing while the targets
/// populate nothing, where a hash map of the pages had to be read whole, every bucket of it.
#[map]
pub static PAGE_EVENTS: RingBuf = RingBuf::with_byte_size(PAGE_EVENTS_BYTES, 0);

/// Work queued to libuv's thread pool by a target and not yet run, with the site that queued it
/// (see `queue`).
#[map]
pub static QUEUED: LruHashMap<QueuedKey, QueuedWork> =
    LruHashMap::with_max_entries(MAX_QUEUED_WORK, 0);

/// The queued work each pool thread (by full pid_tgid) is running, with its `worker` frame.
#[map]
pub static RUNNING: LruHashMap<u64, QueuedWork> = LruHashMap::with_max_entries(MAX_QUEUED_WORK, 0);

/// Slot `tgid % MAX_TARGETS` counts the targets whose thread pool is probed among those whose
/// process ID falls there; slot `MAX_TARGETS` is non-zero when the pool probes serve every
/// process (following process trees). The stack walks of every other process skip the
/// [`RUNNING`] lookup. Written by the tracer.
#[map]
pub static POOL_SLOTS: Array<u32> = Array::with_max_entries(MAX_TARGETS + 1, 0);
