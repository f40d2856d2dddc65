//! Watch mode's resident bytes per stack: which of the pages a stack populated are still in
//! its process's resident set.
//!
//! The probes send, for every sampled page fault, the page and the stack that populated it
//! through a ring (`PAGE_EVENTS`); the tracer keeps the last record of each page. A page a
//! process gave back (a `free`d large block, a collector's `madvise`, an unmapped region)
//! faults again when reused and is charged to whoever touches it then; one it keeps stays
//! resident. So the pages still present, by populating stack, are to page faults what live
//! blocks are to allocator calls: each stack's share of the resident set, whose growth is a
//! leak and whose saw-tooth is churn. Presence is read from `/proc/PID/pagemap` (read-only, the
//! process is never stopped); pages found gone at two readings in a row are forgotten, so the
//! tracer holds only what is resident. Addresses are reused (a region unmapped, another mapped
//! in its place and populated): each record carries its fault's time, and a record that a
//! newer fault replaced while pagemap was read is judged at the next reading.
//!
//! A transparent huge page is populated by one fault for 512 base pages. Each resident page's
//! frame is looked up once in `/proc/kpageflags`: a page inside a huge page counts its share of
//! the 512 (several sampled pages of one huge page, which `khugepaged` made of faulted base
//! pages, share them), and the fault that mapped one is credited the other 511 populated.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    io,
    os::unix::fs::FileExt as _,
    time::{Duration, Instant},
};

use leaktrace_common::{Counter, PAGE_BYTES, PageFault, StackKey};

use super::{CollectError, Snapshot};
use crate::{
    probe::Probes,
    process::{
        pagemap::{PFN, PRESENT, Pagemap, SWAPPED},
        stat::thread_cpu_time,
    },
};

/// The maps a pass hashes into by stack or huge page. foldhash, seeded per process, takes a
/// fraction of std's SipHash, whose resistance to chosen keys buys nothing for values the probes
/// made.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = HashSet<K, foldhash::fast::RandomState>;

/// `/proc/kpageflags`: the frame belongs to a transparent huge page.
const KPF_THP: u64 = 1 << 22;
/// Base pages in a (PMD-sized) transparent huge page, which is aligned to its size in frames.
const HUGE_PAGES: u64 = 512;
/// Pages apart that are still read in one call: sampled pages cluster in the regions being
/// populated, and one read of a few hundred entries costs less than a call per page.
const RUN_PAGES: u64 = 512;

/// One sampled page: its last record, and what the passes found of it.
#[derive(Clone, Copy)]
struct Page {
    fault: PageFault,
    /// Whether `frame` and `huge` were read for this record's fault: a page given back and
    /// populated again is a new page, whose huge page (if any) its own fault mapped.
    seen: bool,
    /// The frame the page was in at the last pass that found it resident, looked up in
    /// `/proc/kpageflags` again only when it changes (`khugepaged` collapsed base pages into a
    /// huge page, or the page moved).
    frame: u64,
    /// The first frame of the huge page `frame` lies in; 0: a base page, or not resident.
    huge: u64,
    /// Found not present at the last pass: dropped if still so at the next. A fault's sample
    /// comes before the kernel maps the page, so a page read in between (zeroing a huge page
    /// takes a while) is not present yet, not gone.
    absent: bool,
}

impl Page {
    fn new(fault: PageFault) -> Self {
        Self {
            fault,
            seen: false,
            frame: 0,
            huge: 0,
            absent: false,
        }
    }
}

/// What the tracer knows of the pages the probes recorded, across samples.
#[derive(Default)]
pub struct Residency {
    /// Each process's sampled pages not yet found gone, by address: a pass walks them in
    /// address order, as pagemap is read, without sorting or hashing them.
    records: HashMap<u32, BTreeMap<u64, Page>>,
    /// The pages in `records`.
    count: usize,
    /// At most this many records are kept (`--max-pages`); the pages of faults past it are
    /// counted, by process, as [`Counter::PageMapFull`].
    max_pages: usize,
    refused: HashMap<u32, u64>,
    /// Huge pages whose populating fault was credited its 511 other pages.
    credited: Set<(u32, u64)>,
    /// Those credits, by the stack of the fault, in pages.
    huge_extra: HashMap<StackKey, u64>,
    /// `/proc/kpageflags`, when this tracer may read it.
    flags: Option<File>,
    /// Resident base pages by stack at the last pass, in 512ths of a page.
    resident: Map<StackKey, u64>,
    /// When the last pass started, and the CPU time it took.
    last_pass: Option<(Instant, Duration)>,
    /// When the first pass started (see [`EARLY`]).
    first_pass: Option<Instant>,
    /// Processes whose pagemap could not be opened though they live, and why.
    unreadable: HashMap<u32, String>,
}

