//! V8's heap pages, known by their own headers.
//!
//! The mapping events name the regions V8 maps while the probes watch; a process attached
//! mid-life holds most of its heap from before. Every page of V8's heap (a "memory chunk")
//! starts at a 256 KiB boundary (V8 finds a page's header by masking an object's address) with a
//! header that describes the chunk itself: its size, its heap, and where its object area starts
//! and ends, both inside the chunk. Measured, V8 11 (Node 20): `0x40000, flags, heap, chunk +
//! 0x1148, chunk + 0x40000`; V8 12 (Node 22): `flags, chunk, 0x40000, heap, chunk + 0x1140,
//! chunk + 0x40000`. The area's two words are looked for among a chunk's first eight, and the
//! size before them, so neither layout's offsets are hard-coded; two addresses that must land
//! inside the chunk make a chance match in other memory unlikely.
//!
//! Each anonymous mapping no event explains is looked at once (one 64-byte read at each 256 KiB
//! boundary whose page is resident: reading an absent page would make the kernel map one), and
//! what was found is kept while the mapping stays as it is.

use std::{collections::HashMap, io};

use leaktrace_common::PAGE_BYTES;

use super::{ProcMem, ReadMemory};
use crate::process::pagemap::{PRESENT, Pagemap};

/// V8's page size and alignment (`kPageSize`, V8 11 and 12 on x86-64).
pub const V8_PAGE_BYTES: u64 = 256 << 10;
/// Words of a chunk's start read for its header.
const HEADER_WORDS: usize = 8;
/// Furthest a chunk's object area starts from the chunk (measured: 0x1148, 0x1140; 0x68 for
/// Node 22's read-only space).
const MAX_HEADER_BYTES: u64 = 16 << 10;
/// Largest chunk believed (a large object's chunk is as large as the object).
const MAX_CHUNK_BYTES: u64 = 1 << 36;
/// Most headers read in one reading; mappings past that are looked at in the next ones.
pub const MAX_HEADER_READS: usize = 1 << 16;
/// Pagemap entries read at once while looking for resident chunk starts.
const PAGEMAP_RUN: u64 = 4096;

/// The size of the chunk whose first words are `words`, if they are a V8 chunk header: two
/// words `area_start, area_end` inside the chunk, after its heap, and the nearest word before
/// the heap that is a size in pages the area fits in.
pub fn chunk_size(at: u64, words: &[u64; HEADER_WORDS]) -> Option<u64> {
    (2..HEADER_WORDS - 1).find_map(|i| {
        let (area_start, area_end) = (words[i], words[i + 1]);
        let area = area_start > at && area_start - at <= MAX_HEADER_BYTES && area_start <= area_end;
        if !area {
            return None;
        }
        words[..i - 1]
            .iter()
            .rev()
            .copied()
            .find(|&size| size >= PAGE_BYTES && size % PAGE_BYTES == 0 && size <= MAX_CHUNK_BYTES)
            .filter(|&size| at.checked_add(size).is_some_and(|end| area_end <= end))
    })
}

/// Whether the page at each address (sorted) is in RAM.
pub type FirstPagesResident<'a> = dyn FnMut(&[(u64, ())]) -> io::Result<Vec<bool>> + 'a;

