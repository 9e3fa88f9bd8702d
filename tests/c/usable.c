/* malloc_usable_size: at least the requested size, 0 for NULL, and the whole
 * usable size may be written without touching neighbouring blocks. */
#include "check.h"

#define MAX_SIZE 100000
#define MAX_LIVE 64

static size_t live_count(size_t n) {
    if (n <= 1024) return MAX_LIVE;
    if (n <= 16384) return 32;
    return 8;
}

/* Allocate several blocks of size n interleaved with blocks of size n/2+1, so
 * that blocks of one size sit next to each other and next to other sizes.
 * Fill each block's whole usable size with its own pattern, then check all. */
static void check_size(size_t n) {
    void *blocks[2 * MAX_LIVE];
    size_t usable[2 * MAX_LIVE];
    size_t count = live_count(n);
    for (size_t i = 0; i < 2 * count; i++) {
        size_t want = i % 2 == 0 ? n : n / 2 + 1;
        blocks[i] = malloc(opaque(want));
        CHECK(blocks[i] != NULL, "malloc(%zu) returned NULL", want);
        usable[i] = malloc_usable_size(blocks[i]);
        CHECK(usable[i] >= want, "malloc_usable_size(malloc(%zu)) = %zu", want, usable[i]);
        fill_pattern(blocks[i], usable[i], (uint64_t)(uintptr_t)blocks[i] ^ n);
    }
    for (size_t i = 0; i < 2 * count; i++)
        CHECK_PATTERN(blocks[i], usable[i], (uint64_t)(uintptr_t)blocks[i] ^ n,
                      "block written up to its usable size (or a neighbour of one)");
    /* Free every other block, write the survivors' usable size again, and
     * allocate into the holes, then check again. */
    for (size_t i = 0; i < 2 * count; i += 2) free(blocks[i]);
    for (size_t i = 0; i < 2 * count; i += 2) {
        blocks[i] = malloc(opaque(n));
        CHECK(blocks[i] != NULL, "malloc(%zu) returned NULL", n);
        usable[i] = malloc_usable_size(blocks[i]);
        CHECK(usable[i] >= n, "malloc_usable_size(malloc(%zu)) = %zu", n, usable[i]);
        fill_pattern(blocks[i], usable[i], (uint64_t)(uintptr_t)blocks[i] ^ n);
    }
    for (size_t i = 0; i < 2 * count; i++) {
        CHECK_PATTERN(blocks[i], usable[i], (uint64_t)(uintptr_t)blocks[i] ^ n,
                      "block written up to its usable size (or a neighbour of one)");
        free(blocks[i]);
    }
}

int main(void) {
    check_init("usable");

    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) = %zu",
          malloc_usable_size(NULL));

    size_t tested = 0;
    for (size_t n = 0; n <= 1024; n++, tested++) check_size(n);
    for (size_t n = 1025; n <= MAX_SIZE; n += 1 + n / 64, tested++) check_size(n);
    for (size_t p = 2048; p <= MAX_SIZE; p *= 2) {
        check_size(p - 1);
        check_size(p);
        check_size(p + 1);
        tested += 3;
    }
    check_size(MAX_SIZE);
    printf("usable: %zu sizes in 0..%d ok\n", tested + 1, MAX_SIZE);

    /* Other entry points report a usable size that covers the request too. */
    for (size_t n = 1; n <= MAX_SIZE; n = n * 3 + 1) {
        void *c = calloc(opaque(1), opaque(n));
        void *m = memalign(opaque(64), opaque(n));
        void *r = realloc(NULL, opaque(n));
        CHECK(c && m && r, "allocation of %zu bytes failed", n);
        CHECK(malloc_usable_size(c) >= n, "calloc: usable size too small for %zu", n);
        CHECK(malloc_usable_size(m) >= n, "memalign: usable size too small for %zu", n);
        CHECK(malloc_usable_size(r) >= n, "realloc: usable size too small for %zu", n);
        r = realloc(r, opaque(n * 2));
        CHECK(r != NULL && malloc_usable_size(r) >= n * 2, "realloc grow: usable size too small");
        memset(c, 1, malloc_usable_size(c));
        memset(m, 2, malloc_usable_size(m));
        memset(r, 3, malloc_usable_size(r));
        free(c);
        free(m);
        free(r);
    }
    printf("usable: OK\n");
    return 0;
}
