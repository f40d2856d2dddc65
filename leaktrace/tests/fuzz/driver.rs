//! The fuzzing driver shared by every target: corpus replay, and a time-bounded loop of
//! generated and mutated inputs that saves what panics (or hangs) into the corpus.
//!
//! Not coverage-guided (that needs a nightly toolchain): inputs come from each target's
//! proptest strategy, which knows the format, and from seeds mutated the way libFuzzer does
//! (bit flips, inserted tokens and integers, cuts, splices, repetition up to the size caps).

use std::{
    cell::{Cell, RefCell},
    collections::hash_map::DefaultHasher,
    fs,
    hash::{Hash as _, Hasher as _},
    io::Write as _,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, Once,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use proptest::{
    collection::vec,
    prelude::*,
    sample::Index,
    strategy::ValueTree as _,
    test_runner::{Config, TestRunner},
};

/// One parser (or a few that read the same input), as the fuzzer drives it.
pub struct Target {
    /// Names the corpus directory and the tests (`replay_<name>`, `fuzz_<name>`).
    pub name: &'static str,
    /// Feeds one input to the parser; a panic in here is what the fuzzer looks for.
    pub run: fn(&[u8]),
    /// Inputs shaped like the format, given the corpus seeds (some targets edit those).
    pub generate: fn(&[Vec<u8>]) -> BoxedStrategy<Vec<u8>>,
    /// Fragments of the format worth inserting anywhere (keywords, separators).
    pub tokens: &'static [&'static [u8]],
    /// Largest input tried: a few MiB reaches every size cap without making calls slow.
    pub max_len: usize,
}

/// The largest input most targets get (their own caps are 1 MiB and above, or per line).
pub const MAX_LEN: usize = 4 << 20;

/// An input that runs longer than this is saved as a hang: every parser is meant to be bounded.
const HANG_AFTER: Duration = Duration::from_secs(10);

/// Time spent making a crashing input smaller before it is saved.
const SHRINK_FOR: Duration = Duration::from_secs(10);

/// Tokens every format may trip on: integer edges in text, line ends, bytes that are not UTF-8.
const COMMON_TOKENS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"4294967295",
    b"4294967296",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551615",
    b"18446744073709551616",
    b"\n",
    b"\r\n",
    b"\0",
    b"\xff\xfe",
    b"\xc3",
    b"\xe2\x80\xae",
];

/// Integers written in binary at random places: sizes, offsets and counts in binary formats.
const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX - 1,
    u64::MAX,
];

/// The corpus of `target`: seeds checked into the repository, and every crash found since.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target)
}

fn corpus(target: &Target) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target.name);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    files
        .into_iter()
        .map(|path| {
            let bytes =
                fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (path, bytes)
        })
        .collect()
}

/// Feeds every file of the target's corpus to it: a saved crash fails until it is fixed.
pub fn replay(target: &Target) {
    let watchdog = Watchdog::start(target.name);
    let mut failures = Vec::new();
    for (path, bytes) in corpus(target) {
        if let Err(panic) = watchdog.guard(&bytes, Some(&path), || run_caught(target, &bytes)) {
            failures.push(format!("{}: {panic}", path.display()));
        }
    }
    watchdog.stop();
    assert!(
        failures.is_empty(),
        "{} corpus inputs panic:\n{}",
        target.name,
        failures.join("\n")
    );
}

/// Fuzzes the target until `LEAKTRACE_FUZZ_SECONDS` (default 10) have passed; a panicking input
/// is shrunk, saved as `crash-<hash>` in the corpus, and fails the test.
///
/// `cargo xtask fuzz` reads two lines of its standard error: `fuzz <target>: N inputs in S s`,
/// and on failure `fuzz <target>: failing input: <path>`.
pub fn fuzz(target: &Target) {
    let seconds: u64 = std::env::var("LEAKTRACE_FUZZ_SECONDS").map_or(10, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("LEAKTRACE_FUZZ_SECONDS={s:?} is not a whole number"))
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let corpus = corpus(target);
    let seeds: Vec<Vec<u8>> = corpus.iter().map(|(_, b)| b.clone()).collect();
    let tokens: Vec<&[u8]> = target.tokens.iter().chain(COMMON_TOKENS).copied().collect();
    let generated = (target.generate)(&seeds);
    let base = if seeds.is_empty() {
        generated
    } else {
        prop_oneof![1 => generated, 2 => proptest::sample::select(seeds.clone())].boxed()
    };
    let strategy = (base, vec(mutation(), 0..6));
    // A random seed each run: runs explore different inputs, and a crash is saved as bytes.
    let mut runner = TestRunner::new(Config::default());
    let watchdog = Watchdog::start(target.name);
    QUIET.with(|q| q.set(true));
    let mut tried = 0u64;
    // The seeds first: a fix that is undone shows at once.
    let mut pending = corpus;
    let crash = loop {
        if Instant::now() >= deadline {
            break None;
        }
        let (source, input) = pending.pop().map_or_else(
            || {
                let (mut input, mutations) = strategy
                    .new_tree(&mut runner)
                    .expect("the strategies never reject")
                    .current();
                for m in &mutations {
                    m.apply(&mut input, &seeds, &tokens, target.max_len);
                }
                (None, input)
            },
            |(path, bytes)| (Some(path), bytes),
        );
        tried += 1;
        if let Err(panic) = watchdog.guard(&input, source.as_deref(), || run_caught(target, &input))
        {
            break Some((source, input, panic));
        }
    };
    eprintln!(
        "fuzz {}: {tried} inputs in {:.1} s",
        target.name,
        started.elapsed().as_secs_f64()
    );
    if let Some((source, input, panic)) = crash {
        // A corpus file that panics is already a regression test: no copy of it.
        let (path, input) = match source {
            Some(path) => (path, input),
            None => {
                let input = shrink(target, &watchdog, input, &panic);
                (save(target.name, "crash", &input), input)
            }
        };
        QUIET.with(|q| q.set(false));
        watchdog.stop();
        eprintln!("fuzz {}: failing input: {}", target.name, path.display());
        panic!(
            "fuzz {}: a {}-byte input panicked at {panic}\nIt is {}: `cargo test -p leaktrace \
             --test fuzz` replays it until the parser is fixed",
            target.name,
            input.len(),
            path.display()
        );
    }
    QUIET.with(|q| q.set(false));
    watchdog.stop();
}

