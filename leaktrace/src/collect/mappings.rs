//! The anonymous mappings of each target, kept as address ranges from the probes' mapping
//! events.
//!
//! A mapping's pages belong to the call that mapped them. `munmap`, or a `MAP_FIXED` mapping on
//! top, takes away only the pages it covers; `mremap` keeps the range's site at its new place and
//! size (growth counts as allocated by that site); `mprotect` moves pages between live (readable,
//! writable or executable) and reserved (`PROT_NONE`: address space, not memory). A site's live
//! count is the number of its calls with a page still mapped. File mappings are left out: their
//! pages are the file's, shared and reclaimable.

use std::collections::{BTreeMap, HashMap};

use leaktrace_common::{MapEvent, MapOp, StackKey};

use super::StackMap;

const PAGE: u64 = 4096;
const MAP_FIXED: u32 = 0x10;
const MAP_ANONYMOUS: u32 = 0x20;

/// A syscall's return value that is an error (a negative errno, -4095..=-1).
fn failed(ret: i64) -> bool {
    (-4095..0).contains(&ret)
}

/// `len` rounded up to whole pages, as the kernel maps it (`None` when it overflows).
fn pages(len: u64) -> Option<u64> {
    len.checked_add(PAGE - 1).map(|l| l & !(PAGE - 1))
}

/// One range of pages from one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    end: u64,
    site: StackKey,
    /// Which mapping call made it: pieces of one call count as one live mapping.
    call: u64,
    /// Not `PROT_NONE`.
    accessible: bool,
}

/// What one site's mappings add up to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteMappings {
    /// Bytes mapped with some access.
    pub live_bytes: u64,
    /// Bytes mapped `PROT_NONE`: reserved address space.
    pub reserved_bytes: u64,
    /// Calls with a page still mapped.
    pub live_calls: u64,
    /// Every byte ever mapped here (with growth by `mremap`).
    pub allocated_bytes: u64,
    pub calls: u64,
}

/// One process's mappings.
#[derive(Debug, Default)]
struct Process {
    regions: BTreeMap<u64, Region>,
    /// Ranges lifted out at a syscall's entry, by thread, until its exit says what became of
    /// them.
    lifted: HashMap<u32, (u64, Vec<(u64, Region)>)>,
    allocated: StackMap<(u64, u64)>,
    next_call: u64,
}

impl Process {
    /// Cuts `[start, end)` out of the regions and returns what was there.
    fn remove(&mut self, start: u64, end: u64) -> Vec<(u64, Region)> {
        let mut cut = Vec::new();
        if start >= end {
            return cut;
        }
        // The region that starts before `start` may reach into the range.
        let first = self
            .regions
            .range(..start)
            .next_back()
            .filter(|(_, r)| r.end > start)
            .map(|(&s, _)| s)
            .unwrap_or(start);
        let starts: Vec<u64> = self.regions.range(first..end).map(|(&s, _)| s).collect();
        for s in starts {
            let region = self.regions.remove(&s).expect("listed just now");
            if s < start {
                self.regions.insert(
                    s,
                    Region {
                        end: start,
                        ..region
                    },
                );
            }
            if region.end > end {
                self.regions.insert(end, region);
            }
            let (from, to) = (s.max(start), region.end.min(end));
            cut.push((from, Region { end: to, ..region }));
        }
        cut
    }

    fn restore(&mut self, pieces: Vec<(u64, Region)>) {
        for (start, region) in pieces {
            self.regions.insert(start, region);
        }
    }

    fn map(&mut self, start: u64, len: u64, site: StackKey, accessible: bool) {
        let end = start.saturating_add(len);
        self.remove(start, end);
        self.next_call += 1;
        self.regions.insert(
            start,
            Region {
                end,
                site,
                call: self.next_call,
                accessible,
            },
        );
        let entry = self.allocated.entry(site).or_default();
        entry.0 += len;
        entry.1 += 1;
    }

    /// Places the pieces lifted from `old` at `new`, cut or grown to `len` bytes.
    fn remap(&mut self, old: u64, pieces: Vec<(u64, Region)>, new: u64, len: u64) {
        let end = new.saturating_add(len);
        let mut last: Option<Region> = None;
        let mut covered = new;
        self.remove(new, end);
        for (start, region) in pieces {
            let (from, to) = (start - old + new, region.end - old + new);
            if from >= end {
                continue;
            }
            let to = to.min(end);
            self.regions.insert(from, Region { end: to, ..region });
            covered = covered.max(to);
            last = Some(region);
        }
        // Growth belongs to the site of the range's end.
        if let Some(region) = last
            && covered < end
        {
            self.regions.insert(covered, Region { end, ..region });
            self.allocated.entry(region.site).or_default().0 += end - covered;
        }
    }

    fn protect(&mut self, start: u64, end: u64, accessible: bool) {
        let pieces = self.remove(start, end);
        self.restore(
            pieces
                .into_iter()
                .map(|(s, r)| (s, Region { accessible, ..r }))
                .collect(),
        );
    }

