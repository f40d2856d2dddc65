//! Where an object's addresses are: in its file (to read its code and data) and in a process
//! that maps it (to read its variables there).

use object::{Object as _, ObjectSegment as _};

use crate::process::maps::Mapping;

/// Bytes of `elf` at `vaddr`, at most `len` (fewer at its segment's end).
pub fn bytes_at<'a>(elf: &object::File<'a>, vaddr: u64, len: u64) -> Option<&'a [u8]> {
    elf.segments().find_map(|s| {
        let end = s.address() + s.size();
        (s.address() <= vaddr && vaddr < end)
            .then(|| s.data_range(vaddr, len.min(end - vaddr)).ok().flatten())
            .flatten()
    })
}

/// Where `vaddr` of the object `object` maps is in the process: found through the mapping of
/// the same file whose file range holds the bytes of `vaddr`'s segment.
pub fn runtime_address(
    mappings: &[Mapping],
    object: &Mapping,
    elf: &object::File<'_>,
    vaddr: u64,
) -> Option<u64> {
    let segment = elf
        .segments()
        .find(|s| s.address() <= vaddr && vaddr < s.address() + s.size())?;
    let (offset, size) = segment.file_range();
    // A `.bss` address has no bytes in the file: its segment's first byte places it.
    let anchor = if vaddr - segment.address() < size {
        vaddr
    } else {
        segment.address()
    };
    let anchor_offset = offset + (anchor - segment.address());
    mappings
        .iter()
        .filter(|m| m.inode == object.inode && m.path == object.path)
        .find(|m| m.offset <= anchor_offset && anchor_offset < m.offset + (m.end - m.start))
        .map(|m| m.start + (anchor_offset - m.offset) + (vaddr - anchor))
}
