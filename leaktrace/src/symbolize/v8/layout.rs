//! The `v8dbg_*` postmortem values of a node binary: where V8 keeps what names a JS frame.
//!
//! V8 exports these as plain `int` globals (the data llnode and other outside readers use). Their
//! names carry the field's C++ type, spelled differently between versions
//! (`..._SharedFunctionInfo__name_or_scope_info__Object` on Node 20,
//! `..._name_or_scope_info__Tagged_Object_` on Node 22), and some fields are renamed
//! (`script_or_debug_info` became `script`): values are found by class and field, never by whole
//! name. Every value is checked against a sane range, so a build whose data is missing or
//! different gives an error instead of a layout that would decode garbage.

use std::{fs::File, path::Path};

use object::ReadCache;

pub use super::values::LayoutError;
use super::{
    awaits::AwaitLayout,
    values::{Values, unexpected},
};

/// Node 20 exports only `JS_FUNCTION_TYPE`, the first of V8's JSFunction instance types; the
/// subtypes that follow it (class and typed-array constructors, ...) numbered 17 on Node 22.
/// 15 more is what V8-FRAMES.md inferred for Node 20 (2066-2081): an upper bound, not a value
/// the binary states.
const JS_FUNCTION_SUBTYPES_WITHOUT_LAST: u16 = 15;

/// The `v8dbg_*` values leaktrace needs, read from a node binary's symbol table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    // Frame slots, bytes relative to the frame pointer (`v8dbg_off_fp_*`).
    pub fp_function: i32,
    pub fp_context: i32,
    pub fp_bytecode_array: i32,
    pub fp_bytecode_offset: i32,
    /// Frame type of a builtin-exit frame: its marker slot (`fp_context`) holds `type << 1`, and
    /// the called function sits above the frame, not in `fp_function`.
    pub builtin_exit_frame_type: u16,

    pub heap_object_map: u32,
    /// `Map::instance_type`, a u16 field.
    pub map_instance_type: u32,
    pub js_function_shared: u32,
    /// `JSFunction::code`: the function's current Code, optimized code once it is tiered up.
    /// Exported since V8 12; derived before, see [`js_function_code_offset`].
    pub js_function_code: u32,
    /// Instance-type range of JSFunction (inclusive).
    pub js_function_first: u16,
    pub js_function_last: u16,

    pub shared_function_info_type: u16,
    pub sfi_name_or_scope_info: u32,
    /// `SharedFunctionInfo::script` (`script_or_debug_info` before V8 12).
    pub sfi_script: u32,

    pub scope_info_type: u16,
    /// Slot indexes (8-byte slots counted from the first field after the map).
    pub scope_info_context_local_count: u32,
    pub scope_info_first_vars: u32,

    pub script_type: u16,
    /// Oddball (undefined, null, ...): what a function without a script holds in its script
    /// field, told apart from a Script that does not read back because the GC is moving it.
    pub oddball_type: u16,
    pub script_name: u32,
    pub script_source: u32,

    pub strings: StringLayout,

    pub fixed_array_type: u16,
    /// `FixedArrayBase::length`, a Smi; byte arrays share it.
    pub fixed_array_length: u32,
    pub fixed_array_data: u32,
    /// Types a source position table may have: ByteArray, and TrustedByteArray since V8 12.
    pub byte_array_types: Vec<u16>,
    /// Where a byte array's bytes start: right after its length (not in the v8dbg data).
    pub byte_array_data: u32,

    pub bytecode_array_type: u16,
    /// Where the bytecodes start. The frame's offset slot holds `data - 1 + offset` as a Smi
    /// (an offset from the tagged pointer), so this is also the bias to remove from it.
    pub bytecode_array_data: u32,
    /// `BytecodeArray::source_position_table`: derived, see [`source_position_table_offset`].
    pub bytecode_array_source_positions: u32,

    /// Optimized code and its deoptimization data: what names inlined frames.
    pub code: CodeLayout,

    /// What following an async function's awaiters takes; `None` when this V8's data does not
    /// give it (its JavaScript frames are named all the same).
    pub awaits: Option<AwaitLayout>,
}

