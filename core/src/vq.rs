//! Multi-scale residual quantizer bookkeeping (`docs/SPEC.md` §3–4): codebook lookup, bicubic
//! upsampling (A = −0.75, align_corners = False, clamped borders), Phi residual convolutions,
//! `f_hat` accumulation, area downsampling, bilinear mask resizing and nearest-code search.
//!
//! All maps are channel-major (`Cvae × side × side`). Interpolation weights are computed in f32
//! exactly as PyTorch's CPU kernels compute them.

use crate::kernels::{conv2d, dot, Pad};
use crate::layout::arena_layout;
use crate::parallel::Parallel;
use crate::schedule::Schedule;
use crate::weights::Quantizer;
use crate::Model;

const CUBIC_A: f32 = -0.75;

fn cubic1(x: f32) -> f32 {
    ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0
}
fn cubic2(x: f32) -> f32 {
    ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A
}

/// Taps of output index `o` of a bicubic resize from `n_in` to `n_out`: four clamped input
/// indices and their weights.
pub fn bicubic_taps(n_in: usize, n_out: usize, o: usize) -> ([usize; 4], [f32; 4]) {
    let scale = n_in as f32 / n_out as f32;
    let real = scale * (o as f32 + 0.5) - 0.5; // not clamped for cubic
    let fl = libm::floorf(real);
    let i0 = fl as isize;
    let t = real - fl;
    let w = [cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
    let clamp = |i: isize| i.clamp(0, n_in as isize - 1) as usize;
    ([clamp(i0 - 1), clamp(i0), clamp(i0 + 1), clamp(i0 + 2)], w)
}

/// Bicubic resize of `c × n × n` to `c × m × m`; `tmp` holds `c × n × m` floats.
pub fn bicubic_resize(x: &[f32], c: usize, n: usize, m: usize, tmp: &mut [f32], y: &mut [f32]) {
    // Along x: tmp[ch][r][ox].
    for ch in 0..c {
        for r in 0..n {
            let src = &x[(ch * n + r) * n..(ch * n + r + 1) * n];
            for ox in 0..m {
                let (ix, w) = bicubic_taps(n, m, ox);
                tmp[(ch * n + r) * m + ox] =
                    src[ix[0]] * w[0] + src[ix[1]] * w[1] + src[ix[2]] * w[2] + src[ix[3]] * w[3];
            }
        }
    }
    // Along y.
    for ch in 0..c {
        for oy in 0..m {
            let (iy, w) = bicubic_taps(n, m, oy);
            let t = &tmp[ch * n * m..(ch + 1) * n * m];
            let out = &mut y[(ch * m + oy) * m..(ch * m + oy + 1) * m];
            for (ox, o) in out.iter_mut().enumerate() {
                *o = t[iy[0] * m + ox] * w[0]
                    + t[iy[1] * m + ox] * w[1]
                    + t[iy[2] * m + ox] * w[2]
                    + t[iy[3] * m + ox] * w[3];
            }
        }
    }
}

/// Window `[start, end)` of output `o` of adaptive average pooling from `n_in` to `n_out`.
pub fn area_window(n_in: usize, n_out: usize, o: usize) -> (usize, usize) {
    let start = (o * n_in) / n_out;
    let end = ((o + 1) * n_in).div_ceil(n_out);
    (start, end)
}

/// Area (adaptive average) resize of `c × n × n` to `c × m × m`, m ≤ n.
pub fn area_resize(x: &[f32], c: usize, n: usize, m: usize, y: &mut [f32]) {
    for ch in 0..c {
        let plane = &x[ch * n * n..(ch + 1) * n * n];
        for oy in 0..m {
            let (y0, y1) = area_window(n, m, oy);
            for ox in 0..m {
                let (x0, x1) = area_window(n, m, ox);
                let mut s = 0f32;
                for r in y0..y1 {
                    for v in &plane[r * n + x0..r * n + x1] {
                        s += *v;
                    }
                }
                y[(ch * m + oy) * m + ox] = s / ((y1 - y0) * (x1 - x0)) as f32;
            }
        }
    }
}

/// Writes the codebook rows of `tokens` as a `cvae × pn × pn` map.
pub fn embed_tokens(q: &Quantizer<'_>, cvae: usize, tokens: &[u32], pn: usize, h: &mut [f32]) {
    for (t, &tok) in tokens.iter().enumerate().take(pn * pn) {
        let row = &q.embedding[tok as usize * cvae..(tok as usize + 1) * cvae];
        for (ch, v) in row.iter().enumerate() {
            h[ch * pn * pn + t] = *v;
        }
    }
}

/// Scratch for [`scale_contribution`]: `cvae·pn·P + cvae·P²` floats.
pub fn contribution_scratch_len(cvae: usize, pn: usize, p: usize) -> usize {
    cvae * pn * p + cvae * p * p
}

/// A scale's contribution to `f_hat`: `out = Phi_k(bicubic(codebook[tokens], P))` (the upsample
/// is skipped when `pn == P`). `h` receives the `cvae × pn × pn` embedding map of the tokens.
#[allow(clippy::too_many_arguments)]
pub fn scale_contribution(
    q: &Quantizer<'_>,
    quant_resi: f32,
    phi_k: usize,
    cvae: usize,
    tokens: &[u32],
    pn: usize,
    p: usize,
    h: &mut [f32],
    out: &mut [f32],
    scratch: &mut [f32],
    par: &dyn Parallel,
) {
    embed_tokens(q, cvae, tokens, pn, h);
    let (tmp, up) = scratch.split_at_mut(cvae * pn * p);
    let up = &mut up[..cvae * p * p];
    let out = &mut out[..cvae * p * p];
    if pn == p {
        up.copy_from_slice(&h[..cvae * p * p]);
    } else {
        bicubic_resize(h, cvae, pn, p, tmp, up);
    }
    if let Some(phi) = q.phi.get(phi_k) {
        conv2d(up, p, p, phi, 1, Pad::same(1), out, None, par);
        let keep = 1.0 - quant_resi;
        for (o, u) in out.iter_mut().zip(up.iter()) {
            *o = *u * keep + *o * quant_resi;
        }
    } else {
        out.copy_from_slice(up);
    }
}

/// Bilinear resize (align_corners = False, no antialias) of a `n × n` mask to `m × m`, computed in
/// f32 as PyTorch does; used for the edit force masks.
pub fn bilinear_resize(x: &[f32], n: usize, m: usize, y: &mut [f32]) {
    let scale = n as f32 / m as f32;
    let src = |o: usize| -> (usize, usize, f32, f32) {
        let r = scale * (o as f32 + 0.5) - 0.5;
        let r = if r < 0.0 { 0.0 } else { r };
        let i0 = r as usize;
        let i1 = if i0 < n - 1 { i0 + 1 } else { i0 };
        let l1 = r - i0 as f32;
        (i0, i1, 1.0 - l1, l1)
    };
    for oy in 0..m {
        let (y0, y1, hl0, hl1) = src(oy);
        for ox in 0..m {
            let (x0, x1, wl0, wl1) = src(ox);
            y[oy * m + ox] = hl0 * (wl0 * x[y0 * n + x0] + wl1 * x[y0 * n + x1])
                + hl1 * (wl0 * x[y1 * n + x0] + wl1 * x[y1 * n + x1]);
        }
    }
}

/// Index of the codebook row nearest to `z` (squared L2, expanded as `‖z‖² + ‖e‖² − 2 z·e`),
/// first index on ties.
pub fn nearest_code(embedding: &[f32], cvae: usize, z: &[f32]) -> u32 {
    let zz = dot(z, z);
    let mut best = 0u32;
    let mut best_d = f32::INFINITY;
    for (v, e) in embedding.chunks_exact(cvae).enumerate() {
        let d = zz + dot(e, e) - 2.0 * dot(z, e);
        if d < best_d {
            best_d = d;
            best = v as u32;
        }
    }
    best
}

/// Sizes of the `f_hat` bookkeeping of one schedule: `Cvae`, the largest step's tokens and the
/// latent side `P`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VqDims {
    pub cv: usize,
    pub n: usize,
    pub p: usize,
}

