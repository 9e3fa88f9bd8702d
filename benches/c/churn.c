/* churn.c - single-threaded steady-state churn.
 *
 * Keeps a live working set of SLOTS blocks and repeatedly replaces a random
 * slot with a freshly allocated block of random size.  Before a block is
 * freed, its first bytes are read back and folded into the checksum, so the
 * allocator must hand out distinct, writable memory and the compiler cannot
 * drop the work.
 *
 * usage: churn [small|medium|mixed] [iterations] [slots]
 *   iterations  slot replacements (default 3000000; 1500000 for medium)
 *   slots       live working-set size (default 20000)
 *   small   16..256 bytes, uniform
 *   medium  256..4096 bytes, uniform
 *   mixed   16..32768 bytes, skewed small (most blocks < 512 bytes)
 *
 * Output: a "checksum=" line that depends only on the parameters.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state;

static inline uint64_t rng_next(void)
{
    /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

enum mode { SMALL, MEDIUM, MIXED };

static size_t pick_size(enum mode m)
{
    uint64_t r = rng_next();
    switch (m) {
    case SMALL:
        return 16 + (size_t)(r % (256 - 16 + 1));
    case MEDIUM:
        return 256 + (size_t)(r % (4096 - 256 + 1));
    default: {
        /* Skewed: 70% in 16..256, 20% in 256..2048, 8% in 2K..8K, 2% in 8K..32K. */
        uint32_t bucket = (uint32_t)(r % 100);
        uint64_t r2 = r >> 8;
        if (bucket < 70)
            return 16 + (size_t)(r2 % (256 - 16 + 1));
        if (bucket < 90)
            return 256 + (size_t)(r2 % (2048 - 256 + 1));
        if (bucket < 98)
            return 2048 + (size_t)(r2 % (8192 - 2048 + 1));
        return 8192 + (size_t)(r2 % (32768 - 8192 + 1));
    }
    }
}

struct slot {
    unsigned char *p;
    size_t size;
};

static inline void fill(unsigned char *p, size_t size, uint64_t tag)
{
    size_t n = size < 32 ? size : 32;
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(tag + i);
    p[size - 1] = (unsigned char)(tag ^ 0x5a);
}

static inline uint64_t consume(const unsigned char *p, size_t size)
{
    return (uint64_t)p[0] + ((uint64_t)p[size < 32 ? size - 1 : 31] << 8) +
           ((uint64_t)p[size - 1] << 16) + size;
}

int main(int argc, char **argv)
{
    enum mode m = SMALL;
    const char *mode_name = argc > 1 ? argv[1] : "small";
    if (strcmp(mode_name, "small") == 0)
        m = SMALL;
    else if (strcmp(mode_name, "medium") == 0)
        m = MEDIUM;
    else if (strcmp(mode_name, "mixed") == 0)
        m = MIXED;
    else {
        fprintf(stderr, "usage: %s [small|medium|mixed] [iterations] [slots]\n", argv[0]);
        return 2;
    }
    /* medium blocks touch more memory per operation: fewer default iterations */
    long iters = argc > 2 ? atol(argv[2]) : (m == MEDIUM ? 1500000 : 3000000);
    long nslots = argc > 3 ? atol(argv[3]) : 20000;
    if (iters < 0 || nslots <= 0) {
        fprintf(stderr, "bad parameters\n");
        return 2;
    }

    rng_state = 0x1234567ULL + (uint64_t)m;
    struct slot *slots = calloc((size_t)nslots, sizeof *slots);
    if (!slots)
        return 1;

    uint64_t sum = 0;
    for (long i = 0; i < nslots; i++) {
        size_t s = pick_size(m);
        unsigned char *p = malloc(s);
        if (!p) {
            fprintf(stderr, "malloc(%zu) failed\n", s);
            return 1;
        }
        fill(p, s, (uint64_t)i);
        slots[i].p = p;
        slots[i].size = s;
    }

    for (long it = 0; it < iters; it++) {
        uint64_t r = rng_next();
        size_t idx = (size_t)(r % (uint64_t)nslots);
        struct slot *sl = &slots[idx];
        sum = sum * 31 + consume(sl->p, sl->size);
        free(sl->p);
        size_t s = pick_size(m);
        unsigned char *p = malloc(s);
        if (!p) {
            fprintf(stderr, "malloc(%zu) failed\n", s);
            return 1;
        }
        fill(p, s, (uint64_t)it);
        sl->p = p;
        sl->size = s;
    }

    for (long i = 0; i < nslots; i++) {
        sum = sum * 31 + consume(slots[i].p, slots[i].size);
        free(slots[i].p);
    }
    free(slots);

    printf("churn mode=%s iters=%ld slots=%ld\n", mode_name, iters, nslots);
    printf("checksum=%016llx\n", (unsigned long long)sum);
    return 0;
}
