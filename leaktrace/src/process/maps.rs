//! Parsing `/proc/PID/maps`.

use std::path::PathBuf;

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: [u8; 4],
    pub offset: u64,
    pub inode: u64,
    /// The path as the process sees it (inside its own mount namespace), if file-backed.
    pub path: Option<PathBuf>,
}

impl Mapping {
    pub fn is_executable(&self) -> bool {
        self.perms[2] == b'x'
    }
}

/// Parses the text of `/proc/PID/maps`; lines that do not parse are skipped (the kernel's format
/// is fixed, but a pseudo path such as `[vdso]` or a deleted file must not stop the rest).
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

/// Parses one line of `/proc/PID/maps` (also the header line of each `/proc/PID/smaps` entry).
pub fn parse_line(line: &str) -> Option<Mapping> {
    // start-end perms offset dev inode [path]; the path may contain spaces.
    let mut rest = line;
    let mut field = || {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (head, tail) = trimmed.split_at(end);
        rest = tail;
        head
    };
    let range = field();
    let perms = field();
    let offset = field();
    let _dev = field();
    let inode = field();
    let path = rest.trim_start();

    let (start, end) = range.split_once('-')?;
    let perms: [u8; 4] = perms.as_bytes().try_into().ok()?;
    let path = (path.starts_with('/'))
        .then(|| PathBuf::from(path.strip_suffix(" (deleted)").unwrap_or(path)));
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_anonymous_and_pseudo_mappings() {
        let text = "\
7f0c1a200000-7f0c1a228000 r--p 00000000 fe:01 1835 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0c1a228000-7f0c1a3bd000 r-xp 00028000 fe:01 1835 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0c1a400000-7f0c1a500000 rw-p 00000000 00:00 0
7ffd5e9f0000-7ffd5e9f2000 r-xp 00000000 00:00 0                          [vdso]
55d0c0000000-55d0c0001000 r-xp 00001000 fe:01 99 /tmp/my app (deleted)
garbage line
";
        let maps = parse(text);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[1].start, 0x7f0c1a228000);
        assert_eq!(maps[1].offset, 0x28000);
        assert_eq!(maps[1].inode, 1835);
        assert!(maps[1].is_executable());
        assert!(!maps[0].is_executable());
        assert_eq!(
            maps[1].path.as_deref(),
            Some(std::path::Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"))
        );
        assert_eq!(maps[2].path, None);
        assert_eq!(maps[3].path, None);
        assert_eq!(
            maps[4].path.as_deref(),
            Some(std::path::Path::new("/tmp/my app"))
        );
    }
}
