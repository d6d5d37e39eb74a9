// int8 GEMMs on the CPU's packed panels (kernels/pack.rs): a weight of `rows` channels × `k`
// inputs is panels of 16 channels, inside which each 32-bit word holds 4 consecutive inputs of
// one channel: word((o, g)) = W[((o / 16) · k4 + g) · 16 + o % 16], k4 = ceil(k / 4). Activation
// rows are the quantizer's codes, `lda` words apart. Sums are exact i32 (the CPU's), so the
// outputs differ from the CPU's only by the f32 epilogue and by codes of inputs that differ.
//
// Two kernels per op: `*_mma` on the tensor cores (mma.sync m16n8k32 s8, sm_80 and later) and
// `*_dp4a` (sm_61 and later). A block computes a 64 × 64 tile of outputs over k tiles of 16
// words (64 inputs) staged in shared memory.
//
// mma.sync.m16n8k32 fragments (PTX ISA, "Matrix fragments for mma.m16n8k32", .s8), lane = 4g + t:
//   A (16 × 32, row-major): a0 = A[g][4t..], a1 = A[g+8][4t..], a2 = A[g][16+4t..], a3 = A[g+8][16+4t..]
//   B (32 × 8, column n = output channel): b0 = B[4t..][g], b1 = B[16+4t..][g]
//   C (16 × 8): c0, c1 = C[g][2t], C[g][2t+1]; c2, c3 = C[g+8][2t], C[g+8][2t+1]
// In words: a0 is word t of row g, b0 word t of channel g: exactly one panel word.

#define I8_TM 64
#define I8_TN 64
#define I8_TKW 16
#define I8_SP 20  // shared row pitch in words: the fragment reads hit 32 distinct banks

__device__ __forceinline__ void mma_s8(int* c, const int* a, const int* b) {
#ifdef SRDD_EMU
    emu_mma_s8(c, a, b);
#elif __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

__device__ __forceinline__ int dp4a_s8(int a, int b, int c) {
#ifdef SRDD_EMU
    return emu_dp4a(a, b, c);
#else
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
#endif
}

// Weight word of channel `o`, group `g` (0 beyond the channels or inputs).
__device__ __forceinline__ int panel_word(const int* __restrict__ w, int k4, int rows, int o, int g) {
    return (o < rows && g < k4) ? w[((size_t)(o >> 4) * k4 + g) * 16 + (o & 15)] : 0;
}

// Stages the weight words of channels o_base .. o_base + 63, groups g0 .. g0 + 15.
__device__ __forceinline__ void stage_weights(int* ws, const int* __restrict__ w, int k4, int rows,
                                              int o_base, int o_end, int g0) {
    for (int i = threadIdx.x; i < I8_TN * I8_TKW; i += blockDim.x) {
        int c = i / I8_TN, nn = i % I8_TN;
        int o = o_base + nn;
        ws[nn * I8_SP + c] = o < o_end ? panel_word(w, k4, rows, o, g0 + c) : 0;
    }
}

// One k tile of a warp's 32 × 32 outputs on the tensor cores.
__device__ __forceinline__ void mma_tile(const int* as, const int* ws, int wm, int wn, int g, int t,
                                         int acc[2][4][4]) {
#pragma unroll
    for (int kk = 0; kk < I8_TKW; kk += 8) {
        int a[2][4], b[4][2];
#pragma unroll
        for (int mi = 0; mi < 2; mi++) {
            int r = wm + mi * 16 + g;
            a[mi][0] = as[r * I8_SP + kk + t];
            a[mi][1] = as[(r + 8) * I8_SP + kk + t];
            a[mi][2] = as[r * I8_SP + kk + 4 + t];
            a[mi][3] = as[(r + 8) * I8_SP + kk + 4 + t];
        }
#pragma unroll
        for (int ni = 0; ni < 4; ni++) {
            int c = wn + ni * 8 + g;
            b[ni][0] = ws[c * I8_SP + kk + t];
            b[ni][1] = ws[c * I8_SP + kk + 4 + t];
        }
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++) mma_s8(acc[mi][ni], a[mi], b[ni]);
    }
}

// Stages activation words g0 .. g0 + 15 of rows m_base .. m_base + 63 (0 past M or k4), `pitch`
// words per shared row.
__device__ __forceinline__ void stage_rows(int* as, int pitch, const int* __restrict__ a, int lda,
                                           int M, int m_base, int k4, int g0) {
    for (int i = threadIdx.x; i < I8_TM * I8_TKW; i += blockDim.x) {
        int r = i / I8_TKW, c = i % I8_TKW;
        int m = m_base + r, kw = g0 + c;
        as[r * pitch + c] = (m < M && kw < k4) ? a[(size_t)m * lda + kw] : 0;
    }
}

