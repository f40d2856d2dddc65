//! Assembling the report from what the trace gathered.

use std::collections::HashMap;

use leaktrace_common::{AllocKind, Counter, NUM_COUNTERS, StackKey, StackStats};

use super::model::{
    FORMAT_VERSION, Frame, Losses, Origin, OriginReport, Report, StackReport, TargetReport, Totals,
    TraceInfo,
};
use crate::{
    analyze::{History, growth},
    collect::Snapshot,
};

/// Names a report's sites: what each allocates for every site (the roll-up by origin counts
/// them all), and the frames only of the stacks the report keeps. Naming every site's frames
/// for each report was most of a busy agent's CPU, whose reports keep only the suspects.
pub trait SiteNamer {
    fn origin(&mut self, key: &StackKey) -> Origin;
    /// The site's frames, innermost first.
    fn frames(&mut self, key: &StackKey) -> Vec<Frame>;
}

/// Stacks a report keeps when `--top` is not given, besides every leak suspect. A Node process
/// has tens of thousands of allocation sites, most of them a few bytes kept since startup: all
/// of them, with their series, made a report of a gigabyte. Their bytes stay in the totals.
pub const DEFAULT_STACKS_KEPT: usize = 1000;

/// One traced process, as the report describes it.
pub struct TargetSummary {
    pub pid: u32,
    pub ns_pid: u32,
    pub command: String,
    pub allocator: String,
    pub allocator_name: String,
    pub functions: Vec<String>,
    pub free_probe: String,
    pub alive_at_end: bool,
    pub exit_code: Option<i32>,
    pub notes: Vec<String>,
    /// Series time at which the process was found gone, if it was.
    pub exited_at_s: Option<f64>,
    /// Traced from its first instruction (`run`'s command, a followed child): with its exit,
    /// its series is its whole life.
    pub from_start: bool,
    /// Its memory, as read at each sample while it lived.
    pub memory: Option<crate::analyze::memory::MemoryReport>,
}

/// Everything a report is made of.
pub struct Inputs<'a> {
    pub targets: Vec<TargetSummary>,
    pub last: &'a Snapshot,
    pub history: &'a History,
    /// Series time that becomes 0 in the report: when the reported window began.
    pub time_zero_s: f64,
    pub names: &'a mut dyn SiteNamer,
    pub duration_s: f64,
    pub interval_s: f64,
    pub sample_bytes: u64,
    pub notes: Vec<String>,
    pub ended_by: &'static str,
    pub top: Option<usize>,
    /// Watch mode's page-fault period; `None` for probes.
    pub fault_period: Option<u64>,
}

