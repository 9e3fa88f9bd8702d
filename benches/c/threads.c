/* threads.c - N independent churning threads.
 *
 * Each thread keeps its own working set of small blocks (16..256 bytes) and
 * repeatedly replaces a random slot, like `churn small`, with no sharing
 * between threads.  The *total* number of replacements is fixed and split
 * evenly between threads, so the same work is done for every thread count:
 * on an ideal allocator wall time only depends on how many cores there are,
 * and extra threads beyond the core count show the cost of per-thread state
 * and contention.
 *
 * usage: threads [nthreads] [total_iterations] [slots_per_thread]
 *   nthreads          default 2
 *   total_iterations  default 6000000 (split across threads)
 *   slots_per_thread  default 20000
 *
 * Output: a "checksum=" line that depends only on the parameters.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

struct worker {
    pthread_t tid;
    int id;
    long iters;
    long nslots;
    uint64_t sum;
    int failed;
};

static inline uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void *run(void *arg)
{
    struct worker *w = arg;
    uint64_t st = 0xabcdef12345ULL * (uint64_t)(w->id + 1);
    unsigned char **p = malloc((size_t)w->nslots * sizeof *p);
    uint16_t *sz = malloc((size_t)w->nslots * sizeof *sz);
    if (!p || !sz) {
        w->failed = 1;
        return NULL;
    }
    uint64_t sum = 0;
    for (long i = 0; i < w->nslots; i++) {
        size_t s = 16 + (size_t)(splitmix(&st) % 241);
        p[i] = malloc(s);
        if (!p[i]) {
            w->failed = 1;
            return NULL;
        }
        p[i][0] = (unsigned char)i;
        p[i][s - 1] = (unsigned char)s;
        sz[i] = (uint16_t)s;
    }
    for (long it = 0; it < w->iters; it++) {
        uint64_t r = splitmix(&st);
        size_t idx = (size_t)(r % (uint64_t)w->nslots);
        unsigned char *q = p[idx];
        sum = sum * 31 + q[0] + ((uint64_t)q[sz[idx] - 1] << 8);
        free(q);
        size_t s = 16 + (size_t)((r >> 32) % 241);
        q = malloc(s);
        if (!q) {
            w->failed = 1;
            return NULL;
        }
        q[0] = (unsigned char)it;
        q[s - 1] = (unsigned char)s;
        p[idx] = q;
        sz[idx] = (uint16_t)s;
    }
    for (long i = 0; i < w->nslots; i++) {
        sum = sum * 31 + p[i][0];
        free(p[i]);
    }
    free(p);
    free(sz);
    w->sum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2;
    long total = argc > 2 ? atol(argv[2]) : 6000000;
    long nslots = argc > 3 ? atol(argv[3]) : 20000;
    if (n <= 0 || total < 0 || nslots <= 0) {
        fprintf(stderr, "usage: %s [nthreads] [total_iterations] [slots_per_thread]\n", argv[0]);
        return 2;
    }
    struct worker *ws = calloc((size_t)n, sizeof *ws);
    if (!ws)
        return 1;
    for (int i = 0; i < n; i++) {
        ws[i].id = i;
        ws[i].iters = total / n + (i < total % n ? 1 : 0);
        ws[i].nslots = nslots;
        if (pthread_create(&ws[i].tid, NULL, run, &ws[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    uint64_t sum = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(ws[i].tid, NULL);
        if (ws[i].failed) {
            fprintf(stderr, "thread %d: allocation failed\n", i);
            return 1;
        }
        sum = sum * 1000003 + ws[i].sum;
    }
    free(ws);

    printf("threads n=%d total_iters=%ld slots=%ld\n", n, total, nslots);
    printf("checksum=%016llx\n", (unsigned long long)sum);
    return 0;
}
