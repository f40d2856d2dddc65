//! Where the resident set went, in words: the one-line summary and the text report's section.

use std::fmt::Write as _;

use super::bytes;
use crate::analyze::memory::{MemoryPoint, MemoryReport, Verdict};

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
        // The main arena is the main thread's; the others are other threads' (a thread pool's).
        let others = if a.arenas > 1 {
            format!(
                ", {} of it in other threads' arenas",
                b(a.free_bytes.saturating_sub(a.main_arena_free_bytes))
            )
        } else {
            String::new()
        };
        format!(
            " ({}: in use {} + free but kept {} in {} arena{}{others}{mmapped})",
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
        let how = if g.method == crate::analyze::memory::TREND {
            format!(
                " (trend of {} readings: in use {}/s, free but kept {}/s)",
                g.points,
                signed(g.in_use_bytes_per_s as i64),
                signed(g.free_bytes_per_s as i64)
            )
        } else {
            format!(" (first and last of {} readings)", g.points)
        };
        format!(
            "; over {:.1}s RSS {}, V8 heap {}, in use {}, free but kept {}{how}",
            g.to_s - g.from_s,
            signed(g.rss_bytes),
            signed(g.v8_heap_bytes),
            signed(g.in_use_bytes),
            signed(g.free_bytes)
        )
    };
    format!(
        "{}: RSS {} = V8 heap {} + malloc heaps {}{account} + thread stacks {} + code and files \
         {} + other anonymous {}{growth}",
        verdict_name(m.verdict),
        b(d.rss),
        b(d.v8_heap),
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
        Verdict::V8Heap => "V8 heap grows",
        Verdict::Neither => "neither leak nor retention",
        Verdict::Unknown => "unknown",
    }
}

/// `main thread 18.0 MiB (1 arena); libuv thread pool (worker) 516.6 KiB (4 threads, 4
/// arenas)`: the free memory each kind of thread's arenas keep, most first.
pub fn by_thread(m: &MemoryReport) -> Option<String> {
    let shares = &m.malloc.by_thread;
    if shares.is_empty() {
        return None;
    }
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    Some(
        shares
            .iter()
            .map(|s| {
                let threads =
                    if s.threads_are == crate::process::memory::MAIN_THREAD || s.threads == 0 {
                        String::new()
                    } else {
                        format!("{}, ", plural(s.threads, "thread"))
                    };
                format!(
                    "{} {} ({threads}{})",
                    s.threads_are,
                    b(s.free_bytes),
                    plural(s.arenas, "arena")
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// The text report's lines for one process's memory.
pub fn render(out: &mut String, m: &MemoryReport) {
    let _ = writeln!(out, "    memory: {}", m.summary);
    if let Some(why) = &m.malloc.unreadable {
        let _ = writeln!(out, "      allocator account: {why}");
    }
    if let Some(line) = by_thread(m) {
        let _ = writeln!(out, "      free but kept, by thread: {line}");
    } else if let (true, Some(why)) = (m.malloc.readable, &m.malloc.by_thread_unread) {
        let _ = writeln!(out, "      free but kept, by thread: not read ({why})");
    }
    for advice in &m.advice {
        let _ = writeln!(out, "      what to do: {advice}");
    }
    for note in &m.notes {
        let _ = writeln!(out, "      note: {note}");
    }
}

/// An inline SVG of the allocator's account over time, stacked (in use below, free but kept
/// above), with the RSS as a line over it. Points whose account was not read are left out of
/// the areas, not drawn as zero.
pub fn stacked_chart(series: &[MemoryPoint], width: u32, height: u32) -> String {
    let (w, h) = (f64::from(width), f64::from(height));
    let t_min = series.iter().map(|p| p.t).fold(f64::INFINITY, f64::min);
    let t_max = series.iter().map(|p| p.t).fold(f64::NEG_INFINITY, f64::max);
    let span = (t_max - t_min).max(1e-9);
    let v_max = series
        .iter()
        .map(|p| {
            p.rss_bytes
                .max(p.in_use_bytes.unwrap_or(0) + p.free_bytes.unwrap_or(0))
        })
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let x = |t: f64| 50.0 + (t - t_min) / span * (w - 60.0);
    let y = |v: u64| h - 20.0 - v as f64 / v_max * (h - 30.0);
    let read: Vec<(f64, u64, u64)> = series
        .iter()
        .filter_map(|p| Some((p.t, p.in_use_bytes?, p.free_bytes?)))
        .collect();
    let area = |upper: &dyn Fn(&(f64, u64, u64)) -> u64,
                lower: &dyn Fn(&(f64, u64, u64)) -> u64| {
        let top = read
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(upper(p))));
        let bottom = read
            .iter()
            .rev()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(lower(p))));
        top.chain(bottom).collect::<Vec<_>>().join(" ")
    };
    let in_use = area(&|p| p.1, &|_| 0);
    let free = area(&|p| p.1 + p.2, &|p| p.1);
    let rss: Vec<String> = series
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.t), y(p.rss_bytes)))
        .collect();
    format!(
        "<svg class=\"chart memory\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" \
         height=\"{height}\" role=\"img\" aria-label=\"resident set and the allocator's account \
         over time\"><text x=\"4\" y=\"14\" font-size=\"11\">{}</text>\
         <polygon class=\"in-use\" fill=\"#c33\" fill-opacity=\"0.6\" points=\"{in_use}\"/>\
         <polygon class=\"free\" fill=\"#e93\" fill-opacity=\"0.5\" points=\"{free}\"/>\
         <polyline class=\"rss\" fill=\"none\" stroke=\"#333\" stroke-width=\"2\" \
         points=\"{}\"/><text x=\"{}\" y=\"14\" font-size=\"11\" text-anchor=\"end\">\
         malloc in use (red), free but kept (orange), RSS (line)</text></svg>\n",
        b(v_max as u64),
        rss.join(" "),
        width - 10,
    )
}

