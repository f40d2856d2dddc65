//! From snapshots to series and verdicts: how each site's live bytes moved over the trace.

pub mod growth;
pub mod memory;

use leaktrace_common::StackKey;

use crate::collect::{Snapshot, StackMap};

/// Most points kept per series. Past it, every other point is dropped, so a trace of any length
/// costs bounded memory while the whole window stays covered.
const MAX_POINTS: usize = 2048;

/// Each site's live bytes over time.
#[derive(Default)]
pub struct History {
    series: StackMap<Vec<(f64, i64)>>,
}

impl History {
    /// Appends one snapshot taken `at` seconds after attach.
    pub fn record(&mut self, at: f64, snapshot: &Snapshot) {
        self.record_where(at, snapshot, |_| true);
    }

    /// Appends the sites of one snapshot that `keep` accepts.
    pub fn record_where(&mut self, at: f64, snapshot: &Snapshot, keep: impl Fn(&StackKey) -> bool) {
        for (key, stats) in snapshot.sites.iter().filter(|(k, _)| keep(k)) {
            let series = self.series.entry(*key).or_default();
            series.push((at, stats.live_bytes));
            if series.len() > MAX_POINTS {
                thin(series);
            }
        }
    }

    /// Drops the series of one target's sites.
    pub fn forget(&mut self, pid: u32) {
        self.series.retain(|k, _| k.tgid != pid);
    }

    /// The series of every site of one target.
    pub fn series_of(&self, pid: u32) -> impl Iterator<Item = &[(f64, i64)]> {
        self.series
            .iter()
            .filter(move |(key, _)| key.tgid == pid)
            .map(|(_, series)| series.as_slice())
    }

    /// The series of one site (empty if it was never seen).
    pub fn series(&self, key: &StackKey) -> &[(f64, i64)] {
        self.series.get(key).map_or(&[], Vec::as_slice)
    }
}

/// The part of an exited process's series its verdict is made on: without a fall in its last
/// `window` seconds before `exited_at`. A runtime may free everything as it exits (Node's
/// teardown frees every buffer), and that says nothing about how memory grew while it ran.
pub fn before_exit(series: &[(f64, i64)], exited_at: f64, window: f64) -> &[(f64, i64)] {
    let start = series.partition_point(|&(t, _)| t < exited_at - window);
    match (start.checked_sub(1).map(|i| series[i]), series.last()) {
        (Some((_, before)), Some(&(_, last))) if last < before => &series[..start],
        _ => series,
    }
}

/// Halves a series, keeping its first and last points.
fn thin(series: &mut Vec<(f64, i64)>) {
    let last = series.last().copied();
    let mut i = 0;
    series.retain(|_| {
        i += 1;
        i % 2 == 1
    });
    if let (Some(last), Some(kept)) = (last, series.last())
        && *kept != last
    {
        series.push(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fall_at_exit_is_not_judged() {
        let rising_then_freed = [(0.0, 0), (1.0, 10), (2.0, 20), (3.0, 30), (3.8, 0)];
        assert_eq!(
            before_exit(&rising_then_freed, 4.0, 1.0),
            &rising_then_freed[..3]
        );
        // Kept at exit (a C program frees nothing): the whole series.
        let kept = [(0.0, 0), (1.0, 10), (2.0, 20), (3.8, 30)];
        assert_eq!(before_exit(&kept, 4.0, 1.0), &kept[..]);
        // A fall long before exit is part of the series.
        let early = [(0.0, 10), (1.0, 0), (2.0, 0)];
        assert_eq!(before_exit(&early, 9.0, 1.0), &early[..]);
        assert_eq!(before_exit(&[], 1.0, 1.0), &[] as &[(f64, i64)]);
    }

    #[test]
    fn thinning_keeps_the_ends_and_halves() {
        let mut s: Vec<(f64, i64)> = (0..10).map(|i| (f64::from(i), i64::from(i))).collect();
        thin(&mut s);
        assert_eq!(s.first(), Some(&(0.0, 0)));
        assert_eq!(s.last(), Some(&(9.0, 9)));
        assert_eq!(s.len(), 6);
    }
}
