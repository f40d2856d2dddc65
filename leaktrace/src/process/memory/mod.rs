//! Where a process's resident memory is: its resident set by what holds it (`smaps`), and its
//! allocator's own account of what it keeps (glibc's arenas, read from outside).
//!
//! A process whose RSS grows while its live blocks do not is not leaking: its allocator keeps
//! what was freed. Only the allocator's account tells the two apart.

pub mod glibc;
pub mod resident;
pub mod smaps;

use std::{fs::File, io, os::unix::fs::FileExt as _};

use serde::{Deserialize, Serialize};

pub use smaps::Breakdown;

/// Reads target memory; a trait so unit tests walk a synthetic memory image.
pub trait ReadMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// `/proc/PID/mem`, read with positioned reads and never written: the target is not stopped.
/// The open file serves the process it was opened for only, even if its PID is reused.
pub struct ProcMem {
    file: File,
}

impl ProcMem {
    pub fn open(pid: u32) -> io::Result<Self> {
        Ok(Self {
            file: File::open(format!("/proc/{pid}/mem"))?,
        })
    }
}

impl ReadMemory for ProcMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }
}

/// Most threads whose stack pointers are read.
const MAX_THREADS: usize = 4096;
/// Most pages whose residency is looked up one by one in a reading (2 MiB of pagemap, 1 GiB of
/// address space): only V8's ranges that share a mapping with other memory need it.
const MAX_PAGEMAP_PAGES: u64 = 1 << 18;

/// The allocator's account of its memory, as `mallinfo2()` would report it inside the process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MallocAccount {
    /// The allocator serving `malloc`: `glibc`, `musl`, `jemalloc`...
    pub allocator: String,
    /// Whether the account below was read; when not, `unreadable` says why.
    pub readable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// Arenas read (`mallinfo2` walks the same list).
    pub arenas: usize,
    /// Arenas that changed under every read, or failed a check: left out of the sums.
    pub arenas_unreadable: usize,
    /// `mallinfo2().arena`: bytes the arenas obtained from the system.
    pub system_bytes: u64,
    /// `mallinfo2().uordblks`: in use, `system_bytes - free_bytes`. Blocks in the threads'
    /// caches (tcache) count here, as `mallinfo2` counts them.
    pub in_use_bytes: u64,
    /// `mallinfo2().fordblks`: freed but kept by the allocator (top chunks, fastbins, bins).
    pub free_bytes: u64,
    /// The arenas' top chunks (part of `free_bytes`): what `malloc_trim` can give back first.
    pub top_bytes: u64,
    /// `mallinfo2().fsmblks`: in fastbins (part of `free_bytes`).
    pub fastbin_bytes: u64,
    /// `mallinfo2().hblkhd` and `hblks`: blocks served by their own `mmap`, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmapped_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmapped_blocks: Option<u64>,
    /// Free chunks counted.
    pub free_chunks: u64,
    /// The main arena's part of `system_bytes` and `free_bytes`: the main thread's. glibc gives
    /// each other thread an arena of its own (up to 8 per core, past which threads share), so
    /// the rest is the other threads': a Node process's libuv pool and V8's workers. Which
    /// thread holds which of those is in each thread's TLS, which is not read.
    #[serde(default)]
    pub main_arena_system_bytes: u64,
    #[serde(default)]
    pub main_arena_free_bytes: u64,
}

/// One look at a process's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub breakdown: Breakdown,
    pub malloc: MallocAccount,
    /// What limited the reading (a truncated `smaps`).
    pub notes: Vec<String>,
}

/// Reads one process's memory, again and again: glibc's addresses are found once.
pub struct Reader {
    pid: u32,
    allocator: String,
    mem: Option<ProcMem>,
    /// glibc's state, found for the libc mapped at this address: an exec maps another one
    /// (and `/proc/PID/mem` opened before it reads the old image), so both are found again.
    glibc: Option<(u64, Result<glibc::Locations, String>)>,
}

impl Reader {
    pub fn new(pid: u32, allocator: &str) -> Self {
        Self {
            pid,
            allocator: allocator.to_owned(),
            mem: None,
            glibc: None,
        }
    }

    /// Reads `smaps` and the allocator's account; `None` once the process is gone. `v8_heap`:
    /// the ranges V8 mapped for its heap, as the mapping events tell.
    pub fn read(&mut self, v8_heap: Vec<(u64, u64)>) -> Option<Reading> {
        let (entries, truncated) = smaps::read(self.pid).ok()?;
        let mut notes = Vec::new();
        if truncated {
            notes.push(format!(
                "/proc/{}/smaps is larger than {} MiB: mappings past that are not counted",
                self.pid,
                smaps::MAX_SMAPS_BYTES >> 20
            ));
        }
        let mut malloc = MallocAccount {
            allocator: self.allocator.clone(),
            ..MallocAccount::default()
        };
        let mut known = smaps::Known {
            stack_pointers: smaps::stack_pointers(self.pid, MAX_THREADS),
            v8_heap,
            ..smaps::Known::default()
        };
        match self.glibc_account(&entries) {
            Ok(account) => {
                known.malloc_heaps.clone_from(&account.heap_ranges);
                fill(&mut malloc, &account);
            }
            Err(why) => malloc.unreadable = Some(why),
        }
        let pid = self.pid;
        let breakdown =
            smaps::breakdown(
                &entries,
                &known,
                &mut |ranges| match resident::resident_bytes(pid, ranges, MAX_PAGEMAP_PAGES) {
                    Ok(counted) => {
                        if counted.truncated {
                            notes.push(format!(
                                "V8's heap shares mappings with other memory over more than {} \
                             MiB: the pages past that count as other anonymous",
                                (MAX_PAGEMAP_PAGES * 4096) >> 20
                            ));
                        }
                        counted.bytes
                    }
                    Err(err) => {
                        notes.push(format!(
                            "/proc/{pid}/pagemap could not be read ({err}): V8's heap pages that \
                         share a mapping with other memory count as other anonymous"
                        ));
                        0
                    }
                },
            );
        Some(Reading {
            breakdown,
            malloc,
            notes,
        })
    }

