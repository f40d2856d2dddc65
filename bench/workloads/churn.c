// churn [PAIRS] [THREADS] [WORK]: PAIRS malloc+free pairs in total, split over THREADS threads.
//
// Each thread keeps a window of recent blocks and frees the one allocated WINDOW calls earlier,
// so frees are not all of the block just allocated (glibc's fastest path), and uses each block
// for WORK steps (see use_block). Exactly PAIRS mallocs and PAIRS frees run between "go" and
// the result line. Protocol: workload.h.
#include <pthread.h>

#include "workload.h"

enum { WINDOW = 32 };

struct job {
    uint64_t pairs;
    uint64_t work;
    uint64_t seed;
    uint64_t sink;
};

static void *churn(void *arg) {
    struct job *job = arg;
    void *window[WINDOW] = {0};
    uint64_t rng = job->seed, sink = 0;
    for (uint64_t i = 0; i < job->pairs; i++) {
        unsigned slot = (unsigned)(i % WINDOW);
        if (window[slot]) free(window[slot]);
        size_t size = mixed_size(&rng, 64);
        unsigned char *p = malloc(size);
        if (!p) abort();
        sink += use_block(p, size, job->work, rng);
        window[slot] = p;
    }
    for (unsigned slot = 0; slot < WINDOW; slot++) free(window[slot]);
    job->sink = sink;
    return NULL;
}

int main(int argc, char **argv) {
    uint64_t pairs = arg_u64(argc, argv, 1, 2000000);
    uint64_t threads = arg_u64(argc, argv, 2, 2);
    uint64_t work = arg_u64(argc, argv, 3, 400);
    if (threads == 0 || threads > 64) {
        fprintf(stderr, "churn: THREADS must be 1..64\n");
        return 2;
    }
    struct job jobs[64];
    pthread_t ids[64];
    for (uint64_t t = 0; t < threads; t++) {
        // The last thread takes the remainder, so the total is exactly PAIRS.
        jobs[t] = (struct job){pairs / threads + (t + 1 == threads ? pairs % threads : 0), work,
                               0x9e3779b97f4a7c15u * (t + 1), 0};
    }
    ready_and_wait();
    uint64_t start = now_ns(CLOCK_MONOTONIC), cpu = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    for (uint64_t t = 0; t < threads; t++) {
        if (pthread_create(&ids[t], NULL, churn, &jobs[t]) != 0) abort();
    }
    uint64_t sink = 0;
    for (uint64_t t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
        sink += jobs[t].sink;
    }
    uint64_t elapsed = now_ns(CLOCK_MONOTONIC) - start;
    cpu = now_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu;
    if (sink == 42) fprintf(stderr, "(unlikely)\n");
    report_and_wait(elapsed, pairs, cpu);
    return 0;
}
