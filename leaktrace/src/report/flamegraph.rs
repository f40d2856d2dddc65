//! A flame graph of live bytes (resident bytes in watch mode), drawn by inferno (the Rust port of flamegraph.pl).

use inferno::flamegraph::{self, Options};

use super::{Report, folded};

/// The flame graph as a standalone SVG document.
pub fn render(report: &Report) -> String {
    let folded = folded::render(report);
    let mut options = Options::default();
    options.title = format!(
        "leaktrace: {} native memory by stack",
        report.trace.measure().held
    );
    options.count_name = "bytes".into();
    options.name_type = "Function:".into();
    let mut svg = Vec::new();
    let lines = folded.lines();
    if folded.is_empty() {
        return empty_svg();
    }
    match flamegraph::from_lines(&mut options, lines, &mut svg) {
        Ok(()) => String::from_utf8_lossy(&svg).into_owned(),
        Err(_) => empty_svg(),
    }
}

/// What to draw when no stack holds memory: an SVG that says so.
fn empty_svg() -> String {
    "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\">\
     <text x=\"10\" y=\"25\">No stack holds live memory.</text></svg>\n"
        .to_string()
}
