//! Naming the JavaScript frames the probes identified (a SharedFunctionInfo per frame, and the
//! bytecode offset of interpreted ones) from V8's own data: the layout the target's binary
//! exports and the objects in its heap. No perf map, no flag, nothing written into the target.
//!
//! Frames are named soon after they are captured, while what they point at is still there
//! (SharedFunctionInfos outlive scavenges, but not a mark-compact that moves or frees them), and
//! the names are kept: the report may be built long after.

use std::{collections::HashMap, sync::Arc};

use leaktrace_common::{AwaitEnd, JsFrame, JsTier, V8Awaits, V8Frames};
use tracing::{debug, warn};

use super::{
    awaited, hex,
    v8::{JsFunction, Layout, LayoutError, ProcessMemory, Resolver},
};
use crate::{
    process::file_memo::{FileId, FileMemo},
    report::model::Frame,
};

/// The JavaScript frames of one stack: each with the index of the address it stands for.
pub type NamedFrames = Vec<(usize, Vec<Frame>)>;

/// V8 layouts by executable: a node binary is read once however many processes run it and
/// however many sessions attach to them. `Err(None)`: no V8 in it; `Err(Some(why))`: V8 data
/// unusable.
static LAYOUTS: FileMemo<Result<Arc<Layout>, Option<String>>> = FileMemo::new(64);

/// Names JavaScript frames, per target running V8.
#[derive(Default)]
pub struct JsNamer {
    targets: HashMap<u32, Resolver<ProcessMemory>>,
    /// By target, stack and JavaScript identity.
    named: HashMap<(u32, u64, u64), Arc<NamedFrames>>,
    /// Each frame as named, by target, what the probe saw of it and its return address: the
    /// same frame recurs in many stacks (a server's stacks differ in one frame or two), and
    /// reading the heap for it again would cost the tracer a CPU on a busy server. Only frames
    /// that read back whole are kept.
    frames_named: HashMap<(u32, JsFrameKey), Vec<Frame>>,
    /// Stacks whose frames did not all read back yet, with the attempts made.
    attempts: HashMap<(u32, u64, u64), u32>,
    /// Per target: why its JavaScript frames cannot be named, for its report.
    problems: HashMap<u32, String>,
    /// Per target: frames the probes identified that did not decode (moved or freed since).
    unnamed: HashMap<u32, u64>,
}

impl JsNamer {
    /// Reads V8's layout from `pid`'s executable. Returns what the probes need to recognise its
    /// JavaScript frames, or `None` when it does not run V8 or its V8 data is unusable (said in
    /// a warning and in the report: its JavaScript frames stay addresses).
    pub fn attach(&mut self, pid: u32) -> Option<V8Frames> {
        // Also after an exec: what was known of the old image goes.
        self.targets.remove(&pid);
        self.problems.remove(&pid);
        let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
        let id = FileId::of(&exe).ok()?;
        let layout = LAYOUTS.get_or_insert_with(id, || match Layout::read(&exe) {
            Ok(layout) => Ok(Arc::new(layout)),
            Err(LayoutError::NotV8) => Err(None),
            Err(err) => Err(Some(err.to_string())),
        });
        let layout = match layout {
            Ok(layout) => layout,
            Err(None) => return None,
            Err(Some(why)) => {
                warn!(pid, %why, "V8 data unusable: JavaScript frames stay addresses");
                self.problems.insert(
                    pid,
                    format!("V8 data unusable ({why}): JavaScript frames are addresses"),
                );
                return None;
            }
        };
        let memory = match ProcessMemory::open(pid) {
            Ok(memory) => memory,
            Err(err) => {
                warn!(pid, %err, "cannot read the target's memory: JavaScript frames stay addresses");
                self.problems.insert(
                    pid,
                    format!("cannot read its memory ({err}): JavaScript frames are addresses"),
                );
                return None;
            }
        };
        let mut frames = probe_layout(&layout);
        // Without it the probes do not follow awaiters: the report marks where V8 resumed
        // an async function, as before.
        if let Some(awaits) = &layout.awaits {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            match awaits.for_process(&crate::process::maps::parse(&maps), id.ino()) {
                Some(awaits) => frames.awaits = awaits,
                None => debug!(pid, "V8's await closures not found in its mappings"),
            }
        }
        if !frames.fits_probes() {
            warn!(
                pid,
                ?frames,
                "V8's frame layout is not one the probes can read"
            );
            self.problems.insert(
                pid,
                "V8's frame layout is not one the probes know: JavaScript frames are addresses"
                    .into(),
            );
            return None;
        }
        self.targets
            .insert(pid, Resolver::new((*layout).clone(), memory));
        debug!(pid, "naming JavaScript frames from V8's data");
        Some(frames)
    }

