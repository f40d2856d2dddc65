//! Who awaited an async function that V8 resumed after an `await`.
//!
//! A resumed async function runs from the microtask queue: the functions that awaited it are
//! on no stack, only in V8's promise chain. The builtin closure that resumed it keeps, in its
//! context, the function's generator object; the generator keeps the function's promise; a
//! pending promise keeps its reactions, and the one reaction of an awaited promise is the
//! awaiting function's own resume closure, whose context keeps that function's generator. V8
//! follows the same chain for its async stack traces (`Isolate::CaptureAsyncStackTrace`).
//!
//! It must be followed here, when the allocation happens: by the time the tracer could read
//! it, the promises have settled, their reactions are gone and the collector has moved what
//! is left. Only reads; every object's type is checked before a field of it is trusted, so a
//! layout that does not hold ends the chain ([`AwaitEnd::Unreadable`]) instead of naming
//! garbage.

use leaktrace_common::{AwaitEnd, MAX_AWAITS, MAX_FRAMES, StackFrames, V8Frames};

use crate::{
    js::{field, instance_type, is_heap_object, read},
    maps::JsScratch,
};

/// Looks for the frame of a builtin closure that resumed an async function in the stack
/// `stack` (frame pointers in `js.fps`) and follows the promise chain from it: its index in
/// `js.await_index` (0: none), the SharedFunctionInfo of each function that awaited, innermost
/// first, in `js.awaited` (their count in `js.awaited_len`), and why the chain ends in
/// `js.awaited_end`. The function the closure resumed is not among them: it is on the stack.
///
/// A global BPF function, called before the JavaScript frames are identified, which place what
/// it found: called from their walk, its stack would be added to theirs, past the 512 bytes a
/// chain of calls may use. Returns 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn leaktrace_js_awaits(
    v8: *mut V8Frames,
    js: *mut JsScratch,
    stack: *const StackFrames,
) -> u64 {
    // SAFETY: the verifier checks a global function's pointer arguments against their types;
    // all point into map values (the target's layout, this CPU's scratch slots).
    let (Some(v8), Some(js), Some(stack)) =
        (unsafe { v8.as_mut() }, unsafe { js.as_mut() }, unsafe {
            stack.as_ref()
        })
    else {
        return 0;
    };
    js.await_index = 0;
    js.awaited_len = 0;
    js.awaited_end = 0;
    if v8.awaits.resumers == [[0; 2]; leaktrace_common::MAX_RESUMERS] {
        return 0;
    }
    for i in 1..MAX_FRAMES {
        if i as u64 >= js.fps_len {
            break;
        }
        if !v8.awaits.resumes(stack.ips[i]) {
            continue;
        }
        js.await_index = i as u64;
        let context = read(js.fps[i].wrapping_add_signed(i64::from(v8.fp_context)));
        js.awaited_end = match context {
            Some(context) => follow(v8, js, context),
            None => AwaitEnd::Unreadable,
        } as u64;
        break;
    }
    0
}

#[inline(always)]
fn follow(v8: &mut V8Frames, js: &mut JsScratch, mut context: u64) -> AwaitEnd {
    let a = v8.awaits;
    for n in 0..=MAX_AWAITS {
        if !is_heap_object(context) {
            return AwaitEnd::Unreadable;
        }
        // The generator of the function the closure resumes (or would resume).
        let Some(generator) = read(field(context, a.context_generator)) else {
            return AwaitEnd::Unreadable;
        };
        if instance_type(v8, generator) != Some(a.async_function_object_type) {
            return AwaitEnd::Unreadable;
        }
        if n > 0 {
            let Some(sfi) = read(field(generator, a.generator_function))
                .and_then(|function| read(field(function, v8.js_function_shared)))
                .filter(|&sfi| is_heap_object(sfi))
            else {
                return AwaitEnd::Unreadable;
            };
            js.awaited[(n - 1) & (MAX_AWAITS - 1)] = sfi;
            js.awaited_len = n as u64;
        }
        let Some(promise) = read(field(generator, a.generator_promise)) else {
            return AwaitEnd::Unreadable;
        };
        if instance_type(v8, promise) != Some(a.promise_type) {
            return AwaitEnd::Unreadable;
        }
        // A pending promise's reactions: Smi 0 for none, else the last one added.
        let Some(reaction) = read(field(promise, a.promise_reactions)) else {
            return AwaitEnd::Unreadable;
        };
        if reaction == 0 {
            return AwaitEnd::NotAwaited;
        }
        if instance_type(v8, reaction) != Some(a.promise_reaction_type) {
            return AwaitEnd::Unreadable;
        }
        let Some(next) = read(field(reaction, a.reaction_next)) else {
            return AwaitEnd::Unreadable;
        };
        if next != 0 {
            return if instance_type(v8, next) == Some(a.promise_reaction_type) {
                AwaitEnd::Several
            } else {
                AwaitEnd::Unreadable
            };
        }
        // An awaiting function's resume closure keeps its generator in its context; anything
        // else (a `then` handler, a combinator's element closure) keeps none there.
        let Some(handler) = read(field(reaction, a.reaction_fulfill)) else {
            return AwaitEnd::Unreadable;
        };
        let ty = instance_type(v8, handler);
        if ty.is_none_or(|ty| ty < v8.js_function_first || ty > v8.js_function_last) {
            return AwaitEnd::Handler;
        }
        let Some(next_context) = read(field(handler, a.function_context)) else {
            return AwaitEnd::Unreadable;
        };
        let Some(generator) = read(field(next_context, a.context_generator)) else {
            return AwaitEnd::Unreadable;
        };
        if instance_type(v8, generator) != Some(a.async_function_object_type) {
            return AwaitEnd::Handler;
        }
        context = next_context;
    }
    AwaitEnd::Limit
}
