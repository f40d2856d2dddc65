//! The `leaktrace` binary: a thin shell over the library (see `leaktrace::trace`).
#![allow(
    unused_crate_dependencies,
    reason = "the library uses them; this file is a thin shell"
)]

use std::{
    io::{self, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Parser as _;
use leaktrace::{
    agent,
    cli::{self, Cli, Command, OutputArgs},
    doctor, logging, report, trace,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if err.use_stderr() => {
            // Bad input gets one line: clap's first line, without its usage hint.
            let text = err.render().to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("leaktrace: error: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
        Err(err) => {
            // --help and --version.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
    };
    let Cli { command, verbose } = cli;
    // The agent's settings are read before logging starts: they choose the log format.
    let job = match command {
        Command::Agent(args) => match agent::config::AgentConfig::load(args) {
            Ok(config) => Job::Agent(config),
            Err(err) => {
                eprintln!("leaktrace: error: {err}");
                return ExitCode::from(2);
            }
        },
        command => Job::Command(command),
    };
    let (quietest, log_format) = match &job {
        Job::Agent(config) => (tracing::Level::INFO, config.log_format),
        Job::Command(_) => (tracing::Level::WARN, logging::LogFormat::Text),
    };
    logging::init_logging(verbose, quietest, log_format);
    // A bug must still end in one line, not a backtrace over the user's terminal.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("leaktrace: internal error: {info} (please report this)");
    }));

    let result = match job {
        Job::Agent(config) => run_agent(config),
        Job::Command(command) => run(command),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // One line, never a backtrace: the chain of contexts says what failed and why.
            eprintln!("leaktrace: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What this invocation does: the agent, with its settings loaded, or any other command.
enum Job {
    Agent(agent::config::AgentConfig),
    Command(Command),
}

/// `leaktrace agent`: runs until SIGINT or SIGTERM.
fn run_agent(config: agent::config::AgentConfig) -> anyhow::Result<u8> {
    if config.check {
        write_stdout((serde_json::to_string_pretty(&config)? + "\n").as_bytes())?;
        return Ok(0);
    }
    // The session's loop on this thread alone, as a trace's (see `trace_runtime`); the API is
    // served from a thread of its own (`agent::http::spawn`). Measured on the bench's service
    // before: the runtime's worker woke 21 times a second for the loop's 8 and took a quarter
    // of the agent's CPU.
    trace_runtime()?.block_on(agent::run(config))?;
    Ok(0)
}

/// One thread for one trace: its work is one loop of timers (samples, the kernel's records),
/// which this thread's own wait serves. On a runtime with workers, the worker that held the
/// timer driver woke at every timer set or fired and then woke this thread in turn: three
/// wake-ups for each of the loop's, every one of them preempting a busy target on a CPU they
/// share (measured in watch mode on the bench's service: 18 wake-ups a second of the worker
/// for 6 of the loop).
fn trace_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(command: Command) -> anyhow::Result<u8> {
    // What to trace, how, whether children are followed, and `run`'s own settings.
    let (start, args, follow, run) = match command {
        Command::Doctor { pids, format } => return doctor(&pids, format),
        Command::Report { trace, outputs } => {
            let targets = output_formats(&outputs)?;
            let report = report::read(&trace)?;
            emit(&report, &outputs, &targets)?;
            return Ok(0);
        }
        Command::Attach {
            pids,
            follow_forks,
            trace,
        } => (trace::Start::Attach(pids), trace, follow_forks, None),
        Command::Run {
            trace,
            no_follow,
            no_perf_map,
            gate,
            command,
        } => (
            trace::Start::Run(command),
            trace,
            !no_follow,
            Some((!no_perf_map, gate)),
        ),
        Command::Agent(_) => unreachable!("the agent is started by run_agent"),
    };
    // Every output and rule file is checked before tracing: a trace is never taken only to be
    // lost.
    let targets = output_formats(&args.outputs)?;
    // Rules apply to a test gate, or when given: a plain trace hides nothing.
    let suppressions = match &run {
        Some((_, gate)) if gate.fail_on.is_some() || !gate.suppressions.is_empty() => Some(
            leaktrace::gate::suppress::Suppressions::load(&gate.suppressions)?,
        ),
        _ => None,
    };
    let options = trace::Options {
        duration: args.duration,
        interval: args.interval.unwrap_or(if run.is_some() {
            std::time::Duration::from_millis(250)
        } else if args.mode == cli::Capture::Watch {
            // Watch mode is for leaving on: each sample reads the probes' maps whole, and its
            // verdicts judge minutes, not seconds.
            std::time::Duration::from_secs(5)
        } else {
            std::time::Duration::from_secs(1)
        }),
        top: args.outputs.top,
        limits: args.limits(),
        mode: args.mode().map_err(anyhow::Error::msg)?,
        quiet: args.quiet,
        sample_bytes: args.sample_bytes,
        max_overhead: args.max_overhead,
        follow,
        node_perf_maps: run.as_ref().is_some_and(|(perf_maps, _)| *perf_maps),
        v8_frames: !args.no_v8_frames,
        resident_trend: false,
    };
    let mut outcome = trace_runtime()?.block_on(trace::trace(start, &options))?;
    if let Some(suppressions) = &suppressions {
        suppressions.apply(&mut outcome.report);
    }
    let mut status = outcome
        .exit_code
        .map_or(0, |code| u8::try_from(code).unwrap_or(1));
    if let Some((_, gate)) = &run
        && let Some(fail_on) = gate.fail_on
    {
        leaktrace::gate::judge(
            &mut outcome.report,
            fail_on,
            gate.min_bytes,
            outcome.exit_code,
            gate.leak_exit_code,
        );
        eprint!("{}", leaktrace::gate::summary(&outcome.report));
        if let Some(verdict) = &outcome.report.gate {
            status = u8::try_from(verdict.exit_code).unwrap_or(1);
        }
    }
    emit(&outcome.report, &args.outputs, &targets)?;
    Ok(status)
}

/// Each output file with its format, checked: a known format, a writable place.
fn output_formats(args: &OutputArgs) -> anyhow::Result<Vec<(PathBuf, report::Format)>> {
    args.output
        .iter()
        .map(|path| {
            if let Some(problem) = trace::output_path_problem(path) {
                anyhow::bail!("cannot write the report to {}: {problem}", path.display());
            }
            let format = report::Format::from_path(path)
                .or(args.format)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "cannot tell the format of {} from its extension (.txt .json .folded .svg \
                     .pb.gz .html .xml); add --format",
                        path.display()
                    )
                })?;
            Ok((path.clone(), format))
        })
        .collect()
}

/// Writes the report to every output, or to stdout when none is given.
fn emit(
    report: &report::Report,
    args: &OutputArgs,
    targets: &[(PathBuf, report::Format)],
) -> anyhow::Result<()> {
    if targets.is_empty() {
        let format = args.format.unwrap_or(report::Format::Text);
        return write_stdout(&report::render(report, format, args.top));
    }
    for (path, format) in targets {
        report::write_atomically(path, &report::render(report, *format, args.top))
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    Ok(())
}

/// `leaktrace doctor`: prints every check; fails when one fails.
fn doctor(pids: &[u32], format: doctor::Format) -> anyhow::Result<u8> {
    let mut checks = doctor::system();
    for &pid in pids {
        checks.extend(doctor::target(pid));
    }
    let text = match format {
        doctor::Format::Json => serde_json::to_string_pretty(&checks)? + "\n",
        doctor::Format::Text => doctor::render_text(&checks),
    };
    write_stdout(text.as_bytes())?;
    let failed = checks.iter().any(|c| c.status == doctor::Status::Fail);
    Ok(u8::from(failed))
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    match io::stdout().lock().write_all(bytes) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}
