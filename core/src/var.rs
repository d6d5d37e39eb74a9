//! The VAR transformer, one scale at a time (`docs/SPEC.md` §5).
//!
//! Reads like `llama2.c`'s forward: AdaLN vectors are computed once per image and CFG branch
//! ([`ada_vectors`]); [`block_forward`] runs one AdaLN self-attention block over one scale's
//! tokens; [`head_logits`] turns one token's hidden state into 4096-way logits.
//! Attention is block-diagonal (Markov: keys are this scale's tokens) or block-causal (keys and
//! values of every earlier scale come from the cache in the arena).

use crate::kernels::attention::{attend_row, KeyValues};
use crate::kernels::{gelu_tanh, layer_norm, linear, silu, Isa, LinearScratch};
use crate::parallel::{for_rows, Parallel, SharedMut};
use crate::weights::{AdaLn, Block, Transformer};

/// Default tokens per FFN / head chunk: bounds the FFN hidden activation to `chunk × F` floats
/// and the logits to `chunk × V` per CFG row. Any chunk gives identical results (every kernel
/// works per token); smaller chunks trade speed for arena bytes.
pub const DEFAULT_CHUNK: usize = 64;

/// Scratch of one scale step of one row. Only this scale's keys and values (Markov) span all
/// tokens; everything else is one chunk of tokens at a time.
pub struct StepScratch<'s> {
    /// Keys and values of this scale, `n × 2C` (Markov; empty for causal, which uses the cache).
    pub kv: &'s mut [f32],
    /// Modulated LayerNorm of a chunk, `chunk × C`.
    pub xn: &'s mut [f32],
    /// Queries of a chunk, `chunk × C`.
    pub q: &'s mut [f32],
    /// Attention output of a chunk, `chunk × C`.
    pub att: &'s mut [f32],
    /// Branch output of a chunk, `chunk × C`.
    pub tmp: &'s mut [f32],
    /// FFN hidden of a chunk, `chunk × F`.
    pub ffn: &'s mut [f32],
    /// Tokens per chunk.
    pub chunk: usize,
    /// Attention scores, `chunk × keys` floats: one row per token of a chunk, so the tokens of a
    /// chunk can attend concurrently.
    pub scores: &'s mut [f32],
    /// Linear-kernel scratch.
    pub lin: LinearScratch<'s>,
}

/// Keys and values this scale attends to.
pub enum Kv<'k> {
    /// Block-diagonal: only this scale's own keys and values.
    Markov,
    /// Block-causal: this scale's normalised keys and values are written at token `begin` of the
    /// cache (`tokens × C` each) and attention covers tokens `0 .. begin + n`.
    Causal {
        /// Key cache (L2-normalised keys).
        k: &'k mut [f32],
        /// Value cache.
        v: &'k mut [f32],
        /// First cache position of this scale.
        begin: usize,
    },
}

/// Computes, for condition `label`, the six AdaLN vectors of every block (`depth × 6C`) and the
/// head's scale/shift (`2C`). `tmp` needs `7C` floats.
pub fn ada_vectors(
    t: &Transformer<'_>,
    c: usize,
    label: usize,
    ada: &mut [f32],
    head: &mut [f32],
    tmp: &mut [f32],
    lin: &mut LinearScratch<'_>,
    par: &dyn Parallel,
) {
    let (cond, shared) = tmp.split_at_mut(c);
    for (o, v) in cond
        .iter_mut()
        .zip(&t.class_emb[label * c..(label + 1) * c])
    {
        *o = silu(*v);
    }
    if let Some(sh) = &t.shared_ada_lin {
        linear(cond, 1, sh, shared, lin, par);
    }
    for (i, b) in t.blocks.iter().enumerate() {
        let out = &mut ada[i * 6 * c..(i + 1) * 6 * c];
        match &b.ada {
            AdaLn::Linear(l) => linear(cond, 1, l, out, lin, par),
            AdaLn::Shared(gss) => {
                for ((o, g), s) in out.iter_mut().zip(gss.iter()).zip(shared.iter()) {
                    *o = *g + *s;
                }
            }
        }
    }
    linear(cond, 1, &t.head_nm, head, lin, par);
}

