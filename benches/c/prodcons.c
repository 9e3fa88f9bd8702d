/* prodcons.c - producer/consumer with cross-thread frees.
 *
 * One producer thread allocates blocks of 64..512 bytes, stamps them, and
 * pushes the pointers through a lock-free single-producer/single-consumer
 * ring buffer (C11 atomics, acquire/release).  A consumer thread pops each
 * block, verifies and folds its contents into a checksum, and frees it.
 * Every free therefore happens on a different thread from the malloc, which
 * stresses the allocator's remote-free path.
 *
 * usage: prodcons [items] [ring_size]
 *   items      blocks to pass through the ring (default 4000000)
 *   ring_size  ring capacity, rounded up to a power of two (default 1024)
 *
 * Output: a "checksum=" line that depends only on the parameters
 * (the ring preserves order, so the consumer sees a fixed sequence).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() ((void)0)
#endif

struct ring {
    _Alignas(64) _Atomic size_t head; /* next slot to write (producer-owned) */
    _Alignas(64) _Atomic size_t tail; /* next slot to read (consumer-owned) */
    _Alignas(64) size_t mask;
    void **buf;
};

static struct ring ring;
static long n_items;

struct block_hdr {
    uint64_t seq;
    uint64_t size;
};

static void backoff(unsigned *spins)
{
    if (++*spins < 64) {
        cpu_relax();
    } else {
        /* The machine may have fewer cores than runnable threads. */
        sched_yield();
        *spins = 0;
    }
}

static void push(void *p)
{
    size_t head = atomic_load_explicit(&ring.head, memory_order_relaxed);
    unsigned spins = 0;
    while (head - atomic_load_explicit(&ring.tail, memory_order_acquire) > ring.mask)
        backoff(&spins);
    ring.buf[head & ring.mask] = p;
    atomic_store_explicit(&ring.head, head + 1, memory_order_release);
}

static void *pop(void)
{
    size_t tail = atomic_load_explicit(&ring.tail, memory_order_relaxed);
    unsigned spins = 0;
    while (atomic_load_explicit(&ring.head, memory_order_acquire) == tail)
        backoff(&spins);
    void *p = ring.buf[tail & ring.mask];
    atomic_store_explicit(&ring.tail, tail + 1, memory_order_release);
    return p;
}

static void *producer(void *arg)
{
    (void)arg;
    uint64_t x = 0x2545F4914F6CDD1DULL;
    for (long i = 0; i < n_items; i++) {
        /* xorshift64 */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t size = 64 + (size_t)(x % (512 - 64 + 1));
        unsigned char *p = malloc(size);
        if (!p) {
            fprintf(stderr, "malloc(%zu) failed\n", size);
            exit(1);
        }
        struct block_hdr h = { (uint64_t)i, (uint64_t)size };
        memcpy(p, &h, sizeof h);
        p[size - 1] = (unsigned char)i;
        push(p);
    }
    push(NULL);
    return NULL;
}

static void *consumer(void *arg)
{
    uint64_t sum = 0;
    long expect = 0;
    for (;;) {
        unsigned char *p = pop();
        if (!p)
            break;
        struct block_hdr h;
        memcpy(&h, p, sizeof h);
        if (h.seq != (uint64_t)expect || p[h.size - 1] != (unsigned char)h.seq) {
            fprintf(stderr, "corrupt block at item %ld\n", expect);
            exit(1);
        }
        sum = sum * 31 + h.size + p[h.size - 1];
        free(p);
        expect++;
    }
    *(uint64_t *)arg = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    n_items = argc > 1 ? atol(argv[1]) : 4000000;
    long rsz = argc > 2 ? atol(argv[2]) : 1024;
    if (n_items < 0 || rsz <= 0) {
        fprintf(stderr, "usage: %s [items] [ring_size]\n", argv[0]);
        return 2;
    }
    size_t cap = 1;
    while (cap < (size_t)rsz)
        cap <<= 1;
    ring.mask = cap - 1;
    ring.buf = calloc(cap, sizeof(void *));
    if (!ring.buf)
        return 1;

    uint64_t sum = 0;
    pthread_t tp, tc;
    if (pthread_create(&tc, NULL, consumer, &sum) != 0 ||
        pthread_create(&tp, NULL, producer, NULL) != 0) {
        fprintf(stderr, "pthread_create failed\n");
        return 1;
    }
    pthread_join(tp, NULL);
    pthread_join(tc, NULL);
    free(ring.buf);

    printf("prodcons items=%ld ring=%zu\n", n_items, cap);
    printf("checksum=%016llx\n", (unsigned long long)sum);
    return 0;
}
