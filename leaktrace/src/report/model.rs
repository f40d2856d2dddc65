//! The report's data: what every output format renders, and the JSON format scripts rely on.
//!
//! The JSON layout is versioned by [`FORMAT_VERSION`]: fields are only ever added within a
//! version; renaming or removing one bumps it. See `docs/report-format.md`.

use serde::{Deserialize, Serialize};

use crate::analyze::{growth::Growth, memory::MemoryReport};

/// Version of the JSON report layout.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub format_version: u32,
    pub tool: String,
    pub tool_version: String,
    pub trace: TraceInfo,
    pub targets: Vec<TargetReport>,
    pub totals: Totals,
    /// Live bytes and growth by the kind of memory allocated.
    pub origins: Vec<OriginReport>,
    /// Allocation sites, by live bytes, largest first.
    pub stacks: Vec<StackReport>,
    /// Suppression rules applied (`run --suppressions`), with what each matched; the stacks
    /// they matched are left out of `stacks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressions: Vec<SuppressionReport>,
    /// The test gate's finding (`run --fail-on`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateReport>,
}

/// One suppression rule and what it matched: a rule that matches nothing is stale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuppressionReport {
    /// The rule as written.
    pub rule: String,
    /// Where it was written: `FILE:LINE`, or `built-in`.
    pub source: String,
    pub stacks: usize,
    pub live_bytes: i64,
    pub allocated_bytes: u64,
}

/// Whether the traced command passes the gate, and why not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    /// `leak`, `growing` or `outstanding`.
    pub fail_on: String,
    /// For `outstanding`: the live bytes at exit a target may keep.
    pub min_bytes: u64,
    /// The command's own exit status.
    pub command_exit_code: Option<i32>,
    pub failed: bool,
    /// The status leaktrace exits with.
    pub exit_code: i32,
    /// The targets that fail, with the stacks that make them fail.
    pub failures: Vec<GateFailure>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateFailure {
    pub pid: u32,
    pub command: String,
    /// Live bytes of its failing stacks.
    pub live_bytes: i64,
    /// Index into `stacks` of each failing stack, largest first.
    pub stacks: Vec<usize>,
}

/// The stacks of one origin class, summed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OriginReport {
    pub origin: Origin,
    pub stacks: usize,
    pub live_bytes: i64,
    pub live_allocs: i64,
    /// Sum of the stacks' growth rates.
    pub bytes_per_s: f64,
    /// Stacks with verdict `leak` or `growing`.
    pub leak_suspects: usize,
}

/// How the trace was taken.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceInfo {
    /// Seconds the probes were attached.
    pub duration_s: f64,
    pub interval_s: f64,
    /// 0 when every allocation was recorded; else the mean bytes between samples: byte and
    /// block counts are then unbiased estimates, and unknown frees include frees of blocks
    /// sampling passed over.
    pub sample_bytes: u64,
    /// What happened to the trace as a whole (the overhead budget's actions).
    pub notes: Vec<String>,
    /// Why the trace ended: `duration`, `signal`, `targets-exited`, `overhead-budget`.
    pub ended_by: String,
    /// Sites left out of `stacks` by `--top` (their bytes are still in `totals`).
    pub stacks_omitted: usize,
    /// `exact`: the allocator was probed, stacks hold live blocks. `watch`: no probe was placed;
    /// stacks are of kind `populated`, the pages each touched first, from page faults.
    #[serde(default = "exact")]
    pub mode: String,
    /// In watch mode, the page faults each sample stood for (0 otherwise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fault_period: u64,
}

fn exact() -> String {
    "exact".into()
}

/// The words for what a report's stacks hold, so that every format says it: live blocks from
/// the allocator's probes, or, in watch mode, resident pages found by their page faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measure {
    /// What `live_bytes` is: `live` or `resident`.
    pub held: &'static str,
    /// What `live_allocs` counts: `blocks` or `pages`.
    pub units: &'static str,
    /// What `allocated_bytes` is: `allocated` or `populated`.
    pub made: &'static str,
    /// What `alloc_calls` counts: `calls` or `page faults`.
    pub events: &'static str,
    /// The pprof sample types of those four numbers.
    pub pprof: [&'static str; 4],
}

