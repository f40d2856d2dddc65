//! Types shared by the probes (`leaktrace-ebpf`) and the tracer (`leaktrace`).
//!
//! Every type here crosses the kernel/user boundary as raw bytes, so each is `#[repr(C)]` with
//! explicit padding and no `bool`: both sides must agree on every byte, and the kernel's map
//! hashing compares keys bytewise (implicit padding would make equal keys differ).
#![no_std]

/// Default capacity of the live-allocation map (one entry per block the target holds).
pub const DEFAULT_MAX_LIVE_ALLOCS: u32 = 1 << 20;
/// Default capacity of the per-stack statistics map: one entry per allocation site, a native
/// stack with its JavaScript identity (a Node process traced from its start has tens of
/// thousands). Not preallocated: about 100 bytes per site seen.
pub const DEFAULT_MAX_STACKS: u32 = 1 << 18;
/// Default capacity of the stack map: distinct call stacks kept (not preallocated: each costs
/// its [`StackFrames`] only once seen).
pub const DEFAULT_MAX_STACK_TRACES: u32 = 1 << 16;
/// Deepest stack recorded; deeper ones keep their innermost frames. Node's allocation stacks are
/// 28-36 frames deep down to `node::Start`.
pub const MAX_FRAMES: usize = 64;
/// Capacity of the per-thread in-flight call map: one entry per thread inside an allocator call.
pub const MAX_PENDING_CALLS: u32 = 1 << 14;
/// Capacity of the target table: processes traced at once by one loaded program set.
pub const MAX_TARGETS: u32 = 4096;

/// What an allocation site allocated: heap blocks from the allocator, or mappings; or, in watch
/// mode, the pages a stack populated (touched for the first time), seen by page faults.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocKind {
    Heap = 0,
    Mmap = 1,
    Populated = 2,
}

/// Default bound of the pages whose populating stack the tracer keeps in watch mode (1 GiB of
/// 4 KiB pages at a fault period of 1; each stands for a period's pages).
pub const DEFAULT_MAX_PAGES: u32 = 1 << 18;

/// Size of watch mode's page-record ring, in bytes (a power of two, a multiple of the page):
/// about 87,000 records, which the tracer drains at least every 160 ms.
pub const PAGE_EVENTS_BYTES: u32 = 1 << 22;

/// One populated page of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub tgid: u32,
    pub _pad: u32,
    /// The page's address.
    pub page: u64,
}

/// The stack whose fault populated a page, and when. The time tells a record the tracer judged
/// from one a later fault sent for the same address (the page was given back and the address
/// reused), which must not be dropped with the first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PageFault {
    pub site: StackKey,
    /// `bpf_ktime_get_ns` at the fault.
    pub at_ns: u64,
}

/// What watch mode's page-fault program sends through its ring for each sampled fault.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRecord {
    pub page: PageKey,
    pub fault: PageFault,
}

/// Bytes one page fault populates (a base page; see `leaktrace`'s watch mode on huge pages).
pub const PAGE_BYTES: u64 = 4096;

/// Identity of one allocation site of one process.
///
/// `stack` is a 64-bit hash of the frames the probes walked (the frames themselves are stored
/// once in the `STACKS` map under it); `js_id` names the JavaScript frames, whose shared return
/// addresses would otherwise merge every interpreted function into one stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub tgid: u32,
    /// An [`AllocKind`] as `u32`.
    pub kind: u32,
    /// Key of the frames in the `STACKS` map; 0 when they could not be captured.
    pub stack: u64,
    /// Identity of the JavaScript frames on the stack (the key of their [`JsFrames`]); 0 when
    /// there are none or the target is not V8.
    pub js_id: u64,
}

impl StackKey {
    /// Whether this site made mappings (`mmap`), not heap blocks.
    pub fn is_mapping(&self) -> bool {
        self.kind == AllocKind::Mmap as u32
    }

