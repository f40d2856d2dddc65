// node buffers.js [COUNT]: allocate COUNT Buffers of 2..64 KiB and drop each at once.
//
// Buffer.alloc of more than 4 KiB is one calloc in Node; the garbage collector frees them later,
// so this is native allocation churn driven from JavaScript. Protocol as in workload.h: "ready
// <pid>", wait for a line, run, "result elapsed_ns=N ops=N cpu_ns=N", exit when stdin ends.
'use strict';

const count = Number(process.argv[2] ?? 200000);

function run() {
  const start = process.hrtime.bigint();
  const cpu = process.cpuUsage();
  let sink = 0;
  for (let i = 0; i < count; i++) {
    const size = 2048 + ((i * 7919) % 63) * 1024;
    const buf = Buffer.alloc(size);
    buf[size - 1] = i & 0xff;
    sink += buf[size >> 1];
  }
  const elapsed = process.hrtime.bigint() - start;
  const used = process.cpuUsage(cpu);
  if (sink === -1) console.error('(unlikely)');
  console.log(`result elapsed_ns=${elapsed} ops=${count} cpu_ns=${(used.user + used.system) * 1000}`);
}

let started = false;
process.stdin.on('data', () => {
  if (!started) {
    started = true;
    run();
  }
});
process.stdin.on('end', () => process.exit(started ? 0 : 1));
console.log(`ready ${process.pid}`);
