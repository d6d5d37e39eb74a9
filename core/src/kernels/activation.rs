//! Activations (SiLU, tanh-GELU) and the row softmax.

/// `x · sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + crate::math::exp(-x))
}

/// Tanh-approximated GELU: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + crate::math::tanh(K * (x + 0.044715 * x * x * x)))
}

/// In-place softmax of one row.
pub fn softmax(x: &mut [f32]) {
    let m = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut s = 0f32;
    for v in x.iter_mut() {
        *v = crate::math::exp(*v - m);
        s += *v;
    }
    let inv = 1.0 / s;
    for v in x.iter_mut() {
        *v *= inv;
    }
}
