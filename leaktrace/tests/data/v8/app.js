'use strict';
// leaktrace fixture: a known function, called from an anonymous arrow, on a timer.
const kept = [];

function grow(n) {
  const b = Buffer.alloc(n);
  kept.push(b);
  return b.length;
}

const relay = (n) => grow(n);

function tick() {
  relay(100000);
  if (kept.length < 400) setTimeout(tick, 250);
}
tick();
