//! Numeric kernels: dot products, Linear, Conv2d, norms, activations, softmax.
//!
//! Every kernel writes into caller-provided buffers and states its scratch needs; none allocates.
//! Float sums use eight independent accumulators in a fixed order, so results are identical on
//! every target (the compiler may vectorize the lanes but never reorders them). Integer paths
//! (int8 × int8 → i32) are exact by construction.

use crate::weights::{Conv, Linear, Norm, Weight};

/// `Σ a[i]·b[i]` with eight accumulator lanes.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `Σ a[i]·b[i]` over int8 values, exact in i32 for lengths below 2^17.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0i32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            acc[l] += x[l] as i32 * y[l] as i32;
        }
    }
    let mut s: i32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += *x as i32 * *y as i32;
    }
    s
}

/// Symmetric dynamic quantization of one activation vector to [−127, 127]; returns the scale.
#[inline]
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(libm::fabsf(*v)));
    if !(amax > 0.0) || !amax.is_finite() {
        q.iter_mut().for_each(|v| *v = 0);
        return if amax.is_finite() { 0.0 } else { f32::NAN };
    }
    let inv = 127.0 / amax;
    for (o, v) in q.iter_mut().zip(x) {
        *o = libm::roundf(v * inv).clamp(-127.0, 127.0) as i8;
    }
    amax / 127.0
}

/// Scratch for [`linear`]: f32 values (f16 row unpacking, int8 row scales) and int8 activations.
pub struct LinearScratch<'s> {
    /// At least `in_dim` (f16) or `n` (int8) floats.
    pub f: &'s mut [f32],
    /// At least `n · in_dim` bytes (int8 weights only).
    pub q: &'s mut [i8],
}

/// Scratch sizes (f32 count, i8 count) [`linear`] needs for `n` rows of `in_dim`.
pub fn linear_scratch_len(n: usize, in_dim: usize) -> (usize, usize) {
    (in_dim.max(n), n * in_dim)
}

/// `y[t] = x[t] Wᵀ + b` for `n` rows; x is `n × in_dim`, y is `n × out_dim`, both row-major.
/// int8 weights use int8 activations quantized per row and i32 accumulation.
pub fn linear(x: &[f32], n: usize, l: &Linear<'_>, y: &mut [f32], s: &mut LinearScratch<'_>) {
    let (din, dout) = (l.in_dim, l.out_dim);
    let x = &x[..n * din];
    let y = &mut y[..n * dout];
    match l.w {
        Weight::F32(w) => {
            for o in 0..dout {
                let row = &w[o * din..(o + 1) * din];
                let b = l.b.map_or(0.0, |b| b[o]);
                for t in 0..n {
                    y[t * dout + o] = dot(&x[t * din..(t + 1) * din], row) + b;
                }
            }
        }
        Weight::F16(w) => {
            let row = &mut s.f[..din];
            for o in 0..dout {
                for (r, h) in row.iter_mut().zip(&w[o * din..(o + 1) * din]) {
                    *r = h.to_f32();
                }
                let b = l.b.map_or(0.0, |b| b[o]);
                for t in 0..n {
                    y[t * dout + o] = dot(&x[t * din..(t + 1) * din], row) + b;
                }
            }
        }
        Weight::I8 { q: w, scales } => {
            let qx = &mut s.q[..n * din];
            let sx = &mut s.f[..n];
            for t in 0..n {
                sx[t] = quantize_row(&x[t * din..(t + 1) * din], &mut qx[t * din..(t + 1) * din]);
            }
            for o in 0..dout {
                let row = &w[o * din..(o + 1) * din];
                let b = l.b.map_or(0.0, |b| b[o]);
                let so = scales[o];
                for t in 0..n {
                    let acc = dot_i8(&qx[t * din..(t + 1) * din], row);
                    y[t * dout + o] = acc as f32 * (sx[t] * so) + b;
                }
            }
        }
    }
}

/// LayerNorm without affine parameters over each `c`-wide row of `x`, written to `y`.
pub fn layer_norm(x: &[f32], y: &mut [f32], c: usize, eps: f32) {
    for (xr, yr) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
        let mut s = 0f64;
        for v in xr {
            s += *v as f64;
        }
        let mean = s / c as f64;
        let mut q = 0f64;
        for v in xr {
            let d = *v as f64 - mean;
            q += d * d;
        }
        let var = q / c as f64;
        let rstd = (1.0 / libm::sqrt(var + eps as f64)) as f32;
        let mean = mean as f32;
        for (o, v) in yr.iter_mut().zip(xr) {
            *o = (*v - mean) * rstd;
        }
    }
}

