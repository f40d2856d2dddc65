//! glibc malloc's own account, read from outside: what `mallinfo2()` would say inside the
//! target, without running anything in it.
//!
//! The arenas are found where `mallinfo2` finds them: its first RIP-relative `lea` loads the
//! main arena's address, and the function it then calls (`int_mallinfo`) loads the counters of
//! `mmap`ed blocks from `mp_`. The code is read from the library file, not from the target (a
//! uprobe's breakpoint may sit in its text). The arenas are then walked as `int_mallinfo` walks
//! them: the top chunk, the fastbins (their links mangled by safe-linking) and the bins. The
//! target allocates meanwhile, so every read is checked (chunk sizes, alignment, every pointer
//! inside the arena's heaps, bounded loops) and an arena that changed or locked while read is
//! read again, a few times at most.

use std::{collections::HashSet, io};

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};
use object::{Object as _, ObjectSymbol as _};
use serde::{Deserialize, Serialize};

use super::{
    ReadMemory,
    elf::{bytes_at, runtime_address},
    read_word,
};
use crate::process::maps::Mapping;

/// glibc's layout of `struct malloc_state` on x86-64 (2.27 and later: `have_fastchunks` is an
/// int), as `int_mallinfo` in 2.36 addresses it.
mod layout {
    pub const MUTEX: usize = 0x0;
    pub const FASTBINS: usize = 0x10;
    pub const NFASTBINS: usize = 10;
    pub const TOP: usize = 0x60;
    /// `bin_at(av, 1)`: the bins' heads are pseudo-chunks whose `fd`/`bk` are `bins[2i-2..]`.
    pub const FIRST_BIN: usize = 0x60;
    pub const NBINS: usize = 128;
    pub const NEXT: usize = 0x870;
    pub const SYSTEM_MEM: usize = 0x888;
    pub const SIZE: usize = 0x898;
}

/// `HEAP_MAX_SIZE` on 64-bit: a non-main arena's heaps are this size and aligned to it.
pub const HEAP_MAX: u64 = 64 << 20;
/// `MINSIZE` and `MALLOC_ALIGNMENT` on x86-64.
const MIN_CHUNK: u64 = 0x20;
const ALIGN: u64 = 0x10;
/// Largest chunk a fastbin may hold (`MAX_FAST_SIZE` = 160 bytes of request, 0xb0 of chunk).
const MAX_FAST_CHUNK: u64 = 0xb0;
/// Most arenas followed (glibc's default cap is 8 per core).
const MAX_ARENAS: usize = 1024;
/// Most heaps chained to one arena.
const MAX_HEAPS: usize = 4096;
/// Most free chunks counted per arena read: past it the arena is reported unreadable rather
/// than cost the tracer seconds.
pub const MAX_FREE_CHUNKS: usize = 200_000;
/// Reads of one arena before it is called unreadable.
pub const ATTEMPTS: usize = 3;

/// Why glibc's account cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum GlibcError {
    #[error("the process maps no glibc (no object defines mallinfo2)")]
    NoLibc,
    #[error("cannot read {path}: {source}")]
    File { path: String, source: io::Error },
    #[error("malformed ELF file {path}: {source}")]
    Elf {
        path: String,
        source: object::read::Error,
    },
    #[error("mallinfo2's code does not load the main arena as glibc 2.36 does: {0}")]
    Code(&'static str),
    #[error("the main arena at {0:#x} does not look like one (glibc's layout changed?)")]
    Layout(u64),
    #[error("cannot read the target's memory at {addr:#x}: {source}")]
    Memory { addr: u64, source: io::Error },
}

/// Where glibc keeps its state in one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locations {
    pub main_arena: u64,
    /// `mp_.n_mmaps` and `mp_.mmapped_mem`, when `int_mallinfo`'s code said where.
    pub mmaps: Option<(u64, u64)>,
    /// Its threads and their arenas, or why they cannot be read.
    pub threads: Result<super::threads::Layout, String>,
}

/// Addresses in the library file (before the load bias), from `mallinfo2`'s code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeFacts {
    pub main_arena: u64,
    pub mmaps: Option<(u64, u64)>,
}