/// Where a Code object keeps its instructions and the metadata of inlining.
///
/// V8 11 (Node 20) has `Code` (the former CodeDataContainer, merged with the old Code's header)
/// start `relocation_info, deoptimization_data, position_table, instruction_stream,
/// code_entry_point, flags (4), builtin_id (2), kind_specific_flags (2), instruction_size (4)`;
/// only the first three are exported. V8 12 (Node 22) exports `instruction_stream`,
/// `instruction_start`, `instruction_size` and `wrapper`, and starts
/// `deoptimization_data_or_interpreter_data, position_table, wrapper`: those two are derived.
/// The reader checks every derived field by type, and the instruction start against the
/// InstructionStream it must point into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    pub code_type: u16,
    pub instruction_stream_type: u16,
    /// `Code::deoptimization_data`: a FixedArray (V8 11), TrustedFixedArray (V8 12).
    pub deoptimization_data: u32,
    /// `Code::source_position_table`: a byte array of pc offset / position pairs.
    pub source_position_table: u32,
    /// `Code::instruction_stream`: the tagged InstructionStream holding the instructions.
    pub instruction_stream: u32,
    /// `Code::instruction_start`: a raw address.
    pub instruction_start: u32,
    /// `Code::instruction_size`: an int32.
    pub instruction_size: u32,
    /// Where an InstructionStream's instructions start: its header size.
    pub instruction_stream_body: u32,
    /// Types deoptimization data may have.
    pub deoptimization_data_types: Vec<u16>,
    /// Slot indexes in the deoptimization data (`v8dbg_DeoptimizationData*Index`).
    pub deopt_inlined_function_count: u32,
    pub deopt_literal_array: u32,
    pub deopt_shared_function_info: u32,
    pub deopt_inlining_positions: u32,
}

/// How V8 lays out strings: instance-type bits and field offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StringLayout {
    /// Instance types below this are strings.
    pub first_nonstring_type: u16,
    pub representation_mask: u16,
    pub encoding_mask: u16,
    pub one_byte_tag: u16,
    pub seq_tag: u16,
    pub cons_tag: u16,
    pub external_tag: u16,
    pub sliced_tag: u16,
    pub thin_tag: u16,
    /// An int32, not a Smi.
    pub length: u32,
    pub seq_one_byte_chars: u32,
    pub seq_two_byte_chars: u32,
    pub cons_first: u32,
    pub cons_second: u32,
    pub sliced_parent: u32,
    pub sliced_offset: u32,
    pub thin_actual: u32,
    /// The cached pointer to an external string's characters: the slot after
    /// `ExternalString::resource` (not in the v8dbg data).
    pub external_data: u32,
}

impl Layout {
    /// Reads the layout from a node binary in memory.
    pub fn from_elf(data: &[u8]) -> Result<Layout, LayoutError> {
        Self::from_values(&Values::read(data)?)
    }

    /// Reads the layout from a node binary on disk, reading only its symbol tables and the
    /// values they point at (the binary is ~100 MB).
    pub fn read(path: &Path) -> Result<Layout, LayoutError> {
        let cache = ReadCache::new(File::open(path)?);
        Self::from_values(&Values::read(&cache)?)
    }

    /// The marker a builtin-exit frame holds in its `fp_context` slot.
    pub fn builtin_exit_marker(&self) -> u64 {
        u64::from(self.builtin_exit_frame_type) << 1
    }

