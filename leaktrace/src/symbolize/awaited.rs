//! Where a stack's JavaScript was resumed after an `await`, and who awaited it. V8 runs the
//! rest of an async function from the microtask queue, called by a builtin closure; the
//! functions that awaited it are on no stack then, only in the promise chain, which the probes
//! follow (see `leaktrace_common::V8Awaits`). The report puts them where the resumed
//! function's callers would be, after a marker that says so and how far the chain was known;
//! where the chain was not followed (an async generator, a V8 whose data does not describe
//! it), the marker says that who awaited is not on the stack. It also names the builtin
//! closure that V8's data calls `(anonymous)`.

use leaktrace_common::{AwaitEnd, MAX_AWAITS};

use super::hex;
use crate::report::model::Frame;

/// What [`Frame::kind`] says of the marker of JavaScript resumed after an `await`.
pub const KIND: &str = "async";

/// What [`Frame::source`] says of a function found in the promise chain, not on the stack.
pub const AWAITER_SOURCE: &str = "v8-await";

/// What the marker says where the chain was not followed.
const SAYS: &str = "resumed after await (who awaited is not on the stack)";

/// A function that awaited, as named from V8's data: marked as found in the promise chain.
pub fn awaiter(named: Frame) -> Frame {
    Frame {
        source: Some(AWAITER_SOURCE.into()),
        ..named
    }
}

/// The marker before the `awaiters` functions found in the promise chain of a function resumed
/// at `ip`: what they are and why the chain ends there (`None`: an end this tracer does not
/// know).
pub fn chain_marker(ip: u64, awaiters: usize, end: Option<AwaitEnd>) -> Frame {
    let by = match awaiters {
        0 => "resumed after await".to_owned(),
        1 => "resumed after await, awaited by the function below".to_owned(),
        n => format!("resumed after await, awaited by the {n} functions below"),
    };
    // What awaits the last function found: "then" once there is one.
    let then = if awaiters == 0 { "" } else { "then " };
    let end = match (end, awaiters) {
        (Some(AwaitEnd::NotAwaited), 0) => "not awaited by any function".to_owned(),
        (Some(AwaitEnd::NotAwaited), _) => "the outermost not awaited".to_owned(),
        (Some(AwaitEnd::Several), _) => format!("{then}awaited by several at once: not followed"),
        (Some(AwaitEnd::Handler), _) => {
            format!("{then}handed to a promise handler (then, Promise.all and kin): not followed")
        }
        (Some(AwaitEnd::Limit), _) => {
            const { assert!(MAX_AWAITS == 8) };
            "the chain goes on past 8 awaits: not followed".to_owned()
        }
        (Some(AwaitEnd::Unreadable), 0) | (None, 0) => "the chain did not read back".to_owned(),
        (Some(AwaitEnd::Unreadable), _) | (None, _) => {
            "the rest of the chain did not read back".to_owned()
        }
    };
    Frame {
        address: hex(ip),
        kind: KIND.into(),
        function: Some(format!("{by} ({end})")),
        ..Frame::default()
    }
}

/// Whether named frames are a resumed function's awaiters (led by their marker).
pub fn is_chain(frames: &[Frame]) -> bool {
    frames.first().is_some_and(|f| f.kind == KIND)
}

/// Whether `function` is a V8 builtin that resumes an async function or generator after an
/// `await` (`Builtins_AsyncFunctionAwaitResolveClosure`, its reject twin and the async
/// generators' ones), as the node binary's symbols name them.
fn resumes_after_await(function: &str) -> bool {
    function.starts_with("Builtins_Async")
        && function.contains("Await")
        && function.ends_with("Closure")
}

/// Puts a marker just outside each function resumed after an `await` whose awaiters were not
/// followed: between it and the builtin closure that resumed it, where its logical caller
/// would be.
pub fn mark(frames: &mut Vec<Frame>) {
    let mut i = 0;
    while i < frames.len() {
        let followed = i > 0
            && (frames[i - 1].kind == KIND
                || frames[i - 1].source.as_deref() == Some(AWAITER_SOURCE));
        let resumes = !followed
            && frames[i].kind == "native"
            && frames[i]
                .function
                .as_deref()
                .is_some_and(resumes_after_await);
        if resumes {
            let marker = Frame {
                address: frames[i].address.clone(),
                kind: KIND.into(),
                function: Some(SAYS.into()),
                ..Frame::default()
            };
            frames.insert(i, marker);
            i += 1;
        }
        i += 1;
    }
}

