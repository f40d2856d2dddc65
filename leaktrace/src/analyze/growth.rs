//! Growth verdict for one allocation site's live-bytes series.
//!
//! Input: `(seconds since start, live bytes)` samples of one call stack.
//! Output: a [`Verdict`] with the statistics behind it, see [`classify`].
//!
//! Trends are judged with the Mann-Kendall test and measured with the
//! Theil-Sen slope. Both use only ranks or medians, so one odd sample, a
//! skewed noise distribution or a non-linear leak does not mislead them the
//! way a least-squares fit would.

use std::f64::consts::SQRT_2;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Name of the method, reported with every [`Growth`].
pub const METHOD: &str = "mann-kendall+theil-sen";

/// Most points the O(n²) trend statistics look at. Longer series are cut to
/// this many evenly spaced points, first and last included, so a 4-minute
/// trace sampled at 1 s is used whole and a longer one stays cheap: about
/// 33 000 pairs, 0.2 ms a stack (measured; 600 points took 1.2 ms). The agent
/// judges every stack of every target at each sample, so this bounds its cost
/// on a long-running node. Over 1,000 noise seeds of 600-point series, a noisy
/// leak, a slow leak under noise and a GC saw-tooth get the same verdicts with
/// 256 trend points as with 600.
pub const MAX_TREND_POINTS: usize = 256;

/// Significance level of "there is a trend".
const SIGNIFICANCE: f64 = 0.05;
/// Stricter level for a leak: a leak report must rarely be a fluke.
const LEAK_SIGNIFICANCE: f64 = 0.01;
/// Below this many points neither test of growth works: Mann-Kendall
/// cannot reach p < 0.05 (4 points give at best p = 0.09) and 3 steps give
/// no noise scale, so growth must then be a rise that never falls.
const MIN_TEST_POINTS: usize = 5;
/// Fewer points cannot separate a leak from a warm-up.
const LEAK_MIN_POINTS: usize = 10;
/// A shorter window cannot separate a leak from a warm-up either.
const LEAK_MIN_SECONDS: f64 = 5.0;
/// The same for a process traced from its first instruction to its end (a test binary or a
/// test file's worker under `run`): its warm-up is in the series and so is its end, so a
/// shorter life that grows to its last sample is a leak of that life, and fewer points serve
/// (8 strictly rising ones give p < 0.001; a loaded machine samples late).
const LIFE_LEAK_MIN_SECONDS: f64 = 2.0;
const LIFE_LEAK_MIN_POINTS: usize = 8;
/// Least rise, in bytes, for any growth: a runtime's bookkeeping that steps up once by a few
/// hundred bytes (V8's remembered sets, a hash table's next size) is not growth anyone can act
/// on, and a `growing` verdict fails `--fail-on growing`.
const GROWTH_MIN_RISE_BYTES: f64 = 4096.0;
/// Least rise, in bytes, for a leak: a few strings kept by a runtime warming up (a process has
/// hundreds of such stacks) are not worth an engineer's attention, however steady. Smaller
/// steady growth stays `growing`, listed but not called a leak.
const LEAK_MIN_RISE_BYTES: f64 = 64.0 * 1024.0;
/// A swing of this fraction of the window's peak, down and later up again,
/// is memory given back: a garbage collector's tooth or a freed buffer.
const GIVE_BACK: f64 = 0.5;
/// Least rise, from the first to the last trough between give-backs, as a
/// fraction of the peak, for the floor under the churn to be growing.
const FLOOR_RISE: f64 = 0.1;
/// A floor under the churn of this fraction of the peak, not rising, is memory
/// held steadily under garbage that comes and goes: a plateau.
const HELD_FLOOR: f64 = 0.25;
/// A leak never falls by this fraction of its rise (peak minus start
/// level): its noise is small beside its growth. A random walk, whose falls
/// grow with its range, stays out.
const LEAK_MAX_FALL: f64 = 0.2;
/// Share of the window's rise that must still be held at the end, else the
/// growth was mostly given back.
const MIN_KEPT: f64 = 0.5;
/// Share of the window's rise a leak must still hold at the end.
const LEAK_MIN_KEPT: f64 = 0.75;
/// Fraction of the window, at its end, checked for still growing.
const TAIL_FRACTION: f64 = 1.0 / 3.0;
/// Fewest trend points in the tail for it to be judged at all.
const TAIL_MIN_POINTS: usize = 3;
/// A leak's tail grows at least this fraction of the window's average rate.
const LEAK_MIN_TAIL_RATE: f64 = 0.5;
/// A plateau's tail adds at most this share of the window's rise.
const PLATEAU_MAX_TAIL_SHARE: f64 = 0.1;
/// A rise of this many times the step noise is growth even when the
/// Mann-Kendall test misses it: a burst among many noisy flat samples
/// dilutes S, as in a cache that fills in 5 s of a 20 s window.
const SHIFT_NOISE_MULTIPLE: f64 = 5.0;
/// ...and it must be this share of the peak, so that a few bytes on a flat
/// series without noise are not growth.
const SHIFT_MIN_SHARE: f64 = 0.05;
/// Scales a median absolute deviation to a standard deviation under normal
/// noise: 1 / Φ⁻¹(3/4).
const MAD_TO_SIGMA: f64 = 1.4826;
/// The start and end levels are medians of this fraction (1/10) of the
/// points, so one noisy sample does not set them...
const LEVEL_POINTS_DIVISOR: usize = 10;
/// ...but of at most this many, so that on a long window they stay at its
/// ends: the median of its first minute would miss a 30 s warm-up.
const LEVEL_MAX_POINTS: usize = 5;

/// What a live-bytes series says about its allocation site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Sustained growth through the window, not given back.
    Leak,
    /// Growth, but too little evidence yet to call it a leak.
    Growing,
    /// Grew, then flat: a cache that has warmed up.
    Plateau,
    /// Memory allocated and given back, saw-tooth included.
    Churn,
    /// Flat: no significant trend.
    Stable,
}

impl Verdict {
    /// Whether a stack with this verdict is a leak suspect: reported first, never cut by `--top`.
    pub fn is_suspect(self) -> bool {
        matches!(self, Self::Leak | Self::Growing)
    }

    /// Lowercase name, the same as the serialized form.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Leak => "leak",
            Verdict::Growing => "growing",
            Verdict::Plateau => "plateau",
            Verdict::Churn => "churn",
            Verdict::Stable => "stable",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Verdict on one series, with the statistics it rests on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    pub verdict: Verdict,
    /// Theil-Sen slope over the whole window, bytes per second.
    pub bytes_per_s: f64,
    /// Mann-Kendall statistics over the whole window: S, rising minus
    /// falling pairs of samples...
    pub mann_kendall_s: i64,
    /// ...Z, S standardised (positive for growth)...
    pub mann_kendall_z: f64,
    /// ...and the two-sided p-value of Z, so that a shrinking site shows as
    /// significant too.
    pub p_value: f64,
    /// Largest fall from a running peak, as a fraction of that peak (0..=1).
    /// Reported as is; the verdict weighs falls in bytes against the
    /// window's peak and rise instead, so that a fall of a few bytes from a
    /// tiny early peak does not count.
    pub max_drawdown: f64,
    /// Number of points the verdict was based on: the samples with a finite
    /// time. The trend statistics use at most [`MAX_TREND_POINTS`] of them.
    pub points: usize,
    /// Human-readable name of the method, [`METHOD`].
    pub method: String,
}