    fn from_values(v: &Values) -> Result<Layout, LayoutError> {
        check_pointer_model(v)?;
        let js_function_first = v.instance_type("type_JSFunction__JS_FUNCTION_TYPE")?;
        let js_function_last = match v.get("LastJSFunctionType") {
            Some(_) => v.instance_type("LastJSFunctionType")?,
            None => js_function_first.saturating_add(JS_FUNCTION_SUBTYPES_WITHOUT_LAST),
        };
        if js_function_last < js_function_first || js_function_last - js_function_first > 64 {
            return Err(unexpected(
                "JSFunction type range",
                i64::from(js_function_last),
            ));
        }
        let fixed_array_length = v.tagged_field("FixedArrayBase::length")?;
        let bytecode_array_data = v.raw_field("BytecodeArray::data", 16..=256)?;
        Ok(Layout {
            fp_function: v.frame_slot("off_fp_function")?,
            fp_context: v.frame_slot("off_fp_context")?,
            fp_bytecode_array: v.frame_slot("off_fp_bytecode_array")?,
            fp_bytecode_offset: v.frame_slot("off_fp_bytecode_offset")?,
            builtin_exit_frame_type: v.frame_type("frametype_BuiltinExitFrame")?,
            heap_object_map: v.raw_field("HeapObject::map", 0..=0)?,
            map_instance_type: v.map_instance_type()?,
            js_function_shared: v.tagged_field("JSFunction::shared")?,
            js_function_code: js_function_code_offset(v)?,
            js_function_first,
            js_function_last,
            shared_function_info_type: v
                .instance_type("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE")?,
            sfi_name_or_scope_info: v.tagged_field("SharedFunctionInfo::name_or_scope_info")?,
            sfi_script: v.tagged_field("SharedFunctionInfo::script|script_or_debug_info")?,
            scope_info_type: v.instance_type("type_ScopeInfo__SCOPE_INFO_TYPE")?,
            scope_info_context_local_count: v.small("scopeinfo_idx_ncontextlocals", 1..=8)?,
            scope_info_first_vars: v.small("scopeinfo_idx_first_vars", 1..=8)?,
            script_type: v.instance_type("type_Script__SCRIPT_TYPE")?,
            oddball_type: v.instance_type("type_Oddball__ODDBALL_TYPE")?,
            script_name: v.tagged_field("Script::name")?,
            script_source: v.tagged_field("Script::source")?,
            strings: StringLayout::from_values(v)?,
            fixed_array_type: v.instance_type("type_FixedArray__FIXED_ARRAY_TYPE")?,
            fixed_array_length,
            fixed_array_data: v.tagged_field("FixedArray::data")?,
            byte_array_types: byte_array_types(v)?,
            // ByteArray (and TrustedByteArray) is a FixedArrayBase whose bytes follow the length.
            byte_array_data: fixed_array_length + 8,
            bytecode_array_type: v.instance_type("type_BytecodeArray__BYTECODE_ARRAY_TYPE")?,
            bytecode_array_data,
            bytecode_array_source_positions: source_position_table_offset(
                v,
                fixed_array_length,
                bytecode_array_data,
            )?,
            code: CodeLayout::from_values(v)?,
            awaits: AwaitLayout::from_values(v),
        })
    }
}

impl CodeLayout {
    fn from_values(v: &Values) -> Result<CodeLayout, LayoutError> {
        let (deoptimization_data, source_position_table, instruction_stream) =
            match v.tagged_field("Code::wrapper") {
                // V8 12: the two fields before the wrapper.
                Ok(wrapper) if wrapper >= 24 => (
                    wrapper - 16,
                    wrapper - 8,
                    v.tagged_field("Code::instruction_stream")?,
                ),
                Ok(wrapper) => return Err(unexpected("Code::wrapper", i64::from(wrapper))),
                Err(LayoutError::Missing(_)) => v8_11_code_fields(v)?,
                Err(err) => return Err(err),
            };
        let (instruction_start, instruction_size) =
            match v.raw_field("Code::instruction_start", 16..=128) {
                Ok(start) => (start, v.raw_field("Code::instruction_size", 16..=128)?),
                // V8 11: the entry point follows the InstructionStream; the size follows the
                // flags (4 bytes), builtin id and kind-specific flags (2 each).
                Err(LayoutError::Missing(_)) => (instruction_stream + 8, instruction_stream + 24),
                Err(err) => return Err(err),
            };
        if instruction_start % 8 != 0 || instruction_size % 4 != 0 {
            return Err(unexpected(
                "Code::instruction_start",
                i64::from(instruction_start),
            ));
        }
        let index = |name: &'static str| v.small(name, 0..=32);
        Ok(CodeLayout {
            code_type: v.instance_type("type_Code__CODE_TYPE")?,
            instruction_stream_type: v
                .instance_type("type_InstructionStream__INSTRUCTION_STREAM_TYPE")?,
            deoptimization_data,
            source_position_table,
            instruction_stream,
            instruction_start,
            instruction_size,
            instruction_stream_body: v
                .raw_field("InstructionStream::instruction_start", 8..=256)?,
            deoptimization_data_types: deoptimization_data_types(v)?,
            deopt_inlined_function_count: index("DeoptimizationDataInlinedFunctionCountIndex")?,
            deopt_literal_array: index("DeoptimizationDataLiteralArrayIndex")?,
            deopt_shared_function_info: index("DeoptimizationDataSharedFunctionInfoIndex")?,
            deopt_inlining_positions: index("DeoptimizationDataInliningPositionsIndex")?,
        })
    }
}

