//! Naming JavaScript functions and frames from the objects [`Heap`] reads: a function's name,
//! script and lines from its SharedFunctionInfo, a call's line from its bytecode offset, and
//! the functions inlined at an optimized frame's return address. Remembered per target and
//! checked again on each use, for the GC moves what it points at.

use std::collections::HashMap;

use super::{
    code::RawFrame,
    heap::{Heap, MAX_NAME_UNITS, Memory, Object, is_heap_object, smi},
    layout::Layout,
    positions::{self, LineTable},
    scope_info,
};

/// A named JavaScript function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsFunction {
    /// "" for anonymous functions: callers print "(anonymous)".
    pub name: String,
    /// The script's name: a path for CommonJS, `file://...` for ES modules, `node:buffer` for
    /// Node's own.
    pub script: String,
    /// 1-based line of the function's start.
    pub line: Option<u32>,
}

/// A JavaScript frame as V8's stack traces show it: a function with its own frame, or one the
/// optimizing compiler inlined into its caller (and which has no frame on the native stack).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsFrame {
    pub function: JsFunction,
    /// 1-based line of the call (or allocation) site in the function, when known.
    pub line: Option<u32>,
    /// Inlined into the next frame of the list: no native frame of its own.
    pub inlined: bool,
}

/// What the resolver remembers of a function, and what it checks a cache hit against.
struct Entry {
    function: JsFunction,
    /// The SFI's `name_or_scope_info` and `script` when decoded: if they changed, the address
    /// holds another function now (the GC moved things) and the entry is stale.
    name_or_scope_info: u64,
    script: u64,
    /// The function's source range, to check call-site positions against.
    range: Option<(u32, u32)>,
}

impl Entry {
    /// Its first line did not read back (its source unreadable, or moving under the read): the
    /// entry serves this use and is decoded again at the next.
    fn line_unread(&self) -> bool {
        self.range.is_some() && self.function.line.is_none()
    }
}

/// A script's line table, checked against its source pointer on each use.
struct Lines {
    source: u64,
    table: LineTable,
}

/// Per-target cache: functions by SFI address, line tables by Script address. Built once per
/// target.
pub struct Resolver<M: Memory> {
    heap: Heap<M>,
    functions: HashMap<u64, Entry>,
    scripts: HashMap<u64, Lines>,
    script_misses: ScriptMisses,
}

/// Functions (by SFI) whose script's name did not read back: at how many naming passes in a
/// row, and the last pass that missed.
#[derive(Default)]
struct ScriptMisses {
    by_function: HashMap<u64, (u32, u64)>,
    /// The naming pass under way (see [`Resolver::next_pass`]).
    pass: u64,
}

impl ScriptMisses {
    fn next_pass(&mut self) {
        self.pass += 1;
    }

    /// The script name of `sfi` read back.
    fn hit(&mut self, sfi: u64) {
        self.by_function.remove(&sfi);
    }

    /// The script name of `sfi` did not read back: whether to give up on it (name the function
    /// without a file) rather than try again at a later pass.
    fn give_up(&mut self, sfi: u64) -> bool {
        let (passes, last) = self.by_function.entry(sfi).or_default();
        if *passes == 0 || *last != self.pass {
            *passes += 1;
            *last = self.pass;
        }
        *passes > SCRIPT_NAME_MISSES
    }
}

/// At how many naming passes a function's script name may fail to read before the function is
/// named without a file. A stack is named at up to 3 passes (`symbolize::js`): 2 misses let the
/// third name it. Misses count once per pass: within one pass, every stack with the function
/// reads it at the same moment (a collection moving its Script fails them all), and counting
/// each read would take one pass's race for a script that never reads back.
const SCRIPT_NAME_MISSES: u32 = 2;

impl<M: Memory> Resolver<M> {
    pub fn new(layout: Layout, mem: M) -> Self {
        Self {
            heap: Heap::new(layout, mem),
            functions: HashMap::new(),
            scripts: HashMap::new(),
            script_misses: ScriptMisses::default(),
        }
    }

    /// Starts a naming pass: the stacks named at one sample. A script name that does not read
    /// back counts as a miss once per pass, however many of the pass's stacks read it.
    pub fn next_pass(&mut self) {
        self.script_misses.next_pass();
    }

