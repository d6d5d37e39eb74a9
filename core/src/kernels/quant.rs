//! The row quantizer: symmetric dynamic int8 quantization of activations (used by the int8
//! Linear per token row and by the int8 conv per image row) and of weights at conversion time.

use super::Isa;

/// Symmetric dynamic quantization of one activation vector to [−127, 127]; returns the scale.
#[inline]
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    let (scale, inv) = row_scale(core::iter::once(x));
    encode(x, inv, q);
    scale
}

/// [`quantize_row`] on `isa` (the same codes and scale on every ISA: the AVX2 variant only
/// widens the vectorized loops).
#[inline]
pub fn quantize_row_with(isa: Isa, x: &[f32], q: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: `isa` is supported (the caller's contract), so the CPU has AVX2.
        return unsafe { quantize_row_avx2(x, q) };
    }
    let _ = isa;
    quantize_row(x, q)
}

/// [`quantize_row`] compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(x: &[f32], q: &mut [i8]) -> f32 {
    quantize_row(x, q)
}

/// The second pass of two-pass ("a16") activations: `q` holds the codes of `x` under scale `s1`
/// ([`quantize_row`]); they are replaced by the codes of the rounding residual `x − q·s1` under
/// `s2 = s1 / 254`, which is returned. The residual is at most `s1 / 2`, so its codes fill
/// [−127, 127] and `q₁·s1 + q₂·s2` is within `s2 / 2` of each value (≈ 15 bits). Every step is
/// one correctly rounded f32 operation, so the CUDA kernel `quantize_residual_rows` gives the
/// same codes. A zero, non-finite or too small `s1` gives all codes 0.
pub fn quantize_residual(x: &[f32], s1: f32, q: &mut [i8]) -> f32 {
    let s2 = s1 / 254.0;
    let inv = 254.0 / s1;
    if s1 > 0.0 && inv.is_finite() {
        for (c, v) in q.iter_mut().zip(x) {
            let r = v - *c as f32 * s1;
            *c = round_half_away(r * inv).clamp(-127, 127) as i8;
        }
    } else {
        q.iter_mut().for_each(|c| *c = 0);
    }
    s2
}

/// The scale of a row made of `pieces` (the int8 conv quantizes an image row over all channels,
/// which lie apart in the input map), and the factor [`code`] multiplies by.
///
/// The scale is `max|x| / 127` and codes are `round(x · 127 / max|x|)` clamped to ±127. NaN
/// values do not raise the maximum and code to 0; an all-zero row gives scale 0, and a
/// non-finite maximum gives scale NaN, both with all codes 0 (`inv = None`, never garbage).
#[inline]
pub(crate) fn row_scale<'x>(pieces: impl Iterator<Item = &'x [f32]>) -> (f32, Option<f32>) {
    let amax = f32::from_bits(pieces.map(abs_max_bits).max().unwrap_or(0));
    if amax.partial_cmp(&0.0) != Some(core::cmp::Ordering::Greater) || !amax.is_finite() {
        return (if amax.is_finite() { 0.0 } else { f32::NAN }, None);
    }
    (amax / 127.0, Some(127.0 / amax))
}

/// The bits of `max |x|` over the values that are not NaN (0 for none): for non-negative floats
/// the bit patterns order as the values, and integer maxima vectorize where `f32::max` does not.
#[inline]
fn abs_max_bits(x: &[f32]) -> u32 {
    // Bits of a non-negative float fit in i32, whose maxima vectorize on every x86 SIMD level;
    // eight running maxima, then their maximum (the order of maxima does not matter).
    let bits = |v: &f32| {
        let b = (v.to_bits() & 0x7fff_ffff) as i32;
        if b > 0x7f80_0000 {
            0
        } else {
            b
        }
    };
    let mut m = [0i32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (ml, v) in m.iter_mut().zip(c) {
            *ml = (*ml).max(bits(v));
        }
    }
    let tail = chunks.remainder().iter().map(bits).fold(0, i32::max);
    m.iter().copied().fold(tail, i32::max) as u32
}

/// The code of `v` under the factor of [`row_scale`].
#[inline(always)]
pub(crate) fn code(v: f32, inv: Option<f32>) -> i8 {
    match inv {
        Some(inv) => round_half_away(v * inv).clamp(-127, 127) as i8,
        None => 0,
    }
}

/// Codes of `x` into `q` (the same length).
#[inline]
pub(crate) fn encode(x: &[f32], inv: Option<f32>, q: &mut [i8]) {
    match inv {
        Some(inv) => {
            for (o, v) in q.iter_mut().zip(x) {
                *o = round_half_away(v * inv).clamp(-127, 127) as i8;
            }
        }
        None => q.iter_mut().for_each(|o| *o = 0),
    }
}

/// `libm::roundf(r) as i32` (halves away from zero) for |r| < 2²³, without the library call:
/// `r − trunc(r)` is exact in that range, so comparing it with ½ decides exactly as `roundf`.
/// NaN gives 0, as `roundf(NaN) as i32` does.
#[inline(always)]
pub(crate) fn round_half_away(r: f32) -> i32 {
    let t = r as i32;
    let frac = r - t as f32;
    // Branch-free, so loops over it vectorize.
    t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32
}
