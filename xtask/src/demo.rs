//! `cargo xtask demo`: trace a bundled program that leaks on purpose.

use std::process::Command;

use anyhow::bail;

use crate::shell::{self, cargo};

pub fn run() -> anyhow::Result<()> {
    if !shell::is_root() {
        bail!("the demo loads eBPF programs: run it as root (sudo -E cargo xtask demo)");
    }
    shell::run(cargo().args(["build", "--release", "--package", "leaktrace"]))?;
    let root = shell::root();
    let out = root.join("target/demo");
    std::fs::create_dir_all(&out)?;
    let program = out.join("session-cache");
    shell::run(
        Command::new("gcc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&program)
            .arg(root.join("tests/fixtures/demo/session-cache.c")),
    )?;
    eprintln!(
        "demo: `leaktrace run` on {}, a pretend server that keeps a session per request\n",
        program.display()
    );
    shell::run(
        Command::new(root.join("target/release/leaktrace"))
            .args(["run", "--interval", "250ms", "--top", "5", "--"])
            .arg(&program),
    )
}