/// Watch mode: whether a stack's `rise` in populated bytes (last sample minus first) is growth of
/// the process whose resident set went through `rss` (`(seconds, bytes)`, same trace, oldest
/// first). It is where the resident set rose by at least half as much, and its trend over the
/// trace (Theil-Sen slope times the span) rose beyond its own step noise. Otherwise the stack took
/// over pages given back elsewhere (a collector's, the allocator's trimmed top), or the process
/// did not grow at all: the first reading caught in a collector's trough and a few pages of a
/// JavaScript heap settling show a rise and a trend, yet no growth anyone can see. With no
/// resident set read, the stack's own verdict stands.
pub fn rise_seen_in(rise: i64, rss: &[(f64, i64)]) -> bool {
    let (Some(&(t_first, first)), Some(&(t_last, last))) = (rss.first(), rss.last()) else {
        return true;
    };
    let values: Vec<i64> = rss.iter().map(|&(_, v)| v).collect();
    let trend_rise = theil_sen(rss).unwrap_or(0.0) * (t_last - t_first);
    2 * (last - first) >= rise && trend_rise > step_noise(&values)
}

/// Classifies a live-bytes series; never panics, and every number in the
/// result is finite.
///
/// Samples with a non-finite time are dropped and the rest sorted by time,
/// so the caller may pass them as collected. `peak` is the largest value;
/// the start and end levels are medians of the first and last tenth of the
/// points (1 to 5 each), and the rise is end minus start. The first rule
/// that applies gives the verdict:
///
/// 1. Nothing ever live (`peak <= 0`): `stable`.
/// 2. A fall of at least half the peak from a running high: memory was
///    given back. `growing` if the troughs of such falls (a new fall counts
///    once the series has climbed half the peak again) trend upward at
///    p < 0.05, which takes at least 5 of them, and the last is 10 % of the
///    peak or more above the first: memory is retained under the churn.
///    Else `plateau` if at least two troughs sit level at a floor of a
///    quarter of the peak or more (a bounded cache under a garbage
///    collector), else `churn`. So a saw-tooth is never a leak, however steeply its teeth
///    climb.
/// 3. Downward trend, Mann-Kendall p < 0.05: `churn`.
/// 4. No sign of growth, or a rise under 4 KiB: `stable`. From 5 points on, a sign is an upward
///    trend at p < 0.05, or a rise of 5 times the step noise (the scaled
///    median absolute deviation of the steps between samples) and 5 % of
///    the peak: a burst among many noisy flat samples can hide from the
///    test. Below 5 points, where neither works, a sign is a rise that
///    never falls.
/// 5. Less than half of the rise still held at the end (relative to peak
///    minus start): `churn`.
/// 6. Fewer than 3 trend points in the last third of the window, too few
///    to judge it: `growing`.
/// 7. Last third not rising at p < 0.05 (one-sided), and adding at most
///    10 % of the rise, both by its Theil-Sen slope and by its level (end
///    minus the median of its first half): `plateau`.
/// 8. `leak` if all hold: at least 10 points over at least 5 s; upward
///    trend at p < 0.01 with a positive Theil-Sen slope; no fall from a
///    running high of 20 % of the rise or more; at least 75 % of the rise
///    held at the end; a last third with S > 0, growing at half the
///    window's average rate or more.
/// 9. Otherwise `growing`.
///
/// Like any test at 5 %, about one flat noisy series in 20 shows a chance
/// trend; the other conditions send nearly all of those to `churn` or
/// `stable`. Samples are taken as independent: a series that wanders like a
/// random walk shows trends more often, and the fall condition of rule 8
/// keeps most of those from `leak`.
pub fn classify(series: &[(f64, i64)]) -> Growth {
    classify_within(series, LEAK_MIN_SECONDS, LEAK_MIN_POINTS)
}

/// Whether [`classify`] calls `series` a leak, judging only series that moved by a leak's
/// least rise: an exact window asks it of each of thousands of stacks every second.
pub fn is_leak(series: &[(f64, i64)]) -> bool {
    let (low, high) = series
        .iter()
        .fold((i64::MAX, i64::MIN), |(low, high), &(_, v)| {
            (low.min(v), high.max(v))
        });
    // The rise between the start and end levels is at most the whole range.
    high.saturating_sub(low) as f64 >= LEAK_MIN_RISE_BYTES
        && classify(series).verdict == Verdict::Leak
}

/// [`classify`] for the series of a process traced over its whole life, from its first
/// instruction to its exit: a leak needs 2 s and 8 points rather than 5 s and 10.
pub fn classify_life(series: &[(f64, i64)]) -> Growth {
    classify_within(series, LIFE_LEAK_MIN_SECONDS, LIFE_LEAK_MIN_POINTS)
}

fn classify_within(series: &[(f64, i64)], leak_min_seconds: f64, leak_min_points: usize) -> Growth {
    let points = clean(series);
    let values: Vec<i64> = points.iter().map(|&(_, v)| v).collect();
    let trend = evenly_spaced(&points, MAX_TREND_POINTS);
    let trend_values: Vec<i64> = trend.iter().map(|&(_, v)| v).collect();
    let mk = mann_kendall(&trend_values);
    let slope = theil_sen(&trend).unwrap_or(0.0);
    Growth {
        verdict: decide(
            &points,
            &values,
            &trend,
            &mk,
            slope,
            (leak_min_seconds, leak_min_points),
        ),
        bytes_per_s: slope,
        mann_kendall_s: mk.s,
        mann_kendall_z: mk.z,
        p_value: mk.p_two_sided(),
        max_drawdown: max_drawdown(&values),
        points: points.len(),
        method: METHOD.to_string(),
    }
}