/// Calls `f(i, row)` for every `width`-wide row of `buf`, rows split over `par` when each task
/// gets enough work (`row_floats` per row). Every row sees exactly the sequential computation.
fn each_row(
    par: &dyn Parallel,
    buf: &mut [f32],
    width: usize,
    row_floats: usize,
    f: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let rows = buf.len() / width;
    let shared = SharedMut::new(&mut buf[..rows * width]);
    for_rows(par, rows, row_floats, &|lo, hi| {
        // SAFETY: `for_rows` hands every row to exactly one call.
        let part = unsafe { shared.slice(lo * width, (hi - lo) * width) };
        for (i, row) in part.chunks_exact_mut(width).enumerate() {
            f(lo + i, row);
        }
    });
}

/// `y = LN(x)·(1 + scale) + shift` for `n` rows.
#[allow(clippy::too_many_arguments)]
fn modulate(
    x: &[f32],
    y: &mut [f32],
    n: usize,
    c: usize,
    eps: f32,
    scale: &[f32],
    shift: &[f32],
    par: &dyn Parallel,
) {
    each_row(par, &mut y[..n * c], c, 2 * c, &|i, row| {
        layer_norm(&x[i * c..(i + 1) * c], row, c, eps);
        for ((v, s), b) in row.iter_mut().zip(scale).zip(shift) {
            *v = *v * (*s + 1.0) + *b;
        }
    });
}

/// Scales `v` to unit L2 norm (eps 1e-12, as `F.normalize`), then multiplies by `mul`.
fn l2_normalize(v: &mut [f32], mul: f32) {
    let mut s = 0f32;
    for x in v.iter() {
        s += x * x;
    }
    let n = crate::math::sqrt(s).max(1e-12);
    for x in v.iter_mut() {
        *x = *x / n * mul;
    }
}

