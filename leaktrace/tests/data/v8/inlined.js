'use strict';
// leaktrace fixture: makeRecord allocates, and TurboFan inlines it into ingestBatch ~1 s in
// (the functions of tests/fixtures/node/leak-inlined.js, without its harness).
const RECORDS = 64;
const FIELDS = 4;
const kept = [];

function makeRecord(seq, checksum) {
  const record = Buffer.alloc(1024);
  record[0] = seq;
  record[1] = checksum;
  return record;
}

function ingestBatch(step) {
  let checksum = 0;
  for (let i = 0; i < RECORDS; i++) {
    const seq = step * RECORDS + i;
    for (let f = 0; f < FIELDS; f++) {
      checksum = (checksum * 31 + seq + f) | 0;
    }
    kept.push(makeRecord(seq, checksum));
  }
  return checksum;
}

let step = 0;
setInterval(() => {
  ingestBatch(step++);
  if (kept.length >= 1 << 14) kept.length = 0;
}, 62);
