//! One object's unwind table: its `.eh_frame` turned into the compact rows the probes search.
//!
//! Each CFI row of each FDE becomes one [`UnwindRow`]; the end of each FDE gets a `NoRow`
//! marker unless another FDE starts there; rows that repeat the rule before them are dropped.

use gimli::{
    BaseAddresses, CfaRule as GimliCfa, CieOrFde, EhFrame, EhFrameHdr, LittleEndian, Pointer,
    RegisterRule, UnwindContext, UnwindSection, X86_64,
};
use leaktrace_common::{CfaRule, RbpRule, UnwindRow};
use object::{Object, ObjectSection, ObjectSegment, elf, read::elf::ProgramHeader};

/// Why an object has no table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("not an ELF object leaktrace can read: {0}")]
    Elf(#[from] object::Error),
    #[error("malformed .eh_frame: {0}")]
    Dwarf(#[from] gimli::Error),
    #[error("no .eh_frame (neither a section nor a PT_GNU_EH_FRAME segment)")]
    Missing,
    #[error("code above 4 GiB: rows hold 32-bit addresses")]
    TooLarge,
}

/// How the probes walk through an object's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// By its unwind table: most of its functions keep no frame pointer.
    Tables,
    /// By frame pointer: most of its functions set one up (node, a program built with
    /// `-fno-omit-frame-pointer`): the table would cost memory and buy nothing.
    FramePointers,
}

/// FDEs looked at to classify an object: enough to tell how it was compiled, few enough that
/// classifying node's 100 k FDEs costs milliseconds.
const CLASSIFY_FDES: usize = 2000;

/// The `.plt` CFA expression of x86-64 linkers: `rsp + 8 + ((rip & 15) >= N) << 3`, N = 11
/// (or 10). The probes compute it as a rule of its own.
const PLT_EXPRESSION: [u8; 11] = [
    0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
];

/// The `.eh_frame` of an ELF file: its bytes and the address they are loaded at.
struct Section<'a> {
    data: &'a [u8],
    address: u64,
}

/// Finds `.eh_frame` by section header, else through `PT_GNU_EH_FRAME` (stripped objects keep
/// the segment but may lose the headers): the header points at the table, which runs to the end
/// of its loadable segment at most (its terminator ends it earlier).
fn eh_frame<'a>(file: &object::File<'a>, data: &'a [u8]) -> Result<Section<'a>, TableError> {
    if let Some(section) = file.section_by_name(".eh_frame")
        && let Ok(bytes) = section.data()
    {
        return Ok(Section {
            data: bytes,
            address: section.address(),
        });
    }
    let object::File::Elf64(elf_file) = file else {
        return Err(TableError::Missing);
    };
    let endian = elf_file.endian();
    let header = elf_file
        .elf_program_headers()
        .iter()
        .find(|h| h.p_type(endian) == elf::PT_GNU_EH_FRAME)
        .ok_or(TableError::Missing)?;
    let hdr_addr = header.p_vaddr(endian);
    let hdr_bytes = header
        .data(endian, data)
        .map_err(|()| TableError::Missing)?;
    let bases = BaseAddresses::default().set_eh_frame_hdr(hdr_addr);
    let parsed = EhFrameHdr::new(hdr_bytes, LittleEndian).parse(&bases, 8)?;
    let Pointer::Direct(address) = parsed.eh_frame_ptr() else {
        return Err(TableError::Missing);
    };
    for segment in file.segments() {
        let (start, size) = (segment.address(), segment.size());
        if (start..start + size).contains(&address) {
            let bytes = segment.data()?;
            let from = (address - start) as usize;
            return bytes
                .get(from..)
                .map(|data| Section { data, address })
                .ok_or(TableError::Missing);
        }
    }
    Err(TableError::Missing)
}

/// One parsed row before compaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule {
    cfa: CfaRule,
    cfa_off: u16,
    rbp: RbpRule,
    rbp_off8: i8,
}

impl Rule {
    const fn only(cfa: CfaRule) -> Self {
        Self {
            cfa,
            cfa_off: 0,
            rbp: RbpRule::Unchanged,
            rbp_off8: 0,
        }
    }
}

/// The rows of `data` (an ELF file), sorted by address, and how the object is walked.
pub fn build(data: &[u8]) -> Result<(Walk, Vec<UnwindRow>), TableError> {
    let file = object::File::parse(data)?;
    let section = eh_frame(&file, data)?;
    let eh = EhFrame::new(section.data, LittleEndian);
    let mut bases = BaseAddresses::default().set_eh_frame(section.address);
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    let mut ctx = UnwindContext::new();
    let mut raw: Vec<(u64, bool, Rule)> = Vec::new();
    let (mut fdes, mut framed) = (0usize, 0usize);
    let mut entries = eh.entries(&bases);
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = partial.parse(|s, b, o| s.cie_from_offset(b, o))?;
        let mut table = fde.rows(&eh, &bases, &mut ctx)?;
        let mut uses_fp = false;
        while let Some(row) = table.next_row()? {
            let rule = rule_of(&eh, fde.is_signal_trampoline(), row);
            uses_fp |= rule.cfa == CfaRule::Rbp && rule.cfa_off == 16;
            raw.push((row.start_address(), false, rule));
        }
        raw.push((fde.end_address(), true, Rule::only(CfaRule::NoRow)));
        fdes += 1;
        framed += usize::from(uses_fp);
        // Mostly frame pointers: decided without reading the rest.
        if fdes == CLASSIFY_FDES && framed * 2 > fdes {
            return Ok((Walk::FramePointers, Vec::new()));
        }
    }
    if framed * 2 > fdes {
        return Ok((Walk::FramePointers, Vec::new()));
    }
    Ok((Walk::Tables, compact(raw)?))
}

