//! Every output format from one trace of a Node program: JSON (checked against its schema),
//! text, folded stacks, a flame graph, pprof (decoded here, independently of the encoder) and
//! HTML (rendered by a real headless Chromium); and a saved trace rendered again.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::{fs, path::Path, process::Command};

use leaktrace_tests::{
    Target, Tracer, assert_matches_schema, have_root, leaktrace, read_report, root, scratch,
};
use serde_json::Value;

const FORMATS: [&str; 6] = ["json", "txt", "folded", "svg", "pb.gz", "html"];

#[test]
fn one_trace_yields_every_format_and_they_agree() {
    if !have_root("one_trace_yields_every_format_and_they_agree") {
        return;
    }
    let dir = scratch("reports");
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .arg("--perf-basic-prof")
        .arg(root().join("tests/fixtures/node/leak-global-array.js"))
        .arg("6");
    let mut target = Target::spawn(cmd);
    let pid = target.pid().to_string();
    let outputs: Vec<String> = FORMATS
        .iter()
        .map(|ext| dir.join(format!("trace.{ext}")).display().to_string())
        .collect();
    let mut args = vec![pid.as_str(), "--interval", "500ms"];
    for output in &outputs {
        args.extend(["-o", output.as_str()]);
    }
    let tracer = Tracer::attach(&args);
    target.send("go");
    target.expect_line("done");
    let status = tracer.interrupt().status;
    assert!(status.success());
    assert_eq!(target.finish(), 0);

    let report = read_report(&dir.join("trace.json"));
    let stacks = report["stacks"].as_array().expect("stacks");
    let live: i64 = stacks
        .iter()
        .map(|s| s["live_bytes"].as_i64().unwrap_or(0))
        .sum();
    let allocated: i64 = stacks
        .iter()
        .map(|s| s["allocated_bytes"].as_i64().unwrap_or(0))
        .sum();

    let text = fs::read_to_string(dir.join("trace.txt")).expect("text report");
    assert!(
        text.contains("Leak suspects") && text.contains("leakIntoGlobalArray"),
        "{text}"
    );

    let folded = fs::read_to_string(dir.join("trace.folded")).expect("folded");
    let positive: i64 = stacks
        .iter()
        .map(|s| s["live_bytes"].as_i64().unwrap_or(0))
        .filter(|&b| b > 0)
        .sum();
    let weights: i64 = folded
        .lines()
        .map(|l| {
            l.rsplit_once(' ')
                .expect("`stack weight`")
                .1
                .parse::<i64>()
                .expect("weight")
        })
        .sum();
    assert_eq!(weights, positive, "folded weights are the live bytes");
    assert!(
        folded.lines().any(|l| l.contains(";leakIntoGlobalArray (")),
        "root first, JS named"
    );

    let svg = fs::read_to_string(dir.join("trace.svg")).expect("svg");
    assert!(svg.contains("<svg") && svg.contains("leakIntoGlobalArray"));

    let profile = pprof::decode(&dir.join("trace.pb.gz"));
    assert_eq!(
        profile.sample_types,
        [
            "inuse_space",
            "inuse_objects",
            "alloc_space",
            "alloc_objects"
        ]
    );
    assert_eq!(profile.samples, stacks.len(), "one sample per stack");
    assert_eq!(
        profile.totals[0], live,
        "inuse_space totals the JSON's live bytes"
    );
    assert_eq!(
        profile.totals[2], allocated,
        "alloc_space totals the JSON's allocated bytes"
    );
    assert!(
        profile
            .strings
            .iter()
            .any(|s| s.contains("leakIntoGlobalArray"))
    );

    // And the reference reader, `go tool pprof`, shows the same totals.
    for (index, total) in [("inuse_space", live), ("alloc_space", allocated)] {
        let output = Command::new("go")
            .args(["tool", "pprof", "-top", "-unit=B"])
            .arg(format!("-sample_index={index}"))
            .arg(dir.join("trace.pb.gz"))
            .env("HOME", &dir)
            .output()
            .expect("running go tool pprof (cargo xtask setup installs golang-go)");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.contains(&format!("Total samples = {total}B")),
            "go tool pprof -sample_index={index}: {text}"
        );
    }

    check_html_in_chromium(&dir.join("trace.html"), &dir);

    // A saved trace renders again, the same.
    let again = dir.join("again.json");
    let status = leaktrace()
        .arg("report")
        .arg(dir.join("trace.json"))
        .arg("-o")
        .arg(&again)
        .status()
        .expect("leaktrace report");
    assert!(status.success());
    assert_eq!(
        fs::read(&again).unwrap(),
        fs::read(dir.join("trace.json")).unwrap()
    );
}

