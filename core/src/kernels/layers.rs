//! Layer views the kernels read: a weight in one of the storage types, and the Linear, Conv and
//! GroupNorm parameters built from such weights. They sit below the kernels (which never import
//! the model layer, `crate::weights`); `crate::weights` re-exports them.

use half::f16;

/// A Linear or Conv weight in one of the storage types. Row `o` (output channel) is contiguous.
#[derive(Clone, Copy, Debug)]
pub enum Weight<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// f16 values.
    F16(&'a [f16]),
    /// int8 values with one f32 scale per output channel: `w[o][i] = q[o][i] · scales[o]`.
    /// Conv weights are stored `[cout, kh, cin, kw]` (one kernel row contiguous); the shape
    /// checked at load time stays the official `[cout, cin, kh, kw]`.
    I8 {
        /// Quantized values, row-major.
        q: &'a [i8],
        /// Per-output-channel scales.
        scales: &'a [f32],
    },
}

/// `y = x Wᵀ + b`.
#[derive(Clone, Copy, Debug)]
pub struct Linear<'a> {
    /// Weight `[out_dim, in_dim]`.
    pub w: Weight<'a>,
    /// Bias `[out_dim]`, if any.
    pub b: Option<&'a [f32]>,
    /// Output features.
    pub out_dim: usize,
    /// Input features.
    pub in_dim: usize,
}

impl<'a> Linear<'a> {
    /// The Linear of output rows `o0..o1` (a view: each output is computed exactly as in the
    /// whole Linear). Panics if the range is out of bounds (callers pass model-validated sizes).
    pub fn rows(&self, o0: usize, o1: usize) -> Linear<'a> {
        let d = self.in_dim;
        Linear {
            w: match self.w {
                Weight::F32(w) => Weight::F32(&w[o0 * d..o1 * d]),
                Weight::F16(w) => Weight::F16(&w[o0 * d..o1 * d]),
                Weight::I8 { q, scales } => Weight::I8 {
                    q: &q[o0 * d..o1 * d],
                    scales: &scales[o0..o1],
                },
            },
            b: self.b.map(|b| &b[o0..o1]),
            out_dim: o1 - o0,
            in_dim: d,
        }
    }
}

/// A square-kernel 2-D convolution with bias.
#[derive(Clone, Copy, Debug)]
pub struct Conv<'a> {
    /// Weight `[cout, cin, k, k]`.
    pub w: Weight<'a>,
    /// Bias `[cout]`.
    pub b: &'a [f32],
    /// Output channels.
    pub cout: usize,
    /// Input channels.
    pub cin: usize,
    /// Kernel side.
    pub k: usize,
}

/// GroupNorm affine parameters.
#[derive(Clone, Copy, Debug)]
pub struct Norm<'a> {
    /// Per-channel scale.
    pub w: &'a [f32],
    /// Per-channel shift.
    pub b: &'a [f32],
}