/// One AdaLN self-attention block over `n` tokens `x` (`n × C`, updated in place).
/// `ada` is this block's `6C` vector for this row: γ1, γ2, scale1, scale2, shift1, shift2.
///
/// Works in token chunks: first every token's key and value (from the block's input), then per
/// chunk its queries, attention, projection and residual, then per chunk the FFN. Every kernel
/// works per token, so the result does not depend on the chunk size.
#[allow(clippy::too_many_arguments)]
pub fn block_forward(
    b: &Block<'_>,
    c: usize,
    heads: usize,
    eps: f32,
    ada: &[f32],
    x: &mut [f32],
    n: usize,
    kv: Kv<'_>,
    s: &mut StepScratch<'_>,
    par: &dyn Parallel,
) {
    let hd = c / heads;
    let (gamma1, rest) = ada.split_at(c);
    let (gamma2, rest) = rest.split_at(c);
    let (scale1, rest) = rest.split_at(c);
    let (scale2, rest) = rest.split_at(c);
    let (shift1, shift2) = rest.split_at(c);
    let StepScratch {
        kv: kv_buf,
        xn,
        q,
        att,
        tmp,
        ffn,
        chunk,
        scores,
        lin,
    } = s;
    let ch = *chunk;
    let q_rows = b.mat_qkv.rows(0, c);
    let kv_rows = b.mat_qkv.rows(c, 3 * c);
    let (mut cache, begin) = match kv {
        Kv::Markov => (None, 0),
        Kv::Causal { k, v, begin } => (Some((k, v)), begin),
    };

    // 1. Keys (L2-normalised) and values of every token, from the block's input.
    let mut t0 = 0;
    while t0 < n {
        let m = ch.min(n - t0);
        modulate(&x[t0 * c..], xn, m, c, eps, scale1, shift1, par);
        let out: &mut [f32] = match cache {
            None => &mut kv_buf[t0 * 2 * c..(t0 + m) * 2 * c],
            Some(_) => &mut ffn[..m * 2 * c],
        };
        linear(xn, m, &kv_rows, out, lin, par);
        each_row(par, out, 2 * c, 2 * c, &|_, row| {
            for (v, bias) in row[c..].iter_mut().zip(b.v_bias) {
                *v += *bias;
            }
            if b.scale_mul.is_some() {
                for h in 0..heads {
                    l2_normalize(&mut row[h * hd..(h + 1) * hd], 1.0);
                }
            }
        });
        if let Some((k, v)) = &mut cache {
            for (j, row) in out.chunks_exact(2 * c).enumerate() {
                let at = (begin + t0 + j) * c;
                k[at..at + c].copy_from_slice(&row[..c]);
                v[at..at + c].copy_from_slice(&row[c..]);
            }
        }
        t0 += m;
    }
    // Keys/values: this scale's own (Markov) or the cache up to this scale (causal).
    let (keys, vals, kstride, nkeys): (&[f32], &[f32], usize, usize) = match &cache {
        None => (&kv_buf[..], &kv_buf[c..], 2 * c, n),
        Some((k, v)) => (&k[..], &v[..], c, begin + n),
    };
    // Without L2 normalisation the official code scales logits by 0.25/sqrt(head_dim).
    let logit_scale = if b.scale_mul.is_some() {
        1.0
    } else {
        0.25 / crate::math::sqrt(hd as f32)
    };

    // 2. Per chunk: queries (the LayerNorm is recomputed rather than kept for all tokens:
    //    O(n·C) work instead of n × C floats of arena), attention, projection, residual.
    let mut t0 = 0;
    while t0 < n {
        let m = ch.min(n - t0);
        modulate(&x[t0 * c..], xn, m, c, eps, scale1, shift1, par);
        linear(xn, m, &q_rows, q, lin, par);
        each_row(par, &mut q[..m * c], c, 2 * c, &|_, row| {
            for (v, bias) in row.iter_mut().zip(b.q_bias) {
                *v += *bias;
            }
            if let Some(sm) = b.scale_mul {
                for h in 0..heads {
                    // exp(min(s_h, ln 100)): the per-head temperature is at most 100.
                    let mul = crate::math::exp(sm[h].min(libm::logf(100.0)));
                    l2_normalize(&mut row[h * hd..(h + 1) * hd], mul);
                }
            }
        });
        // Tokens attend independently, each with its own row of scores.
        let q = &q[..m * c];
        let scores = SharedMut::new(&mut scores[..m * nkeys]);
        let kvs = KeyValues {
            keys,
            vals,
            stride: kstride,
            n: nkeys,
        };
        let isa = Isa::active();
        each_row(par, &mut att[..m * c], c, 2 * c * nkeys, &|t, out_row| {
            // SAFETY: row `t` of the scores belongs to the call for token `t` only.
            let scores = unsafe { scores.slice(t * nkeys, nkeys) };
            let q = &q[t * c..(t + 1) * c];
            attend_row(isa, q, &kvs, heads, hd, logit_scale, scores, out_row);
        });
        linear(att, m, &b.proj, tmp, lin, par);
        residual(&mut x[t0 * c..(t0 + m) * c], tmp, gamma1, c, par);
        t0 += m;
    }

    // 3. Per chunk: FFN and residual.
    let f = b.fc1.out_dim;
    let mut t0 = 0;
    while t0 < n {
        let m = ch.min(n - t0);
        modulate(&x[t0 * c..], xn, m, c, eps, scale2, shift2, par);
        linear(xn, m, &b.fc1, ffn, lin, par);
        each_row(par, &mut ffn[..m * f], f, f, &|_, row| {
            row.iter_mut().for_each(|v| *v = gelu_tanh(*v));
        });
        linear(ffn, m, &b.fc2, tmp, lin, par);
        residual(&mut x[t0 * c..(t0 + m) * c], tmp, gamma2, c, par);
        t0 += m;
    }
}

/// `x += branch · γ`, row by row.
fn residual(x: &mut [f32], branch: &[f32], gamma: &[f32], c: usize, par: &dyn Parallel) {
    each_row(par, x, c, 2 * c, &|i, xr| {
        for ((xv, tv), g) in xr.iter_mut().zip(&branch[i * c..(i + 1) * c]).zip(gamma) {
            *xv += *tv * *g;
        }
    });
}

/// Logits of `m` tokens: `head(LN(x)·(1 + scale) + shift)`; `xn` needs `m·C` floats, `logits`
/// `m·V`.
#[allow(clippy::too_many_arguments)]
pub fn head_logits(
    t: &Transformer<'_>,
    c: usize,
    eps: f32,
    head_ada: &[f32],
    x: &[f32],
    m: usize,
    xn: &mut [f32],
    logits: &mut [f32],
    lin: &mut LinearScratch<'_>,
    par: &dyn Parallel,
) {
    let (scale, shift) = head_ada.split_at(c);
    modulate(x, xn, m, c, eps, scale, shift, par);
    linear(xn, m, &t.head, logits, lin, par);
}
