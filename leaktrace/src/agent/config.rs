//! The agent's settings: flags over an optional TOML file over defaults, checked as a whole
//! before anything is attached.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::select::{Selector, SelectorError};
use crate::{
    logging::LogFormat,
    parse::{parse_bytes, parse_duration, parse_interval, parse_percent},
    probe::MapLimits,
};

/// `leaktrace agent` on the command line. Every option is optional here so that the config
/// file can supply it; [`AgentConfig::load`] applies the defaults.
#[derive(Debug, Default, Args)]
pub struct AgentArgs {
    /// TOML file with the same settings (see deploy/kubernetes/configmap.yaml); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective settings as JSON and exit: checks a config before deploying it.
    #[arg(long)]
    pub check: bool,
    /// Address to serve HTTP on [default: 127.0.0.1:9464].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Trace processes whose executable's file name matches this glob (a glob with a `/`
    /// matches the whole path) [default: node].
    #[arg(long = "match-exe", value_name = "GLOB")]
    pub match_exe: Vec<String>,
    /// Trace only processes whose cgroup path matches this glob.
    #[arg(long = "match-cgroup", value_name = "GLOB")]
    pub match_cgroup: Vec<String>,
    /// Trace only processes of pods in a Kubernetes namespace matching this glob.
    #[arg(long = "k8s-namespace", value_name = "GLOB")]
    pub k8s_namespace: Vec<String>,
    /// Trace only processes of pods with this label (`KEY=VALUE`; all given must match).
    #[arg(long = "k8s-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub k8s_label: Vec<(String, String)>,
    /// Trace only processes of pods annotated `leaktrace.dev/trace: "true"`.
    #[arg(long)]
    pub require_annotation: bool,
    /// This node's name: only its pods are watched [default: $NODE_NAME].
    #[arg(long)]
    pub node_name: Option<String>,
    /// Read pod names, namespaces and labels from the Kubernetes API [default: auto, on when
    /// running in a cluster].
    #[arg(long, value_enum)]
    pub kubernetes: Option<KubeMode>,
    /// How often each target's totals are sampled [default: 10s].
    #[arg(long, value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// How often /proc is scanned for new processes [default: 2s].
    #[arg(long, value_parser = parse_interval)]
    pub scan_interval: Option<Duration>,
    /// How long an exited target's series stay served [default: 5m].
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// What to capture [default: tiered]: `tiered` watches every target's page faults and
    /// probes its allocator only in exact windows while its resident set grows, within
    /// --max-overhead; `exact` probes each target's allocator all the time (sampled by
    /// --sample-bytes); `watch` places no probe at all (see `leaktrace attach --mode`).
    #[arg(long, value_enum)]
    pub mode: Option<AgentMode>,
    /// Watch and tiered modes: probe the mapping syscalls at the raw syscall tracepoints, as
    /// exact mode does, rather than by fentry, which kernels in integrity lockdown refuse.
    /// Costs every syscall of the node about 50 ns.
    #[arg(long)]
    pub syscall_tracepoints: bool,
    /// Watch and tiered modes: one page fault in this many runs the page-fault program, its
    /// pages standing for this many each [default: 8] (see `leaktrace attach --fault-period`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub fault_period: Option<u32>,
    /// Tiered mode: most CPU the exact windows and watching may make each target's threads run,
    /// averaged over time, in percent of the CPU time the target itself uses (counted as at
    /// least a tenth of a CPU) [default: 2]: its share of the target's throughput.
    #[arg(long, value_parser = parse_percent)]
    pub max_overhead: Option<f64>,
    /// Tiered mode: most CPU every target's windows and watching and the agent's own work may
    /// take together, in percent of one CPU [default: 10].
    #[arg(long, value_parser = parse_percent)]
    pub node_max_overhead: Option<f64>,
    /// Tiered mode: longest exact window [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    pub window: Option<Duration>,
    /// Tiered mode: no exact window for a process younger than this [default: 3m]: a service
    /// starting up grows its heaps to their working size, which is not a leak (a leak goes on
    /// growing after it).
    #[arg(long, value_parser = parse_duration)]
    pub warm_up: Option<Duration>,

