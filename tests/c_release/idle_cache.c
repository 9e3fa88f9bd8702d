/* Caches of threads that stop allocating are emptied by the other threads' slow paths.
 *
 * usage: idle_cache idle|release|stress [seconds]
 *   idle:    a worker fills its cache and falls asleep; the main thread keeps allocating.
 *            Prints "cached_kib reclaimed_kib ms released_kib" once the worker's cache was
 *            taken (or the time ran out; released_kib: what the page heap gave back to the OS
 *            meanwhile, which would start passes of its own): run with OXMALLOC_IDLE_CACHE_MS
 *            set low.
 *   release: the same, but the main thread calls oxmalloc_release_free_memory() instead.
 *   stress:  threads churn verified blocks and sleep often while another thread empties the
 *            sleepers' caches without pause; any corruption fails. Prints the reclaim count.
 *   signals: like stress, but the churning threads are also interrupted by a signal whose
 *            handler sleeps (SA_NODEFER, so the signal mask does not change), often in the
 *            middle of malloc or free. Prints the reclaim count.
 *   fork:    in a forked child, the forking thread fills its cache and waits for a thread of
 *            its own, which empties it. Prints the KiB taken.
 * Run under LD_PRELOAD=liboxmalloc.so. */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

size_t oxmalloc_release_free_memory(void) __attribute__((weak));
int oxmalloc_get_numeric_property(const char *name, size_t *out) __attribute__((weak));

static size_t prop(const char *name) {
    size_t v = 0;
    if (!oxmalloc_get_numeric_property || !oxmalloc_get_numeric_property(name, &v)) {
        fprintf(stderr, "oxmalloc statistic %s unavailable\n", name);
        exit(2);
    }
    return v;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int ready[2], wake[2];

/* Fills this thread's cache with freed 64-byte objects, then sleeps until woken, then checks
 * that allocation still works and hands out distinct, writable blocks. */
static void *filler(void *arg) {
    (void)arg;
    enum { N = 40000 };
    static char *objs[N];
    for (int i = 0; i < N; i++) objs[i] = malloc(64);
    for (int i = 0; i < N; i++) free(objs[i]);
    char c = 1;
    if (write(ready[1], &c, 1) != 1 || read(wake[0], &c, 1) != 1) abort();
    for (int i = 0; i < N; i++) {
        objs[i] = malloc(64);
        memset(objs[i], i & 0xff, 64);
    }
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < 64; k++)
            if ((unsigned char)objs[i][k] != (i & 0xff)) { fprintf(stderr, "block %d corrupt\n", i); abort(); }
        free(objs[i]);
    }
    return NULL;
}

static int idle(int explicit, double seconds) {
    /* Live data that stays: the worker's frees are then too small a share of the heap for it
     * to start giving memory back (which would empty the caches by itself). */
    enum { KEEP = 16384 };
    static char *keep[KEEP];
    for (int i = 0; i < KEEP; i++) { keep[i] = malloc(4096); memset(keep[i], 1, 4096); }
    if (pipe(ready) || pipe(wake)) { perror("pipe"); return 2; }
    pthread_t t;
    pthread_create(&t, NULL, filler, NULL);
    char c;
    if (read(ready[0], &c, 1) != 1) abort();
    size_t cached = prop("oxmalloc.thread_cache_bytes");
    size_t before = prop("oxmalloc.cache_reclaimed_bytes_total");
    size_t released = prop("oxmalloc.released_bytes_total");
    double start = now_ms(), ms = 0;
    size_t got = 0;
    static void *batch[4096];
    while ((ms = now_ms() - start) < seconds * 1e3) {
        if (explicit) {
            oxmalloc_release_free_memory();
        } else {
            /* Traffic that reaches the slow paths: more 1 KiB objects at once than a thread
             * cache holds. (A thread whose traffic all fits its cache never runs one.) */
            for (int i = 0; i < 4096; i++) batch[i] = malloc(1000);
            for (int i = 0; i < 4096; i++) free(batch[i]);
        }
        got = prop("oxmalloc.cache_reclaimed_bytes_total") - before;
        if (got >= cached / 2) break;
        usleep(1000);
    }
    released = prop("oxmalloc.released_bytes_total") - released;
    printf("%zu %zu %.0f %zu\n", cached >> 10, got >> 10, ms, released >> 10);
    c = 1;
    if (write(wake[1], &c, 1) != 1) abort();
    pthread_join(t, NULL);
    for (int i = 0; i < KEEP; i++) free(keep[i]);
    return 0;
}

static volatile int stop;

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Keeps 512 blocks of random sizes, each filled from its own seed; replaces them at random,
 * checking every block it frees, and sleeps a little every few hundred operations. */