/// GroupNorm (with affine) of a `c × hw` map into `y`, optionally followed by SiLU.
pub fn group_norm(x: &[f32], y: &mut [f32], c: usize, hw: usize, groups: usize, eps: f32, n: &Norm<'_>, silu_after: bool) {
    let cg = c / groups;
    for g in 0..groups {
        let xs = &x[g * cg * hw..(g + 1) * cg * hw];
        let mut s = 0f64;
        for v in xs {
            s += *v as f64;
        }
        let cnt = (cg * hw) as f64;
        let mean = s / cnt;
        let mut q = 0f64;
        for v in xs {
            let d = *v as f64 - mean;
            q += d * d;
        }
        let rstd = 1.0 / libm::sqrt(q / cnt + eps as f64);
        for ci in g * cg..(g + 1) * cg {
            let scale = (rstd * n.w[ci] as f64) as f32;
            let shift = (n.b[ci] as f64 - mean * rstd * n.w[ci] as f64) as f32;
            let ys = &mut y[ci * hw..(ci + 1) * hw];
            let xs = &x[ci * hw..(ci + 1) * hw];
            for (o, v) in ys.iter_mut().zip(xs) {
                let t = *v * scale + shift;
                *o = if silu_after { silu(t) } else { t };
            }
        }
    }
}

/// `x · sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + libm::expf(-x))
}

/// Tanh-approximated GELU: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_56; // sqrt(2/pi)
    0.5 * x * (1.0 + libm::tanhf(K * (x + 0.044715 * x * x * x)))
}

/// In-place softmax of one row.
pub fn softmax(x: &mut [f32]) {
    let m = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut s = 0f32;
    for v in x.iter_mut() {
        *v = libm::expf(*v - m);
        s += *v;
    }
    let inv = 1.0 / s;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Zero padding of a convolution: top, left, bottom, right.
#[derive(Clone, Copy, Debug)]
pub struct Pad {
    /// Rows added above.
    pub top: usize,
    /// Columns added left.
    pub left: usize,
    /// Rows added below.
    pub bottom: usize,
    /// Columns added right.
    pub right: usize,
}

impl Pad {
    /// The same padding on every side.
    pub const fn same(p: usize) -> Pad {
        Pad { top: p, left: p, bottom: p, right: p }
    }
}

/// Output side of a convolution.
pub const fn conv_out_side(n: usize, k: usize, stride: usize, pad_lo: usize, pad_hi: usize) -> usize {
    (n + pad_lo + pad_hi - k) / stride + 1
}

/// Scratch for [`conv2d`] with int8 weights: quantized input, per-row scales, one i32 row.
pub struct ConvScratch<'s> {
    /// `cin · h · w` bytes.
    pub q: &'s mut [i8],
    /// `h` floats.
    pub row_scale: &'s mut [f32],
    /// `wo` accumulators.
    pub acc: &'s mut [i32],
}

/// Scratch sizes (i8, f32, i32 counts) of [`conv2d`] on a `cin × h × w` input (int8 weights).
pub fn conv_scratch_len(cin: usize, h: usize, w: usize, wo: usize) -> (usize, usize, usize) {
    (cin * h * w, h, wo)
}

const ROW_TILE: usize = 8;

/// Valid output columns `[lo, hi)` for kernel column `kx`.
#[inline]
fn ox_range(w: usize, wo: usize, kx: usize, stride: usize, pad_left: usize) -> (usize, usize) {
    // ix = ox·stride + kx − pad_left must lie in [0, w).
    let lo = if kx >= pad_left { 0 } else { (pad_left - kx).div_ceil(stride) };
    let hi_excl = if w + pad_left > kx {
        ((w + pad_left - kx - 1) / stride + 1).min(wo)
    } else {
        0
    };
    (lo, hi_excl.max(lo))
}

