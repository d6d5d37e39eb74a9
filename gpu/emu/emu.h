// A CUDA execution model on the CPU, for testing srdd's kernels without a GPU: the kernel files
// (gpu/kernels/*.cu) compile as C++ against this header, and each launch runs its blocks one
// after another, the threads of a block as cooperative fibers (ucontext) that switch at
// __syncthreads, at warp-collective operations (__shfl_xor_sync, __syncwarp, mma.sync) and at
// exit. Shared memory is `static` storage: one block runs at a time.
//
// The warp collectives follow the PTX ISA: mma.sync.m16n8k32.s8 with its documented fragment
// layout, dp4a, cvt.f32.f16. Only what srdd's kernels use is emulated.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <ucontext.h>

using std::isinf;
using std::max;
using std::min;

#define SRDD_EMU 1
#define __CUDA_ARCH__ 900
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct emu_dim3 {
    unsigned x, y, z;
};

struct EmuFiber {
    emu_dim3 tid;
    bool done;
};

extern emu_dim3 emu_block_idx, emu_block_dim, emu_grid_dim;
extern EmuFiber* emu_cur;

#define threadIdx (emu_cur->tid)
#define blockIdx emu_block_idx
#define blockDim emu_block_dim
#define gridDim emu_grid_dim

void __syncthreads();
void __syncwarp(unsigned mask = 0xffffffffu);
float __shfl_xor_sync(unsigned mask, float v, int lane_mask);
double __shfl_xor_sync(unsigned mask, double v, int lane_mask);
int __shfl_xor_sync(unsigned mask, int v, int lane_mask);
void emu_mma_s8(int* c, const int* a, const int* b);

inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, 4);
    return i;
}
// Round-to-nearest operations: plain operations here (built with -ffp-contract=off).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }

inline int emu_dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
    return c;
}

inline float emu_f16_to_f32(unsigned short h) {
    unsigned sign = (h >> 15) & 1, exp = (h >> 10) & 31, man = h & 1023;
    float v;
    if (exp == 0) v = std::ldexp((float)man, -24);
    else if (exp == 31) v = man ? NAN : INFINITY;
    else v = std::ldexp((float)(man | 1024), (int)exp - 25);
    return sign ? -v : v;
}
