//! The terminal report: what an engineer reads first during an incident.

use std::fmt::Write as _;

use super::{
    Report, bytes,
    model::{Frame, StackReport},
};
use crate::analyze::growth::sparkline;

/// Stacks shown when `--top` is not given.
pub const DEFAULT_TOP: usize = 10;

pub fn render(report: &Report, top: Option<usize>) -> String {
    let mut out = String::new();
    let t = &report.trace;
    let _ = writeln!(
        out,
        "leaktrace: traced {} process{} for {:.1}s (interval {}s), ended by {}",
        report.targets.len(),
        if report.targets.len() == 1 { "" } else { "es" },
        t.duration_s,
        t.interval_s,
        t.ended_by,
    );
    for note in &t.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    let watch = t.mode == "watch";
    if watch {
        let _ = writeln!(
            out,
            "  watch mode: no probe placed; stacks are the pages they populated (page faults, one \
             sampled in {}), \"resident\" the ones still in memory, not live blocks",
            t.fault_period
        );
    }
    if t.sample_bytes > 0 {
        let _ = writeln!(
            out,
            "  sampled: one record per {} on average (Poisson by bytes); byte and block counts are \
             unbiased estimates, each within about ±2·sqrt({} x its bytes) at 95 %",
            bytes(t.sample_bytes as i64),
            bytes(t.sample_bytes as i64)
        );
    }
    for rule in &report.suppressions {
        let _ = writeln!(
            out,
            "  suppressed by `{}` ({}): {} stack{}, {} live, {} allocated",
            rule.rule,
            rule.source,
            rule.stacks,
            if rule.stacks == 1 { "" } else { "s" },
            bytes(rule.live_bytes),
            bytes(rule.allocated_bytes as i64)
        );
    }
    for target in &report.targets {
        let state = match (target.alive_at_end, target.exit_code) {
            (true, _) => "running".to_string(),
            (false, Some(code)) => format!("exited with {code}"),
            (false, None) => "exited".to_string(),
        };
        let ns = if target.ns_pid == target.pid {
            String::new()
        } else {
            format!(" (PID {} in its namespace)", target.ns_pid)
        };
        let _ = writeln!(
            out,
            "  PID {}{ns}  {}  [{state}]",
            target.pid, target.command
        );
        let tt = &target.totals;
        if watch {
            let _ = writeln!(
                out,
                "    allocator {} {}; populated {} in {}, {} still resident",
                target.allocator_name,
                target.allocator,
                bytes(tt.populated_bytes),
                counted(tt.page_faults as i64, "page fault"),
                bytes(tt.resident_bytes),
            );
        } else {
            write_allocations(&mut out, target);
        }
        let _ = writeln!(out, "    losses: {}", tt.losses);
        if let Some(memory) = &target.memory {
            super::memory::render(&mut out, memory);
        }
        for note in &target.notes {
            let _ = writeln!(out, "    note: {note}");
        }
    }

    let limit = top.unwrap_or(DEFAULT_TOP);
    let mut suspects: Vec<&StackReport> = report
        .stacks
        .iter()
        .filter(|s| s.growth.verdict.is_suspect())
        .collect();
    suspects.sort_by(|a, b| b.growth.bytes_per_s.total_cmp(&a.growth.bytes_per_s));
    if suspects.is_empty() {
        let _ = writeln!(out, "\nNo leak suspects: no stack grew through the trace.");
    } else {
        let _ = writeln!(
            out,
            "\nLeak suspects, fastest growing first ({} of {}):",
            suspects.len().min(limit),
            suspects.len()
        );
        for (i, stack) in suspects.iter().take(limit).enumerate() {
            write_stack(&mut out, i + 1, stack);
        }
    }

    if !report.origins.is_empty() {
        let measure = if watch { "Resident" } else { "Live" };
        let _ = writeln!(out, "\n{measure} bytes by origin:");
        for o in &report.origins {
            let _ = writeln!(
                out,
                "  {:<13} {:>10} in {:>5} stacks, {}/s, {} suspects",
                o.origin.as_str(),
                bytes(o.live_bytes),
                o.stacks,
                Rate(o.bytes_per_s),
                o.leak_suspects
            );
        }
    }

    let others: Vec<&StackReport> = report
        .stacks
        .iter()
        .filter(|s| !s.growth.verdict.is_suspect())
        .take(limit)
        .collect();
    let total = report.stacks.len() + t.stacks_omitted;
    let _ = writeln!(
        out,
        "\nLargest other stacks by {} bytes ({} of {total} stacks in all):",
        if watch { "resident" } else { "live" },
        others.len()
    );
    for (i, stack) in others.iter().enumerate() {
        write_stack(&mut out, i + 1, stack);
    }
    out
}