    /// Whether this site's bytes are pages populated (watch mode), not live blocks.
    pub fn is_populated(&self) -> bool {
        self.kind == AllocKind::Populated as u32
    }
}

/// Slots per CPU of the probes' memo of stacks already in `STACKS` (a power of two).
pub const STORED_SLOTS: u32 = 256;

/// One slot of that memo: this process stored this stack. Storing a stack that is there already
/// takes the map's bucket lock to find out, on every allocation; the memo is a lock-free array
/// lookup. The tracer clears it before it removes stacks from `STACKS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredStack {
    pub tgid: u32,
    pub _pad: u32,
    pub stack: u64,
}

/// The return addresses of one call stack, innermost first, as the probes walked them.
///
/// Walked by the probes themselves rather than by `bpf_get_stackid`: the kernel's stack map
/// drops a stack whenever two hash to the same bucket (thousands of times in a Node process),
/// its walk at a function-entry uprobe omits the direct caller, and the walk is where the
/// JavaScript frames are recognised.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackFrames {
    pub len: u32,
    pub _pad: u32,
    /// `ips[0]` is the probed function, `ips[1]` its caller's return address, and so on.
    pub ips: [u64; MAX_FRAMES],
}

/// Frames of the form `QUEUED_MARKER | tid` stand between a thread-pool worker's own frames and
/// the frames of the thread that queued the work it ran (see [`QueuedWork`]). No user-space
/// return address on x86-64 has these high bits set (they are kernel addresses), so the marker
/// never collides with a real frame.
pub const QUEUED_MARKER: u64 = 0xfff0_0000_0000_0000;

/// The marker frame that says "queued on thread `tid`".
#[inline(always)]
pub const fn queued_marker(tid: u32) -> u64 {
    QUEUED_MARKER | tid as u64
}

/// The queuing thread of a marker frame, `None` for any other frame.
#[inline(always)]
pub const fn queued_tid(ip: u64) -> Option<u32> {
    if ip & 0xffff_ffff_0000_0000 == QUEUED_MARKER {
        Some(ip as u32)
    } else {
        None
    }
}

/// Frames of the form `THREAD_MARKER | tid` end the stacks of JavaScript that ran on a thread
/// other than the process's main one (a `worker_threads` Worker: an isolate of its own): the
/// same code on two workers is two sites, each saying which thread it ran on.
pub const THREAD_MARKER: u64 = 0xffe0_0000_0000_0000;

/// The marker frame that says "ran on thread `tid`".
#[inline(always)]
pub const fn thread_marker(tid: u32) -> u64 {
    THREAD_MARKER | tid as u64
}

/// The thread of a thread marker frame, `None` for any other frame.
#[inline(always)]
pub const fn thread_tid(ip: u64) -> Option<u32> {
    if ip & 0xffff_ffff_0000_0000 == THREAD_MARKER {
        Some(ip as u32)
    } else {
        None
    }
}

/// Frames of the form `CALLBACK_MARKER | tid` stand between the frames of the callback of
/// queued work (`fs.readFile`'s continuations, run by the loop thread once the pool thread is
/// done) and the frames of the thread that queued that work.
pub const CALLBACK_MARKER: u64 = 0xffd0_0000_0000_0000;

/// The marker frame that says "the callback of work queued on thread `tid`".
#[inline(always)]
pub const fn callback_marker(tid: u32) -> u64 {
    CALLBACK_MARKER | tid as u64
}

/// The queuing thread of a callback marker frame, `None` for any other frame.
#[inline(always)]
pub const fn callback_tid(ip: u64) -> Option<u32> {
    if ip & 0xffff_ffff_0000_0000 == CALLBACK_MARKER {
        Some(ip as u32)
    } else {
        None
    }
}

/// The queuing thread of either marker that stitches a stack to the one that queued its work.
#[inline(always)]
pub const fn stitched_tid(ip: u64) -> Option<u32> {
    match queued_tid(ip) {
        Some(tid) => Some(tid),
        None => callback_tid(ip),
    }
}

