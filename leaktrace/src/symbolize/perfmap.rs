//! Perf maps: the `/tmp/perf-<pid>.map` text files JIT runtimes write so profilers can name code
//! that lives in anonymous memory (`node --perf-basic-prof`).
//!
//! Format, one symbol a line: `START SIZE NAME`, START and SIZE in hex without `0x`. The file only
//! grows while the runtime compiles; a later line for the same address wins (code is reused).
//! The file belongs to the traced process, so everything here is bounded: a huge file, a line
//! without a newline or binary junk costs a capped read and skipped lines, never unbounded memory.

use std::{
    fs::File,
    io::{BufReader, Read as _},
    path::Path,
};

/// Most bytes read from one perf map (a busy Node process writes a few MB).
pub const MAX_BYTES: u64 = 256 << 20;
/// Longest line kept; longer lines are skipped.
const MAX_LINE: usize = 4096;

/// One named code range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub start: u64,
    pub end: u64,
    pub name: String,
}

/// The symbols of one perf map, sorted by start.
#[derive(Clone, Debug, Default)]
pub struct PerfMap {
    symbols: Vec<Symbol>,
    /// Bytes of the file consumed, to read only what was appended since.
    consumed: u64,
}

impl PerfMap {
    /// Reads what `path` gained since the last call (all of it the first time).
    pub fn refresh(&mut self, path: &Path) -> std::io::Result<()> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len < self.consumed {
            // Rewritten from scratch (a new process with a recycled PID).
            *self = Self::default();
        }
        if len == self.consumed || self.consumed >= MAX_BYTES {
            return Ok(());
        }
        let mut reader = BufReader::new(file);
        std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(self.consumed))?;
        let mut limited = reader.take(MAX_BYTES - self.consumed);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = read_line_capped(&mut limited, &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                // EOF, or a line still being written: take it next time.
                break;
            }
            self.consumed += n as u64;
            if let Some(symbol) = parse_line(&line) {
                self.symbols.push(symbol);
            }
        }
        // Stable sort keeps file order among equal starts, so the latest line is last.
        self.symbols.sort_by_key(|s| s.start);
        Ok(())
    }

    /// The symbol covering `addr`: the latest one written for that code range.
    pub fn lookup(&self, addr: u64) -> Option<&Symbol> {
        let idx = self.symbols.partition_point(|s| s.start <= addr);
        self.symbols[..idx]
            .iter()
            .rev()
            .take(64)
            .find(|s| addr < s.end)
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

/// Reads one line into `buf`, keeping at most `MAX_LINE` bytes of it; returns the bytes consumed.
fn read_line_capped(
    reader: &mut impl std::io::BufRead,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut consumed = 0;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(consumed);
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let room = MAX_LINE.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let n = chunk.len();
        reader.consume(n);
        consumed += n;
        if done {
            if buf.last() != Some(&b'\n') {
                // Over-long line: keep the terminator so the caller moves past it, but make the
                // line unparsable.
                buf.clear();
                buf.push(b'\n');
            }
            return Ok(consumed);
        }
    }
}

fn parse_line(line: &[u8]) -> Option<Symbol> {
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.splitn(3, ' ');
    let start = u64::from_str_radix(parts.next()?, 16).ok()?;
    let size = u64::from_str_radix(parts.next()?, 16).ok()?;
    let name = parts.next()?.trim();
    if size == 0 || name.is_empty() {
        return None;
    }
    Some(Symbol {
        start,
        end: start.checked_add(size)?,
        name: name.to_string(),
    })
}

/// A JavaScript function as V8 names it in a perf map: `JS:*name file:line:column`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsName {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// V8's tier marker: `*` optimized, `~` interpreted or baseline, `^`/`+` other tiers.
    pub tier: Option<char>,
}

