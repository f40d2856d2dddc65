//! A target in its own mount and PID namespace, as every container is, traced from the host: its
//! C library is its own file, reached through /proc/PID/root, and it is PID 1 inside.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::fs;

use leaktrace_tests::{
    fixture, have_root, make_root, scratch, site, start_in_namespace, trace_workload,
};

#[test]
fn a_process_in_its_own_mount_and_pid_namespace_is_traced_exactly() {
    if !have_root("a_process_in_its_own_mount_and_pid_namespace_is_traced_exactly") {
        return;
    }
    let root = scratch("container").join("root");
    make_root(&root, &fixture("leaky", &[]), "leaky");
    // The fixture is unshare's child; inside its namespace it is PID 1.
    let (mut unshare, pid) = start_in_namespace(&root, "/leaky", &["10"], &[]);

    let out = scratch("container").join("report.json");
    let report = trace_workload(&mut unshare, pid, &[], &out);
    assert_eq!(unshare.finish(), 0);

    let target = &report["targets"][0];
    assert_eq!(target["pid"], pid);
    assert_eq!(target["ns_pid"], 1, "the PID the container sees");
    // Its own copy of libc (/proc/PID/maps names it as the host reaches it).
    let libc = root.join("lib/x86_64-linux-gnu/libc.so.6");
    assert_eq!(target["allocator"], libc.display().to_string());
    let leak = site(&report, pid, "leak_malloc");
    assert_eq!((leak.live_bytes, leak.live_allocs), (30_000, 30));
    let chain = site(&report, pid, "leak_realloc_chain");
    assert_eq!((chain.live_bytes, chain.allocated_bytes), (7_000, 11_000));
    // glibc's thread list numbers the threads as the container does (the main thread is 1
    // there): its arena is still known as the main thread's.
    let malloc = &target["memory"]["malloc"];
    assert_eq!(
        malloc["by_thread"][0]["threads_are"], "main thread",
        "{malloc}"
    );
    assert_eq!(malloc["by_thread"][0]["threads"], 1, "{malloc}");
}

/// Leaves something hostile in a container's /tmp.
type Plant = fn(&std::path::Path);

#[test]
fn hostile_files_in_a_container_cost_nothing_but_their_own_names() {
    if !have_root("hostile_files_in_a_container_cost_nothing_but_their_own_names") {
        return;
    }
    use std::os::unix::fs::symlink;
    // What a container may leave where leaktrace looks for its perf map: a file of gigabytes
    // without a newline, or a symbolic link loop. Either costs a bounded read or an error for
    // that file alone; the trace and its report are whole.
    let plants: [(&str, Plant); 2] = [
        ("huge", |tmp| {
            let map = fs::File::create(tmp.join("perf-1.map")).expect("creating the map");
            map.set_len(4 << 30).expect("a sparse 4 GiB file");
        }),
        ("loop", |tmp| {
            symlink("/tmp/perf-1.map.b", tmp.join("perf-1.map")).expect("a link");
            symlink("/tmp/perf-1.map", tmp.join("perf-1.map.b")).expect("a link back");
        }),
    ];
    for (label, plant) in plants {
        let dir = scratch(&format!("container_hostile_{label}"));
        let root = dir.join("root");
        make_root(&root, &fixture("leaky", &[]), "leaky");
        fs::create_dir_all(root.join("tmp")).expect("the root's /tmp");
        plant(&root.join("tmp"));
        let (mut unshare, pid) = start_in_namespace(&root, "/leaky", &["10"], &[]);
        let report = trace_workload(&mut unshare, pid, &[], &dir.join("report.json"));
        assert_eq!(unshare.finish(), 0);
        leaktrace_tests::assert_leaky_is_exact(&report, pid, 10);
    }
}
