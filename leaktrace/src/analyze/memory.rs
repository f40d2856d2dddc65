//! Leak or retention: whether a process's growing memory is live blocks or memory its
//! allocator keeps after they were freed, from the allocator's own account over the trace.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::{
    analyze::growth::{level_shift, mann_kendall, theil_sen},
    process::memory::{Breakdown, MallocAccount, Reader, Reading},
};

/// Most points kept per series (past it, every other one is dropped, as for sites).
const MAX_POINTS: usize = 2048;

/// Growth below this is noise: the top chunk alone moves by glibc's top pad (128 KiB) and a
/// page or two.
pub const GROWTH_FLOOR: i64 = 512 << 10;

/// A share of the allocator's growth below this does not make a verdict: a retaining process
/// keeps a few live blocks that pin its free memory, a leaking one frees a little.
pub const GROWTH_SHARE: f64 = 0.2;

/// What a process's allocator growth is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Blocks in use grew.
    Leak,
    /// Freed memory the allocator keeps grew while blocks in use did not.
    Retention,
    /// Both grew.
    Both,
    /// V8's heap grew more than the allocator's memory, and no blocks in use grew with it:
    /// JavaScript objects, not native memory (what the allocator kept, if it grew, is smaller).
    #[serde(rename = "v8_heap")]
    V8Heap,
    /// Neither grew.
    Neither,
    /// The allocator's account could not be read twice.
    Unknown,
}

/// One point of a process's memory series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryPoint {
    /// Seconds since the report's time zero.
    pub t: f64,
    pub rss_bytes: u64,
    /// In use by the allocator's account (with `mmap`ed blocks), when it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_use_bytes: Option<u64>,
    /// Free but kept by the allocator, when its account was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// The resident set by what holds it (as the breakdown's classes; they sum to `rss_bytes`).
    #[serde(default)]
    pub malloc_heaps: u64,
    #[serde(default)]
    pub v8_heap: u64,
    #[serde(default)]
    pub thread_stacks: u64,
    #[serde(default)]
    pub code_and_files: u64,
    #[serde(default)]
    pub other_anonymous: u64,
}

/// How each quantity moved between the first and last readable points, and its trend over all
/// of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryGrowth {
    pub from_s: f64,
    pub to_s: f64,
    pub rss_bytes: i64,
    pub in_use_bytes: i64,
    pub free_bytes: i64,
    /// V8's heap, first to last reading.
    #[serde(default)]
    pub v8_heap_bytes: i64,
    /// Theil-Sen slopes over the readable points, in bytes a second.
    #[serde(default)]
    pub rss_bytes_per_s: f64,
    #[serde(default)]
    pub in_use_bytes_per_s: f64,
    #[serde(default)]
    pub free_bytes_per_s: f64,
    /// Readings with the allocator's account.
    #[serde(default)]
    pub points: usize,
    /// What the verdict was made on: [`TREND`] or, with fewer than [`TREND_POINTS`] readings,
    /// [`FIRST_LAST`].
    #[serde(default)]
    pub method: String,
}

/// The verdict follows the trend of every reading: a rise must be monotonic (Mann-Kendall) and
/// large (Theil-Sen slope over the span), so a spike at the last reading or memory given back
/// is no growth.
pub const TREND: &str = "mann-kendall+theil-sen";

/// Too few readings for a trend: the first and last are compared.
pub const FIRST_LAST: &str = "first-last";

/// Fewest readings for a trend: with 5 rising ones Mann-Kendall's chance of no rise is 1.4 %.
pub const TREND_POINTS: usize = 5;

/// Mann-Kendall's chance of "no upward trend" under which a rise is a trend.
const TREND_P: f64 = 0.05;

/// A process's memory, as the report shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryReport {
    pub verdict: Verdict,
    /// The verdict and its numbers in one line.
    pub summary: String,
    /// Resident bytes by what holds them, at the last reading.
    pub breakdown: Breakdown,
    /// The allocator's account at the last reading.
    pub malloc: MallocAccount,
    pub growth: MemoryGrowth,
    pub series: Vec<MemoryPoint>,
    /// What people do about what was found.
    pub advice: Vec<String>,
    pub notes: Vec<String>,
}

