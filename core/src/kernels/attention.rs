//! Scaled dot-product attention of one query row over its keys and values, all heads: the
//! transformer's per-token attention (Markov: the scale's own tokens; causal: the KV cache).
//!
//! The portable body is the reference (and every non-x86 target's code): per head, the scores
//! from the eight-lane [`dot`], [`softmax`], then an axpy per key in key order. The AVX variant
//! (picked through [`Isa`]) computes the same sums in the same order — four keys' dot products
//! at once sharing their reductions, the weighted values kept in registers — and Rust never
//! contracts to FMA, so both give the same bits (checked by the ISA tests).

use super::{dot, softmax, Isa};

/// Where one query row's keys and values are: key `j` of head `h` is
/// `keys[j·stride + h·hd ..][..hd]`, its value the same range of `vals`.
#[derive(Clone, Copy, Debug)]
pub struct KeyValues<'a> {
    /// Keys (L2-normalised or not: the caller's logit scale decides).
    pub keys: &'a [f32],
    /// Values.
    pub vals: &'a [f32],
    /// Floats between consecutive tokens of `keys` and `vals`.
    pub stride: usize,
    /// Number of keys.
    pub n: usize,
}

/// `out[h] = softmax(q[h]·K[h]ᵀ · logit_scale) · V[h]` for each of `heads` heads of width `hd`
/// (`q` and `out` are `heads · hd` floats, `scores` at least `kv.n`). Runs on `isa` (which must be
/// supported; the bits are the same on every ISA).
#[allow(clippy::too_many_arguments)]
pub fn attend_row(
    isa: Isa,
    q: &[f32],
    kv: &KeyValues<'_>,
    heads: usize,
    hd: usize,
    logit_scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx() {
        // SAFETY: `isa` is supported (the caller's contract), so the CPU has AVX.
        unsafe { attend_row_avx(q, kv, heads, hd, logit_scale, scores, out) };
        return;
    }
    let _ = isa;
    attend_row_body(q, kv, heads, hd, logit_scale, scores, out);
}

/// [`attend_row_body`] on AVX: the scores and the weighted values of each head from the AVX
/// kernels of `arch/x86.rs` when the head width is a multiple of 8, else the body compiled for
/// AVX.
///
/// # Safety
/// The CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn attend_row_avx(
    q: &[f32],
    kv: &KeyValues<'_>,
    heads: usize,
    hd: usize,
    logit_scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use super::arch::x86::{head_scores_avx, weighted_values_avx};
    if !hd.is_multiple_of(8) {
        return attend_row_body(q, kv, heads, hd, logit_scale, scores, out);
    }
    let scores = &mut scores[..kv.n];
    for h in 0..heads {
        let qh = &q[h * hd..(h + 1) * hd];
        let keys = &kv.keys[h * hd..];
        // SAFETY: AVX (this function's contract); `hd` is a multiple of 8, and the key and
        // value rows lie inside the slices (their length is checked by the kernels).
        unsafe { head_scores_avx(qh, keys, kv.stride, kv.n, logit_scale, scores) };
        softmax(scores);
        let o = &mut out[h * hd..(h + 1) * hd];
        unsafe { weighted_values_avx(scores, &kv.vals[h * hd..], kv.stride, o) };
    }
}

#[inline(always)]
fn attend_row_body(
    q: &[f32],
    kv: &KeyValues<'_>,
    heads: usize,
    hd: usize,
    logit_scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let scores = &mut scores[..kv.n];
    for h in 0..heads {
        let qh = &q[h * hd..(h + 1) * hd];
        for (j, sc) in scores.iter_mut().enumerate() {
            let k = &kv.keys[j * kv.stride + h * hd..][..hd];
            *sc = dot(qh, k) * logit_scale;
        }
        softmax(scores);
        let o = &mut out[h * hd..(h + 1) * hd];
        o.iter_mut().for_each(|v| *v = 0.0);
        for (j, p) in scores.iter().enumerate() {
            let v = &kv.vals[j * kv.stride + h * hd..][..hd];
            for (ov, vv) in o.iter_mut().zip(v) {
                *ov += *p * *vv;
            }
        }
    }
}
