/* The rest of the malloc API: free(NULL), cfree, free_sized, free_aligned_sized,
 * malloc_trim, mallopt, mallinfo, mallinfo2, malloc_stats, and the __libc_*
 * entry points.
 *
 * cfree, free_sized and free_aligned_sized are not declared by glibc 2.36's
 * headers (cfree is only a compat symbol there, and the C23 functions are
 * newer), so they are looked up with dlsym(RTLD_DEFAULT, ...) and skipped with
 * a note when absent. With OXMALLOC_TEST_STRICT=1 they must be present and the
 * __libc_* entry points must come from the same object as malloc.
 */
#include "check.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static int strict;

static void *lookup(const char *name) {
    void *sym = dlsym(RTLD_DEFAULT, name);
    if (sym == NULL) {
        CHECK(!strict, "%s is not exported", name);
        printf("misc: note: %s is not available, skipped\n", name);
    }
    return sym;
}

static const void *object_of(const void *addr) {
    Dl_info info;
    if (dladdr(addr, &info) == 0) return NULL;
    return info.dli_fbase;
}

static void check_free_variants(void) {
    free(NULL);

    void (*cfree_fn)(void *) = (void (*)(void *))lookup("cfree");
    if (cfree_fn != NULL) {
        cfree_fn(NULL);
        for (size_t n = 1; n <= (1 << 20); n *= 8) {
            void *p = malloc(opaque(n));
            CHECK(p != NULL, "malloc(%zu) returned NULL", n);
            memset(p, 1, n);
            cfree_fn(p);
        }
        printf("misc: cfree ok\n");
    }

    void (*free_sized_fn)(void *, size_t) = (void (*)(void *, size_t))lookup("free_sized");
    if (free_sized_fn != NULL) {
        free_sized_fn(NULL, 0);
        for (int round = 0; round < 2; round++) {
            for (size_t n = 1; n <= (4 << 20); n = n * 3 + 1) {
                void *p = round == 0 ? malloc(opaque(n)) : calloc(opaque(n), opaque(1));
                CHECK(p != NULL, "allocation of %zu bytes returned NULL", n);
                memset(p, 2, n);
                free_sized_fn(p, n);
            }
        }
        printf("misc: free_sized ok\n");
    }

    void (*free_aligned_sized_fn)(void *, size_t, size_t) =
        (void (*)(void *, size_t, size_t))lookup("free_aligned_sized");
    if (free_aligned_sized_fn != NULL) {
        free_aligned_sized_fn(NULL, 64, 0);
        for (size_t a = 8; a <= 65536; a *= 4) {
            for (size_t n = a; n <= 8 * a; n += a) {
                void *p = aligned_alloc(opaque(a), opaque(n));
                CHECK(p != NULL, "aligned_alloc(%zu, %zu) returned NULL", a, n);
                CHECK(((uintptr_t)p & (a - 1)) == 0, "aligned_alloc(%zu, %zu) misaligned", a, n);
                memset(p, 3, n);
                free_aligned_sized_fn(p, a, n);
            }
        }
        printf("misc: free_aligned_sized ok\n");
    }
}

static void check_control(void) {
    int trimmed = malloc_trim(0);
    CHECK(trimmed == 0 || trimmed == 1, "malloc_trim(0) returned %d", trimmed);
    void *p = malloc(opaque(10 << 20));
    CHECK(p != NULL, "malloc(10 MiB) returned NULL");
    memset(p, 1, 10 << 20);
    free(p);
    trimmed = malloc_trim(opaque(128 * 1024));
    CHECK(trimmed == 0 || trimmed == 1, "malloc_trim(128 KiB) returned %d", trimmed);
    printf("misc: malloc_trim ok\n");

    int rc = mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    CHECK(rc == 0 || rc == 1, "mallopt(M_MMAP_THRESHOLD) returned %d", rc);
    rc = mallopt(M_ARENA_MAX, 4);
    CHECK(rc == 0 || rc == 1, "mallopt(M_ARENA_MAX) returned %d", rc);
    rc = mallopt(12345, 1);
    CHECK(rc == 0 || rc == 1, "mallopt(unknown) returned %d", rc);
    p = malloc(opaque(1000));
    CHECK(p != NULL, "malloc after mallopt returned NULL");
    free(p);
    printf("misc: mallopt ok\n");

    p = malloc(opaque(100000));
    CHECK(p != NULL, "malloc(100000) returned NULL");
    struct mallinfo2 mi2 = mallinfo2();
    printf("misc: mallinfo2: arena=%zu ordblks=%zu hblks=%zu hblkhd=%zu uordblks=%zu "
           "fordblks=%zu keepcost=%zu\n",
           mi2.arena, mi2.ordblks, mi2.hblks, mi2.hblkhd, mi2.uordblks, mi2.fordblks,
           mi2.keepcost);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    struct mallinfo mi = mallinfo();
#pragma GCC diagnostic pop
    printf("misc: mallinfo: arena=%d uordblks=%d fordblks=%d\n", mi.arena, mi.uordblks,
           mi.fordblks);
    free(p);
}

