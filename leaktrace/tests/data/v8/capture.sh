#!/usr/bin/env bash
# usage: capture.sh NODE OUT.img [inlined]
#   records the frames of app.js (grow, relay, tick) at a large calloc; with `inlined`, those of
#   inlined.js (makeRecord inlined into the optimized ingestBatch) at a 1 KiB ArrayBuffer, 4 s in.
# (see capture.py). Needs gdb; run from the workspace root after
# `cargo test -p leaktrace --test v8_decode --no-run` (or name that test binary in V8_DECODE_BIN).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${V8_DECODE_BIN:-$(ls -t target/debug/deps/v8_decode-* | grep -v "\.d$" | head -1)}
if [ "${3:-}" = inlined ]; then
    app=$here/inlined.js wait=4
    export V8_CAPTURE_APP=$app V8_CAPTURE_BREAK='node::NodeArrayBufferAllocator::Allocate if $rsi == 1024'
else
    app=$here/app.js wait=1
fi
"$1" "$app" & pid=$!
sleep "$wait"
CAPTURE_CMD="$bin --ignored --exact capture" V8_CAPTURE_OUT="$2" gdb -p "$pid" -batch -x "$here/capture.py"
kill "$pid"