pub fn build(inputs: Inputs<'_>) -> Report {
    // What counts as an exiting process's teardown: its last second, or two samples.
    let teardown = (2.0 * inputs.interval_s).max(1.0);
    let exits: HashMap<u32, (f64, bool)> = inputs
        .targets
        .iter()
        .filter_map(|t| Some((t.pid, (t.exited_at_s? - inputs.time_zero_s, t.from_start))))
        .collect();
    let mut per_target: HashMap<u32, Totals> = HashMap::new();
    for (pid, counters) in &inputs.last.counters {
        per_target.insert(*pid, counter_totals(counters));
    }
    let mut sites: Vec<(&StackKey, &StackStats)> = inputs.last.sites.iter().collect();
    for (key, stats) in &sites {
        let totals = per_target.entry(key.tgid).or_default();
        if key.is_populated() {
            totals.populated_bytes += stats.alloc_bytes as i64;
            totals.resident_bytes += stats.live_bytes;
        } else if key.is_mapping() {
            totals.mapped_bytes += stats.live_bytes;
            totals.mappings += stats.live_allocs;
            totals.reserved_bytes += inputs.last.reserved.get(key).copied().unwrap_or(0);
        } else {
            totals.live_bytes += stats.live_bytes;
            totals.live_allocs += stats.live_allocs;
            totals.allocated_bytes += stats.alloc_bytes;
        }
    }
    sites.sort_by(|(ka, a), (kb, b)| {
        b.live_bytes
            .cmp(&a.live_bytes)
            .then(b.alloc_bytes.cmp(&a.alloc_bytes))
            .then(ka.tgid.cmp(&kb.tgid))
            .then(ka.stack.cmp(&kb.stack))
    });
    let (mut stacks, mut keys): (Vec<StackReport>, Vec<StackKey>) = sites
        .into_iter()
        .map(|(key, stats)| {
            let series: Vec<(f64, i64)> = inputs
                .history
                .series(key)
                .iter()
                .map(|&(t, v)| (t - inputs.time_zero_s, v))
                .collect();
            let report = StackReport {
                pid: key.tgid,
                kind: kind_name(key.kind).to_string(),
                live_bytes: stats.live_bytes,
                live_allocs: stats.live_allocs,
                allocated_bytes: stats.alloc_bytes,
                alloc_calls: stats.alloc_calls,
                reserved_bytes: inputs.last.reserved.get(key).copied().unwrap_or(0),
                growth: match exits.get(&key.tgid) {
                    Some(&(exited, true)) => growth::classify_life(crate::analyze::before_exit(
                        &series, exited, teardown,
                    )),
                    Some(&(exited, false)) => {
                        growth::classify(crate::analyze::before_exit(&series, exited, teardown))
                    }
                    None => growth::classify(&series),
                },
                origin: inputs.names.origin(key),
                series,
                frames: Vec::new(),
            };
            (report, *key)
        })
        .unzip();
    demote_unseen_growth(&mut stacks, &inputs.targets);
    let origins = roll_up(&stacks);
    // `--top` keeps the largest stacks, and every leak suspect however small.
    let omitted = match inputs.top.or(Some(DEFAULT_STACKS_KEPT)) {
        Some(top) if top < stacks.len() => {
            let keep: Vec<bool> = stacks
                .iter()
                .enumerate()
                .map(|(rank, s)| rank < top || s.growth.verdict.is_suspect())
                .collect();
            let before = stacks.len();
            let mut kept = keep.iter();
            stacks.retain(|_| *kept.next().unwrap_or(&false));
            let mut kept = keep.iter();
            keys.retain(|_| *kept.next().unwrap_or(&false));
            before - stacks.len()
        }
        _ => 0,
    };
    for (stack, key) in stacks.iter_mut().zip(&keys) {
        stack.frames = inputs.names.frames(key);
    }

    let mut totals = Totals::default();
    let targets = inputs
        .targets
        .into_iter()
        .map(|t| {
            let target_totals = per_target.remove(&t.pid).unwrap_or_default();
            totals.add(&target_totals);
            TargetReport {
                pid: t.pid,
                ns_pid: t.ns_pid,
                command: t.command,
                allocator: t.allocator,
                allocator_name: t.allocator_name,
                functions: t.functions,
                free_probe: t.free_probe,
                alive_at_end: t.alive_at_end,
                exit_code: t.exit_code,
                notes: t.notes,
                totals: target_totals,
                memory: t.memory.map(|mut m| {
                    for point in &mut m.series {
                        point.t -= inputs.time_zero_s;
                    }
                    m.growth.from_s -= inputs.time_zero_s;
                    m.growth.to_s -= inputs.time_zero_s;
                    m.summary = super::memory::summary(&m);
                    m
                }),
            }
        })
        .collect();

    Report {
        format_version: FORMAT_VERSION,
        tool: "leaktrace".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        trace: TraceInfo {
            duration_s: inputs.duration_s,
            interval_s: inputs.interval_s,
            sample_bytes: inputs.sample_bytes,
            notes: inputs.notes,
            ended_by: inputs.ended_by.into(),
            stacks_omitted: omitted,
            mode: if inputs.fault_period.is_some() {
                "watch"
            } else {
                "exact"
            }
            .into(),
            fault_period: inputs.fault_period.unwrap_or(0),
        },
        targets,
        totals,
        origins,
        stacks,
        suppressions: Vec::new(),
        gate: None,
    }
}

