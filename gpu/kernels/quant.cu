// Row quantizers: the CPU's symmetric dynamic int8 quantization (kernels/quant.rs), one scale
// per row: scale = max|x| / 127, code = round(x · 127 / max|x|) clamped to ±127; an all-zero row
// gives scale 0 and a non-finite maximum scale NaN, both with all codes 0.

// Scale of a row from its max |x| (the CPU's row_scale), and the factor codes multiply by
// (0 when every code is 0).
__device__ __forceinline__ float row_scale_inv(float amax, float* inv) {
    if (!(amax > 0.0f) || isinf(amax)) {
        *inv = 0.0f;
        return isinf(amax) ? __int_as_float(0x7fc00000) : 0.0f;
    }
    *inv = 127.0f / amax;
    return amax / 127.0f;
}

// Absolute value for the maximum, NaN as 0 (the CPU ignores NaN for the maximum).
__device__ __forceinline__ float abs_for_max(float v) {
    float a = fabsf(v);
    return a == a ? a : 0.0f;
}

// Quantizes `rows` rows of `k` floats (`ldx` apart) into codes `kp` bytes apart (the padding
// zero) and one scale per row. One block per row.
extern "C" __global__ void quantize_rows(const float* __restrict__ x, int ldx, int k, int kp,
                                         i8* __restrict__ q, float* __restrict__ scales) {
    int r = blockIdx.x;
    const float* xr = x + (size_t)r * ldx;
    float m = 0.0f;
    for (int i = threadIdx.x; i < k; i += blockDim.x) m = fmaxf(m, abs_for_max(xr[i]));
    m = block_max(m);
    float inv;
    float s = row_scale_inv(m, &inv);
    i8* qr = q + (size_t)r * kp;
    for (int i = threadIdx.x; i < kp; i += blockDim.x)
        qr[i] = (i < k && inv != 0.0f) ? quant_code(xr[i], inv) : (i8)0;
    if (threadIdx.x == 0) scales[r] = s;
}

// The second pass of two-pass ("a16") activations (the CPU's quantize_residual): row r's codes
// q1 under scale s1 = scales[r] become the codes of the residual x − q1·s1 under s1 / 254, which
// replaces the scale; every step one correctly rounded operation, as there. A zero, non-finite
// or too small s1 gives all codes 0. One block per row.
extern "C" __global__ void quantize_residual_rows(const float* __restrict__ x, int ldx, int k,
                                                  int kp, i8* __restrict__ q,
                                                  float* __restrict__ scales) {
    int r = blockIdx.x;
    float s1 = scales[r];
    // Every thread holds s1 before thread 0 replaces it.
    __syncthreads();
    float inv = __fdiv_rn(254.0f, s1);
    bool on = s1 > 0.0f && !isinf(inv);
    const float* xr = x + (size_t)r * ldx;
    i8* qr = q + (size_t)r * kp;
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        float res = __fsub_rn(xr[i], __fmul_rn((float)qr[i], s1));
        qr[i] = on ? quant_code(res, inv) : (i8)0;
    }
    if (threadIdx.x == 0) scales[r] = __fdiv_rn(s1, 254.0f);
}

// Quantizes each input row `iy` of a channel-major `cin × h × w` map over all its channels (the
// CPU int8 conv's scale) into pixel-major codes qt[iy][(pad + ix)·cin + ci], `rowb` bytes per
// row, the `pad` columns on either side zero. One block per input row.
extern "C" __global__ void quantize_conv_rows(const float* __restrict__ x, int cin, int h, int w,
                                              int pad, int rowb, i8* __restrict__ qt,
                                              float* __restrict__ scales) {
    int iy = blockIdx.x;
    int n = cin * w;
    float m = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        int ci = i / w, ix = i % w;
        m = fmaxf(m, abs_for_max(x[((size_t)ci * h + iy) * w + ix]));
    }
    m = block_max(m);
    float inv;
    float s = row_scale_inv(m, &inv);
    i8* row = qt + (size_t)iy * rowb;
    for (int i = threadIdx.x; i < rowb; i += blockDim.x) {
        int px = i / cin, ci = i % cin;
        int ix = px - pad;
        i8 v = 0;
        if (ix >= 0 && ix < w && inv != 0.0f) v = quant_code(x[((size_t)ci * h + iy) * w + ix], inv);
        row[i] = v;
    }
    if (threadIdx.x == 0) scales[iy] = s;
}