// The i32 sums of this warp's 32 × 32 outputs of the block's 64 × 64 tile on the tensor cores:
// rows m_base .., weight channels o_begin .. (below o_end), every k tile. 128 threads.
__device__ __forceinline__ void linear_mma_sums(const int* __restrict__ a, int lda, int M,
                                                const int* __restrict__ w, int k4, int rows,
                                                int o_begin, int o_end, int m_base, int acc[2][4][4]) {
    __shared__ int as[I8_TM * I8_SP];
    __shared__ int ws[I8_TN * I8_SP];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0;
    for (int g0 = 0; g0 < k4; g0 += I8_TKW) {
        stage_rows(as, I8_SP, a, lda, M, m_base, k4, g0);
        stage_weights(ws, w, k4, rows, o_begin, o_end, g0);
        __syncthreads();
        mma_tile(as, ws, wm, wn, g, t, acc);
        __syncthreads();
    }
}

// An int8 Linear output as the CPU computes it (linear.rs int8_outputs): acc · (sx · sw) + b,
// unfused (a bias-less Linear adds 0, as there), so equal sums give the CPU's bits.
__device__ __forceinline__ float linear_out(int acc, float sx, float sw, float b) {
    return __fadd_rn(__fmul_rn((float)acc, __fmul_rn(sx, sw)), b);
}

// y[m·ldy + n] = acc[m][n] · (sx[m] · sw[o0 + n]) + bias[n] for the Linear view of channels
// o0 .. o0 + N of a packed weight (`rows` channels, `k4` words per channel): the CPU's
// int8_outputs; with `accumulate` (the residual pass of two-pass activations) the term is added
// to y instead of the bias. 128 threads, grid (ceil(N / 64), ceil(M / 64)).
extern "C" __global__ void __launch_bounds__(128)
linear_i8_mma(const int* __restrict__ a, int lda, int M, const int* __restrict__ w, int k4, int rows,
              int o0, int N, const float* __restrict__ sx, const float* __restrict__ sw,
              const float* __restrict__ bias, float* __restrict__ y, int ldy, int accumulate) {
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    int m_base = blockIdx.y * I8_TM, n_base = blockIdx.x * I8_TN;
    int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    int acc[2][4][4];
    linear_mma_sums(a, lda, M, w, k4, rows, o0 + n_base, o0 + N, m_base, acc);
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int m = m_base + wm + mi * 16 + g + (e >> 1) * 8;
                int n = n_base + wn + ni * 8 + t * 2 + (e & 1);
                if (m < M && n < N) {
                    float* out = y + (size_t)m * ldy + n;
                    *out = linear_out(acc[mi][ni][e], sx[m], sw[o0 + n],
                                      accumulate ? *out : bias ? bias[n] : 0.0f);
                }
            }
}