    fn apply(&mut self, event: &MapEvent) {
        let op = event.op;
        let range = |len: u64| {
            let end = pages(len).and_then(|l| event.addr.checked_add(l))?;
            (event.addr.is_multiple_of(PAGE) && len > 0).then_some((event.addr, end))
        };
        if op == MapOp::Unmap as u32 {
            if let Some((start, end)) = range(event.len) {
                self.remove(start, end);
            }
        } else if op == MapOp::FixedBegin as u32 || op == MapOp::RemapBegin as u32 {
            let pieces = range(event.len).map_or_else(Vec::new, |(s, e)| self.remove(s, e));
            self.lifted.insert(event.tid, (event.addr, pieces));
        } else if op == MapOp::Map as u32 {
            let lifted = if event.flags & MAP_FIXED != 0 {
                self.lifted.remove(&event.tid)
            } else {
                None
            };
            if failed(event.ret) {
                if let Some((_, pieces)) = lifted {
                    self.restore(pieces);
                }
                return;
            }
            if event.flags & MAP_ANONYMOUS != 0
                && let Some(len) = pages(event.len).filter(|&l| l > 0)
            {
                self.map(event.ret as u64, len, event.site, event.prot != 0);
            }
        } else if op == MapOp::Remap as u32 {
            let Some((old, pieces)) = self.lifted.remove(&event.tid) else {
                return;
            };
            match pages(event.new_len) {
                Some(len) if !failed(event.ret) => self.remap(old, pieces, event.ret as u64, len),
                _ => self.restore(pieces),
            }
        } else if op == MapOp::Protect as u32
            && let Some((start, end)) = range(event.len)
        {
            self.protect(start, end, event.prot != 0);
        } else if op == MapOp::Exec as u32 {
            // What was mapped went with the old image; what it allocated stays said.
            self.regions.clear();
            self.lifted.clear();
        }
    }

    fn sites(&self) -> StackMap<SiteMappings> {
        let mut sites: StackMap<SiteMappings> = StackMap::default();
        let mut calls: StackMap<Vec<u64>> = StackMap::default();
        for (&start, region) in &self.regions {
            let site = sites.entry(region.site).or_default();
            let bytes = region.end - start;
            if region.accessible {
                site.live_bytes += bytes;
            } else {
                site.reserved_bytes += bytes;
            }
            calls.entry(region.site).or_default().push(region.call);
        }
        for (site, mut ids) in calls {
            ids.sort_unstable();
            ids.dedup();
            sites.entry(site).or_default().live_calls = ids.len() as u64;
        }
        for (site, &(bytes, count)) in &self.allocated {
            let entry = sites.entry(*site).or_default();
            entry.allocated_bytes = bytes;
            entry.calls = count;
        }
        sites
    }
}

/// The anonymous mappings of every target.
#[derive(Debug, Default)]
pub struct Mappings {
    processes: HashMap<u32, Process>,
}

impl Mappings {
    /// Applies one event, in ring order.
    pub fn apply(&mut self, event: &MapEvent) {
        self.processes.entry(event.tgid).or_default().apply(event);
    }

    /// Every site's mappings, over all targets.
    pub fn sites(&self) -> StackMap<SiteMappings> {
        self.processes.values().flat_map(Process::sites).collect()
    }

