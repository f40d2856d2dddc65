//! Source positions: V8's source position tables, and lines from newline offsets.

/// Largest source position table read (a few KB for large functions).
pub(super) const MAX_TABLE_BYTES: u32 = 1 << 20;

/// The source position (UTF-16 units into the script) of the last entry of `table` at or before
/// bytecode offset `offset`.
pub(super) fn position_at(table: &[u8], offset: u32) -> Option<u32> {
    SourcePosition::decode(raw_at(table, i64::from(offset))?).script_offset
}

/// The raw `SourcePosition` of the last entry of `table` at or before code offset `offset`
/// (a bytecode offset, or a pc offset into optimized code).
///
/// The table is pairs of zig-zag varints: a code-offset delta (negative `d` means `-d - 1` and an
/// expression rather than a statement position) and a position delta. The running code offset
/// starts at -1: the first entry is the function's entry.
pub(super) fn raw_at(table: &[u8], offset: i64) -> Option<u64> {
    let mut bytes = table.iter().copied();
    let (mut code, mut raw) = (-1i64, 0i64);
    let mut best = None;
    while let Some(delta) = varint(&mut bytes) {
        code = code.checked_add(if delta >= 0 { delta } else { -(delta + 1) })?;
        raw = raw.wrapping_add(varint(&mut bytes)?);
        if code > offset {
            break;
        }
        best = Some(raw as u64);
    }
    best
}

/// V8's `SourcePosition`, a 64-bit bit field: bit 0 external (a position in another file, which
/// JavaScript never has), bits 1-30 the script offset plus one, bits 31-46 the inlining id plus
/// one (0 = not inlined: a position in the optimized function itself).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SourcePosition {
    /// UTF-16 units into the function's script; `None` when unknown or external.
    pub(super) script_offset: Option<u32>,
    /// Index into the code's inlining positions; `None` when not inlined.
    pub(super) inlining_id: Option<u16>,
}

impl SourcePosition {
    pub(super) fn decode(raw: u64) -> SourcePosition {
        let external = raw & 1 != 0;
        let offset = ((raw >> 1) & 0x3fff_ffff) as u32;
        let inlining = ((raw >> 31) & 0xffff) as u16;
        SourcePosition {
            script_offset: (!external).then(|| offset.checked_sub(1)).flatten(),
            inlining_id: inlining.checked_sub(1),
        }
    }
}

/// One zig-zag LEB128 varint, at most 64 bits.
fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = bytes.next()?;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

/// A script's line ends, counted from its source (V8 computes `Script::line_ends` only when
/// something asks for a stack trace, so a running service usually has none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct LineTable {
    /// Positions of every `\n`, ascending.
    pub(super) ends: Vec<u32>,
    /// Length of the source in UTF-16 units (as far as it was read).
    pub(super) len: u32,
}

impl LineTable {
    /// The 1-based line holding `position`; `None` beyond the source.
    pub(super) fn line(&self, position: u32) -> Option<u32> {
        if position > self.len {
            return None;
        }
        let before = self.ends.partition_point(|&end| end < position);
        u32::try_from(before).ok()?.checked_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zig-zag LEB128, as V8 writes it.
    fn encode(out: &mut Vec<u8>, value: i64) {
        let mut v = ((value << 1) ^ (value >> 63)) as u64;
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    /// A table of (code offset, position, is_statement) entries.
    fn table(entries: &[(i64, i64, bool)]) -> Vec<u8> {
        let (mut out, mut code, mut raw) = (Vec::new(), -1, 0);
        for &(offset, position, statement) in entries {
            let delta = offset - code;
            encode(&mut out, if statement { delta } else { -delta - 1 });
            let value = (position + 1) << 1;
            encode(&mut out, value - raw);
            (code, raw) = (offset, value);
        }
        out
    }

    #[test]
    fn last_entry_at_or_before_the_offset() {
        let t = table(&[
            (-1, 129, true),
            (0, 140, true),
            (9, 154, false),
            (20, 190, true),
        ]);
        assert_eq!(position_at(&t, 0), Some(140));
        assert_eq!(position_at(&t, 9), Some(154));
        assert_eq!(position_at(&t, 19), Some(154));
        assert_eq!(position_at(&t, 500), Some(190));
    }

    #[test]
    fn source_positions_carry_an_inlining_id() {
        let raw = |offset: u64, inlining: u64| ((inlining + 1) << 31) | ((offset + 1) << 1);
        assert_eq!(
            SourcePosition::decode(raw(2399, 2)),
            SourcePosition {
                script_offset: Some(2399),
                inlining_id: Some(2)
            }
        );
        assert_eq!(SourcePosition::decode(0), SourcePosition::default());
        assert_eq!(SourcePosition::decode(raw(5, 0) | 1).script_offset, None);
        let t = table(&[(0, 10, true), (0x20, 40, false)]);
        assert_eq!(raw_at(&t, 0x1f), Some((10 + 1) << 1));
        assert_eq!(raw_at(&t, -2), None);
    }

    #[test]
    fn garbage_tables_end_quietly() {
        assert_eq!(position_at(&[], 3), None);
        assert_eq!(position_at(&[0xff; 64], 3), None);
        assert_eq!(position_at(&[0x02], 3), None);
    }

    #[test]
    fn lines_count_the_ends_before() {
        let lines = LineTable {
            ends: vec![3, 7],
            len: 10,
        };
        assert_eq!(lines.line(0), Some(1));
        assert_eq!(lines.line(3), Some(1));
        assert_eq!(lines.line(4), Some(2));
        assert_eq!(lines.line(10), Some(3));
        assert_eq!(lines.line(11), None);
    }
}
