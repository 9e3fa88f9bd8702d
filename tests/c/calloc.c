/* calloc: zeroed memory, also when it reuses freed dirty blocks; overflow. */
#include "check.h"

#define BATCH 64

static void check_zero(const void *p, size_t n, const char *what) {
    size_t bad = find_nonzero(p, n);
    CHECK(bad == SIZE_MAX, "%s: %zu-byte block %p has a non-zero byte at offset %zu", what, n, p,
          bad);
}

/* Dirty BATCH blocks of `size` bytes, free them, then calloc the same number of
 * blocks of nearby sizes, in both argument orders, and check they are zero. */
static void dirty_then_calloc(size_t size) {
    void *blocks[BATCH];
    size_t count = size <= 65536 ? BATCH : size <= (1 << 20) ? 8 : 2;
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < count; i++) {
            blocks[i] = malloc(opaque(size));
            CHECK(blocks[i] != NULL, "malloc(%zu) returned NULL", size);
            memset(blocks[i], 0xA5, malloc_usable_size(blocks[i]));
        }
        for (size_t i = 0; i < count; i++) free(blocks[i]);

        size_t n = size;
        if (round == 1 && n > 1) n = size - 1;
        if (round == 2) n = size + 1;
        for (size_t i = 0; i < count; i++) {
            if (i % 2 == 0)
                blocks[i] = calloc(opaque(1), opaque(n));
            else if (n % 8 == 0)
                blocks[i] = calloc(opaque(n / 8), opaque(8));
            else
                blocks[i] = calloc(opaque(n), opaque(1));
            CHECK(blocks[i] != NULL, "calloc for %zu bytes returned NULL", n);
            check_zero(blocks[i], n, "calloc after freeing dirty blocks");
            memset(blocks[i], 0x5A, n);
        }
        for (size_t i = 0; i < count; i++) free(blocks[i]);
    }
}

static void check_zeroing(void) {
    for (size_t n = 0; n <= 1024; n++) dirty_then_calloc(n);
    for (size_t n = 1024; n <= (1 << 20); n += n / 8 + 8) dirty_then_calloc(n);
    for (size_t n = 4096; n <= (1 << 20); n *= 2) {
        dirty_then_calloc(n);
        dirty_then_calloc(n + 1);
    }
    printf("calloc: zeroing of sizes 0..1 MiB ok\n");

    const size_t large[] = {(1 << 20) + 1, 3 << 19, 2 << 20, (4 << 20) + 7, (size_t)32 << 20};
    for (size_t i = 0; i < sizeof large / sizeof large[0]; i++) dirty_then_calloc(large[i]);

    /* A large calloc right after a large dirty free of a different size. */
    for (int i = 0; i < 8; i++) {
        size_t big = ((size_t)8 << 20) + (size_t)i * 12345;
        unsigned char *p = malloc(opaque(big));
        CHECK(p != NULL, "malloc(%zu) returned NULL", big);
        memset(p, 0xFF, big);
        free(p);
        size_t n = big - ((size_t)1 << 20) + (size_t)i * 4096;
        unsigned char *q = calloc(opaque(n), opaque(1));
        CHECK(q != NULL, "calloc(%zu, 1) returned NULL", n);
        check_zero(q, n, "large calloc after a large dirty free");
        free(q);
    }
    printf("calloc: zeroing of large sizes ok\n");
}

static void check_overflow(void) {
    const size_t cases[][2] = {
        {SIZE_MAX / 2 + 1, 2},
        {2, SIZE_MAX / 2 + 1},
        {SIZE_MAX, SIZE_MAX},
        {SIZE_MAX, 2},
        {(size_t)1 << 32, (size_t)1 << 32},
        {SIZE_MAX / 16 + 1, 16},
        {65537, (SIZE_MAX / 65537) + 1},
        {1, SIZE_MAX},
        {SIZE_MAX, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        errno = 0;
        void *p = calloc(opaque(cases[i][0]), opaque(cases[i][1]));
        CHECK(p == NULL, "calloc(%zu, %zu) returned %p, expected NULL", cases[i][0], cases[i][1],
              p);
        CHECK(errno == ENOMEM, "calloc(%zu, %zu): errno %d, expected ENOMEM", cases[i][0],
              cases[i][1], errno);
    }
    /* A zero factor is no overflow. */
    void *p = calloc(opaque(0), opaque(SIZE_MAX));
    CHECK(p != NULL, "calloc(0, SIZE_MAX) returned NULL");
    free(p);
    p = calloc(opaque(SIZE_MAX), opaque(0));
    CHECK(p != NULL, "calloc(SIZE_MAX, 0) returned NULL");
    free(p);
    /* The allocator still works. */
    p = calloc(opaque(100), opaque(100));
    CHECK(p != NULL, "calloc(100, 100) returned NULL after overflows");
    check_zero(p, 10000, "calloc after overflows");
    free(p);
    printf("calloc: overflow ok\n");
}

int main(void) {
    check_init("calloc");
    check_zeroing();
    check_overflow();
    printf("calloc: OK\n");
    return 0;
}
