//! Optimized code: which functions run at a pc, inlined ones included.
//!
//! TurboFan and Maglev inline small functions into their callers: the function that allocates
//! then has no frame of its own. V8 recovers it for its stack traces from the optimized Code's
//! metadata (`SourcePosition::InliningStack`), and so does this: the code's source position
//! table maps the pc to a position carrying an inlining id; the deoptimization data's
//! `InliningPositions` map that id to the inlined function and to the position it was inlined
//! at in its caller, which may itself be inlined, up to the optimized function.

use super::{
    heap::{Heap, Memory, Object, smi},
    positions::{self, SourcePosition},
};

/// Longest optimized code accepted (V8's largest functions compile to a few MB).
const MAX_INSTRUCTION_SIZE: u32 = 256 << 20;
/// Inlining depth beyond any V8 heuristic (TurboFan stops far earlier): a longer chain is a
/// cycle in garbage data.
const MAX_INLINING_DEPTH: usize = 64;
/// An `InliningPosition`: the `SourcePosition` it was inlined at (8 bytes), the inlined
/// function's index into the literal array (int32), padding.
const INLINING_POSITION_SIZE: usize = 16;
/// Inlining ids are 16 bits wide in a `SourcePosition`.
const MAX_INLINED_FUNCTIONS: u32 = 1 << 16;
/// A weak reference (tag 0b11): the literal array may hold inlined functions weakly.
const WEAK_TAG: u64 = 2;

/// One function at an optimized frame's pc, before naming.
#[derive(Clone, Copy, Debug)]
pub(super) struct RawFrame {
    /// Tagged SharedFunctionInfo.
    pub(super) sfi: u64,
    /// Script offset of the call (or allocation) site in this function.
    pub(super) position: Option<u32>,
    pub(super) inlined: bool,
}

/// The parts of a Code's deoptimization data that name inlined functions.
struct Deopt {
    /// Tagged SharedFunctionInfo of the optimized function itself.
    shared: u64,
    literals: Object,
    inlined_count: u32,
    /// `InliningPositions`, as bytes.
    positions: Vec<u8>,
}

impl<M: Memory> Heap<M> {
    /// The functions running at return address `pc` in the optimized Code `code` (tagged),
    /// innermost first: the inlined ones, then the optimized function.
    pub(super) fn inlining_stack(&self, code: u64, pc: u64) -> Option<Vec<RawFrame>> {
        let layout = &self.layout.code;
        let code = self.typed(code, layout.code_type)?;
        let offset = self.pc_offset(code, pc)?;
        let table = self.byte_array(
            self.field(code, layout.source_position_table)?,
            positions::MAX_TABLE_BYTES,
        )?;
        // `pc` returns after a call: the call is the instruction before it (V8 looks up
        // `offset - 1` too).
        let raw = positions::raw_at(&table, i64::from(offset) - 1)?;
        let mut position = SourcePosition::decode(raw);
        let deopt = self.deopt(code)?;
        let mut frames = Vec::new();
        while let Some(id) = position.inlining_id {
            if frames.len() >= MAX_INLINING_DEPTH {
                return None;
            }
            let (outer, function) = deopt.inlining_position(id)?;
            frames.push(RawFrame {
                sfi: self.inlined_function(&deopt, function)?,
                position: position.script_offset,
                inlined: true,
            });
            position = outer;
        }
        frames.push(RawFrame {
            sfi: deopt.shared,
            position: position.script_offset,
            inlined: false,
        });
        Some(frames)
    }

    /// `pc - instruction_start` when `pc` lies inside `code`'s instructions, after checking that
    /// the instruction start is where the code's InstructionStream keeps its instructions.
    fn pc_offset(&self, code: Object, pc: u64) -> Option<u32> {
        let layout = &self.layout.code;
        let stream = self.typed(
            self.field(code, layout.instruction_stream)?,
            layout.instruction_stream_type,
        )?;
        let start = self.u64(code.addr.checked_add(u64::from(layout.instruction_start))?)?;
        if start
            != stream
                .addr
                .checked_add(u64::from(layout.instruction_stream_body))?
        {
            return None;
        }
        let size = self.i32(code.addr.checked_add(u64::from(layout.instruction_size))?)?;
        let size = u32::try_from(size)
            .ok()
            .filter(|s| (1..=MAX_INSTRUCTION_SIZE).contains(s))?;
        let offset = u32::try_from(pc.checked_sub(start)?).ok()?;
        (offset > 0 && offset < size).then_some(offset)
    }

    fn deopt(&self, code: Object) -> Option<Deopt> {
        let layout = &self.layout.code;
        let array = self
            .object(self.field(code, layout.deoptimization_data)?)
            .filter(|a| layout.deoptimization_data_types.contains(&a.instance_type))?;
        let shared = self.array_slot(array, layout.deopt_shared_function_info)?;
        self.typed(shared, self.layout.shared_function_info_type)?;
        let inlined_count = self
            .array_slot(array, layout.deopt_inlined_function_count)
            .and_then(smi)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n <= MAX_INLINED_FUNCTIONS)?;
        let literals = self.object(self.array_slot(array, layout.deopt_literal_array)?)?;
        if self.array_len(literals)? < inlined_count {
            return None;
        }
        let max_bytes = MAX_INLINED_FUNCTIONS as usize * INLINING_POSITION_SIZE;
        let positions = self.byte_array(
            self.array_slot(array, layout.deopt_inlining_positions)?,
            u32::try_from(max_bytes).ok()?,
        )?;
        Some(Deopt {
            shared,
            literals,
            inlined_count,
            positions,
        })
    }

    /// The inlined function with literal index `index` (-1: the optimized function itself).
    fn inlined_function(&self, deopt: &Deopt, index: i32) -> Option<u64> {
        if index == -1 {
            return Some(deopt.shared);
        }
        let index = u32::try_from(index)
            .ok()
            .filter(|&i| i < deopt.inlined_count)?;
        let mut sfi = self.array_slot(deopt.literals, index)?;
        if sfi & 3 == 3 {
            sfi &= !WEAK_TAG;
        }
        self.typed(sfi, self.layout.shared_function_info_type)?;
        Some(sfi)
    }

    /// Slot `index` of a FixedArray-like object (FixedArray, its trusted variants, the
    /// WeakFixedArray of deoptimization literals): a Smi length, then 8-byte slots.
    fn array_slot(&self, array: Object, index: u32) -> Option<u64> {
        if index >= self.array_len(array)? {
            return None;
        }
        let offset = self
            .layout
            .fixed_array_data
            .checked_add(index.checked_mul(8)?)?;
        self.field(array, offset)
    }

    fn array_len(&self, array: Object) -> Option<u32> {
        u32::try_from(self.smi_field(array, self.layout.fixed_array_length)?).ok()
    }
}

impl Deopt {
    /// Inlining position `id`: where its function was inlined, and that function's literal
    /// index.
    fn inlining_position(&self, id: u16) -> Option<(SourcePosition, i32)> {
        let start = usize::from(id).checked_mul(INLINING_POSITION_SIZE)?;
        let entry = self.positions.get(start..start + INLINING_POSITION_SIZE)?;
        let (position, rest) = entry.split_first_chunk::<8>()?;
        let (function, _) = rest.split_first_chunk::<4>()?;
        Some((
            SourcePosition::decode(u64::from_le_bytes(*position)),
            i32::from_le_bytes(*function),
        ))
    }
}
