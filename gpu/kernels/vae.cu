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

// scores[i][j] = (Σ_c q[c][i] · k[c][j]) · scale, q|k|v channel-major `3C × hw`.
extern "C" __global__ void vae_attn_scores(const float* __restrict__ qkv, int C, int hw, float scale,
                                           float* __restrict__ s) {
    size_t total = (size_t)hw * hw;
    const float* q = qkv;
    const float* k = qkv + (size_t)C * hw;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int j = (int)(e % hw), i = (int)(e / hw);
        float acc = 0.0f;
        for (int c = 0; c < C; c++) acc = fmaf(q[(size_t)c * hw + i], k[(size_t)c * hw + j], acc);
        s[e] = acc * scale;
    }
}

// In-place softmax of each of `rows` rows of `cols` values. One block per row.
extern "C" __global__ void softmax_rows(float* __restrict__ s, int cols) {
    float* row = s + (size_t)blockIdx.x * cols;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, row[j]);
    // block max over arbitrary values (block_max expects non-negative): shift by a warp pass
    __shared__ float part[32];
    __shared__ float mx;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    m = warp_max(m);
    if (lane == 0) part[warp] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = part[0];
        for (int i = 1; i < (int)(blockDim.x >> 5); i++) t = fmaxf(t, part[i]);
        mx = t;
    }
    __syncthreads();
    double sum = 0.0;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float p = expf(row[j] - mx);
        row[j] = p;
        sum += p;
    }
    float inv = (float)(1.0 / block_sum_d(sum));
    for (int j = threadIdx.x; j < cols; j += blockDim.x) row[j] *= inv;
}

// out[c][i] = Σ_j v[c][j] · p[i][j].
extern "C" __global__ void vae_attn_out(const float* __restrict__ qkv, const float* __restrict__ p,
                                        int C, int hw, float* __restrict__ out) {
    size_t total = (size_t)C * hw;
    const float* v = qkv + 2 * (size_t)C * hw;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(e % hw), c = (int)(e / hw);
        float acc = 0.0f;
        for (int j = 0; j < hw; j++) acc = fmaf(v[(size_t)c * hw + j], p[(size_t)i * hw + j], acc);
        out[e] = acc;
    }
}

// The decoder's 3 × side × side output to interleaved RGB rows, clamped to [−1, 1].
extern "C" __global__ void to_rgb_rows(const float* __restrict__ x, int hw, float* __restrict__ rgb) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < 3 * hw; e += gridDim.x * blockDim.x) {
        int ch = e % 3, px = e / 3;
        rgb[e] = fminf(fmaxf(x[(size_t)ch * hw + px], -1.0f), 1.0f);
    }
}