/// Loads the page in headless Chromium with the network off and checks what it rendered.
fn check_html_in_chromium(page: &Path, dir: &Path) {
    let html = fs::read_to_string(page).expect("html");
    // Self-contained: no scripts, styles, images or frames from anywhere.
    for needle in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(!html.contains(needle), "the page refers outside: {needle}");
    }
    let profile = dir.join("chromium-profile");
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--proxy-server=127.0.0.1:9",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running chromium (cargo xtask setup installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("<h2>Leak suspects ("),
        "the page rendered its suspects"
    );
    assert!(
        dom.matches("<svg class=\"chart").count() >= 2,
        "a total chart and a suspect chart"
    );
    assert!(dom.contains("<polyline points=\""), "charts have data");
    assert!(
        dom.contains("leakIntoGlobalArray"),
        "the flame graph and frames name the function"
    );
}

#[test]
fn the_schema_rejects_what_it_does_not_describe() {
    let good: Value = serde_json::from_str(include_str!("../fixtures/report-v1.json")).unwrap();
    assert_matches_schema(&good);
    let mut bad = good.clone();
    bad["stacks"][0]["growth"]["verdict"] = "maybe".into();
    let mut missing = good.clone();
    missing["totals"]["losses"]
        .as_object_mut()
        .unwrap()
        .remove("unknown_frees");
    for wrong in [bad, missing] {
        let result = std::panic::catch_unwind(|| assert_matches_schema(&wrong));
        assert!(result.is_err(), "the schema accepted {wrong}");
    }
}

/// A profile.proto reader written from the wire format, independent of the encoder.
mod pprof {
    use std::{io::Read as _, path::Path};

    pub struct Decoded {
        pub sample_types: Vec<String>,
        pub samples: usize,
        pub totals: Vec<i64>,
        pub strings: Vec<String>,
    }

    fn varint(data: &[u8], pos: &mut usize) -> u64 {
        let mut value = 0;
        for shift in (0..64).step_by(7) {
            let byte = data[*pos];
            *pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    }

    /// The fields of one message: (field number, varint value or bytes).
    fn fields(data: &[u8]) -> Vec<(u64, Result<u64, &[u8]>)> {
        let (mut pos, mut out) = (0, Vec::new());
        while pos < data.len() {
            let key = varint(data, &mut pos);
            match key & 7 {
                0 => out.push((key >> 3, Ok(varint(data, &mut pos)))),
                2 => {
                    let len = varint(data, &mut pos) as usize;
                    out.push((key >> 3, Err(&data[pos..pos + len])));
                    pos += len;
                }
                other => panic!("unexpected wire type {other}"),
            }
        }
        out
    }

    pub fn decode(path: &Path) -> Decoded {
        let mut raw = Vec::new();
        gunzip(path, &mut raw);
        let top = fields(&raw);
        let strings: Vec<String> = top
            .iter()
            .filter(|(f, _)| *f == 6)
            .map(|(_, v)| String::from_utf8_lossy(v.unwrap_err()).into_owned())
            .collect();
        let sample_types = top
            .iter()
            .filter(|(f, _)| *f == 1)
            .map(|(_, v)| {
                let t = fields(v.unwrap_err())
                    .iter()
                    .find(|(f, _)| *f == 1)
                    .map_or(0, |(_, v)| v.unwrap());
                strings[t as usize].clone()
            })
            .collect();
        let mut totals = vec![0i64; 4];
        let mut samples = 0;
        for (_, sample) in top.iter().filter(|(f, _)| *f == 2) {
            samples += 1;
            for (field, value) in fields(sample.unwrap_err()) {
                if field != 2 {
                    continue;
                }
                // Values are packed int64 varints.
                let packed = value.unwrap_err();
                let mut pos = 0;
                let mut i = 0;
                while pos < packed.len() {
                    totals[i] += varint(packed, &mut pos) as i64;
                    i += 1;
                }
            }
        }
        Decoded {
            sample_types,
            samples,
            totals,
            strings,
        }
    }

    /// gunzip with the system's gzip: no shared code with the writer.
    fn gunzip(path: &Path, out: &mut Vec<u8>) {
        let mut child = std::process::Command::new("gzip")
            .args(["-dc"])
            .arg(path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip");
        child.stdout.take().unwrap().read_to_end(out).unwrap();
        assert!(child.wait().unwrap().success(), "the pprof file is gzip");
    }
}