/// A pass reads every recorded page once from pagemap and walks their records: its cost grows
/// with what the targets hold (a service with 500 MiB resident has 128 k pages; on the bench's
/// leaking service a pass over 45 k pages took 5-7 ms, 130 ns a page). It runs at most once
/// every this many times the CPU time of its last one, so that it takes at most 0.03 % of a CPU
/// however much is resident (at 0.1 % it was a quarter of watch mode's CPU on that service, what
/// a service left under watch pays most directly); in between, each stack keeps the resident
/// figures of the last pass (new faults still count as populated at once). A trace's last
/// sample always runs one.
const COST_RATIO: u32 = 3000;

/// For this long from the first pass, passes run at up to 1 % of a CPU: a short trace (an
/// incident responder's minute, a test) gets its residency series from its first seconds, and
/// a trace left running settles at its steady cost. Counted in time, not passes: at watch
/// mode's 5-s interval, thirty early passes had lasted two and a half minutes.
const EARLY: Duration = Duration::from_secs(60);
const EARLY_COST_RATIO: u32 = 100;

impl Residency {
    pub fn new(max_pages: u32) -> Self {
        Self {
            flags: File::open("/proc/kpageflags").ok(),
            max_pages: max_pages as usize,
            ..Self::default()
        }
    }

    /// Takes in the faults the probes sampled since the last call. Cheap when there are none:
    /// called at every sample and every read of the side-band, so that the probes' ring never
    /// fills between passes.
    pub fn drain(&mut self, probes: &mut Probes) {
        let (records, count, refused, max) = (
            &mut self.records,
            &mut self.count,
            &mut self.refused,
            self.max_pages,
        );
        probes.drain_pages(|record| {
            let pages = records.entry(record.page.tgid).or_default();
            match pages.get_mut(&record.page.page) {
                // A new fault on a known page: what was read of its frame stays until the next
                // pass, which judges the new record (a huge page it belongs to stays credited).
                Some(page) if page.fault.at_ns != record.fault.at_ns => {
                    page.fault = record.fault;
                    page.seen = false;
                    page.absent = false;
                }
                Some(_) => {}
                None if *count >= max => *refused.entry(record.page.tgid).or_default() += 1,
                None => {
                    pages.insert(record.page.page, Page::new(record.fault));
                    *count += 1;
                }
            }
        });
    }

    /// Replaces the live figures of every populated site in `snapshot` by its resident pages
    /// at the last pass, each sampled page standing for `period` pages, and adds the pages
    /// huge-page faults populated beyond the one counted. Runs a pass first when one is due
    /// (see [`COST_RATIO`]) or `last`.
    pub fn apply(
        &mut self,
        probes: &mut Probes,
        snapshot: &mut Snapshot,
        period: u64,
        last: bool,
    ) -> Result<(), CollectError> {
        let ratio = if self.first_pass.is_none_or(|at| at.elapsed() < EARLY) {
            EARLY_COST_RATIO
        } else {
            COST_RATIO
        };
        let due = self
            .last_pass
            .is_none_or(|(at, cost)| at.elapsed() >= cost * ratio);
        self.drain(probes);
        for (tgid, &refused) in &self.refused {
            if let Some(counters) = snapshot.counters.get_mut(tgid) {
                counters[Counter::PageMapFull as usize] += refused;
            }
        }
        if last || due {
            let (started, cpu) = (Instant::now(), thread_cpu_time());
            self.pass(probes)?;
            let cost = thread_cpu_time().saturating_sub(cpu);
            tracing::debug!(
                pages = self.count,
                cpu_us = cost.as_micros() as u64,
                "residency pass"
            );
            self.last_pass = Some((started, cost));
            self.first_pass.get_or_insert(started);
        }
        let period = i64::try_from(period).unwrap_or(i64::MAX);
        let page = PAGE_BYTES as i64;
        for (key, stats) in snapshot.sites.iter_mut().filter(|(k, _)| k.is_populated()) {
            let pages = self
                .resident
                .get(key)
                .map_or(0, |&n| (n / HUGE_PAGES) as i64)
                * period;
            stats.live_allocs = pages;
            stats.live_bytes = pages * page;
            let extra = self.huge_extra.get(key).map_or(0, |&n| n as i64) * period;
            stats.alloc_bytes += (extra * page) as u64;
        }
        Ok(())
    }

