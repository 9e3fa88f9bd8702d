/* Heap limit, failure report, hooks and large-allocation threshold through liboxmalloc.so. */
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...) do { fprintf(stderr, "FAIL: " __VA_ARGS__); fputc('\n', stderr); exit(1); } while (0)

typedef void (*large_hook)(size_t, void *, void *);
typedef void (*fail_hook)(size_t, size_t, int, void *);

/* volatile: the hooks change them inside malloc, which compilers assume touches no globals. */
static volatile size_t hook_size, hook_calls, fail_size, fail_align, fail_calls;
static void *volatile hook_addr;
static volatile int fail_reason;

static void on_large(size_t size, void *addr, void *user) {
    if (user != (void *)&hook_calls) abort();
    hook_size = size; hook_addr = addr; hook_calls++;
    void *inner = malloc(300 << 20); /* allocating inside a hook: served, no recursion */
    free(inner);
}

static void on_fail(size_t size, size_t align, int reason, void *user) {
    if (user != (void *)&fail_calls) abort();
    fail_size = size; fail_align = align; fail_reason = reason; fail_calls++;
}

int main(int argc, char **argv) {
    void (*set_limit)(size_t) = (void (*)(size_t))dlsym(RTLD_DEFAULT, "oxmalloc_set_heap_limit");
    size_t (*get_limit)(void) = (size_t (*)(void))dlsym(RTLD_DEFAULT, "oxmalloc_heap_limit");
    void (*set_threshold)(size_t) = (void (*)(size_t))dlsym(RTLD_DEFAULT, "oxmalloc_set_large_alloc_threshold");
    void (*set_large)(large_hook, void *) = (void (*)(large_hook, void *))dlsym(RTLD_DEFAULT, "oxmalloc_set_large_alloc_hook");
    void (*set_fail)(fail_hook, void *) = (void (*)(fail_hook, void *))dlsym(RTLD_DEFAULT, "oxmalloc_set_alloc_failure_hook");
    if (!set_limit || !get_limit || !set_threshold || !set_large || !set_fail) FAIL("symbols missing");
    const char *mode = argc > 1 ? argv[1] : "";

    if (!strcmp(mode, "report")) {
        /* Default failure report on stderr, NULL + ENOMEM. */
        set_limit(64 << 20);
        if (get_limit() != (64 << 20)) FAIL("limit not set");
        errno = 0;
        void *p = malloc(100 << 20);
        if (p != NULL || errno != ENOMEM) FAIL("over-limit malloc gave %p errno %d", p, errno);
        void *q = calloc(1, 32 << 20);
        if (!q) FAIL("under-limit calloc failed");
        free(q);
        set_limit(0);
        p = malloc(100 << 20);
        if (!p) FAIL("malloc failed after the limit was removed");
        free(p);
        printf("report ok\n");
        return 0;
    }

    set_threshold(200 << 20);
    set_large(on_large, (void *)&hook_calls);
    char *big = malloc(250 << 20);
    if (!big) FAIL("250 MiB malloc failed");
    if (hook_calls != 1 || hook_size != (250 << 20) || hook_addr != big)
        FAIL("large hook: calls %zu size %zu addr %p (expected %p)", hook_calls, hook_size, hook_addr, (void *)big);
    free(big);
    char *small = malloc(100 << 20);
    if (hook_calls != 1) FAIL("hook ran below the threshold");
    free(small);
    set_large(NULL, NULL);

    set_fail(on_fail, (void *)&fail_calls);
    set_limit(32 << 20);
    errno = 0;
    void *p = aligned_alloc(1 << 16, 40 << 20);
    if (p != NULL || errno != ENOMEM) FAIL("over-limit aligned_alloc gave %p errno %d", p, errno);
    if (fail_calls != 1 || fail_size != (40 << 20) || fail_align != (1 << 16) || fail_reason != 2)
        FAIL("failure hook: calls %zu size %zu align %zu reason %d", fail_calls, fail_size, fail_align, fail_reason);
    /* Small objects hit the limit too. */
    size_t n = 0;
    void **keep = NULL;
    for (;;) {
        void *o = malloc(1000);
        if (!o) break;
        *(void **)o = keep;
        keep = o;
        n++;
    }
    if (errno != ENOMEM || fail_calls != 2 || fail_size != 1000) FAIL("small failure: calls %zu size %zu", fail_calls, fail_size);
    if (n * 1000 < (24 << 20)) FAIL("limit hit after only %zu objects", n);
    while (keep) { void *next = *keep; free(keep); keep = next; }
    set_limit(0);
    set_fail(NULL, NULL);
    printf("hooks ok after %zu small objects\n", n);
    return 0;
}
