//! Naming JavaScript frames from V8's own data: the `v8dbg_*` values in the node binary and the
//! objects they describe in the target's heap.
