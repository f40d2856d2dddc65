//! `run --fail-on`: leaktrace as a test gate. After the command ends, the report's stacks (less
//! the suppressed ones) decide whether the run fails, the way LeakSanitizer's exit code does for
//! C programs.

pub mod suppress;

use crate::report::model::{GateFailure, GateReport, Report, StackReport};

/// What fails a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// A stack whose verdict is `leak`.
    Leak,
    /// A stack whose verdict is `leak` or `growing` (stricter).
    Growing,
    /// Heap blocks still allocated when a process ends, at least `--min-bytes` of them (for C
    /// and C++ programs, which free what they own; not for Node, whose heap is never freed at
    /// exit). Mappings do not count: a process leaves its loader's and its threads' mappings to
    /// the kernel at exit, as LeakSanitizer and valgrind do.
    Outstanding,
}

impl FailOn {
    fn name(self) -> &'static str {
        match self {
            Self::Leak => "leak",
            Self::Growing => "growing",
            Self::Outstanding => "outstanding",
        }
    }

    fn fails(self, stack: &StackReport) -> bool {
        match self {
            Self::Leak => stack.growth.verdict == crate::analyze::growth::Verdict::Leak,
            Self::Growing => stack.growth.verdict.is_suspect(),
            Self::Outstanding => stack.kind == "heap" && stack.live_bytes > 0,
        }
    }
}

/// The status leaktrace exits with when the gate fails, unless told otherwise: LeakSanitizer's
/// default, which no common test runner uses for its own failures (they use 1; mocha exits with
/// its count of failed tests).
pub const DEFAULT_EXIT_CODE: u8 = 23;

/// Judges `report` and records the finding in it. A command that failed keeps its own status:
/// a failing test is never hidden by a leak, nor a leak reported as the test's failure.
pub fn judge(
    report: &mut Report,
    fail_on: FailOn,
    min_bytes: u64,
    command_exit_code: Option<i32>,
    leak_exit_code: u8,
) {
    let mut failures = Vec::new();
    for target in &report.targets {
        let failing: Vec<usize> = report
            .stacks
            .iter()
            .enumerate()
            .filter(|(_, s)| s.pid == target.pid && fail_on.fails(s))
            .map(|(i, _)| i)
            .collect();
        let live_bytes: i64 = failing.iter().map(|&i| report.stacks[i].live_bytes).sum();
        let fails = match fail_on {
            FailOn::Outstanding => {
                !failing.is_empty() && u64::try_from(live_bytes).unwrap_or(0) >= min_bytes
            }
            FailOn::Leak | FailOn::Growing => !failing.is_empty(),
        };
        if fails {
            failures.push(GateFailure {
                pid: target.pid,
                command: target.command.clone(),
                live_bytes,
                stacks: failing,
            });
        }
    }
    let failed = !failures.is_empty();
    let exit_code = match command_exit_code {
        Some(code) if code != 0 => code,
        _ if failed => i32::from(leak_exit_code),
        _ => 0,
    };
    report.gate = Some(GateReport {
        fail_on: fail_on.name().into(),
        min_bytes,
        command_exit_code,
        failed,
        exit_code,
        failures,
    });
}

/// One screen for a CI log: the verdict, each failing process with its worst stacks, and what
/// the suppressions took.
pub fn summary(report: &Report) -> String {
    use std::fmt::Write as _;
    let Some(gate) = &report.gate else {
        return String::new();
    };
    let mut out = String::new();
    let processes = report.targets.len();
    let verdict = if gate.failed { "FAIL" } else { "pass" };
    let _ = writeln!(
        out,
        "leaktrace: {verdict} (--fail-on {}): {} of {processes} process{} {}",
        gate.fail_on,
        gate.failures.len(),
        if processes == 1 { "" } else { "es" },
        if gate.fail_on == "outstanding" {
            "kept memory at exit"
        } else {
            "leak"
        }
    );
    for failure in &gate.failures {
        let _ = writeln!(
            out,
            "  PID {} {}: {} stack{}",
            failure.pid,
            failure.command,
            failure.stacks.len(),
            if failure.stacks.len() == 1 { "" } else { "s" }
        );
        for &index in failure.stacks.iter().take(5) {
            let stack = &report.stacks[index];
            // A process that exited may have freed it all at teardown: its peak says more.
            let peak = stack.series.iter().map(|&(_, v)| v).max().unwrap_or(0);
            let _ = writeln!(
                out,
                "    {} {}/s, peak {}, {} live at the end  {}",
                stack.growth.verdict.as_str(),
                crate::report::bytes(stack.growth.bytes_per_s as i64),
                crate::report::bytes(peak.max(stack.live_bytes)),
                crate::report::bytes(stack.live_bytes),
                stack.culprit()
            );
        }
        if failure.stacks.len() > 5 {
            let _ = writeln!(out, "    ... {} more", failure.stacks.len() - 5);
        }
    }
    for rule in report.suppressions.iter().filter(|r| r.stacks > 0) {
        let _ = writeln!(
            out,
            "  suppressed by `{}` ({}): {} stack{}, {} live",
            rule.rule,
            rule.source,
            rule.stacks,
            if rule.stacks == 1 { "" } else { "s" },
            crate::report::bytes(rule.live_bytes)
        );
    }
    let unused: Vec<&str> = report
        .suppressions
        .iter()
        .filter(|r| r.stacks == 0 && r.source != "built-in")
        .map(|r| r.source.as_str())
        .collect();
    if !unused.is_empty() {
        let _ = writeln!(out, "  rules that matched nothing: {}", unused.join(", "));
    }
    if let Some(code) = gate.command_exit_code.filter(|&c| c != 0) {
        let _ = writeln!(
            out,
            "  the command itself failed (status {code}): its status is kept"
        );
    }
    out
}
