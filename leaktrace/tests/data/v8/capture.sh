#!/usr/bin/env bash
# usage: capture.sh NODE OUT.img — records the frames of app.js (grow, relay, tick) (see capture.py).
# Needs gdb; run from the workspace root after `cargo test -p leaktrace --test v8_decode --no-run`
# (or name that test binary in V8_DECODE_BIN).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${V8_DECODE_BIN:-$(ls -t target/debug/deps/v8_decode-* | grep -v "\.d$" | head -1)}
"$1" "$here/app.js" & pid=$!
sleep 1
CAPTURE_CMD="$bin --ignored --exact capture" V8_CAPTURE_OUT="$2" gdb -p "$pid" -batch -x "$here/capture.py"
kill "$pid"
