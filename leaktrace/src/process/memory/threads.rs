//! Which thread allocates from which of glibc's arenas, read from outside the way
//! `libthread_db` (gdb's thread support) reads a process's threads.
//!
//! glibc keeps each thread's arena in a thread-local variable, `thread_arena`, inside libc's
//! static TLS block, which sits just below the thread's `struct pthread` (x86-64's thread
//! pointer points at it). The threads are found where `libthread_db` finds them: the dynamic
//! linker's lists of thread stacks (`_rtld_global._dl_stack_used`, and `_dl_stack_user` for the
//! main thread), whose layout glibc itself publishes for debuggers in its `_thread_db_*`
//! descriptors (`{bits, count, offset}` triples in libc's dynamic symbols), so nothing here is
//! a guessed offset. Which TLS slot is `thread_arena` is not published: libc's GOT holds the
//! TLS offsets of its initial-exec variables (one `R_X86_64_TPOFF64` relocation each), and the
//! one whose value is an arena's address (or nothing yet) in every thread, and the main arena
//! in the main thread, is it.
//!
//! Threads start and exit while the lists are read: every thread found must be a task of the
//! process, and a list that does not close within [`MAX_THREADS`] links is not trusted.

use std::collections::HashSet;

use object::{
    Object as _, ObjectSymbol as _, RelocationFlags, RelocationTarget, elf::R_X86_64_TPOFF64,
};

use super::{
    ReadMemory,
    elf::{bytes_at, runtime_address},
    read_word,
};
use crate::process::maps::Mapping;

/// Most threads followed in one list.
pub const MAX_THREADS: usize = 8192;

/// Where one process's glibc keeps its threads, as runtime addresses and field offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The heads of `_dl_stack_used` (threads glibc made the stacks of) and `_dl_stack_user`
    /// (the main thread, and threads started on stacks of their own).
    heads: [u64; 2],
    /// `list_t.next`, and the offsets in `struct pthread` of its `list`, `tid` and
    /// `start_routine`.
    next: u64,
    list: u64,
    tid: u64,
    start_routine: u64,
    /// The addresses of libc's GOT slots that hold a TLS variable's offset from the thread
    /// pointer: one of them is `thread_arena`'s.
    tls_slots: Vec<u64>,
}

/// One thread and the arena it allocates from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadArena {
    pub tid: u32,
    /// The function the thread started at (`pthread_create`'s), 0 for the main thread.
    pub start_routine: u64,
    /// Its arena; 0 until the thread's first `malloc`.
    pub arena: u64,
}

/// A `_thread_db_*` descriptor: `{size in bits, element count, offset}`.
fn descriptor(elf: &object::File<'_>, name: &str) -> Result<u64, String> {
    let symbol = elf
        .dynamic_symbols()
        .find(|s| s.name() == Ok(name) && s.is_definition())
        .ok_or_else(|| format!("libc has no {name} (no thread_db support)"))?;
    let bytes = bytes_at(elf, symbol.address(), 12)
        .filter(|b| b.len() == 12)
        .ok_or_else(|| format!("{name} is not in libc's file"))?;
    Ok(u64::from(u32::from_le_bytes(
        bytes[8..12].try_into().expect("4 bytes"),
    )))
}

/// Finds the thread lists of a process whose libc (`libc_elf`, loaded `libc_bias` from its
/// addresses) glibc publishes them for, with the dynamic linker among `mappings`.
pub fn locate(
    pid: u32,
    mappings: &[Mapping],
    libc_elf: &object::File<'_>,
    libc_bias: u64,
) -> Result<Layout, String> {
    let next = descriptor(libc_elf, "_thread_db_list_t_next")?;
    let list = descriptor(libc_elf, "_thread_db_pthread_list")?;
    let tid = descriptor(libc_elf, "_thread_db_pthread_tid")?;
    let start_routine = descriptor(libc_elf, "_thread_db_pthread_start_routine")?;
    let used = descriptor(libc_elf, "_thread_db_rtld_global__dl_stack_used")?;
    let user = descriptor(libc_elf, "_thread_db_rtld_global__dl_stack_user")?;
    let tls_slots: Vec<u64> = libc_elf
        .dynamic_relocations()
        .into_iter()
        .flatten()
        .filter(|(_, r)| {
            r.flags()
                == RelocationFlags::Elf {
                    r_type: R_X86_64_TPOFF64,
                }
                && r.target() == RelocationTarget::Absolute
        })
        .map(|(slot, _)| slot.wrapping_add(libc_bias))
        .collect();
    if tls_slots.is_empty() {
        return Err("libc has no initial-exec TLS slot to hold thread_arena's offset".into());
    }
    let rtld_global = rtld_global(pid, mappings)?;
    Ok(Layout {
        heads: [rtld_global + used, rtld_global + user],
        next,
        list,
        tid,
        start_routine,
        tls_slots,
    })
}

