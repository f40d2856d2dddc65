//! Builds the probes for the BPF target and leaves the object in OUT_DIR for `include_bytes!`.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;
// Named only so cargo rebuilds the embedded probes when their crate changes.
use leaktrace_ebpf as _;

/// The toolchain pinned in rust-toolchain.toml: the probes build with `-Z build-std=core` on it,
/// allowed by RUSTC_BOOTSTRAP, so no nightly is needed.
const TOOLCHAIN: &str = "1.98.0";

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("reading the workspace metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "leaktrace-ebpf")
        .ok_or_else(|| anyhow!("leaktrace-ebpf is not in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // SAFETY: build scripts are single-threaded; this only affects the child cargo.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(TOOLCHAIN),
    )
}