    /// Finds which recorded pages are resident, by stack, and forgets the pages found gone and
    /// those of processes that are gone.
    fn pass(&mut self, probes: &mut Probes) -> Result<(), CollectError> {
        let mut read = Vec::new();
        let mut vanished = Vec::new();
        for (&tgid, pages) in &self.records {
            let pagemap = match Pagemap::open(tgid) {
                Ok(pagemap) => pagemap,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    vanished.push(tgid);
                    continue;
                }
                Err(err) => {
                    self.unreadable.insert(tgid, err.to_string());
                    continue;
                }
            };
            let listed: Vec<(u64, u64)> = pages
                .iter()
                .map(|(&page, record)| (page, record.fault.at_ns))
                .collect();
            if let Ok(entries) = pagemap.entries_of(&listed, RUN_PAGES) {
                read.push((tgid, listed, entries));
            }
        }
        for tgid in vanished {
            if let Some(pages) = self.records.remove(&tgid) {
                self.count -= pages.len();
            }
        }
        // A record a fault replaced while the pages were read (the page given back and its
        // address populated again) may not match what pagemap said: it waits for the next
        // reading. The others were the pages' records throughout.
        self.drain(probes);
        // Resident base pages by stack, in 512ths of a page so huge pages split exactly.
        let mut resident: Map<StackKey, u64> = Map::default();
        let flags = self.flags.as_ref();
        for (tgid, listed, entries) in read {
            let Some(pages) = self.records.get_mut(&tgid) else {
                continue;
            };
            let mut held = Vec::new();
            let mut gone = Vec::new();
            // The records are in address order, as `listed` is: one walk pairs them, past the
            // pages the drain just added.
            let mut records = pages.iter_mut().peekable();
            for ((page, at_ns), entry) in listed.into_iter().zip(entries) {
                while records.next_if(|(at, _)| **at < page).is_some() {}
                let Some((_, record)) = records.next_if(|(at, _)| **at == page) else {
                    continue;
                };
                if record.fault.at_ns != at_ns {
                    continue;
                }
                if entry & (PRESENT | SWAPPED) == 0 {
                    (record.seen, record.frame, record.huge) = (false, 0, 0);
                    if record.absent {
                        gone.push(page);
                    }
                    record.absent = true;
                    continue;
                }
                record.absent = false;
                let frame = if entry & PRESENT != 0 { entry & PFN } else { 0 };
                if !record.seen || record.frame != frame {
                    let huge = huge_page_of(flags, frame);
                    // Only a huge page the fault itself mapped was populated by it; one
                    // collapsed later is resident, not populated, by that stack.
                    if !record.seen && huge != 0 && self.credited.insert((tgid, huge)) {
                        *self.huge_extra.entry(record.fault.site).or_default() += HUGE_PAGES - 1;
                    }
                    (record.seen, record.frame, record.huge) = (true, frame, huge);
                }
                held.push((record.fault.site, record.huge));
            }
            for page in gone {
                pages.remove(&page);
                self.count -= 1;
            }
            let mut sharing: Map<u64, u64> = Map::default();
            for &(_, huge) in held.iter().filter(|(_, huge)| *huge != 0) {
                *sharing.entry(huge).or_default() += 1;
            }
            // Neighbouring pages mostly share their stack: one addition per run of them.
            let mut run: Option<(StackKey, u64)> = None;
            for (site, huge) in held {
                let share = match huge {
                    0 => HUGE_PAGES,
                    huge => HUGE_PAGES * HUGE_PAGES / sharing[&huge],
                };
                match &mut run {
                    Some((key, sum)) if *key == site => *sum += share,
                    _ => {
                        if let Some((key, sum)) = run.replace((site, share)) {
                            *resident.entry(key).or_default() += sum;
                        }
                    }
                }
            }
            if let Some((key, sum)) = run {
                *resident.entry(key).or_default() += sum;
            }
        }
        self.records.retain(|_, pages| !pages.is_empty());
        // A huge page none of whose sampled pages is resident any more is gone: its frames may
        // back another one later, which is credited anew.
        if !self.credited.is_empty() {
            let backed: Set<(u32, u64)> = self
                .records
                .iter()
                .flat_map(|(&tgid, pages)| {
                    pages
                        .values()
                        .filter(|page| page.huge != 0)
                        .map(move |page| (tgid, page.huge))
                })
                .collect();
            self.credited.retain(|credit| backed.contains(credit));
        }
        self.resident = resident;
        Ok(())
    }

    /// Why the resident pages of `pid` cannot be read, if they cannot.
    pub fn problem(&self, pid: u32) -> Option<&str> {
        self.unreadable.get(&pid).map(String::as_str)
    }

    /// Forgets a process's pages.
    pub fn forget(&mut self, pid: u32) {
        if let Some(pages) = self.records.remove(&pid) {
            self.count -= pages.len();
        }
        self.refused.remove(&pid);
        self.unreadable.remove(&pid);
        self.credited.retain(|(tgid, _)| *tgid != pid);
        self.huge_extra.retain(|k, _| k.tgid != pid);
        self.resident.retain(|k, _| k.tgid != pid);
    }
}

/// The first frame of the transparent huge page holding frame `pfn`, or 0.
fn huge_page_of(flags: Option<&File>, pfn: u64) -> u64 {
    let (Some(flags), true) = (flags, pfn != 0) else {
        return 0;
    };
    let mut word = [0u8; 8];
    match flags.read_exact_at(&mut word, pfn * 8) {
        Ok(()) if u64::from_ne_bytes(word) & KPF_THP != 0 => pfn & !(HUGE_PAGES - 1),
        _ => 0,
    }
}
