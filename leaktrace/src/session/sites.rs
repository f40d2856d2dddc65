//! Sites by identity: the probes key a stack by its addresses and the JavaScript functions'
//! addresses in V8's heap; the report counts a site by what names it. Stacks the probes keep
//! apart only because a collection moved a function, a tier recompiled it, or a page faulted
//! at another instruction of the same function are one site.

use std::time::Instant;

use leaktrace_common::StackKey;

use super::Session;
use crate::{
    collect::{Snapshot, StackMap},
    symbolize::{
        js::{Naming, Site},
        queued,
    },
};

impl Session {
    /// Names the JavaScript frames of sites not seen before, at once (what they point at may
    /// move or die), and counts each site under its identity by name: sites the probes keep
    /// apart only because a collection moved a function are one. So are populated stacks that
    /// differ only in where within its function the innermost frame faulted.
    pub(super) fn merge_sites(&mut self, snapshot: &mut Snapshot) -> anyhow::Result<()> {
        // Naming reads the target's heap, a few reads a frame: a Node process that starts makes
        // thousands of sites a second. The largest are named first, within a budget per sample
        // so that samples keep their pace; the rest wait for the next sample, counted under the
        // probes' keys meanwhile.
        let mut keys: Vec<(StackKey, (i64, u64))> = snapshot
            .sites
            .iter()
            .filter(|(k, _)| (k.js_id != 0 || k.is_populated()) && !self.sites.contains_key(k))
            .map(|(k, s)| (*k, (s.live_bytes, s.alloc_bytes)))
            .collect();
        keys.sort_unstable_by_key(|&(_, weight)| std::cmp::Reverse(weight));
        let deadline = Instant::now() + self.naming_budget;
        self.js.next_pass();
        for (key, _) in keys {
            if Instant::now() >= deadline {
                break;
            }
            let ips = self.stacks.frames(&self.probes, key.stack)?.to_vec();
            let identity = self.identity(&key, &ips);
            let naming = if key.js_id == 0 {
                Naming::Named(Site {
                    stack: native_site(&identity),
                    js_id: 0,
                })
            } else if self.js.names(key.tgid) {
                let js = queued::place_js(self.stacks.js_frames(&self.probes, key.js_id)?, &ips);
                self.js
                    .name(key.tgid, key.stack, key.js_id, &js, &ips, &identity)
            } else {
                Naming::Failed
            };
            let site = match naming {
                Naming::Named(site) => StackKey {
                    stack: site.stack,
                    js_id: site.js_id,
                    ..key
                },
                // Counted under the probes' key this once; named again at the next sample.
                Naming::Retry => continue,
                Naming::Failed => key,
            };
            self.sites.insert(key, site);
            // The first of a merged site's stacks shows it: its frames and their names.
            self.shown_by.entry(site).or_insert(key);
        }
        let mut merged: StackMap<leaktrace_common::StackStats> =
            StackMap::with_capacity_and_hasher(snapshot.sites.len(), Default::default());
        for (key, stats) in snapshot.sites.drain() {
            let total = merged
                .entry(self.sites.get(&key).copied().unwrap_or(key))
                .or_default();
            total.live_bytes += stats.live_bytes;
            total.live_allocs += stats.live_allocs;
            total.alloc_bytes += stats.alloc_bytes;
            total.alloc_calls += stats.alloc_calls;
        }
        snapshot.sites = merged;
        Ok(())
    }

    /// The addresses of `key`'s stack as its identity counts them: `ips`, but a populated
    /// stack's innermost frame by its function. A page faults at whichever instruction first
    /// writes it, and one `memset` writes with dozens (by size and alignment): by address, one
    /// path that fills pages would be as many sites.
    fn identity(&mut self, key: &StackKey, ips: &[u64]) -> Vec<u64> {
        let mut identity = ips.to_vec();
        if key.is_populated()
            && let Some(first) = identity.first_mut()
            && let Some(function) = self.symbolizer.function_id(key.tgid, *first)
        {
            *first = function;
        }
        identity
    }
}

/// The identity of a site without JavaScript frames, from its addresses as identity counts them
/// (never 0: a key of 0 means no stack).
fn native_site(identity: &[u64]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut site = std::hash::DefaultHasher::new();
    identity.hash(&mut site);
    site.finish() | 1
}