/// Live bytes and growth summed by origin, largest first.
fn roll_up(stacks: &[StackReport]) -> Vec<OriginReport> {
    let mut by_origin: HashMap<Origin, OriginReport> = HashMap::new();
    for stack in stacks {
        let entry = by_origin
            .entry(stack.origin)
            .or_insert_with(|| OriginReport {
                origin: stack.origin,
                stacks: 0,
                live_bytes: 0,
                live_allocs: 0,
                bytes_per_s: 0.0,
                leak_suspects: 0,
            });
        entry.stacks += 1;
        entry.live_bytes += stack.live_bytes;
        entry.live_allocs += stack.live_allocs;
        entry.bytes_per_s += stack.growth.bytes_per_s;
        entry.leak_suspects += usize::from(stack.growth.verdict.is_suspect());
    }
    let mut origins: Vec<OriginReport> = by_origin.into_values().collect();
    origins.sort_by(|a, b| {
        b.live_bytes
            .cmp(&a.live_bytes)
            .then(a.origin.cmp(&b.origin))
    });
    origins
}

/// The call and loss counts of one target (live and allocated bytes come from its sites).
fn counter_totals(c: &[u64; NUM_COUNTERS]) -> Totals {
    let n = |counter: Counter| c[counter as usize];
    Totals {
        alloc_calls: n(Counter::AllocCalls),
        free_calls: n(Counter::FreeCalls),
        failed_allocs: n(Counter::FailedAllocs),
        losses: Losses {
            unknown_frees: n(Counter::UnknownFrees),
            live_map_full: n(Counter::LiveMapFull),
            stack_map_full: n(Counter::StackMapFull),
            stack_capture_failed: n(Counter::StackCaptureFailed),
            stack_truncated: n(Counter::StackTruncated),
            pending_map_full: n(Counter::PendingMapFull),
            missed_frees: n(Counter::MissedFrees),
            missed_returns: n(Counter::MissedReturns),
            map_events_lost: n(Counter::MapEventsLost),
            page_map_full: n(Counter::PageMapFull),
            unwind_no_row: n(Counter::UnwindNoRow),
            unwind_unsupported: n(Counter::UnwindUnsupported),
            unwind_step_limit: n(Counter::UnwindStepLimit),
            unwind_bad_frame: n(Counter::UnwindBadFrame),
        },
        page_faults: n(Counter::PageFaults),
        ..Totals::default()
    }
}

fn kind_name(kind: u32) -> &'static str {
    if kind == AllocKind::Mmap as u32 {
        "mmap"
    } else if kind == AllocKind::Populated as u32 {
        "populated"
    } else {
        "heap"
    }
}

/// Watch mode: pages a stack keeps are growth only where the process's resident set shows it
/// ([`growth::rise_seen_in`]); where it does not, the stack's rise is someone else's churn.
fn demote_unseen_growth(stacks: &mut [StackReport], targets: &[TargetSummary]) {
    let rss: HashMap<u32, Vec<(f64, i64)>> = targets
        .iter()
        .filter_map(|t| {
            let series = &t.memory.as_ref()?.series;
            Some((
                t.pid,
                series.iter().map(|m| (m.t, m.rss_bytes as i64)).collect(),
            ))
        })
        .collect();
    for stack in stacks.iter_mut().filter(|s| s.kind == "populated") {
        let (Some(rss), Some(first), Some(last)) = (
            rss.get(&stack.pid),
            stack.series.first(),
            stack.series.last(),
        ) else {
            continue;
        };
        if stack.growth.verdict.is_suspect() && !growth::rise_seen_in(last.1 - first.1, rss) {
            stack.growth.verdict = growth::Verdict::Churn;
        }
    }
}
