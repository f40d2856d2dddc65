//! Loading the probes and attaching them to each target's allocator.

pub mod batch;
pub mod btf;
pub mod fault;
mod mapping;
pub mod placement;
pub mod pool;
mod release;

use std::{
    collections::{HashMap, HashSet},
    fs,
    num::{NonZeroU32, NonZeroU64},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuValues,
    maps::{MapData, RingBuf},
    programs::{
        RawTracePoint, UProbe,
        raw_trace_point::RawTracePointLinkId,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
    },
    util::nr_cpus,
};
use leaktrace_common::{
    JsCached, JsFrames, LiveAlloc, LiveKey, MAX_TARGETS, MapEvent, PageRecord, PendingCall,
    QueuedKey, QueuedWork, STORED_SLOTS, Sampling, StackFrames, StackKey, StackStats, StoredStack,
    TargetCounters, UnwindProcess, UnwindRow, V8Frames,
};
use tracing::{debug, info, warn};

use crate::process::{Allocator, Target};

/// Capacities of the probes' maps, from the command line.
#[derive(Clone, Copy, Debug)]
pub struct MapLimits {
    pub live_allocs: u32,
    pub stacks: u32,
    pub stack_traces: u32,
    /// Watch mode's sampled pages kept at once (by the tracer, from the probes' page ring).
    pub pages: u32,
    /// Bytes of the mapping event ring (a power of two, at least a page).
    pub map_events_bytes: u32,
    /// Rows of the unwind-table array shared by every object walked by table.
    pub unwind_rows: u32,
}

/// What the attached programs do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProbeMode {
    /// Account for every allocation.
    #[default]
    Trace,
    /// Programs that return at once, at the same places: the cost of the traps alone, the
    /// floor that `cargo xtask bench` compares the tracer with.
    Empty,
    /// No uprobe at all: the pages each stack populates, from the `page-faults` event sampled
    /// once every `period` faults (see `fault`), and the mapping syscalls probed as `mapping`
    /// says.
    Watch {
        period: NonZeroU64,
        mapping: MappingProbes,
    },
}

/// How watch mode probes the mapping syscalls (see `mapping`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MappingProbes {
    /// fentry and fexit on the syscalls' functions: nothing on any other syscall, but refused
    /// by kernels in integrity lockdown (then there are no mapping events, and the report says
    /// so).
    #[default]
    Fentry,
    /// The raw syscall tracepoints, as exact tracing: everywhere, at a cost on every syscall of
    /// the host.
    Tracepoints,
}

impl ProbeMode {
    /// Whether allocator calls are probed (exact or empty), rather than page faults watched.
    pub fn traps(self) -> bool {
        !matches!(self, Self::Watch { .. })
    }
}

impl Default for MapLimits {
    fn default() -> Self {
        Self {
            live_allocs: leaktrace_common::DEFAULT_MAX_LIVE_ALLOCS,
            stacks: leaktrace_common::DEFAULT_MAX_STACKS,
            stack_traces: leaktrace_common::DEFAULT_MAX_STACK_TRACES,
            pages: leaktrace_common::DEFAULT_MAX_PAGES,
            map_events_bytes: leaktrace_common::DEFAULT_MAP_EVENTS_BYTES,
            unwind_rows: leaktrace_common::DEFAULT_MAX_UNWIND_ROWS,
        }
    }
}

