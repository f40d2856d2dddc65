//! Fuzzing every parser of input that a traced process, a container, a saved file or a user
//! controls. Each target has a corpus in `tests/corpus/<target>/` and two tests:
//!
//! - `replay_<target>` (run by every `cargo test`) feeds it each corpus file and fails on a
//!   panic: a crash the fuzzer saved there is a regression test until the parser is fixed.
//! - `fuzz_<target>` (ignored; `cargo xtask fuzz` runs them) tries generated and mutated
//!   inputs for `LEAKTRACE_FUZZ_SECONDS` and saves what panics as `crash-<hash>`.
//!
//! proptest rather than cargo-fuzz: that needs a nightly toolchain, which a fresh machine
//! cannot always fetch. Each target checks, besides "no panic", the invariants callers rely on.
//!
//! The seeds are real text where the format is text (this machine's `/proc/self/maps`, V8 perf
//! maps, the cgroup lines of Kubernetes, Docker and Podman, the deployment's agent config, a
//! report from `tests/fixtures/report-v1.json` cut down). The ELF seeds are built from a C file
//! defining `malloc` and `free`, `calloc` as an IFUNC and a local `calloc_impl`:
//! `gcc -O2 -fPIC -nostdlib -shared -Wl,-soname,libtiny.so.1 -Wl,--version-script=...
//! -Wl,-z,noseparate-code -Wl,-z,max-page-size=0x1000 -lc`, then `strip` (dynsym only) or
//! `strip --strip-debug` (symtab kept). The prologue seeds are `as` output: glibc-like `malloc`
//! and `free` entries, a branch back into the prologue, a `lock`-prefixed entry, a cut
//! instruction.
#![allow(
    unused_crate_dependencies,
    reason = "the library's dependencies are not used here"
)]

#[path = "fuzz/driver.rs"]
mod driver;

use std::{
    cell::RefCell,
    ffi::{OsStr, OsString},
    os::unix::ffi::OsStrExt as _,
    path::Path,
};

use clap::{CommandFactory as _, FromArgMatches as _};
use driver::{MAX_LEN, Target};
use iced_x86::Register::{RDI, RSI};
use leaktrace::{
    agent::{
        config::{AgentArgs, AgentConfig},
        pods::PodMeta,
    },
    cli::{self, Cli},
    probe::placement::{self, Needs},
    process::{allocator, cgroup, maps, stat, symbols},
    report::{self, Format},
    symbolize::perfmap,
};
use proptest::{collection::vec, prelude::*, sample::Index};
use serde_json::{Value, json};

macro_rules! targets {
    ($($target:ident: $replay:ident, $fuzz:ident;)*) => {
        /// Every target, to check that each corpus directory belongs to one.
        const TARGETS: &[&Target] = &[$(&$target),*];
        $(
            #[test]
            fn $replay() {
                driver::replay(&$target);
            }

            #[test]
            #[ignore = "runs for LEAKTRACE_FUZZ_SECONDS: `cargo xtask fuzz` runs every target"]
            fn $fuzz() {
                driver::fuzz(&$target);
            }
        )*
    };
}

targets! {
    PROC_MAPS: replay_proc_maps, fuzz_proc_maps;
    PROC_STAT: replay_proc_stat, fuzz_proc_stat;
    PERF_MAP: replay_perf_map, fuzz_perf_map;
    PROLOGUE: replay_prologue, fuzz_prologue;
    ELF_SYMBOLS: replay_elf_symbols, fuzz_elf_symbols;
    OBJECT_INFO: replay_object_info, fuzz_object_info;
    CGROUP: replay_cgroup, fuzz_cgroup;
    DURATIONS: replay_durations, fuzz_durations;
    REPORT: replay_report, fuzz_report;
    AGENT_CONFIG: replay_agent_config, fuzz_agent_config;
}

#[test]
fn every_corpus_belongs_to_a_target() {
    let root = driver::corpus_dir("");
    for entry in std::fs::read_dir(&root).expect("the corpus directory is readable") {
        let name = entry.expect("a readable corpus entry").file_name();
        assert!(
            TARGETS.iter().any(|t| OsStr::new(t.name) == name),
            "{} has no fuzz target: saved crashes there would never be replayed",
            root.join(name).display()
        );
    }
}