/// Key of work queued to libuv's thread pool: the process and its `struct uv__work`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QueuedKey {
    pub tgid: u32,
    pub _pad: u32,
    pub work: u64,
}

/// Where work was queued: the queuing thread's site (its native and JavaScript frames, stored
/// like any allocation site's) and the thread. A pool thread that runs the work gives its
/// allocations this site as their caller, and so does the loop thread while it runs the work's
/// callback.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueuedWork {
    pub stack: u64,
    pub js_id: u64,
    pub tid: u32,
    /// 1 while the loop thread runs the work's callback (`w->done`), 0 while a pool thread runs
    /// the work itself (or it waits).
    pub callback: u32,
    /// The frame pointer of the libuv function that called the work (`worker`) or its callback
    /// (`uv__work_done`) while it runs (0 while the work waits): the running thread's walk stops
    /// there and goes on with the queuing thread's frames.
    pub worker_fp: u64,
    /// The return address into that function: the last of the running thread's own frames, put
    /// there when functions without a frame pointer hid it from the walk.
    pub resume: u64,
}

/// Capacity of the queued-work and running-work maps (least recently used go first: work that
/// was cancelled, or queued before the probes saw its thread run).
pub const MAX_QUEUED_WORK: u32 = 1 << 14;

/// Deepest JavaScript frames recorded per stack (Node's allocation stacks hold fewer than 20).
pub const MAX_JS_FRAMES: usize = 24;

/// What the probes need of V8's layout to recognise a JavaScript frame, read by the tracer from
/// the target's own node binary (`v8dbg_*` values) and stored per target: one leaktrace build
/// serves every Node version, and processes without it are walked as native code only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V8Frames {
    /// Frame slots, in bytes from the frame pointer.
    pub fp_function: i32,
    pub fp_context: i32,
    pub fp_bytecode_array: i32,
    pub fp_bytecode_offset: i32,
    /// `HeapObject::map` and `Map::instance_type` (a `u16`).
    pub heap_object_map: u32,
    pub map_instance_type: u32,
    /// `JSFunction::shared`: the SharedFunctionInfo outlives the closure and its code.
    pub js_function_shared: u32,
    /// `JSFunction::code`: a compiled frame's code, whose metadata names what was inlined.
    pub js_function_code: u32,
    /// Instance types of JSFunction and its subclasses, inclusive.
    pub js_function_first: u16,
    pub js_function_last: u16,
    pub bytecode_array_type: u16,
    pub _pad: u16,
    /// The meta-map (the map of maps) last validated, kept by the probes: a map whose own map
    /// is this is a map without reading further. 0 from the tracer.
    pub meta_map: u64,
    /// Who awaited an async function resumed after an `await` (see [`V8Awaits`]).
    pub awaits: V8Awaits,
}

/// What the probes need to follow an async function's promise chain to the functions that
/// awaited it: V8 resumes the function from the microtask queue, through a builtin closure
/// whose context holds the function's generator object; its promise's one reaction is the
/// awaiting function's closure, whose context holds that function's generator, and so on.
/// V8 walks the same chain for its async stack traces (`CaptureAsyncStackTrace`). All zero
/// when the target's V8 data does not describe it: the chain is then not followed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V8Awaits {
    /// Where the builtins that resume an async function after an `await`
    /// (`AsyncFunctionAwaitResolveClosure` and its reject twin) lie in the target, `[start,
    /// end)` each, in up to two mappings of the binary (Node's official builds map their hot
    /// text a second time, on large pages, and run it there): a frame whose return address is
    /// in one is such a closure's frame. Unused ranges are `[0, 0)`.
    pub resumers: [[u64; 2]; MAX_RESUMERS],
    /// Byte offsets: the generator object in an await closure's context (its extension slot),
    /// a JSFunction's context, a generator's function and (async functions) promise, a
    /// promise's reactions and flags, a reaction's next, fulfill handler and promise.
    pub context_generator: u32,
    pub function_context: u32,
    pub generator_function: u32,
    pub generator_promise: u32,
    pub promise_reactions: u32,
    pub reaction_next: u32,
    pub reaction_fulfill: u32,
    pub _pad: u32,
    /// Instance types checked at every step, so that a layout that does not hold ends the
    /// chain instead of naming garbage.
    pub async_function_object_type: u16,
    pub promise_type: u16,
    pub promise_reaction_type: u16,
    pub _pad2: u16,
}