/// Why the probes could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("following child processes needs the kernel's task layout: {0}")]
    Btf(#[source] btf::BtfError),
    #[error("loading the eBPF programs failed: {0} (is this kernel built with BTF and uprobes?)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the kernel rejected program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {function} in {library} for PID {pid}: {source}")]
    Attach {
        function: String,
        library: String,
        pid: u32,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("reading {path}: {source}")]
    Library {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{library} has no `{function}` symbol: it is not an allocator leaktrace can trace")]
    MissingSymbol { library: String, function: String },
    #[error(
        "`{function}` in {library} is an alias of another allocation function with other \
         arguments; leaktrace cannot trace this library"
    )]
    Alias { library: String, function: String },
    #[error("`{function}` in {library} starts with instructions the kernel cannot probe")]
    Unprobeable { library: String, function: String },

    #[error(
        "opening the page-fault event on CPU {cpu}: {source} (watch mode needs perf events: root \
         or CAP_PERFMON, and a kernel with the page-faults software event)"
    )]
    FaultEvent {
        cpu: u32,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("{0} is missing from the probes object (a build problem: rebuild leaktrace)")]
    Missing(&'static str),
    #[error("updating the target table: {0}")]
    Map(#[source] Box<aya::maps::MapError>),
    #[error("cannot count CPUs: {0}")]
    Cpus(String),
    #[error("PID 0 is not a process")]
    NoPid,
}

/// One probed function: the program that serves it, and whether its result is needed.
struct Hook {
    function: String,
    program: &'static str,
    returns: bool,
    required: bool,
}

impl Hook {
    fn new(function: String, program: &'static str, required: bool) -> Self {
        Self {
            returns: program != FREE_PROGRAM,
            function,
            program,
            required,
        }
    }
}

/// The `malloc` family under `prefix`, with its `free` (required when `required`), jemalloc's
/// non-standard API (`mallocx`, `rallocx`, `dallocx`, `sdallocx`) and mimalloc's (`mi_zalloc`
/// and the like) where they exist. Sizes are what was asked for: `rallocx` and `mi_reallocn`
/// behave as `realloc` and `reallocarray`, the `*dallocx` and `mi_free_*` as guarded frees.
fn malloc_hooks(prefix: &str, required: bool) -> Vec<Hook> {
    const FAMILY: &[(&str, &str, bool)] = &[
        ("malloc", ALLOC_ARG0, true),
        ("free", FREE_PROGRAM, true),
        ("calloc", "calloc_enter", true),
        ("realloc", "realloc_enter", true),
        ("reallocarray", "reallocarray_enter", false),
        ("valloc", ALLOC_ARG0, false),
        ("pvalloc", ALLOC_ARG0, false),
        ("memalign", ALLOC_ARG1, false),
        ("aligned_alloc", ALLOC_ARG1, false),
        ("posix_memalign", "posix_memalign_enter", false),
        ("mallocx", ALLOC_ARG0, false),
        ("rallocx", "realloc_enter", false),
        ("dallocx", FREE_GUARDED, false),
        ("sdallocx", FREE_GUARDED, false),
        ("zalloc", ALLOC_ARG0, false),
        ("mallocn", "calloc_enter", false),
        ("reallocn", "reallocarray_enter", false),
        ("malloc_aligned", ALLOC_ARG0, false),
        ("zalloc_aligned", ALLOC_ARG0, false),
        ("realloc_aligned", "realloc_enter", false),
        ("free_size", FREE_GUARDED, false),
        ("free_aligned", FREE_GUARDED, false),
    ];
    FAMILY
        .iter()
        .map(|&(name, program, needed)| {
            Hook::new(format!("{prefix}{name}"), program, needed && required)
        })
        .collect()
}

/// The `operator new` family: new, new[], nothrow and aligned, all with the size first.
const NEW: &[&str] = &[
    "_Znwm",
    "_Znam",
    "_ZnwmRKSt9nothrow_t",
    "_ZnamRKSt9nothrow_t",
    "_ZnwmSt11align_val_t",
    "_ZnamSt11align_val_t",
    "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t",
];

/// The `operator delete` family: plain, sized, nothrow and aligned, all with the pointer first.
const DELETE: &[&str] = &[
    "_ZdlPv",
    "_ZdaPv",
    "_ZdlPvm",
    "_ZdaPvm",
    "_ZdlPvRKSt9nothrow_t",
    "_ZdaPvRKSt9nothrow_t",
    "_ZdlPvSt11align_val_t",
    "_ZdaPvSt11align_val_t",
    "_ZdlPvmSt11align_val_t",
    "_ZdaPvmSt11align_val_t",
    "_ZdlPvSt11align_val_tRKSt9nothrow_t",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t",
];

/// Everything to probe in one object, for its roles.
fn hooks_for(roles: &crate::process::Roles) -> Vec<Hook> {
    let mut hooks = Vec::new();
    if roles.malloc {
        hooks.extend(malloc_hooks("", true));
    }
    for prefix in &roles.prefixes {
        hooks.extend(malloc_hooks(prefix, false));
    }
    if roles.new {
        hooks.extend(
            NEW.iter()
                .map(|f| Hook::new((*f).to_owned(), ALLOC_ARG0, false)),
        );
    }
    if roles.delete {
        hooks.extend(
            DELETE
                .iter()
                .map(|f| Hook::new((*f).to_owned(), FREE_GUARDED, false)),
        );
    }
    if roles.mmap {
        hooks.push(Hook::new("mmap".to_owned(), MMAP_PROGRAM, false));
    }
    hooks
}

/// Whether two programs may share one address: the same program, or two kinds of free (the
/// first one placed counts the block once).
fn compatible(a: &str, b: &str) -> bool {
    a == b
        || [a, b]
            .iter()
            .all(|p| *p == FREE_PROGRAM || *p == FREE_GUARDED)
}

const ALLOC_ARG0: &str = "alloc_size_arg0";
const ALLOC_ARG1: &str = "alloc_size_arg1";
const FREE_GUARDED: &str = "free_guarded";
const MMAP_PROGRAM: &str = "mmap_enter";
const RETURN_PROGRAM: &str = "alloc_return";
const FREE_PROGRAM: &str = "free_enter";
const EMPTY_ENTRY: &str = "empty_enter";
const EMPTY_RETURN: &str = "empty_return";
const PROGRAMS: &[&str] = &[
    EMPTY_ENTRY,
    EMPTY_RETURN,
    ALLOC_ARG0,
    ALLOC_ARG1,
    FREE_GUARDED,
    MMAP_PROGRAM,
    "calloc_enter",
    "realloc_enter",
    "reallocarray_enter",
    "posix_memalign_enter",
    RETURN_PROGRAM,
    FREE_PROGRAM,
    POOL_SUBMIT,
    POOL_QUEUE_WORK,
    POOL_BEGIN,
    POOL_END,
    POOL_CALLBACK_BEGIN,
    POOL_CALLBACK_END,
];

/// The programs on libuv's thread pool (see [`pool`]).
const POOL_SUBMIT: &str = "pool_submit";
const POOL_QUEUE_WORK: &str = "pool_queue_work";
const POOL_BEGIN: &str = "pool_work_begin";
const POOL_END: &str = "pool_work_end";
const POOL_CALLBACK_BEGIN: &str = "pool_callback_begin";
const POOL_CALLBACK_END: &str = "pool_callback_end";

/// Where an allocation function's entry and return probes go: past leading instructions the
/// kernel would single-step (libstdc++'s `operator new` starts with `endbr64`: ~30 µs a call
/// under this VM, 30 times an emulated probe), as long as nothing skipped touches the arguments,
/// the stack pointer (the return probe takes the return address from `*rsp`, the entry probe
/// reads it too) or the frame pointer (the stack walk starts from it). `None`: not probeable.
fn entry_offset(code: &placement::FunctionCode, function: &str, library: &str) -> Option<u64> {
    use placement::PlacementReason as Why;
    let placed = placement::choose(
        &code.bytes,
        code.address,
        placement::Needs {
            arg_regs: &[
                iced_x86::Register::RDI,
                iced_x86::Register::RSI,
                iced_x86::Register::RDX,
                iced_x86::Register::RBP,
            ],
            stack_pointer: true,
        },
    );
    match placed.reason {
        Why::EntryEmulated | Why::AfterPrologue { .. } => Some(placed.offset),
        Why::NoEmulatedInstruction | Why::EntryRejected { .. } => {
            debug!(
                function,
                library,
                offset = placed.offset,
                "probe single-stepped (slow)"
            );
            Some(placed.offset)
        }
        Why::Unprobeable => {
            warn!(
                function,
                library, "cannot be probed: its allocations are seen below it, if at all"
            );
            None
        }
    }
}

/// Says where the `free` probe sits and what it costs; fails when `free` cannot be probed.
fn free_note(placed: &placement::Placement, library: &str) -> Result<String, ProbeError> {
    use placement::PlacementReason as Why;
    Ok(match &placed.reason {
        Why::EntryEmulated => "at entry (emulated by the kernel)".to_string(),
        Why::AfterPrologue { skipped } => {
            format!(
                "at +{} past `{}` (emulated)",
                placed.offset,
                skipped.join("; ")
            )
        }
        Why::NoEmulatedInstruction | Why::EntryRejected { .. } => {
            warn!(
                library,
                offset = placed.offset,
                "no emulated instruction early in free: its probe is single-stepped (slow)"
            );
            format!("at +{} (single-stepped: slow)", placed.offset)
        }
        Why::Unprobeable => {
            return Err(ProbeError::Unprobeable {
                library: library.to_string(),
                function: "free".to_owned(),
            });
        }
    })
}

/// Where the `free` probe of a library sits, for the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FreePlacement {
    pub offset: u64,
    pub note: String,
}

/// What attaching to one target did.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// The object that serves `malloc`.
    pub allocator: Allocator,
    /// Every function probed, in every object.
    pub functions: Vec<String>,
    pub free: FreePlacement,
}

/// What attaching to one object did.
struct Attached {
    functions: Vec<String>,
    free: Option<FreePlacement>,
}