/// Cuts chunks out of a crashing input while it still panics at the same place, so that the
/// saved regression input is small enough to read.
fn shrink(target: &Target, watchdog: &Watchdog, mut input: Vec<u8>, panic: &Panic) -> Vec<u8> {
    let until = Instant::now() + SHRINK_FOR;
    let mut chunk = input.len() / 2;
    while chunk > 0 && Instant::now() < until {
        let mut at = 0;
        while at < input.len() && Instant::now() < until {
            let end = (at + chunk).min(input.len());
            let candidate = [&input[..at], &input[end..]].concat();
            match watchdog.guard(&candidate, None, || run_caught(target, &candidate)) {
                Err(p) if p.location == panic.location => input = candidate,
                _ => at += chunk,
            }
        }
        chunk /= 2;
    }
    input
}

/// Writes `input` into the corpus under a name given by its hash: the same crash found twice
/// is one file.
fn save(target: &str, kind: &str, input: &[u8]) -> PathBuf {
    let mut hasher = DefaultHasher::new();
    input.hash(&mut hasher);
    let path = corpus_dir(target).join(format!("{kind}-{:016x}", hasher.finish()));
    fs::write(&path, input).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// Where and why a parser panicked.
#[derive(Debug)]
struct Panic {
    location: String,
    message: String,
}

impl std::fmt::Display for Panic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

thread_local! {
    /// Set while fuzzing: thousands of expected panics during shrinking would bury the output.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// Where this thread last panicked, recorded by the hook (the payload has no location).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn run_caught(target: &Target, input: &[u8]) -> Result<(), Panic> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map_or_else(|| "?".to_owned(), ToString::to_string);
            LAST_PANIC.with(|l| *l.borrow_mut() = Some(location));
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
    panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input))).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(a panic without a message)".to_owned());
        let location = LAST_PANIC
            .with(|l| l.borrow_mut().take())
            .unwrap_or_else(|| "?".to_owned());
        Panic { location, message }
    })
}

/// The input being run, since when, and the corpus file it came from (none if generated).
type Running = Arc<Mutex<Option<(Instant, Vec<u8>, Option<PathBuf>)>>>;

/// Watches the input being run from another thread: a parser that loops cannot be caught
/// like a panic, so a generated input is saved as `hang-<hash>` and the process ends, naming
/// it.
struct Watchdog {
    running: Running,
    done: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(target: &'static str) -> Self {
        let running: Running = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let (running, done) = (Arc::clone(&running), Arc::clone(&done));
            move || {
                while !done.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(100));
                    let guard = running.lock().unwrap_or_else(|e| e.into_inner());
                    let Some((since, input, source)) = guard.as_ref() else {
                        continue;
                    };
                    if since.elapsed() < HANG_AFTER {
                        continue;
                    }
                    let path = match source {
                        Some(path) => path.clone(),
                        None => save(target, "hang", input),
                    };
                    // Straight to the file: the test harness would swallow `eprintln!` output
                    // of a test that never finishes.
                    let _ = writeln!(
                        std::io::stderr(),
                        "fuzz {target}: a {}-byte input ran for over {HANG_AFTER:?}\n\
                         fuzz {target}: failing input: {}",
                        input.len(),
                        path.display()
                    );
                    std::process::exit(101);
                }
            }
        });
        Self {
            running,
            done,
            thread: Some(thread),
        }
    }

    fn guard<T>(&self, input: &[u8], source: Option<&Path>, run: impl FnOnce() -> T) -> T {
        let set = |value| *self.running.lock().unwrap_or_else(|e| e.into_inner()) = value;
        set(Some((
            Instant::now(),
            input.to_vec(),
            source.map(Path::to_path_buf),
        )));
        let result = run();
        set(None);
        result
    }

    fn stop(mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the watchdog does not panic");
        }
    }
}

