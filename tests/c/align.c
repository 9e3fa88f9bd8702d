/* Aligned allocation: memalign, posix_memalign, aligned_alloc, valloc, pvalloc. */
#include "check.h"

#include <stdbool.h>

enum api { MEMALIGN, POSIX_MEMALIGN, ALIGNED_ALLOC };
static const char *api_name[] = {"memalign", "posix_memalign", "aligned_alloc"};

static void *aligned(enum api api, size_t align, size_t size) {
    void *p = NULL;
    switch (api) {
    case MEMALIGN:
        p = memalign(opaque(align), opaque(size));
        break;
    case POSIX_MEMALIGN: {
        int rc = posix_memalign(&p, opaque(align), opaque(size));
        CHECK(rc == 0, "posix_memalign(%zu, %zu) returned %d", align, size, rc);
        break;
    }
    case ALIGNED_ALLOC:
        p = aligned_alloc(opaque(align), opaque(size));
        break;
    }
    CHECK(p != NULL, "%s(%zu, %zu) returned NULL", api_name[api], align, size);
    return p;
}

static bool is_aligned(const void *p, size_t align) { return ((uintptr_t)p & (align - 1)) == 0; }

#define NSIZES 5
#define MAX_ALIGN_CASES 16

static void check_alignments(void) {
    size_t aligns[MAX_ALIGN_CASES];
    size_t naligns = 0;
    for (size_t a = 8; a <= 64 * 1024; a *= 2) aligns[naligns++] = a;
    aligns[naligns++] = 2 * 1024 * 1024;

    for (size_t ai = 0; ai < naligns; ai++) {
        size_t a = aligns[ai];
        size_t sizes[NSIZES] = {1, a - 1, a, a + 1, 3 * a};
        for (int api = MEMALIGN; api <= ALIGNED_ALLOC; api++) {
            /* Keep all blocks of one (alignment, api) pair live at once, so
             * that the allocator cannot hand back the same block each time. */
            void *live[NSIZES][3];
            for (int si = 0; si < NSIZES; si++) {
                size_t n = sizes[si];
                for (int rep = 0; rep < 3; rep++) {
                    void *p = aligned((enum api)api, a, n);
                    CHECK(is_aligned(p, a), "%s(%zu, %zu) = %p is not aligned", api_name[api], a,
                          n, p);
                    size_t usable = malloc_usable_size(p);
                    CHECK(usable >= n, "%s(%zu, %zu): malloc_usable_size = %zu < size",
                          api_name[api], a, n, usable);
                    fill_pattern(p, n, (uint64_t)(uintptr_t)p);
                    live[si][rep] = p;
                }
            }
            for (int si = 0; si < NSIZES; si++)
                for (int rep = 0; rep < 3; rep++) {
                    void *p = live[si][rep];
                    CHECK_PATTERN(p, sizes[si], (uint64_t)(uintptr_t)p, api_name[api]);
                    free(p);
                }
        }
    }

    /* A realloc of an aligned block keeps its contents. */
    for (size_t a = 64; a <= 64 * 1024; a *= 16) {
        void *p = aligned(MEMALIGN, a, 100);
        fill_pattern(p, 100, 7);
        void *q = realloc(p, opaque(a * 5));
        CHECK(q != NULL, "realloc of a memalign(%zu) block returned NULL", a);
        CHECK_PATTERN(q, 100, 7, "realloc of an aligned block");
        free(q);
    }
    printf("align: power-of-two alignments 8..64 KiB and 2 MiB ok\n");
}

/* Alignments below sizeof(void*) are valid for memalign: glibc rounds them up
 * to its minimum alignment. */
static void check_small_memalign(void) {
    for (size_t a = 1; a < sizeof(void *); a *= 2) {
        void *p = memalign(opaque(a), opaque(24));
        CHECK(p != NULL, "memalign(%zu, 24) returned NULL", a);
        memset(p, 0x5a, 24);
        free(p);
    }
}

