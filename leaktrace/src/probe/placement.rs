//! Where inside a function to put a uprobe so that the kernel emulates the probed instruction
//! instead of single-stepping it out of line.
//!
//! # Why
//! A uprobe replaces one instruction with `int3`. When it fires, the kernel either *emulates* the
//! original instruction in the trap handler (cheap, ~0.5 µs here) or copies it to the XOL page and
//! *single-steps* it with TF set (a second trap, ~9 µs under this VM). glibc 2.36's `free` starts
//! with `test rdi,rdi` (single-stepped); the `je` right after it is emulated. Since the probe only
//! reads `rdi`, and nothing before the `je` changes `rdi` or can branch away, probing at `free+3`
//! gives the same data for a 20th of the cost.
//!
//! # Kernel facts (read in `arch/x86/kernel/uprobes.c` as of Linux 6.18; checked on 6.18.44 here)
//! `arch_uprobe_analyze_insn()` first calls `uprobe_init_insn()`, which **rejects** the probe
//! (`-ENOEXEC`/`-ENOTSUPP`: it cannot be attached, or silently never fires when the file is mapped
//! later) if the instruction does not decode, if `is_prefix_bad()` finds an ES/CS/SS/DS segment or
//! LOCK prefix (so `lock sub`, `cs nopw`, `notrack jmp`, `ds`/`cs` branch hints), if it is a `mov`
//! to SS, or if its first opcode byte (for VEX/EVEX: the byte after the VEX prefix, e.g. `vmovdqu`
//! = `c5 fe 6f` looks like `6f`) is clear in `good_insns_64` (06 07 0e 16 17 1e 1f 27 2f 37 3f
//! 60-62 6c-6f 82 9a cc-cf d4-d6 e4-e7 ea ec-ef f1 f4 fa fb). `0f xx` opcodes always pass: bit
//! 0x0f is set, so `good_2byte_insns` is never consulted (a probe on `syscall` was accepted here,
//! fired once and the process died with SIGSEGV; this module treats `syscall`/`sysenter` as
//! rejected).
//! Then it picks the ops:
//! * `branch_setup_xol_ops()` → emulated by `branch_emulate_op()`:
//!   - an exact byte match of one of the kernel's 64-bit `x86_nops[len]`, len <= 8 (`90`, `66 90`,
//!     `0f 1f 00`, `0f 1f 40 00`, `0f 1f 44 00 00`, `66 0f 1f 44 00 00`, `0f 1f 80 00000000`,
//!     `0f 1f 84 00 00000000`; added in 6.16 by "uprobes/x86: Add support to emulate NOP
//!     instructions"); other `nopl`/`nopw` forms (e.g. 9-byte `66 0f 1f 84 ..`) are single-stepped;
//!   - any opcode `90` with any prefixes (`nop`, `pause`, and, wrongly, `41 90` =
//!     `xchg r8d,eax`, which 6.18 turns into a nop: verified here, the program computes a wrong
//!     result; 6.19's unified `insn_is_nop()` fixes this and stops emulating `pause`);
//!   - `jmp rel8/rel32` (eb/e9), `call rel32` (e8), `jcc rel8/rel32` (70-7f, 0f 80-8f), with any
//!     prefixes except a 0x66 one, which makes the probe fail with `-ENOTSUPP`; `bnd` (f2) is fine.
//! * `push_setup_xol_ops()` → `push_emulate_op()`: `push reg` (50-57) of length 1, or of length 2
//!   with exactly the REX byte 0x41 (`push r8`..`push r15`, e.g. `41 54` = `push r12`); `49 54`,
//!   `40 55`, `66 55` are single-stepped.
//! * Everything else (`endbr64`, `test`, `mov`, `ret`, indirect jumps and calls, `loop`/`jrcxz`,
//!   ...) is single-stepped out of line (`default_xol_ops`, with RIP-relative fixups).
//!
//! 6.18 also added `sys_uprobe` and the "optimized" uprobe: a probe on a 5-byte nop is rewritten
//! into a `call` to a trampoline page after the first hit. That only helps USDT-style nop5 sites.
//! `endbr64` is emulated in no version read (6.18, 6.19); it only appears in
//! `is_uprobe_at_func_entry()`, a stack-trace heuristic.
//!
//! Measured here with tracefs uprobes (20 000 calls each, event write included): emulated
//! `nop`, `nopl 0(%rax,%rax,1)`, `pause`, `push rbp`, `41 54`, `jmp`, `bnd jmp` cost 1.0-1.4 µs a
//! hit; `endbr64`, `test`, `ret`, `49 54`, 9-byte `nopw`, `nopl 8(%rax)` 14-16 µs; `lock add`,
//! `cs je`, `vmovdqu` never fired.

use iced_x86::{
    Code, Decoder, DecoderError, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory,
    OpAccess, OpKind, Register,
};

/// Only the first this-many instructions are candidates.
pub const MAX_CANDIDATES: usize = 8;
/// The probe must start within this many bytes of the entry.
pub const MAX_PROBE_OFFSET: u64 = 64;
/// Bytes scanned for branches back into the prologue; bounds the work on huge inputs.
pub const MAX_SCAN_BYTES: usize = 1 << 20;

