// VQVAE decoder pieces besides the convs and GroupNorm: residual adds, nearest ×2 upsampling,
// the single-head spatial attention, and the RGB output.

extern "C" __global__ void add_inplace(float* __restrict__ y, const float* __restrict__ x, long long len) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < len;
         e += (long long)gridDim.x * blockDim.x)
        y[e] += x[e];
}

// y (C × 2h × 2w) = nearest ×2 of x (C × h × w).
extern "C" __global__ void upsample2(const float* __restrict__ x, float* __restrict__ y, int C, int h, int w) {
    size_t total = (size_t)C * 4 * h * w;
    int w2 = 2 * w, h2 = 2 * h;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int xx = (int)(e % w2);
        size_t cy = e / w2;
        int yy = (int)(cy % h2), c = (int)(cy / h2);
        y[e] = x[((size_t)c * h + yy / 2) * w + xx / 2];
    }
}

// The attention below is the CPU's (vae/net.rs attn_block) operation for operation, unfused:
// scores summed over channels in order, the CPU's softmax and its eight-lane dot product, so
// the int8 decoder stays bit-identical to the CPU's.

// scores[i][j] = (Σ_c q[c][i] · k[c][j], channels in order) · scale, q|k|v channel-major `3C × hw`.
extern "C" __global__ void vae_attn_scores(const float* __restrict__ qkv, int C, int hw, float scale,
                                           float* __restrict__ s) {
    size_t total = (size_t)hw * hw;
    const float* q = qkv;
    const float* k = qkv + (size_t)C * hw;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int j = (int)(e % hw), i = (int)(e / hw);
        float acc = 0.0f;
        for (int c = 0; c < C; c++)
            acc = __fadd_rn(acc, __fmul_rn(q[(size_t)c * hw + i], k[(size_t)c * hw + j]));
        s[e] = __fmul_rn(acc, scale);
    }
}

// In-place softmax of each of `rows` rows of `cols` values, as the CPU's softmax: the maximum,
// e^(x − max), their sum in index order, times 1/sum. One thread per row.
extern "C" __global__ void softmax_rows(float* __restrict__ s, int rows, int cols) {
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += gridDim.x * blockDim.x) {
        float* row = s + (size_t)r * cols;
        float m = -INFINITY;
        for (int j = 0; j < cols; j++) m = fmaxf(m, row[j]);
        for (int j = 0; j < cols; j++) row[j] = exp_cpu(__fsub_rn(row[j], m));
        float sum = 0.0f;
        for (int j = 0; j < cols; j++) sum = __fadd_rn(sum, row[j]);
        float inv = __fdiv_rn(1.0f, sum);
        for (int j = 0; j < cols; j++) row[j] = __fmul_rn(row[j], inv);
    }
}

// out[c][i] = Σ_j v[c][j] · p[i][j], in the CPU's eight-lane order (kernels/dot.rs).
extern "C" __global__ void vae_attn_out(const float* __restrict__ qkv, const float* __restrict__ p,
                                        int C, int hw, float* __restrict__ out) {
    size_t total = (size_t)C * hw;
    const float* v = qkv + 2 * (size_t)C * hw;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(e % hw), c = (int)(e / hw);
        const float* a = v + (size_t)c * hw;
        const float* b = p + (size_t)i * hw;
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        int n8 = hw / 8 * 8;
        for (int j = 0; j < n8; j += 8)
            for (int l = 0; l < 8; l++) acc[l] = __fadd_rn(acc[l], __fmul_rn(a[j + l], b[j + l]));
        float tail = 0.0f;
        for (int j = n8; j < hw; j++) tail = __fadd_rn(tail, __fmul_rn(a[j], b[j]));
        out[e] = __fadd_rn(__fadd_rn(__fadd_rn(__fadd_rn(acc[0], acc[4]), __fadd_rn(acc[1], acc[5])),
                                     __fadd_rn(__fadd_rn(acc[2], acc[6]), __fadd_rn(acc[3], acc[7]))),
                           tail);
    }
}

// The decoder's 3 × side × side output to interleaved RGB rows, clamped to [−1, 1].
extern "C" __global__ void to_rgb_rows(const float* __restrict__ x, int hw, float* __restrict__ rgb) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < 3 * hw; e += gridDim.x * blockDim.x) {
        int ch = e % 3, px = e / 3;
        rgb[e] = fminf(fmaxf(x[(size_t)ch * hw + px], -1.0f), 1.0f);
    }
}