/// The rules listed on [`classify`], numbered alike. `points` are clean,
/// `values` their bytes, `trend` the subset `whole` and `slope` came from.
fn decide(
    points: &[(f64, i64)],
    values: &[i64],
    trend: &[(f64, i64)],
    whole: &MannKendall,
    slope: f64,
    (leak_min_seconds, leak_min_points): (f64, usize),
) -> Verdict {
    // 1.
    let Some(peak) = values.iter().copied().max().filter(|&p| p > 0) else {
        return Verdict::Stable;
    };
    let peak = peak as f64;

    // 2.
    let troughs = give_back_troughs(values, GIVE_BACK * peak);
    if !troughs.is_empty() {
        return if floor_rises(&troughs, peak) {
            Verdict::Growing
        } else if floor_held(&troughs, peak) {
            Verdict::Plateau
        } else {
            Verdict::Churn
        };
    }

    // 3.
    let p = whole.p_two_sided();
    if whole.s < 0 && p < SIGNIFICANCE {
        return Verdict::Churn;
    }

    // 4.
    let (start, end) = start_end_levels(values);
    let rise = end - start;
    let growth_seen = if values.len() < MIN_TEST_POINTS {
        is_non_decreasing_rise(values)
    } else {
        let trend = whole.s > 0 && p < SIGNIFICANCE;
        let shift =
            rise >= SHIFT_NOISE_MULTIPLE * step_noise(values) && rise >= SHIFT_MIN_SHARE * peak;
        trend || shift
    };
    if !growth_seen || rise < GROWTH_MIN_RISE_BYTES {
        return Verdict::Stable;
    }

    // 5. A trend may come with no rise at all; with one, `peak - start`
    // is at least the rise, so the share is within 0..=1.
    let kept = if rise > 0.0 {
        rise / (peak - start)
    } else {
        0.0
    };
    if kept < MIN_KEPT {
        return Verdict::Churn;
    }

    // 6. Both ends exist: `values` has a positive peak, so it is not empty.
    let (t_first, t_last) = (points[0].0, points[points.len() - 1].0);
    let duration = t_last - t_first;
    if !(duration > 0.0 && duration.is_finite()) {
        return Verdict::Growing;
    }
    let tail_span = duration * TAIL_FRACTION;
    let tail: Vec<(f64, i64)> = trend
        .iter()
        .copied()
        .filter(|&(t, _)| t >= t_last - tail_span)
        .collect();
    if tail.len() < TAIL_MIN_POINTS {
        return Verdict::Growing;
    }

    // 7. The tail's gain is measured by its slope and by its level: the
    // slope alone is 0 for a jump at the very end, most tail pairs being
    // ties then.
    let tail_values: Vec<i64> = tail.iter().map(|&(_, v)| v).collect();
    let tail_mk = mann_kendall(&tail_values);
    let tail_rate = theil_sen(&tail).unwrap_or(0.0);
    let gain_by_slope = tail_rate * tail_span;
    let gain_by_level = end - level(&tail_values[..tail_values.len() / 2]);
    let max_gain = PLATEAU_MAX_TAIL_SHARE * rise;
    if tail_mk.p_increasing() >= SIGNIFICANCE
        && gain_by_slope <= max_gain
        && gain_by_level <= max_gain
    {
        return Verdict::Plateau;
    }

    // 8, 9.
    let leak = values.len() >= leak_min_points
        && duration >= leak_min_seconds
        && rise >= LEAK_MIN_RISE_BYTES
        && whole.s > 0
        && p < LEAK_SIGNIFICANCE
        && slope > 0.0
        && largest_fall(values) < LEAK_MAX_FALL * (peak - start)
        && kept >= LEAK_MIN_KEPT
        && tail_mk.s > 0
        && tail_rate >= LEAK_MIN_TAIL_RATE * rise / duration;
    if leak {
        Verdict::Leak
    } else {
        Verdict::Growing
    }
}

/// Rule 2's test of the troughs between give-backs: memory is retained
/// under the churn when they trend upward and the last is well above the
/// first. With fewer than 5 troughs the trend cannot be significant.
fn floor_rises(troughs: &[i64], peak: f64) -> bool {
    let (Some(&first), Some(&last)) = (troughs.first(), troughs.last()) else {
        return false;
    };
    let floor = mann_kendall(troughs);
    floor.s > 0
        && floor.p_two_sided() < SIGNIFICANCE
        && last as f64 - first as f64 >= FLOOR_RISE * peak
}

/// Rule 2's test for a bounded set kept under the churn (a cache whose evicted entries wait for a
/// garbage collector): the troughs, at least two of them, stay level (first to last within 10 %
/// of the peak) at a floor of a quarter of the peak or more. A saw-tooth of pure garbage falls
/// to (nearly) nothing instead.
fn floor_held(troughs: &[i64], peak: f64) -> bool {
    let (Some(&first), Some(&last)) = (troughs.first(), troughs.last()) else {
        return false;
    };
    let mut sorted = troughs.to_vec();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2] as f64;
    troughs.len() >= 2
        && median >= HELD_FLOOR * peak
        && ((last - first) as f64).abs() < FLOOR_RISE * peak
}

/// Mann-Kendall trend statistics of a series in time order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MannKendall {
    /// Rising pairs minus falling pairs: positive for an upward trend.
    pub s: i64,
    /// Variance of `s` under "no trend", corrected for ties.
    pub variance: f64,
    /// `s` standardised with a continuity correction of 1; 0 when the
    /// variance is 0, as in a constant series, which has no trend.
    pub z: f64,
}

impl MannKendall {
    /// Chance of a trend at least this strong either way under "no trend".
    /// Taken from `erfc` directly so that small values keep their precision;
    /// capped at 1, which the approximation overshoots by 3e-8 at z = 0.
    pub fn p_two_sided(&self) -> f64 {
        erfc(self.z.abs() / SQRT_2).min(1.0)
    }

    /// Chance of an upward trend at least this strong under "no trend".
    pub fn p_increasing(&self) -> f64 {
        0.5 * erfc(self.z / SQRT_2)
    }
}

/// Mann-Kendall test on `values` in time order: S, its tie-corrected
/// variance and Z, with the normal approximation that holds from about
/// 10 points on.
///
/// Only the order of the values matters, which makes the test blind to the
/// size of outliers and to the shape of the trend. O(n²): callers cap `n`,
/// as [`classify`] does with [`MAX_TREND_POINTS`].
pub fn mann_kendall(values: &[i64]) -> MannKendall {
    let s: i64 = values
        .iter()
        .enumerate()
        // `Ordering` as i64 is the sign of b - a: -1, 0 or 1.
        .map(|(i, a)| values[i + 1..].iter().map(|b| b.cmp(a) as i64).sum::<i64>())
        .sum();

    // Each group of t equal values removes t(t-1)(2t+5) from the
    // numerator: tied pairs can never count as rising or falling.
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let ties: f64 = sorted
        .chunk_by(|a, b| a == b)
        .map(|group| {
            let t = group.len() as f64;
            t * (t - 1.0) * (2.0 * t + 5.0)
        })
        .sum();
    let n = values.len() as f64;
    let variance = ((n * (n - 1.0) * (2.0 * n + 5.0) - ties) / 18.0).max(0.0);

    let z = if variance > 0.0 {
        (s - s.signum()) as f64 / variance.sqrt()
    } else {
        0.0
    };
    MannKendall { s, variance, z }
}

/// Fewest values in each third for [`level_shift`]: with k, a step where nothing changed has a
/// chance of 1 in C(2k, k), 5 % at 3.
pub const STEP_THIRD: usize = 3;

