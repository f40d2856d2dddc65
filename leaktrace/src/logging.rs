//! Where the tracer's own log lines go, and in which shape.

/// How log lines are written.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs go to stderr, colored only when it is a terminal (a pod's log or a file gets no escape
/// codes), at `quietest` (`warn` for a trace, `info` for the agent, whose log is its
/// record of targets coming and going) unless `-v` or `LEAKTRACE_LOG` (an `EnvFilter`) asks
/// for more.
pub fn init_logging(verbose: u8, quietest: tracing::Level, format: LogFormat) {
    let level = match verbose {
        0 => quietest,
        1 => tracing::Level::INFO.max(quietest),
        _ => tracing::Level::DEBUG,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEAKTRACE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