/* malloc_stats writes to stderr: capture fd 2 in a temporary file. */
static void check_malloc_stats(void) {
    char path[] = "/tmp/oxmalloc-malloc-stats-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp failed: %s", strerror(errno));
    unlink(path);
    fflush(stderr);
    int saved = dup(2);
    CHECK(saved >= 0, "dup(2) failed");
    CHECK(dup2(fd, 2) == 2, "dup2 failed");
    malloc_stats();
    fflush(stderr);
    CHECK(dup2(saved, 2) == 2, "dup2 back failed");
    close(saved);

    struct stat st;
    CHECK(fstat(fd, &st) == 0, "fstat failed");
    CHECK(st.st_size > 0, "malloc_stats() wrote nothing to stderr");
    char buf[4096];
    ssize_t got = pread(fd, buf, sizeof buf - 1, 0);
    CHECK(got > 0, "cannot read the malloc_stats output back");
    buf[got] = '\0';
    close(fd);
    fprintf(stderr, "%s", buf);
    printf("misc: malloc_stats wrote %lld bytes to stderr\n", (long long)st.st_size);
}

static void check_libc_entry_points(void) {
    /* Each family on its own. */
    unsigned char *p = __libc_malloc(opaque(1000));
    CHECK(p != NULL, "__libc_malloc(1000) returned NULL");
    fill_pattern(p, 1000, 1);
    p = __libc_realloc(p, opaque(100000));
    CHECK(p != NULL, "__libc_realloc(p, 100000) returned NULL");
    CHECK_PATTERN(p, 1000, 1, "__libc_realloc");
    __libc_free(p);
    unsigned char *z = __libc_calloc(opaque(1000), opaque(10));
    CHECK(z != NULL, "__libc_calloc returned NULL");
    CHECK(find_nonzero(z, 10000) == SIZE_MAX, "__libc_calloc memory is not zero");
    __libc_free(z);
    void *a = __libc_memalign(opaque(4096), opaque(100));
    CHECK(a != NULL, "__libc_memalign returned NULL");
    CHECK(((uintptr_t)a & 4095) == 0, "__libc_memalign(4096) = %p misaligned", a);
    __libc_free(a);
    __libc_free(NULL);
    p = __libc_realloc(NULL, opaque(10));
    CHECK(p != NULL, "__libc_realloc(NULL, 10) returned NULL");
    __libc_free(p);

    /* Mixed with malloc/free, when both come from the same allocator. */
    const void *malloc_obj = object_of(dlsym(RTLD_DEFAULT, "malloc"));
    const char *names[] = {"__libc_malloc", "__libc_free", "__libc_calloc", "__libc_realloc",
                           "__libc_memalign"};
    int same = 1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (object_of(dlsym(RTLD_DEFAULT, names[i])) != malloc_obj) {
            same = 0;
            CHECK(!strict, "%s does not come from the same object as malloc", names[i]);
            printf("misc: note: %s is not served by the malloc provider; mixing skipped\n",
                   names[i]);
        }
    }
    if (same) {
        p = __libc_malloc(opaque(500));
        CHECK(p != NULL, "__libc_malloc returned NULL");
        fill_pattern(p, 500, 2);
        p = realloc(p, opaque(5000));
        CHECK(p != NULL, "realloc of a __libc_malloc block returned NULL");
        CHECK_PATTERN(p, 500, 2, "realloc of a __libc_malloc block");
        free(p);
        p = malloc(opaque(300));
        CHECK(p != NULL, "malloc returned NULL");
        fill_pattern(p, 300, 3);
        p = __libc_realloc(p, opaque(300000));
        CHECK(p != NULL, "__libc_realloc of a malloc block returned NULL");
        CHECK_PATTERN(p, 300, 3, "__libc_realloc of a malloc block");
        __libc_free(p);
        a = __libc_memalign(opaque(256), opaque(256));
        CHECK(a != NULL, "__libc_memalign returned NULL");
        free(a);
        z = __libc_calloc(opaque(3), opaque(3));
        CHECK(z != NULL, "__libc_calloc returned NULL");
        free(z);
    }
    printf("misc: __libc_* entry points ok\n");
}

int main(void) {
    check_init("misc");
    strict = check_strict();
    check_free_variants();
    check_control();
    check_malloc_stats();
    check_libc_entry_points();
    printf("misc: OK\n");
    return 0;
}
