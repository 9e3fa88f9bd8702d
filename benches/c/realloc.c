/* realloc.c - grow many buffers by realloc in small steps.
 *
 * NBUF buffers are grown round-robin (so neighbours compete for the space
 * behind each buffer and in-place growth is not free) by +16..+256 bytes per
 * step until each reaches MAX bytes; the appended bytes are written, like a
 * string builder or a growing vector that appends.  After every realloc the
 * byte written last before the call is checked, so a realloc that loses data
 * is detected.  Then all buffers are freed; the whole cycle repeats ROUNDS
 * times.
 *
 * usage: realloc [rounds] [nbuf] [max_bytes]
 *   rounds     default 12
 *   nbuf       default 64
 *   max_bytes  default 65536
 *
 * Output: a "checksum=" line that depends only on the parameters.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x51ed2701ULL;

static inline uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 12;
    long nbuf = argc > 2 ? atol(argv[2]) : 64;
    long maxb = argc > 3 ? atol(argv[3]) : 65536;
    if (rounds < 0 || nbuf <= 0 || maxb < 16) {
        fprintf(stderr, "usage: %s [rounds] [nbuf] [max_bytes>=16]\n", argv[0]);
        return 2;
    }

    unsigned char **buf = calloc((size_t)nbuf, sizeof *buf);
    size_t *len = calloc((size_t)nbuf, sizeof *len);
    if (!buf || !len)
        return 1;

    uint64_t sum = 0;
    long reallocs = 0;
    for (long r = 0; r < rounds; r++) {
        for (long b = 0; b < nbuf; b++) {
            buf[b] = NULL;
            len[b] = 0;
        }
        long growing = nbuf;
        while (growing > 0) {
            growing = 0;
            for (long b = 0; b < nbuf; b++) {
                size_t old = len[b];
                if (old >= (size_t)maxb)
                    continue;
                size_t step = 16 + (size_t)(rng_next() % (256 - 16 + 1));
                size_t nl = old + step;
                if (nl > (size_t)maxb)
                    nl = (size_t)maxb;
                unsigned char *p = realloc(buf[b], nl);
                if (!p) {
                    fprintf(stderr, "realloc(%zu) failed\n", nl);
                    return 1;
                }
                reallocs++;
                if (old && p[old - 1] != (unsigned char)(old - 1 + b)) {
                    fprintf(stderr, "realloc lost data (buffer %ld, len %zu)\n", b, old);
                    return 1;
                }
                for (size_t i = old; i < nl; i++)
                    p[i] = (unsigned char)(i + b);
                buf[b] = p;
                len[b] = nl;
                if (nl < (size_t)maxb)
                    growing++;
            }
        }
        for (long b = 0; b < nbuf; b++) {
            size_t l = len[b];
            sum = sum * 31 + buf[b][0] + buf[b][l / 2] + buf[b][l - 1] + l;
            free(buf[b]);
        }
    }
    free(buf);
    free(len);

    printf("realloc rounds=%ld nbuf=%ld max=%ld reallocs=%ld\n", rounds, nbuf, maxb, reallocs);
    printf("checksum=%016llx\n", (unsigned long long)sum);
    return 0;
}
