// LayerNorm with AdaLN modulation (the transformer) and GroupNorm (the VQVAE decoder), with the
// CPU's statistics in f64 (kernels/norm.rs).

// y[i] = LN(x_i)·(1 + scale_r) + shift_r for the stacked tokens i of `rows` rows: token i is row
// r = i / m's token t0 + i % m, at x[(r·n + t0 + i % m)·C]; row r's scale and shift are parts
// `ks`, `kb` of its `width` C-vectors at ada[r·width·C]. One block per token.
extern "C" __global__ void ln_modulate(const float* __restrict__ x, int n, int t0, int m, int C,
                                       float eps, const float* __restrict__ ada, int width, int ks,
                                       int kb, float* __restrict__ y) {
    int i = blockIdx.x;
    int r = i / m, tok = t0 + i % m;
    const float* xr = x + ((size_t)r * n + tok) * C;
    double s = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) s += (double)xr[c];
    double mean = block_sum_d(s) / C;
    double q = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        double d = (double)xr[c] - mean;
        q = __dadd_rn(q, __dmul_rn(d, d));
    }
    double var = block_sum_d(q) / C;
    float rstd = (float)__ddiv_rn(1.0, __dsqrt_rn(__dadd_rn(var, (double)eps)));
    float meanf = (float)mean;
    const float* scale = ada + ((size_t)r * width + ks) * C;
    const float* shift = ada + ((size_t)r * width + kb) * C;
    float* yr = y + (size_t)i * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        // The CPU's operations, unfused (var.rs modulate).
        float v = __fmul_rn(__fsub_rn(xr[c], meanf), rstd);
        yr[c] = __fadd_rn(__fmul_rn(v, __fadd_rn(scale[c], 1.0f)), shift[c]);
    }
}

// GroupNorm statistics of a channel-major `C × hw` map: (mean, rstd) of each group in f64.
// One block per group.
extern "C" __global__ void gn_stats(const float* __restrict__ x, int C, int hw, int groups, float eps,
                                    double* __restrict__ stats) {
    int g = blockIdx.x;
    int cg = C / groups;
    size_t n = (size_t)cg * hw;
    const float* xg = x + (size_t)g * n;
    double s = 0.0, q = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        double v = (double)xg[i];
        s += v;
        q = __dadd_rn(q, __dmul_rn(v, v));  // v² is exact in f64
    }
    s = block_sum_d(s);
    q = block_sum_d(q);
    if (threadIdx.x == 0) {
        // The CPU's gn_group_stats, unfused.
        double mean = __ddiv_rn(s, (double)n);
        double var = __dsub_rn(__ddiv_rn(q, (double)n), __dmul_rn(mean, mean));
        if (var < 0.0) var = 0.0;
        stats[2 * g] = mean;
        stats[2 * g + 1] = __ddiv_rn(1.0, __dsqrt_rn(__dadd_rn(var, (double)eps)));
    }
}

// y = x·scale_c + shift_c (then SiLU when `silu`), scale_c = rstd·w_c, shift_c = b_c − mean·rstd·w_c:
// the CPU's gn_channel_affine and gn_apply, unfused.
extern "C" __global__ void gn_apply(const float* __restrict__ x, float* __restrict__ y, int C, int hw,
                                    int groups, const double* __restrict__ stats,
                                    const float* __restrict__ w, const float* __restrict__ b, int silu) {
    size_t total = (size_t)C * hw;
    int cg = C / groups;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i / hw);
        int g = c / cg;
        double mean = stats[2 * g], rstd = stats[2 * g + 1];
        float scale = (float)__dmul_rn(rstd, (double)w[c]);
        float shift = (float)__dsub_rn((double)b[c], __dmul_rn(__dmul_rn(mean, rstd), (double)w[c]));
        float v = __fadd_rn(__fmul_rn(x[i], scale), shift);
        y[i] = silu ? silu_f(v) : v;
    }
}
