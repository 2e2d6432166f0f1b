// Not a stable API: the two things Swift cannot say itself, used by the
// InstanceNorm kernels.
#ifndef INSTANCE_NORM_SHIMS_H
#define INSTANCE_NORM_SHIMS_H

typedef float instnorm_float8x __attribute__((ext_vector_type(8)));
typedef double instnorm_double4x __attribute__((ext_vector_type(4)));

/// A non-temporal (streaming) store of one 32-byte vector: written to memory
/// without its cache line being read first. `address` must be 32-byte
/// aligned. (32 bytes, not a whole 64-byte line: a 64-byte vector argument
/// goes through memory under AVX2, and the call is then not inlined.)
static inline __attribute__((always_inline))
void instnorm_stream_store_float8(float *address, instnorm_float8x value) {
    __builtin_nontemporal_store(value, (instnorm_float8x *)address);
}

static inline __attribute__((always_inline))
void instnorm_stream_store_double4(double *address, instnorm_double4x value) {
    __builtin_nontemporal_store(value, (instnorm_double4x *)address);
}

/// Orders the streaming stores before any later store: call once after a
/// kernel that streamed, before its output is handed to another thread.
static inline __attribute__((always_inline))
void instnorm_store_fence(void) {
#if defined(__x86_64__)
    __builtin_ia32_sfence();
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

/// Asks for the cache line at `address` to be brought into the L2 cache
/// ahead of use: a hint that never faults. For access patterns the hardware
/// prefetchers do not follow (the channels-last reductions).
static inline __attribute__((always_inline))
void instnorm_prefetch(const void *address) {
    __builtin_prefetch(address, 0, 2);
}

#endif