/// A step up between the first and last thirds of `values` (time order): every value of the
/// last third above every value of the first. Returns how far the median moved.
///
/// Mann-Kendall weighs every pair alike, so a rise that then levels off (memory that climbs
/// during a burst of work and stays: the shape of retention) counts for little beside the
/// plateau's own ups and downs; this asks only what the user sees, "higher now than before".
/// A rank test (Mann-Whitney U at complete separation), blind to outliers' size like the other.
pub fn level_shift(values: &[i64]) -> Option<i64> {
    let k = values.len() / 3;
    if k < STEP_THIRD {
        return None;
    }
    let (mut first, mut last) = (values[..k].to_vec(), values[values.len() - k..].to_vec());
    let before_max = *first.iter().max()?;
    let after_min = *last.iter().min()?;
    if after_min <= before_max {
        return None;
    }
    first.sort_unstable();
    last.sort_unstable();
    Some(last[k / 2] - first[k / 2])
}

/// Theil-Sen slope: the median of the slopes between all pairs of points,
/// in bytes per second. `None` without two points at different times.
///
/// Unlike a least-squares fit, it is not moved by up to ~29 % of outliers.
/// Pairs at the same time, and slopes too large for an `f64`, are skipped.
/// O(n²): callers cap `n`, as [`classify`] does with [`MAX_TREND_POINTS`].
pub fn theil_sen(points: &[(f64, i64)]) -> Option<f64> {
    let mut slopes: Vec<f64> = points
        .iter()
        .enumerate()
        .flat_map(|(i, &(t1, v1))| {
            points[i + 1..]
                .iter()
                .map(move |&(t2, v2)| (v2 as f64 - v1 as f64) / (t2 - t1))
        })
        .filter(|slope| slope.is_finite())
        .collect();
    median(&mut slopes)
}

/// Complementary error function, `1 - erf(x)`, with a fractional error below
/// 1.2e-7 everywhere: the Chebyshev fit of Press et al., Numerical Recipes,
/// §6.2. Relative, not absolute, precision matters for small p-values.
/// NaN stays NaN.
pub fn erfc(x: f64) -> f64 {
    // Coefficients of t⁰..t⁹ in the exponent.
    const COEFFICIENTS: [f64; 10] = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ];
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let polynomial = COEFFICIENTS.iter().rev().fold(0.0, |acc, c| acc * t + c);
    let upper = t * (-z * z + polynomial).exp();
    if x >= 0.0 { upper } else { 2.0 - upper }
}

/// Standard normal cumulative distribution function, through [`erfc`].
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / SQRT_2)
}

/// Largest fall from a running peak, as a fraction of that peak, in 0..=1.
/// Falls below zero count as 1; values before the first positive peak
/// count for nothing, since nothing was held to give back.
pub fn max_drawdown(values: &[i64]) -> f64 {
    let mut high = i64::MIN;
    let mut worst: f64 = 0.0;
    for &v in values {
        high = high.max(v);
        if high > 0 {
            worst = worst.max((high as f64 - v as f64) / high as f64);
        }
    }
    worst.min(1.0)
}

/// Unicode sparkline of the series (e.g. "▁▂▃▅▇"), at most `width` chars.
///
/// Points are sorted by time and split into `width` buckets of consecutive
/// points; each bucket shows its largest value, so short spikes of churn stay
/// visible. The scale starts at zero, not at the smallest value, so that a
/// small change on a large baseline is not drawn as a large one.
pub fn sparkline(series: &[(f64, i64)], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let points = clean(series);
    let buckets = width.min(points.len());
    let highs: Vec<i64> = (0..buckets)
        .map(|k| {
            let bucket = &points
                [split_index(k, points.len(), buckets)..split_index(k + 1, points.len(), buckets)];
            bucket.iter().map(|&(_, v)| v).fold(i64::MIN, i64::max)
        })
        .collect();
    let low = highs.iter().copied().fold(0, i64::min) as f64;
    let high = highs.iter().copied().fold(0, i64::max) as f64;
    let top = (BARS.len() - 1) as f64;
    highs
        .iter()
        .map(|&v| {
            let level = if high > low {
                ((v as f64 - low) / (high - low) * top).round()
            } else {
                0.0
            };
            // `level` is within 0..=top; the clamp only guards rounding.
            BARS[level.clamp(0.0, top) as usize]
        })
        .collect()
}

