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

// MARK: - Blocks of small instances (SmallInstances.swift)

typedef float instnorm_float4x __attribute__((ext_vector_type(4)));

/// 4 floats widened exactly to doubles (one `vcvtps2pd`).
static inline __attribute__((always_inline))
instnorm_double4x instnorm_widen_float4(instnorm_float4x value) {
    return __builtin_convertvector(value, instnorm_double4x);
}

/// 4 doubles rounded to floats, to nearest even (one `vcvtpd2ps`).
static inline __attribute__((always_inline))
instnorm_float4x instnorm_narrow_double4(instnorm_double4x value) {
    return __builtin_convertvector(value, instnorm_float4x);
}

typedef long instnorm_long4x __attribute__((ext_vector_type(4)));

/// The square root of each lane, correctly rounded (one `vsqrtpd`; Swift's
/// SIMD `squareRoot()` takes one lane at a time).
static inline __attribute__((always_inline))
instnorm_double4x instnorm_sqrt_double4(instnorm_double4x value) {
    return __builtin_elementwise_sqrt(value);
}

/// 1 when a <= b in every lane, else 0 (a NaN lane compares false).
static inline __attribute__((always_inline))
int instnorm_all_at_most_double4(instnorm_double4x a, instnorm_double4x b) {
    instnorm_long4x atMost = a <= b;
    return __builtin_reduce_and(atMost) != 0;
}

/// Per lane a > b ? a : b, and a < b ? a : b: b wherever either is a NaN,
/// as x86's `vmaxpd` and `vminpd` take them (one instruction each; Swift's
/// `pointwiseMax` of doubles adds a NaN check, and AVX2 has no 64-bit
/// integer max). For the exact sums' pass over magnitudes.
static inline __attribute__((always_inline))
instnorm_double4x instnorm_max_or_second_double4(instnorm_double4x a, instnorm_double4x b) {
#if defined(__x86_64__)
    return __builtin_ia32_maxpd256(a, b);
#else
    instnorm_long4x greater = a > b;
    return (instnorm_double4x)(((instnorm_long4x)a & greater) | ((instnorm_long4x)b & ~greater));
#endif
}

static inline __attribute__((always_inline))
instnorm_double4x instnorm_min_or_second_double4(instnorm_double4x a, instnorm_double4x b) {
#if defined(__x86_64__)
    return __builtin_ia32_minpd256(a, b);
#else
    instnorm_long4x less = a < b;
    return (instnorm_double4x)(((instnorm_long4x)a & less) | ((instnorm_long4x)b & ~less));
#endif
}

/// Per lane, a <= b ? ifAtMost : otherwise (a NaN lane compares false).
static inline __attribute__((always_inline))
instnorm_double4x instnorm_select_at_most_double4(
    instnorm_double4x a, instnorm_double4x b, instnorm_double4x ifAtMost, instnorm_double4x otherwise) {
    instnorm_long4x atMost = a <= b;
    return (instnorm_double4x)(((instnorm_long4x)ifAtMost & atMost) | ((instnorm_long4x)otherwise & ~atMost));
}

typedef int instnorm_int8x __attribute__((ext_vector_type(8)));

