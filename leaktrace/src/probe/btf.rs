//! Two numbers from the kernel's BTF: where `pid` and `tgid` sit in `struct task_struct`, which
//! the fork probe reads to tell a new process from a new thread.
//!
//! Written here rather than taken from a crate: aya parses BTF but keeps struct members
//! private, and the one maintained BTF crate (btf-rs) is LGPL. Finding one struct's members
//! needs only the type section's framing, which the kernel documents
//! (Documentation/bpf/btf.rst) and has kept stable since BTF began.

use std::collections::HashMap;

/// Why the offsets could not be found.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read the kernel's BTF (/sys/kernel/btf/vmlinux): {0}")]
    Read(#[from] std::io::Error),
    #[error("the kernel's BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no struct task_struct with members {0}")]
    Missing(&'static str),
}

/// Byte offsets of `pid` and `tgid` in `struct task_struct`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    pub pid: u32,
    pub tgid: u32,
}

/// Reads the running kernel's offsets.
pub fn task_offsets() -> Result<TaskOffsets, BtfError> {
    task_offsets_in(&std::fs::read("/sys/kernel/btf/vmlinux")?)
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// The offsets in a BTF blob (little-endian, as on every machine leaktrace runs on).
pub fn task_offsets_in(data: &[u8]) -> Result<TaskOffsets, BtfError> {
    let malformed = BtfError::Malformed;
    let magic = data
        .get(0..2)
        .map(|m| u16::from_le_bytes([m[0], m[1]]))
        .ok_or(malformed("too short"))?;
    if magic != MAGIC {
        return Err(malformed("bad magic (not little-endian BTF)"));
    }
    let field = |at| u32_at(data, at).ok_or(malformed("truncated header"));
    let hdr_len = field(4)? as usize;
    let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
    let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
    let types = data
        .get(hdr_len + type_off..hdr_len + type_off + type_len)
        .ok_or(malformed("type section out of bounds"))?;
    let strings = data
        .get(hdr_len + str_off..hdr_len + str_off + str_len)
        .ok_or(malformed("string section out of bounds"))?;
    let name = |off: u32| -> &[u8] {
        let rest = strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    };

    let mut at = 0;
    while at + 12 <= types.len() {
        let (name_off, info) = (
            u32_at(types, at).unwrap_or(0),
            u32_at(types, at + 4).unwrap_or(0),
        );
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        let trailing = match kind {
            1 | 14 | 17 => 4,          // int, var, decl_tag
            3 => 12,                   // array
            4 | 5 => 12 * vlen,        // struct, union: members
            6 | 13 => 8 * vlen,        // enum, func_proto
            15 | 19 => 12 * vlen,      // datasec, enum64
            2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, modifiers, func, float, type_tag
            _ => return Err(malformed("unknown type kind")),
        };
        let members = types
            .get(at + 12..at + 12 + trailing)
            .ok_or(malformed("type runs past its section"))?;
        if kind == KIND_STRUCT && name(name_off) == b"task_struct" && vlen > 0 {
            let mut found: HashMap<&[u8], u32> = HashMap::new();
            for member in members.as_chunks::<12>().0 {
                let bits = u32_at(member, 8).unwrap_or(0);
                // With kind_flag, the high byte holds a bitfield's size.
                let bit_offset = if kind_flag { bits & 0x00ff_ffff } else { bits };
                found.insert(name(u32_at(member, 0).unwrap_or(0)), bit_offset / 8);
            }
            return match (found.get(&b"pid"[..]), found.get(&b"tgid"[..])) {
                (Some(&pid), Some(&tgid)) if pid > 0 && tgid > 0 => Ok(TaskOffsets { pid, tgid }),
                _ => Err(BtfError::Missing("pid and tgid")),
            };
        }
        at += 12 + trailing;
    }
    Err(BtfError::Missing("pid and tgid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with one int type and `struct task_struct { int x; int pid; int tgid; }`.
    fn blob(kind_flag: bool) -> Vec<u8> {
        let strings = b"\0int\0task_struct\0x\0pid\0tgid\0";
        let mut types = Vec::new();
        let mut put = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // [1] int: name "int", kind 1, size 4, encoding.
        put(1);
        put(1 << 24);
        put(4);
        put(32);
        // [2] struct task_struct, 3 members.
        put(5);
        put((u32::from(kind_flag) << 31) | (4 << 24) | 3);
        put(12);
        for (name, offset_bits) in [(17u32, 0u32), (19, 32), (23, 64)] {
            put(name);
            put(1);
            put(offset_bits);
        }
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(strings);
        data
    }

    #[test]
    fn finds_the_members() {
        for kind_flag in [false, true] {
            assert_eq!(
                task_offsets_in(&blob(kind_flag)).unwrap(),
                TaskOffsets { pid: 4, tgid: 8 }
            );
        }
    }

    #[test]
    fn bad_blobs_are_errors_not_panics() {
        let good = blob(false);
        for len in 0..good.len() {
            assert!(task_offsets_in(&good[..len]).is_err(), "truncated at {len}");
        }
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(task_offsets_in(&bad).is_err());
    }

    #[test]
    fn this_kernel_has_them() {
        // Every kernel leaktrace supports has BTF (the preflight checks it). Outside CI a kernel
        // without it skips this check and says so; CI's kernel must have it.
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "this kernel has no BTF: CI must run this check; failing instead of skipping"
            );
            println!("skipping: this kernel has no /sys/kernel/btf/vmlinux");
            return;
        }
        let offsets = task_offsets().unwrap();
        assert!(
            offsets.pid > 0 && offsets.tgid > 0 && offsets.pid != offsets.tgid,
            "{offsets:?}"
        );
    }
}
