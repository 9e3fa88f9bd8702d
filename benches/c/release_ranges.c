/* release_ranges.c - what the kernel charges for giving touched memory back, by range length.
 *
 * Touches 1 GiB of anonymous memory page by page, then, depending on the mode:
 *   exit:          nothing (the kernel frees it all when the process exits)
 *   unmap:         munmap of the whole region
 *   dontneed:      one madvise(MADV_DONTNEED) of the whole region
 *   ranges PAGES:  every other run of PAGES 4 KiB pages released, 128 ranges per
 *                  process_madvise call (half the memory; the rest goes at exit)
 * Run it under `/usr/bin/time -f "%U %S"` (or read the children's rusage): the system time of
 * `ranges` against `exit` is what releasing short runs during a program costs on top of what
 * the exit would have cost anyway.
 *
 * usage: release_ranges exit|unmap|dontneed|ranges [PAGES] */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif
#define PIDFD_SELF (-10000)

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "exit";
    size_t n = 1ul << 30;
    char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    for (size_t i = 0; i < n; i += 4096) p[i] = 1;
    if (!strcmp(mode, "unmap")) {
        munmap(p, n);
    } else if (!strcmp(mode, "dontneed")) {
        madvise(p, n, MADV_DONTNEED);
    } else if (!strcmp(mode, "ranges")) {
        size_t run = (size_t)(argc > 2 ? atol(argv[2]) : 2) * 4096;
        struct iovec v[128];
        int k = 0;
        for (size_t i = 0; i + run <= n; i += 2 * run) {
            v[k].iov_base = p + i;
            v[k].iov_len = run;
            if (++k == 128 || i + 3 * run > n) {
                if (syscall(SYS_process_madvise, PIDFD_SELF, v, k, MADV_DONTNEED, 0) < 0) {
                    perror("process_madvise");
                    return 1;
                }
                k = 0;
            }
        }
    } else if (strcmp(mode, "exit")) {
        fprintf(stderr, "usage: release_ranges exit|unmap|dontneed|ranges [PAGES]\n");
        return 2;
    }
    return 0;
}
