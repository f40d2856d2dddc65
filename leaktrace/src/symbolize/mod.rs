//! Naming the addresses of a stack: function, source line, inlined frames, module.
//!
//! Addresses are symbolized while their process lives, as soon as their stack is first seen,
//! and the results are kept: a report printed after the target exited still names every frame.

use std::collections::HashMap;

use blazesym::{
    Pid,
    symbolize::{
        CodeInfo, Input, Symbolized, Symbolizer as Blaze,
        cache::{Cache, Process as ProcessCache},
        source::{Process, Source},
    },
};
use tracing::debug;

use crate::report::model::Frame;

/// Symbolizes and remembers the frames of every address seen, per process.
pub struct Symbolizer {
    blaze: Blaze,
    frames: HashMap<(u32, u64), Vec<Frame>>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether an address is a return address (every frame but the innermost): it points after the
/// call, possibly into the next line or function, so the call itself is at `address - 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrKind {
    Exact,
    Return,
}

impl Symbolizer {
    pub fn new() -> Self {
        Self {
            blaze: Blaze::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .build(),
            frames: HashMap::new(),
        }
    }

    /// Keeps what is needed to symbolize `pid`'s addresses after it exits.
    pub fn remember(&self, pid: u32) {
        let mut cache = ProcessCache::new(Pid::from(pid));
        cache.cache_vmas = true;
        cache.cache_perf_map = false;
        if let Err(err) = self.blaze.cache(&Cache::Process(cache)) {
            debug!(pid, %err, "caching process mappings failed");
        }
    }

    /// Symbolizes the addresses of `pid` not seen before. `alive` selects how files are reached:
    /// through `/proc/PID/map_files` while the process lives (right even inside a container),
    /// through the remembered mappings afterwards.
    pub fn resolve(&mut self, pid: u32, addrs: &[(u64, AddrKind)], alive: bool) {
        let todo: Vec<(u64, AddrKind)> = addrs
            .iter()
            .copied()
            .filter(|(a, _)| !self.frames.contains_key(&(pid, *a)))
            .collect();
        if todo.is_empty() {
            return;
        }
        let lookup: Vec<u64> = todo
            .iter()
            .map(|&(a, kind)| match kind {
                AddrKind::Return => a.saturating_sub(1),
                AddrKind::Exact => a,
            })
            .collect();
        let mut process = Process::new(Pid::from(pid));
        process.map_files = alive;
        process.perf_map = false;
        let source = Source::Process(process);
        let results = match self.blaze.symbolize(&source, Input::AbsAddr(&lookup)) {
            Ok(results) => results,
            Err(err) => {
                debug!(pid, %err, "symbolization failed");
                Vec::new()
            }
        };
        debug!(
            pid,
            asked = lookup.len(),
            got = results.len(),
            alive,
            "symbolized"
        );
        for (i, &(addr, _)) in todo.iter().enumerate() {
            let frames = match results.get(i) {
                Some(Symbolized::Sym(sym)) => {
                    let module = sym
                        .module
                        .as_ref()
                        .map(|m| m.to_string_lossy().into_owned());
                    let mut frames: Vec<Frame> = sym
                        .inlined
                        .iter()
                        .rev()
                        .map(|inl| Frame {
                            function: Some(inl.name.to_string()),
                            inlined: true,
                            ..located(addr, module.clone(), inl.code_info.as_ref())
                        })
                        .collect();
                    frames.push(Frame {
                        function: Some(sym.name.to_string()),
                        ..located(addr, module, sym.code_info.as_deref())
                    });
                    frames
                }
                other => {
                    if let Some(Symbolized::Unknown(reason)) = other {
                        debug!(pid, addr = %hex(addr), %reason, "address not symbolized");
                    }
                    vec![Frame {
                        address: hex(addr),
                        kind: "native".into(),
                        ..Frame::default()
                    }]
                }
            };
            self.frames.insert((pid, addr), frames);
        }
    }

    /// The frames of one address (several when functions were inlined there).
    pub fn frames(&self, pid: u32, addr: u64) -> Vec<Frame> {
        self.frames.get(&(pid, addr)).cloned().unwrap_or_else(|| {
            vec![Frame {
                address: hex(addr),
                kind: "native".into(),
                ..Frame::default()
            }]
        })
    }
}

fn located(addr: u64, module: Option<String>, code: Option<&CodeInfo<'_>>) -> Frame {
    Frame {
        address: hex(addr),
        kind: "native".into(),
        function: None,
        file: code.map(|c| c.to_path().display().to_string()),
        line: code.and_then(|c| c.line),
        module,
        module_offset: None,
        inlined: false,
    }
}

/// An address as the report writes it.
pub fn hex(addr: u64) -> String {
    format!("{addr:#x}")
}
