// What the kernels' schedules can reach on this machine, measured side by
// side in one run: the reasoning behind the kernels' schedules, and behind
// the speed targets that are not met.
// Not part of the library or of the tests; built and run by
// scripts/kernel-limits. Float32, one thread, AVX2 (x86-64-v3), tensors of
// (N, 64, S) with N·64·S values each (default the bench's 64,64,56,56).
//
// Part 1, backward, channels first: the traffic is read x, dy, write dx
// (12 B per value, the floor against STREAM add). `two_pass` is the plain
// schedule: per instance, the sums Σdy, Σdy·x from memory, then dx from L1
// with streaming stores. `single_pass` writes dx from x, dy with no sums:
// the ceiling of this traffic on one core. `fused_next` overlaps the two
// passes (dx of instance i in the same loop as the sums of i + 1), and
// `fused_prefetch_l2` does so with the summed lines prefetched into L2 12 KiB
// ahead: the library's schedule since the fused backward (the plain
// `two_pass` remains its schedule below 8 KiB per instance).
//
// Part 2, forward, channels last against channels first, and channels first
// fused (`nchw_forward_fused`, y of one instance written in the loop that
// sums the next, as `nchw_forward` writes it after): `nhwc_registers`
// is a per-sample two-pass forward with all 2·64 channel sums in registers,
// which the channels-first lane order (position p of a chunk into lane
// p mod 16) cannot use; `nhwc_lane_order` keeps that order, with its 16·C
// lane accumulators in L1, as a layout-independent result must. Part 3 does
// the same for the backward of the shape with the largest samples.
//
// Values are not checked here: these loops are yardsticks, not kernels.
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { C = 64, LANES = 16 };
static size_t N = 64, S = 3136, E, streamCount;
static float *x, *dy, *dx;
static double *a, *b, *c;
static double sumDy[1 << 16], sumDyX[1 << 16];
static float meanOf[C] __attribute__((aligned(64))), scaleOf[C] __attribute__((aligned(64)));
static float laneSum[LANES * C] __attribute__((aligned(64))), laneSquares[LANES * C] __attribute__((aligned(64)));

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float horizontal(__m256 v) {
    float lanes[8];
    _mm256_storeu_ps(lanes, v);
    float total = 0;
    for (int i = 0; i < 8; i++) total += lanes[i];
    return total;
}

__attribute__((noinline)) static void stream_add(void) {
    for (size_t i = 0; i < streamCount; i++) c[i] = a[i] + b[i];
}

// As the library computes them: x centered on the mean, dy on its mean
// (the subtractions keep large-mean instances accurate and cost 2-4%).
static float centerX = 0.5f, centerDy = 0.25f;

// Per lane: Σ dy and Σ dy·(x − center) over count values, lane l summing
// the values at l mod 8 (for channels last with C = 8, lane = channel).
static inline void lane_sums(const float *xs, const float *dys, size_t count, __m256 *sumDyLanes, __m256 *productLanes) {
    __m256 dy0 = _mm256_setzero_ps(), dy1 = dy0, p0 = dy0, p1 = dy0, center = _mm256_set1_ps(centerX);
    for (size_t i = 0; i < count; i += 16) {
        __m256 g0 = _mm256_load_ps(dys + i), g1 = _mm256_load_ps(dys + i + 8);
        dy0 = _mm256_add_ps(dy0, g0);
        dy1 = _mm256_add_ps(dy1, g1);
        p0 = _mm256_fmadd_ps(g0, _mm256_sub_ps(_mm256_load_ps(xs + i), center), p0);
        p1 = _mm256_fmadd_ps(g1, _mm256_sub_ps(_mm256_load_ps(xs + i + 8), center), p1);
    }
    *sumDyLanes = _mm256_add_ps(dy0, dy1);
    *productLanes = _mm256_add_ps(p0, p1);
}

static inline void instance_sums(const float *xs, const float *dys, size_t count, double *s1, double *s2) {
    __m256 sumDyLanes, productLanes;
    lane_sums(xs, dys, count, &sumDyLanes, &productLanes);
    *s1 = horizontal(sumDyLanes);
    *s2 = horizontal(productLanes);
}

static inline __m256 gradient(const float *xs, const float *dys, size_t i, __m256 k, __m256 p, __m256 q) {
    __m256 centeredDy = _mm256_sub_ps(_mm256_load_ps(dys + i), _mm256_set1_ps(centerDy));
    __m256 centeredX = _mm256_sub_ps(_mm256_load_ps(xs + i), _mm256_set1_ps(centerX));
    return _mm256_fmadd_ps(k, centeredDy, _mm256_fmadd_ps(p, centeredX, q));
}

