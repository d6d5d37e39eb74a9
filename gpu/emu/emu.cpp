// The fiber scheduler behind emu.h, the kernel files themselves, and the C entry point
// `srdd_emu_launch` the Rust side calls in place of cuLaunchKernel.
#include "emu.h"

#include <setjmp.h>

#include <chrono>
#include <map>

#include <string>
#include <utility>
#include <vector>

emu_dim3 emu_block_idx, emu_block_dim, emu_grid_dim;
EmuFiber* emu_cur;

#include "../kernels/common.cuh"
#include "../kernels/quant.cu"
#include "../kernels/gemm_i8.cu"
#include "../kernels/gemm_f32.cu"
#include "../kernels/norm.cu"
#include "../kernels/attention.cu"
#include "../kernels/elementwise.cu"
#include "../kernels/vae.cu"

namespace {

const size_t STACK = 256 * 1024;

// Each fiber index has one stack and one context for the whole process: it is started once
// (makecontext, setcontext) into `fiber_loop`, which parks it; each block then jumps to its park
// point to run the kernel body, and it parks again when the body returns. Every switch is a
// _setjmp/_longjmp pair, which saves no signal mask: no system call per switch or per block.
struct Slot {
    ucontext_t ctx;
    jmp_buf park;    // where a finished fiber waits for its next block
    jmp_buf resume;  // where a fiber that yielded inside a body continues
    char* stack = nullptr;
    bool running = false;  // inside a body of the current block (resume, not park)
};

struct Block {
    std::vector<EmuFiber> fibers;
    std::vector<Slot> slots;
    jmp_buf sched_jb;
    int live = 0;
    // Block barrier.
    int arrived = 0;
    unsigned gen = 0;
    // Warp barriers (up to 32 warps).
    int warp_live[32] = {0};
    int warp_arrived[32] = {0};
    unsigned warp_gen[32] = {0};
    // Warp exchange slots, two sets used alternately by consecutive collectives of a lane (a
    // lane cannot reach the collective after next before every lane of its warp has read this
    // one's, so one barrier per collective suffices): 8 bytes per lane, 6 words for mma operands.
    uint64_t slot[2][32][32];
    int mma_slot[2][32][32][6];
    unsigned char phase[1024];
    void (*invoker)(void*, void**) = nullptr;
    void* fn = nullptr;
    void** params = nullptr;
};

Block blk;

int index_of(const EmuFiber* f) { return (int)(f - blk.fibers.data()); }

void yield() {
    if (!_setjmp(blk.slots[index_of(emu_cur)].resume)) _longjmp(blk.sched_jb, 1);
}

int warp_of(const EmuFiber* f) { return (int)(f->tid.x >> 5); }

void warp_barrier() {
    int w = warp_of(emu_cur);
    unsigned g = blk.warp_gen[w];
    if (++blk.warp_arrived[w] == blk.warp_live[w]) {
        blk.warp_arrived[w] = 0;
        blk.warp_gen[w]++;
        return;
    }
    while (blk.warp_gen[w] == g) yield();
}

// The body's end: the thread leaves the block's barriers.
void finish(EmuFiber* f) {
    f->done = true;
    blk.live--;
    int w = warp_of(f);
    blk.warp_live[w]--;
    // An exiting thread no longer holds back the barriers the others wait at.
    if (blk.arrived > 0 && blk.arrived == blk.live) {
        blk.arrived = 0;
        blk.gen++;
    }
    if (blk.warp_arrived[w] > 0 && blk.warp_arrived[w] == blk.warp_live[w]) {
        blk.warp_arrived[w] = 0;
        blk.warp_gen[w]++;
    }
}

// Index of the fiber `fiber_loop` is started for (read once, at its start).
int starting;

void fiber_loop() {
    int i = starting;
    for (;;) {
        if (!_setjmp(blk.slots[i].park)) _longjmp(blk.sched_jb, 1);
        blk.invoker(blk.fn, blk.params);
        finish(&blk.fibers[i]);
        blk.slots[i].running = false;
    }
}

// Runs one block of `threads` threads to completion; false on a deadlock.
bool run_block(unsigned threads) {
    if (blk.slots.size() < threads) blk.slots.resize(threads);
    blk.fibers.resize(threads);
    for (unsigned i = 0; i < threads; i++) {
        Slot& s = blk.slots[i];
        if (!s.stack) {
            s.stack = (char*)malloc(STACK);
            getcontext(&s.ctx);
            s.ctx.uc_stack.ss_sp = s.stack;
            s.ctx.uc_stack.ss_size = STACK;
            s.ctx.uc_link = nullptr;
            makecontext(&s.ctx, fiber_loop, 0);
            starting = (int)i;
            if (!_setjmp(blk.sched_jb)) setcontext(&s.ctx);  // parks at once
        }
        s.running = false;
    }
    blk.live = (int)threads;
    blk.arrived = 0;
    for (int w = 0; w < 32; w++) {
        blk.warp_live[w] = 0;
        blk.warp_arrived[w] = 0;
    }
    for (unsigned t = 0; t < threads; t++) {
        EmuFiber& f = blk.fibers[t];
        f.tid = emu_dim3{t, 0, 0};
        f.done = false;
        blk.phase[t] = 0;
        blk.warp_live[t >> 5]++;
    }
    int live = (int)threads;
    while (live > 0) {
        unsigned before = blk.gen + blk.arrived;
        for (int w = 0; w < 32; w++) before += blk.warp_gen[w] + blk.warp_arrived[w];
        // volatile: read after the _setjmp below returns through a fiber's _longjmp.
        volatile int done_before = (int)threads - live;
        for (volatile unsigned i = 0; i < threads; i++) {
            EmuFiber& f = blk.fibers[i];
            if (f.done) continue;
            emu_cur = &f;
            Slot& s = blk.slots[i];
            if (!_setjmp(blk.sched_jb)) {
                if (!s.running) {
                    s.running = true;
                    _longjmp(s.park, 1);
                }
                _longjmp(s.resume, 1);
            }
        }
        live = 0;
        for (auto& f : blk.fibers) live += !f.done;
        unsigned after = blk.gen + blk.arrived;
        for (int w = 0; w < 32; w++) after += blk.warp_gen[w] + blk.warp_arrived[w];
        if (live > 0 && before == after && done_before == (int)threads - live)
            return false;  // nobody moved: a barrier some thread never reaches
    }
    return true;
}

template <class... A, size_t... I>
void call_with(void (*k)(A...), void** p, std::index_sequence<I...>) {
    k(*(A*)p[I]...);
}

// Calls the kernel at `fn` (of parameter types A...) with the values the launch's parameter
// array points to: each points to an 8-byte slot holding the value in its low bytes.
template <class... A>
void invoke(void* fn, void** p) {
    call_with((void (*)(A...))fn, p, std::index_sequence_for<A...>{});
}

}  // namespace