/// V8 11's Code fields (deoptimization data, position table, instruction stream): the first
/// two are exported, and must follow `relocation_info` as in V8 11's header, the third follows.
fn v8_11_code_fields(v: &Values) -> Result<(u32, u32, u32), LayoutError> {
    let relocation_info = v.tagged_field("Code::relocation_info")?;
    let deoptimization_data = v.tagged_field("Code::deoptimization_data")?;
    let source_position_table = v.tagged_field("Code::source_position_table")?;
    if deoptimization_data != relocation_info + 8
        || source_position_table != deoptimization_data + 8
    {
        return Err(unexpected(
            "Code::source_position_table",
            i64::from(source_position_table),
        ));
    }
    Ok((
        deoptimization_data,
        source_position_table,
        source_position_table + 8,
    ))
}

/// FixedArray, and the trusted-space arrays V8 12 keeps deoptimization data in.
fn deoptimization_data_types(v: &Values) -> Result<Vec<u16>, LayoutError> {
    let mut types = vec![v.instance_type("type_FixedArray__FIXED_ARRAY_TYPE")?];
    for name in [
        "type_TrustedFixedArray__TRUSTED_FIXED_ARRAY_TYPE",
        "type_ProtectedFixedArray__PROTECTED_FIXED_ARRAY_TYPE",
    ] {
        if v.get(name).is_some() {
            types.push(v.instance_type(name)?);
        }
    }
    Ok(types)
}

/// `JSFunction::code`, exported since V8 12. Before, JSFunction's tagged fields after the
/// JSObject header (`map, properties, elements`) ran up to `prototype_or_initial_map` and are
/// all exported but `code`: it is the one slot in that run no exported field takes (48 on
/// Node 20). The reader checks the value found there is a Code object.
fn js_function_code_offset(v: &Values) -> Result<u32, LayoutError> {
    match v.tagged_field("JSFunction::code") {
        Err(LayoutError::Missing(_)) => {}
        found => return found,
    }
    let first = v.tagged_field("JSObject::elements")? + 8;
    let end = v.tagged_field("JSFunction::prototype_or_initial_map")?;
    let taken = [
        v.tagged_field("JSFunction::shared")?,
        v.tagged_field("JSFunction::context")?,
        v.tagged_field("JSFunction::raw_feedback_cell")?,
    ];
    let mut free = (first..end).step_by(8).filter(|o| !taken.contains(o));
    match (free.next(), free.next()) {
        (Some(offset), None) => Ok(offset),
        _ => Err(LayoutError::Missing("JSFunction::code")),
    }
}

