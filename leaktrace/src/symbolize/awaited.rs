//! Where a stack's JavaScript was resumed after an `await`. V8 runs the rest of an async
//! function from the microtask queue, called by a builtin closure; the function that awaited it
//! is on no stack then, only in the promise chain, which V8's postmortem data does not describe.
//! The report marks that spot, so that a stack that goes on into the event loop is not taken
//! for the whole story, and names the builtin closure that V8's data calls `(anonymous)`.

use crate::report::model::Frame;

/// What [`Frame::kind`] says of the marker of JavaScript resumed after an `await`.
pub const KIND: &str = "async";

/// What the marker says.
const SAYS: &str = "resumed after await (who awaited is not on the stack)";

/// Whether `function` is a V8 builtin that resumes an async function or generator after an
/// `await` (`Builtins_AsyncFunctionAwaitResolveClosure`, its reject twin and the async
/// generators' ones), as the node binary's symbols name them.
fn resumes_after_await(function: &str) -> bool {
    function.starts_with("Builtins_Async")
        && function.contains("Await")
        && function.ends_with("Closure")
}

/// Puts a marker just outside each function resumed after an `await`: between it and the
/// builtin closure that resumed it, where its logical caller would be.
pub fn mark(frames: &mut Vec<Frame>) {
    let mut i = 0;
    while i < frames.len() {
        let resumes = frames[i].kind == "native"
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
}
