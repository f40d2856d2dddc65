//! From snapshots to series and verdicts: how each site's live bytes moved over the trace.

pub mod growth;
pub mod origin;

use std::collections::HashMap;

use leaktrace_common::StackKey;

use crate::collect::Snapshot;

/// Most points kept per series. Past it, every other point is dropped, so a trace of any length
/// costs bounded memory while the whole window stays covered.
const MAX_POINTS: usize = 2048;

/// Each site's live bytes over time.
#[derive(Default)]
pub struct History {
    series: HashMap<StackKey, Vec<(f64, i64)>>,
}

impl History {
    /// Appends one snapshot taken `at` seconds after attach.
    pub fn record(&mut self, at: f64, snapshot: &Snapshot) {
        for (key, stats) in &snapshot.sites {
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

    /// The series of one site (empty if it was never seen).
    pub fn series(&self, key: &StackKey) -> &[(f64, i64)] {
        self.series.get(key).map_or(&[], Vec::as_slice)
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
    fn thinning_keeps_the_ends_and_halves() {
        let mut s: Vec<(f64, i64)> = (0..10).map(|i| (f64::from(i), i64::from(i))).collect();
        thin(&mut s);
        assert_eq!(s.first(), Some(&(0.0, 0)));
        assert_eq!(s.last(), Some(&(9.0, 9)));
        assert_eq!(s.len(), 6);
    }
}
