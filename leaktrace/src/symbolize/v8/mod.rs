//! Naming JavaScript frames from V8's own data: the `v8dbg_*` values in the node binary and the
//! objects they describe in the target's heap, without `--perf-basic-prof`.
//!
//! [`Layout`] is read once per node binary; a [`Resolver`] per target turns the raw values the
//! probe captured in a JS frame (the function's SharedFunctionInfo, and for interpreted frames
//! the BytecodeArray and bytecode offset; for optimized frames the function's Code and the pc)
//! into function names, scripts and lines, inlined functions included. The recipe,
//! measured on Node 20 and 22, is `shared/design/V8-FRAMES.md`.

mod awaits;
mod code;
mod heap;
mod layout;
mod positions;
mod resolve;
mod scope_info;
mod strings;
mod values;

pub use awaits::AwaitLayout;
pub use heap::{MAX_NAME_UNITS, Memory, ProcessMemory};
pub use layout::{CodeLayout, Layout, LayoutError, StringLayout};
pub use resolve::{JsFrame, JsFunction, Resolver};