// Per instance: the sums from memory, then dx from L1 with streaming stores.
static void backward_channels_first(size_t instances, size_t count) {
    for (size_t n = 0; n < instances; n++) {
        const float *xs = x + n * count, *dys = dy + n * count;
        instance_sums(xs, dys, count, &sumDy[n], &sumDyX[n]);
        __m256 k = _mm256_set1_ps(1), p = _mm256_set1_ps((float)(sumDyX[n] * 1e-9)), q = _mm256_set1_ps((float)(sumDy[n] * 1e-9));
        for (size_t i = 0; i < count; i += 8) _mm256_stream_ps(dx + n * count + i, gradient(xs, dys, i, k, p, q));
    }
    _mm_sfence();
}

__attribute__((noinline)) static void two_pass(void) { backward_channels_first(N * C, S); }

__attribute__((target("avx512f"), noinline)) static void two_pass_64_byte_stores(void) {
    for (size_t n = 0; n < N * C; n++) {
        const float *xs = x + n * S, *dys = dy + n * S;
        instance_sums(xs, dys, S, &sumDy[n], &sumDyX[n]);
        __m512 k = _mm512_set1_ps(1), p = _mm512_set1_ps((float)(sumDyX[n] * 1e-6)), q = _mm512_set1_ps((float)(sumDy[n] * 1e-6));
        __m512 meanDy = _mm512_set1_ps(centerDy), mean = _mm512_set1_ps(centerX);
        for (size_t i = 0; i < S; i += 16) {
            __m512 centeredDy = _mm512_sub_ps(_mm512_load_ps(dys + i), meanDy), centeredX = _mm512_sub_ps(_mm512_load_ps(xs + i), mean);
            _mm512_stream_ps(dx + n * S + i, _mm512_fmadd_ps(k, centeredDy, _mm512_fmadd_ps(p, centeredX, q)));
        }
    }
    _mm_sfence();
}

__attribute__((noinline)) static void single_pass(void) {
    __m256 k = _mm256_set1_ps(1), p = _mm256_set1_ps(0.25f), q = _mm256_set1_ps(0.5f);
    for (size_t i = 0; i < E; i += 8) _mm256_stream_ps(dx + i, gradient(x, dy, i, k, p, q));
    _mm_sfence();
}

// dx of instance n in the loop that sums instance n + 1; with `prefetch`, the
// summed lines are asked for into L2 12 KiB ahead (the library's schedule).
static inline __attribute__((always_inline)) void fused(int prefetch) {
    instance_sums(x, dy, S, &sumDy[0], &sumDyX[0]);
    for (size_t n = 0; n < N * C; n++) {
        const float *xs = x + n * S, *dys = dy + n * S;
        __m256 k = _mm256_set1_ps(1), p = _mm256_set1_ps((float)(sumDyX[n] * 1e-6)), q = _mm256_set1_ps((float)(sumDy[n] * 1e-6));
        if (n + 1 == N * C) {
            for (size_t i = 0; i < S; i += 8) _mm256_stream_ps(dx + n * S + i, gradient(xs, dys, i, k, p, q));
            break;
        }
        const float *nextX = xs + S, *nextDy = dys + S;
        __m256 dy0 = _mm256_setzero_ps(), dy1 = dy0, p0 = dy0, p1 = dy0;
        for (size_t i = 0; i < S; i += 16) {
            if (prefetch) {
                _mm_prefetch((const char *)(nextX + i + 3072), _MM_HINT_T1);
                _mm_prefetch((const char *)(nextDy + i + 3072), _MM_HINT_T1);
            }
            __m256 g0 = _mm256_load_ps(nextDy + i), g1 = _mm256_load_ps(nextDy + i + 8);
            dy0 = _mm256_add_ps(dy0, g0);
            dy1 = _mm256_add_ps(dy1, g1);
            p0 = _mm256_fmadd_ps(g0, _mm256_sub_ps(_mm256_load_ps(nextX + i), _mm256_set1_ps(centerX)), p0);
            p1 = _mm256_fmadd_ps(g1, _mm256_sub_ps(_mm256_load_ps(nextX + i + 8), _mm256_set1_ps(centerX)), p1);
            _mm256_stream_ps(dx + n * S + i, gradient(xs, dys, i, k, p, q));
            _mm256_stream_ps(dx + n * S + i + 8, gradient(xs, dys, i + 8, k, p, q));
        }
        sumDy[n + 1] = horizontal(_mm256_add_ps(dy0, dy1));
        sumDyX[n + 1] = horizontal(_mm256_add_ps(p0, p1));
    }
    _mm_sfence();
}

