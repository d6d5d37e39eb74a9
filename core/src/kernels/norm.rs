//! Normalizations: LayerNorm (no affine) and GroupNorm (affine, optional SiLU), with GroupNorm's
//! steps exposed so the row-band decoder can accumulate statistics piecewise with the same bits.

use super::activation::silu;
use super::layers::Norm;
#[cfg(target_arch = "x86_64")]
use super::Isa;
use crate::parallel::{for_rows, Parallel, SharedMut};

/// LayerNorm without affine parameters over each `c`-wide row of `x`, written to `y`.
pub fn layer_norm(x: &[f32], y: &mut [f32], c: usize, eps: f32) {
    for (xr, yr) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
        let mut s = 0f64;
        for v in xr {
            s += widen_f64(*v);
        }
        let mean = s / c as f64;
        let mut q = 0f64;
        for v in xr {
            let d = widen_f64(*v) - mean;
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
        s += widen_f64(*v);
        q += square_f64(*v);
    }
    *sum = s;
    *sumsq = q;
}

/// `v as f64`; on a core without double-precision hardware (the Cortex-M4) built from the bits
/// for normal `v` (the exponent rebiased, the significand shifted) instead of a call to the
/// software conversion: the same value.
#[inline(always)]
fn widen_f64(v: f32) -> f64 {
    #[cfg(all(target_arch = "arm", not(feature = "arm-mve")))]
    {
        widen_f64_int(v)
    }
    #[cfg(not(all(target_arch = "arm", not(feature = "arm-mve"))))]
    {
        v as f64
    }
}

/// [`widen_f64`] from integers (zero, subnormals, ∞ and NaN take `as f64`).
#[inline(always)]
#[cfg_attr(
    not(all(target_arch = "arm", not(feature = "arm-mve"))),
    allow(dead_code)
)]
fn widen_f64_int(v: f32) -> f64 {
    let b = v.to_bits();
    let e = (b >> 23) & 0xff;
    if e == 0 || e == 0xff {
        return v as f64;
    }
    let sign = ((b >> 31) as u64) << 63;
    let exp = (e as u64 + (1023 - 127)) << 52;
    f64::from_bits(sign | exp | (((b & 0x7f_ffff) as u64) << 29))
}

/// `(v as f64) · (v as f64)`, which is exact (24-bit significands give a 48-bit product). On a
/// core without double-precision hardware (the Cortex-M4) it is built from the integer product
/// of the significands instead of a software `f64` multiply: the same value, so the same bits.
#[inline(always)]
fn square_f64(v: f32) -> f64 {
    #[cfg(all(target_arch = "arm", not(feature = "arm-mve")))]
    {
        square_f64_int(v)
    }
    #[cfg(not(all(target_arch = "arm", not(feature = "arm-mve"))))]
    {
        let v = v as f64;
        v * v
    }
}

/// [`square_f64`] from integers for normal `v` (zero, subnormals, ∞ and NaN take the `f64`
/// multiply): significand `m` in [2²³, 2²⁴), `m²` in [2⁴⁶, 2⁴⁸) fits an `f64` significand, and
/// the exponent `2(e − 150)` plus the product's top bit stays far inside the `f64` range.
#[inline(always)]
#[cfg_attr(
    not(all(target_arch = "arm", not(feature = "arm-mve"))),
    allow(dead_code)
)]
fn square_f64_int(v: f32) -> f64 {
    let b = v.to_bits() & 0x7fff_ffff;
    let e = (b >> 23) as i32;
    if e == 0 || e == 0xff {
        let v = v as f64;
        return v * v;
    }
    let m = ((b & 0x7f_ffff) | 0x80_0000) as u64;
    let p = m * m;
    let top = (p >> 47) as i32;
    let mant = (p << (6 - top)) & ((1u64 << 52) - 1);
    let exp = (46 + top + 2 * (e - 150) + 1023) as u64;
    f64::from_bits((exp << 52) | mant)
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
/// Runs on [`Isa::active`] (the same bits on every ISA: the AVX2 variant only widens the
/// vectorized loop).
#[inline]
pub fn gn_apply(x: &[f32], y: &mut [f32], scale: f32, shift: f32, silu_after: bool) {
    #[cfg(target_arch = "x86_64")]
    if Isa::active() >= Isa::Avx2 {
        // SAFETY: the active ISA is supported, so the CPU has AVX2.
        unsafe { gn_apply_avx2(x, y, scale, shift, silu_after) };
        return;
    }
    gn_apply_body(x, y, scale, shift, silu_after);
}

/// [`gn_apply_body`] compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gn_apply_avx2(x: &[f32], y: &mut [f32], scale: f32, shift: f32, silu_after: bool) {
    gn_apply_body(x, y, scale, shift, silu_after);
}

