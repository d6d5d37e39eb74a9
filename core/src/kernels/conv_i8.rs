//! The int8 conv as an implicit GEMM on the panel kernels of [`super::gemm`], with its scratch
//! type and scratch-size function.
//!
//! Each input row is quantized once (one scale over all channels: the row-band decoder's
//! exactness rests on it) into pixel-major codes `qt[ix][ci]` with zero columns for the padding.
//! The weight of kernel row `ky` is packed as a `cout × (kw·cin)` matrix whose inputs run tap by
//! tap (`i = kx·cin + ci`), so for stride 1 the inputs output column `ox` needs are the `kw·cin`
//! consecutive bytes of `qt` from pixel `ox`: the activation rows of the GEMM are overlapping
//! windows `cin` bytes apart and nothing is unfolded. Other strides copy the patch rows out
//! (`unfold`). Either way each output adds, kernel row by kernel row, the exact i32 sum of that
//! row rescaled by `row scale · weight scale`, so the result is the same on every ISA and for
//! every split into row bands.

use super::conv::ConvInput;
use super::gemm::{act_row_len, encode_activations, gemm_i8_with};
use super::layers::{Conv, PanelsI8};
use super::pack::PANEL_NR;
use super::quant::{code, encode, row_scale};
use super::Isa;
use crate::parallel::{for_rows, split, split_count, Parallel, SharedMut};

/// Scratch for [`super::conv2d`] with int8 weights.
pub struct ConvScratch<'s> {
    /// Quantized input: pixel-major padded rows (stride 1) or unfolded patch rows, the first
    /// element of [`conv_scratch_len`].
    pub unfold: &'s mut [i8],
    /// One quantized input row, `cin · w` bytes (strided convs).
    pub qrow: &'s mut [i8],
    /// Per-input-row activation scales, `h` floats.
    pub row_scale: &'s mut [f32],
}

/// Bytes the GEMM may read past the last pixel-major row: its inputs are padded to groups of 4.
const TAIL: usize = 4;

/// Scratch sizes (unfold i8, row i8, f32) of an int8 conv with kernel side `k` on a
/// `cin × h × w` input with `wo` output columns, enough for either path (pixel-major rows
/// `h · (wo + k − 1) · cin + 4`, or unfolded patch rows `h · wo · act_row_len(k · cin)`).
pub fn conv_scratch_len(
    cin: usize,
    h: usize,
    w: usize,
    wo: usize,
    k: usize,
) -> (usize, usize, usize) {
    let pixel_major = h * (wo + k - 1).max(w) * cin + TAIL;
    let unfolded = h * wo * act_row_len(cin * k);
    (pixel_major.max(unfolded), cin * w, h)
}

/// Scratch sizes (unfold i8, row i8, f32) of an int8 conv with stride 1 on a `cin × h × w`
/// input padded to `w + k − 1` columns (the "same" convs of the row-band decoder): stride 1
/// always takes the pixel-major path, which needs no unfolded patch rows and no row buffer.
pub fn conv_scratch_len_same(cin: usize, h: usize, w: usize, k: usize) -> (usize, usize, usize) {
    (h * (w + k - 1) * cin + TAIL, 0, h)
}

