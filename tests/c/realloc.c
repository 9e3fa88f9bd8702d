/* realloc and reallocarray. */
#include "check.h"

#define SEED 0xC0FFEEULL
#define MAX_SIZE ((size_t)64 << 20)

static size_t rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    CHECK(f != NULL, "cannot open /proc/self/statm");
    unsigned long size = 0, resident = 0;
    CHECK(fscanf(f, "%lu %lu", &size, &resident) == 2, "cannot parse /proc/self/statm");
    fclose(f);
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* Resize p from `have` to `want` bytes. The first min(have, want) bytes must
 * survive; the block is then filled up to `want` with the same pattern. */
static unsigned char *resize(unsigned char *p, size_t have, size_t want) {
    unsigned char *q = realloc(p, opaque(want));
    CHECK(q != NULL, "realloc(%p, %zu) returned NULL", (void *)p, want);
    size_t keep = have < want ? have : want;
    size_t bad = find_pattern_mismatch(q, keep, SEED);
    CHECK(bad == SIZE_MAX, "realloc from %zu to %zu bytes lost the contents at offset %zu", have,
          want, bad);
    CHECK(malloc_usable_size(q) >= want, "realloc to %zu: usable size %zu too small", want,
          malloc_usable_size(q));
    if (want > have) fill_pattern(q, want, SEED);
    return q;
}

static void check_growth_and_shrink(void) {
    unsigned char *p = malloc(opaque(1));
    CHECK(p != NULL, "malloc(1) returned NULL");
    fill_pattern(p, 1, SEED);
    size_t have = 1;

    /* One byte at a time up to 4 KiB. */
    for (size_t n = 2; n <= 4096; n++) {
        p = resize(p, have, n);
        have = n;
    }
    /* Doubling, with +1 and -1 steps around each power of two, up to 64 MiB. */
    for (size_t n = 8192; n <= MAX_SIZE; n *= 2) {
        p = resize(p, have, n - 1);
        p = resize(p, n - 1, n);
        p = resize(p, n, n + 1);
        p = resize(p, n + 1, n);
        have = n;
    }
    /* One byte at a time across 256 KiB. */
    for (size_t n = 256 * 1024 - 16; n <= 256 * 1024 + 16; n++) {
        p = resize(p, have, n);
        have = n;
    }
    p = resize(p, have, MAX_SIZE);
    have = MAX_SIZE;
    /* Shrink back by halves, then one byte at a time below 4 KiB. */
    for (size_t n = MAX_SIZE / 2; n >= 4096; n /= 2) {
        p = resize(p, have, n + 1);
        p = resize(p, n + 1, n);
        have = n;
    }
    for (size_t n = 4095; n >= 1; n--) {
        p = resize(p, have, n);
        have = n;
    }
    /* Same size. */
    p = resize(p, have, have);
    free(p);
    printf("realloc: growth 1 B -> 64 MiB and shrink back ok\n");
}

static void check_realloc_null(void) {
    const size_t sizes[] = {0, 1, 17, 4096, 300000, 5 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        unsigned char *p = realloc(NULL, opaque(n));
        CHECK(p != NULL, "realloc(NULL, %zu) returned NULL", n);
        CHECK(malloc_usable_size(p) >= n, "realloc(NULL, %zu): usable size too small", n);
        fill_pattern(p, n, n);
        CHECK_PATTERN(p, n, n, "realloc(NULL, n) block");
        free(p);
    }
    printf("realloc: realloc(NULL, n) ok\n");
}

/* glibc 2.36 (REALLOC_ZERO_BYTES_FREES): realloc(p, 0) with p != NULL frees p
 * and returns NULL, without setting errno. */
