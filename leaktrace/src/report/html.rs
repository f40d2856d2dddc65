//! One self-contained HTML page: the leak suspects with a chart of each one's live bytes, the
//! whole process's live bytes over time, the flame graph, the origins, the loss counters and how
//! the trace was taken. Charts are inline SVG; nothing is fetched from anywhere.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{Report, bytes, flamegraph, folded, model::StackReport};

/// Suspects drawn, at most.
const MAX_SUSPECTS: usize = 20;

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let t = &report.trace;
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\
         <title>leaktrace report</title><style>{STYLE}</style></head><body>\n\
         <h1>leaktrace report</h1>\n<p class=\"meta\">{} process(es) traced for {:.1} s, \
         sampled every {} s, ended by {}; leaktrace {}.</p>\n",
        report.targets.len(),
        t.duration_s,
        t.interval_s,
        escape(&t.ended_by),
        escape(&report.tool_version),
    );

    let m = report.trace.measure();
    let _ = writeln!(
        out,
        "<h2>Targets</h2>\n<table><tr><th>PID</th><th>command</th><th>{}</th>\
         <th>{}</th><th>losses</th></tr>",
        m.held, m.made
    );
    for target in &report.targets {
        let tt = &target.totals;
        let (held, made) = if report.trace.mode == "watch" {
            (
                bytes(tt.resident_bytes),
                format!(
                    "{} in {} {}",
                    bytes(tt.populated_bytes),
                    tt.page_faults,
                    m.events
                ),
            )
        } else {
            (
                format!("{} in {} {}", bytes(tt.live_bytes), tt.live_allocs, m.units),
                format!(
                    "{} in {} {}",
                    bytes(tt.allocated_bytes as i64),
                    tt.alloc_calls,
                    m.events
                ),
            )
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td>{held}</td><td>{made}</td><td>{}</td></tr>",
            target.pid,
            escape(&target.command),
            tt.losses,
        );
        for note in &target.notes {
            let _ = writeln!(
                out,
                "<tr><td></td><td colspan=\"4\" class=\"note\">{}</td></tr>",
                escape(note)
            );
        }
    }
    out.push_str("</table>\n");

    for target in report.targets.iter() {
        if let Some(memory) = &target.memory {
            let _ = writeln!(
                out,
                "<h2>Where the RSS went: PID {}</h2>\n<p>{}</p>",
                target.pid,
                escape(&memory.summary)
            );
            if let Some(line) = super::memory::by_thread(memory) {
                let _ = writeln!(out, "<p>Free but kept, by thread: {}</p>", escape(&line));
            }
            out.push_str(&super::memory::classes_chart(&memory.series, 720, 200));
            out.push_str(&super::memory::stacked_chart(&memory.series, 720, 200));
            for line in memory.advice.iter().chain(&memory.notes) {
                let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(line));
            }
        }
    }

    let _ = writeln!(out, "<h2>{} bytes over time</h2>", capitalized(m.held));
    out.push_str(&chart(&total_series(&report.stacks), "total", 720, 180));

    let mut suspects: Vec<&StackReport> = report
        .stacks
        .iter()
        .filter(|s| s.growth.verdict.is_suspect())
        .collect();
    suspects.sort_by(|a, b| b.growth.bytes_per_s.total_cmp(&a.growth.bytes_per_s));
    let _ = writeln!(out, "<h2>Leak suspects ({})</h2>", suspects.len());
    if suspects.is_empty() {
        out.push_str("<p>No stack grew through the trace.</p>\n");
    }
    for (i, stack) in suspects.iter().take(MAX_SUSPECTS).enumerate() {
        let _ = writeln!(
            out,
            "<section class=\"suspect\"><h3>#{} {} {}/s — {} {} in {} {} \
             <small>[pid {}, {}]</small></h3>",
            i + 1,
            stack.growth.verdict.as_str(),
            bytes(stack.growth.bytes_per_s.round() as i64),
            bytes(stack.live_bytes),
            m.held,
            stack.live_allocs,
            m.units,
            stack.pid,
            stack.origin.as_str(),
        );
        out.push_str(&chart(&stack.series, "suspect", 480, 120));
        out.push_str("<ol class=\"frames\">");
        for frame in &stack.frames {
            let _ = write!(
                out,
                "<li class=\"{}\">{}</li>",
                escape(&frame.kind),
                escape(&folded::label(frame))
            );
        }
        out.push_str("</ol></section>\n");
    }

    out.push_str(
        "<h2>By origin</h2>\n<table><tr><th>origin</th><th>bytes held</th><th>stacks</th>\
                  <th>growth</th><th>suspects</th></tr>\n",
    );
    for o in &report.origins {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}/s</td><td>{}</td></tr>",
            o.origin.as_str(),
            bytes(o.live_bytes),
            o.stacks,
            bytes(o.bytes_per_s.round() as i64),
            o.leak_suspects
        );
    }
    let _ = write!(
        out,
        "</table>\n<h2>Flame graph of {} bytes</h2>\n<div class=\"flame\">",
        m.held
    );
    let svg = flamegraph::render(report);
    // Inline the SVG element itself, without its XML prologue.
    out.push_str(svg.find("<svg").map_or(svg.as_str(), |i| &svg[i..]));
    out.push_str("</div>\n<h2>Loss counters</h2>\n<p>");
    out.push_str(&report.totals.losses.to_string());
    out.push_str("</p>\n</body></html>\n");
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1100px}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}\
.meta{color:#555}.note{color:#a40}.frames{font-family:monospace;font-size:90%}\
.frames .js{color:#06c}svg.chart{background:#fafafa;border:1px solid #ddd}\
.chart polyline{fill:none;stroke:#c33;stroke-width:2}.flame svg{max-width:100%;height:auto}";

/// A line chart of `[seconds, bytes]` points as inline SVG.
fn chart(series: &[(f64, i64)], class: &str, width: u32, height: u32) -> String {
    let (w, h) = (f64::from(width), f64::from(height));
    let t_max = series.iter().map(|p| p.0).fold(0.0_f64, f64::max).max(1e-9);
    let t_min = series.iter().map(|p| p.0).fold(t_max, f64::min);
    let v_max = series.iter().map(|p| p.1).max().unwrap_or(0).max(1) as f64;
    let span = (t_max - t_min).max(1e-9);
    let points: Vec<String> = series
        .iter()
        .map(|&(t, v)| {
            let x = 40.0 + (t - t_min) / span * (w - 50.0);
            let y = h - 20.0 - (v.max(0) as f64) / v_max * (h - 30.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        "<svg class=\"chart {class}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" \
         height=\"{height}\" role=\"img\" aria-label=\"live bytes over time\">\
         <text x=\"4\" y=\"14\" font-size=\"11\">{}</text>\
         <text x=\"40\" y=\"{}\" font-size=\"11\">{:.0} s</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{:.0} s</text>\
         <polyline points=\"{}\"/></svg>\n",
        bytes(v_max as i64),
        height - 4,
        t_min,
        width - 10,
        height - 4,
        t_max,
        points.join(" ")
    )
}

/// The stacks' series summed at each sampling instant.
fn total_series(stacks: &[StackReport]) -> Vec<(f64, i64)> {
    let mut sums: BTreeMap<u64, (f64, i64)> = BTreeMap::new();
    for stack in stacks {
        for &(t, v) in &stack.series {
            // Samples of one instant share their time to the microsecond.
            let entry = sums.entry((t * 1e6).round() as u64).or_insert((t, 0));
            entry.1 += v;
        }
    }
    sums.into_values().collect()
}

/// Escapes text for HTML content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `word` with its first letter in upper case.
fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn charts_scale_points_into_the_box() {
        let svg = chart(&[(0.0, 0), (10.0, 100)], "c", 100, 50);
        assert!(
            svg.contains("<polyline points=\"40.0,30.0 90.0,10.0\"/>"),
            "{svg}"
        );
        assert!(chart(&[], "c", 100, 50).contains("<polyline points=\"\"/>"));
    }
}