/// Finds glibc's state in a process: the libc it maps (a file of `mappings` that defines
/// `mallinfo2`), read through `/proc/PID/map_files`.
pub fn locate(pid: u32, mappings: &[Mapping]) -> Result<Locations, GlibcError> {
    let libc = mappings
        .iter()
        .find(|m| crate::process::allocator::is_libc_path(m.path.as_deref()))
        .ok_or(GlibcError::NoLibc)?;
    let file = format!("/proc/{pid}/map_files/{:x}-{:x}", libc.start, libc.end);
    let data = std::fs::read(&file).map_err(|source| GlibcError::File {
        path: file.clone(),
        source,
    })?;
    let elf = object::File::parse(&*data).map_err(|source| GlibcError::Elf {
        path: file.clone(),
        source,
    })?;
    let vaddr = mallinfo2(&elf).ok_or(GlibcError::NoLibc)?;
    let facts = code_facts(&elf, vaddr)?;
    let runtime = runtime_address(mappings, libc, &elf, vaddr)
        .ok_or(GlibcError::Code("mallinfo2's code is not mapped"))?;
    let bias = runtime.wrapping_sub(vaddr);
    Ok(Locations {
        main_arena: facts.main_arena.wrapping_add(bias),
        mmaps: facts
            .mmaps
            .map(|(n, bytes)| (n.wrapping_add(bias), bytes.wrapping_add(bias))),
        threads: super::threads::locate(pid, mappings, &elf, bias),
    })
}

/// `mallinfo2`'s address.
fn mallinfo2(elf: &object::File<'_>) -> Option<u64> {
    elf.dynamic_symbols()
        .find(|s| s.name() == Ok("mallinfo2") && s.is_definition())
        .map(|s| s.address())
}

/// Decodes `mallinfo2` and the function it calls in the arena loop.
pub fn code_facts(elf: &object::File<'_>, mallinfo2: u64) -> Result<CodeFacts, GlibcError> {
    let code = bytes_at(elf, mallinfo2, 512).ok_or(GlibcError::Code("mallinfo2 is not mapped"))?;
    let instructions = decode(code, mallinfo2, 128);
    let lea = instructions
        .iter()
        .position(|i| i.mnemonic() == Mnemonic::Lea && i.is_ip_rel_memory_operand())
        .ok_or(GlibcError::Code("no RIP-relative lea"))?;
    let main_arena = instructions[lea].ip_rel_memory_address();
    let call = instructions[lea..]
        .iter()
        .find(|i| i.mnemonic() == Mnemonic::Call && i.op0_kind() == OpKind::NearBranch64)
        .map(Instruction::near_branch_target);
    let mmaps = call
        .and_then(|target| bytes_at(elf, target, 1024).map(|code| decode(code, target, 400)))
        .and_then(|body| mmaps_fields(&body));
    Ok(CodeFacts { main_arena, mmaps })
}

fn decode(code: &[u8], ip: u64, max: usize) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() && out.len() < max {
        let i = decoder.decode();
        if i.is_invalid() {
            break;
        }
        out.push(i);
    }
    out
}

/// In `int_mallinfo`: the main arena's branch loads `mp_.n_mmaps` (the first RIP-relative
/// 4-byte load) and then `mp_.mmapped_mem` (the next RIP-relative 8-byte load), a few bytes
/// apart in `struct malloc_par`.
fn mmaps_fields(body: &[Instruction]) -> Option<(u64, u64)> {
    let loads = |size: usize| {
        move |i: &&Instruction| {
            i.mnemonic() != Mnemonic::Lea
                && i.is_ip_rel_memory_operand()
                && i.memory_size().size() == size
        }
    };
    let at = body.iter().position(|i| loads(4)(&i))?;
    let n_mmaps = body[at].ip_rel_memory_address();
    let bytes = body[at + 1..]
        .iter()
        .find(loads(8))?
        .ip_rel_memory_address();
    (bytes > n_mmaps && bytes - n_mmaps <= 0x40).then_some((n_mmaps, bytes))
}

/// One arena, as `int_mallinfo` counts it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArenaAccount {
    /// Its address, hex.
    pub address: String,
    /// Bytes the arena obtained from the system (`system_mem`).
    pub system_bytes: u64,
    /// Its top chunk: free, at the end of its newest heap.
    pub top_bytes: u64,
    /// Free chunks in its fastbins.
    pub fastbin_bytes: u64,
    /// Free chunks in its bins (unsorted, small and large).
    pub bin_bytes: u64,
    pub free_chunks: u64,
    /// Its heaps (non-main arenas; the main arena's is `[heap]`).
    pub heaps: usize,
    /// The main arena: the main thread's.
    pub main: bool,
}

