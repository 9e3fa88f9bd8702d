/* span_reuse.c - small objects with mixed lifetimes: does new data go where long-lived data is?
 *
 * Every step allocates one object (16..512 bytes, written) with a lifetime drawn from a
 * long-tailed mix (70% live up to 2 000 steps, 10% up to 400 000, 20% up to 4 000 000) and frees
 * the objects whose time is up, oldest expiry first. After `steps` steps the program stops
 * allocating long-lived objects for `steps` more steps (only the short-lived kind), so the
 * live set shrinks back towards the short-lived working set.
 *
 * Objects that live long pin the spans they sit in. An allocator that puts new objects into
 * its fullest spans keeps the long-lived ones together and lets the spans of a departing
 * generation empty completely; one that hands out holes anywhere spreads every kind of object
 * over every span, so a few survivors hold many spans.
 *
 * Prints "rss phase=<name> kib=<n>" (from /proc/self/statm, no trim, no sleep) at the end of
 * the steady phase and of the shrinking phase, with "live_kib=<n>" (bytes the program holds)
 * beside each, and a checksum that depends only on the parameters.
 *
 * usage: span_reuse [steps]   (default 4000000)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rng = 0x5eed5eedcafef00dULL;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (!f || fscanf(f, "%ld %ld", &size, &resident) != 2) { perror("statm"); exit(2); }
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* A binary min-heap of objects by expiry step. */
struct obj { uint64_t expiry; unsigned char *p; uint32_t size; };
static struct obj *heap;
static size_t heap_len, heap_cap;
static uint64_t live_bytes, checksum;

static void push(struct obj o) {
    if (heap_len == heap_cap) {
        heap_cap = heap_cap ? heap_cap * 2 : 1 << 16;
        heap = realloc(heap, heap_cap * sizeof *heap);
        if (!heap) { fprintf(stderr, "realloc failed\n"); exit(1); }
    }
    size_t i = heap_len++;
    while (i > 0 && heap[(i - 1) / 2].expiry > o.expiry) { heap[i] = heap[(i - 1) / 2]; i = (i - 1) / 2; }
    heap[i] = o;
}

static struct obj pop(void) {
    struct obj top = heap[0], last = heap[--heap_len];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= heap_len) break;
        if (c + 1 < heap_len && heap[c + 1].expiry < heap[c].expiry) c++;
        if (heap[c].expiry >= last.expiry) break;
        heap[i] = heap[c];
        i = c;
    }
    if (heap_len) heap[i] = last;
    return top;
}

static void release(struct obj o) {
    for (uint32_t k = 0; k < o.size; k++)
        if (o.p[k] != (unsigned char)(o.size & 0xff)) { fprintf(stderr, "corrupt object\n"); exit(3); }
    live_bytes -= o.size;
    checksum = checksum * 31 + o.size;
    free(o.p);
}

static void step(uint64_t now, int long_lived) {
    struct obj o;
    uint64_t kind = next() % 100;
    uint64_t span = kind < 70 || !long_lived ? 2000 : kind < 80 ? 400000 : 4000000;
    o.expiry = now + 1 + next() % span;
    o.size = 16 + next() % 497;
    o.p = malloc(o.size);
    if (!o.p) { fprintf(stderr, "malloc failed\n"); exit(1); }
    memset(o.p, (int)(o.size & 0xff), o.size);
    live_bytes += o.size;
    push(o);
    while (heap_len && heap[0].expiry <= now) release(pop());
}

int main(int argc, char **argv) {
    uint64_t steps = argc > 1 ? strtoull(argv[1], NULL, 10) : 4000000;
    uint64_t now = 0;
    for (; now < steps; now++) step(now, 1);
    printf("rss phase=steady kib=%ld live_kib=%llu\n", rss_kib(), (unsigned long long)(live_bytes >> 10));
    for (; now < 2 * steps; now++) step(now, 0);
    printf("rss phase=shrunk kib=%ld live_kib=%llu\n", rss_kib(), (unsigned long long)(live_bytes >> 10));
    while (heap_len) release(pop());
    free(heap);
    printf("checksum=%llx\n", (unsigned long long)checksum);
    return 0;
}
