//! The objects the dynamic linker will load for a program, found without running it.
//!
//! Uprobes live on files: attached to a library before a process maps it, they are armed the
//! moment it does. So `run` resolves the command's objects the way the loader will — the
//! executable's `DT_NEEDED` closure, searched through `DT_RPATH`, `LD_LIBRARY_PATH`, `DT_RUNPATH`,
//! the loader's cache and the default directories, with `LD_PRELOAD` first — and probes the
//! allocators among them before the command's first instruction. A script is resolved through
//! its `#!` interpreter (and `env`'s program, the usual `#!/usr/bin/env node`).

use std::{
    collections::VecDeque,
    ffi::OsString,
    fs,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use super::symbols::{self, ObjectInfo};

/// What the loader reads from its environment.
#[derive(Clone, Debug, Default)]
pub struct LoaderEnv {
    pub ld_library_path: Vec<PathBuf>,
    pub ld_preload: Vec<String>,
    /// `PATH`, to find the program `env` runs.
    pub path: Vec<PathBuf>,
}

impl LoaderEnv {
    /// The loader's settings in an environment given as (name, value) pairs.
    pub fn from_vars<'a>(vars: impl IntoIterator<Item = (&'a OsString, &'a OsString)>) -> Self {
        let mut env = Self::default();
        for (name, value) in vars {
            let list = |sep: &[char]| -> Vec<String> {
                value
                    .to_string_lossy()
                    .split(sep)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            };
            match name.as_bytes() {
                b"LD_LIBRARY_PATH" => {
                    env.ld_library_path =
                        list(&[':', ';']).into_iter().map(PathBuf::from).collect();
                }
                b"LD_PRELOAD" => env.ld_preload = list(&[':', ' ']),
                b"PATH" => env.path = list(&[':']).into_iter().map(PathBuf::from).collect(),
                _ => {}
            }
        }
        env
    }
}

/// One object of a program's closure: its path (symbolic links resolved, as `/proc/PID/maps`
/// will show it) and what it says about itself.
#[derive(Clone, Debug)]
pub struct LoadedObject {
    pub path: PathBuf,
    pub is_exe: bool,
    /// Named by `LD_PRELOAD`: searched right after the executable.
    pub preloaded: bool,
    pub info: ObjectInfo,
}

/// Most objects followed: a closure is tens of libraries; a loop or a hostile file is not.
const MAX_OBJECTS: usize = 512;

/// Every object the dynamic linker will map for `program`, the executable first, then the
/// preloaded objects and the `DT_NEEDED` closure breadth first, then the loader itself. Names it
/// cannot find are left out (the loader would fail on them; `dlopen` is seen later). `wanted`
/// are the symbol names to look for in each object (see [`symbols::read`]).
pub fn closure(program: &Path, env: &LoaderEnv, wanted: &[String]) -> Vec<LoadedObject> {
    let Some(exe) = executable(program, env) else {
        return Vec::new();
    };
    let Ok(exe_info) = symbols::read(&exe, true, wanted) else {
        return Vec::new();
    };
    let interp = exe_info.interp.as_ref().map(PathBuf::from);
    let musl = interp.as_deref().is_some_and(is_musl_loader);
    let search = Search {
        env,
        exe_dir: exe.parent().map(Path::to_path_buf).unwrap_or_default(),
        exe_rpath: exe_info.rpath.clone(),
        musl,
        interp: interp.clone(),
        cache: if musl { Vec::new() } else { ld_so_cache() },
    };
    let mut objects = vec![LoadedObject {
        path: canonical(&exe),
        is_exe: true,
        preloaded: false,
        info: exe_info,
    }];
    let add = |path: PathBuf, objects: &mut Vec<LoadedObject>| -> Option<usize> {
        let path = canonical(&path);
        if objects.len() >= MAX_OBJECTS || objects.iter().any(|o| o.path == path) {
            return None;
        }
        let info = symbols::read(&path, false, wanted).ok()?;
        objects.push(LoadedObject {
            path,
            is_exe: false,
            preloaded: false,
            info,
        });
        Some(objects.len() - 1)
    };
    let mut queue: VecDeque<usize> = VecDeque::from([0]);
    for name in &env.ld_preload {
        if let Some(path) = search.find(name, &objects[0].info, &objects[0].path)
            && let Some(i) = add(path, &mut objects)
        {
            objects[i].preloaded = true;
            queue.push_back(i);
        }
    }
    while let Some(i) = queue.pop_front() {
        let (needed, requester) = (objects[i].info.clone(), objects[i].path.clone());
        for name in &needed.needed {
            if let Some(path) = search.find(name, &needed, &requester)
                && let Some(j) = add(path, &mut objects)
            {
                queue.push_back(j);
            }
        }
    }
    if let Some(interp) = interp {
        add(interp, &mut objects);
    }
    objects
}

