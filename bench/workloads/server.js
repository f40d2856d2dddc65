// node server.js: a trivial HTTP server on 127.0.0.1 (a free port), one 2 KiB Buffer per request.
//
// The server PLATFORM.md measured: prints "ready <pid> <port>" once listening, and exits when
// stdin ends. The harness attaches the tracer, then loads it with wrk.
'use strict';

const http = require('http');

const server = http.createServer((req, res) => {
  res.end(Buffer.alloc(2048, 1));
});
server.listen(0, '127.0.0.1', () => {
  console.log(`ready ${process.pid} ${server.address().port}`);
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
