//! `cargo xtask`: the project's tasks. `setup` installs what a fresh machine lacks; `demo` and
//! `test` run it first, so each is the one command a new user needs.

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
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Demo => setup::run().and_then(|()| demo::run()),
        Task::Test { no_lint, filter } => {
            setup::run().and_then(|()| test::run(!no_lint, filter.as_deref()))
        }
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}
