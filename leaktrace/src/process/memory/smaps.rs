//! `/proc/PID/smaps`, read within a bound and classed by what holds each resident page.
//!
//! The kernel knows which pages are resident but not who asked for them: the classes come from
//! the mappings' names and shapes (`[heap]`, a glibc arena's 64 MiB heaps, a thread stack's guard
//! page) and from what the tracer learnt elsewhere (the arenas' heaps, the threads' stack
//! pointers).

use std::{fs::File, io::Read as _, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::process::maps::{self, Mapping};

/// Most bytes of `smaps` read: a process with a million mappings must not cost the tracer its
/// memory (a Node process has a few thousand entries of ~1 KiB each).
pub const MAX_SMAPS_BYTES: u64 = 64 << 20;

/// Largest guard page glibc puts below a thread stack that the shape rule accepts
/// (`pthread_attr_setguardsize` may enlarge it; the default is one page).
const MAX_GUARD_BYTES: u64 = 64 << 10;

/// One `smaps` entry: the mapping, its pseudo name, and its resident and swapped bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub mapping: Mapping,
    /// `[heap]`, `[stack]`, `[vdso]`, `[anon:NAME]`: the kernel's name of a mapping with no file.
    pub pseudo: Option<String>,
    pub rss: u64,
    pub swap: u64,
}

impl Entry {
    fn is_anonymous(&self) -> bool {
        self.mapping.path.is_none()
            && self
                .pseudo
                .as_deref()
                .is_none_or(|p| p == "[heap]" || p == "[stack]" || p.starts_with("[anon"))
    }

    fn len(&self) -> u64 {
        self.mapping.end.saturating_sub(self.mapping.start)
    }
}

/// Reads `/proc/PID/smaps`, at most [`MAX_SMAPS_BYTES`]; `truncated` says the rest was left.
pub fn read(pid: u32) -> std::io::Result<(Vec<Entry>, bool)> {
    let mut text = Vec::new();
    File::open(format!("/proc/{pid}/smaps"))?
        .take(MAX_SMAPS_BYTES)
        .read_to_end(&mut text)?;
    let truncated = text.len() as u64 >= MAX_SMAPS_BYTES;
    Ok((parse(&String::from_utf8_lossy(&text)), truncated))
}

/// Parses the text of `smaps`; an entry whose header does not parse is skipped with its fields.
pub fn parse(text: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut current: Option<Entry> = None;
    for line in text.lines() {
        if is_header(line) {
            entries.extend(current.take());
            current = maps::parse_line(line).map(|mapping| Entry {
                pseudo: pseudo_name(line),
                mapping,
                rss: 0,
                swap: 0,
            });
            continue;
        }
        let Some(entry) = current.as_mut() else {
            continue;
        };
        if let Some(kib) = field_kib(line, "Rss:") {
            entry.rss = kib << 10;
        } else if let Some(kib) = field_kib(line, "Swap:") {
            entry.swap = kib << 10;
        }
    }
    entries.extend(current);
    entries
}

/// A header line starts with `start-end`, both hexadecimal; field lines start with `Name:`.
fn is_header(line: &str) -> bool {
    let head = line.split(' ').next().unwrap_or("");
    head.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_hexdigit())
    })
}

/// The sixth field of a header when it is a pseudo name in brackets.
fn pseudo_name(line: &str) -> Option<String> {
    let rest = line.split_whitespace().nth(5)?;
    rest.starts_with('[').then(|| {
        // `[anon:name with spaces]`: the name is the rest of the line.
        let at = line.find(rest).unwrap_or(0);
        line[at..].trim_end().to_string()
    })
}

fn field_kib(line: &str, name: &str) -> Option<u64> {
    let value = line.strip_prefix(name)?.trim();
    value.strip_suffix("kB")?.trim().parse().ok()
}

