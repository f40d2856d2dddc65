//! `cargo xtask test`: lints, then every test, the eBPF end-to-end ones included.

use std::time::Instant;

use anyhow::bail;

use crate::shell::{self, cargo};

pub fn run(lint: bool, filter: Option<&str>) -> anyhow::Result<()> {
    let started = Instant::now();
    if lint {
        shell::run(cargo().args(["fmt", "--all", "--check"]))?;
        shell::run(cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "leaktrace-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // The probes lint for their own target; their object is built by leaktrace's build.rs.
        shell::run(
            cargo()
                .args([
                    "clippy",
                    "--package",
                    "leaktrace-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--",
                    "-D",
                    "warnings",
                ])
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_DIR", shell::root().join("target/ebpf-lint")),
        )?;
    }
    if std::env::var_os("CI").is_some() && !shell::is_root() {
        bail!("CI must run as root: the end-to-end tests load eBPF programs");
    }
    // The default members: every crate but the probes, which build only for BPF.
    shell::run(cargo().args(["build", "--bins"]))?;
    let mut test = cargo();
    test.args(["test", "--no-fail-fast"]);
    if let Some(filter) = filter {
        test.args(["--", filter]);
    }
    shell::run(&mut test)?;
    eprintln!("xtask: all tests passed in {:.0?}", started.elapsed());
    Ok(())
}