    /// Starts a naming pass (the stacks named at one sample): see [`Resolver::next_pass`].
    pub fn next_pass(&mut self) {
        self.targets.values_mut().for_each(Resolver::next_pass);
    }

    /// Whether `pid`'s JavaScript frames are named from V8's data.
    pub fn names(&self, pid: u32) -> bool {
        self.targets.contains_key(&pid)
    }

    /// Names the JavaScript frames `frames` of the stack `stack` of `pid` whose addresses are
    /// `ips`. Kept per stack, not per JavaScript identity alone: what was inlined at a compiled
    /// frame depends on its return address. `identity` is `ips` as the site's identity counts
    /// its native frames (the session counts a populated stack's innermost by its function).
    ///
    /// When every frame is named, returns the site's identity across tiers ([`Site`]): the
    /// probes identify a function by the address of its SharedFunctionInfo, which a compacting
    /// collection moves, and one call site runs interpreted, then baseline, then optimized code
    /// (other return addresses, other glue between the frames, callees inlined or not). By the
    /// names of its JavaScript frames it is one site. The names are kept under that identity
    /// too. A frame that does not read back yet (a collection moved what it points at) is not
    /// taken as final: the stack is named again at the next sample, a few times.
    pub fn name(
        &mut self,
        pid: u32,
        stack: u64,
        js_id: u64,
        frames: &[JsFrame],
        ips: &[u64],
        identity: &[u64],
    ) -> Naming {
        let Some(resolver) = self.targets.get_mut(&pid) else {
            return Naming::Failed;
        };
        let mut named = NamedFrames::new();
        let mut failed = 0;
        // The functions that awaited the one resumed at the frame last seen, so far, and where.
        let mut awaiters = Vec::new();
        let mut awaited_at = (0, 0);
        for frame in frames {
            let index = frame.index as usize;
            let Some(&ip) = ips.get(index) else {
                continue;
            };
            if frame.tier == JsTier::Awaited as u32 {
                awaited_at = (index, ip);
                if frame.sfi != 0 {
                    match resolver.function(frame.sfi) {
                        Some(function) => {
                            awaiters.push(awaited::awaiter(js_frame(function, function.line, ip)))
                        }
                        None => failed += 1,
                    }
                    continue;
                }
                let end = AwaitEnd::from_u64(frame.bytecode_offset);
                let mut block = vec![awaited::chain_marker(ip, awaiters.len(), end)];
                block.append(&mut awaiters);
                named.push((index, block));
                continue;
            }
            let key = (
                pid,
                JsFrameKey {
                    sfi: frame.sfi,
                    bytecode_array: frame.bytecode_array,
                    bytecode_offset: frame.bytecode_offset,
                    code: frame.code,
                    ip,
                },
            );
            if let Some(js) = self.frames_named.get(&key) {
                named.push((index, js.clone()));
                continue;
            }
            match js_frames(resolver, frame, ip) {
                Some(js) => {
                    self.frames_named.insert(key, js.clone());
                    named.push((index, js));
                }
                None => failed += 1,
            }
        }
        // A chain cut short by the probes' room for frames: what was found, said as such.
        if !awaiters.is_empty() {
            let (index, ip) = awaited_at;
            let mut block = vec![awaited::chain_marker(ip, awaiters.len(), None)];
            block.append(&mut awaiters);
            named.push((index, block));
        }
        if failed > 0 {
            let tries = self.attempts.entry((pid, stack, js_id)).or_default();
            *tries += 1;
            if *tries < NAMING_ATTEMPTS {
                return Naming::Retry;
            }
            self.attempts.remove(&(pid, stack, js_id));
            *self.unnamed.entry(pid).or_default() += failed;
            self.named.insert((pid, stack, js_id), Arc::new(named));
            return Naming::Failed;
        }
        self.attempts.remove(&(pid, stack, js_id));
        let site = site_of(&named, identity);
        let named = Arc::new(named);
        // The first stack named shows the merged site (the session keeps the same one).
        self.named
            .entry((pid, site.stack, site.js_id))
            .or_insert_with(|| named.clone());
        self.named.insert((pid, stack, js_id), named);
        Naming::Named(site)
    }