/// 2-D convolution of a `cin × h × w` map (channel-major) into `cout × ho × wo`.
/// f32/f16 weights accumulate in f32 over (ci, ky, kx); int8 weights quantize the input per
/// image row (over all channels), accumulate each kernel row in i32 and rescale once per row,
/// so the result does not depend on how the image is split into row bands.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(x: &[f32], h: usize, w: usize, c: &Conv<'_>, stride: usize, pad: Pad, y: &mut [f32], s: Option<&mut ConvScratch<'_>>) {
    let (cin, cout, k) = (c.cin, c.cout, c.k);
    let ho = conv_out_side(h, k, stride, pad.top, pad.bottom);
    let wo = conv_out_side(w, k, stride, pad.left, pad.right);
    let y = &mut y[..cout * ho * wo];
    let iy_of = |oy: usize, ky: usize| -> Option<usize> {
        let iy = (oy * stride + ky) as isize - pad.top as isize;
        if iy < 0 || iy >= h as isize {
            None
        } else {
            Some(iy as usize)
        }
    };
    match c.w {
        Weight::F32(_) | Weight::F16(_) => {
            let wv = |idx: usize| -> f32 {
                match c.w {
                    Weight::F32(w) => w[idx],
                    Weight::F16(w) => w[idx].to_f32(),
                    Weight::I8 { .. } => 0.0,
                }
            };
            for co in 0..cout {
                let plane = &mut y[co * ho * wo..(co + 1) * ho * wo];
                plane.iter_mut().for_each(|v| *v = c.b[co]);
                for oy0 in (0..ho).step_by(ROW_TILE) {
                    let oy1 = (oy0 + ROW_TILE).min(ho);
                    for ci in 0..cin {
                        let xp = &x[ci * h * w..(ci + 1) * h * w];
                        for ky in 0..k {
                            for kx in 0..k {
                                let wgt = wv(((co * cin + ci) * k + ky) * k + kx);
                                let (lo, hi) = ox_range(w, wo, kx, stride, pad.left);
                                if lo >= hi {
                                    continue;
                                }
                                for oy in oy0..oy1 {
                                    let Some(iy) = iy_of(oy, ky) else { continue };
                                    let yrow = &mut plane[oy * wo + lo..oy * wo + hi];
                                    let xrow = &xp[iy * w..(iy + 1) * w];
                                    if stride == 1 {
                                        let xs = &xrow[lo + kx - pad.left..hi + kx - pad.left];
                                        for (o, v) in yrow.iter_mut().zip(xs) {
                                            *o += wgt * *v;
                                        }
                                    } else {
                                        for (j, o) in yrow.iter_mut().enumerate() {
                                            *o += wgt * xrow[(lo + j) * stride + kx - pad.left];
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Weight::I8 { q: wq, scales } => {
            let Some(s) = s else { return };
            let q = &mut s.q[..cin * h * w];
            let rs = &mut s.row_scale[..h];
            // Per-row scale over all channels of that input row.
            for iy in 0..h {
                let mut amax = 0f32;
                for ci in 0..cin {
                    for v in &x[(ci * h + iy) * w..(ci * h + iy + 1) * w] {
                        amax = amax.max(libm::fabsf(*v));
                    }
                }
                let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                rs[iy] = amax / 127.0;
                for ci in 0..cin {
                    let base = (ci * h + iy) * w;
                    for i in 0..w {
                        q[base + i] = libm::roundf(x[base + i] * inv).clamp(-127.0, 127.0) as i8;
                    }
                }
            }
            let acc = &mut s.acc[..wo];
            for co in 0..cout {
                let plane = &mut y[co * ho * wo..(co + 1) * ho * wo];
                for oy in 0..ho {
                    let yrow = &mut plane[oy * wo..(oy + 1) * wo];
                    yrow.iter_mut().for_each(|v| *v = c.b[co]);
                    for ky in 0..k {
                        let Some(iy) = iy_of(oy, ky) else { continue };
                        acc.iter_mut().for_each(|a| *a = 0);
                        for ci in 0..cin {
                            let xrow = &q[(ci * h + iy) * w..(ci * h + iy + 1) * w];
                            for kx in 0..k {
                                let wgt = wq[((co * cin + ci) * k + ky) * k + kx] as i32;
                                if wgt == 0 {
                                    continue;
                                }
                                let (lo, hi) = ox_range(w, wo, kx, stride, pad.left);
                                if lo >= hi {
                                    continue;
                                }
                                if stride == 1 {
                                    let xs = &xrow[lo + kx - pad.left..hi + kx - pad.left];
                                    for (a, v) in acc[lo..hi].iter_mut().zip(xs) {
                                        *a += wgt * *v as i32;
                                    }
                                } else {
                                    for (j, a) in acc[lo..hi].iter_mut().enumerate() {
                                        *a += wgt * xrow[(lo + j) * stride + kx - pad.left] as i32;
                                    }
                                }
                            }
                        }
                        let sc = rs[iy] * scales[co];
                        for (o, a) in yrow.iter_mut().zip(acc.iter()) {
                            *o += *a as f32 * sc;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive() {
        let a: [f32; 37] = core::array::from_fn(|i| (i as f32 * 0.37).sin());
        let b: [f32; 37] = core::array::from_fn(|i| (i as f32 * 0.11).cos());
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - naive).abs() < 1e-5);
        let qa: [i8; 37] = core::array::from_fn(|i| (i as i32 * 7 % 255 - 127) as i8);
        let qb: [i8; 37] = core::array::from_fn(|i| (i as i32 * 13 % 255 - 127) as i8);
        let n: i32 = qa.iter().zip(&qb).map(|(x, y)| *x as i32 * *y as i32).sum();
        assert_eq!(dot_i8(&qa, &qb), n);
    }

    #[test]
    fn ox_range_is_exact() {
        for w in 1..9 {
            for stride in 1..3 {
                for k in [1usize, 3] {
                    for pl in 0..2 {
                        let wo = conv_out_side(w, k, stride, pl, 1);
                        for kx in 0..k {
                            let (lo, hi) = ox_range(w, wo, kx, stride, pl);
                            for ox in 0..wo {
                                let ix = (ox * stride + kx) as isize - pl as isize;
                                let valid = ix >= 0 && (ix as usize) < w;
                                assert_eq!(valid, ox >= lo && ox < hi, "w{w} s{stride} k{k} pl{pl} kx{kx} ox{ox}");
                            }
                        }
                    }
                }
            }
        }
    }
}