// The same on dp4a: 128 threads, each 8 rows × 4 channels of the 64 × 64 tile.
#define DP_SP 17
extern "C" __global__ void __launch_bounds__(128)
linear_i8_dp4a(const int* __restrict__ a, int lda, int M, const int* __restrict__ w, int k4, int rows,
               int o0, int N, const float* __restrict__ sx, const float* __restrict__ sw,
               const float* __restrict__ bias, float* __restrict__ y, int ldy, int accumulate) {
    __shared__ int as[I8_TM * DP_SP];
    __shared__ int ws[I8_TN * DP_SP];
    int tid = threadIdx.x;
    int tr = tid >> 4, tc = tid & 15;
    int m_base = blockIdx.y * I8_TM, n_base = blockIdx.x * I8_TN;
    int acc[8][4];
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0;
    for (int g0 = 0; g0 < k4; g0 += I8_TKW) {
        stage_rows(as, DP_SP, a, lda, M, m_base, k4, g0);
        for (int i = tid; i < I8_TN * I8_TKW; i += 128) {
            int c = i / I8_TN, nn = i % I8_TN;
            int o = o0 + n_base + nn;
            ws[nn * DP_SP + c] = o < o0 + N ? panel_word(w, k4, rows, o, g0 + c) : 0;
        }
        __syncthreads();
#pragma unroll 4
        for (int c = 0; c < I8_TKW; c++) {
            int av[8], bv[4];
#pragma unroll
            for (int i = 0; i < 8; i++) av[i] = as[(tr * 8 + i) * DP_SP + c];
#pragma unroll
            for (int j = 0; j < 4; j++) bv[j] = ws[(tc * 4 + j) * DP_SP + c];
#pragma unroll
            for (int i = 0; i < 8; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = dp4a_s8(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int m = m_base + tr * 8 + i, n = n_base + tc * 4 + j;
            if (m < M && n < N) {
                float* out = y + (size_t)m * ldy + n;
                *out = linear_out(acc[i][j], sx[m], sw[o0 + n],
                                  accumulate ? *out : bias ? bias[n] : 0.0f);
            }
        }
}

// Raw i32 sums of the Linear view (for the exactness test against the CPU GEMM): s[m·N + n].
extern "C" __global__ void __launch_bounds__(128)
sums_i8_mma(const int* __restrict__ a, int lda, int M, const int* __restrict__ w, int k4, int rows,
            int N, int* __restrict__ s) {
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    int m_base = blockIdx.y * I8_TM, n_base = blockIdx.x * I8_TN;
    int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    int acc[2][4][4];
    linear_mma_sums(a, lda, M, w, k4, rows, n_base, N, m_base, acc);
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int m = m_base + wm + mi * 16 + g + (e >> 1) * 8;
                int n = n_base + wn + ni * 8 + t * 2 + (e & 1);
                if (m < M && n < N) s[(size_t)m * N + n] = acc[mi][ni][e];
            }
}

// Activation word `kw` of output pixel `m` for kernel row `ky` of a stride-1 conv over the
// pixel-major codes: the window starts at pixel ox of padded input row iy (0 outside the map).
__device__ __forceinline__ int conv_word(const i8* __restrict__ qt, int rowb, int h, int wo,
                                         int cin, int pad, int ky, int m, int M, int kw, int kwords) {
    if (m >= M || kw >= kwords) return 0;
    int oy = m / wo, ox = m % wo;
    int iy = oy + ky - pad;
    if (iy < 0 || iy >= h) return 0;
    const i8* p = qt + (size_t)iy * rowb + (size_t)ox * cin + 4 * kw;
    if ((cin & 3) == 0) return *(const int*)p;
    return (int)(unsigned char)p[0] | ((int)(unsigned char)p[1] << 8) |
           ((int)(unsigned char)p[2] << 16) | ((int)(unsigned char)p[3] << 24);
}

// Row scale of output pixel `m`'s input row for kernel row `ky`; −1 outside the map (scales
// are never negative).
__device__ __forceinline__ float conv_row_scale(const float* __restrict__ sr, int h, int wo, int pad,
                                                int ky, int m) {
    int iy = m / wo + ky - pad;
    return (iy >= 0 && iy < h) ? sr[iy] : -1.0f;
}

// One kernel row's contribution as the CPU adds it (conv_i8.rs): v + acc · (sr · sw), unfused,
// so the int8 conv gives the CPU's bits; rows outside the map (sr < 0, see conv_row_scale) are
// skipped, as there (adding +0 would turn a −0 into +0).
__device__ __forceinline__ float conv_acc(float v, int acc, float sr, float sw) {
    return sr < 0.0f ? v : __fadd_rn(v, __fmul_rn((float)acc, __fmul_rn(sr, sw)));
}

// Stride-1 int8 conv (the CPU's conv2d_i8): y[o][m] = b[o] + Σ_ky acc_ky[m][o] · (sr[iy] · sw[o]),
// acc_ky the exact i32 sum over the kernel row's `kw·cin` inputs (tap-major, as packed). The
// weight is `k` packed `rows × kw·cin` weights, `pw` words apart. Output channel-major
// `cout × M` (M = ho · wo). 128 threads, grid (ceil(cout / 64), ceil(M / 64)).
extern "C" __global__ void __launch_bounds__(128)
conv_i8_mma(const i8* __restrict__ qt, int rowb, int h, const float* __restrict__ sr, int ho, int wo,
            int cin, int k, int pad, const int* __restrict__ w, int pw, int cout,
            const float* __restrict__ sw, const float* __restrict__ bias, float* __restrict__ y) {
    __shared__ int as[I8_TM * I8_SP];
    __shared__ int ws[I8_TN * I8_SP];
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    int M = ho * wo;
    int m_base = blockIdx.y * I8_TM, n_base = blockIdx.x * I8_TN;
    int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    int kwords = (k * cin + 3) / 4;
    float out[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int n = n_base + wn + ni * 8 + t * 2 + (e & 1);
                out[mi][ni][e] = n < cout ? bias[n] : 0.0f;
            }
    for (int ky = 0; ky < k; ky++) {
        int acc[2][4][4];
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0;
        const int* wk = w + (size_t)ky * pw;
        for (int g0 = 0; g0 < kwords; g0 += I8_TKW) {
            for (int i = tid; i < I8_TM * I8_TKW; i += 128) {
                int r = i / I8_TKW, c = i % I8_TKW;
                as[r * I8_SP + c] = conv_word(qt, rowb, h, wo, cin, pad, ky, m_base + r, M, g0 + c, kwords);
            }
            stage_weights(ws, wk, kwords, cout, n_base, cout, g0);
            __syncthreads();
            mma_tile(as, ws, wm, wn, g, t, acc);
            __syncthreads();
        }
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int m = m_base + wm + mi * 16 + g + (e >> 1) * 8;
                    int n = n_base + wn + ni * 8 + t * 2 + (e & 1);
                    if (m < M && n < cout)
                        out[mi][ni][e] = conv_acc(out[mi][ni][e], acc[mi][ni][e],
                                                  conv_row_scale(sr, h, wo, pad, ky, m), sw[n]);
                }
    }
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int m = m_base + wm + mi * 16 + g + (e >> 1) * 8;
                int n = n_base + wn + ni * 8 + t * 2 + (e & 1);
                if (m < M && n < cout) y[(size_t)n * M + m] = out[mi][ni][e];
            }
}

