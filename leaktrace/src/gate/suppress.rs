//! Suppressions: stacks a team has decided are not leaks, named by a function, module or source
//! file anywhere in them, in the spirit of LeakSanitizer's `leak:` lines.
//!
//! One rule a line; `#` starts a comment; an optional `leak:` prefix is accepted so that an
//! LSan file's lines read the same. A rule with a glob character (`*?[`) must match a whole
//! name; a plain word matches anywhere in one, as LSan's do. Names tried: each frame's
//! function, its module's path and file name, its source file's path and file name.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};

use crate::report::model::{Frame, Report, StackReport, SuppressionReport};

/// Rules leaktrace applies on its own: allocations the C library makes for itself and never
/// frees, which would otherwise fail every `--fail-on outstanding` run. Each shows in the report
/// with what it matched, like any rule.
const BUILT_IN: &[&str] = &[
    // stdio's buffers, allocated at a stream's first use and kept until exit.
    "_IO_file_doallocate",
];

/// A rule file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    #[error("cannot read the suppressions file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: invalid rule `{rule}`: {message}")]
    Rule {
        path: PathBuf,
        line: usize,
        rule: String,
        message: String,
    },
}

/// One rule.
#[derive(Debug)]
struct Rule {
    text: String,
    source: String,
    matcher: Matcher,
}

#[derive(Debug)]
enum Matcher {
    Glob(GlobMatcher),
    Substring(String),
}

impl Matcher {
    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Glob(glob) => glob.is_match(name),
            Self::Substring(word) => name.contains(word.as_str()),
        }
    }
}

/// The rules of a run: the built-in ones, then each file's in order.
#[derive(Debug)]
pub struct Suppressions {
    rules: Vec<Rule>,
}

impl Suppressions {
    /// The built-in rules and those of `files`.
    pub fn load(files: &[PathBuf]) -> Result<Self, SuppressionError> {
        let mut rules: Vec<Rule> = BUILT_IN
            .iter()
            .map(|r| Rule {
                text: (*r).to_string(),
                source: "built-in".into(),
                matcher: Matcher::Substring((*r).to_string()),
            })
            .collect();
        for path in files {
            let text = std::fs::read_to_string(path).map_err(|source| SuppressionError::Read {
                path: path.clone(),
                source,
            })?;
            rules.extend(parse(path, &text)?);
        }
        Ok(Self { rules })
    }

    /// Takes every stack a rule matches out of `report.stacks` (the first matching rule gets
    /// it), and records in `report.suppressions` what each rule took.
    pub fn apply(&self, report: &mut Report) {
        let mut taken: Vec<SuppressionReport> = self
            .rules
            .iter()
            .map(|r| SuppressionReport {
                rule: r.text.clone(),
                source: r.source.clone(),
                stacks: 0,
                live_bytes: 0,
                allocated_bytes: 0,
            })
            .collect();
        report.stacks.retain(|stack| match self.first_match(stack) {
            Some(index) => {
                let entry = &mut taken[index];
                entry.stacks += 1;
                entry.live_bytes += stack.live_bytes;
                entry.allocated_bytes += stack.allocated_bytes;
                false
            }
            None => true,
        });
        report.suppressions = taken;
    }

    fn first_match(&self, stack: &StackReport) -> Option<usize> {
        self.rules
            .iter()
            .position(|rule| stack.frames.iter().any(|f| frame_matches(&rule.matcher, f)))
    }
}

/// Whether a rule matches any name of a frame.
fn frame_matches(matcher: &Matcher, frame: &Frame) -> bool {
    let paths = [frame.module.as_deref(), frame.file.as_deref()];
    frame
        .function
        .as_deref()
        .into_iter()
        .chain(paths.iter().flatten().copied())
        .chain(
            paths
                .iter()
                .flatten()
                .filter_map(|p| Path::new(p).file_name()?.to_str()),
        )
        .any(|name| matcher.matches(name))
}

/// The rules of one file.
fn parse(path: &Path, text: &str) -> Result<Vec<Rule>, SuppressionError> {
    let mut rules = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let rule = line.split('#').next().unwrap_or_default().trim();
        let rule = rule.strip_prefix("leak:").unwrap_or(rule).trim();
        if rule.is_empty() {
            continue;
        }
        let matcher = if rule.contains(['*', '?', '[']) {
            let glob = Glob::new(rule).map_err(|e| SuppressionError::Rule {
                path: path.to_path_buf(),
                line: index + 1,
                rule: rule.to_string(),
                message: e.kind().to_string(),
            })?;
            Matcher::Glob(glob.compile_matcher())
        } else {
            Matcher::Substring(rule.to_string())
        };
        rules.push(Rule {
            text: rule.to_string(),
            source: format!("{}:{}", path.display(), index + 1),
            matcher,
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, file: Option<&str>, module: &str) -> Frame {
        Frame {
            function: Some(function.into()),
            file: file.map(Into::into),
            module: Some(module.into()),
            ..Frame::default()
        }
    }

    fn rules(text: &str) -> Suppressions {
        Suppressions {
            rules: parse(Path::new("s.txt"), text).unwrap(),
        }
    }

    #[test]
    fn lines_comments_and_lsan_prefixes() {
        let s = rules("# a comment\n\nleak:cache_fill  # trailing\n*/vendor/*\n");
        assert_eq!(s.rules.len(), 2);
        assert_eq!(s.rules[0].text, "cache_fill");
        assert_eq!(s.rules[0].source, "s.txt:3");
        assert_eq!(s.rules[1].source, "s.txt:4");
    }

    #[test]
    fn words_match_inside_names_and_globs_whole_names() {
        let word = rules("fill");
        let glob = rules("*.test.js");
        let js = frame(
            "leakyCache",
            Some("/app/test/leak.test.js"),
            "/usr/bin/node",
        );
        let c = frame("cache_fill", Some("cache.c"), "/srv/app");
        assert!(frame_matches(&word.rules[0].matcher, &c));
        assert!(!frame_matches(&word.rules[0].matcher, &js));
        assert!(frame_matches(&glob.rules[0].matcher, &js));
        assert!(!frame_matches(&glob.rules[0].matcher, &c));
        // Module file names, not only paths.
        assert!(frame_matches(&rules("node").rules[0].matcher, &js));
    }

    #[test]
    fn a_bad_glob_names_its_line() {
        let err = parse(Path::new("s.txt"), "ok\n[oops\n").unwrap_err();
        assert!(
            err.to_string().starts_with("s.txt:2: invalid rule `[oops`"),
            "{err}"
        );
    }
}
