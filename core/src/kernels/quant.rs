//! The row quantizer: symmetric dynamic int8 quantization of activations (used by the int8
//! Linear per token row and by the int8 conv per image row) and of weights at conversion time.

/// Symmetric dynamic quantization of one activation vector to [−127, 127]; returns the scale.
#[inline]
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    quantize_pieces(core::iter::once(x), q)
}

/// [`quantize_row`] of the concatenation of `pieces` (one scale for all of them) into `q`: the
/// int8 conv quantizes an image row over all channels, which lie apart in the input map.
///
/// The scale is `max|x| / 127` and codes are `round(x · 127 / max|x|)` clamped to ±127. NaN
/// values do not raise the maximum and code to 0; an all-zero row gives scale 0, and a
/// non-finite maximum gives scale NaN, both with all codes 0 (never garbage).
#[inline]
pub(crate) fn quantize_pieces<'x>(
    pieces: impl Iterator<Item = &'x [f32]> + Clone,
    q: &mut [i8],
) -> f32 {
    let amax = pieces
        .clone()
        .flatten()
        .fold(0f32, |m, v| m.max(libm::fabsf(*v)));
    if amax.partial_cmp(&0.0) != Some(core::cmp::Ordering::Greater) || !amax.is_finite() {
        q.iter_mut().for_each(|v| *v = 0);
        return if amax.is_finite() { 0.0 } else { f32::NAN };
    }
    let inv = 127.0 / amax;
    for (o, v) in q.iter_mut().zip(pieces.flatten()) {
        *o = libm::roundf(v * inv).clamp(-127.0, 127.0) as i8;
    }
    amax / 127.0
}