/// The int8 conv of [`super::conv2d_with`] into `y` (`cout × ho × wo`).
pub(crate) fn conv2d_i8(
    isa: Isa,
    par: &dyn Parallel,
    input: &ConvInput<'_>,
    c: &Conv<'_>,
    wp: &PanelsI8<'_>,
    y: &mut [f32],
    s: &mut ConvScratch<'_>,
) {
    let ConvInput {
        x,
        h,
        w,
        stride,
        pad,
    } = *input;
    let (cin, cout, k) = (c.cin, c.cout, c.k);
    let (ho, wo) = input.out_sides(k);
    let plane_len = ho * wo;
    let kk = cin * k;
    let rs = &mut s.row_scale[..h];
    // Pixel-major rows serve stride 1 when the padded row is exactly what the outputs read.
    let wpad = wo + k - 1;
    let pixel_major = stride == 1 && wpad == w + pad.left + pad.right;
    let (row_len, lda) = if pixel_major {
        (wpad * cin, cin)
    } else {
        (wo * act_row_len(kk), act_row_len(kk))
    };
    let qa = &mut s.unfold[..h * row_len + if pixel_major { TAIL } else { 0 }];
    if pixel_major {
        let rows = SharedMut::new(&mut qa[..h * row_len]);
        let scales = SharedMut::new(&mut *rs);
        for_rows(par, h, cin * w, &|lo, hi| {
            for iy in lo..hi {
                // SAFETY: row iy (and its scale) belongs to this call only.
                let (qt, st) = unsafe { (rows.slice(iy * row_len, row_len), scales.slice(iy, 1)) };
                let row = (0..cin).map(|ci| &x[(ci * h + iy) * w..(ci * h + iy + 1) * w]);
                st[0] = pixel_major_row(isa, row, (pad.left, w, cin), qt);
                encode_activations(isa, qt);
            }
        });
        let tail = &mut qa[h * row_len..];
        tail.iter_mut().for_each(|v| *v = 0);
        encode_activations(isa, tail);
    } else {
        let qrow = &mut s.qrow[..cin * w];
        for iy in 0..h {
            let pieces = (0..cin).map(|ci| &x[(ci * h + iy) * w..(ci * h + iy + 1) * w]);
            let (scale, inv) = row_scale(pieces.clone());
            rs[iy] = scale;
            for (q, v) in qrow.iter_mut().zip(pieces.flatten()) {
                *q = code(*v, inv);
            }
            for ox in 0..wo {
                let dst = &mut qa[iy * row_len + ox * lda..iy * row_len + (ox + 1) * lda];
                dst.iter_mut().for_each(|v| *v = 0);
                for kx in 0..k {
                    let ix = (ox * stride + kx) as isize - pad.left as isize;
                    if ix >= 0 && (ix as usize) < w {
                        for ci in 0..cin {
                            dst[kx * cin + ci] = qrow[ci * w + ix as usize];
                        }
                    }
                }
            }
        }
        encode_activations(isa, qa);
    }

    let (qa, rs) = (&*qa, &*rs);
    let y = SharedMut::new(y);
    let tasks = split_count(cout, par.width() * 2, 16);
    par.run(tasks, &|task| {
        let (c0, c1) = split(cout, par.width() * 2, 16, task);
        // The outputs of `OX_BLOCK` columns × one panel's channels stay in this tile over the
        // kernel rows, then go to their channel planes in runs of columns (the planes lie far
        // apart: writing them a value at a time per kernel row cost more than the GEMM).
        let mut tile = [[0f32; PANEL_NR]; OX_BLOCK];
        for oy in 0..ho {
            for ox0 in (0..wo).step_by(OX_BLOCK) {
                let nox = (wo - ox0).min(OX_BLOCK);
                let mut cp = c0;
                while cp < c1 {
                    let ce = ((cp / PANEL_NR + 1) * PANEL_NR).min(c1);
                    for row in tile.iter_mut().take(nox) {
                        row[..ce - cp].copy_from_slice(&c.b[cp..ce]);
                    }
                    // Kernel rows in order: each output adds one rescaled i32 sum per row.
                    for ky in 0..k {
                        let iy = (oy * stride + ky) as isize - pad.top as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let iy = iy as usize;
                        let a = &qa[iy * row_len + ox0 * lda..];
                        // `row scale · weight scale` once per channel, not once per output.
                        let sr = rs[iy];
                        let mut srw = [0f32; PANEL_NR];
                        for (m, sw) in srw.iter_mut().zip(&wp.scales[cp..ce]) {
                            *m = sr * sw;
                        }
                        gemm_i8_with(isa, a, lda, nox, &wp.group(ky), (cp, ce), |ox, co, sums| {
                            let m = &srw[co - cp..co - cp + sums.len()];
                            let dst = &mut tile[ox][co - cp..co - cp + sums.len()];
                            for ((v, acc), m) in dst.iter_mut().zip(sums).zip(m) {
                                *v += *acc as f32 * m;
                            }
                        });
                    }
                    for j in 0..ce - cp {
                        // SAFETY: output planes c0..c1 belong to this task only.
                        let dst = unsafe { y.slice((cp + j) * plane_len + oy * wo + ox0, nox) };
                        for (d, row) in dst.iter_mut().zip(&tile) {
                            *d = row[j];
                        }
                    }
                    cp = ce;
                }
            }
        }
    });
}