impl ArenaAccount {
    /// Its address, as a number.
    pub fn address_value(&self) -> Option<u64> {
        u64::from_str_radix(self.address.trim_start_matches("0x"), 16).ok()
    }

    /// Free but kept: `mallinfo2`'s `fordblks` for this arena.
    pub fn free_bytes(&self) -> u64 {
        self.top_bytes + self.fastbin_bytes + self.bin_bytes
    }
}

/// The whole account: `mallinfo2` read from outside.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub arenas: Vec<ArenaAccount>,
    /// Arenas that changed under every one of [`ATTEMPTS`] reads, or failed a check: their
    /// address and why.
    pub unreadable: Vec<(u64, String)>,
    /// `mp_.n_mmaps` and `mp_.mmapped_mem`: blocks served by their own `mmap`.
    pub mmapped: Option<(u64, u64)>,
    /// Address ranges of the non-main arenas' heaps.
    pub heap_ranges: Vec<(u64, u64)>,
}

impl Account {
    /// `mallinfo2().arena`.
    pub fn system_bytes(&self) -> u64 {
        self.arenas.iter().map(|a| a.system_bytes).sum()
    }
    /// `mallinfo2().fordblks`.
    pub fn free_bytes(&self) -> u64 {
        self.arenas.iter().map(ArenaAccount::free_bytes).sum()
    }
    /// `mallinfo2().uordblks`.
    pub fn in_use_bytes(&self) -> u64 {
        self.system_bytes().saturating_sub(self.free_bytes())
    }
    /// The main arena, when it read back.
    pub fn main_arena(&self) -> Option<&ArenaAccount> {
        self.arenas.iter().find(|a| a.main)
    }
}

