/* The preloaded library is really the malloc in use.
 *
 * usage: serving EXPECTED
 * EXPECTED is the path of the preloaded library, or "-" when nothing is
 * preloaded, in which case malloc must come from the same object as getpid
 * (the C library).
 *
 * Checks that malloc, taken both as a function pointer and through
 * dlsym(RTLD_DEFAULT), resolves into EXPECTED, and that EXPECTED is mapped.
 * Then lists which object serves each malloc-family symbol; with
 * OXMALLOC_TEST_STRICT=1 all of them must come from EXPECTED.
 */
#include "check.h"

#include <dlfcn.h>
#include <limits.h>

static const char *const family[] = {
    "malloc", "free", "calloc", "realloc", "reallocarray", "memalign", "posix_memalign",
    "aligned_alloc", "valloc", "pvalloc", "malloc_usable_size", "cfree", "free_sized",
    "free_aligned_sized", "malloc_trim", "mallopt", "mallinfo", "mallinfo2", "malloc_stats",
    "__libc_malloc", "__libc_free", "__libc_calloc", "__libc_realloc", "__libc_memalign",
};

static int same_file(const char *a, const char *b) {
    char ra[PATH_MAX], rb[PATH_MAX];
    if (realpath(a, ra) == NULL || realpath(b, rb) == NULL) return strcmp(a, b) == 0;
    return strcmp(ra, rb) == 0;
}

static const char *object_name(const void *addr, const void **base) {
    Dl_info info;
    if (addr == NULL || dladdr(addr, &info) == 0 || info.dli_fname == NULL) return NULL;
    if (base != NULL) *base = info.dli_fbase;
    return info.dli_fname;
}

static int is_mapped(const char *path) {
    char want[PATH_MAX];
    if (realpath(path, want) == NULL) return 0;
    FILE *f = fopen("/proc/self/maps", "r");
    CHECK(f != NULL, "cannot open /proc/self/maps");
    char line[PATH_MAX + 256];
    int found = 0;
    while (!found && fgets(line, sizeof line, f) != NULL) {
        char *slash = strchr(line, '/');
        if (slash == NULL) continue;
        slash[strcspn(slash, "\n")] = '\0';
        found = strcmp(slash, want) == 0;
    }
    fclose(f);
    return found;
}

int main(int argc, char **argv) {
    check_init("serving");
    CHECK(argc == 2, "usage: serving EXPECTED_LIBRARY_PATH|-");
    int strict = check_strict();

    void *p = malloc(opaque(100));
    CHECK(p != NULL, "malloc(100) returned NULL");
    free(p);

    const char *expected = argv[1];
    char libc_path[PATH_MAX];
    if (strcmp(expected, "-") == 0) {
        const char *libc = object_name((void *)getpid, NULL);
        CHECK(libc != NULL, "dladdr(getpid) failed");
        snprintf(libc_path, sizeof libc_path, "%s", libc);
        expected = libc_path;
    }
    CHECK(is_mapped(expected), "%s is not mapped in this process (see /proc/self/maps)",
          expected);

    const void *base = NULL;
    const char *by_pointer = object_name((void *)malloc, &base);
    CHECK(by_pointer != NULL, "dladdr((void *)malloc) failed");
    CHECK(same_file(by_pointer, expected),
          "malloc resolves into %s, not into the preloaded %s", by_pointer, expected);
    const char *by_dlsym = object_name(dlsym(RTLD_DEFAULT, "malloc"), NULL);
    CHECK(by_dlsym != NULL && same_file(by_dlsym, expected),
          "dlsym(RTLD_DEFAULT, \"malloc\") resolves into %s, not into %s",
          by_dlsym ? by_dlsym : "(nothing)", expected);
    printf("serving: malloc resolves into %s\n", by_pointer);

    int missing = 0;
    for (size_t i = 0; i < sizeof family / sizeof family[0]; i++) {
        const char *obj = object_name(dlsym(RTLD_DEFAULT, family[i]), NULL);
        int ours = obj != NULL && same_file(obj, expected);
        printf("serving: %-20s %s\n", family[i], obj == NULL ? "(not found)" : obj);
        if (!ours) missing++;
        if (!ours && strict)
            fprintf(stderr, "serving: %s is not exported by %s\n", family[i], expected);
    }
    CHECK(!strict || missing == 0, "%d malloc-family symbols are not served by %s", missing,
          expected);
    printf("serving: OK\n");
    return 0;
}