// The same conv on dp4a: 128 threads, each 8 pixels × 4 channels of the 64 × 64 tile.
extern "C" __global__ void __launch_bounds__(128)
conv_i8_dp4a(const i8* __restrict__ qt, int rowb, int h, const float* __restrict__ sr, int ho, int wo,
             int cin, int k, int pad, const int* __restrict__ w, int pw, int cout,
             const float* __restrict__ sw, const float* __restrict__ bias, float* __restrict__ y) {
    __shared__ int as[I8_TM * DP_SP];
    __shared__ int ws[I8_TN * DP_SP];
    int tid = threadIdx.x;
    int tr = tid >> 4, tc = tid & 15;
    int M = ho * wo;
    int m_base = blockIdx.y * I8_TM, n_base = blockIdx.x * I8_TN;
    int kwords = (k * cin + 3) / 4;
    float out[8][4];
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int n = n_base + tc * 4 + j;
            out[i][j] = n < cout ? bias[n] : 0.0f;
        }
    for (int ky = 0; ky < k; ky++) {
        int acc[8][4];
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[i][j] = 0;
        const int* wk = w + (size_t)ky * pw;
        for (int g0 = 0; g0 < kwords; g0 += I8_TKW) {
            for (int i = tid; i < I8_TM * I8_TKW; i += 128) {
                int r = i / I8_TKW, c = i % I8_TKW;
                as[r * DP_SP + c] = conv_word(qt, rowb, h, wo, cin, pad, ky, m_base + r, M, g0 + c, kwords);
            }
            for (int i = tid; i < I8_TN * I8_TKW; i += 128) {
                int c = i / I8_TN, nn = i % I8_TN;
                int o = n_base + nn;
                ws[nn * DP_SP + c] = panel_word(wk, kwords, cout, o, g0 + c);
            }
            __syncthreads();
#pragma unroll 4
            for (int c = 0; c < I8_TKW; c++) {
                int av[8], bv[4];
#pragma unroll
                for (int i = 0; i < 8; i++) av[i] = as[(tr * 8 + i) * DP_SP + c];
#pragma unroll
                for (int j = 0; j < 4; j++) bv[j] = ws[(tc * 4 + j) * DP_SP + c];
#pragma unroll
                for (int i = 0; i < 8; i++)
#pragma unroll
                    for (int j = 0; j < 4; j++) acc[i][j] = dp4a_s8(av[i], bv[j], acc[i][j]);
            }
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int m = m_base + tr * 8 + i, n = n_base + tc * 4 + j;
                if (m < M && n < cout)
                    out[i][j] = conv_acc(out[i][j], acc[i][j], conv_row_scale(sr, h, wo, pad, ky, m), sw[n]);
            }
    }
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int m = m_base + tr * 8 + i, n = n_base + tc * 4 + j;
            if (m < M && n < cout) y[(size_t)n * M + m] = out[i][j];
        }
}