/// The report and ELF generators start from seeds that parse: were those to go stale (a new
/// report format version, say), the renderers and the symbol lookups would go unfuzzed.
#[test]
fn seeds_reach_past_the_parsers() {
    for name in ["report-v1.json", "report-v1-gate.json"] {
        let path = driver::corpus_dir("report").join(name);
        report::read(&path).unwrap_or_else(|e| panic!("{e}"));
    }
    for name in ["libtiny-dynsym.so", "libtiny-symtab.so"] {
        let elf = std::fs::read(driver::corpus_dir("elf_symbols").join(name))
            .expect("the ELF seeds are readable");
        placement::function_bytes(&elf, "malloc", 64).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Text lines of a format, joined: most generators build a line at a time.
fn lines(line: impl Strategy<Value = String> + 'static, most: usize) -> BoxedStrategy<Vec<u8>> {
    vec(line, 0..most)
        .prop_map(|lines| lines.join("\n").into_bytes())
        .boxed()
}

/// A regex strategy compiled once: a `&str` used as a strategy compiles it for every value.
fn re(pattern: &str) -> BoxedStrategy<String> {
    proptest::string::string_regex(pattern)
        .expect("a valid pattern")
        .boxed()
}

// ---- /proc/PID/stat: written by the kernel, but the command name in it is the target's.

static PROC_STAT: Target = Target {
    name: "proc_stat",
    run: proc_stat,
    generate: proc_stat_inputs,
    tokens: &[
        b"(",
        b")",
        b") ",
        b" Z ",
        b" S ",
        b" ",
        b"18446744073709551615",
    ],
    max_len: MAX_LEN,
};

fn proc_stat(input: &[u8]) {
    if let Some(s) = stat::parse(&String::from_utf8_lossy(input)) {
        let _ = s.is_alive();
    }
}

fn proc_stat_inputs(_: &[Vec<u8>]) -> BoxedStrategy<Vec<u8>> {
    (
        any::<u32>(),
        re("[ -~]{0,20}"),
        re("[RSDZXTtI]"),
        vec(any::<u64>(), 0..30),
    )
        .prop_map(|(pid, comm, state, fields)| {
            let rest: Vec<String> = fields.iter().map(u64::to_string).collect();
            format!("{pid} ({comm}) {state} {}\n", rest.join(" ")).into_bytes()
        })
        .boxed()
}

// ---- /proc/PID/maps: written by the kernel, but paths are chosen by the target.

static PROC_MAPS: Target = Target {
    name: "proc_maps",
    run: proc_maps,
    generate: proc_maps_inputs,
    tokens: &[
        b"-",
        b" ",
        b"r-xp",
        b"rw-s",
        b"---p",
        b"00:00",
        b"fe:01",
        b" (deleted)",
        b"[vdso]",
        b"/",
        b"ffffffffffffffff",
    ],
    max_len: MAX_LEN,
};

fn proc_maps(input: &[u8]) {
    // Read as `Target::mappings` reads the file.
    for m in maps::parse(&String::from_utf8_lossy(input)) {
        assert!(m.path.as_ref().is_none_or(|p| p.is_absolute()), "{m:?}");
        let _ = m.is_executable();
    }
}

fn proc_maps_inputs(_: &[Vec<u8>]) -> BoxedStrategy<Vec<u8>> {
    let path = prop_oneof![
        Just(String::new()),
        re("/[ -~]{0,40}"),
        re("\\[(heap|stack|vdso|vvar|vsyscall)\\]"),
        re("/[a-z/]{1,20} \\(deleted\\)"),
    ];
    let well_formed = (
        any::<u64>(),
        any::<u64>(),
        re("[r-][w-][x-][ps]"),
        any::<u64>(),
        re("[0-9a-f]{2}:[0-9a-f]{2}"),
        any::<u64>(),
        path,
    )
        .prop_map(|(start, end, perms, offset, dev, inode, path)| {
            format!("{start:x}-{end:x} {perms} {offset:08x} {dev} {inode} {path}")
        });
    lines(prop_oneof![3 => well_formed, 1 => re(".{0,80}")], 16)
}

// ---- Perf maps: `/tmp/perf-PID.map`, written by the traced process itself.

static PERF_MAP: Target = Target {
    name: "perf_map",
    run: perf_map,
    generate: perf_map_inputs,
    tokens: &[
        b" ",
        b"JS:*",
        b"LazyCompile:~",
        b"Builtin:",
        b" /app/x.js:1:2",
        b"file://",
        b":",
        b"ffffffffffffffff",
    ],
    max_len: MAX_LEN,
};

fn perf_map(input: &[u8]) {
    // In two reads, as while a runtime appends to its map: the second takes up where the
    // first stopped.
    let mut map = perfmap::PerfMap::default();
    let path = driver::scratch_with("perf.map", &input[..input.len() / 2]);
    map.refresh(&path)
        .expect("a perf map just written is readable");
    driver::scratch_with("perf.map", input);
    map.refresh(&path)
        .expect("a perf map just written is readable");
    assert!(map.len() <= input.iter().filter(|&&b| b == b'\n').count());
    for addr in [0, 0x10, 0x7f0a_1c00_0010, u64::MAX] {
        if let Some(symbol) = map.lookup(addr) {
            assert!(symbol.start <= addr && addr < symbol.end, "{symbol:?}");
        }
    }
    for line in String::from_utf8_lossy(input).lines() {
        let name = line.splitn(3, ' ').nth(2).unwrap_or(line);
        if let Some(js) = perfmap::parse_js_name(name) {
            assert!(!js.function.is_empty(), "{name:?}");
        }
    }
}

fn perf_map_inputs(_: &[Vec<u8>]) -> BoxedStrategy<Vec<u8>> {
    let name = prop_oneof![
        3 => re("(LazyCompile|JS|Function|Builtin|RegExp|Script|Eval):[*~^]?[A-Za-z_$.<>]{0,12}( (file://)?(/[a-z_]{1,8}){1,3}\\.m?js(:[0-9]{1,6}){0,2})?"),
        1 => re(".{0,60}"),
    ];
    let line = (any::<u64>(), prop_oneof![any::<u64>(), 0..0x1000u64], name)
        .prop_map(|(start, size, name)| format!("{start:x} {size:x} {name}"));
    lines(prop_oneof![4 => line, 1 => re(".{0,80}")], 24)
}

// ---- The prologue decoder: the bytes of a function in an object the target maps.

static PROLOGUE: Target = Target {
    name: "prologue",
    run: prologue,
    generate: prologue_inputs,
    tokens: PROLOGUE_INSTRUCTIONS,
    // Past `MAX_SCAN_BYTES`, the decoder's own cap.
    max_len: 2 << 20,
};

/// Instructions compilers put at function entries, and ones the decoder must refuse.
const PROLOGUE_INSTRUCTIONS: &[&[u8]] = &[
    b"\xf3\x0f\x1e\xfa",                         // endbr64
    b"\x55",                                     // push rbp
    b"\x41\x54",                                 // push r12
    b"\x48\x89\xe5",                             // mov rbp, rsp
    b"\x48\x89\xfd",                             // mov rbp, rdi
    b"\x48\x83\xec\x18",                         // sub rsp, 0x18
    b"\x48\x85\xff",                             // test rdi, rdi
    b"\x48\x8b\x05\x34\x12\x00\x00",             // mov rax, [rip + 0x1234]
    b"\x48\x8d\x77\xf0",                         // lea rsi, [rdi - 16]
    b"\xbf\x00\x00\x00\x00",                     // mov edi, 0
    b"\x31\xc0",                                 // xor eax, eax
    b"\xf0\x83\x2d\x00\x01\x00\x00\x01",         // lock sub dword [rip + 0x100], 1
    b"\x0f\x05",                                 // syscall
    b"\xe8\x00\x00\x00\x00",                     // call next
    b"\xe9\xf0\xff\xff\xff",                     // jmp back
    b"\x0f\x84\xe0\xff\xff\xff",                 // je back
    b"\xc3",                                     // ret
    b"\xcc",                                     // int3
    b"\x66\x90",                                 // xchg ax, ax
    b"\x48\xb8\x88\x77\x66\x55\x44\x33\x22\x11", // movabs rax, ...
];

fn prologue(code: &[u8]) {
    for ip in [0x7f0a_1c00_0000, 0, u64::MAX - 8] {
        for needs in [
            Needs {
                arg_regs: &[RDI],
                stack_pointer: true,
            },
            Needs {
                arg_regs: &[RDI, RSI],
                stack_pointer: false,
            },
            Needs {
                arg_regs: &[],
                stack_pointer: false,
            },
        ] {
            let placed = placement::choose(code, ip, needs);
            assert!(placed.offset <= placement::MAX_PROBE_OFFSET, "{placed:?}");
        }
    }
}

fn prologue_inputs(_: &[Vec<u8>]) -> BoxedStrategy<Vec<u8>> {
    let instruction = prop_oneof![
        4 => proptest::sample::select(PROLOGUE_INSTRUCTIONS).prop_map(<[u8]>::to_vec),
        // Short branches, often back into the prologue.
        1 => (prop_oneof![Just(0xebu8), 0x70..0x80u8, Just(0xe3)], any::<i8>())
            .prop_map(|(op, d)| vec![op, d.to_le_bytes()[0]]),
        1 => vec(any::<u8>(), 1..6),
    ];
    vec(instruction, 0..24).prop_map(|i| i.concat()).boxed()
}

// ---- ELF files the target maps: symbols found for probes, and what each object needs.

const ELF_TOKENS: &[&[u8]] = &[
    b"\x7fELF\x02\x01\x01",
    b"malloc\0",
    b"free\0",
    b"calloc\0",
    b"libc.so.6\0",
];

static ELF_SYMBOLS: Target = Target {
    name: "elf_symbols",
    run: elf_symbols,
    generate: elf_inputs,
    tokens: ELF_TOKENS,
    max_len: MAX_LEN,
};

static OBJECT_INFO: Target = Target {
    name: "object_info",
    run: object_info,
    generate: elf_inputs,
    tokens: ELF_TOKENS,
    max_len: MAX_LEN,
};

/// Names in the seeds: found ones take the readers further than missing ones.
const ELF_NAMES: [&str; 5] = ["malloc", "free", "calloc", "calloc_impl", ""];

fn elf_symbols(elf: &[u8]) {
    for symbol in ELF_NAMES {
        for max in [0, 64, 4096] {
            if let Ok(code) = placement::function_bytes(elf, symbol, max) {
                assert!(
                    code.bytes.len() <= max,
                    "{} bytes for {max}",
                    code.bytes.len()
                );
                // What probe placement does with them next.
                let _ = placement::choose(
                    &code.bytes,
                    code.address,
                    Needs {
                        arg_regs: &[RDI],
                        stack_pointer: false,
                    },
                );
            }
        }
    }
}

fn object_info(elf: &[u8]) {
    let path = driver::scratch_with("object.so", elf);
    let mut wanted = allocator::wanted_symbols();
    wanted.extend(ELF_NAMES.map(String::from));
    for symtab in [false, true] {
        if let Ok(info) = symbols::read(&path, symtab, &wanted) {
            assert!(info.defined.iter().all(|d| wanted.contains(d)), "{info:?}");
        }
    }
}

/// An ELF64 header, section headers of the types the readers look for with offsets and sizes
/// into the file, a loadable segment, and random contents.
fn elf_inputs(_: &[Vec<u8>]) -> BoxedStrategy<Vec<u8>> {
    let section = (
        proptest::sample::select(
            &[0u32, 2, 3, 6, 8, 11, 0x6fff_fffd, 0x6fff_fffe, 0x6fff_ffff][..],
        ),
        0u32..8,
        any::<Index>(),
        prop_oneof![0u64..0x400, any::<u64>()],
        prop_oneof![Just(0u64), Just(16), Just(24), any::<u64>()],
        any::<u64>(),
    );
    (
        vec(section, 0..8),
        0u16..8,
        vec(any::<u8>(), 0..1024),
        prop_oneof![Just(0x3eu16), any::<u16>()],
        (any::<u64>(), any::<u64>()),
    )
        .prop_map(|(sections, shstrndx, body, machine, (vaddr, filesz))| {
            let shoff = 64 + body.len() as u64;
            let phoff = shoff + 64 * sections.len() as u64;
            let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
            elf.extend(3u16.to_le_bytes()); // ET_DYN
            elf.extend(machine.to_le_bytes());
            elf.extend(1u32.to_le_bytes());
            elf.extend(0u64.to_le_bytes()); // e_entry
            elf.extend(phoff.to_le_bytes());
            elf.extend(shoff.to_le_bytes());
            elf.extend(0u32.to_le_bytes()); // e_flags
            for half in [64u16, 56, 1, 64, sections.len() as u16, shstrndx] {
                elf.extend(half.to_le_bytes());
            }
            elf.extend(&body);
            for (kind, link, offset, size, entsize, addr) in sections {
                elf.extend(0u32.to_le_bytes()); // sh_name
                elf.extend(kind.to_le_bytes());
                elf.extend(0u64.to_le_bytes()); // sh_flags
                elf.extend(addr.to_le_bytes());
                elf.extend((64 + offset.index(body.len() + 1) as u64).to_le_bytes());
                elf.extend(size.to_le_bytes());
                elf.extend(link.to_le_bytes());
                elf.extend(0u32.to_le_bytes()); // sh_info
                elf.extend(8u64.to_le_bytes()); // sh_addralign
                elf.extend(entsize.to_le_bytes());
            }
            // One PT_LOAD, read-execute, mapping the whole file.
            elf.extend(1u32.to_le_bytes());
            elf.extend(5u32.to_le_bytes());
            for word in [0, vaddr, vaddr, filesz, filesz, 0x1000] {
                elf.extend(word.to_le_bytes());
            }
            elf
        })
        .boxed()
}

// ---- /proc/PID/cgroup: a container that may write its cgroup tree names its own paths.

static CGROUP: Target = Target {
    name: "cgroup",
    run: cgroup,
    generate: cgroup_inputs,
    tokens: &[
        b"0::",
        b"1:memory:",
        b"/kubepods",
        b"/burstable",
        b"/besteffort",
        b"/pod",
        b".slice",
        b".scope",
        b"kubepods-burstable-pod",
        b"cri-containerd-",
        b"crio-",
        b"crio-conmon-",
        b"/docker/",
        b"docker-",
        b"libpod-",
        b"nerdctl-",
        b":cri-containerd:",
        b"/..",
        b" (deleted)",
        b"3f1d5b3a8c5e2b7d9e0f4a6c8b1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d",
        b"8570465b-b2d5-40ab-87a5-87472e6effa6",
        b"8570465b_b2d5_40ab_87a5_87472e6effa6",
        b"36b6d6be73b1065af369b3985edafa09",
    ],
    max_len: MAX_LEN,
};

fn cgroup(input: &[u8]) {
    // Read as `cgroup::read` reads the file.
    let placement = cgroup::parse(&String::from_utf8_lossy(input));
    if let Some(id) = &placement.container_id {
        assert!(
            id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{id:?}"
        );
        assert!(placement.path.contains(id.as_str()), "{placement:?}");
    }
    if let Some(uid) = &placement.pod_uid {
        assert!(!uid.contains('_'), "{uid:?}");
    }
    if placement.qos.is_some() {
        assert!(placement.pod_uid.is_some(), "{placement:?}");
    }
    let _ = placement.is_contained();
}

fn cgroup_inputs(_: &[Vec<u8>]) -> BoxedStrategy<Vec<u8>> {
    let line = re(
        "[0-9]{1,2}:[a-z=,_]{0,12}:(/(kubepods|kubelet|burstable|besteffort|docker|system|machine|\\.\\.|pod|kubepods-pod|kubepods-burstable-pod|cri-containerd-|crio-|crio-conmon-|libpod-|libpod-conmon-|nerdctl-|[0-9a-f]{8}|[-_]|:|\\.scope|\\.slice|\\.service|[0-9a-f]{32}|[0-9a-f]{63}|[0-9a-f]{64}|[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}){0,6}){0,8}( \\(deleted\\))?",
    );
    lines(prop_oneof![5 => line, 1 => re(".{0,80}")], 16)
}

// ---- Durations and the other command-line options, through the real command line.

static DURATIONS: Target = Target {
    name: "durations",
    run: durations,
    generate: option_inputs,
    tokens: &[
        b"ns", b"us", b"ms", b"s", b"m", b"h", b"d", b"w", b"M", b"y", b"KiB", b"MiB", b"GiB",
        b"%", b"=", b".", b" ", b"e9", b"*", b"[", b"{", b"**/",
    ],
    // Options come from a command line: far below a megabyte.
    max_len: 64 << 10,
};

/// Command lines with one option's value left open (`{}`): every option that parses text.
/// `--config` is left out: its value is a file to read, fuzzed as `agent_config`.
const OPTION_USES: &[&[&str]] = &[
    &["attach", "1", "--duration={}"],
    &["attach", "1", "--interval={}"],
    &["attach", "1", "--sample-bytes={}"],
    &["attach", "1", "--max-overhead={}"],
    &["attach", "1", "--max-live-allocs={}"],
    &["attach", "1", "--map-events-bytes={}"],
    &["attach", "1", "--top={}"],
    &["attach", "1", "--format={}"],
    &["attach", "--", "{}"],
    &["doctor", "--", "{}"],
    &[
        "run",
        "--fail-on=outstanding",
        "--min-bytes={}",
        "--",
        "true",
    ],
    &["run", "--leak-exit-code={}", "--", "true"],
    &["agent", "--interval={}"],
    &["agent", "--scan-interval={}"],
    &["agent", "--grace={}"],
    &["agent", "--sample-bytes={}"],
    &["agent", "--listen={}"],
    &["agent", "--max-targets={}"],
    &["agent", "--k8s-label={}"],
    &["agent", "--match-exe={}"],
    &["agent", "--match-cgroup={}"],
    &["agent", "--k8s-namespace={}"],
    &["agent", "--kubernetes={}"],
];

fn durations(input: &[u8]) {
    if let Ok(d) = leaktrace::parse::parse_duration(&String::from_utf8_lossy(input)) {
        assert!(!d.is_zero());
    }
    thread_local! {
        // Built once: clap builds the whole command on each `Cli::try_parse_from`.
        static COMMAND: RefCell<clap::Command> = RefCell::new(Cli::command());
    }
    let value = OsStr::from_bytes(input);
    for template in OPTION_USES {
        let args = std::iter::once(OsString::from("leaktrace")).chain(template.iter().map(|arg| {
            match arg.strip_suffix("{}") {
                Some(prefix) => {
                    let mut arg = OsString::from(prefix);
                    arg.push(value);
                    arg
                }
                None => OsString::from(arg),
            }
        }));
        let Ok(matches) = COMMAND.with(|c| c.borrow_mut().try_get_matches_from_mut(args)) else {
            continue;
        };
        let cli = Cli::from_arg_matches(&matches).expect("matches of Cli's own command");
        if let cli::Command::Agent(args) = cli.command {
            // Globs are compiled and settings merged only here.
            if let Ok(config) = AgentConfig::load(args) {
                use_agent_config(&config);
            }
        }
    }
}

fn option_inputs(_: &[Vec<u8>]) -> BoxedStrategy<Vec<u8>> {
    let number = re(
        "-?[0-9]{0,22}(\\.[0-9]{0,5})?(e[-+]?[0-9]{1,3})? ?(ns|us|µs|ms|s|sec|m|min|h|hr|d|w|M|y|years|b|k|kb|KiB|MiB|GiB|%)?",
    );
    prop_oneof![
        4 => vec(number, 1..4).prop_map(|parts| parts.join(" ")),
        1 => re(".{0,40}"),
        1 => re("[a-z./-]{0,12}=[ -~]{0,10}"),
        1 => re("\\[?[0-9a-f:.]{0,30}\\]?(:[0-9]{1,6})?"),
        1 => re("[*?\\[\\]{},!/a-z-]{0,20}"),
    ]
    .prop_map(String::into_bytes)
    .boxed()
}

/// What the agent does with its settings: prints them (`--check`) and decides with them.
fn use_agent_config(config: &AgentConfig) {
    serde_json::to_string(config).expect("settings that loaded print as JSON");
    let pod = PodMeta {
        namespace: "prod-a".into(),
        labels: [("app".to_owned(), "web".to_owned())].into(),
        ..PodMeta::default()
    };
    for exe in ["/usr/bin/node", "node", "/", ""] {
        for cgroup in ["/kubepods.slice/kubepods-pod1.slice", ""] {
            let _ = config
                .selector
                .decide(Path::new(exe), cgroup, Some(&pod), true);
            let _ = config.selector.decide(Path::new(exe), cgroup, None, false);
        }
    }
}

// ---- The agent's config file.

static AGENT_CONFIG: Target = Target {
    name: "agent_config",
    run: agent_config,
    generate: agent_config_inputs,
    tokens: &[
        b"[match]",
        b" = ",
        b"\"",
        b"'''",
        b"[",
        b"]",
        b"{",
        b"}",
        b"#",
        b"interval",
        b"exe",
        b"labels",
        b"1e400",
        b"\"10s\"",
    ],
    max_len: MAX_LEN,
};

fn agent_config(input: &[u8]) {
    let path = driver::scratch_with("agent.toml", input);
    let args = AgentArgs {
        config: Some(path),
        ..AgentArgs::default()
    };
    if let Ok(config) = AgentConfig::load(args) {
        use_agent_config(&config);
    }
}

fn agent_config_inputs(_: &[Vec<u8>]) -> BoxedStrategy<Vec<u8>> {
    let key = proptest::sample::select(
        &[
            "listen",
            "interval",
            "scan_interval",
            "grace",
            "sample_bytes",
            "max_targets",
            "max_live_allocs_per_target",
            "max_live_allocs",
            "max_stacks",
            "log_format",
            "kubernetes",
            "node_name",
            "exe",
            "cgroup",
            "namespace",
            "labels",
            "require_annotation",
        ][..],
    );
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        re("\"[ -~]{0,20}\""),
        re("\"-?[0-9]{0,12}(ms|s|m|h|d)?\""),
        re("\\[(\"[*?a-z/{},\\[\\]-]{0,12}\", ?){0,4}\\]"),
        re("\\{ ?([a-z.]{1,8} = \"[a-z]{0,6}\", ?){0,3}\\}"),
        re("(true|false|-?[0-9]{1,20}\\.[0-9]{1,5}|inf|nan)"),
    ];
    let line = prop_oneof![
        6 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => Just("[match]".to_owned()),
        1 => re(".{0,30}"),
    ];
    lines(line, 16)
}

// ---- Saved reports, read back by `leaktrace report` (perhaps from another machine).

static REPORT: Target = Target {
    name: "report",
    run: report,
    generate: report_inputs,
    tokens: &[
        b"null",
        b"-1",
        b"1e308",
        b"-0",
        b"\"\"",
        b"[]",
        b"{}",
        b",",
        b"\"format_version\":1,",
    ],
    max_len: MAX_LEN,
};

const FORMATS: [Format; 7] = [
    Format::Text,
    Format::Json,
    Format::Folded,
    Format::Svg,
    Format::Pprof,
    Format::Html,
    Format::Junit,
];

fn report(input: &[u8]) {
    let path = driver::scratch_with("report.json", input);
    // What `leaktrace report` does with a report it could read: render it in any format.
    if let Ok(report) = report::read(&path) {
        for format in FORMATS {
            for top in [None, Some(0), Some(1)] {
                let _ = report::render(&report, format, top);
            }
        }
    }
}

/// Edits of a JSON tree, at a path of child indices (each taken modulo the children there).
#[derive(Clone, Debug)]
enum JsonEdit {
    Replace(Vec<Index>, Value),
    Remove(Vec<Index>),
    /// An array element, repeated this many times more.
    Repeat(Vec<Index>, usize),
}

impl JsonEdit {
    fn apply(&self, mut node: &mut Value) {
        let path = match self {
            Self::Replace(path, _) | Self::Remove(path) | Self::Repeat(path, _) => path,
        };
        for (depth, step) in path.iter().enumerate() {
            let last = depth + 1 == path.len();
            match node {
                Value::Object(map) if !map.is_empty() => {
                    let key = map
                        .keys()
                        .nth(step.index(map.len()))
                        .cloned()
                        .expect("an index below the length");
                    let leaf = !matches!(map[&key], Value::Object(_) | Value::Array(_));
                    if last || leaf {
                        match self {
                            Self::Replace(_, value) => {
                                map.insert(key, value.clone());
                            }
                            Self::Remove(_) => {
                                map.remove(&key);
                            }
                            Self::Repeat(..) => {}
                        }
                        return;
                    }
                    node = map.get_mut(&key).expect("a key just listed");
                }
                Value::Array(items) if !items.is_empty() => {
                    let i = step.index(items.len());
                    let leaf = !matches!(items[i], Value::Object(_) | Value::Array(_));
                    if last || leaf {
                        match self {
                            Self::Replace(_, value) => items[i] = value.clone(),
                            Self::Remove(_) => {
                                items.remove(i);
                            }
                            Self::Repeat(_, n) => {
                                let copy = items[i].clone();
                                items.splice(i..i, std::iter::repeat_n(copy, *n));
                            }
                        }
                        return;
                    }
                    node = &mut items[i];
                }
                _ => return,
            }
        }
    }
}

/// Values a report's fields may be set to: the right type at its edges, or the wrong type.
fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        proptest::sample::select(&[0, 1, 0xffff_ffff, 0x7fff_ffff_ffff_ffff, u64::MAX][..])
            .prop_map(Value::from),
        proptest::sample::select(&[i64::MIN, -1][..]).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        proptest::sample::select(&[-0.0, 0.5, 1e308, -1e308, f64::MIN_POSITIVE][..])
            .prop_map(Value::from),
        re(".{0,24}").prop_map(Value::from),
        proptest::sample::select(
            &[
                "leak",
                "growing",
                "plateau",
                "churn",
                "stable",
                "native",
                "js",
                "heap",
                "mmap",
                "v8-heap",
                "other",
                "0x0",
                "0xffffffffffffffff",
                ""
            ][..]
        )
        .prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
        vec((any::<f64>(), any::<i64>()), 0..8).prop_map(|series| json!(series)),
        vec(any::<usize>(), 0..4).prop_map(|indices| json!(indices)),
    ]
}

/// Valid reports (the corpus's) with a few fields changed, removed or repeated: byte mutations
/// almost never give JSON that reads back, and the renderers are behind the reader.
fn report_inputs(seeds: &[Vec<u8>]) -> BoxedStrategy<Vec<u8>> {
    let reports: Vec<Value> = seeds
        .iter()
        .filter_map(|s| serde_json::from_slice(s).ok())
        .collect();
    if reports.is_empty() {
        return vec(any::<u8>(), 0..4096).boxed();
    }
    let path = || vec(any::<Index>(), 1..6);
    let edit = prop_oneof![
        4 => (path(), json_value()).prop_map(|(p, v)| JsonEdit::Replace(p, v)),
        1 => path().prop_map(JsonEdit::Remove),
        1 => (path(), 1..64usize).prop_map(|(p, n)| JsonEdit::Repeat(p, n)),
    ];
    (proptest::sample::select(reports), vec(edit, 1..4))
        .prop_map(|(mut report, edits)| {
            for edit in &edits {
                edit.apply(&mut report);
            }
            serde_json::to_vec(&report).expect("a JSON tree serializes")
        })
        .boxed()
}