    /// Longest life of one HTTP connection, kept alive or not: a client cannot hold one of the
    /// port's connections for ever [default: 120s].
    #[arg(long, value_parser = parse_duration)]
    pub connection_lifetime: Option<Duration>,
    /// `--mode exact`: Poisson sampling by bytes, one sample per this many bytes on average; 0
    /// records every allocation [default: 512KiB].
    #[arg(long, value_parser = parse_sample_bytes)]
    pub sample_bytes: Option<u64>,
    /// Most processes traced at once [default: 32].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_targets: Option<u32>,
    /// Most live blocks tracked per process; a process over it is no longer traced (its data
    /// stays served) [default: 262144].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_live_allocs_per_target: Option<u32>,
    /// Most live blocks tracked at once, over all targets [default: 1048576].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_live_allocs: Option<u32>,
    /// Most distinct allocation sites, over all targets [default: 65536].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_stacks: Option<u32>,
    /// Log lines as text or JSON [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// How the agent captures memory, see [`AgentArgs::mode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    /// Watched from page faults, with exact windows while growing.
    #[default]
    Tiered,
    /// The allocator probed all the time.
    Exact,
    /// Page faults only, never a probe.
    Watch,
}

/// Whether to ask the Kubernetes API about pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeMode {
    /// When running in a cluster (`KUBERNETES_SERVICE_HOST` set) or given a `KUBECONFIG`.
    #[default]
    Auto,
    /// Always; failing to reach the API is an error at start.
    On,
    /// Never: pods are known only by the UID in their cgroup path.
    Off,
}

/// The config file. Unknown keys are errors: a typo must not silently select every process.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    interval: Option<String>,
    scan_interval: Option<String>,
    grace: Option<String>,
    mode: Option<AgentMode>,
    syscall_tracepoints: Option<bool>,
    fault_period: Option<u32>,
    max_overhead: Option<f64>,
    node_max_overhead: Option<f64>,
    window: Option<String>,
    warm_up: Option<String>,
    connection_lifetime: Option<String>,
    sample_bytes: Option<u64>,
    max_targets: Option<u32>,
    max_live_allocs_per_target: Option<u32>,
    max_live_allocs: Option<u32>,
    max_stacks: Option<u32>,
    log_format: Option<LogFormat>,
    kubernetes: Option<KubeMode>,
    node_name: Option<String>,
    #[serde(rename = "match", default)]
    select: FileMatch,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMatch {
    exe: Option<Vec<String>>,
    cgroup: Option<Vec<String>>,
    namespace: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
    require_annotation: Option<bool>,
}

/// The agent's settings, complete and checked.
#[derive(Debug, Serialize)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    #[serde(with = "humantime_serde_secs")]
    pub interval: Duration,
    #[serde(with = "humantime_serde_secs")]
    pub scan_interval: Duration,
    #[serde(with = "humantime_serde_secs")]
    pub grace: Duration,
    pub mode: AgentMode,
    /// Watch and tiered modes probe the mapping syscalls at the raw tracepoints, not by fentry.
    pub syscall_tracepoints: bool,
    /// Watch and tiered modes sample one page fault in this many.
    pub fault_period: u64,
    /// Tiered mode's budgets, in percent of each target's CPU and of one CPU for the node, and
    /// its longest window.
    pub max_overhead: f64,
    pub node_max_overhead: f64,
    #[serde(with = "humantime_serde_secs")]
    pub window: Duration,
    /// Tiered mode: the age before which a process gets no window.
    #[serde(with = "humantime_serde_secs")]
    pub warm_up: Duration,
    #[serde(with = "humantime_serde_secs")]
    pub connection_lifetime: Duration,
    /// `None` records every allocation (or a mode other than exact: watch probes no
    /// allocation, and tiered windows record every one).
    pub sample_bytes: Option<u64>,
    pub max_targets: usize,
    pub max_live_allocs_per_target: u64,
    #[serde(skip)]
    pub limits: MapLimits,
    pub log_format: LogFormat,
    pub kubernetes: KubeMode,
    pub node_name: Option<String>,
    #[serde(rename = "match")]
    pub selector: Selector,
    /// Print the settings and exit.
    #[serde(skip)]
    pub check: bool,
}

