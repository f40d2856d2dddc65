//! The agent's tiers (`--mode tiered`, its default): every target is watched from its page
//! faults, which puts nothing on its own code paths, and the allocator probes are attached to it
//! only for bounded exact windows, while its resident set grows and its budget allows, and not
//! before it is past its warm-up (`--warm-up`: a service starting up grows its heaps to their
//! working size; a leak goes on growing after).
//!
//! The budget is CPU time in a bucket per target and one for the node. A target's bucket fills
//! at its `--max-overhead` share of the CPU time the target itself uses (read from
//! `/proc/PID/stat`), counted as at least [`MIN_CPU`] of a CPU: the traps and the programs run on
//! the target's own threads, so what it loses is their share of its CPU, and a service with half
//! a CPU loses twice as much of its throughput to a CPU second as one with a whole CPU. The floor
//! is for the nearly idle: a process using 1 % of a CPU is not held back by throughput, and
//! without it would never earn a window that costs it a few milliseconds a second. The node's
//! bucket fills at its share of one CPU, wall time: it bounds all the agent costs the machine,
//! its own CPU time included. Both fill from empty (so from the agent's start on, the average
//! never exceeds the budget) up to [`HORIZON`] of their rate at one CPU (a target quiet for a day
//! cannot spend a day's budget in one burst).
//!
//! A window is charged as it runs: its traps, counted by the probes and priced at [`TRAP_COST`],
//! and the programs' own run time; what opening it cost the agent goes to the node. Watching is
//! charged too, between windows and during them (see `watch_cost`): the page-fault programs' run
//! time to the target and the node, the agent's own CPU time to the node. A window closes when
//! its time is up or either bucket is empty; windows of a target that keeps growing repeat with
//! a doubling wait. Between windows a detached uprobe leaves the code as it was: a watched target
//! pays for its page faults only.
//!
//! This module only decides; `windows` attaches, samples and detaches.

use std::time::{Duration, Instant};

use crate::{
    analyze::{
        growth::{mann_kendall, theil_sen},
        memory::MemoryPoint,
    },
    budget::TRAP_COST,
    report::bytes,
};

/// How much unspent budget a bucket keeps, in time at its rate on one CPU.
const HORIZON: Duration = Duration::from_secs(600);
/// The least CPU a target's budget is a share of, in CPUs (see the module's doc).
pub const MIN_CPU: f64 = 0.1;
/// Readings of the resident set the trigger judges: the latest, so that a process that ran
/// clean for hours and then starts to leak is seen growing within minutes (three at the
/// default 10-s interval). Twelve were too few: on the bench's clean service, a collection that
/// shrank V8's heap was followed by 90 s of native growth (16.5 MiB, dead Buffers' memory
/// waiting for the next full collection) and then a plateau, and twelve readings ended just as
/// it levelled off, too early for the later-half rule (see [`growth`]) to see it.
pub const TRIGGER_POINTS: usize = 18;
/// Significance of their rise (Mann-Kendall, one-sided): strict, since a false alarm costs the
/// target a window.
const TRIGGER_P: f64 = 0.01;
/// Least rise over those readings: below it, a heap settling or a cache warming.
const TRIGGER_BYTES: i64 = 2 << 20;
/// The wait between windows doubles up to this many window lengths while growth goes on.
const MAX_BACKOFF: u32 = 32;

/// What the tiers are allowed.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Longest exact window.
    pub window: Duration,
    /// No window for a process younger than this: its heaps growing to their working size as
    /// it starts are not a leak.
    pub warm_up: Duration,
    /// Time-averaged cost allowed per target, in percent of the CPU time it uses.
    pub max_overhead: f64,
    /// The same over every target of the node and the agent itself, in percent of one CPU.
    pub node_max_overhead: f64,
}

/// CPU seconds that may be spent, earned as a share of some other time.
#[derive(Debug)]
pub struct Credit {
    percent: f64,
    seconds: f64,
}

impl Credit {
    /// An empty bucket that earns `percent` of the time it is given.
    pub fn new(percent: f64) -> Self {
        Self {
            percent,
            seconds: 0.0,
        }
    }