/// Whether V8's data named a frame only `(anonymous)`, with no script: a builtin's closure (an
/// `await`'s resolve function, a promise combinator's element function), whose code the node
/// binary's symbols name better.
pub fn nameless_builtin(frames: &[Frame]) -> bool {
    matches!(frames, [only] if only.kind == "js"
        && only.file.is_none()
        && only.function.as_deref() == Some("(anonymous)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: &str, function: &str) -> Frame {
        Frame {
            address: "0x1".into(),
            kind: kind.into(),
            function: Some(function.into()),
            ..Frame::default()
        }
    }

    #[test]
    fn marks_each_resumed_function_outside_it() {
        let mut frames = vec![
            frame("native", "malloc"),
            frame("js", "handleRequest"),
            frame("native", "Builtins_AsyncFunctionAwaitResolveClosure"),
            frame("native", "Builtins_PromiseFulfillReactionJob"),
            frame("js", "inner"),
            frame("native", "Builtins_AsyncGeneratorAwaitRejectClosure"),
        ];
        mark(&mut frames);
        let kinds: Vec<&str> = frames.iter().map(|f| f.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "native", "js", KIND, "native", "native", "js", KIND, "native"
            ]
        );
        assert_eq!(frames[2].function.as_deref(), Some(SAYS));
    }

    #[test]
    fn other_builtins_are_not_awaits() {
        let mut frames = vec![
            frame("native", "Builtins_AsyncFunctionEnter"),
            frame("native", "Builtins_PromiseAllResolveElementClosure"),
            frame("js", "Builtins_AsyncFunctionAwaitResolveClosure"),
        ];
        mark(&mut frames);
        assert_eq!(frames.len(), 3);
    }

    #[test]
    fn only_a_lone_nameless_frame_without_a_script_is_a_builtin() {
        assert!(nameless_builtin(&[frame("js", "(anonymous)")]));
        let mut scripted = frame("js", "(anonymous)");
        scripted.file = Some("/app/server.js".into());
        assert!(!nameless_builtin(&[scripted]));
        assert!(!nameless_builtin(&[frame("js", "handleRequest")]));
        assert!(!nameless_builtin(&[
            frame("js", "(anonymous)"),
            frame("js", "f")
        ]));
    }

    #[test]
    fn a_followed_chain_is_not_marked_again() {
        let mut frames = vec![
            frame("js", "storeAfterAwait"),
            chain_marker(0x30, 1, Some(AwaitEnd::NotAwaited)),
            awaiter(frame("js", "loadProfile")),
            frame("native", "Builtins_AsyncFunctionAwaitResolveClosure"),
        ];
        mark(&mut frames);
        assert_eq!(frames.len(), 4);
        // Nothing followed (no awaiter, the chain unreadable): still one marker.
        let mut frames = vec![
            frame("js", "storeAfterAwait"),
            chain_marker(0x30, 0, Some(AwaitEnd::Unreadable)),
            frame("native", "Builtins_AsyncFunctionAwaitResolveClosure"),
        ];
        mark(&mut frames);
        assert_eq!(frames.len(), 3);
    }

    #[test]
    fn the_marker_says_how_far_the_chain_is_known() {
        let says = |n, end| chain_marker(0x1, n, end).function.unwrap_or_default();
        assert_eq!(
            says(2, Some(AwaitEnd::NotAwaited)),
            "resumed after await, awaited by the 2 functions below (the outermost not awaited)"
        );
        assert_eq!(
            says(0, Some(AwaitEnd::NotAwaited)),
            "resumed after await (not awaited by any function)"
        );
        assert_eq!(
            says(1, Some(AwaitEnd::Handler)),
            "resumed after await, awaited by the function below (then handed to a promise \
             handler (then, Promise.all and kin): not followed)"
        );
        assert_eq!(
            says(0, Some(AwaitEnd::Handler)),
            "resumed after await (handed to a promise handler (then, Promise.all and kin): not \
             followed)"
        );
        assert_eq!(
            says(0, Some(AwaitEnd::Several)),
            "resumed after await (awaited by several at once: not followed)"
        );
        assert_eq!(
            says(1, Some(AwaitEnd::Several)),
            "resumed after await, awaited by the function below (then awaited by several at \
             once: not followed)"
        );
        assert_eq!(
            says(8, Some(AwaitEnd::Limit)),
            "resumed after await, awaited by the 8 functions below (the chain goes on past 8 \
             awaits: not followed)"
        );
        for end in [Some(AwaitEnd::Unreadable), None] {
            assert_eq!(
                says(0, end),
                "resumed after await (the chain did not read back)"
            );
            assert_eq!(
                says(1, end),
                "resumed after await, awaited by the function below (the rest of the chain did \
                 not read back)"
            );
        }
        let marker = chain_marker(0x1, 0, None);
        assert_eq!(marker.kind, KIND);
        assert!(is_chain(&[marker]));
        assert!(!is_chain(&[awaiter(frame("js", "f"))]));
    }
}
