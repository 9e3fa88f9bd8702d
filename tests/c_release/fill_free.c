/* Fill about 1 GB with mixed small objects (16..512 bytes), free them all, and compare the
 * resident set with its value before the fill. No sleep, no malloc_trim.
 *
 * usage: fill_free [same|cross|idle|refill] [fill_mib] [baseline_mib]
 *   same:   the allocating thread frees everything
 *   cross:  half of the objects are freed by another thread
 *   idle:   half of the objects are freed by another thread, which then stays alive, asleep
 *           (its cache must not keep memory resident)
 *   refill: after the free, malloc_trim(0), then calloc the same amount again and check that
 *           every byte is zero (pages given back to the OS must come back clean)
 *   baseline_mib: live data the program keeps during the whole run (default 64)
 * Prints "rss_before_kib rss_peak_kib rss_after_kib" on one line. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <unistd.h>

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (!f || fscanf(f, "%ld %ld", &size, &resident) != 2) { perror("statm"); exit(2); }
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

struct range { void **objs; size_t n; };

static void *free_range(void *arg) {
    struct range *r = arg;
    for (size_t i = 0; i < r->n; i++) free(r->objs[i]);
    return NULL;
}

/* For "idle": free a range, say so on done[1], then sleep until wake[0] is written. */
static int done[2], wake[2];
static void *free_range_then_sleep(void *arg) {
    free_range(arg);
    char c = 1;
    if (write(done[1], &c, 1) != 1 || read(wake[0], &c, 1) != 1) abort();
    return NULL;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "same";
    size_t fill = (size_t)(argc > 2 ? atol(argv[2]) : 1024) << 20;
    size_t base = (size_t)(argc > 3 ? atol(argv[3]) : 64) << 20;

    /* The program's own live data, kept throughout. */
    size_t nbase = base / 4096;
    char **keep = malloc(nbase * sizeof *keep);
    for (size_t i = 0; i < nbase; i++) { keep[i] = malloc(4096); memset(keep[i], 1, 4096); }

    size_t cap = fill / 16, n = 0, bytes = 0;
    void **objs = malloc(cap * sizeof *objs);
    long before = rss_kib();
    while (bytes < fill) {
        size_t sz = 16 + next() % 497;
        char *p = malloc(sz);
        if (!p) { fprintf(stderr, "malloc failed\n"); return 1; }
        memset(p, 0xA5, sz);
        objs[n++] = p;
        bytes += sz;
    }
    long peak = rss_kib();
    /* Free in a scrambled order, as real programs do. */
    for (size_t i = n - 1; i > 0; i--) { size_t j = next() % (i + 1); void *t = objs[i]; objs[i] = objs[j]; objs[j] = t; }
    if (!strcmp(mode, "cross")) {
        struct range half = { objs, n / 2 };
        pthread_t t;
        pthread_create(&t, NULL, free_range, &half);
        struct range rest = { objs + n / 2, n - n / 2 };
        free_range(&rest);
        pthread_join(t, NULL);
    } else if (!strcmp(mode, "idle")) {
        if (pipe(done) || pipe(wake)) { perror("pipe"); return 2; }
        struct range half = { objs, n / 2 };
        pthread_t t;
        pthread_create(&t, NULL, free_range_then_sleep, &half);
        char c;
        if (read(done[0], &c, 1) != 1) abort();
        struct range rest = { objs + n / 2, n - n / 2 };
        free_range(&rest);
    } else {
        struct range all = { objs, n };
        free_range(&all);
    }
    free(objs); /* the bookkeeping goes too: everything the fill added is freed */
    long after = rss_kib();
    printf("%ld %ld %ld\n", before, peak, after);
    if (!strcmp(mode, "idle")) {
        char c = 1;
        if (write(wake[1], &c, 1) != 1) abort();
    }
    if (!strcmp(mode, "refill")) {
        objs = malloc(n * sizeof *objs);
        int trimmed = malloc_trim(0);
        uint64_t saved = rng;
        rng = 0x9e3779b97f4a7c15ull;
        for (size_t i = 0; i < n; i++) {
            size_t sz = 16 + next() % 497;
            unsigned char *p = calloc(1, sz);
            if (!p) { fprintf(stderr, "calloc failed after release\n"); return 1; }
            for (size_t k = 0; k < sz; k++)
                if (p[k]) { fprintf(stderr, "calloc byte %zu of %zu not zero after release\n", k, sz); return 4; }
            objs[i] = p;
        }
        for (size_t i = 0; i < n; i++) free(objs[i]);
        rng = saved;
        free(objs);
        printf("refill ok trim=%d\n", trimmed);
    }
    for (size_t i = 0; i < nbase; i++) if (keep[i][4095] != 1) return 3;
    return 0;
}