/// The loaded probes and their attachments. Dropping it detaches everything: the kernel removes
/// a uprobe when its last link closes, so even a killed tracer leaves nothing behind.
pub struct Probes {
    ebpf: Ebpf,
    mode: ProbeMode,
    links: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
    /// Following process trees: the fork probe's link, and each (program, file) attached for
    /// every process (the kernel filters by the target table instead of by PID).
    follow: Option<RawTracePointLinkId>,
    /// (program, inode): the same file under another path (a child's `map_files`) is the same
    /// probe target.
    attached_files: HashSet<(&'static str, u64)>,
    /// Mapping changes of targets, in order (see `leaktrace-ebpf`'s `mapping`).
    map_events: Option<RingBuf<MapData>>,
    /// Watch mode's sampled page faults, in order (see `leaktrace-ebpf`'s `fault`).
    page_events: Option<RingBuf<MapData>>,
    /// Targets given a slot of the probes' fast path (`TARGET_SLOTS`), and the slot.
    slots: HashMap<u32, u32>,
    /// Targets whose thread pool is probed, each counted in its `POOL_SLOTS` slot.
    pools: HashSet<u32>,
    /// Watch mode's page-fault events.
    faults: Option<fault::FaultEvents>,
    /// Why watch mode has no mapping events, when it has none.
    mapping_off: Option<String>,
    /// The links of the mapping programs on the raw syscall tracepoints, when the mode uses
    /// them (empty while parked and no process is attached: see [`Probes::park_syscalls`]).
    syscalls: Option<Vec<(&'static str, RawTracePointLinkId)>>,
    /// Whether the syscall tracepoints are held only while some process is attached.
    syscalls_parked: bool,
}

/// The probability of recording an allocation in each bucket of
/// [`leaktrace_common::sample_bucket`], scaled by 2^32: 1 - exp(-s/n) at the bucket's middle
/// size. Any probability gives unbiased estimates as long as the probes weight each record by the
/// same one; the middle keeps it close to Poisson sampling by bytes.
pub fn sample_table(n: u64) -> Vec<u32> {
    let n = n.max(1) as f64;
    (0..leaktrace_common::SAMPLE_BUCKETS)
        .map(|bucket| {
            let b = f64::from(bucket);
            let size = if bucket < 1024 {
                (b + 0.5) / 1024.0 * n
            } else {
                n + (b - 1024.0 + 0.5) / 1024.0 * 16.0 * n
            };
            let p = 1.0 - (-size / n).exp();
            (p * 4_294_967_296.0)
                .round()
                .clamp(1.0, f64::from(u32::MAX)) as u32
        })
        .collect()
}

/// Probes that fire for one process only.
/// The program that makes a target's children targets.
const FORK_PROGRAM: &str = "follow_fork";

/// The program that counts each target's execs.
const EXEC_PROGRAM: &str = "count_exec";

/// Loads `name` and attaches it to the raw tracepoint `tracepoint`. The link lives as long as
/// the loaded object (or until detached).
fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    tracepoint: &str,
) -> Result<RawTracePointLinkId, ProbeError> {
    raw_tracepoint(ebpf, name)?
        .load()
        .map_err(|source| ProbeError::Program {
            name,
            source: Box::new(source),
        })?;
    link_raw_tracepoint(ebpf, name, tracepoint)
}

/// Attaches the loaded program `name` to the raw tracepoint `tracepoint` (again, after a
/// detach).
fn link_raw_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    tracepoint: &str,
) -> Result<RawTracePointLinkId, ProbeError> {
    raw_tracepoint(ebpf, name)?
        .attach(tracepoint)
        .map_err(|source| ProbeError::Program {
            name,
            source: Box::new(source),
        })
}

fn raw_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut RawTracePoint, ProbeError> {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(ProbeError::Missing(name))
}

/// The programs on the syscall tracepoints, for mappings: (program, tracepoint).
const SYSCALL_PROGRAMS: &[(&str, &str)] =
    &[("syscall_enter", "sys_enter"), ("syscall_exit", "sys_exit")];

fn process_scope(pid: u32) -> Result<UProbeScope, ProbeError> {
    NonZeroU32::new(pid)
        .map(UProbeScope::OneProcess)
        .ok_or(ProbeError::NoPid)
}

/// Largest object read whole to find its functions: the file comes from the target (a
/// container controls it) and may be anything.
const MAX_OBJECT_BYTES: u64 = 1 << 30;

/// Reads an allocator object's ELF file, refusing one over [`MAX_OBJECT_BYTES`].
fn read_library(allocator: &Allocator) -> Result<Vec<u8>, ProbeError> {
    use std::io::Read as _;
    let error = |source| ProbeError::Library {
        path: allocator.host_path.display().to_string(),
        source,
    };
    let file = fs::File::open(&allocator.host_path).map_err(error)?;
    let len = file.metadata().map_err(error)?.len();
    if len > MAX_OBJECT_BYTES {
        return Err(error(std::io::Error::other(format!(
            "{len} bytes, over the {MAX_OBJECT_BYTES}-byte cap for an allocator object"
        ))));
    }
    let mut data = Vec::with_capacity(len as usize);
    file.take(MAX_OBJECT_BYTES)
        .read_to_end(&mut data)
        .map_err(error)?;
    Ok(data)
}

