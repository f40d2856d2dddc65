//! Which processes the agent traces: globs on the executable and the cgroup path, and, in a
//! cluster, the pod's namespace, labels and opt-in annotation.

use std::{collections::BTreeMap, path::Path};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;

use super::pods::PodMeta;

/// The pod annotation that opts a pod in when `require_annotation` is set.
pub const OPT_IN_ANNOTATION: &str = "leaktrace.dev/trace";

/// The selection rules. A process is traced when every rule given matches it; within a rule,
/// any of its patterns may match.
#[derive(Debug, Serialize)]
pub struct Selector {
    exe: Patterns,
    #[serde(skip_serializing_if = "Patterns::is_empty")]
    cgroup: Patterns,
    #[serde(skip_serializing_if = "Patterns::is_empty")]
    namespace: Patterns,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    require_annotation: bool,
}

/// A bad glob.
#[derive(Debug, thiserror::Error)]
#[error("invalid {rule} pattern `{pattern}`: {message}")]
pub struct SelectorError {
    rule: &'static str,
    pattern: String,
    message: String,
}

/// Globs with their source text (shown by `--check` and in logs).
#[derive(Debug)]
struct Patterns {
    text: Vec<String>,
    set: GlobSet,
}

impl Serialize for Patterns {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.text.serialize(s)
    }
}

impl Patterns {
    fn new(rule: &'static str, text: Vec<String>) -> Result<Self, SelectorError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in &text {
            let glob = Glob::new(pattern).map_err(|e| SelectorError {
                rule,
                pattern: pattern.clone(),
                message: e.kind().to_string(),
            })?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| SelectorError {
            rule,
            pattern: text.join(" "),
            message: e.to_string(),
        })?;
        Ok(Self { text, set })
    }

    fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// No patterns match everything.
    fn allows(&self, s: &str) -> bool {
        self.is_empty() || self.set.is_match(s)
    }
}

/// What the rules decide about one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Trace,
    Skip,
    /// Its pod is not known yet (the pod watch lags behind the process): ask again later.
    Undecided,
}

impl Selector {
    pub fn new(
        exe: Vec<String>,
        cgroup: Vec<String>,
        namespace: Vec<String>,
        labels: BTreeMap<String, String>,
        require_annotation: bool,
    ) -> Result<Self, SelectorError> {
        Ok(Self {
            exe: Patterns::new("--match-exe", exe)?,
            cgroup: Patterns::new("--match-cgroup", cgroup)?,
            namespace: Patterns::new("--k8s-namespace", namespace)?,
            labels,
            require_annotation,
        })
    }

    pub fn exe_patterns(&self) -> &[String] {
        &self.exe.text
    }

    /// Whether any rule needs the pod's metadata from the Kubernetes API.
    pub fn needs_pods(&self) -> bool {
        !self.namespace.is_empty() || !self.labels.is_empty() || self.require_annotation
    }

    /// Decides from what the host shows of the process, and its pod when known (`pods_known`
    /// says whether the pod list is in sync, so that a missing pod means "not a pod").
    pub fn decide(
        &self,
        exe: &Path,
        cgroup: &str,
        pod: Option<&PodMeta>,
        pods_known: bool,
    ) -> Decision {
        if !self.exe_matches(exe) || !self.cgroup.allows(cgroup) {
            return Decision::Skip;
        }
        if !self.needs_pods() {
            return Decision::Trace;
        }
        let Some(pod) = pod else {
            return if pods_known {
                Decision::Skip
            } else {
                Decision::Undecided
            };
        };
        let labels_match = self
            .labels
            .iter()
            .all(|(k, v)| pod.labels.get(k) == Some(v));
        let opted_in = !self.require_annotation
            || pod
                .annotations
                .get(OPT_IN_ANNOTATION)
                .is_some_and(|v| v == "true");
        if self.namespace.allows(&pod.namespace) && labels_match && opted_in {
            Decision::Trace
        } else {
            Decision::Skip
        }
    }

    /// A pattern with a `/` matches the whole path, any other the file name.
    fn exe_matches(&self, exe: &Path) -> bool {
        let name = exe
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let path = exe.to_string_lossy();
        self.exe.text.iter().zip(0..).any(|(pattern, index)| {
            let subject = if pattern.contains('/') { &path } else { &name };
            self.exe.set.matches(subject.as_ref()).contains(&index)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn selector(exe: &[&str], cgroup: &[&str]) -> Selector {
        Selector::new(
            exe.iter().map(|s| s.to_string()).collect(),
            cgroup.iter().map(|s| s.to_string()).collect(),
            vec![],
            BTreeMap::new(),
            false,
        )
        .unwrap()
    }

    fn pod(namespace: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> PodMeta {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        PodMeta {
            name: "web-0".into(),
            namespace: namespace.into(),
            labels: map(labels),
            annotations: map(annotations),
            containers: HashMap::new(),
        }
    }

    #[test]
    fn exe_globs_match_the_file_name_unless_they_name_a_path() {
        let s = selector(&["node*", "/opt/*/bin/python3"], &[]);
        let decide = |exe: &str| s.decide(Path::new(exe), "/", None, true);
        assert_eq!(decide("/usr/bin/node"), Decision::Trace);
        assert_eq!(decide("/usr/local/bin/node22"), Decision::Trace);
        assert_eq!(decide("/usr/bin/nodejs-helper"), Decision::Trace);
        assert_eq!(decide("/usr/bin/deno"), Decision::Skip);
        assert_eq!(decide("/opt/app/bin/python3"), Decision::Trace);
        assert_eq!(decide("/usr/bin/python3"), Decision::Skip);
    }

    #[test]
    fn cgroup_globs_cross_slashes() {
        let s = selector(&["node"], &["*kubepods*"]);
        let exe = Path::new("/usr/bin/node");
        assert_eq!(
            s.decide(exe, "/kubepods/burstable/pod1/abc", None, true),
            Decision::Trace
        );
        assert_eq!(s.decide(exe, "/user.slice", None, true), Decision::Skip);
    }

    #[test]
    fn pod_rules_wait_for_the_pod_list() {
        let s = Selector::new(
            vec!["node".into()],
            vec![],
            vec!["shop-*".into()],
            BTreeMap::from([("app".to_string(), "cart".to_string())]),
            true,
        )
        .unwrap();
        let exe = Path::new("/usr/bin/node");
        let opted = pod(
            "shop-prod",
            &[("app", "cart")],
            &[(OPT_IN_ANNOTATION, "true")],
        );
        assert_eq!(s.decide(exe, "/", None, false), Decision::Undecided);
        assert_eq!(s.decide(exe, "/", None, true), Decision::Skip);
        assert_eq!(s.decide(exe, "/", Some(&opted), true), Decision::Trace);
        let other_ns = pod(
            "kube-system",
            &[("app", "cart")],
            &[(OPT_IN_ANNOTATION, "true")],
        );
        assert_eq!(s.decide(exe, "/", Some(&other_ns), true), Decision::Skip);
        let not_opted = pod("shop-prod", &[("app", "cart")], &[]);
        assert_eq!(s.decide(exe, "/", Some(&not_opted), true), Decision::Skip);
        let other_label = pod(
            "shop-prod",
            &[("app", "web")],
            &[(OPT_IN_ANNOTATION, "true")],
        );
        assert_eq!(s.decide(exe, "/", Some(&other_label), true), Decision::Skip);
    }
}
