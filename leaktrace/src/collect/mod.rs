//! Reading the probes' maps into snapshots.
//!
//! The probes keep running totals; a snapshot is those totals at one instant. Stacks are read
//! once per stack id and kept, since the kernel never reuses an id while its entry exists.

pub mod mappings;
pub mod pages;
pub mod sideband;

use std::collections::HashMap;

pub use mappings::Mappings;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use leaktrace_common::{
    JsFrame, JsFrames, NUM_COUNTERS, StackFrames, StackKey, StackStats, TargetCounters,
};

use crate::probe::Probes;

/// A map keyed by stack, as every stage keeps one (a snapshot's sites, their series, chains and
/// names). foldhash, seeded per process: std's SipHash resists chosen keys, which buys nothing
/// for keys the probes made, and was a tenth of watch mode's CPU time at a sample a second.
pub type StackMap<V> = HashMap<StackKey, V, foldhash::fast::RandomState>;

/// The probes' totals at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub sites: StackMap<StackStats>,
    /// Per target: its counters summed over CPUs, indexed by `leaktrace_common::Counter`.
    pub counters: HashMap<u32, [u64; NUM_COUNTERS]>,
    /// Mapping sites' reserved (`PROT_NONE`) bytes, apart from their live bytes.
    pub reserved: StackMap<u64>,
}

impl Snapshot {
    /// The part of this snapshot that concerns one target.
    pub fn only(&self, pid: u32) -> Snapshot {
        Snapshot {
            sites: self
                .sites
                .iter()
                .filter(|(k, _)| k.tgid == pid)
                .map(|(k, v)| (*k, *v))
                .collect(),
            counters: self
                .counters
                .iter()
                .filter(|(p, _)| **p == pid)
                .map(|(p, c)| (*p, *c))
                .collect(),
            reserved: self
                .reserved
                .iter()
                .filter(|(k, _)| k.tgid == pid)
                .map(|(k, v)| (*k, *v))
                .collect(),
        }
    }

    /// Adds the mapping sites of [`Mappings`] to the allocator's sites.
    pub fn add_mappings(&mut self, mappings: &Mappings) {
        for (key, site) in mappings.sites() {
            let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.sites.insert(
                key,
                StackStats {
                    live_bytes: as_i64(site.live_bytes),
                    live_allocs: as_i64(site.live_calls),
                    alloc_bytes: site.allocated_bytes,
                    alloc_calls: site.calls,
                },
            );
            if site.reserved_bytes > 0 {
                self.reserved.insert(key, site.reserved_bytes);
            }
        }
    }
}

