//! `/proc/PID/pagemap`: one 8-byte entry per virtual page of a process, saying whether the page
//! is in RAM (and in which frame, to root) or swapped out. Read in runs with positioned reads,
//! never written, without stopping the process. Watch mode reads it for the pages faults
//! populated; the resident set's breakdown for the parts of mappings a class owns.

use std::{fs::File, io, os::unix::fs::FileExt as _};

use leaktrace_common::PAGE_BYTES;

/// An entry's "present in RAM" bit: what `Rss` counts.
pub const PRESENT: u64 = 1 << 63;
/// An entry's "swapped out" bit: a swapped page is still the process's memory.
pub const SWAPPED: u64 = 1 << 62;
/// An entry's page frame number (visible to root only; 0 otherwise).
pub const PFN: u64 = (1 << 55) - 1;

/// One process's pagemap, open for reading.
pub struct Pagemap(File);

impl Pagemap {
    pub fn open(pid: u32) -> io::Result<Self> {
        File::open(format!("/proc/{pid}/pagemap")).map(Self)
    }

    /// The entries of the pages from page number `first` (address / [`PAGE_BYTES`]) on, one
    /// per element of `entries`, in one read.
    pub fn read(&self, first: u64, entries: &mut [u64]) -> io::Result<()> {
        let mut raw = vec![0u8; entries.len() * 8];
        self.0.read_exact_at(&mut raw, first * 8)?;
        for (entry, bytes) in entries.iter_mut().zip(raw.as_chunks::<8>().0) {
            *entry = u64::from_ne_bytes(*bytes);
        }
        Ok(())
    }

    /// The entry of each page of `pages` (addresses, sorted), reading the entries of pages
    /// fewer than `run` apart in one call: sampled pages cluster in the regions being
    /// populated, and one read of a few hundred entries costs less than a call per page.
    pub fn entries_of<T>(&self, pages: &[(u64, T)], run: u64) -> io::Result<Vec<u64>> {
        let mut out = Vec::with_capacity(pages.len());
        let mut buf = Vec::new();
        let mut start = 0;
        while start < pages.len() {
            let first = pages[start].0 / PAGE_BYTES;
            let mut end = start + 1;
            while end < pages.len() && pages[end].0 / PAGE_BYTES - first < run {
                end += 1;
            }
            let last = pages[end - 1].0 / PAGE_BYTES;
            buf.resize((last - first + 1) as usize, 0);
            self.read(first, &mut buf)?;
            out.extend(
                pages[start..end]
                    .iter()
                    .map(|&(page, _)| buf[(page / PAGE_BYTES - first) as usize]),
            );
            start = end;
        }
        Ok(out)
    }
}