/// Where to put a probe inside a function, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Byte offset from the function's entry.
    pub offset: u64,
    pub reason: PlacementReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlacementReason {
    /// The entry instruction itself is emulated; offset 0.
    EntryEmulated,
    /// Later emulated instruction; the instructions before it (rendered like `test rdi,rdi`)
    /// run on every call and leave the needed registers alone.
    AfterPrologue { skipped: Vec<String> },
    /// Nothing usable; offset 0, where the kernel single-steps (slow but correct): log a warning.
    NoEmulatedInstruction,
    /// The entry instruction cannot be probed at all (e.g. `lock sub`); `offset` is the first
    /// later instruction the kernel accepts (single-stepped) that is reached on every call with
    /// the needed registers intact.
    EntryRejected { skipped: Vec<String> },
    /// The entry cannot be probed and no later instruction qualifies; offset 0 will fail to attach
    /// or never fire, so the caller should report the function as untraceable.
    Unprobeable,
}

/// What a probe placed at an instruction reads, so that it may only move past instructions that
/// leave these intact.
#[derive(Clone, Copy, Debug)]
pub struct Needs {
    /// Argument registers read at the probe, as at entry (e.g. `RDI` for `free`); a write to any
    /// sub-register (`edi`, `di`, `dil`) counts as a write.
    pub arg_regs: &'static [Register],
    /// Set for uretprobes and for anything that reads the stack: the kernel takes the return
    /// address from `*rsp` at the probe, so a uretprobe must not move past `push`/`sub rsp`.
    pub stack_pointer: bool,
}

/// How the kernel treats a uprobe on one instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    /// Handled in the trap (`branch_xol_ops` / `push_xol_ops`).
    Emulated,
    /// Accepted, executed out of line under single-step.
    SingleStepped,
    /// Refused by `arch_uprobe_analyze_insn()`, or accepted but known to break the target
    /// (`syscall`, `sysenter`).
    Rejected,
}

/// Decode `code` (the function's first bytes, at virtual address `ip`) and choose the offset.
///
/// Pass the whole function (see [`function_bytes`]) where possible: besides the prologue it is
/// scanned for direct branches back into the skipped range, which would make the probe fire a
/// second time with other register values. Jumps from other functions are not seen.
pub fn choose(code: &[u8], ip: u64, needs: Needs) -> Placement {
    let Ok(mut decoder) = Decoder::try_with_ip(64, code, ip, DecoderOptions::NONE) else {
        return fallback(None, None);
    };
    // A candidate at or past the first in-function branch target would also be reached from there.
    let limit =
        first_internal_target(code, ip).map_or(MAX_PROBE_OFFSET, |t| t.min(MAX_PROBE_OFFSET));
    let mut factory = InstructionInfoFactory::new();
    let mut insn = Instruction::default();
    let mut skipped = Vec::new();
    let mut entry = None;
    let mut first_accepted = None;

    for index in 0..MAX_CANDIDATES {
        let offset = decoder.position();
        let offset64 = offset as u64;
        if (index > 0 && offset64 >= limit) || !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut insn);
        let handling = if insn.is_invalid() {
            // Truncated input says nothing about the real instruction; junk is refused.
            if decoder.last_error() == DecoderError::NoMoreBytes {
                break;
            }
            Handling::Rejected
        } else {
            let raw = code.get(offset..offset + insn.len()).unwrap_or_default();
            handling(&insn, raw)
        };
        if index == 0 {
            entry = Some(handling);
        }
        match handling {
            Handling::Emulated if index == 0 => {
                return Placement {
                    offset: 0,
                    reason: PlacementReason::EntryEmulated,
                };
            }
            Handling::Emulated => {
                return Placement {
                    offset: offset64,
                    reason: PlacementReason::AfterPrologue { skipped },
                };
            }
            Handling::SingleStepped if index > 0 && first_accepted.is_none() => {
                first_accepted = Some((offset64, skipped.clone()));
            }
            _ => {}
        }
        if insn.is_invalid()
            || insn.flow_control() != FlowControl::Next
            || writes_needed(&mut factory, &insn, needs)
        {
            break;
        }
        skipped.push(render(&insn));
    }
    fallback(entry, first_accepted)
}

fn fallback(entry: Option<Handling>, first_accepted: Option<(u64, Vec<String>)>) -> Placement {
    match (entry, first_accepted) {
        (Some(Handling::Rejected), Some((offset, skipped))) => Placement {
            offset,
            reason: PlacementReason::EntryRejected { skipped },
        },
        (Some(Handling::Rejected), None) => Placement {
            offset: 0,
            reason: PlacementReason::Unprobeable,
        },
        _ => Placement {
            offset: 0,
            reason: PlacementReason::NoEmulatedInstruction,
        },
    }
}

/// Whether Linux (>= 6.x) emulates this instruction at a uprobe instead of single-stepping it.
///
/// Follows 6.18 (see the module docs), except that `xchg r8,rax` (`41 90`) answers false because
/// its emulation is wrong. From decoded fields alone a redundant 0x66 on a branch (rejected) and a
/// REX other than 0x41 on `push r8`..`r15` (single-stepped) cannot be seen; [`handling`] takes the
/// raw bytes and is exact, and [`choose`] uses it.
pub fn is_emulated(insn: &Instruction) -> bool {
    !insn.is_invalid() && !has_bad_decoded_prefix(insn) && emulated_form(insn)
}