    /// The JavaScript frames of a stack of `pid`, as named.
    pub fn frames(&self, pid: u32, stack: u64, js_id: u64) -> Option<Arc<NamedFrames>> {
        self.named.get(&(pid, stack, js_id)).cloned()
    }

    /// What the report of `pid` should say about its JavaScript frames, if anything.
    pub fn notes(&self, pid: u32) -> Vec<String> {
        let mut notes: Vec<String> = self.problems.get(&pid).cloned().into_iter().collect();
        if let Some(&n) = self.unnamed.get(&pid) {
            notes.push(format!(
                "{n} JavaScript frame{} could not be read from V8's heap (the function moved or \
                 was collected, or the process exited, before it was named): shown by address",
                if n == 1 { "" } else { "s" }
            ));
        }
        notes
    }

    /// Drops everything about `pid`, the names of its stacks included.
    pub fn forget(&mut self, pid: u32) {
        self.targets.remove(&pid);
        self.problems.remove(&pid);
        self.unnamed.remove(&pid);
        self.named.retain(|(p, _, _), _| *p != pid);
        self.frames_named.retain(|(p, _), _| *p != pid);
        self.attempts.retain(|(p, _, _), _| *p != pid);
    }
}

/// How often a stack whose frames do not all read back is named again before its unnamed
/// frames are taken as final (shown by address, counted in the report's notes).
/// `symbolize::v8`'s allowance of script-name misses is counted from it, so that the last
/// attempt names a function (without its file) whose script name never reads back.
const NAMING_ATTEMPTS: u32 = 3;

/// What naming a stack's JavaScript frames came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// Every frame named: the site's identity across tiers.
    Named(Site),
    /// Some frame did not read back: try again at the next sample.
    Retry,
    /// Not a V8 target, or frames that never read back: the site stays as the probes keyed it.
    Failed,
}

/// A JavaScript site's identity by name, the same whichever tier ran it: `stack` stands for its
/// native frames and `js_id` for its named JavaScript frames (never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Site {
    pub stack: u64,
    pub js_id: u64,
}

/// The identity across tiers of a stack whose JavaScript frames are `named` (by their index in
/// `ips`). JavaScript frames count by function and script only: the line of a baseline frame is
/// its function's first, and what the optimizer inlined shows as frames of their own when
/// interpreted. Native frames between the innermost and the outermost JavaScript frame are V8's
/// glue (entry trampolines, construct stubs, JIT code that changes with every compilation) and
/// do not count; those inside (the allocator, the runtime's C++) and outside (the event loop)
/// count by the value `ips` gives them (an address, or what stands for a function).
fn site_of(named: &NamedFrames, ips: &[u64]) -> Site {
    use std::hash::{Hash as _, Hasher as _};
    let (lo, hi) = match (named.first(), named.last()) {
        (Some(first), Some(last)) => (first.0.min(last.0), first.0.max(last.0)),
        _ => (usize::MAX, 0),
    };
    let mut native = std::hash::DefaultHasher::new();
    let mut js = std::hash::DefaultHasher::new();
    for (i, ip) in ips.iter().enumerate() {
        let mut at = named.iter().filter(|(index, _)| *index == i).peekable();
        if at.peek().is_some() {
            // A resumed function's awaiters too: awaited by others, it is another site.
            for f in at.flat_map(|(_, frames)| frames) {
                (&f.function, &f.file).hash(&mut js);
            }
        } else if i < lo || i > hi {
            (i > hi, ip).hash(&mut native);
        }
    }
    Site {
        stack: native.finish() | 1,
        js_id: js.finish() | 1,
    }
}

/// What identifies one JavaScript frame of a target for naming.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct JsFrameKey {
    sfi: u64,
    bytecode_array: u64,
    bytecode_offset: u64,
    code: u64,
    ip: u64,
}

/// The frames one JavaScript frame stands for, innermost first: for optimized code, the
/// functions inlined at the return address (each marked inlined), then the function itself,
/// each with the line of its call; else the function, with the line of the call when the frame
/// was interpreted (from its bytecode offset) or of its start.
fn js_frames(
    resolver: &mut Resolver<ProcessMemory>,
    frame: &JsFrame,
    ip: u64,
) -> Option<Vec<Frame>> {
    if frame.tier == JsTier::Compiled as u32
        && frame.code != 0
        && let Some(inlined) = resolver.inlined(frame.code, ip)
    {
        return Some(
            inlined
                .iter()
                .map(|at| Frame {
                    inlined: at.inlined,
                    ..js_frame(&at.function, at.line, ip)
                })
                .collect(),
        );
    }
    let call_line = if frame.tier == JsTier::Interpreted as u32 {
        resolver.call_line(frame.sfi, frame.bytecode_array, frame.bytecode_offset)
    } else {
        None
    };
    let function = resolver.function(frame.sfi)?;
    Some(vec![js_frame(function, call_line.or(function.line), ip)])
}

