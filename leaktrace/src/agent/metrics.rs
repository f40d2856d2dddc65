//! `/metrics`: the published view in the OpenMetrics text format, which Prometheus scrapes.
//!
//! A registry is built afresh from the view at each scrape: series of targets that were
//! forgotten simply stop appearing, with no bookkeeping of what to remove.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::view::{Published, TargetView};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// Every metric of the view. The names and their meaning are documented in the README; a
/// change here is a change of a public contract.
pub fn render(view: &Published) -> String {
    let mut registry = Registry::with_prefix("leaktrace");
    target_metrics(&mut registry, &view.targets);
    agent_metrics(&mut registry, view);
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// The labels of one target: the host PID always, the rest empty when unknown.
fn labels(t: &TargetView) -> Labels {
    let p = &t.placement;
    let or_empty = |v: &Option<String>| v.clone().unwrap_or_default();
    vec![
        ("pid", t.pid.to_string()),
        ("ns_pid", t.ns_pid.to_string()),
        ("exe", t.exe.clone()),
        ("container_id", or_empty(&p.container_id)),
        ("pod_uid", or_empty(&p.pod_uid)),
        ("pod", or_empty(&p.pod)),
        ("namespace", or_empty(&p.namespace)),
        ("container", or_empty(&p.container)),
    ]
}

/// A counter of seconds per target (never negative: a counter only rises).
fn counter_f64(
    registry: &mut Registry,
    name: &str,
    help: &str,
    targets: &[TargetView],
    value: impl Fn(&TargetView) -> f64,
) {
    let family = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
    for t in targets {
        family.get_or_create(&labels(t)).inc_by(value(t).max(0.0));
    }
    registry.register(name, help, family);
}

fn gauge_i64(
    registry: &mut Registry,
    name: &str,
    help: &str,
    targets: &[TargetView],
    value: impl Fn(&TargetView) -> i64,
) {
    let family = Family::<Labels, Gauge<i64>>::default();
    for t in targets {
        family.get_or_create(&labels(t)).set(value(t));
    }
    registry.register(name, help, family);
}

fn gauge_f64(
    registry: &mut Registry,
    name: &str,
    help: &str,
    targets: &[TargetView],
    value: impl Fn(&TargetView) -> f64,
) {
    let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for t in targets {
        family.get_or_create(&labels(t)).set(value(t));
    }
    registry.register(name, help, family);
}

fn counter(
    registry: &mut Registry,
    name: &str,
    help: &str,
    targets: &[TargetView],
    value: impl Fn(&TargetView) -> u64,
) {
    let family = Family::<Labels, Counter>::default();
    for t in targets {
        family.get_or_create(&labels(t)).inc_by(value(t));
    }
    registry.register(name, help, family);
}

fn target_metrics(registry: &mut Registry, targets: &[TargetView]) {
    gauge_i64(
        registry,
        "target_live_bytes",
        "Bytes in blocks allocated since attach and not yet freed (estimated when sampling)",
        targets,
        |t| t.totals.live_bytes,
    );
    gauge_i64(
        registry,
        "target_live_allocations",
        "Blocks allocated since attach and not yet freed (estimated when sampling)",
        targets,
        |t| t.totals.live_allocs,
    );
    gauge_f64(
        registry,
        "target_growth_bytes_per_second",
        "Theil-Sen slope of the target's live bytes over its recent samples",
        targets,
        |t| t.growth_bytes_per_s,
    );
    gauge_i64(
        registry,
        "target_leak_suspects",
        "Call stacks whose live bytes are judged a leak or growing",
        targets,
        |t| t.leak_suspects as i64,
    );
    gauge_f64(
        registry,
        "target_top_suspect_growth_bytes_per_second",
        "Growth of the fastest-growing leak suspect (0 without suspects)",
        targets,
        |t| t.top_suspect_bytes_per_s,
    );
    // An info series: its labels name the top suspect and the thread its JavaScript ran on.
    let top = Family::<Labels, Gauge<i64>>::default();
    for t in targets {
        let Some(function) = &t.top_suspect else {
            continue;
        };
        let mut labels = labels(t);
        labels.push(("function", function.clone()));
        labels.push(("thread", t.top_suspect_thread.clone().unwrap_or_default()));
        top.get_or_create(&labels).set(1);
    }
    registry.register(
        "target_top_suspect_info",
        "1 for the fastest-growing leak suspect: its innermost named frame, and the thread its \
         JavaScript ran on (main, a worker's `on thread TID \"NAME\"`, or `queued by ... on \
         thread TID` for thread-pool work; empty for a stack without JavaScript)",
        top,
    );
    gauge_i64(
        registry,
        "target_traced",
        "1 while the target is traced; 0 once it exited or went over its live-allocation cap",
        targets,
        |t| i64::from(t.state == "traced"),
    );
    gauge_f64(
        registry,
        "target_traced_seconds",
        "Seconds since the target's probes were attached",
        targets,
        |t| t.traced_s,
    );
    counter(
        registry,
        "target_allocations",
        "Allocation calls seen since attach",
        targets,
        |t| t.totals.alloc_calls,
    );
    counter(
        registry,
        "target_frees",
        "Free calls seen since attach",
        targets,
        |t| t.totals.free_calls,
    );
    counter(
        registry,
        "target_failed_allocations",
        "Allocation calls that returned no memory",
        targets,
        |t| t.totals.failed_allocs,
    );
    watch_metrics(registry, targets);
    memory_metrics(registry, targets);
    tier_metrics(registry, targets);
    let lost = Family::<Labels, Counter>::default();
    for t in targets {
        let l = &t.totals.losses;
        for (reason, n) in [
            ("unknown_free", l.unknown_frees),
            ("live_map_full", l.live_map_full),
            ("stack_map_full", l.stack_map_full),
            ("stack_capture_failed", l.stack_capture_failed),
            ("stack_truncated", l.stack_truncated),
            ("pending_map_full", l.pending_map_full),
            ("missed_free", l.missed_frees),
            ("missed_return", l.missed_returns),
            ("map_event_lost", l.map_events_lost),
            ("page_map_full", l.page_map_full),
            ("unwind_no_row", l.unwind_no_row),
            ("unwind_unsupported", l.unwind_unsupported),
            ("unwind_step_limit", l.unwind_step_limit),
            ("unwind_bad_frame", l.unwind_bad_frame),
        ] {
            let mut with_reason = labels(t);
            with_reason.push(("reason", reason.to_string()));
            lost.get_or_create(&with_reason).inc_by(n);
        }
    }
    registry.register(
        "target_lost_events",
        "Events not fully accounted for, by reason (see the README's loss counters)",
        lost,
    );
}

/// Watch mode (`--mode watch`): what each target's page faults populated, and how much of it
/// is still resident. Zero for targets whose allocator is probed.
fn watch_metrics(registry: &mut Registry, targets: &[TargetView]) {
    counter(
        registry,
        "target_page_faults",
        "Page faults seen since the target was watched (watch mode)",
        targets,
        |t| t.totals.page_faults,
    );
    counter(
        registry,
        "target_populated_bytes",
        "Bytes of the pages the target populated since it was watched (watch mode)",
        targets,
        |t| u64::try_from(t.totals.populated_bytes).unwrap_or(0),
    );
    gauge_i64(
        registry,
        "target_populated_resident_bytes",
        "Bytes of those pages still resident (watch mode)",
        targets,
        |t| t.totals.resident_bytes,
    );
}

/// Tiered mode: each target's tier, what its exact windows cost it, and what the last one found.
/// Only targets that have a tier get these series.
fn tier_metrics(registry: &mut Registry, targets: &[TargetView]) {
    let tiered: Vec<TargetView> = targets
        .iter()
        .filter(|t| t.tier.is_some())
        .cloned()
        .collect();
    let tier = |t: &TargetView| t.tier.clone().expect("only targets with a tier");
    gauge_i64(
        registry,
        "target_exact_window",
        "1 while an exact window probes the target's allocator; 0 while it is only watched",
        &tiered,
        |t| i64::from(tier(t).tier == "window"),
    );
    counter(
        registry,
        "target_exact_windows",
        "Exact windows opened for the target",
        &tiered,
        |t| u64::from(tier(t).windows),
    );
    counter_f64(
        registry,
        "target_overhead_cpu_seconds",
        "CPU time the agent made the target's threads run, charged to its budget: its exact \
         windows (traps and programs) and watching it (page-fault programs)",
        &tiered,
        |t| tier(t).overhead_cpu_seconds,
    );
    counter_f64(
        registry,
        "target_agent_cpu_seconds",
        "The target's share of the agent's own CPU time, charged to the node's budget",
        &tiered,
        |t| tier(t).agent_cpu_seconds,
    );
    gauge_f64(
        registry,
        "target_average_overhead_percent",
        "target_overhead_cpu_seconds in percent of the CPU time the target used while watched \
         (at least a tenth of a CPU): what --max-overhead bounds",
        &tiered,
        |t| tier(t).average_overhead_percent,
    );
    gauge_i64(
        registry,
        "target_window_leak_suspects",
        "Stacks judged leak or growing in the open or last exact window",
        &tiered,
        |t| tier(t).window.map_or(0, |w| w.leak_suspects as i64),
    );
    gauge_f64(
        registry,
        "target_window_top_suspect_growth_bytes_per_second",
        "Growth of the fastest-growing suspect of the open or last exact window",
        &tiered,
        |t| tier(t).window.map_or(0.0, |w| w.top_suspect_bytes_per_s),
    );
}

/// Each target's resident bytes by what holds them (one series per category), and its
/// allocator's in-use and free-but-kept bytes where that account was read.
fn memory_metrics(registry: &mut Registry, targets: &[TargetView]) {
    use crate::analyze::memory::MemoryGrowth;
    let resident = Family::<Labels, Gauge<i64>>::default();
    for t in targets {
        let Some(m) = &t.memory else { continue };
        let b = &m.breakdown;
        for (category, bytes) in [
            ("v8_heap", b.v8_heap),
            ("malloc_heaps", b.malloc_heaps),
            ("thread_stacks", b.thread_stacks),
            ("code_and_files", b.code_and_files),
            ("other_anonymous", b.other_anonymous),
        ] {
            let mut labels = labels(t);
            labels.push(("category", category.to_string()));
            resident
                .get_or_create(&labels)
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "target_resident_bytes",
        "Resident bytes by what holds them (smaps): V8 heap, malloc heaps, thread stacks, code \
         and files, other anonymous",
        resident,
    );
    let readable: Vec<TargetView> = targets
        .iter()
        .filter(|t| t.memory.as_ref().is_some_and(|m| m.malloc.readable))
        .cloned()
        .collect();
    let malloc = |t: &TargetView| {
        t.memory
            .as_ref()
            .map(|m| m.malloc.clone())
            .unwrap_or_default()
    };
    gauge_i64(
        registry,
        "target_malloc_in_use_bytes",
        "Bytes in use by glibc's account (mallinfo2 uordblks), read from outside",
        &readable,
        |t| i64::try_from(malloc(t).in_use_bytes).unwrap_or(i64::MAX),
    );
    gauge_i64(
        registry,
        "target_malloc_free_bytes",
        "Bytes freed but kept by glibc's arenas (mallinfo2 fordblks), read from outside",
        &readable,
        |t| i64::try_from(malloc(t).free_bytes).unwrap_or(i64::MAX),
    );
    gauge_i64(
        registry,
        "target_malloc_other_threads_free_bytes",
        "Of those, in arenas other than the main thread's (a thread pool's, V8's workers')",
        &readable,
        |t| {
            let m = malloc(t);
            i64::try_from(m.free_bytes.saturating_sub(m.main_arena_free_bytes)).unwrap_or(i64::MAX)
        },
    );
    let by_thread = Family::<Labels, Gauge<i64>>::default();
    for t in &readable {
        for share in &malloc(t).by_thread {
            let mut labels = labels(t);
            labels.push(("threads", share.threads_are.clone()));
            by_thread
                .get_or_create(&labels)
                .set(i64::try_from(share.free_bytes).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "target_malloc_free_bytes_by_threads",
        "Of those, by the threads whose arenas keep them: main thread, the function other \
         threads started at (libuv thread pool, V8's workers), no live thread",
        by_thread,
    );
    let slope = |t: &TargetView, of: fn(&MemoryGrowth) -> f64| {
        t.memory.as_ref().map_or(0.0, |m| of(&m.growth))
    };
    gauge_f64(
        registry,
        "target_malloc_in_use_growth_bytes_per_second",
        "Theil-Sen slope of glibc's in-use bytes over the target's readings",
        &readable,
        |t| slope(t, |g| g.in_use_bytes_per_s),
    );
    gauge_f64(
        registry,
        "target_malloc_free_growth_bytes_per_second",
        "Theil-Sen slope of glibc's free-but-kept bytes over the target's readings: retention \
         when it grows while in use does not",
        &readable,
        |t| slope(t, |g| g.free_bytes_per_s),
    );
}

fn agent_metrics(registry: &mut Registry, view: &Published) {
    let a = &view.agent;
    let plain = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let gauge = Gauge::<i64>::default();
        gauge.set(value);
        registry.register(name, help, gauge);
    };
    let total = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    };
    let info = Family::<Labels, Gauge<i64>>::default();
    info.get_or_create(&vec![
        ("version", a.version.to_string()),
        ("sample_bytes", a.sample_bytes.to_string()),
        ("mode", a.mode.to_string()),
    ])
    .set(1);
    registry.register("agent_info", "The agent's version, sampling and mode", info);
    if a.mode == "tiered" {
        plain(
            registry,
            "agent_exact_windows_open",
            "Exact windows open now",
            a.windows_open as i64,
        );
        let spent = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        spent.inc_by(a.overhead_cpu_seconds.max(0.0));
        registry.register(
            "agent_overhead_cpu_seconds",
            "CPU time charged to the node's budget: every target's exact windows and watching, \
             and the agent's own work",
            spent,
        );
    }
    plain(
        registry,
        "agent_targets",
        "Processes traced now",
        a.traced as i64,
    );
    plain(
        registry,
        "agent_targets_served",
        "Targets with series served, exited ones within their grace period included",
        view.targets.len() as i64,
    );
    plain(
        registry,
        "agent_max_targets",
        "The --max-targets cap",
        a.max_targets as i64,
    );
    total(
        registry,
        "agent_refused_targets",
        "Matching processes not traced because --max-targets were traced already",
        a.refused_max_targets,
    );
    total(
        registry,
        "agent_capped_targets",
        "Targets that went over --max-live-allocs-per-target and were no longer traced",
        a.capped,
    );
    total(
        registry,
        "agent_attach_failures",
        "Matching processes the agent could not attach to (see its log)",
        a.attach_failures,
    );
    total(
        registry,
        "agent_failed_samples",
        "Samples whose reads of the probes' maps failed (the last numbers stayed served)",
        a.failed_samples,
    );
    total(registry, "agent_scans", "Scans of /proc", a.scans);
    total(
        registry,
        "agent_samples",
        "Samples of the probes' maps",
        a.samples,
    );
    plain(
        registry,
        "agent_resident_bytes",
        "The agent's own resident memory",
        i64::try_from(a.resident_bytes).unwrap_or(i64::MAX),
    );
    if let Some(k) = &a.kubernetes {
        plain(
            registry,
            "agent_kubernetes_synced",
            "1 once the list of this node's pods has arrived",
            i64::from(k.synced),
        );
        plain(
            registry,
            "agent_kubernetes_pods",
            "Pods of this node known",
            k.pods as i64,
        );
        total(
            registry,
            "agent_kubernetes_watch_errors",
            "Errors of the pod watch (it retries)",
            k.watch_errors,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::view::PlacementView;

    fn target(pid: u32) -> TargetView {
        TargetView {
            pid,
            ns_pid: 1,
            command: "node app.js".into(),
            exe: "/usr/bin/node".into(),
            state: "traced",
            traced_s: 12.5,
            placement: PlacementView {
                pod: Some("web-0".into()),
                ..PlacementView::default()
            },
            totals: crate::report::model::Totals {
                live_bytes: 4096,
                live_allocs: 2,
                allocated_bytes: 8192,
                alloc_calls: 4,
                free_calls: 2,
                ..Default::default()
            },
            growth_bytes_per_s: 100.5,
            leak_suspects: 1,
            top_suspect_bytes_per_s: 100.0,
            top_suspect: None,
            top_suspect_thread: None,
            memory: None,
            tier: None,
        }
    }

    #[test]
    fn one_series_per_target_with_its_labels() {
        let text = render(&Published {
            targets: vec![target(7), target(9)],
            ..Published::default()
        });
        assert!(
            text.contains("# TYPE leaktrace_target_live_bytes gauge"),
            "{text}"
        );
        assert!(
            text.contains("leaktrace_target_live_bytes{pid=\"7\",ns_pid=\"1\""),
            "{text}"
        );
        assert!(text.contains("pod=\"web-0\""), "{text}");
        assert!(
            text.contains("leaktrace_target_allocations_total{pid=\"9\""),
            "{text}"
        );
        assert!(text.contains("reason=\"unknown_free\"} 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// The top suspect's labels carry the thread; a target without one has no series, and the
    /// label's quotes are escaped.
    #[test]
    fn the_top_suspect_is_named_with_its_thread() {
        let mut t = target(7);
        t.top_suspect = Some("retainInWorker (leak.js:12)".into());
        t.top_suspect_thread = Some("on thread 4321 \"worker\"".into());
        let text = render(&Published {
            targets: vec![t, target(9)],
            ..Published::default()
        });
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("leaktrace_target_top_suspect_info{"))
            .collect();
        assert_eq!(series.len(), 1, "{text}");
        assert!(series[0].starts_with("leaktrace_target_top_suspect_info{pid=\"7\""));
        assert!(
            series[0].ends_with(
                ",function=\"retainInWorker (leak.js:12)\",thread=\"on thread 4321 \\\"worker\\\"\"} 1"
            ),
            "{}",
            series[0]
        );
    }

    #[test]
    fn one_resident_series_per_category_and_the_malloc_account() {
        use crate::{
            analyze::memory::{MemoryGrowth, MemoryReport, Verdict},
            process::memory::{Breakdown, MallocAccount},
        };
        let mut t = target(7);
        t.memory = Some(MemoryReport {
            verdict: Verdict::Retention,
            summary: String::new(),
            breakdown: Breakdown {
                rss: 100,
                v8_heap: 4,
                malloc_heaps: 60,
                thread_stacks: 10,
                code_and_files: 20,
                other_anonymous: 6,
                swap: 0,
            },
            malloc: MallocAccount {
                allocator: "glibc".into(),
                readable: true,
                in_use_bytes: 5,
                free_bytes: 55,
                main_arena_free_bytes: 15,
                by_thread: vec![
                    crate::process::memory::ThreadShare {
                        threads_are: "libuv thread pool (worker)".into(),
                        threads: 4,
                        arenas: 4,
                        free_bytes: 33,
                        ..Default::default()
                    },
                    crate::process::memory::ThreadShare {
                        threads_are: "main thread".into(),
                        threads: 1,
                        arenas: 1,
                        free_bytes: 15,
                        ..Default::default()
                    },
                ],
                ..MallocAccount::default()
            },
            growth: MemoryGrowth {
                free_bytes_per_s: 4096.0,
                ..MemoryGrowth::default()
            },
            series: Vec::new(),
            advice: Vec::new(),
            notes: Vec::new(),
        });
        let text = render(&Published {
            targets: vec![t, target(9)],
            ..Published::default()
        });
        for (category, bytes) in [
            ("v8_heap", 4),
            ("malloc_heaps", 60),
            ("thread_stacks", 10),
            ("code_and_files", 20),
            ("other_anonymous", 6),
        ] {
            assert!(
                text.contains(&format!(
                    "container=\"\",category=\"{category}\"}} {bytes}\n"
                )),
                "{text}"
            );
        }
        assert_eq!(text.matches("leaktrace_target_resident_bytes{").count(), 5);
        assert!(
            text.contains("leaktrace_target_malloc_free_bytes{pid=\"7\""),
            "{text}"
        );
        assert!(
            !text.contains("leaktrace_target_malloc_free_bytes{pid=\"9\""),
            "{text}"
        );
        assert!(
            text.contains("leaktrace_target_malloc_other_threads_free_bytes{pid=\"7\"")
                && text.contains("container=\"\"} 40\n"),
            "{text}"
        );
        for (threads, bytes) in [("libuv thread pool (worker)", 33), ("main thread", 15)] {
            assert!(
                text.contains(&format!("container=\"\",threads=\"{threads}\"}} {bytes}\n"))
                    && text.contains("leaktrace_target_malloc_free_bytes_by_threads{pid=\"7\""),
                "{text}"
            );
        }
        assert!(
            text.contains("leaktrace_target_malloc_free_growth_bytes_per_second{pid=\"7\"")
                && text.contains("container=\"\"} 4096.0\n"),
            "{text}"
        );
    }
}
