//! Growth verdicts end to end on the demo's pretend server (tests/fixtures/demo): a session kept
//! per request is a `leak`, a cache bounded at 64 entries a `plateau`, a scratch buffer freed at
//! once not a leak.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::process::Stdio;

use leaktrace_tests::{fixture, have_root, leaktrace, read_report, scratch};
use serde_json::Value;

fn verdict_of(report: &Value, function: &str) -> String {
    let stacks: Vec<&Value> = report["stacks"]
        .as_array()
        .expect("stacks[]")
        .iter()
        // frames[0] is the allocator function; frames[1] the function that called it.
        .filter(|s| s["frames"][1]["function"].as_str() == Some(function))
        .collect();
    assert_eq!(
        stacks.len(),
        1,
        "one stack allocates directly in {function}"
    );
    stacks[0]["growth"]["verdict"]
        .as_str()
        .expect("verdict")
        .to_string()
}

#[test]
fn leak_plateau_and_churn_are_told_apart() {
    if !have_root("leak_plateau_and_churn_are_told_apart") {
        return;
    }
    let out = scratch("verdicts").join("report.json");
    let status = leaktrace()
        .args(["run", "--interval", "250ms", "--format", "json", "-o"])
        .arg(&out)
        .arg("--")
        .arg(fixture("demo/session-cache", &[]))
        .stdout(Stdio::null())
        .status()
        .expect("leaktrace run");
    assert!(status.success());
    let report = read_report(&out);
    assert_eq!(verdict_of(&report, "create_session"), "leak");
    assert_eq!(verdict_of(&report, "cache_response"), "plateau");
    let scratch_buffer = verdict_of(&report, "handle_request");
    assert!(
        scratch_buffer != "leak" && scratch_buffer != "growing",
        "the scratch buffer is {scratch_buffer}"
    );
    // The text report opens with the leak.
    let suspects = &report["stacks"][0];
    assert_eq!(suspects["growth"]["verdict"], "leak");
}
