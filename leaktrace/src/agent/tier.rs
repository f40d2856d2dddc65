//! The agent's tiers (`--mode tiered`, its default): every target is watched from its page
//! faults, which puts nothing on its own code paths, and the allocator probes are attached to it
//! only for bounded exact windows, while its resident set grows and its budget allows.
//!
//! The budget is CPU time in a bucket per target and one for the node. Each fills at its
//! `--max-overhead` share of one CPU, from empty (so from the agent's start on, the average cost
//! never exceeds it) up to [`HORIZON`] of it (a target quiet for a day cannot spend a day's
//! budget in one burst). A window is charged as it runs: its traps, counted by the probes and
//! priced at [`TRAP_COST`], and the programs' own run time. Watching is charged too, between
//! windows and during them (see `watch_cost`): the budget bounds all the agent takes from a
//! target, and windows get what watching leaves. A window closes when its time is up or either
//! bucket is empty; windows of a target that keeps growing repeat with a doubling wait. Between
//! windows a detached uprobe leaves the code as it was: a watched target pays for its page
//! faults and its share of the agent only.
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

/// How much unspent budget a bucket keeps, in time at its rate.
const HORIZON: Duration = Duration::from_secs(600);
/// Readings of the resident set the trigger judges: the latest, so that a process that ran
/// clean for hours and then starts to leak is seen growing within minutes.
pub const TRIGGER_POINTS: usize = 12;
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
    /// Time-averaged cost allowed per target, in percent of one CPU.
    pub max_overhead: f64,
    /// The same over every target of the node.
    pub node_max_overhead: f64,
}

/// CPU time that may be spent, refilled at a share of one CPU.
#[derive(Debug)]
pub struct Credit {
    percent: f64,
    seconds: f64,
    at: Instant,
}

impl Credit {
    /// An empty bucket filling at `percent` of one CPU from `now`.
    pub fn new(percent: f64, now: Instant) -> Self {
        Self {
            percent,
            seconds: 0.0,
            at: now,
        }
    }

    fn cap(&self) -> f64 {
        self.percent / 100.0 * HORIZON.as_secs_f64()
    }

    /// Adds what the time since the last refill earned.
    pub fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.percent / 100.0;
        self.seconds = (self.seconds + earned).min(self.cap());
        self.at = now;
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
    /// Doublings of the wait before the next window.
    backoff: u32,
    next_at: Instant,
    /// What the last window cost, in CPU seconds per second: what the next one is expected to.
    rate: Option<f64>,
    /// Windows opened.
    pub windows: u32,
    /// CPU seconds charged: every window, and watching.
    pub spent: f64,
    /// The part of `spent` that watching cost.
    pub watch_spent: f64,
    /// Why it is in its tier, in words.
    pub why: String,
    since: Instant,
}