/// A scratch file for targets whose parser reads a path, one per thread and name: replays of
/// several targets run in parallel.
pub fn scratch_file(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static DIR: ScratchDir = ScratchDir::new(NEXT.fetch_add(1, Ordering::Relaxed));
    }
    DIR.with(|dir| dir.0.join(name))
}

/// A directory removed when its thread ends.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(n: usize) -> Self {
        // In memory where there is a tmpfs: a disk's writeback would be most of a target's time.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("leaktrace-fuzz-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Writes `input` to this thread's scratch file `name`, for parsers that take a path.
pub fn scratch_with(name: &str, input: &[u8]) -> PathBuf {
    let path = scratch_file(name);
    fs::write(&path, input).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// One edit of an input; positions are fractions of the length at the time it applies.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    InsertToken(Index, Index),
    /// An [`INTERESTING`] integer, little-endian, 1, 2, 4 or 8 bytes wide, over what is there.
    WriteInteger(Index, Index, u8),
    Remove(Index, usize),
    Truncate(Index),
    /// Bytes of a corpus seed, inserted.
    Splice(Index, Index, Index, usize),
    /// A run of the input's own bytes, copied elsewhere in it.
    Duplicate(Index, usize, Index),
    /// The input repeated until it is this long: reaches per-line, per-file and per-table caps.
    Grow(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = || any::<Index>();
    prop_oneof![
        8 => (at(), 0..8u8).prop_map(|(a, b)| Mutation::FlipBit(a, b)),
        6 => (at(), any::<u8>()).prop_map(|(a, b)| Mutation::SetByte(a, b)),
        4 => (at(), vec(any::<u8>(), 1..16)).prop_map(|(a, b)| Mutation::Insert(a, b)),
        8 => (at(), at()).prop_map(|(a, t)| Mutation::InsertToken(a, t)),
        4 => (at(), at(), 0..4u8).prop_map(|(a, v, w)| Mutation::WriteInteger(a, v, w)),
        4 => (at(), 1..64usize).prop_map(|(a, n)| Mutation::Remove(a, n)),
        2 => at().prop_map(Mutation::Truncate),
        4 => (at(), at(), at(), 1..512usize).prop_map(|(a, s, f, n)| Mutation::Splice(a, s, f, n)),
        2 => (at(), 1..256usize, at()).prop_map(|(f, n, t)| Mutation::Duplicate(f, n, t)),
        // Rare, and mostly to tens of KiB: megabytes make every later input wait.
        1 => prop_oneof![3 => 6..=15u32, 1 => 16..=22u32].prop_map(|bits| Mutation::Grow(1 << bits)),
    ]
}

impl Mutation {
    fn apply(&self, input: &mut Vec<u8>, seeds: &[Vec<u8>], tokens: &[&[u8]], max_len: usize) {
        let len = input.len();
        // A position inside the input, or `None` when it is empty.
        let inside = |i: &Index| (len > 0).then(|| i.index(len));
        let between = |i: &Index| i.index(len + 1);
        match self {
            Self::FlipBit(at, bit) => {
                if let Some(at) = inside(at) {
                    input[at] ^= 1 << bit;
                }
            }
            Self::SetByte(at, byte) => {
                if let Some(at) = inside(at) {
                    input[at] = *byte;
                }
            }
            Self::Insert(at, bytes) => {
                let at = between(at);
                input.splice(at..at, bytes.iter().copied());
            }
            Self::InsertToken(at, token) => {
                let at = between(at);
                input.splice(at..at, tokens[token.index(tokens.len())].iter().copied());
            }
            Self::WriteInteger(at, value, width) => {
                let bytes = INTERESTING[value.index(INTERESTING.len())].to_le_bytes();
                let width = 1 << width;
                if len >= width {
                    let at = at.index(len - width + 1);
                    input[at..at + width].copy_from_slice(&bytes[..width]);
                }
            }
            Self::Remove(at, n) => {
                if let Some(at) = inside(at) {
                    input.drain(at..(at + n).min(len));
                }
            }
            Self::Truncate(at) => input.truncate(between(at)),
            Self::Splice(at, seed, from, n) => {
                if seeds.is_empty() {
                    return;
                }
                let seed = &seeds[seed.index(seeds.len())];
                let from = from.index(seed.len() + 1);
                let at = between(at);
                let piece = &seed[from..(from + n).min(seed.len())];
                input.splice(at..at, piece.iter().copied());
            }
            Self::Duplicate(from, n, to) => {
                if let Some(from) = inside(from) {
                    let piece = input[from..(from + n).min(len)].to_vec();
                    let to = between(to);
                    input.splice(to..to, piece);
                }
            }
            Self::Grow(to) => {
                if len > 0 {
                    let to = (*to).min(max_len);
                    while input.len() < to {
                        input.extend_from_within(..len.min(to - input.len()));
                    }
                }
            }
        }
        input.truncate(max_len);
    }
}