/// Why the maps could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("map {0} is missing from the probes object")]
    MissingMap(&'static str),
    #[error("reading a map in batches: {0}")]
    Batch(#[source] std::io::Error),
    #[error("reading map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> CollectError {
    move |e| CollectError::Map {
        map,
        source: Box::new(e),
    }
}

/// Reads every site's totals and every target's counters.
pub fn snapshot(probes: &Probes) -> Result<Snapshot, CollectError> {
    let ebpf = probes.ebpf();
    let map = ebpf
        .map("STACK_STATS")
        .ok_or(CollectError::MissingMap("STACK_STATS"))?;
    let batched = match map {
        aya::maps::Map::HashMap(data) => crate::probe::batch::read_all::<StackKey, StackStats>(
            std::os::fd::AsFd::as_fd(data.fd()),
        )
        .map_err(CollectError::Batch)?,
        _ => None,
    };
    let sites: StackMap<StackStats> = match batched {
        Some(entries) => entries.into_iter().collect(),
        None => {
            let stats: BpfHashMap<&MapData, StackKey, StackStats> =
                BpfHashMap::try_from(map).map_err(map_err("STACK_STATS"))?;
            // An entry deleted between listing its key and reading it is simply skipped.
            stats.iter().flatten().collect()
        }
    };

    let targets: PerCpuHashMap<&MapData, u32, TargetCounters> = PerCpuHashMap::try_from(
        ebpf.map("TARGETS")
            .ok_or(CollectError::MissingMap("TARGETS"))?,
    )
    .map_err(map_err("TARGETS"))?;
    let sum = |per_cpu: &PerCpuValues<TargetCounters>| {
        let mut sum = [0u64; NUM_COUNTERS];
        for cpu in per_cpu.iter() {
            for (total, value) in sum.iter_mut().zip(cpu.values) {
                *total += value;
            }
        }
        sum
    };
    let mut counters: HashMap<u32, [u64; NUM_COUNTERS]> = targets
        .iter()
        .flatten()
        .map(|(pid, per_cpu)| (pid, sum(&per_cpu)))
        .collect();
    let slotted: PerCpuArray<&MapData, TargetCounters> = PerCpuArray::try_from(
        ebpf.map("SLOT_COUNTERS")
            .ok_or(CollectError::MissingMap("SLOT_COUNTERS"))?,
    )
    .map_err(map_err("SLOT_COUNTERS"))?;
    for (pid, slot) in probes.slots() {
        let per_cpu = slotted.get(&slot, 0).map_err(map_err("SLOT_COUNTERS"))?;
        // A target counts in both places: the allocator's probes in its slot, the others in
        // the table.
        if let Some(total) = counters.get_mut(&pid) {
            for (total, value) in total.iter_mut().zip(sum(&per_cpu)) {
                *total += value;
            }
        }
    }
    Ok(Snapshot {
        sites,
        counters,
        reserved: StackMap::default(),
    })
}

/// Call stacks by key, and their JavaScript frames by JS identity, read from the probes' maps
/// once each.
#[derive(Default)]
pub struct StackCache {
    stacks: HashMap<u64, Vec<u64>>,
    js: HashMap<u64, JsSequence>,
}

/// The JavaScript frames stored under one identity, innermost first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JsSequence {
    pub frames: Vec<JsFrame>,
    /// Each frame's index is its place in the whole stack already (see [`JsFrames::placed`]).
    pub placed: bool,
}

impl StackCache {
    /// The frames (innermost first) of a stack; empty when it was not captured.
    pub fn frames(&mut self, probes: &Probes, stack: u64) -> Result<&[u64], CollectError> {
        read_once(
            &mut self.stacks,
            probes,
            "STACKS",
            stack,
            |f: &StackFrames| f.ips[..(f.len as usize).min(f.ips.len())].to_vec(),
        )
        .map(Vec::as_slice)
    }

    /// The JavaScript frames stored under `js_id`; none when none were.
    pub fn js_frames(&mut self, probes: &Probes, js_id: u64) -> Result<&JsSequence, CollectError> {
        read_once(&mut self.js, probes, "JS_STACKS", js_id, |f: &JsFrames| {
            JsSequence {
                frames: f.frames[..(f.len as usize).min(f.frames.len())].to_vec(),
                placed: f.placed != 0,
            }
        })
    }

    /// Drops stacks and JavaScript frames no site refers to any more.
    pub fn forget(&mut self, stacks: &[u64], js_ids: &[u64]) {
        for stack in stacks {
            self.stacks.remove(stack);
        }
        for js_id in js_ids {
            self.js.remove(js_id);
        }
    }
}

/// The entry `key` of the probes' map `name`, as `take` extracts it, read into `cache` once;
/// empty when the map has no such entry.
fn read_once<'c, V: aya::Pod, T: Default>(
    cache: &'c mut HashMap<u64, T>,
    probes: &Probes,
    name: &'static str,
    key: u64,
    take: impl FnOnce(&V) -> T,
) -> Result<&'c T, CollectError> {
    if let std::collections::hash_map::Entry::Vacant(slot) = cache.entry(key) {
        let map: BpfHashMap<&MapData, u64, V> = BpfHashMap::try_from(
            probes
                .ebpf()
                .map(name)
                .ok_or(CollectError::MissingMap(name))?,
        )
        .map_err(map_err(name))?;
        slot.insert(map.get(&key, 0).map(|v| take(&v)).unwrap_or_default());
    }
    Ok(&cache[&key])
}
