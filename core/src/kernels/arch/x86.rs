//! x86-64 kernels: AVX f32 register blocks and tiles, AVX2 int8 blocks.
//!
//! Each function computes exactly what its scalar reference computes, in the same lane order and
//! with separate multiply and add (never FMA), so the results are bit-identical (checked by the
//! kernel ISA tests). They are compiled in by target features today (`.cargo/config.toml`); a
//! runtime choice would mark them `#[target_feature(enable = …)]` and route through
//! [`crate::kernels::Isa`].

use crate::kernels::conv::{ConvInput, COL_BLOCK, CO_BLOCK};
use crate::kernels::layers::Conv;
use core::arch::x86_64::*;

/// Lane sums of the 4 × 2 f32 dot block over `0..full` (a multiple of 8): lane `l` of
/// `[t][o]` is `Σ_j x[t][8j + l]·w[o][8j + l]` in `j` order, as in the scalar loop.
#[inline]
pub(crate) fn dot_block_lanes_avx(
    x: [&[f32]; 4],
    w: [&[f32]; 2],
    full: usize,
) -> [[[f32; 8]; 2]; 4] {
    for s in x.iter().chain(w.iter()) {
        assert!(s.len() >= full);
    }
    let mut acc = [[[0f32; 8]; 2]; 4];
    // SAFETY: every load reads 8 floats at offset i < full ≤ the slice's length (asserted).
    unsafe {
        let mut a = [[_mm256_setzero_ps(); 2]; 4];
        let mut i = 0;
        while i < full {
            let w0 = _mm256_loadu_ps(w[0].as_ptr().add(i));
            let w1 = _mm256_loadu_ps(w[1].as_ptr().add(i));
            for t in 0..4 {
                let xv = _mm256_loadu_ps(x[t].as_ptr().add(i));
                a[t][0] = _mm256_add_ps(a[t][0], _mm256_mul_ps(xv, w0));
                a[t][1] = _mm256_add_ps(a[t][1], _mm256_mul_ps(xv, w1));
            }
            i += 8;
        }
        for t in 0..4 {
            for o in 0..2 {
                _mm256_storeu_ps(acc[t][o].as_mut_ptr(), a[t][o]);
            }
        }
    }
    acc
}

/// 4 × 2 int8 dot products over the leading multiple of 16 of `n`: AVX2 sign-extends 16 values to
/// i16 and pair-sums with `vpmaddwd` (exact in i32). Returns the partial sums and that length.
#[cfg(target_feature = "avx2")]
#[inline]
pub(crate) fn dot_i8_block_avx2(x: [&[i8]; 4], w: [&[i8]; 2], n: usize) -> ([[i32; 2]; 4], usize) {
    for s in x.iter() {
        assert!(s.len() >= n);
    }
    for s in w.iter() {
        assert!(s.len() >= n);
    }
    let mut out = [[0i32; 2]; 4];
    let full = n / 16 * 16;
    // SAFETY: every 16-byte load starts at i < full ≤ n ≤ the slice's length (asserted).
    unsafe {
        let mut a = [[_mm256_setzero_si256(); 2]; 4];
        let mut i = 0;
        while i < full {
            let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w[0].as_ptr().add(i) as *const __m128i));
            let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w[1].as_ptr().add(i) as *const __m128i));
            for t in 0..4 {
                let xv =
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(x[t].as_ptr().add(i) as *const __m128i));
                a[t][0] = _mm256_add_epi32(a[t][0], _mm256_madd_epi16(xv, w0));
                a[t][1] = _mm256_add_epi32(a[t][1], _mm256_madd_epi16(xv, w1));
            }
            i += 16;
        }
        for t in 0..4 {
            for o in 0..2 {
                let mut lanes = [0i32; 8];
                _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, a[t][o]);
                out[t][o] = lanes.iter().sum();
            }
        }
    }
    (out, full)
}

/// `acc[c][j] += wk[c] · xs[j]` for the whole conv register tile (separate multiply and add, as
/// the scalar loop).
#[inline(always)]
pub(crate) fn axpy_tile_avx(
    acc: &mut [[f32; COL_BLOCK]; CO_BLOCK],
    wk: &[f32; CO_BLOCK],
    xs: &[f32; COL_BLOCK],
) {
    const { assert!(COL_BLOCK == 16) };
    // SAFETY: all pointers address whole fixed-size arrays of 16 floats (two 8-float vectors).
    unsafe {
        let x0 = _mm256_loadu_ps(xs.as_ptr());
        let x1 = _mm256_loadu_ps(xs.as_ptr().add(8));
        for c in 0..CO_BLOCK {
            let wv = _mm256_set1_ps(wk[c]);
            let p = acc[c].as_mut_ptr();
            _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), _mm256_mul_ps(wv, x0)));
            _mm256_storeu_ps(
                p.add(8),
                _mm256_add_ps(_mm256_loadu_ps(p.add(8)), _mm256_mul_ps(wv, x1)),
            );
        }
    }
}

