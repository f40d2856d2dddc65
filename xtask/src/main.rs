//! `cargo xtask`: the project's tasks. `setup` installs what a fresh machine lacks; `demo`,
//! `test` and `bench` run it first, so each is the one command a new user needs.

mod bench;
mod demo;
mod fuzz;
mod setup;
mod shell;
mod soak;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: toolchain components, Debian packages, bpf-linker.
    Setup,
    /// Set up, build leaktrace, and trace a bundled program that leaks on purpose.
    Demo,
    /// Set up, check formatting and lints, and run every test (the eBPF ones need root).
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// Set up, build leaktrace (release), and measure what tracing costs: each workload untraced
    /// and under each tracer configuration, in alternating rounds (needs root).
    Bench {
        /// Rounds; each runs every configuration once, in a rotated order [default: 3, 1 with
        /// --quick].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: Option<u32>,
        /// Workloads to run, comma-separated [default: all].
        #[arg(long, value_enum, value_delimiter = ',')]
        workloads: Vec<bench::Workload>,
        /// One round of shorter workloads: a smoke run.
        #[arg(long)]
        quick: bool,
    },
    /// Set up, build leaktrace (release), and trace a churning and leaking workload for minutes,
    /// printing the tracer's memory, CPU time and live-block map fill as it goes (needs root).
    Soak {
        /// How long the workload runs.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        minutes: u64,
        /// Live blocks the workload builds up to (by 60 % of the run) and holds.
        #[arg(long, default_value_t = 1_000_000)]
        keep: u64,
    },
    /// Fuzz every parser of input a target, a container or a user controls (perf maps, /proc
    /// files, cgroup paths, options, the prologue decoder, ELF symbols, saved reports), each for
    /// a bounded time; a crashing input is saved to the corpus, where `cargo test` replays it
    /// (needs no set-up and no root).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        /// Targets to fuzz [default: all].
        targets: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Demo => setup::run().and_then(|()| demo::run()),
        Task::Test { no_lint, filter } => {
            setup::run().and_then(|()| test::run(!no_lint, filter.as_deref()))
        }
        Task::Bench {
            rounds,
            workloads,
            quick,
        } => setup::run().and_then(|()| {
            bench::run(bench::Options {
                rounds: rounds.map(|r| r as usize),
                workloads,
                quick,
            })
        }),
        Task::Soak { minutes, keep } => {
            setup::run().and_then(|()| soak::run(&soak::Options { minutes, keep }))
        }
        Task::Fuzz { seconds, targets } => fuzz::run(seconds, &targets),
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}