/// Output columns per tile of the int8 conv's epilogue (a 2 KiB stack tile with 16 channels).
const OX_BLOCK: usize = 32;

/// Quantizes one input row given as its channels' rows (`cin` pieces of `w`) into pixel-major
/// codes `qt[(left + ix)·cin + ci]`, zero in the padding columns; returns the row's scale. On
/// `isa` (the same bytes on every ISA: the AVX2 variant only widens the vectorized loops).
fn pixel_major_row<'x>(
    isa: Isa,
    row: impl Iterator<Item = &'x [f32]> + Clone,
    geometry: (usize, usize, usize),
    qt: &mut [i8],
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: `isa` is supported (the caller's contract), so the CPU has AVX2.
        return unsafe { pixel_major_row_avx2(row, geometry, qt) };
    }
    let _ = isa;
    pixel_major_row_body(row, geometry, qt)
}

/// [`pixel_major_row_body`] compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pixel_major_row_avx2<'x>(
    row: impl Iterator<Item = &'x [f32]> + Clone,
    geometry: (usize, usize, usize),
    qt: &mut [i8],
) -> f32 {
    pixel_major_row_body(row, geometry, qt)
}

#[inline(always)]
fn pixel_major_row_body<'x>(
    row: impl Iterator<Item = &'x [f32]> + Clone,
    (left, w, cin): (usize, usize, usize),
    qt: &mut [i8],
) -> f32 {
    let (scale, inv) = row_scale(row.clone());
    qt[..left * cin].iter_mut().for_each(|v| *v = 0);
    qt[(left + w) * cin..].iter_mut().for_each(|v| *v = 0);
    let inv2 = inv.map(|f| f + f).filter(|f| f.is_finite());
    // On the Cortex-M4 (nothing to vectorize) the codes go straight to their pixel-major bytes.
    #[cfg(all(target_arch = "arm", not(feature = "arm-mve")))]
    if let Some(inv2) = inv2 {
        for (ci, xr) in row.enumerate() {
            let Some(last) = xr.len().checked_sub(1) else {
                continue;
            };
            let at = left * cin + ci;
            let dst = &mut qt[at..at + last * cin + 1];
            let p = dst.as_mut_ptr();
            for (j, v) in xr.iter().enumerate() {
                // SAFETY: j·cin ≤ last·cin < dst.len().
                unsafe { *p.add(j * cin) = code_twice(*v * inv2) };
            }
        }
        return scale;
    }
    // Codes of a channel's row a block at a time (a loop the compiler vectorizes), then stored
    // pixel-major.
    const BLOCK: usize = 64;
    let mut block = [0i8; BLOCK];
    for (ci, xr) in row.enumerate() {
        for (b, xs) in xr.chunks(BLOCK).enumerate() {
            let codes = &mut block[..xs.len()];
            match inv2 {
                Some(inv2) => {
                    for (o, v) in codes.iter_mut().zip(xs) {
                        *o = code_twice(*v * inv2);
                    }
                }
                _ => encode(xs, inv, codes),
            }
            // The bytes `cin` apart from pixel `left + BLOCK·b`, bounds-checked once (per-byte
            // checks and a stepping iterator cost more than the codes on the Cortex-M4).
            let at = (left + b * BLOCK) * cin + ci;
            let dst = &mut qt[at..at + (codes.len() - 1) * cin + 1];
            let p = dst.as_mut_ptr();
            for (j, q) in codes.iter().enumerate() {
                // SAFETY: j·cin ≤ (codes.len() − 1)·cin < dst.len().
                unsafe { *p.add(j * cin) = *q };
            }
        }
    }
    scale
}