/// Samples with a finite time, sorted by time. The sort is stable, so
/// samples at the same time keep the order they were given in.
fn clean(series: &[(f64, i64)]) -> Vec<(f64, i64)> {
    let mut points: Vec<(f64, i64)> = series
        .iter()
        .copied()
        .filter(|(t, _)| t.is_finite())
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// At most `max` of `points`, evenly spaced by index, first and last kept:
/// deterministic, and still spread over the whole window.
fn evenly_spaced(points: &[(f64, i64)], max: usize) -> Vec<(f64, i64)> {
    if points.len() <= max {
        return points.to_vec();
    }
    (0..max)
        .map(|k| points[split_index(k, points.len() - 1, max - 1)])
        .collect()
}

/// `k * len / parts` without overflow. For `k <= parts` the result is at
/// most `len`, so it fits back into `usize`.
fn split_index(k: usize, len: usize, parts: usize) -> usize {
    (k as u128 * len as u128 / parts.max(1) as u128) as usize
}

/// Lowest value of each fall of at least `swing` from a running high. A fall
/// ends when the series climbs `swing` above its lowest value, or with the
/// window. The climb needed in between keeps noise around a trough from
/// counting as more falls.
fn give_back_troughs(values: &[i64], swing: f64) -> Vec<i64> {
    let mut troughs = Vec::new();
    let Some(&first) = values.first() else {
        return troughs;
    };
    let mut high = first;
    let mut falling_low: Option<i64> = None;
    for &v in values {
        match falling_low {
            None if v > high => high = v,
            None if high as f64 - v as f64 >= swing => falling_low = Some(v),
            Some(low) if v < low => falling_low = Some(v),
            Some(low) if v as f64 - low as f64 >= swing => {
                troughs.push(low);
                falling_low = None;
                high = v;
            }
            _ => {}
        }
    }
    troughs.extend(falling_low);
    troughs
}

/// Largest fall from a running high, in bytes.
fn largest_fall(values: &[i64]) -> f64 {
    let mut high = i64::MIN;
    let mut fall: f64 = 0.0;
    for &v in values {
        high = high.max(v);
        fall = fall.max(high as f64 - v as f64);
    }
    fall
}

/// Medians of the first and of the last tenth of `values`, at least 1 and
/// at most [`LEVEL_MAX_POINTS`] values each: the levels the window starts
/// and ends at, robust to noise.
fn start_end_levels(values: &[i64]) -> (f64, f64) {
    let k = (values.len() / LEVEL_POINTS_DIVISOR)
        .clamp(1, LEVEL_MAX_POINTS)
        .min(values.len());
    (level(&values[..k]), level(&values[values.len() - k..]))
}

/// Median of `values` in bytes; 0 when empty.
fn level(values: &[i64]) -> f64 {
    let mut bytes: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    median(&mut bytes).unwrap_or(0.0)
}

/// Typical change between consecutive samples when nothing happens: the
/// median absolute deviation of the steps, scaled to a standard deviation.
/// Deviations from the median step leave out both a steady trend and the
/// few large steps of a burst.
fn step_noise(values: &[i64]) -> f64 {
    let mut steps: Vec<f64> = values
        .windows(2)
        .map(|w| w[1] as f64 - w[0] as f64)
        .collect();
    let Some(typical) = median(&mut steps) else {
        return 0.0;
    };
    let mut deviations: Vec<f64> = steps.iter().map(|step| (step - typical).abs()).collect();
    MAD_TO_SIGMA * median(&mut deviations).unwrap_or(0.0)
}

/// True when the series never decreases and ends higher than it starts.
fn is_non_decreasing_rise(values: &[i64]) -> bool {
    values.windows(2).all(|w| w[0] <= w[1]) && values.first() < values.last()
}

/// Median, reordering `values` in O(n); `None` when empty. An even count
/// takes the midpoint of the middle pair, which cannot overflow.
fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let odd = values.len() % 2 == 1;
    let (below, &mut upper, _) = values.select_nth_unstable_by(values.len() / 2, f64::total_cmp);
    if odd {
        return Some(upper);
    }
    let lower = below.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some(lower.midpoint(upper))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: i64 = 1 << 20;

    /// One sample per second, from t = 0.
    fn per_second(values: impl IntoIterator<Item = i64>) -> Vec<(f64, i64)> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i as f64, v))
            .collect()
    }

    /// Tiny deterministic noise source (Knuth's MMIX LCG).
    struct Lcg(u64);

    impl Lcg {
        /// Uniform integer in `-amplitude..=amplitude`.
        fn noise(&mut self, amplitude: i64) -> i64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let span = 2 * amplitude as u64 + 1;
            ((self.0 >> 33) % span) as i64 - amplitude
        }
    }

    fn verdict(series: &[(f64, i64)]) -> Verdict {
        classify(series).verdict
    }

    fn assert_close(actual: f64, expected: f64, tolerance: f64) {
        assert!(
            (actual - expected).abs() <= tolerance,
            "{actual} is not within {tolerance} of {expected}"
        );
    }

    fn assert_finite(growth: &Growth) {
        for x in [
            growth.bytes_per_s,
            growth.mann_kendall_z,
            growth.p_value,
            growth.max_drawdown,
        ] {
            assert!(x.is_finite(), "{growth:?}");
        }
        assert!((0.0..=1.0).contains(&growth.p_value), "{growth:?}");
        assert!((0.0..=1.0).contains(&growth.max_drawdown), "{growth:?}");
    }

    #[test]
    fn erfc_matches_tables() {
        assert_close(erfc(0.0), 1.0, 1e-7);
        assert_close(erfc(0.5), 0.479_500_122, 1e-7);
        assert_close(erfc(1.0), 0.157_299_207, 1e-7);
        assert_close(erfc(-1.0), 1.842_700_793, 1e-7);
        // Relative precision in the far tail, where p-values live.
        assert_close(erfc(3.0) / 2.209_049_700e-5, 1.0, 1e-6);
        assert_eq!(erfc(f64::INFINITY), 0.0);
        assert_eq!(erfc(f64::NEG_INFINITY), 2.0);
    }

    #[test]
    fn normal_cdf_matches_tables() {
        assert_close(normal_cdf(0.0), 0.5, 1e-7);
        assert_close(normal_cdf(1.0), 0.841_344_746, 1e-7);
        assert_close(normal_cdf(-1.0), 0.158_655_254, 1e-7);
        assert_close(normal_cdf(1.959_963_985), 0.975, 1e-7);
        assert_close(normal_cdf(-2.575_829_304), 0.005, 1e-8);
    }

    #[test]
    fn mann_kendall_rising_series() {
        // 10 rising pairs; variance 5·4·15/18; Z = (10 - 1)/√16.67.
        let mk = mann_kendall(&[1, 2, 3, 4, 5]);
        assert_eq!(mk.s, 10);
        assert_close(mk.variance, 300.0 / 18.0, 1e-12);
        assert_close(mk.z, 9.0 / (300.0f64 / 18.0).sqrt(), 1e-12);
        assert_close(mk.p_two_sided(), 0.027_486, 1e-5);
        assert_close(mk.p_increasing(), 0.013_743, 1e-5);
    }

    #[test]
    fn mann_kendall_falling_series_mirrors_rising() {
        let mk = mann_kendall(&[5, 4, 3, 2, 1]);
        assert_eq!(mk.s, -10);
        assert_close(mk.z, -9.0 / (300.0f64 / 18.0).sqrt(), 1e-12);
        assert_close(mk.p_two_sided(), 0.027_486, 1e-5);
        assert_close(mk.p_increasing(), 1.0 - 0.013_743, 1e-5);
    }

    #[test]
    fn mann_kendall_corrects_for_ties() {
        // Pairs: 5 rising, 1 tied. Variance (4·3·13 - 2·1·9)/18 = 138/18.
        let mk = mann_kendall(&[1, 2, 2, 3]);
        assert_eq!(mk.s, 5);
        assert_close(mk.variance, 138.0 / 18.0, 1e-12);
        assert_close(mk.z, 4.0 / (138.0f64 / 18.0).sqrt(), 1e-12);
    }

    #[test]
    fn mann_kendall_without_information_has_no_trend() {
        for values in [&[][..], &[7], &[3, 3, 3, 3], &[1, 2]] {
            let mk = mann_kendall(values);
            assert_eq!(mk.z, 0.0, "{values:?}");
            assert_eq!(mk.p_two_sided(), 1.0, "{values:?}");
        }
        assert_eq!(mann_kendall(&[3, 3, 3, 3]).variance, 0.0);
    }

    #[test]
    fn level_shift_sees_a_step_and_not_noise() {
        // Two readings before a burst, the climb, then a plateau that wobbles.
        let step = [10, 11, 40, 80, 120, 112, 118, 109, 121, 115];
        assert_eq!(level_shift(&step), Some(115 - 11));
        // A plateau dipping once to the start's level is no step.
        let dip = [10, 11, 40, 80, 120, 112, 118, 9, 121, 115];
        assert_eq!(level_shift(&dip), None);
        assert_eq!(level_shift(&[5, 3, 6, 4, 5, 7, 3, 6, 4]), None);
        // Too few readings for thirds of three.
        assert_eq!(level_shift(&[1, 2, 3, 4, 5, 6, 7, 8]), None);
        assert_eq!(level_shift(&[-4, -3, -2, -1, 0, 1, 2, 3, 4]), Some(3 - -3));
    }

    #[test]
    fn theil_sen_of_a_line_is_its_slope() {
        let line: Vec<(f64, i64)> = (0..10).map(|i| (2.0 * i as f64, 100 + 6 * i)).collect();
        assert_eq!(theil_sen(&line), Some(3.0));
    }

    #[test]
    fn theil_sen_ignores_an_outlier() {
        // Slopes: six of 1, then 24.75, 32.67, 48.5, 96; median of 10 is 1.
        let points = per_second([1, 2, 3, 4, 100]);
        assert_eq!(theil_sen(&points), Some(1.0));
    }

    #[test]
    fn theil_sen_averages_the_middle_pair() {
        // Slopes 1, 1, 100/3, 1, 49.5, 98: the middle pair is 1 and 100/3.
        let points = per_second([0, 1, 2, 100]);
        assert_close(
            theil_sen(&points).unwrap(),
            (1.0 + 100.0 / 3.0) / 2.0,
            1e-12,
        );
    }

    #[test]
    fn theil_sen_needs_two_distinct_times() {
        assert_eq!(theil_sen(&[]), None);
        assert_eq!(theil_sen(&[(1.0, 5)]), None);
        assert_eq!(theil_sen(&[(1.0, 5), (1.0, 9)]), None);
        assert_eq!(theil_sen(&[(1.0, 5), (1.0, 9), (3.0, 9)]), Some(1.0));
    }

    #[test]
    fn max_drawdown_is_relative_to_the_running_peak() {
        assert_eq!(max_drawdown(&[]), 0.0);
        assert_eq!(max_drawdown(&[0, 0, 0]), 0.0);
        assert_eq!(max_drawdown(&[1, 2, 3]), 0.0);
        // Peak 10 falls to 2 (80 %); the later 20 → 15 is 25 %.
        assert_close(max_drawdown(&[10, 5, 8, 2, 20, 15]), 0.8, 1e-12);
        assert_eq!(max_drawdown(&[10, -5]), 1.0);
    }

    #[test]
    fn troughs_are_counted_once_per_swing() {
        // Falls of 5 or more; noise at the bottom (0, 3, 0, 4) is one trough.
        assert_eq!(give_back_troughs(&[0, 10, 0, 10, 1, 10, 2], 5.0), [0, 1, 2]);
        assert_eq!(give_back_troughs(&[10, 0, 3, 0, 4, 10, 0], 5.0), [0, 0]);
        assert_eq!(give_back_troughs(&[0, 4, 1, 4, 0], 5.0), [0; 0]);
        assert_eq!(give_back_troughs(&[], 5.0), [0; 0]);
    }

    #[test]
    fn is_leak_agrees_with_classify() {
        let leak = per_second((0..12).map(|t| t * 64 * 1024));
        assert!(is_leak(&leak));
        assert_eq!(verdict(&leak), Verdict::Leak);
        // The same shape, under a leak's least rise: never judged.
        let small = per_second((0..12).map(|t| t * 1024));
        assert!(!is_leak(&small));
        assert!(!is_leak(&per_second((0..12).map(|_| 5 * MIB))));
        assert!(!is_leak(&[]));
    }

    #[test]
    fn a_rise_is_seen_where_the_resident_set_grew_beyond_its_noise() {
        let per_second = |mib: &[f64]| -> Vec<(f64, i64)> {
            mib.iter()
                .enumerate()
                .map(|(t, m)| (t as f64, (m * MIB as f64) as i64))
                .collect()
        };
        // A leak under a collector: 1 MiB a second, every other reading 0.5 MiB up.
        let leaking: Vec<(f64, i64)> = (0..10)
            .map(|t| (t as f64, 40 * MIB + t * MIB + (t % 2) * MIB / 2))
            .collect();
        assert!(rise_seen_in(9 * MIB, &leaking));
        assert!(
            rise_seen_in(MIB / 2, &leaking),
            "a small stack of a growing process, under the resident set's noise, is growth"
        );
        // Pages taken over from a trimmed heap: the stack rose, the resident set did not.
        let flat = per_second(&[40.0; 10]);
        assert!(!rise_seen_in(5 * MIB, &flat));
        // A bounded service under a collector, its first reading caught in a trough (the
        // resident set of a control in watch mode, 43.6 MiB and back up through ±0.5 MiB steps):
        // it ends 0.7 MiB higher, yet a few pages of its JavaScript heap are no growth of it.
        let churning = per_second(&[43.6, 44.8, 44.8, 44.3, 44.8, 44.3, 44.3, 44.8, 44.3, 44.3]);
        assert!(!rise_seen_in(16 * 1024, &churning));
        assert!(
            rise_seen_in(16 * 1024, &[]),
            "no resident set: the verdict stands"
        );
    }

    #[test]
    fn step_noise_ignores_trend_and_bursts() {
        // Steps 10, 10, 10, 970, 10, 10: all but the burst are the median.
        assert_eq!(step_noise(&[0, 10, 20, 30, 1000, 1010, 1020]), 0.0);
        // Steps ±1 around 0: deviations all 1.
        assert_close(step_noise(&[0, 1, 0, 1, 0]), MAD_TO_SIGMA, 1e-12);
        assert_eq!(step_noise(&[]), 0.0);
        assert_eq!(step_noise(&[7]), 0.0);
    }

    #[test]
    fn noisy_linear_leak_is_a_leak() {
        let mut lcg = Lcg(1);
        let series = per_second((0..30).map(|t| (t * 64 * 1024 + lcg.noise(40_000)).max(0)));
        let growth = classify(&series);
        assert_eq!(growth.verdict, Verdict::Leak, "{growth:?}");
        assert_close(growth.bytes_per_s, 65_536.0, 4_000.0);
        assert!(growth.p_value < 1e-6);
        assert_eq!(growth.points, 30);
        assert_eq!(growth.method, "mann-kendall+theil-sen");
    }

    #[test]
    fn small_leak_on_a_large_baseline_is_a_leak() {
        let mut lcg = Lcg(2);
        let series = per_second((0..120).map(|t| 100 * MIB + t * 10_000 + lcg.noise(2_000)));
        assert_eq!(verdict(&series), Verdict::Leak);
    }

    #[test]
    fn leak_after_an_early_freed_buffer_is_a_leak() {
        // 1 MiB freed at 3 s is small beside the 10 MiB the leak reaches.
        let series = per_second((0..60).map(|t| match t {
            0..=2 => MIB,
            _ => (t - 3) * 10 * MIB / 56,
        }));
        assert_eq!(verdict(&series), Verdict::Leak);
    }

    #[test]
    fn gc_saw_tooth_is_churn() {
        // Climbs for 8 s, then drops to ~0; 20 s.
        let mut lcg = Lcg(3);
        let series = per_second((0..=20).map(|t| (t % 8) * MIB + 4096 + lcg.noise(4096)));
        let growth = classify(&series);
        assert_eq!(growth.verdict, Verdict::Churn, "{growth:?}");
        assert!(growth.max_drawdown > 0.9);
    }

    #[test]
    fn gc_saw_tooth_is_never_a_leak_at_any_phase_or_length() {
        for len in [12, 20, 23, 60, 601, 2000] {
            for phase in 0..8 {
                let series = per_second((0..len).map(|t| ((t + phase) % 8) * MIB));
                assert_eq!(verdict(&series), Verdict::Churn, "len {len}, phase {phase}");
            }
        }
    }

    #[test]
    fn saw_tooth_with_rising_floor_is_growing() {
        // The floor under 1 MiB teeth gains 64 KiB per 6 s tooth: memory is
        // retained, but the churn hides whether for good, so not a leak.
        let series = per_second((0..60).map(|t| t / 6 * 64 * 1024 + (t % 6) * MIB / 5));
        assert_eq!(verdict(&series), Verdict::Growing);
    }

    #[test]
    fn noisy_saw_tooth_with_rising_floor_is_growing() {
        let mut lcg = Lcg(9);
        let series = per_second(
            (0..60).map(|t| t / 6 * 64 * 1024 + (t % 6) * MIB / 5 + 100_000 + lcg.noise(100_000)),
        );
        assert_eq!(verdict(&series), Verdict::Growing);
    }

    #[test]
    fn two_teeth_cannot_show_a_rising_floor() {
        // Troughs at 0.4 and 0.8 MiB: too few to tell a trend from chance.
        let series = per_second((0..24).map(|t| t / 8 * 400 * 1024 + (t % 8) * MIB / 4));
        assert_eq!(verdict(&series), Verdict::Churn);
    }

    #[test]
    fn bounded_cache_is_a_plateau() {
        // Grows fast for 5 s, then flat with noise for 15 s.
        let mut lcg = Lcg(4);
        let series = per_second((0..20).map(|t| t.min(5) * 2 * MIB + lcg.noise(1024)));
        let growth = classify(&series);
        assert_eq!(growth.verdict, Verdict::Plateau, "{growth:?}");
    }

    #[test]
    fn early_warm_up_in_a_long_window_is_a_plateau() {
        // 20 MiB in the first 30 s of 10 minutes: the burst is too short
        // for Mann-Kendall, but 20 MiB is far above the 1 KiB noise.
        let mut lcg = Lcg(8);
        let series = per_second((0..600).map(|t| t.min(30) * 2 * MIB / 3 + lcg.noise(1024)));
        assert_eq!(verdict(&series), Verdict::Plateau);
    }

    #[test]
    fn jump_at_the_last_sample_is_growing() {
        // Not a plateau: nothing says the new level will hold.
        let series = per_second((0..20).map(|t| if t == 19 { MIB } else { 0 }));
        assert_eq!(verdict(&series), Verdict::Growing);
    }

    #[test]
    fn step_is_a_plateau() {
        let series = per_second((0..20).map(|t| if t < 5 { 0 } else { 8 * MIB }));
        let growth = classify(&series);
        assert_eq!(growth.verdict, Verdict::Plateau, "{growth:?}");
        // Most pairs are ties, so the median slope is 0 although S is not.
        assert_eq!(growth.bytes_per_s, 0.0);
        assert_eq!(growth.mann_kendall_s, 75);
    }

    #[test]
    fn growth_slowing_to_a_crawl_is_growing_not_plateau() {
        // Warm-up, then a steady 4 KiB/s: the tail is still rising.
        let series = per_second((0..60).map(|t| t.min(5) * 2 * MIB + t * 4096));
        assert_eq!(verdict(&series), Verdict::Growing);
    }

    #[test]
    fn flat_series_is_stable() {
        let growth = classify(&per_second([4096; 30]));
        assert_eq!(growth.verdict, Verdict::Stable);
        assert_eq!(growth.bytes_per_s, 0.0);
        assert_eq!(growth.mann_kendall_s, 0);
        assert_eq!(growth.p_value, 1.0);
    }

    #[test]
    fn noisy_flat_series_is_stable() {
        let mut lcg = Lcg(7);
        let series = per_second((0..60).map(|_| MIB + lcg.noise(1024)));
        assert_eq!(verdict(&series), Verdict::Stable);
    }

    #[test]
    fn noisy_flat_series_are_mostly_stable_and_never_leaks() {
        // A 5 % test finds a chance trend in about 1 series in 20.
        let mut stable = 0;
        for seed in 0..200 {
            let mut lcg = Lcg(seed);
            let series = per_second((0..60).map(|_| MIB + lcg.noise(1024)));
            let found = verdict(&series);
            assert_ne!(found, Verdict::Leak, "seed {seed}");
            stable += usize::from(found == Verdict::Stable);
        }
        assert!(stable >= 180, "only {stable} of 200 stable");
    }

    #[test]
    fn random_walks_are_rarely_leaks() {
        // Steps of ±1 KiB: trends by chance, but falls as large as the rise.
        let mut leaks = 0;
        for seed in 0..200 {
            let mut lcg = Lcg(seed);
            let mut level = MIB;
            let series = per_second((0..60).map(|_| {
                level += lcg.noise(1024);
                level
            }));
            leaks += usize::from(verdict(&series) == Verdict::Leak);
        }
        assert!(leaks <= 6, "{leaks} of 200 random walks called leaks");
    }

    #[test]
    fn short_rising_series_is_growing_not_leak() {
        assert_eq!(verdict(&per_second([0, 10_000, 20_000])), Verdict::Growing);
        let nine_points = per_second((0..9).map(|t| t * MIB));
        assert_eq!(verdict(&nine_points), Verdict::Growing);
    }

    #[test]
    fn tiny_series_get_sensible_verdicts() {
        assert_eq!(verdict(&[(0.0, 5)]), Verdict::Stable);
        assert_eq!(verdict(&[(0.0, 5), (1.0, 5)]), Verdict::Stable);
        assert_eq!(verdict(&[(0.0, 5_000), (1.0, 10_000)]), Verdict::Growing);
        // A step smaller than a page is no growth to act on.
        assert_eq!(verdict(&[(0.0, 5), (1.0, 9)]), Verdict::Stable);
        assert_eq!(verdict(&[(0.0, 9), (1.0, 8), (2.0, 9)]), Verdict::Stable);
        assert_eq!(verdict(&[(0.0, 9), (1.0, 1), (2.0, 9)]), Verdict::Churn);
    }

    #[test]
    fn empty_series_is_stable_with_zero_rate() {
        let growth = classify(&[]);
        assert_eq!(
            growth,
            Growth {
                verdict: Verdict::Stable,
                bytes_per_s: 0.0,
                mann_kendall_s: 0,
                mann_kendall_z: 0.0,
                p_value: 1.0,
                max_drawdown: 0.0,
                points: 0,
                method: METHOD.to_string(),
            }
        );
    }

    #[test]
    fn all_zero_series_is_stable() {
        let growth = classify(&per_second([0; 50]));
        assert_eq!(growth.verdict, Verdict::Stable);
        assert_eq!(growth.bytes_per_s, 0.0);
    }

    #[test]
    fn allocate_and_free_spikes_are_churn() {
        let series = per_second((0..40).map(|t| if t % 7 == 3 { 64 * 1024 } else { 0 }));
        assert_eq!(verdict(&series), Verdict::Churn);
    }

    #[test]
    fn noise_of_a_few_bytes_near_zero_is_churn() {
        for seed in 0..50 {
            let mut lcg = Lcg(seed);
            let series = per_second((0..60).map(|_| 100 + lcg.noise(100)));
            assert_ne!(verdict(&series), Verdict::Leak, "seed {seed}");
        }
        let mut lcg = Lcg(10);
        let series = per_second((0..60).map(|_| 100 + lcg.noise(100)));
        assert_eq!(verdict(&series), Verdict::Churn);
    }

    #[test]
    fn spikes_are_never_a_leak_even_if_growing() {
        let series = per_second((0..40).map(|t| if t % 5 == 4 { t * 1024 } else { 0 }));
        assert_ne!(verdict(&series), Verdict::Leak);
    }

    #[test]
    fn shrinking_site_is_churn() {
        let series = per_second((0..30).map(|t| 10 * MIB - t * 100_000));
        assert_eq!(verdict(&series), Verdict::Churn);
    }

    #[test]
    fn growth_given_back_at_the_end_is_churn() {
        // Rises by 4 MiB over a 16 MiB baseline, then falls back to near it:
        // no fall reaches half the peak, yet the growth is not kept.
        let series =
            per_second((0..30).map(|t| 16 * MIB + (t.min(20) - (t - 20).max(0) * 2) * MIB / 5));
        assert_eq!(verdict(&series), Verdict::Churn);
    }

    #[test]
    fn long_series_are_downsampled_but_counted_whole() {
        let mut lcg = Lcg(5);
        let series = per_second((0..5000).map(|t| MIB + t * 100 + lcg.noise(500)));
        let growth = classify(&series);
        assert_eq!(growth.verdict, Verdict::Leak);
        assert_eq!(growth.points, 5000);
        assert_close(growth.bytes_per_s, 100.0, 2.0);
    }

    #[test]
    fn irregular_late_starting_series_is_judged_by_time() {
        // First seen at 100 s, sampled at uneven times; 4 KiB/s throughout.
        let times = [
            100.0, 100.5, 103.0, 104.0, 107.5, 108.0, 111.0, 115.0, 116.0, 120.0, 121.5, 125.0,
        ];
        let series: Vec<(f64, i64)> = times
            .iter()
            .map(|&t| (t, ((t - 100.0) * 4096.0) as i64))
            .collect();
        let growth = classify(&series);
        assert_eq!(growth.verdict, Verdict::Leak);
        assert_close(growth.bytes_per_s, 4096.0, 1.0);
    }

    #[test]
    fn steady_growth_too_small_to_matter_is_not_a_leak() {
        // A runtime keeping a few strings: perfectly steady, 10 B/s for 20 s, less than a page.
        let series = per_second((0..20).map(|t| t * 10));
        assert_eq!(classify(&series).verdict, Verdict::Stable);
        // 300 B/s for 20 s: growth, but under the 64 KiB a leak needs.
        let series = per_second((0..20).map(|t| t * 300));
        assert_eq!(classify(&series).verdict, Verdict::Growing);
        // The same shape at 8 KiB/s is one.
        let series = per_second((0..20).map(|t| t * 8192));
        assert_eq!(classify(&series).verdict, Verdict::Leak);
    }

    #[test]
    fn input_order_does_not_matter() {
        let mut lcg = Lcg(6);
        let sorted = per_second((0..40).map(|t| t * 1000 + lcg.noise(300)));
        let mut shuffled = sorted.clone();
        shuffled.reverse();
        shuffled.swap(3, 17);
        assert_eq!(classify(&shuffled), classify(&sorted));
    }

    #[test]
    fn hostile_input_neither_panics_nor_yields_nan() {
        let inputs: Vec<Vec<(f64, i64)>> = vec![
            vec![(f64::NAN, 1), (f64::INFINITY, 2), (f64::NEG_INFINITY, 3)],
            vec![
                (0.0, i64::MIN),
                (1.0, i64::MAX),
                (2.0, i64::MIN),
                (3.0, i64::MAX),
            ],
            per_second([i64::MAX; 12]),
            per_second((0..12).map(|t| i64::MAX - 12 + t)),
            per_second((0..12).map(|t| -t)),
            vec![(5.0, 1), (5.0, 2), (5.0, 3), (5.0, 4), (5.0, 5), (5.0, 6)],
            vec![(0.0, 0), (1e-300, 1 << 40), (2e-300, 1 << 41)],
            vec![(-f64::MAX, 0), (0.0, 10), (f64::MAX, 20)],
            (0..15)
                .map(|t| (t as f64, if t == 7 { 0 } else { MIB }))
                .collect(),
        ];
        for series in &inputs {
            let growth = classify(series);
            assert_finite(&growth);
            let _ = sparkline(series, 10);
        }
        assert_eq!(classify(&inputs[0]).points, 0);
    }

    #[test]
    fn sparkline_draws_from_zero_to_the_peak() {
        assert_eq!(sparkline(&per_second(0..8), 8), "▁▂▃▄▅▆▇█");
        assert_eq!(sparkline(&per_second([0, 0, 7, 7]), 10), "▁▁██");
        assert_eq!(sparkline(&per_second([5; 4]), 4), "████");
        assert_eq!(sparkline(&per_second([0; 4]), 4), "▁▁▁▁");
    }

    #[test]
    fn sparkline_buckets_keep_spikes() {
        // Eight points in four buckets; the lone spike survives.
        let line = sparkline(&per_second([0, 0, 0, 0, 0, 8, 0, 0]), 4);
        assert_eq!(line, "▁▁█▁");
        assert_eq!(line.chars().count(), 4);
    }

    #[test]
    fn sparkline_degenerate_inputs() {
        assert_eq!(sparkline(&[], 10), "");
        assert_eq!(sparkline(&per_second([1, 2, 3]), 0), "");
        let long = per_second(0..1000);
        assert_eq!(sparkline(&long, 40).chars().count(), 40);
    }

    #[test]
    fn verdict_names_are_lowercase() {
        let names: Vec<&str> = [
            Verdict::Leak,
            Verdict::Growing,
            Verdict::Plateau,
            Verdict::Churn,
            Verdict::Stable,
        ]
        .iter()
        .map(Verdict::as_str)
        .collect();
        assert_eq!(names, ["leak", "growing", "plateau", "churn", "stable"]);
        assert_eq!(Verdict::Plateau.to_string(), "plateau");
    }

    #[test]
    fn bounded_cache_under_a_garbage_collector_is_a_plateau() {
        // A 2 MiB cache fills in 2 s; evicted entries pile up 1 MiB/s on top until a collection
        // every 3 s frees them: the floor holds at 2 MiB.
        let series = per_second((0..21).map(|t| {
            let cache = (t.min(2)) * MIB;
            cache + (t % 3) * MIB
        }));
        assert_eq!(classify(&series).verdict, Verdict::Plateau);
        // The same teeth falling to nothing are churn.
        let series = per_second((0..21).map(|t| (t % 3) * MIB));
        assert_eq!(classify(&series).verdict, Verdict::Churn);
    }
}