/// Resident bytes by what holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breakdown {
    /// Sum of the classes below: the process's resident set as `smaps` counts it.
    pub rss: u64,
    /// The allocator's heaps: glibc's `[heap]` (the main arena's brk heap) and its arenas'
    /// 64 MiB heaps.
    pub malloc_heaps: u64,
    /// V8's heap: pages of the regions V8 mapped for it, known by the call that mapped them
    /// (seen by the mapping probes since the attach), and V8's chunks in other anonymous
    /// mappings, known by their headers (those mapped before the attach).
    #[serde(default)]
    pub v8_heap: u64,
    /// Thread stacks: `[stack]`, the mappings threads' stack pointers are in, and anonymous
    /// mappings right above a guard page.
    pub thread_stacks: u64,
    /// Executables, libraries and other file-backed pages (shared memory included), and the
    /// kernel's `[vdso]`/`[vvar]`.
    pub code_and_files: u64,
    /// Every other anonymous page: the allocator's own `mmap`ed blocks and what the process
    /// mapped itself.
    pub other_anonymous: u64,
    /// Bytes swapped out (not part of `rss`).
    pub swap: u64,
}

/// What the classes need besides `smaps` itself.
#[derive(Clone, Debug, Default)]
pub struct Known {
    /// Address ranges of the allocator's heaps besides `[heap]` (glibc's arena heaps).
    pub malloc_heaps: Vec<(u64, u64)>,
    /// Stack pointers of the process's threads, where readable.
    pub stack_pointers: Vec<u64>,
    /// Address ranges V8 mapped for its heap (from the mapping events), in any order.
    pub v8_heap: Vec<(u64, u64)>,
}

/// What holds a mapping's pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    MallocHeap,
    ThreadStack,
    CodeAndFiles,
    OtherAnonymous,
}

/// Classes every entry (same order as `entries`).
pub fn classify(entries: &[Entry], known: &Known) -> Vec<Class> {
    let overlaps = |m: &Mapping, ranges: &[(u64, u64)]| {
        ranges
            .iter()
            .any(|&(start, end)| m.start < end && start < m.end)
    };
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let m = &entry.mapping;
            if !entry.is_anonymous() {
                return Class::CodeAndFiles;
            }
            match entry.pseudo.as_deref() {
                Some("[heap]") => return Class::MallocHeap,
                Some("[stack]") => return Class::ThreadStack,
                _ => {}
            }
            if overlaps(m, &known.malloc_heaps) {
                return Class::MallocHeap;
            }
            if known
                .stack_pointers
                .iter()
                .any(|&sp| m.start <= sp && sp < m.end)
            {
                return Class::ThreadStack;
            }
            // glibc's thread stacks: an inaccessible guard page right below a writable mapping.
            let guarded = i.checked_sub(1).map(|p| &entries[p]).is_some_and(|g| {
                g.is_anonymous()
                    && g.mapping.perms[..3] == *b"---"
                    && g.mapping.end == m.start
                    && g.len() <= MAX_GUARD_BYTES
                    && !overlaps(&g.mapping, &known.malloc_heaps)
            });
            if guarded && m.perms[..2] == *b"rw" {
                return Class::ThreadStack;
            }
            Class::OtherAnonymous
        })
        .collect()
}

/// The readable, resident mappings of other anonymous memory that `known`'s V8 ranges do not
/// cover whole: where V8's chunks from before the attach can be.
pub fn unexplained_anonymous(entries: &[Entry], known: &Known) -> Vec<(u64, u64)> {
    let v8 = merged(&known.v8_heap);
    entries
        .iter()
        .zip(classify(entries, known))
        .filter(|(entry, class)| {
            let m = &entry.mapping;
            *class == Class::OtherAnonymous
                && entry.rss > 0
                && m.perms[0] == b'r'
                && !v8
                    .iter()
                    .any(|&(start, end)| start <= m.start && m.end <= end)
        })
        .map(|(entry, _)| (entry.mapping.start, entry.mapping.end))
        .collect()
}

/// Sums the entries' resident bytes by class. V8's heap is carved out of the other anonymous
/// pages: a mapping its ranges cover whole counts by its `Rss`; the ranges that cover part of
/// one (the kernel merged it with a neighbour) are handed to `resident`, which counts their
/// resident bytes page by page (see [`super::resident`]).
pub fn breakdown(entries: &[Entry], known: &Known, resident: &mut Resident<'_>) -> Breakdown {
    let mut out = Breakdown::default();
    let v8 = merged(&known.v8_heap);
    let mut partial = Vec::new();
    let mut partial_rss = 0;
    for (entry, class) in entries.iter().zip(classify(entries, known)) {
        out.rss += entry.rss;
        out.swap += entry.swap;
        *match class {
            Class::MallocHeap => &mut out.malloc_heaps,
            Class::ThreadStack => &mut out.thread_stacks,
            Class::CodeAndFiles => &mut out.code_and_files,
            Class::OtherAnonymous => &mut out.other_anonymous,
        } += entry.rss;
        if class != Class::OtherAnonymous || entry.rss == 0 {
            continue;
        }
        let m = &entry.mapping;
        let clipped: Vec<(u64, u64)> = v8
            .iter()
            .filter(|&&(start, end)| start < m.end && m.start < end)
            .map(|&(start, end)| (start.max(m.start), end.min(m.end)))
            .collect();
        let covered: u64 = clipped.iter().map(|(start, end)| end - start).sum();
        if covered == entry.len() {
            out.v8_heap += entry.rss;
        } else if covered > 0 {
            partial.extend(clipped);
            partial_rss += entry.rss;
        }
    }
    if !partial.is_empty() {
        out.v8_heap += resident(&partial).min(partial_rss);
    }
    out.other_anonymous -= out.v8_heap;
    out
}

