/* batch.c - allocate a batch of same-sized objects, then free them all; repeat.
 *
 * Exercises the allocator's bulk paths: refilling a thread cache / size class
 * from the central structures, and returning a whole batch back.  Objects are
 * freed in allocation order (FIFO), which is the common "request finished,
 * drop everything" pattern.
 *
 * usage: batch [size] [rounds] [count]
 *   size    object size in bytes            (default 64)
 *   rounds  number of allocate/free rounds  (default 1500 for size <= 256,
 *           200 above: a 10 MB batch of 1 KiB blocks makes glibc trim every round)
 *   count   objects per batch               (default 10000)
 *
 * Output: a "checksum=" line that depends only on the parameters.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    long size = argc > 1 ? atol(argv[1]) : 64;
    long rounds = argc > 2 ? atol(argv[2]) : (size <= 256 ? 1500 : 200);
    long count = argc > 3 ? atol(argv[3]) : 10000;
    if (size < 8 || rounds < 0 || count <= 0) {
        fprintf(stderr, "usage: %s [size>=8] [rounds] [count]\n", argv[0]);
        return 2;
    }

    unsigned char **ptrs = malloc((size_t)count * sizeof *ptrs);
    if (!ptrs)
        return 1;

    uint64_t sum = 0;
    for (long r = 0; r < rounds; r++) {
        for (long i = 0; i < count; i++) {
            unsigned char *p = malloc((size_t)size);
            if (!p) {
                fprintf(stderr, "malloc(%ld) failed\n", size);
                return 1;
            }
            p[0] = (unsigned char)(i + r);
            p[size - 1] = (unsigned char)(i ^ r);
            ptrs[i] = p;
        }
        for (long i = 0; i < count; i++) {
            unsigned char *p = ptrs[i];
            sum = sum * 1099511628211ULL + p[0] + ((uint64_t)p[size - 1] << 8) + (uint64_t)size;
            free(p);
        }
    }
    free(ptrs);

    printf("batch size=%ld rounds=%ld count=%ld\n", size, rounds, count);
    printf("checksum=%016llx\n", (unsigned long long)sum);
    return 0;
}
