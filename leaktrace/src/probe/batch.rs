//! Reading a whole BPF hash map in a few system calls (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6).
//!
//! Written here because aya has no batch read for hash maps. Iterating key by key costs two system calls per
//! entry: a Node process has tens of thousands of allocation sites, and sampling them every
//! 200 ms that way kept a CPU busy and slowed the very processes being traced. In chunks of
//! [`CHUNK`] entries it is one call per chunk.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// Entries asked for per call. A chunk must hold the largest hash bucket (the kernel answers
/// ENOSPC otherwise), which a few thousand always do.
const CHUNK: usize = 4096;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of the hash map `fd`, whose keys are `K` and values `V`; `Ok(None)` when this
/// kernel cannot batch (the caller then iterates key by key).
///
/// An entry added or removed while the map is read may be missed or seen, as with any
/// iteration of a live map.
pub fn read_all<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<(K, V)>>> {
    let mut keys = vec![0u8; CHUNK * size_of::<K>()];
    let mut values = vec![0u8; CHUNK * size_of::<V>()];
    // The hash map's batch token is a bucket index.
    let (mut in_batch, mut out_batch) = (0u32, 0u32);
    let mut first = true;
    let mut entries = Vec::new();
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&raw const in_batch) as u64
            },
            out_batch: (&raw mut out_batch) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points at buffers sized for CHUNK keys and values and at the
        // two tokens, all alive for the call; the kernel writes at most `count` entries.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (r < 0).then(io::Error::last_os_error);
        let done = match error.as_ref().and_then(io::Error::raw_os_error) {
            None => false,
            // The last chunk: its entries are valid.
            Some(libc::ENOENT) => true,
            Some(libc::EINVAL | libc::ENOTSUP | libc::EOPNOTSUPP) if first => return Ok(None),
            Some(_) => return Err(error.unwrap_or_else(io::Error::last_os_error)),
        };
        let filled = (attr.count as usize).min(CHUNK);
        for i in 0..filled {
            // SAFETY: the kernel filled `filled` keys and values; `Pod` types are plain data
            // that any bytes form, read unaligned from the byte buffers.
            let (key, value) = unsafe {
                (
                    std::ptr::read_unaligned(keys.as_ptr().add(i * size_of::<K>()).cast::<K>()),
                    std::ptr::read_unaligned(values.as_ptr().add(i * size_of::<V>()).cast::<V>()),
                )
            };
            entries.push((key, value));
        }
        if done {
            return Ok(Some(entries));
        }
        in_batch = out_batch;
        first = false;
    }
}