impl V8Awaits {
    /// Whether `pc` returns into a builtin that resumed an async function.
    #[inline(always)]
    pub fn resumes(&self, pc: u64) -> bool {
        let within = |r: &[u64; 2]| pc >= r[0] && pc < r[1];
        within(&self.resumers[0])
            || within(&self.resumers[1])
            || within(&self.resumers[2])
            || within(&self.resumers[3])
    }
}

/// Ranges of resume closures the probes check: two builtins, each in up to two mappings.
pub const MAX_RESUMERS: usize = 4;

/// Most awaiting functions followed up one promise chain.
pub const MAX_AWAITS: usize = 8;

/// Why a followed promise chain ends: the last [`JsTier::Awaited`] frame of a chain carries it
/// (its `sfi` 0, its `bytecode_offset` this), so that the report can say how far it knows.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwaitEnd {
    /// The last promise has no reaction: no async function awaits the outermost one (it was
    /// called without `await`, from a callback or the top level). The chain is whole.
    NotAwaited = 1,
    /// More than one reaction: awaited by several (or also chained with `then`).
    Several = 2,
    /// One reaction that is not an `await`'s: a `then` handler, `Promise.all` and its kin.
    Handler = 3,
    /// [`MAX_AWAITS`] functions followed and the chain goes on.
    Limit = 4,
    /// A read failed or an object was not of the type expected there.
    Unreadable = 5,
}

impl AwaitEnd {
    /// The end a probe wrote as a number; `None` for one this build does not know.
    pub fn from_u64(v: u64) -> Option<AwaitEnd> {
        Some(match v {
            1 => AwaitEnd::NotAwaited,
            2 => AwaitEnd::Several,
            3 => AwaitEnd::Handler,
            4 => AwaitEnd::Limit,
            5 => AwaitEnd::Unreadable,
            _ => return None,
        })
    }
}

/// The window of a frame the probes read in one go, in bytes below the frame pointer: it holds
/// the JavaScript frame slots (context, function, bytecode array and offset; -8 to -40 in
/// every V8 measured) and the saved frame pointer and return address above them.
pub const V8_WINDOW_BELOW_FP: i32 = 48;

impl V8Frames {
    /// Whether the probes can use this layout: every slot inside the window they read, the map
    /// at the start of an object, and the instance type inside a map's first 16 bytes.
    pub fn fits_probes(&self) -> bool {
        let in_window = |off: i32| (-V8_WINDOW_BELOW_FP..0).contains(&off) && off % 8 == 0;
        in_window(self.fp_function)
            && in_window(self.fp_context)
            && in_window(self.fp_bytecode_array)
            && in_window(self.fp_bytecode_offset)
            && self.heap_object_map == 0
            && (8..=14).contains(&self.map_instance_type)
    }
}