// Warp collectives.
void __syncthreads() {
    unsigned g = blk.gen;
    if (++blk.arrived == blk.live) {
        blk.arrived = 0;
        blk.gen++;
        return;
    }
    while (blk.gen == g) yield();
}

void __syncwarp(unsigned) { warp_barrier(); }

template <class T>
T shfl_xor(T v, int lane_mask) {
    int w = warp_of(emu_cur), lane = (int)(emu_cur->tid.x & 31);
    int ph = blk.phase[emu_cur->tid.x] ^= 1;
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    blk.slot[ph][w][lane] = bits;
    warp_barrier();
    T r;
    uint64_t other = blk.slot[ph][w][lane ^ lane_mask];
    memcpy(&r, &other, sizeof(T));
    return r;
}

float __shfl_xor_sync(unsigned, float v, int m) { return shfl_xor(v, m); }
double __shfl_xor_sync(unsigned, double v, int m) { return shfl_xor(v, m); }
int __shfl_xor_sync(unsigned, int v, int m) { return shfl_xor(v, m); }

// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32, lane = 4g + t:
// a0 = A[g][4t..], a1 = A[g+8][4t..], a2 = A[g][16+4t..], a3 = A[g+8][16+4t..];
// b0 = B[4t..][g], b1 = B[16+4t..][g]; c0,c1 = C[g][2t, 2t+1], c2,c3 = C[g+8][2t, 2t+1].
void emu_mma_s8(int* c, const int* a, const int* b) {
    int w = warp_of(emu_cur), lane = (int)(emu_cur->tid.x & 31);
    int ph = blk.phase[emu_cur->tid.x] ^= 1;
    int(*ms)[6] = blk.mma_slot[ph][w];
    for (int i = 0; i < 4; i++) ms[lane][i] = a[i];
    ms[lane][4] = b[0];
    ms[lane][5] = b[1];
    warp_barrier();
    auto a_at = [&](int row, int k) {
        int reg = (k < 16 ? 0 : 2) + (row < 8 ? 0 : 1);
        int src = (row & 7) * 4 + (k & 15) / 4;
        return (int)(signed char)(ms[src][reg] >> (8 * (k & 3)));
    };
    auto b_at = [&](int k, int col) {
        int src = col * 4 + (k & 15) / 4;
        return (int)(signed char)(ms[src][4 + (k < 16 ? 0 : 1)] >> (8 * (k & 3)));
    };
    int g = lane >> 2, t = lane & 3;
    int out[4];
    for (int e = 0; e < 4; e++) {
        int row = g + (e >> 1) * 8, col = 2 * t + (e & 1);
        int s = 0;
        for (int k = 0; k < 32; k++) s += a_at(row, k) * b_at(k, col);
        out[e] = s;
    }
    for (int e = 0; e < 4; e++) c[e] += out[e];
}