/// How the kernel treats a uprobe on `insn`, whose encoding is `bytes`.
pub fn handling(insn: &Instruction, bytes: &[u8]) -> Handling {
    if insn.is_invalid() || has_bad_decoded_prefix(insn) || is_refused_kind(insn) {
        return Handling::Rejected;
    }
    let raw = RawEncoding::scan(bytes);
    if raw.bad_prefix || raw.opcode1.is_some_and(rejected_opcode1) {
        return Handling::Rejected;
    }
    let relative_branch =
        insn.is_jmp_short_or_near() || insn.is_jcc_short_or_near() || insn.is_call_near();
    if relative_branch && raw.operand_size_prefix {
        return Handling::Rejected;
    }
    let exact_push = !is_push_reg(insn) || insn.len() == 1 || raw.rex == Some(0x41);
    if emulated_form(insn) && exact_push {
        Handling::Emulated
    } else {
        Handling::SingleStepped
    }
}

/// ES/CS/SS/DS or LOCK: `is_prefix_bad()`.
fn has_bad_decoded_prefix(insn: &Instruction) -> bool {
    insn.has_lock_prefix()
        || matches!(
            insn.segment_prefix(),
            Register::ES | Register::CS | Register::SS | Register::DS
        )
}

/// `mov ss` (`insn_masking_exception()`), and the ring transitions that `good_2byte_insns` means
/// to refuse but does not (see the module docs).
fn is_refused_kind(insn: &Instruction) -> bool {
    let mov_ss = matches!(
        insn.code(),
        Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16 | Code::Mov_Sreg_r64m16
    ) && insn.op0_register() == Register::SS;
    mov_ss || matches!(insn.code(), Code::Syscall | Code::Sysenter)
}

fn is_push_reg(insn: &Instruction) -> bool {
    insn.code() == Code::Push_r64
}

/// The emulated shapes, from decoded fields.
fn emulated_form(insn: &Instruction) -> bool {
    match insn.code() {
        // Opcode 0x90 with any prefixes (`case 0x90`); REX.B turns it into `xchg`, excluded.
        Code::Nopd | Code::Nopw | Code::Nopq | Code::Pause => true,
        Code::Nop_rm32 | Code::Nop_rm16 => is_kernel_nop(insn),
        Code::Push_r64 => {
            insn.len() == 1
                || (insn.len() == 2
                    && (Register::R8..=Register::R15).contains(&insn.op0_register()))
        }
        _ => insn.is_jmp_short_or_near() || insn.is_jcc_short_or_near() || insn.is_call_near(),
    }
}

/// Exact match of the kernel's 64-bit `x86_nops[len]`: the length pins the prefixes, the operand
/// pins ModRM/SIB/displacement.
fn is_kernel_nop(insn: &Instruction) -> bool {
    if insn.op0_kind() != OpKind::Memory
        || insn.memory_base() != Register::RAX
        || insn.memory_displacement64() != 0
    {
        return false;
    }
    let (index, disp) = (insn.memory_index(), insn.memory_displ_size());
    let sib_rax = index == Register::RAX && insn.memory_index_scale() == 1;
    let disp32 = disp == 4 || disp == 8;
    match (insn.code(), insn.len()) {
        (Code::Nop_rm32, 3) => index == Register::None && disp == 0,
        (Code::Nop_rm32, 4) => index == Register::None && disp == 1,
        (Code::Nop_rm32, 5) | (Code::Nop_rm16, 6) => sib_rax && disp == 1,
        (Code::Nop_rm32, 7) => index == Register::None && disp32,
        (Code::Nop_rm32, 8) => sib_rax && disp32,
        _ => false,
    }
}

/// Prefix facts the decoded instruction does not keep.
struct RawEncoding {
    bad_prefix: bool,
    operand_size_prefix: bool,
    rex: Option<u8>,
    /// The kernel's `OPCODE1()`: first opcode byte, after a VEX/EVEX prefix if any.
    opcode1: Option<u8>,
}

impl RawEncoding {
    fn scan(bytes: &[u8]) -> Self {
        let mut i = 0;
        let (mut bad_prefix, mut operand_size_prefix) = (false, false);
        while let Some(&b) = bytes.get(i) {
            match b {
                0x26 | 0x2e | 0x36 | 0x3e | 0xf0 => bad_prefix = true,
                0x66 => operand_size_prefix = true,
                0x64 | 0x65 | 0x67 | 0xf2 | 0xf3 => {}
                _ => break,
            }
            i += 1;
        }
        let rex = bytes.get(i).copied().filter(|b| (0x40..=0x4f).contains(b));
        if rex.is_some() {
            i += 1;
        }
        let opcode1 = match bytes.get(i) {
            Some(0xc5) => bytes.get(i + 2),
            Some(0xc4) => bytes.get(i + 3),
            Some(0x62) => bytes.get(i + 4),
            other => other,
        }
        .copied();
        Self {
            bad_prefix,
            operand_size_prefix,
            rex,
            opcode1,
        }
    }
}