/// The ELF file the kernel will run for `program`: itself, or the interpreter its `#!` line
/// names (through `env`, the program `env` would find in `PATH`).
fn executable(program: &Path, env: &LoaderEnv) -> Option<PathBuf> {
    let head = read_head(program)?;
    if head.starts_with(b"\x7fELF") {
        return Some(program.to_path_buf());
    }
    let line = head.strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let interpreter = PathBuf::from(words.next()?);
    let interpreter = if interpreter.file_name().is_some_and(|n| n == "env") {
        // `#!/usr/bin/env node` (or `env -S node --flag`): the program env runs.
        let name = words.find(|w| !w.starts_with('-'))?;
        if name.contains('/') {
            PathBuf::from(name)
        } else {
            env.path
                .iter()
                .map(|d| d.join(name))
                .find(|p| p.is_file())?
        }
    } else {
        interpreter
    };
    read_head(&interpreter)?
        .starts_with(b"\x7fELF")
        .then_some(interpreter)
}

/// The first bytes of a file: enough for an ELF magic or a `#!` line.
fn read_head(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let mut head = Vec::with_capacity(256);
    fs::File::open(path)
        .ok()?
        .take(256)
        .read_to_end(&mut head)
        .ok()?;
    Some(head)
}

fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn is_musl_loader(interp: &Path) -> bool {
    interp
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("ld-musl-"))
}

/// How one program's loader looks names up.
struct Search<'a> {
    env: &'a LoaderEnv,
    exe_dir: PathBuf,
    /// The executable's `DT_RPATH`: searched for every object that has no `DT_RUNPATH`.
    exe_rpath: Vec<String>,
    /// musl's loader: it is the C library, and has no cache.
    musl: bool,
    interp: Option<PathBuf>,
    /// The loader's cache, (name, path), glibc only.
    cache: Vec<(String, PathBuf)>,
}

/// glibc's built-in directories on x86-64 (Debian's multiarch ones first: its loader is built
/// with them).
const GLIBC_DEFAULT_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// musl's directories when `/etc/ld-musl-x86_64.path` does not exist.
const MUSL_DEFAULT_DIRS: &[&str] = &["/lib", "/usr/local/lib", "/usr/lib"];

/// The names musl's loader answers itself: its C library is the loader.
const MUSL_BUILTIN: &[&str] = &[
    "libc.so",
    "libdl.so",
    "libm.so",
    "libpthread.so",
    "librt.so",
    "libutil.so",
    "libxnet.so",
];

