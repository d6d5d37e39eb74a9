//! x86-64 int8 peak probes: the inner step of each `x86_gemm.rs` kernel in a loop that keeps
//! everything in registers (no panel or activation loads, no epilogue), so its MAC rate is the
//! most that kernel's arithmetic can reach on one core ([`crate::kernels::peak`]).
//!
//! Every step multiplies the same weight registers by an activation register that an empty
//! `asm!` block "redefines" before each use: the compiler must assume a new value, so it can
//! neither hoist the products out of the loop nor fold the loop into a multiplication, and no
//! instruction is spent on it. The accumulators go through [`black_box`] at the end so the loop
//! is not dead. The values are arbitrary (the speed of these instructions does not depend on
//! them) and the sums are dropped.

use core::arch::asm;
use core::arch::x86_64::*;
use core::hint::black_box;

/// `x` as a value the compiler cannot see through, left in its ymm register.
///
/// # Safety
/// The CPU has AVX.
#[target_feature(enable = "avx")]
#[inline]
unsafe fn opaque_ymm(mut x: __m256i) -> __m256i {
    // SAFETY: an empty template: it reads and writes only the register holding `x`. Not `pure`,
    // so it runs (and yields an unknown value) on every iteration.
    unsafe { asm!("/* {0} */", inout(ymm_reg) x, options(nomem, nostack, preserves_flags)) };
    x
}

/// `x` as a value the compiler cannot see through, left in its zmm register.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn opaque_zmm(mut x: __m512i) -> __m512i {
    // SAFETY: as `opaque_ymm`.
    unsafe { asm!("/* {0} */", inout(zmm_reg) x, options(nomem, nostack, preserves_flags)) };
    x
}

/// `gemm_i8_avx2`'s step — `vpsignb`, `vpmaddubsw`, `vpmaddwd`, `vpaddd` per ymm half — on its
/// 4 rows × 2 halves = 8 accumulators, `iters` times. Returns the MACs performed.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn int8_peak_avx2(iters: usize) -> u64 {
    const ROWS: usize = 4;
    let ones = _mm256_set1_epi16(1);
    let w = [_mm256_set1_epi8(-3), _mm256_set1_epi8(5)];
    let u = w.map(|h| _mm256_abs_epi8(h));
    let mut xb = _mm256_set1_epi32(0x0102_7f81);
    let mut acc = [[_mm256_setzero_si256(); 2]; ROWS];
    for _ in 0..black_box(iters) {
        for row in acc.iter_mut() {
            // SAFETY: the CPU has AVX2 (this function's contract).
            xb = unsafe { opaque_ymm(xb) };
            for (h, a) in row.iter_mut().enumerate() {
                let s = _mm256_sign_epi8(xb, w[h]);
                let d = _mm256_madd_epi16(_mm256_maddubs_epi16(u[h], s), ones);
                *a = _mm256_add_epi32(*a, d);
            }
        }
    }
    black_box(acc);
    (iters as u64).saturating_mul((ROWS * 2 * 32) as u64)
}

/// `gemm_i8_avxvnni`'s step — one ymm `vpdpbusd` per half — on 5 rows × 2 halves = 10
/// accumulators (enough independent sums to cover `vpdpbusd`'s latency at two per cycle),
/// `iters` times. Returns the MACs performed.
///
/// # Safety
/// The CPU has AVX2 and AVX-VNNI.
#[target_feature(enable = "avx2,avxvnni")]
pub(crate) unsafe fn int8_peak_avxvnni(iters: usize) -> u64 {
    const ROWS: usize = 5;
    let w = [_mm256_set1_epi8(-3), _mm256_set1_epi8(5)];
    let mut xb = _mm256_set1_epi32(0x0102_7f81);
    let mut acc = [[_mm256_setzero_si256(); 2]; ROWS];
    for _ in 0..black_box(iters) {
        for row in acc.iter_mut() {
            // SAFETY: the CPU has AVX2 (this function's contract).
            xb = unsafe { opaque_ymm(xb) };
            for (h, a) in row.iter_mut().enumerate() {
                *a = _mm256_dpbusd_avx_epi32(*a, xb, w[h]);
            }
        }
    }
    black_box(acc);
    (iters as u64).saturating_mul((ROWS * 2 * 32) as u64)
}

/// `gemm_i8_avx512bw`'s step — masked negation under the weights' sign bits, zmm `vpmaddubsw`,
/// `vpmaddwd`, `vpaddd` — on its 8 rows = 8 accumulators, `iters` times. Returns the MACs
/// performed.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn int8_peak_avx512bw(iters: usize) -> u64 {
    const ROWS: usize = 8;
    let ones = _mm512_set1_epi16(1);
    let zero = _mm512_setzero_si512();
    let w0 = _mm512_set1_epi32(0x05fd_7f81);
    let u0 = _mm512_abs_epi8(w0);
    let negative = _mm512_movepi8_mask(w0);
    let mut xb = _mm512_set1_epi32(0x0102_7f81);
    let mut acc = [zero; ROWS];
    for _ in 0..black_box(iters) {
        for a in acc.iter_mut() {
            // SAFETY: the CPU has AVX-512F (this function's contract).
            xb = unsafe { opaque_zmm(xb) };
            let s0 = _mm512_mask_sub_epi8(xb, negative, zero, xb);
            let d0 = _mm512_madd_epi16(_mm512_maddubs_epi16(u0, s0), ones);
            *a = _mm512_add_epi32(*a, d0);
        }
    }
    black_box(acc);
    (iters as u64).saturating_mul((ROWS * 64) as u64)
}

/// `gemm_i8_avx512vnni`'s step — one zmm `vpdpbusd` — on 10 rows = 10 accumulators (enough to
/// cover its latency), `iters` times. Returns the MACs performed.
///
/// # Safety
/// The CPU has AVX-512F, AVX-512BW and AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn int8_peak_avx512vnni(iters: usize) -> u64 {
    const ROWS: usize = 10;
    let w0 = _mm512_set1_epi32(0x05fd_7f81);
    let mut xb = _mm512_set1_epi32(0x0102_7f81);
    let mut acc = [_mm512_setzero_si512(); ROWS];
    for _ in 0..black_box(iters) {
        for a in acc.iter_mut() {
            // SAFETY: the CPU has AVX-512F (this function's contract).
            xb = unsafe { opaque_zmm(xb) };
            *a = _mm512_dpbusd_epi32(*a, xb, w0);
        }
    }
    black_box(acc);
    (iters as u64).saturating_mul((ROWS * 64) as u64)
}