/// Clear bits of `good_insns_64`.
fn rejected_opcode1(op: u8) -> bool {
    matches!(
        op,
        0x06 | 0x07 | 0x0e | 0x16 | 0x17 | 0x1e | 0x1f | 0x27 | 0x2f | 0x37 | 0x3f | 0x60..=0x62 | 0x6c..=0x6f
            | 0x82 | 0x9a | 0xcc..=0xcf | 0xd4..=0xd6 | 0xe4..=0xe7 | 0xea | 0xec..=0xef | 0xf1 | 0xf4 | 0xfa | 0xfb
    )
}

fn writes_needed(factory: &mut InstructionInfoFactory, insn: &Instruction, needs: Needs) -> bool {
    factory.info(insn).used_registers().iter().any(|used| {
        let written = matches!(
            used.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        );
        let full = used.register().full_register();
        written
            && (needs.arg_regs.iter().any(|r| r.full_register() == full)
                || (needs.stack_pointer && full == Register::RSP))
    })
}

/// Smallest offset in `1..` that a direct branch inside `code` jumps or calls to.
fn first_internal_target(code: &[u8], ip: u64) -> Option<u64> {
    let code = code.get(..MAX_SCAN_BYTES).unwrap_or(code);
    let mut decoder = Decoder::try_with_ip(64, code, ip, DecoderOptions::NONE).ok()?;
    let mut insn = Instruction::default();
    let mut first: Option<u64> = None;
    while decoder.can_decode() {
        let before = decoder.position();
        decoder.decode_out(&mut insn);
        if decoder.position() <= before {
            break;
        }
        let direct = (0..insn.op_count()).any(|i| {
            matches!(
                insn.op_kind(i),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            )
        });
        if insn.is_invalid() || !direct {
            continue;
        }
        let target = insn.near_branch_target().wrapping_sub(ip);
        if target > 0 && target < code.len() as u64 && first.is_none_or(|f| target < f) {
            first = Some(target);
        }
    }
    first
}

/// Short Intel-syntax text such as `test rdi,rdi`, for logs (the formatter feature is off).
pub fn render(insn: &Instruction) -> String {
    let mut text = String::new();
    if insn.has_lock_prefix() {
        text.push_str("lock ");
    }
    text.push_str(&format!("{:?}", insn.mnemonic()).to_lowercase());
    for i in 0..insn.op_count() {
        text.push(if i == 0 { ' ' } else { ',' });
        text.push_str(&render_operand(insn, i));
    }
    text
}

fn render_operand(insn: &Instruction, i: u32) -> String {
    let reg = |r: Register| format!("{r:?}").to_lowercase();
    match insn.op_kind(i) {
        OpKind::Register => reg(insn.op_register(i)),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
            format!("{:#x}", insn.near_branch_target())
        }
        kind @ (OpKind::Immediate8
        | OpKind::Immediate8_2nd
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64) => match insn.try_immediate(i) {
            Ok(v) if matches!(kind, OpKind::Immediate8to64 | OpKind::Immediate32to64) => {
                signed_hex(v as i64)
            }
            Ok(v) => format!("{v:#x}"),
            Err(_) => "?".to_owned(),
        },
        OpKind::Memory => {
            let seg = match insn.segment_prefix() {
                Register::None => String::new(),
                s => format!("{}:", reg(s)),
            };
            let disp = insn.memory_displacement64();
            if matches!(insn.memory_base(), Register::RIP | Register::EIP) {
                return format!("{seg}[{disp:#x}]");
            }
            let mut parts = Vec::new();
            if insn.memory_base() != Register::None {
                parts.push(reg(insn.memory_base()));
            }
            if insn.memory_index() != Register::None {
                let scale = insn.memory_index_scale();
                let index = reg(insn.memory_index());
                parts.push(if scale == 1 {
                    index
                } else {
                    format!("{index}*{scale}")
                });
            }
            let mut body = parts.join("+");
            if disp != 0 || body.is_empty() {
                let d = signed_hex(disp as i64);
                if body.is_empty() || d.starts_with('-') {
                    body.push_str(&d);
                } else {
                    body.push('+');
                    body.push_str(&d);
                }
            }
            format!("{seg}[{body}]")
        }
        OpKind::MemorySegSI | OpKind::MemorySegESI | OpKind::MemorySegRSI => "[rsi]".to_owned(),
        OpKind::MemoryESDI | OpKind::MemoryESEDI | OpKind::MemoryESRDI => "[rdi]".to_owned(),
        _ => "?".to_owned(),
    }
}

fn signed_hex(v: i64) -> String {
    if v < 0 {
        format!("-{:#x}", v.unsigned_abs())
    } else {
        format!("{v:#x}")
    }
}

/// A function's location and first bytes, as found by [`function_bytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionCode {
    /// Symbol value: the link-time virtual address, what [`choose`] takes as `ip`.
    pub address: u64,
    /// Where those bytes sit in the file: the offset uprobe attach APIs take (plus the placement).
    pub file_offset: u64,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("malformed ELF file: {0}")]
    Elf(#[from] object::read::Error),
    #[error("not an x86-64 ELF64 file")]
    UnsupportedElf,
    #[error("no defined function named {0:?} in .dynsym or .symtab")]
    SymbolNotFound(String),
    /// The symbol is a resolver that picks the implementation at load time; its code is not what
    /// callers run, so probe the entry (or the resolved target) instead.
    #[error("{symbol:?} is an IFUNC (resolver at {address:#x}); its target is chosen at load time")]
    Ifunc { symbol: String, address: u64 },
    #[error("address {address:#x} of {symbol:?} is not backed by file contents")]
    NotInFile { symbol: String, address: u64 },
}

