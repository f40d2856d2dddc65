//! Walking a user stack on from where a probe found it: by its object's unwind table through
//! the code the tracer prepared tables for (code without frame pointers), by frame pointer
//! everywhere else, noting each frame's frame pointer for the JavaScript frames.
//!
//! The walk is one global BPF function: the kernel verifies it once, apart from the programs
//! that call it, and each caller sees a call that returns. Inlined, every distinct way out of
//! the walk went on through the caller's bookkeeping as a state of its own: with tables, the
//! allocator probes, whose walks also stitch queued work, passed the verifier's million
//! instructions.

use aya_ebpf::helpers::bpf_probe_read_user;
use leaktrace_common::{Counter, MAX_FRAMES, MAX_TABLE_FRAMES, StackFrames, UnwindProcess};

use crate::{
    hash::mix,
    maps::JsScratch,
    unwind::{self, Cursor, Step},
};

/// Walks on from `cur`, whose frame is the last of the `cur.len` frames in `frames` (their
/// hash so far in `cur.hash`), to the outermost frame or [`MAX_FRAMES`]; leaves the length and
/// hash in `cur`, and in `cur.lost` a bit for each counter the walk's losses add to (see
/// [`Cursor::lose`]). With `keep_fps`, `js` receives each frame's frame pointer; `tables` (may
/// be null) are the target's table-unwound mappings. Returns 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn leaktrace_walk(
    frames: *mut StackFrames,
    cur: *mut Cursor,
    js: *mut JsScratch,
    keep_fps: u64,
    tables: *const UnwindProcess,
) -> u64 {
    // SAFETY: the verifier checks a global function's pointer arguments against their types;
    // all point into map values (this CPU's scratch slots and the tracer's table), or are null.
    // Each is checked before anything is computed from it, which the verifier also requires:
    // an optional `js` checked in the loop had its field's address computed ahead of the check.
    let (Some(frames), Some(cur), Some(js)) = (
        unsafe { frames.as_mut() },
        unsafe { cur.as_mut() },
        unsafe { js.as_mut() },
    ) else {
        return 0;
    };
    let mut js = if keep_fps != 0 { Some(js) } else { None };
    // SAFETY: as above.
    let tables = unsafe { tables.as_ref() };
    let mut len = cur.len as usize;
    let mut hash = cur.hash;
    for i in 1..MAX_FRAMES {
        if i < len {
            continue;
        }
        // `cur` is the frame of `ips[i - 1]`; its rbp is kept for the JavaScript frames,
        // identified once the stack is known.
        let fp = cur.fp;
        // The frame at `fp` is `worker`'s: what lies above it is the pool thread's start.
        if cur.stop_fp != 0 && fp == cur.stop_fp {
            break;
        }
        let step = match tables {
            // Bounded (see MAX_TABLE_FRAMES); `i` is a constant to the verifier, which drops
            // the table code from the later iterations.
            Some(tables) if i <= MAX_TABLE_FRAMES => unwind::step(tables, cur, i > 1),
            _ => Step::NoTable,
        };
        let next = match step {
            Step::Caller(ra) => {
                if i == MAX_TABLE_FRAMES {
                    cur.lose(Counter::UnwindStepLimit);
                }
                ra
            }
            Step::Stop => break,
            Step::NoTable => {
                // [fp] is the next frame pointer, [fp + 8] the return address into that
                // frame's function.
                // SAFETY: a user-memory read through the helper: a bad address yields an error.
                let Ok(pair) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
                    break;
                };
                if pair[1] != 0 {
                    cur.pc = pair[1];
                    cur.sp = fp + 16;
                    cur.fp = pair[0];
                }
                if let Some(js) = js.as_deref_mut() {
                    js.fps[i - 1] = fp;
                    js.fps_len = i as u64;
                }
                if pair[1] == 0 {
                    break;
                }
                frames.ips[i] = pair[1];
                hash = mix(hash, pair[1]);
                len = i + 1;
                // Frames lie ever higher on the stack; anything else is not a frame pointer.
                if pair[0] <= fp {
                    break;
                }
                if i == MAX_FRAMES - 1 {
                    cur.lose(Counter::StackTruncated);
                }
                continue;
            }
        };
        if let Some(js) = js.as_deref_mut() {
            js.fps[i - 1] = fp;
            js.fps_len = i as u64;
        }
        frames.ips[i] = next;
        hash = mix(hash, next);
        len = i + 1;
        if i == MAX_FRAMES - 1 {
            cur.lose(Counter::StackTruncated);
        }
    }
    cur.len = len as u64;
    cur.hash = hash;
    0
}
