//! Reading V8 heap objects out of a target's memory, checked.
//!
//! Everything read belongs to the target and may be garbage: a frame slot the probe took for a
//! function, an object the GC moved since, a string whose length a hostile process chose. Every
//! object is checked by its map (the meta-map check and its instance type) before a field of it
//! is trusted, every length and loop is capped, and a failed check gives `None`, never a panic.

use std::{cell::Cell, fs::File, io, os::unix::fs::FileExt as _};

use super::layout::Layout;

/// Reads target memory; a trait so unit tests can decode from a captured memory image.
pub trait Memory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl<M: Memory + ?Sized> Memory for &M {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read(addr, buf)
    }
}

/// `/proc/PID/mem`, read with positioned reads (never written). Opened once per target: the open
/// file keeps working for the process it was opened for, and only for it, even if the PID is
/// reused.
pub struct ProcessMemory {
    file: File,
}

impl ProcessMemory {
    pub fn open(pid: u32) -> io::Result<Self> {
        Ok(Self {
            file: File::open(format!("/proc/{pid}/mem"))?,
        })
    }
}

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }
}

/// Longest function name or script path kept, in UTF-16 units.
pub const MAX_NAME_UNITS: u32 = 4096;

/// Typed reads of V8 objects in a target's memory.
pub(super) struct Heap<M> {
    pub(super) layout: Layout,
    mem: M,
    /// The meta map once one passed the check: every map's map, so later checks are one read.
    meta_map: Cell<Option<u64>>,
}

/// A V8 heap object, validated by its map: its untagged address and instance type.
#[derive(Clone, Copy, Debug)]
pub(super) struct Object {
    pub(super) addr: u64,
    pub(super) instance_type: u16,
}

/// Tagged pointers end in binary 01.
pub(super) fn is_heap_object(value: u64) -> bool {
    value & 3 == 1
}

/// A Smi: without pointer compression, the value is in the upper 32 bits and the lower are 0.
pub(super) fn smi(value: u64) -> Option<i32> {
    (value & 0xffff_ffff == 0).then_some((value >> 32) as u32 as i32)
}

impl<M: Memory> Heap<M> {
    pub(super) fn new(layout: Layout, mem: M) -> Self {
        Self {
            layout,
            mem,
            meta_map: Cell::new(None),
        }
    }

    pub(super) fn bytes(&self, addr: u64, buf: &mut [u8]) -> Option<()> {
        self.mem.read(addr, buf).ok()
    }

    pub(super) fn u64(&self, addr: u64) -> Option<u64> {
        let mut buf = [0; 8];
        self.bytes(addr, &mut buf)?;
        Some(u64::from_le_bytes(buf))
    }

    fn u16(&self, addr: u64) -> Option<u16> {
        let mut buf = [0; 2];
        self.bytes(addr, &mut buf)?;
        Some(u16::from_le_bytes(buf))
    }

    pub(super) fn i32(&self, addr: u64) -> Option<i32> {
        let mut buf = [0; 4];
        self.bytes(addr, &mut buf)?;
        Some(i32::from_le_bytes(buf))
    }

    /// The bytes of a byte array (ByteArray, TrustedByteArray) `tagged`, if at most `max` long.
    pub(super) fn byte_array(&self, tagged: u64, max: u32) -> Option<Vec<u8>> {
        let array = self
            .object(tagged)
            .filter(|t| self.layout.byte_array_types.contains(&t.instance_type))?;
        let len = u32::try_from(self.smi_field(array, self.layout.fixed_array_length)?).ok()?;
        if len > max {
            return None;
        }
        let mut bytes = vec![0; len as usize];
        self.bytes(
            array
                .addr
                .checked_add(u64::from(self.layout.byte_array_data))?,
            &mut bytes,
        )?;
        Some(bytes)
    }

    /// The tagged field at `offset` of `object`.
    pub(super) fn field(&self, object: Object, offset: u32) -> Option<u64> {
        self.u64(object.addr.checked_add(u64::from(offset))?)
    }

    /// A Smi field of `object`.
    pub(super) fn smi_field(&self, object: Object, offset: u32) -> Option<i32> {
        smi(self.field(object, offset)?)
    }

    /// The object `tagged` points at, if its map passes the meta-map check: a map's map is the
    /// meta map, whose own map is itself. Random memory almost never does this.
    pub(super) fn object(&self, tagged: u64) -> Option<Object> {
        if !is_heap_object(tagged) {
            return None;
        }
        let addr = tagged - 1;
        let map = self.u64(addr.checked_add(u64::from(self.layout.heap_object_map))?)?;
        if !is_heap_object(map) {
            return None;
        }
        let meta = self.u64(map - 1)?;
        if self.meta_map.get() != Some(meta) {
            if !is_heap_object(meta) || self.u64(meta - 1)? != meta {
                return None;
            }
            self.meta_map.set(Some(meta));
        }
        let instance_type = self.u16(map - 1 + u64::from(self.layout.map_instance_type))?;
        Some(Object {
            addr,
            instance_type,
        })
    }

    /// The object `tagged` points at, if it has instance type `want`.
    pub(super) fn typed(&self, tagged: u64, want: u16) -> Option<Object> {
        self.object(tagged).filter(|o| o.instance_type == want)
    }

    pub(super) fn is_string(&self, object: Object) -> bool {
        object.instance_type < self.layout.strings.first_nonstring_type
    }
}
