// soak SECONDS KEEP: the `cargo xtask soak` workload. For SECONDS, two threads churn (malloc and
// free of mixed sizes, nothing kept), and a third keeps blocks of 32..95 bytes from 64 distinct
// call stacks at a steady rate, reaching KEEP live blocks at 60 % of the run, then holding them.
// The tracer's memory should follow the live blocks and the stacks, and stay flat while only the
// churn goes on. Protocol: workload.h (the result line counts every malloc).
#include <pthread.h>
#include <stdatomic.h>

#include "workload.h"

static atomic_int stop;
static uint64_t seconds, keep;

struct churner {
    uint64_t seed, calls;
};

static void *churn(void *arg) {
    struct churner *c = arg;
    uint64_t rng = c->seed;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        size_t size = mixed_size(&rng, 64);
        unsigned char *p = malloc(size);
        if (!p) abort();
        p[0] = (unsigned char)size;
        free(p);
        c->calls++;
    }
    return NULL;
}

static void **kept;

// Recursing `depth` times before the malloc gives each depth a call stack of its own.
NOINLINE static void *keep_at(unsigned depth, size_t size) {
    if (depth == 0) return malloc(size);
    void *p = keep_at(depth - 1, size);
    __asm__ volatile("" ::: "memory");
    return p;
}

static void *keeper(void *arg) {
    (void)arg;
    uint64_t start = now_ns(CLOCK_MONOTONIC);
    uint64_t fill_ns = seconds * 600000000ull;
    uint64_t n = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed) && n < keep) {
        uint64_t due = (now_ns(CLOCK_MONOTONIC) - start) * keep / (fill_ns ? fill_ns : 1);
        if (due > keep) due = keep;
        for (; n < due; n++) {
            kept[n] = keep_at((unsigned)(n % 64), 32 + n % 64);
            if (!kept[n]) abort();
        }
        usleep(1000);
    }
    return NULL;
}

int main(int argc, char **argv) {
    seconds = arg_u64(argc, argv, 1, 300);
    keep = arg_u64(argc, argv, 2, 1000000);
    kept = calloc(keep ? keep : 1, sizeof *kept);
    if (!kept) abort();
    ready_and_wait();
    uint64_t t0 = now_ns(CLOCK_MONOTONIC), cpu0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    struct churner churners[2] = {{.seed = 1}, {.seed = 2}};
    pthread_t threads[3];
    for (int i = 0; i < 2; i++) pthread_create(&threads[i], NULL, churn, &churners[i]);
    pthread_create(&threads[2], NULL, keeper, NULL);
    sleep((unsigned)seconds);
    atomic_store(&stop, 1);
    for (int i = 0; i < 3; i++) pthread_join(threads[i], NULL);
    report_and_wait(now_ns(CLOCK_MONOTONIC) - t0, churners[0].calls + churners[1].calls + keep,
                    now_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0);
    return 0;
}