/// Least time between two readings of one process's memory, in seconds.
const READ_EVERY_S: f64 = 1.0;
/// A reading costs reads by the hundred (`smaps`, and the arenas' free lists: thousands of
/// chunks in a busy process): it is made at most once every this many times the CPU time its
/// last one took, so that it takes at most 5 % of a CPU however large the process.
const COST_RATIO: f64 = 20.0;
/// Past its first [`EARLY_S`] seconds of readings, a process is read at most once every this
/// many times the CPU time of its last reading: 0.05 % of a CPU. A trace left running (watch
/// mode, the agent) pays that for as long as it runs, and a resident set that leaks grows for
/// minutes; the bench's Node service takes 4-6 ms a reading (`smaps` is most of it), which
/// every 5 s was a quarter of watch mode's CPU there, and is read every 10 s or so past its
/// first minute. A short trace (a test, an incident responder's minute) reads as before; the
/// tiered agent's trigger, which needs a reading at every sample, judges light ones (see
/// [`Watch::trend`]).
const STEADY_COST_RATIO: f64 = 2000.0;
/// Light readings kept per process for [`Watch::trend`].
const TREND_KEPT: usize = 64;
const EARLY_S: f64 = 60.0;

/// Reads the memory of every traced process, once a second at most, and keeps their series.
#[derive(Default)]
pub struct Watch {
    targets: HashMap<u32, Watched>,
    /// A light reading at every sample besides the full ones (see [`Watch::trend`]).
    trend: bool,
}

struct Watched {
    reader: Reader,
    series: Vec<MemoryPoint>,
    last: Option<Reading>,
    /// The last allocator account that read back, with when: a process allocating without
    /// pause can race the last reading.
    last_readable: Option<(f64, MallocAccount)>,
    /// The CPU time the last reading took, in seconds.
    cost_s: f64,
    /// The last light readings, when asked for.
    trend: VecDeque<MemoryPoint>,
}

impl Watch {
    /// `trend`: also make a light reading of each process at every sample.
    pub fn new(trend: bool) -> Self {
        Self {
            targets: HashMap::new(),
            trend,
        }
    }