impl Probes {
    /// Attaches the programs of each hook found in `elf`: one multi-uprobe link per program.
    fn attach_functions(
        &mut self,
        target: &Target,
        object: &Allocator,
        elf: &[u8],
        hooks: &[Hook],
    ) -> Result<Attached, ProbeError> {
        let library = object.host_path.display().to_string();
        let scope = self.scope(target.pid)?;
        let mut attached = Attached {
            functions: Vec::new(),
            free: None,
        };
        // Offsets already probed, with the program there: glibc's aligned_alloc is an alias of
        // memalign, tcmalloc's operator delete of free, and two probes at one address would
        // both fire on every call.
        let mut probed: HashMap<u64, &'static str> = HashMap::new();
        let mut by_program: Vec<(&'static str, Vec<(String, u64)>)> = Vec::new();
        let mut returns = Vec::new();
        for hook in hooks {
            let code = match placement::function_bytes(
                elf,
                &hook.function,
                placement::MAX_SCAN_BYTES,
            ) {
                Ok(code) => code,
                Err(err) if hook.required => {
                    debug!(%err, function = hook.function, "symbol lookup failed");
                    return Err(ProbeError::MissingSymbol {
                        library,
                        function: hook.function.clone(),
                    });
                }
                Err(err) => {
                    debug!(%err, function = hook.function, "optional allocator function absent");
                    continue;
                }
            };
            if let Some(&program) = probed.get(&code.file_offset) {
                if compatible(program, hook.program) {
                    debug!(
                        function = hook.function,
                        "an alias of a function already probed"
                    );
                    attached.functions.push(hook.function.clone());
                    continue;
                }
                if hook.required {
                    return Err(ProbeError::Alias {
                        library,
                        function: hook.function.clone(),
                    });
                }
                warn!(
                    function = hook.function,
                    library, "an alias of another allocation function: not probed"
                );
                continue;
            }
            probed.insert(code.file_offset, hook.program);
            let offset = if hook.program == FREE_PROGRAM {
                // Entry only: it reads the pointer and nothing else.
                let placed = placement::choose(
                    &code.bytes,
                    code.address,
                    placement::Needs {
                        arg_regs: &[iced_x86::Register::RDI],
                        stack_pointer: false,
                    },
                );
                attached.free = Some(FreePlacement {
                    offset: placed.offset,
                    note: free_note(&placed, &library)?,
                });
                placed.offset
            } else {
                let Some(offset) = entry_offset(&code, &hook.function, &library) else {
                    continue;
                };
                offset
            };
            let at = code.file_offset + offset;
            match by_program.iter_mut().find(|(p, _)| *p == hook.program) {
                Some((_, points)) => points.push((hook.function.clone(), at)),
                None => by_program.push((hook.program, vec![(hook.function.clone(), at)])),
            }
            if hook.returns {
                returns.push((hook.function.clone(), at));
            }
            attached.functions.push(hook.function.clone());
        }
        // One multi-uprobe link per program: attaching and, above all, detaching cost one
        // kernel grace period per link, not per function.
        by_program.push((RETURN_PROGRAM, returns));
        for (program, points) in &by_program {
            self.attach_many(program, points, object, scope, target.pid)?;
        }
        Ok(attached)
    }

    /// Loads the probes with the given map capacities. With `follow`, every process a target
    /// forks becomes a target before it runs, and the uprobes are attached for every process
    /// that maps an allocator file, the kernel keeping to targets by the target table: a
    /// process tree is traced from each member's first allocation, at the price of a trap (and
    /// one failed lookup) in every other process's calls to the same allocator.
    pub fn load(limits: MapLimits, mode: ProbeMode, follow: bool) -> Result<Self, ProbeError> {
        let offsets = if follow {
            Some(btf::task_offsets().map_err(ProbeError::Btf)?)
        } else {
            None
        };
        let mut loader = EbpfLoader::new();
        if let Some(offsets) = &offsets {
            loader
                .override_global("TASK_PID_OFFSET", &offsets.pid, true)
                .override_global("TASK_TGID_OFFSET", &offsets.tgid, true);
        }
        let mut ebpf = loader
            .map_max_entries("MAP_EVENTS", limits.map_events_bytes)
            .map_max_entries("LIVE", limits.live_allocs)
            .map_max_entries("STACK_STATS", limits.stacks)
            .map_max_entries("STACKS", limits.stack_traces)
            .map_max_entries("JS_STACKS", limits.stack_traces)
            .map_max_entries("JS_CACHE", limits.stack_traces)
            .map_max_entries("UNWIND_ROWS", limits.unwind_rows)
            // Only the page-fault program writes it: a page's worth when allocator calls are
            // probed instead.
            .map_max_entries(
                "PAGE_EVENTS",
                if mode.traps() {
                    leaktrace_common::PAGE_BYTES as u32
                } else {
                    leaktrace_common::PAGE_EVENTS_BYTES
                },
            )
            .load(aya::include_bytes_aligned!(concat!(
                env!("OUT_DIR"),
                "/leaktrace-probes"
            )))
            .map_err(|e| ProbeError::Load(Box::new(e)))?;
        // Watch mode loads no uprobe program: verifying them is most of the load time.
        let uprobes = if mode.traps() { PROGRAMS } else { &[] };
        for &name in uprobes {
            let program: &mut UProbe = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or(ProbeError::Missing(name))?;
            program.load().map_err(|source| ProbeError::Program {
                name,
                source: Box::new(source),
            })?;
        }
        let follow = match offsets {
            Some(_) => Some(attach_raw_tracepoint(
                &mut ebpf,
                FORK_PROGRAM,
                "sched_process_fork",
            )?),
            None => None,
        };
        attach_raw_tracepoint(&mut ebpf, EXEC_PROGRAM, "sched_process_exec")?;
        let faults = match mode {
            ProbeMode::Watch { period, .. } => Some(fault::FaultEvents::open(&mut ebpf, period)?),
            _ => None,
        };
        // Their links live as long as the loaded object, unless parked.
        let mut mapping_off = None;
        let mut syscalls = None;
        let mapping = match mode {
            ProbeMode::Trace
            | ProbeMode::Watch {
                mapping: MappingProbes::Tracepoints,
                ..
            } => {
                let mut links = Vec::new();
                for &(name, tracepoint) in SYSCALL_PROGRAMS {
                    links.push((name, attach_raw_tracepoint(&mut ebpf, name, tracepoint)?));
                }
                syscalls = Some(links);
                true
            }
            ProbeMode::Watch {
                mapping: MappingProbes::Fentry,
                ..
            } => match mapping::attach(&mut ebpf) {
                Ok(()) => true,
                Err(why) => {
                    info!(%why, "no mapping events in watch mode");
                    mapping_off = Some(why);
                    false
                }
            },
            ProbeMode::Empty => false,
        };
        let map_events = if mapping {
            let map = ebpf
                .take_map("MAP_EVENTS")
                .ok_or(ProbeError::Missing("MAP_EVENTS"))?;
            Some(RingBuf::try_from(map).map_err(|e| ProbeError::Map(Box::new(e)))?)
        } else {
            None
        };
        let page_events = if mode.traps() {
            None
        } else {
            let map = ebpf
                .take_map("PAGE_EVENTS")
                .ok_or(ProbeError::Missing("PAGE_EVENTS"))?;
            Some(RingBuf::try_from(map).map_err(|e| ProbeError::Map(Box::new(e)))?)
        };
        Ok(Self {
            ebpf,
            mode,
            links: HashMap::new(),
            slots: HashMap::new(),
            pools: HashSet::new(),
            follow,
            attached_files: HashSet::new(),
            map_events,
            page_events,
            mapping_off,
            faults,
            syscalls,
            syscalls_parked: false,
        })
    }

    /// Holds the syscall tracepoints (the mapping events of exact mode) only while some process
    /// is attached, from now on: they fire on every syscall of the host, traced or not, and a
    /// probe set that stays loaded with nothing attached (the agent's exact windows, closed
    /// most of the time) would make every process of the node pay them.
    pub fn park_syscalls(&mut self) {
        self.syscalls_parked = true;
        if self.links.is_empty() {
            self.disarm_syscalls();
        }
    }

    /// Attaches the syscall tracepoints again if parked and detached.
    fn arm_syscalls(&mut self) -> Result<(), ProbeError> {
        let Some(links) = self.syscalls.as_mut() else {
            return Ok(());
        };
        if !links.is_empty() {
            return Ok(());
        }
        for &(name, tracepoint) in SYSCALL_PROGRAMS {
            links.push((name, link_raw_tracepoint(&mut self.ebpf, name, tracepoint)?));
        }
        debug!("syscall tracepoints attached");
        Ok(())
    }

    fn disarm_syscalls(&mut self) {
        let Some(links) = self.syscalls.as_mut() else {
            return;
        };
        let mut owned = Vec::new();
        for (name, link) in links.drain(..) {
            let Some(program) = self
                .ebpf
                .program_mut(name)
                .and_then(|p| <&mut RawTracePoint>::try_from(p).ok())
            else {
                continue;
            };
            match program.take_link(link) {
                Ok(link) => owned.push(link),
                Err(err) => warn!(%err, name, "detaching a syscall tracepoint failed"),
            }
        }
        release::release_all(owned);
        debug!("syscall tracepoints detached: no process attached");
    }

    /// Switches the probes to Poisson sampling by bytes with mean interval `n` (0: exact). An
    /// allocation of `s` bytes is then recorded with probability 1 - exp(-s/n), weighted by the
    /// inverse of the probability it had, so sums are unbiased estimates.
    pub fn set_sampling(&mut self, n: u64) -> Result<(), ProbeError> {
        let map_err = |e| ProbeError::Map(Box::new(e));
        let mut table = array_mut::<u32>(&mut self.ebpf, "SAMPLE_TABLE")?;
        for (bucket, p32) in sample_table(n).into_iter().enumerate() {
            table.set(bucket as u32, &p32, 0).map_err(map_err)?;
        }
        array_mut::<Sampling>(&mut self.ebpf, "SAMPLING")?
            .set(0, &Sampling { sample_bytes: n }, 0)
            .map_err(map_err)
    }

    /// Time the kernel has spent running the probes' programs (counted only while BPF run-time
    /// statistics are enabled).
    pub fn run_time(&self) -> std::time::Duration {
        self.program_stats().0
    }

    /// The programs' run time and runs, summed (counted only while BPF run-time statistics are
    /// enabled): the allocator, pool and page-fault programs, which run for the targets. The
    /// mapping syscalls' programs are left out: at the syscall tracepoints or fentry they run
    /// for every process of the host, and no sampling rate a budget could raise changes them.
    pub fn program_stats(&self) -> (std::time::Duration, u64) {
        PROGRAMS
            .iter()
            .chain([fault::FAULT_PROGRAM].iter())
            .filter_map(|&name| self.ebpf.program(name)?.info().ok())
            .fold((std::time::Duration::ZERO, 0), |(time, runs), info| {
                (time + info.run_time(), runs + info.run_count())
            })
    }

    /// The loaded object, for reading its maps.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// Starts tracing `target`: attaches the probes to the object that serves its `malloc`,
    /// then registers it with them. In that order, the probes start counting for it at one
    /// instant, all together: registered first, the mapping probes (always attached) would see
    /// the allocator's own mappings as the program's until the allocator's probes were in.
    pub fn attach(
        &mut self,
        target: &Target,
        allocator: &Allocator,
    ) -> Result<Attachment, ProbeError> {
        if !self.mode.traps() {
            // Watched: the page-fault program counts a process from its entry in the table.
            self.register(target.pid)?;
            return Ok(Attachment {
                allocator: allocator.clone(),
                functions: Vec::new(),
                free: FreePlacement {
                    offset: 0,
                    note: "none: watch mode places no probe".to_owned(),
                },
            });
        }
        // Mappings are followed from before the first probe is in place.
        if self.syscalls_parked {
            self.arm_syscalls()?;
        }
        let attached = self.attach_object(target, allocator).and_then(|attached| {
            let free = attached.free.ok_or_else(|| ProbeError::MissingSymbol {
                library: allocator.host_path.display().to_string(),
                function: "free".to_owned(),
            })?;
            Ok(Attachment {
                allocator: allocator.clone(),
                functions: attached.functions,
                free,
            })
        });
        match attached {
            Ok(attachment) => match self.register(target.pid) {
                Ok(()) => Ok(attachment),
                Err(err) => {
                    self.detach(target.pid);
                    Err(err)
                }
            },
            Err(err) => {
                self.detach(target.pid);
                Err(err)
            }
        }
    }

    /// Attaches to one more object of an already registered target, for its roles: the C++
    /// runtime's `operator new` (libstdc++ keeps no frame pointers: probed only at `malloc`, a
    /// C++ allocation's stack would lose the function that called `new`; probed at `operator
    /// new`, the `malloc` inside is a nested call, counted once), the C library's `mmap`, an
    /// allocator's prefixed API, or the allocator of an image the target exec'd. Returns the
    /// functions probed.
    pub fn attach_more(
        &mut self,
        target: &Target,
        object: &Allocator,
    ) -> Result<Vec<String>, ProbeError> {
        if !self.mode.traps() {
            return Ok(Vec::new());
        }
        self.attach_object(target, object).map(|a| a.functions)
    }

    fn attach_object(
        &mut self,
        target: &Target,
        object: &Allocator,
    ) -> Result<Attached, ProbeError> {
        let elf = read_library(object)?;
        self.attach_functions(target, object, &elf, &hooks_for(&object.roles))
    }

    /// Attaches one program at one location of `library` for `pid`.
    fn attach_many(
        &mut self,
        program: &'static str,
        points: &[(String, u64)],
        object: &Allocator,
        scope: UProbeScope,
        pid: u32,
    ) -> Result<(), ProbeError> {
        let library = object.host_path.as_path();
        if points.is_empty() {
            return Ok(());
        }
        let program = match (self.mode, program) {
            (ProbeMode::Trace, program) => program,
            (ProbeMode::Empty, RETURN_PROGRAM) => EMPTY_RETURN,
            (ProbeMode::Empty, _) => EMPTY_ENTRY,
            (ProbeMode::Watch { .. }, program) => program,
        };
        // Following, a file's probes serve every process: attached once.
        if self.follow.is_some() && !self.attached_files.insert((program, object.inode)) {
            return Ok(());
        }
        let prog: &mut UProbe = self
            .ebpf
            .program_mut(program)
            .and_then(|p| p.try_into().ok())
            .ok_or(ProbeError::Missing(program))?;
        let locations = points
            .iter()
            .map(|&(_, offset)| UProbeAttachLocation::AbsoluteOffset(offset));
        let link = prog
            .attach(locations, library, scope)
            .map_err(|source| ProbeError::Attach {
                function: points[0].0.clone(),
                library: library.display().to_string(),
                pid,
                source: Box::new(source),
            })?;
        self.links.entry(pid).or_default().push((program, link));
        Ok(())
    }

    /// Stitches the work `pid` queues to libuv's thread pool in the object at `path` (inode
    /// `inode`) to the code that queued it (see [`pool`]). Not in the empty-probes mode: those
    /// probes fire once per work item, not per allocation.
    pub fn attach_pool(
        &mut self,
        pid: u32,
        path: &std::path::Path,
        inode: u64,
        sites: &pool::PoolSites,
    ) -> Result<(), ProbeError> {
        if self.mode == ProbeMode::Empty {
            return Ok(());
        }
        let scope = self.scope(pid)?;
        // The call's probe gets the call's length: where `worker` resumes.
        let mut points = vec![
            (POOL_QUEUE_WORK, "uv_queue_work", sites.queue_work, None),
            (
                POOL_BEGIN,
                "worker",
                sites.begin,
                Some(sites.end - sites.begin),
            ),
            (POOL_END, "worker", sites.end, None),
        ];
        if let Some(submit) = sites.submit {
            points.push((POOL_SUBMIT, "uv__work_submit", submit, None));
        }
        if let Some((call, after)) = sites.callback {
            points.push((
                POOL_CALLBACK_BEGIN,
                "uv__work_done",
                call,
                Some(after - call),
            ));
            points.push((POOL_CALLBACK_END, "uv__work_done", after, None));
        }
        for (program, function, offset, cookie) in points {
            // Following, a file's probes serve every process: attached once.
            if self.follow.is_some() && !self.attached_files.insert((program, inode)) {
                continue;
            }
            let prog: &mut UProbe = self
                .ebpf
                .program_mut(program)
                .and_then(|p| p.try_into().ok())
                .ok_or(ProbeError::Missing(program))?;
            let link = prog
                .attach(
                    [UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(offset),
                        cookie,
                    }],
                    path,
                    scope,
                )
                .map_err(|source| ProbeError::Attach {
                    function: function.to_owned(),
                    library: path.display().to_string(),
                    pid,
                    source: Box::new(source),
                })?;
            self.links.entry(pid).or_default().push((program, link));
        }
        if self.pools.insert(pid) {
            self.count_pool(pid % MAX_TARGETS, 1)?;
            if self.follow.is_some() {
                // The probes serve the whole tree, its children before they are seen too.
                self.count_pool(MAX_TARGETS, 1)?;
            }
        }
        Ok(())
    }