    /// The accessible (not `PROT_NONE`) ranges of `pid` and the site that mapped each.
    pub fn accessible(&self, pid: u32) -> impl Iterator<Item = (u64, u64, StackKey)> + '_ {
        self.processes
            .get(&pid)
            .into_iter()
            .flat_map(|p| p.regions.iter())
            .filter(|(_, r)| r.accessible)
            .map(|(&start, r)| (start, r.end, r.site))
    }

    /// Drops a process's mappings: it exec'd a new image (the old address space is gone), or
    /// it is forgotten.
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use leaktrace_common::AllocKind;

    use super::*;

    const K: u64 = 1024;
    const RW: u32 = 3;
    const ANON: u32 = 0x22;

    fn site(n: u64) -> StackKey {
        StackKey {
            tgid: 7,
            kind: AllocKind::Mmap as u32,
            stack: n,
            js_id: 0,
        }
    }

    fn event(op: MapOp, addr: u64, len: u64) -> MapEvent {
        MapEvent {
            tgid: 7,
            tid: 7,
            op: op as u32,
            addr,
            len,
            ..MapEvent::default()
        }
    }

    fn mmap(m: &mut Mappings, at: u64, len: u64, prot: u32, flags: u32, s: u64) {
        if flags & MAP_FIXED != 0 {
            m.apply(&event(MapOp::FixedBegin, at, len));
        }
        m.apply(&MapEvent {
            prot,
            flags,
            ret: at as i64,
            site: site(s),
            ..event(MapOp::Map, at, len)
        });
    }

    fn totals(m: &Mappings, s: u64) -> SiteMappings {
        m.sites().get(&site(s)).copied().unwrap_or_default()
    }

    fn of(live: u64, reserved: u64, calls_live: u64, allocated: u64, calls: u64) -> SiteMappings {
        SiteMappings {
            live_bytes: live,
            reserved_bytes: reserved,
            live_calls: calls_live,
            allocated_bytes: allocated,
            calls,
        }
    }

    #[test]
    fn a_partial_unmap_leaves_one_mapping_in_two_pieces() {
        let mut m = Mappings::default();
        mmap(&mut m, 0x10_0000, 256 * K, RW, ANON, 1);
        m.apply(&event(MapOp::Unmap, 0x10_0000 + 96 * K, 64 * K));
        assert_eq!(totals(&m, 1), of(192 * K, 0, 1, 256 * K, 1));
        m.apply(&event(MapOp::Unmap, 0x10_0000, 256 * K));
        assert_eq!(totals(&m, 1), of(0, 0, 0, 256 * K, 1));
    }

    #[test]
    fn map_fixed_takes_only_what_it_covers() {
        let mut m = Mappings::default();
        mmap(&mut m, 0x20_0000, 128 * K, RW, ANON, 1);
        mmap(&mut m, 0x20_0000 + 64 * K, 64 * K, RW, ANON | MAP_FIXED, 2);
        assert_eq!(totals(&m, 1), of(64 * K, 0, 1, 128 * K, 1));
        assert_eq!(totals(&m, 2), of(64 * K, 0, 1, 64 * K, 1));
    }

    #[test]
    fn a_failed_map_fixed_puts_back_what_it_lifted() {
        let mut m = Mappings::default();
        mmap(&mut m, 0x20_0000, 128 * K, RW, ANON, 1);
        m.apply(&event(MapOp::FixedBegin, 0x20_0000, 64 * K));
        m.apply(&MapEvent {
            flags: ANON | MAP_FIXED,
            ret: -12,
            ..event(MapOp::Map, 0x20_0000, 64 * K)
        });
        assert_eq!(totals(&m, 1), of(128 * K, 0, 1, 128 * K, 1));
    }

    #[test]
    fn mremap_moves_and_grows_keeping_the_site() {
        let mut m = Mappings::default();
        mmap(&mut m, 0x30_0000, 64 * K, RW, ANON, 1);
        m.apply(&event(MapOp::RemapBegin, 0x30_0000, 64 * K));
        m.apply(&MapEvent {
            new_len: 192 * K,
            ret: 0x90_0000,
            ..event(MapOp::Remap, 0x30_0000, 64 * K)
        });
        assert_eq!(totals(&m, 1), of(192 * K, 0, 1, 192 * K, 1));
        // Shrinking in place gives pages back.
        m.apply(&event(MapOp::RemapBegin, 0x90_0000, 192 * K));
        m.apply(&MapEvent {
            new_len: 32 * K,
            ret: 0x90_0000,
            ..event(MapOp::Remap, 0x90_0000, 192 * K)
        });
        assert_eq!(totals(&m, 1), of(32 * K, 0, 1, 192 * K, 1));
        // The old place is free again.
        m.apply(&event(MapOp::Unmap, 0x30_0000, 64 * K));
        assert_eq!(totals(&m, 1).live_bytes, 32 * K);
    }

    #[test]
    fn a_failed_mremap_leaves_the_range_where_it_was() {
        let mut m = Mappings::default();
        mmap(&mut m, 0x30_0000, 64 * K, RW, ANON, 1);
        m.apply(&event(MapOp::RemapBegin, 0x30_0000, 64 * K));
        m.apply(&MapEvent {
            new_len: 1 << 40,
            ret: -12,
            ..event(MapOp::Remap, 0x30_0000, 64 * K)
        });
        assert_eq!(totals(&m, 1), of(64 * K, 0, 1, 64 * K, 1));
    }

    #[test]
    fn reservations_are_not_live_until_committed() {
        let mut m = Mappings::default();
        mmap(&mut m, 0x40_0000, 1024 * K, 0, ANON, 1);
        assert_eq!(totals(&m, 1), of(0, 1024 * K, 1, 1024 * K, 1));
        m.apply(&MapEvent {
            prot: RW,
            ..event(MapOp::Protect, 0x40_0000, 64 * K)
        });
        assert_eq!(totals(&m, 1), of(64 * K, 960 * K, 1, 1024 * K, 1));
    }

    #[test]
    fn file_mappings_are_left_out_and_bad_ranges_ignored() {
        let mut m = Mappings::default();
        mmap(&mut m, 0x50_0000, 4 * K, 1, 0x02, 1);
        assert_eq!(totals(&m, 1), SiteMappings::default());
        mmap(&mut m, 0x50_0000, 4 * K, RW, ANON, 2);
        // Unaligned, empty and overflowing unmaps fail in the kernel: nothing changes.
        m.apply(&event(MapOp::Unmap, 0x50_0001, 4 * K));
        m.apply(&event(MapOp::Unmap, 0x50_0000, 0));
        m.apply(&event(MapOp::Unmap, 0x50_0000, u64::MAX));
        assert_eq!(totals(&m, 2).live_bytes, 4 * K);
        // An end without its beginning (lost to a full ring) changes nothing either.
        m.apply(&MapEvent {
            new_len: 8 * K,
            ret: 0x60_0000,
            ..event(MapOp::Remap, 0x50_0000, 4 * K)
        });
        assert_eq!(totals(&m, 2).live_bytes, 4 * K);
    }
}
