// half_gemm: y[M, N] = x[M, K] @ w[N, K]^T for x, y float32 and w bfloat16 or float16, in float32 math, on AVX2/FMA.
//
// Why: on a CPU without native bf16 matmul, a forward of a few to a few dozen rows (plain decoding, draft trees,
// small batches) is bound by reading the weights. MKL's float32 GEMM reads the float32 copy (twice the bytes) and
// packs it again for every small-M call (8 rows of Qwen's 8960 x 1536 gate/up: 9.9 ms; this kernel: 3.6 ms).
// Here the weights are read in blocks of NB rows and converted in registers (exactly: every half value is a float32
// value) into a 4 x 3 tile of float32 accumulators: 4 rows of x share each converted weight vector, and a block's rows
// stay in L1 for the next 4 rows of x. Against a float32 scratch copy per block, the tiles measured 1.1-2x faster at
// every row count up to 32 on the AVX2 EPYC (scripts/half_gemm_bench.py).
//
// Every output is the same sum in the same order whatever M is (8 lanes of FMAs along k, then one fixed horizontal
// sum): a row's result does not depend on the other rows of the call, so a token's logits are the same verified
// alone, in a tree or in a batch.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>

#define NB 3     // weight rows per tile
#define MB 4     // rows of x per register tile: 4 x 3 accumulators + 3 weight vectors + 1 x vector = 16 registers

static inline __m256 load8(const uint16_t *p, int f16) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (f16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float to_f32(uint16_t h, int f16) {
    if (f16) return _cvtsh_ss(h);
    uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f;
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// One row of x against 4 weight rows (plain decoding: bound by the weight reads).
static void row_direct(const float *x, const uint16_t *w, float *y, long K, long K8, int f16) {
    const uint16_t *u0 = w, *u1 = w + K, *u2 = u1 + K, *u3 = u2 + K;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (long k = 0; k < K8; k += 8) {
        __m256 p = _mm256_loadu_ps(x + k);
        a0 = _mm256_fmadd_ps(p, load8(u0 + k, f16), a0);
        a1 = _mm256_fmadd_ps(p, load8(u1 + k, f16), a1);
        a2 = _mm256_fmadd_ps(p, load8(u2 + k, f16), a2);
        a3 = _mm256_fmadd_ps(p, load8(u3 + k, f16), a3);
    }
    float r[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
    for (long k = K8; k < K; k++)
        for (int j = 0; j < 4; j++) r[j] += x[k] * to_f32(w[j * K + k], f16);
    memcpy(y, r, sizeof r);
}

// Up to MB rows of x against up to NB weight rows, converted in registers: one 4 x 3 tile of accumulators over all k.
// A short tile repeats its first row (the extra sums are dropped).
static void rows_direct(const float *x, long M, const uint16_t *w, long nb, float *y, long N, long K, long K8,
                        int f16) {
    const uint16_t *u0 = w, *u1 = nb > 1 ? w + K : w, *u2 = nb > 2 ? w + 2 * K : w;  // missing rows: repeat row 0
    const float *xa = x, *xb = M > 1 ? x + K : x, *xc = M > 2 ? x + 2 * K : x, *xd = M > 3 ? x + 3 * K : x;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, b0 = a0, b1 = a0, b2 = a0;
    __m256 c0 = a0, c1 = a0, c2 = a0, d0 = a0, d1 = a0, d2 = a0;
    for (long k = 0; k < K8; k += 8) {
        __m256 v0 = load8(u0 + k, f16), v1 = load8(u1 + k, f16), v2 = load8(u2 + k, f16);
        __m256 p = _mm256_loadu_ps(xa + k);
        a0 = _mm256_fmadd_ps(p, v0, a0); a1 = _mm256_fmadd_ps(p, v1, a1); a2 = _mm256_fmadd_ps(p, v2, a2);
        p = _mm256_loadu_ps(xb + k);
        b0 = _mm256_fmadd_ps(p, v0, b0); b1 = _mm256_fmadd_ps(p, v1, b1); b2 = _mm256_fmadd_ps(p, v2, b2);
        p = _mm256_loadu_ps(xc + k);
        c0 = _mm256_fmadd_ps(p, v0, c0); c1 = _mm256_fmadd_ps(p, v1, c1); c2 = _mm256_fmadd_ps(p, v2, c2);
        p = _mm256_loadu_ps(xd + k);
        d0 = _mm256_fmadd_ps(p, v0, d0); d1 = _mm256_fmadd_ps(p, v1, d1); d2 = _mm256_fmadd_ps(p, v2, d2);
    }
    __m256 acc[MB][NB] = {{a0, a1, a2}, {b0, b1, b2}, {c0, c1, c2}, {d0, d1, d2}};
    for (long m = 0; m < M; m++)
        for (long j = 0; j < nb; j++) {
            float r = hsum(acc[m][j]);
            for (long k = K8; k < K; k++) r += x[m * K + k] * to_f32(w[j * K + k], f16);
            y[m * N + j] = r;
        }
}

void half_gemm(const float *x, const uint16_t *w, float *y, long M, long N, long K, int f16, int threads) {
    long K8 = K & ~7L;
    if (M == 1) {
        long N4 = N & ~3L;
        #pragma omp parallel for schedule(static) num_threads(threads)
        for (long n = 0; n < N4; n += 4) row_direct(x, w + n * K, y + n, K, K8, f16);
        for (long n = N4; n < N; n++) {  // the last < 4 rows: the same sums, one at a time
            __m256 a = _mm256_setzero_ps();
            for (long k = 0; k < K8; k += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), load8(w + n * K + k, f16), a);
            float r = hsum(a);
            for (long k = K8; k < K; k++) r += x[k] * to_f32(w[n * K + k], f16);
            y[n] = r;
        }
        return;
    }
    long blocks = (N + NB - 1) / NB;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long b = 0; b < blocks; b++) {
        long n0 = b * NB;
        for (long m0 = 0; m0 < M; m0 += MB)
            rows_direct(x + m0 * K, M - m0 < MB ? M - m0 : MB, w + n0 * K, N - n0 < NB ? N - n0 : NB,
                        y + m0 * N + n0, N, K, K8, f16);
    }
}