static void check_posix_memalign_errors(void) {
    const size_t bad[] = {0, 1, 2, 4, sizeof(void *) / 2, 3 * sizeof(void *), 12, 24, 48, 100,
                          4096 + 8, SIZE_MAX, ((size_t)1 << 63) + 8};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        void *sentinel = (void *)(uintptr_t)0x5eed;
        void *out = sentinel;
        int rc = posix_memalign(&out, opaque(bad[i]), opaque(64));
        CHECK(rc == EINVAL, "posix_memalign(align=%zu) returned %d, expected EINVAL", bad[i], rc);
        CHECK(out == sentinel, "posix_memalign(align=%zu) failed but changed the out-pointer",
              bad[i]);
    }
    /* Out of memory: ENOMEM, out-pointer untouched. */
    void *sentinel = (void *)(uintptr_t)0x5eed;
    void *out = sentinel;
    int rc = posix_memalign(&out, opaque(64), opaque(SIZE_MAX - 100));
    CHECK(rc == ENOMEM, "posix_memalign(64, SIZE_MAX-100) returned %d, expected ENOMEM", rc);
    CHECK(out == sentinel, "posix_memalign failed with ENOMEM but changed the out-pointer");

    /* Size 0 succeeds, and the result can be freed. */
    out = sentinel;
    rc = posix_memalign(&out, opaque(64), opaque(0));
    CHECK(rc == 0, "posix_memalign(64, 0) returned %d", rc);
    CHECK(out != sentinel, "posix_memalign(64, 0) succeeded but did not set the out-pointer");
    CHECK(is_aligned(out, 64), "posix_memalign(64, 0) = %p is not aligned", out);
    free(out);
    printf("align: posix_memalign errors ok\n");
}

/* aligned_alloc with an alignment that is not a power of two (or is 0).
 *
 * glibc 2.36 (this machine) does not reject these: aligned_alloc is memalign
 * there, which treats an alignment below its minimum (0 included) as the
 * minimum and rounds any other non-power-of-two alignment up to the next power
 * of two, returning a usable block. C17 (DR 460) and glibc >= 2.38 instead fail
 * with NULL and errno EINVAL, as jemalloc does. Both are accepted here: either
 * NULL with EINVAL, or a usable block aligned to the rounded-up alignment. */
static void check_aligned_alloc_bad_alignment(void) {
    const size_t bad[] = {0, 3, 24, 48, 100, 4096 + 8};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t a = bad[i];
        errno = 0;
        void *p = aligned_alloc(opaque(a), opaque(64));
        if (p == NULL) {
            CHECK(errno == EINVAL, "aligned_alloc(%zu, 64) returned NULL with errno %d, "
                  "expected EINVAL", a, errno);
            continue;
        }
        size_t rounded = 1;
        while (rounded < a) rounded *= 2;
        CHECK(is_aligned(p, rounded), "aligned_alloc(%zu, 64) = %p is not aligned to %zu", a, p,
              rounded);
        CHECK(malloc_usable_size(p) >= 64, "aligned_alloc(%zu, 64): usable size too small", a);
        memset(p, 0x33, 64);
        free(p);
    }
    printf("align: aligned_alloc with invalid alignments ok\n");
}

static void check_valloc_pvalloc(void) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t sizes[] = {1, 100, page - 1, page, page + 1, 3 * page + 1, 100000, 1 << 20};
    void *live[2][sizeof sizes / sizeof sizes[0]];
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        void *p = valloc(opaque(n));
        CHECK(p != NULL, "valloc(%zu) returned NULL", n);
        CHECK(is_aligned(p, page), "valloc(%zu) = %p is not page aligned", n, p);
        CHECK(malloc_usable_size(p) >= n, "valloc(%zu): usable size %zu too small", n,
              malloc_usable_size(p));
        fill_pattern(p, n, n);
        live[0][i] = p;

        size_t rounded = (n + page - 1) / page * page;
        void *q = pvalloc(opaque(n));
        CHECK(q != NULL, "pvalloc(%zu) returned NULL", n);
        CHECK(is_aligned(q, page), "pvalloc(%zu) = %p is not page aligned", n, q);
        CHECK(malloc_usable_size(q) >= rounded,
              "pvalloc(%zu): usable size %zu is less than the size rounded up to a page (%zu)", n,
              malloc_usable_size(q), rounded);
        /* The whole rounded size belongs to the caller. */
        fill_pattern(q, rounded, ~(uint64_t)n);
        live[1][i] = q;
    }
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        size_t rounded = (n + page - 1) / page * page;
        CHECK_PATTERN(live[0][i], n, n, "valloc");
        CHECK_PATTERN(live[1][i], rounded, ~(uint64_t)n, "pvalloc");
        free(live[0][i]);
        free(live[1][i]);
    }
    /* Size 0: a page-aligned block that can be freed. */
    void *p = valloc(opaque(0));
    CHECK(p != NULL && is_aligned(p, page), "valloc(0) = %p", p);
    free(p);
    p = pvalloc(opaque(0));
    CHECK(p != NULL && is_aligned(p, page), "pvalloc(0) = %p", p);
    free(p);
    printf("align: valloc/pvalloc ok\n");
}

int main(void) {
    check_init("align");
    check_alignments();
    check_small_memalign();
    check_posix_memalign_errors();
    check_aligned_alloc_bad_alignment();
    check_valloc_pvalloc();
    printf("align: OK\n");
    return 0;
}