impl StringLayout {
    fn from_values(v: &Values) -> Result<StringLayout, LayoutError> {
        let tag = |name: &'static str| v.small(name, 0..=15).map(|t| t as u16);
        let external_resource = v.tagged_field("ExternalString::resource")?;
        let layout = StringLayout {
            first_nonstring_type: v.instance_type("FirstNonstringType")?,
            representation_mask: tag("StringRepresentationMask")?,
            encoding_mask: tag("StringEncodingMask")?,
            one_byte_tag: tag("OneByteStringTag")?,
            seq_tag: tag("SeqStringTag")?,
            cons_tag: tag("ConsStringTag")?,
            external_tag: tag("ExternalStringTag")?,
            sliced_tag: tag("SlicedStringTag")?,
            thin_tag: tag("ThinStringTag")?,
            length: v.raw_field("String::length", 4..=32)?,
            seq_one_byte_chars: v.raw_field("SeqOneByteString::chars", 8..=64)?,
            seq_two_byte_chars: v.raw_field("SeqTwoByteString::chars", 8..=64)?,
            cons_first: v.tagged_field("ConsString::first")?,
            cons_second: v.tagged_field("ConsString::second")?,
            sliced_parent: v.tagged_field("SlicedString::parent")?,
            sliced_offset: v.tagged_field("SlicedString::offset")?,
            thin_actual: v.tagged_field("ThinString::actual")?,
            // V8 caches the resource's data pointer in the slot after the resource, for cached
            // external strings (all but the "uncached" ones, which the decoder skips).
            external_data: external_resource + 8,
        };
        let tags = [
            layout.seq_tag,
            layout.cons_tag,
            layout.external_tag,
            layout.sliced_tag,
            layout.thin_tag,
        ];
        if layout.representation_mask == 0
            || layout.encoding_mask & layout.representation_mask != 0
            || layout.one_byte_tag & !layout.encoding_mask != 0
            || tags.iter().any(|t| t & !layout.representation_mask != 0)
        {
            return Err(LayoutError::Unexpected(format!(
                "string representation/encoding bits {:#x}/{:#x}",
                layout.representation_mask, layout.encoding_mask
            )));
        }
        Ok(layout)
    }
}

/// Only 64-bit builds without pointer compression: 8-byte tagged slots, Smis in the upper half.
fn check_pointer_model(v: &Values) -> Result<(), LayoutError> {
    let expect = [
        ("TaggedSize", 8),
        ("SystemPointerSize", 8),
        ("SmiShiftSize", 31),
        ("HeapObjectTag", 1),
        ("HeapObjectTagMask", 3),
        ("SmiTag", 0),
        ("SmiTagMask", 1),
    ];
    for (name, want) in expect {
        let got = v.get(name).ok_or(LayoutError::Missing(name))?;
        if got != want {
            return Err(LayoutError::Unexpected(format!(
                "{name} is {got}, not {want} (pointer compression or a 32-bit build)"
            )));
        }
    }
    Ok(())
}

fn byte_array_types(v: &Values) -> Result<Vec<u16>, LayoutError> {
    let mut types = vec![v.instance_type("type_ByteArray__BYTE_ARRAY_TYPE")?];
    if v.get("type_TrustedByteArray__TRUSTED_BYTE_ARRAY_TYPE")
        .is_some()
    {
        types.push(v.instance_type("type_TrustedByteArray__TRUSTED_BYTE_ARRAY_TYPE")?);
    }
    Ok(types)
}

/// `BytecodeArray::source_position_table` is not in the v8dbg data; its place follows from which
/// neighbours are. Since V8 12 a BytecodeArray lives in trusted space and starts
/// `length, wrapper, source_position_table, handler_table, constant_pool` (and `wrapper` is
/// exported: +24 on Node 22). Before, it was a FixedArrayBase starting
/// `length, constant_pool, handler_table, source_position_table` (+32 on Node 20). Either way the
/// slot must lie inside the header; the reader also checks the object found there by type, and
/// the positions it gives by the function's source range, since the handler table next to it is
/// a byte array too.
fn source_position_table_offset(v: &Values, length: u32, data: u32) -> Result<u32, LayoutError> {
    let offset = match v.tagged_field("BytecodeArray::wrapper") {
        Ok(wrapper) => wrapper + 8,
        Err(LayoutError::Missing(_)) => length + 24,
        Err(err) => return Err(err),
    };
    if offset % 8 != 0 || offset + 8 > data {
        return Err(unexpected(
            "BytecodeArray::source_position_table",
            i64::from(offset),
        ));
    }
    Ok(offset)
}
