//! Where a process's resident memory is: its resident set by what holds it (`smaps`), and its
//! allocator's own account of what it keeps (glibc's arenas, read from outside).
//!
//! A process whose RSS grows while its live blocks do not is not leaking: its allocator keeps
//! what was freed. Only the allocator's account tells the two apart.

pub mod elf;
pub mod glibc;
pub mod resident;
pub mod smaps;
pub mod threads;
pub mod v8_pages;

use std::{collections::HashSet, fs::File, io, os::unix::fs::FileExt as _};

use serde::{Deserialize, Serialize};

pub use smaps::Breakdown;

/// Reads target memory; a trait so unit tests walk a synthetic memory image.
pub trait ReadMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// One 8-byte word of target memory, or why it could not be read.
fn read_word(mem: &impl ReadMemory, addr: u64) -> Result<u64, String> {
    let mut buf = [0u8; 8];
    mem.read(addr, &mut buf)
        .map_err(|e| format!("cannot read {addr:#x}: {e}"))?;
    Ok(u64::from_le_bytes(buf))
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
    /// The arenas by the threads that allocate from them (read from glibc's thread list and
    /// each thread's `thread_arena`): which threads' allocations the free memory was kept for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_thread: Vec<ThreadShare>,
    /// Why `by_thread` is empty though the account was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_thread_unread: Option<String>,
}

/// Some of a process's arenas, and the threads that allocate from them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadShare {
    /// What the threads are: `main thread`; the function they started at (the report names
    /// it: `libuv thread pool` for libuv's workers); `threads of several kinds` for arenas they
    /// share (glibc makes at most 8 per core); `no live thread` for arenas whose threads
    /// ended (glibc gives them to the next new threads).
    pub threads_are: String,
    /// The address the threads started at, hex, when they are of one kind other than main.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_routine: Option<String>,
    /// Live threads that allocated from these arenas.
    pub threads: usize,
    pub arenas: usize,
    pub system_bytes: u64,
    pub free_bytes: u64,
}

/// What [`ThreadShare::threads_are`] says of the main thread's arena, of arenas of threads of
/// several kinds and of arenas no live thread allocates from.
pub const MAIN_THREAD: &str = "main thread";
pub const SHARED: &str = "threads of several kinds";
pub const NO_LIVE_THREAD: &str = "no live thread";

/// Groups the arenas read by the kind of the threads that use them: a thread's kind is where
/// it started (the main thread is its own kind).
fn shares(account: &glibc::Account, threads: &[threads::ThreadArena]) -> Vec<ThreadShare> {
    use std::collections::BTreeMap;
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Kind {
        Main,
        Start(u64),
        Shared,
        Nobody,
    }
    let mut groups: BTreeMap<Kind, ThreadShare> = BTreeMap::new();
    for arena in &account.arenas {
        let users: Vec<&threads::ThreadArena> = threads
            .iter()
            .filter(|t| Some(t.arena) == arena.address_value())
            .collect();
        let kinds: std::collections::BTreeSet<Kind> = users
            .iter()
            .map(|t| {
                if t.start_routine == 0 {
                    Kind::Main
                } else {
                    Kind::Start(t.start_routine)
                }
            })
            .collect();
        let kind = match (kinds.len(), kinds.first()) {
            (0, _) => Kind::Nobody,
            (1, Some(&k)) => k,
            _ => Kind::Shared,
        };
        let share = groups.entry(kind).or_insert_with(|| ThreadShare {
            threads_are: match kind {
                Kind::Main => MAIN_THREAD.into(),
                Kind::Start(at) => format!("{at:#x}"),
                Kind::Shared => SHARED.into(),
                Kind::Nobody => NO_LIVE_THREAD.into(),
            },
            start_routine: match kind {
                Kind::Start(at) => Some(format!("{at:#x}")),
                _ => None,
            },
            ..ThreadShare::default()
        });
        share.threads += users.len();
        share.arenas += 1;
        share.system_bytes += arena.system_bytes;
        share.free_bytes += arena.free_bytes();
    }
    let mut out: Vec<ThreadShare> = groups.into_values().collect();
    out.sort_by_key(|s| std::cmp::Reverse(s.free_bytes));
    out
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
    /// V8's chunks in mappings no mapping event explains (those from before the attach).
    v8_pages: v8_pages::Finder,
    /// The chunks the last full reading found: a light one counts them without looking again.
    v8_chunks: Vec<(u64, u64)>,
}

/// A light reading: the resident set and V8's part of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resident {
    pub rss: u64,
    pub v8_heap: u64,
}

impl Reader {
    pub fn new(pid: u32, allocator: &str) -> Self {
        Self {
            pid,
            allocator: allocator.to_owned(),
            mem: None,
            glibc: None,
            v8_pages: v8_pages::Finder::new(pid),
            v8_chunks: Vec::new(),
        }
    }

    /// The resident set (`statm`) and V8's resident pages (`pagemap`, over `v8_heap` and the
    /// chunks the last [`Reader::read`] found), without `smaps` or the allocator's account:
    /// what a trigger that judges the resident set outside V8's heap needs, read at every
    /// sample for a fraction of a full reading's cost, and without walking the target's every
    /// mapping under its memory map's lock as `smaps` does. `None` once the process is gone.
    pub fn read_resident(&self, mut v8_heap: Vec<(u64, u64)>) -> Option<Resident> {
        let rss = resident::rss_bytes(self.pid)?;
        v8_heap.extend_from_slice(&self.v8_chunks);
        let v8 = resident::resident_bytes(self.pid, &smaps::merged(&v8_heap), MAX_PAGEMAP_PAGES)
            .map_or(0, |counted| counted.bytes);
        Some(Resident { rss, v8_heap: v8 })
    }