    fn cap(&self) -> f64 {
        self.percent / 100.0 * HORIZON.as_secs_f64()
    }

    /// Earns its share of `base` seconds.
    pub fn earn(&mut self, base: f64) {
        self.seconds = (self.seconds + base * self.percent / 100.0).min(self.cap());
    }

    pub fn charge(&mut self, seconds: f64) {
        self.seconds -= seconds;
    }

    /// CPU seconds left (negative once overspent: a window's last stretch is charged after it
    /// ran).
    pub fn seconds(&self) -> f64 {
        self.seconds
    }
}

/// The node's bucket: a share of one CPU, earned with wall time.
#[derive(Debug)]
pub struct NodeCredit {
    credit: Credit,
    at: Instant,
}

impl NodeCredit {
    /// An empty bucket filling at `percent` of one CPU from `now`.
    pub fn new(percent: f64, now: Instant) -> Self {
        Self {
            credit: Credit::new(percent),
            at: now,
        }
    }

    /// Adds what the time since the last refill earned.
    pub fn refill(&mut self, now: Instant) {
        self.credit
            .earn(now.saturating_duration_since(self.at).as_secs_f64());
        self.at = now;
    }

    pub fn charge(&mut self, seconds: f64) {
        self.credit.charge(seconds);
    }

    pub fn seconds(&self) -> f64 {
        self.credit.seconds()
    }
}

/// What a target's tier should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Keep,
    /// Attach the allocator probes.
    Open,
    /// Detach them.
    Close,
}

/// An open window.
#[derive(Debug)]
struct Window {
    opened: Instant,
    /// CPU seconds charged to it.
    spent: f64,
    /// Traps counted in it, at the last charge.
    traps: u64,
}

/// One target's tier and budget.
#[derive(Debug)]
pub struct TargetTier {
    window: Option<Window>,
    credit: Credit,
    /// The target's CPU time at the last refill, when it could be read.
    cpu: Option<Duration>,
    /// When its bucket was last refilled.
    at: Instant,
    /// When it was first watched.
    since: Instant,
    /// When the process started, when that could be read.
    born: Option<Instant>,
    /// CPU seconds its budget is a share of so far: what it used, at least [`MIN_CPU`].
    base: f64,
    /// Doublings of the wait before the next window.
    backoff: u32,
    next_at: Instant,
    /// What the last window cost, in CPU seconds per second: what the next one is expected to.
    rate: Option<f64>,
    /// Windows opened.
    pub windows: u32,
    /// CPU seconds charged to it: every window, and its page faults' programs.
    pub spent: f64,
    /// The part of `spent` that watching cost.
    pub watch_spent: f64,
    /// Its share of the agent's own CPU time, charged to the node's budget only.
    pub agent_spent: f64,
    /// Why it is in its tier, in words.
    pub why: String,
}

impl TargetTier {
    /// A target first watched at `now`, when it was `age` old and had used `cpu` (`None`:
    /// unreadable).
    pub fn new(
        settings: &Settings,
        now: Instant,
        age: Option<Duration>,
        cpu: Option<Duration>,
    ) -> Self {
        Self {
            window: None,
            credit: Credit::new(settings.max_overhead),
            cpu,
            at: now,
            since: now,
            born: age.and_then(|age| now.checked_sub(age)),
            base: 0.0,
            backoff: 0,
            next_at: now,
            rate: None,
            windows: 0,
            spent: 0.0,
            watch_spent: 0.0,
            agent_spent: 0.0,
            why: "watched: not read yet".into(),
        }
    }

    /// Whether an exact window is open.
    pub fn in_window(&self) -> bool {
        self.window.is_some()
    }

    /// The open window's length so far.
    pub fn window_age(&self, now: Instant) -> Option<Duration> {
        self.window
            .as_ref()
            .map(|w| now.saturating_duration_since(w.opened))
    }

    /// CPU seconds charged to the open window so far.
    pub fn window_spent(&self) -> Option<f64> {
        self.window.as_ref().map(|w| w.spent)
    }