    /// Adds `by` to the count of probed pools in `POOL_SLOTS` slot `slot`, which the stack
    /// walks of the processes there check before looking for the work their thread runs.
    fn count_pool(&mut self, slot: u32, by: i32) -> Result<(), ProbeError> {
        let map_err = |e| ProbeError::Map(Box::new(e));
        let mut slots = array_mut::<u32>(&mut self.ebpf, "POOL_SLOTS")?;
        let n = slots.get(&slot, 0).map_err(map_err)?;
        slots
            .set(slot, &n.saturating_add_signed(by), 0)
            .map_err(map_err)
    }

    /// Adds `pid` to the probes' target table, with zeroed counters, and gives it the slot of
    /// the allocator probes' fast path while that is free (`TARGET_SLOTS`). Its counters are
    /// then the sum of both places.
    fn register(&mut self, pid: u32) -> Result<(), ProbeError> {
        let zero = per_cpu_default::<TargetCounters>;
        let map_err = |e| ProbeError::Map(Box::new(e));
        self.targets_mut()?
            .insert(&pid, zero()?, 0)
            .map_err(map_err)?;
        let slot = pid % MAX_TARGETS;
        if self.slots.values().any(|&taken| taken == slot) {
            return Ok(());
        }
        let map = self
            .ebpf
            .map_mut("SLOT_COUNTERS")
            .ok_or(ProbeError::Missing("SLOT_COUNTERS"))?;
        aya::maps::PerCpuArray::<_, TargetCounters>::try_from(map)
            .map_err(map_err)?
            .set(slot, zero()?, 0)
            .map_err(map_err)?;
        // Counters first: the probes use the slot as soon as it names the target.
        array_mut::<u32>(&mut self.ebpf, "TARGET_SLOTS")?
            .set(slot, &pid, 0)
            .map_err(map_err)?;
        self.slots.insert(pid, slot);
        Ok(())
    }