__attribute__((noinline)) static void fused_next(void) { fused(0); }

__attribute__((noinline)) static void fused_prefetch_l2(void) { fused(1); }

__attribute__((noinline)) static void sums_only(void) {
    for (size_t n = 0; n < N * C; n++) instance_sums(x + n * S, dy + n * S, S, &sumDy[n], &sumDyX[n]);
}

__attribute__((noinline)) static void streaming_writes_only(void) {
    __m256 v = _mm256_set1_ps(1.5f);
    for (size_t i = 0; i < E; i += 8) _mm256_stream_ps(dx + i, v);
    _mm_sfence();
}

// Part 2: forward, y = (x − mean)·scale, streaming stores; dx holds y.

static inline void write_normalized(const float *xs, float *ys, size_t count) {
    for (size_t i = 0; i < count; i += 8) {
        size_t channel = i % C;
        __m256 v = _mm256_sub_ps(_mm256_load_ps(xs + i), _mm256_load_ps(meanOf + channel));
        _mm256_stream_ps(ys + i, _mm256_mul_ps(v, _mm256_load_ps(scaleOf + channel)));
    }
}

static void statistics_of(const float *sums, const float *squares, size_t count) {
    for (int ch = 0; ch < C; ch++) {
        meanOf[ch] = sums[ch] / count;
        scaleOf[ch] = 1 / (1e-3f + squares[ch] / count);
    }
}

__attribute__((noinline)) static void nchw_forward(void) {
    for (size_t n = 0; n < N * C; n++) {
        const float *xs = x + n * S;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, q0 = s0, q1 = s0;
        for (size_t i = 0; i < S; i += 16) {
            __m256 v0 = _mm256_load_ps(xs + i), v1 = _mm256_load_ps(xs + i + 8);
            s0 = _mm256_add_ps(s0, v0);
            s1 = _mm256_add_ps(s1, v1);
            q0 = _mm256_fmadd_ps(v0, v0, q0);
            q1 = _mm256_fmadd_ps(v1, v1, q1);
        }
        __m256 mean = _mm256_set1_ps(horizontal(_mm256_add_ps(s0, s1)) / S);
        __m256 scale = _mm256_set1_ps(1 / (1e-3f + horizontal(_mm256_add_ps(q0, q1)) / S));
        for (size_t i = 0; i < S; i += 8)
            _mm256_stream_ps(dx + n * S + i, _mm256_mul_ps(_mm256_sub_ps(_mm256_load_ps(xs + i), mean), scale));
    }
    _mm_sfence();
}

// nchw_forward with y of instance n streamed out in the loop that sums
// instance n + 1, whose lines are asked into L2 12 KiB ahead: the library's
// forward schedule for runs of 4-128 KiB (`fusedForward`).
__attribute__((noinline)) static void nchw_forward_fused(void) {
    __m256 mean = _mm256_setzero_ps(), scale = mean;
    for (size_t n = 0; n <= N * C; n++) {
        const float *xs = x + n * S, *previous = xs - S;
        float *ys = dx + (n - 1) * S;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, q0 = s0, q1 = s0;
        for (size_t i = 0; i < S; i += 16) {
            if (n < N * C) {
                _mm_prefetch((const char *)(xs + i + 3072), _MM_HINT_T1);
                __m256 v0 = _mm256_load_ps(xs + i), v1 = _mm256_load_ps(xs + i + 8);
                s0 = _mm256_add_ps(s0, v0);
                s1 = _mm256_add_ps(s1, v1);
                q0 = _mm256_fmadd_ps(v0, v0, q0);
                q1 = _mm256_fmadd_ps(v1, v1, q1);
            }
            if (n > 0) {
                _mm256_stream_ps(ys + i, _mm256_mul_ps(_mm256_sub_ps(_mm256_load_ps(previous + i), mean), scale));
                _mm256_stream_ps(ys + i + 8, _mm256_mul_ps(_mm256_sub_ps(_mm256_load_ps(previous + i + 8), mean), scale));
            }
        }
        mean = _mm256_set1_ps(horizontal(_mm256_add_ps(s0, s1)) / S);
        scale = _mm256_set1_ps(1 / (1e-3f + horizontal(_mm256_add_ps(q0, q1)) / S));
    }
    _mm_sfence();
}

__attribute__((noinline)) static void stream_copy(void) {
    for (size_t i = 0; i < streamCount; i++) c[i] = a[i];
}

