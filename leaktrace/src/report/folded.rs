//! Folded stacks: `root;...;leaf bytes`, one line per stack with live bytes, the input format of
//! flamegraph tools (`inferno-flamegraph`, `flamegraph.pl`, speedscope).

use std::fmt::Write as _;

use super::{Report, model::Frame};

/// One line per stack holding memory, root first, weighted by live bytes.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for stack in report.stacks.iter().filter(|s| s.live_bytes > 0) {
        let path: Vec<String> = stack.frames.iter().rev().map(label).collect();
        let _ = writeln!(out, "{} {}", path.join(";"), stack.live_bytes);
    }
    out
}

/// A frame's name in a flame graph: the function, else module and offset, else the address.
/// `;` separates frames in this format, so it is replaced inside names (C++ signatures never
/// contain one, but a JS name might).
pub fn label(frame: &Frame) -> String {
    let name = match (&frame.function, &frame.module, &frame.module_offset) {
        (Some(function), ..) if frame.kind == "js" => match (&frame.file, frame.line) {
            (Some(file), Some(line)) => format!("{function} ({file}:{line}) [js]"),
            _ => format!("{function} [js]"),
        },
        (Some(function), ..) => function.clone(),
        (None, Some(module), Some(offset)) => {
            format!("{}+{offset}", module.rsplit('/').next().unwrap_or(module))
        }
        _ => frame.address.clone(),
    };
    name.replace(';', ":")
}
