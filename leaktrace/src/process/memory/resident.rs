//! Resident bytes of arbitrary address ranges, from `/proc/PID/pagemap`.
//!
//! `smaps` counts the resident pages of whole mappings, but the kernel merges neighbouring
//! anonymous mappings with the same protection into one: V8's heap pages and the allocator's own
//! `mmap`ed blocks often share a line of `smaps`. Where a class owns only part of a mapping, its
//! pages are looked up one by one ([`Pagemap`], read in runs).

use std::io;

use leaktrace_common::PAGE_BYTES as PAGE;

use crate::process::pagemap::{PRESENT, Pagemap};

/// A process's resident set from `/proc/PID/statm` (the kernel's counters: no page walk, no
/// lock of its memory map); `None` once it is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE)
}

/// Pagemap entries read at once.
const RUN_PAGES: u64 = 4096;

/// Resident bytes in `ranges` (`[start, end)`, page-aligned or not, in any order), reading at
/// most `max_pages` pages' entries; `truncated` says ranges past that were not counted.
pub fn resident_bytes(pid: u32, ranges: &[(u64, u64)], max_pages: u64) -> io::Result<Counted> {
    count(&Pagemap::open(pid)?, ranges, max_pages)
}

/// What [`resident_bytes`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub bytes: u64,
    pub truncated: bool,
}

fn count(pagemap: &Pagemap, ranges: &[(u64, u64)], max_pages: u64) -> io::Result<Counted> {
    let mut out = Counted::default();
    let mut budget = max_pages;
    let mut entries = Vec::new();
    for &(start, end) in ranges {
        let mut page = start / PAGE;
        let last = end.div_ceil(PAGE);
        while page < last {
            if budget == 0 {
                out.truncated = true;
                return Ok(out);
            }
            let n = (last - page).min(RUN_PAGES).min(budget);
            entries.resize(n as usize, 0);
            pagemap.read(page, &mut entries)?;
            let present = entries.iter().filter(|&&e| e & PRESENT != 0).count() as u64;
            out.bytes += present * PAGE;
            budget -= n;
            page += n;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages this test maps and touches are found resident; the untouched ones are not.
    #[test]
    fn counts_the_pages_touched_and_no_other() {
        const PAGES: usize = 64;
        let mut block = vec![0u8; (PAGES + 1) * PAGE as usize];
        let base = (block.as_ptr() as u64).div_ceil(PAGE) * PAGE;
        let offset = (base - block.as_ptr() as u64) as usize;
        // Every other page touched: at least those are resident.
        for p in (0..PAGES).step_by(2) {
            block[offset + p * PAGE as usize] = 1;
        }
        let range = [(base, base + PAGES as u64 * PAGE)];
        let all = resident_bytes(std::process::id(), &range, 1 << 20).expect("pagemap");
        assert!(!all.truncated);
        assert!(all.bytes >= (PAGES as u64 / 2) * PAGE, "{all:?}");
        assert!(all.bytes <= PAGES as u64 * PAGE, "{all:?}");
        let cut = resident_bytes(std::process::id(), &range, 4).expect("pagemap");
        assert!(cut.truncated);
        assert!(cut.bytes <= 4 * PAGE);
        std::hint::black_box(&block);
    }
}
