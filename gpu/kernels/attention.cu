// Transformer attention: every query of every row and head against its row's keys (Markov: the
// row's own tokens of this scale; causal: the row's KV cache up to this scale), one thread per
// query with an online softmax over key tiles staged in shared memory (the result equals the
// CPU's softmax-then-sum up to rounding).

#define ATT_KT 32
#define ATT_THREADS 64

// Queries: token i of row r at q[(r·n + i)·qs + h·hd]. Keys and values of row r: token j at
// k[base_r + j·ks + h·hd] (and v alike), base_r = (slots ? slots[r] : r) · row_stride. Output
// out[(r·n + i)·C + h·hd]. Grid (ceil(n / 64), heads, rows), 64 threads.
template <int HD>
__device__ void attend(const float* __restrict__ q, int qs, int n, const float* __restrict__ k,
                       const float* __restrict__ v, int ks, long long row_stride,
                       const int* __restrict__ slots, int nkeys, int hd, float scale,
                       float* __restrict__ out, int C) {
    __shared__ float kt[ATT_KT * HD];
    __shared__ float vt[ATT_KT * HD];
    __shared__ float sc[ATT_THREADS * (ATT_KT + 1)];
    int r = blockIdx.z, h = blockIdx.y;
    int i = blockIdx.x * ATT_THREADS + threadIdx.x;
    bool active = i < n;
    long long base = (long long)(slots ? slots[r] : r) * row_stride + (long long)h * hd;
    float qv[HD], o[HD];
    const float* qp = q + ((size_t)r * n + (active ? i : 0)) * qs + (size_t)h * hd;
#pragma unroll
    for (int d = 0; d < HD; d++) {
        qv[d] = (d < hd && active) ? qp[d] : 0.0f;
        o[d] = 0.0f;
    }
    float mx = -INFINITY, l = 0.0f;
    for (int j0 = 0; j0 < nkeys; j0 += ATT_KT) {
        int nt = min(ATT_KT, nkeys - j0);
        for (int e = threadIdx.x; e < ATT_KT * HD; e += ATT_THREADS) {
            int j = e / HD, d = e % HD;
            bool ok = j < nt && d < hd;
            kt[e] = ok ? k[base + (long long)(j0 + j) * ks + d] : 0.0f;
            vt[e] = ok ? v[base + (long long)(j0 + j) * ks + d] : 0.0f;
        }
        __syncthreads();
        if (active) {
            // Scores of the tile go to this thread's row of shared memory (a register array
            // would need the loops fully unrolled, which NVRTC compiles very slowly).
            float* s = sc + threadIdx.x * (ATT_KT + 1);
            float tmax = mx;
#pragma unroll 1
            for (int j = 0; j < nt; j++) {
                float acc = 0.0f;
#pragma unroll
                for (int d = 0; d < HD; d++) acc = fmaf(qv[d], kt[j * HD + d], acc);
                s[j] = acc * scale;
                tmax = fmaxf(tmax, s[j]);
            }
            float corr = expf(mx - tmax);
            l *= corr;
#pragma unroll
            for (int d = 0; d < HD; d++) o[d] *= corr;
#pragma unroll 1
            for (int j = 0; j < nt; j++) {
                float p = expf(s[j] - tmax);
                l += p;
#pragma unroll
                for (int d = 0; d < HD; d++) o[d] = fmaf(p, vt[j * HD + d], o[d]);
            }
            mx = tmax;
        }
        __syncthreads();
    }
    if (active) {
        float* op = out + ((size_t)r * n + i) * C + (size_t)h * hd;
        float inv = 1.0f / l;
#pragma unroll
        for (int d = 0; d < HD; d++)
            if (d < hd) op[d] = o[d] * inv;
    }
}

#define ATTEND(HD)                                                                              \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attention_hd##HD(                \
        const float* q, int qs, int n, const float* k, const float* v, int ks,                  \
        long long row_stride, const int* slots, int nkeys, int hd, float scale, float* out,     \
        int C) {                                                                                \
        attend<HD>(q, qs, n, k, v, ks, row_stride, slots, nkeys, hd, scale, out, C);            \
    }
ATTEND(32)
ATTEND(64)
ATTEND(128)
