//! Watch mode's probes on the mapping syscalls (see `leaktrace-ebpf`'s `mapping`): fentry and
//! fexit on the syscalls' own functions, which fire for `mmap`, `munmap`, `mremap` and
//! `mprotect` only. Exact tracing attaches the same code at the raw syscall tracepoints, which
//! fire for every syscall of the host: a cost watch mode, left on in production, does not pay.

use aya::{
    Btf, Ebpf,
    programs::{FEntry, FExit},
};

/// (program, kernel function) attached at entry.
const ENTRIES: &[(&str, &str)] = &[
    ("munmap_fentry", "__x64_sys_munmap"),
    ("mmap_fentry", "__x64_sys_mmap"),
    ("mremap_fentry", "__x64_sys_mremap"),
];

/// (program, kernel function) attached at return.
const EXITS: &[(&str, &str)] = &[
    ("mmap_fexit", "__x64_sys_mmap"),
    ("mremap_fexit", "__x64_sys_mremap"),
    ("mprotect_fexit", "__x64_sys_mprotect"),
];

/// Loads and attaches every program, or says why not (a kernel in integrity lockdown refuses
/// fentry; one without BTF cannot load it). The links live as long as the loaded object: a
/// failure part way leaves the ones attached until the object is dropped, and the tracer goes
/// on without mapping events, so the caller drops none of them early.
pub(super) fn attach(ebpf: &mut Ebpf) -> Result<(), String> {
    let btf = Btf::from_sys_fs().map_err(|err| format!("reading the kernel's BTF: {err}"))?;
    for &(name, function) in ENTRIES {
        let program: &mut FEntry = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| format!("the probes have no program {name}"))?;
        program
            .load(function, &btf)
            .and_then(|()| program.attach().map(drop))
            .map_err(|err| format!("fentry on {function}: {}", reason(&err)))?;
    }
    for &(name, function) in EXITS {
        let program: &mut FExit = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| format!("the probes have no program {name}"))?;
        program
            .load(function, &btf)
            .and_then(|()| program.attach().map(drop))
            .map_err(|err| format!("fexit on {function}: {}", reason(&err)))?;
    }
    Ok(())
}

/// An error's text without the verifier's log when the kernel gave none (a refusal, not a
/// program it rejected).
fn reason(err: &impl std::fmt::Display) -> String {
    let text = err.to_string();
    match text.split_once(" Verifier output:") {
        Some((head, log)) if log.trim().is_empty() => head.trim_end_matches('.').to_owned(),
        _ => text,
    }
}
