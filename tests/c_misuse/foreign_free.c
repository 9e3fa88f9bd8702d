/* Frees memory oxmalloc never handed out; oxmalloc must report it and abort.
 * usage: foreign_free stack|mmap|interior-large */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "stack";
    if (!strcmp(what, "stack")) {
        char buf[64];
        free(buf + 16);
    } else if (!strcmp(what, "mmap")) {
        char *m = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        free(m);
    } else {
        char *p = malloc(4 << 20);
        free(p + 8192 * 3);
    }
    return 0; /* not reached */
}
