//! Empty library target: it lets `leaktrace` name this crate as a build-dependency, so cargo
//! rebuilds the embedded probes when they change.
#![no_std]
