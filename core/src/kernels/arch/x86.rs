//! x86-64 f32 kernels: AVX register blocks of the Linear and tiles of the stride-1 conv (the int8
//! GEMM is in `x86_gemm.rs`).
//!
//! Each function computes exactly what its scalar reference computes, in the same lane order and
//! with separate multiply and add (never FMA), so the results are bit-identical (checked by the
//! kernel ISA tests). They are compiled with `#[target_feature(enable = "avx")]` and called only
//! when [`crate::kernels::Isa`] says the CPU has AVX.

use crate::kernels::conv::{ConvInput, COL_BLOCK, CO_BLOCK};
use crate::kernels::layers::Conv;
use core::arch::x86_64::*;

/// Adds the lane sums of the 4 × 2 f32 dot block over `0..full` (a multiple of 8) to `acc`: lane
/// `l` of `[t][o]` gains `Σ_j x[t][8j + l]·w[o][8j + l]` in `j` order, as in the scalar loop.
///
/// # Safety
/// The CPU has AVX.
#[target_feature(enable = "avx")]
pub(crate) unsafe fn dot_block_lanes_avx(
    x: [&[f32]; 4],
    w: [&[f32]; 2],
    full: usize,
    acc: &mut [[[f32; 8]; 2]; 4],
) {
    for s in x.iter().chain(w.iter()) {
        assert!(s.len() >= full);
    }
    // SAFETY: every load reads 8 floats at offset i < full ≤ the slice's length (asserted); the
    // accumulators are 8 floats each.
    unsafe {
        let mut a = [[_mm256_setzero_ps(); 2]; 4];
        for t in 0..4 {
            for o in 0..2 {
                a[t][o] = _mm256_loadu_ps(acc[t][o].as_ptr());
            }
        }
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
}

/// `acc[c][j] += wk[c] · xs[j]` for the whole conv register tile (separate multiply and add, as
/// the scalar loop).
///
/// # Safety
/// The CPU has AVX.
#[target_feature(enable = "avx")]
pub(crate) unsafe fn axpy_tile_avx(
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
///
/// # Safety
/// The CPU has AVX.
#[target_feature(enable = "avx")]
pub(crate) unsafe fn conv_tile_avx<const NV: usize>(
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

/// Scores of one head: `scores[j] = dot(q, keys[j·stride ..][..hd]) · logit_scale` for every key,
/// each exactly as [`crate::kernels::dot`] computes it (eight lanes over the 8-wide chunks in
/// order, reduced `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))`, plus the zero tail), four
/// keys at a time so that the reductions share their shuffles. `hd` is a multiple of 8.
///
/// # Safety
/// The CPU has AVX; `q` holds `hd` floats, `keys` every `j·stride + hd ≤ keys.len()`, `scores`
/// at least `n`.
#[target_feature(enable = "avx")]
pub(crate) unsafe fn head_scores_avx(
    q: &[f32],
    keys: &[f32],
    stride: usize,
    n: usize,
    logit_scale: f32,
    scores: &mut [f32],
) {
    let hd = q.len();
    assert!(
        hd.is_multiple_of(8)
            && scores.len() >= n
            && (n == 0 || (n - 1) * stride + hd <= keys.len())
    );
    let kp = keys.as_ptr();
    let qp = q.as_ptr();
    let scale = _mm_set1_ps(logit_scale);
    let zero = _mm_setzero_ps();
    let mut j = 0;
    // SAFETY (whole body): every load is inside q or inside key row j < n (asserted above).
    while j + 4 <= n {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < hd {
            let qv = unsafe { _mm256_loadu_ps(qp.add(i)) };
            for (r, a) in acc.iter_mut().enumerate() {
                let kv = unsafe { _mm256_loadu_ps(kp.add((j + r) * stride + i)) };
                *a = _mm256_add_ps(*a, _mm256_mul_ps(qv, kv));
            }
            i += 8;
        }
        // Per key: (l0 + l4, l1 + l5, l2 + l6, l3 + l7), then the two pair sums, then their sum.
        let s = acc.map(|a| _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)));
        let h01 = _mm_hadd_ps(s[0], s[1]);
        let h23 = _mm_hadd_ps(s[2], s[3]);
        let dots = _mm_add_ps(_mm_hadd_ps(h01, h23), zero);
        unsafe { _mm_storeu_ps(scores.as_mut_ptr().add(j), _mm_mul_ps(dots, scale)) };
        j += 4;
    }
    while j < n {
        let k = &keys[j * stride..j * stride + hd];
        scores[j] = crate::kernels::dot(q, k) * logit_scale;
        j += 1;
    }
}

/// `out = Σ_j p[j] · vals[j·stride ..][..hd]`, keys in order (one multiply, one add per term,
/// as the reference loop), with the output kept in registers 64 floats at a time. `hd` is a
/// multiple of 8.
///
/// # Safety
/// The CPU has AVX; `out` holds `hd` floats, `vals` every `j·stride + hd ≤ vals.len()` for
/// `j < p.len()`.
#[target_feature(enable = "avx")]
pub(crate) unsafe fn weighted_values_avx(p: &[f32], vals: &[f32], stride: usize, out: &mut [f32]) {
    let hd = out.len();
    let n = p.len();
    assert!(hd.is_multiple_of(8) && (n == 0 || (n - 1) * stride + hd <= vals.len()));
    let vp = vals.as_ptr();
    let mut d0 = 0;
    // SAFETY (whole body): every load is inside value row j < n, every store inside `out`.
    while d0 < hd {
        let lanes = ((hd - d0) / 8).min(8);
        let mut acc = [_mm256_setzero_ps(); 8];
        for (j, pj) in p.iter().enumerate() {
            let pv = _mm256_set1_ps(*pj);
            let row = unsafe { vp.add(j * stride + d0) };
            for (c, a) in acc.iter_mut().enumerate().take(lanes) {
                let v = unsafe { _mm256_loadu_ps(row.add(8 * c)) };
                *a = _mm256_add_ps(*a, _mm256_mul_ps(pv, v));
            }
        }
        for (c, a) in acc.iter().enumerate().take(lanes) {
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(d0 + 8 * c), *a) };
        }
        d0 += 8 * lanes;
    }
}