/// The chunks that start in `[start, end)`: `resident` says which of the candidate chunk
/// starts (sorted) have their first page in RAM; `None` when `budget` header reads do not
/// cover the mapping.
pub fn chunks_in(
    (start, end): (u64, u64),
    mem: &impl ReadMemory,
    resident: &mut FirstPagesResident<'_>,
    budget: &mut usize,
) -> io::Result<Option<Vec<(u64, u64)>>> {
    let mut out = Vec::new();
    let mut at = start.next_multiple_of(V8_PAGE_BYTES);
    while at < end {
        let candidates: Vec<(u64, ())> = (0..)
            .map(|i| at + i * V8_PAGE_BYTES)
            .take_while(|&a| a < end)
            .take(PAGEMAP_RUN as usize / (V8_PAGE_BYTES / PAGE_BYTES) as usize)
            .map(|a| (a, ()))
            .collect();
        let present = resident(&candidates)?;
        let mut next = candidates.last().map_or(end, |&(a, ())| a + V8_PAGE_BYTES);
        for (&(candidate, ()), present) in candidates.iter().zip(present) {
            if candidate < at || !present {
                continue;
            }
            if *budget == 0 {
                return Ok(None);
            }
            *budget -= 1;
            let mut raw = [0u8; HEADER_WORDS * 8];
            if mem.read(candidate, &mut raw).is_err() {
                continue;
            }
            let words: [u64; HEADER_WORDS] =
                std::array::from_fn(|i| u64::from_le_bytes(raw[i * 8..][..8].try_into().unwrap()));
            if let Some(size) = chunk_size(candidate, &words) {
                out.push((candidate, candidate + size));
                // A large object's chunk spans several boundaries: none of them is a header.
                at = (candidate + size).next_multiple_of(V8_PAGE_BYTES);
                next = next.max(at);
            }
        }
        at = next;
    }
    Ok(Some(out))
}

/// Finds V8's chunks in one process's anonymous mappings, each mapping once.
pub struct Finder {
    pid: u32,
    /// Chunks found in each mapping looked at, by `[start, end)`.
    seen: HashMap<(u64, u64), Vec<(u64, u64)>>,
}

