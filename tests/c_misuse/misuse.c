/* Misuses the allocator on purpose, one way per run; oxmalloc must report it and abort.
 * usage: misuse CASE
 * Cases reported always: foreign-stack, foreign-mmap, small-interior, small-double,
 * small-double-cached, large-interior, large-double, realloc-interior, realloc-freed,
 * realloc-foreign.
 * Cases for OXMALLOC_CHECK=1: write-after-free, link-after-free, small-double-central.
 * Prints "not detected" and exits 0 if the misuse went unnoticed. */
#include <stdint.h>
#include <sys/mman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keeps the compiler from seeing through the misuse. */
static void *volatile sink;
static void *opaque(void *p) { sink = p; return sink; }

int main(int argc, char **argv) {
    const char *c = argc > 1 ? argv[1] : "";
    char *p = opaque(malloc(48));
    memset(p, 1, 48);
    if (!strcmp(c, "foreign-stack")) {
        char buf[64];
        free(opaque(buf + 16));
    } else if (!strcmp(c, "foreign-mmap")) {
        free(mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    } else if (!strcmp(c, "realloc-foreign")) {
        char buf[64];
        sink = realloc(opaque(buf), 100);
    } else if (!strcmp(c, "small-interior")) {
        free(opaque(p + 16));
    } else if (!strcmp(c, "small-double")) {
        free(p);
        free(opaque(p));
    } else if (!strcmp(c, "small-double-cached")) {
        /* Other objects of the class freed in between: p is deeper in the cache. */
        void *others[8];
        for (int i = 0; i < 8; i++) others[i] = malloc(48);
        free(p);
        for (int i = 0; i < 8; i++) free(others[i]);
        free(opaque(p));
    } else if (!strcmp(c, "large-interior")) {
        char *b = opaque(malloc(4 << 20));
        free(opaque(b + 8192 * 3));
    } else if (!strcmp(c, "large-double")) {
        char *b = opaque(malloc(4 << 20));
        free(b);
        free(opaque(b));
    } else if (!strcmp(c, "realloc-interior")) {
        sink = realloc(opaque(p + 32), 100);
    } else if (!strcmp(c, "realloc-freed")) {
        free(p);
        sink = realloc(opaque(p), 100);
    } else if (!strcmp(c, "write-after-free")) {
        free(p);
        p[20] = 'x';
        sink = malloc(48);
    } else if (!strcmp(c, "link-after-free")) {
        char *q = opaque(malloc(48));
        free(p);
        free(q);
        *(uintptr_t *)q = 0x4141414141414141ull; /* q's link, now q heads its span's list */
        sink = malloc(48);
        sink = malloc(48);
    } else if (!strcmp(c, "small-double-central")) {
        /* With the caches off every free goes to the span; churn in between. */
        free(p);
        for (int i = 0; i < 1000; i++) free(malloc(48));
        free(opaque(p));
    } else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }
    puts("not detected");
    return 0;
}
