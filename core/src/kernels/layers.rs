//! Layer views the kernels read: a weight in one of the storage types, and the Linear, Conv and
//! GroupNorm parameters built from such weights. They sit below the kernels (which never import
//! the model layer, `crate::weights`); `crate::weights` re-exports them.

use super::pack::{panel_k, panels_len, PANEL_NR};
use half::f16;

/// A Linear or Conv weight in one of the storage types. Row `o` (output channel) is contiguous.
#[derive(Clone, Copy, Debug)]
pub enum Weight<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// f16 values.
    F16(&'a [f16]),
    /// int8 values in the panel layout of [`super::pack`], with one f32 scale per output channel.
    I8(PanelsI8<'a>),
}

/// An int8 weight in the panel layout ([`super::pack`]): `w[o][i] = q[o][i] · scales[o]`, or a
/// view of its output channels `o0 ..` (what [`Linear::rows`] gives). A conv weight holds `kh`
/// packed `cout × (kw·cin)` weights, one per kernel row; the shape checked at load time stays the
/// official `[cout, cin, kh, kw]`.
#[derive(Clone, Copy, Debug)]
pub struct PanelsI8<'a> {
    /// Packed values of the whole tensor (every kernel row of a conv).
    pub q: &'a [i8],
    /// Per-output-channel scales of the whole tensor.
    pub scales: &'a [f32],
    /// Output channels of the whole tensor.
    pub rows: usize,
    /// Inputs of one packed row: `in_dim` of a Linear, `kw · cin` of a conv kernel row.
    pub k: usize,
    /// First output channel of this view.
    pub o0: usize,
    /// Two-pass ("a16") activations: a Linear quantizes each input row, then the rounding
    /// residual of that row under a scale 254 times finer, and adds the second GEMM's outputs
    /// (`linear`'s docs). About 15 bits per activation for twice the int8 GEMM work; the
    /// weight and its bytes are unchanged. Linear weights only.
    pub act16: bool,
}

impl<'a> PanelsI8<'a> {
    /// A whole packed tensor; `None` when the lengths do not fit `groups` packed `rows × k`
    /// weights and `rows` scales.
    pub fn new(
        q: &'a [i8],
        scales: &'a [f32],
        rows: usize,
        k: usize,
        groups: usize,
    ) -> Option<Self> {
        (q.len() == groups * panels_len(rows, k) && scales.len() == rows).then_some(PanelsI8 {
            q,
            scales,
            rows,
            k,
            o0: 0,
            act16: false,
        })
    }

    /// The same weight with two-pass activations on or off (see [`PanelsI8::act16`]).
    pub fn with_act16(self, act16: bool) -> Self {
        PanelsI8 { act16, ..self }
    }

    /// The packed weight of kernel row `g` (a conv's `ky`; 0 for a Linear).
    pub fn group(&self, g: usize) -> PanelsI8<'a> {
        let len = panels_len(self.rows, self.k);
        PanelsI8 {
            q: &self.q[g * len..(g + 1) * len],
            ..*self
        }
    }

    /// Bytes of one panel (`PANEL_NR` channels × the padded inputs).
    pub const fn panel_bytes(&self) -> usize {
        PANEL_NR * panel_k(self.k)
    }
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
        assert!(o0 <= o1 && o1 <= self.out_dim, "Linear::rows out of bounds");
        let d = self.in_dim;
        Linear {
            w: match self.w {
                Weight::F32(w) => Weight::F32(&w[o0 * d..o1 * d]),
                Weight::F16(w) => Weight::F16(&w[o0 * d..o1 * d]),
                Weight::I8(p) => Weight::I8(PanelsI8 { o0: p.o0 + o0, ..p }),
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