/// Why the settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: `{key}`: {message}")]
    Value {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Selector(#[from] SelectorError),
}

const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
const DEFAULT_SAMPLE_BYTES: u64 = 512 * 1024;
const DEFAULT_MAX_TARGETS: u32 = 32;
const DEFAULT_MAX_LIVE_PER_TARGET: u32 = 1 << 18;
/// Tiered mode's defaults: a window long enough for a leak verdict at 1 s samples, a node's
/// worth of a few busy services at once, and per target 2 %, a margin under the production
/// goal of 3 % of a busy service's throughput: the target's budget bounds what its own threads
/// run, while the agent's own CPU time, charged to the node, comes out of the service's too
/// where the service saturates the CPUs it shares with the agent. Measured on the bench's
/// service (half a CPU, the agent in its CPU group): the agent's own work cost it about 1 % of
/// its throughput over a run, a window's attach 0.25 CPU-seconds of it.
const DEFAULT_MAX_OVERHEAD: f64 = 2.0;
const DEFAULT_NODE_MAX_OVERHEAD: f64 = 10.0;
const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
/// Measured on the bench's Node service under load: its heaps outside V8 grew from 57 to 78 MiB
/// in its first two minutes and stayed there.
const DEFAULT_WARM_UP: Duration = Duration::from_secs(180);
/// Long enough for any scrape or report; short enough that idle keep-alive clients give their
/// slot back.
const DEFAULT_CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

impl AgentConfig {
    /// Merges flags over the config file over defaults.
    pub fn load(args: AgentArgs) -> Result<Self, ConfigError> {
        let (file, path) = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let file: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    // toml's message spans lines (it quotes the input): keep its first.
                    message: e.message().lines().next().unwrap_or("invalid TOML").into(),
                })?;
                (file, path.clone())
            }
            None => (FileConfig::default(), PathBuf::new()),
        };
        let value_err = |key: &'static str| {
            let path = path.clone();
            move |message: String| ConfigError::Value {
                path: path.clone(),
                key,
                message,
            }
        };
        let duration = |flag: Option<Duration>,
                        text: &Option<String>,
                        key: &'static str,
                        parse: fn(&str) -> Result<Duration, String>,
                        default: Duration| {
            match (flag, text) {
                (Some(d), _) => Ok(d),
                (None, Some(t)) => parse(t).map_err(value_err(key)),
                (None, None) => Ok(default),
            }
        };
        let interval = duration(
            args.interval,
            &file.interval,
            "interval",
            parse_interval,
            Duration::from_secs(10),
        )?;
        let scan_interval = duration(
            args.scan_interval,
            &file.scan_interval,
            "scan_interval",
            parse_interval,
            Duration::from_secs(2),
        )?;
        let grace = duration(
            args.grace,
            &file.grace,
            "grace",
            parse_duration,
            Duration::from_secs(300),
        )?;
        let connection_lifetime = duration(
            args.connection_lifetime,
            &file.connection_lifetime,
            "connection_lifetime",
            parse_duration,
            DEFAULT_CONNECTION_LIFETIME,
        )?;
        let sample_bytes = match (args.sample_bytes, file.sample_bytes) {
            (Some(n), _) => n,
            (None, Some(n)) => {
                check_sample_bytes(n).map_err(value_err("sample_bytes"))?;
                n
            }
            (None, None) => DEFAULT_SAMPLE_BYTES,
        };
        let mode = args.mode.or(file.mode).unwrap_or_default();
        let percent = |flag: Option<f64>, file: Option<f64>, key: &'static str, default: f64| match (
            flag, file,
        ) {
            (Some(p), _) => Ok(p),
            (None, Some(p)) if p > 0.0 && p <= 100.0 => Ok(p),
            (None, Some(p)) => Err(value_err(key)(format!(
                "{p} is not a percentage between 0 and 100"
            ))),
            (None, None) => Ok(default),
        };
        let max_overhead = percent(
            args.max_overhead,
            file.max_overhead,
            "max_overhead",
            DEFAULT_MAX_OVERHEAD,
        )?;
        let node_max_overhead = percent(
            args.node_max_overhead,
            file.node_max_overhead,
            "node_max_overhead",
            DEFAULT_NODE_MAX_OVERHEAD,
        )?;
        let window = duration(
            args.window,
            &file.window,
            "window",
            parse_duration,
            DEFAULT_WINDOW,
        )?;
        let warm_up = duration(
            args.warm_up,
            &file.warm_up,
            "warm_up",
            parse_duration,
            DEFAULT_WARM_UP,
        )?;
        let tiers_only = [
            (
                args.max_overhead.is_some() || file.max_overhead.is_some(),
                "--max-overhead",
            ),
            (
                args.node_max_overhead.is_some() || file.node_max_overhead.is_some(),
                "--node-max-overhead",
            ),
            (args.window.is_some() || file.window.is_some(), "--window"),
            (
                args.warm_up.is_some() || file.warm_up.is_some(),
                "--warm-up",
            ),
        ];
        let name = match mode {
            AgentMode::Tiered => "tiered",
            AgentMode::Exact => "exact",
            AgentMode::Watch => "watch",
        };
        if mode != AgentMode::Tiered
            && let Some((_, flag)) = tiers_only.iter().find(|(given, _)| *given)
        {
            return Err(ConfigError::Conflict(format!(
                "{flag} applies to the tiered mode's exact windows only, not to `--mode {name}`"
            )));
        }
        // Windows record every allocation (they are short), and watch mode records none.
        if mode != AgentMode::Exact && (args.sample_bytes.is_some() || file.sample_bytes.is_some())
        {
            return Err(ConfigError::Conflict(format!(
                "--sample-bytes applies to `--mode exact` only, not to `--mode {name}`"
            )));
        }
        if mode == AgentMode::Exact && (args.fault_period.is_some() || file.fault_period.is_some())
        {
            return Err(ConfigError::Conflict(
                "--fault-period applies to the page faults of `--mode watch` and `tiered`, not to \
                 `--mode exact`"
                    .into(),
            ));
        }
        let positive =
            |flag: Option<u32>, file: Option<u32>, key: &'static str, default: u32| match flag
                .or(file)
            {
                Some(0) => Err(value_err(key)("must be at least 1".into())),
                Some(n) => Ok(n),
                None => Ok(default),
            };
        let limits = MapLimits {
            pages: leaktrace_common::DEFAULT_MAX_PAGES,
            live_allocs: positive(
                args.max_live_allocs,
                file.max_live_allocs,
                "max_live_allocs",
                leaktrace_common::DEFAULT_MAX_LIVE_ALLOCS,
            )?,
            stacks: positive(
                args.max_stacks,
                file.max_stacks,
                "max_stacks",
                leaktrace_common::DEFAULT_MAX_STACKS,
            )?,
            stack_traces: leaktrace_common::DEFAULT_MAX_STACK_TRACES,
            map_events_bytes: leaktrace_common::DEFAULT_MAP_EVENTS_BYTES,
            unwind_rows: leaktrace_common::DEFAULT_MAX_UNWIND_ROWS,
        };
        let select = file.select;
        let or_file = |flag: Vec<String>, file: Option<Vec<String>>| {
            if flag.is_empty() {
                file.unwrap_or_default()
            } else {
                flag
            }
        };
        let mut exe = or_file(args.match_exe, select.exe);
        if exe.is_empty() {
            exe.push("node".into());
        }
        let labels: BTreeMap<String, String> = if args.k8s_label.is_empty() {
            select.labels.unwrap_or_default()
        } else {
            args.k8s_label.into_iter().collect()
        };
        let selector = Selector::new(
            exe,
            or_file(args.match_cgroup, select.cgroup),
            or_file(args.k8s_namespace, select.namespace),
            labels,
            args.require_annotation || select.require_annotation.unwrap_or(false),
        )?;
        Ok(Self {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a valid address literal")),
            interval,
            scan_interval,
            grace,
            mode,
            syscall_tracepoints: args.syscall_tracepoints
                || file.syscall_tracepoints.unwrap_or(false),
            fault_period: u64::from(positive(
                args.fault_period,
                file.fault_period,
                "fault_period",
                crate::probe::fault::DEFAULT_FAULT_PERIOD as u32,
            )?),
            max_overhead,
            node_max_overhead,
            window,
            warm_up,
            connection_lifetime,
            sample_bytes: (sample_bytes > 0 && mode == AgentMode::Exact).then_some(sample_bytes),
            max_targets: positive(
                args.max_targets,
                file.max_targets,
                "max_targets",
                DEFAULT_MAX_TARGETS,
            )? as usize,
            max_live_allocs_per_target: u64::from(positive(
                args.max_live_allocs_per_target,
                file.max_live_allocs_per_target,
                "max_live_allocs_per_target",
                DEFAULT_MAX_LIVE_PER_TARGET,
            )?),
            limits,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            kubernetes: args.kubernetes.or(file.kubernetes).unwrap_or_default(),
            node_name: args
                .node_name
                .or(file.node_name)
                .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty())),
            selector,
            check: args.check,
        })
    }
}