    /// Reads `smaps` and the allocator's account; `None` once the process is gone. `v8_heap`:
    /// the ranges V8 mapped for its heap, as the mapping events tell; V8's chunks in the other
    /// anonymous mappings are found by their headers.
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
                match self.thread_arenas(&account) {
                    Ok(threads) => malloc.by_thread = shares(&account, &threads),
                    Err(why) => malloc.by_thread_unread = Some(why),
                }
            }
            Err(why) => malloc.unreadable = Some(why),
        }
        let unexplained = smaps::unexplained_anonymous(&entries, &known);
        self.v8_chunks = self.v8_pages.chunks(&unexplained);
        known.v8_heap.extend_from_slice(&self.v8_chunks);
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

    /// Each live thread's arena, from glibc's thread list (see [`threads`]).
    fn thread_arenas(&self, account: &glibc::Account) -> Result<Vec<threads::ThreadArena>, String> {
        let (Some(mem), Some((_, Ok(at)))) = (&self.mem, &self.glibc) else {
            return Err("glibc's state was not found".into());
        };
        let layout = at.threads.as_ref().map_err(Clone::clone)?;
        let pid = self.pid;
        let tids = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| format!("cannot list /proc/{pid}/task: {e}"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok());
        // glibc knows its threads by the IDs they have in the process's PID namespace.
        let ns_pid = crate::process::ns_pid(pid).unwrap_or(pid);
        let tasks: HashSet<u32> = if ns_pid == pid {
            tids.collect()
        } else {
            tids.filter_map(|tid| crate::process::ns_tid(pid, tid))
                .collect()
        };
        let arenas: HashSet<u64> = account
            .arenas
            .iter()
            .filter_map(glibc::ArenaAccount::address_value)
            .chain(account.unreadable.iter().map(|&(a, _)| a))
            .collect();
        let mut last = String::new();
        for _ in 0..glibc::ATTEMPTS {
            match threads::read(mem, layout, ns_pid, &tasks, &arenas, at.main_arena) {
                Ok(threads) => return Ok(threads),
                Err(why) => last = why,
            }
        }
        Err(last)
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

    /// A light reading counts the pages touched in the ranges it is given as V8's, whether
    /// given twice or not, and this process's resident set around them.
    #[test]
    fn a_light_reading_counts_the_given_ranges_pages() {
        const PAGES: u64 = 64;
        let page = leaktrace_common::PAGE_BYTES;
        let mut block = vec![0u8; ((PAGES + 1) * page) as usize];
        let base = (block.as_ptr() as u64).div_ceil(page) * page;
        let offset = (base - block.as_ptr() as u64) as usize;
        for p in 0..PAGES as usize {
            block[offset + p * page as usize] = 1;
        }
        let range = (base, base + PAGES * page);
        let reader = Reader::new(std::process::id(), "glibc");
        let resident = reader
            .read_resident(vec![range, range])
            .expect("this process is alive");
        assert_eq!(resident.v8_heap, PAGES * page);
        assert!(resident.rss >= resident.v8_heap, "{resident:?}");
        std::hint::black_box(&block);
    }

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

    #[test]
    fn arenas_are_grouped_by_the_kind_of_their_threads() {
        let arena = |address: u64, main: bool, top_bytes: u64| glibc::ArenaAccount {
            address: format!("{address:#x}"),
            system_bytes: 1000,
            top_bytes,
            main,
            ..glibc::ArenaAccount::default()
        };
        let account = glibc::Account {
            arenas: vec![
                arena(0xa0, true, 500),
                arena(0xb0, false, 40),
                arena(0xc0, false, 30),
                arena(0xd0, false, 20),
                arena(0xe0, false, 10),
            ],
            ..glibc::Account::default()
        };
        let thread = |tid: u32, start_routine: u64, arena: u64| threads::ThreadArena {
            tid,
            start_routine,
            arena,
        };
        let threads = [
            thread(1, 0, 0xa0),
            // Two pool threads with an arena each, a third that has not allocated yet.
            thread(2, 0x1000, 0xb0),
            thread(3, 0x1000, 0xc0),
            thread(4, 0x1000, 0),
            // A pool thread and another kind share an arena; 0xe0's threads ended.
            thread(5, 0x1000, 0xd0),
            thread(6, 0x2000, 0xd0),
        ];
        let got: Vec<(String, Option<String>, usize, usize, u64)> = shares(&account, &threads)
            .into_iter()
            .map(|s| {
                (
                    s.threads_are,
                    s.start_routine,
                    s.threads,
                    s.arenas,
                    s.free_bytes,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (MAIN_THREAD.into(), None, 1, 1, 500),
                ("0x1000".into(), Some("0x1000".into()), 2, 2, 70),
                (SHARED.into(), None, 2, 1, 20),
                (NO_LIVE_THREAD.into(), None, 0, 1, 10),
            ]
        );
    }
}
