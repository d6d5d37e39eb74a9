//! Activations (SiLU, tanh-GELU) and the row softmax.

use super::Isa;

/// `x · sigmoid(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + crate::math::exp(-x))
}

/// Tanh-approximated GELU: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + crate::math::tanh(K * (x + 0.044715 * x * x * x)))
}

/// In-place softmax of one row.
#[inline]
pub fn softmax(x: &mut [f32]) {
    let m = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    // The exponentials first (a loop that vectorizes), then their sum in index order.
    for v in x.iter_mut() {
        *v = crate::math::exp(*v - m);
    }
    let mut s = 0f32;
    for v in x.iter() {
        s += *v;
    }
    let inv = 1.0 / s;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// [`gelu_tanh`] of every value of `row`, in place, on `isa` (the same bits on every ISA: the
/// AVX2 variant only widens the vectorized loop).
pub fn gelu_row(isa: Isa, row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: `isa` is supported (the caller's contract), so the CPU has AVX2.
        unsafe { gelu_row_avx2(row) };
        return;
    }
    let _ = isa;
    gelu_row_body(row);
}

/// [`gelu_row_body`] compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_row_avx2(row: &mut [f32]) {
    gelu_row_body(row);
}

#[inline(always)]
fn gelu_row_body(row: &mut [f32]) {
    for v in row.iter_mut() {
        *v = gelu_tanh(*v);
    }
}
