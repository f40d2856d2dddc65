//! leaktrace: find the native allocations that keep growing in a running process.
//!
//! The modules follow the data: [`process`] finds targets and their allocator, [`probe`] loads
//! and attaches the eBPF programs, [`collect`] reads their maps, [`analyze`] turns snapshots into
//! series and verdicts, [`symbolize`] names the frames, [`report`] renders the result; [`trace`]
//! runs one trace through all of them.

pub mod agent;
pub mod analyze;
pub mod budget;
pub mod cli;
pub mod collect;
pub mod doctor;
pub mod gate;
pub mod logging;
pub mod parse;
pub mod preflight;
pub mod probe;
pub mod process;
pub mod report;
mod session;
pub mod symbolize;
pub mod trace;
pub mod unwind;

// A dev-dependency of the integration tests (tests/hostile_input.rs, tests/fuzz.rs), not of the
// unit tests.
#[cfg(test)]
use proptest as _;
