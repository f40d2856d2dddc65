//! Turning a finished trace into a report, and each output format.

pub mod build;
pub mod flamegraph;
pub mod folded;
pub mod html;
pub mod json;
pub mod junit;
pub mod live;
pub mod memory;
pub mod model;
pub mod origin;
pub mod pprof;
pub mod text;

use std::{
    fs,
    io::{self, Write},
    path::Path,
};

pub use model::{FORMAT_VERSION, Report};

/// The output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For a terminal.
    Text,
    /// The versioned format scripts read (docs/report-format.md).
    Json,
    /// Folded stacks weighted by live bytes, for flame graph tools.
    Folded,
    /// A flame graph of live bytes.
    Svg,
    /// Gzipped profile.proto for `go tool pprof`, Pyroscope, Parca.
    Pprof,
    /// One self-contained page with charts and the flame graph.
    Html,
    /// JUnit XML for CI servers: one test case per process, failed when it leaks.
    Junit,
}

impl Format {
    /// The format a file name asks for, by its extension.
    pub fn from_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        [
            (".pb.gz", Self::Pprof),
            (".json", Self::Json),
            (".folded", Self::Folded),
            (".svg", Self::Svg),
            (".html", Self::Html),
            (".txt", Self::Text),
            (".xml", Self::Junit),
        ]
        .into_iter()
        .find_map(|(ext, format)| name.ends_with(ext).then_some(format))
    }
}

/// Renders `report` in `format`.
pub fn render(report: &Report, format: Format, top: Option<usize>) -> Vec<u8> {
    match format {
        Format::Text => text::render(report, top).into_bytes(),
        Format::Json => json::render(report).into_bytes(),
        Format::Folded => folded::render(report).into_bytes(),
        Format::Svg => flamegraph::render(report).into_bytes(),
        Format::Pprof => pprof::render(report),
        Format::Html => html::render(report).into_bytes(),
        Format::Junit => junit::render(report).into_bytes(),
    }
}

/// Why a saved report cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is larger than {MAX_REPORT_BYTES} bytes; not a leaktrace report")]
    TooLarge { path: String },
    #[error("{path} is not a leaktrace JSON report: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path} has report format version {found}; this leaktrace reads version {FORMAT_VERSION}"
    )]
    Version { path: String, found: u64 },
}

/// Largest saved report read back.
pub const MAX_REPORT_BYTES: u64 = 1 << 30;

/// Reads a report saved with `--format json`, to render it again in another format.
pub fn read(path: &Path) -> Result<Report, ReadError> {
    use std::io::Read as _;
    let name = path.display().to_string();
    let io_err = |source| ReadError::Io {
        path: name.clone(),
        source,
    };
    let mut text = Vec::new();
    fs::File::open(path)
        .map_err(io_err)?
        .take(MAX_REPORT_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(io_err)?;
    if text.len() as u64 > MAX_REPORT_BYTES {
        return Err(ReadError::TooLarge { path: name });
    }
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| ReadError::Json {
            path: name.clone(),
            source,
        })?;
    let found = value["format_version"].as_u64().unwrap_or(0);
    if found != u64::from(FORMAT_VERSION) {
        return Err(ReadError::Version { path: name, found });
    }
    serde_json::from_value(value).map_err(|source| ReadError::Json { path: name, source })
}