    /// `sfi` is the tagged SharedFunctionInfo pointer the probe read from `JSFunction::shared`.
    /// `None` if it does not validate (garbage, or moved since).
    pub fn function(&mut self, sfi: u64) -> Option<&JsFunction> {
        self.entry(sfi).map(|e| &e.function)
    }

    /// The 1-based source line of the call site in an interpreted frame: `bytecode_array` is
    /// the tagged value of the frame's `fp_bytecode_array` slot, `raw_offset` the raw value of
    /// its `fp_bytecode_offset` slot (a Smi, biased by the BytecodeArray's header).
    pub fn call_line(&mut self, sfi: u64, bytecode_array: u64, raw_offset: u64) -> Option<u32> {
        let (script, range) = {
            let entry = self.entry(sfi)?;
            (entry.script, entry.range)
        };
        let layout = &self.heap.layout;
        let bias = i64::from(layout.bytecode_array_data) - 1;
        let offset = u32::try_from(i64::from(smi(raw_offset)?) - bias).ok()?;
        let array = self
            .heap
            .typed(bytecode_array, layout.bytecode_array_type)?;
        let table = self.source_position_table(array)?;
        let position = positions::position_at(&table, offset)?;
        // The table next to it (handler table) is a byte array too: positions outside the
        // function mean the slot, or the frame, was not what we took it for.
        if !within(range, position) {
            return None;
        }
        self.line(script, position)
    }

    /// The frames at return address `pc` of an optimized frame, innermost first: the functions
    /// inlined there (each `inlined`), then the optimized function itself, each with the line of
    /// its call site. `code` is the tagged value the probe read from the frame's
    /// `JSFunction::code` ([`Layout::js_function_code`](super::Layout::js_function_code)).
    /// `None` when anything does not validate: `code` is not a Code object, `pc` is not inside
    /// its instructions (the function was deoptimized or re-optimized since), or its metadata
    /// is inconsistent.
    pub fn inlined(&mut self, code: u64, pc: u64) -> Option<Vec<JsFrame>> {
        let raw = self.heap.inlining_stack(code, pc)?;
        raw.into_iter().map(|frame| self.frame(frame)).collect()
    }

    fn frame(&mut self, raw: RawFrame) -> Option<JsFrame> {
        let (function, script, range) = {
            let entry = self.entry(raw.sfi)?;
            (entry.function.clone(), entry.script, entry.range)
        };
        let line = match raw.position {
            // A call site outside its function: the metadata is not what we took it for.
            Some(position) if !within(range, position) => return None,
            Some(position) => self.line(script, position),
            None => None,
        };
        Some(JsFrame {
            function,
            line,
            inlined: raw.inlined,
        })
    }

    fn entry(&mut self, sfi: u64) -> Option<&Entry> {
        let fresh = match self.functions.get(&sfi) {
            Some(entry) => !self.still_valid(sfi, entry),
            None => true,
        };
        if fresh {
            let entry = self.decode(sfi)?;
            self.functions.insert(sfi, entry);
        }
        self.functions.get(&sfi)
    }

    /// Whether the SFI at `sfi` is still the one `entry` was decoded from.
    fn still_valid(&self, sfi: u64, entry: &Entry) -> bool {
        let layout = &self.heap.layout;
        !entry.line_unread()
            && self
                .heap
                .typed(sfi, layout.shared_function_info_type)
                .is_some_and(|o| {
                    self.heap.field(o, layout.sfi_name_or_scope_info)
                        == Some(entry.name_or_scope_info)
                        && self.heap.field(o, layout.sfi_script) == Some(entry.script)
                })
    }

    fn decode(&mut self, sfi: u64) -> Option<Entry> {
        let layout = &self.heap.layout;
        let object = self.heap.typed(sfi, layout.shared_function_info_type)?;
        let name_or_scope_info = self.heap.field(object, layout.sfi_name_or_scope_info)?;
        let script = self.heap.field(object, layout.sfi_script)?;
        let (name, range) = self.name_and_range(name_or_scope_info)?;
        // A script name that did not read back (the GC moving the Script or its name under the
        // read) is a miss: the function is decoded again, and named without a file only once it
        // has failed too often to be a race. A line that does not read back costs the line
        // alone: Node's own scripts may have sources this reader cannot follow.
        let script_name = match self.script_name(script) {
            Some(read) => {
                self.script_misses.hit(sfi);
                read
            }
            None if self.script_misses.give_up(sfi) => String::new(),
            None => return None,
        };
        let line = range.and_then(|(start, _)| self.line(script, start));
        Some(Entry {
            function: JsFunction {
                name,
                script: script_name,
                line,
            },
            name_or_scope_info,
            script,
            range,
        })
    }