fn word(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads every arena chained from the main one. `writable` is the target's anonymous writable
/// mappings: every chunk must lie inside one (and, for a non-main arena, inside its heaps).
pub fn read_account(
    mem: &impl ReadMemory,
    at: &Locations,
    writable: &[(u64, u64)],
) -> Result<Account, GlibcError> {
    let mut account = Account::default();
    let mut seen = HashSet::new();
    let mut arena = at.main_arena;
    check_main_arena(mem, at.main_arena, writable)?;
    for _ in 0..MAX_ARENAS {
        if !seen.insert(arena) {
            break;
        }
        let is_main = arena == at.main_arena;
        let heaps = if is_main {
            Ok(Vec::new())
        } else {
            heaps_of(mem, arena)
        };
        let result = heaps.and_then(|heaps| {
            let regions: Vec<(u64, u64)> = if is_main {
                // The main arena's chunks are in `[heap]` (or, when brk failed, in its own
                // mappings): any writable anonymous mapping that is no other arena's heap.
                writable.to_vec()
            } else {
                heaps.iter().map(|&(h, size)| (h, h + size)).collect()
            };
            let mut last = String::new();
            for _ in 0..ATTEMPTS {
                match read_arena(mem, arena, &regions) {
                    Ok(mut a) => {
                        a.heaps = heaps.len();
                        a.main = is_main;
                        return Ok((a, heaps));
                    }
                    Err(why) => last = why,
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(last)
        });
        match result {
            Ok((a, heaps)) => {
                account
                    .heap_ranges
                    .extend(heaps.iter().map(|&(h, _)| (h, h + HEAP_MAX)));
                account.arenas.push(a);
            }
            Err(why) => account.unreadable.push((arena, why)),
        }
        let next = read_word(mem, arena + layout::NEXT as u64).map_err(|_| GlibcError::Memory {
            addr: arena + layout::NEXT as u64,
            source: io::Error::other("arena list"),
        })?;
        if next == at.main_arena || !plausible_arena(mem, next) {
            break;
        }
        arena = next;
    }
    account.mmapped = at.mmaps.and_then(|(n, bytes)| {
        let mut four = [0u8; 4];
        mem.read(n, &mut four).ok()?;
        let n = i32::from_le_bytes(four);
        let bytes = read_word(mem, bytes).ok()?;
        (n >= 0 && bytes.is_multiple_of(4096)).then_some((n as u64, bytes))
    });
    Ok(account)
}

/// A non-main arena sits right after its first heap's `heap_info` (0x20 or 0x30 bytes), and
/// that `heap_info` names it.
fn plausible_arena(mem: &impl ReadMemory, arena: u64) -> bool {
    let heap = arena & !(HEAP_MAX - 1);
    matches!(arena - heap, 0x20 | 0x30) && read_word(mem, heap) == Ok(arena)
}

/// The main arena's bins are circular lists whose heads are inside the arena: an empty bin
/// points at itself, a full one into the heap. A layout that does not fit fails here.
fn check_main_arena(
    mem: &impl ReadMemory,
    arena: u64,
    writable: &[(u64, u64)],
) -> Result<(), GlibcError> {
    let mut buf = vec![0u8; layout::SIZE];
    mem.read(arena, &mut buf)
        .map_err(|source| GlibcError::Memory {
            addr: arena,
            source,
        })?;
    let inside = |p: u64| writable.iter().any(|&(s, e)| s <= p && p < e);
    let fits = (1..layout::NBINS).all(|i| {
        let head = arena + (layout::FIRST_BIN + (i - 1) * 16) as u64;
        let at = layout::FIRST_BIN + (i - 1) * 16;
        let (fd, bk) = (word(&buf, at + 0x10), word(&buf, at + 0x18));
        (fd == head || inside(fd)) && (bk == head || inside(bk))
    });
    let top = word(&buf, layout::TOP);
    // Before the first malloc, top is the unsorted bin's head.
    if fits && (inside(top) || top == arena + layout::FIRST_BIN as u64) {
        Ok(())
    } else {
        Err(GlibcError::Layout(arena))
    }
}

/// The heaps of a non-main arena, newest first, from its top chunk's heap down the `prev`
/// links: (start, size in use).
fn heaps_of(mem: &impl ReadMemory, arena: u64) -> Result<Vec<(u64, u64)>, String> {
    let top = read_word(mem, arena + layout::TOP as u64)?;
    let mut heap = top & !(HEAP_MAX - 1);
    let mut heaps = Vec::new();
    while heap != 0 && heaps.len() < MAX_HEAPS {
        let mut info = [0u8; 24];
        mem.read(heap, &mut info)
            .map_err(|e| format!("cannot read heap_info at {heap:#x}: {e}"))?;
        let (ar_ptr, prev, size) = (word(&info, 0), word(&info, 8), word(&info, 16));
        if ar_ptr != arena || size > HEAP_MAX || prev & (HEAP_MAX - 1) != 0 {
            return Err(format!(
                "heap {heap:#x} does not belong to the arena (changed while read?)"
            ));
        }
        heaps.push((heap, size));
        heap = prev;
    }
    Ok(heaps)
}

/// One arena, walked once. `Err` says why the walk was not trusted.
pub fn read_arena(
    mem: &impl ReadMemory,
    arena: u64,
    regions: &[(u64, u64)],
) -> Result<ArenaAccount, String> {
    let mut buf = vec![0u8; layout::SIZE];
    mem.read(arena, &mut buf)
        .map_err(|e| format!("cannot read the arena: {e}"))?;
    if buf[layout::MUTEX..layout::MUTEX + 4] != [0; 4] {
        return Err("the arena was locked (the process was allocating)".into());
    }
    let chunk_ok = |p: u64, size: u64| {
        p.is_multiple_of(ALIGN)
            && size >= MIN_CHUNK
            && size.is_multiple_of(ALIGN)
            && regions
                .iter()
                .any(|&(s, e)| s <= p && p.checked_add(size).is_some_and(|end| end <= e))
    };
    // A link is checked before it is followed: a pointer the process was rewriting is not read.
    let chunk_size = |p: u64| -> Result<u64, String> {
        if !chunk_ok(p, MIN_CHUNK) {
            return Err(format!("a link to {p:#x} leads out of the arena's heaps"));
        }
        Ok(read_word(mem, p + 8)? & !7)
    };
    let mut out = ArenaAccount {
        address: format!("{arena:#x}"),
        system_bytes: word(&buf, layout::SYSTEM_MEM),
        ..ArenaAccount::default()
    };
    let top = word(&buf, layout::TOP);
    if top != arena + layout::FIRST_BIN as u64 {
        let size = chunk_size(top)?;
        if !chunk_ok(top, size) {
            return Err(format!(
                "top chunk {top:#x} of {size} bytes is out of place"
            ));
        }
        out.top_bytes = size;
    }
    let mut budget = MAX_FREE_CHUNKS;
    let mut count = |out: &mut ArenaAccount| -> Result<(), String> {
        budget = budget
            .checked_sub(1)
            .ok_or(format!("more than {MAX_FREE_CHUNKS} free chunks"))?;
        out.free_chunks += 1;
        Ok(())
    };
    for i in 0..layout::NFASTBINS {
        let mut p = word(&buf, layout::FASTBINS + 8 * i);
        while p != 0 {
            let size = chunk_size(p)?;
            if !chunk_ok(p, size) || size > MAX_FAST_CHUNK {
                return Err(format!("fastbin chunk {p:#x} of {size} bytes is not one"));
            }
            count(&mut out)?;
            out.fastbin_bytes += size;
            // Safe-linking: the link is stored xor-ed with its own address shifted by 12.
            p = read_word(mem, p + 0x10)? ^ ((p + 0x10) >> 12);
        }
    }
    for i in 1..layout::NBINS {
        let head = arena + (layout::FIRST_BIN + (i - 1) * 16) as u64;
        let mut p = word(&buf, layout::FIRST_BIN + (i - 1) * 16 + 0x18);
        while p != head {
            let size = chunk_size(p)?;
            if !chunk_ok(p, size) {
                return Err(format!("bin {i} chunk {p:#x} of {size} bytes is not one"));
            }
            count(&mut out)?;
            out.bin_bytes += size;
            p = read_word(mem, p + 0x18)?;
        }
    }
    // What was counted must still be there: the same system bytes, top and lock.
    let mut after = [0u8; 8];
    mem.read(arena + layout::SYSTEM_MEM as u64, &mut after)
        .map_err(|e| e.to_string())?;
    if u64::from_le_bytes(after) != out.system_bytes
        || read_word(mem, arena + layout::TOP as u64)? != top
        || read_word(mem, arena)? & 0xffff_ffff != 0
    {
        return Err("the arena changed while read".into());
    }
    Ok(out)
}

/// Whether a path is glibc's C library by name (glibc is the only one [`locate`] reads).
pub fn is_glibc(allocator_name: &str) -> bool {
    allocator_name == "glibc"
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A synthetic address space: regions of bytes at their addresses.
    #[derive(Default)]
    struct Image(BTreeMap<u64, Vec<u8>>);

    impl Image {
        fn put(&mut self, addr: u64, value: u64) {
            let (&base, bytes) = self.0.range_mut(..=addr).next_back().expect("a region");
            let at = (addr - base) as usize;
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
    }

    impl ReadMemory for Image {
        fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
            let (&base, bytes) = self
                .0
                .range(..=addr)
                .next_back()
                .ok_or_else(|| io::Error::other("unmapped"))?;
            let at = (addr - base) as usize;
            let src = bytes
                .get(at..at + buf.len())
                .ok_or_else(|| io::Error::other("unmapped"))?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    const ARENA: u64 = 0x7f00_0000_0000 + 0x30;
    const HEAP: u64 = 0x7f00_0000_0000;
    const HEAP_SIZE: u64 = 0x10_0000;

    /// A non-main arena in its first heap: one unsorted chunk, two fastbin chunks (safe-linked),
    /// a top chunk, and every other bin empty.
    fn arena() -> Image {
        let mut image = Image::default();
        image.0.insert(HEAP, vec![0; HEAP_SIZE as usize]);
        // heap_info: ar_ptr, prev, size.
        image.put(HEAP, ARENA);
        image.put(HEAP + 16, HEAP_SIZE);
        for i in 1..layout::NBINS {
            let head = ARENA + (layout::FIRST_BIN + (i - 1) * 16) as u64;
            image.put(head + 0x10, head);
            image.put(head + 0x18, head);
        }
        let (unsorted, fast1, fast2, top) =
            (HEAP + 0x1000, HEAP + 0x2000, HEAP + 0x3000, HEAP + 0x8000);
        // The unsorted bin (bin 1) holds one chunk of 0x400 bytes.
        let bin1 = ARENA + layout::FIRST_BIN as u64;
        image.put(bin1 + 0x10, unsorted);
        image.put(bin1 + 0x18, unsorted);
        image.put(unsorted + 8, 0x400 | 1);
        image.put(unsorted + 0x10, bin1);
        image.put(unsorted + 0x18, bin1);
        // Fastbin 1 (0x30-byte chunks): fast1 -> fast2 -> end, links mangled.
        image.put(ARENA + layout::FASTBINS as u64 + 8, fast1);
        image.put(fast1 + 8, 0x30 | 1);
        image.put(fast1 + 0x10, fast2 ^ ((fast1 + 0x10) >> 12));
        image.put(fast2 + 8, 0x30 | 1);
        image.put(fast2 + 0x10, (fast2 + 0x10) >> 12);
        image.put(ARENA + layout::TOP as u64, top);
        image.put(top + 8, (HEAP_SIZE - 0x8000) | 1);
        image.put(ARENA + layout::SYSTEM_MEM as u64, HEAP_SIZE);
        image.put(ARENA + layout::NEXT as u64, ARENA);
        image
    }

    #[test]
    fn walks_top_fastbins_and_bins_as_mallinfo2_counts_them() {
        let image = arena();
        let heaps = heaps_of(&image, ARENA).expect("heap chain");
        assert_eq!(heaps, vec![(HEAP, HEAP_SIZE)]);
        let a = read_arena(&image, ARENA, &[(HEAP, HEAP + HEAP_SIZE)]).expect("a clean arena");
        assert_eq!(a.system_bytes, HEAP_SIZE);
        assert_eq!(a.top_bytes, HEAP_SIZE - 0x8000);
        assert_eq!(a.fastbin_bytes, 0x60);
        assert_eq!(a.bin_bytes, 0x400);
        assert_eq!(a.free_chunks, 3);
        assert_eq!(a.free_bytes(), HEAP_SIZE - 0x8000 + 0x60 + 0x400);
        assert!(plausible_arena(&image, ARENA));
    }

    #[test]
    fn refuses_chunks_that_are_not_chunks() {
        let regions = [(HEAP, HEAP + HEAP_SIZE)];
        // A size that runs past the heap.
        let mut image = arena();
        image.put(HEAP + 0x1000 + 8, HEAP_SIZE | 1);
        assert!(read_arena(&image, ARENA, &regions).is_err());
        // A fastbin chunk too large for a fastbin.
        let mut image = arena();
        image.put(HEAP + 0x2000 + 8, 0x400 | 1);
        assert!(read_arena(&image, ARENA, &regions).is_err());
        // A link out of the heap (an unmangled pointer read as mangled lands anywhere).
        let mut image = arena();
        image.put(HEAP + 0x2000 + 0x10, 0x1234_5670);
        assert!(read_arena(&image, ARENA, &regions).is_err());
        // A misaligned chunk.
        let mut image = arena();
        image.put(ARENA + layout::TOP as u64, HEAP + 0x8008);
        assert!(read_arena(&image, ARENA, &regions).is_err());
        // A locked arena is being changed: read again later.
        let mut image = arena();
        image.put(ARENA, 1);
        assert!(read_arena(&image, ARENA, &regions).is_err());
    }

    #[test]
    fn a_cycle_in_a_bin_ends_at_the_chunk_cap() {
        let mut image = arena();
        // The unsorted chunk's bk points back at itself: glibc would loop forever.
        image.put(HEAP + 0x1000 + 0x18, HEAP + 0x1000);
        let err = read_arena(&image, ARENA, &[(HEAP, HEAP + HEAP_SIZE)]).unwrap_err();
        assert!(err.contains("free chunks"), "{err}");
    }

    #[test]
    fn a_heap_of_another_arena_is_refused() {
        let mut image = arena();
        image.put(HEAP, ARENA + 0x1000);
        assert!(heaps_of(&image, ARENA).is_err());
        assert!(!plausible_arena(&image, ARENA));
    }

    /// On this machine's glibc (when present): mallinfo2 decodes to the main arena in the
    /// library's writable data and to `mp_`'s mmap counters a few bytes apart.
    #[test]
    fn finds_the_main_arena_in_this_machines_libc() {
        use object::ObjectSegment as _;
        let path = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let Ok(data) = std::fs::read(path) else {
            return;
        };
        let elf = object::File::parse(&*data).expect("libc parses");
        let vaddr = mallinfo2(&elf).expect("glibc 2.33+ defines mallinfo2");
        let facts = code_facts(&elf, vaddr).expect("mallinfo2 decodes");
        let writable = elf
            .segments()
            .filter(|s| s.flags() == object::SegmentFlags::Elf { p_flags: 6 })
            .any(|s| s.address() <= facts.main_arena && facts.main_arena < s.address() + s.size());
        assert!(
            writable,
            "main_arena {:#x} is not in .data",
            facts.main_arena
        );
        let (n, bytes) = facts.mmaps.expect("mp_'s counters found");
        assert!(bytes > n && bytes - n <= 0x40);
        eprintln!(
            "main_arena {:#x} mp_.n_mmaps {n:#x} mp_.mmapped_mem {bytes:#x}",
            facts.main_arena
        );
    }
}