/// Counts the resident bytes of address ranges.
pub type Resident<'a> = dyn FnMut(&[(u64, u64)]) -> u64 + 'a;

/// `ranges` sorted, overlapping and touching ones joined.
pub fn merged(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut sorted: Vec<(u64, u64)> = ranges.iter().copied().filter(|(s, e)| s < e).collect();
    sorted.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (start, end) in sorted {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// The stack pointers of a process's threads, from `/proc/PID/task/TID/syscall` (`running`
/// for a thread on a CPU; else the syscall's number and arguments, then its stack and
/// instruction pointers). Reading it never stops the thread. At most `max` threads.
pub fn stack_pointers(pid: u32, max: usize) -> Vec<u64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .take(max)
        .filter_map(|task| {
            let path: PathBuf = task.path().join("syscall");
            parse_syscall_sp(&std::fs::read_to_string(path).ok()?)
        })
        .collect()
}

/// The stack pointer in one `syscall` line: the next-to-last field, when there are 3 or more.
fn parse_syscall_sp(line: &str) -> Option<u64> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 3 {
        return None;
    }
    let sp = fields[fields.len() - 2];
    u64::from_str_radix(sp.strip_prefix("0x")?, 16)
        .ok()
        .filter(|&sp| sp != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0001000 r-xp 00001000 fe:01 99 /usr/bin/app
Size:                  4 kB
Rss:                   4 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me
55d0c1000000-55d0c1400000 rw-p 00000000 00:00 0                          [heap]
Size:               4096 kB
Rss:                3000 kB
Swap:                 16 kB
7f0000000000-7f0002000000 rw-p 00000000 00:00 0
Rss:                8192 kB
7f0002000000-7f0004000000 ---p 00000000 00:00 0
Rss:                   0 kB
7f1000000000-7f1000001000 ---p 00000000 00:00 0
Rss:                   0 kB
7f1000001000-7f1000801000 rw-p 00000000 00:00 0
Rss:                  40 kB
7f2000000000-7f2000100000 rw-p 00000000 00:00 0
Rss:                 100 kB
7f3000000000-7f3000100000 rw-p 00000000 00:00 0                          [anon:v8 heap]
Rss:                 200 kB
7ffd5e9c0000-7ffd5e9e1000 rw-p 00000000 00:00 0                          [stack]
Rss:                  12 kB
7ffd5e9f0000-7ffd5e9f2000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
";

    #[test]
    fn parses_entries_and_pseudo_names() {
        let entries = parse(SMAPS);
        assert_eq!(entries.len(), 10);
        assert_eq!(entries[1].pseudo.as_deref(), Some("[heap]"));
        assert_eq!(entries[1].rss, 3000 << 10);
        assert_eq!(entries[1].swap, 16 << 10);
        assert_eq!(entries[7].pseudo.as_deref(), Some("[anon:v8 heap]"));
        assert_eq!(entries[2].pseudo, None);
        // The field `FilePmdMapped:` starts with hex digits but is no header.
        assert!(!is_header("FilePmdMapped:         0 kB"));
        assert!(is_header("7f1000001000-7f1000801000 rw-p 00000000 00:00 0"));
    }

    #[test]
    fn classes_heaps_stacks_files_and_the_rest() {
        let entries = parse(SMAPS);
        let known = Known {
            // One arena heap: its writable part and its reserved rest.
            malloc_heaps: vec![(0x7f0000000000, 0x7f0004000000)],
            stack_pointers: vec![0x7f2000000800],
            ..Known::default()
        };
        let classes = classify(&entries, &known);
        use Class::*;
        assert_eq!(
            classes,
            vec![
                CodeAndFiles,
                MallocHeap,
                MallocHeap,
                MallocHeap,
                OtherAnonymous, // the guard page itself (nothing resident)
                ThreadStack,    // above a guard page
                ThreadStack,    // holds a thread's stack pointer
                OtherAnonymous,
                ThreadStack,
                CodeAndFiles,
            ]
        );
        let b = breakdown(&entries, &known, &mut |_| unreachable!("no V8 range"));
        assert_eq!(b.rss, (4 + 3000 + 8192 + 40 + 100 + 200 + 12 + 8) << 10);
        assert_eq!(b.malloc_heaps, (3000 + 8192) << 10);
        assert_eq!(b.thread_stacks, (40 + 100 + 12) << 10);
        assert_eq!(b.code_and_files, (4 + 8) << 10);
        assert_eq!(b.other_anonymous, 200 << 10);
        assert_eq!(b.swap, 16 << 10);
        assert_eq!(
            b.rss,
            b.malloc_heaps + b.thread_stacks + b.code_and_files + b.other_anonymous
        );
    }

    /// V8's ranges take a whole mapping's `Rss`, or what pagemap says of the part they cover;
    /// never more than the mapping holds, never from another class.
    #[test]
    fn v8_heap_is_carved_out_of_the_other_anonymous_pages() {
        let text = "\
7f3000000000-7f3000100000 rw-p 00000000 00:00 0
Rss:                 200 kB
7f3000100000-7f3000200000 rw-p 00000000 00:00 0
Rss:                 300 kB
7f4000000000-7f4000100000 rw-p 00000000 00:00 0
Rss:                  40 kB
";
        let entries = parse(text);
        let known = Known {
            // The first mapping in two touching pieces, a quarter of the second, and a thread
            // stack (its stack pointer says so) that V8 did not map.
            v8_heap: vec![
                (0x7f3000080000, 0x7f3000100000),
                (0x7f3000000000, 0x7f3000080000),
                (0x7f3000100000, 0x7f3000140000),
                (0x7f4000000000, 0x7f4000100000),
            ],
            stack_pointers: vec![0x7f4000000800],
            ..Known::default()
        };
        let mut asked = Vec::new();
        let b = breakdown(&entries, &known, &mut |ranges| {
            asked.extend_from_slice(ranges);
            100 << 10
        });
        assert_eq!(asked, [(0x7f3000100000, 0x7f3000140000)]);
        assert_eq!(b.v8_heap, (200 + 100) << 10);
        assert_eq!(b.other_anonymous, 200 << 10);
        assert_eq!(b.thread_stacks, 40 << 10);
        let capped = breakdown(&entries, &known, &mut |_| 1 << 40);
        assert_eq!(
            capped.v8_heap,
            (200 + 300) << 10,
            "no more than the mapping holds"
        );
        assert_eq!(capped.other_anonymous, 0);
    }

    #[test]
    fn a_guard_page_inside_an_arena_heap_is_no_stack() {
        // An arena heap's reserved rest, then the next heap: the same shape as a guard page.
        let text = "\
7f0000000000-7f0000001000 ---p 00000000 00:00 0
Rss:                   0 kB
7f0000001000-7f0000002000 rw-p 00000000 00:00 0
Rss:                   4 kB
";
        let known = Known {
            malloc_heaps: vec![(0x7f0000000000, 0x7f0000001000)],
            ..Known::default()
        };
        assert_eq!(
            classify(&parse(text), &known)[1],
            Class::OtherAnonymous,
            "a heap's reserved tail is not a guard page"
        );
    }

    #[test]
    fn reads_stack_pointers_from_syscall_lines() {
        assert_eq!(
            parse_syscall_sp("0 0x3 0x7ffd 0x1 0x0 0x0 0x0 0x7ffd5e9e0c48 0x7f0c1a2f1a5d"),
            Some(0x7ffd5e9e0c48)
        );
        assert_eq!(
            parse_syscall_sp("-1 0x7ffd5e9e0c48 0x7f0c1a2f1a5d"),
            Some(0x7ffd5e9e0c48)
        );
        assert_eq!(parse_syscall_sp("running"), None);
        assert_eq!(parse_syscall_sp(""), None);
    }
}
