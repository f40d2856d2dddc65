//! PLACEHOLDER until the statistics land.
use serde::{Deserialize, Serialize};
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict { Leak, Growing, Plateau, Churn, Stable }
impl Verdict { pub fn as_str(&self) -> &'static str { match self { Self::Leak=>"leak", Self::Growing=>"growing", Self::Plateau=>"plateau", Self::Churn=>"churn", Self::Stable=>"stable" } } }
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Growth { pub verdict: Verdict, pub bytes_per_s: f64 }
pub fn classify(series: &[(f64, i64)]) -> Growth {
    let rate = match (series.first(), series.last()) { (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0), _ => 0.0 };
    Growth { verdict: if rate > 0.0 { Verdict::Growing } else { Verdict::Stable }, bytes_per_s: rate }
}
pub fn sparkline(_series: &[(f64, i64)], _width: usize) -> String { String::new() }