    /// Targets that have a slot of the probes' fast path, with the slot.
    pub fn slots(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.slots.iter().map(|(&pid, &slot)| (pid, slot))
    }

    /// Tells the probes V8's frame layout in `pid`, so that its stacks' JavaScript frames are
    /// recognised and identified; `None` when it runs no V8 (any more: an exec).
    pub fn set_v8(&mut self, pid: u32, layout: Option<V8Frames>) -> Result<(), ProbeError> {
        let mut layouts = hash_map_mut::<u32, V8Frames>(&mut self.ebpf, "V8_TARGETS")?;
        match layout {
            Some(layout) => layouts.insert(&pid, &layout, 0),
            // Absent already is what was wanted.
            None => layouts.remove(&pid).or(Ok(())),
        }
        .map_err(|e| ProbeError::Map(Box::new(e)))?;
        self.note_v8_present()
    }

    /// Writes rows of unwind tables into the probes' row array from index `first`.
    pub fn load_unwind_rows(&mut self, first: u32, rows: &[UnwindRow]) -> Result<(), ProbeError> {
        let mut array = array_mut::<UnwindRow>(&mut self.ebpf, "UNWIND_ROWS")?;
        for (n, row) in rows.iter().enumerate() {
            array
                .set(first + n as u32, row, 0)
                .map_err(|e| ProbeError::Map(Box::new(e)))?;
        }
        Ok(())
    }

    /// Tells the probes which mappings of `pid` are walked by table (`None`: none are).
    pub fn set_unwind(
        &mut self,
        pid: u32,
        mappings: Option<&UnwindProcess>,
    ) -> Result<(), ProbeError> {
        let mut procs = hash_map_mut::<u32, UnwindProcess>(&mut self.ebpf, "UNWIND_PROCS")?;
        match mappings {
            Some(mappings) => procs.insert(&pid, mappings, 0),
            // Absent already is what was wanted.
            None => procs.remove(&pid).or(Ok(())),
        }
        .map_err(|e| ProbeError::Map(Box::new(e)))
    }

    /// Tells the probes whether any target runs V8 (see the `V8_PRESENT` map).
    fn note_v8_present(&mut self) -> Result<(), ProbeError> {
        let present = hash_map_mut::<u32, V8Frames>(&mut self.ebpf, "V8_TARGETS")?
            .keys()
            .next()
            .is_some();
        array_mut::<u32>(&mut self.ebpf, "V8_PRESENT")?
            .set(0, &u32::from(present), 0)
            .map_err(|e| ProbeError::Map(Box::new(e)))
    }

    /// Stops tracing `pid`: its probes are detached, all at once (see [`release`]); its counts
    /// stay readable.
    pub fn detach(&mut self, pid: u32) {
        release::release_all(self.take_links(pid));
        self.detached(pid);
    }

    /// Takes `pid`'s links from their programs, to be closed by the caller.
    fn take_links(&mut self, pid: u32) -> Vec<UProbeLink> {
        let mut owned = Vec::new();
        for (program, link) in self.links.remove(&pid).unwrap_or_default() {
            let Some(prog) = self
                .ebpf
                .program_mut(program)
                .and_then(|p| <&mut UProbe>::try_from(p).ok())
            else {
                continue;
            };
            match prog.take_link(link) {
                Ok(link) => owned.push(link),
                Err(err) => debug!(%err, program, pid, "detach failed (the process may be gone)"),
            }
        }
        owned
    }

