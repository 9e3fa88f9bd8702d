/* fragment.c - fragmentation pattern: many small objects, most freed at
 * random, then large-ish allocations.
 *
 * Phase "fill":  allocate N mixed small objects (16..512 bytes, skewed small)
 *                and write to each of them.
 * Phase "holes": free ~90% of them, chosen at random, leaving survivors
 *                scattered over the whole heap.
 * Phase "large": allocate L blocks of LARGE bytes (default 64 KiB) and write
 *                every page of them.  An allocator that can reuse the holes
 *                left by phase 2 needs little new memory here; one that
 *                cannot grows its RSS by about L * LARGE.
 * Phase "freed": free everything.
 *
 * The resident set size (from /proc/self/statm) is printed after each phase
 * as "rss phase=<name> kib=<n>"; those lines depend on the allocator and are
 * informational.  The "checksum=" line depends only on the parameters.
 *
 * usage: fragment [n_small] [n_large] [large_bytes] [keep_per_mille]
 *   n_small         default 2000000
 *   n_large         default 2000
 *   large_bytes     default 65536
 *   keep_per_mille  survivors per 1000 small objects (default 100 = 10%)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rng_state = 0xf00dfaceULL;

static inline uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void print_rss(const char *phase)
{
    long pages_total = 0, pages_res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages_total, &pages_res) != 2)
            pages_res = -1;
        fclose(f);
    } else {
        pages_res = -1;
    }
    long kib = pages_res < 0 ? -1 : pages_res * (sysconf(_SC_PAGESIZE) / 1024);
    printf("rss phase=%s kib=%ld\n", phase, kib);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    long n_small = argc > 1 ? atol(argv[1]) : 2000000;
    long n_large = argc > 2 ? atol(argv[2]) : 2000;
    long large = argc > 3 ? atol(argv[3]) : 65536;
    long keep = argc > 4 ? atol(argv[4]) : 100;
    if (n_small <= 0 || n_large < 0 || large < 16 || keep < 0 || keep > 1000) {
        fprintf(stderr, "usage: %s [n_small] [n_large] [large_bytes>=16] [keep_per_mille]\n",
                argv[0]);
        return 2;
    }

    unsigned char **sp = malloc((size_t)n_small * sizeof *sp);
    uint16_t *ss = malloc((size_t)n_small * sizeof *ss);
    unsigned char **lp = malloc((size_t)(n_large ? n_large : 1) * sizeof *lp);
    if (!sp || !ss || !lp)
        return 1;
    print_rss("start");

    uint64_t sum = 0;
    for (long i = 0; i < n_small; i++) {
        uint64_t r = rng_next();
        size_t s = (r % 100) < 80 ? 16 + (size_t)((r >> 8) % 113)   /* 16..128 */
                                  : 128 + (size_t)((r >> 8) % 385); /* 128..512 */
        unsigned char *p = malloc(s);
        if (!p) {
            fprintf(stderr, "malloc(%zu) failed\n", s);
            return 1;
        }
        memset(p, (int)(i & 0xff), s < 64 ? s : 64);
        p[s - 1] = (unsigned char)s;
        sp[i] = p;
        ss[i] = (uint16_t)s;
    }
    print_rss("fill");

    long kept = 0;
    for (long i = 0; i < n_small; i++) {
        if ((long)(rng_next() % 1000) < keep) {
            kept++;
            continue;
        }
        unsigned char *p = sp[i];
        sum = sum * 31 + p[0] + p[ss[i] - 1];
        free(p);
        sp[i] = NULL;
    }
    print_rss("holes");

    for (long i = 0; i < n_large; i++) {
        unsigned char *p = malloc((size_t)large);
        if (!p) {
            fprintf(stderr, "malloc(%ld) failed\n", large);
            return 1;
        }
        for (long off = 0; off < large; off += 4096)
            p[off] = (unsigned char)(i + off / 4096);
        p[large - 1] = (unsigned char)i;
        lp[i] = p;
    }
    print_rss("large");

    for (long i = 0; i < n_large; i++) {
        sum = sum * 31 + lp[i][0] + lp[i][large - 1];
        free(lp[i]);
    }
    for (long i = 0; i < n_small; i++) {
        if (!sp[i])
            continue;
        sum = sum * 31 + sp[i][0] + sp[i][ss[i] - 1];
        free(sp[i]);
    }
    print_rss("freed");
    free(sp);
    free(ss);
    free(lp);

    printf("fragment n_small=%ld kept=%ld n_large=%ld large=%ld\n", n_small, kept, n_large,
           large);
    printf("checksum=%016llx\n", (unsigned long long)sum);
    return 0;
}
