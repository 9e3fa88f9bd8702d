/* The statistics C API of liboxmalloc.so, called through dlsym as a preloaded program would. */
#include <dlfcn.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...) do { fprintf(stderr, "FAIL: " __VA_ARGS__); fputc('\n', stderr); exit(1); } while (0)

typedef size_t (*stats_fn)(char *, size_t);
typedef int (*prop_fn)(const char *, size_t *);

int main(void) {
    stats_fn json = (stats_fn)dlsym(RTLD_DEFAULT, "oxmalloc_stats_json");
    stats_fn text = (stats_fn)dlsym(RTLD_DEFAULT, "oxmalloc_stats_text");
    prop_fn prop = (prop_fn)dlsym(RTLD_DEFAULT, "oxmalloc_get_numeric_property");
    if (!json || !text || !prop) FAIL("oxmalloc symbols missing");

    size_t need = json(NULL, 0);
    if (need < 100) FAIL("json needs only %zu bytes", need);
    char small[16];
    memset(small, 'x', sizeof small);
    if (json(small, sizeof small) != need) FAIL("truncated call reports a different length");
    if (small[15] != '\0' || small[0] != '{') FAIL("truncated output not NUL-terminated JSON prefix");
    /* The statistics (and so the digits) change as the buffer itself is allocated: leave room. */
    size_t cap = need + 4096;
    char *buf = malloc(cap);
    size_t got = json(buf, cap);
    if (got >= cap || strlen(buf) != got) FAIL("full JSON: returned %zu, wrote %zu", got, strlen(buf));
    if (buf[got - 1] != '}') FAIL("JSON does not end with }");
    free(buf);

    size_t in_use0 = 0, large0 = 0, v = 0;
    if (!prop("oxmalloc.in_use_bytes", &in_use0)) FAIL("in_use_bytes unknown");
    if (!prop("oxmalloc.large_allocations", &large0)) FAIL("large_allocations unknown");
    if (prop("no.such.property", &v)) FAIL("unknown name accepted");
    char *big = malloc(40 << 20);
    memset(big, 1, 40 << 20);
    size_t in_use1 = 0, large1 = 0, mapped = 0;
    prop("oxmalloc.in_use_bytes", &in_use1);
    prop("oxmalloc.large_allocations", &large1);
    prop("oxmalloc.mapped_bytes", &mapped);
    if (in_use1 < in_use0 + (40 << 20)) FAIL("in use grew by %zu, expected >= 40 MiB", in_use1 - in_use0);
    if (large1 != large0 + 1) FAIL("large allocations %zu -> %zu", large0, large1);
    if (mapped < in_use1) FAIL("mapped %zu < in use %zu", mapped, in_use1);

    struct mallinfo2 mi = mallinfo2();
    if (mi.uordblks != in_use1 && mi.uordblks < (size_t)(40 << 20)) FAIL("mallinfo2.uordblks %zu", mi.uordblks);
    if (mi.hblks < 1 || mi.hblkhd < (size_t)(40 << 20)) FAIL("mallinfo2 large blocks %zu/%zu", mi.hblks, mi.hblkhd);
    if (mi.arena < mi.uordblks) FAIL("mallinfo2.arena < uordblks");
    free(big);

    char tbuf[8192];
    text(tbuf, sizeof tbuf);
    if (!strstr(tbuf, "in use by the program")) FAIL("text report lacks in-use line");
    malloc_stats();
    printf("stats api ok\n");
    return 0;
}