namespace {

struct Entry {
    const char* name;
    void* fn;
    void (*invoker)(void*, void**);
};

template <class... A>
Entry entry(const char* name, void (*k)(A...)) {
    return Entry{name, (void*)k, &invoke<A...>};
}

#define K(name) entry(#name, name)

const std::vector<Entry>& registry() {
    static std::vector<Entry> r = {
        K(quantize_rows),   K(quantize_conv_rows), K(linear_i8_mma),   K(linear_i8_dp4a),
        K(sums_i8_mma),     K(conv_i8_mma),        K(conv_i8_dp4a),    K(linear_f),
        K(conv_f),          K(ln_modulate),        K(gn_stats),        K(gn_apply),
        K(attention_hd32),  K(attention_hd64),     K(attention_hd128), K(embed_sos),
        K(input_tokens),    K(embed_words),        K(silu_labels),     K(add_gss),
        K(qkv_post),        K(kv_to_cache),        K(gelu_inplace),    K(residual_gamma),
        K(add_inplace),     K(upsample2),          K(vae_attn_scores), K(softmax_rows),
        K(vae_attn_out),    K(to_rgb_rows),       K(rows_by_label),
        K(quantize_residual_rows),
    };
    return r;
}

}  // namespace

namespace {
// SRDD_EMU_PROFILE=1: seconds per kernel, printed to stderr at exit.
struct Profile {
    std::map<std::string, std::pair<double, long>> t;
    bool on = getenv("SRDD_EMU_PROFILE") != nullptr;
    ~Profile() {
        for (auto& [k, v] : t) fprintf(stderr, "emu %-20s %9.3f s %8ld launches\n", k.c_str(), v.first, v.second);
    }
};
Profile profile;
}  // namespace

// Runs kernel `name` on a grid × block launch with the cuLaunchKernel parameter array.
// Returns 0, 1 for an unknown kernel, 2 for a deadlock (a barrier not all threads reach).
extern "C" int srdd_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz,
                               unsigned block, void** params) {
    const Entry* e = nullptr;
    for (const auto& r : registry())
        if (std::string(r.name) == name) e = &r;
    if (!e) return 1;
    if (block == 0 || block > 1024) return 3;
    blk.invoker = e->invoker;
    blk.fn = e->fn;
    blk.params = params;
    emu_grid_dim = emu_dim3{gx, gy, gz};
    emu_block_dim = emu_dim3{block, 1, 1};
    auto t0 = std::chrono::steady_clock::now();
    for (unsigned z = 0; z < gz; z++)
        for (unsigned y = 0; y < gy; y++)
            for (unsigned x = 0; x < gx; x++) {
                emu_block_idx = emu_dim3{x, y, z};
                if (!run_block(block)) return 2;
            }
    if (profile.on) {
        auto& e = profile.t[name];
        e.first += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        e.second++;
    }
    return 0;
}