impl Search<'_> {
    /// Where the loader finds `name`, needed by the object at `requester` (whose dynamic section
    /// says `info`), in glibc's order: `DT_RPATH` (the requester's, then the executable's) when
    /// the requester has no `DT_RUNPATH`, `LD_LIBRARY_PATH`, `DT_RUNPATH`, the cache, the
    /// default directories. musl: `LD_LIBRARY_PATH`, the paths of the object, its path file or
    /// defaults.
    fn find(&self, name: &str, info: &ObjectInfo, requester: &Path) -> Option<PathBuf> {
        if name.contains('/') {
            return Some(PathBuf::from(name));
        }
        let origin = requester.parent().unwrap_or(&self.exe_dir);
        let expand = |dirs: &[String]| -> Vec<PathBuf> {
            dirs.iter().map(|d| expand_origin(d, origin)).collect()
        };
        if self.musl {
            if MUSL_BUILTIN.iter().any(|b| name.starts_with(b)) {
                return self.interp.clone();
            }
            let mut dirs = self.env.ld_library_path.clone();
            dirs.extend(expand(&info.rpath));
            dirs.extend(expand(&info.runpath));
            dirs.extend(
                musl_path_file()
                    .unwrap_or_else(|| MUSL_DEFAULT_DIRS.iter().map(PathBuf::from).collect()),
            );
            return dirs.iter().map(|d| d.join(name)).find(|p| is_elf64(p));
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        if info.runpath.is_empty() {
            dirs.extend(expand(&info.rpath));
            let exe_origin = self.exe_dir.clone();
            dirs.extend(self.exe_rpath.iter().map(|d| expand_origin(d, &exe_origin)));
        }
        dirs.extend(self.env.ld_library_path.iter().cloned());
        dirs.extend(expand(&info.runpath));
        if let Some(found) = dirs.iter().map(|d| d.join(name)).find(|p| is_elf64(p)) {
            return Some(found);
        }
        if let Some((_, path)) = self.cache.iter().find(|(n, p)| n == name && is_elf64(p)) {
            return Some(path.clone());
        }
        GLIBC_DEFAULT_DIRS
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| is_elf64(p))
    }
}

/// `$ORIGIN` (and `${ORIGIN}`) in a search directory is the requesting object's directory;
/// `$LIB` and `$PLATFORM` are what Debian's x86-64 loader substitutes.
fn expand_origin(dir: &str, origin: &Path) -> PathBuf {
    let origin = origin.to_string_lossy();
    PathBuf::from(
        dir.replace("${ORIGIN}", &origin)
            .replace("$ORIGIN", &origin)
            .replace("${LIB}", "lib/x86_64-linux-gnu")
            .replace("$LIB", "lib/x86_64-linux-gnu")
            .replace("${PLATFORM}", "x86_64")
            .replace("$PLATFORM", "x86_64"),
    )
}

/// Whether `path` is a 64-bit little-endian x86-64 ELF object: the loader skips candidates of
/// another class or machine (a 32-bit library of the same name) and goes on searching.
fn is_elf64(path: &Path) -> bool {
    read_head(path).is_some_and(|h| {
        h.len() >= 20 && h.starts_with(b"\x7fELF") && h[4] == 2 && h[5] == 1 && h[18] == 62
    })
}

/// musl's search path file, when it exists.
fn musl_path_file() -> Option<Vec<PathBuf>> {
    let text = fs::read_to_string("/etc/ld-musl-x86_64.path").ok()?;
    Some(
        text.split(['\n', ':'])
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect(),
    )
}

/// The entries of glibc's loader cache (`/etc/ld.so.cache`) for x86-64 libraries.
fn ld_so_cache() -> Vec<(String, PathBuf)> {
    fs::read("/etc/ld.so.cache")
        .map(|bytes| parse_ld_so_cache(&bytes))
        .unwrap_or_default()
}