fn write_stack(out: &mut String, rank: usize, s: &StackReport) {
    if s.kind == "populated" {
        let _ = writeln!(
            out,
            "\n#{rank}  {} resident in {}  ({} populated in {})  {} {}/s {}  [pid {}, {}, {}]",
            bytes(s.live_bytes),
            counted(s.live_allocs, "page"),
            bytes(s.allocated_bytes as i64),
            counted(s.alloc_calls as i64, "page fault"),
            s.growth.verdict.as_str(),
            Rate(s.growth.bytes_per_s),
            sparkline(&s.series, 16),
            s.pid,
            s.kind,
            s.origin.as_str(),
        );
        write_frames(out, &s.frames);
        return;
    }
    let (what, reserved) = if s.kind == "mmap" {
        (
            "mapping",
            if s.reserved_bytes > 0 {
                format!(" + {} reserved", bytes(s.reserved_bytes as i64))
            } else {
                String::new()
            },
        )
    } else {
        ("block", String::new())
    };
    let _ = writeln!(
        out,
        "\n#{rank}  {} live in {}{reserved}  ({} allocated in {})  {} {}/s {}  [pid {}, {}, {}]",
        bytes(s.live_bytes),
        counted(s.live_allocs, what),
        bytes(s.allocated_bytes as i64),
        counted(s.alloc_calls as i64, "call"),
        s.growth.verdict.as_str(),
        Rate(s.growth.bytes_per_s),
        sparkline(&s.series, 16),
        s.pid,
        s.kind,
        s.origin.as_str(),
    );
    write_frames(out, &s.frames);
}

/// A probed target's allocator and what its calls did.
fn write_allocations(out: &mut String, target: &super::model::TargetReport) {
    let tt = &target.totals;
    let _ = writeln!(
        out,
        "    allocator {} {} (free probe {})",
        target.allocator_name, target.allocator, target.free_probe
    );
    let _ = writeln!(
        out,
        "    live {} in {}; allocated {} in {}; {} frees, {} failed allocations",
        bytes(tt.live_bytes),
        counted(tt.live_allocs, "block"),
        bytes(tt.allocated_bytes as i64),
        counted(tt.alloc_calls as i64, "call"),
        tt.free_calls,
        tt.failed_allocs,
    );
    if tt.mappings > 0 || tt.reserved_bytes > 0 {
        let _ = writeln!(
            out,
            "    mapped {} in {}, and {} reserved",
            bytes(tt.mapped_bytes),
            counted(tt.mappings, "mapping"),
            bytes(tt.reserved_bytes as i64),
        );
    }
}

fn write_frames(out: &mut String, frames: &[Frame]) {
    for frame in frames {
        let _ = writeln!(out, "      {}", frame_line(frame));
    }
}

/// `n` and `word`, plural unless `n` is 1.
fn counted(n: i64, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// One frame: function, source line, module.
fn frame_line(f: &Frame) -> String {
    let name = f.function.as_deref().map_or("??".into(), short_name);
    let mut line = format!("{:<18} {name}", f.address);
    if f.kind == "js" {
        line.push_str("  [js]");
    }
    if let Some(file) = &f.file {
        let _ = write!(line, "  {file}");
        if let Some(n) = f.line {
            let _ = write!(line, ":{n}");
        }
    }
    if let Some(module) = &f.module {
        let short = module.rsplit('/').next().unwrap_or(module);
        let _ = write!(line, "  ({short}");
        if let Some(offset) = &f.module_offset {
            let _ = write!(line, "+{offset}");
        }
        line.push(')');
    }
    if f.inlined {
        line.push_str("  [inlined]");
    }
    line
}

/// A C++ name without its parameter list, which can run to hundreds of characters
/// (`v8::internal::Execution::Call(v8::internal::Isolate*, ...)`); the JSON keeps it whole.
fn short_name(name: &str) -> String {
    const LONG: usize = 60;
    if name.len() <= LONG {
        return name.to_string();
    }
    // The parameter list is the parenthesis that closes last; `(anonymous namespace)` inside
    // the qualified name must stay.
    let Some(close) = name.rfind(')') else {
        return name.to_string();
    };
    let mut depth = 0;
    for (i, c) in name[..=close].char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth -= 1;
                if depth == 0 {
                    return format!("{}(…){}", &name[..i], &name[close + 1..]);
                }
            }
            _ => {}
        }
    }
    name.to_string()
}

/// A growth rate in human units.
struct Rate(f64);

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0.0 { "-" } else { "+" };
        write!(f, "{sign}{}", bytes(self.0.abs().round() as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::short_name;

    #[test]
    fn long_cxx_names_lose_their_parameters_only() {
        assert_eq!(
            short_name(
                "v8::internal::Execution::Call(v8::internal::Isolate*, v8::internal::Handle<v8::internal::Object>)"
            ),
            "v8::internal::Execution::Call(…)"
        );
        assert_eq!(
            short_name(
                "v8::internal::(anonymous namespace)::ConstructBuffer(v8::internal::Isolate*, v8::internal::Handle<v8::internal::JSFunction>)"
            ),
            "v8::internal::(anonymous namespace)::ConstructBuffer(…)"
        );
        assert_eq!(
            short_name(
                "std::vector<int, std::allocator<int> >::push_back(int const&, unsigned long) const"
            ),
            "std::vector<int, std::allocator<int> >::push_back(…) const"
        );
        assert_eq!(short_name("keep_new_object()"), "keep_new_object()");
        assert_eq!(short_name("leakIntoGlobalArray"), "leakIntoGlobalArray");
    }
}
