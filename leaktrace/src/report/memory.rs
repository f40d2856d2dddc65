//! Where the resident set went, in words: the one-line summary and the text report's section.

use std::fmt::Write as _;

use super::bytes;
use crate::analyze::memory::{MemoryReport, Verdict};

fn b(n: u64) -> String {
    bytes(i64::try_from(n).unwrap_or(i64::MAX))
}

/// `leak: RSS 1.2 GiB = malloc heaps 900 MiB (glibc: in use 210 MiB + free but kept 690 MiB
/// in 17 arenas) + ...`: the resident classes sum to the RSS exactly; the allocator's account
/// counts bytes it obtained, resident or not, so it is shown beside the heaps, not summed.
pub fn summary(m: &MemoryReport) -> String {
    let d = &m.breakdown;
    let a = &m.malloc;
    let account = if a.readable {
        let mmapped = a
            .mmapped_bytes
            .map(|n| format!(", mmapped blocks {}", b(n)))
            .unwrap_or_default();
        format!(
            " ({}: in use {} + free but kept {} in {} arena{}{mmapped})",
            a.allocator,
            b(a.in_use_bytes),
            b(a.free_bytes),
            a.arenas,
            if a.arenas == 1 { "" } else { "s" }
        )
    } else {
        format!(" ({}'s account unread)", a.allocator)
    };
    let g = &m.growth;
    let growth = if m.verdict == Verdict::Unknown {
        String::new()
    } else {
        format!(
            "; over {:.1}s RSS {}, in use {}, free but kept {}",
            g.to_s - g.from_s,
            signed(g.rss_bytes),
            signed(g.in_use_bytes),
            signed(g.free_bytes)
        )
    };
    format!(
        "{}: RSS {} = malloc heaps {}{account} + thread stacks {} + code and files {} + other \
         anonymous {}{growth}",
        verdict_name(m.verdict),
        b(d.rss),
        b(d.malloc_heaps),
        b(d.thread_stacks),
        b(d.code_and_files),
        b(d.other_anonymous),
    )
}

fn signed(n: i64) -> String {
    if n >= 0 {
        format!("+{}", bytes(n))
    } else {
        bytes(n)
    }
}

pub fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Leak => "leak",
        Verdict::Retention => "retention",
        Verdict::Both => "leak and retention",
        Verdict::Neither => "neither leak nor retention",
        Verdict::Unknown => "unknown",
    }
}

/// The text report's lines for one process's memory.
pub fn render(out: &mut String, m: &MemoryReport) {
    let _ = writeln!(out, "    memory: {}", m.summary);
    if let Some(why) = &m.malloc.unreadable {
        let _ = writeln!(out, "      allocator account: {why}");
    }
    for advice in &m.advice {
        let _ = writeln!(out, "      what to do: {advice}");
    }
    for note in &m.notes {
        let _ = writeln!(out, "      note: {note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        analyze::memory::MemoryGrowth,
        process::memory::{Breakdown, MallocAccount},
    };

    #[test]
    fn the_summary_sums_the_resident_classes_and_shows_the_account() {
        const MIB: u64 = 1 << 20;
        let m = MemoryReport {
            verdict: Verdict::Retention,
            summary: String::new(),
            breakdown: Breakdown {
                rss: 100 * MIB,
                malloc_heaps: 90 * MIB,
                thread_stacks: MIB,
                code_and_files: 4 * MIB,
                other_anonymous: 5 * MIB,
                swap: 0,
            },
            malloc: MallocAccount {
                allocator: "glibc".into(),
                readable: true,
                arenas: 7,
                in_use_bytes: 2 * MIB,
                free_bytes: 88 * MIB,
                mmapped_bytes: Some(0),
                ..MallocAccount::default()
            },
            growth: MemoryGrowth {
                from_s: 0.0,
                to_s: 2.0,
                rss_bytes: 80 * MIB as i64,
                in_use_bytes: 1 << 10,
                free_bytes: 79 * MIB as i64,
            },
            series: vec![],
            advice: vec![],
            notes: vec![],
        };
        assert_eq!(
            summary(&m),
            "retention: RSS 100.0 MiB = malloc heaps 90.0 MiB (glibc: in use 2.0 MiB + free but \
             kept 88.0 MiB in 7 arenas, mmapped blocks 0 B) + thread stacks 1.0 MiB + code and \
             files 4.0 MiB + other anonymous 5.0 MiB; over 2.0s RSS +80.0 MiB, in use +1.0 KiB, \
             free but kept +79.0 MiB"
        );
    }
}