impl TraceInfo {
    pub fn measure(&self) -> Measure {
        if self.mode == "watch" {
            Measure {
                held: "resident",
                units: "pages",
                made: "populated",
                events: "page faults",
                pprof: [
                    "resident_space",
                    "resident_pages",
                    "populated_space",
                    "page_faults",
                ],
            }
        } else {
            Measure {
                held: "live",
                units: "blocks",
                made: "allocated",
                events: "calls",
                pprof: [
                    "inuse_space",
                    "inuse_objects",
                    "alloc_space",
                    "alloc_objects",
                ],
            }
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetReport {
    pub pid: u32,
    /// The PID inside the process's PID namespace (as a container sees it).
    pub ns_pid: u32,
    pub command: String,
    /// The object that serves the process's `malloc`, as the process names it.
    pub allocator: String,
    /// Which allocator that is: `glibc`, `musl`, `jemalloc`, `tcmalloc`, `mimalloc`, or
    /// `allocator` when its symbols do not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub allocator_name: String,
    pub functions: Vec<String>,
    /// Where the `free` probe sits: an offset past the function's entry, and why.
    pub free_probe: String,
    /// Whether the process still ran when the trace ended.
    pub alive_at_end: bool,
    /// Exit status, for a command started by `leaktrace run`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What the reader should know: missing perf maps and the like.
    pub notes: Vec<String>,
    pub totals: Totals,
    /// Where its resident memory is, and whether its allocator's growth is a leak or memory
    /// kept after free; for processes read while alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryReport>,
}

/// Totals and loss counters. Losses are never hidden: each one is reported, zero or not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Heap blocks (allocator calls); mappings are counted apart, below.
    pub live_bytes: i64,
    pub live_allocs: i64,
    pub allocated_bytes: u64,
    pub alloc_calls: u64,
    pub free_calls: u64,
    pub failed_allocs: u64,
    /// Anonymous mappings made outside the allocator: bytes mapped with some access...
    #[serde(default)]
    pub mapped_bytes: i64,
    /// ...in this many mapping calls with a page still mapped...
    #[serde(default)]
    pub mappings: i64,
    /// ...and bytes mapped `PROT_NONE` (reserved address space, not memory in use).
    #[serde(default)]
    pub reserved_bytes: u64,
    /// Watch mode: bytes of the pages populated (first touched), from the page faults
    /// sampled...
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub populated_bytes: i64,
    /// ...the page faults they stand for...
    #[serde(default, skip_serializing_if = "is_zero")]
    pub page_faults: u64,
    /// ...and the bytes of those pages still resident at the end.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub resident_bytes: i64,
    pub losses: Losses,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Losses {
    /// Frees of blocks allocated before the trace began (or whose allocation was not recorded).
    pub unknown_frees: u64,
    /// Allocations not recorded: the live-allocation map was full (raise `--max-live-allocs`).
    pub live_map_full: u64,
    /// Allocations not attributed: the stack map was full (raise `--max-stacks`).
    pub stack_map_full: u64,
    /// Allocations whose stack could not be stored: the stack map was full (raise
    /// `--max-stack-traces`); they are kept under an unknown stack.
    pub stack_capture_failed: u64,
    /// Stacks deeper than the probes walk: their outermost frames are missing (no bytes lost).
    pub stack_truncated: u64,
    /// Allocation calls lost because too many threads were inside the allocator at once.
    pub pending_map_full: u64,
    /// Blocks returned at an address still recorded as live (their free was not seen).
    pub missed_frees: u64,
    /// Allocation calls whose return was not seen (longjmp, or a return probe not placed).
    pub missed_returns: u64,
    /// Mapping changes lost because the event ring was full (raise `--map-events-bytes`):
    /// mapped bytes may be off by what they did.
    #[serde(default)]
    pub map_events_lost: u64,
    /// Watch mode: populated pages whose stack was not kept, `--max-pages` pages being kept
    /// already or the probes' page ring full (raise `--max-pages` or `--fault-period`):
    /// counted as populated, never as resident.
    #[serde(default)]
    pub page_map_full: u64,
    /// Stack walks stopped in code without frame pointers that no unwind row covers.
    #[serde(default)]
    pub unwind_no_row: u64,
    /// Stack walks stopped at an unwind rule the probes cannot follow (signal frames, DWARF
    /// expressions).
    #[serde(default)]
    pub unwind_unsupported: u64,
    /// Stack walks that used up their unwind-table steps and went on by frame pointers.
    #[serde(default)]
    pub unwind_step_limit: u64,
    /// Stack walks stopped where an unwind row led to an unreadable or lower frame.
    #[serde(default)]
    pub unwind_bad_frame: u64,
}

impl std::fmt::Display for Losses {
    /// Every counter, zero or not: a reader must see that nothing was dropped.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} unknown frees (allocated before attach), {} live-map full, {} stack-map full, \
             {} stacks not stored, {} stacks truncated, {} in-flight map full, {} missed frees, \
             {} missed returns, {} mapping events lost, {} pages not kept (page map full), \
             {} walks stopped without an unwind row, {} at an unsupported unwind rule, \
             {} at the unwind step limit, {} at a bad frame",
            self.unknown_frees,
            self.live_map_full,
            self.stack_map_full,
            self.stack_capture_failed,
            self.stack_truncated,
            self.pending_map_full,
            self.missed_frees,
            self.missed_returns,
            self.map_events_lost,
            self.page_map_full,
            self.unwind_no_row,
            self.unwind_unsupported,
            self.unwind_step_limit,
            self.unwind_bad_frame,
        )
    }
}

impl Totals {
    /// Adds another set of totals into this one.
    pub fn add(&mut self, other: &Totals) {
        self.live_bytes += other.live_bytes;
        self.live_allocs += other.live_allocs;
        self.allocated_bytes += other.allocated_bytes;
        self.alloc_calls += other.alloc_calls;
        self.free_calls += other.free_calls;
        self.failed_allocs += other.failed_allocs;
        self.mapped_bytes += other.mapped_bytes;
        self.mappings += other.mappings;
        self.reserved_bytes += other.reserved_bytes;
        self.populated_bytes += other.populated_bytes;
        self.page_faults += other.page_faults;
        self.resident_bytes += other.resident_bytes;
        let (l, o) = (&mut self.losses, &other.losses);
        l.unknown_frees += o.unknown_frees;
        l.live_map_full += o.live_map_full;
        l.stack_map_full += o.stack_map_full;
        l.stack_capture_failed += o.stack_capture_failed;
        l.stack_truncated += o.stack_truncated;
        l.pending_map_full += o.pending_map_full;
        l.missed_frees += o.missed_frees;
        l.missed_returns += o.missed_returns;
        l.map_events_lost += o.map_events_lost;
        l.page_map_full += o.page_map_full;
        l.unwind_no_row += o.unwind_no_row;
        l.unwind_unsupported += o.unwind_unsupported;
        l.unwind_step_limit += o.unwind_step_limit;
        l.unwind_bad_frame += o.unwind_bad_frame;
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StackReport {
    pub pid: u32,
    /// `heap` for allocator blocks, `mmap` for anonymous mappings, `populated` (watch mode) for
    /// the pages a stack touched first.
    pub kind: String,
    /// For `mmap`: bytes mapped with some access (reserved address space is apart). For
    /// `populated`: bytes of the pages this stack populated that are still resident.
    pub live_bytes: i64,
    /// For `populated`: those pages.
    pub live_allocs: i64,
    /// For `populated`: bytes of every page this stack populated, resident or given back.
    pub allocated_bytes: u64,
    /// For `populated`: the page faults.
    pub alloc_calls: u64,
    /// For `mmap`: bytes mapped `PROT_NONE`, address space reserved but not memory in use.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reserved_bytes: u64,
    /// Trend of this site's live bytes over the trace.
    pub growth: Growth,
    /// What kind of memory this site allocates.
    pub origin: Origin,
    /// `[seconds since attach, live bytes]` at each interval.
    pub series: Vec<(f64, i64)>,
    /// Innermost first: the allocation function, then its caller, and so on.
    pub frames: Vec<Frame>,
}

impl StackReport {
    /// The frame a person reads first for a stack: its innermost JavaScript frame of the
    /// program's own code (a script, not Node's library `node:...` nor a builtin), else its innermost JavaScript frame,
    /// else its first named frame past the allocator, else its first frame.
    pub fn culprit_frame(&self) -> Option<&Frame> {
        let named = |f: &&Frame| f.function.is_some();
        let js = |f: &&Frame| f.kind == "js" && f.function.is_some();
        // A builtin (`Uint8Array`) has no script: not the program's own code either.
        let own = |f: &&Frame| js(f) && f.file.as_deref().is_some_and(|p| !p.starts_with("node:"));
        let frames = || self.frames.iter().skip(1);
        frames()
            .find(own)
            .or_else(|| frames().find(js))
            .or_else(|| frames().find(named))
            .or_else(|| self.frames.first())
    }

    /// [`StackReport::culprit_frame`]'s name, with its source location.
    pub fn culprit(&self) -> String {
        let Some(frame) = self.culprit_frame() else {
            return "(no stack)".into();
        };
        let name = frame.function.as_deref().unwrap_or("?");
        match (&frame.file, frame.line) {
            (Some(file), Some(line)) => format!("{name} ({file}:{line})"),
            (Some(file), None) => format!("{name} ({file})"),
            _ => name.to_string(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// The instruction address, hex (`0x7f...`): JSON numbers lose precision above 2^53.
    pub address: String,
    /// `native` here; JS frames are `js`.
    pub kind: String,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The file that holds the code.
    pub module: Option<String>,
    /// Offset of the address in `module`, for frames without a symbol.
    pub module_offset: Option<String>,
    /// This frame was inlined into the one after it.
    pub inlined: bool,
    /// Where the name came from: `dwarf`, `symtab` (ELF symbols only), `perf-map`, `v8`, or
    /// `v8-await` (a function found in a resumed one's promise chain, not on the stack).
    pub source: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// The kind of native memory a stack allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// `Buffer`, `ArrayBuffer` and typed-array backing stores.
    Buffer,
    /// A native addon (`.node` file): see the stack's frames for which.
    NativeAddon,
    /// V8's own heap and metadata.
    V8Heap,
    Libuv,
    Zlib,
    Openssl,
    /// ICU objects behind `Intl` (formatters, collators, segmenters).
    Icu,
    Other,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buffer => "buffer",
            Self::NativeAddon => "native-addon",
            Self::V8Heap => "v8-heap",
            Self::Libuv => "libuv",
            Self::Zlib => "zlib",
            Self::Openssl => "openssl",
            Self::Icu => "icu",
            Self::Other => "other",
        }
    }
}