/// [`super::quant::code`] of a value `v` from `r2 = v · 2f`, `f` the factor of
/// [`super::quant::row_scale`] (with `2f` finite). The product `r = v · f` has
/// |r| ≤ 127·(1 + 2⁻²⁴)² < 127.5 (or is NaN), so the clamp to ±127 never acts, and
/// `round_half_away(r)` is `(m + 1 + (m >> 31)) >> 1` with `m = trunc(2r)`: ⌊(m + 1)/2⌋ for
/// r ≥ 0, ⌊m/2⌋ = −⌊(1 − m)/2⌋ below. `r2` is `2r` exactly wherever `r` is a normal float
/// (doubling commutes with rounding) and below 2⁻¹²⁴ in magnitude otherwise, where both give
/// `m = 0`; NaN gives 0 as before. Three integer operations instead of two float compares and
/// the clamp. (Doubling the factor rather than `r` also keeps LLVM from folding `2r` into a
/// fixed-point conversion, which the Cortex-M55 build under QEMU got wrong.)
#[inline(always)]
fn code_twice(r2: f32) -> i8 {
    let m = r2 as i32;
    ((m + 1 + (m >> 31)) >> 1) as i8
}

#[cfg(test)]
mod tests {
    use super::code_twice;
    use crate::kernels::quant::round_half_away;

    /// The code `quant::code` gives for the product `r`.
    fn reference(r: f32) -> i8 {
        round_half_away(r).clamp(-127, 127) as i8
    }

    #[test]
    fn code_twice_matches_round_half_away_and_clamp() {
        // Every 13th f32 of (−127.5, 127.5) (the products' range), then every f32 within 4096
        // ulps of each multiple of ½ there (where rounding decides), then NaN.
        let top = 127.5f32.to_bits() - 1;
        for b in (0..=top).step_by(13).chain(top - 3..=top) {
            for r in [f32::from_bits(b), -f32::from_bits(b)] {
                assert_eq!(code_twice(r + r), reference(r), "r = {r:e}");
            }
        }
        for h in 0..=255 {
            let c = (h as f32 * 0.5).to_bits();
            for b in c.saturating_sub(4096)..=(c + 4096).min(top) {
                for r in [f32::from_bits(b), -f32::from_bits(b)] {
                    assert_eq!(code_twice(r + r), reference(r), "r = {r:e}");
                }
            }
        }
        assert_eq!(code_twice(f32::NAN), reference(f32::NAN));
        assert_eq!(code_twice(-f32::NAN), 0);
    }

    /// The bound the clamp-free path rests on: a row's largest value times its factor, for
    /// maxima over many binades, never rounds past 127.5; and the doubled factor gives the
    /// codes of the factor, down to values whose products are subnormal.
    #[test]
    fn products_with_the_row_factor_stay_below_127_5() {
        use crate::kernels::quant::row_scale;
        let mut b = 0x0000_0001u32;
        while b < 0x7f80_0000 {
            let amax = f32::from_bits(b);
            let row = [amax, -amax, amax * 0.999, amax * 0.5 / 127.0, amax * 1e-30];
            if let (_, Some(inv)) = row_scale(core::iter::once(&row[..])) {
                if (inv + inv).is_finite() {
                    for v in row {
                        let r = v * inv;
                        assert!(r.abs() < 127.5, "amax {amax:e}: {r:e}");
                        assert_eq!(code_twice(v * (inv + inv)), reference(r), "v {v:e}");
                    }
                }
            }
            b += 0x0000_1fff;
        }
    }
}