    /// What was charged to it, in percent of the CPU time its budget is a share of; 0 until
    /// that is a second's worth of [`MIN_CPU`] (its first sample, charged for the page faults
    /// since the attach, would otherwise read as thousands of percent).
    pub fn average_percent(&self) -> f64 {
        if self.base < MIN_CPU {
            return 0.0;
        }
        self.spent / self.base * 100.0
    }

    /// Earns its budget's share of the CPU time it used since the last refill (`cpu`: what it
    /// has used by `now`), counted as at least [`MIN_CPU`] of the time passed.
    fn refill(&mut self, now: Instant, cpu: Option<Duration>) {
        let wall = now.saturating_duration_since(self.at).as_secs_f64();
        let used = match (self.cpu, cpu) {
            (Some(before), Some(now)) => now.saturating_sub(before).as_secs_f64(),
            _ => 0.0,
        };
        let base = used.max(MIN_CPU * wall);
        self.credit.earn(base);
        self.base += base;
        self.at = now;
        self.cpu = cpu.or(self.cpu);
    }

    /// Charges the open window for its traps (`traps`: counted since it opened) and `programs`
    /// CPU seconds of the programs' run time, to its budget and the node's.
    pub fn charge(&mut self, traps: u64, programs: f64, node: &mut NodeCredit) {
        let Some(window) = self.window.as_mut() else {
            return;
        };
        let new = traps.saturating_sub(window.traps);
        let cost = new as f64 * TRAP_COST.as_secs_f64() + programs;
        window.traps = traps;
        window.spent += cost;
        self.spent += cost;
        self.credit.charge(cost);
        node.charge(cost);
    }

    /// Charges watching: `programs` seconds of its page faults' programs to its budget and the
    /// node's, `agent` seconds of the agent's own work to the node's.
    pub fn charge_watch(&mut self, programs: f64, agent: f64, node: &mut NodeCredit) {
        self.watch_spent += programs;
        self.spent += programs;
        self.credit.charge(programs);
        self.agent_spent += agent;
        node.charge(programs + agent);
    }

    /// Charges `seconds` of the agent's own work for this target alone (opening its window) to
    /// the node's budget, as the rest of the agent's work is: the target's own threads did not
    /// run it, and its budget, a share of what a small target uses, could never pay for it.
    pub fn charge_agent(&mut self, seconds: f64, node: &mut NodeCredit) {
        self.agent_spent += seconds;
        node.charge(seconds);
    }

    /// Decides, given the CPU time the target has used by `now` and why the watch says it
    /// grows (`None`: it does not).
    pub fn step(
        &mut self,
        now: Instant,
        cpu: Option<Duration>,
        growth: Option<&str>,
        node: &NodeCredit,
        settings: &Settings,
    ) -> Step {
        self.refill(now, cpu);
        let budget = settings.max_overhead;
        if let Some(window) = &self.window {
            let age = now.saturating_duration_since(window.opened);
            let rate = window.spent / age.as_secs_f64().max(1e-3) * 100.0;
            let end = if age >= settings.window {
                format!("its {}s are over", settings.window.as_secs())
            } else if self.credit.seconds() <= 0.0 {
                format!(
                    "the target's budget of {budget} % of its CPU is spent (the window cost \
                     {rate:.1} % of a CPU)"
                )
            } else if node.seconds() <= 0.0 {
                format!(
                    "the node's budget of {} % of a CPU is spent",
                    settings.node_max_overhead
                )
            } else {
                return Step::Keep;
            };
            self.why = format!(
                "watched: the last exact window closed after {:.0}s: {end}",
                age.as_secs_f64()
            );
            return Step::Close;
        }
        let Some(growth) = growth else {
            self.backoff = 0;
            self.why = "watched: its resident set is not growing".into();
            return Step::Keep;
        };
        if let Some(age) = self.born.map(|born| now.saturating_duration_since(born))
            && age < settings.warm_up
        {
            self.why = format!(
                "watched: {growth}; it is {:.0}s old: no exact window while it warms up, its \
                 first {}s",
                age.as_secs_f64(),
                settings.warm_up.as_secs()
            );
            return Step::Keep;
        }
        if now < self.next_at {
            self.why = format!(
                "watched: {growth}; next exact window in {:.0}s",
                (self.next_at - now).as_secs_f64()
            );
            return Step::Keep;
        }
        // A full window at the last window's rate, or for a first one at the budget's share of
        // the CPU the target used lately.
        let rate = self.rate.unwrap_or_else(|| {
            let watched = now.saturating_duration_since(self.since).as_secs_f64();
            let used = if watched > 0.0 {
                self.base / watched
            } else {
                MIN_CPU
            };
            budget / 100.0 * used
        });
        let needed = (rate * settings.window.as_secs_f64()).min(self.credit.cap());
        for (whose, credit) in [("its", &self.credit), ("the node's", &node.credit)] {
            if credit.seconds() < needed.min(credit.cap()) {
                self.why = format!(
                    "watched: {growth}; waiting for {whose} budget ({:.2} of {needed:.2} CPU \
                     seconds)",
                    credit.seconds().max(0.0)
                );
                return Step::Keep;
            }
        }
        self.window = Some(Window {
            opened: now,
            spent: 0.0,
            traps: 0,
        });
        self.windows += 1;
        self.why = format!("exact window: {growth}");
        Step::Open
    }

