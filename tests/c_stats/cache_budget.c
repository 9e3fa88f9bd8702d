/* The thread caches' budget (OXMALLOC_THREAD_CACHE_BYTES) through liboxmalloc.so: 20 rounds of
 * allocating 16000 objects over eight small classes and freeing them all (the lists grow a
 * little each round, up to 2000 objects each, 3.2 MB in all), then print what the thread caches
 * hold ("thread_cache_bytes=N"). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    int (*get)(const char *, size_t *) =
        (int (*)(const char *, size_t *))dlsym(RTLD_DEFAULT, "oxmalloc_get_numeric_property");
    if (!get) { fprintf(stderr, "FAIL: not running under liboxmalloc.so\n"); return 1; }
    enum { N = 16000 };
    static void *objs[N];
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < N; i++) {
            size_t size = 32 + (size_t)(i % 8) * 48;
            objs[i] = malloc(size);
            if (!objs[i]) { fprintf(stderr, "FAIL: malloc\n"); return 1; }
            memset(objs[i], i & 0xff, size);
        }
        for (int i = 0; i < N; i++) free(objs[i]);
    }
    size_t cached = 0;
    if (get("oxmalloc.thread_cache_bytes", &cached) != 1) {
        fprintf(stderr, "FAIL: oxmalloc.thread_cache_bytes unknown\n");
        return 1;
    }
    printf("thread_cache_bytes=%zu\n", cached);
    return 0;
}
