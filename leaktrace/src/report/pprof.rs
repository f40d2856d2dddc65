//! pprof: a gzipped `profile.proto`, which `go tool pprof`, Pyroscope and Parca open.
//!
//! The messages are declared here with prost's derive rather than generated from the `.proto`
//! file: seven small messages, field numbers from `profile.proto`, and no build-time protoc.

use std::collections::HashMap;

use flate2::{Compression, write::GzEncoder};
use prost::Message as _;

use super::{Report, model::Frame};

/// `perftools.profiles.Profile`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Innermost first: every entry but the last was inlined into the one after it.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// The units of the sample types (named by the report's [`super::model::Measure`]), in the
/// order of every sample's values.
pub const SAMPLE_UNITS: [&str; 4] = ["bytes", "count", "bytes", "count"];

/// Builds the profile: one sample per stack, locations shared between stacks.
pub fn profile(report: &Report) -> Profile {
    let mut b = Builder::default();
    b.string(""); // Index 0 is the empty string, by the format's rule.
    let measure = report.trace.measure();
    let sample_type: Vec<ValueType> = measure
        .pprof
        .iter()
        .zip(SAMPLE_UNITS)
        .map(|(t, u)| ValueType {
            r#type: b.string(t),
            unit: b.string(u),
        })
        .collect();
    let (pid_key, verdict_key, origin_key) =
        (b.string("pid"), b.string("verdict"), b.string("origin"));
    let mut sample = Vec::new();
    for stack in &report.stacks {
        let location_id = group_by_address(&stack.frames)
            .into_iter()
            .map(|frames| b.location(stack.pid, frames))
            .collect();
        sample.push(Sample {
            location_id,
            value: vec![
                stack.live_bytes,
                stack.live_allocs,
                i64::try_from(stack.allocated_bytes).unwrap_or(i64::MAX),
                i64::try_from(stack.alloc_calls).unwrap_or(i64::MAX),
            ],
            label: vec![
                Label {
                    key: pid_key,
                    num: i64::from(stack.pid),
                    ..Label::default()
                },
                Label {
                    key: verdict_key,
                    str: b.string(stack.growth.verdict.as_str()),
                    ..Label::default()
                },
                Label {
                    key: origin_key,
                    str: b.string(stack.origin.as_str()),
                    ..Label::default()
                },
            ],
        });
    }
    let comment = vec![b.string(&format!(
        "leaktrace {}: {} native memory by stack, {:.1}s, ended by {}",
        report.tool_version, measure.held, report.trace.duration_s, report.trace.ended_by
    ))];
    Profile {
        period_type: Some(sample_type[0].clone()),
        period: 1,
        sample_type,
        sample,
        mapping: b.mappings,
        location: b.locations,
        function: b.functions,
        duration_nanos: (report.trace.duration_s * 1e9) as i64,
        comment,
        default_sample_type: 0,
        string_table: b.strings,
    }
}

/// The profile, encoded and gzipped as pprof expects.
pub fn render(report: &Report) -> Vec<u8> {
    let raw = profile(report).encode_to_vec();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    // Writing into a Vec cannot fail.
    let _ = std::io::Write::write_all(&mut gz, &raw);
    gz.finish().unwrap_or_default()
}

/// Splits a stack's frames into one group per address (inlined frames share their address).
fn group_by_address(frames: &[Frame]) -> Vec<&[Frame]> {
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=frames.len() {
        if i == frames.len() || frames[i].address != frames[start].address {
            groups.push(&frames[start..i]);
            start = i;
        }
    }
    groups
}

/// Interns strings, mappings, functions and locations.
#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<String, u64>,
    functions: Vec<Function>,
    function_ids: HashMap<(String, String), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<(u32, String), u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn mapping(&mut self, module: &str) -> u64 {
        if let Some(&id) = self.mapping_ids.get(module) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string(module);
        self.mappings.push(Mapping {
            id,
            filename,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        });
        self.mapping_ids.insert(module.to_string(), id);
        id
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let name = super::folded::label(frame);
        let file = frame.file.clone().unwrap_or_default();
        if let Some(&id) = self.function_ids.get(&(name.clone(), file.clone())) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let (name_id, file_id) = (self.string(&name), self.string(&file));
        self.functions.push(Function {
            id,
            name: name_id,
            system_name: name_id,
            filename: file_id,
        });
        self.function_ids.insert((name, file), id);
        id
    }

    /// One location per (process, address); `frames` are the frames at that address.
    fn location(&mut self, pid: u32, frames: &[Frame]) -> u64 {
        let address = frames[0].address.clone();
        if let Some(&id) = self.location_ids.get(&(pid, address.clone())) {
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        let mapping_id = frames[0].module.as_deref().map_or(0, |m| self.mapping(m));
        let line = frames
            .iter()
            .map(|f| Line {
                function_id: self.function(f),
                line: f.line.map_or(0, i64::from),
            })
            .collect();
        self.locations.push(Location {
            id,
            mapping_id,
            address: u64::from_str_radix(address.trim_start_matches("0x"), 16).unwrap_or(0),
            line,
        });
        self.location_ids.insert((pid, address), id);
        id
    }
}