/// A resident class: its name, colour and value at a point.
type Class = (&'static str, &'static str, fn(&MemoryPoint) -> u64);

/// The resident classes of the breakdown, bottom to top.
const CLASSES: [Class; 5] = [
    ("V8 heap", "#36c", |p| p.v8_heap),
    ("malloc heaps", "#c33", |p| p.malloc_heaps),
    ("thread stacks", "#9c3", |p| p.thread_stacks),
    ("code and files", "#999", |p| p.code_and_files),
    ("other anonymous", "#e93", |p| p.other_anonymous),
];

/// An inline SVG of the resident set over time, stacked by what holds it (the breakdown's
/// classes, which sum to the RSS at each reading). Readings without classes (a report written
/// before they were kept) are left out.
pub fn classes_chart(series: &[MemoryPoint], width: u32, height: u32) -> String {
    let (w, h) = (f64::from(width), f64::from(height));
    let read: Vec<&MemoryPoint> = series
        .iter()
        .filter(|p| CLASSES.iter().any(|(_, _, of)| of(p) > 0))
        .collect();
    let t_min = read.iter().map(|p| p.t).fold(f64::INFINITY, f64::min);
    let t_max = read.iter().map(|p| p.t).fold(f64::NEG_INFINITY, f64::max);
    let span = (t_max - t_min).max(1e-9);
    let total = |p: &MemoryPoint, classes: usize| -> u64 {
        CLASSES[..classes].iter().map(|(_, _, of)| of(p)).sum()
    };
    let v_max = read
        .iter()
        .map(|p| total(p, CLASSES.len()))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let x = |t: f64| 50.0 + (t - t_min) / span * (w - 60.0);
    let y = |v: u64| h - 20.0 - v as f64 / v_max * (h - 30.0);
    let mut areas = String::new();
    for (i, (name, colour, _)) in CLASSES.iter().enumerate() {
        let top = read
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.t), y(total(p, i + 1))));
        let bottom = read
            .iter()
            .rev()
            .map(|p| format!("{:.1},{:.1}", x(p.t), y(total(p, i))));
        let points = top.chain(bottom).collect::<Vec<_>>().join(" ");
        areas.push_str(&format!(
            "<polygon class=\"{}\" fill=\"{colour}\" fill-opacity=\"0.7\" points=\"{points}\">\
             <title>{name}</title></polygon>",
            name.replace(' ', "-")
        ));
    }
    let legend = CLASSES
        .iter()
        .map(|(name, colour, _)| format!("<tspan fill=\"{colour}\">\u{25a0}</tspan> {name}"))
        .collect::<Vec<_>>()
        .join("  ");
    format!(
        "<svg class=\"chart classes\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" \
         height=\"{height}\" role=\"img\" aria-label=\"resident set by what holds it over \
         time\"><text x=\"4\" y=\"14\" font-size=\"11\">{}</text>{areas}\
         <text x=\"{}\" y=\"14\" font-size=\"11\" text-anchor=\"end\">{legend}</text></svg>\n",
        b(v_max as u64),
        width - 10,
    )
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
                v8_heap: 3 * MIB,
                malloc_heaps: 90 * MIB,
                thread_stacks: MIB,
                code_and_files: 4 * MIB,
                other_anonymous: 2 * MIB,
                swap: 0,
            },
            malloc: MallocAccount {
                allocator: "glibc".into(),
                readable: true,
                arenas: 7,
                in_use_bytes: 2 * MIB,
                free_bytes: 88 * MIB,
                main_arena_free_bytes: 8 * MIB,
                mmapped_bytes: Some(0),
                ..MallocAccount::default()
            },
            growth: MemoryGrowth {
                from_s: 0.0,
                to_s: 2.0,
                rss_bytes: 80 * MIB as i64,
                in_use_bytes: 1 << 10,
                free_bytes: 79 * MIB as i64,
                v8_heap_bytes: 0,
                rss_bytes_per_s: 40.0 * MIB as f64,
                in_use_bytes_per_s: 512.0,
                free_bytes_per_s: 39.5 * MIB as f64,
                points: 5,
                method: crate::analyze::memory::TREND.into(),
            },
            series: vec![],
            advice: vec![],
            notes: vec![],
        };
        assert_eq!(
            summary(&m),
            "retention: RSS 100.0 MiB = V8 heap 3.0 MiB + malloc heaps 90.0 MiB (glibc: in use \
             2.0 MiB + free but kept 88.0 MiB in 7 arenas, 80.0 MiB of it in other threads' \
             arenas, mmapped blocks 0 B) + thread stacks 1.0 MiB + code and files 4.0 MiB + other \
             anonymous 2.0 MiB; over 2.0s RSS +80.0 MiB, V8 heap +0 B, in use +1.0 KiB, \
             free but kept +79.0 MiB (trend of 5 readings: in use +512 B/s, free but kept \
             +39.5 MiB/s)"
        );
    }

    #[test]
    fn the_chart_stacks_free_over_in_use_and_skips_unread_points() {
        let p = |t: f64, rss: u64, account: Option<(u64, u64)>| MemoryPoint {
            t,
            rss_bytes: rss,
            in_use_bytes: account.map(|a| a.0),
            free_bytes: account.map(|a| a.1),
            ..MemoryPoint::default()
        };
        // 100 bytes high at most: y = 200 - 20 - v / 100 * 170.
        let svg = stacked_chart(
            &[
                p(0.0, 50, Some((10, 10))),
                p(1.0, 60, None),
                p(2.0, 100, Some((20, 60))),
            ],
            260,
            200,
        );
        assert!(
            svg.contains("class=\"in-use\" fill=\"#c33\" fill-opacity=\"0.6\" points=\"50.0,163.0 250.0,146.0 250.0,180.0 50.0,180.0\""),
            "{svg}"
        );
        assert!(
            svg.contains("points=\"50.0,146.0 250.0,44.0 250.0,146.0 50.0,163.0\""),
            "{svg}"
        );
        assert!(
            svg.contains("points=\"50.0,95.0 150.0,78.0 250.0,10.0\""),
            "{svg}"
        );
    }

    #[test]
    fn the_classes_chart_stacks_the_resident_classes_to_the_rss() {
        let p = |t: f64, v8: u64, malloc: u64, other: u64| MemoryPoint {
            t,
            rss_bytes: v8 + malloc + other,
            v8_heap: v8,
            malloc_heaps: malloc,
            other_anonymous: other,
            ..MemoryPoint::default()
        };
        // A point without classes is left out; 100 bytes high at most.
        let svg = classes_chart(
            &[
                p(0.0, 10, 20, 20),
                MemoryPoint::default(),
                p(2.0, 40, 40, 20),
            ],
            260,
            200,
        );
        // y = 200 - 20 - v / 100 * 170
        assert!(
            svg.contains("class=\"V8-heap\" fill=\"#36c\" fill-opacity=\"0.7\" points=\"50.0,163.0 250.0,112.0 250.0,180.0 50.0,180.0\""),
            "{svg}"
        );
        assert!(
            svg.contains("class=\"malloc-heaps\" fill=\"#c33\" fill-opacity=\"0.7\" points=\"50.0,129.0 250.0,44.0 250.0,112.0 50.0,163.0\""),
            "{svg}"
        );
        assert!(
            svg.contains("class=\"other-anonymous\" fill=\"#e93\" fill-opacity=\"0.7\" points=\"50.0,95.0 250.0,10.0 250.0,44.0 50.0,129.0\""),
            "{svg}"
        );
    }
}
