//! Normalizations: LayerNorm (no affine) and GroupNorm (affine, optional SiLU), with GroupNorm's
//! steps exposed so the row-band decoder can accumulate statistics piecewise with the same bits.

use super::activation::silu;
use super::layers::Norm;

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

/// Adds the values of `x` and their squares to `sum` and `sumsq` (f64, in order): GroupNorm's
/// per-channel statistics. A channel fed in consecutive pieces (image rows, in order) gives the
/// same bits as the whole plane at once, which is what makes the row-band decoder exact.
#[inline]
pub fn gn_accumulate(x: &[f32], sum: &mut f64, sumsq: &mut f64) {
    let (mut s, mut q) = (*sum, *sumsq);
    for v in x {
        let v = *v as f64;
        s += v;
        q += v * v;
    }
    *sum = s;
    *sumsq = q;
}

/// Mean and `1/sqrt(var + eps)` of one GroupNorm group from the sums of its channels (each from
/// [`gn_accumulate`], added in channel order) over `count` values: one pass, variance
/// `sumsq/count − mean²` in f64, clamped at 0.
pub fn gn_group_stats(sum: f64, sumsq: f64, count: usize, eps: f32) -> (f64, f64) {
    let n = count as f64;
    let mean = sum / n;
    let var = (sumsq / n - mean * mean).max(0.0);
    (mean, 1.0 / libm::sqrt(var + eps as f64))
}

/// Per-channel `(scale, shift)` of GroupNorm with affine weight `w` and bias `b`:
/// `y = x · scale + shift`.
#[inline]
pub fn gn_channel_affine(mean: f64, rstd: f64, w: f32, b: f32) -> (f32, f32) {
    let scale = (rstd * w as f64) as f32;
    let shift = (b as f64 - mean * rstd * w as f64) as f32;
    (scale, shift)
}

/// `y = x · scale + shift`, optionally followed by SiLU (the application step of GroupNorm).
#[inline]
pub fn gn_apply(x: &[f32], y: &mut [f32], scale: f32, shift: f32, silu_after: bool) {
    for (o, v) in y.iter_mut().zip(x) {
        let t = *v * scale + shift;
        *o = if silu_after { silu(t) } else { t };
    }
}

/// GroupNorm (with affine) of a `c × hw` map into `y`, optionally followed by SiLU. Statistics:
/// per channel [`gn_accumulate`] over the plane, channels of a group summed in order,
/// [`gn_group_stats`], [`gn_channel_affine`].
pub fn group_norm(
    x: &[f32],
    y: &mut [f32],
    c: usize,
    hw: usize,
    groups: usize,
    eps: f32,
    n: &Norm<'_>,
    silu_after: bool,
) {
    let cg = c / groups;
    for g in 0..groups {
        let (mut s, mut q) = (0f64, 0f64);
        for ci in g * cg..(g + 1) * cg {
            let (mut cs, mut cq) = (0f64, 0f64);
            gn_accumulate(&x[ci * hw..(ci + 1) * hw], &mut cs, &mut cq);
            s += cs;
            q += cq;
        }
        let (mean, rstd) = gn_group_stats(s, q, cg * hw, eps);
        for ci in g * cg..(g + 1) * cg {
            let (scale, shift) = gn_channel_affine(mean, rstd, n.w[ci], n.b[ci]);
            gn_apply(
                &x[ci * hw..(ci + 1) * hw],
                &mut y[ci * hw..(ci + 1) * hw],
                scale,
                shift,
                silu_after,
            );
        }
    }
}
