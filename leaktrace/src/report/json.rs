//! The JSON report: the model, serialized as is.

use super::Report;

pub fn render(report: &Report) -> String {
    let mut out = serde_json::to_string_pretty(report).unwrap_or_else(|err| {
        // The model holds only strings, numbers and finite floats; this cannot fail in practice.
        format!("{{\"error\": \"serializing the report: {err}\"}}")
    });
    out.push('\n');
    out
}