/// Sliding windows of lane masks: the 8 (or 4) words at `first` lanes
/// before the end of the ones are set in lanes 0..<first, for any first
/// in 0...16 (0...8); a lane at `offset` of a wider vector starts its
/// window `offset` words later. One load makes the mask that a broadcast
/// of `first` and a compare per register made, once per vector that
/// crosses from one instance into the next.
static const int instnorm_first_lanes_int[32] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
static const long instnorm_first_lanes_long[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/// Lanes offset..<offset + 8 of a 16-lane vector whose lanes 0..<first
/// (0 ≤ first ≤ 16) are a's and the others b's, from those lanes of a and b.
static inline __attribute__((always_inline))
instnorm_float8x instnorm_blend_float8(instnorm_float8x a, instnorm_float8x b, long first, long offset) {
    instnorm_int8x window;
    __builtin_memcpy(&window, instnorm_first_lanes_int + 16 - first + offset, sizeof window);
    instnorm_int8x fromA = window < 0;  // a sign test the blend does itself
    return (instnorm_float8x)(((instnorm_int8x)a & fromA) | ((instnorm_int8x)b & ~fromA));
}

/// Lanes offset..<offset + 4 of an 8-lane vector whose lanes 0..<first
/// (0 ≤ first ≤ 8) are a's and the others b's.
static inline __attribute__((always_inline))
instnorm_double4x instnorm_blend_double4(instnorm_double4x a, instnorm_double4x b, long first, long offset) {
    instnorm_long4x window;
    __builtin_memcpy(&window, instnorm_first_lanes_long + 8 - first + offset, sizeof window);
    instnorm_long4x fromA = window < 0;
    return (instnorm_double4x)(((instnorm_long4x)a & fromA) | ((instnorm_long4x)b & ~fromA));
}

/// Four instances' statistics, (mean, variance, invstd) each, stored as
/// twelve consecutive doubles at `out` (any alignment): three stores.
static inline __attribute__((always_inline))
void instnorm_store_statistics4(double *out, instnorm_double4x mean, instnorm_double4x variance, instnorm_double4x invstd) {
    instnorm_double4x low = __builtin_shufflevector(mean, variance, 0, 4, 1, 5);   // m0 v0 m1 v1
    instnorm_double4x high = __builtin_shufflevector(mean, variance, 2, 6, 3, 7);  // m2 v2 m3 v3
    instnorm_double4x first = __builtin_shufflevector(low, invstd, 0, 1, 4, 2);    // m0 v0 r0 m1
    instnorm_double4x second = __builtin_shufflevector(
        __builtin_shufflevector(low, invstd, 3, 5, 3, 5), high, 0, 1, 4, 5);        // v1 r1 m2 v2
    instnorm_double4x third = __builtin_shufflevector(high, invstd, 6, 2, 3, 7);   // r2 m3 v3 r3
    __builtin_memcpy(out, &first, sizeof first);
    __builtin_memcpy(out + 4, &second, sizeof second);
    __builtin_memcpy(out + 8, &third, sizeof third);
}

typedef double instnorm_double2x __attribute__((ext_vector_type(2)));

/// `instnorm_store_statistics4` with streaming stores, in halves, so that
/// `out` need only be 16-byte aligned (as a large malloc'd table is): the
/// twelve doubles reach memory without the lines being read first.
static inline __attribute__((always_inline))
void instnorm_stream_statistics4(double *out, instnorm_double4x mean, instnorm_double4x variance, instnorm_double4x invstd) {
    instnorm_double2x pairs[6] = {
        {mean[0], variance[0]}, {invstd[0], mean[1]}, {variance[1], invstd[1]},
        {mean[2], variance[2]}, {invstd[2], mean[3]}, {variance[3], invstd[3]}};
    for (int pair = 0; pair < 6; pair++) __builtin_nontemporal_store(pairs[pair], (instnorm_double2x *)(out + 2 * pair));
}

/// A worker's claim on the next blocks of a run shared with other workers,
/// `*next` its first unclaimed block and `end` its end: 1/`divisor` of what
/// is left, at least `least` (and at most what is left); the first claimed
/// is returned and the number in `*count`, 0 when nothing is left. Relaxed:
/// a claim orders nothing else (the workers' results meet at the join).
static inline __attribute__((always_inline))
long instnorm_claim_share(long *next, long end, long divisor, long least, long *count) {
    long start = __atomic_load_n(next, __ATOMIC_RELAXED);
    for (;;) {
        if (start >= end) { *count = 0; return end; }
        long size = (end - start) / divisor;
        if (size < least) size = least;
        if (size > end - start) size = end - start;
        if (__atomic_compare_exchange_n(next, &start, start + size, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            *count = size;
            return start;
        }
    }
}

/// out[i] = base[stride · indices[i]] for i < 4, stored as one 32-byte
/// vector: `out` must be 32-byte aligned. Lanes stored one scalar (or one
/// half, as an unaligned 32-byte store is split) at a time and then loaded
/// as a vector wait for the stores to reach the cache, since a load that
/// several smaller stores must forward stalls; one vector store forwards
/// to the vector load that follows it.
static inline __attribute__((always_inline))
void instnorm_gather4(const double *base, long stride, const long *indices, double *out) {
    instnorm_double4x lanes = {base[stride * indices[0]], base[stride * indices[1]], base[stride * indices[2]],
                               base[stride * indices[3]]};
    // Opaque to the optimizer, which would otherwise store the two halves
    // it built the vector from. (Without AVX a vector is two registers.)
#ifdef __AVX__
    __asm__("" : "+x"(lanes));
#endif
    *(instnorm_double4x *)out = lanes;
}

/// The inverse of `instnorm_store_statistics4`: the means and invstds of
/// the four instances whose statistics are the twelve doubles at `source`,
/// stored at `means` and `invstds` (four each, any alignment).
static inline __attribute__((always_inline))
void instnorm_load_statistics4(const double *source, double *means, double *invstds) {
    instnorm_double4x first, second, third;
    __builtin_memcpy(&first, source, sizeof first);        // m0 v0 r0 m1
    __builtin_memcpy(&second, source + 4, sizeof second);  // v1 r1 m2 v2
    __builtin_memcpy(&third, source + 8, sizeof third);    // r2 m3 v3 r3
    instnorm_double4x low = __builtin_shufflevector(first, second, 0, 3, 2, 5);   // m0 m1 r0 r1
    instnorm_double4x high = __builtin_shufflevector(second, third, 2, 5, 4, 7);  // m2 m3 r2 r3
    instnorm_double4x mean = __builtin_shufflevector(low, high, 0, 1, 4, 5);
    instnorm_double4x invstd = __builtin_shufflevector(low, high, 2, 3, 6, 7);
    __builtin_memcpy(means, &mean, sizeof mean);
    __builtin_memcpy(invstds, &invstd, sizeof invstd);
}

/// The inverse of `instnorm_store_pairs4`, added: firsts[i] += pairs[2i],
/// seconds[i] += pairs[2i + 1] for i < 4 (any alignment; the three do not
/// overlap).
static inline __attribute__((always_inline))
void instnorm_add_pairs4(const double *pairs, double *firsts, double *seconds) {
    instnorm_double4x low, high, first, second;
    __builtin_memcpy(&low, pairs, sizeof low);
    __builtin_memcpy(&high, pairs + 4, sizeof high);
    __builtin_memcpy(&first, firsts, sizeof first);
    __builtin_memcpy(&second, seconds, sizeof second);
    first += __builtin_shufflevector(low, high, 0, 2, 4, 6);
    second += __builtin_shufflevector(low, high, 1, 3, 5, 7);
    __builtin_memcpy(firsts, &first, sizeof first);
    __builtin_memcpy(seconds, &second, sizeof second);
}

/// Four instances' (s1, s2) stored as eight consecutive doubles at `out`.
static inline __attribute__((always_inline))
void instnorm_store_pairs4(double *out, instnorm_double4x first, instnorm_double4x second) {
    instnorm_double4x low = __builtin_shufflevector(first, second, 0, 4, 1, 5);
    instnorm_double4x high = __builtin_shufflevector(first, second, 2, 6, 3, 7);
    __builtin_memcpy(out, &low, sizeof low);
    __builtin_memcpy(out + 4, &high, sizeof high);
}

/// `instnorm_store_pairs4` with streaming stores, in halves (`out` 16-byte aligned).
static inline __attribute__((always_inline))
void instnorm_stream_pairs4(double *out, instnorm_double4x first, instnorm_double4x second) {
    for (int lane = 0; lane < 4; lane++) {
        instnorm_double2x pair = {first[lane], second[lane]};
        __builtin_nontemporal_store(pair, (instnorm_double2x *)(out + 2 * lane));
    }
}

/// The 8x8 transpose of rows r0..r7 into c[0..7], in registers: unpack,
/// shuffle, then swap 128-bit halves, 24 shuffles in all.
static inline __attribute__((always_inline))
void instnorm_columns_float8x8(
    instnorm_float8x r0, instnorm_float8x r1, instnorm_float8x r2, instnorm_float8x r3,
    instnorm_float8x r4, instnorm_float8x r5, instnorm_float8x r6, instnorm_float8x r7,
    instnorm_float8x c[8]) {
    instnorm_float8x t0 = __builtin_shufflevector(r0, r1, 0, 8, 1, 9, 4, 12, 5, 13);
    instnorm_float8x t1 = __builtin_shufflevector(r0, r1, 2, 10, 3, 11, 6, 14, 7, 15);
    instnorm_float8x t2 = __builtin_shufflevector(r2, r3, 0, 8, 1, 9, 4, 12, 5, 13);
    instnorm_float8x t3 = __builtin_shufflevector(r2, r3, 2, 10, 3, 11, 6, 14, 7, 15);
    instnorm_float8x t4 = __builtin_shufflevector(r4, r5, 0, 8, 1, 9, 4, 12, 5, 13);
    instnorm_float8x t5 = __builtin_shufflevector(r4, r5, 2, 10, 3, 11, 6, 14, 7, 15);
    instnorm_float8x t6 = __builtin_shufflevector(r6, r7, 0, 8, 1, 9, 4, 12, 5, 13);
    instnorm_float8x t7 = __builtin_shufflevector(r6, r7, 2, 10, 3, 11, 6, 14, 7, 15);
    instnorm_float8x u0 = __builtin_shufflevector(t0, t2, 0, 1, 8, 9, 4, 5, 12, 13);
    instnorm_float8x u1 = __builtin_shufflevector(t0, t2, 2, 3, 10, 11, 6, 7, 14, 15);
    instnorm_float8x u2 = __builtin_shufflevector(t1, t3, 0, 1, 8, 9, 4, 5, 12, 13);
    instnorm_float8x u3 = __builtin_shufflevector(t1, t3, 2, 3, 10, 11, 6, 7, 14, 15);
    instnorm_float8x u4 = __builtin_shufflevector(t4, t6, 0, 1, 8, 9, 4, 5, 12, 13);
    instnorm_float8x u5 = __builtin_shufflevector(t4, t6, 2, 3, 10, 11, 6, 7, 14, 15);
    instnorm_float8x u6 = __builtin_shufflevector(t5, t7, 0, 1, 8, 9, 4, 5, 12, 13);
    instnorm_float8x u7 = __builtin_shufflevector(t5, t7, 2, 3, 10, 11, 6, 7, 14, 15);
    c[0] = __builtin_shufflevector(u0, u4, 0, 1, 2, 3, 8, 9, 10, 11);
    c[1] = __builtin_shufflevector(u1, u5, 0, 1, 2, 3, 8, 9, 10, 11);
    c[2] = __builtin_shufflevector(u2, u6, 0, 1, 2, 3, 8, 9, 10, 11);
    c[3] = __builtin_shufflevector(u3, u7, 0, 1, 2, 3, 8, 9, 10, 11);
    c[4] = __builtin_shufflevector(u0, u4, 4, 5, 6, 7, 12, 13, 14, 15);
    c[5] = __builtin_shufflevector(u1, u5, 4, 5, 6, 7, 12, 13, 14, 15);
    c[6] = __builtin_shufflevector(u2, u6, 4, 5, 6, 7, 12, 13, 14, 15);
    c[7] = __builtin_shufflevector(u3, u7, 4, 5, 6, 7, 12, 13, 14, 15);
}

/// The 8x8 transpose of rows r0..r7 into columns, stored at `columns`,
/// column c at columns + c * columnStride.
static inline __attribute__((always_inline))
void instnorm_store_columns_float8x8(
    instnorm_float8x r0, instnorm_float8x r1, instnorm_float8x r2, instnorm_float8x r3,
    instnorm_float8x r4, instnorm_float8x r5, instnorm_float8x r6, instnorm_float8x r7,
    float *columns, long columnStride) {
    instnorm_float8x c[8];
    instnorm_columns_float8x8(r0, r1, r2, r3, r4, r5, r6, r7, c);
    for (int column = 0; column < 8; column++) {
        __builtin_memcpy(columns + column * columnStride, &c[column], sizeof c[column]);
    }
}

/// The 4x4 transpose inside each 128-bit half of four registers: lane
/// 4h + c of result r is lane 4h + r of input c. 8 shuffles, none across
/// halves.
static inline __attribute__((always_inline))
void instnorm_transpose_halves4x4(instnorm_float8x r[4]) {
    instnorm_float8x t0 = __builtin_shufflevector(r[0], r[1], 0, 8, 1, 9, 4, 12, 5, 13);
    instnorm_float8x t1 = __builtin_shufflevector(r[2], r[3], 0, 8, 1, 9, 4, 12, 5, 13);
    instnorm_float8x t2 = __builtin_shufflevector(r[0], r[1], 2, 10, 3, 11, 6, 14, 7, 15);
    instnorm_float8x t3 = __builtin_shufflevector(r[2], r[3], 2, 10, 3, 11, 6, 14, 7, 15);
    r[0] = __builtin_shufflevector(t0, t1, 0, 1, 8, 9, 4, 5, 12, 13);
    r[1] = __builtin_shufflevector(t0, t1, 2, 3, 10, 11, 6, 7, 14, 15);
    r[2] = __builtin_shufflevector(t2, t3, 0, 1, 8, 9, 4, 5, 12, 13);
    r[3] = __builtin_shufflevector(t2, t3, 2, 3, 10, 11, 6, 7, 14, 15);
}

/// Four values of a row at `address`, floats or halves widened exactly.
static inline __attribute__((always_inline))
instnorm_float4x instnorm_load_row4(const void *address, int halves) {
    if (halves) {
        _Float16 values __attribute__((ext_vector_type(4)));
        __builtin_memcpy(&values, address, sizeof values);
        return __builtin_convertvector(values, instnorm_float4x);
    }
    instnorm_float4x values;
    __builtin_memcpy(&values, address, sizeof values);
    return values;
}

/// Columns 4·part ..< 4·part + 4 of an 8x8 tile (row r at rows + r *
/// rowStride elements, any alignment; floats or halves widened exactly),
/// each as the 8 rows' values in row order: the loads pair row k's four
/// values with row k + 4's in one register (a 128-bit load into each half,
/// which the load ports do), so that the halves' 4x4 transposes leave
/// whole columns, 8 shuffles and nothing across halves.
static inline __attribute__((always_inline))
void instnorm_tile_part_columns(const void *rows, long rowStride, int halves, int part, instnorm_float8x c[4]) {
    long size = halves ? 2 : 4;
    const char *base = (const char *)rows + 4 * part * size;
    for (int k = 0; k < 4; k++) {
        instnorm_float4x low = instnorm_load_row4(base + k * rowStride * size, halves);
        instnorm_float4x high = instnorm_load_row4(base + (k + 4) * rowStride * size, halves);
        c[k] = __builtin_shufflevector(low, high, 0, 1, 2, 3, 4, 5, 6, 7);
    }
    instnorm_transpose_halves4x4(c);
}

/// Per row b of an 8x8 tile of x and of weights w (one instance a row),
/// over its first `count` (1 to 8) positions, column by column from zero,
/// as `laneSums` adds a group of the transposed columns:
///     sums[0..<8] = Σ w        sums[8..<16] = Σ w·(x − center), fused
/// without the columns going through memory. w is dy at `weights` when
/// `weighted` (a constant at every call), or x − center itself: Σ (x − K),
/// Σ (x − K)² for the statistics about the shift K = center. Four columns
/// at a time, so that x's, w's and the sums stay in 16 registers.
static inline __attribute__((always_inline))
void instnorm_tile_sums_counted(int weighted, const void *weights, const void *x, long rowStride, int halves,
                                instnorm_float8x center, long count, float *sums) {
    instnorm_float8x first = 0, second = 0;
    for (int part = 0; part < 2 && 4 * part < count; part++) {
        instnorm_float8x values[4], terms[4];
        instnorm_tile_part_columns(x, rowStride, halves, part, values);
        if (weighted) instnorm_tile_part_columns(weights, rowStride, halves, part, terms);
        for (int m = 0; m < 4 && 4 * part + m < count; m++) {
            instnorm_float8x deviation = values[m] - center;
            instnorm_float8x term = weighted ? terms[m] : deviation;
            first = first + term;
            second = __builtin_elementwise_fma(term, deviation, second);
        }
    }
    __builtin_memcpy(sums, &first, sizeof first);
    __builtin_memcpy(sums + 8, &second, sizeof second);
}

/// `instnorm_tile_sums_counted`, a full group's count a constant: its
/// columns and parts unroll without a test per column.
static inline __attribute__((always_inline))
void instnorm_tile_sums_of(int weighted, const void *weights, const void *x, long rowStride, int halves,
                           instnorm_float8x center, long count, float *sums) {
    if (count == 8) instnorm_tile_sums_counted(weighted, weights, x, rowStride, halves, center, 8, sums);
    else instnorm_tile_sums_counted(weighted, weights, x, rowStride, halves, center, count, sums);
}

/// `instnorm_tile_sums_of` with dy at `weights`: Σ dy, Σ dy·(x − center).
static inline __attribute__((always_inline))
void instnorm_tile_gradient_sums(const void *weights, const void *x, long rowStride, int halves, instnorm_float8x center,
                                 long count, float *sums) {
    instnorm_tile_sums_of(1, weights, x, rowStride, halves, center, count, sums);
}

/// `instnorm_tile_sums_of` about the shift: Σ (x − K), Σ (x − K)².
static inline __attribute__((always_inline))
void instnorm_tile_shifted_sums(const void *x, long rowStride, int halves, instnorm_float8x center, long count,
                                float *sums) {
    instnorm_tile_sums_of(0, 0, x, rowStride, halves, center, count, sums);
}

/// out[r] = rows[r * rowStride] for r < 8, floats or halves widened: the
/// first value of each of eight instances.
static inline __attribute__((always_inline))
void instnorm_first_values8(const void *rows, long rowStride, int halves, float *out) {
    for (int row = 0; row < 8; row++) {
        out[row] = halves ? (float)((const _Float16 *)rows)[row * rowStride] : ((const float *)rows)[row * rowStride];
    }
}

/// columns[c * columnStride + r] = rows[r * rowStride + c] for r, c < 8
/// (any alignment).
static inline __attribute__((always_inline))
void instnorm_transpose_float8x8(const float *rows, long rowStride, float *columns, long columnStride) {
    instnorm_float8x r[8];
    for (int row = 0; row < 8; row++) __builtin_memcpy(&r[row], rows + row * rowStride, sizeof r[row]);
    instnorm_store_columns_float8x8(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], columns, columnStride);
}

/// The same from halves, each widened exactly to float (rowStride in halves).
static inline __attribute__((always_inline))
void instnorm_transpose_half8x8(const void *rows, long rowStride, float *columns, long columnStride) {
    instnorm_float8x r[8];
    for (int row = 0; row < 8; row++) r[row] = instnorm_load_half8((const _Float16 *)rows + row * rowStride);
    instnorm_store_columns_float8x8(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], columns, columnStride);
}

