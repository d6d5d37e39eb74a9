// f32 GEMMs for f32 and f16 weights (f16 widened to f32 as it is read; f32 accumulation): the
// Linear `y = x Wᵀ + b` and the stride-1 conv as an implicit GEMM over the official weight
// layout `[cout][cin][k][k]`. A block computes a 64 × 64 tile with 256 threads (4 × 4 each)
// over k tiles of 16, staged k-major in shared memory.

#define F_TM 64
#define F_TN 64
#define F_TK 16
#define F_SP 68

__device__ __forceinline__ float weight_f(const void* w, int f16, size_t i) {
    return f16 ? f16_to_f32(((const u16*)w)[i]) : ((const float*)w)[i];
}

// One k tile: acc[i][j] += xs[k][ty·4 + i] · ws[k][tx·4 + j].
__device__ __forceinline__ void f_tile(const float* xs, const float* ws, int ty, int tx, float acc[4][4]) {
#pragma unroll
    for (int k = 0; k < F_TK; k++) {
        float a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; i++) a[i] = xs[k * F_SP + ty * 4 + i];
#pragma unroll
        for (int j = 0; j < 4; j++) b[j] = ws[k * F_SP + tx * 4 + j];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
}

// y[m·ldy + n] = Σ_i x[m·ldx + i] · w[n·K + i] + bias[n]. Grid (ceil(N / 64), ceil(M / 64)).
extern "C" __global__ void __launch_bounds__(256)
linear_f(const float* __restrict__ x, int ldx, int M, const void* __restrict__ w, int f16, int K,
         int N, const float* __restrict__ bias, float* __restrict__ y, int ldy) {
    __shared__ float xs[F_TK * F_SP];
    __shared__ float ws[F_TK * F_SP];
    int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
    int m_base = blockIdx.y * F_TM, n_base = blockIdx.x * F_TN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += F_TK) {
        for (int i = tid; i < F_TM * F_TK; i += 256) {
            int r = i / F_TK, c = i % F_TK;
            int m = m_base + r, k = k0 + c;
            xs[c * F_SP + r] = (m < M && k < K) ? x[(size_t)m * ldx + k] : 0.0f;
            int n = n_base + r;
            ws[c * F_SP + r] = (n < N && k < K) ? weight_f(w, f16, (size_t)n * K + k) : 0.0f;
        }
        __syncthreads();
        f_tile(xs, ws, ty, tx, acc);
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int m = m_base + ty * 4 + i, n = n_base + tx * 4 + j;
            if (m < M && n < N) y[(size_t)m * ldy + n] = acc[i][j] + (bias ? bias[n] : 0.0f);
        }
}

// Stride-1 conv of a channel-major `cin × h × w` map with zero padding `pad`, kernel `k`:
// y[n][m] = b[n] + Σ_(ci, ky, kx) x[ci][oy + ky − pad][ox + kx − pad] · w[n][ci][ky][kx],
// output `cout × ho × wo` (m = oy · wo + ox). Grid (ceil(cout / 64), ceil(ho·wo / 64)).
extern "C" __global__ void __launch_bounds__(256)
conv_f(const float* __restrict__ x, int cin, int h, int w, int k, int pad, int ho, int wo,
       const void* __restrict__ wt, int f16, int cout, const float* __restrict__ bias,
       float* __restrict__ y) {
    __shared__ float xs[F_TK * F_SP];
    __shared__ float ws[F_TK * F_SP];
    int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
    int M = ho * wo, K = cin * k * k, kk = k * k;
    int m_base = blockIdx.y * F_TM, n_base = blockIdx.x * F_TN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += F_TK) {
        for (int i = tid; i < F_TM * F_TK; i += 256) {
            // Consecutive threads take consecutive pixels: coalesced reads of the map.
            int r = i % F_TM, c = i / F_TM;
            int m = m_base + r, kq = k0 + c;
            float v = 0.0f;
            if (m < M && kq < K) {
                int ci = kq / kk, rem = kq % kk;
                int iy = m / wo + rem / k - pad, ix = m % wo + rem % k - pad;
                if (iy >= 0 && iy < h && ix >= 0 && ix < w) v = x[((size_t)ci * h + iy) * w + ix];
            }
            xs[c * F_SP + r] = v;
        }
        for (int i = tid; i < F_TN * F_TK; i += 256) {
            int r = i / F_TK, c = i % F_TK;
            int n = n_base + r, kq = k0 + c;
            ws[c * F_SP + r] = (n < cout && kq < K) ? weight_f(wt, f16, (size_t)n * K + kq) : 0.0f;
        }
        __syncthreads();
        f_tile(xs, ws, ty, tx, acc);
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int m = m_base + ty * 4 + i, n = n_base + tx * 4 + j;
            if (m < M && n < cout) y[(size_t)n * M + m] = bias[n] + acc[i][j];
        }
}