    fn glibc_account(&mut self, entries: &[smaps::Entry]) -> Result<glibc::Account, String> {
        if !glibc::is_glibc(&self.allocator) {
            return Err(not_glibc(&self.allocator));
        }
        let mappings: Vec<_> = entries.iter().map(|e| e.mapping.clone()).collect();
        let libc = mappings
            .iter()
            .find(|m| crate::process::allocator::is_libc_path(m.path.as_deref()))
            .map_or(0, |m| m.start);
        if self.glibc.as_ref().is_none_or(|(at, _)| *at != libc) {
            self.mem = ProcMem::open(self.pid).ok();
            self.glibc = Some((
                libc,
                glibc::locate(self.pid, &mappings).map_err(|e| e.to_string()),
            ));
        }
        let at = self.glibc.as_ref().expect("just set").1.clone()?;
        let mem = self
            .mem
            .as_ref()
            .ok_or_else(|| format!("cannot open /proc/{}/mem", self.pid))?;
        let writable: Vec<(u64, u64)> = entries
            .iter()
            .filter(|e| {
                e.mapping.path.is_none()
                    && e.mapping.perms[..2] == *b"rw"
                    && e.pseudo.as_deref().is_none_or(|p| p == "[heap]")
            })
            .map(|e| (e.mapping.start, e.mapping.end))
            .collect();
        glibc::read_account(mem, &at, &writable).map_err(|e| e.to_string())
    }
}

/// Why another allocator's account is not read, in words a user can act on.
fn not_glibc(allocator: &str) -> String {
    if allocator == "jemalloc" {
        // Debian's libjemalloc.so.2 exports mallctl and malloc_stats_print but no symbol for its
        // arenas, and has no symbol table: unlike glibc's mallinfo2, nothing leads to them.
        return JEMALLOC_UNREAD.to_owned();
    }
    format!("leaktrace reads glibc's arenas only; this process's malloc is {allocator}'s")
}

/// What is said of a jemalloc target's account.
pub const JEMALLOC_UNREAD: &str = "jemalloc's statistics are behind mallctl(), which only the \
     process itself can call, and its library names nothing that leads to its arenas: its \
     account cannot be read from outside (in the process: malloc_stats_print, or MALLOC_CONF=\
     stats_print:true at exit)";

fn fill(out: &mut MallocAccount, account: &glibc::Account) {
    out.readable = account.unreadable.is_empty();
    if let Some((arena, why)) = account.unreadable.first() {
        out.unreadable = Some(format!(
            "{} arena(s) could not be read in {} tries (the first, at {arena:#x}: {why})",
            account.unreadable.len(),
            glibc::ATTEMPTS
        ));
    }
    out.arenas = account.arenas.len();
    out.arenas_unreadable = account.unreadable.len();
    out.system_bytes = account.system_bytes();
    out.free_bytes = account.free_bytes();
    out.in_use_bytes = account.in_use_bytes();
    out.top_bytes = account.arenas.iter().map(|a| a.top_bytes).sum();
    out.fastbin_bytes = account.arenas.iter().map(|a| a.fastbin_bytes).sum();
    out.free_chunks = account.arenas.iter().map(|a| a.free_chunks).sum();
    if let Some(main) = account.main_arena() {
        out.main_arena_system_bytes = main.system_bytes;
        out.main_arena_free_bytes = main.free_bytes();
    }
    out.mmapped_blocks = account.mmapped.map(|(n, _)| n);
    out.mmapped_bytes = account.mmapped.map(|(_, bytes)| bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_arena_is_told_apart_from_the_other_threads() {
        let arena = |main: bool, system_bytes: u64, top_bytes: u64| glibc::ArenaAccount {
            system_bytes,
            top_bytes,
            main,
            ..glibc::ArenaAccount::default()
        };
        let account = glibc::Account {
            arenas: vec![
                arena(true, 10, 2),
                arena(false, 100, 50),
                arena(false, 40, 30),
            ],
            ..glibc::Account::default()
        };
        let mut out = MallocAccount::default();
        fill(&mut out, &account);
        assert_eq!((out.system_bytes, out.free_bytes), (150, 82));
        assert_eq!(
            (out.main_arena_system_bytes, out.main_arena_free_bytes),
            (10, 2)
        );
    }
}