/// Parses glibc's loader cache, new format (`glibc-ld.so.cache1.1`, written by every glibc since
/// 2.32, and after the old format's table by older ones). No maintained crate reads this file; the
/// format is a fixed header, 24-byte entries and a string table, and every offset is checked.
pub fn parse_ld_so_cache(bytes: &[u8]) -> Vec<(String, PathBuf)> {
    const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
    const HEADER: usize = 48;
    const ENTRY: usize = 24;
    /// `FLAG_ELF_LIBC6` with `FLAG_X8664_LIB64`.
    const X86_64_LIBC6: i32 = 0x0303;
    let Some(start) = bytes.windows(MAGIC.len()).position(|w| w == MAGIC) else {
        return Vec::new();
    };
    let cache = &bytes[start..];
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(cache.get(at..at + 4)?.try_into().ok()?))
    };
    let string_at = |at: u32| -> Option<&[u8]> {
        let rest = cache.get(at as usize..)?;
        rest.split(|&b| b == 0).next()
    };
    let Some(count) = u32_at(20) else {
        return Vec::new();
    };
    let mut entries = Vec::new();
    for n in 0..count as usize {
        let at = HEADER + n * ENTRY;
        let (Some(flags), Some(key), Some(value)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8))
        else {
            break;
        };
        if flags as i32 & 0xffff != X86_64_LIBC6 {
            continue;
        }
        if let (Some(name), Some(path)) = (string_at(key), string_at(value)) {
            entries.push((
                String::from_utf8_lossy(name).into_owned(),
                PathBuf::from(std::ffi::OsStr::from_bytes(path)),
            ));
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> Vec<String> {
        ["malloc", "free", "_Znwm"].map(str::to_owned).to_vec()
    }

    #[test]
    fn the_cache_of_this_machine_names_its_c_library() {
        let cache = ld_so_cache();
        let libc = cache
            .iter()
            .find(|(name, _)| name == "libc.so.6")
            .expect("glibc's cache lists libc.so.6");
        assert!(
            libc.1.is_absolute() && libc.1.ends_with("libc.so.6"),
            "{libc:?}"
        );
    }

    #[test]
    fn a_junk_cache_is_empty_not_a_panic() {
        assert!(parse_ld_so_cache(b"").is_empty());
        let mut junk = b"glibc-ld.so.cache1.1".to_vec();
        junk.extend_from_slice(&[0xff; 40]);
        assert!(parse_ld_so_cache(&junk).is_empty());
    }

    #[test]
    fn a_program_resolves_like_the_loader_maps_it() {
        // The test binary itself: what the loader mapped is what the closure says.
        let me = std::env::current_exe().unwrap();
        let env = LoaderEnv::default();
        let objects = closure(&me, &env, &wanted());
        assert!(objects[0].is_exe);
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        let mapped: Vec<PathBuf> = crate::process::maps::parse(&maps)
            .into_iter()
            .filter(|m| m.is_executable())
            .filter_map(|m| m.path)
            .collect();
        for object in &objects {
            assert!(
                mapped.contains(&object.path),
                "{} is not mapped: {mapped:?}",
                object.path.display()
            );
        }
        let libc = objects
            .iter()
            .find(|o| o.path.ends_with("libc.so.6"))
            .expect("the closure has the C library");
        assert!(libc.info.defined.contains("malloc"));
    }

    #[test]
    fn a_script_resolves_through_its_interpreter_and_env() {
        let dir = std::env::temp_dir().join(format!("leaktrace-loader-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let script = dir.join("script");
        fs::write(&script, "#!/usr/bin/env sh\necho hi\n").unwrap();
        let env =
            LoaderEnv::from_vars([(&OsString::from("PATH"), &OsString::from("/usr/bin:/bin"))]);
        let objects = closure(&script, &env, &wanted());
        assert!(
            objects
                .first()
                .is_some_and(|o| o.path.ends_with("dash") || o.path.ends_with("sh")),
            "{objects:?}"
        );
        assert!(objects.iter().any(|o| o.path.ends_with("libc.so.6")));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn origin_expands_to_the_requesters_directory() {
        assert_eq!(
            expand_origin("$ORIGIN/../lib", Path::new("/opt/app/bin")),
            PathBuf::from("/opt/app/bin/../lib")
        );
        assert_eq!(
            expand_origin("/x/${LIB}", Path::new("/")),
            PathBuf::from("/x/lib/x86_64-linux-gnu")
        );
    }
}
