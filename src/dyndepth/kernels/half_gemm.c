// half_gemm: y[M, N] = x[M, K] @ w[N, K]^T for x, y float32 and w bfloat16 or float16, in float32 math, on AVX2/FMA.
//
// Why: on a CPU without native bf16 matmul, a forward of a few to a few dozen rows (plain decoding, draft trees,
// small batches) is bound by reading the weights. MKL's float32 GEMM reads the float32 copy (twice the bytes) and
// packs it again for every small-M call (8 rows of Qwen's 8960 x 1536 gate/up: 9.9 ms; this kernel: 3.6 ms).
// Here each block of NB weight rows is read once, converted once (exactly: every half value is a float32 value) into
// a per-thread float32 scratch, and used by every row of x in 4 x 3 register tiles over k chunks that stay in L1.
// One row converts in registers instead.
//
// Every output is the same sum in the same order whatever M is (8 lanes of FMAs along k, then one fixed horizontal
// sum): a row's result does not depend on the other rows of the call, so a token's logits are the same verified
// alone, in a tree or in a batch.
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define NB 3     // weight rows per block (converted once into the scratch)
#define MB 4     // rows of x per register tile: 4 x 3 accumulators + 3 weight vectors + 1 x vector = 16 registers
#define KC 512   // k per chunk: the tile's slices of x and w stay in L1 across the chunk

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

// One row of x against 4 weight rows read straight from the half weights (no scratch).
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

void half_gemm(const float *x, const uint16_t *w, float *y, long M, long N, long K, int f16, int threads) {
    long K8 = K & ~7L, KS = (K + 7) & ~7L;
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
    #pragma omp parallel num_threads(threads)
    {
        float *buf = (float *)aligned_alloc(32, NB * KS * sizeof(float));
        __m256 *acc = (__m256 *)aligned_alloc(32, M * NB * sizeof(__m256));
        #pragma omp for schedule(static)
        for (long b = 0; b < blocks; b++) {
            long n0 = b * NB, nb = N - n0 < NB ? N - n0 : NB;
            for (long j = 0; j < nb; j++) {
                const uint16_t *src = w + (n0 + j) * K;
                float *dst = buf + j * KS;
                long k = 0;
                for (; k < K8; k += 8) _mm256_store_ps(dst + k, load8(src + k, f16));
                for (; k < K; k++) dst[k] = to_f32(src[k], f16);
            }
            for (long j = nb; j < NB; j++) memset(buf + j * KS, 0, KS * sizeof(float));
            const float *w0 = buf, *w1 = buf + KS, *w2 = buf + 2 * KS;
            for (long i = 0; i < M * NB; i++) acc[i] = _mm256_setzero_ps();
            for (long k0 = 0; k0 < K8; k0 += KC) {
                long k1 = k0 + KC < K8 ? k0 + KC : K8;
                long m = 0;
                for (; m + MB <= M; m += MB) {
                    const float *xa = x + m * K, *xb = xa + K, *xc = xb + K, *xd = xc + K;
                    __m256 *c = acc + m * NB;
                    __m256 a0 = c[0], a1 = c[1], a2 = c[2], b0 = c[3], b1 = c[4], b2 = c[5];
                    __m256 c0 = c[6], c1 = c[7], c2 = c[8], d0 = c[9], d1 = c[10], d2 = c[11];
                    for (long k = k0; k < k1; k += 8) {
                        __m256 v0 = _mm256_load_ps(w0 + k), v1 = _mm256_load_ps(w1 + k), v2 = _mm256_load_ps(w2 + k);
                        __m256 p = _mm256_loadu_ps(xa + k);
                        a0 = _mm256_fmadd_ps(p, v0, a0); a1 = _mm256_fmadd_ps(p, v1, a1); a2 = _mm256_fmadd_ps(p, v2, a2);
                        p = _mm256_loadu_ps(xb + k);
                        b0 = _mm256_fmadd_ps(p, v0, b0); b1 = _mm256_fmadd_ps(p, v1, b1); b2 = _mm256_fmadd_ps(p, v2, b2);
                        p = _mm256_loadu_ps(xc + k);
                        c0 = _mm256_fmadd_ps(p, v0, c0); c1 = _mm256_fmadd_ps(p, v1, c1); c2 = _mm256_fmadd_ps(p, v2, c2);
                        p = _mm256_loadu_ps(xd + k);
                        d0 = _mm256_fmadd_ps(p, v0, d0); d1 = _mm256_fmadd_ps(p, v1, d1); d2 = _mm256_fmadd_ps(p, v2, d2);
                    }
                    c[0] = a0; c[1] = a1; c[2] = a2; c[3] = b0; c[4] = b1; c[5] = b2;
                    c[6] = c0; c[7] = c1; c[8] = c2; c[9] = d0; c[10] = d1; c[11] = d2;
                }
                for (; m < M; m++) {
                    const float *xa = x + m * K;
                    __m256 *c = acc + m * NB;
                    __m256 a0 = c[0], a1 = c[1], a2 = c[2];
                    for (long k = k0; k < k1; k += 8) {
                        __m256 p = _mm256_loadu_ps(xa + k);
                        a0 = _mm256_fmadd_ps(p, _mm256_load_ps(w0 + k), a0);
                        a1 = _mm256_fmadd_ps(p, _mm256_load_ps(w1 + k), a1);
                        a2 = _mm256_fmadd_ps(p, _mm256_load_ps(w2 + k), a2);
                    }
                    c[0] = a0; c[1] = a1; c[2] = a2;
                }
            }
            for (long m = 0; m < M; m++) {
                const float *xa = x + m * K;
                for (long j = 0; j < nb; j++) {
                    float r = hsum(acc[m * NB + j]);
                    for (long k = K8; k < K; k++) r += xa[k] * buf[j * KS + k];
                    y[m * N + n0 + j] = r;
                }
            }
        }
        free(acc);
        free(buf);
    }
}