impl Finder {
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            seen: HashMap::new(),
        }
    }

    /// The chunks in `mappings` (readable anonymous mappings, `[start, end)`). Mappings looked
    /// at before are not read again; mappings no longer listed are forgotten (a mapping that
    /// changes bounds is another mapping). Unreadable memory finds nothing.
    pub fn chunks(&mut self, mappings: &[(u64, u64)]) -> Vec<(u64, u64)> {
        self.seen.retain(|range, _| mappings.contains(range));
        let fresh: Vec<(u64, u64)> = mappings
            .iter()
            .copied()
            .filter(|range| !self.seen.contains_key(range))
            .collect();
        if !fresh.is_empty()
            && let (Ok(mem), Ok(pagemap)) = (ProcMem::open(self.pid), Pagemap::open(self.pid))
        {
            let mut resident = |pages: &[(u64, ())]| -> io::Result<Vec<bool>> {
                Ok(pagemap
                    .entries_of(pages, PAGEMAP_RUN)?
                    .into_iter()
                    .map(|e| e & PRESENT != 0)
                    .collect())
            };
            let mut budget = MAX_HEADER_READS;
            for range in fresh {
                match chunks_in(range, &mem, &mut resident, &mut budget) {
                    Ok(Some(found)) => {
                        self.seen.insert(range, found);
                    }
                    Ok(None) => break,
                    // The mapping went away under the read; the next reading lists it no more.
                    Err(_) => continue,
                }
            }
        }
        self.seen.values().flatten().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Sparse memory: 64-byte blocks at given addresses; the rest unreadable.
    struct Image(BTreeMap<u64, [u64; HEADER_WORDS]>);

    impl ReadMemory for Image {
        fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
            let words = self.0.get(&addr).ok_or(io::ErrorKind::NotFound)?;
            for (chunk, word) in buf.chunks_mut(8).zip(words) {
                chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
            }
            Ok(())
        }
    }

    const A: u64 = 0xccfa80000;
    const HEAP: u64 = 0x303b3360;

    fn node20(at: u64, size: u64, area_end: u64) -> [u64; 8] {
        [size, 0x12, HEAP, at + 0x1148, area_end, 0x3eeb8, 0, 0x39148]
    }

    fn node22(at: u64, size: u64) -> [u64; 8] {
        [0x800a, at, size, HEAP, at + 0x1140, at + size, 0x3eec0, 0]
    }

    /// Headers as dumped from Node 20 and 22 (see the module's docs).
    #[test]
    fn both_layouts_are_headers_and_look_alikes_are_not() {
        assert_eq!(
            chunk_size(A, &node20(A, 0x40000, A + 0x40000)),
            Some(0x40000)
        );
        // A large object's chunk: its area ends at the object's end.
        assert_eq!(
            chunk_size(A, &node20(A, 0x42000, A + 0x41158)),
            Some(0x42000)
        );
        assert_eq!(chunk_size(A, &node22(A, 0x40000)), Some(0x40000));
        assert_eq!(chunk_size(A, &node22(A, 0xe1000)), Some(0xe1000));
        // Node 22's read-only space: no heap, a short header.
        let read_only = [0x10240, A, 0x1b000, 0, A + 0x68, A + 0x1b000, 0x1adc8, 0];
        assert_eq!(chunk_size(A, &read_only), Some(0x1b000));

        // An area outside the chunk, a size not in pages, a filled page, zeros: not headers.
        assert_eq!(chunk_size(A, &node20(A, 0x40000, A + 0x50000)), None);
        let mut odd = node20(A, 0x40000, A + 0x40000);
        odd[0] = 0x40002;
        assert_eq!(chunk_size(A, &odd), None);
        assert_eq!(chunk_size(A, &[0x26fdc7cc04e9; 8]), None);
        assert_eq!(chunk_size(A, &[0; 8]), None);
        // glibc's mmapped chunk: prev_size 0, size | IS_MMAPPED.
        assert_eq!(chunk_size(A, &[0, 0x40002, A + 16, 0, 0, 0, 0, 0]), None);
    }

    /// A mapping with two chunks, a large one spanning three boundaries (whose inner
    /// boundaries hold object data that happens to look like nothing), a hole that is not
    /// resident, and a boundary holding other memory.
    #[test]
    fn a_mapping_is_walked_chunk_by_chunk() {
        let p = V8_PAGE_BYTES;
        let mut image = BTreeMap::new();
        image.insert(A, node20(A, p, A + p));
        image.insert(A + p, node22(A + p, 3 * p - 0x1000));
        image.insert(A + 2 * p, [A + 2 * p + 8; 8]);
        image.insert(A + 5 * p, node20(A + 5 * p, p, A + 6 * p));
        image.insert(A + 6 * p, [7; 8]);
        let image = Image(image);
        let absent = A + 4 * p;
        let mut asked = Vec::new();
        let mut resident = |pages: &[(u64, ())]| {
            asked.extend(pages.iter().map(|&(a, ())| a));
            Ok(pages.iter().map(|&(a, ())| a != absent).collect())
        };
        let mut budget = 100;
        let found = chunks_in((A, A + 7 * p), &image, &mut resident, &mut budget)
            .expect("reads")
            .expect("within budget");
        assert_eq!(
            found,
            vec![
                (A, A + p),
                (A + p, A + 4 * p - 0x1000),
                (A + 5 * p, A + 6 * p)
            ]
        );
        // Read: A, A+p, A+5p, A+6p (the large chunk's inner boundaries and the absent page
        // are skipped).
        assert_eq!(budget, 96);
        assert!(asked.contains(&absent));

        let mut resident = |pages: &[(u64, ())]| Ok(vec![true; pages.len()]);
        let mut short = 2;
        let cut = chunks_in((A, A + 7 * p), &image, &mut resident, &mut short).expect("reads");
        assert_eq!(
            cut, None,
            "a mapping the budget does not cover is not half-counted"
        );
    }

    /// This process has no V8: its own anonymous mappings hold no chunk, and each is read once.
    #[test]
    fn a_process_without_v8_has_no_chunks() {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let anonymous: Vec<(u64, u64)> = crate::process::maps::parse(&maps)
            .into_iter()
            .filter(|m| m.path.is_none() && m.perms.starts_with(b"r"))
            .map(|m| (m.start, m.end))
            .collect();
        let mut finder = Finder::new(std::process::id());
        assert_eq!(finder.chunks(&anonymous), vec![]);
        assert_eq!(finder.seen.len(), anonymous.len());
    }
}