/// Parses V8's perf-map names of JavaScript code (`JS:`, `LazyCompile:`, `Function:` and
/// `Eval:` entries); other entries (builtins, stubs, bytecode handlers) are not JavaScript.
pub fn parse_js_name(name: &str) -> Option<JsName> {
    let rest = ["JS:", "LazyCompile:", "Function:", "Eval:"]
        .iter()
        .find_map(|p| name.strip_prefix(p))?;
    let (tier, rest) = match rest.chars().next() {
        Some(c @ ('*' | '~' | '^' | '+' | '-')) => (Some(c), &rest[1..]),
        _ => (None, rest),
    };
    // The location is the last token, `file:line:column`; function names may contain spaces.
    let (function, location) = match rest.rsplit_once(' ') {
        Some((f, loc)) if is_location(loc) => (f, Some(loc)),
        _ if is_location(rest) => ("", Some(rest)),
        _ => (rest, None),
    };
    let (file, line) = match location.and_then(split_location) {
        Some((file, line)) => (Some(file.to_string()), Some(line)),
        None => (None, None),
    };
    Some(JsName {
        function: if function.trim().is_empty() {
            "(anonymous)".to_string()
        } else {
            function.trim().to_string()
        },
        file,
        line,
        tier,
    })
}

fn is_location(s: &str) -> bool {
    split_location(s).is_some()
}

/// `file:line:column` -> (file, line).
fn split_location(s: &str) -> Option<(&str, u32)> {
    let (rest, column) = s.rsplit_once(':')?;
    column.parse::<u32>().ok()?;
    let (file, line) = rest.rsplit_once(':')?;
    Some((file, line.parse().ok()?)).filter(|(f, _)| !f.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_skips_junk() {
        assert_eq!(
            parse_line(b"3c49ca60ad66 78 JS:~ node:internal/main/run_main_module:1:1\n"),
            Some(Symbol {
                start: 0x3c49ca60ad66,
                end: 0x3c49ca60ad66 + 0x78,
                name: "JS:~ node:internal/main/run_main_module:1:1".into()
            })
        );
        for junk in [
            &b"zz 10 name\n"[..],
            b"10 zz name\n",
            b"10 0 empty\n",
            b"10 20\n",
            b"\xff\xfe 10 x\n",
            b"ffffffffffffffff 10 overflow\n",
        ] {
            assert_eq!(parse_line(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn reads_appended_lines_and_caps_long_ones() {
        let dir = std::env::temp_dir().join(format!("leaktrace-perfmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("perf-1.map");
        let long = format!("1000 10 {}\n", "x".repeat(MAX_LINE * 3));
        std::fs::write(
            &path,
            format!("100 10 JS:*first /a.js:1:1\n{long}200 10 Builtin:X\n300 10 partial"),
        )
        .unwrap();
        let mut map = PerfMap::default();
        map.refresh(&path).unwrap();
        assert_eq!(
            map.len(),
            2,
            "the over-long line and the unfinished one are not symbols"
        );
        assert_eq!(
            map.lookup(0x105).map(|s| s.name.as_str()),
            Some("JS:*first /a.js:1:1")
        );
        assert_eq!(map.lookup(0x1005), None);
        assert_eq!(map.lookup(0x300), None);
        // The writer finishes the line and adds a newer symbol over the first range.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b" line\n100 10 JS:~second /a.js:2:1\n").unwrap();
        map.refresh(&path).unwrap();
        assert_eq!(
            map.lookup(0x305).map(|s| s.name.as_str()),
            Some("partial line")
        );
        assert_eq!(
            map.lookup(0x100).map(|s| s.name.as_str()),
            Some("JS:~second /a.js:2:1")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_javascript_functions() {
        let js = parse_js_name("JS:*leakIntoGlobalArray /srv/app.js:12:30").unwrap();
        assert_eq!(js.function, "leakIntoGlobalArray");
        assert_eq!(js.file.as_deref(), Some("/srv/app.js"));
        assert_eq!(js.line, Some(12));
        assert_eq!(js.tier, Some('*'));
        let anon = parse_js_name("JS:~ node:internal/main/run_main_module:1:1").unwrap();
        assert_eq!(anon.function, "(anonymous)");
        assert_eq!(
            anon.file.as_deref(),
            Some("node:internal/main/run_main_module")
        );
        let getter = parse_js_name("JS:~get size file:///srv/m.mjs:3:7").unwrap();
        assert_eq!(getter.function, "get size");
        assert_eq!(getter.file.as_deref(), Some("file:///srv/m.mjs"));
        assert_eq!(getter.line, Some(3));
        let bare = parse_js_name("LazyCompile:foo").unwrap();
        assert_eq!(
            (bare.function.as_str(), bare.file, bare.line),
            ("foo", None, None)
        );
        assert_eq!(parse_js_name("Builtin:ArrayBufferConstructor"), None);
        assert_eq!(parse_js_name("BytecodeHandler:Ldar"), None);
    }
}