/// columns[c * columnStride + r] = rows[r * rowStride + c] for r, c < 4
/// (any alignment): unpack, then swap 128-bit halves, 8 shuffles.
static inline __attribute__((always_inline))
void instnorm_transpose_double4x4(const double *rows, long rowStride, double *columns, long columnStride) {
    instnorm_double4x r[4];
    for (int row = 0; row < 4; row++) __builtin_memcpy(&r[row], rows + row * rowStride, sizeof r[row]);
    instnorm_double4x t0 = __builtin_shufflevector(r[0], r[1], 0, 4, 2, 6);
    instnorm_double4x t1 = __builtin_shufflevector(r[0], r[1], 1, 5, 3, 7);
    instnorm_double4x t2 = __builtin_shufflevector(r[2], r[3], 0, 4, 2, 6);
    instnorm_double4x t3 = __builtin_shufflevector(r[2], r[3], 1, 5, 3, 7);
    instnorm_double4x c[4] = {
        __builtin_shufflevector(t0, t2, 0, 1, 4, 5),
        __builtin_shufflevector(t1, t3, 0, 1, 4, 5),
        __builtin_shufflevector(t0, t2, 2, 3, 6, 7),
        __builtin_shufflevector(t1, t3, 2, 3, 6, 7),
    };
    for (int column = 0; column < 4; column++) {
        __builtin_memcpy(columns + column * columnStride, &c[column], sizeof c[column]);
    }
}

