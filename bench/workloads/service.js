// node service.js leak|clean: an HTTP service on 127.0.0.1 (a free port) that makes one 2 KiB
// Buffer per request, as server.js does. With `leak`, every 100th request's Buffer is kept for
// ever by `keepForAudit` (a module-level array): ~200 KB/s at 10 k req/s, the slow leak a
// production service has. With `clean`, the same Buffers are kept in a ring of 1000 and dropped.
//
// Prints "ready <pid> <port>" once listening, then "served <unix ms> <requests>" every 5 s (the
// bench's timeline of each run), and exits when stdin ends.
'use strict';

const http = require('http');

const leak = process.argv[2] === 'leak';
const audit = [];
const ring = new Array(1000);
let requests = 0;

function keepForAudit(body) {
  audit.push(Buffer.from(body));
}

function keepRecent(body) {
  ring[requests % ring.length] = Buffer.from(body);
}

const server = http.createServer((req, res) => {
  const body = Buffer.alloc(2048, 1);
  requests += 1;
  if (requests % 100 === 0) {
    if (leak) keepForAudit(body);
    else keepRecent(body);
  }
  res.end(body);
});
server.listen(0, '127.0.0.1', () => {
  console.log(`ready ${process.pid} ${server.address().port}`);
  setInterval(() => console.log(`served ${Date.now()} ${requests}`), 5000).unref();
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