/// One interior register tile of the stride-1 conv with f32 weights on AVX: outputs
/// `co..co+4 × (oy, x0..x0+16)`, accumulators in registers for the whole (ci, ky, kx) sum, in the
/// same order and with the same separate multiply/add as the scalar loop (bit-identical).
/// The caller guarantees every column `x0 + kx − pad_left .. +16` lies inside the row.
pub(crate) fn conv_tile_avx<const NV: usize>(
    // NV is 1 or 2 (8 or 16 columns); CO_BLOCK is 4.
    input: &ConvInput<'_>,
    c: &Conv<'_>,
    wts: &[f32],
    co: usize,
    oy: usize,
    x0: usize,
) -> [[[f32; 8]; NV]; CO_BLOCK] {
    let ConvInput { x, h, w, pad, .. } = *input;
    let (cin, k, b) = (c.cin, c.k, c.b);
    const { assert!(CO_BLOCK == 4 && (NV == 1 || NV == 2)) };
    assert!(
        x.len() >= cin * h * w
            && wts.len() >= (co + CO_BLOCK) * cin * k * k
            && b.len() >= co + CO_BLOCK
    );
    // Input columns this tile reads: x0 − pad_left .. x0 − pad_left + 8·NV + k − 1; when some lie
    // outside the row, the vector is gathered into a zero-padded buffer (adding w·0 instead of
    // skipping changes at most the sign of a zero).
    let interior = x0 >= pad.left && x0 + k + 8 * NV <= w + pad.left + 1;
    let mut out = [[[0f32; 8]; NV]; CO_BLOCK];
    // SAFETY: the asserts above bound every pointer offset used below.
    unsafe {
        let mut a = [[_mm256_setzero_ps(); NV]; CO_BLOCK];
        for (c, ac) in a.iter_mut().enumerate() {
            for v in ac.iter_mut() {
                *v = _mm256_set1_ps(b[co + c]);
            }
        }
        for ci in 0..cin {
            for ky in 0..k {
                let iy = (oy + ky) as isize - pad.top as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let row_start = (ci * h + iy as usize) * w;
                let wrow = wts.as_ptr().add(((co * cin + ci) * k + ky) * k);
                // The row segment this tile reads, zero-padded outside the image when needed.
                let mut seg = [0f32; 8 * 2 + 8];
                let seg_len = 8 * NV + k - 1;
                let base: *const f32 = if interior {
                    x.as_ptr().add(row_start + x0 - pad.left)
                } else {
                    for (j, sv) in seg.iter_mut().enumerate().take(seg_len) {
                        let ix = (x0 + j) as isize - pad.left as isize;
                        if ix >= 0 && (ix as usize) < w {
                            *sv = x[row_start + ix as usize];
                        }
                    }
                    seg.as_ptr()
                };
                for kx in 0..k {
                    let xv0 = _mm256_loadu_ps(base.add(kx));
                    let xv1 = if NV == 2 {
                        _mm256_loadu_ps(base.add(kx + 8))
                    } else {
                        xv0
                    };
                    let w0 = _mm256_set1_ps(*wrow.add(kx));
                    let w1 = _mm256_set1_ps(*wrow.add(cin * k * k + kx));
                    let w2 = _mm256_set1_ps(*wrow.add(2 * cin * k * k + kx));
                    let w3 = _mm256_set1_ps(*wrow.add(3 * cin * k * k + kx));
                    a[0][0] = _mm256_add_ps(a[0][0], _mm256_mul_ps(w0, xv0));
                    a[1][0] = _mm256_add_ps(a[1][0], _mm256_mul_ps(w1, xv0));
                    a[2][0] = _mm256_add_ps(a[2][0], _mm256_mul_ps(w2, xv0));
                    a[3][0] = _mm256_add_ps(a[3][0], _mm256_mul_ps(w3, xv0));
                    if NV == 2 {
                        a[0][NV - 1] = _mm256_add_ps(a[0][NV - 1], _mm256_mul_ps(w0, xv1));
                        a[1][NV - 1] = _mm256_add_ps(a[1][NV - 1], _mm256_mul_ps(w1, xv1));
                        a[2][NV - 1] = _mm256_add_ps(a[2][NV - 1], _mm256_mul_ps(w2, xv1));
                        a[3][NV - 1] = _mm256_add_ps(a[3][NV - 1], _mm256_mul_ps(w3, xv1));
                    }
                }
            }
        }
        for (c, ac) in a.iter().enumerate() {
            for v in 0..NV {
                _mm256_storeu_ps(out[c][v].as_mut_ptr(), ac[v]);
            }
        }
    }
    out
}