    /// Whether the open window closes because it found what it opened for: from half its
    /// length on, once `leaking()` says one of its stacks has a leak verdict (asked only then:
    /// it judges every stack). The rest of the window would cost as much again and add points
    /// to a verdict already made; the next window, after the backoff, sees whether it holds.
    pub fn found_leak(
        &mut self,
        now: Instant,
        settings: &Settings,
        leaking: impl FnOnce() -> bool,
    ) -> bool {
        let Some(age) = self.window_age(now) else {
            return false;
        };
        if age < settings.window / 2 || !leaking() {
            return false;
        }
        self.why = format!(
            "watched: the last exact window closed after {:.0}s: it found a leak",
            age.as_secs_f64()
        );
        true
    }

    /// Closes the window (detached now, or never attached: `why` says why), and sets when the
    /// next may open.
    pub fn closed(&mut self, now: Instant, settings: &Settings, why: Option<String>) {
        let Some(window) = self.window.take() else {
            return;
        };
        let age = now.saturating_duration_since(window.opened).as_secs_f64();
        if age > 0.0 && window.traps > 0 {
            self.rate = Some(window.spent / age);
        }
        self.next_at = now + settings.window * (1 << self.backoff);
        self.backoff = (self.backoff + 1).min(MAX_BACKOFF.trailing_zeros());
        if let Some(why) = why {
            self.why = why;
        }
    }
}

