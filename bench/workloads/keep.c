// keep [BLOCKS] [WORK]: allocate BLOCKS blocks of mixed sizes, use each for WORK steps, free none.
//
// What a tracer pays when every allocation stays live: its map of live blocks only grows (one
// entry per block, BLOCKS entries at the end). Protocol: workload.h.
#include "workload.h"

int main(int argc, char **argv) {
    uint64_t blocks = arg_u64(argc, argv, 1, 200000);
    uint64_t work = arg_u64(argc, argv, 2, 400);
    // Allocated before "ready", so the timed part holds only the kept blocks.
    void **kept = calloc(blocks ? blocks : 1, sizeof *kept);
    if (!kept) abort();
    ready_and_wait();
    uint64_t start = now_ns(CLOCK_MONOTONIC), cpu = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    uint64_t rng = 0x2545f4914f6cdd1du, sink = 0;
    for (uint64_t i = 0; i < blocks; i++) {
        size_t size = mixed_size(&rng, 256);
        unsigned char *p = malloc(size);
        if (!p) abort();
        sink += use_block(p, size, work, rng);
        kept[i] = p;
    }
    uint64_t elapsed = now_ns(CLOCK_MONOTONIC) - start;
    cpu = now_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu;
    if (sink == 42) fprintf(stderr, "(unlikely)\n");
    report_and_wait(elapsed, blocks, cpu);
    return 0;
}