__attribute__((noinline)) static void nhwc_registers(void) {
    for (size_t n = 0; n < N; n++) {
        const float *xs = x + n * S * C;
        __m256 sums[C / 8], squares[C / 8];
        for (int v = 0; v < C / 8; v++) sums[v] = squares[v] = _mm256_setzero_ps();
        for (size_t row = 0; row < S; row++)
            for (int v = 0; v < C / 8; v++) {
                __m256 value = _mm256_load_ps(xs + row * C + 8 * v);
                sums[v] = _mm256_add_ps(sums[v], value);
                squares[v] = _mm256_fmadd_ps(value, value, squares[v]);
            }
        float sumsOf[C], squaresOf[C];
        for (int v = 0; v < C / 8; v++) {
            _mm256_storeu_ps(sumsOf + 8 * v, sums[v]);
            _mm256_storeu_ps(squaresOf + 8 * v, squares[v]);
        }
        statistics_of(sumsOf, squaresOf, S);
        write_normalized(xs, dx + n * S * C, S * C);
    }
    _mm_sfence();
}

__attribute__((noinline)) static void nhwc_lane_order(void) {
    for (size_t n = 0; n < N; n++) {
        const float *xs = x + n * S * C;
        memset(laneSum, 0, sizeof laneSum);
        memset(laneSquares, 0, sizeof laneSquares);
        for (size_t row = 0; row + LANES <= S; row += LANES)
            for (size_t i = 0; i < LANES * C; i += 8) {
                __m256 value = _mm256_load_ps(xs + row * C + i);
                _mm256_store_ps(laneSum + i, _mm256_add_ps(_mm256_load_ps(laneSum + i), value));
                _mm256_store_ps(laneSquares + i, _mm256_fmadd_ps(value, value, _mm256_load_ps(laneSquares + i)));
            }
        float sumsOf[C] = {0}, squaresOf[C] = {0};
        for (int lane = 0; lane < LANES; lane++)
            for (int ch = 0; ch < C; ch++) {
                sumsOf[ch] += laneSum[lane * C + ch];
                squaresOf[ch] += laneSquares[lane * C + ch];
            }
        statistics_of(sumsOf, squaresOf, S);
        write_normalized(xs, dx + n * S * C, S * C);
    }
    _mm_sfence();
}

// Part 3: backward of (4, 8, 512·512), channels last against channels
// first, with the channels-last sums in registers (two phases, C = 8: one
// vector per row). A channels-last sample (x and dy, 16 MiB) must be read
// whole before any dx, so its second pass reads from the L3 or memory,
// where channels first re-reads one instance (2 MiB).

enum { WIDE_SAMPLES = 4, WIDE_CHANNELS = 8, WIDE_ROWS = 512 * 512 };

__attribute__((noinline)) static void wide_nchw_backward(void) {
    backward_channels_first(WIDE_SAMPLES * WIDE_CHANNELS, WIDE_ROWS);
}

__attribute__((noinline)) static void wide_nhwc_backward(void) {
    const size_t length = (size_t)WIDE_ROWS * WIDE_CHANNELS;
    for (size_t n = 0; n < WIDE_SAMPLES; n++) {
        const float *xs = x + n * length, *dys = dy + n * length;
        __m256 sumDyLanes, productLanes;
        lane_sums(xs, dys, length, &sumDyLanes, &productLanes);
        __m256 k = _mm256_set1_ps(1), p = _mm256_mul_ps(productLanes, _mm256_set1_ps(1e-9f));
        __m256 q = _mm256_mul_ps(sumDyLanes, _mm256_set1_ps(1e-9f));
        for (size_t i = 0; i < length; i += 8) _mm256_stream_ps(dx + n * length + i, gradient(xs, dys, i, k, p, q));
    }
    _mm_sfence();
}

typedef struct {
    const char *name;
    void (*run)(void);
    double median;
} Variant;

static int ascending(const void *l, const void *r) {
    double u = *(const double *)l, v = *(const double *)r;
    return (u > v) - (u < v);
}