/// A stack's JavaScript frames as last identified, kept by the probes under a hash of the
/// stack's return addresses and its process (`JS_CACHE`). The same return addresses mean the
/// same frames are JavaScript, and the same compiled code: only interpreted frames (whose return
/// address is the interpreter's, shared by every function) are read again.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct JsCached {
    pub tgid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns` when identified: older than [`JS_CACHE_TTL_NS`] is identified
    /// again, so code freed and reused at the same addresses is not misnamed for long.
    pub ts_ns: u64,
    pub frames: JsFrames,
}

/// How long a [`JsCached`] entry is trusted.
pub const JS_CACHE_TTL_NS: u64 = 2_000_000_000;

/// How a JavaScript frame was executing when the allocation happened.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsTier {
    /// Ignition: the return address is a shared bytecode handler, the site is the bytecode offset.
    Interpreted = 0,
    /// Sparkplug, Maglev or TurboFan code: the return address is the site.
    Compiled = 1,
    /// Not on the stack: an async function that awaited the one resumed at this frame's index
    /// (outermost last), or, with `sfi` 0, where that chain ends ([`AwaitEnd`]).
    Awaited = 2,
}

/// One JavaScript frame as the probe found it, identified by what outlives the frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JsFrame {
    /// Index in [`StackFrames::ips`] of the return address into this frame's code.
    pub index: u32,
    /// A [`JsTier`] as `u32`.
    pub tier: u32,
    /// The function's SharedFunctionInfo (a tagged pointer).
    pub sfi: u64,
    /// Interpreted frames: the BytecodeArray and the raw bytecode-offset slot (a Smi); else 0.
    pub bytecode_array: u64,
    pub bytecode_offset: u64,
    /// Compiled frames: the function's code when the frame was seen (a tagged pointer; the
    /// tracer checks that the return address lies in it before trusting it); else 0.
    pub code: u64,
}

/// The JavaScript frames of one stack, innermost first, stored once per distinct sequence under
/// [`StackKey::js_id`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct JsFrames {
    pub len: u32,
    /// 1 when every frame's index is its place in the whole stack: the callback of queued work,
    /// whose own JavaScript frames come before the marker and the queuer's after it. 0 for one
    /// thread's frames, placed past the marker when the stack is stitched.
    pub placed: u32,
    pub frames: [JsFrame; MAX_JS_FRAMES],
}

/// Running totals of one allocation site, updated by the probes with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Bytes allocated here and not yet freed (signed: a free on another CPU may land first).
    pub live_bytes: i64,
    pub live_allocs: i64,
    /// Every byte ever allocated here, freed or not.
    pub alloc_bytes: u64,
    pub alloc_calls: u64,
}

/// Key of the live-allocation map: one block of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LiveKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}

/// A block the target holds, with the site that allocated it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveAlloc {
    /// Bytes this block stands for: its size, or in sampled mode its size over the probability
    /// it had of being sampled (an unbiased estimate of the bytes it represents).
    pub size: u64,
    /// Blocks this one stands for: 1, or in sampled mode the inverse of its probability.
    pub count: u64,
    pub site: StackKey,
}

/// Which allocation function a thread is inside, so one return probe serves them all.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocOp {
    /// malloc, calloc, memalign, aligned_alloc, valloc, pvalloc: the result is the block.
    Alloc = 0,
    /// realloc, reallocarray: the result replaces `old_addr` when it is not NULL.
    Realloc = 1,
    /// posix_memalign: the block is written through `out_ptr`, the result is an errno.
    PosixMemalign = 2,
    /// The C library's `mmap`: the call site of a mapping, which the syscall probes account for.
    Mmap = 3,
    /// An allocator's own release function that may reach another probed one (jemalloc's
    /// `operator delete` jumps to `free`): the block is released at entry, and the call stays
    /// pending so that frees nested inside it are not counted again.
    Free = 4,
}

/// State a thread carries from an allocation function's entry to its return.
///
/// Keyed by the full `pid_tgid`, so threads never share it. `depth` counts nested allocator
/// calls on the thread (glibc's `realloc(NULL, n)` enters `malloc`): only the outermost call is
/// recorded, so nothing is counted twice and inner calls cannot overwrite the outer state. A
/// thread outside every allocation function keeps its entry with `depth == 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingCall {
    pub site: StackKey,
    pub size: u64,
    pub old_addr: u64,
    pub out_ptr: u64,
    /// Stack pointer at entry: a later entry deeper in the stack is a nested call, one at or
    /// above it means this call never returned through its probe.
    pub entry_sp: u64,
    /// Return address at entry, to tell a tail call made inside this call from a new call.
    pub caller: u64,
    /// An [`AllocOp`] as `u32`.
    pub op: u32,
    pub depth: u32,
    /// Probability the call was sampled with, scaled by 2^32; 0 when it is recorded for sure
    /// (exact mode, or large enough to be certain).
    pub p32: u32,
    /// 1 when the block is recorded, 0 when sampling passed it over.
    pub sampled: u32,
}

