//! The raw `v8dbg_*` values of a node binary, and where a few of its builtins lie: what
//! [`super::Layout`] and [`super::AwaitLayout`] are read from.
//!
//! V8 exports these as plain `int` globals (the data llnode and other outside readers use).
//! Values are found by class and field, never by whole name (the type in a name is spelled
//! differently between versions), and every value is checked against a sane range by whoever
//! takes it.

use std::collections::HashMap;

use object::{
    Object as _, ObjectSection as _, ObjectSymbol as _, ReadRef, SectionKind, SymbolKind,
};

const PREFIX: &str = "v8dbg_";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("no v8dbg_* symbols: not a V8 binary, or its symbols were stripped")]
    NotV8,
    #[error("the binary's V8 postmortem data lacks {0}: this V8 version is not supported")]
    Missing(&'static str),
    #[error("unexpected V8 postmortem data ({0}): this V8 version is not supported")]
    Unexpected(String),
    #[error("cannot read the binary: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed ELF file: {0}")]
    Elf(#[from] object::read::Error),
}

pub(super) fn unexpected(what: &str, value: i64) -> LayoutError {
    LayoutError::Unexpected(format!("{what} = {value}"))
}

/// The raw `v8dbg_*` values, by name without the prefix, and where the builtins leaktrace
/// recognises by address lie in the file.
pub(super) struct Values {
    values: HashMap<String, i64>,
    /// By name: file offset and size (see [`CODE_SYMBOLS`]).
    code: HashMap<&'static str, (u64, u64)>,
}

/// Builtins leaktrace looks for (see [`super::awaits`]): the closures that resume an async
/// function after an `await`, found by address, and one whose presence tells a layout.
pub(super) const CODE_SYMBOLS: [&str; 3] = [
    "Builtins_AsyncFunctionAwaitResolveClosure",
    "Builtins_AsyncFunctionAwaitRejectClosure",
    "Builtins_GetContinuationPreservedEmbedderData",
];

impl Values {
    pub(super) fn read<'a, R: ReadRef<'a>>(data: R) -> Result<Values, LayoutError> {
        let file = object::File::parse(data)?;
        let little = file.is_little_endian();
        let mut values = HashMap::new();
        let mut code = HashMap::new();
        // The full symbol table first; the dynamic one covers binaries stripped of it.
        for symbol in file.symbols().chain(file.dynamic_symbols()) {
            if symbol.kind() == SymbolKind::Text {
                if let Some(&name) = CODE_SYMBOLS.iter().find(|&&n| symbol.name() == Ok(n))
                    && let Some(range) = file_range(&file, &symbol)
                {
                    code.entry(name).or_insert(range);
                }
                continue;
            }
            if symbol.kind() != SymbolKind::Data {
                continue;
            }
            let Some(name) = symbol.name().ok().and_then(|n| n.strip_prefix(PREFIX)) else {
                continue;
            };
            if values.contains_key(name) {
                continue;
            }
            if let Some(value) = symbol_value(&file, &symbol, little) {
                values.insert(name.to_owned(), value);
            }
        }
        if values.is_empty() {
            return Err(LayoutError::NotV8);
        }
        Ok(Values { values, code })
    }

    /// Where the builtin `name` (one of [`CODE_SYMBOLS`]) lies in the file: offset and size.
    pub(super) fn code(&self, name: &str) -> Option<(u64, u64)> {
        self.code.get(name).copied()
    }

    pub(super) fn get(&self, name: &str) -> Option<i64> {
        self.values.get(name).copied()
    }

    pub(super) fn require(&self, name: &'static str) -> Result<i64, LayoutError> {
        self.get(name).ok_or(LayoutError::Missing(name))
    }

    /// The value of `what`, spelled `Class::field` (alternatives `Class::new|old`): stored as
    /// `class_<Class>__<field>__<type>`, where the type's spelling varies between versions.
    pub(super) fn field(&self, what: &'static str) -> Result<i64, LayoutError> {
        let (class, fields) = what.split_once("::").ok_or(LayoutError::Missing(what))?;
        for field in fields.split('|') {
            let prefix = format!("class_{class}__{field}__");
            let mut found = self
                .values
                .iter()
                .filter(|(name, _)| name.starts_with(&prefix));
            if let Some((_, &value)) = found.next() {
                if found.any(|(_, &other)| other != value) {
                    return Err(LayoutError::Unexpected(format!("{what} has two values")));
                }
                return Ok(value);
            }
        }
        Err(LayoutError::Missing(what))
    }

    /// A tagged field: 8-byte aligned, after the map, within a small header.
    pub(super) fn tagged_field(&self, what: &'static str) -> Result<u32, LayoutError> {
        let value = self.field(what)?;
        let offset = self.offset(what, value, 8..=256)?;
        if offset % 8 != 0 {
            return Err(unexpected(what, value));
        }
        Ok(offset)
    }

    /// An untagged field at an offset within `range`.
    pub(super) fn raw_field(
        &self,
        what: &'static str,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<u32, LayoutError> {
        self.offset(what, self.field(what)?, range)
    }

    pub(super) fn offset(
        &self,
        what: &str,
        value: i64,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<u32, LayoutError> {
        u32::try_from(value)
            .ok()
            .filter(|v| range.contains(v))
            .ok_or_else(|| unexpected(what, value))
    }

    pub(super) fn small(
        &self,
        name: &'static str,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<u32, LayoutError> {
        let value = self.require(name)?;
        self.offset(name, value, range)
    }

    /// An instance type: a non-zero u16 (a zero would be an unset value from `.bss`).
    pub(super) fn instance_type(&self, name: &'static str) -> Result<u16, LayoutError> {
        let value = self.require(name)?;
        u16::try_from(value)
            .ok()
            .filter(|&t| t != 0)
            .ok_or_else(|| unexpected(name, value))
    }

    pub(super) fn frame_type(&self, name: &'static str) -> Result<u16, LayoutError> {
        let value = self.require(name)?;
        u16::try_from(value)
            .ok()
            .filter(|t| (1..=127).contains(t))
            .ok_or_else(|| unexpected(name, value))
    }

    /// A frame slot: below the frame pointer, 8-byte aligned, close.
    pub(super) fn frame_slot(&self, name: &'static str) -> Result<i32, LayoutError> {
        let value = self.require(name)?;
        i32::try_from(value)
            .ok()
            .filter(|v| (-256..0).contains(v) && v % 8 == 0)
            .ok_or_else(|| unexpected(name, value))
    }

    pub(super) fn map_instance_type(&self) -> Result<u32, LayoutError> {
        let offset = self.raw_field("Map::instance_type", 8..=64)?;
        if offset % 2 != 0 {
            return Err(unexpected("Map::instance_type", i64::from(offset)));
        }
        Ok(offset)
    }
}

/// A symbol's value: the integer stored at its address. A symbol in a section without file
/// contents (`.bss`) is zero: compilers put zero-initialized globals there, and several v8dbg
/// values are legitimately 0 (`HeapObject::map`, `SeqStringTag`). Each caller's range check
/// rejects a zero where zero makes no sense.
fn symbol_value<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
    symbol: &object::Symbol<'data, '_, R>,
    little: bool,
) -> Option<i64> {
    let size = usize::try_from(symbol.size()).ok()?;
    if !matches!(size, 1 | 2 | 4 | 8) {
        return None;
    }
    let section = file.section_by_index(symbol.section_index()?).ok()?;
    let within = symbol.address().checked_sub(section.address())?;
    if within.checked_add(size as u64)? > section.size() {
        return None;
    }
    if section.kind() == SectionKind::UninitializedData {
        return Some(0);
    }
    let bytes = section.data_range(symbol.address(), size as u64).ok()??;
    Some(sign_extend(bytes, little))
}

/// Where a function symbol's code lies in the file: its offset and size, if its section has
/// file contents.
fn file_range<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
    symbol: &object::Symbol<'data, '_, R>,
) -> Option<(u64, u64)> {
    let section = file.section_by_index(symbol.section_index()?).ok()?;
    let (offset, size) = section.file_range()?;
    let within = symbol.address().checked_sub(section.address())?;
    if symbol.size() == 0 || within.checked_add(symbol.size())? > size {
        return None;
    }
    Some((offset + within, symbol.size()))
}

fn sign_extend(bytes: &[u8], little: bool) -> i64 {
    let mut buf = [0u8; 8];
    let n = bytes.len();
    if little {
        buf[..n].copy_from_slice(bytes);
        i64::from_le_bytes(buf) << (64 - 8 * n) >> (64 - 8 * n)
    } else {
        buf[8 - n..].copy_from_slice(bytes);
        i64::from_be_bytes(buf) << (64 - 8 * n) >> (64 - 8 * n)
    }
}
