//! leaktrace's probes: exact, in-kernel accounting of a process's live native allocations.
//!
//! Userspace never sees one event per call: the probes keep the live blocks and per-stack totals
//! in maps, and the tracer reads those totals at its own pace.
#![no_std]
#![no_main]
// Atomic adds on map values (see `account`); RUSTC_BOOTSTRAP is set by the build.
#![feature(core_intrinsics)]
#![allow(internal_features, reason = "core_intrinsics gives the BPF atomic add")]

mod account;
mod alloc;
mod awaits;
mod fault;
mod follow;
mod hash;
mod js;
mod mapping;
mod maps;
mod queue;
mod registers;
mod site;
mod stitch;
mod unwind;
mod walk;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here; no probe panics.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