/// What a mapping event says happened; see [`MapEvent`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// `munmap(addr, len)` is about to run: the range is going away.
    Unmap = 0,
    /// `mmap(addr, len, ..., MAP_FIXED, ...)` is about to run: what it covers is going away.
    FixedBegin = 1,
    /// `mmap` returned `ret` (an address, or a negative errno) for `len` bytes.
    Map = 2,
    /// `mremap(addr, len, ...)` is about to run: the range is lifted out until it returns.
    RemapBegin = 3,
    /// `mremap` returned `ret` (the new address, or a negative errno) with `new_len` bytes.
    Remap = 4,
    /// `mprotect(addr, len, prot)` succeeded.
    Protect = 5,
    /// The process exec'd: its old mappings are gone.
    Exec = 6,
}

/// One mapping change of a target, sent through the `MAP_EVENTS` ring in the order the kernel
/// made them: ranges need exact interval arithmetic (partial unmaps, `MAP_FIXED` overlays, moves),
/// which the tracer does, not the probes.
///
/// Removals are sent at syscall entry, before the kernel can hand the range to another thread,
/// and insertions at exit: so the ring's order is the order the address space changed in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MapEvent {
    pub tgid: u32,
    /// The thread, to pair a `*Begin` with its end.
    pub tid: u32,
    /// A [`MapOp`] as `u32`.
    pub op: u32,
    /// `PROT_*` of a mapping or of an mprotect.
    pub prot: u32,
    /// `MAP_*` or `MREMAP_*` flags.
    pub flags: u32,
    pub _pad: u32,
    pub addr: u64,
    pub len: u64,
    pub new_len: u64,
    /// What the syscall returned: an address, 0, or a negative errno.
    pub ret: i64,
    /// The call site of a new mapping ([`MapOp::Map`]); the stack key's `kind` is `Mmap`.
    pub site: StackKey,
}

/// Default size of the mapping event ring, in bytes (a power of two, a multiple of the page).
pub const DEFAULT_MAP_EVENTS_BYTES: u32 = 1 << 20;

/// Sampling settings the tracer writes into the probes' `SAMPLING` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Sampling {
    /// Mean bytes between samples; 0 records every allocation.
    pub sample_bytes: u64,
}

/// Buckets of the sampling-probability table: 1024 linear over sizes below the sampling
/// interval N, 1024 linear over N to 17 N; larger allocations are always recorded.
pub const SAMPLE_BUCKETS: u32 = 2048;

/// The probability bucket of an allocation of `size` bytes, for interval `n`; `None` when it is
/// recorded for sure. Used by the probes to look probabilities up and by the tracer to fill the
/// table, so both agree on every boundary.
///
/// Divisions are by `NonZeroU64`: a division the compiler cannot prove safe would carry a panic
/// path, which the BPF verifier rejects.
#[inline(always)]
pub fn sample_bucket(size: u64, n: u64) -> Option<u32> {
    let n = core::num::NonZeroU64::new(n)?;
    let n16 = core::num::NonZeroU64::new(n.get().saturating_mul(16))?;
    if size < n.get() {
        Some((size.saturating_mul(1024) / n) as u32)
    } else if size < n.get().saturating_add(n16.get()) {
        Some(1024 + ((size - n.get()).saturating_mul(1024) / n16) as u32)
    } else {
        None
    }
}