    /// The last light readings of `pid`, oldest first: points with the resident set and V8's
    /// heap only, one per sample, each read the same way (see [`Reader::read_resident`]). A
    /// trigger that judges the latest readings needs them fresh and alike; full readings are
    /// paced by their cost and mix `smaps`'s sums with the rest.
    pub fn trend(&self, pid: u32) -> Vec<MemoryPoint> {
        self.targets
            .get(&pid)
            .map(|w| w.trend.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Reads one live process `at` seconds after the session's start: in full unless it was
    /// read less than a second ago (`last`: the trace ends, read it anyway), then lightly when
    /// a trend is kept (after the full reading, whose V8 chunks the light one counts).
    /// `v8_heap`: the ranges V8 mapped for its heap (see [`Reader::read`]), asked for only
    /// when the process is read.
    pub fn sample(
        &mut self,
        pid: u32,
        allocator: &str,
        at: f64,
        last: bool,
        v8_heap: impl FnOnce() -> Vec<(u64, u64)>,
    ) {
        let watched = self.targets.entry(pid).or_insert_with(|| Watched {
            reader: Reader::new(pid, allocator),
            series: Vec::new(),
            last: None,
            last_readable: None,
            cost_s: 0.0,
            trend: VecDeque::new(),
        });
        let v8_heap = std::cell::LazyCell::new(v8_heap);
        watched.read_full(at, last, || (*v8_heap).clone());
        if self.trend
            && let Some(resident) = watched.reader.read_resident((*v8_heap).clone())
        {
            watched.trend.push_back(MemoryPoint {
                t: at,
                rss_bytes: resident.rss,
                v8_heap: resident.v8_heap,
                ..MemoryPoint::default()
            });
            if watched.trend.len() > TREND_KEPT {
                watched.trend.pop_front();
            }
        }
    }

    pub fn forget(&mut self, pid: u32) {
        self.targets.remove(&pid);
    }

    /// The report of one process, its times in seconds since the session's start; `None` if it
    /// was never read.
    pub fn report(&self, pid: u32) -> Option<MemoryReport> {
        let watched = self.targets.get(&pid)?;
        let last = watched.last.as_ref()?;
        let series = watched.series.clone();
        let (verdict, growth) = judge(&series);
        let mut notes = last.notes.clone();
        let malloc = match (&watched.last_readable, last.malloc.readable) {
            (Some((at, account)), false) => {
                notes.push(format!(
                    "the last reading of the allocator's account failed ({}); the account shown \
                     was read {:.1}s earlier",
                    last.malloc.unreadable.as_deref().unwrap_or("unreadable"),
                    series.last().map_or(0.0, |p| p.t) - at
                ));
                account.clone()
            }
            _ => last.malloc.clone(),
        };
        // The one-line summary is the report's to word (see `report::memory`).
        Some(MemoryReport {
            verdict,
            summary: String::new(),
            breakdown: last.breakdown.clone(),
            advice: advice(verdict, &malloc),
            malloc,
            growth,
            series,
            notes,
        })
    }
}

impl Watched {
    /// A full reading, paced by what the last one cost (see [`COST_RATIO`]).
    fn read_full(&mut self, at: f64, last: bool, v8_heap: impl FnOnce() -> Vec<(u64, u64)>) {
        // Once a second is enough for a resident set, and keeps a short interval's samples on
        // pace, once an account has read back; until then, and after a reading whose account
        // raced the allocator, every sample tries (a verdict is judged on the readings that read
        // back); less often when a reading is costly (see `COST_RATIO`), and past the first minute
        // at a steady cost (see `STEADY_COST_RATIO`).
        let steady = self.series.first().is_some_and(|p| at - p.t >= EARLY_S);
        let raced = self.series.last().is_some_and(|p| p.free_bytes.is_none());
        let gap = match self.last_readable {
            Some(_) if !raced && steady => READ_EVERY_S.max(self.cost_s * STEADY_COST_RATIO),
            Some(_) if !raced => READ_EVERY_S.max(self.cost_s * COST_RATIO),
            _ => self.cost_s * COST_RATIO,
        };
        if !last && self.series.last().is_some_and(|p| at - p.t < gap) {
            return;
        }
        let started = crate::process::stat::thread_cpu_time();
        let read = self.reader.read(v8_heap());
        self.cost_s =
            (crate::process::stat::thread_cpu_time().saturating_sub(started)).as_secs_f64();
        let Some(reading) = read else {
            return;
        };
        let malloc = &reading.malloc;
        let readable = malloc.readable;
        let b = &reading.breakdown;
        self.series.push(MemoryPoint {
            t: at,
            rss_bytes: b.rss,
            in_use_bytes: readable.then(|| malloc.in_use_bytes + malloc.mmapped_bytes.unwrap_or(0)),
            free_bytes: readable.then_some(malloc.free_bytes),
            malloc_heaps: b.malloc_heaps,
            v8_heap: b.v8_heap,
            thread_stacks: b.thread_stacks,
            code_and_files: b.code_and_files,
            other_anonymous: b.other_anonymous,
        });
        if self.series.len() > MAX_POINTS {
            let mut i = 0;
            self.series.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
        if readable {
            self.last_readable = Some((at, reading.malloc.clone()));
        }
        self.last = Some(reading);
    }
}

/// The verdict over a series, from the points where the allocator's account was read: on the
/// trend of every reading from [`TREND_POINTS`] of them on (or a step between the first and last
/// thirds, see [`level_shift`]), else between the first and last.
pub fn judge(series: &[MemoryPoint]) -> (Verdict, MemoryGrowth) {
    let readable: Vec<&MemoryPoint> = series.iter().filter(|p| p.free_bytes.is_some()).collect();
    let (Some(first), Some(last)) = (readable.first(), readable.last()) else {
        return (Verdict::Unknown, MemoryGrowth::default());
    };
    let delta = |a: Option<u64>, b: Option<u64>| b.unwrap_or(0) as i64 - a.unwrap_or(0) as i64;
    let of = |value: fn(&MemoryPoint) -> u64| -> Vec<(f64, i64)> {
        readable
            .iter()
            .map(|p| (p.t, i64::try_from(value(p)).unwrap_or(i64::MAX)))
            .collect()
    };
    let rss = of(|p| p.rss_bytes);
    let in_use = of(|p| p.in_use_bytes.unwrap_or(0));
    let free = of(|p| p.free_bytes.unwrap_or(0));
    let slope = |points: &[(f64, i64)]| theil_sen(points).unwrap_or(0.0);
    let trend = readable.len() >= TREND_POINTS;
    let mut growth = MemoryGrowth {
        from_s: first.t,
        to_s: last.t,
        rss_bytes: last.rss_bytes as i64 - first.rss_bytes as i64,
        in_use_bytes: delta(first.in_use_bytes, last.in_use_bytes),
        free_bytes: delta(first.free_bytes, last.free_bytes),
        v8_heap_bytes: last.v8_heap as i64 - first.v8_heap as i64,
        rss_bytes_per_s: slope(&rss),
        in_use_bytes_per_s: slope(&in_use),
        free_bytes_per_s: slope(&free),
        points: readable.len(),
        method: if trend { TREND } else { FIRST_LAST }.to_owned(),
    };
    if readable.len() < 2 {
        growth.method.clear();
        return (Verdict::Unknown, growth);
    }
    // The rise each quantity is judged on, and whether it counts as one at all.
    let span = last.t - first.t;
    let rise = |points: &[(f64, i64)], first_last: i64| -> (i64, bool) {
        if trend {
            let values: Vec<i64> = points.iter().map(|&(_, v)| v).collect();
            let rising = mann_kendall(&values).p_increasing() < TREND_P;
            let trend_rise = (slope(points) * span) as i64;
            match level_shift(&values) {
                Some(step) => (trend_rise.max(step), true),
                None => (trend_rise, rising),
            }
        } else {
            (first_last, true)
        }
    };
    let (in_use_rise, in_use_rising) = rise(&in_use, growth.in_use_bytes);
    let (free_rise, free_rising) = rise(&free, growth.free_bytes);
    let total = (in_use_rise.abs() + free_rise.abs()) as f64;
    let grew =
        |d: i64, rising: bool| rising && d >= GROWTH_FLOOR && d as f64 >= GROWTH_SHARE * total;
    let verdict = match (
        grew(in_use_rise, in_use_rising),
        grew(free_rise, free_rising),
    ) {
        (true, true) => Verdict::Both,
        (true, false) => Verdict::Leak,
        (false, true) => Verdict::Retention,
        (false, false) => Verdict::Neither,
    };
    // A JavaScript heap that grows more than the allocator's memory is what the resident set
    // says first; blocks in use that grow keep the verdict theirs.
    let v8 = of(|p| p.v8_heap);
    let (v8_rise, v8_rising) = rise(&v8, growth.v8_heap_bytes);
    let v8_grew = v8_rising
        && v8_rise >= GROWTH_FLOOR
        && v8_rise > in_use_rise.max(0).saturating_add(free_rise.max(0));
    let verdict = match verdict {
        Verdict::Retention | Verdict::Neither if v8_grew => Verdict::V8Heap,
        v => v,
    };
    (verdict, growth)
}

/// What people do about it, in the report's words.
fn advice(verdict: Verdict, malloc: &MallocAccount) -> Vec<String> {
    let mut out = Vec::new();
    if matches!(verdict, Verdict::Retention | Verdict::Both) && malloc.allocator == "glibc" {
        // Fewer arenas return nothing the main arena keeps: say so before the usual remedies.
        if malloc.main_arena_free_bytes > malloc.free_bytes / 2 {
            out.push(
                "the main thread's arena keeps most of the free memory: fewer arenas \
                 (MALLOC_ARENA_MAX) would not give it back; malloc_trim(0) would"
                    .into(),
            );
        }
        out.push(format!(
            "glibc keeps freed memory in its {} arenas (one per thread that allocated, up to 8 \
             per core): MALLOC_ARENA_MAX=2 in the environment caps them, trading some lock \
             contention for less retained memory",
            malloc.arenas
        ));
        out.push(
            "malloc_trim(0) (Node: a native addon, or gdb in an emergency) gives free pages back \
             to the system; MALLOC_TRIM_THRESHOLD_/MALLOC_TOP_PAD_ tune when glibc does it on its \
             own"
            .into(),
        );
        out.push(
            "another allocator (LD_PRELOAD=libjemalloc.so.2 or libmimalloc.so) returns freed \
             memory on its own; measure before and after"
                .into(),
        );
    }
    if matches!(verdict, Verdict::Leak | Verdict::Both) {
        out.push(
            "blocks in use grow: the growing allocation sites below say which code keeps them"
                .into(),
        );
    }
    if verdict == Verdict::V8Heap {
        out.push(
            "V8's heap grows: JavaScript objects, not native memory. A heap snapshot (node \
             --heapsnapshot-signal=SIGUSR2, or the inspector) says what holds them; \
             --max-old-space-size caps the heap"
                .into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept trend gets a light point at every sample, whatever the full readings' pace, and
    /// without a trend no light reading is made.
    #[test]
    fn the_trend_gets_a_point_at_every_sample() {
        let pid = std::process::id();
        for trend in [true, false] {
            let mut watch = Watch::new(trend);
            for at in [0.0, 0.25, 0.5] {
                watch.sample(pid, "glibc", at, false, Vec::new);
            }
            let points = watch.trend(pid);
            assert_eq!(points.len(), if trend { 3 } else { 0 });
            assert!(
                points
                    .iter()
                    .all(|p| p.rss_bytes > 0 && p.free_bytes.is_none())
            );
            assert_eq!(
                points.iter().map(|p| p.t).collect::<Vec<_>>(),
                if trend { vec![0.0, 0.25, 0.5] } else { vec![] }
            );
        }
    }

    #[test]
    fn a_growing_javascript_heap_is_not_called_retention() {
        const MIB: u64 = 1 << 20;
        let with_v8 = |t: f64, v8: u64, in_use: u64, free: u64| MemoryPoint {
            v8_heap: v8,
            ..point(t, 100 * MIB + v8 + in_use + free, in_use, free)
        };
        // V8 +100 MiB, the allocator keeping 10 MiB more: the heap is the story.
        let js: Vec<MemoryPoint> = (0..6u64)
            .map(|i| with_v8(i as f64, i * 20 * MIB, 4 * MIB, i * 2 * MIB))
            .collect();
        let (verdict, growth) = judge(&js);
        assert_eq!(verdict, Verdict::V8Heap);
        assert_eq!(growth.v8_heap_bytes, (100 * MIB) as i64);
        // Blocks in use that grow with it stay a leak.
        let leak: Vec<MemoryPoint> = (0..6u64)
            .map(|i| with_v8(i as f64, i * 20 * MIB, 4 * MIB + i * 12 * MIB, 0))
            .collect();
        assert_eq!(judge(&leak).0, Verdict::Leak);
        // A heap that grows less than the allocator keeps leaves it retention.
        let kept: Vec<MemoryPoint> = (0..6u64)
            .map(|i| with_v8(i as f64, i * MIB, 4 * MIB, i * 10 * MIB))
            .collect();
        assert_eq!(judge(&kept).0, Verdict::Retention);
    }

    /// Free memory that climbs in a burst of work and stays, its plateau wobbling (readings
    /// that fall mid-burst see free memory lent to blocks in use): retention, though Mann-Kendall
    /// alone finds no trend in it.
    #[test]
    fn memory_kept_after_a_burst_is_retention() {
        let free = [3, 2, 2, 110, 100, 105, 70, 98, 65, 97];
        let burst: Vec<MemoryPoint> = free
            .iter()
            .enumerate()
            .map(|(i, &f)| point(i as f64, 200 * MIB, 8 * MIB, f * MIB))
            .collect();
        let values: Vec<i64> = free.iter().map(|&f| (f * MIB) as i64).collect();
        assert!(mann_kendall(&values).p_increasing() >= TREND_P);
        let (verdict, growth) = judge(&burst);
        assert_eq!(verdict, Verdict::Retention);
        assert_eq!(growth.free_bytes, (94 * MIB) as i64);
        // The same climb given back at the end is no step.
        let mut returned = burst.clone();
        returned[9].free_bytes = Some(2 * MIB);
        assert_eq!(judge(&returned).0, Verdict::Neither);
    }

    fn point(t: f64, rss: u64, in_use: u64, free: u64) -> MemoryPoint {
        MemoryPoint {
            t,
            rss_bytes: rss,
            in_use_bytes: Some(in_use),
            free_bytes: Some(free),
            ..MemoryPoint::default()
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn free_memory_growing_alone_is_retention() {
        let series = [
            point(0.0, 10 * MIB, 2 * MIB, MIB),
            point(1.0, 60 * MIB, 3 * MIB, 50 * MIB),
        ];
        let (verdict, growth) = judge(&series);
        assert_eq!(verdict, Verdict::Retention);
        assert_eq!(growth.free_bytes, 49 * MIB as i64);
        assert_eq!(growth.in_use_bytes, MIB as i64);
    }

    #[test]
    fn live_blocks_growing_alone_is_a_leak_and_both_is_both() {
        let leak = [point(0.0, 0, MIB, MIB), point(1.0, 0, 9 * MIB, MIB + 4096)];
        assert_eq!(judge(&leak).0, Verdict::Leak);
        let both = [point(0.0, 0, MIB, MIB), point(1.0, 0, 9 * MIB, 12 * MIB)];
        assert_eq!(judge(&both).0, Verdict::Both);
        let flat = [point(0.0, 0, MIB, MIB), point(1.0, 0, MIB + 100, MIB + 300)];
        assert_eq!(judge(&flat).0, Verdict::Neither);
    }

    /// Readings a second apart, in MiB: (in use, free).
    fn series(values: &[(u64, u64)]) -> Vec<MemoryPoint> {
        values
            .iter()
            .enumerate()
            .map(|(i, &(u, f))| point(i as f64, (u + f) * MIB, u * MIB, f * MIB))
            .collect()
    }

    #[test]
    fn a_steady_rise_is_judged_on_its_trend() {
        let (verdict, growth) = judge(&series(&[
            (2, 1),
            (2, 9),
            (2, 20),
            (2, 31),
            (2, 40),
            (2, 52),
        ]));
        assert_eq!(verdict, Verdict::Retention);
        assert_eq!(growth.method, TREND);
        assert_eq!(growth.points, 6);
        // Theil-Sen: the median of the pairs' slopes.
        assert!((growth.free_bytes_per_s - 31.0 / 3.0 * MIB as f64).abs() < 1.0);
        assert_eq!(growth.in_use_bytes_per_s, 0.0);
    }

    #[test]
    fn a_spike_at_the_last_reading_is_no_growth() {
        // First against last says retention (+50 MiB); seven flat readings say otherwise.
        let spike = series(&[
            (2, 1),
            (2, 1),
            (2, 1),
            (2, 1),
            (2, 1),
            (2, 1),
            (2, 1),
            (2, 51),
        ]);
        let (verdict, growth) = judge(&spike);
        assert_eq!(growth.free_bytes, 50 * MIB as i64);
        assert_eq!(verdict, Verdict::Neither);
        assert_eq!(judge(&spike[6..]).0, Verdict::Retention, "first-last alone");
    }

    #[test]
    fn memory_given_back_or_a_saw_tooth_is_no_growth() {
        let returned = series(&[(2, 1), (2, 30), (2, 60), (2, 40), (2, 20), (2, 2)]);
        assert_eq!(judge(&returned).0, Verdict::Neither);
        let saw = series(&[(2, 1), (2, 40), (2, 2), (2, 41), (2, 3), (2, 42), (2, 4)]);
        assert_eq!(judge(&saw).0, Verdict::Neither);
        // A saw-tooth whose floor keeps rising is a trend, whichever reading comes last.
        let rising = series(&[
            (2, 1),
            (2, 20),
            (2, 10),
            (2, 30),
            (2, 20),
            (2, 40),
            (2, 30),
            (2, 50),
            (2, 40),
        ]);
        assert_eq!(judge(&rising).0, Verdict::Retention);
    }

    #[test]
    fn an_unread_account_gives_no_verdict() {
        let mut p = point(0.0, 0, 0, 0);
        p.free_bytes = None;
        p.in_use_bytes = None;
        assert_eq!(judge(&[p, p]).0, Verdict::Unknown);
        assert_eq!(judge(&[point(0.0, 0, 0, 0)]).0, Verdict::Unknown);
    }
}
