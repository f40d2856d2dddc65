//! Watch mode's resident bytes per stack: which of the pages a stack populated are still in
//! its process's resident set.
//!
//! The probes keep, for every sampled page fault, the page and the stack that populated it
//! (`PAGES`). A page a process gave back (a `free`d large block, a collector's `madvise`, an
//! unmapped region) faults again when reused and is charged to whoever touches it then; one it
//! keeps stays resident. So the pages still present, by populating stack, are to page faults
//! what live blocks are to allocator calls: each stack's share of the resident set, whose
//! growth is a leak and whose saw-tooth is churn. Presence is read from `/proc/PID/pagemap`
//! (read-only, the process is never stopped); pages found gone are dropped from the map, which
//! so holds only what is resident.

use std::{collections::HashMap, fs::File, io, os::unix::fs::FileExt as _};

use leaktrace_common::{PAGE_BYTES, PageKey, StackKey};

use super::{CollectError, Snapshot};
use crate::probe::Probes;

/// A pagemap entry's "present in RAM" bit...
const PRESENT: u64 = 1 << 63;
/// ...and its "swapped out" bit: a swapped page is still the process's memory.
const SWAPPED: u64 = 1 << 62;
/// Pages apart that are still read in one call: sampled pages cluster in the regions being
/// populated, and one read of a few hundred entries costs less than a call per page.
const RUN_PAGES: u64 = 512;

/// Replaces the live figures of every populated site in `snapshot` by its resident pages, each
/// sampled page standing for `period` pages, and drops the pages found gone from the probes'
/// map. A process whose pagemap cannot be read (it is gone) keeps its pages for next time.
pub fn apply(
    probes: &mut Probes,
    snapshot: &mut Snapshot,
    period: u64,
) -> Result<(), CollectError> {
    let pages = probes.pages().map_err(CollectError::Batch)?;
    let mut by_process: HashMap<u32, Vec<(u64, StackKey)>> = HashMap::new();
    for (page, site) in pages {
        by_process
            .entry(page.tgid)
            .or_default()
            .push((page.page, site));
    }
    let mut resident: HashMap<StackKey, i64> = HashMap::new();
    let mut gone = Vec::new();
    for (tgid, mut pages) in by_process {
        let Ok(pagemap) = File::open(format!("/proc/{tgid}/pagemap")) else {
            continue;
        };
        pages.sort_unstable_by_key(|&(page, _)| page);
        let Ok(held) = held(&pagemap, &pages) else {
            continue;
        };
        for ((page, site), held) in pages.into_iter().zip(held) {
            if held {
                *resident.entry(site).or_default() += 1;
            } else {
                gone.push(PageKey {
                    tgid,
                    _pad: 0,
                    page,
                });
            }
        }
    }
    probes.drop_pages(&gone);
    let pages_per_sample = i64::try_from(period).unwrap_or(i64::MAX);
    for (key, stats) in snapshot.sites.iter_mut().filter(|(k, _)| k.is_populated()) {
        let pages = resident.get(key).copied().unwrap_or(0) * pages_per_sample;
        stats.live_allocs = pages;
        stats.live_bytes = pages * PAGE_BYTES as i64;
    }
    Ok(())
}

/// Whether each page (sorted by address) is present or swapped, reading runs of nearby pages'
/// entries at once.
fn held(pagemap: &File, pages: &[(u64, StackKey)]) -> io::Result<Vec<bool>> {
    let mut out = Vec::with_capacity(pages.len());
    let mut start = 0;
    while start < pages.len() {
        let first = pages[start].0 / PAGE_BYTES;
        let mut end = start + 1;
        while end < pages.len() && pages[end].0 / PAGE_BYTES - first < RUN_PAGES {
            end += 1;
        }
        let last = pages[end - 1].0 / PAGE_BYTES;
        let mut entries = vec![0u8; ((last - first + 1) * 8) as usize];
        pagemap.read_exact_at(&mut entries, first * 8)?;
        for &(page, _) in &pages[start..end] {
            let at = ((page / PAGE_BYTES - first) * 8) as usize;
            let entry = u64::from_ne_bytes(entries[at..at + 8].try_into().expect("8 bytes"));
            out.push(entry & (PRESENT | SWAPPED) != 0);
        }
        start = end;
    }
    Ok(out)
}
