/* fork() while other threads allocate.
 *
 * The parent runs 4 threads that allocate and free without pause, and forks 50
 * times meanwhile. Each child allocates and frees, frees blocks the parent
 * allocated before the fork, does the same from a new thread, sometimes forks
 * a grandchild, and leaves with _exit(0). The parent checks every child's
 * status. A deadlock ends in SIGALRM instead of a hang.
 */
#include "check.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>

#define WORKERS 4
#define FORKS 50
#define PARENT_BLOCKS 32

static atomic_int stop;
static atomic_ulong worker_ops;

static void *busy_worker(void *arg) {
    uint64_t rng = 0xA0761D6478BD642FULL * (uint64_t)((intptr_t)arg + 1);
    void *slots[64] = {0};
    size_t sizes[64] = {0};
    unsigned long ops = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        size_t i = (size_t)(rng_next(&rng) % 64);
        if (slots[i] != NULL) {
            CHECK_PATTERN(slots[i], sizes[i], sizes[i], "worker block");
            free(slots[i]);
        }
        sizes[i] = rng_next(&rng) % 100 == 0 ? rng_range(&rng, 256 * 1024, 1 << 20)
                                              : rng_size(&rng, 32 * 1024);
        slots[i] = malloc(sizes[i]);
        CHECK(slots[i] != NULL, "worker: malloc(%zu) returned NULL", sizes[i]);
        fill_pattern(slots[i], sizes[i], sizes[i]);
        ops++;
        if (ops % 1024 == 0) atomic_fetch_add_explicit(&worker_ops, 1024, memory_order_relaxed);
    }
    for (size_t i = 0; i < 64; i++) free(slots[i]);
    return NULL;
}

int oxmalloc_get_numeric_property(const char *name, size_t *out) __attribute__((weak));

static void child_alloc_round(uint64_t seed) {
    void *blocks[64];
    for (int i = 0; i < 64; i++) {
        size_t n = rng_size(&seed, 64 * 1024);
        blocks[i] = malloc(n);
        if (blocks[i] == NULL) _exit(10);
        fill_pattern(blocks[i], n, n);
        if (find_pattern_mismatch(blocks[i], n, n) != SIZE_MAX) _exit(11);
    }
    for (int i = 0; i < 64; i++) free(blocks[i]);
    void *big = malloc(1 << 20);
    if (big == NULL) _exit(12);
    memset(big, 1, 1 << 20);
    big = realloc(big, 2 << 20);
    if (big == NULL) _exit(13);
    free(big);
    void *z = calloc(1000, 100);
    if (z == NULL || find_nonzero(z, 100000) != SIZE_MAX) _exit(14);
    free(z);
}

static void *child_thread(void *arg) {
    child_alloc_round((uint64_t)(uintptr_t)arg);
    return NULL;
}

static int run_child(int round, void **parent_blocks, const size_t *parent_sizes) {
    alarm(30);
    /* Blocks allocated by the parent before the fork are valid and freeable. */
    for (int i = 0; i < PARENT_BLOCKS; i++) {
        if (find_pattern_mismatch(parent_blocks[i], parent_sizes[i], parent_sizes[i]) != SIZE_MAX)
            return 20;
        free(parent_blocks[i]);
    }
    child_alloc_round(0x1234 + (uint64_t)round);
    pthread_t t;
    if (pthread_create(&t, NULL, child_thread, (void *)(uintptr_t)(round + 1)) != 0) return 21;
    if (pthread_join(t, NULL) != 0) return 22;
    /* Only this thread exists here: a thread of the child may reuse the stack and TLS of a
     * thread of the parent, and the statistics must count live caches only (and finish). */
    size_t caches = 0;
    if (oxmalloc_get_numeric_property &&
        (!oxmalloc_get_numeric_property("oxmalloc.thread_caches", &caches) || caches > 1))
        return 26;
    if (round % 10 == 0) {
        pid_t g = fork();
        if (g < 0) return 23;
        if (g == 0) {
            child_alloc_round(99);
            _exit(0);
        }
        int st;
        if (waitpid(g, &st, 0) != g) return 24;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return 25;
    }
    child_alloc_round(0x5678 + (uint64_t)round);
    return 0;
}

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "fork: FAIL: SIGALRM: a process did not finish in time "
                              "(deadlock after fork?)\n";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
    _exit(3);
}

int main(void) {
    check_init("fork");
    signal(SIGALRM, on_alarm);
    alarm(60);

    pthread_t workers[WORKERS];
    for (intptr_t i = 0; i < WORKERS; i++) {
        int rc = pthread_create(&workers[i], NULL, busy_worker, (void *)i);
        CHECK(rc == 0, "pthread_create failed: %s", strerror(rc));
    }
    /* Let the workers get going before the first fork. */
    while (atomic_load(&worker_ops) < 4096) sched_yield();

    void *parent_blocks[PARENT_BLOCKS];
    size_t parent_sizes[PARENT_BLOCKS];
    uint64_t rng = 42;
    int failures = 0;
    for (int round = 0; round < FORKS; round++) {
        for (int i = 0; i < PARENT_BLOCKS; i++) {
            parent_sizes[i] = rng_size(&rng, 64 * 1024);
            parent_blocks[i] = malloc(parent_sizes[i]);
            CHECK(parent_blocks[i] != NULL, "malloc(%zu) returned NULL", parent_sizes[i]);
            fill_pattern(parent_blocks[i], parent_sizes[i], parent_sizes[i]);
        }
        pid_t pid = fork();
        CHECK(pid >= 0, "fork failed: %s", strerror(errno));
        if (pid == 0) _exit(run_child(round, parent_blocks, parent_sizes));

        /* The parent allocates while the child runs. */
        void *mine = malloc(12345);
        CHECK(mine != NULL, "malloc after fork returned NULL");
        free(mine);
        int status;
        CHECK(waitpid(pid, &status, 0) == pid, "waitpid failed: %s", strerror(errno));
        if (WIFSIGNALED(status)) {
            fprintf(stderr, "fork: child %d was killed by signal %d (%s)\n", round,
                    WTERMSIG(status), strsignal(WTERMSIG(status)));
            failures++;
        } else if (WEXITSTATUS(status) != 0) {
            fprintf(stderr, "fork: child %d exited with status %d%s\n", round, WEXITSTATUS(status),
                    WEXITSTATUS(status) == 3 ? " (timed out)" : "");
            failures++;
        }
        for (int i = 0; i < PARENT_BLOCKS; i++) {
            CHECK_PATTERN(parent_blocks[i], parent_sizes[i], parent_sizes[i],
                          "parent block after fork");
            free(parent_blocks[i]);
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < WORKERS; i++) pthread_join(workers[i], NULL);
    CHECK(failures == 0, "%d of %d children failed", failures, FORKS);
    printf("fork: %d forks with %d busy threads, %lu worker operations\n", FORKS, WORKERS,
           (unsigned long)atomic_load(&worker_ops));
    printf("fork: OK\n");
    return 0;
}