#[inline(always)]
fn gn_apply_body(x: &[f32], y: &mut [f32], scale: f32, shift: f32, silu_after: bool) {
    if silu_after {
        for (o, v) in y.iter_mut().zip(x) {
            *o = silu(*v * scale + shift);
        }
    } else {
        for (o, v) in y.iter_mut().zip(x) {
            *o = *v * scale + shift;
        }
    }
}

/// [`gn_apply`] in place (the same operations on each value).
#[inline]
pub fn gn_apply_in_place(x: &mut [f32], scale: f32, shift: f32, silu_after: bool) {
    #[cfg(target_arch = "x86_64")]
    if Isa::active() >= Isa::Avx2 {
        // SAFETY: the active ISA is supported, so the CPU has AVX2.
        unsafe { gn_apply_in_place_avx2(x, scale, shift, silu_after) };
        return;
    }
    gn_apply_in_place_body(x, scale, shift, silu_after);
}

/// [`gn_apply_in_place_body`] compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gn_apply_in_place_avx2(x: &mut [f32], scale: f32, shift: f32, silu_after: bool) {
    gn_apply_in_place_body(x, scale, shift, silu_after);
}

#[inline(always)]
fn gn_apply_in_place_body(x: &mut [f32], scale: f32, shift: f32, silu_after: bool) {
    if silu_after {
        for v in x.iter_mut() {
            *v = silu(*v * scale + shift);
        }
    } else {
        for v in x.iter_mut() {
            *v = *v * scale + shift;
        }
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
    par: &dyn Parallel,
) {
    let cg = c / groups;
    let y = SharedMut::new(&mut y[..c * hw]);
    // Groups are independent: split over `par`'s tasks (each group computed as the loop would).
    for_rows(par, groups, 2 * cg * hw, &|g0, g1| {
        // SAFETY: the channels of groups g0..g1 belong to this call only.
        let y = unsafe { y.slice(g0 * cg * hw, (g1 - g0) * cg * hw) };
        let y0 = g0 * cg * hw;
        for g in g0..g1 {
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
                    &mut y[ci * hw - y0..(ci + 1) * hw - y0],
                    scale,
                    shift,
                    silu_after,
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::{square_f64_int, widen_f64_int};

    #[test]
    fn integer_square_and_widening_are_the_f64_ones() {
        // Every 7th f32 bit pattern (both signs), then the ends of every binade.
        let check = |v: f32| {
            let want = (v as f64) * (v as f64);
            let got = square_f64_int(v);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{v:e}: {got:e} vs {want:e}"
            );
            let (got, want) = (widen_f64_int(v), v as f64);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "widen {v:e}: {got:e} vs {want:e}"
            );
        };
        for b in (0..=u32::MAX).step_by(7) {
            check(f32::from_bits(b));
        }
        for e in 0..=255u32 {
            for m in [0, 1, 0x40_0000, 0x7f_fffe, 0x7f_ffff] {
                check(f32::from_bits(e << 23 | m));
                check(-f32::from_bits(e << 23 | m));
            }
        }
    }
}