/// Per-target event and loss counters; indices into [`TargetCounters::values`].
///
/// Losses are counted, never hidden: every report prints each of them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Allocation calls that returned a block.
    AllocCalls = 0,
    /// Allocation calls that returned NULL (or an error): not allocations.
    FailedAllocs = 1,
    /// `free` (and the freeing half of `realloc`) of a non-NULL pointer.
    FreeCalls = 2,
    /// Frees of blocks the tracer never saw allocated (most were allocated before attach).
    UnknownFrees = 3,
    /// Allocations not recorded because the live-allocation map was full.
    LiveMapFull = 4,
    /// Allocations not attributed to their stack because the stack statistics map was full.
    StackMapFull = 5,
    /// Stacks not stored: the stack map was full (the allocation is kept, under an unknown stack).
    StackCaptureFailed = 6,
    /// Stacks deeper than [`MAX_FRAMES`]: their outermost frames are not recorded.
    StackTruncated = 7,
    /// Allocation calls lost because the in-flight call map did not hold their entry: more
    /// threads called the allocator than it holds (it drops the least recently used), or the
    /// call was already running when the probes were attached.
    PendingMapFull = 8,
    /// A block returned at an address still recorded as live: its free was missed.
    MissedFrees = 9,
    /// Allocator calls made from inside another traced allocator call (counted once, outermost).
    NestedCalls = 10,
    /// Allocation calls whose return was never seen (a longjmp out of the allocator, or a
    /// return probe the kernel could not place): their block, if any, is not recorded.
    MissedReturns = 11,
    /// Mapping events (mmap, munmap, mremap, mprotect) lost because the event ring was full:
    /// mapped bytes may be off by what they did.
    MapEventsLost = 12,
    /// Page faults counted in watch mode (each sample stands for its period's faults).
    PageFaults = 13,
    /// Populated pages whose stack was not kept: the page-record ring was full, or the tracer
    /// kept `--max-pages` pages already. Their bytes count as populated, never as resident.
    PageMapFull = 14,
    /// Stack walks that stopped in an unwind-table object at a pc no row covers (a gap
    /// between its FDEs, or code the tracer did not prepare): outer frames are missing.
    UnwindNoRow = 15,
    /// Stack walks that stopped at a row leaktrace cannot follow (a CFA computed by a DWARF
    /// expression, a signal frame, an offset too large for a row): outer frames are missing.
    UnwindUnsupported = 16,
    /// Stack walks that used up their table steps ([`MAX_TABLE_FRAMES`]) and went on by frame
    /// pointers only: frames without one further out may be missing.
    UnwindStepLimit = 17,
    /// Stack walks whose next frame, by the table, lay below the current one or could not be
    /// read: outer frames are missing.
    UnwindBadFrame = 18,
}

/// Number of counters kept per target (room to add counters without changing the map layout).
pub const NUM_COUNTERS: usize = 24;

/// Value of the per-CPU target table: a process is traced iff it has an entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TargetCounters {
    pub values: [u64; NUM_COUNTERS],
}

impl Default for TargetCounters {
    fn default() -> Self {
        Self {
            values: [0; NUM_COUNTERS],
        }
    }
}

/// Unwind-table mappings the probes search per process: the objects without frame pointers
/// that a process maps (the C library, the C++ runtime, libgcc, the loader, a few more).
pub const MAX_UNWIND_MAPPINGS: usize = 16;
/// Default capacity of the unwind-row array shared by every object (8 bytes a row: 2 MiB).
/// glibc 2.36's `libc.so.6` takes about 28 k rows, `libstdc++.so.6` about 34 k.
pub const DEFAULT_MAX_UNWIND_ROWS: u32 = 1 << 18;
/// Steps of the binary search over one object's rows: objects hold fewer than 2^20 rows.
pub const UNWIND_SEARCH_STEPS: usize = 20;
/// Frames a walk may step by unwind tables (each step a search of the object's rows); the frames
/// further out are stepped by frame pointers. Code without frame pointers (allocator internals,
/// runtime wrappers, libraries between the program and the allocator) is innermost.
pub const MAX_TABLE_FRAMES: usize = 16;