/// A report frame for `function` at `line`.
fn js_frame(function: &JsFunction, line: Option<u32>, ip: u64) -> Frame {
    Frame {
        address: hex(ip),
        kind: "js".into(),
        function: Some(if function.name.is_empty() {
            "(anonymous)".into()
        } else {
            function.name.clone()
        }),
        file: (!function.script.is_empty()).then(|| function.script.clone()),
        line,
        source: Some("v8".into()),
        ..Frame::default()
    }
}

/// What the probes need of a layout.
fn probe_layout(layout: &Layout) -> V8Frames {
    V8Frames {
        fp_function: layout.fp_function,
        fp_context: layout.fp_context,
        fp_bytecode_array: layout.fp_bytecode_array,
        fp_bytecode_offset: layout.fp_bytecode_offset,
        heap_object_map: layout.heap_object_map,
        map_instance_type: layout.map_instance_type,
        js_function_shared: layout.js_function_shared,
        js_function_code: layout.js_function_code,
        js_function_first: layout.js_function_first,
        js_function_last: layout.js_function_last,
        bytecode_array_type: layout.bytecode_array_type,
        _pad: 0,
        meta_map: 0,
        awaits: V8Awaits::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn js(function: &str, line: u32, inlined: bool) -> Frame {
        Frame {
            kind: "js".into(),
            function: Some(function.into()),
            file: Some("/app/server.js".into()),
            line: Some(line),
            inlined,
            source: Some("v8".into()),
            ..Frame::default()
        }
    }

    #[test]
    fn a_call_site_is_one_site_whatever_tier_ran_it() {
        // Interpreted: alloc and makeRecord are frames of their own, with the interpreter's
        // glue between them and a construct stub (0x500) in between.
        let interpreted_ips = [0x10, 0x20, 0xa0, 0x500, 0xb0, 0xc0, 0x30];
        let interpreted: NamedFrames = vec![
            (2, vec![js("alloc", 397, false)]),
            (4, vec![js("makeRecord", 36, false)]),
            (5, vec![js("ingestBatch", 49, false)]),
        ];
        // Optimized: one frame of JIT code at another address, alloc and makeRecord inlined,
        // lines as the optimizer's positions say.
        let optimized_ips = [0x10, 0x20, 0x7f00, 0x30];
        let optimized: NamedFrames = vec![(
            2,
            vec![
                js("alloc", 397, true),
                js("makeRecord", 36, true),
                js("ingestBatch", 50, false),
            ],
        )];
        assert_eq!(
            site_of(&interpreted, &interpreted_ips),
            site_of(&optimized, &optimized_ips)
        );
        // Another allocator path inside, or another caller outside, is another site.
        let other_inside = [0x11, 0x20, 0x7f00, 0x30];
        assert_ne!(
            site_of(&optimized, &optimized_ips),
            site_of(&optimized, &other_inside)
        );
        let other_outside = [0x10, 0x20, 0x7f00, 0x31];
        assert_ne!(
            site_of(&optimized, &optimized_ips),
            site_of(&optimized, &other_outside)
        );
        // Another function is another site.
        let renamed: NamedFrames = vec![(2, vec![js("alloc", 397, true), js("other", 1, false)])];
        assert_ne!(
            site_of(&optimized, &optimized_ips),
            site_of(&renamed, &optimized_ips)
        );
    }

    #[test]
    fn the_same_resumed_code_awaited_by_others_is_another_site() {
        let ips = [0x10, 0x20, 0x30, 0x40];
        let resumed = |by: &str| -> NamedFrames {
            vec![
                (1, vec![js("storeAfterAwait", 15, false)]),
                (2, vec![js("(anonymous)", 0, false)]),
                (
                    2,
                    vec![
                        awaited::chain_marker(0x30, 1, Some(AwaitEnd::NotAwaited)),
                        awaited::awaiter(js(by, 22, false)),
                    ],
                ),
            ]
        };
        assert_eq!(
            site_of(&resumed("loadProfile"), &ips),
            site_of(&resumed("loadProfile"), &ips)
        );
        assert_ne!(
            site_of(&resumed("loadProfile"), &ips),
            site_of(&resumed("loadSettings"), &ips)
        );
    }
}