/// Writes `contents` to `path` atomically: to a temporary file beside it, then renamed over it,
/// so that an interrupted or failed write never leaves a half-written file under `path`.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Human units for byte counts: `1.5 MiB`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n.unsigned_abs() as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let sign = if n < 0 { "-" } else { "" };
    if unit == 0 {
        format!("{sign}{value} B")
    } else {
        format!("{sign}{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(-3 * 1024 * 1024), "-3.0 MiB");
    }

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("leaktrace-aw-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        assert!(write_atomically(&dir.join("missing/out.json"), b"x").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod render_tests {
    use super::{
        model::{FORMAT_VERSION, Frame, Losses, StackReport, TargetReport, Totals, TraceInfo},
        *,
    };
    use crate::analyze::growth::classify;

    fn sample() -> Report {
        let series = vec![(1.0, 4000), (2.0, 8000), (3.0, 12000)];
        let totals = Totals {
            live_bytes: 3000,
            live_allocs: 3,
            allocated_bytes: 4096 + 3000,
            alloc_calls: 4,
            free_calls: 1,
            failed_allocs: 0,
            mapped_bytes: 0,
            mappings: 0,
            reserved_bytes: 0,
            losses: Losses {
                unknown_frees: 2,
                ..Losses::default()
            },
            ..Totals::default()
        };
        Report {
            format_version: FORMAT_VERSION,
            tool: "leaktrace".into(),
            tool_version: "0.1.0".into(),
            trace: TraceInfo {
                duration_s: 3.0,
                interval_s: 1.0,
                sample_bytes: 0,
                notes: Vec::new(),
                ended_by: "duration".into(),
                stacks_omitted: 0,
                mode: "exact".into(),
                fault_period: 0,
            },
            targets: vec![TargetReport {
                pid: 42,
                ns_pid: 42,
                command: "./app --flag".into(),
                allocator: "/usr/lib/libc.so.6".into(),
                allocator_name: "glibc".into(),
                functions: vec!["malloc".into(), "free".into()],
                free_probe: "at +3".into(),
                alive_at_end: true,
                exit_code: None,
                notes: Vec::new(),
                totals: totals.clone(),
                memory: None,
            }],
            totals,
            origins: Vec::new(),
            stacks: vec![StackReport {
                reserved_bytes: 0,
                pid: 42,
                kind: "heap".into(),
                live_bytes: 3000,
                live_allocs: 3,
                allocated_bytes: 3000,
                alloc_calls: 3,
                growth: classify(&series),
                origin: model::Origin::Other,
                series,
                frames: vec![
                    Frame {
                        address: "0x1000".into(),
                        kind: "native".into(),
                        function: Some("malloc".into()),
                        module: Some("/usr/lib/libc.so.6".into()),
                        ..Frame::default()
                    },
                    Frame {
                        address: "0x5000".into(),
                        kind: "native".into(),
                        function: Some("make_session".into()),
                        file: Some("app.c".into()),
                        line: Some(12),
                        module: Some("/srv/app".into()),
                        ..Frame::default()
                    },
                    Frame {
                        address: "0x6000".into(),
                        kind: "native".into(),
                        module: Some("/srv/app".into()),
                        module_offset: Some("0x2000".into()),
                        ..Frame::default()
                    },
                ],
            }],
            suppressions: Vec::new(),
            gate: None,
        }
    }

    #[test]
    fn text_report_layout() {
        let text = String::from_utf8(render(&sample(), Format::Text, None)).unwrap();
        let expected = "\
leaktrace: traced 1 process for 3.0s (interval 1s), ended by duration
  PID 42  ./app --flag  [running]
    allocator glibc /usr/lib/libc.so.6 (free probe at +3)
    live 2.9 KiB in 3 blocks; allocated 6.9 KiB in 4 calls; 1 frees, 0 failed allocations
    losses: 2 unknown frees (allocated before attach), 0 live-map full, 0 stack-map full, 0 stacks not stored, 0 stacks truncated, 0 in-flight map full, 0 missed frees, 0 missed returns, 0 mapping events lost, 0 pages not kept (page map full), 0 walks stopped without an unwind row, 0 at an unsupported unwind rule, 0 at the unwind step limit, 0 at a bad frame

Leak suspects, fastest growing first (1 of 1):
";
        assert!(text.starts_with(expected), "{text}");
        assert!(text.contains("#1  2.9 KiB live in 3 blocks  (2.9 KiB allocated in 3 calls)"));
        assert!(
            text.contains("0x1000             malloc  (libc.so.6)"),
            "{text}"
        );
        assert!(
            text.contains("0x5000             make_session  app.c:12  (app)"),
            "{text}"
        );
        assert!(
            text.contains("0x6000             ??  (app+0x2000)"),
            "{text}"
        );
    }

    #[test]
    fn json_report_has_the_documented_fields() {
        let json: serde_json::Value =
            serde_json::from_slice(&render(&sample(), Format::Json, None)).unwrap();
        assert_eq!(json["format_version"], FORMAT_VERSION);
        assert_eq!(json["targets"][0]["pid"], 42);
        assert_eq!(json["targets"][0]["command"], "./app --flag");
        assert_eq!(json["totals"]["losses"]["unknown_frees"], 2);
        let stack = &json["stacks"][0];
        for field in [
            "kind",
            "live_bytes",
            "live_allocs",
            "allocated_bytes",
            "alloc_calls",
        ] {
            assert!(stack.get(field).is_some(), "stacks[] lacks {field}");
        }
        assert_eq!(stack["growth"]["method"], "mann-kendall+theil-sen");
        assert_eq!(stack["series"][2], serde_json::json!([3.0, 12000]));
        let frame = &stack["frames"][1];
        assert_eq!(frame["address"], "0x5000");
        assert_eq!(frame["function"], "make_session");
        assert_eq!(frame["file"], "app.c");
        assert_eq!(frame["line"], 12);
        assert_eq!(frame["module"], "/srv/app");
        assert_eq!(stack["frames"][2]["function"], serde_json::Value::Null);
    }
}