/// How a row finds the canonical frame address (the caller's stack pointer).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CfaRule {
    /// No caller: the outermost frame (its return address is undefined).
    End = 0,
    /// CFA = rsp + offset.
    Rsp = 1,
    /// CFA = rbp + offset.
    Rbp = 2,
    /// A `.plt` entry: CFA = rsp + 8, plus 8 once the entry has pushed its argument (from the
    /// 11th byte of each 16-byte entry on).
    Plt11 = 3,
    /// The same with the push ending one byte earlier (from the 10th byte on).
    Plt10 = 4,
    /// A rule the probes cannot follow.
    Unsupported = 5,
    /// Past the end of a function, in code no FDE covers.
    NoRow = 6,
}

/// Where a row finds the caller's rbp.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RbpRule {
    /// rbp still holds the caller's value.
    Unchanged = 0,
    /// Saved at CFA + offset.
    AtCfa = 1,
    /// Not recoverable: frame-pointer steps further out cannot be trusted.
    Unknown = 2,
}

/// One row of an object's unwind table: from `pc` (the object's virtual address) up to the next
/// row's, how to find the caller's frame. 8 bytes, so that libc's table is about 230 KB.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u32,
    /// Offset added to rsp or rbp ([`CfaRule`]).
    pub cfa_off: u16,
    /// Where rbp was saved, in 8-byte words from the CFA (negative: below it).
    pub rbp_off8: i8,
    /// A [`CfaRule`] in the low nibble, an [`RbpRule`] in the high one.
    pub rules: u8,
}

impl UnwindRow {
    pub fn cfa_rule(&self) -> u8 {
        self.rules & 0xf
    }
    pub fn rbp_rule(&self) -> u8 {
        self.rules >> 4
    }
}

/// One mapping of a process whose code is unwound by table: `start..end` holds code of the
/// object whose rows are `first_row..first_row + rows` in `UNWIND_ROWS`, and an address `a` in
/// it is the object's virtual address `a - bias`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub first_row: u32,
    pub rows: u32,
}

/// The table-unwound mappings of one process, sorted by address.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwindProcess {
    pub len: u32,
    pub _pad: u32,
    pub mappings: [UnwindMapping; MAX_UNWIND_MAPPINGS],
}

impl Default for UnwindProcess {
    fn default() -> Self {
        Self {
            len: 0,
            _pad: 0,
            mappings: [UnwindMapping::default(); MAX_UNWIND_MAPPINGS],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these are `repr(C)` plain data with explicit padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::StackKey {}
    unsafe impl aya::Pod for super::StackStats {}
    unsafe impl aya::Pod for super::LiveKey {}
    unsafe impl aya::Pod for super::LiveAlloc {}
    unsafe impl aya::Pod for super::PendingCall {}
    unsafe impl aya::Pod for super::TargetCounters {}
    unsafe impl aya::Pod for super::StackFrames {}
    unsafe impl aya::Pod for super::Sampling {}
    unsafe impl aya::Pod for super::StoredStack {}
    unsafe impl aya::Pod for super::MapEvent {}
    unsafe impl aya::Pod for super::V8Frames {}
    unsafe impl aya::Pod for super::JsFrames {}
    unsafe impl aya::Pod for super::JsCached {}
    unsafe impl aya::Pod for super::PageKey {}
    unsafe impl aya::Pod for super::PageFault {}
    unsafe impl aya::Pod for super::QueuedKey {}
    unsafe impl aya::Pod for super::QueuedWork {}
    unsafe impl aya::Pod for super::UnwindRow {}
    unsafe impl aya::Pod for super::UnwindProcess {}
}