/// Why a process's resident set outside the V8 heap is growing, from its last
/// [`TRIGGER_POINTS`] light readings (`analyze::memory::Watch::trend`); `None` when it is not,
/// or not clearly. The V8 heap is left out
/// because a window's probes cannot see into it, and because it swings by tens of MiB with the
/// garbage collector: measured on the bench's clean service, a rise of 19 MiB over 110 s (from
/// 11 to 32 MiB of V8 heap, the native part flat at 25 MiB) opened a window before this rule,
/// while the leaking one's native part rose 0.55 MiB/s. The later half must still rise at half
/// the readings' rate or more: a service warming up (V8 and the allocator growing to their
/// working size under load) rises fast and levels off, a leak keeps its pace.
pub fn growth(series: &[MemoryPoint]) -> Option<String> {
    let tail = &series[series.len().checked_sub(TRIGGER_POINTS)?..];
    let values: Vec<i64> = tail
        .iter()
        .map(|p| i64::try_from(p.rss_bytes.saturating_sub(p.v8_heap)).unwrap_or(i64::MAX))
        .collect();
    if mann_kendall(&values).p_increasing() >= TRIGGER_P {
        return None;
    }
    let points: Vec<(f64, i64)> = tail.iter().map(|p| p.t).zip(values).collect();
    let slope = theil_sen(&points)?;
    if theil_sen(&points[points.len() / 2..])? < slope / 2.0 {
        return None;
    }
    let span = tail.last()?.t - tail.first()?.t;
    let rise = (slope * span) as i64;
    let outside = if tail.iter().any(|p| p.v8_heap > 0) {
        " outside the V8 heap"
    } else {
        ""
    };
    (rise >= TRIGGER_BYTES).then(|| {
        format!(
            "its resident set grew {}{outside} in {span:.0}s ({}/s)",
            bytes(rise),
            bytes(slope as i64)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            window: Duration::from_secs(30),
            warm_up: Duration::from_secs(180),
            max_overhead: 3.0,
            node_max_overhead: 10.0,
        }
    }

    fn series(step: i64) -> Vec<MemoryPoint> {
        (0..TRIGGER_POINTS as i64)
            .map(|i| MemoryPoint {
                t: i as f64,
                rss_bytes: (100 << 20) as u64 + (i * step) as u64,
                in_use_bytes: None,
                free_bytes: None,
                ..MemoryPoint::default()
            })
            .collect()
    }

    #[test]
    fn growth_needs_a_clear_rise_of_the_latest_readings() {
        assert!(growth(&series(1 << 20)).is_some_and(|why| why.contains("grew 17.0 MiB")));
        // Too little, flat, or too few readings: no window.
        assert_eq!(growth(&series(64 << 10)), None);
        assert_eq!(growth(&series(0)), None);
        assert_eq!(growth(&series(1 << 20)[1..]), None);
        // A rise long ago, flat since: only the latest readings count.
        let mut old = series(1 << 20);
        let top = old.last().unwrap().rss_bytes;
        old.extend((0..TRIGGER_POINTS).map(|i| MemoryPoint {
            t: 100.0 + i as f64,
            rss_bytes: top + (i as u64 % 2) * 4096,
            in_use_bytes: None,
            free_bytes: None,
            ..MemoryPoint::default()
        }));
        assert_eq!(growth(&old), None);
        // A warm-up: a fast rise that levels off within the readings.
        let warm: Vec<MemoryPoint> = (0..TRIGGER_POINTS)
            .map(|i| MemoryPoint {
                t: i as f64,
                rss_bytes: (100 << 20) + ((64 << 20) as f64 * (1.0 - 0.6f64.powi(i as i32))) as u64,
                ..MemoryPoint::default()
            })
            .collect();
        assert_eq!(growth(&warm), None);
        // As measured on the bench's clean service (10-s readings): 16.5 MiB of native growth
        // over 90 s after a collection shrank V8's heap, then flat.
        let ramp: Vec<MemoryPoint> = (0..TRIGGER_POINTS)
            .map(|i| MemoryPoint {
                t: 10.0 * i as f64,
                rss_bytes: (68 << 20)
                    + ((16.5 * (1 << 20) as f64) * (i.min(9) as f64 / 9.0)) as u64,
                ..MemoryPoint::default()
            })
            .collect();
        assert_eq!(growth(&ramp), None);
        // The V8 heap growing, the rest flat: its garbage collector's business, not a window's.
        let js: Vec<MemoryPoint> = series(1 << 20)
            .into_iter()
            .map(|p| MemoryPoint {
                v8_heap: p.rss_bytes - (100 << 20),
                ..p
            })
            .collect();
        assert_eq!(growth(&js), None);
        // The native part growing under it is named as such.
        let native: Vec<MemoryPoint> = series(1 << 20)
            .into_iter()
            .map(|p| MemoryPoint {
                v8_heap: 30 << 20,
                ..p
            })
            .collect();
        let why = growth(&native).expect("native growth");
        assert!(why.contains("grew 17.0 MiB outside the V8 heap"), "{why}");
    }

    /// One bench round's memory readings, as `tests/data/trigger/bench-series.json` keeps them.
    #[derive(serde::Deserialize)]
    struct Recorded {
        trace: String,
        leaks: bool,
        /// `[t, rss_bytes, v8_heap]`, one a sample (10 s).
        points: Vec<(f64, u64, u64)>,
    }

    /// The trigger replayed, reading by reading, over the resident sets the agent read at every
    /// sample of 24 rounds of `cargo xtask bench` (four runs; the Node service with its leaking
    /// route and with its clean one, 240 s each, `bench/results/<run>/service-*-agent-r*.json`):
    /// the shapes a real service makes, garbage collections and dead Buffers included. On the
    /// clean service it never fires (twelve readings fired on two of these rounds); on the
    /// leaking one it fires as soon as it has its readings.
    #[test]
    fn the_trigger_tells_the_bench_services_apart() {
        let rounds: Vec<Recorded> =
            serde_json::from_str(include_str!("../../tests/data/trigger/bench-series.json"))
                .expect("the recorded series parse");
        assert_eq!(rounds.len(), 24);
        for round in &rounds {
            let points: Vec<MemoryPoint> = round
                .points
                .iter()
                .map(|&(t, rss_bytes, v8_heap)| MemoryPoint {
                    t,
                    rss_bytes,
                    v8_heap,
                    ..MemoryPoint::default()
                })
                .collect();
            let first = (1..=points.len())
                .find_map(|n| growth(&points[..n]).map(|why| (points[n - 1].t, why)));
            if round.leaks {
                let (t, why) = first.unwrap_or_else(|| panic!("{}: never fired", round.trace));
                assert!(
                    t <= 10.0 * TRIGGER_POINTS as f64,
                    "{}: fired at {t:.0}s ({why})",
                    round.trace
                );
            } else {
                assert_eq!(first, None, "{}", round.trace);
            }
        }
    }

    /// What a target using `cpus` CPUs all along has used by `s` seconds.
    fn used(cpus: f64, s: u64) -> Option<Duration> {
        Some(Duration::from_secs_f64(cpus * s as f64))
    }

    #[test]
    fn a_window_waits_for_budget_and_closes_when_it_is_spent() {
        let s = settings();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut node = NodeCredit::new(s.node_max_overhead, t0);
        // A target with half a CPU: its budget is 1.5 % of a CPU.
        let mut tier = TargetTier::new(&s, t0, None, used(0.5, 0));
        let step = |tier: &mut TargetTier, node: &mut NodeCredit, sec: u64| {
            node.refill(at(sec));
            tier.step(at(sec), used(0.5, sec), Some("grows"), node, &s)
        };
        // Not growing: stays watched whatever the budget.
        assert_eq!(tier.step(t0, used(0.5, 0), None, &node, &s), Step::Keep);
        // Growing, but a first window waits until a window's worth at the budget's rate (0.45 s)
        // is earned: 30 s at 1.5 %.
        assert_eq!(step(&mut tier, &mut node, 20), Step::Keep);
        assert!(tier.why.contains("waiting for its budget"), "{}", tier.why);
        assert_eq!(step(&mut tier, &mut node, 31), Step::Open);
        assert!(tier.in_window());
        // The window costs half a CPU: its first second overspends the 0.465 s earned, and it
        // closes at that tick.
        let traps_per_s = (0.5 / TRAP_COST.as_secs_f64()) as u64;
        tier.charge(traps_per_s, 0.0, &mut node);
        assert_eq!(step(&mut tier, &mut node, 32), Step::Close);
        assert!(tier.why.contains("target's budget"), "{}", tier.why);
        tier.closed(at(32), &s, None);
        assert!(!tier.in_window());
        // The next waits for a full window at the measured rate (15 s of CPU) to be earned:
        // about 1000 s at 1.5 %.
        assert_eq!(step(&mut tier, &mut node, 100), Step::Keep);
        assert!(tier.why.contains("waiting for its budget"), "{}", tier.why);
        assert_eq!(step(&mut tier, &mut node, 1030), Step::Keep);
        assert_eq!(step(&mut tier, &mut node, 1040), Step::Open);
        // So from the start to any window's opening the average stays within the budget, in
        // percent of the target's CPU.
        assert!(tier.average_percent() <= 3.0, "{}", tier.average_percent());
    }

    #[test]
    fn the_budget_is_a_share_of_the_targets_own_cpu() {
        let s = settings();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Each target's first window opens after a window's length of earning, whatever it
        // uses; one costing half a CPU then lasts as long as its share of its CPU allows.
        let mut lengths = Vec::new();
        for (cpus, readable) in [(0.0, true), (0.05, false), (0.5, true), (2.0, true)] {
            let mut node = NodeCredit::new(100.0, t0);
            let cpu = |sec| used(cpus, sec).filter(|_| readable);
            let mut tier = TargetTier::new(&s, t0, None, cpu(0));
            let mut opened = None;
            for sec in 1..=200 {
                node.refill(at(sec));
                match tier.step(at(sec), cpu(sec), Some("grows"), &node, &s) {
                    Step::Open => opened = Some(sec),
                    Step::Close => {
                        lengths.push((cpus, opened.map(|o| sec - o)));
                        break;
                    }
                    Step::Keep => {}
                }
                if tier.in_window() {
                    let secs = sec + 1 - opened.unwrap();
                    let traps = (0.5 * secs as f64 / TRAP_COST.as_secs_f64()) as u64;
                    tier.charge(traps, 0.0, &mut node);
                }
            }
            assert_eq!(opened, Some(30), "{cpus} CPUs");
        }
        // The idle and the unreadable earn as if they used a tenth of a CPU (0.09 s in 30 s);
        // two CPUs earn 1.8 s, which half a CPU spends in a little over 4 s (it earns 6 % of a
        // CPU meanwhile): the window closes at the fifth tick.
        assert_eq!(
            lengths,
            [
                (0.0, Some(1)),
                (0.05, Some(1)),
                (0.5, Some(1)),
                (2.0, Some(5))
            ]
        );
    }

    #[test]
    fn watching_is_charged_and_windows_get_what_it_leaves() {
        let s = settings();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // A target with a CPU whose page faults' programs cost 1 % of a CPU: the 0.9 s a first
        // window needs comes after 45 s at the 2 % left (46 s when the sums round down), not
        // after 30 s. The agent's own work, 5 % of a CPU, is the node's to pay.
        let mut node = NodeCredit::new(s.node_max_overhead, t0);
        let mut tier = TargetTier::new(&s, t0, None, used(1.0, 0));
        let mut opened = None;
        for sec in 1..=60 {
            node.refill(at(sec));
            tier.charge_watch(0.01, 0.05, &mut node);
            if tier.step(at(sec), used(1.0, sec), Some("grows"), &node, &s) == Step::Open {
                opened = Some(sec);
                break;
            }
        }
        let opened = opened.expect("a window within 60 s");
        assert!((45..=46).contains(&opened), "{opened}");
        assert!(
            (tier.watch_spent - 0.01 * opened as f64).abs() < 1e-9,
            "{}",
            tier.watch_spent
        );
        assert!((tier.agent_spent - 0.05 * opened as f64).abs() < 1e-9);
        assert!((node.seconds() - 0.04 * opened as f64).abs() < 1e-9);
        // Watching that costs more than the budget leaves no window at all, and the average
        // says what it costs.
        let mut node = NodeCredit::new(s.node_max_overhead, t0);
        let mut costly = TargetTier::new(&s, t0, None, used(1.0, 0));
        for sec in 1..=600 {
            node.refill(at(sec));
            costly.charge_watch(0.04, 0.0, &mut node);
            let step = costly.step(at(sec), used(1.0, sec), Some("grows"), &node, &s);
            assert_eq!(step, Step::Keep);
        }
        assert!(
            costly.why.contains("waiting for its budget"),
            "{}",
            costly.why
        );
        assert!((costly.average_percent() - 4.0).abs() < 1e-6);
    }

    #[test]
    fn opening_a_window_is_the_nodes_to_pay() {
        let s = settings();
        let t0 = Instant::now();
        let mut node = NodeCredit::new(s.node_max_overhead, t0);
        node.refill(t0 + Duration::from_secs(10));
        let before = node.seconds();
        let mut tier = TargetTier::new(&s, t0, None, used(1.0, 0));
        tier.charge_agent(0.25, &mut node);
        assert!((node.seconds() - (before - 0.25)).abs() < 1e-9);
        assert!((tier.agent_spent - 0.25).abs() < 1e-9);
        // The target's own budget and average do not carry it.
        assert_eq!(tier.spent, 0.0);
        assert_eq!(tier.credit.seconds(), 0.0);
    }

    #[test]
    fn windows_end_on_time_and_back_off_while_growth_goes_on() {
        let s = settings();
        let t0 = Instant::now();
        let mut node = NodeCredit::new(s.node_max_overhead, t0);
        let mut tier = TargetTier::new(&s, t0, None, used(1.0, 0));
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut opened = Vec::new();
        for sec in 0..2000 {
            node.refill(at(sec));
            match tier.step(at(sec), used(1.0, sec), Some("grows"), &node, &s) {
                Step::Open => opened.push(sec),
                Step::Close => tier.closed(at(sec), &s, None),
                Step::Keep => {}
            }
            // A cheap target: a thousand traps a second.
            tier.charge(1000 * (sec + 1), 0.0, &mut node);
        }
        // Each window lasts 30 s; the waits after them double: 30, 60, 120, 240, 480 s.
        let gaps: Vec<u64> = opened.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps[..4], [60, 90, 150, 270], "{opened:?}");
        // Growth stopping resets the wait.
        assert!(tier.backoff > 0);
        assert_eq!(
            tier.step(at(2000), used(1.0, 2000), None, &node, &s),
            Step::Keep
        );
        assert_eq!(tier.backoff, 0);
    }

    #[test]
    fn a_window_that_found_a_leak_closes_from_half_its_length_on() {
        let s = settings();
        let t0 = Instant::now();
        let at = |sec: u64| t0 + Duration::from_secs(sec);
        let mut node = NodeCredit::new(s.node_max_overhead, t0);
        let mut tier = TargetTier::new(&s, t0, None, used(1.0, 0));
        let opened = (0..200u64)
            .find(|&sec| {
                node.refill(at(sec));
                tier.step(at(sec), used(1.0, sec), Some("grows"), &node, &s) == Step::Open
            })
            .expect("a window opens");
        let half = s.window.as_secs() / 2;
        let mut asked = 0;
        assert!(!tier.found_leak(at(opened + half - 1), &s, || {
            asked += 1;
            true
        }));
        assert_eq!(asked, 0, "the stacks are not judged before half the window");
        assert!(!tier.found_leak(at(opened + half), &s, || false));
        assert!(tier.found_leak(at(opened + half), &s, || true));
        assert!(tier.why.ends_with("it found a leak"), "{}", tier.why);
        tier.closed(at(opened + half), &s, None);
        assert!(tier.why.ends_with("it found a leak"), "{}", tier.why);
        assert!(
            !tier.found_leak(at(opened + half + 1), &s, || true),
            "no window open"
        );
    }

    #[test]
    fn a_young_process_gets_no_window_while_it_warms_up() {
        let s = settings();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut node = NodeCredit::new(s.node_max_overhead, t0);
        // First watched 20 s after it started: growing, with budget to spare, it waits until
        // it is 180 s old.
        let mut tier = TargetTier::new(&s, t0, Some(Duration::from_secs(20)), used(1.0, 0));
        node.refill(at(150));
        let step = tier.step(at(150), used(1.0, 150), Some("grows"), &node, &s);
        assert_eq!(step, Step::Keep);
        assert!(tier.why.contains("170s old"), "{}", tier.why);
        assert!(
            tier.why.contains("warms up, its first 180s"),
            "{}",
            tier.why
        );
        node.refill(at(160));
        assert_eq!(
            tier.step(at(160), used(1.0, 160), Some("grows"), &node, &s),
            Step::Open
        );
        // One already older than that when first watched is judged at once.
        let mut old = TargetTier::new(&s, t0, Some(Duration::from_secs(3600)), used(1.0, 0));
        node.refill(at(200));
        assert_eq!(
            old.step(at(200), used(1.0, 200), Some("grows"), &node, &s),
            Step::Open
        );
    }

    #[test]
    fn the_node_budget_holds_back_every_target() {
        let s = Settings {
            node_max_overhead: 1.0,
            ..settings()
        };
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(40);
        let mut node = NodeCredit::new(s.node_max_overhead, t0);
        node.refill(later);
        let mut tier = TargetTier::new(&s, t0, None, used(1.0, 0));
        // Its own bucket holds 1.2 s, the node's 0.4 s: short of a 0.9 s window.
        let step = tier.step(later, used(1.0, 40), Some("grows"), &node, &s);
        assert_eq!(step, Step::Keep);
        assert!(tier.why.contains("the node's budget"), "{}", tier.why);
    }
}
