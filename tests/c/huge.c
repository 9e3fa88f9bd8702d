/* Impossible sizes fail with NULL and ENOMEM; the process goes on; 1 GiB works. */
#include "check.h"

#include <sys/mman.h>

static void after_failure_still_works(const char *what) {
    void *p = malloc(opaque(100));
    CHECK(p != NULL, "malloc(100) failed after %s", what);
    memset(p, 0x42, 100);
    void *q = malloc(opaque(200000));
    CHECK(q != NULL, "malloc(200000) failed after %s", what);
    memset(q, 0x43, 200000);
    free(p);
    free(q);
}

#define EXPECT_ENOMEM(call, desc)                                              \
    do {                                                                       \
        errno = 0;                                                             \
        void *r_ = (call);                                                     \
        CHECK(r_ == NULL, "%s returned %p, expected NULL", (desc), r_);        \
        CHECK(errno == ENOMEM, "%s: errno %d, expected ENOMEM (%d)", (desc), errno, ENOMEM); \
        after_failure_still_works(desc);                                       \
    } while (0)

static void check_impossible(void) {
    const size_t sizes[] = {
        SIZE_MAX,
        SIZE_MAX - 1,
        SIZE_MAX - 15,
        SIZE_MAX - 4096,
        SIZE_MAX - 8192 - 1,
        SIZE_MAX - ((size_t)1 << 20),
        SIZE_MAX / 2 + 1,
        (size_t)1 << 62,
    };
    char desc[128];
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        snprintf(desc, sizeof desc, "malloc(%zu)", n);
        EXPECT_ENOMEM(malloc(opaque(n)), desc);
        snprintf(desc, sizeof desc, "calloc(1, %zu)", n);
        EXPECT_ENOMEM(calloc(opaque(1), opaque(n)), desc);
        snprintf(desc, sizeof desc, "realloc(NULL, %zu)", n);
        EXPECT_ENOMEM(realloc(NULL, opaque(n)), desc);
        snprintf(desc, sizeof desc, "memalign(4096, %zu)", n);
        EXPECT_ENOMEM(memalign(opaque(4096), opaque(n)), desc);
        snprintf(desc, sizeof desc, "memalign(2 MiB, %zu)", n);
        EXPECT_ENOMEM(memalign(opaque(2 << 20), opaque(n)), desc);
        snprintf(desc, sizeof desc, "aligned_alloc(64, %zu)", n);
        EXPECT_ENOMEM(aligned_alloc(opaque(64), opaque(n)), desc);
        snprintf(desc, sizeof desc, "valloc(%zu)", n);
        EXPECT_ENOMEM(valloc(opaque(n)), desc);
        snprintf(desc, sizeof desc, "pvalloc(%zu)", n);
        EXPECT_ENOMEM(pvalloc(opaque(n)), desc);

        void *sentinel = (void *)(uintptr_t)0x5eed, *out = sentinel;
        int rc = posix_memalign(&out, opaque(4096), opaque(n));
        CHECK(rc == ENOMEM, "posix_memalign(4096, %zu) returned %d, expected ENOMEM", n, rc);
        CHECK(out == sentinel, "posix_memalign(4096, %zu) failed but changed the out-pointer", n);

        for (size_t start = 1; start <= ((size_t)4 << 20); start *= 64) {
            unsigned char *p = malloc(opaque(start));
            CHECK(p != NULL, "malloc(%zu) returned NULL", start);
            fill_pattern(p, start, start);
            snprintf(desc, sizeof desc, "realloc(%zu-byte block, %zu)", start, n);
            EXPECT_ENOMEM(realloc(p, opaque(n)), desc);
            CHECK_PATTERN(p, start, start, "block after a failed realloc");
            free(p);
        }
    }
    /* Huge alignments. glibc answers EINVAL only for an alignment above
     * SIZE_MAX/2+1; 2^62 and 2^63 are valid alignments that cannot be
     * satisfied, hence ENOMEM. */
    EXPECT_ENOMEM(memalign(opaque((size_t)1 << 62), opaque(1)), "memalign(1<<62, 1)");
    EXPECT_ENOMEM(memalign(opaque((size_t)1 << 63), opaque(1)), "memalign(1<<63, 1)");
    EXPECT_ENOMEM(memalign(opaque((size_t)1 << 40), opaque(SIZE_MAX - ((size_t)1 << 40))),
                  "memalign(1<<40, SIZE_MAX - (1<<40))");
    printf("huge: impossible sizes fail with ENOMEM\n");
}

static void check_one_gib(void) {
    size_t gib = (size_t)1 << 30;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    unsigned char *p = malloc(opaque(gib));
    CHECK(p != NULL, "malloc(1 GiB) returned NULL");
    CHECK(malloc_usable_size(p) >= gib, "malloc(1 GiB): usable size %zu", malloc_usable_size(p));
    for (size_t off = 0; off < gib; off += page) p[off] = (unsigned char)(off / page);
    p[gib - 1] = 0xEE;
    for (size_t off = 0; off < gib; off += page)
        CHECK(p[off] == (unsigned char)(off / page), "1 GiB block: byte at %zu changed", off);
    CHECK(p[gib - 1] == 0xEE, "1 GiB block: last byte changed");
    free(p);

    unsigned char *z = calloc(opaque(gib), opaque(1));
    CHECK(z != NULL, "calloc(1 GiB) returned NULL");
    for (size_t off = 0; off < gib; off += page)
        CHECK(z[off] == 0 && z[off + page - 1] == 0, "calloc(1 GiB): non-zero byte in page at %zu",
              off);
    free(z);
    after_failure_still_works("1 GiB allocations");
    printf("huge: 1 GiB malloc and calloc ok\n");
}

int main(void) {
    check_init("huge");
    check_impossible();
    check_one_gib();
    printf("huge: OK\n");
    return 0;
}