impl VqDims {
    pub(crate) fn new(cfg: &crate::ModelConfig, sched: &Schedule) -> VqDims {
        VqDims {
            cv: cfg.vae.cvae as usize,
            n: sched.max_tokens(),
            p: cfg.latent_side(),
        }
    }
}

arena_layout! {
    /// Scratch of one step's contribution to `f_hat` (the sampler, `tokenize` and
    /// `fhat_from_tokens` share it).
    pub(crate) struct VqScratch<'s>(d: &VqDims) {
        /// Codebook rows of the step's tokens.
        h: [f32; d.cv * d.n] = "codebook map h (Cvae x tokens)",
        /// `Phi(bicubic(h, P))`.
        contrib: [f32; d.cv * d.p * d.p] = "f_hat contribution (Cvae x P x P)",
        /// Upsampling scratch.
        resize: [f32; contribution_scratch_len(d.cv, d.n.isqrt(), d.p)] =
            "contribution resize scratch",
    }
}

impl VqScratch<'_> {
    /// `self.contrib = Phi_k(bicubic(codebook[tokens], P))` of step `k` of `sched`.
    pub(crate) fn contribution(
        &mut self,
        model: &Model<'_>,
        sched: &Schedule,
        k: usize,
        tokens: &[u32],
        par: &dyn Parallel,
    ) {
        let cfg = &model.config;
        scale_contribution(
            &model.weights.quant,
            cfg.vae.quant_resi,
            sched.phi[k] as usize,
            cfg.vae.cvae as usize,
            tokens,
            sched.pn[k] as usize,
            cfg.latent_side(),
            self.h,
            self.contrib,
            self.resize,
            par,
        );
    }

    /// `f_hat += Phi_k(bicubic(codebook[tokens], P))`.
    pub(crate) fn accumulate(
        &mut self,
        model: &Model<'_>,
        sched: &Schedule,
        k: usize,
        tokens: &[u32],
        f_hat: &mut [f32],
        par: &dyn Parallel,
    ) {
        self.contribution(model, sched, k, tokens, par);
        for (f, d) in f_hat.iter_mut().zip(self.contrib.iter()) {
            *f += *d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_weights_match_the_spec_vectors() {
        // docs/SPEC.md Appendix B.2, pn = 2 -> 16, rows 0 and 1.
        let m = |o: usize| {
            let (ix, w) = bicubic_taps(2, 16, o);
            let mut r = [0f32; 2];
            for t in 0..4 {
                r[ix[t]] += w[t];
            }
            r
        };
        assert!((m(0)[0] - 1.103821).abs() < 2e-6 && (m(0)[1] + 0.103821).abs() < 2e-6);
        assert!((m(1)[0] - 1.110779).abs() < 2e-6);
        assert!((m(7)[0] - 0.570190).abs() < 2e-6);
    }

    #[test]
    fn area_windows_match_the_spec() {
        let w: [(usize, usize); 13] = core::array::from_fn(|o| area_window(16, 13, o));
        assert_eq!(w[4], (4, 7));
        assert_eq!(w[8], (9, 12));
        assert_eq!(area_window(16, 6, 2), (5, 8));
    }
}

#[cfg(test)]
mod resize_tests {
    extern crate std;

    use super::*;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn bicubic_resize_keeps_a_constant_map() {
        // Upsampling to 8 or 16 (every schedule's pn -> P) has dyadic ratios: the f32 tap weights
        // sum to 1 up to rounding that stays within 1e-6. Other ratios (5 -> 13, 16 -> 5) compute
        // their weights, as PyTorch does, with a sum off by up to 7.2e-7 per pass, so two passes
        // are held to 2e-6.
        for (n, m) in [
            (1usize, 8usize),
            (1, 16),
            (2, 16),
            (3, 16),
            (4, 8),
            (5, 16),
            (6, 8),
            (10, 16),
            (13, 16),
            (8, 8),
            (5, 13),
            (16, 5),
            (8, 13),
        ] {
            let tol = if m.is_power_of_two() { 1e-6 } else { 2e-6 };
            for value in [0.7f32, -0.3, 1.0] {
                let c = 2;
                let x = vec![value; c * n * n];
                let mut tmp = vec![f32::NAN; c * n * m];
                let mut y = vec![f32::NAN; c * m * m];
                bicubic_resize(&x, c, n, m, &mut tmp, &mut y);
                for v in &y {
                    assert!((v - value).abs() <= tol, "{n}->{m}: {v} vs {value}");
                }
            }
        }
    }

    #[test]
    fn bicubic_resize_to_the_same_size_is_the_identity() {
        let n = 6;
        let x: Vec<f32> = (0..2 * n * n).map(|i| (i as f32 * 0.77).sin()).collect();
        let mut tmp = vec![0f32; 2 * n * n];
        let mut y = vec![0f32; 2 * n * n];
        bicubic_resize(&x, 2, n, n, &mut tmp, &mut y);
        assert_eq!(x, y);
    }

    #[test]
    fn area_resize_16_to_13_is_the_mean_of_the_official_windows() {
        // Adaptive average pooling 16 -> 13: start = floor(o*16/13), end = ceil((o+1)*16/13).
        const WIN: [(usize, usize); 13] = [
            (0, 2),
            (1, 3),
            (2, 4),
            (3, 5),
            (4, 7),
            (6, 8),
            (7, 9),
            (8, 10),
            (9, 12),
            (11, 13),
            (12, 14),
            (13, 15),
            (14, 16),
        ];
        let (n, m) = (16usize, 13usize);
        // Channel 0: x[r][c] = 100 r + c, whose window mean is 100·mean(rows) + mean(cols), exact.
        // Channel 1: a checkerboard of ±1 (window means 0 or ±1/(window size)).
        let mut x = vec![0f32; 2 * n * n];
        for r in 0..n {
            for c in 0..n {
                x[r * n + c] = (100 * r + c) as f32;
                x[n * n + r * n + c] = if (r + c) % 2 == 0 { 1.0 } else { -1.0 };
            }
        }
        let mut y = vec![f32::NAN; 2 * m * m];
        area_resize(&x, 2, n, m, &mut y);
        for (oy, &(y0, y1)) in WIN.iter().enumerate() {
            assert_eq!(area_window(n, m, oy), (y0, y1));
            for (ox, &(x0, x1)) in WIN.iter().enumerate() {
                let want = 100.0 * (y0 + y1 - 1) as f32 / 2.0 + (x0 + x1 - 1) as f32 / 2.0;
                assert_eq!(y[oy * m + ox], want, "({oy},{ox})");
                let cells = ((y1 - y0) * (x1 - x0)) as f32;
                let mut sum = 0i32;
                for r in y0..y1 {
                    for c in x0..x1 {
                        sum += if (r + c) % 2 == 0 { 1 } else { -1 };
                    }
                }
                assert_eq!(
                    y[m * m + oy * m + ox],
                    sum as f32 / cells,
                    "checker ({oy},{ox})"
                );
            }
        }
        // Hand-checked corners: rows/cols 0..2 -> 50.5; rows 4..7, cols 14..16 -> 514.5.
        assert_eq!(y[0], 50.5);
        assert_eq!(y[4 * m + 12], 514.5);
    }

    #[test]
    fn area_resize_to_the_same_size_is_the_identity() {
        let n = 5;
        let x: Vec<f32> = (0..3 * n * n).map(|i| (i as f32 * 1.3).cos()).collect();
        let mut y = vec![0f32; x.len()];
        area_resize(&x, 3, n, n, &mut y);
        assert_eq!(x, y);
    }
}