/// `_rtld_global`'s address: a dynamic symbol of the dynamic linker (`ld-linux-x86-64.so.2`).
fn rtld_global(pid: u32, mappings: &[Mapping]) -> Result<u64, String> {
    let ld = mappings
        .iter()
        .find(|m| {
            m.path
                .as_deref()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ld-linux") || n.starts_with("ld-2."))
        })
        .ok_or("the process maps no glibc dynamic linker (statically linked?)")?;
    let file = format!("/proc/{pid}/map_files/{:x}-{:x}", ld.start, ld.end);
    let data = std::fs::read(&file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let elf = object::File::parse(&*data).map_err(|e| format!("malformed ELF {file}: {e}"))?;
    let symbol = elf
        .dynamic_symbols()
        .find(|s| s.name() == Ok("_rtld_global") && s.is_definition())
        .ok_or("the dynamic linker has no _rtld_global")?;
    runtime_address(mappings, ld, &elf, symbol.address())
        .ok_or_else(|| "the dynamic linker's _rtld_global is not mapped".into())
}

/// The process's threads and, for each, the arena it allocates from. `pid` and `tasks`: the
/// process's ID and its threads' now (`/proc/PID/task`), as its own PID namespace numbers them;
/// `arenas`: the arenas read, `main_arena` among them.
pub fn read(
    mem: &impl ReadMemory,
    layout: &Layout,
    pid: u32,
    tasks: &HashSet<u32>,
    arenas: &HashSet<u64>,
    main_arena: u64,
) -> Result<Vec<ThreadArena>, String> {
    // (struct pthread's address, tid, start routine) of each live thread.
    let mut threads = Vec::new();
    for head in layout.heads {
        let mut link = read_word(mem, head + layout.next)?;
        let mut steps = 0;
        while link != head {
            steps += 1;
            if steps > MAX_THREADS || link == 0 {
                return Err(
                    "a thread list did not close (threads started or ended while read)".into(),
                );
            }
            let pthread = link.wrapping_sub(layout.list);
            let mut tid = [0u8; 4];
            mem.read(pthread + layout.tid, &mut tid)
                .map_err(|e| format!("cannot read a thread's tid: {e}"))?;
            let tid = u32::from_le_bytes(tid);
            // An exiting thread's tid is 0 or no longer a task: it owns no arena now.
            if tasks.contains(&tid) {
                let start = read_word(mem, pthread + layout.start_routine)?;
                threads.push((pthread, tid, if tid == pid { 0 } else { start }));
            }
            link = read_word(mem, link + layout.next)?;
        }
    }
    let main = threads
        .iter()
        .find(|t| t.1 == pid)
        .ok_or("the main thread is not in glibc's lists")?
        .0;
    // `thread_arena` is the TLS slot that holds an arena (or nothing) in every thread, and the
    // main arena in the main thread, which made the first `malloc`.
    let mut found = None;
    for &slot in &layout.tls_slots {
        let offset = read_word(mem, slot)?;
        let arena_of = |pthread: u64| read_word(mem, pthread.wrapping_add(offset));
        if arena_of(main) != Ok(main_arena) {
            continue;
        }
        let values: Result<Vec<u64>, String> = threads.iter().map(|t| arena_of(t.0)).collect();
        if let Ok(values) = values
            && values.iter().all(|v| *v == 0 || arenas.contains(v))
        {
            if found.is_some() {
                return Err("two TLS slots look like thread_arena".into());
            }
            found = Some(values);
        }
    }
    let values = found.ok_or("no TLS slot holds each thread's arena (glibc's layout changed?)")?;
    Ok(threads
        .iter()
        .zip(values)
        .map(|(&(_, tid, start_routine), arena)| ThreadArena {
            tid,
            start_routine,
            arena,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, io};

    use super::*;

    /// A synthetic address space of 8-byte words.
    #[derive(Default)]
    struct Words(BTreeMap<u64, u64>);

    impl ReadMemory for Words {
        fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
            for (i, chunk) in buf.chunks_mut(8).enumerate() {
                let at = addr + 8 * i as u64;
                let word = self
                    .0
                    .get(&(at & !7))
                    .ok_or_else(|| io::Error::other(format!("{at:#x} unmapped")))?;
                let bytes = word.to_le_bytes();
                let from = (at & 7) as usize;
                chunk.copy_from_slice(&bytes[from..from + chunk.len()]);
            }
            Ok(())
        }
    }

    const USED: u64 = 0x1000;
    const USER: u64 = 0x2000;
    const SLOTS: [u64; 2] = [0x3000, 0x3008];
    const MAIN_ARENA: u64 = 0xa000;
    const ARENA: u64 = 0xb000;

    fn layout() -> Layout {
        Layout {
            heads: [USED, USER],
            next: 0,
            list: 0x10,
            tid: 0x20,
            start_routine: 0x28,
            tls_slots: SLOTS.to_vec(),
        }
    }

    /// Threads (struct pthread address, tid, start routine, TLS words at -0x100 and -0x80),
    /// the main one on `_dl_stack_user`, the others on `_dl_stack_used`.
    fn image(threads: &[(u64, u64, u64, [u64; 2])]) -> Words {
        let mut words = Words::default();
        words.0.insert(SLOTS[0], (-0x100i64) as u64);
        words.0.insert(SLOTS[1], (-0x80i64) as u64);
        let (user, used): (Vec<_>, Vec<_>) = threads.iter().partition(|t| t.1 == 1);
        for (head, list) in [(USER, user), (USED, used)] {
            let mut link = head;
            for &&(pthread, tid, start, tls) in &list {
                words.0.insert(link, pthread + 0x10);
                link = pthread + 0x10;
                words.0.insert(pthread + 0x20, tid);
                words.0.insert(pthread + 0x28, start);
                words.0.insert(pthread - 0x100, tls[0]);
                words.0.insert(pthread - 0x80, tls[1]);
            }
            words.0.insert(link, head);
        }
        words
    }

    fn run(words: &Words, tasks: &[u32]) -> Result<Vec<ThreadArena>, String> {
        read(
            words,
            &layout(),
            1,
            &tasks.iter().copied().collect(),
            &[MAIN_ARENA, ARENA].into_iter().collect(),
            MAIN_ARENA,
        )
    }

    #[test]
    fn each_live_thread_gets_the_arena_its_tls_slot_holds() {
        // The first slot holds a tcache-like pointer, the second the arena; thread 3 has not
        // allocated; thread 4 is exiting (no longer a task).
        let words = image(&[
            (0x10_000, 1, 0, [0x5555, MAIN_ARENA]),
            (0x20_000, 2, 0x400, [0x6666, ARENA]),
            (0x30_000, 3, 0x400, [0, 0]),
            (0x40_000, 4, 0x400, [0x7777, ARENA]),
        ]);
        let threads = run(&words, &[1, 2, 3]).expect("read");
        let got: Vec<(u32, u64, u64)> = threads
            .iter()
            .map(|t| (t.tid, t.start_routine, t.arena))
            .collect();
        // In the lists' order: `_dl_stack_used`, then `_dl_stack_user`.
        assert_eq!(
            got,
            vec![(2, 0x400, ARENA), (3, 0x400, 0), (1, 0, MAIN_ARENA)]
        );
    }

    #[test]
    fn two_slots_that_both_look_like_thread_arena_are_refused() {
        let words = image(&[
            (0x10_000, 1, 0, [MAIN_ARENA, MAIN_ARENA]),
            (0x20_000, 2, 0x400, [ARENA, ARENA]),
        ]);
        assert_eq!(
            run(&words, &[1, 2]),
            Err("two TLS slots look like thread_arena".into())
        );
    }

    #[test]
    fn a_list_that_does_not_close_is_refused() {
        let mut words = image(&[(0x10_000, 1, 0, [0, MAIN_ARENA])]);
        // The main thread's link leads to a thread that links to itself.
        words.0.insert(0x10_010, 0x50_010);
        words.0.insert(0x50_010, 0x50_010);
        words.0.insert(0x50_020, 9);
        let err = run(&words, &[1]).expect_err("a loop");
        assert!(err.contains("did not close"), "{err}");
    }
}
