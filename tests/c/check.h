/* Shared helpers for the C programs that tests/preload.rs runs under LD_PRELOAD.
 *
 * Every program checks its own results: on the first failure it prints
 * "<program>: FAIL at file:line: message" to stderr and exits with status 1.
 * On success it prints "<program>: OK" to stdout and exits with status 0.
 */
#ifndef OXMALLOC_TEST_CHECK_H
#define OXMALLOC_TEST_CHECK_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *check_prog = "test";

/* Built with -DCHECK_KEEP_GOING, a failed check is reported and the program
 * goes on (and exits with status 1 at the end), to list all the differences
 * between allocators at once. Later checks may then crash. */
#ifdef CHECK_KEEP_GOING
#pragma GCC diagnostic ignored "-Wuse-after-free"
static int check_failures;
#define CHECK_NORETURN
#else
#define CHECK_NORETURN noreturn,
#endif

static void check_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((CHECK_NORETURN format(printf, 3, 4)));

static void check_fail(const char *file, int line, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: FAIL at %s:%d: %s\n", check_prog, file, line, msg);
#ifdef CHECK_KEEP_GOING
    check_failures++;
#else
    /* stderr is unbuffered; _exit so that a failing thread does not run
     * exit handlers while other threads are still allocating. */
    fflush(stdout);
    _exit(1);
#endif
}

#ifdef CHECK_KEEP_GOING
static void check_report(void) {
    if (check_failures > 0) {
        fprintf(stderr, "%s: %d checks failed\n", check_prog, check_failures);
        fflush(stdout);
        _exit(1);
    }
}
#endif

#define FAIL(...) check_fail(__FILE__, __LINE__, __VA_ARGS__)
#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) check_fail(__FILE__, __LINE__, __VA_ARGS__);              \
    } while (0)

/* Hide a value from the optimiser, so that calls such as malloc(SIZE_MAX)
 * are neither folded nor warned about at compile time. */
static inline size_t opaque(size_t x) {
    volatile size_t v = x;
    return v;
}

static inline void check_init(const char *name) {
    check_prog = name;
    setvbuf(stdout, NULL, _IOLBF, 0);
#ifdef CHECK_KEEP_GOING
    atexit(check_report);
#endif
}

static inline int check_strict(void) {
    const char *s = getenv("OXMALLOC_TEST_STRICT");
    return s != NULL && strcmp(s, "1") == 0;
}

/* xorshift64* */
static inline uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [lo, hi]. */
static inline size_t rng_range(uint64_t *s, size_t lo, size_t hi) {
    return lo + (size_t)(rng_next(s) % (uint64_t)(hi - lo + 1));
}

/* Log-uniform in [1, max]: small sizes are common, large ones still occur. */
static inline size_t rng_size(uint64_t *s, size_t max) {
    unsigned bits = 0;
    while (((size_t)1 << bits) < max) bits++;
    size_t cap = (size_t)1 << rng_range(s, 0, bits);
    if (cap > max) cap = max;
    return rng_range(s, 1, cap);
}

/* The pattern byte at offset i depends on the offset and on the seed, so a
 * block that was copied to a shifted position or mixed up with another block
 * is detected. */
static inline uint64_t pattern_word(uint64_t seed, size_t word_index) {
    return (seed ^ ((uint64_t)word_index * 0x9E3779B97F4A7C15ULL)) | 1;
}

static inline void fill_pattern(void *p, size_t n, uint64_t seed) {
    unsigned char *b = p;
    size_t words = n / 8;
    for (size_t i = 0; i < words; i++) {
        uint64_t w = pattern_word(seed, i);
        memcpy(b + i * 8, &w, 8);
    }
    uint64_t last = pattern_word(seed, words);
    memcpy(b + words * 8, &last, n - words * 8);
}

/* Returns the offset of the first byte that differs from the pattern, or
 * SIZE_MAX when all n bytes match. */
static inline size_t find_pattern_mismatch(const void *p, size_t n, uint64_t seed) {
    const unsigned char *b = p;
    size_t words = n / 8;
    for (size_t i = 0; i < words; i++) {
        uint64_t w = pattern_word(seed, i), got;
        memcpy(&got, b + i * 8, 8);
        if (got != w) {
            for (size_t k = 0; k < 8; k++)
                if (((const unsigned char *)&w)[k] != b[i * 8 + k]) return i * 8 + k;
        }
    }
    uint64_t last = pattern_word(seed, words);
    for (size_t k = 0; k < n - words * 8; k++)
        if (((const unsigned char *)&last)[k] != b[words * 8 + k]) return words * 8 + k;
    return SIZE_MAX;
}

#define CHECK_PATTERN(p, n, seed, what)                                        \
    do {                                                                       \
        size_t bad_ = find_pattern_mismatch((p), (n), (seed));                 \
        CHECK(bad_ == SIZE_MAX, "%s: block %p of %zu bytes corrupted at offset %zu", \
              (what), (void *)(p), (size_t)(n), bad_);                         \
    } while (0)

/* Returns the offset of the first non-zero byte, or SIZE_MAX. */
static inline size_t find_nonzero(const void *p, size_t n) {
    const unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        if (w != 0) break;
    }
    for (; i < n; i++)
        if (b[i] != 0) return i;
    return SIZE_MAX;
}

#endif