static void *churner(void *arg) {
    uint64_t rng = mix((uintptr_t)arg);
    enum { LIVE = 512 };
    unsigned char *blk[LIVE] = {0};
    size_t len[LIVE] = {0};
    uint64_t seed[LIVE] = {0};
    unsigned long ops = 0;
    while (!stop) {
        rng = mix(rng);
        int i = rng % LIVE;
        if (blk[i]) {
            for (size_t k = 0; k < len[i]; k++)
                if (blk[i][k] != (unsigned char)(seed[i] + k * 131)) {
                    fprintf(stderr, "block of %zu bytes corrupt at byte %zu\n", len[i], k);
                    abort();
                }
            free(blk[i]);
        }
        len[i] = 1 + (rng >> 8) % ((rng >> 40) % 8 == 0 ? 4096 : 256);
        seed[i] = rng >> 16;
        blk[i] = malloc(len[i]);
        if (!blk[i]) abort();
        for (size_t k = 0; k < len[i]; k++) blk[i][k] = (unsigned char)(seed[i] + k * 131);
        if (++ops % 300 == 0) usleep((rng >> 20) % 200);
    }
    for (int i = 0; i < LIVE; i++) free(blk[i]);
    return NULL;
}

static void *reclaimer(void *arg) {
    (void)arg;
    while (!stop) oxmalloc_release_free_memory();
    return NULL;
}

static int stress(double seconds) {
    enum { T = 4 };
    pthread_t w[T], r;
    for (long i = 0; i < T; i++) pthread_create(&w[i], NULL, churner, (void *)(i + 1));
    pthread_create(&r, NULL, reclaimer, NULL);
    usleep((useconds_t)(seconds * 1e6));
    stop = 1;
    for (int i = 0; i < T; i++) pthread_join(w[i], NULL);
    pthread_join(r, NULL);
    printf("%zu\n", prop("oxmalloc.cache_reclaims_total"));
    return 0;
}

static void on_signal(int sig) {
    (void)sig;
    struct timespec ts = {0, 300000}; /* asleep in a system call, inside whatever it interrupted */
    nanosleep(&ts, NULL);
}

struct signaled { pthread_t *threads; int n; };

static void *signaler(void *arg) {
    struct signaled *s = arg;
    for (unsigned i = 0; !stop; i++) {
        pthread_kill(s->threads[i % s->n], SIGUSR1);
        usleep(200);
    }
    return NULL;
}

static int signals(double seconds) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_NODEFER | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    enum { T = 3 };
    pthread_t w[T], r, k;
    for (long i = 0; i < T; i++) pthread_create(&w[i], NULL, churner, (void *)(i + 11));
    struct signaled s = { w, T };
    pthread_create(&r, NULL, reclaimer, NULL);
    pthread_create(&k, NULL, signaler, &s);
    usleep((useconds_t)(seconds * 1e6));
    stop = 1;
    pthread_join(k, NULL);
    for (int i = 0; i < T; i++) pthread_join(w[i], NULL);
    pthread_join(r, NULL);
    printf("%zu\n", prop("oxmalloc.cache_reclaims_total"));
    return 0;
}

static size_t fork_cached;

static void *fork_reclaimer(void *arg) {
    (void)arg;
    size_t before = prop("oxmalloc.cache_reclaimed_bytes_total");
    double start = now_ms();
    size_t got = 0;
    while (now_ms() - start < 3000) {
        oxmalloc_release_free_memory();
        got = prop("oxmalloc.cache_reclaimed_bytes_total") - before;
        if (got >= fork_cached / 2) break;
        usleep(1000);
    }
    return (void *)got;
}

static int fork_child_reclaims(void) {
    enum { KEEP = 16384, N = 40000 };
    static char *keep[KEEP], *objs[N];
    for (int i = 0; i < KEEP; i++) { keep[i] = malloc(4096); memset(keep[i], 1, 4096); }
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 2; }
    if (pid == 0) {
        for (int i = 0; i < N; i++) objs[i] = malloc(64);
        for (int i = 0; i < N; i++) free(objs[i]);
        fork_cached = prop("oxmalloc.thread_cache_bytes");
        pthread_t t;
        void *got;
        if (pthread_create(&t, NULL, fork_reclaimer, NULL) || pthread_join(t, &got)) _exit(3);
        printf("%zu %zu\n", fork_cached >> 10, (size_t)got >> 10);
        fflush(stdout);
        _exit((size_t)got >= fork_cached / 2 ? 0 : 1);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st)) return 4;
    return WEXITSTATUS(st);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "idle";
    double seconds = argc > 2 ? atof(argv[2]) : 3;
    if (!oxmalloc_release_free_memory) { fprintf(stderr, "not running under oxmalloc\n"); return 2; }
    if (!strcmp(mode, "idle")) return idle(0, seconds);
    if (!strcmp(mode, "release")) return idle(1, seconds);
    if (!strcmp(mode, "stress")) return stress(seconds);
    if (!strcmp(mode, "signals")) return signals(seconds);
    if (!strcmp(mode, "fork")) return fork_child_reclaims();
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