static void measure(Variant *variants, int count, int rounds) {
    double *times = calloc((size_t)count * rounds, sizeof *times);
    // Each round starts one variant later, so that no variant always runs
    // right after the same other one (what a run leaves in the caches and
    // the memory controller's queues moved a neighbour by up to 8%).
    for (int round = 0; round < rounds; round++)
        for (int step = 0; step < count; step++) {
            int v = (round + step) % count;
            double start = seconds();
            variants[v].run();
            times[v * rounds + round] = seconds() - start;
        }
    for (int v = 0; v < count; v++) {
        qsort(times + v * rounds, rounds, sizeof *times, ascending);
        variants[v].median = times[v * rounds + rounds / 2];
    }
    free(times);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 11;
    if (argc > 3) {
        N = strtoul(argv[2], 0, 10);
        S = strtoul(argv[3], 0, 10);
    }
    if (rounds < 1 || N * C > sizeof sumDy / sizeof *sumDy || S % LANES != 0) {
        fprintf(stderr, "usage: kernel-limits [ROUNDS [N S]] with N*64 <= 65536 and S a multiple of 16\n");
        return 64;
    }
    E = N * C * S;
    streamCount = (43u << 20) / sizeof(double);
    x = aligned_alloc(64, E * 4);
    dy = aligned_alloc(64, E * 4);
    dx = aligned_alloc(64, E * 4);
    a = aligned_alloc(64, streamCount * 8);
    b = aligned_alloc(64, streamCount * 8);
    c = aligned_alloc(64, streamCount * 8);
    if (!x || !dy || !dx || !a || !b || !c) {
        fprintf(stderr, "kernel-limits: cannot allocate the tensors\n");
        return 71;
    }
    for (size_t i = 0; i < E; i++) {
        x[i] = (float)(i % 97) * 0.01f;
        dy[i] = (float)(i % 89) * 0.02f;
        dx[i] = 0;
    }
    for (size_t i = 0; i < streamCount; i++) a[i] = 1, b[i] = 2, c[i] = 0;

    Variant backward[] = {
        {"stream_add", stream_add, 0}, {"two_pass", two_pass, 0}, {"single_pass", single_pass, 0},
        {"fused_next", fused_next, 0}, {"fused_prefetch_l2", fused_prefetch_l2, 0}, {"sums_only", sums_only, 0},
        {"streaming_writes_only", streaming_writes_only, 0},
        {"two_pass_64_byte_stores", two_pass_64_byte_stores, 0},
    };
    int backwardCount = __builtin_cpu_supports("avx512f") ? 8 : 7;
    measure(backward, backwardCount, rounds);
    double add = 24.0 * streamCount / backward[0].median;
    printf("# float32 (%zu, %d, %zu), one thread, %d alternating rounds, medians\n", N, C, S, rounds);
    printf("# part 1, backward channels first: %.0f MB per tensor; STREAM add %.2f GB/s (ordinary stores)\n",
           E * 4 / 1e6, add / 1e9);
    for (int v = 1; v < backwardCount; v++) {
        double fraction = 12.0 * E / backward[v].median / add;
        printf("%-26s %8.3f ms", backward[v].name, backward[v].median * 1e3);
        if (v < 5 || v == 7) printf("   %4.0f%% of the backward floor", 100 * fraction);
        printf("\n");
    }
    printf("%-26s %8.3f ms   (sums_only + streaming_writes_only: the passes one after the other)\n", "sum of the two passes",
           (backward[5].median + backward[6].median) * 1e3);

    Variant forward[] = {{"nchw_forward", nchw_forward, 0}, {"nhwc_registers", nhwc_registers, 0},
                         {"nhwc_lane_order", nhwc_lane_order, 0}, {"nchw_forward_fused", nchw_forward_fused, 0},
                         {"stream_copy", stream_copy, 0}};
    measure(forward, 5, rounds);
    double copy = 16.0 * streamCount / forward[4].median;
    printf("# part 2, forward channels last against channels first (sample of %.0f KiB), and channels first fused;"
           " STREAM copy %.2f GB/s\n", S * C * 4 / 1024.0, copy / 1e9);
    for (int v = 0; v < 4; v++)
        printf("%-26s %8.3f ms   %.2fx nchw_forward   %4.0f%% of the forward floor\n", forward[v].name,
               forward[v].median * 1e3, forward[v].median / forward[0].median, 100 * 8.0 * E / forward[v].median / copy);

    if (E >= (size_t)WIDE_SAMPLES * WIDE_CHANNELS * WIDE_ROWS) {
        Variant wide[] = {{"wide_nchw_backward", wide_nchw_backward, 0}, {"wide_nhwc_backward", wide_nhwc_backward, 0}};
        measure(wide, 2, rounds);
        printf("# part 3, backward (4, 8, 512, 512), channels last with its sums in registers\n");
        for (int v = 0; v < 2; v++)
            printf("%-26s %8.3f ms   %.2fx wide_nchw_backward\n", wide[v].name, wide[v].median * 1e3,
                   wide[v].median / wide[0].median);
    }
    return 0;
}
