//! What a mapped object defines and needs, read from its symbol tables and dynamic section.
//!
//! Every executable object a target maps is asked whether it defines an allocator's functions,
//! and some are large (a Node binary is 100 MB): only the ELF headers, the symbol tables and
//! their strings are read, each capped, since a container controls these files.

use std::{collections::HashSet, fs::File, io, path::Path};

use object::{
    Endianness, ReadCache,
    elf::{
        DT_NEEDED, DT_RPATH, DT_RUNPATH, DT_SONAME, FileHeader64, PT_INTERP, SHN_UNDEF,
        SHT_DYNAMIC, SHT_DYNSYM, SHT_SYMTAB, STT_FUNC, STT_GNU_IFUNC,
    },
    read::elf::{Dyn as _, FileHeader as _, ProgramHeader as _, SectionHeader as _, Sym as _},
};

/// What one object says about itself.
#[derive(Clone, Debug, Default)]
pub struct ObjectInfo {
    /// The names asked about that it defines as functions.
    pub defined: HashSet<String>,
    /// Its `DT_NEEDED` libraries, in order: the dynamic linker's search order follows them.
    pub needed: Vec<String>,
    /// Its `DT_SONAME`: the name other objects need it by.
    pub soname: Option<String>,
    /// Its `DT_RPATH` and `DT_RUNPATH` directories (`:`-separated lists, split), unexpanded:
    /// where the dynamic linker looks for what it needs.
    pub rpath: Vec<String>,
    pub runpath: Vec<String>,
    /// Its `PT_INTERP`: the dynamic linker an executable asks the kernel for.
    pub interp: Option<String>,
}

/// Largest symbol or string table read (a hostile file may claim any size).
const MAX_TABLE_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed ELF file: {0}")]
    Elf(#[from] object::read::Error),
    #[error("a symbol table of {0} bytes is beyond the {MAX_TABLE_BYTES}-byte cap")]
    TooLarge(u64),
}

/// Reads `path`: the names among `wanted` that it defines as functions in its dynamic symbol
/// table (with `symtab`, also in its full one: an executable's own static allocator is rarely
/// exported), and its dynamic section's names.
pub fn read(path: &Path, symtab: bool, wanted: &[String]) -> Result<ObjectInfo, SymbolsError> {
    let cache = ReadCache::new(File::open(path)?);
    let header = FileHeader64::<Endianness>::parse(&cache)?;
    let endian = header.endian()?;
    let sections = header.sections(endian, &cache)?;
    let mut info = ObjectInfo::default();
    if let Some((index, dynamic)) = sections
        .iter()
        .enumerate()
        .find(|(_, s)| s.sh_type(endian) == SHT_DYNAMIC)
    {
        let strings = sections.section(object::SectionIndex(dynamic.sh_link(endian) as usize))?;
        for size in [dynamic.sh_size(endian), strings.sh_size(endian)] {
            if size > MAX_TABLE_BYTES {
                return Err(SymbolsError::TooLarge(size));
            }
        }
        let strings = strings.data(endian, &cache)?;
        if let Some((entries, _)) = sections
            .section(object::SectionIndex(index))?
            .dynamic(endian, &cache)?
        {
            for entry in entries {
                let tag = entry.d_tag(endian) as u32;
                if ![DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH].contains(&tag) {
                    continue;
                }
                let Some(name) = usize::try_from(entry.d_val(endian))
                    .ok()
                    .and_then(|at| strings.get(at..))
                    .and_then(|rest| rest.split(|&b| b == 0).next())
                else {
                    continue;
                };
                let name = String::from_utf8_lossy(name).into_owned();
                let dirs = || name.split(':').filter(|d| !d.is_empty()).map(str::to_owned);
                match tag {
                    DT_NEEDED => info.needed.push(name),
                    DT_RPATH => info.rpath.extend(dirs()),
                    DT_RUNPATH => info.runpath.extend(dirs()),
                    _ => info.soname = Some(name),
                }
            }
        }
    }
    info.interp = interpreter(header, endian, &cache);
    let found = &mut info.defined;
    let kinds: &[u32] = if symtab {
        &[SHT_DYNSYM, SHT_SYMTAB]
    } else {
        &[SHT_DYNSYM]
    };
    for &kind in kinds {
        let Some((index, table)) = sections
            .iter()
            .enumerate()
            .find(|(_, s)| s.sh_type(endian) == kind)
        else {
            continue;
        };
        let strings = sections.section(object::SectionIndex(table.sh_link(endian) as usize))?;
        for size in [table.sh_size(endian), strings.sh_size(endian)] {
            if size > MAX_TABLE_BYTES {
                return Err(SymbolsError::TooLarge(size));
            }
        }
        let symbols =
            sections.symbol_table_by_index(endian, &cache, object::SectionIndex(index))?;
        // The strings once, as one block: a read per name would be a syscall per symbol.
        let strings = strings.data(endian, &cache)?;
        for sym in symbols.symbols() {
            let kind = sym.st_type();
            if sym.st_shndx(endian) == SHN_UNDEF || (kind != STT_FUNC && kind != STT_GNU_IFUNC) {
                continue;
            }
            let Some(name) = strings
                .get(sym.st_name(endian) as usize..)
                .and_then(|rest| rest.split(|&b| b == 0).next())
            else {
                continue;
            };
            if let Some(w) = wanted.iter().find(|w| w.as_bytes() == name) {
                found.insert(w.clone());
            }
        }
    }
    Ok(info)
}