static void check_realloc_zero(void) {
    for (size_t n = 1; n <= (1 << 20); n *= 4) {
        unsigned char *p = malloc(opaque(n));
        CHECK(p != NULL, "malloc(%zu) returned NULL", n);
        memset(p, 0x77, n);
        errno = 0;
        void *q = realloc(p, opaque(0));
        CHECK(q == NULL, "realloc(p, 0) of a %zu-byte block returned %p; glibc frees p and "
              "returns NULL", n, q);
        CHECK(errno == 0, "realloc(p, 0) set errno to %d", errno);
    }
    /* The block is really freed: 20000 x 64 KiB (1.25 GiB) would be resident
     * if it were not. */
    size_t before = rss_bytes();
    for (int i = 0; i < 20000; i++) {
        unsigned char *p = malloc(opaque(64 * 1024));
        CHECK(p != NULL, "malloc(64 KiB) returned NULL");
        memset(p, 0x11, 64 * 1024);
        CHECK(realloc(p, opaque(0)) == NULL, "realloc(p, 0) returned non-NULL");
    }
    size_t after = rss_bytes();
    CHECK(after < before + ((size_t)256 << 20),
          "resident memory grew from %zu to %zu bytes over 20000 realloc(p, 0) of 64 KiB "
          "blocks: realloc(p, 0) does not free", before, after);
    printf("realloc: realloc(p, 0) frees and returns NULL\n");
}

static void check_reallocarray(void) {
    unsigned char *p = reallocarray(NULL, opaque(10), opaque(10));
    CHECK(p != NULL, "reallocarray(NULL, 10, 10) returned NULL");
    fill_pattern(p, 100, SEED);

    const size_t overflow[][2] = {
        {SIZE_MAX / 2 + 1, 2},
        {2, SIZE_MAX / 2 + 1},
        {SIZE_MAX, SIZE_MAX},
        {(size_t)1 << 32, (size_t)1 << 32},
        {SIZE_MAX / 3 + 1, 3},
    };
    for (size_t i = 0; i < sizeof overflow / sizeof overflow[0]; i++) {
        errno = 0;
        void *q = reallocarray(p, opaque(overflow[i][0]), opaque(overflow[i][1]));
        CHECK(q == NULL, "reallocarray(p, %zu, %zu) did not fail on overflow", overflow[i][0],
              overflow[i][1]);
        CHECK(errno == ENOMEM, "reallocarray(p, %zu, %zu): errno %d, expected ENOMEM",
              overflow[i][0], overflow[i][1], errno);
        CHECK_PATTERN(p, 100, SEED, "block after a failed reallocarray");
    }
    /* The block is still live and usable. */
    unsigned char *q = reallocarray(p, opaque(1000), opaque(16));
    CHECK(q != NULL, "reallocarray(p, 1000, 16) returned NULL");
    CHECK_PATTERN(q, 100, SEED, "block grown by reallocarray");
    fill_pattern(q, 16000, SEED);
    p = reallocarray(q, opaque(3), opaque(11));
    CHECK(p != NULL, "reallocarray(p, 3, 11) returned NULL");
    CHECK_PATTERN(p, 33, SEED, "block shrunk by reallocarray");
    free(p);
    printf("realloc: reallocarray ok\n");
}

static void check_failed_realloc_keeps_block(void) {
    unsigned char *p = malloc(opaque(1000));
    CHECK(p != NULL, "malloc(1000) returned NULL");
    fill_pattern(p, 1000, SEED);
    errno = 0;
    void *q = realloc(p, opaque(SIZE_MAX - 64));
    CHECK(q == NULL, "realloc(p, SIZE_MAX - 64) did not fail");
    CHECK(errno == ENOMEM, "realloc(p, SIZE_MAX - 64): errno %d, expected ENOMEM", errno);
    CHECK_PATTERN(p, 1000, SEED, "block after a failed realloc");
    free(p);
}

int main(void) {
    check_init("realloc");
    check_growth_and_shrink();
    check_realloc_null();
    check_realloc_zero();
    check_reallocarray();
    check_failed_realloc_keeps_block();
    printf("realloc: OK\n");
    return 0;
}