/// `KEY=VALUE`.
fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not a label selector: write KEY=VALUE")),
    }
}

/// A byte count as `--sample-bytes` takes it, or 0 for every allocation.
fn parse_sample_bytes(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_bytes(s)
}

fn check_sample_bytes(n: u64) -> Result<(), String> {
    if n > 128 << 20 {
        return Err(format!("{n} is out of range: use 0 (exact) to 128MiB"));
    }
    Ok(())
}

/// Durations shown as `10s` when the settings are printed.
mod humantime_serde_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_toml(text: &str, args: AgentArgs) -> Result<AgentConfig, ConfigError> {
        let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(file.path(), text).unwrap();
        AgentConfig::load(AgentArgs {
            config: Some(file.path().to_path_buf()),
            ..args
        })
    }

    #[test]
    fn defaults_trace_node_tiered() {
        let c = AgentConfig::load(AgentArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.mode, AgentMode::Tiered);
        assert_eq!((c.max_overhead, c.node_max_overhead), (2.0, 10.0));
        assert_eq!(c.window, Duration::from_secs(30));
        assert_eq!(c.warm_up, Duration::from_secs(180));
        assert_eq!(c.fault_period, crate::probe::fault::DEFAULT_FAULT_PERIOD);
        // Exact windows record every allocation; sampling is exact mode's.
        assert_eq!(c.sample_bytes, None);
        let exact = AgentConfig::load(AgentArgs {
            mode: Some(AgentMode::Exact),
            ..AgentArgs::default()
        })
        .unwrap();
        assert_eq!(exact.sample_bytes, Some(DEFAULT_SAMPLE_BYTES));
        assert_eq!(c.max_targets, 32);
        assert_eq!(c.connection_lifetime, Duration::from_secs(120));
        assert_eq!(c.selector.exe_patterns(), ["node"]);
        assert!(!c.syscall_tracepoints);
    }

    #[test]
    fn flags_override_the_file() {
        let c = load_toml(
            "listen = \"0.0.0.0:1\"\ninterval = \"5s\"\nconnection_lifetime = \"30s\"\nmode = \"exact\"\nsample_bytes = 0\n[match]\nexe = [\"python*\"]\n",
            AgentArgs {
                interval: Some(Duration::from_secs(1)),
                ..AgentArgs::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:1");
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.sample_bytes, None);
        assert_eq!(c.connection_lifetime, Duration::from_secs(30));
        assert_eq!(c.selector.exe_patterns(), ["python*"]);
        let tracepoints = load_toml("syscall_tracepoints = true\n", AgentArgs::default()).unwrap();
        assert!(tracepoints.syscall_tracepoints);
    }

    #[test]
    fn bad_files_say_where() {
        let typo = load_toml("[match]\nexes = [\"node\"]\n", AgentArgs::default()).unwrap_err();
        assert!(typo.to_string().contains("exes"), "{typo}");
        let bad = load_toml("grace = \"soon\"\n", AgentArgs::default()).unwrap_err();
        assert!(bad.to_string().contains("`grace`"), "{bad}");
        let glob = load_toml("[match]\nexe = [\"[\"]\n", AgentArgs::default()).unwrap_err();
        assert!(glob.to_string().contains('['), "{glob}");
    }

    #[test]
    fn budgets_belong_to_the_tiered_mode() {
        let watch = AgentConfig::load(AgentArgs {
            mode: Some(AgentMode::Watch),
            max_overhead: Some(5.0),
            ..AgentArgs::default()
        })
        .unwrap_err();
        assert_eq!(
            watch.to_string(),
            "--max-overhead applies to the tiered mode's exact windows only, not to `--mode watch`"
        );
        // The file's settings of one mode, given with another, are refused as the flags are.
        for (text, flag) in [
            ("mode = \"exact\"\nwindow = \"1m\"\n", "--window"),
            ("mode = \"exact\"\nfault_period = 1\n", "--fault-period"),
            ("mode = \"watch\"\nwarm_up = \"1m\"\n", "--warm-up"),
        ] {
            let err = load_toml(text, AgentArgs::default()).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("{flag} applies")),
                "{err}"
            );
        }
        let bad = load_toml("fault_period = 0\n", AgentArgs::default()).unwrap_err();
        assert!(bad.to_string().contains("fault_period"), "{bad}");
        let bad = load_toml("max_overhead = 0\n", AgentArgs::default()).unwrap_err();
        assert!(bad.to_string().contains("`max_overhead`"), "{bad}");
        let c = load_toml("max_overhead = 2\nwindow = \"1m\"\n", AgentArgs::default()).unwrap();
        assert_eq!((c.max_overhead, c.window), (2.0, Duration::from_secs(60)));
        let c = load_toml("warm_up = \"30s\"\n", AgentArgs::default()).unwrap();
        assert_eq!(c.warm_up, Duration::from_secs(30));
    }

    #[test]
    fn labels_parse() {
        assert_eq!(parse_label("app=web"), Ok(("app".into(), "web".into())));
        assert!(parse_label("=web").is_err());
        assert!(parse_label("app").is_err());
    }
}
