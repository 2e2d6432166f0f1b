// Declarations for NPYFuzz; not a stable API.
#include <stddef.h>
#include <stdint.h>

// libFuzzer's driver; defined only in a build with -sanitize=fuzzer, and
// referenced only by such a build.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

// glibc's, declared by <sys/mman.h> only under _GNU_SOURCE.
int memfd_create(const char *name, unsigned int flags);
