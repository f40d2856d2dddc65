// What the C workloads share: the run protocol, a tiny random generator, per-operation work and
// the clocks.
//
// Protocol (the same as the tests' fixtures, so a tracer can attach before anything is timed):
//   1. print "ready <pid>" on stdout;
//   2. wait for one line on stdin (the harness sends it once the tracer is attached);
//   3. run the timed part;
//   4. print "result elapsed_ns=N ops=N cpu_ns=N" (cpu_ns is the whole process's CPU time, which
//      includes the probes: uprobe handlers run in the traced thread, as kernel time);
//   5. wait until stdin reaches EOF, then exit 0. The harness reads the tracer's CPU time and
//      peak RSS while the target is still alive, so the tracer never sees its target exit
//      before it is told to stop.
#ifndef LEAKTRACE_BENCH_WORKLOAD_H
#define LEAKTRACE_BENCH_WORKLOAD_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

// Parses argv[i] as a non-negative number, or returns `fallback` when it is absent.
static uint64_t arg_u64(int argc, char **argv, int i, uint64_t fallback) {
    if (argc <= i) return fallback;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(argv[i], &end, 10);
    if (errno != 0 || end == argv[i] || *end != '\0') {
        fprintf(stderr, "%s: argument %d (`%s`) is not a number\n", argv[0], i, argv[i]);
        exit(2);
    }
    return (uint64_t)v;
}

static uint64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// Steps 1 and 2 of the protocol. Exits 1 if stdin ends before the go line.
static void ready_and_wait(void) {
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    int c;
    while ((c = getchar()) != '\n') {
        if (c == EOF) exit(1);
    }
}

// Steps 4 and 5.
static void report_and_wait(uint64_t elapsed_ns, uint64_t ops, uint64_t cpu_ns) {
    printf("result elapsed_ns=%llu ops=%llu cpu_ns=%llu\n", (unsigned long long)elapsed_ns,
           (unsigned long long)ops, (unsigned long long)cpu_ns);
    fflush(stdout);
    while (getchar() != EOF) {
    }
}

static uint64_t xorshift(uint64_t *state) {
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

// A mixed allocation size: mostly 16..4096 bytes, one in `big_one_in` 64 KiB (still below
// glibc's mmap threshold, so it comes from the heap like the small ones).
static size_t mixed_size(uint64_t *rng, unsigned big_one_in) {
    uint64_t r = xorshift(rng);
    if (r % big_one_in == 0) return 64 * 1024;
    return 16 + (size_t)((r >> 16) % 4081);
}

// What a program does with a block between allocating and freeing it: write to it, and compute
// for `work` steps. Without it the loop would be nothing but malloc and free (~20 ns a pair), and
// a run long enough to time well untraced would take minutes under a tracer that single-steps.
static NOINLINE uint64_t use_block(unsigned char *p, size_t size, uint64_t work, uint64_t seed) {
    p[0] = (unsigned char)seed;
    p[size / 2] = (unsigned char)(seed >> 8);
    p[size - 1] = (unsigned char)(seed >> 16);
    uint64_t x = seed | 1;
    for (uint64_t i = 0; i < work; i++) x = x * 6364136223846793005u + p[0];
    return x;
}

#endif