impl TargetTier {
    pub fn new(settings: &Settings, now: Instant) -> Self {
        Self {
            window: None,
            credit: Credit::new(settings.max_overhead, now),
            backoff: 0,
            next_at: now,
            rate: None,
            windows: 0,
            spent: 0.0,
            watch_spent: 0.0,
            why: "watched: not read yet".into(),
            since: now,
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

    /// Its cost (windows and watching), averaged over the time it has been watched, in percent
    /// of one CPU.
    pub fn average_percent(&self, now: Instant) -> f64 {
        let watched = now.saturating_duration_since(self.since).as_secs_f64();
        if watched <= 0.0 {
            return 0.0;
        }
        self.spent / watched * 100.0
    }

    /// Charges the open window for its traps (`traps`: counted since it opened) and `programs`
    /// CPU seconds of the programs' run time, to its budget and the node's.
    pub fn charge(&mut self, traps: u64, programs: f64, node: &mut Credit) {
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

    /// Charges `seconds` of watching to its budget and the node's.
    pub fn charge_watch(&mut self, seconds: f64, node: &mut Credit) {
        self.watch_spent += seconds;
        self.spent += seconds;
        self.credit.charge(seconds);
        node.charge(seconds);
    }

    /// Decides, given why the watch says the target grows (`None`: it does not).
    pub fn step(
        &mut self,
        now: Instant,
        growth: Option<&str>,
        node: &Credit,
        settings: &Settings,
    ) -> Step {
        self.credit.refill(now);
        let budget = settings.max_overhead;
        if let Some(window) = &self.window {
            let age = now.saturating_duration_since(window.opened);
            let rate = window.spent / age.as_secs_f64().max(1e-3) * 100.0;
            let end = if age >= settings.window {
                format!("its {}s are over", settings.window.as_secs())
            } else if self.credit.seconds() <= 0.0 {
                format!(
                    "the target's budget of {budget} % of a CPU is spent (the window cost \
                     {rate:.1} %)"
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
        if now < self.next_at {
            self.why = format!(
                "watched: {growth}; next exact window in {:.0}s",
                (self.next_at - now).as_secs_f64()
            );
            return Step::Keep;
        }
        // A full window at the last window's rate, or at the budget's own for a first one.
        let rate = self.rate.unwrap_or(budget / 100.0);
        let needed = (rate * settings.window.as_secs_f64()).min(self.credit.cap());
        for (whose, credit) in [("its", &self.credit), ("the node's", node)] {
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

/// Why a process's resident set is growing, from its last [`TRIGGER_POINTS`] readings; `None`
/// when it is not, or not clearly. The later half must still rise at half the readings' rate or
/// more: a service warming up (V8 and the allocator growing to their working size under load)
/// rises fast and levels off, a leak keeps its pace. Measured on the bench's clean service, whose
/// warm-up opened a window before this rule.
pub fn growth(series: &[MemoryPoint]) -> Option<String> {
    let tail = &series[series.len().checked_sub(TRIGGER_POINTS)?..];
    let values: Vec<i64> = tail
        .iter()
        .map(|p| i64::try_from(p.rss_bytes).unwrap_or(i64::MAX))
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
    (rise >= TRIGGER_BYTES).then(|| {
        format!(
            "its resident set grew {} in {span:.0}s ({}/s)",
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
        assert!(growth(&series(1 << 20)).is_some_and(|why| why.contains("grew 11.0 MiB")));
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
    }

    #[test]
    fn a_window_waits_for_budget_and_closes_when_it_is_spent() {
        let s = settings();
        let t0 = Instant::now();
        let mut node = Credit::new(s.node_max_overhead, t0);
        let mut tier = TargetTier::new(&s, t0);
        // Not growing: stays watched whatever the budget.
        assert_eq!(tier.step(t0, None, &node, &s), Step::Keep);
        // Growing, but a first window waits until a window's worth at the budget's rate (0.9 s)
        // is earned: 30 s at 3 %.
        let at = |s: u64| t0 + Duration::from_secs(s);
        node.refill(at(20));
        assert_eq!(tier.step(at(20), Some("grows"), &node, &s), Step::Keep);
        assert!(tier.why.contains("waiting for its budget"), "{}", tier.why);
        node.refill(at(31));
        assert_eq!(tier.step(at(31), Some("grows"), &node, &s), Step::Open);
        assert!(tier.in_window());
        // The window costs half a CPU: 1 s of it leaves 0.46 s of the credit earned, the next
        // second overspends it, and the window closes at that tick.
        let traps_per_s = (0.5 / TRAP_COST.as_secs_f64()) as u64;
        tier.charge(traps_per_s, 0.0, &mut node);
        node.refill(at(32));
        assert_eq!(tier.step(at(32), Some("grows"), &node, &s), Step::Keep);
        tier.charge(3 * traps_per_s, 0.0, &mut node);
        node.refill(at(33));
        assert_eq!(tier.step(at(33), Some("grows"), &node, &s), Step::Close);
        assert!(tier.why.contains("target's budget"), "{}", tier.why);
        tier.closed(at(33), &s, None);
        assert!(!tier.in_window());
        // The overspent second is repaid before the next window: a window's length of wait,
        // then a full window at the measured rate (22.5 s of CPU, capped at the bucket's 18 s)
        // to earn back: about 620 s at 3 %.
        node.refill(at(100));
        assert_eq!(tier.step(at(100), Some("grows"), &node, &s), Step::Keep);
        assert!(tier.why.contains("waiting for its budget"), "{}", tier.why);
        node.refill(at(600));
        assert_eq!(tier.step(at(600), Some("grows"), &node, &s), Step::Keep);
        node.refill(at(660));
        assert_eq!(tier.step(at(660), Some("grows"), &node, &s), Step::Open);
        // So from the start to any window's opening the average stays within the budget.
        assert!(
            tier.average_percent(at(660)) <= 3.0,
            "{}",
            tier.average_percent(at(660))
        );
    }

    #[test]
    fn watching_is_charged_and_windows_get_what_it_leaves() {
        let s = settings();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Watching costs 1 % of a CPU: the 0.9 s a first window needs comes after 45 s at the
        // 2 % left (46 s when the sums round down), not after 30 s.
        let mut node = Credit::new(s.node_max_overhead, t0);
        let mut tier = TargetTier::new(&s, t0);
        let mut opened = None;
        for sec in 1..=60 {
            node.refill(at(sec));
            tier.charge_watch(0.01, &mut node);
            if tier.step(at(sec), Some("grows"), &node, &s) == Step::Open {
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
        // Watching that costs more than the budget leaves no window at all, and the average
        // says what it costs.
        let mut node = Credit::new(s.node_max_overhead, t0);
        let mut costly = TargetTier::new(&s, t0);
        for sec in 1..=600 {
            node.refill(at(sec));
            costly.charge_watch(0.04, &mut node);
            assert_eq!(costly.step(at(sec), Some("grows"), &node, &s), Step::Keep);
        }
        assert!(
            costly.why.contains("waiting for its budget"),
            "{}",
            costly.why
        );
        assert!((costly.average_percent(at(600)) - 4.0).abs() < 1e-6);
    }

    #[test]
    fn windows_end_on_time_and_back_off_while_growth_goes_on() {
        let s = settings();
        let t0 = Instant::now();
        let mut node = Credit::new(s.node_max_overhead, t0);
        let mut tier = TargetTier::new(&s, t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut opened = Vec::new();
        for sec in 0..2000 {
            node.refill(at(sec));
            match tier.step(at(sec), Some("grows"), &node, &s) {
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
        assert_eq!(tier.step(at(2000), None, &node, &s), Step::Keep);
        assert_eq!(tier.backoff, 0);
    }

    #[test]
    fn the_node_budget_holds_back_every_target() {
        let s = Settings {
            node_max_overhead: 1.0,
            ..settings()
        };
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(40);
        let mut node = Credit::new(s.node_max_overhead, t0);
        node.refill(later);
        let mut tier = TargetTier::new(&s, t0);
        // Its own bucket holds 1.2 s, the node's 0.4 s: short of a 0.9 s window.
        assert_eq!(tier.step(later, Some("grows"), &node, &s), Step::Keep);
        assert!(tier.why.contains("the node's budget"), "{}", tier.why);
    }
}
