//! JUnit XML, which CI servers display as test results: one test case per traced process,
//! failed when it fails the gate (or, without `--fail-on`, when it has a `leak` stack), with its
//! failing stacks in the message.

use std::io;

use quick_xml::{Writer, events::BytesText};

use super::model::{Report, StackReport};

/// Renders `report` as one JUnit test suite.
pub fn render(report: &Report) -> String {
    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
    // Writing into a Vec cannot fail.
    let _ = write(&mut writer, report);
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    xml.push_str(&String::from_utf8_lossy(&writer.into_inner()));
    xml.push('\n');
    xml
}

/// The failing stacks of each target, by the gate's finding or else by `leak` verdicts.
fn failing(report: &Report, pid: u32) -> Vec<&StackReport> {
    match &report.gate {
        Some(gate) => gate
            .failures
            .iter()
            .filter(|f| f.pid == pid)
            .flat_map(|f| f.stacks.iter().filter_map(|&i| report.stacks.get(i)))
            .collect(),
        None => report
            .stacks
            .iter()
            .filter(|s| s.pid == pid && s.growth.verdict == crate::analyze::growth::Verdict::Leak)
            .collect(),
    }
}

fn write(writer: &mut Writer<Vec<u8>>, report: &Report) -> io::Result<()> {
    let failures = report
        .targets
        .iter()
        .filter(|t| !failing(report, t.pid).is_empty())
        .count();
    let tests = report.targets.len().to_string();
    let failures = failures.to_string();
    let time = format!("{:.3}", report.trace.duration_s);
    let kind = report.gate.as_ref().map_or("leak", |g| g.fail_on.as_str());
    writer
        .create_element("testsuites")
        .with_attributes([
            ("name", "leaktrace"),
            ("tests", tests.as_str()),
            ("failures", failures.as_str()),
            ("time", time.as_str()),
        ])
        .write_inner_content(|w| {
            w.create_element("testsuite")
                .with_attributes([
                    ("name", "leaktrace"),
                    ("tests", tests.as_str()),
                    ("failures", failures.as_str()),
                    ("errors", "0"),
                    ("skipped", "0"),
                    ("time", time.as_str()),
                ])
                .write_inner_content(|w| {
                    for target in &report.targets {
                        let name = format!("PID {} {}", target.pid, target.command);
                        let case = w.create_element("testcase").with_attributes([
                            ("classname", "leaktrace"),
                            ("name", name.as_str()),
                            ("time", time.as_str()),
                        ]);
                        let stacks = failing(report, target.pid);
                        if stacks.is_empty() {
                            case.write_empty()?;
                            continue;
                        }
                        let live: i64 = stacks.iter().map(|s| s.live_bytes).sum();
                        let message = format!(
                            "{} {kind} stack{}, {} live: {}",
                            stacks.len(),
                            if stacks.len() == 1 { "" } else { "s" },
                            super::bytes(live),
                            stacks
                                .iter()
                                .take(3)
                                .map(|s| s.culprit())
                                .collect::<Vec<_>>()
                                .join("; ")
                        );
                        let details: String = stacks
                            .iter()
                            .map(|s| {
                                let frames: Vec<String> = s
                                    .frames
                                    .iter()
                                    .map(|f| format!("    {}", super::folded::label(f)))
                                    .collect();
                                format!(
                                    "{} live in {} blocks, {} {:+.0} B/s\n{}\n",
                                    super::bytes(s.live_bytes),
                                    s.live_allocs,
                                    s.growth.verdict.as_str(),
                                    s.growth.bytes_per_s,
                                    frames.join("\n")
                                )
                            })
                            .collect();
                        case.write_inner_content(|w| {
                            w.create_element("failure")
                                .with_attributes([("message", message.as_str()), ("type", kind)])
                                .write_text_content(BytesText::new(&details))?;
                            Ok(())
                        })?;
                    }
                    Ok(())
                })?;
            Ok(())
        })?;
    Ok(())
}