/// Sixteen instances of four values (64 floats at `rows`, any alignment)
/// as four columns of sixteen lanes: columns[16·m + b] = rows[4·b + m].
/// Per eight instances, register k pairs instance k with instance k + 4
/// (one in each 128-bit half), so that the in-half transpose leaves the
/// lanes in instance order: 16 shuffles for the block, where two 8x8
/// tiles took 48 and half their columns were past the instances.
static inline __attribute__((always_inline))
void instnorm_transpose_quads_float(const float *rows, float *columns) {
    for (int half = 0; half < 2; half++) {
        instnorm_float8x r[4];
        for (int k = 0; k < 4; k++) {
            instnorm_float4x low, high;
            __builtin_memcpy(&low, rows + 32 * half + 4 * k, sizeof low);
            __builtin_memcpy(&high, rows + 32 * half + 16 + 4 * k, sizeof high);
            r[k] = __builtin_shufflevector(low, high, 0, 1, 2, 3, 4, 5, 6, 7);
        }
        instnorm_transpose_halves4x4(r);
        for (int m = 0; m < 4; m++) __builtin_memcpy(columns + 16 * m + 8 * half, &r[m], sizeof r[m]);
    }
}

/// The same from 64 halves, each widened exactly to float (through a
/// widened copy on the stack).
static inline __attribute__((always_inline))
void instnorm_transpose_quads_half(const void *rows, float *columns) {
    float widened[64];
    for (int vector = 0; vector < 8; vector++) {
        instnorm_float8x values = instnorm_load_half8((const _Float16 *)rows + 8 * vector);
        __builtin_memcpy(widened + 8 * vector, &values, sizeof values);
    }
    instnorm_transpose_quads_float(widened, columns);
}

