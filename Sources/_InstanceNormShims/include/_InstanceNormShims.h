// Not a stable API: the two things Swift cannot say itself, used by the
// InstanceNorm kernels.
#ifndef INSTANCE_NORM_SHIMS_H
#define INSTANCE_NORM_SHIMS_H

typedef float instnorm_float8x __attribute__((ext_vector_type(8)));
typedef double instnorm_double4x __attribute__((ext_vector_type(4)));
// Half-precision vectors stay on this side: Swift sees floats and addresses.
typedef _Float16 instnorm_half8x __attribute__((ext_vector_type(8)));
typedef _Float16 instnorm_half16x __attribute__((ext_vector_type(16)));

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

/// 8 halves at `address` (any alignment), widened exactly to floats: one
/// `vcvtph2ps` with F16C. (Swift's generic SIMD conversion gives the same
/// instruction when inlined, but the kernels' loops call it out of line.)
static inline __attribute__((always_inline))
instnorm_float8x instnorm_load_half8(const void *address) {
    instnorm_half8x halves;
    __builtin_memcpy(&halves, address, sizeof halves);
    return __builtin_convertvector(halves, instnorm_float8x);
}

/// 8 floats rounded to half (to nearest, ties to even: `vcvtps2ph`) and
/// stored at `address` (any alignment).
static inline __attribute__((always_inline))
void instnorm_store_half8(void *address, instnorm_float8x value) {
    instnorm_half8x halves = __builtin_convertvector(value, instnorm_half8x);
    __builtin_memcpy(address, &halves, sizeof halves);
}

/// 16 floats rounded to half, written as 32 bytes with a streaming store;
/// `address` must be 32-byte aligned.
static inline __attribute__((always_inline))
void instnorm_stream_store_half16(void *address, instnorm_float8x low, instnorm_float8x high) {
    instnorm_half16x halves = __builtin_shufflevector(
        __builtin_convertvector(low, instnorm_half8x), __builtin_convertvector(high, instnorm_half8x),
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __builtin_nontemporal_store(halves, (instnorm_half16x *)address);
}

/// sums[0..<8] += the 8 floats, each widened exactly to double (two
/// `vcvtps2pd`); `sums` may have any alignment.
static inline __attribute__((always_inline))
void instnorm_add_widened_float8(double *sums, instnorm_float8x value) {
    instnorm_double4x low = __builtin_convertvector(__builtin_shufflevector(value, value, 0, 1, 2, 3), instnorm_double4x);
    instnorm_double4x high = __builtin_convertvector(__builtin_shufflevector(value, value, 4, 5, 6, 7), instnorm_double4x);
    instnorm_double4x first, second;
    __builtin_memcpy(&first, sums, sizeof first);
    __builtin_memcpy(&second, sums + 4, sizeof second);
    first += low;
    second += high;
    __builtin_memcpy(sums, &first, sizeof first);
    __builtin_memcpy(sums + 4, &second, sizeof second);
}

/// Fences issued by this thread (`instnorm_store_fence`), for the tests: a
/// missing fence changes no result a test can see on x86, so they count it.
extern _Thread_local unsigned long instnorm_thread_store_fences;

/// `instnorm_thread_store_fences`, for Swift (which cannot see thread-locals).
unsigned long instnorm_store_fences_on_this_thread(void);

/// Orders the streaming stores before any later store: call once after a
/// kernel that streamed, before its output is handed to another thread.
static inline __attribute__((always_inline))
void instnorm_store_fence(void) {
    instnorm_thread_store_fences += 1;
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
