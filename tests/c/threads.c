/* Cross-thread frees and thread churn.
 *
 * Part 1: 8 threads share a ring of live blocks protected by a mutex. Each
 * thread either allocates a block (random size, mostly 1..64 KiB, some up to
 * 1 MiB), fills it with a pattern and pushes it, or pops a block, most likely
 * allocated by another thread, checks its contents and frees it. Every thread
 * also keeps a few blocks of its own.
 *
 * Part 2: 500 short-lived threads (4 at a time) each allocate and free, and
 * hand some blocks back to the main thread, which frees them after the thread
 * has exited.
 */
#include "check.h"

#include <pthread.h>

#define NTHREADS 8
#define OPS_PER_THREAD 30000
#define RING_CAP 2048
#define LOCAL_SLOTS 16

struct block {
    unsigned char *p;
    size_t size;
    uint64_t seed;
    int owner;
};

static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;
static struct block ring[RING_CAP];
static size_t ring_head, ring_len;
static unsigned long cross_thread_frees, same_thread_frees;

static size_t pick_size(uint64_t *rng) {
    if (rng_next(rng) % 64 == 0) return rng_range(rng, 64 * 1024, 1024 * 1024);
    return rng_size(rng, 64 * 1024);
}

static struct block make_block(uint64_t *rng, int owner) {
    struct block b;
    b.size = pick_size(rng);
    b.seed = rng_next(rng);
    b.owner = owner;
    b.p = malloc(b.size);
    CHECK(b.p != NULL, "malloc(%zu) returned NULL", b.size);
    fill_pattern(b.p, b.size, b.seed);
    return b;
}

static void check_and_free(struct block b, const char *what) {
    CHECK_PATTERN(b.p, b.size, b.seed, what);
    free(b.p);
}

static void *ring_worker(void *arg) {
    int id = (int)(intptr_t)arg;
    uint64_t rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(id + 1);
    struct block local[LOCAL_SLOTS];
    memset(local, 0, sizeof local);
    unsigned long cross = 0, same = 0;

    for (int op = 0; op < OPS_PER_THREAD; op++) {
        uint64_t r = rng_next(&rng);
        if (r % 4 == 0) {
            /* Thread-local churn. */
            size_t slot = (size_t)(r >> 8) % LOCAL_SLOTS;
            if (local[slot].p != NULL) check_and_free(local[slot], "thread-local block");
            local[slot] = make_block(&rng, id);
            continue;
        }
        int want_push = (r >> 8) % 2 == 0;
        struct block popped = {0};
        int have_popped = 0;
        /* Allocate outside the lock so threads allocate concurrently. */
        struct block fresh = {0};
        if (want_push) fresh = make_block(&rng, id);

        pthread_mutex_lock(&ring_lock);
        if (want_push && ring_len < RING_CAP) {
            ring[(ring_head + ring_len) % RING_CAP] = fresh;
            ring_len++;
            fresh.p = NULL;
        } else if (ring_len > 0) {
            popped = ring[ring_head];
            ring_head = (ring_head + 1) % RING_CAP;
            ring_len--;
            have_popped = 1;
        }
        pthread_mutex_unlock(&ring_lock);

        if (fresh.p != NULL) check_and_free(fresh, "block that did not fit in the ring");
        if (have_popped) {
            if (popped.owner != id)
                cross++;
            else
                same++;
            check_and_free(popped, "block from the shared ring");
        }
    }
    for (int i = 0; i < LOCAL_SLOTS; i++)
        if (local[i].p != NULL) check_and_free(local[i], "thread-local block");

    pthread_mutex_lock(&ring_lock);
    cross_thread_frees += cross;
    same_thread_frees += same;
    pthread_mutex_unlock(&ring_lock);
    return NULL;
}

#define CHURN_THREADS 500
#define CHURN_BATCH 4
#define CHURN_ALLOCS 64
#define CHURN_HANDED_BACK 8

struct churn_arg {
    int id;
    struct block handed_back[CHURN_HANDED_BACK];
};

static void *churn_worker(void *argp) {
    struct churn_arg *arg = argp;
    uint64_t rng = 0xD1B54A32D192ED03ULL * (uint64_t)(arg->id + 1);
    struct block blocks[CHURN_ALLOCS];
    for (int i = 0; i < CHURN_ALLOCS; i++) {
        blocks[i].size = rng_size(&rng, 16 * 1024);
        blocks[i].seed = rng_next(&rng);
        blocks[i].owner = arg->id;
        blocks[i].p = malloc(blocks[i].size);
        CHECK(blocks[i].p != NULL, "malloc(%zu) returned NULL in churn thread", blocks[i].size);
        fill_pattern(blocks[i].p, blocks[i].size, blocks[i].seed);
    }
    for (int i = 0; i < CHURN_ALLOCS; i++) {
        if (i < CHURN_HANDED_BACK)
            arg->handed_back[i] = blocks[i];
        else
            check_and_free(blocks[i], "churn thread block");
    }
    return NULL;
}

int main(void) {
    check_init("threads");

    pthread_t threads[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        int rc = pthread_create(&threads[i], NULL, ring_worker, (void *)(intptr_t)i);
        CHECK(rc == 0, "pthread_create failed: %s", strerror(rc));
    }
    for (int i = 0; i < NTHREADS; i++) pthread_join(threads[i], NULL);
    while (ring_len > 0) {
        check_and_free(ring[ring_head], "block left in the ring");
        ring_head = (ring_head + 1) % RING_CAP;
        ring_len--;
    }
    CHECK(cross_thread_frees > 1000, "only %lu cross-thread frees happened", cross_thread_frees);
    printf("threads: ring done, %lu cross-thread frees, %lu same-thread frees\n",
           cross_thread_frees, same_thread_frees);

    static struct churn_arg args[CHURN_BATCH];
    for (int started = 0; started < CHURN_THREADS; started += CHURN_BATCH) {
        pthread_t t[CHURN_BATCH];
        for (int k = 0; k < CHURN_BATCH; k++) {
            args[k].id = started + k;
            int rc = pthread_create(&t[k], NULL, churn_worker, &args[k]);
            CHECK(rc == 0, "pthread_create failed: %s", strerror(rc));
        }
        for (int k = 0; k < CHURN_BATCH; k++) {
            pthread_join(t[k], NULL);
            for (int i = 0; i < CHURN_HANDED_BACK; i++)
                check_and_free(args[k].handed_back[i], "block handed back by an exited thread");
        }
    }
    printf("threads: churn of %d threads done\n", CHURN_THREADS);
    printf("threads: OK\n");
    return 0;
}