    /// What follows closing `pid`'s links: its pool uncounted, the syscall tracepoints let go
    /// with the last target when parked.
    fn detached(&mut self, pid: u32) {
        if self.pools.remove(&pid)
            && let Err(err) = self.count_pool(pid % MAX_TARGETS, -1)
        {
            debug!(%err, pid, "uncounting its pool failed: its walks keep looking up work");
        }
        if self.syscalls_parked && self.links.is_empty() {
            self.disarm_syscalls();
        }
    }

    /// Whether the file with this inode is probed for every process already (following process
    /// trees): a child's objects are its parent's.
    pub fn covers(&self, inode: u64) -> bool {
        self.follow.is_some() && self.attached_files.iter().any(|&(_, i)| i == inode)
    }

    /// Hands `each` the page faults the probes sampled since the last call, in the order they
    /// happened: each page with the stack that populated it.
    pub fn drain_pages(&mut self, mut each: impl FnMut(PageRecord)) {
        let Some(ring) = self.page_events.as_mut() else {
            return;
        };
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<PageRecord>() {
                // SAFETY: the probes write whole `PageRecord`s, plain data for which any bytes
                // are valid; the read is unaligned-safe.
                each(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<PageRecord>()) });
            }
        }
    }

    /// Whether allocator calls are probed; in watch mode no uprobe is placed.
    pub fn traps(&self) -> bool {
        self.mode.traps()
    }

    /// Whether process trees are followed (see [`Probes::load`]).
    pub fn follows(&self) -> bool {
        self.follow.is_some()
    }

    /// Every process in the target table: the targets attached, and in follow mode the
    /// children they forked since.
    pub fn registered(&self) -> Vec<u32> {
        let Some(map) = self.ebpf.map("TARGETS") else {
            return Vec::new();
        };
        match aya::maps::PerCpuHashMap::<&aya::maps::MapData, u32, TargetCounters>::try_from(map) {
            Ok(targets) => targets.keys().flatten().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Children of targets that went untraced because the target table was full.
    pub fn forks_missed(&self) -> u64 {
        self.ebpf
            .map("FORKS_MISSED")
            .and_then(|map| aya::maps::Array::<&aya::maps::MapData, u64>::try_from(map).ok())
            .and_then(|slot| slot.get(&0, 0).ok())
            .unwrap_or(0)
    }

    /// Hands every mapping event waiting in the ring to `each`, oldest first.
    /// What the report should say when watch mode could not probe the mapping syscalls.
    pub fn mapping_note(&self) -> Option<String> {
        self.mapping_off.as_ref().map(|why| {
            format!(
                "no mapping events ({why}): mmap'd memory has no call stack (V8's heap is \
                 still known, by its pages' headers); --syscall-tracepoints probes the mapping \
                 syscalls at the raw syscall tracepoints instead, at about 50 ns on every \
                 syscall of the host"
            )
        })
    }

    pub fn drain_map_events(&mut self, mut each: impl FnMut(MapEvent)) {
        let Some(ring) = self.map_events.as_mut() else {
            return;
        };
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<MapEvent>() {
                // SAFETY: the probes write whole `MapEvent`s, plain data for which any bytes are
                // valid; the read is unaligned-safe.
                each(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<MapEvent>()) });
            }
        }
    }

    /// How many times `pid` has exec'd since it became a target.
    pub fn execs(&self, pid: u32) -> u64 {
        self.ebpf
            .map("EXECS")
            .and_then(|map| aya::maps::HashMap::<&aya::maps::MapData, u32, u64>::try_from(map).ok())
            .and_then(|execs| execs.get(&pid, 0).ok())
            .unwrap_or(0)
    }

    fn scope(&self, pid: u32) -> Result<UProbeScope, ProbeError> {
        if self.follow.is_some() {
            Ok(UProbeScope::AllProcesses)
        } else {
            process_scope(pid)
        }
    }

    /// Detaches from every target.
    pub fn detach_all(&mut self) {
        if let Some(link) = self.follow.take()
            && let Some(prog) = self
                .ebpf
                .program_mut(FORK_PROGRAM)
                .and_then(|p| <&mut RawTracePoint>::try_from(p).ok())
            && let Err(err) = prog.detach(link)
        {
            debug!(%err, "detaching the fork probe failed");
        }
        let pids: Vec<u32> = self.links.keys().copied().collect();
        let owned: Vec<UProbeLink> = pids.iter().flat_map(|&pid| self.take_links(pid)).collect();
        release::release_all(owned);
        for pid in pids {
            self.detached(pid);
        }
        if let Some(faults) = self.faults.take() {
            faults.close(&mut self.ebpf);
        }
    }

    /// Drops every entry of a target from the maps (its live blocks, sites, pending calls and
    /// counters) and the stored stacks and JavaScript frames no other process's site uses: an
    /// agent that traces processes as they come and go must not fill its maps with the dead.
    /// Which sites exist is read from the probes' own site table, so sites made since the last
    /// sample go too; mapping sites, which live in the tracer only, come in `mapping_sites`
    /// (every process's, by the probes' keys). Returns what was dropped, for the tracer's
    /// caches. Call after [`Probes::detach`].
    pub fn forget(&mut self, pid: u32, mapping_sites: &[StackKey]) -> Result<Orphans, ProbeError> {
        fn remove_where<K: aya::Pod + Eq, V: aya::Pod>(
            ebpf: &mut Ebpf,
            name: &'static str,
            doomed: impl Fn(&K) -> bool,
        ) -> Result<(), ProbeError> {
            let mut map = hash_map_mut::<K, V>(ebpf, name)?;
            let keys: Vec<K> = map.keys().flatten().filter(|k| doomed(k)).collect();
            for key in keys {
                // An entry gone already (a free racing the sweep) is what we wanted.
                let _ = map.remove(&key);
            }
            Ok(())
        }
        let mut stats = hash_map_mut::<StackKey, StackStats>(&mut self.ebpf, "STACK_STATS")?;
        let mut sites: Vec<StackKey> = stats.keys().flatten().collect();
        // Read once: the same keys say which sites go and what the others still use.
        for key in sites.iter().filter(|k| k.tgid == pid) {
            let _ = stats.remove(key);
        }
        sites.extend_from_slice(mapping_sites);
        let orphans = Orphans::of(pid, &sites);
        remove_where::<LiveKey, LiveAlloc>(&mut self.ebpf, "LIVE", |k| k.tgid == pid)?;
        remove_where::<u64, PendingCall>(&mut self.ebpf, "PENDING", |k| (k >> 32) as u32 == pid)?;
        if !orphans.stacks.is_empty() {
            // Before the stacks go: a probe must not trust its memo of a stack stored.
            self.clear_stored()?;
        }
        let stacks: HashSet<u64> = orphans.stacks.iter().copied().collect();
        remove_where::<u64, StackFrames>(&mut self.ebpf, "STACKS", |k| stacks.contains(k))?;
        let js_ids: HashSet<u64> = orphans.js_ids.iter().copied().collect();
        remove_where::<u64, JsFrames>(&mut self.ebpf, "JS_STACKS", |k| js_ids.contains(k))?;
        remove_where::<u32, V8Frames>(&mut self.ebpf, "V8_TARGETS", |k| *k == pid)?;
        remove_where::<QueuedKey, QueuedWork>(&mut self.ebpf, "QUEUED", |k| k.tgid == pid)?;
        remove_where::<u64, QueuedWork>(&mut self.ebpf, "RUNNING", |k| (k >> 32) as u32 == pid)?;
        remove_where::<u32, UnwindProcess>(&mut self.ebpf, "UNWIND_PROCS", |k| *k == pid)?;
        self.note_v8_present()?;
        // Keyed by a hash of stack and process: the process is in the value.
        let mut cache = hash_map_mut::<u64, JsCached>(&mut self.ebpf, "JS_CACHE")?;
        let doomed: Vec<u64> = cache
            .iter()
            .flatten()
            .filter(|(_, v)| v.tgid == pid)
            .map(|(k, _)| k)
            .collect();
        for key in doomed {
            let _ = cache.remove(&key);
        }
        remove_where::<u32, u64>(&mut self.ebpf, "EXECS", |k| *k == pid)?;
        if let Some(slot) = self.slots.remove(&pid) {
            array_mut::<u32>(&mut self.ebpf, "TARGET_SLOTS")?
                .set(slot, &0, 0)
                .map_err(|e| ProbeError::Map(Box::new(e)))?;
        }
        let _ = self.targets_mut()?.remove(&pid);
        Ok(orphans)
    }

    /// Empties every CPU's memo of stacks stored (see [`StoredStack`]).
    fn clear_stored(&mut self) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut("STORED")
            .ok_or(ProbeError::Missing("STORED"))?;
        let mut stored = aya::maps::PerCpuArray::<_, StoredStack>::try_from(map)
            .map_err(|e| ProbeError::Map(Box::new(e)))?;
        for slot in 0..STORED_SLOTS {
            stored
                .set(slot, per_cpu_default()?, 0)
                .map_err(|e| ProbeError::Map(Box::new(e)))?;
        }
        Ok(())
    }

    fn targets_mut(
        &mut self,
    ) -> Result<aya::maps::PerCpuHashMap<&mut aya::maps::MapData, u32, TargetCounters>, ProbeError>
    {
        let map = self
            .ebpf
            .map_mut("TARGETS")
            .ok_or(ProbeError::Missing("TARGETS"))?;
        aya::maps::PerCpuHashMap::try_from(map).map_err(|e| ProbeError::Map(Box::new(e)))
    }
}

