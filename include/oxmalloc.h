/* oxmalloc.h: the extensions liboxmalloc.so exports beside the standard malloc family.
 *
 * Link against liboxmalloc.so, or look the symbols up with dlsym(RTLD_DEFAULT, ...) in a
 * process started under LD_PRELOAD. Every function is safe to call from any thread.
 * The statistics are described field by field in docs/stats.md.
 */
#ifndef OXMALLOC_H
#define OXMALLOC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when oxmalloc serves this process's malloc; 0 when the library was only dlopen()ed. */
int oxmalloc_is_active(void);

/* Write the statistics snapshot as JSON (or as the text report) into buf, NUL-terminated and
 * truncated to len bytes. Returns the length the whole output needs, excluding the NUL, like
 * snprintf: call with len 0 to size the buffer. */
size_t oxmalloc_stats_json(char *buf, size_t len);
size_t oxmalloc_stats_text(char *buf, size_t len);

/* Store the statistic called name in *out and return 1; return 0 for an unknown name.
 * Names (all in bytes unless noted):
 *   oxmalloc.in_use_bytes            (also generic.current_allocated_bytes)
 *   oxmalloc.small_in_use_bytes      oxmalloc.large_in_use_bytes
 *   oxmalloc.requested_bytes         oxmalloc.peak_active_bytes
 *   oxmalloc.thread_cache_bytes      oxmalloc.transfer_cache_bytes
 *   oxmalloc.central_free_bytes      oxmalloc.span_waste_bytes
 *   oxmalloc.page_heap_free_bytes    oxmalloc.released_bytes
 *   oxmalloc.released_bytes_total    oxmalloc.metadata_bytes
 *   oxmalloc.mapped_bytes            (also generic.heap_size)
 *   oxmalloc.rss_bytes               oxmalloc.largest_free_run_bytes
 *   oxmalloc.internal_fragmentation_bytes  oxmalloc.external_fragmentation_bytes
 *   oxmalloc.large_allocations (count)     oxmalloc.large_allocations_total (count)
 *   oxmalloc.allocations_total (count)     oxmalloc.frees_total (count)
 *   oxmalloc.bytes_allocated_total   oxmalloc.thread_caches (count)
 *   oxmalloc.cache_reclaims_total (count)  oxmalloc.cache_reclaimed_bytes_total */
int oxmalloc_get_numeric_property(const char *name, size_t *out);

/* Return free memory to the OS (including the calling thread's cache and the caches of
 * threads asleep in a system call). Returns the bytes released. malloc_trim(0) does the same and returns 1 if anything was released. */
size_t oxmalloc_release_free_memory(void);

/* Heap limit in bytes (0 = none; OXMALLOC_HEAP_LIMIT sets it at start-up). Past the limit,
 * allocations return NULL with errno ENOMEM after one release of cached memory and a retry,
 * with a failure report, instead of growing the heap. */
void oxmalloc_set_heap_limit(size_t bytes);
size_t oxmalloc_heap_limit(void);

/* Large-allocation reports from this many bytes on (SIZE_MAX: off). Default 1 GiB, or
 * OXMALLOC_LARGE_ALLOC_REPORT_THRESHOLD. */
void oxmalloc_set_large_alloc_threshold(size_t bytes);

/* Hooks replacing the default reports; pass NULL to restore them. They run on the allocating
 * thread with no allocator lock held. Allocations made inside a hook are served normally but
 * trigger no hook or report (no recursion). */
#define OXMALLOC_FAILURE_OS 1         /* the OS refused to map more memory */
#define OXMALLOC_FAILURE_HEAP_LIMIT 2 /* the heap limit would have been exceeded */
typedef void (*oxmalloc_large_alloc_hook)(size_t size, void *addr, void *user);
typedef void (*oxmalloc_failure_hook)(size_t size, size_t align, int reason, void *user);
void oxmalloc_set_large_alloc_hook(oxmalloc_large_alloc_hook hook, void *user);
void oxmalloc_set_alloc_failure_hook(oxmalloc_failure_hook hook, void *user);

#ifdef __cplusplus
}
#endif

#endif /* OXMALLOC_H */