/// The inverse of `instnorm_transpose_quads_float`: rows[4·b + m] =
/// columns[16·m + b] for sixteen instances (any alignment, no overlap).
static inline __attribute__((always_inline))
void instnorm_untranspose_quads_float(const float *columns, float *rows) {
    for (int half = 0; half < 2; half++) {
        instnorm_float8x r[4];
        for (int m = 0; m < 4; m++) __builtin_memcpy(&r[m], columns + 16 * m + 8 * half, sizeof r[m]);
        instnorm_transpose_halves4x4(r);
        // r[k] holds instance k (low half) and instance k + 4 (high half).
        instnorm_float8x first = __builtin_shufflevector(r[0], r[1], 0, 1, 2, 3, 8, 9, 10, 11);
        instnorm_float8x second = __builtin_shufflevector(r[2], r[3], 0, 1, 2, 3, 8, 9, 10, 11);
        instnorm_float8x third = __builtin_shufflevector(r[0], r[1], 4, 5, 6, 7, 12, 13, 14, 15);
        instnorm_float8x fourth = __builtin_shufflevector(r[2], r[3], 4, 5, 6, 7, 12, 13, 14, 15);
        __builtin_memcpy(rows + 32 * half, &first, sizeof first);
        __builtin_memcpy(rows + 32 * half + 8, &second, sizeof second);
        __builtin_memcpy(rows + 32 * half + 16, &third, sizeof third);
        __builtin_memcpy(rows + 32 * half + 24, &fourth, sizeof fourth);
    }
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

/// `instnorm_prefetch` of `lines` lines at `first` and as many at
/// `second` (line k of each 64·k bytes on), in one loop two lines a turn:
/// the x and dy of a block ask together, about 1.5 instructions a line
/// where a loop per range took 4 (and Swift's checked `stride` 10). An odd
/// count asks for one line more of each range, a hint past its end that
/// never faults; `second` null asks for `first`'s lines alone.
static inline __attribute__((always_inline))
void instnorm_prefetch_line_pairs(const void *first, const void *second, long lines) {
    const char *a = (const char *)first, *b = (const char *)second;
    long end = 64 * lines;
    if (!b) {
        for (long offset = 0; offset < end; offset += 128) {
            __builtin_prefetch(a + offset, 0, 2);
            __builtin_prefetch(a + offset + 64, 0, 2);
        }
        return;
    }
    for (long offset = 0; offset < end; offset += 128) {
        __builtin_prefetch(a + offset, 0, 2);
        __builtin_prefetch(a + offset + 64, 0, 2);
        __builtin_prefetch(b + offset, 0, 2);
        __builtin_prefetch(b + offset + 64, 0, 2);
    }
}

/// `instnorm_prefetch` at `first` and every 64 bytes after it below `end`
/// (from a line's start: every line of the range).
static inline __attribute__((always_inline))
void instnorm_prefetch_lines(const void *first, const void *end) {
    long bytes = (const char *)end - (const char *)first;
    if (bytes > 0) instnorm_prefetch_line_pairs(first, 0, (bytes + 63) / 64);
}

#endif