/// A per-CPU map value with every CPU's copy at its default (zero).
fn per_cpu_default<V: aya::Pod + Default + Clone>() -> Result<PerCpuValues<V>, ProbeError> {
    let cpus = nr_cpus().map_err(|(_, e)| ProbeError::Cpus(e.to_string()))?;
    PerCpuValues::try_from(vec![V::default(); cpus.get() as usize])
        .map_err(|e| ProbeError::Cpus(e.to_string()))
}

/// Opens the probes' hash map `name` with its key and value types.
fn hash_map_mut<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<aya::maps::HashMap<&'a mut MapData, K, V>, ProbeError> {
    let map = ebpf.map_mut(name).ok_or(ProbeError::Missing(name))?;
    aya::maps::HashMap::try_from(map).map_err(|e| ProbeError::Map(Box::new(e)))
}

/// Opens the probes' array `name` with its value type.
fn array_mut<'a, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<aya::maps::Array<&'a mut MapData, V>, ProbeError> {
    let map = ebpf.map_mut(name).ok_or(ProbeError::Missing(name))?;
    aya::maps::Array::try_from(map).map_err(|e| ProbeError::Map(Box::new(e)))
}

/// The stored stacks and JavaScript frames (by the probes' keys) that only a forgotten process
/// used.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Orphans {
    pub stacks: Vec<u64>,
    pub js_ids: Vec<u64>,
}

impl Orphans {
    /// What `pid`'s sites use and no other process's site in `sites` does: stacks and
    /// JavaScript frames are shared between processes (a fork's, or identical binaries').
    fn of(pid: u32, sites: &[StackKey]) -> Self {
        let orphaned = |id: fn(&StackKey) -> u64| -> Vec<u64> {
            let kept: HashSet<u64> = sites.iter().filter(|k| k.tgid != pid).map(id).collect();
            let mut ids: Vec<u64> = sites
                .iter()
                .filter(|k| k.tgid == pid)
                .map(id)
                .filter(|i| *i != 0 && !kept.contains(i))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        Self {
            stacks: orphaned(|k| k.stack),
            js_ids: orphaned(|k| k.js_id),
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach_all();
    }
}

#[cfg(test)]
mod tests {
    use leaktrace_common::{StackKey, sample_bucket};

    use super::{Orphans, sample_table};

    #[test]
    fn orphans_are_what_no_other_process_uses() {
        let site = |tgid, stack, js_id| StackKey {
            tgid,
            kind: 0,
            stack,
            js_id,
        };
        let sites = [
            site(7, 1, 0),
            site(7, 2, 20),
            site(7, 2, 21),
            site(7, 3, 30),
            site(8, 3, 0),
            site(8, 4, 21),
        ];
        assert_eq!(
            Orphans::of(7, &sites),
            Orphans {
                stacks: vec![1, 2],
                js_ids: vec![20, 30],
            }
        );
        assert_eq!(Orphans::of(9, &sites), Orphans::default());
    }

    #[test]
    fn sampling_probabilities_follow_poisson_by_bytes() {
        let n = 512 * 1024;
        let table = sample_table(n);
        let p = |size: u64| {
            f64::from(table[sample_bucket(size, n).unwrap() as usize]) / 4_294_967_296.0
        };
        // 1 - exp(-s/N) within the bucket's width.
        assert!((p(n) - (1.0 - (-1.0f64).exp())).abs() < 0.01);
        assert!((p(n / 2) - (1.0 - (-0.5f64).exp())).abs() < 0.01);
        assert!(p(16) > 0.0 && p(16) < 0.001);
        assert!(p(16 * n) > 0.999);
        assert_eq!(
            sample_bucket(17 * n, n),
            None,
            "large blocks are always recorded"
        );
        assert_eq!(sample_bucket(100, 0), None, "N = 0 is exact");
        // Monotone: a larger block is never less likely to be recorded.
        assert!(table.windows(2).all(|w| w[0] <= w[1]));
    }
}