/// Read a function's first bytes from an ELF file: look the symbol up in .dynsym then .symtab (a
/// defined FUNC, prefer global/weak default-version), map its address to a file offset through the
/// section/segment containing it, and return (symbol virtual address, file offset, bytes up to
/// `max` or the symbol size).
pub fn function_bytes(
    elf: &[u8],
    symbol: &str,
    max: usize,
) -> Result<FunctionCode, PlacementError> {
    use object::elf::{
        EM_X86_64, PT_LOAD, SHN_UNDEF, SHT_DYNSYM, SHT_NOBITS, SHT_SYMTAB, STT_FUNC, STT_GNU_IFUNC,
    };
    use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, Sym};

    let header = object::elf::FileHeader64::<object::Endianness>::parse(elf)?;
    let endian = header.endian()?;
    if header.e_machine(endian) != EM_X86_64 {
        return Err(PlacementError::UnsupportedElf);
    }
    let sections = header.sections(endian, elf)?;
    // A broken version table only costs the default-version preference.
    let versions = sections.versions(endian, elf).ok().flatten();

    let mut found = None;
    for sh_type in [SHT_DYNSYM, SHT_SYMTAB] {
        let table = sections.symbols(endian, elf, sh_type)?;
        let mut best: Option<(u8, &object::elf::Sym64<object::Endianness>)> = None;
        for (index, sym) in table.enumerate() {
            let kind = sym.st_type();
            if sym.st_shndx(endian) == SHN_UNDEF || (kind != STT_FUNC && kind != STT_GNU_IFUNC) {
                continue;
            }
            if table.symbol_name(endian, sym).ok() != Some(symbol.as_bytes()) {
                continue;
            }
            // Lower is better: bit 1 = local binding, bit 0 = hidden (non-default) version.
            let hidden = sh_type == SHT_DYNSYM
                && versions
                    .as_ref()
                    .is_some_and(|v| v.version_index(endian, index).is_hidden());
            let rank = (u8::from(sym.is_local()) << 1) | u8::from(hidden);
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, sym));
            }
        }
        if let Some((_, sym)) = best {
            found = Some(sym);
            break;
        }
    }
    let sym = found.ok_or_else(|| PlacementError::SymbolNotFound(symbol.to_owned()))?;
    let address = sym.st_value(endian);
    if sym.st_type() == STT_GNU_IFUNC {
        return Err(PlacementError::Ifunc {
            symbol: symbol.to_owned(),
            address,
        });
    }
    let not_in_file = || PlacementError::NotInFile {
        symbol: symbol.to_owned(),
        address,
    };

    // (file offset of `address`, file bytes available from there) via the section, else a PT_LOAD.
    let in_range = |start: u64, size: u64, offset: u64| {
        let delta = address.checked_sub(start).filter(|d| *d < size)?;
        Some((offset.checked_add(delta)?, size - delta))
    };
    let from_section = sections
        .section(object::SectionIndex(usize::from(sym.st_shndx(endian))))
        .ok()
        .filter(|s| s.sh_type(endian) != SHT_NOBITS)
        .and_then(|s| in_range(s.sh_addr(endian), s.sh_size(endian), s.sh_offset(endian)));
    let (file_offset, available) = match from_section {
        Some(found) => found,
        None => header
            .program_headers(endian, elf)?
            .iter()
            .filter(|p| p.p_type(endian) == PT_LOAD)
            .find_map(|p| in_range(p.p_vaddr(endian), p.p_filesz(endian), p.p_offset(endian)))
            .ok_or_else(not_in_file)?,
    };
    let size = match sym.st_size(endian) {
        0 => max as u64,
        n => n.min(max as u64),
    };
    let len = usize::try_from(size.min(available)).map_err(|_| not_in_file())?;
    let start = usize::try_from(file_offset).map_err(|_| not_in_file())?;
    let bytes = start
        .checked_add(len)
        .and_then(|end| elf.get(start..end))
        .ok_or_else(not_in_file)?;
    Ok(FunctionCode {
        address,
        file_offset,
        bytes: bytes.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RDI: Needs = Needs {
        arg_regs: &[Register::RDI],
        stack_pointer: false,
    };
    const RSI: Needs = Needs {
        arg_regs: &[Register::RSI],
        stack_pointer: false,
    };
    const IP: u64 = 0x1000;
    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
    const NODE: &str = "/usr/bin/node";

    fn decode_one(bytes: &[u8]) -> Instruction {
        Decoder::new(64, bytes, DecoderOptions::NONE).decode()
    }

    fn handling_of(bytes: &[u8]) -> Handling {
        handling(&decode_one(bytes), bytes)
    }

    fn after(offset: u64, skipped: &[&str]) -> Placement {
        let skipped = skipped.iter().map(|s| (*s).to_owned()).collect();
        Placement {
            offset,
            reason: PlacementReason::AfterPrologue { skipped },
        }
    }

    fn entry_fallback() -> Placement {
        Placement {
            offset: 0,
            reason: PlacementReason::NoEmulatedInstruction,
        }
    }

    #[test]
    fn glibc_free_prologue_moves_to_the_je() {
        let code = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55];
        assert_eq!(choose(&code, IP, RDI), after(3, &["test rdi,rdi"]));
    }

    #[test]
    fn emulated_entry_stays_at_zero() {
        let push_r12 = [0x41, 0x54, 0x55, 0x53];
        assert_eq!(
            choose(&push_r12, IP, RDI).reason,
            PlacementReason::EntryEmulated
        );
        let jmp = [0xe9, 0x10, 0, 0, 0];
        assert_eq!(
            choose(&jmp, IP, RDI),
            Placement {
                offset: 0,
                reason: PlacementReason::EntryEmulated
            }
        );
    }

    #[test]
    fn endbr64_is_single_stepped_so_it_is_skipped_too() {
        // endbr64; test rdi,rdi; je +0x10: neither of the first two is emulated or touches rdi.
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0x74, 0x10];
        assert_eq!(
            choose(&code, IP, RDI),
            after(7, &["endbr64", "test rdi,rdi"])
        );
    }

    #[test]
    fn reading_an_argument_is_fine_writing_it_is_not() {
        // mov rax,rdi; push rbp
        assert_eq!(
            choose(&[0x48, 0x89, 0xf8, 0x55], IP, RDI),
            after(3, &["mov rax,rdi"])
        );
        // xor edi,edi; push rbp: the 32-bit write clobbers rdi.
        assert_eq!(choose(&[0x31, 0xff, 0x55], IP, RDI), entry_fallback());
        // mov dil,1; push rbp: a byte write counts as well.
        assert_eq!(choose(&[0x40, 0xb7, 0x01, 0x55], IP, RDI), entry_fallback());
        // ...but only registers the probe reads matter.
        assert_eq!(
            choose(&[0x31, 0xff, 0x55], IP, RSI),
            after(2, &["xor edi,edi"])
        );
    }

    #[test]
    fn stack_pointer_need_stops_at_stack_changes() {
        let code = [0x48, 0x83, 0xec, 0x08, 0x55]; // sub rsp,8; push rbp
        assert_eq!(choose(&code, IP, RDI), after(4, &["sub rsp,0x8"]));
        let uret = Needs {
            arg_regs: &[],
            stack_pointer: true,
        };
        assert_eq!(choose(&code, IP, uret), entry_fallback());
    }

    #[test]
    fn control_flow_before_an_emulated_instruction_falls_back() {
        assert_eq!(choose(&[0x48, 0x8b, 0x07, 0xc3], IP, RDI), entry_fallback()); // mov rax,[rdi]; ret
        assert_eq!(choose(&[0xc3, 0x55], IP, RDI), entry_fallback()); // ret; push rbp
        assert_eq!(choose(&[0xff, 0xe0, 0x55], IP, RDI), entry_fallback()); // jmp rax; push rbp
        // test rdi,rdi; syscall (a call); push rbp
        assert_eq!(
            choose(&[0x48, 0x85, 0xff, 0x0f, 0x05, 0x55], IP, RDI),
            entry_fallback()
        );
    }

    #[test]
    fn branch_back_into_the_prologue_rules_it_out() {
        // 0: test rdi,rdi; 3: je +2 -> 7; 5: jmp -7 -> 0 is fine (entry); 7: jmp -4 -> 3 is not.
        let code = [0x48, 0x85, 0xff, 0x74, 0x02, 0xeb, 0xf9, 0xeb, 0xfa];
        assert_eq!(choose(&code, IP, RDI), entry_fallback());
        let without_back_edge = &code[..7];
        assert_eq!(
            choose(without_back_edge, IP, RDI),
            after(3, &["test rdi,rdi"])
        );
    }

    #[test]
    fn limits_are_instructions_and_bytes() {
        let mut code = vec![0x48, 0x89, 0xc0]; // mov rax,rax, single-stepped
        code = code.repeat(MAX_CANDIDATES - 1);
        code.push(0x55);
        assert_eq!(
            choose(&code, IP, RDI).offset,
            3 * (MAX_CANDIDATES as u64 - 1)
        );
        code.splice(0..0, [0x48, 0x89, 0xc0]);
        assert_eq!(choose(&code, IP, RDI), entry_fallback());
        // 10-byte movabs x7 = 70 bytes: past the byte limit.
        let mut long = [0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8].repeat(7);
        long.push(0x55);
        assert_eq!(choose(&long, IP, RDI), entry_fallback());
    }

    #[test]
    fn rejected_entry_moves_to_the_next_accepted_instruction() {
        // node::NodeArrayBufferAllocator::Free: lock sub [rdi+0x10],rdx; mov rdi,[rdi+0x18]; ...
        let code = [
            0xf0, 0x48, 0x29, 0x57, 0x10, 0x48, 0x8b, 0x7f, 0x18, 0x48, 0x8b, 0x07, 0xff, 0x60,
            0x20,
        ];
        let expected = Placement {
            offset: 5,
            reason: PlacementReason::EntryRejected {
                skipped: vec!["lock sub [rdi+0x10],rdx".to_owned()],
            },
        };
        assert_eq!(choose(&code, IP, RDI), expected);
        assert_eq!(choose(&code, IP, RSI), expected);
        // lock add [rsp],0; ret: the ret is accepted and reached on every call.
        let ret = [0xf0, 0x48, 0x83, 0x04, 0x24, 0x00, 0xc3];
        assert_eq!(choose(&ret, IP, RDI).offset, 6);
        // Two locked adds and nothing else: nothing to move to.
        let stuck = [0xf0, 0x48, 0x83, 0x04, 0x24, 0x00].repeat(2);
        assert_eq!(
            choose(&stuck, IP, RDI),
            Placement {
                offset: 0,
                reason: PlacementReason::Unprobeable
            }
        );
    }

    #[test]
    fn junk_and_truncated_input_never_panics() {
        assert_eq!(choose(&[], IP, RDI), entry_fallback());
        assert_eq!(choose(&[0x48], IP, RDI), entry_fallback());
        assert_eq!(
            choose(&[0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf], IP, RDI),
            entry_fallback()
        );
        assert_eq!(
            choose(&[0x06, 0x55], IP, RDI).reason,
            PlacementReason::Unprobeable
        );
        let mut x: u32 = 0x1234_5678;
        for len in 0..300 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let placement = choose(&junk, u64::MAX - 8, RDI);
            assert!(placement.offset < MAX_PROBE_OFFSET);
        }
    }

    #[test]
    fn kernel_618_instruction_classes() {
        use Handling::*;
        let cases: &[(&[u8], Handling)] = &[
            (&[0x90], Emulated),
            (&[0x66, 0x90], Emulated),
            (&[0xf3, 0x90], Emulated),      // pause: `case 0x90` in 6.18
            (&[0x41, 0x90], SingleStepped), // xchg r8d,eax: 6.18 would emulate it as a nop (wrong)
            (&[0x0f, 0x1f, 0x00], Emulated),
            (&[0x0f, 0x1f, 0x40, 0x00], Emulated),
            (&[0x0f, 0x1f, 0x44, 0x00, 0x00], Emulated),
            (&[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00], Emulated),
            (&[0x0f, 0x1f, 0x80, 0, 0, 0, 0], Emulated),
            (&[0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0], Emulated),
            (&[0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0], SingleStepped),
            (&[0x0f, 0x1f, 0x44, 0x20, 0x00], SingleStepped),
            (&[0x0f, 0x1f, 0x40, 0x08], SingleStepped),
            (&[0x48, 0x0f, 0x1f, 0x44, 0x00, 0x00], SingleStepped),
            (&[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0], Rejected),
            (&[0xf3, 0x0f, 0x1e, 0xfa], SingleStepped), // endbr64
            (&[0x55], Emulated),
            (&[0x41, 0x54], Emulated),
            (&[0x49, 0x54], SingleStepped),
            (&[0x40, 0x55], SingleStepped),
            (&[0x66, 0x55], SingleStepped),
            (&[0xeb, 0x00], Emulated),
            (&[0xe9, 0, 0, 0, 0], Emulated),
            (&[0xe8, 0, 0, 0, 0], Emulated),
            (&[0x74, 0x02], Emulated),
            (&[0x0f, 0x84, 0, 0, 0, 0], Emulated),
            (&[0xf2, 0xe9, 0, 0, 0, 0], Emulated), // bnd jmp
            (&[0x66, 0xe9, 0, 0, 0, 0], Rejected),
            (&[0x2e, 0x74, 0x00], Rejected),
            (&[0x3e, 0xff, 0xe0], Rejected), // notrack jmp rax
            (&[0xe3, 0x00], SingleStepped),  // jrcxz
            (&[0xff, 0xe0], SingleStepped),
            (&[0xc3], SingleStepped),
            (&[0x48, 0x85, 0xff], SingleStepped),
            (&[0xf0, 0x48, 0x83, 0x04, 0x24, 0x00], Rejected),
            (&[0xc5, 0xfe, 0x6f, 0x04, 0x24], Rejected), // vmovdqu: OPCODE1 0x6f
            (&[0xc5, 0xf8, 0x77], SingleStepped),        // vzeroupper
            (&[0xcc], Rejected),
            (&[0x0f, 0x05], Rejected), // syscall: accepted by 6.18, crashed the traced process
            (&[0x0f, 0x31], SingleStepped), // rdtsc
            (&[0x8e, 0xd0], Rejected), // mov ss,eax
        ];
        // Shapes only the raw bytes tell apart: is_emulated() says yes, handling() knows better.
        let decoded_only_yes: &[&[u8]] = &[&[0x49, 0x54], &[0x66, 0xe9, 0, 0, 0, 0]];
        for (bytes, expected) in cases {
            assert_eq!(handling_of(bytes), *expected, "{bytes:02x?}");
            let emulated = *expected == Emulated || decoded_only_yes.contains(bytes);
            assert_eq!(is_emulated(&decode_one(bytes)), emulated, "{bytes:02x?}");
        }
    }

    /// This machine differs from the one the test describes: outside CI the check is skipped and
    /// says so; in CI (`CI` set), whose machine is the described one, that is a failure.
    fn differs(what: &str) {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what}: CI must run this check; failing instead of skipping"
        );
        println!("skipping: {what}");
    }

    fn read(path: &str) -> Option<Vec<u8>> {
        match std::fs::read(path) {
            Ok(data) => Some(data),
            Err(e) => {
                differs(&format!("cannot read {path}: {e}"));
                None
            }
        }
    }

    fn place(elf: &[u8], symbol: &str, needs: Needs) -> (FunctionCode, Placement) {
        let code = function_bytes(elf, symbol, 4096).unwrap_or_else(|e| panic!("{symbol}: {e}"));
        let placement = choose(&code.bytes, code.address, needs);
        println!(
            "{symbol}: address {:#x} file offset {:#x} size {} first bytes {:02x?} -> {placement:?}",
            code.address,
            code.file_offset,
            code.bytes.len(),
            &code.bytes[..code.bytes.len().min(12)]
        );
        (code, placement)
    }

    #[test]
    fn glibc_on_this_machine() {
        let Some(libc) = read(LIBC) else { return };
        let (free, placement) = place(&libc, "free", RDI);
        if free.bytes.starts_with(&[0x48, 0x85, 0xff, 0x0f, 0x84]) {
            assert_eq!(placement, after(3, &["test rdi,rdi"]));
            assert_eq!(free.bytes.len(), 257); // whole function, so back edges were checked
            assert!(no_direct_branch_into(
                &libc,
                free.address + 1..=free.address + 3
            ));
        } else {
            differs("free does not start with glibc 2.36's `test rdi,rdi; je`");
        }
        let (malloc, placement) = place(&libc, "malloc", RDI);
        if malloc.bytes.starts_with(&[0x41, 0x54]) {
            assert_eq!(
                placement,
                Placement {
                    offset: 0,
                    reason: PlacementReason::EntryEmulated
                }
            );
        } else {
            differs("malloc does not start with glibc 2.36's `push r12`");
        }
        for symbol in ["realloc", "calloc", "posix_memalign", "aligned_alloc"] {
            place(&libc, symbol, RDI);
        }
        match function_bytes(&libc, "memcpy", 64) {
            Err(PlacementError::Ifunc { address, .. }) => {
                println!("memcpy: IFUNC resolver at {address:#x}")
            }
            other => panic!("memcpy should be an IFUNC in glibc: {other:?}"),
        }
        assert!(matches!(
            function_bytes(&libc, "no_such_function", 64),
            Err(PlacementError::SymbolNotFound(_))
        ));
    }

    /// Linear sweep of every executable section: nothing in the library jumps into `range`.
    fn no_direct_branch_into(elf: &[u8], range: std::ops::RangeInclusive<u64>) -> bool {
        let file = object::File::parse(elf).expect("parse");
        use object::{Object, ObjectSection, SectionKind};
        let mut insn = Instruction::default();
        for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
            let data = section.data().expect("section data");
            let mut decoder = Decoder::new(64, data, DecoderOptions::NONE);
            decoder.set_ip(section.address());
            while decoder.can_decode() {
                decoder.decode_out(&mut insn);
                let direct = (0..insn.op_count()).any(|i| {
                    matches!(
                        insn.op_kind(i),
                        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
                    )
                });
                if direct && range.contains(&insn.near_branch_target()) {
                    println!(
                        "{:#x} branches to {:#x}",
                        insn.ip(),
                        insn.near_branch_target()
                    );
                    return false;
                }
            }
        }
        true
    }

    #[test]
    fn node_on_this_machine() {
        let Some(node) = read(NODE) else { return };
        // NodeArrayBufferAllocator::Free(this=rdi, data=rsi, size=rdx): `lock sub [rdi+0x10],rdx`
        // at entry, which the kernel refuses (checked: an entry probe never fired, +5 did).
        let (code, placement) = place(&node, "_ZN4node24NodeArrayBufferAllocator4FreeEPvm", RSI);
        if code
            .bytes
            .starts_with(&[0xf0, 0x48, 0x29, 0x57, 0x10, 0x48, 0x8b, 0x7f, 0x18])
        {
            let skipped = vec!["lock sub [rdi+0x10],rdx".to_owned()];
            assert_eq!(
                placement,
                Placement {
                    offset: 5,
                    reason: PlacementReason::EntryRejected { skipped }
                }
            );
        } else {
            differs("NodeArrayBufferAllocator::Free does not start with `lock sub [rdi+0x10],rdx`");
        }
        // V8's default allocator, a local symbol only in .symtab: `mov rdi,rsi; jmp free@plt`.
        let v8_free = "_ZN2v812_GLOBAL__N_120ArrayBufferAllocator4FreeEPvm";
        let (code, by_data) = place(&node, v8_free, RSI);
        let (_, by_this) = place(&node, v8_free, RDI);
        if code.bytes.starts_with(&[0x48, 0x89, 0xf7, 0xe9]) {
            assert_eq!(by_data, after(3, &["mov rdi,rsi"]));
            assert_eq!(by_this, entry_fallback()); // the move writes rdi
        } else {
            differs("V8's ArrayBufferAllocator::Free does not start with `mov rdi,rsi; jmp`");
        }
    }
}
