//! `cargo xtask`: the project's tasks. `setup` installs what a fresh machine lacks; `demo`,
//! `test` and `bench` run it first, so each is the one command a new user needs.

mod bench;
mod demo;
mod setup;
mod shell;
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
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}
