//! The marker frame the probes put between a thread-pool worker's own frames, or those of the
//! callback of queued work, and the frames of the thread that queued the work (see
//! `leaktrace-ebpf`'s `queue`), and what it changes for naming the rest of the stack.

use std::collections::HashMap;

use leaktrace_common::{JsFrame, callback_tid, queued_tid, stitched_tid, thread_tid};

use super::hex;
use crate::{collect::JsSequence, report::model::Frame};

/// What [`Frame::kind`] says of a marker of queued work.
pub const KIND: &str = "queued";
/// What [`Frame::kind`] says of the marker of a callback of queued work.
pub const CALLBACK_KIND: &str = "callback";
/// What [`Frame::kind`] says of the marker of the thread a stack ran on (not the main one).
pub const THREAD_KIND: &str = "thread";

/// The names of the threads that queued work, by (process, thread), read while they live: the
/// report is often written after the process exited.
#[derive(Default)]
pub struct QueuingThreads {
    names: HashMap<(u32, u32), String>,
}

impl QueuingThreads {
    /// Reads the name of every thread marked in `ips` that is not known yet.
    pub fn remember(&mut self, pid: u32, ips: &[u64]) {
        for tid in ips
            .iter()
            .filter_map(|&ip| stitched_tid(ip).or_else(|| thread_tid(ip)))
        {
            if self.names.contains_key(&(pid, tid)) {
                continue;
            }
            if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")) {
                self.names.insert((pid, tid), comm.trim_end().to_owned());
            }
        }
    }

    /// The marker frame for `ip`, if it is one.
    pub fn frame(&self, pid: u32, ip: u64) -> Option<Frame> {
        if let Some(tid) = thread_tid(ip) {
            let name = self
                .names
                .get(&(pid, tid))
                .map_or_else(String::new, |name| format!(" \"{name}\""));
            return Some(Frame {
                address: hex(ip),
                kind: THREAD_KIND.into(),
                function: Some(format!("on thread {tid}{name}")),
                ..Frame::default()
            });
        }
        let (tid, kind, what) = match (queued_tid(ip), callback_tid(ip)) {
            (Some(tid), _) => (tid, KIND, "queued by"),
            (_, Some(tid)) => (tid, CALLBACK_KIND, "callback of work queued by"),
            _ => return None,
        };
        let by = match self.names.get(&(pid, tid)) {
            Some(name) => format!("\"{name}\""),
            None if tid == pid => "the main thread".to_owned(),
            None => "a thread".to_owned(),
        };
        Some(Frame {
            address: hex(ip),
            kind: kind.into(),
            function: Some(format!("{what} {by} on thread {tid}")),
            ..Frame::default()
        })
    }

    pub fn forget(&mut self, pid: u32) {
        self.names.retain(|(p, _), _| *p != pid);
    }
}

/// The JavaScript frames of a stack whose addresses are `ips`, placed on it. The probes give a
/// stitched stack the JavaScript frames of the queuing thread, indexed in that thread's own
/// stack, which follows the marker; a callback's frames come placed already.
pub fn place_js(js: &JsSequence, ips: &[u64]) -> Vec<JsFrame> {
    let shift = match js.placed {
        true => 0,
        false => ips
            .iter()
            .position(|&ip| stitched_tid(ip).is_some())
            .map_or(0, |marker| marker as u32 + 1),
    };
    js.frames
        .iter()
        .map(|f| JsFrame {
            index: f.index + shift,
            ..*f
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use leaktrace_common::{callback_marker, queued_marker};

    use super::*;

    #[test]
    fn the_queuers_javascript_frames_follow_the_marker() {
        let js = |placed| JsSequence {
            frames: vec![JsFrame {
                index: 2,
                ..JsFrame::default()
            }],
            placed,
        };
        let stitched = [0x10, 0x20, queued_marker(7), 0x30, 0x40, 0x50];
        assert_eq!(place_js(&js(false), &stitched)[0].index, 5);
        assert_eq!(place_js(&js(false), &[0x10, 0x20, 0x30])[0].index, 2);
        let callback = [0x10, 0x20, callback_marker(7), 0x30, 0x40, 0x50];
        assert_eq!(place_js(&js(false), &callback)[0].index, 5);
        // A callback's own frames and its queuer's, placed by the probes.
        assert_eq!(place_js(&js(true), &callback)[0].index, 2);
    }

    #[test]
    fn a_marker_names_the_queuing_thread() {
        let mut threads = QueuingThreads::default();
        let me = std::process::id();
        threads.remember(me, &[queued_marker(me)]);
        let frame = threads.frame(me, queued_marker(me)).unwrap();
        assert_eq!(frame.kind, KIND);
        let function = frame.function.unwrap();
        assert!(function.starts_with("queued by \""), "{function}");
        assert!(function.ends_with(&format!("on thread {me}")), "{function}");
        assert_eq!(threads.frame(me, 0x1234), None);
        let frame = threads.frame(me, callback_marker(me)).unwrap();
        assert_eq!(frame.kind, CALLBACK_KIND);
        assert!(
            frame
                .function
                .unwrap()
                .starts_with("callback of work queued by \""),
        );
        threads.remember(me, &[leaktrace_common::thread_marker(me)]);
        let frame = threads
            .frame(me, leaktrace_common::thread_marker(me))
            .unwrap();
        assert_eq!(frame.kind, THREAD_KIND);
        let function = frame.function.unwrap();
        assert!(
            function.starts_with(&format!("on thread {me} \"")),
            "{function}"
        );
    }
}
