//! V8 strings: sequential (one- or two-byte), cons, sliced, thin and external, read in bounded
//! chunks.

use std::ops::ControlFlow;

use super::{
    heap::{Heap, Memory, Object},
    positions::LineTable,
};

/// Longest source read to count lines, in UTF-16 units; later positions have no line.
pub(super) const MAX_SOURCE_UNITS: u32 = 64 << 20;
/// Units read from the target at a time.
const CHUNK_UNITS: u32 = 32 << 10;
/// String pieces (cons halves, slices, ...) visited for one string: a cons tree of a
/// concatenated source can be deep, but not this deep.
const MAX_PIECES: usize = 4096;
/// A cached external string keeps its characters' address after its resource; an "uncached"
/// one (this bit of the instance type, V8's `kUncachedExternalStringMask` since 2018, as
/// Node 22's exported `UNCACHED_EXTERNAL_*_STRING_TYPE`s 50 and 58 confirm) does not.
const UNCACHED_EXTERNAL: u16 = 1 << 4;
/// Longest string V8 makes (`String::kMaxLength` on 64-bit builds).
const MAX_LENGTH: i32 = (1 << 29) - 24;

/// Characters as V8 stores them.
pub(super) enum Chunk<'a> {
    Latin1(&'a [u8]),
    Utf16(&'a [u16]),
}

/// Where the characters of a flat string piece are.
struct Flat {
    addr: u64,
    one_byte: bool,
}

impl<M: Memory> Heap<M> {
    /// The string `tagged` points at, up to `max_units` UTF-16 units.
    pub(super) fn string(&self, tagged: u64, max_units: u32) -> Option<String> {
        let mut out = String::new();
        self.visit_string(tagged, max_units, &mut |chunk| {
            match chunk {
                Chunk::Latin1(bytes) => out.extend(bytes.iter().map(|&b| char::from(b))),
                Chunk::Utf16(units) => out.extend(
                    char::decode_utf16(units.iter().copied())
                        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)),
                ),
            }
            ControlFlow::Continue(())
        })?;
        Some(out)
    }

    /// The line ends of the source string `tagged` (its first [`MAX_SOURCE_UNITS`] units).
    pub(super) fn line_ends(&self, tagged: u64) -> Option<LineTable> {
        let mut table = LineTable::default();
        self.visit_string(tagged, MAX_SOURCE_UNITS, &mut |chunk| {
            let base = table.len;
            let (newlines, len): (Vec<u32>, usize) = match chunk {
                Chunk::Latin1(b) => (newlines(b.iter().map(|&c| u16::from(c))), b.len()),
                Chunk::Utf16(u) => (newlines(u.iter().copied()), u.len()),
            };
            table.ends.extend(newlines.into_iter().map(|i| base + i));
            table.len = base + len as u32;
            ControlFlow::Continue(())
        })?;
        Some(table)
    }

    /// Calls `visit` with the characters of `tagged`, in order, up to `max_units` units.
    /// `None` if any piece fails to validate or read.
    fn visit_string(
        &self,
        tagged: u64,
        max_units: u32,
        visit: &mut dyn FnMut(Chunk<'_>) -> ControlFlow<()>,
    ) -> Option<()> {
        // Pieces still to visit, last first: (string, first unit, end unit).
        let len = self.string_length(self.string_object(tagged)?)?;
        let mut pending = vec![(tagged, 0, len.min(max_units))];
        let mut visited = 0;
        while let Some((tagged, start, end)) = pending.pop() {
            visited += 1;
            if visited > MAX_PIECES {
                return None;
            }
            if start >= end {
                continue;
            }
            let object = self.string_object(tagged)?;
            if end > self.string_length(object)? {
                return None;
            }
            match self.piece(object)? {
                Piece::Flat(flat) => {
                    if self.visit_flat(&flat, start, end, visit)?.is_break() {
                        return Some(());
                    }
                }
                Piece::Cons(first, second) => {
                    let split = self.string_length(self.string_object(first)?)?;
                    if end > split {
                        pending.push((second, start.saturating_sub(split), end - split));
                    }
                    pending.push((first, start, end.min(split)));
                }
                Piece::Slice(parent, offset) => {
                    pending.push((parent, start.checked_add(offset)?, end.checked_add(offset)?));
                }
            }
        }
        Some(())
    }

    fn visit_flat(
        &self,
        flat: &Flat,
        start: u32,
        end: u32,
        visit: &mut dyn FnMut(Chunk<'_>) -> ControlFlow<()>,
    ) -> Option<ControlFlow<()>> {
        let unit = if flat.one_byte { 1 } else { 2 };
        let mut buf = vec![0u8; (CHUNK_UNITS.min(end - start) * unit) as usize];
        let mut at = start;
        while at < end {
            let n = CHUNK_UNITS.min(end - at);
            let bytes = &mut buf[..(n * unit) as usize];
            self.bytes(flat.addr.checked_add(u64::from(at * unit))?, bytes)?;
            let flow = if flat.one_byte {
                visit(Chunk::Latin1(bytes))
            } else {
                let units: Vec<u16> = bytes
                    .as_chunks()
                    .0
                    .iter()
                    .map(|b| u16::from_le_bytes(*b))
                    .collect();
                visit(Chunk::Utf16(&units))
            };
            if flow.is_break() {
                return Some(flow);
            }
            at += n;
        }
        Some(ControlFlow::Continue(()))
    }

    fn string_object(&self, tagged: u64) -> Option<Object> {
        self.object(tagged).filter(|o| self.is_string(*o))
    }

    fn string_length(&self, string: Object) -> Option<u32> {
        let len = self.i32(string.addr + u64::from(self.layout.strings.length))?;
        u32::try_from(len).ok().filter(|_| len <= MAX_LENGTH)
    }

    /// What kind of piece `string` is, by its representation bits.
    fn piece(&self, string: Object) -> Option<Piece> {
        let s = &self.layout.strings;
        let t = string.instance_type;
        let one_byte = t & s.encoding_mask == s.one_byte_tag;
        let at = |offset: u32| string.addr + u64::from(offset);
        let representation = t & s.representation_mask;
        Some(if representation == s.seq_tag {
            let chars = if one_byte {
                s.seq_one_byte_chars
            } else {
                s.seq_two_byte_chars
            };
            Piece::Flat(Flat {
                addr: at(chars),
                one_byte,
            })
        } else if representation == s.external_tag {
            if t & UNCACHED_EXTERNAL != 0 {
                return None;
            }
            Piece::Flat(Flat {
                addr: self.u64(at(s.external_data))?,
                one_byte,
            })
        } else if representation == s.cons_tag {
            Piece::Cons(self.u64(at(s.cons_first))?, self.u64(at(s.cons_second))?)
        } else if representation == s.sliced_tag {
            let offset = self.smi_field(string, s.sliced_offset)?;
            Piece::Slice(self.u64(at(s.sliced_parent))?, u32::try_from(offset).ok()?)
        } else if representation == s.thin_tag {
            Piece::Slice(self.u64(at(s.thin_actual))?, 0)
        } else {
            return None;
        })
    }
}

enum Piece {
    Flat(Flat),
    /// First and second halves.
    Cons(u64, u64),
    /// Parent and offset into it (a thin string is a slice of all of its target).
    Slice(u64, u32),
}

/// Indexes of `\n` among `units`.
fn newlines(units: impl Iterator<Item = u16>) -> Vec<u32> {
    units
        .enumerate()
        .filter(|&(_, u)| u == u16::from(b'\n'))
        .map(|(i, _)| i as u32)
        .collect()
}
