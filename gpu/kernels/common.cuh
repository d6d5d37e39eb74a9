// Shared helpers of every srdd kernel. NVRTC compiles all kernel files as one program with this
// file first (see src/ptx.rs), so no #include is needed and no CUDA header is read.

typedef signed char i8;
typedef unsigned short u16;

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// f16 bits to f32 (the PTX conversion: no cuda_fp16.h needed).
__device__ __forceinline__ float f16_to_f32(u16 h) {
#ifdef SRDD_EMU
    return emu_f16_to_f32(h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ double block_sum_d(double v) {
    __shared__ double part[32];
    __shared__ double total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double s = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0;
        s = warp_sum_d(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

// Max over the block of non-negative values (NaN ignored by fmaxf); every thread gets it.
__device__ float block_max(float v) {
    __shared__ float part[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0f;
        s = warp_max(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

// The CPU quantizer's code: round half away from zero of v·inv, clamped to ±127 (NaN → 0).
__device__ __forceinline__ i8 quant_code(float v, float inv) {
    float r = roundf(__fmul_rn(v, inv));
    if (!(r == r)) return 0;
    r = fminf(fmaxf(r, -127.0f), 127.0f);
    return (i8)(int)r;
}

// The CPU engine's e^x (core/src/math.rs, exp_poly), operation for operation and unfused, so
// that SiLU and softmax give the CPU's bits: with them the int8 decoder is bit-identical to the
// CPU's (its int8 convs quantize per row, so it would amplify any last-bit difference).
__device__ __forceinline__ float exp_cpu(float x) {
    const float LOG2E = __int_as_float(0x3fb8aa3b);
    const float C1 = __int_as_float(0x3f318000);
    const float C2 = __int_as_float(0xb95e8083);
    const float ROUND = __int_as_float(0x4b400000);  // 1.5 · 2^23
    const float HI = __int_as_float(0x42b17217);     // ln(f32::MAX)
    const float LO = __int_as_float(0xc2aeac50);     // ln(f32::MIN_POSITIVE)
    float xc = fminf(fmaxf(x, LO), HI);
    float t = __fadd_rn(__fmul_rn(xc, LOG2E), ROUND);
    float n = __fsub_rn(t, ROUND);
    float r = __fsub_rn(__fsub_rn(xc, __fmul_rn(n, C1)), __fmul_rn(n, C2));
    float z = __fmul_rn(r, r);
    float p = __fadd_rn(__fmul_rn(__int_as_float(0x39506967), r), __int_as_float(0x3ab743ce));
    p = __fadd_rn(__fmul_rn(p, r), __int_as_float(0x3c088908));
    p = __fadd_rn(__fmul_rn(p, r), __int_as_float(0x3d2aa9c1));
    p = __fadd_rn(__fmul_rn(p, r), __int_as_float(0x3e2aaaaa));
    p = __fadd_rn(__fmul_rn(p, r), 0.5f);
    float y = __fadd_rn(__fadd_rn(__fmul_rn(p, z), r), 1.0f);
    int ni = __float_as_int(t) - __float_as_int(ROUND);
    float v = __fmul_rn(__fmul_rn(y, __int_as_float(((ni >> 1) + 127) << 23)),
                        __int_as_float(((ni - (ni >> 1)) + 127) << 23));
    v = x > HI ? INFINITY : v;
    v = x < LO ? 0.0f : v;
    return x != x ? x : v;
}

// SiLU as the CPU computes it: x / (1 + e^−x).
__device__ __forceinline__ float silu_f(float x) { return __fdiv_rn(x, __fadd_rn(1.0f, exp_cpu(-x))); }

__device__ __forceinline__ float gelu_tanh_f(float x) {
    const float k = 0.7978846f;
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}
