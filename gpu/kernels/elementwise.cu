// Element-wise and gather kernels of the transformer step: embeddings, biases and per-head L2
// normalisation, the KV cache write, GELU, residuals, the AdaLN condition.

// Step 0: x[r][tok] = (class_emb[label_r] + pos_start) + (lvl_embed[level] + pos_1lc[pos0 + tok]).
extern "C" __global__ void embed_sos(float* __restrict__ x, const int* __restrict__ labels, int rows,
                                     int n, int C, const float* __restrict__ class_emb,
                                     const float* __restrict__ pos_start,
                                     const float* __restrict__ lvl_embed, int level,
                                     const float* __restrict__ pos_1lc, int pos0) {
    size_t total = (size_t)rows * n * C;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(e % C);
        size_t rt = e / C;
        int tok = (int)(rt % n), r = (int)(rt / n);
        float lp = lvl_embed[(size_t)level * C + c] + pos_1lc[(size_t)(pos0 + tok) * C + c];
        x[e] = (class_emb[(size_t)labels[r] * C + c] + pos_start[c]) + lp;
    }
}

// The input maps (image i's `cv × n` channel-major map at input[i·stride]) to token-major rows:
// win[(i·n + tok)·cv + ch].
extern "C" __global__ void input_tokens(const float* __restrict__ input, int images, int stride,
                                        int cv, int n, float* __restrict__ win) {
    size_t total = (size_t)images * n * cv;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int ch = (int)(e % cv);
        size_t it = e / cv;
        int tok = (int)(it % n), img = (int)(it / n);
        win[e] = input[(size_t)img * stride + (size_t)ch * n + tok];
    }
}

// x[r][tok] = we[image_r][tok] + (lvl_embed[level] + pos_1lc[pos0 + tok]).
extern "C" __global__ void embed_words(float* __restrict__ x, const float* __restrict__ we,
                                       const int* __restrict__ images, int rows, int n, int C,
                                       const float* __restrict__ lvl_embed, int level,
                                       const float* __restrict__ pos_1lc, int pos0) {
    size_t total = (size_t)rows * n * C;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(e % C);
        size_t rt = e / C;
        int tok = (int)(rt % n), r = (int)(rt / n);
        float lp = lvl_embed[(size_t)level * C + c] + pos_1lc[(size_t)(pos0 + tok) * C + c];
        x[e] = we[((size_t)images[r] * n + tok) * C + c] + lp;
    }
}

// cond[r] = SiLU(class_emb[label_r]).
extern "C" __global__ void silu_labels(const float* __restrict__ class_emb, const int* __restrict__ labels,
                                       int rows, int C, float* __restrict__ cond) {
    size_t total = (size_t)rows * C;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(e % C), r = (int)(e / C);
        cond[e] = silu_f(class_emb[(size_t)labels[r] * C + c]);
    }
}

// out[r] = table[label_r] (an AdaLN Linear precomputed per label), `len` floats per row.
extern "C" __global__ void rows_by_label(const float* __restrict__ table, const int* __restrict__ labels,
                                         int rows, int len, float* __restrict__ out) {
    size_t total = (size_t)rows * len;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(e % len), r = (int)(e / len);
        out[e] = table[(size_t)labels[r] * len + i];
    }
}

// out[r][i] = gss[i] + shared[r][i] (shared AdaLN), `len` = 6C per row.
extern "C" __global__ void add_gss(float* __restrict__ out, const float* __restrict__ gss,
                                   const float* __restrict__ shared, int rows, int len) {
    size_t total = (size_t)rows * len;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x)
        out[e] = gss[e % len] + shared[e];
}

// On the `tokens × 3C` q|k|v rows: q += q_bias, v += v_bias; with `scale_mul`, every head of k
// is scaled to unit L2 norm and every head of q to norm exp(min(scale_mul_h, ln 100)) (eps 1e-12,
// as F.normalize). One block per token, one warp per head (blockDim = 32 · heads).
extern "C" __global__ void qkv_post(float* __restrict__ qkv, int C, int heads,
                                    const float* __restrict__ q_bias, const float* __restrict__ v_bias,
                                    const float* __restrict__ scale_mul) {
    float* row = qkv + (size_t)blockIdx.x * 3 * C;
    int hd = C / heads;
    int h = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (h >= heads) return;
    float* qh = row + h * hd;
    float* kh = row + C + h * hd;
    float* vh = row + 2 * C + h * hd;
    for (int d = lane; d < hd; d += 32) {
        qh[d] += q_bias[h * hd + d];
        vh[d] += v_bias[h * hd + d];
    }
    if (!scale_mul) return;
    __syncwarp();
    float sq = 0.0f, sk = 0.0f;
    for (int d = lane; d < hd; d += 32) {
        sq += qh[d] * qh[d];
        sk += kh[d] * kh[d];
    }
    sq = warp_sum(sq);
    sk = warp_sum(sk);
    float nq = fmaxf(sqrtf(sq), 1e-12f), nk = fmaxf(sqrtf(sk), 1e-12f);
    float mul = expf(fminf(scale_mul[h], logf(100.0f)));
    __syncwarp();
    for (int d = lane; d < hd; d += 32) {
        qh[d] = qh[d] / nq * mul;
        kh[d] = kh[d] / nk;
    }
}

// Writes this scale's keys and values (from the q|k|v rows) into each row's cache slot at
// position `begin`: kc[(slot_r · cache + begin + tok)·C + c].
extern "C" __global__ void kv_to_cache(const float* __restrict__ qkv, int rows, int n, int C,
                                       const int* __restrict__ slots, int cache, int begin,
                                       float* __restrict__ kc, float* __restrict__ vc) {
    size_t total = (size_t)rows * n * C;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(e % C);
        size_t rt = e / C;
        int tok = (int)(rt % n), r = (int)(rt / n);
        size_t dst = ((size_t)slots[r] * cache + begin + tok) * C + c;
        const float* src = qkv + rt * 3 * C;
        kc[dst] = src[C + c];
        vc[dst] = src[2 * C + c];
    }
}

extern "C" __global__ void gelu_inplace(float* __restrict__ x, long long len) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < len;
         e += (long long)gridDim.x * blockDim.x)
        x[e] = gelu_tanh_f(x[e]);
}

// x[r][tok] += branch[r][tok] · γ_r (part `kg` of row r's `width` C-vectors).
extern "C" __global__ void residual_gamma(float* __restrict__ x, const float* __restrict__ branch,
                                          int rows, int n, int C, const float* __restrict__ ada,
                                          int width, int kg) {
    size_t total = (size_t)rows * n * C;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(e % C);
        int r = (int)(e / ((size_t)n * C));
        x[e] += branch[e] * ada[((size_t)r * width + kg) * C + c];
    }
}
