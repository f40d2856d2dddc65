//! The user registers a syscall or page-fault program starts its stack walk from, kept in a
//! per-CPU slot ([`USER_REGS`]) rather than on the program's stack, which the walk's global
//! functions share (see the map's comment).

use aya_ebpf::{bindings::pt_regs, helpers::generated::bpf_probe_read_kernel};

use crate::maps::USER_REGS;

/// This CPU's copy of the user registers saved at `regs` (kernel memory), or `None` when they
/// cannot be read.
#[inline(always)]
pub fn read(regs: *const pt_regs) -> Option<&'static pt_regs> {
    let slot = slot()?;
    // SAFETY: the read goes through the helper, which checks the kernel address and writes
    // `size_of::<pt_regs>()` bytes into this CPU's slot, used by one program at a time.
    let ret = unsafe {
        bpf_probe_read_kernel(
            slot.cast(),
            core::mem::size_of::<pt_regs>() as u32,
            regs.cast(),
        )
    };
    // SAFETY: as above; the slot lives as long as the map.
    (ret == 0).then(|| unsafe { &*slot })
}

/// This CPU's slot. A program that has the registers in its context copies the fields it
/// needs here too: the verifier refuses an instruction that reads through a context pointer on
/// one path and a map value on another.
#[inline(always)]
pub fn slot() -> Option<*mut pt_regs> {
    USER_REGS.get_ptr_mut(0)
}