/// Sorts rows by address (an FDE's own row before another's end marker at the same address),
/// keeps one row per address, and drops rows that repeat the one before.
fn compact(mut raw: Vec<(u64, bool, Rule)>) -> Result<Vec<UnwindRow>, TableError> {
    raw.sort_by_key(|&(pc, end, _)| (pc, end));
    raw.dedup_by_key(|&mut (pc, _, _)| pc);
    let mut rows: Vec<UnwindRow> = Vec::with_capacity(raw.len());
    let mut last: Option<Rule> = None;
    for (pc, _, rule) in raw {
        if last == Some(rule) {
            continue;
        }
        last = Some(rule);
        rows.push(UnwindRow {
            pc: u32::try_from(pc).map_err(|_| TableError::TooLarge)?,
            cfa_off: rule.cfa_off,
            rbp_off8: rule.rbp_off8,
            rules: rule.cfa as u8 | ((rule.rbp as u8) << 4),
        });
    }
    Ok(rows)
}

/// The compact rule of one CFI row; anything the probes cannot follow is `Unsupported`.
fn rule_of<R: gimli::Reader>(
    eh: &EhFrame<R>,
    signal: bool,
    row: &gimli::UnwindTableRow<R::Offset>,
) -> Rule {
    if signal {
        return Rule::only(CfaRule::Unsupported);
    }
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => return Rule::only(CfaRule::End),
        Some(RegisterRule::Offset(-8)) | None => {}
        Some(_) => return Rule::only(CfaRule::Unsupported),
    }
    let (cfa, cfa_off) = match row.cfa() {
        GimliCfa::RegisterAndOffset { register, offset } => {
            let kind = match *register {
                X86_64::RSP => CfaRule::Rsp,
                X86_64::RBP => CfaRule::Rbp,
                _ => return Rule::only(CfaRule::Unsupported),
            };
            match u16::try_from(*offset) {
                Ok(off) => (kind, off),
                Err(_) => return Rule::only(CfaRule::Unsupported),
            }
        }
        GimliCfa::Expression(expr) => {
            let Ok(bytes) = expr
                .get(eh)
                .and_then(|e| e.0.to_slice().map(|s| s.to_vec()))
            else {
                return Rule::only(CfaRule::Unsupported);
            };
            let mut plt10 = PLT_EXPRESSION;
            plt10[6] = 0x3a;
            if bytes == PLT_EXPRESSION {
                (CfaRule::Plt11, 0)
            } else if bytes == plt10 {
                (CfaRule::Plt10, 0)
            } else {
                return Rule::only(CfaRule::Unsupported);
            }
        }
    };
    let (rbp, rbp_off8) = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => (RbpRule::Unchanged, 0),
        Some(RegisterRule::Offset(off)) if off % 8 == 0 => match i8::try_from(off / 8) {
            Ok(words) => (RbpRule::AtCfa, words),
            Err(_) => (RbpRule::Unknown, 0),
        },
        Some(_) => (RbpRule::Unknown, 0),
    };
    Rule {
        cfa,
        cfa_off,
        rbp,
        rbp_off8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libc() -> Vec<u8> {
        std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").expect("reading this machine's libc")
    }

    #[test]
    fn libc_is_walked_by_table_with_sorted_distinct_rows() {
        let data = libc();
        let (walk, rows) = build(&data).expect("libc's table");
        assert_eq!(walk, Walk::Tables);
        assert!(rows.len() > 10_000, "{} rows", rows.len());
        assert!(rows.windows(2).all(|w| w[0].pc < w[1].pc));
        assert!(
            rows.windows(2)
                .all(|w| (w[0].cfa_off, w[0].rbp_off8, w[0].rules)
                    != (w[1].cfa_off, w[1].rbp_off8, w[1].rules))
        );
        // Every function's entry: CFA = rsp + 8, rbp unchanged.
        let entry = CfaRule::Rsp as u8;
        assert!(rows.iter().any(|r| r.rules == entry && r.cfa_off == 8));
        // The PLT's expression is recognised.
        assert!(rows.iter().any(|r| r.cfa_rule() == CfaRule::Plt11 as u8));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(build(b"not an elf").is_err());
        assert!(build(&[0x7f, b'E', b'L', b'F', 2, 1, 1]).is_err());
    }
}