    /// The function's name and source range, from `name_or_scope_info`: a String for functions
    /// not compiled yet (and builtins), else a ScopeInfo.
    fn name_and_range(&self, value: u64) -> Option<(String, Option<(u32, u32)>)> {
        let object = self.heap.object(value)?;
        if self.heap.is_string(object) {
            return Some((self.heap.string(value, MAX_NAME_UNITS)?, None));
        }
        if object.instance_type != self.heap.layout.scope_info_type {
            return None;
        }
        let found = scope_info::read(&self.heap, object)?;
        Some((found.name, found.range))
    }

    /// The name of the script `script`: empty for a function without one (builtins, eval).
    /// `None` when the Script, or the string it names itself with, did not read back (a
    /// collection moved it under the read): the function is not remembered then, and is decoded
    /// again when its stack is named again, at up to [`SCRIPT_NAME_MISSES`] passes before it is
    /// taken as nameless, so a string this reader cannot follow costs the file, never the
    /// function.
    fn script_name(&self, script: u64) -> Option<String> {
        let layout = &self.heap.layout;
        if !is_heap_object(script) {
            return Some(String::new());
        }
        // Undefined (builtins, eval): nameless. Anything else that is no Script, or does not
        // read back at all, is a Script caught mid-move (its map word a forwarding address):
        // a miss, never taken as nameless, or the function would keep no file for good.
        let object = self.heap.object(script)?;
        if object.instance_type == layout.oddball_type {
            return Some(String::new());
        }
        if object.instance_type != layout.script_type {
            return None;
        }
        let name = self.heap.field(object, layout.script_name)?;
        if !is_heap_object(name) {
            return Some(String::new());
        }
        // An object that is no string (undefined): nameless. One that does not read back at all,
        // or a string that does not: a miss.
        let object = self.heap.object(name)?;
        if !self.heap.is_string(object) {
            return Some(String::new());
        }
        self.heap.string(name, MAX_NAME_UNITS)
    }

    /// The 1-based line of `position` (UTF-16 units) in `script`'s source.
    fn line(&mut self, script: u64, position: u32) -> Option<u32> {
        let layout = &self.heap.layout;
        let object = self.heap.typed(script, layout.script_type)?;
        let source = self.heap.field(object, layout.script_source)?;
        let stale = self.scripts.get(&script).is_none_or(|l| l.source != source);
        if stale {
            // A table that did not read back is not remembered: the next use reads it again.
            let table = self.heap.line_ends(source)?;
            self.scripts.insert(script, Lines { source, table });
        }
        self.scripts.get(&script)?.table.line(position)
    }

    /// The BytecodeArray's source position table, as bytes. Absent (undefined) when V8 has not
    /// collected positions for this function.
    fn source_position_table(&self, array: Object) -> Option<Vec<u8>> {
        let tagged = self
            .heap
            .field(array, self.heap.layout.bytecode_array_source_positions)?;
        self.heap.byte_array(tagged, positions::MAX_TABLE_BYTES)
    }
}

/// Whether `position` lies in the function's source range (when known).
fn within(range: Option<(u32, u32)>, position: u32) -> bool {
    range.is_none_or(|(start, end)| (start..=end).contains(&position))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_name_missed_by_many_stacks_of_one_pass_is_one_miss() {
        let mut misses = ScriptMisses::default();
        // A collection moves the Script while one pass names six stacks with the function.
        misses.next_pass();
        assert!((0..6).all(|_| !misses.give_up(0x100)));
        // It misses again at the next pass, then at the third: only then named without a file.
        misses.next_pass();
        assert!(!misses.give_up(0x100));
        misses.next_pass();
        assert!(misses.give_up(0x100));
    }

    #[test]
    fn a_script_name_that_reads_back_clears_its_misses() {
        let mut misses = ScriptMisses::default();
        misses.next_pass();
        assert!(!misses.give_up(0x100));
        misses.next_pass();
        assert!(!misses.give_up(0x100));
        misses.hit(0x100);
        misses.next_pass();
        assert!(!misses.give_up(0x100));
        assert!(!misses.give_up(0x200));
    }
}