/// The `PT_INTERP` path of an executable (at most a page: a path, not a file).
fn interpreter(
    header: &FileHeader64<Endianness>,
    endian: Endianness,
    cache: &ReadCache<File>,
) -> Option<String> {
    let interp = header
        .program_headers(endian, cache)
        .ok()?
        .iter()
        .find(|p| p.p_type(endian) == PT_INTERP)?;
    if interp.p_filesz(endian) > 4096 {
        return None;
    }
    let bytes = interp.data(endian, cache).ok()?;
    let path = bytes.split(|&b| b == 0).next()?;
    (!path.is_empty()).then(|| String::from_utf8_lossy(path).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_c_librarys_allocator() {
        let wanted: Vec<String> = ["malloc", "free", "no_such_function"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let libc = std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .find_map(|l| {
                l.split_whitespace()
                    .nth(5)
                    .filter(|p| p.contains("libc.so"))
                    .map(str::to_owned)
            })
            .expect("the test binary maps a libc");
        let info = read(Path::new(&libc), false, &wanted).unwrap();
        assert_eq!(info.soname.as_deref(), Some("libc.so.6"));
        let me = read(Path::new("/proc/self/exe"), true, &wanted).unwrap();
        assert!(
            me.needed.iter().any(|n| n == "libc.so.6"),
            "{:?}",
            me.needed
        );
        let found = &info.defined;
        assert!(
            found.contains("malloc") && found.contains("free"),
            "{found:?}"
        );
        assert!(!found.contains("no_such_function"));
    }

    /// README: "symbol tables over 256 MiB … are refused": a real object whose `.dynsym` header
    /// claims 256 MiB and one byte is refused before anything is read from it.
    #[test]
    fn a_symbol_table_over_the_cap_is_refused() {
        use object::{Object as _, ObjectSection as _};
        let original = std::fs::read("/bin/true").expect("/bin/true");
        let elf = object::File::parse(&*original).expect("/bin/true parses");
        let dynsym = elf.section_by_name(".dynsym").expect(".dynsym").index().0;
        let word = |at: usize, n: usize| {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&original[at..at + n]);
            u64::from_le_bytes(b) as usize
        };
        // Elf64_Ehdr: e_shoff at 0x28, e_shentsize at 0x3a; Elf64_Shdr: sh_size at 0x20.
        let header = word(0x28, 8) + dynsym * word(0x3a, 2);
        let mut patched = original.clone();
        let claimed = MAX_TABLE_BYTES + 1;
        patched[header + 0x20..header + 0x28].copy_from_slice(&claimed.to_le_bytes());
        let dir = std::env::temp_dir().join(format!("leaktrace-symcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (whole, over) = (dir.join("true"), dir.join("true-over-cap"));
        std::fs::write(&whole, &original).unwrap();
        std::fs::write(&over, &patched).unwrap();
        assert!(read(&whole, false, &[]).is_ok());
        let err = read(&over, false, &[]).unwrap_err();
        assert!(
            matches!(err, SymbolsError::TooLarge(n) if n == claimed),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("leaktrace-symbols-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk");
        std::fs::write(&junk, b"\x7fELF\x02\x01\x01junk that is not an ELF file").unwrap();
        assert!(read(&junk, true, &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
